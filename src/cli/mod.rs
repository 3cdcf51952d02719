//! The subcommands, one struct each (clap derive: doc comments are the help text).

mod daemon;
mod sql;
mod status;

use std::path::PathBuf;

use anyhow::{Context as _, Result, bail};
use clap::{Args, Parser, Subcommand};

/// Manta: a distributed dataflow engine for Rust.
#[derive(Debug, Parser)]
#[command(name = "manta", version, about)]
pub struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Start the head (`--head`) or a node daemon (`--address`) on this machine.
    Start(StartArgs),
    /// List the cluster's nodes with their CPUs and object-store use.
    Status(StatusArgs),
    /// Stop every head and node daemon that `manta start` started on this machine.
    Stop,
    /// Run SQL over tables of files: one query, or a shell without one.
    Sql(sql::SqlArgs),
}

/// Arguments of `manta start`.
#[derive(Debug, Args, Clone)]
pub struct StartArgs {
    /// Start the head (control plane) rather than a node.
    #[arg(long, conflicts_with = "address")]
    head: bool,
    /// The head to join, as HOST:PORT (starts a node daemon).
    #[arg(long, required_unless_present = "head")]
    address: Option<String>,
    /// Port to listen on; 0 picks a free one.
    #[arg(long, default_value_t = 0)]
    port: u16,
    /// IP address to bind and advertise.
    #[arg(long = "node-ip-address", default_value = "127.0.0.1")]
    host: String,
    /// Node: CPUs offered to tasks (default: this machine's).
    #[arg(long)]
    num_cpus: Option<f64>,
    /// Node: object store memory budget, e.g. 2GiB; past it objects spill to disk.
    #[arg(long, default_value = "2GiB")]
    object_store_memory: String,
    /// Node: custom resources offered, as name=amount,name=amount.
    #[arg(long, default_value = "")]
    resources: String,
    /// Head: also serve Flight SQL clients on this port (0 picks a free one), through a driver
    /// of this cluster.
    #[arg(long, requires = "head")]
    flight_sql_port: Option<u16>,
    /// Head with --flight-sql-port: a table to serve, as NAME=PATH (Parquet, CSV or
    /// newline-delimited JSON files). Repeat for more tables.
    #[arg(long = "table", value_name = "NAME=PATH", requires = "flight_sql_port")]
    tables: Vec<String>,
    /// Node: directory for spilled objects.
    #[arg(long)]
    spill_dir: Option<PathBuf>,
    /// Stay in the foreground instead of starting in the background.
    #[arg(long)]
    block: bool,
    /// Internal: started by a backgrounding `manta start`; stop writing to stdout once ready.
    #[arg(long, hide = true)]
    daemon_child: bool,
}

/// Arguments of `manta status`.
#[derive(Debug, Args)]
pub struct StatusArgs {
    /// The head's address (default: MANTA_ADDRESS, else the head started on this machine).
    #[arg(long, env = "MANTA_ADDRESS")]
    address: Option<String>,
}

/// Runs one command.
pub fn run(cli: Cli) -> Result<()> {
    match cli.command {
        Command::Start(args) if args.block => daemon::run_foreground(args),
        Command::Start(args) => daemon::start_background(args),
        Command::Status(args) => {
            let address = match args.address {
                Some(address) => address,
                None => daemon::local_head_address()?.context(
                    "no head address: pass --address, set MANTA_ADDRESS, or start a head here",
                )?,
            };
            status::print_status(&address)
        }
        Command::Stop => daemon::stop_all(),
        Command::Sql(args) => sql::run(args),
    }
}

fn validate(args: &StartArgs) -> Result<()> {
    if !args.head && args.address.is_none() {
        bail!("pass --head to start a head, or --address HOST:PORT to start a node");
    }
    Ok(())
}
