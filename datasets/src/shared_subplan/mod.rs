//! An aggregate that a query computes twice, computed once.
//!
//! A view or `WITH` clause used twice is inlined twice: DataFusion has no common subplan
//! reuse, so TPC-H q15, whose `revenue` view is read once for `max(total_revenue)` and once for
//! the join with `supplier`, scans three months of line items and aggregates them by supplier
//! twice. DuckDB materializes such a view once.
//!
//! [`SharedSubplans`] finds the aggregates that occur more than once in a plan, its subqueries
//! included, as equal subtrees (same input, same expressions; nothing volatile, no reference to
//! an outer query), and wraps each occurrence in a [`SharedSubplan`] node. The physical
//! planner ([`SharedSubplanPlanner`], through [`QueryPlanner`]) gives every occurrence of one
//! subtree the same [`exec::SharedResult`], so the first occurrence to run computes the
//! aggregate's output, every partition of it, and the others read those batches. Aggregates
//! only: their output is what their hash table held anyway, and usually small; a repeated scan
//! or join is left to run twice rather than held in memory whole.
//!
//! The rule runs in the embedded SQL session only: the plans of a session with tasks are
//! serialized, and this node is not.

mod exec;

use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;

use async_trait::async_trait;
use datafusion::common::tree_node::{Transformed, TreeNode, TreeNodeRecursion};
use datafusion::common::{DFSchemaRef, Result};
use datafusion::execution::context::QueryPlanner;
use datafusion::logical_expr::physical_planning_context::PhysicalPlanningContext;
use datafusion::logical_expr::{
    Expr, Extension, LogicalPlan, UserDefinedLogicalNode, UserDefinedLogicalNodeCore,
};
use datafusion::optimizer::{OptimizerConfig, OptimizerRule};
use datafusion::physical_plan::ExecutionPlan;
use datafusion::physical_planner::{DefaultPhysicalPlanner, ExtensionPlanner, PhysicalPlanner};
use parking_lot::Mutex;

pub(crate) use exec::SharedExec;

/// The logical optimizer rule: see the module documentation.
#[derive(Debug, Default)]
pub struct SharedSubplans;

impl OptimizerRule for SharedSubplans {
    fn name(&self) -> &str {
        "SharedSubplans"
    }

    /// The whole plan at once: occurrences are counted across it and its subqueries.
    fn apply_order(&self) -> Option<datafusion::optimizer::ApplyOrder> {
        None
    }

    fn rewrite(
        &self,
        plan: LogicalPlan,
        _config: &dyn OptimizerConfig,
    ) -> Result<Transformed<LogicalPlan>> {
        let repeated = repeated_aggregates(&plan)?;
        if repeated.is_empty() {
            return Ok(Transformed::no(plan));
        }
        plan.transform_down_with_subqueries(|node| {
            if is_shared(&node) {
                return Ok(Transformed::new(node, false, TreeNodeRecursion::Jump));
            }
            if !repeated.contains(&node) {
                return Ok(Transformed::no(node));
            }
            let shared = LogicalPlan::Extension(Extension {
                node: Arc::new(SharedSubplan {
                    input: Arc::new(node),
                }),
            });
            Ok(Transformed::new(shared, true, TreeNodeRecursion::Jump))
        })
    }
}

/// The aggregates that occur more than once in `plan` (subqueries included) and may be
/// computed once for all: nothing volatile, no outer reference, not inside a node already
/// shared.
fn repeated_aggregates(plan: &LogicalPlan) -> Result<Vec<LogicalPlan>> {
    let mut seen: HashMap<LogicalPlan, usize> = HashMap::new();
    plan.apply_with_subqueries(|node| {
        if is_shared(node) {
            return Ok(TreeNodeRecursion::Jump);
        }
        if matches!(node, LogicalPlan::Aggregate(_)) && shareable(node)? {
            *seen.entry(node.clone()).or_default() += 1;
        }
        Ok(TreeNodeRecursion::Continue)
    })?;
    Ok(seen
        .into_iter()
        .filter(|(_, count)| *count > 1)
        .map(|(node, _)| node)
        .collect())
}

/// Whether computing `subtree` once gives every occurrence its answer: no volatile
/// expression (each occurrence would draw its own values), no outer reference (each
/// occurrence depends on its own outer row), no subquery expression.
fn shareable(subtree: &LogicalPlan) -> Result<bool> {
    let mut ok = true;
    subtree.apply(|node| {
        if !matches!(node, LogicalPlan::TableScan(_)) {
            for expr in node.expressions() {
                if expr.is_volatile()
                    || expr.contains_outer()
                    || expr.exists(|e| {
                        Ok(matches!(
                            e,
                            Expr::ScalarSubquery(_) | Expr::Exists(_) | Expr::InSubquery(_)
                        ))
                    })?
                {
                    ok = false;
                    return Ok(TreeNodeRecursion::Stop);
                }
            }
        }
        Ok(TreeNodeRecursion::Continue)
    })?;
    Ok(ok)
}

