//! An aggregate joined on its group key computes only the groups the join can keep.
//!
//! DataFusion decorrelates TPC-H q17's `l_quantity < (SELECT 0.2 * avg(l_quantity) FROM
//! lineitem WHERE l_partkey = p_partkey)` into an aggregate of all 6 M line items grouped by
//! part (200 K groups), joined on the part key with the line items of about 200 parts (one
//! brand, one container). All but those 200 groups are computed for nothing.
//!
//! A join on `x = g`, where `g` is a group key of an aggregate on one side, pairs a group only
//! with rows of the other side whose `x` equals it. So the aggregate may read only the rows
//! whose `g` is among the other side's keys, or any superset of them: a group is dropped
//! whole or kept whole, with the same values. [`GroupKeyReduction`] finds such a superset that
//! is cheap and selective: following `x` down the other side through projections, filters and
//! joins on `x` (whose sides each hold every key of the join), to a side that is a filtered
//! scan of one table. It then puts a left semi join of the aggregate's input with that
//! scan's keys under the aggregate. For inner joins and the semi joins whose other side is
//! the aggregate; not when nulls join nulls.

use std::sync::Arc;

use datafusion::common::tree_node::{Transformed, TreeNode, TreeNodeRecursion};
use datafusion::common::{Column, NullEquality, Result};
use datafusion::logical_expr::{
    Expr, Join, JoinConstraint, JoinType, LogicalPlan, Projection, SubqueryAlias,
};
use datafusion::optimizer::{ApplyOrder, OptimizerConfig, OptimizerRule};

/// The alias of the key scan put under an aggregate (and the mark of a reduced aggregate).
const KEYS_ALIAS: &str = "__group_keys";

/// The logical optimizer rule: see the module documentation.
#[derive(Debug, Default)]
pub struct GroupKeyReduction;

impl OptimizerRule for GroupKeyReduction {
    fn name(&self) -> &str {
        "GroupKeyReduction"
    }

    fn apply_order(&self) -> Option<ApplyOrder> {
        Some(ApplyOrder::TopDown)
    }

    fn rewrite(
        &self,
        plan: LogicalPlan,
        _config: &dyn OptimizerConfig,
    ) -> Result<Transformed<LogicalPlan>> {
        let LogicalPlan::Join(join) = &plan else {
            return Ok(Transformed::no(plan));
        };
        if join.null_equality != NullEquality::NullEqualsNothing || join.null_aware {
            return Ok(Transformed::no(plan));
        }
        // Which sides may be reduced to the other's keys: a side whose unmatched rows the
        // join drops.
        let (left_reducible, right_reducible) = match join.join_type {
            JoinType::Inner => (true, true),
            JoinType::LeftSemi => (false, true),
            JoinType::RightSemi => (true, false),
            _ => (false, false),
        };
        for (left_key, right_key) in &join.on {
            let (Expr::Column(left_key), Expr::Column(right_key)) = (left_key, right_key) else {
                continue;
            };
            if right_reducible
                && let Some(right) = reduced(&join.right, right_key, &join.left, left_key)?
            {
                return Ok(Transformed::yes(rebuilt(
                    join,
                    Arc::clone(&join.left),
                    right,
                )?));
            }
            if left_reducible
                && let Some(left) = reduced(&join.left, left_key, &join.right, right_key)?
            {
                return Ok(Transformed::yes(rebuilt(
                    join,
                    left,
                    Arc::clone(&join.right),
                )?));
            }
        }
        Ok(Transformed::no(plan))
    }
}

/// `join` over new inputs.
fn rebuilt(join: &Join, left: Arc<LogicalPlan>, right: Arc<LogicalPlan>) -> Result<LogicalPlan> {
    Ok(LogicalPlan::Join(Join::try_new(
        left,
        right,
        join.on.clone(),
        join.filter.clone(),
        join.join_type,
        join.join_constraint,
        join.null_equality,
        join.null_aware,
    )?))
}

/// `side` with the aggregate its column `key` is a group key of reduced to the keys of a
/// cheap scan under `other` (whose column `other_key` is joined with `key`); `None` if there
/// is no such aggregate or scan, or the aggregate is reduced already.
fn reduced(
    side: &LogicalPlan,
    key: &Column,
    other: &LogicalPlan,
    other_key: &Column,
) -> Result<Option<Arc<LogicalPlan>>> {
    let Some(group_key) = group_key(side, key) else {
        return Ok(None);
    };
    let Some((scan, scan_key)) = key_scan(other, other_key) else {
        return Ok(None);
    };
    let keys = LogicalPlan::SubqueryAlias(SubqueryAlias::try_new(
        Arc::new(LogicalPlan::Projection(Projection::try_new(
            vec![Expr::Column(scan_key.clone())],
            Arc::new(scan.clone()),
        )?)),
        KEYS_ALIAS,
    )?);
    let keys_key = Column::new(Some(KEYS_ALIAS), scan_key.name.clone());
    Ok(Some(Arc::new(with_reduced_aggregate(
        side, &group_key, keys, keys_key,
    )?)))
}

