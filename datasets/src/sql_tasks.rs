//! The bottom of a SQL query as tasks: file scans with their filters, projections and partial
//! aggregates run where tasks run (on the cluster's nodes); the rest of the query runs where
//! it was planned.
//!
//! DataFusion plans a query in the driver as usual. Then the physical optimizer rule
//! [`ScanTasks`], which runs after DataFusion's own rules, looks for the largest subtrees that
//! are a file scan (a `DataSourceExec` over local Parquet, CSV or JSON files) under nothing
//! but filters, projections and a partial aggregate. Each of those operators computes
//! output partition *i* from input partition *i* alone, so partition *i* of such a subtree can
//! run anywhere. The rule replaces each subtree with a [`ScanTasksExec`]. It encodes the subtree
//! once with `datafusion-proto`, and when executed, it submits one task per partition (a
//! partition is a group of files or byte ranges of files). Each task decodes the subtree
//! (once per worker), runs its partition and stores the batches as a block. The driver streams
//! the blocks as they arrive into the rest of the plan: the final aggregate, joins, sorts.
//!
//! ```text
//!  driver:  SortExec ─ AggregateExec(Final) ─ RepartitionExec ─ ScanTasksExec ─┐
//!  tasks:                     AggregateExec(Partial) ─ FilterExec ─ DataSourceExec (partition i)
//! ```
//!
//! The rule is on for contexts connected to a cluster, and `Config::sql_tasks` turns it on
//! or off. `EXPLAIN ANALYZE` shows what the tasks under the cut did (from their answers:
//! tasks, rows, bytes made, pulled and spilled, wall and CPU time) on each `ScanTasksExec`. Datasets registered as tables are not rewritten, because their pipelines already
//! run as tasks.

use std::fmt;
use std::sync::{Arc, LazyLock};

use bytes::Bytes;
use datafusion::common::config::ConfigOptions;
use datafusion::common::tree_node::{Transformed, TreeNode, TreeNodeRecursion};
use datafusion::datasource::physical_plan::FileScanConfig;
use datafusion::datasource::source::DataSourceExec;
use datafusion::error::{DataFusionError, Result};
use datafusion::execution::{SendableRecordBatchStream, TaskContext as DfTaskContext};
use datafusion::physical_expr::{EquivalenceProperties, PhysicalExpr};
use datafusion::physical_optimizer::PhysicalOptimizerRule;
use datafusion::physical_plan::aggregates::{AggregateExec, AggregateMode};
use datafusion::physical_plan::execution_plan::{Boundedness, EmissionType};
use datafusion::physical_plan::filter::FilterExec;
use datafusion::physical_plan::metrics::{
    Count, ExecutionPlanMetricsSet, Gauge, MetricBuilder, MetricsSet, Time,
};
use datafusion::physical_plan::projection::ProjectionExec;
use datafusion::physical_plan::stream::RecordBatchStreamAdapter;
use datafusion::physical_plan::{
    DisplayAs, DisplayFormatType, ExecutionPlan, ExecutionPlanProperties, Partitioning,
    PlanProperties,
};
use datafusion::prelude::{SessionConfig, SessionContext};
use futures::{StreamExt, TryStreamExt};
use manta_engine::registry::{FunctionKind, RemoteFunction, TaskContext, TaskInput};
use manta_engine::{Block, Object, Resources, TaskSpec};
use manta_scheduler::Client;

/// The registered task that runs one partition of an encoded subtree.
pub const FRAGMENT_FUNCTION: &str = "manta::datasets::sql_fragment";

inventory::submit! {
    RemoteFunction { name: FRAGMENT_FUNCTION, kind: FunctionKind::Task(run_fragment) }
}

/// The largest encoded subtree shipped with every task.
const MAX_FRAGMENT_BYTES: usize = 1 << 20;

/// The physical optimizer rule (see the module doc).
#[derive(Debug)]
pub struct ScanTasks {
    client: Client,
}

