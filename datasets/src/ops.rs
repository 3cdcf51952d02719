//! One-to-one operators, applied batch by batch inside a task.
//!
//! `filter` and `with_column` take DataFusion expressions. An expression is planned into a
//! `PhysicalExpr` with DataFusion's type coercion (so `lit(1) - col("l_discount")` works on a
//! decimal column) against the schema of the batches it meets, once per schema, and the plan is
//! kept for the next batch. `map_batches` calls a function registered with `#[manta::remote]`,
//! catching its panic.

use std::sync::{Arc, LazyLock};

use arrow::array::{Array, BooleanArray, RecordBatch};
use arrow::compute::filter_record_batch;
use arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use datafusion::common::DFSchema;
use datafusion::logical_expr::Expr;
use datafusion::logical_expr::simplify::SimplifyContext;
use datafusion::optimizer::simplify_expressions::ExprSimplifier;
use datafusion::physical_expr::PhysicalExpr;
use datafusion::prelude::SessionContext;
use parking_lot::Mutex;

/// The DataFusion session used to plan expressions (built-in functions registered).
pub static SESSION: LazyLock<SessionContext> = LazyLock::new(SessionContext::new);

/// An expression planned for one schema, re-planned if batches of another schema arrive.
#[derive(Debug)]
pub struct PlannedExpr {
    expr: Expr,
    planned: Mutex<Option<(SchemaRef, Arc<dyn PhysicalExpr>)>>,
}

impl PlannedExpr {
    /// An expression not yet planned.
    pub fn new(expr: Expr) -> Self {
        Self {
            expr,
            planned: Mutex::new(None),
        }
    }

    /// The logical expression.
    pub fn expr(&self) -> &Expr {
        &self.expr
    }

    /// The physical expression for `schema`.
    pub fn for_schema(
        &self,
        schema: &SchemaRef,
    ) -> datafusion::error::Result<Arc<dyn PhysicalExpr>> {
        let mut planned = self.planned.lock();
        if let Some((cached, physical)) = planned.as_ref()
            && (Arc::ptr_eq(cached, schema) || cached == schema)
        {
            return Ok(Arc::clone(physical));
        }
        let physical = plan_expr(&self.expr, schema)?;
        *planned = Some((Arc::clone(schema), Arc::clone(&physical)));
        Ok(physical)
    }
}

/// Plans `expr` against `schema`: type coercion, then DataFusion's expression simplifier (which
/// some functions need before they can run at all: `coalesce`, `nvl` and the like are rewritten
/// into `CASE` there), then the physical expression, its decimal arithmetic made faster
/// ([`crate::decimal_arithmetic`]).
pub fn plan_expr(
    expr: &Expr,
    schema: &SchemaRef,
) -> datafusion::error::Result<Arc<dyn PhysicalExpr>> {
    let df_schema = Arc::new(DFSchema::try_from(Arc::clone(schema))?);
    let context = SimplifyContext::builder()
        .with_schema(Arc::clone(&df_schema))
        .build();
    let simplifier = ExprSimplifier::new(context);
    let expr = simplifier.simplify(simplifier.coerce(expr.clone(), &df_schema)?)?;
    let physical = SESSION.create_physical_expr(expr, &df_schema)?;
    crate::decimal_arithmetic::faster_decimal_arithmetic(physical, schema)
}

/// Keeps the rows where `predicate` is true (null counts as false).
pub fn filter(
    predicate: &PlannedExpr,
    batch: &RecordBatch,
) -> datafusion::error::Result<RecordBatch> {
    let mask = evaluate_predicate(predicate, batch)?;
    Ok(filter_record_batch(batch, &mask)?)
}

/// The predicate's value on each row of `batch`.
pub fn evaluate_predicate(
    predicate: &PlannedExpr,
    batch: &RecordBatch,
) -> datafusion::error::Result<BooleanArray> {
    let physical = predicate.for_schema(batch.schema_ref())?;
    let mask = physical.evaluate(batch)?.into_array(batch.num_rows())?;
    match mask.as_any().downcast_ref::<BooleanArray>() {
        Some(mask) => Ok(mask.clone()),
        None => Err(datafusion::error::DataFusionError::Plan(format!(
            "a filter predicate must be boolean, but {} is {}",
            predicate.expr(),
            mask.data_type()
        ))),
    }
}