/// The group key of an aggregate that `key`, a column of `plan`, is, through aliases and
/// projections that pass it on; `None` if it is not one, or the aggregate is reduced already.
fn group_key(plan: &LogicalPlan, key: &Column) -> Option<Column> {
    let index = plan.schema().index_of_column(key).ok()?;
    match plan {
        LogicalPlan::SubqueryAlias(alias) => group_key(
            &alias.input,
            &Column::from(alias.input.schema().qualified_field(index)),
        ),
        LogicalPlan::Projection(projection) => match &projection.expr[index] {
            Expr::Column(column) => group_key(&projection.input, column),
            Expr::Alias(alias) => match alias.expr.as_ref() {
                Expr::Column(column) => group_key(&projection.input, column),
                _ => None,
            },
            _ => None,
        },
        LogicalPlan::Aggregate(aggregate) => {
            let already = matches!(aggregate.input.as_ref(), LogicalPlan::Join(semi)
                if matches!(semi.right.as_ref(), LogicalPlan::SubqueryAlias(a) if a.alias.table() == KEYS_ALIAS));
            match aggregate.group_expr.get(index) {
                Some(Expr::Column(column)) if !already => Some(column.clone()),
                _ => None,
            }
        }
        _ => None,
    }
}

/// `plan` rebuilt with the aggregate `group_key` belongs to reading only the rows whose
/// `group_key` is among `keys` (column `keys_key`). Follows the path [`group_key`] found.
fn with_reduced_aggregate(
    plan: &LogicalPlan,
    group_key: &Column,
    keys: LogicalPlan,
    keys_key: Column,
) -> Result<LogicalPlan> {
    if let LogicalPlan::Aggregate(aggregate) = plan {
        let semi = LogicalPlan::Join(Join::try_new(
            Arc::clone(&aggregate.input),
            Arc::new(keys),
            vec![(Expr::Column(group_key.clone()), Expr::Column(keys_key))],
            None,
            JoinType::LeftSemi,
            JoinConstraint::On,
            NullEquality::NullEqualsNothing,
            false,
        )?);
        return plan.with_new_exprs(plan.expressions(), vec![semi]);
    }
    let input = plan.inputs()[0];
    let input = with_reduced_aggregate(input, group_key, keys, keys_key)?;
    match plan {
        // Its schema comes from the alias, which `with_new_exprs` would keep.
        LogicalPlan::SubqueryAlias(alias) => Ok(LogicalPlan::SubqueryAlias(
            SubqueryAlias::try_new(Arc::new(input), alias.alias.clone())?,
        )),
        _ => plan.with_new_exprs(plan.expressions(), vec![input]),
    }
}

/// A scan of one table, filtered, under `plan` whose column `key` holds a superset of
/// `plan`'s values of `key`; and its column for them.
fn key_scan(plan: &LogicalPlan, key: &Column) -> Option<(LogicalPlan, Column)> {
    if is_filtered_scan(plan) {
        return Some((plan.clone(), key.clone()));
    }
    match plan {
        LogicalPlan::Projection(projection) => {
            let index = plan.schema().index_of_column(key).ok()?;
            match &projection.expr[index] {
                Expr::Column(column) => key_scan(&projection.input, column),
                _ => None,
            }
        }
        LogicalPlan::Filter(filter) => key_scan(&filter.input, key),
        LogicalPlan::SubqueryAlias(alias) => {
            let index = plan.schema().index_of_column(key).ok()?;
            key_scan(
                &alias.input,
                &Column::from(alias.input.schema().qualified_field(index)),
            )
        }
        LogicalPlan::Join(join)
            if matches!(join.join_type, JoinType::Inner | JoinType::LeftSemi)
                && join.null_equality == NullEquality::NullEqualsNothing =>
        {
            // Each side of a join on `key` holds every key of the join's output.
            let paired = join
                .on
                .iter()
                .find_map(|(left, right)| match (left, right) {
                    (Expr::Column(left), Expr::Column(right)) if left == key => Some(right.clone()),
                    (Expr::Column(left), Expr::Column(right)) if right == key => Some(left.clone()),
                    _ => None,
                });
            let (own, other) = if join.left.schema().has_column(key) {
                (&join.left, &join.right)
            } else {
                (&join.right, &join.left)
            };
            key_scan(own, key).or_else(|| key_scan(other, paired.as_ref()?))
        }
        _ => None,
    }
}

