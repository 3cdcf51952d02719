//! All-to-all operations: shuffle, sort, repartition, groupby, join, union, zip.
//!
//! # How they run
//!
//! An all-to-all operation is a barrier in the plan. The driver first runs the input plan(s)
//! to blocks in the object store, then runs two rounds of tasks, Ray Data's push-free
//! map/reduce shuffle:
//!
//! 1. **partition** (one task per input block): splits the block's rows into `n` partitions
//!    by a [`Partitioner`] (random, key hash, or sampled key ranges for a sort) and returns one
//!    block of exactly `n` batches, batch *i* holding partition *i*. One object per map task,
//!    not `n`, so the store tracks `blocks` objects rather than `blocks × n`.
//! 2. **reduce** (one task per partition *i*): takes every map output as input, but asks for
//!    batch *i* of each only (the task's `input_batch`), and reduces them with a [`Reducer`]
//!    (concatenate, shuffle, sort, aggregate with DataFusion, join with DataFusion, or call a
//!    registered function per group).
//!
//! Map outputs live in the object store like any block: past the store's budget they spill to
//! disk. A reducer reads its batch of a spilled map output straight from the mapped spill file
//! (only that batch's pages), without restoring the whole output, and on a cluster pulls only
//! its batch of a remote map output over Flight (a ticket naming the object and the batch). So
//! an all-to-all operation over more data than memory reads and moves each byte about once.
//! The reduce outputs become the input blocks of the operators that follow.
//!
//! Aggregations combine on the map side (see [`crate::combine`]): a map task aggregates its
//! block into partial states first, so only one row per group and block is partitioned.
//!
//! A sort samples first: a **sample** task per block returns a few rows of the sort keys, the
//! driver sorts the samples and picks `n - 1` boundaries, and the partitioner sends each row to
//! the range it falls in, so reduce output *i* holds only keys before those of output *i + 1*.
//!
//! This module holds the operations as plain data (their keys, their checks and schemas, the
//! specs of their tasks) and the slice and zip tasks; the map side is [`crate::partition`],
//! the reduce side [`crate::reduce`].

pub use crate::partition::{boundaries, partition_batch, write_ipc};
pub use crate::reduce::ReduceError;
pub(crate) use crate::reduce::block_on;

use std::sync::Arc;

use arrow::array::RecordBatch;
use arrow::compute::SortOptions;
use arrow::datatypes::{Field, Schema, SchemaRef};
use arrow::row::RowConverter;
use datafusion::common::JoinType;
use datafusion::logical_expr::{Expr, col};
use manta_engine::{Block, FunctionKind, Object, RemoteFunction, TaskContext, TaskInput};
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::plan::LogicalPlan;

/// The registered name of the partition (map) task.
pub const PARTITION_FUNCTION: &str = "manta::datasets::partition";
/// The registered name of the reduce task.
pub const REDUCE_FUNCTION: &str = "manta::datasets::reduce";
/// The registered name of the sort-key sampling task.
pub const SAMPLE_FUNCTION: &str = "manta::datasets::sample_keys";
/// The registered name of the slice-and-concatenate task (repartition, limit).
pub const SLICE_FUNCTION: &str = "manta::datasets::slice";
/// The registered name of the zip task.
pub const ZIP_FUNCTION: &str = "manta::datasets::zip";

inventory::submit! { RemoteFunction { name: PARTITION_FUNCTION, kind: FunctionKind::Task(crate::partition::run_partition) } }
inventory::submit! { RemoteFunction { name: REDUCE_FUNCTION, kind: FunctionKind::Task(crate::reduce::run_reduce) } }
inventory::submit! { RemoteFunction { name: SAMPLE_FUNCTION, kind: FunctionKind::Task(crate::partition::run_sample) } }
inventory::submit! { RemoteFunction { name: SLICE_FUNCTION, kind: FunctionKind::Task(run_slice) } }
inventory::submit! { RemoteFunction { name: ZIP_FUNCTION, kind: FunctionKind::Task(run_zip) } }

