//! # manta-datasets: the Dataset API
//!
//! Fourth layer of Manta (`engine` <- `flight` <- `scheduler` <- **`datasets`** <- `manta`): a
//! Ray Data-style lazy [`Dataset`] whose pipelines compile into stages of tasks and run
//! streaming, embedded or on a cluster.
//!
//! ```text
//!  Dataset (LogicalPlan: source + ops) ──compile──▶ stages (fused, StageSpec bytes)
//!       ──execute──▶ tasks per block (Client: embedded pool, or head ─▶ nodes ─▶ workers)
//!       ──▶ blocks as ObjectRefs ──▶ next stage / count / take / iter_batches / write_parquet
//! ```
//!
//! * [`context`]: [`Context`], where pipelines run; `read_parquet` starts one.
//! * [`dataset`]: [`Dataset`], the builder and the consuming calls.
//! * [`plan`]: logical plans, validation, fusion into stages.
//! * [`stage`]: the registered task that runs a stage's operators over one block.
//! * [`ops`]: `filter` and `with_column` by DataFusion expression; [`columns`]: select, drop,
//!   rename, conform.
//! * [`exchange`]: all-to-all operations (shuffle, sort, groupby, join, union, ...), their map
//!   side in [`partition`] and reduce side in [`reduce`]; [`combine`]: map-side aggregation;
//!   [`run`]: runs them as barriers.
//! * [`executor`]: the streaming executor and its backpressure; [`split`]: one run feeding
//!   several consumers.
//! * [`source`], [`parquet_source`], [`files`], [`file_options`]: what a dataset reads, split
//!   into read tasks.
//! * [`sink`]: writing part files atomically, in a [`WriteMode`].
//! * [`storage`]: local paths and object store URLs (s3, gs, az, memory).
//! * [`sql`], [`flight_sql`]: SQL over datasets through DataFusion, and a Flight SQL endpoint.
//! * [`stats`], [`progress`], [`checksum`]: figures, bars, result comparison.

#![warn(missing_docs)]

pub mod checksum;
pub mod columns;
pub mod context;
pub mod dataset;
mod decimal_arithmetic;
pub mod error;
pub mod exchange;
mod filter_order;
mod group_key_reduction;
mod join_order;
mod outer_join_constants;
mod semi_join_pushdown;
mod shared_subplan;
pub use exchange::{combine, partition, reduce};
pub mod executor;
pub mod file_options;
pub mod files;
mod filtered_read;
pub mod flight_sql;
pub mod ipc;
mod narrow_decimals;
pub mod objects;
pub mod ops;
mod parquet_source;
pub mod plan;
pub mod progress;
pub mod retries;
mod row_group_pruning;
pub mod rows;
pub mod run;
mod scan_predicates;
pub mod sink;
pub mod source;
pub mod split;
pub mod sql;
pub mod sql_tasks;
pub mod stage;
pub mod stats;
pub mod storage;
mod thread_runtime;
mod whole_file_scans;

pub use checksum::Checksum;
pub use context::{Config, Context};
pub use dataset::{BatchIter, Dataset, GroupedData, RowIter, WriteSummary};
pub use error::{Error, Result};
pub use exchange::{Aggregate, JoinKind, SortKey, asc, desc};
pub use file_options::{CsvOptions, JsonOptions};
pub use flight_sql::{FlightSqlOptions, FlightSqlServer, SqlAccess};
pub use plan::{MapBatchesOptions, ReadOptions};
pub use sink::{WriteFormat, WriteMode};
pub use source::FileFormat;
pub use split::SplitIter;
pub use stats::{DatasetStats, StageStats};
