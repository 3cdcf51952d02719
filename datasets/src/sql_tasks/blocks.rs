//! [`DatasetBlocksExec`]: a registered dataset's rows as a SQL plan's leaf, one partition per
//! block of its pipeline's output, the blocks left in the object store.
//!
//! In the driver a partition is read by fetching its block (in place from this process's
//! store, or over Flight from a node). When the plan is cut into stages, a stage reading the
//! leaf gets the blocks as the objects of one input group, task *i* only block *i*, so a join
//! or aggregate over a registered dataset runs where its blocks are, like one over files.

use std::fmt;
use std::sync::Arc;

use arrow::datatypes::SchemaRef;
use datafusion::common::tree_node::TreeNodeRecursion;
use datafusion::error::{DataFusionError, Result};
use datafusion::execution::{SendableRecordBatchStream, TaskContext};
use datafusion::physical_expr::{EquivalenceProperties, PhysicalExpr};
use datafusion::physical_plan::execution_plan::{Boundedness, EmissionType};
use datafusion::physical_plan::stream::RecordBatchStreamAdapter;
use datafusion::physical_plan::{
    DisplayAs, DisplayFormatType, ExecutionPlan, Partitioning, PlanProperties,
};
use futures::{StreamExt, TryStreamExt};
use manta_engine::ObjectRef;
use manta_scheduler::Client;

/// A dataset's blocks as partitions (see the module doc).
#[derive(Debug)]
pub struct DatasetBlocksExec {
    blocks: Arc<Vec<ObjectRef>>,
    client: Client,
    properties: Arc<PlanProperties>,
}

impl DatasetBlocksExec {
    /// The leaf over `blocks` (whose rows have `schema`'s columns), read through `client`.
    pub fn new(blocks: Vec<ObjectRef>, schema: SchemaRef, client: Client) -> Self {
        let properties = PlanProperties::new(
            EquivalenceProperties::new(schema),
            Partitioning::UnknownPartitioning(blocks.len()),
            EmissionType::Incremental,
            Boundedness::Bounded,
        );
        Self {
            blocks: Arc::new(blocks),
            client,
            properties: Arc::new(properties),
        }
    }

    /// The blocks, one per partition.
    pub fn blocks(&self) -> &Arc<Vec<ObjectRef>> {
        &self.blocks
    }
}

impl DisplayAs for DatasetBlocksExec {
    fn fmt_as(&self, _t: DisplayFormatType, f: &mut fmt::Formatter) -> fmt::Result {
        let rows: u64 = self.blocks.iter().map(|b| b.meta().num_rows).sum();
        write!(
            f,
            "DatasetBlocksExec: blocks={}, rows={rows}",
            self.blocks.len()
        )
    }
}

impl ExecutionPlan for DatasetBlocksExec {
    fn name(&self) -> &str {
        "DatasetBlocksExec"
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
                "DatasetBlocksExec has no children".into(),
            ))
        }
    }

    fn execute(
        &self,
        partition: usize,
        _context: Arc<TaskContext>,
    ) -> Result<SendableRecordBatchStream> {
        let schema = self.schema();
        let block = self.blocks.get(partition).cloned().ok_or_else(|| {
            DataFusionError::Internal(format!(
                "partition {partition} of a dataset of {} blocks",
                self.blocks.len()
            ))
        })?;
        let (client, out_schema) = (self.client.clone(), Arc::clone(&schema));
        let rows = futures::stream::once(async move {
            let blocks = super::exec::fetch_blocks(&client, &[block]).await?;
            Ok::<_, DataFusionError>(super::exec::fitted(
                blocks.into_iter().flatten().collect(),
                out_schema,
            ))
        })
        .try_flatten();
        Ok(Box::pin(RecordBatchStreamAdapter::new(
            schema,
            rows.boxed(),
        )))
    }
}