/// Rows of sort keys sampled from each block to find a sort's range boundaries.
pub const SAMPLES_PER_BLOCK: usize = 64;

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
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
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
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
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

    pub(crate) fn expr(&self) -> Expr {
        use datafusion::functions_aggregate::expr_fn as f;
        let column = || col(ident(self.column.as_deref().unwrap_or_default()));
        let expr = match (self.function, &self.column) {
            (AggregateFunction::Count, None) => f::count(datafusion::logical_expr::lit(1)),
            (AggregateFunction::Count, Some(_)) => f::count(column()),
            (AggregateFunction::Sum, _) => f::sum(column()),
            (AggregateFunction::Min, _) => f::min(column()),
            (AggregateFunction::Max, _) => f::max(column()),
            (AggregateFunction::Mean, _) => f::avg(column()),
            (AggregateFunction::Std, _) => f::stddev(column()),
            (AggregateFunction::CountDistinct, _) => f::count_distinct(column()),
        };
        expr.alias(&self.alias)
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

/// An all-to-all operation and its input plans.
#[derive(Clone, Debug)]
pub enum Exchange {
    /// Rows in a random order.
    RandomShuffle {
        /// The input.
        input: LogicalPlan,
        /// The seed.
        seed: u64,
    },
    /// `n` blocks of about equal size, in order (`shuffle`: rows spread randomly).
    Repartition {
        /// The input.
        input: LogicalPlan,
        /// Blocks out.
        n: usize,
        /// Spread rows randomly instead of splitting in order.
        shuffle: bool,
    },
    /// Rows ordered by keys.
    Sort {
        /// The input.
        input: LogicalPlan,
        /// The keys, most significant first.
        keys: Vec<SortKey>,
    },
    /// One row per group of equal keys, with aggregates.
    Aggregate {
        /// The input.
        input: LogicalPlan,
        /// The grouping columns (none: one row for the whole dataset).
        keys: Vec<String>,
        /// The aggregates.
        aggregates: Vec<Aggregate>,
    },
    /// A registered batch function called once per group.
    MapGroups {
        /// The input.
        input: LogicalPlan,
        /// The grouping columns.
        keys: Vec<String>,
        /// The registered function.
        function: &'static str,
    },
    /// Rows of two datasets matched on keys.
    Join {
        /// The left side.
        left: LogicalPlan,
        /// The right side.
        right: LogicalPlan,
        /// Left key columns.
        left_on: Vec<String>,
        /// Right key columns, pairwise with `left_on`.
        right_on: Vec<String>,
        /// How.
        how: JoinKind,
    },
    /// The blocks of several datasets, one after another.
    Union(Vec<LogicalPlan>),
    /// Two datasets of the same length side by side.
    Zip {
        /// Columns on the left.
        left: LogicalPlan,
        /// Columns on the right.
        right: LogicalPlan,
    },
}

impl Exchange {
    /// The operation's name in stats.
    pub fn name(&self) -> &'static str {
        match self {
            Exchange::RandomShuffle { .. } => "RandomShuffle",
            Exchange::Repartition { .. } => "Repartition",
            Exchange::Sort { .. } => "Sort",
            Exchange::Aggregate { .. } => "Aggregate",
            Exchange::MapGroups { .. } => "MapGroups",
            Exchange::Join { .. } => "Join",
            Exchange::Union(_) => "Union",
            Exchange::Zip { .. } => "Zip",
        }
    }

    /// The input plans.
    pub fn inputs(&self) -> Vec<&LogicalPlan> {
        match self {
            Exchange::RandomShuffle { input, .. }
            | Exchange::Repartition { input, .. }
            | Exchange::Sort { input, .. }
            | Exchange::Aggregate { input, .. }
            | Exchange::MapGroups { input, .. } => vec![input],
            Exchange::Join { left, right, .. } | Exchange::Zip { left, right } => {
                vec![left, right]
            }
            Exchange::Union(inputs) => inputs.iter().collect(),
        }
    }

    /// The input plans as they run: an aggregation's input keeps only the columns it uses,
    /// so the partition tasks copy (and Parquet reads decode) nothing more.
    pub fn input_plans(&self) -> Vec<LogicalPlan> {
        match self {
            Exchange::Aggregate {
                input,
                keys,
                aggregates,
            } => {
                let mut used: Vec<String> = keys.clone();
                for column in aggregates.iter().filter_map(|a| a.column.clone()) {
                    if !used.contains(&column) {
                        used.push(column);
                    }
                }
                if used.is_empty() {
                    // count() alone: any one column carries the row count.
                    match input.schema() {
                        Some(schema) if !schema.fields().is_empty() => {
                            used.push(schema.field(0).name().clone());
                        }
                        _ => return vec![input.clone()],
                    }
                }
                vec![input.with_op(crate::plan::LogicalOp::Reshape(
                    crate::columns::Reshape::Select(used),
                ))]
            }
            _ => self.inputs().into_iter().cloned().collect(),
        }
    }

    /// The output schema, where it can be known before running.
    pub fn schema(&self) -> Option<SchemaRef> {
        match self {
            Exchange::RandomShuffle { input, .. }
            | Exchange::Repartition { input, .. }
            | Exchange::Sort { input, .. } => input.schema(),
            Exchange::Union(inputs) => {
                let schemas: Option<Vec<SchemaRef>> = inputs.iter().map(|p| p.schema()).collect();
                crate::columns::unify(&schemas?).ok()
            }
            Exchange::MapGroups { .. } => None,
            Exchange::Aggregate { .. } | Exchange::Join { .. } => {
                let schemas: Option<Vec<SchemaRef>> =
                    self.inputs().iter().map(|p| p.schema()).collect();
                let schemas = schemas?;
                let empty: Vec<Vec<RecordBatch>> = schemas.iter().map(|_| Vec::new()).collect();
                let reducer = self.reducer()?;
                reducer
                    .reduce_sides(&schemas, empty)
                    .ok()
                    .map(|b| b.schema())
            }
            Exchange::Zip { left, right } => {
                let (left, right) = (left.schema()?, right.schema()?);
                Some(zip_schema(&left, &right))
            }
        }
    }

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
                    let fields = crate::partition::sort_fields(keys, &schema)
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

    /// The partitioner of each input, for `n` partitions (`boundaries` for a sort).
    pub fn partitioners(&self, boundaries: Option<Vec<u8>>) -> Vec<Partitioner> {
        match self {
            Exchange::RandomShuffle { seed, .. } => vec![Partitioner::Random { seed: *seed }],
            Exchange::Repartition { .. } => vec![Partitioner::Random { seed: 0 }],
            Exchange::Sort { keys, .. } => vec![Partitioner::Range {
                keys: keys.clone(),
                boundaries: boundaries.unwrap_or_default(),
            }],
            Exchange::Aggregate { keys, .. } | Exchange::MapGroups { keys, .. } => {
                vec![Partitioner::Hash { keys: keys.clone() }]
            }
            Exchange::Join {
                left_on, right_on, ..
            } => vec![
                Partitioner::Hash {
                    keys: left_on.clone(),
                },
                Partitioner::Hash {
                    keys: right_on.clone(),
                },
            ],
            Exchange::Union(_) | Exchange::Zip { .. } => Vec::new(),
        }
    }

    /// The reducer, for the operations that partition.
    pub fn reducer(&self) -> Option<Reducer> {
        Some(match self {
            Exchange::RandomShuffle { seed, .. } => Reducer::Shuffle { seed: *seed },
            Exchange::Repartition { .. } => Reducer::Concat,
            Exchange::Sort { keys, .. } => Reducer::Sort { keys: keys.clone() },
            Exchange::Aggregate {
                keys, aggregates, ..
            } => Reducer::Aggregate {
                keys: keys.clone(),
                aggregates: aggregates.clone(),
            },
            Exchange::MapGroups { keys, function, .. } => Reducer::MapGroups {
                keys: keys.clone(),
                function: function.to_string(),
            },
            Exchange::Join {
                left_on,
                right_on,
                how,
                ..
            } => Reducer::Join {
                left_on: left_on.clone(),
                right_on: right_on.clone(),
                how: *how,
            },
            Exchange::Union(_) | Exchange::Zip { .. } => return None,
        })
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

/// A column name as a DataFusion identifier (kept as written, case and all).
pub(crate) fn ident(name: &str) -> datafusion::common::Column {
    datafusion::common::Column::new_unqualified(name)
}

/// The schema of `zip`: left columns, then right columns (a clashing name gets `_1`).
pub fn zip_schema(left: &Schema, right: &Schema) -> SchemaRef {
    let mut fields: Vec<Field> = left.fields().iter().map(|f| f.as_ref().clone()).collect();
    for field in right.fields() {
        let mut name = field.name().clone();
        while fields.iter().any(|f| *f.name() == name) {
            name.push_str("_1");
        }
        fields.push(field.as_ref().clone().with_name(name));
    }
    Arc::new(Schema::new(fields))
}

/// How a partition task assigns rows to partitions.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum Partitioner {
    /// Uniformly at random, seeded by the seed, the block and the batch.
    Random {
        /// The user's seed.
        seed: u64,
    },
    /// By a hash of the key columns: equal keys meet in one partition.
    Hash {
        /// The key columns.
        keys: Vec<String>,
    },
    /// By the range of the sort keys, between boundaries.
    Range {
        /// The sort keys.
        keys: Vec<SortKey>,
        /// `n - 1` boundary rows of the key columns, as an Arrow IPC stream.
        boundaries: Vec<u8>,
    },
}

/// What a partition task does: a partitioner, a partition count.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct PartitionSpec {
    /// How.
    pub partitioner: Partitioner,
    /// Partitions.
    pub n: usize,
    /// The input block's index (seeds random partitioning).
    pub block: u64,
    /// Aggregate the block into partial states first (map-side combine): keys, aggregates.
    pub combine: Option<(Vec<String>, Vec<Aggregate>)>,
}