impl ScanTasks {
    /// The rule, submitting tasks through `client`.
    pub fn new(client: Client) -> Self {
        Self { client }
    }

    /// `node` as a [`ScanTasksExec`], if it is the top of a subtree that can run as tasks.
    fn rewrite(&self, node: &Arc<dyn ExecutionPlan>) -> Option<Arc<dyn ExecutionPlan>> {
        // Tasks finish in any order, so a subtree whose output order matters stays here.
        if !runs_per_partition(node) || node.output_ordering().is_some() {
            return None;
        }
        // Some plans encode but do not decode alone (an expression bound to an operator above
        // the cut, such as a scalar subquery's result): decode once here to know.
        let encoded =
            datafusion_proto::bytes::physical_plan_to_bytes(Arc::clone(node)).and_then(|encoded| {
                datafusion_proto::bytes::physical_plan_from_bytes(
                    &encoded,
                    &TASK_SESSION.task_ctx(),
                )
                .map(|_| encoded)
            });
        match encoded {
            // Every task carries the subtree; a subtree this large (DataFusion's encoding can
            // include per-file statistics) would not fit a task message, so it stays here.
            Ok(encoded) if encoded.len() > MAX_FRAGMENT_BYTES => {
                tracing::debug!(
                    "a scan stays in the driver: its plan is {} bytes",
                    encoded.len()
                );
                None
            }
            Ok(encoded) => Some(Arc::new(ScanTasksExec::new(
                Arc::clone(node),
                encoded,
                self.client.clone(),
            ))),
            Err(e) => {
                tracing::debug!("a scan stays in the driver: it does not travel ({e})");
                None
            }
        }
    }
}

impl PhysicalOptimizerRule for ScanTasks {
    fn optimize(
        &self,
        plan: Arc<dyn ExecutionPlan>,
        _config: &ConfigOptions,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        plan.transform_down(|node| {
            Ok(match self.rewrite(&node) {
                Some(tasks) => Transformed::new(tasks, true, TreeNodeRecursion::Jump),
                None => Transformed::no(node),
            })
        })
        .map(|t| t.data)
    }

    fn name(&self) -> &str {
        "manta_scan_tasks"
    }

    fn schema_check(&self) -> bool {
        true
    }
}

/// Whether `node` is a local file scan under only operators that compute partition *i* from
/// partition *i* (filters, projections, a partial aggregate).
fn runs_per_partition(node: &Arc<dyn ExecutionPlan>) -> bool {
    if let Some(source) = node.downcast_ref::<DataSourceExec>() {
        return source
            .data_source()
            .downcast_ref::<FileScanConfig>()
            .is_some_and(|files| files.object_store_url.as_str().starts_with("file://"));
    }
    let per_partition = node.is::<FilterExec>()
        || node.is::<ProjectionExec>()
        || node
            .downcast_ref::<AggregateExec>()
            .is_some_and(|a| *a.mode() == AggregateMode::Partial);
    let children = node.children();
    per_partition && children.len() == 1 && runs_per_partition(children[0])
}

/// A subtree run as one task per partition (see the module doc); one output partition.
#[derive(Debug)]
pub struct ScanTasksExec {
    /// The subtree, as planned (for display and its schema).
    fragment: Arc<dyn ExecutionPlan>,
    /// The subtree as `datafusion-proto` bytes.
    encoded: Bytes,
    client: Client,
    properties: Arc<PlanProperties>,
    /// What its tasks did, gathered from their answers: `EXPLAIN ANALYZE` shows it.
    metrics: ExecutionPlanMetricsSet,
}

/// The figures of a [`ScanTasksExec`]'s tasks, summed (see [`ScanTasksExec::metrics`]).
struct TaskMetrics {
    tasks: Count,
    output_rows: Count,
    output_bytes: Count,
    pulled_bytes: Count,
    spilled_bytes: Count,
    task_wall: Time,
    task_cpu: Time,
    peak_memory: Gauge,
}

