//! A semi join on an inner join's key, moved below that join to the side the key comes from.
//!
//! DataFusion turns `o_orderkey IN (SELECT l_orderkey … HAVING sum(l_quantity) > 300)` into a
//! left semi join and leaves it where the query put it: above every join of the `FROM` clause.
//! In TPC-H q18 that means joining 1.5 M orders (a hash table of all of them) with 6 M line
//! items, and only then keeping the rows of the 57 orders the subquery names. DataFusion has
//! no cost-based join order to see that the semi join is the selective step.
//!
//! When every key of a semi join (`X ⋉ S` on `x = s`, with no other condition) is also a key
//! of the inner join `X = L ⋈ R` below it, and comes from `L`, then `(L ⋈ R) ⋉ S` has the same
//! rows as `(L ⋉ S) ⋈ R`: whether a row of the join is kept depends on its `L` part alone. So
//! [`SemiJoinPushdown`] moves it there (through projections that pass the keys on), and again
//! while the same holds below. Whatever the sizes, the semi join then probes `L` instead of
//! `L ⋈ R`, and the join gets only the rows of `L` that the semi join keeps; in q18 the join
//! builds on 57 orders instead of 1.5 M. Requiring the inner join's own key keeps it away from
//! the case where moving could hurt most: a join on another key that drops most rows of `L`
//! (TPC-H q21's `EXISTS`, whose line items are first cut to one nation's suppliers).

use std::sync::Arc;

use datafusion::common::Result;
use datafusion::common::tree_node::Transformed;
use datafusion::logical_expr::{Expr, Join, JoinType, LogicalPlan, Projection};
use datafusion::optimizer::{ApplyOrder, OptimizerConfig, OptimizerRule};

/// The logical optimizer rule: see the module documentation.
#[derive(Debug, Default)]
pub struct SemiJoinPushdown;

impl OptimizerRule for SemiJoinPushdown {
    fn name(&self) -> &str {
        "SemiJoinPushdown"
    }

    fn apply_order(&self) -> Option<ApplyOrder> {
        Some(ApplyOrder::TopDown)
    }

    fn rewrite(
        &self,
        plan: LogicalPlan,
        _config: &dyn OptimizerConfig,
    ) -> Result<Transformed<LogicalPlan>> {
        let LogicalPlan::Join(semi) = &plan else {
            return Ok(Transformed::no(plan));
        };
        match pushed_down(semi)? {
            Some(pushed) => Ok(Transformed::yes(pushed)),
            None => Ok(Transformed::no(plan)),
        }
    }
}

