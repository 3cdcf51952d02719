//! Estimated sizes of logical plans: rows, and per column how many distinct values it holds.
//!
//! [`estimate`] works up from table scans, whose figures come from their Parquet footers
//! ([`table_stats`]): a scan has the table's rows, a whole-number column (integers, dates)
//! at most `max - min + 1` distinct values, and a dictionary-encoded string column as many as
//! its dictionary holds. A filter keeps a share of the rows, its
//! [`selectivity`]: ranges of one column from its footer range (`l_shipdate` between two dates
//! keeps their share of the column's span), an equality one value of the column's distinct
//! ones, and guesses where nothing is known (DuckDB's and System R's, about a tenth for an
//! equality). Joins follow [`equi_selectivity`]. A plan of a kind not covered, or over a table
//! without figures, has no estimate, and the joins around it keep their order.

use std::collections::HashMap;

use datafusion::common::{Column, ScalarValue};
use datafusion::logical_expr::utils::split_conjunction;
use datafusion::logical_expr::{Between, BinaryExpr, Expr, JoinType, LogicalPlan, Operator};

use super::table_stats::{ColumnRange, table_stats};

/// Share of rows an equality on a column of unknown distinct values keeps.
const EQUALITY: f64 = 0.1;
/// Share of rows a one-sided range of unknown span keeps.
const ONE_SIDED: f64 = 1.0 / 3.0;
/// Share of rows a condition of any other kind keeps.
const OTHER: f64 = 0.2;

/// A plan's estimated size.
#[derive(Debug, Clone)]
pub(super) struct Estimate {
    /// Rows (at least one).
    pub rows: f64,
    /// What is known of its columns, by qualified name.
    pub columns: HashMap<Column, ColumnEstimate>,
}

/// What is known of a column.
#[derive(Debug, Clone, Copy)]
pub(super) struct ColumnEstimate {
    /// Distinct values in the table it was read from, before any filter.
    pub table_distinct: f64,
    /// Rows of that table.
    pub table_rows: f64,
    /// Distinct values here (at most the plan's rows).
    pub distinct: f64,
    /// Whether the distinct values are known (from a range), not assumed to be all rows.
    pub known: bool,
    /// Its values' range, if numeric.
    pub range: Option<ColumnRange>,
}

impl Estimate {
    /// This estimate with its rows multiplied by `share`.
    fn scaled(mut self, share: f64) -> Estimate {
        self.rows = (self.rows * share).max(1.0);
        for column in self.columns.values_mut() {
            column.distinct = column.distinct.min(self.rows);
        }
        self
    }

    /// The distinct values of `expr`'s column here and in its table (its rows, and infinity,
    /// if it is not a known column).
    pub(super) fn distinct(&self, expr: &Expr) -> (f64, f64) {
        match passed_column(expr).and_then(|c| self.columns.get(c)) {
            Some(c) => (c.distinct, c.table_distinct.min(c.table_rows)),
            None => (self.rows, f64::INFINITY),
        }
    }
}