fn is_shared(node: &LogicalPlan) -> bool {
    matches!(node, LogicalPlan::Extension(e) if e.node.as_any().is::<SharedSubplan>())
}

/// One occurrence of a subtree that occurs more than once: its rows are computed once for
/// every occurrence (see the module documentation).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd)]
pub struct SharedSubplan {
    input: Arc<LogicalPlan>,
}

impl UserDefinedLogicalNodeCore for SharedSubplan {
    fn name(&self) -> &str {
        "SharedSubplan"
    }

    fn inputs(&self) -> Vec<&LogicalPlan> {
        vec![&self.input]
    }

    fn schema(&self) -> &DFSchemaRef {
        self.input.schema()
    }

    fn expressions(&self) -> Vec<Expr> {
        Vec::new()
    }

    fn fmt_for_explain(&self, f: &mut fmt::Formatter) -> fmt::Result {
        write!(f, "SharedSubplan: computed once for every occurrence")
    }

    fn with_exprs_and_inputs(
        &self,
        _exprs: Vec<Expr>,
        mut inputs: Vec<LogicalPlan>,
    ) -> Result<Self> {
        Ok(Self {
            input: Arc::new(inputs.swap_remove(0)),
        })
    }
}

/// Plans [`SharedSubplan`] nodes as [`SharedExec`]s; the occurrences of one subtree (equal
/// inputs) share one result. One planner per query: see [`SharedSubplanQueryPlanner`].
#[derive(Debug, Default)]
struct SharedSubplanPlanner {
    results: Mutex<HashMap<LogicalPlan, Arc<exec::SharedResult>>>,
}

#[async_trait]
impl ExtensionPlanner for SharedSubplanPlanner {
    async fn plan_extension(
        &self,
        _planner: &dyn PhysicalPlanner,
        node: &dyn UserDefinedLogicalNode,
        _logical_inputs: &[&LogicalPlan],
        physical_inputs: &[Arc<dyn ExecutionPlan>],
        _session: &dyn datafusion::catalog::Session,
        _planning_ctx: &PhysicalPlanningContext,
    ) -> Result<Option<Arc<dyn ExecutionPlan>>> {
        let Some(shared) = node.as_any().downcast_ref::<SharedSubplan>() else {
            return Ok(None);
        };
        let result = self
            .results
            .lock()
            .entry(shared.input.as_ref().clone())
            .or_default()
            .clone();
        Ok(Some(Arc::new(SharedExec::new(
            Arc::clone(&physical_inputs[0]),
            result,
        ))))
    }
}

/// DataFusion's physical planner, with a fresh [`SharedSubplanPlanner`] for each query (so
/// that only one query's occurrences share a result).
#[derive(Debug, Default)]
pub struct SharedSubplanQueryPlanner;