/// How a reduce task combines one partition of every map output.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum Reducer {
    /// Keep the rows as they come.
    Concat,
    /// Shuffle the rows.
    Shuffle {
        /// The user's seed.
        seed: u64,
    },
    /// Sort the rows.
    Sort {
        /// The keys.
        keys: Vec<SortKey>,
    },
    /// Group and aggregate, with DataFusion.
    Aggregate {
        /// Grouping columns.
        keys: Vec<String>,
        /// Aggregates.
        aggregates: Vec<Aggregate>,
    },
    /// Call a registered function once per group.
    MapGroups {
        /// Grouping columns.
        keys: Vec<String>,
        /// The function.
        function: String,
    },
    /// Join the left inputs with the right inputs, with DataFusion.
    Join {
        /// Left keys.
        left_on: Vec<String>,
        /// Right keys.
        right_on: Vec<String>,
        /// How.
        how: JoinKind,
    },
}

/// What a reduce task does.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ReduceSpec {
    /// How.
    pub reducer: Reducer,
    /// Which partition of each input (the task's `input_batch`); `None` when the task reads
    /// its inputs whole (every partition, a small exchange).
    pub partition: Option<usize>,
    /// How many inputs come from each side (one entry unless a join).
    pub sides: Vec<usize>,
    /// Each side's schema where the plan knows it (an IPC schema message), for a side with no
    /// inputs at all.
    pub side_schemas: Vec<Option<Vec<u8>>>,
    /// The stage's name ("AggregateReduce"), for messages.
    pub stage: String,
}

