//! The checks of an all-to-all operation against its inputs' schemas, before anything runs:
//! key and aggregate columns exist, sort keys have an order, join keys have matching types,
//! union inputs agree.

use arrow::datatypes::{Schema, SchemaRef};
use arrow::row::RowConverter;

use super::{Exchange, zip_schema};
use crate::error::{Error, Result};
use crate::plan::LogicalPlan;

impl Exchange {
    /// Checks key and aggregate columns against the input schemas, where known.
    pub fn check(&self) -> Result<()> {
        for input in self.inputs() {
            input.check()?;
        }
        let plan_error = |message: String| Error::Plan {
            operator: self.name().to_string(),
            source: datafusion::error::DataFusionError::Plan(message),
        };
        let has = |plan: &LogicalPlan, column: &str| -> Result<()> {
            if let Some(schema) = plan.schema()
                && schema.index_of(column).is_err()
            {
                return Err(plan_error(format!(
                    "no column named {column:?}; the columns are [{}]",
                    names(&schema).join(", ")
                )));
            }
            Ok(())
        };
        match self {
            Exchange::Sort { input, keys } => {
                if keys.is_empty() {
                    return Err(plan_error("sort needs at least one key".into()));
                }
                for key in keys {
                    has(input, &key.column)?;
                }
                if let Some(schema) = input.schema() {
                    for key in keys {
                        let field = schema.field_with_name(&key.column).expect("checked");
                        if !orderable(field.data_type()) {
                            return Err(plan_error(format!(
                                "cannot sort by {:?} of type {}: maps and unions have no order",
                                key.column,
                                field.data_type()
                            )));
                        }
                    }
                    let fields = super::partition::sort_fields(keys, &schema)
                        .map_err(|e| plan_error(e.to_string()))?;
                    RowConverter::new(fields)
                        .map_err(|e| plan_error(format!("cannot sort by {keys:?}: {e}")))?;
                }
            }
            Exchange::Aggregate {
                input,
                keys,
                aggregates,
            } => {
                for key in keys {
                    has(input, key)?;
                }
                for aggregate in aggregates {
                    if let Some(column) = &aggregate.column {
                        has(input, column)?;
                    }
                }
                if let Some(schema) = input.schema() {
                    self.reducer()
                        .expect("aggregate has a reducer")
                        .reduce_sides(&[schema], vec![Vec::new()])
                        .map_err(|e| plan_error(e.to_string()))?;
                }
            }
            Exchange::MapGroups { input, keys, .. } => {
                for key in keys {
                    has(input, key)?;
                }
            }
            Exchange::Join {
                left,
                right,
                left_on,
                right_on,
                ..
            } => {
                if left_on.is_empty() || left_on.len() != right_on.len() {
                    return Err(plan_error(format!(
                        "a join needs as many left keys as right keys, and at least one: {left_on:?} and {right_on:?}"
                    )));
                }
                for (l, r) in left_on.iter().zip(right_on) {
                    has(left, l)?;
                    has(right, r)?;
                    if let (Some(ls), Some(rs)) = (left.schema(), right.schema()) {
                        let (lt, rt) = (
                            ls.field_with_name(l).expect("checked").data_type(),
                            rs.field_with_name(r).expect("checked").data_type(),
                        );
                        check_join_keys(l, lt, r, rt).map_err(plan_error)?;
                    }
                }
            }
            Exchange::Union(inputs) => {
                let schemas: Vec<SchemaRef> = inputs.iter().filter_map(|p| p.schema()).collect();
                if !schemas.is_empty() {
                    crate::columns::unify(&schemas).map_err(|difference| {
                        plan_error(format!(
                            "union of datasets with different schemas (the same columns, of the \
                             same types, in the same order, are needed): {difference}"
                        ))
                    })?;
                }
            }
            Exchange::Zip { left, right } => {
                if let (Some(l), Some(r)) = (left.schema(), right.schema()) {
                    let _ = zip_schema(&l, &r);
                }
            }
            Exchange::RandomShuffle { .. } => {}
            Exchange::Repartition { n, .. } => {
                if *n == 0 {
                    return Err(plan_error("repartition needs at least one block".into()));
                }
            }
        }
        Ok(())
    }
}

/// Whether a left key of type `lt` can be joined with a right key of type `rt`: the same type,
/// strings of any kind with strings (see [`crate::columns::key_type`]).
pub(crate) fn check_join_keys(
    l: &str,
    lt: &arrow::datatypes::DataType,
    r: &str,
    rt: &arrow::datatypes::DataType,
) -> Result<(), String> {
    use crate::columns::key_type;
    if key_type(lt) != key_type(rt) {
        return Err(format!(
            "join keys {l:?} ({lt}) and {r:?} ({rt}) have different types; cast one first"
        ));
    }
    Ok(())
}

/// Whether values of this type have an order a sort can use.
fn orderable(data_type: &arrow::datatypes::DataType) -> bool {
    use arrow::datatypes::DataType;
    match data_type {
        DataType::Map(..) | DataType::Union(..) => false,
        DataType::List(f)
        | DataType::LargeList(f)
        | DataType::FixedSizeList(f, _)
        | DataType::ListView(f)
        | DataType::LargeListView(f) => orderable(f.data_type()),
        DataType::Struct(fields) => fields.iter().all(|f| orderable(f.data_type())),
        DataType::Dictionary(_, values) => orderable(values),
        _ => true,
    }
}

fn names(schema: &Schema) -> Vec<&str> {
    schema.fields().iter().map(|f| f.name().as_str()).collect()
}