#[async_trait]
impl QueryPlanner for SharedSubplanQueryPlanner {
    async fn create_physical_plan(
        &self,
        logical_plan: &LogicalPlan,
        session: &dyn datafusion::catalog::Session,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        DefaultPhysicalPlanner::with_extension_planners(vec![Arc::new(
            SharedSubplanPlanner::default(),
        )])
        .create_physical_plan(logical_plan, session)
        .await
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use arrow::array::{Int64Array, RecordBatch, StringArray};
    use arrow::datatypes::{DataType, Field, Schema};
    use datafusion::common::tree_node::{TreeNode, TreeNodeRecursion};
    use datafusion::prelude::SessionContext;
    use proptest::prelude::*;

    use crate::sql::session;
    use crate::sql::test_support::{optimized_plan, sorted_answer};

    /// `s(s_k, s_name)` (suppliers) and `l(l_k, l_v, l_d)` (lines by supplier, with a value
    /// and a day), keys from few values so that they repeat, miss and are null.
    fn register(
        ctx: &SessionContext,
        names: &[(Option<i64>, String)],
        lines: &[(Option<i64>, i64, i64)],
    ) {
        let s = RecordBatch::try_new(
            Arc::new(Schema::new(vec![
                Field::new("s_k", DataType::Int64, true),
                Field::new("s_name", DataType::Utf8, false),
            ])),
            vec![
                Arc::new(Int64Array::from_iter(names.iter().map(|r| r.0))),
                Arc::new(StringArray::from_iter_values(names.iter().map(|r| &r.1))),
            ],
        )
        .unwrap();
        let l = RecordBatch::try_new(
            Arc::new(Schema::new(vec![
                Field::new("l_k", DataType::Int64, true),
                Field::new("l_v", DataType::Int64, false),
                Field::new("l_d", DataType::Int64, false),
            ])),
            vec![
                Arc::new(Int64Array::from_iter(lines.iter().map(|r| r.0))),
                Arc::new(Int64Array::from_iter_values(lines.iter().map(|r| r.1))),
                Arc::new(Int64Array::from_iter_values(lines.iter().map(|r| r.2))),
            ],
        )
        .unwrap();
        ctx.register_batch("s", s).unwrap();
        ctx.register_batch("l", l).unwrap();
    }

    /// The queries of the property test; the first four share an aggregate.
    const QUERIES: [&str; 5] = [
        // TPC-H q15's shape: a view read by a join and by a scalar subquery's max.
        "WITH r AS (SELECT l_k AS k, sum(l_v) AS total FROM l WHERE l_d >= 2 GROUP BY l_k) \
         SELECT s_k, s_name, total FROM s, r WHERE s_k = k AND total = (SELECT max(total) FROM r)",
        // A view joined with itself.
        "WITH r AS (SELECT l_k AS k, count(*) AS n, min(l_d) AS d FROM l GROUP BY l_k) \
         SELECT a.k, a.n + b.n, a.d - b.d FROM r a JOIN r b ON a.k = b.k + 1",
        // An aggregate with no groups, in two different scalar subqueries.
        "SELECT s_k FROM s WHERE s_k > (SELECT avg(l_v) - 3 FROM l) \
         AND s_k < (SELECT avg(l_v) + 3 FROM l)",
        // Two correlated subqueries, which DataFusion turns into one aggregate by key, twice.
        "SELECT s_k FROM s WHERE 1 < (SELECT count(*) FROM l WHERE l_k = s_k) \
         OR 3 > (SELECT count(*) FROM l WHERE l_k = s_k)",
        // Two different aggregates of one table.
        "SELECT a.k, a.t, b.t FROM (SELECT l_k AS k, sum(l_v) AS t FROM l GROUP BY l_k) a \
         JOIN (SELECT l_k AS k, sum(l_d) AS t FROM l GROUP BY l_k) b ON a.k = b.k",
    ];

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(48))]

        #[test]
        fn answers_as_datafusion(
            names in prop::collection::vec((prop::option::weighted(0.9, 0i64..12), "[a-zé☃]{0,3}"), 0..20),
            lines in prop::collection::vec((prop::option::weighted(0.9, 0i64..12), -5i64..10, 0i64..4), 0..60),
            query in 0..QUERIES.len(),
        ) {
            let manta = session();
            let plain = SessionContext::new();
            register(&manta, &names, &lines);
            register(&plain, &names, &lines);
            prop_assert_eq!(sorted_answer(&manta, QUERIES[query]), sorted_answer(&plain, QUERIES[query]));
        }
    }

    /// The first four queries share one aggregate between two occurrences; the last, and an
    /// aggregate of a volatile expression, share none.
    #[test]
    fn shares_repeated_aggregates_only() {
        let ctx = session();
        register(&ctx, &[(Some(1), "a".into())], &[(Some(1), 3, 2)]);
        let volatile = "SELECT a.t, b.t FROM (SELECT sum(random()) AS t FROM l) a, \
                        (SELECT sum(random()) AS t FROM l) b";
        for (n, sql) in QUERIES.iter().chain([&volatile]).enumerate() {
            let plan = optimized_plan(&ctx, sql);
            let shared = plan.matches("SharedSubplan").count();
            let expected = if n < 4 { 2 } else { 0 };
            assert_eq!(shared, expected, "query {n}:\n{plan}");
        }
    }

    /// Of the two occurrences of q15's view, one computes the aggregate and the other reads
    /// its batches: only one of the two inputs ran (has metrics with output rows).
    #[test]
    fn computes_a_shared_aggregate_once() {
        let ctx = session();
        let lines: Vec<_> = (0..200).map(|i| (Some(i % 7), i, i % 4)).collect();
        let names: Vec<_> = (0..7).map(|k| (Some(k), format!("s{k}"))).collect();
        register(&ctx, &names, &lines);
        let (plan, batches) = crate::thread_runtime::block_on(async {
            let plan = ctx.sql(QUERIES[0]).await?.create_physical_plan().await?;
            let batches =
                datafusion::physical_plan::collect(Arc::clone(&plan), ctx.task_ctx()).await?;
            Ok::<_, datafusion::error::DataFusionError>((plan, batches))
        })
        .unwrap();
        assert!(batches.iter().map(|b| b.num_rows()).sum::<usize>() > 0);
        let mut ran = Vec::new();
        plan.apply(|node| {
            if node.name() == "SharedExec" {
                let input = node.children()[0];
                ran.push(input.metrics().and_then(|m| m.output_rows()).unwrap_or(0) > 0);
            }
            Ok(TreeNodeRecursion::Continue)
        })
        .unwrap();
        ran.sort();
        assert_eq!(ran, [false, true], "inputs run, per occurrence");
    }
}