pub(crate) fn encode<T: Serialize>(value: &T, what: &str) -> manta_engine::Result<bytes::Bytes> {
    postcard::to_stdvec(value)
        .map(bytes::Bytes::from)
        .map_err(|source| manta_engine::Error::Serialization {
            action: "encode",
            what: what.into(),
            source,
        })
}

pub(crate) fn decode<'a, T: Deserialize<'a>>(
    bytes: &'a [u8],
    what: &str,
) -> manta_engine::Result<T> {
    postcard::from_bytes(bytes).map_err(|source| manta_engine::Error::Serialization {
        action: "decode",
        what: what.into(),
        source,
    })
}

/// Arguments of a partition task.
pub fn partition_args(spec: &PartitionSpec) -> manta_engine::Result<bytes::Bytes> {
    encode(spec, "a partition task")
}

/// Arguments of a reduce task.
pub fn reduce_args(spec: &ReduceSpec) -> manta_engine::Result<bytes::Bytes> {
    encode(spec, "a reduce task")
}

/// Arguments of a sample task: the sort keys.
pub fn sample_args(keys: &[SortKey]) -> manta_engine::Result<bytes::Bytes> {
    encode(&keys.to_vec(), "a sample task")
}

/// Arguments of a slice task: `(offset, length)` of each input block, in order.
pub fn slice_args(slices: &[(u64, u64)]) -> manta_engine::Result<bytes::Bytes> {
    encode(&slices.to_vec(), "a slice task")
}