/// `semi` moved below the inner join under it, if it is a plain left semi join on that
/// join's keys; `None` otherwise.
fn pushed_down(semi: &Join) -> Result<Option<LogicalPlan>> {
    if semi.join_type != JoinType::LeftSemi || semi.filter.is_some() || semi.null_aware {
        return Ok(None);
    }
    let keys: Vec<&Expr> = semi.on.iter().map(|(kept, _)| kept).collect();
    if keys.is_empty() || !keys.iter().all(|key| matches!(key, Expr::Column(_))) {
        return Ok(None);
    }
    // A projection that passes the keys on unchanged can go above the semi join: the semi
    // join's output is its left side's.
    let (projection, below) = match semi.left.as_ref() {
        LogicalPlan::Projection(projection)
            if keys.iter().all(|key| projection.expr.contains(key)) =>
        {
            (Some(projection), projection.input.as_ref())
        }
        other => (None, other),
    };
    let LogicalPlan::Join(inner) = below else {
        return Ok(None);
    };
    if inner.join_type != JoinType::Inner || inner.null_aware {
        return Ok(None);
    }
    let joins_on = |key: &Expr| {
        inner
            .on
            .iter()
            .any(|(left, right)| left == key || right == key)
    };
    if !keys.iter().all(|key| joins_on(key)) {
        return Ok(None);
    }
    let comes_from = |side: &LogicalPlan| {
        keys.iter().all(|key| match key {
            Expr::Column(column) => side.schema().has_column(column),
            _ => false,
        })
    };
    let reduce = |side: &Arc<LogicalPlan>| -> Result<Arc<LogicalPlan>> {
        Ok(Arc::new(LogicalPlan::Join(Join::try_new(
            Arc::clone(side),
            Arc::clone(&semi.right),
            semi.on.clone(),
            None,
            JoinType::LeftSemi,
            semi.join_constraint,
            semi.null_equality,
            false,
        )?)))
    };
    let (left, right) = if comes_from(&inner.left) {
        (reduce(&inner.left)?, Arc::clone(&inner.right))
    } else if comes_from(&inner.right) {
        (Arc::clone(&inner.left), reduce(&inner.right)?)
    } else {
        return Ok(None);
    };
    let joined = LogicalPlan::Join(Join::try_new(
        left,
        right,
        inner.on.clone(),
        inner.filter.clone(),
        JoinType::Inner,
        inner.join_constraint,
        inner.null_equality,
        false,
    )?);
    Ok(Some(match projection {
        Some(projection) => LogicalPlan::Projection(Projection::try_new_with_schema(
            projection.expr.clone(),
            Arc::new(joined),
            Arc::clone(&projection.schema),
        )?),
        None => joined,
    }))
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use arrow::array::{Int64Array, RecordBatch, StringArray};
    use arrow::datatypes::{DataType, Field, Schema};
    use datafusion::prelude::SessionContext;
    use proptest::prelude::*;

    use crate::sql::session;
    use crate::sql::test_support::{optimized_plan, sorted_answer};

    /// Tables `o(k, c, v)`, `l(k, q)` and `c(c, name)` with keys drawn from few values (so
    /// that keys repeat, miss and are null) and a semi join query shape per case, answered by
    /// Manta's session and by plain DataFusion.
    fn register(ctx: &SessionContext, rows: &[(Option<i64>, Option<i64>, i64)]) {
        let key = |i: usize| rows[i % rows.len().max(1)].0;
        let o = RecordBatch::try_new(
            Arc::new(Schema::new(vec![
                Field::new("o_k", DataType::Int64, true),
                Field::new("o_c", DataType::Int64, true),
                Field::new("o_v", DataType::Int64, false),
            ])),
            vec![
                Arc::new(Int64Array::from_iter(rows.iter().map(|r| r.0))),
                Arc::new(Int64Array::from_iter(rows.iter().map(|r| r.1))),
                Arc::new(Int64Array::from_iter_values(rows.iter().map(|r| r.2))),
            ],
        )
        .unwrap();
        let n = rows.len() * 3;
        let l = RecordBatch::try_new(
            Arc::new(Schema::new(vec![
                Field::new("l_k", DataType::Int64, true),
                Field::new("l_q", DataType::Int64, false),
            ])),
            vec![
                Arc::new(Int64Array::from_iter((0..n).map(|i| key(i * 7 + 1)))),
                Arc::new(Int64Array::from_iter_values(
                    (0..n).map(|i| (i % 11) as i64),
                )),
            ],
        )
        .unwrap();
        let c = RecordBatch::try_new(
            Arc::new(Schema::new(vec![
                Field::new("c_c", DataType::Int64, true),
                Field::new("c_name", DataType::Utf8, false),
            ])),
            vec![
                Arc::new(Int64Array::from_iter((0..5).map(Some))),
                Arc::new(StringArray::from_iter_values(
                    (0..5).map(|i| format!("ü{i}")),
                )),
            ],
        )
        .unwrap();
        for (name, batch) in [("o", o), ("l", l), ("c", c)] {
            ctx.register_batch(name, batch).unwrap();
        }
    }

    const QUERIES: [&str; 4] = [
        // q18's shape: the semi join's key is the key of the join below, through a projection.
        "SELECT c_name, o_k, o_v, sum(l_q) AS q FROM c, o, l \
         WHERE o_k IN (SELECT l_k FROM l GROUP BY l_k HAVING sum(l_q) > 12) \
         AND c_c = o_c AND o_k = l_k GROUP BY c_name, o_k, o_v",
        // The key from the right side of the join.
        "SELECT o_v, l_q FROM l JOIN o ON l_k = o_k WHERE o_k IN (SELECT l_k FROM l WHERE l_q > 8)",
        // EXISTS with only the key correlated.
        "SELECT o_k, o_v, l_q FROM o JOIN l ON o_k = l_k \
         WHERE EXISTS (SELECT 1 FROM l AS l2 WHERE l2.l_k = o.o_k AND l2.l_q < 2)",
        // A semi join on another key than the join's: stays where it is.
        "SELECT o_k, c_name FROM o JOIN c ON o_c = c_c WHERE o_k IN (SELECT l_k FROM l WHERE l_q = 3)",
    ];

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(48))]

        #[test]
        fn answers_as_datafusion(
            rows in prop::collection::vec(
                (prop::option::weighted(0.9, 0i64..30), prop::option::weighted(0.9, 0i64..6), -50i64..50),
                0..60,
            ),
            query in 0..QUERIES.len(),
        ) {
            let manta = session();
            let plain = SessionContext::new();
            register(&manta, &rows);
            register(&plain, &rows);
            prop_assert_eq!(sorted_answer(&manta, QUERIES[query]), sorted_answer(&plain, QUERIES[query]));
        }
    }

    /// The rule does move q18's semi join below the join on its key, and leaves the one on
    /// another key alone.
    #[test]
    fn moves_the_semi_join_only_onto_the_join_on_its_key() {
        let ctx = session();
        register(&ctx, &[(Some(1), Some(1), 1), (Some(2), None, 2)]);
        let plan = |sql: &str| optimized_plan(&ctx, sql);
        let lines =
            |text: &str| -> Vec<String> { text.lines().map(|l| l.trim().to_string()).collect() };
        let q18 = lines(&plan(QUERIES[0]));
        let semi = q18
            .iter()
            .position(|l| l.starts_with("LeftSemi Join"))
            .unwrap_or_else(|| panic!("no semi join:\n{}", q18.join("\n")));
        let join_on_key = q18
            .iter()
            .position(|l| l.starts_with("Inner Join: o.o_k = l.l_k"))
            .unwrap();
        assert!(
            semi > join_on_key,
            "the semi join is still above the join on its key:\n{}",
            q18.join("\n")
        );
        let other = lines(&plan(QUERIES[3]));
        let semi = other
            .iter()
            .position(|l| l.starts_with("LeftSemi Join"))
            .unwrap();
        let join = other
            .iter()
            .position(|l| l.starts_with("Inner Join"))
            .unwrap();
        assert!(
            semi < join,
            "a semi join on another key moved:\n{}",
            other.join("\n")
        );
    }
}
