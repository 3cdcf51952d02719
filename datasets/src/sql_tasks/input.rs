//! Where a stage reads another stage's output: a [`StageInput`] leaf in the stage's fragment,
//! and the codec that carries it to the tasks and binds it there to the task's input objects.
//!
//! In the driver a fragment's reads of other stages are [`super::StageExec`] nodes (which show
//! the stage below them in `EXPLAIN`). Before the fragment is encoded, each becomes a
//! [`StageInput`]: a leaf that says which of the task's input groups it reads, how
//! ([`Read`]), and its schema and partition count. `datafusion-proto` encodes it through
//! [`InputCodec`]; a task decodes the fragment with a codec *bound* to its input objects, and
//! each `StageInput` comes back as an in-memory source holding, in the task's partition, the
//! rows that partition reads (every other partition empty: a task runs one partition).

use std::fmt;
use std::sync::Arc;

use arrow::array::RecordBatch;
use arrow::datatypes::SchemaRef;
use datafusion::common::tree_node::TreeNodeRecursion;
use datafusion::datasource::memory::MemorySourceConfig;
use datafusion::error::{DataFusionError, Result};
use datafusion::execution::{SendableRecordBatchStream, TaskContext};
use datafusion::physical_expr::{EquivalenceProperties, PhysicalExpr};
use datafusion::physical_plan::execution_plan::{Boundedness, EmissionType};
use datafusion::physical_plan::{
    DisplayAs, DisplayFormatType, ExecutionPlan, Partitioning, PlanProperties,
};
use datafusion_proto::physical_plan::{PhysicalExtensionCodec, PhysicalProtoConverterExtension};
use serde::{Deserialize, Serialize};

/// How a stage's output is read by the stage (or driver operator) above it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Read {
    /// Partition *j* is batch *j* of every output object (a hash exchange).
    Hash,
    /// One partition of every object's rows (a join's build side, computed once).
    Broadcast,
    /// Partition *j* is object *j* (the driver reading a stage's partitions in place).
    Partitions,
}

impl Read {
    /// The rows partition `partition` reads of `objects`: the blocks of one input group (with
    /// `sliced`, each of a hash read is already only its batch `partition`; of a partitions
    /// read, only the partition's own block is given).
    pub fn rows(
        self,
        objects: Vec<Vec<RecordBatch>>,
        partition: usize,
        sliced: bool,
    ) -> Vec<RecordBatch> {
        match self {
            Read::Hash if sliced => objects.into_iter().flatten().collect(),
            Read::Hash => objects
                .into_iter()
                .filter_map(|batches| batches.into_iter().nth(partition))
                .collect(),
            Read::Broadcast | Read::Partitions => objects.into_iter().flatten().collect(),
        }
    }

    /// The partition of a task's fragment this read fills: a broadcast is one partition, read
    /// whole by every task.
    fn filled(self, task_partition: usize) -> usize {
        match self {
            Read::Broadcast => 0,
            Read::Hash | Read::Partitions => task_partition,
        }
    }
}

/// A read of input group `group` of the task, as it travels in an encoded fragment.
#[derive(Debug)]
pub struct StageInput {
    group: usize,
    read: Read,
    properties: Arc<PlanProperties>,
}

/// What a [`StageInput`] encodes to.
#[derive(Serialize, Deserialize)]
struct Encoded {
    group: u32,
    read: Read,
    partitions: u32,
    /// An Arrow IPC schema message.
    schema: Vec<u8>,
}

impl StageInput {
    /// The read of input group `group`, with `partitions` partitions of `schema`.
    pub fn new(group: usize, read: Read, schema: SchemaRef, partitions: usize) -> Self {
        let properties = PlanProperties::new(
            EquivalenceProperties::new(schema),
            Partitioning::UnknownPartitioning(partitions),
            EmissionType::Incremental,
            Boundedness::Bounded,
        );
        Self {
            group,
            read,
            properties: Arc::new(properties),
        }
    }
}

impl DisplayAs for StageInput {
    fn fmt_as(&self, _t: DisplayFormatType, f: &mut fmt::Formatter) -> fmt::Result {
        write!(f, "StageInput: group={}, read={:?}", self.group, self.read)
    }
}

impl ExecutionPlan for StageInput {
    fn name(&self) -> &str {
        "StageInput"
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
                "StageInput has no children".into(),
            ))
        }
    }

    fn execute(
        &self,
        _partition: usize,
        _context: Arc<TaskContext>,
    ) -> Result<SendableRecordBatchStream> {
        Err(DataFusionError::Internal(
            "a StageInput runs only in a stage's task, decoded with its inputs".into(),
        ))
    }
}

/// Encodes [`StageInput`]s; decodes them unbound (to check a fragment travels) or bound to a
/// task's rows.
#[derive(Debug, Default)]
pub struct InputCodec {
    /// The task's partition and, per input group, the rows that partition reads.
    bound: Option<(usize, Vec<Vec<RecordBatch>>)>,
}

impl InputCodec {
    /// A codec that decodes every input as empty.
    pub fn unbound() -> Self {
        Self::default()
    }

    /// A codec for the task running `partition`, whose input group *k* reads `groups[k]`.
    pub fn bound(partition: usize, groups: Vec<Vec<RecordBatch>>) -> Self {
        Self {
            bound: Some((partition, groups)),
        }
    }
}

impl PhysicalExtensionCodec for InputCodec {
    fn try_decode(
        &self,
        buf: &[u8],
        _inputs: &[Arc<dyn ExecutionPlan>],
        _ctx: &TaskContext,
        _proto_converter: &dyn PhysicalProtoConverterExtension,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        let encoded: Encoded = postcard::from_bytes(buf)
            .map_err(|e| DataFusionError::Internal(format!("a stage input's encoding: {e}")))?;
        let schema = crate::ipc::decode_schema(&encoded.schema)
            .map_err(|e| DataFusionError::External(Box::new(e)))?;
        let mut partitions = vec![Vec::new(); encoded.partitions as usize];
        if let Some((task_partition, groups)) = &self.bound {
            let rows = groups.get(encoded.group as usize).ok_or_else(|| {
                DataFusionError::Internal(format!(
                    "a stage task has {} input groups, its fragment reads group {}",
                    groups.len(),
                    encoded.group
                ))
            })?;
            let filled = encoded.read.filled(*task_partition);
            let slot = partitions.get_mut(filled).ok_or_else(|| {
                DataFusionError::Internal(format!(
                    "partition {filled} of a stage input of {} partitions",
                    encoded.partitions
                ))
            })?;
            *slot = rows
                .iter()
                .map(|batch| batch.clone().with_schema(Arc::clone(&schema)))
                .collect::<std::result::Result<_, _>>()?;
        }
        Ok(MemorySourceConfig::try_new_exec(&partitions, schema, None)?)
    }

    fn try_encode(
        &self,
        node: Arc<dyn ExecutionPlan>,
        buf: &mut Vec<u8>,
        _proto_converter: &dyn PhysicalProtoConverterExtension,
    ) -> Result<()> {
        let Some(input) = node.downcast_ref::<StageInput>() else {
            return Err(DataFusionError::NotImplemented(format!(
                "{} does not travel to a task",
                node.name()
            )));
        };
        let encoded = Encoded {
            group: input.group as u32,
            read: input.read,
            partitions: input.properties.partitioning.partition_count() as u32,
            schema: crate::ipc::encode_schema(&input.schema()),
        };
        let bytes = postcard::to_allocvec(&encoded)
            .map_err(|e| DataFusionError::Internal(format!("a stage input's encoding: {e}")))?;
        buf.extend_from_slice(&bytes);
        Ok(())
    }
}
