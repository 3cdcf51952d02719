//! A mistake of DataFusion 55 kept from SQL answers: an outer join says the columns of its
//! nullable side are constant when they were constant below it, though the rows it adds with
//! nulls make them not so.
//!
//! `SELECT * FROM a FULL JOIN (SELECT * FROM b WHERE h = 'x') r ON a.g = r.h ORDER BY h DESC`:
//! below the join `h` is `'x'` on every row, so the join reports `h` constant, every ordering
//! of `h` holds, and `EnforceSorting` drops the sort; but the rows of `a` without a match have
//! `h` null, and come out wherever the join puts them (found by `tests/all/differential.rs`;
//! in order only by luck when the join runs in one piece). The equivalence of a join's output
//! carries both sides' (`EquivalenceGroup::join` in `datafusion-physical-expr`), whichever
//! side the nulls are added to.
//!
//! [`ForgetNullableConstants`], placed before DataFusion's physical optimizer rules, puts a
//! [`ForgetConstants`] node above each nullable side that has constants: it passes the batches
//! on and says nothing about them but their partitioning, so the join knows no constant of that
//! side (nor its orderings, which an outer join keeps only for the side it preserves anyway).
//! [`RemoveForgetConstants`], placed after them, takes the nodes out again, once the sorts that
//! needed keeping are in the plan: the plans that run, and that tasks are sent, are
//! DataFusion's own.

use std::fmt;
use std::sync::Arc;

use datafusion::common::config::ConfigOptions;
use datafusion::common::tree_node::{Transformed, TreeNode, TreeNodeRecursion};
use datafusion::common::{JoinType, Result};
use datafusion::execution::TaskContext;
use datafusion::physical_expr::{EquivalenceProperties, PhysicalExpr};
use datafusion::physical_optimizer::PhysicalOptimizerRule;
use datafusion::physical_plan::execution_plan::replace_children_if_necessary;
use datafusion::physical_plan::joins::{HashJoinExec, NestedLoopJoinExec, SortMergeJoinExec};
use datafusion::physical_plan::{
    DisplayAs, DisplayFormatType, ExecutionPlan, ExecutionPlanProperties, PlanProperties,
    SendableRecordBatchStream,
};

/// The rule that hides the constants of outer joins' nullable sides: see the module
/// documentation.
#[derive(Debug, Default)]
pub struct ForgetNullableConstants;

impl PhysicalOptimizerRule for ForgetNullableConstants {
    fn optimize(
        &self,
        plan: Arc<dyn ExecutionPlan>,
        _config: &ConfigOptions,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        plan.transform_up(|node| {
            let Some((left, right)) = nullable_sides(&node) else {
                return Ok(Transformed::no(node));
            };
            let children: Vec<Arc<dyn ExecutionPlan>> = node
                .children()
                .into_iter()
                .zip([left, right])
                .map(|(child, nullable)| match nullable && has_constants(child) {
                    true => Arc::new(ForgetConstants::new(Arc::clone(child))) as _,
                    false => Arc::clone(child),
                })
                .collect();
            let changed = children
                .iter()
                .any(|child| child.downcast_ref::<ForgetConstants>().is_some());
            match changed {
                true => Ok(Transformed::yes(replace_children_if_necessary(
                    node, children,
                )?)),
                false => Ok(Transformed::no(node)),
            }
        })
        .map(|t| t.data)
    }

    fn name(&self) -> &str {
        "ForgetNullableConstants"
    }

    fn schema_check(&self) -> bool {
        true
    }
}

/// The rule that takes the [`ForgetConstants`] nodes out again.
#[derive(Debug, Default)]
pub struct RemoveForgetConstants;

impl PhysicalOptimizerRule for RemoveForgetConstants {
    fn optimize(
        &self,
        plan: Arc<dyn ExecutionPlan>,
        _config: &ConfigOptions,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        plan.transform_up(|node| match node.downcast_ref::<ForgetConstants>() {
            Some(forget) => Ok(Transformed::yes(Arc::clone(&forget.input))),
            None => Ok(Transformed::no(node)),
        })
        .map(|t| t.data)
    }

    fn name(&self) -> &str {
        "RemoveForgetConstants"
    }

    fn schema_check(&self) -> bool {
        true
    }
}

/// For a join, whether nulls are added to its left and to its right side's columns.
fn nullable_sides(node: &Arc<dyn ExecutionPlan>) -> Option<(bool, bool)> {
    let join_type = if let Some(join) = node.downcast_ref::<HashJoinExec>() {
        *join.join_type()
    } else if let Some(join) = node.downcast_ref::<SortMergeJoinExec>() {
        join.join_type()
    } else if let Some(join) = node.downcast_ref::<NestedLoopJoinExec>() {
        *join.join_type()
    } else {
        return None;
    };
    match join_type {
        JoinType::Left => Some((false, true)),
        JoinType::Right => Some((true, false)),
        JoinType::Full => Some((true, true)),
        _ => None,
    }
}