/// Adds column `name` (or replaces it, if it exists) with the value of `value`.
pub fn with_column(
    name: &str,
    value: &PlannedExpr,
    batch: &RecordBatch,
) -> datafusion::error::Result<RecordBatch> {
    // Planned with the types decimals read narrow stand for; they are widened first unless
    // only decimal arithmetic reads them, which takes them as they are.
    let wide = crate::narrow_decimals::wide_schema(batch.schema_ref());
    let physical = value.for_schema(&wide)?;
    let widened;
    let batch = match Arc::ptr_eq(&wide, batch.schema_ref())
        || crate::decimal_arithmetic::takes_narrow(&physical, batch.schema_ref())
    {
        true => batch,
        false => {
            widened = crate::narrow_decimals::widened_batch(batch)?;
            &widened
        }
    };
    let schema = batch.schema_ref();
    let column = physical.evaluate(batch)?.into_array(batch.num_rows())?;
    let field = Arc::new(Field::new(
        name,
        column.data_type().clone(),
        physical.nullable(&wide)?,
    ));
    let mut fields: Vec<_> = schema.fields().iter().cloned().collect();
    let mut columns = batch.columns().to_vec();
    match schema.index_of(name) {
        Ok(i) => {
            fields[i] = field;
            columns[i] = column;
        }
        Err(_) => {
            fields.push(field);
            columns.push(column);
        }
    }
    let schema = Arc::new(Schema::new_with_metadata(fields, schema.metadata().clone()));
    Ok(RecordBatch::try_new(schema, columns)?)
}

/// The schema `with_column(name, expr)` produces from `schema`, planning the expression.
pub fn with_column_schema(
    name: &str,
    expr: &Expr,
    schema: &SchemaRef,
) -> datafusion::error::Result<SchemaRef> {
    let physical = plan_expr(expr, schema)?;
    let field = Field::new(
        name,
        physical.data_type(schema)?,
        physical.nullable(schema)?,
    );
    let mut fields: Vec<_> = schema.fields().iter().cloned().collect();
    match schema.index_of(name) {
        Ok(i) => fields[i] = Arc::new(field),
        Err(_) => fields.push(Arc::new(field)),
    }
    Ok(Arc::new(Schema::new_with_metadata(
        fields,
        schema.metadata().clone(),
    )))
}

/// Checks that `predicate` is a boolean expression over `schema`.
pub fn check_predicate(predicate: &Expr, schema: &SchemaRef) -> datafusion::error::Result<()> {
    let physical = plan_expr(predicate, schema)?;
    match physical.data_type(schema)? {
        DataType::Boolean | DataType::Null => Ok(()),
        other => Err(datafusion::error::DataFusionError::Plan(format!(
            "a filter predicate must be boolean, but {predicate} is {other}"
        ))),
    }
}

#[cfg(test)]
mod tests {
    use arrow::array::{Decimal128Array, Int64Array};
    use datafusion::prelude::{col, lit};

    use super::*;

    fn batch() -> RecordBatch {
        let price = Decimal128Array::from(vec![1000, 2000, 3000])
            .with_precision_and_scale(15, 2)
            .unwrap();
        let discount = Decimal128Array::from(vec![5, 10, 0])
            .with_precision_and_scale(15, 2)
            .unwrap();
        RecordBatch::try_from_iter([
            ("n", Arc::new(Int64Array::from(vec![1, 2, 3])) as _),
            ("price", Arc::new(price) as _),
            ("discount", Arc::new(discount) as _),
        ])
        .unwrap()
    }

    #[test]
    fn filter_and_with_column_coerce_types() {
        let kept = filter(&PlannedExpr::new(col("discount").gt(lit(0.04))), &batch()).unwrap();
        assert_eq!(kept.num_rows(), 2);
        let expr = col("price") * (lit(1) - col("discount"));
        let out = with_column("revenue", &PlannedExpr::new(expr.clone()), &kept).unwrap();
        assert_eq!(out.schema().field(3).name(), "revenue");
        assert_eq!(
            out.schema_ref(),
            &with_column_schema("revenue", &expr, kept.schema_ref()).unwrap()
        );
        // 10.00 * (1 - 0.05) = 9.5000, 20.00 * (1 - 0.10) = 18.0000
        let revenue = arrow::util::display::array_value_to_string(out.column(3), 0).unwrap();
        assert_eq!(revenue.parse::<f64>().unwrap(), 10.0 * 0.95);
    }

    #[test]
    fn unknown_column_names_it_and_non_boolean_filter_is_rejected() {
        let err = check_predicate(&col("nope").gt(lit(1)), batch().schema_ref()).unwrap_err();
        assert!(err.to_string().contains("nope"), "{err}");
        let err = check_predicate(&(col("n") + lit(1)), batch().schema_ref()).unwrap_err();
        assert!(err.to_string().contains("must be boolean"), "{err}");
    }
}
