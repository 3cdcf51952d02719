//! The benchmark workloads of WORKLOADS.md, one harness:
//!
//! ```text
//! cargo bench --bench workloads -- WORKLOAD [--scale S] [--runs N] [--address HOST:PORT]
//!                                           [--object-store-memory BYTES] [--data DIR]
//!                                           [--hosts]
//! ```
//!
//! Each run prints one `RESULT workload=... seconds=...` line; where a workload has a baseline
//! (plain DataFusion, raw TCP) it runs in the same process run and prints a `BASELINE` line.
//! Workloads so far: `etl`, `filters` (one read through filters of several selectivities), `q1`, `shuffle`, `sort`, `scale` (the three all-to-all ones, each in
//! its own process), `tpch` (22 queries through `ctx.sql`), `objects`, `flight`, `tasks`, `actors`,
//! `recovery` (a node killed halfway, on a cluster), `autoscale` and `jobs` (on a cluster), `sim`
//! (the head against 1,000 simulated nodes).

use std::path::PathBuf;
use std::time::Instant;

use clap::Parser;

#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

mod suite;

#[derive(Parser, Debug, Clone)]
pub struct Args {
    /// etl | filters | q1 | shuffle | sort | scale | tpch | objects | flight | tasks | actors | recovery |
    /// sim | autoscale | jobs
    workload: String,
    /// TPC-H scale factor.
    #[arg(long, default_value_t = 1.0)]
    scale: f64,
    /// Timed runs.
    #[arg(long, default_value_t = 3)]
    runs: usize,
    /// Run on the cluster whose head is here (default: embedded).
    #[arg(long, env = "MANTA_ADDRESS")]
    address: Option<String>,
    /// Object store budget (embedded), e.g. 1GiB.
    #[arg(long)]
    object_store_memory: Option<String>,
    /// Where generated TPC-H data is cached.
    #[arg(long)]
    data: Option<PathBuf>,
    /// How many tasks (or actor calls) the `tasks` and `actors` workloads run (default
    /// 100,000), or `sim` submits (default 1,000,000).
    #[arg(long)]
    count: Option<usize>,
    /// Skip the baseline.
    #[arg(long)]
    no_baseline: bool,
    /// `q1`, `shuffle`, `sort`: rows per read task (default: the reader's), so many small
    /// blocks make a mid-sized exchange.
    #[arg(long)]
    rows_per_task: Option<u64>,
    /// `sim`: how many simulated nodes (default 1,000).
    #[arg(long)]
    nodes: Option<usize>,
    /// `sim`: how long each task runs on its simulated node, in ms (default 5; 0: answered at
    /// once, which measures the head alone).
    #[arg(long)]
    task_ms: Option<u64>,
    /// `recovery`: the pid of a node to SIGKILL halfway through the disturbed run.
    #[arg(long)]
    kill_node: Option<i32>,
    /// `jobs`: the quickstart executable to submit (default target/release/examples/quickstart).
    #[arg(long)]
    job: Option<PathBuf>,
    /// Run on a cluster of separate hosts made here (network and mount namespaces: a head,
    /// two nodes of one CPU, the driver; needs root and iproute2). See `suite/hosts.rs`.
    #[arg(long, conflicts_with = "address")]
    hosts: bool,
    /// Internal: serve a Flight object for the `flight` workload.
    #[arg(long, hide = true)]
    serve_flight: bool,
    /// `flight`: the serving process on CPU 0 and this one on CPU 1, as two hosts with a core
    /// each would be, rather than both sharing both cores.
    #[arg(long)]
    split_cpus: bool,
    /// `cargo bench` passes this; ignored.
    #[arg(long, hide = true)]
    bench: bool,
}

impl Args {
    pub fn mode(&self) -> &'static str {
        if self.address.is_some() {
            "cluster"
        } else {
            "embedded"
        }
    }

    pub fn data_dir(&self) -> PathBuf {
        self.data.clone().unwrap_or_else(manta::tpch::default_dir)
    }
}

/// Peak resident memory of this process, in MiB.
pub fn peak_rss_mib() -> u64 {
    // SAFETY: getrusage fills a struct we own.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut usage) };
    usage.ru_maxrss as u64 / 1024
}

/// Peak resident memory of another process (VmHWM), in MiB.
pub fn peak_rss_of_mib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    line.split_whitespace()
        .nth(1)?
        .parse::<u64>()
        .ok()
        .map(|kib| kib / 1024)
}