fn has_constants(plan: &Arc<dyn ExecutionPlan>) -> bool {
    !plan.equivalence_properties().constants().is_empty()
}

/// Its input's batches, with no equivalences, constants or orderings said of them: see the
/// module documentation.
#[derive(Debug)]
pub struct ForgetConstants {
    input: Arc<dyn ExecutionPlan>,
    properties: Arc<PlanProperties>,
}

impl ForgetConstants {
    fn new(input: Arc<dyn ExecutionPlan>) -> Self {
        let properties = PlanProperties::new(
            EquivalenceProperties::new(input.schema()),
            input.output_partitioning().clone(),
            input.pipeline_behavior(),
            input.boundedness(),
        );
        Self {
            input,
            properties: Arc::new(properties),
        }
    }
}

impl DisplayAs for ForgetConstants {
    fn fmt_as(&self, _format: DisplayFormatType, f: &mut fmt::Formatter) -> fmt::Result {
        write!(f, "ForgetConstants")
    }
}

impl ExecutionPlan for ForgetConstants {
    fn name(&self) -> &str {
        "ForgetConstants"
    }

    fn properties(&self) -> &Arc<PlanProperties> {
        &self.properties
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
        Ok(Arc::new(Self::new(children.swap_remove(0))))
    }

    fn execute(
        &self,
        partition: usize,
        context: Arc<TaskContext>,
    ) -> Result<SendableRecordBatchStream> {
        self.input.execute(partition, context)
    }
}

#[cfg(test)]
mod tests {
    use arrow::array::{Array, AsArray, Int64Array, RecordBatch, StringArray};
    use arrow::datatypes::{DataType, Field, Schema};
    use datafusion::datasource::MemTable;

    use super::*;

    /// `rows` rows of `k` (0..rows) and `g` (`"x"` for every third, else `"y"`), in batches of
    /// three rows.
    fn table(key: &str, text: &str, rows: i64) -> Arc<MemTable> {
        let schema = Arc::new(Schema::new(vec![
            Field::new(key, DataType::Int64, true),
            Field::new(text, DataType::Utf8, true),
        ]));
        let batches = (0..rows)
            .step_by(3)
            .map(|start| {
                let keys: Vec<i64> = (start..(start + 3).min(rows)).collect();
                let texts: StringArray = keys
                    .iter()
                    .map(|k| Some(if k % 3 == 0 { "x" } else { "y" }))
                    .collect();
                RecordBatch::try_new(
                    Arc::clone(&schema),
                    vec![Arc::new(Int64Array::from(keys)), Arc::new(texts)],
                )
                .unwrap()
            })
            .collect();
        Arc::new(MemTable::try_new(schema, vec![batches]).unwrap())
    }

    #[test]
    fn a_sort_on_an_outer_joins_nullable_constant_is_kept() {
        let runtime = tokio::runtime::Runtime::new().unwrap();
        for join in ["FULL", "LEFT"] {
            let ctx = crate::sql::session();
            ctx.register_table("a", table("k", "g", 60)).unwrap();
            ctx.register_table("b", table("j", "h", 6)).unwrap();
            let query = format!(
                "SELECT k, g, j, h FROM a {join} JOIN (SELECT * FROM b WHERE h = 'x') r \
                 ON a.k = r.j"
            );
            let ordered = format!("SELECT * FROM ({query}) ORDER BY h DESC NULLS FIRST, k");
            let (rows, expected) = runtime
                .block_on(async {
                    let rows = ctx.sql(&ordered).await?.collect().await?;
                    let all = ctx.sql(&query).await?.collect().await?;
                    Ok::<_, datafusion::error::DataFusionError>((rows, all))
                })
                .unwrap();
            // Every row, once: the same as without the sort.
            let count =
                |batches: &[RecordBatch]| batches.iter().map(|b| b.num_rows()).sum::<usize>();
            assert_eq!(count(&rows), count(&expected), "{join}");
            // `h` is null (a row of `a` without a match) or "x", nulls first.
            let h: Vec<Option<String>> = rows
                .iter()
                .flat_map(|b| {
                    let column = b
                        .column(3)
                        .as_string_view_opt()
                        .map(|c| c.iter().map(|v| v.map(str::to_string)).collect::<Vec<_>>());
                    column.unwrap_or_else(|| {
                        let c = b.column(3).as_string::<i32>();
                        (0..c.len())
                            .map(|i| c.is_valid(i).then(|| c.value(i).to_string()))
                            .collect()
                    })
                })
                .collect();
            let first_value = h.iter().position(Option::is_some).unwrap_or(h.len());
            assert!(
                h[first_value..].iter().all(Option::is_some),
                "{join}: a null after a value in {h:?}"
            );
            assert_eq!(
                h.iter().filter(|v| v.is_some()).count(),
                2,
                "{join}: j 0 and 3 match"
            );
        }
    }
}
