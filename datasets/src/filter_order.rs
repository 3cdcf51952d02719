//! The conditions of a filter, cheapest and likeliest to drop rows first.
//!
//! DataFusion evaluates `a AND b` by evaluating `b` only on the rows `a` kept, when `a` kept
//! few; so the order of a filter's conditions decides how many rows the later ones see. It
//! keeps the order the query was written in. TPC-H q12 filters line items by `l_shipmode IN
//! (…)` (2 of 7 values), two comparisons of one date column with another, and last a one-year
//! range of `l_receiptdate` (1 in 7): every condition but the last runs on all 6 M rows.
//!
//! [`FilterOrder`] sorts the conditions of each `FilterExec` (stably) by kind, from the likely
//! most selective and cheapest: a column equal to a literal, or between two literals (a lower
//! and an upper bound in the same filter); then a column in a list of literals (or equal to one
//! of several); then a column
//! on one side of a literal; then two columns compared; then anything else, in the order
//! written. Conditions of the first four kinds cannot fail, so running them first only narrows
//! what a condition that can (a division, a cast) is evaluated on.

use std::sync::Arc;

use datafusion::common::Result;
use datafusion::common::config::ConfigOptions;
use datafusion::common::tree_node::{Transformed, TreeNode};
use datafusion::logical_expr::Operator;
use datafusion::physical_expr::expressions::{BinaryExpr, Column, InListExpr, Literal};
use datafusion::physical_expr::{PhysicalExpr, conjunction, split_conjunction};
use datafusion::physical_optimizer::PhysicalOptimizerRule;
use datafusion::physical_plan::ExecutionPlan;
use datafusion::physical_plan::filter::{FilterExec, FilterExecBuilder};

/// The physical optimizer rule: see the module documentation.
#[derive(Debug, Default)]
pub struct FilterOrder;

impl PhysicalOptimizerRule for FilterOrder {
    fn optimize(
        &self,
        plan: Arc<dyn ExecutionPlan>,
        _config: &ConfigOptions,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        plan.transform_up(|node| {
            let Some(filter) = node.downcast_ref::<FilterExec>() else {
                return Ok(Transformed::no(node));
            };
            let conditions = split_conjunction(filter.predicate());
            let mut ranked: Vec<(Kind, &Arc<dyn PhysicalExpr>)> = conditions
                .iter()
                .map(|condition| (kind(condition, &conditions), *condition))
                .collect();
            if ranked.is_sorted_by_key(|(kind, _)| *kind) {
                return Ok(Transformed::no(node));
            }
            ranked.sort_by_key(|(kind, _)| *kind);
            let predicate = conjunction(ranked.into_iter().map(|(_, c)| Arc::clone(c)));
            let reordered = FilterExecBuilder::from(filter)
                .with_predicate(predicate)
                .build()?;
            Ok(Transformed::yes(
                Arc::new(reordered) as Arc<dyn ExecutionPlan>
            ))
        })
        .map(|t| t.data)
    }

    fn name(&self) -> &str {
        "FilterOrder"
    }

    fn schema_check(&self) -> bool {
        true
    }
}

/// What a condition is, in the order conditions run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Kind {
    /// `column = literal`, or `column > literal` with an upper bound on that column too.
    PointOrRange,
    /// `column IN (literals)`, or `column = literal OR column = literal …`.
    InList,
    /// `column < literal` and the like, with no other bound.
    OneSided,
    /// Two columns compared.
    TwoColumns,
    /// Anything else.
    Other,
}

/// The kind of `condition`, one of `all` (the conditions of its filter).
fn kind(condition: &Arc<dyn PhysicalExpr>, all: &[&Arc<dyn PhysicalExpr>]) -> Kind {
    if equal_to_one_of(condition).is_some() {
        return Kind::InList;
    }
    if let Some(list) = condition.downcast_ref::<InListExpr>() {
        let literals = list
            .list()
            .iter()
            .all(|e| e.downcast_ref::<Literal>().is_some());
        if !list.negated() && literals && list.expr().downcast_ref::<Column>().is_some() {
            return Kind::InList;
        }
        return Kind::Other;
    }
    let Some((column, op)) = column_against_literal(condition) else {
        return match two_columns(condition) {
            true => Kind::TwoColumns,
            false => Kind::Other,
        };
    };
    match op {
        Operator::Eq => Kind::PointOrRange,
        Operator::Lt | Operator::LtEq | Operator::Gt | Operator::GtEq => {
            let lower = matches!(op, Operator::Gt | Operator::GtEq);
            let bounded = all.iter().any(|other| {
                column_against_literal(other).is_some_and(|(c, o)| {
                    c == column
                        && match lower {
                            true => matches!(o, Operator::Lt | Operator::LtEq),
                            false => matches!(o, Operator::Gt | Operator::GtEq),
                        }
                })
            });
            match bounded {
                true => Kind::PointOrRange,
                false => Kind::OneSided,
            }
        }
        _ => Kind::Other,
    }
}