impl TaskMetrics {
    fn new(metrics: &ExecutionPlanMetricsSet) -> Self {
        let counter = |name: &'static str| MetricBuilder::new(metrics).global_counter(name);
        let time = |name: &'static str| MetricBuilder::new(metrics).subset_time(name, 0);
        Self {
            tasks: counter("tasks"),
            output_rows: MetricBuilder::new(metrics).output_rows(0),
            output_bytes: counter("task_output_bytes"),
            pulled_bytes: counter("task_pulled_bytes"),
            spilled_bytes: counter("task_spilled_bytes"),
            task_wall: time("task_wall"),
            task_cpu: time("task_cpu"),
            peak_memory: MetricBuilder::new(metrics).global_gauge("task_peak_memory_bytes"),
        }
    }

    fn record(&self, outcome: &manta_engine::TaskOutcome) {
        let stats = &outcome.stats;
        let meta = outcome.output.meta();
        self.tasks.add(1);
        self.output_rows.add(meta.num_rows as usize);
        self.output_bytes.add(meta.size_bytes as usize);
        self.pulled_bytes.add(stats.pulled_bytes as usize);
        self.spilled_bytes.add(stats.spilled_bytes as usize);
        self.task_wall
            .add_duration(std::time::Duration::from_nanos(stats.wall_ns));
        self.task_cpu
            .add_duration(std::time::Duration::from_nanos(stats.cpu_ns));
        self.peak_memory.set_max(stats.peak_memory_bytes as usize);
    }
}

impl ScanTasksExec {
    fn new(fragment: Arc<dyn ExecutionPlan>, encoded: Bytes, client: Client) -> Self {
        let properties = PlanProperties::new(
            EquivalenceProperties::new(fragment.schema()),
            Partitioning::UnknownPartitioning(1),
            EmissionType::Incremental,
            Boundedness::Bounded,
        );
        Self {
            fragment,
            encoded,
            client,
            properties: Arc::new(properties),
            metrics: ExecutionPlanMetricsSet::new(),
        }
    }

    /// The tasks, one per partition of the subtree.
    fn tasks(&self) -> Vec<TaskSpec> {
        let partitions = self.fragment.output_partitioning().partition_count();
        (0..partitions)
            .map(|partition| {
                let mut args = Vec::with_capacity(4 + self.encoded.len());
                args.extend_from_slice(&(partition as u32).to_le_bytes());
                args.extend_from_slice(&self.encoded);
                TaskSpec {
                    function: FRAGMENT_FUNCTION.to_string(),
                    args: args.into(),
                    inputs: Vec::new(),
                    input_batch: None,
                    resources: Resources::one_cpu(),
                    max_retries: crate::retries::task_max_retries(),
                    label: format!(
                        "partition {partition} of {partitions} of SQL scan {}",
                        self.fragment.name()
                    ),
                }
            })
            .collect()
    }
}

impl DisplayAs for ScanTasksExec {
    fn fmt_as(&self, t: DisplayFormatType, f: &mut fmt::Formatter) -> fmt::Result {
        let partitions = self.fragment.output_partitioning().partition_count();
        write!(f, "ScanTasksExec: tasks={partitions}, fragment=")?;
        match t {
            DisplayFormatType::TreeRender => write!(f, "{}", self.fragment.name()),
            _ => write!(
                f,
                "[{}]",
                datafusion::physical_plan::displayable(self.fragment.as_ref())
                    .indent(false)
                    .to_string()
                    .trim_end()
                    .replace('\n', " <- ")
            ),
        }
    }
}

impl ExecutionPlan for ScanTasksExec {
    fn name(&self) -> &str {
        "ScanTasksExec"
    }

    fn properties(&self) -> &Arc<PlanProperties> {
        &self.properties
    }

    fn children(&self) -> Vec<&Arc<dyn ExecutionPlan>> {
        Vec::new()
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
        if children.is_empty() {
            Ok(self)
        } else {
            Err(DataFusionError::Internal(
                "ScanTasksExec has no children".into(),
            ))
        }
    }

