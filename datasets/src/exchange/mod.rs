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
//!    batch *i* of each only (the task's `input_batches`), and reduces them with a [`Reducer`]
//!    (concatenate, shuffle, sort, aggregate with DataFusion, join with DataFusion, or call a
//!    registered function per group). A mid-sized exchange of small partitions merges: each
//!    reduce task takes a range of consecutive partitions (the task's `input_batches`), about
//!    [`Config::reduce_task_bytes`](crate::Config::reduce_task_bytes) of map output, gathered
//!    in one go; a small one has a single task read every map output whole.
//!
//! Map outputs live in the object store like any block: past the store's budget they spill to
//! disk. A reducer reads its batch of a spilled map output straight from the mapped spill file
//! (only that batch's pages), without restoring the whole output, and on a cluster pulls only
//! its batch of a remote map output over Flight (a ticket naming the object and the batch). So
//! an all-to-all operation over more data than memory reads and moves each byte about once.
//! The reduce outputs become the input blocks of the operators that follow.
//!
//! Aggregations combine on the map side (see [`combine`]): a map task aggregates its
//! block into partial states first ([`partial_states`], with sums laned by [`laned_sums`] or
//! added group by group over [`rows_by_group`], and dictionary keys grouped on their codes by
//! [`dictionary_keys`]), so only one row per group and block is partitioned.
//!
//! A sort samples first: a **sample** task per block returns a few rows of the sort keys, the
//! driver sorts the samples and picks `n - 1` boundaries, and the partitioner sends each row to
//! the range it falls in, so reduce output *i* holds only keys before those of output *i + 1*.
//!
//! This folder holds the operations as plain data: the logical node ([`Exchange`], here), its
//! checks ([`check`]), the keys and aggregates users write ([`keys`]), the specs of its tasks
//! ([`specs`]), and the slice and zip tasks ([`slice_zip`]); the map side is
//! [`partition`], the reduce side [`reduce`].
mod check;
mod dictionary_keys;
mod gather;
mod keys;
mod laned_sums;
mod partial_states;
mod rows_by_group;
mod slice_zip;
mod specs;

pub(crate) use check::check_join_keys;
pub(crate) use keys::ident;
pub use keys::{Aggregate, AggregateFunction, JoinKind, SortKey, asc, desc};
pub(crate) use slice_zip::{into_block, single_batch, user_error};
pub use slice_zip::{zip_batches, zip_schema};
pub(crate) use specs::decode;
pub use specs::{
    PartitionSpec, Partitioner, ReduceSpec, Reducer, partition_args, reduce_args, sample_args,
    slice_args,
};

pub use crate::ipc::write_ipc;
pub mod combine;
pub mod partition;
pub mod reduce;

pub use partition::{boundaries, partition_batches};
pub use reduce::ReduceError;

use arrow::array::RecordBatch;
use arrow::datatypes::SchemaRef;
use manta_engine::{FunctionKind, RemoteFunction};

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

inventory::submit! { RemoteFunction { name: PARTITION_FUNCTION, kind: FunctionKind::Task(partition::run_partition) } }
inventory::submit! { RemoteFunction { name: REDUCE_FUNCTION, kind: FunctionKind::Task(reduce::run_reduce) } }
inventory::submit! { RemoteFunction { name: SAMPLE_FUNCTION, kind: FunctionKind::Task(partition::run_sample) } }
inventory::submit! { RemoteFunction { name: SLICE_FUNCTION, kind: FunctionKind::Task(slice_zip::run_slice) } }
inventory::submit! { RemoteFunction { name: ZIP_FUNCTION, kind: FunctionKind::Task(slice_zip::run_zip) } }

/// Rows of sort keys sampled from each block to find a sort's range boundaries.
pub const SAMPLES_PER_BLOCK: usize = 64;
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