/// `(column, op)` if `condition` compares a column with a literal, written `column op literal`
/// (a literal on the left is turned around).
fn column_against_literal(condition: &Arc<dyn PhysicalExpr>) -> Option<(&Column, Operator)> {
    let binary = condition.downcast_ref::<BinaryExpr>()?;
    let (left, right) = (binary.left(), binary.right());
    if let (Some(column), Some(_)) = (
        left.downcast_ref::<Column>(),
        right.downcast_ref::<Literal>(),
    ) {
        return Some((column, *binary.op()));
    }
    if let (Some(_), Some(column)) = (
        left.downcast_ref::<Literal>(),
        right.downcast_ref::<Column>(),
    ) {
        return binary.op().swap().map(|op| (column, op));
    }
    None
}

/// The column, if `condition` is `column = literal OR column = literal …` (what DataFusion
/// makes of a short `IN` list).
fn equal_to_one_of(condition: &Arc<dyn PhysicalExpr>) -> Option<&Column> {
    let binary = condition.downcast_ref::<BinaryExpr>()?;
    if *binary.op() != Operator::Or {
        let (column, op) = column_against_literal(condition)?;
        return (op == Operator::Eq).then_some(column);
    }
    let left = equal_to_one_of(binary.left())?;
    (equal_to_one_of(binary.right())? == left).then_some(left)
}

/// Whether `condition` compares two columns.
fn two_columns(condition: &Arc<dyn PhysicalExpr>) -> bool {
    condition
        .downcast_ref::<BinaryExpr>()
        .is_some_and(|binary| {
            matches!(
                binary.op(),
                Operator::Eq
                    | Operator::NotEq
                    | Operator::Lt
                    | Operator::LtEq
                    | Operator::Gt
                    | Operator::GtEq
            ) && binary.left().downcast_ref::<Column>().is_some()
                && binary.right().downcast_ref::<Column>().is_some()
        })
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use arrow::array::{Int64Array, RecordBatch, StringArray};
    use arrow::datatypes::{DataType, Field, Schema};
    use datafusion::prelude::SessionContext;
    use proptest::prelude::*;

    use crate::sql::session;
    use crate::sql::test_support::try_sorted_answer as answer;

    /// `t(a, b, c, s)`: small numbers that repeat and are null, and short unicode strings.
    fn register(ctx: &SessionContext, rows: &[(Option<i64>, Option<i64>, i64, String)]) {
        let t = RecordBatch::try_new(
            Arc::new(Schema::new(vec![
                Field::new("a", DataType::Int64, true),
                Field::new("b", DataType::Int64, true),
                Field::new("c", DataType::Int64, false),
                Field::new("s", DataType::Utf8, false),
            ])),
            vec![
                Arc::new(Int64Array::from_iter(rows.iter().map(|r| r.0))),
                Arc::new(Int64Array::from_iter(rows.iter().map(|r| r.1))),
                Arc::new(Int64Array::from_iter_values(rows.iter().map(|r| r.2))),
                Arc::new(StringArray::from_iter_values(rows.iter().map(|r| &r.3))),
            ],
        )
        .unwrap();
        ctx.register_batch("t", t).unwrap();
    }

    /// Filters whose conditions this rule reorders, and one it leaves (a guarded division).
    const QUERIES: [&str; 4] = [
        // q12's shape: an IN list, two columns compared, then a bounded range.
        "SELECT a, s FROM t WHERE s IN ('x', 'é') AND a < b AND c >= 2 AND c < 6",
        "SELECT count(*) FROM t WHERE a <> b AND 3 > c AND a = 4",
        "SELECT a, b FROM t WHERE b IS NOT NULL AND 5 <= a AND a <= 7 AND c > b",
        "SELECT c FROM t WHERE a <> 0 AND 12 / a > 1 AND c = 3",
    ];

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(48))]

        #[test]
        fn answers_as_datafusion(
            rows in prop::collection::vec(
                (prop::option::weighted(0.85, -2i64..9), prop::option::weighted(0.85, -2i64..9), 0i64..8, "[xé☃]{0,2}"),
                0..60,
            ),
            query in 0..QUERIES.len(),
        ) {
            let manta = session();
            let plain = SessionContext::new();
            register(&manta, &rows);
            register(&plain, &rows);
            // DataFusion may divide by zero in the guarded division (it does not promise to
            // evaluate a condition only where the ones before it hold); run later, the division
            // sees fewer rows. So: the same rows, or plain DataFusion alone failing.
            match (answer(&manta, QUERIES[query]), answer(&plain, QUERIES[query])) {
                (manta, Ok(plain)) => prop_assert_eq!(manta, Ok(plain)),
                (Ok(_), Err(_)) => {}
                (Err(manta), Err(plain)) => prop_assert_eq!(manta, plain),
            }
        }
    }

    /// In q12's shape the range runs first, then the list, then the two columns.
    #[test]
    fn puts_a_range_first_and_two_columns_last() {
        let ctx = session();
        register(&ctx, &[(Some(1), Some(2), 3, "x".into())]);
        let plan = crate::thread_runtime::block_on(async {
            let plan = ctx.sql(QUERIES[0]).await?.create_physical_plan().await?;
            Ok::<_, datafusion::error::DataFusionError>(
                datafusion::physical_plan::displayable(plan.as_ref())
                    .indent(true)
                    .to_string(),
            )
        })
        .unwrap();
        let filter = plan
            .lines()
            .find(|l| l.contains("FilterExec"))
            .expect(&plan);
        let at = |what: &str| filter.find(what).expect(filter);
        assert!(at("c@") < at("s@") && at("s@") < at("a@"), "{filter}");
    }
}
