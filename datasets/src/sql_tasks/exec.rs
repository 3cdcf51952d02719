//! [`StageExec`]: where a plan reads a stage's output. Inside another stage's fragment it
//! becomes that stage's input (see [`super::input`]); in the driver's plan it runs the stage
//! and streams the rows the partition reads. Its child is the stage's fragment, so `EXPLAIN`
//! shows the stages as a tree.

use std::fmt;
use std::sync::Arc;

use arrow::array::RecordBatch;
use arrow::datatypes::SchemaRef;
use datafusion::common::tree_node::TreeNodeRecursion;
use datafusion::error::{DataFusionError, Result};
use datafusion::execution::{SendableRecordBatchStream, TaskContext};
use datafusion::physical_expr::{EquivalenceProperties, PhysicalExpr};
use datafusion::physical_plan::execution_plan::{Boundedness, EmissionType};
use datafusion::physical_plan::metrics::MetricsSet;
use datafusion::physical_plan::statistics::{ChildStats, StatisticsArgs};
use datafusion::physical_plan::stream::RecordBatchStreamAdapter;
use datafusion::physical_plan::{
    DisplayAs, DisplayFormatType, ExecutionPlan, ExecutionPlanProperties, Partitioning,
    PlanProperties, Statistics,
};
use futures::{StreamExt, TryStreamExt};
use manta_engine::{Object, ObjectRef};
use manta_scheduler::Client;

use super::input::Read;
use super::stage::{Output, Stage};

/// A read of a stage's output (see the module doc).
#[derive(Debug)]
pub struct StageExec {
    stage: Arc<Stage>,
    read: Read,
    properties: Arc<PlanProperties>,
}

impl StageExec {
    /// The read of `stage`'s output as `read` says. Read by partitions or hash partitions, it
    /// has the fragment's partitioning and orderings; as a broadcast, one partition.
    pub fn new(stage: Arc<Stage>, read: Read) -> Self {
        let fragment = stage.fragment();
        let properties = match read {
            Read::Hash | Read::Partitions => Arc::clone(fragment.properties()),
            Read::Broadcast => Arc::new(PlanProperties::new(
                EquivalenceProperties::new(fragment.schema()),
                Partitioning::UnknownPartitioning(1),
                EmissionType::Incremental,
                Boundedness::Bounded,
            )),
        };
        Self {
            stage,
            read,
            properties,
        }
    }

    /// The stage it reads.
    pub fn stage(&self) -> &Arc<Stage> {
        &self.stage
    }

    /// How it reads it.
    pub fn read(&self) -> Read {
        self.read
    }

    /// Whether a stage's task can read it (a hash exchange or a broadcast; reading a stage's
    /// partitions in place is the driver's).
    pub fn runs_in_tasks(&self) -> bool {
        self.read != Read::Partitions
    }
}

impl DisplayAs for StageExec {
    fn fmt_as(&self, _t: DisplayFormatType, f: &mut fmt::Formatter) -> fmt::Result {
        let output = match self.stage.output() {
            Output::Partitions => "partitions".to_string(),
            Output::Hash => format!(
                "hash({})",
                self.stage
                    .fragment()
                    .output_partitioning()
                    .partition_count()
            ),
        };
        write!(
            f,
            "StageExec: stage={}, tasks={}, output={output}, read={}",
            self.stage.number(),
            self.stage.tasks(),
            match self.read {
                Read::Hash => "hash",
                Read::Broadcast => "broadcast",
                Read::Partitions => "partitions",
            }
        )?;
        match self.stage.broadcast_threshold() {
            Some(rows) => write!(f, ", broadcast_build_if_rows<={rows}"),
            None => Ok(()),
        }
    }
}

impl ExecutionPlan for StageExec {
    fn name(&self) -> &str {
        "StageExec"
    }

    fn properties(&self) -> &Arc<PlanProperties> {
        &self.properties
    }

    /// The stage's fragment, for display: it runs in the stage's tasks, not under this node.
    fn children(&self) -> Vec<&Arc<dyn ExecutionPlan>> {
        vec![self.stage.fragment()]
    }