/// `peak_rss_mib=N`, and on a cluster `node_peak_rss_mib=A,B` for each node daemon.
pub fn rss_report(ctx: &manta::Context) -> anyhow::Result<String> {
    let mut rss = format!("peak_rss_mib={}", peak_rss_mib());
    if let manta::scheduler::Client::Cluster(cluster) = ctx.client() {
        let nodes = ctx.block_on(cluster.nodes())?;
        let node_rss: Vec<String> = nodes
            .iter()
            .filter_map(|n| peak_rss_of_mib(n.pid).map(|m| m.to_string()))
            .collect();
        rss.push_str(&format!(" node_peak_rss_mib={}", node_rss.join(",")));
    }
    Ok(rss)
}

/// Runs `shuffle`, `sort` and `q1` (the groupby) one after the other, each in a process of its
/// own so that each reports its own peak RSS: the `scale` workload (run it with `--scale 10
/// --object-store-memory 1GiB`).
fn run_scale(args: &Args) -> anyhow::Result<()> {
    let exe = std::env::current_exe()?;
    let mut forwarded: Vec<String> = std::env::args().skip(1).collect();
    let at = forwarded
        .iter()
        .position(|a| a == "scale")
        .ok_or_else(|| anyhow::anyhow!("scale workload not named"))?;
    if !forwarded.iter().any(|a| a == "--runs") {
        forwarded.extend(["--runs".to_string(), "1".to_string()]);
    }
    for workload in ["shuffle", "sort", "q1"] {
        forwarded[at] = workload.to_string();
        let status = std::process::Command::new(&exe)
            .args(&forwarded)
            .arg("--no-baseline")
            .status()?;
        anyhow::ensure!(
            status.success(),
            "{workload} at scale {} failed",
            args.scale
        );
    }
    Ok(())
}

/// A block of `bytes` bytes in batches of `batch_rows` rows of two 8-byte columns
/// (`batch_rows` = 65536 makes 1 MiB batches).
pub fn numbers_block(bytes: usize, batch_rows: usize) -> manta::engine::Block {
    use std::sync::Arc;

    use arrow::array::{Float64Array, Int64Array, RecordBatch};
    let batches: Vec<RecordBatch> = (0..bytes / (batch_rows * 16))
        .map(|i| {
            let start = (i * batch_rows) as i64;
            RecordBatch::try_from_iter([
                (
                    "id",
                    Arc::new(Int64Array::from_iter_values(
                        start..start + batch_rows as i64,
                    )) as _,
                ),
                (
                    "value",
                    Arc::new(Float64Array::from_iter_values(
                        (0..batch_rows).map(|v| v as f64 * 0.5),
                    )) as _,
                ),
            ])
            .expect("two columns of equal length")
        })
        .collect();
    manta::engine::Block::try_new(batches[0].schema(), batches).expect("one schema")
}

/// Times `f`, returning seconds and its result.
pub fn timed<T>(f: impl FnOnce() -> T) -> (f64, T) {
    let started = Instant::now();
    let value = f();
    (started.elapsed().as_secs_f64(), value)
}

fn main() -> anyhow::Result<()> {
    manta::run_worker_if_requested();
    let args = Args::parse();
    if args.serve_flight {
        return suite::flight::serve(&args);
    }
    if args.hosts {
        return suite::hosts::run(&args);
    }
    match args.workload.as_str() {
        "etl" => suite::etl::run(&args),
        "filters" => suite::filters::run(&args),
        "objects" => suite::objects::run(&args),
        "flight" => suite::flight::run(&args),
        "q1" | "shuffle" | "sort" => suite::alltoall::run(&args),
        "scale" => run_scale(&args),
        "tpch" => suite::tpch::run(&args),
        "tasks" => suite::tasks::run(&args),
        "actors" => suite::actors::run(&args),
        "recovery" => suite::recovery::run(&args),
        "sim" => suite::sim::run(&args),
        "autoscale" => suite::operate::autoscale(&args),
        "jobs" => suite::operate::jobs(&args),
        other => anyhow::bail!(
            "unknown workload {other:?}: expected etl, filters, q1, shuffle, sort, scale, tpch, objects, flight, tasks, actors, recovery, sim, autoscale or jobs"
        ),
    }
}