/// Whether `plan` is projections and filters over one table's scan, with a filter somewhere.
fn is_filtered_scan(plan: &LogicalPlan) -> bool {
    let mut plain = true;
    let mut filtered = false;
    plan.apply(|node| {
        match node {
            LogicalPlan::Filter(_) => filtered = true,
            LogicalPlan::TableScan(scan) => filtered |= !scan.filters.is_empty(),
            LogicalPlan::Projection(_) | LogicalPlan::SubqueryAlias(_) => {}
            _ => plain = false,
        }
        Ok(if plain {
            TreeNodeRecursion::Continue
        } else {
            TreeNodeRecursion::Stop
        })
    })
    .expect("the visit cannot fail");
    plain && filtered
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use arrow::array::{Int64Array, RecordBatch};
    use arrow::datatypes::{DataType, Field, Schema};
    use datafusion::prelude::SessionContext;
    use proptest::prelude::*;

    use crate::sql::session;
    use crate::sql::test_support::{optimized_plan, sorted_answer};

    /// `p(p_k, p_b)` (parts with a brand) and `l(l_k, l_q, l_p)` (lines of parts), keys from
    /// few values so that they repeat, miss and are null.
    fn register(ctx: &SessionContext, parts: &[(Option<i64>, i64)], lines: &[(Option<i64>, i64)]) {
        let table = |fields: Vec<Field>, columns: Vec<Arc<dyn arrow::array::Array>>| {
            RecordBatch::try_new(Arc::new(Schema::new(fields)), columns).unwrap()
        };
        let p = table(
            vec![
                Field::new("p_k", DataType::Int64, true),
                Field::new("p_b", DataType::Int64, false),
            ],
            vec![
                Arc::new(Int64Array::from_iter(parts.iter().map(|r| r.0))),
                Arc::new(Int64Array::from_iter_values(parts.iter().map(|r| r.1))),
            ],
        );
        let l = table(
            vec![
                Field::new("l_k", DataType::Int64, true),
                Field::new("l_q", DataType::Int64, false),
                Field::new("l_p", DataType::Int64, false),
            ],
            vec![
                Arc::new(Int64Array::from_iter(lines.iter().map(|r| r.0))),
                Arc::new(Int64Array::from_iter_values(lines.iter().map(|r| r.1))),
                Arc::new(Int64Array::from_iter_values(
                    lines.iter().map(|r| r.1 * 3 - 7),
                )),
            ],
        );
        ctx.register_batch("p", p).unwrap();
        ctx.register_batch("l", l).unwrap();
    }

    const QUERIES: [&str; 4] = [
        // q17's shape: a correlated scalar subquery, decorrelated into an aggregate by key.
        "SELECT sum(l_p) FROM l, p WHERE p_k = l_k AND p_b = 2 \
         AND l_q < (SELECT 0.8 * avg(l_q) FROM l AS l2 WHERE l2.l_k = p_k)",
        // An inner join of a filtered table with an aggregate by its key.
        "SELECT p_k, s, n FROM p JOIN (SELECT l_k, sum(l_q) AS s, count(*) AS n FROM l GROUP BY l_k) a \
         ON a.l_k = p_k WHERE p_b < 2",
        // The aggregate on the left, grouped by two keys, one of them joined.
        "SELECT a.l_k, a.l_p, a.s FROM (SELECT l_k, l_p, max(l_q) AS s FROM l GROUP BY l_k, l_p) a \
         JOIN p ON p_k = a.l_k AND p_b >= 1",
        // No filter on the other side: left as it is.
        "SELECT p_k, s FROM p JOIN (SELECT l_k, sum(l_q) AS s FROM l GROUP BY l_k) a ON a.l_k = p_k",
    ];

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(48))]

        #[test]
        fn answers_as_datafusion(
            parts in prop::collection::vec((prop::option::weighted(0.9, 0i64..20), 0i64..4), 0..30),
            lines in prop::collection::vec((prop::option::weighted(0.9, 0i64..20), -5i64..10), 0..80),
            query in 0..QUERIES.len(),
        ) {
            let manta = session();
            let plain = SessionContext::new();
            register(&manta, &parts, &lines);
            register(&plain, &parts, &lines);
            prop_assert_eq!(sorted_answer(&manta, QUERIES[query]), sorted_answer(&plain, QUERIES[query]));
        }
    }

    /// The aggregates of the first three shapes read only the filtered keys, once; the
    /// fourth, whose other side has no filter, is left alone.
    #[test]
    fn reduces_aggregates_joined_with_a_filtered_scan_only() {
        let ctx = session();
        register(&ctx, &[(Some(1), 2)], &[(Some(1), 3)]);
        for (n, sql) in QUERIES.iter().enumerate() {
            let plan = optimized_plan(&ctx, sql);
            let reductions = plan.matches(super::KEYS_ALIAS).count();
            let expected = if n < 3 { 1 } else { 0 };
            assert!(
                (reductions > 0) == (expected > 0) && !plan.contains("__group_keys.__group_keys"),
                "query {n}: {reductions} reductions in\n{plan}"
            );
        }
    }
}
