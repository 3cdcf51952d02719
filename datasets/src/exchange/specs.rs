//! The specs of an exchange's tasks (how a partition task splits rows, how a reduce task
//! combines them) and their encoding as task arguments.

use serde::{Deserialize, Serialize};

use super::keys::{Aggregate, JoinKind, SortKey};

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
    /// Which partitions of each input (the task's `input_batches`: one, or a range of them for
    /// a mid-sized exchange); `None` when the task reads its inputs whole (every partition, a
    /// small exchange).
    pub partitions: Option<std::ops::Range<usize>>,
    /// How many map outputs come from each side (one entry unless a join); the task has one
    /// input per map output and partition.
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