/// The estimated size of `plan`; `None` where it cannot be told (see the module doc).
pub(super) fn estimate(plan: &LogicalPlan) -> Option<Estimate> {
    match plan {
        LogicalPlan::TableScan(scan) => {
            let table = table_stats(&scan.source)?;
            let rows = match scan.fetch {
                Some(n) => table.rows.min(n as f64),
                None => table.rows,
            }
            .max(1.0);
            let columns = scan
                .projected_schema
                .columns()
                .into_iter()
                .map(|column| {
                    let range = table.ranges.get(&column.name).copied();
                    let counted = range
                        .filter(|r| r.whole)
                        .map(|r| r.max - r.min + 1.0)
                        .or_else(|| table.distinct.get(&column.name).copied())
                        .map(|d| d.clamp(1.0, table.rows.max(1.0)));
                    let table_distinct = counted.unwrap_or(table.rows);
                    let estimate = ColumnEstimate {
                        table_distinct,
                        table_rows: table.rows,
                        distinct: table_distinct.min(rows),
                        known: counted.is_some(),
                        range,
                    };
                    (column, estimate)
                })
                .collect();
            Some(Estimate { rows, columns })
        }
        LogicalPlan::Filter(filter) => {
            let input = estimate(&filter.input)?;
            let share = selectivity(&filter.predicate, &input);
            Some(input.scaled(share))
        }
        LogicalPlan::Projection(projection) => {
            let input = estimate(&projection.input)?;
            let columns = projection
                .expr
                .iter()
                .zip(projection.schema.columns())
                .filter_map(|(expr, out)| Some((out, *input.columns.get(passed_column(expr)?)?)))
                .collect();
            Some(Estimate {
                rows: input.rows,
                columns,
            })
        }
        LogicalPlan::SubqueryAlias(alias) => {
            let input = estimate(&alias.input)?;
            let columns = alias
                .input
                .schema()
                .columns()
                .into_iter()
                .zip(alias.schema.columns())
                .filter_map(|(inner, outer)| Some((outer, *input.columns.get(&inner)?)))
                .collect();
            Some(Estimate {
                rows: input.rows,
                columns,
            })
        }
        LogicalPlan::Aggregate(aggregate) => {
            let input = estimate(&aggregate.input)?;
            let groups: f64 = aggregate
                .group_expr
                .iter()
                .map(|g| input.distinct(g).0)
                .product();
            let rows = groups.min(input.rows).max(1.0);
            let columns = aggregate
                .group_expr
                .iter()
                .zip(aggregate.schema.columns())
                .filter_map(|(expr, out)| {
                    let mut column = *input.columns.get(passed_column(expr)?)?;
                    column.distinct = column.distinct.min(rows);
                    Some((out, column))
                })
                .collect();
            Some(Estimate { rows, columns })
        }
        LogicalPlan::Join(join) => {
            let left = estimate(&join.left)?;
            let right = estimate(&join.right)?;
            match join.join_type {
                JoinType::LeftSemi | JoinType::LeftAnti | JoinType::LeftMark => Some(left),
                JoinType::RightSemi | JoinType::RightAnti | JoinType::RightMark => Some(right),
                JoinType::Inner | JoinType::Left | JoinType::Right | JoinType::Full => {
                    let pairs: Vec<(&Expr, &Expr)> = join.on.iter().map(|(l, r)| (l, r)).collect();
                    let mut rows = left.rows * right.rows * equi_selectivity(&left, &right, &pairs);
                    if join.filter.is_some() {
                        rows *= OTHER;
                    }
                    rows = match join.join_type {
                        JoinType::Left => rows.max(left.rows),
                        JoinType::Right => rows.max(right.rows),
                        JoinType::Full => rows.max(left.rows + right.rows),
                        _ => rows,
                    };
                    let mut columns = left.columns;
                    columns.extend(right.columns);
                    Some(Estimate { rows: 1.0, columns }.scaled(rows))
                }
            }
        }
        LogicalPlan::Sort(sort) => {
            let input = estimate(&sort.input)?;
            let rows = sort.fetch.map_or(input.rows, |n| input.rows.min(n as f64));
            Some(Estimate { rows: 1.0, ..input }.scaled(rows))
        }
        LogicalPlan::Distinct(_) | LogicalPlan::Repartition(_) => estimate(plan.inputs().first()?),
        _ => None,
    }
}

/// The share of `left × right` pairs that equal keys `pairs` (left side's key, right side's)
/// keep: one over the larger number of distinct keys on either side, where a side's keys are
/// at most its rows, and at most the other side's table holds (the keys of a foreign key are
/// among the keys of the table it points to: `l_orderkey` takes no more distinct values
/// than `orders` has rows, though its range would allow four times as many).
pub(super) fn equi_selectivity(left: &Estimate, right: &Estimate, pairs: &[(&Expr, &Expr)]) -> f64 {
    if pairs.is_empty() {
        return 1.0;
    }
    let side = |estimate: &Estimate, keys: &mut dyn Iterator<Item = &Expr>| {
        let (distinct, table, table_rows) = keys.fold((1.0, 1.0, 0.0_f64), |(d, t, rows), key| {
            let (distinct, table) = estimate.distinct(key);
            let key_rows = passed_column(key)
                .and_then(|c| estimate.columns.get(c))
                .map_or(f64::INFINITY, |c| c.table_rows);
            (d * distinct, t * table, rows.max(key_rows))
        });
        // A key of several columns has at most as many values as its table has rows.
        (distinct.min(estimate.rows), table.min(table_rows))
    };
    let (left_distinct, left_table) = side(left, &mut pairs.iter().map(|(l, _)| *l));
    let (right_distinct, right_table) = side(right, &mut pairs.iter().map(|(_, r)| *r));
    let larger = left_distinct
        .min(right_table)
        .max(right_distinct.min(left_table))
        .max(1.0);
    1.0 / larger
}

/// The column `expr` passes on unchanged (itself, or under an alias).
fn passed_column(expr: &Expr) -> Option<&Column> {
    match expr {
        Expr::Column(column) => Some(column),
        Expr::Alias(alias) => passed_column(&alias.expr),
        _ => None,
    }
}

/// The share of `input`'s rows that `predicate` keeps (see the module doc).
pub(super) fn selectivity(predicate: &Expr, input: &Estimate) -> f64 {
    // Bounds on one column, from all conditions of the conjunction, count once together.
    let mut bounds: HashMap<&Column, (f64, f64, ColumnRange)> = HashMap::new();
    let mut share = 1.0;
    for condition in split_conjunction(predicate) {
        if let Some((column, low, high)) = bound(condition)
            && let Some(range) = input.columns.get(column).and_then(|c| c.range)
        {
            let entry = bounds
                .entry(column)
                .or_insert((f64::NEG_INFINITY, f64::INFINITY, range));
            entry.0 = entry.0.max(low);
            entry.1 = entry.1.min(high);
            continue;
        }
        share *= condition_selectivity(condition, input);
    }
    for (low, high, range) in bounds.values() {
        share *= range_share(*range, *low, *high);
    }
    share.clamp(0.0, 1.0)
}