pub(crate) fn into_block(object: Object) -> manta_engine::Result<Block> {
    match object {
        Object::Block(block) => Ok(block),
        other => Err(manta_engine::Error::Internal(format!(
            "an exchange's input is {}, not a block",
            other.kind()
        ))),
    }
}

pub(crate) fn user_error(
    name: &str,
    input: String,
    e: impl std::error::Error + Send + Sync + 'static,
) -> manta_engine::Error {
    manta_engine::Error::UserFunction {
        name: name.into(),
        input,
        source: Box::new(e),
    }
}

/// One batch of a block's rows (zero-copy when it has one batch already).
pub(crate) fn single_batch(block: &Block) -> manta_engine::Result<RecordBatch> {
    match block.batches() {
        [one] => Ok(one.clone()),
        batches => Ok(crate::columns::concat(block.schema(), batches)?),
    }
}

fn run_slice(_: &TaskContext, input: TaskInput) -> manta_engine::Result<Object> {
    let slices: Vec<(u64, u64)> = decode(&input.args, "a slice task")?;
    Ok(Object::Block(slice_blocks(input.objects, &slices)?))
}

/// A zip task: the first input is the left block, the rest are cut by the slices into the
/// right rows that go beside it.
fn run_zip(_: &TaskContext, input: TaskInput) -> manta_engine::Result<Object> {
    let slices: Vec<(u64, u64)> = decode(&input.args, "a zip task")?;
    let mut objects = input.objects.into_iter();
    let left =
        into_block(objects.next().ok_or_else(|| {
            manta_engine::Error::Internal("a zip task needs its left block".into())
        })?)?;
    let right = slice_blocks(objects.collect(), &slices)?;
    let zipped = zip_batches(&single_batch(&left)?, &single_batch(&right)?)?;
    Ok(Object::Block(Block::from_batch(zipped)))
}

/// The rows `(offset, length)` of each block, one after another.
fn slice_blocks(objects: Vec<Object>, slices: &[(u64, u64)]) -> manta_engine::Result<Block> {
    let mut schema = None;
    let mut out = Vec::new();
    for (object, &(offset, length)) in objects.into_iter().zip(slices) {
        let block = into_block(object)?;
        if crate::stage::is_unknown(&block) {
            continue;
        }
        schema.get_or_insert_with(|| Arc::clone(block.schema()));
        let (mut skip, mut left) = (offset as usize, length as usize);
        for batch in block.batches() {
            if left == 0 {
                break;
            }
            if skip >= batch.num_rows() {
                skip -= batch.num_rows();
                continue;
            }
            let take = (batch.num_rows() - skip).min(left);
            out.push(batch.slice(skip, take));
            left -= take;
            skip = 0;
        }
    }
    let schema = schema.unwrap_or_else(|| Arc::new(Schema::empty()));
    Block::try_new(schema, out)
}

/// Zips a left block with right rows already cut to the same length.
pub fn zip_batches(
    left: &RecordBatch,
    right: &RecordBatch,
) -> Result<RecordBatch, arrow::error::ArrowError> {
    let schema = zip_schema(left.schema_ref(), right.schema_ref());
    let mut columns = left.columns().to_vec();
    columns.extend(right.columns().iter().cloned());
    RecordBatch::try_new(schema, columns)
}
