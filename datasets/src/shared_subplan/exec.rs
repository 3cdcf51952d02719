//! [`SharedExec`]: one occurrence of a subtree whose output is computed once for all of them.
//!
//! Every occurrence holds the same [`SharedResult`]. The first to be executed starts its own
//! input, all partitions at once, on a task of its own (so the computation goes on whichever
//! occurrence is polled, and none waits on another's consumer); each partition of every
//! occurrence then streams the batches of that partition. An occurrence whose input was
//! optimized differently from the one that computed (another partitioning, another plan)
//! runs its own input instead: partitions are only shared between equal physical plans.

use std::fmt;
use std::sync::Arc;

use arrow::record_batch::RecordBatch;
use datafusion::common::runtime::SpawnedTask;
use datafusion::common::tree_node::TreeNodeRecursion;
use datafusion::common::{DataFusionError, Result};
use datafusion::execution::TaskContext;
use datafusion::physical_expr::PhysicalExpr;
use datafusion::physical_plan::stream::RecordBatchStreamAdapter;
use datafusion::physical_plan::{
    DisplayAs, DisplayFormatType, ExecutionPlan, PlanProperties, SendableRecordBatchStream,
    collect_partitioned, displayable,
};
use futures::future::{BoxFuture, FutureExt, Shared};
use futures::{StreamExt, TryStreamExt};
use parking_lot::Mutex;

/// Every partition's batches, or the error that computing them gave.
type Partitions = std::result::Result<Arc<Vec<Vec<RecordBatch>>>, Arc<DataFusionError>>;

/// The output the occurrences of one subtree share: empty until one of them runs.
#[derive(Debug, Default)]
pub(crate) struct SharedResult {
    started: Mutex<Option<Started>>,
}

/// A computation under way or done: the physical plan it runs (as displayed) and its output.
struct Started {
    plan: String,
    partitions: Shared<BoxFuture<'static, Partitions>>,
}

impl fmt::Debug for Started {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Started").field("plan", &self.plan).finish()
    }
}

impl SharedResult {
    /// The shared output for an occurrence whose input is `input`: started now from `input` if
    /// no occurrence ran yet; `None` if one did with a different physical plan (or there is no
    /// runtime to start it on), and the occurrence must run its own input.
    fn partitions(
        &self,
        input: &Arc<dyn ExecutionPlan>,
        context: &Arc<TaskContext>,
    ) -> Option<Shared<BoxFuture<'static, Partitions>>> {
        let plan = displayable(input.as_ref()).indent(true).to_string();
        let mut started = self.started.lock();
        if let Some(started) = started.as_ref() {
            return (started.plan == plan).then(|| started.partitions.clone());
        }
        // Executed outside a runtime (nothing to spawn on): this occurrence runs alone.
        tokio::runtime::Handle::try_current().ok()?;
        let task = SpawnedTask::spawn(collect_partitioned(Arc::clone(input), Arc::clone(context)));
        let partitions = async move {
            match task.join_unwind().await {
                Ok(Ok(partitions)) => Ok(Arc::new(partitions)),
                Ok(Err(e)) => Err(Arc::new(e)),
                Err(e) => Err(Arc::new(DataFusionError::ExecutionJoin(Box::new(e)))),
            }
        }
        .boxed()
        .shared();
        *started = Some(Started {
            plan,
            partitions: partitions.clone(),
        });
        Some(partitions)
    }
}

/// One occurrence of a shared subtree: see the module documentation.
#[derive(Debug)]
pub(crate) struct SharedExec {
    input: Arc<dyn ExecutionPlan>,
    result: Arc<SharedResult>,
}

impl SharedExec {
    pub(crate) fn new(input: Arc<dyn ExecutionPlan>, result: Arc<SharedResult>) -> Self {
        Self { input, result }
    }
}

impl DisplayAs for SharedExec {
    fn fmt_as(&self, _format: DisplayFormatType, f: &mut fmt::Formatter) -> fmt::Result {
        write!(f, "SharedExec: computed once for every occurrence")
    }
}

impl ExecutionPlan for SharedExec {
    fn name(&self) -> &str {
        "SharedExec"
    }

    fn properties(&self) -> &Arc<PlanProperties> {
        self.input.properties()
    }

    fn children(&self) -> Vec<&Arc<dyn ExecutionPlan>> {
        vec![&self.input]
    }

    fn apply_expressions(
        &self,
        _f: &mut dyn FnMut(&Arc<dyn PhysicalExpr>) -> Result<TreeNodeRecursion>,
    ) -> Result<TreeNodeRecursion> {
        Ok(TreeNodeRecursion::Continue)
    }

    fn with_new_children(
        self: Arc<Self>,
        mut children: Vec<Arc<dyn ExecutionPlan>>,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        Ok(Arc::new(Self::new(
            children.swap_remove(0),
            Arc::clone(&self.result),
        )))
    }

    /// Run again (a recursive query): computed afresh, shared with no one.
    fn reset_state(self: Arc<Self>) -> Result<Arc<dyn ExecutionPlan>> {
        Ok(Arc::new(Self::new(Arc::clone(&self.input), Arc::default())))
    }

    fn execute(
        &self,
        partition: usize,
        context: Arc<TaskContext>,
    ) -> Result<SendableRecordBatchStream> {
        let Some(partitions) = self.result.partitions(&self.input, &context) else {
            return self.input.execute(partition, context);
        };
        let batches = futures::stream::once(async move {
            let partitions = partitions.await.map_err(DataFusionError::Shared)?;
            let batches = partitions.get(partition).cloned().unwrap_or_default();
            Ok::<_, DataFusionError>(futures::stream::iter(batches.into_iter().map(Ok)))
        })
        .try_flatten();
        Ok(Box::pin(RecordBatchStreamAdapter::new(
            self.input.schema(),
            batches.boxed(),
        )))
    }
}