/// The share one condition (not a conjunction) keeps.
fn condition_selectivity(condition: &Expr, input: &Estimate) -> f64 {
    let equality = |expr: &Expr| match passed_column(expr).and_then(|c| input.columns.get(c)) {
        Some(column) if column.known => 1.0 / column.distinct.max(1.0),
        _ => EQUALITY,
    };
    match condition {
        Expr::BinaryExpr(BinaryExpr { left, op, right }) => match op {
            Operator::And => selectivity(condition, input),
            Operator::Or => (selectivity(left, input) + selectivity(right, input)).min(1.0),
            Operator::Eq | Operator::NotEq => {
                let is_literal = |e: &Expr| matches!(e, Expr::Literal(..));
                let share = match (is_literal(left), is_literal(right)) {
                    (false, true) => equality(left),
                    (true, false) => equality(right),
                    _ => EQUALITY,
                };
                match op {
                    Operator::Eq => share,
                    _ => 1.0 - share,
                }
            }
            Operator::Lt | Operator::LtEq | Operator::Gt | Operator::GtEq => ONE_SIDED,
            _ => OTHER,
        },
        Expr::Not(inner) => 1.0 - condition_selectivity(inner, input),
        Expr::InList(list) => {
            let share = (list.list.len() as f64 * equality(&list.expr)).min(1.0);
            match list.negated {
                true => 1.0 - share,
                false => share,
            }
        }
        Expr::Between(Between { negated, .. }) => {
            let share = ONE_SIDED * ONE_SIDED;
            match negated {
                true => 1.0 - share,
                false => share,
            }
        }
        Expr::Like(like) => match like.negated {
            true => 1.0 - EQUALITY,
            false => EQUALITY,
        },
        Expr::IsNotNull(_) => 1.0 - EQUALITY / 2.0,
        Expr::IsNull(_) => EQUALITY / 2.0,
        _ => OTHER,
    }
}

/// `condition` as bounds on one column: `(column, low, high)`, either possibly infinite.
fn bound(condition: &Expr) -> Option<(&Column, f64, f64)> {
    match condition {
        Expr::BinaryExpr(BinaryExpr { left, op, right }) => {
            let (column, op, value) = match (passed_column(left), literal(right)) {
                (Some(column), Some(value)) => (column, *op, value),
                _ => (passed_column(right)?, op.swap()?, literal(left)?),
            };
            match op {
                Operator::Lt | Operator::LtEq => Some((column, f64::NEG_INFINITY, value)),
                Operator::Gt | Operator::GtEq => Some((column, value, f64::INFINITY)),
                _ => None,
            }
        }
        Expr::Between(Between {
            expr,
            negated: false,
            low,
            high,
        }) => Some((passed_column(expr)?, literal(low)?, literal(high)?)),
        _ => None,
    }
}

/// The share of a column's range `[low, high]` covers.
fn range_share(range: ColumnRange, low: f64, high: f64) -> f64 {
    let step = if range.whole { 1.0 } else { 0.0 };
    let span = range.max - range.min + step;
    if span <= 0.0 {
        return if low <= range.min && range.min <= high {
            1.0
        } else {
            0.0
        };
    }
    let covered = high.min(range.max) - low.max(range.min) + step;
    (covered / span).clamp(0.0, 1.0)
}

/// A numeric literal's value, in the units of [`ColumnRange`] (dates in days, decimals as
/// their value).
fn literal(expr: &Expr) -> Option<f64> {
    let Expr::Literal(value, _) = expr else {
        return None;
    };
    Some(match value {
        ScalarValue::Int8(Some(v)) => *v as f64,
        ScalarValue::Int16(Some(v)) => *v as f64,
        ScalarValue::Int32(Some(v)) => *v as f64,
        ScalarValue::Int64(Some(v)) => *v as f64,
        ScalarValue::UInt8(Some(v)) => *v as f64,
        ScalarValue::UInt16(Some(v)) => *v as f64,
        ScalarValue::UInt32(Some(v)) => *v as f64,
        ScalarValue::UInt64(Some(v)) => *v as f64,
        ScalarValue::Float32(Some(v)) => *v as f64,
        ScalarValue::Float64(Some(v)) => *v,
        ScalarValue::Date32(Some(v)) => *v as f64,
        ScalarValue::Decimal128(Some(v), _, scale) => *v as f64 / 10f64.powi(*scale as i32),
        _ => return None,
    })
}
