//! A fragment's scalar subqueries, written into it as literals when its stage runs.
//!
//! DataFusion plans an uncorrelated scalar subquery (TPC-H q22's `c_acctbal > (select
//! avg(c_acctbal) ...)`) as a `ScalarSubqueryExec` above the query, which runs the subquery
//! once before its input, and a `ScalarSubqueryExpr` in the input's expressions that reads the
//! value from a container the two share. Such an expression does not decode outside the
//! `ScalarSubqueryExec`, so a fragment holding one could not travel to a task.
//!
//! Its value is known by the time the stage runs: the stage runs when the driver first reads
//! it, inside the `ScalarSubqueryExec`'s input, which executes only once its subqueries have.
//! So [`SubqueryValues`] encodes a fragment with each such expression replaced by a literal
//! of its value. When the plan is cut, before any value is known, it writes a null of the
//! expression's type instead: that encoding only shows the fragment travels, and the stage
//! encodes itself again when it runs.

use std::cell::Cell;
use std::sync::Arc;

use arrow::datatypes::Schema;
use arrow::record_batch::RecordBatch;
use bytes::Bytes;
use datafusion::common::ScalarValue;
use datafusion::error::{DataFusionError, Result};
use datafusion::logical_expr::ColumnarValue;
use datafusion::physical_expr::expressions::Literal;
use datafusion::physical_expr::scalar_subquery::ScalarSubqueryExpr;
use datafusion::physical_plan::{ExecutionPlan, PhysicalExpr};
use datafusion_proto::physical_plan::from_proto::parse_physical_expr_with_converter;
use datafusion_proto::physical_plan::to_proto::serialize_physical_expr_with_converter;
use datafusion_proto::physical_plan::{
    PhysicalExtensionCodec, PhysicalPlanDecodeContext, PhysicalPlanNodeExt,
    PhysicalProtoConverterExtension,
};
use datafusion_proto::protobuf::{PhysicalExprNode, PhysicalPlanNode};

/// Encodes a fragment with its scalar subqueries' values as literals (see the module doc).
pub(super) struct SubqueryValues {
    /// Whether a subquery whose value is not known yet becomes a typed null (the check made
    /// when the plan is cut) rather than an error.
    placeholders: bool,
    /// Whether the fragment held a scalar subquery.
    found: Cell<bool>,
}

impl SubqueryValues {
    /// `plan` encoded with each scalar subquery's value, or a typed null where it is not known
    /// yet; and whether it held any.
    pub(super) fn encode_placeholders(
        plan: Arc<dyn ExecutionPlan>,
        codec: &dyn PhysicalExtensionCodec,
    ) -> Result<(Bytes, bool)> {
        Self::encode(plan, codec, true)
    }

    /// `plan` encoded with each scalar subquery's value; an error if one is not known yet.
    pub(super) fn encode_values(
        plan: Arc<dyn ExecutionPlan>,
        codec: &dyn PhysicalExtensionCodec,
    ) -> Result<Bytes> {
        Ok(Self::encode(plan, codec, false)?.0)
    }

    /// `plan` encoded, with placeholders or not; and whether it held a scalar subquery.
    fn encode(
        plan: Arc<dyn ExecutionPlan>,
        codec: &dyn PhysicalExtensionCodec,
        placeholders: bool,
    ) -> Result<(Bytes, bool)> {
        let converter = Self {
            placeholders,
            found: Cell::new(false),
        };
        let encoded = datafusion_proto::bytes::physical_plan_to_bytes_with_proto_converter(
            plan, codec, &converter,
        )?;
        Ok((encoded, converter.found.get()))
    }

    /// The literal standing for `subquery`.
    fn literal(&self, subquery: &ScalarSubqueryExpr) -> Result<Arc<dyn PhysicalExpr>> {
        let no_columns = Arc::new(Schema::empty());
        let value = match subquery.evaluate(&RecordBatch::new_empty(Arc::clone(&no_columns))) {
            Ok(ColumnarValue::Scalar(value)) => value,
            Ok(ColumnarValue::Array(_)) => {
                return Err(DataFusionError::Internal(
                    "a scalar subquery's value is an array".to_string(),
                ));
            }
            Err(_) if self.placeholders => {
                ScalarValue::try_from(subquery.return_field(&no_columns)?.data_type())?
            }
            Err(e) => {
                return Err(DataFusionError::Internal(format!(
                    "a stage ran before the scalar subquery its fragment reads: {e}"
                )));
            }
        };
        Ok(Arc::new(Literal::new(value)))
    }
}

impl PhysicalProtoConverterExtension for SubqueryValues {
    fn proto_to_execution_plan(
        &self,
        proto: &PhysicalPlanNode,
        ctx: &PhysicalPlanDecodeContext<'_>,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        proto.try_into_physical_plan_with_context(ctx, self)
    }

    fn execution_plan_to_proto(
        &self,
        plan: &Arc<dyn ExecutionPlan>,
        codec: &dyn PhysicalExtensionCodec,
    ) -> Result<PhysicalPlanNode> {
        PhysicalPlanNode::try_from_physical_plan_with_converter(Arc::clone(plan), codec, self)
    }

    fn proto_to_physical_expr(
        &self,
        proto: &PhysicalExprNode,
        input_schema: &Schema,
        ctx: &PhysicalPlanDecodeContext<'_>,
    ) -> Result<Arc<dyn PhysicalExpr>> {
        parse_physical_expr_with_converter(proto, input_schema, ctx, self)
    }

    fn physical_expr_to_proto(
        &self,
        expr: &Arc<dyn PhysicalExpr>,
        codec: &dyn PhysicalExtensionCodec,
    ) -> Result<PhysicalExprNode> {
        match expr.downcast_ref::<ScalarSubqueryExpr>() {
            Some(subquery) => {
                self.found.set(true);
                serialize_physical_expr_with_converter(&self.literal(subquery)?, codec, self)
            }
            None => serialize_physical_expr_with_converter(expr, codec, self),
        }
    }
}