    /// Its tasks' figures, from their answers: how many ran, the rows and bytes they made,
    /// the bytes they pulled and spilled, their wall and CPU time summed.
    fn metrics(&self) -> Option<MetricsSet> {
        Some(self.metrics.clone_inner())
    }

    fn execute(
        &self,
        partition: usize,
        _context: Arc<DfTaskContext>,
    ) -> Result<SendableRecordBatchStream> {
        if partition != 0 {
            return Err(DataFusionError::Internal(format!(
                "ScanTasksExec has one partition, not {partition}"
            )));
        }
        let schema = self.schema();
        let tasks = self.tasks();
        let concurrency = tasks.len().max(1);
        let client = self.client.clone();
        let metrics = Arc::new(TaskMetrics::new(&self.metrics));
        let blocks = futures::stream::iter(tasks)
            .map(move |spec| {
                let (client, metrics) = (client.clone(), Arc::clone(&metrics));
                async move {
                    let outcome = client.submit(spec).await?;
                    metrics.record(&outcome);
                    client.get(&outcome.output).await
                }
            })
            .buffer_unordered(concurrency);
        let out_schema = Arc::clone(&schema);
        let batches = blocks
            .map(move |object| {
                let object = object.map_err(|e| DataFusionError::External(Box::new(e)))?;
                let Object::Block(block) = object else {
                    return Err(DataFusionError::Internal(format!(
                        "a SQL scan task returned {}, not a block",
                        object.kind()
                    )));
                };
                let schema = Arc::clone(&out_schema);
                Ok(futures::stream::iter(block.into_batches().into_iter().map(
                    move |batch| {
                        // Same columns; the schema object the rest of the plan expects.
                        batch.with_schema(Arc::clone(&schema)).map_err(|e| {
                            DataFusionError::Internal(format!(
                                "a SQL scan task's rows do not fit the plan: {e}"
                            ))
                        })
                    },
                )))
            })
            .try_flatten();
        Ok(Box::pin(RecordBatchStreamAdapter::new(schema, batches)))
    }
}

/// The session tasks decode and run fragments with (file formats, functions); one per
/// process. A scan's partitions must not steal each other's files: each task runs only its own
/// partition, so a stealing partition would read its siblings' files too (apache/datafusion
/// issue 23293).
static TASK_SESSION: LazyLock<SessionContext> = LazyLock::new(|| {
    SessionContext::new_with_config(SessionConfig::new().set_bool(
        "datafusion.execution.enable_file_stream_work_stealing",
        false,
    ))
});

/// The task body: partition *i* of an encoded subtree, as a block.
fn run_fragment(_ctx: &TaskContext, input: TaskInput) -> manta_engine::Result<Object> {
    let args = &input.args;
    let failed = |input: String, source: DataFusionError| manta_engine::Error::UserFunction {
        name: FRAGMENT_FUNCTION.into(),
        input,
        source: Box::new(source),
    };
    let partition = args
        .get(..4)
        .map(|b| u32::from_le_bytes(b.try_into().expect("4 bytes")) as usize)
        .ok_or_else(|| {
            manta_engine::Error::Internal("SQL scan task arguments are truncated".into())
        })?;
    let encoded = args.slice(4..);
    // Decoded afresh for every task: an executed plan keeps state (a scan's queue of files
    // shared by its partitions), so one decoded plan must not run two partitions.
    let plan =
        datafusion_proto::bytes::physical_plan_from_bytes(&encoded, &TASK_SESSION.task_ctx())
            .map_err(|e| failed("its plan".into(), e))?;
    let schema = plan.schema();
    let label = format!("partition {partition} of {}", plan.name());
    let batches = crate::storage::block_on(async move {
        plan.execute(partition, TASK_SESSION.task_ctx())?
            .try_collect::<Vec<_>>()
            .await
    })
    .map_err(|e| failed(label, e))?;
    Ok(Object::Block(Block::try_new(schema, batches)?))
}
