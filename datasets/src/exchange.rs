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

use std::sync::Arc;

use arrow::array::{ArrayRef, RecordBatch, UInt32Array};
use arrow::compute::{SortColumn, SortOptions, lexsort_to_indices, take_record_batch};
use arrow::datatypes::{Field, Schema, SchemaRef};
use arrow::row::{RowConverter, SortField};
use datafusion::common::JoinType;
use datafusion::datasource::MemTable;
use datafusion::logical_expr::{Expr, col};
use datafusion::prelude::{SessionConfig, SessionContext};
use manta_engine::registry::{call_batch, lookup_batch};
use manta_engine::{Block, FunctionKind, Object, RemoteFunction, TaskContext, TaskInput};
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use serde::{Deserialize, Serialize};

use crate::columns::batch_seed;
use crate::combine;
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

inventory::submit! { RemoteFunction { name: PARTITION_FUNCTION, kind: FunctionKind::Task(run_partition) } }
inventory::submit! { RemoteFunction { name: REDUCE_FUNCTION, kind: FunctionKind::Task(run_reduce) } }
inventory::submit! { RemoteFunction { name: SAMPLE_FUNCTION, kind: FunctionKind::Task(run_sample) } }
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
    fn datafusion(self) -> JoinType {
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
                    let fields =
                        sort_fields(keys, &schema).map_err(|e| plan_error(e.to_string()))?;
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
fn check_join_keys(
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
fn ident(name: &str) -> datafusion::common::Column {
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

fn encode<T: Serialize>(value: &T, what: &str) -> manta_engine::Result<bytes::Bytes> {
    postcard::to_stdvec(value)
        .map(bytes::Bytes::from)
        .map_err(|source| manta_engine::Error::Serialization {
            action: "encode",
            what: what.into(),
            source,
        })
}

fn decode<'a, T: Deserialize<'a>>(bytes: &'a [u8], what: &str) -> manta_engine::Result<T> {
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

fn into_block(object: Object) -> manta_engine::Result<Block> {
    match object {
        Object::Block(block) => Ok(block),
        other => Err(manta_engine::Error::Internal(format!(
            "an exchange's input is {}, not a block",
            other.kind()
        ))),
    }
}

fn user_error(
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
fn single_batch(block: &Block) -> manta_engine::Result<RecordBatch> {
    match block.batches() {
        [one] => Ok(one.clone()),
        batches => Ok(crate::columns::concat(block.schema(), batches)?),
    }
}

fn run_partition(_: &TaskContext, input: TaskInput) -> manta_engine::Result<Object> {
    let spec: PartitionSpec = decode(&input.args, "a partition task")?;
    let mut objects = input.objects.into_iter();
    let block = into_block(objects.next().ok_or_else(|| {
        manta_engine::Error::Internal("a partition task needs its block".into())
    })?)?;
    let label = format!("block {} ({:?})", spec.block, spec.partitioner);
    Ok(Object::Block(partition_batch(
        single_batch(&block)?,
        &spec,
        &label,
    )?))
}

/// The map side of an exchange on one block's rows: combined first if the spec says so, then
/// split into exactly `spec.n` batches, batch *i* holding partition *i*. Run by partition
/// tasks, and by the last stage of an input pipeline fused with the exchange's map side.
pub fn partition_batch(
    mut batch: RecordBatch,
    spec: &PartitionSpec,
    label: &str,
) -> manta_engine::Result<Block> {
    let label = label.to_string();
    let n = spec.n.max(1);
    if batch.num_rows() == 0 && batch.schema().fields().is_empty() {
        // Rows of a schema nobody knows (see `stage::is_unknown`): none, in every partition.
        return Block::try_new(batch.schema(), vec![batch; n]);
    }
    if let Some((keys, aggregates)) = &spec.combine {
        batch = combine::partial(batch, keys, aggregates)
            .map_err(|e| user_error("aggregate", label.clone(), e))?;
    }
    let schema = batch.schema();
    let assignment: Vec<u32> = match &spec.partitioner {
        Partitioner::Random { seed } => {
            let mut rng = rand::rngs::StdRng::seed_from_u64(batch_seed(*seed, spec.block, 0));
            (0..batch.num_rows())
                .map(|_| rng.random_range(0..n as u32))
                .collect()
        }
        Partitioner::Hash { keys } => hash_partitions(&batch, keys, n)
            .map_err(|e| user_error("partition by hash", label.clone(), e))?,
        Partitioner::Range { keys, boundaries } => range_partitions(&batch, keys, boundaries)
            .map_err(|e| user_error("partition by range", label.clone(), e))?,
    };
    // Counting sort of row indices by partition, one take, then zero-copy slices.
    let mut counts = vec![0usize; n];
    for &p in &assignment {
        counts[p as usize] += 1;
    }
    let mut starts = vec![0usize; n];
    for p in 1..n {
        starts[p] = starts[p - 1] + counts[p - 1];
    }
    let mut next = starts.clone();
    let mut order = vec![0u32; assignment.len()];
    for (row, &p) in assignment.iter().enumerate() {
        order[next[p as usize]] = row as u32;
        next[p as usize] += 1;
    }
    let sorted = take_record_batch(&batch, &UInt32Array::from(order))?;
    let batches = (0..n).map(|p| sorted.slice(starts[p], counts[p])).collect();
    Block::try_new(schema, batches)
}

/// The partition of each row by key hash.
fn hash_partitions(
    batch: &RecordBatch,
    keys: &[String],
    n: usize,
) -> Result<Vec<u32>, datafusion::error::DataFusionError> {
    // Keys as their key type: a string key hashes alike as Utf8 or as a view.
    let columns: Vec<ArrayRef> = keys
        .iter()
        .map(|k| crate::columns::key_column(batch.column(batch.schema().index_of(k)?)))
        .collect::<Result<_, arrow::error::ArrowError>>()?;
    let mut hashes = vec![0u64; batch.num_rows()];
    if !columns.is_empty() {
        let state = datafusion::common::hash_utils::RandomState::with_seed(0x006d_616e_7461);
        datafusion::common::hash_utils::create_hashes(&columns, &state, &mut hashes)?;
    }
    Ok(hashes.iter().map(|h| (h % n as u64) as u32).collect())
}

fn sort_fields(
    keys: &[SortKey],
    schema: &Schema,
) -> Result<Vec<SortField>, arrow::error::ArrowError> {
    keys.iter()
        .map(|k| {
            let field = schema.field_with_name(&k.column)?;
            Ok(SortField::new_with_options(
                field.data_type().clone(),
                k.options(),
            ))
        })
        .collect()
}

fn key_columns(
    batch: &RecordBatch,
    keys: &[SortKey],
) -> Result<Vec<ArrayRef>, arrow::error::ArrowError> {
    keys.iter()
        .map(|k| {
            Ok(Arc::clone(
                batch.column(batch.schema().index_of(&k.column)?),
            ))
        })
        .collect()
}

/// The partition of each row: how many boundaries sort before it.
fn range_partitions(
    batch: &RecordBatch,
    keys: &[SortKey],
    boundaries: &[u8],
) -> Result<Vec<u32>, arrow::error::ArrowError> {
    let converter = RowConverter::new(sort_fields(keys, batch.schema_ref())?)?;
    let rows = converter.convert_columns(&key_columns(batch, keys)?)?;
    let bounds = read_ipc(boundaries)?;
    let bound_rows = match &bounds {
        Some(b) => converter.convert_columns(&key_columns(b, keys)?)?,
        None => converter.empty_rows(0, 0),
    };
    let bounds: Vec<_> = bound_rows.iter().collect();
    Ok(rows
        .iter()
        .map(|row| bounds.partition_point(|b| *b < row) as u32)
        .collect())
}

fn read_ipc(bytes: &[u8]) -> Result<Option<RecordBatch>, arrow::error::ArrowError> {
    if bytes.is_empty() {
        return Ok(None);
    }
    let reader = arrow::ipc::reader::StreamReader::try_new(std::io::Cursor::new(bytes), None)?;
    let schema = reader.schema();
    let batches = reader.collect::<Result<Vec<_>, _>>()?;
    Ok(Some(crate::columns::concat(&schema, &batches)?))
}

/// A batch as an Arrow IPC stream.
pub fn write_ipc(batch: &RecordBatch) -> Result<Vec<u8>, arrow::error::ArrowError> {
    let mut out = Vec::new();
    let mut writer = arrow::ipc::writer::StreamWriter::try_new(&mut out, batch.schema_ref())?;
    writer.write(batch)?;
    writer.finish()?;
    drop(writer);
    Ok(out)
}

fn run_sample(_: &TaskContext, input: TaskInput) -> manta_engine::Result<Object> {
    let keys: Vec<SortKey> = decode(&input.args, "a sample task")?;
    let block =
        into_block(input.objects.into_iter().next().ok_or_else(|| {
            manta_engine::Error::Internal("a sample task needs its block".into())
        })?)?;
    if crate::stage::is_unknown(&block) {
        // No rows: no samples.
        return Ok(Object::Block(block));
    }
    let batch = single_batch(&block)?;
    let rows = batch.num_rows();
    let picks: Vec<u32> = (0..SAMPLES_PER_BLOCK.min(rows))
        .map(|i| (i * rows / SAMPLES_PER_BLOCK.min(rows)) as u32)
        .collect();
    let keys_only = batch.project(
        &keys
            .iter()
            .map(|k| batch.schema().index_of(&k.column))
            .collect::<Result<Vec<_>, _>>()?,
    )?;
    Ok(Object::Block(Block::from_batch(take_record_batch(
        &keys_only,
        &UInt32Array::from(picks),
    )?)))
}

/// Picks `n - 1` boundaries from the sampled key rows, as an IPC stream (empty if `n` is 1 or
/// there are no samples).
pub fn boundaries(samples: &[RecordBatch], keys: &[SortKey], n: usize) -> Result<Vec<u8>> {
    // Samples of blocks with no known schema have no rows and no columns.
    let samples: Vec<RecordBatch> = samples
        .iter()
        .filter(|b| b.num_rows() > 0 && b.num_columns() > 0)
        .cloned()
        .collect();
    let Some(first) = samples.first() else {
        return Ok(Vec::new());
    };
    let all = crate::columns::concat(first.schema_ref(), &samples)?;
    if n <= 1 || all.num_rows() == 0 {
        return Ok(Vec::new());
    }
    let sorted = sort_batch(&all, keys)?;
    let picks: Vec<u32> = (1..n)
        .map(|i| ((i * sorted.num_rows()) / n).min(sorted.num_rows() - 1) as u32)
        .collect();
    Ok(write_ipc(&take_record_batch(
        &sorted,
        &UInt32Array::from(picks),
    )?)?)
}

/// Sorts a batch by the keys: by lexicographic sort for one primitive key, else by comparing
/// rows in Arrow's row format (one byte comparison per pair, any key types).
fn sort_batch(
    batch: &RecordBatch,
    keys: &[SortKey],
) -> Result<RecordBatch, arrow::error::ArrowError> {
    let columns = key_columns(batch, keys)?;
    let indices = if let ([column], [key]) = (columns.as_slice(), keys)
        && column.data_type().is_primitive()
    {
        lexsort_to_indices(
            &[SortColumn {
                values: Arc::clone(column),
                options: Some(key.options()),
            }],
            None,
        )?
    } else {
        let converter = RowConverter::new(sort_fields(keys, batch.schema_ref())?)?;
        let rows = converter.convert_columns(&columns)?;
        let mut order: Vec<u32> = (0..batch.num_rows() as u32).collect();
        order.sort_by(|a, b| rows.row(*a as usize).cmp(&rows.row(*b as usize)));
        UInt32Array::from(order)
    };
    take_record_batch(batch, &indices)
}

fn run_reduce(_: &TaskContext, input: TaskInput) -> manta_engine::Result<Object> {
    let spec: ReduceSpec = decode(&input.args, "a reduce task")?;
    let label = match spec.partition {
        Some(partition) => format!("partition {partition} (stage {})", spec.stage),
        None => format!("all partitions (stage {})", spec.stage),
    };
    let mut objects = input.objects.into_iter();
    let mut schemas = Vec::new();
    let mut sides = Vec::new();
    for (side_index, &count) in spec.sides.iter().enumerate() {
        let mut side = Vec::new();
        let mut schema = None;
        // Each input arrives as its partition alone (the task's `input_batch`). Blocks of no
        // known schema hold no rows and are skipped; the others all carry the side's schema.
        for object in objects.by_ref().take(count) {
            let block = into_block(object)?;
            if crate::stage::is_unknown(&block) {
                continue;
            }
            schema = Some(match schema {
                None => Arc::clone(block.schema()),
                // Blocks of a side may differ in nullability (a column null in some blocks
                // only): the side's schema is nullable wherever any block's is.
                Some(so_far) if &so_far == block.schema() => so_far,
                Some(so_far) => {
                    crate::columns::unify(&[Arc::clone(&so_far), Arc::clone(block.schema())])
                        .unwrap_or(so_far)
                }
            });
            side.extend(block.batches().iter().filter(|b| b.num_rows() > 0).cloned());
        }
        if schema.is_none()
            && let Some(Some(bytes)) = spec.side_schemas.get(side_index)
        {
            schema = Some(crate::source::decode_schema(bytes).map_err(|e| {
                manta_engine::Error::Internal(format!("a reduce task's schema: {e}"))
            })?);
        }
        schemas.push(schema.unwrap_or_else(|| Arc::new(Schema::empty())));
        sides.push(side);
    }
    let name = spec.reducer.name();
    let out = spec
        .reducer
        .reduce_sides(&schemas, sides)
        .map_err(|e| match e {
            ReduceError::User(e) => e,
            ReduceError::DataFusion(e) => user_error(&name, label.clone(), e),
        })?;
    Ok(Object::Block(Block::try_new(out.schema(), vec![out])?))
}

/// Why a reduce failed.
#[derive(Debug, thiserror::Error)]
pub enum ReduceError {
    /// DataFusion or Arrow failed.
    #[error(transparent)]
    DataFusion(#[from] datafusion::error::DataFusionError),
    /// A user function failed.
    #[error(transparent)]
    User(manta_engine::Error),
}

impl From<arrow::error::ArrowError> for ReduceError {
    fn from(e: arrow::error::ArrowError) -> Self {
        ReduceError::DataFusion(e.into())
    }
}

impl Reducer {
    fn name(&self) -> String {
        match self {
            Reducer::Concat => "repartition".into(),
            Reducer::Shuffle { .. } => "random_shuffle".into(),
            Reducer::Sort { .. } => "sort".into(),
            Reducer::Aggregate { .. } => "aggregate".into(),
            Reducer::MapGroups { function, .. } => function.clone(),
            Reducer::Join { .. } => "join".into(),
        }
    }

    /// Reduces the batches of each side (their schemas given, for empty sides) into one batch.
    pub fn reduce_sides(
        &self,
        schemas: &[SchemaRef],
        mut sides: Vec<Vec<RecordBatch>>,
    ) -> Result<RecordBatch, ReduceError> {
        if schemas.iter().any(|s| s.fields().is_empty()) {
            return self.reduce_unknown(schemas, sides);
        }
        let schema = Arc::clone(&schemas[0]);
        if let Reducer::Aggregate { keys, aggregates } = self
            && combine::is_partial(&schema)
        {
            return Ok(combine::finish(
                &schema,
                sides.swap_remove(0),
                keys,
                aggregates,
            )?);
        }
        let rows = crate::columns::concat(&schema, &sides[0])?;
        match self {
            Reducer::Concat => Ok(rows),
            Reducer::Shuffle { seed } => {
                let mut order: Vec<u32> = (0..rows.num_rows() as u32).collect();
                let first = rows.num_rows() as u64;
                order.shuffle(&mut rand::rngs::StdRng::seed_from_u64(batch_seed(
                    *seed, first, 1,
                )));
                Ok(take_record_batch(&rows, &UInt32Array::from(order))?)
            }
            Reducer::Sort { keys } => Ok(sort_batch(&rows, keys)?),
            Reducer::Aggregate { keys, aggregates } => {
                let ctx = single_partition_session();
                let frame =
                    ctx.read_table(Arc::new(MemTable::try_new(schema, vec![vec![rows]])?))?;
                let groups = keys.iter().map(|k| col(ident(k))).collect();
                let aggregates = aggregates.iter().map(Aggregate::expr).collect();
                let frame = frame.aggregate(groups, aggregates)?;
                collect(frame)
            }
            Reducer::MapGroups { keys, function } => {
                let f = lookup_batch(function).map_err(ReduceError::User)?;
                let sorted = sort_batch(
                    &rows,
                    &keys.iter().map(|k| SortKey::asc(k)).collect::<Vec<_>>(),
                )?;
                let columns = keys
                    .iter()
                    .map(|k| Ok(Arc::clone(sorted.column(sorted.schema().index_of(k)?))))
                    .collect::<Result<Vec<_>, arrow::error::ArrowError>>()?;
                let ranges = arrow::compute::partition(&columns)?.ranges();
                let mut out: Vec<RecordBatch> = Vec::new();
                let sorted = crate::columns::string_views(sorted)?;
                for range in ranges {
                    let group = sorted.slice(range.start, range.end - range.start);
                    let result = call_batch(function, f, group, || {
                        format!("a group of {} rows", range.end - range.start)
                    })
                    .map_err(ReduceError::User)?;
                    out.push(result);
                }
                // The function runs once per group and never on no rows: a partition without
                // a group makes a block of no known schema, which every consumer skips.
                match out.first() {
                    Some(first) => Ok(crate::columns::concat(first.schema_ref(), &out)?),
                    None => Ok(RecordBatch::new_empty(Arc::new(Schema::empty()))),
                }
            }
            Reducer::Join {
                left_on,
                right_on,
                how,
            } => {
                let right_schema = Arc::clone(&schemas[1]);
                let right_rows = crate::columns::concat(&right_schema, &sides.swap_remove(1))?;
                join(rows, right_rows, left_on, right_on, *how)
            }
        }
    }
}

impl Reducer {
    /// A reduce where a side has no known schema, so no rows (see `stage::is_unknown`): what
    /// the answer is, where it can be told without that schema, or an error saying why not.
    fn reduce_unknown(
        &self,
        schemas: &[SchemaRef],
        sides: Vec<Vec<RecordBatch>>,
    ) -> Result<RecordBatch, ReduceError> {
        let unknown = |side: usize| schemas[side].fields().is_empty();
        let has_rows = |side: usize| sides[side].iter().any(|b| b.num_rows() > 0);
        let nothing = || Ok(RecordBatch::new_empty(Arc::new(Schema::empty())));
        let cannot = |what: String| {
            Err(ReduceError::DataFusion(
                datafusion::error::DataFusionError::Plan(format!(
                    "{what}: its input has no rows and no known schema (a map_groups that found \
                     no group never calls its function, which alone knows its columns)"
                )),
            ))
        };
        match self {
            Reducer::Aggregate { keys, .. } if keys.is_empty() => {
                cannot("an aggregate of the whole dataset answers one row, of columns".into())
            }
            Reducer::Join { how, .. } => {
                let (left, right) = (unknown(0), unknown(1));
                let keeps_left = matches!(how, JoinKind::Left | JoinKind::Full);
                let keeps_right = matches!(how, JoinKind::Right | JoinKind::Full);
                if (right && keeps_left && has_rows(0)) || (left && keeps_right && has_rows(1)) {
                    return cannot(format!(
                        "a {how:?} join keeps the rows of one side with the other's columns"
                    ));
                }
                match how {
                    // No match possible: no left row, or every left row.
                    JoinKind::Semi if !left => Ok(RecordBatch::new_empty(Arc::clone(&schemas[0]))),
                    JoinKind::Anti if !left => Ok(crate::columns::concat(&schemas[0], &sides[0])?),
                    _ => nothing(),
                }
            }
            _ => nothing(),
        }
    }
}

fn single_partition_session() -> SessionContext {
    SessionContext::new_with_config(SessionConfig::new().with_target_partitions(1))
}

/// Runs a future on this thread's own current-thread runtime (DataFusion's plans are async;
/// tasks run on plain threads).
pub(crate) fn block_on<F: Future>(future: F) -> F::Output {
    thread_local! {
        static RUNTIME: tokio::runtime::Runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("a current-thread runtime");
    }
    RUNTIME.with(|rt| rt.block_on(future))
}

/// Runs a DataFusion plan to one batch, on this thread.
fn collect(frame: datafusion::dataframe::DataFrame) -> Result<RecordBatch, ReduceError> {
    let schema: SchemaRef = Arc::new(frame.schema().as_arrow().clone());
    let batches = block_on(frame.collect())?;
    Ok(crate::columns::concat(&schema, &batches)?)
}

/// Joins two partitions with DataFusion. Key columns of the same name appear once (for a full
/// join, the value of whichever side has one); other clashing right columns get `_right`.
fn join(
    left: RecordBatch,
    right: RecordBatch,
    left_on: &[String],
    right_on: &[String],
    how: JoinKind,
) -> Result<RecordBatch, ReduceError> {
    let left_schema = left.schema();
    let right_schema = right.schema();
    // Checked here too: the plan could not when a user function made a side.
    for (l, r) in left_on.iter().zip(right_on) {
        let lt = left_schema.field_with_name(l)?.data_type();
        let rt = right_schema.field_with_name(r)?.data_type();
        check_join_keys(l, lt, r, rt)
            .map_err(|e| ReduceError::DataFusion(datafusion::error::DataFusionError::Plan(e)))?;
    }
    let ctx = single_partition_session();
    let l = ctx
        .read_table(Arc::new(MemTable::try_new(
            Arc::clone(&left_schema),
            vec![vec![left]],
        )?))?
        .alias("l")?;
    let r = ctx
        .read_table(Arc::new(MemTable::try_new(
            Arc::clone(&right_schema),
            vec![vec![right]],
        )?))?
        .alias("r")?;
    let lk: Vec<&str> = left_on.iter().map(String::as_str).collect();
    let rk: Vec<&str> = right_on.iter().map(String::as_str).collect();
    let qualified = |side: &str, name: &str| col(datafusion::common::Column::new(Some(side), name));
    // Join on qualified keys so names may be shared.
    let on: Vec<Expr> = lk
        .iter()
        .zip(&rk)
        .map(|(a, b)| qualified("l", a).eq(qualified("r", b)))
        .collect();
    let joined = l.join_on(r, how.datafusion(), on)?;
    let mut select: Vec<Expr> = Vec::new();
    let shared_key = |name: &str| lk.iter().zip(&rk).any(|(a, b)| a == b && *a == name);
    for field in left_schema.fields() {
        let name = field.name();
        let value = if shared_key(name) {
            match how {
                JoinKind::Right => qualified("r", name),
                JoinKind::Full => datafusion::functions::expr_fn::coalesce(vec![
                    qualified("l", name),
                    qualified("r", name),
                ]),
                _ => qualified("l", name),
            }
        } else {
            qualified("l", name)
        };
        select.push(value.alias(name));
    }
    if !matches!(how, JoinKind::Semi | JoinKind::Anti) {
        for field in right_schema.fields() {
            let name = field.name();
            if shared_key(name) {
                continue;
            }
            let alias = if left_schema.index_of(name).is_ok() {
                format!("{name}_right")
            } else {
                name.clone()
            };
            select.push(qualified("r", name).alias(alias));
        }
    }
    collect(joined.select(select)?)
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

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::array::{Int64Array, StringArray};

    fn people() -> RecordBatch {
        RecordBatch::try_from_iter([
            (
                "id",
                Arc::new(Int64Array::from(vec![3, 1, 2, 1, 5])) as ArrayRef,
            ),
            (
                "name",
                Arc::new(StringArray::from(vec![
                    Some("c"),
                    Some("a"),
                    None,
                    Some("á"),
                    Some("e"),
                ])) as ArrayRef,
            ),
        ])
        .unwrap()
    }

    fn partition(spec: PartitionSpec, batch: RecordBatch) -> Block {
        let ctx = TaskContext::new(manta_engine::NodeId::random());
        let out = run_partition(
            &ctx,
            TaskInput {
                args: partition_args(&spec).unwrap(),
                objects: vec![Object::Block(Block::from_batch(batch))],
            },
        )
        .unwrap();
        into_block(out).unwrap()
    }

    #[test]
    fn hash_partitions_keep_equal_keys_together_and_every_row_once() {
        let spec = PartitionSpec {
            partitioner: Partitioner::Hash {
                keys: vec!["id".into()],
            },
            n: 3,
            block: 0,
            combine: None,
        };
        let block = partition(spec, people());
        assert_eq!(block.batches().len(), 3);
        assert_eq!(block.num_rows(), 5);
        let holding_one: Vec<usize> = block
            .batches()
            .iter()
            .enumerate()
            .filter(|(_, b)| {
                let ids = b.column(0).as_any().downcast_ref::<Int64Array>().unwrap();
                ids.values().contains(&1)
            })
            .map(|(i, _)| i)
            .collect();
        assert_eq!(holding_one.len(), 1, "both rows with id 1 in one partition");
    }

    #[test]
    fn range_partitions_are_ordered_by_the_boundaries() {
        let keys = vec![SortKey::desc("id")];
        let sample = people().project(&[0]).unwrap();
        let bounds = boundaries(&[sample], &keys, 2).unwrap();
        let block = partition(
            PartitionSpec {
                partitioner: Partitioner::Range {
                    keys: keys.clone(),
                    boundaries: bounds,
                },
                n: 2,
                block: 0,
                combine: None,
            },
            people(),
        );
        let ids = |b: &RecordBatch| -> Vec<i64> {
            b.column(0)
                .as_any()
                .downcast_ref::<Int64Array>()
                .unwrap()
                .values()
                .to_vec()
        };
        let (first, second) = (ids(&block.batches()[0]), ids(&block.batches()[1]));
        assert_eq!(first.len() + second.len(), 5);
        assert!(
            first.iter().min() >= second.iter().max(),
            "{first:?} then {second:?}"
        );
    }
}
