//! The task that runs one partition of a stage: decode the fragment bound to the task's input
//! objects, run the partition, and store its rows as one block (split into the hash
//! partitions of the stage's exchange when it feeds one).

use std::sync::{Arc, LazyLock};

use arrow::array::RecordBatch;
use bytes::Bytes;
use datafusion::error::{DataFusionError, Result};
use datafusion::physical_plan::metrics::Time;
use datafusion::physical_plan::repartition::{BatchPartitioner, RepartitionExec};
use datafusion::physical_plan::{ExecutionPlan, ExecutionPlanProperties};
use datafusion::prelude::{SessionConfig, SessionContext};
use futures::{StreamExt, TryStreamExt};
use manta_engine::registry::{FunctionKind, RemoteFunction, TaskContext, TaskInput};
use manta_engine::{Block, Object};
use serde::{Deserialize, Serialize};

use super::input::{InputCodec, Read};
use super::stage::Output;

/// The registered task that runs one partition of a stage.
pub const STAGE_FUNCTION: &str = "manta::datasets::sql_stage";

inventory::submit! {
    RemoteFunction { name: STAGE_FUNCTION, kind: FunctionKind::Task(run_stage_task) }
}

/// The session tasks decode and run fragments with (file formats, functions); one per
/// process. A scan's partitions must not steal each other's files: each task runs only its own
/// partition, so a stealing partition would read its siblings' files too (apache/datafusion
/// issue 23293).
pub static TASK_SESSION: LazyLock<SessionContext> = LazyLock::new(|| {
    SessionContext::new_with_config(SessionConfig::new().set_bool(
        "datafusion.execution.enable_file_stream_work_stealing",
        false,
    ))
});

/// What a task is told besides its fragment.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct TaskArgs {
    /// The partition it runs.
    pub partition: u32,
    /// What it stores.
    pub output: Output,
    /// Whether the objects of hash reads arrive first, each as batch `partition` alone.
    pub sliced: bool,
    /// Its input groups in order: how each is read, and how many of the task's input objects
    /// it takes.
    pub groups: Vec<(Read, u32)>,
}

impl TaskArgs {
    /// The task's argument bytes: these arguments, then `fragment`.
    pub fn encode(&self, fragment: &[u8]) -> Bytes {
        let header = postcard::to_allocvec(self).expect("task arguments serialise");
        let mut args = Vec::with_capacity(4 + header.len() + fragment.len());
        args.extend_from_slice(&(header.len() as u32).to_le_bytes());
        args.extend_from_slice(&header);
        args.extend_from_slice(fragment);
        args.into()
    }

    /// The arguments and the fragment, from a task's argument bytes.
    fn decode(args: &Bytes) -> Result<(Self, Bytes)> {
        let truncated =
            || DataFusionError::Internal("SQL stage task arguments are truncated".into());
        let len = args
            .get(..4)
            .map(|b| u32::from_le_bytes(b.try_into().expect("4 bytes")) as usize)
            .ok_or_else(truncated)?;
        let header = args.get(4..4 + len).ok_or_else(truncated)?;
        let parsed = postcard::from_bytes(header)
            .map_err(|e| DataFusionError::Internal(format!("SQL stage task arguments: {e}")))?;
        Ok((parsed, args.slice(4 + len..)))
    }
}

/// The task body (see the module doc).
fn run_stage_task(_ctx: &TaskContext, input: TaskInput) -> manta_engine::Result<Object> {
    let failed = |what: String, source: DataFusionError| manta_engine::Error::UserFunction {
        name: STAGE_FUNCTION.into(),
        input: what,
        source: Box::new(source),
    };
    let (args, fragment) =
        TaskArgs::decode(&input.args).map_err(|e| failed("its arguments".into(), e))?;
    let partition = args.partition as usize;
    let groups = bind(&args, input.objects).map_err(|e| failed("its inputs".into(), e))?;
    // Decoded afresh for every task: an executed plan keeps state (a scan's queue of files
    // shared by its partitions), so one decoded plan must not run two partitions.
    let plan = datafusion_proto::bytes::physical_plan_from_bytes_with_extension_codec(
        &fragment,
        &TASK_SESSION.task_ctx(),
        &InputCodec::bound(partition, groups),
    )
    .and_then(with_faster_decimal_arithmetic)
    .map_err(|e| failed("its plan".into(), e))?;
    let label = format!("partition {partition} of {}", plan.name());
    let block = match args.output {
        Output::Partitions => run_partition(plan, partition),
        Output::Hash => run_hash_partitioned(plan, partition),
    };
    Ok(Object::Block(block.map_err(|e| failed(label, e))?))
}

