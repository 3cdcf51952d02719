//! The `manta` command line: start and stop a cluster on this machine, and look at it.
//!
//! ```text
//! manta start --head --port 6379                          # the head, in the background
//! manta start --address 127.0.0.1:6379 --num-cpus 2       # a node daemon joining it
//! manta status                                            # nodes, CPUs, object store use
//! manta stop                                              # stop what `manta start` started here
//! manta sql --table t=data/t/ "SELECT count(*) FROM t"    # SQL over files (a shell without a query)
//! manta start --head --flight-sql-port 50051 --table t=data/t/   # and serve Flight SQL clients
//! manta sql --flight-sql 127.0.0.1:50051 "SELECT 1"       # a Flight SQL server's answers
//! ```

mod cli;

/// Node daemons move blocks through large short-lived buffers (Flight messages); mimalloc keeps
/// freed memory for reuse instead of returning it to the kernel and faulting it in again.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

use clap::Parser;

fn main() -> std::process::ExitCode {
    // A driver's tasks run in worker processes started from the driver's own executable, and
    // `manta sql --address` and a head serving Flight SQL are drivers. (This also turns
    // transparent huge pages off for heads, nodes and the workers they start.)
    manta::run_worker_if_requested();
    let args = cli::Cli::parse();
    manta::init_tracing();
    match cli::run(args) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            // The causes Manta's messages already hold are not said again.
            eprintln!("manta: {}", manta::error_chain(e.as_ref()));
            std::process::ExitCode::FAILURE
        }
    }
}
