//! The benchmark workloads of WORKLOADS.md, one harness:
//!
//! ```text
//! cargo bench --bench workloads -- WORKLOAD [--scale S] [--runs N] [--address HOST:PORT]
//!                                           [--object-store-memory BYTES] [--data DIR]
//! ```
//!
//! Each run prints one `RESULT workload=... seconds=...` line; where a workload has a baseline
//! (plain DataFusion, raw TCP) it runs in the same process run and prints a `BASELINE` line.
//! Workloads so far: `etl`, `objects`, `flight`.

use std::path::PathBuf;
use std::time::Instant;

use clap::Parser;

#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

mod suite;

#[derive(Parser, Debug, Clone)]
pub struct Args {
    /// etl | objects | flight
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
    /// Skip the baseline.
    #[arg(long)]
    no_baseline: bool,
    /// Internal: serve a Flight object for the `flight` workload.
    #[arg(long, hide = true)]
    serve_flight: bool,
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
    match args.workload.as_str() {
        "etl" => suite::etl::run(&args),
        "objects" => suite::objects::run(&args),
        "flight" => suite::flight::run(&args),
        other => anyhow::bail!("unknown workload {other:?}: expected etl, objects or flight"),
    }
}