/// `plan` with the embedded session's decimal arithmetic
/// ([`FasterDecimalArithmetic`](crate::decimal_arithmetic::FasterDecimalArithmetic)): its
/// expression has no protobuf form, so the driver's session cannot put it in the fragments it
/// sends, and each task puts it in the fragment it decoded. Without it, TPC-H q1's stage over
/// lineitem ran a third slower in a task than the same rows embedded.
fn with_faster_decimal_arithmetic(plan: Arc<dyn ExecutionPlan>) -> Result<Arc<dyn ExecutionPlan>> {
    use datafusion::physical_optimizer::PhysicalOptimizerRule;
    let state = TASK_SESSION.state_ref();
    let config = state.read();
    crate::decimal_arithmetic::FasterDecimalArithmetic.optimize(plan, config.config_options())
}

/// The rows each input group gives the task's partition. With `sliced`, the objects of the
/// hash reads come first, each only the task's batch, and the others follow, whole.
fn bind(args: &TaskArgs, objects: Vec<Object>) -> Result<Vec<Vec<RecordBatch>>> {
    let sliced_read = |read: Read| args.sliced && read == Read::Hash;
    let batched: usize = args
        .groups
        .iter()
        .filter(|(read, _)| sliced_read(*read))
        .map(|(_, count)| *count as usize)
        .sum();
    let mut whole = objects;
    let mut batched = whole
        .drain(..batched.min(whole.len()))
        .collect::<Vec<_>>()
        .into_iter();
    let mut whole = whole.into_iter();
    args.groups
        .iter()
        .map(|&(read, count)| {
            let objects = match sliced_read(read) {
                true => batched.by_ref().take(count as usize).collect::<Vec<_>>(),
                false => whole.by_ref().take(count as usize).collect(),
            };
            if objects.len() != count as usize {
                return Err(DataFusionError::Internal(format!(
                    "a SQL stage task was given {} objects of an input of {count}",
                    objects.len()
                )));
            }
            let blocks = objects
                .into_iter()
                .map(|object| match object {
                    Object::Block(block) => Ok(block.into_batches()),
                    other => Err(DataFusionError::Internal(format!(
                        "a SQL stage's input is {}, not a block",
                        other.kind()
                    ))),
                })
                .collect::<Result<Vec<_>>>()?;
            Ok(read.rows(blocks, args.partition as usize, args.sliced))
        })
        .collect()
}

/// Partition `partition` of `plan`, as one block.
fn run_partition(plan: std::sync::Arc<dyn ExecutionPlan>, partition: usize) -> Result<Block> {
    let schema = plan.schema();
    let batches = crate::storage::block_on(async move {
        plan.execute(partition, TASK_SESSION.task_ctx())?
            .try_collect::<Vec<_>>()
            .await
    })?;
    Block::try_new(schema, batches).map_err(|e| DataFusionError::External(Box::new(e)))
}

/// Partition `partition` of the input of `plan` (a hash `RepartitionExec`), split by it: one
/// block whose batch *j* is output partition *j*.
fn run_hash_partitioned(
    plan: std::sync::Arc<dyn ExecutionPlan>,
    partition: usize,
) -> Result<Block> {
    let repartition = plan.downcast_ref::<RepartitionExec>().ok_or_else(|| {
        DataFusionError::Internal(format!(
            "a hash stage's fragment is {}, not a RepartitionExec",
            plan.name()
        ))
    })?;
    let input = std::sync::Arc::clone(repartition.input());
    let partitioning = repartition.partitioning().clone();
    let n = partitioning.partition_count();
    let mut partitioner = BatchPartitioner::try_new(
        partitioning,
        Time::new(),
        partition,
        input.output_partitioning().partition_count(),
    )?;
    let schema = input.schema();
    let mut parts: Vec<Vec<RecordBatch>> = vec![Vec::new(); n];
    crate::storage::block_on(async {
        let mut batches = input.execute(partition, TASK_SESSION.task_ctx())?;
        while let Some(batch) = batches.next().await {
            partitioner.partition(batch?, |j, rows| {
                parts[j].push(rows);
                Ok(())
            })?;
        }
        Ok::<_, DataFusionError>(())
    })?;
    let batches = parts
        .iter()
        .map(|rows| arrow::compute::concat_batches(&schema, rows))
        .collect::<std::result::Result<Vec<_>, _>>()?;
    Block::try_new(schema, batches).map_err(|e| DataFusionError::External(Box::new(e)))
}
