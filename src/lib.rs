//! # Manta: a distributed dataflow engine for Rust
//!
//! Ray Data-style datasets over Arrow blocks: lazy pipelines of reads, filters, computed columns
//! and your own batch functions compile into task graphs and run streaming, in-process by default
//! or on a cluster of node daemons whose shared-memory object stores exchange blocks over Arrow
//! Flight.
//!
//! ```no_run
//! use manta::prelude::*;
//!
//! #[manta::remote]
//! fn double_quantity(batch: RecordBatch) -> manta::Result<RecordBatch> {
//!     Ok(batch) // ... transform the batch ...
//! }
//!
//! fn main() -> manta::Result<()> {
//!     let ctx = manta::init()?; // first thing: in a worker process this never returns
//!     let ds = ctx
//!         .read_parquet("data/lineitem/")?
//!         .filter(col("l_discount").gt(lit(0.05)))
//!         .with_column("revenue", col("l_extendedprice") * (lit(1) - col("l_discount")))
//!         .map_batches(double_quantity);
//!     ds.write_parquet("out/")?;
//!     println!("{}", ds.stats());
//!     Ok(())
//! }
//! ```
//!
//! Ray Core's tasks and objects too: `#[manta::remote] fn add(a: i64, b: i64) -> i64` makes
//! `add.remote(&ctx, 5, 10)` return an [`ObjectRef`] at once, and `ctx.get(&r)` its value
//! (see [`tasks`]).
//!
//! The crates underneath, bottom up: [`engine`] (ids, blocks, the object store, the function
//! registry), [`flight`] (moving objects between nodes), [`scheduler`] (head, node daemons,
//! workers, the embedded runtime), [`tasks`] (remote functions, object refs), [`datasets`]
//! (the Dataset API). This crate re-exports what a
//! program needs and provides the `manta` command line.

#![warn(missing_docs)]

// Lets `#[manta::remote]` (which names `::manta`) be used inside this crate too.
extern crate self as manta;

pub use manta_datasets as datasets;
pub use manta_engine as engine;
pub use manta_flight as flight;
pub use manta_macros::{actor, callable, remote};
pub use manta_scheduler as scheduler;
pub use manta_tasks as tasks;
pub use manta_tune as tune;

pub mod memory;
pub mod report;
pub mod tpch;

pub use report::{Report, error_chain};

pub use manta_datasets::{
    Aggregate, Checksum, Config, Context, CsvOptions, Dataset, DatasetStats, Error, FileFormat,
    GroupedData, JoinKind, JsonOptions, MapBatchesOptions, ReadOptions, Result, SortKey,
    WriteFormat, WriteMode, WriteSummary, asc, desc,
};
pub use manta_engine::{BoxError, Callable, Resources};
pub use manta_flight::auth::Token;
pub use manta_tasks::{ActorOptions, ActorRef, ObjectRef, TaskOptions};

/// What most programs need: `use manta::prelude::*;`.
pub mod prelude {
    pub use arrow::array::RecordBatch;
    pub use datafusion::prelude::{Expr, col, lit};

    pub use crate::{
        ActorOptions, Aggregate, BoxError, Callable, Context, Dataset, JoinKind, MapBatchesOptions,
        ObjectRef, ReadOptions, Resources, SortKey, TaskOptions, WriteFormat, WriteMode, actor,
        asc, callable, desc, remote,
    };
}

/// Starts Manta for this program: joins the cluster at `MANTA_ADDRESS` if set, else starts the
/// embedded runtime (see [`Config::from_env`] for the other variables).
///
/// Call it first in `main`. When a node daemon started this executable as a worker process,
/// `init` does not return: the process serves tasks until its node lets it go, then exits.
pub fn init() -> Result<Context> {
    run_worker_if_requested();
    init_tracing();
    Context::new(Config::from_env()?)
}

/// [`init`] with an explicit configuration instead of the environment.
pub fn init_with(config: Config) -> Result<Context> {
    run_worker_if_requested();
    init_tracing();
    Context::new(config)
}

/// If a node daemon started this process as a worker, serves tasks and exits; otherwise returns
/// at once. [`init`] calls it; a program with its own `main` logic before `init` (a test
/// harness, say) calls it first thing.
///
/// Either way it first turns transparent huge pages off for the process (see
/// [`manta_engine::huge_pages`]; `MANTA_TRANSPARENT_HUGE_PAGES=1` keeps them), and, if
/// `MANTA_PRESSURE_PURGE_DELAY_MS` asks, has mimalloc give freed memory back sooner while an
/// object store of the process is full (see [`memory`]).
pub fn run_worker_if_requested() {
    manta_engine::huge_pages::disable_transparent_huge_pages();
    memory::purge_sooner_under_pressure();
    if let Some(worker) = manta_scheduler::WorkerEnv::from_env() {
        init_tracing();
        manta_scheduler::run_worker(worker);
    }
}

/// Logs to stderr, filtered by `RUST_LOG` (default: warnings).
pub fn init_tracing() {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("warn"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .try_init();
}
