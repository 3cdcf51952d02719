//! What users write to sort, aggregate and join: sort keys, aggregates, join kinds.

use arrow::compute::SortOptions;
use arrow::datatypes::Schema;
use datafusion::common::{JoinType, ScalarValue};
use datafusion::logical_expr::{Expr, col, lit};
use serde::{Deserialize, Serialize};

/// One sort key.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SortKey {
    /// The column.
    pub column: String,
    /// Largest first.
    pub descending: bool,
}

impl SortKey {
    /// Ascending by `column`.
    pub fn asc(column: &str) -> Self {
        Self {
            column: column.into(),
            descending: false,
        }
    }

    /// Descending by `column`.
    pub fn desc(column: &str) -> Self {
        Self {
            column: column.into(),
            descending: true,
        }
    }

    /// SQL's order: ascending puts nulls last, descending puts them first.
    pub(crate) fn options(&self) -> SortOptions {
        SortOptions {
            descending: self.descending,
            nulls_first: self.descending,
        }
    }
}

impl From<&str> for SortKey {
    /// Ascending by the column.
    fn from(column: &str) -> Self {
        SortKey::asc(column)
    }
}

impl From<String> for SortKey {
    /// Ascending by the column.
    fn from(column: String) -> Self {
        SortKey::asc(&column)
    }
}

/// Ascending by `column` (nulls last), for [`Dataset::sort`](crate::Dataset::sort) and
/// [`sort_by`](crate::Dataset::sort_by).
pub fn asc(column: &str) -> SortKey {
    SortKey::asc(column)
}

/// Descending by `column` (nulls first), for [`Dataset::sort`](crate::Dataset::sort) and
/// [`sort_by`](crate::Dataset::sort_by).
pub fn desc(column: &str) -> SortKey {
    SortKey::desc(column)
}

/// An aggregate function.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum AggregateFunction {
    /// Rows (with a column: non-null values).
    Count,
    /// Sum.
    Sum,
    /// Smallest.
    Min,
    /// Largest.
    Max,
    /// Arithmetic mean.
    Mean,
    /// Sample standard deviation.
    Std,
    /// Distinct non-null values.
    CountDistinct,
}

/// One aggregate: a function of a column, named in the output.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Aggregate {
    /// The function.
    pub function: AggregateFunction,
    /// Its column; `None` only for `Count` (all rows).
    pub column: Option<String>,
    /// The output column's name.
    pub alias: String,
}

impl Aggregate {
    fn new(function: AggregateFunction, column: &str, prefix: &str) -> Self {
        Self {
            function,
            column: Some(column.into()),
            alias: format!("{prefix}({column})"),
        }
    }

    /// `count()`: rows per group.
    pub fn count() -> Self {
        Self {
            function: AggregateFunction::Count,
            column: None,
            alias: "count()".into(),
        }
    }
    /// `count(column)`: the non-null values of `column` per group (SQL's `count(column)`,
    /// Polars' `count`; [`count`](Self::count) counts rows, nulls and all).
    pub fn count_non_null(column: &str) -> Self {
        Self::new(AggregateFunction::Count, column, "count")
    }
    /// `sum(column)`.
    pub fn sum(column: &str) -> Self {
        Self::new(AggregateFunction::Sum, column, "sum")
    }
    /// `min(column)`.
    pub fn min(column: &str) -> Self {
        Self::new(AggregateFunction::Min, column, "min")
    }
    /// `max(column)`.
    pub fn max(column: &str) -> Self {
        Self::new(AggregateFunction::Max, column, "max")
    }
    /// `mean(column)`.
    pub fn mean(column: &str) -> Self {
        Self::new(AggregateFunction::Mean, column, "mean")
    }
    /// `std(column)`: the sample standard deviation.
    pub fn std(column: &str) -> Self {
        Self::new(AggregateFunction::Std, column, "std")
    }
    /// `count_distinct(column)`.
    pub fn count_distinct(column: &str) -> Self {
        Self::new(AggregateFunction::CountDistinct, column, "count_distinct")
    }
    /// The same aggregate under another output name.
    pub fn alias(mut self, name: &str) -> Self {
        self.alias = name.into();
        self
    }

    /// The aggregate as a DataFusion expression over a relation of `schema`.
    pub(crate) fn expr(&self, schema: &Schema) -> Expr {
        use datafusion::functions_aggregate::expr_fn as f;
        let name = self.column.as_deref().unwrap_or_default();
        let column = || col(ident(name));
        let expr = match (self.function, &self.column) {
            (AggregateFunction::Count, None) => f::count(lit(1)),
            (AggregateFunction::Count, Some(_)) => f::count(column()),
            (AggregateFunction::Sum, _) => f::sum(column()),
            (AggregateFunction::Min, _) => f::min(column()),
            (AggregateFunction::Max, _) => f::max(column()),
            (AggregateFunction::Mean, _) => f::avg(column()),
            (AggregateFunction::Std, _) => f::stddev(column()),
            (AggregateFunction::CountDistinct, _) => {
                f::count_distinct(with_one_zero(column(), name, schema))
            }
        };
        expr.alias(&self.alias)
    }
}

/// `column`, with a float's two zeros made one: `-0.0 = 0.0`, so they are one distinct
/// value, as SQL's `count(DISTINCT)` counts them, but DataFusion's float distinct-count
/// accumulator tells values apart by their bits. Adding `+0.0` turns `-0.0` into `+0.0` and
/// leaves every other value (NaN included) as it is; other types are returned unchanged.
fn with_one_zero(column: Expr, name: &str, schema: &Schema) -> Expr {
    match schema.field_with_name(name).map(|f| f.data_type()) {
        Ok(t) if t.is_floating() => match ScalarValue::new_zero(t) {
            Ok(zero) => column + lit(zero),
            Err(_) => column,
        },
        _ => column,
    }
}

/// How two datasets are joined.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum JoinKind {
    /// Rows with a match on both sides.
    Inner,
    /// Every left row, with matches or nulls.
    Left,
    /// Every right row, with matches or nulls.
    Right,
    /// Every row of both sides.
    Full,
    /// Left rows that have a match (left columns only).
    Semi,
    /// Left rows that have no match (left columns only).
    Anti,
}

impl JoinKind {
    pub(crate) fn datafusion(self) -> JoinType {
        match self {
            JoinKind::Inner => JoinType::Inner,
            JoinKind::Left => JoinType::Left,
            JoinKind::Right => JoinType::Right,
            JoinKind::Full => JoinType::Full,
            JoinKind::Semi => JoinType::LeftSemi,
            JoinKind::Anti => JoinType::LeftAnti,
        }
    }
}

/// A column name as a DataFusion identifier (kept as written, case and all).
pub(crate) fn ident(name: &str) -> datafusion::common::Column {
    datafusion::common::Column::new_unqualified(name)
}
