//! The integration tests that use the standard test harness, as one test binary: one module
//! per area (actors, the command line, the Dataset API, SQL, tasks, Tune, ...).
//!
//! One binary rather than one per file because each integration test binary links the whole
//! engine (DataFusion, Arrow, tonic): built separately they cost the test build more time than
//! any of them takes to run. Select an area by its module, e.g. `cargo test --release --test
//! all sql_tpch::`. The tests that start their own processes of this binary or need `main`
//! (`cluster`, `hosts`, `operate`) stay binaries of their own.

#[path = "../common/mod.rs"]
mod common;
#[path = "../fuzz/mod.rs"]
mod fuzz;

mod actors;
mod cli;
mod dataset_api;
mod dataset_edges;
mod dataset_functions;
mod dictionary_keys;
mod differential;
mod embedded;
mod flight_sql;
mod narrow_decimals;
mod security;
mod sql_tpch;
mod tasks;
mod tune;