    /// The fragment's whole output: what the stage makes, however it is read.
    fn child_stats_requests(&self, partition: Option<usize>) -> Vec<ChildStats> {
        match partition {
            None => vec![ChildStats::At(None)],
            Some(_) => vec![ChildStats::Skip],
        }
    }

    fn statistics_from_inputs(
        &self,
        input_stats: &[Arc<Statistics>],
        args: &StatisticsArgs,
    ) -> Result<Arc<Statistics>> {
        Ok(match (args.partition(), input_stats.first()) {
            (None, Some(stats)) => Arc::clone(stats),
            _ => Arc::new(Statistics::new_unknown(&self.schema())),
        })
    }

    fn apply_expressions(
        &self,
        _f: &mut dyn FnMut(&Arc<dyn PhysicalExpr>) -> Result<TreeNodeRecursion>,
    ) -> Result<TreeNodeRecursion> {
        Ok(TreeNodeRecursion::Continue)
    }

    fn with_new_children(
        self: Arc<Self>,
        children: Vec<Arc<dyn ExecutionPlan>>,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        match children.as_slice() {
            [fragment] if Arc::ptr_eq(fragment, self.stage.fragment()) => Ok(self),
            [fragment] => {
                let stage = Stage::try_new(
                    self.stage.number(),
                    Arc::clone(fragment),
                    self.stage.output(),
                    self.stage.client().clone(),
                )?;
                Ok(Arc::new(StageExec::new(Arc::new(stage), self.read)))
            }
            _ => Err(DataFusionError::Internal(
                "a StageExec has one child, its stage's fragment".into(),
            )),
        }
    }

    /// What the stage's tasks did, from their answers: how many ran, the rows and bytes they
    /// made, the bytes they pulled and spilled, their wall and CPU time summed.
    fn metrics(&self) -> Option<MetricsSet> {
        Some(self.stage.metrics().clone_inner())
    }

    fn execute(
        &self,
        partition: usize,
        _context: Arc<TaskContext>,
    ) -> Result<SendableRecordBatchStream> {
        let schema = self.schema();
        let (stage, read) = (Arc::clone(&self.stage), self.read);
        let out_schema = Arc::clone(&schema);
        let rows = futures::stream::once(async move {
            let outputs = stage.run().await?;
            let wanted: Vec<ObjectRef> = match read {
                Read::Partitions => outputs.get(partition).into_iter().cloned().collect(),
                Read::Hash | Read::Broadcast => outputs.to_vec(),
            };
            let blocks = fetch_blocks(stage.client(), &wanted).await?;
            Ok::<_, DataFusionError>(fitted(read.rows(blocks, partition, false), out_schema))
        })
        .try_flatten();
        Ok(Box::pin(RecordBatchStreamAdapter::new(
            schema,
            rows.boxed(),
        )))
    }
}

/// The batches of `objects` (blocks), fetched through `client`: in place from this process's
/// store, or over Flight from a node.
pub(super) async fn fetch_blocks(
    client: &Client,
    objects: &[ObjectRef],
) -> Result<Vec<Vec<RecordBatch>>> {
    let mut blocks = Vec::with_capacity(objects.len());
    for object in objects {
        let object = client
            .get(object)
            .await
            .map_err(|e| DataFusionError::External(Box::new(e)))?;
        let Object::Block(block) = object else {
            return Err(DataFusionError::Internal(format!(
                "a SQL stage read {}, not a block",
                object.kind()
            )));
        };
        blocks.push(block.into_batches());
    }
    Ok(blocks)
}

/// `batches` as a stream of batches of `schema` (the same columns; the schema object the rest
/// of the plan expects).
pub(super) fn fitted(
    batches: Vec<RecordBatch>,
    schema: SchemaRef,
) -> futures::stream::Iter<impl Iterator<Item = Result<RecordBatch>>> {
    futures::stream::iter(batches.into_iter().map(move |batch| {
        batch.with_schema(Arc::clone(&schema)).map_err(|e| {
            DataFusionError::Internal(format!("a SQL stage's rows do not fit the plan: {e}"))
        })
    }))
}
