//! The subcommands, one struct each (clap derive: doc comments are the help text).

mod daemon;
mod job;
mod sql;
mod status;
mod timeline;

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
    Start(Box<StartArgs>),
    /// List the cluster's nodes with their CPUs and object-store use.
    Status(StatusArgs),
    /// Stop every head and node daemon that `manta start` started on this machine.
    Stop,
    /// Start a head with the autoscaler a cluster config file describes (TOML: [head],
    /// [autoscaler], [provider], [node_types.NAME]; see docs/cluster.md).
    Up(UpArgs),
    /// Stop the head `manta up CONFIG` started here, and every node its autoscaler launched.
    Down(UpArgs),
    /// Submit, follow, list and stop jobs: entrypoints the head runs as drivers.
    Job(job::JobArgs),
    /// Print a one-time link that signs a browser in to the head's dashboard.
    Dashboard(timeline::DashboardArgs),
    /// Write a job's tasks as a Chrome trace (open it in Perfetto or chrome://tracing).
    Timeline(timeline::TimelineArgs),
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
    /// The cluster token. Head: the token every caller must present (default: a new random
    /// one, written to ~/.manta/head-<port>.token, readable by this user only). Node: the
    /// head's token (default: that file, when the head runs on this machine).
    #[arg(long, env = "MANTA_TOKEN", hide_env_values = true)]
    token: Option<String>,
    /// The address to listen on, when not the advertised --node-ip-address (e.g. 0.0.0.0 to
    /// listen on every interface).
    #[arg(long = "bind-address")]
    bind_address: Option<String>,
    /// Serve TLS with this certificate chain (PEM; the server's certificate first). Needs
    /// --tls-key, and --tls-ca to reach the rest of the cluster.
    #[arg(long, requires_all = ["tls_key", "tls_ca"])]
    tls_cert: Option<PathBuf>,
    /// The private key (PEM) of --tls-cert.
    #[arg(long, requires = "tls_cert")]
    tls_key: Option<PathBuf>,
    #[command(flatten)]
    ca: CaArgs,
    /// CPUs offered to tasks (default: this machine's). The head is also a node unless
    /// this is 0 (a head that schedules nothing).
    #[arg(long)]
    num_cpus: Option<f64>,
    /// Node: seconds to keep trying to join a head that is not up (yet) before giving up.
    #[arg(long, default_value_t = 60)]
    join_timeout: u64,
    /// Object store memory budget, e.g. 2GiB; past it objects spill to disk.
    #[arg(long, default_value = "2GiB")]
    object_store_memory: String,
    /// Custom resources offered (by a node, or by the head's own node), as name=amount,...
    #[arg(long, default_value = "")]
    resources: String,
    /// Head: seconds a dead node stays listed (in `manta status`) before it is forgotten.
    #[arg(long, requires = "head", default_value_t = 60)]
    forget_dead_nodes_after: u64,
    /// Head: seconds a task or actor that fits no live node waits for one (warned about every
    /// 10 s) before it fails.
    #[arg(long, requires = "head", default_value_t = 300)]
    pending_timeout: u64,
    /// Head: also serve Flight SQL clients on this port (0 picks a free one), through a driver
    /// of this cluster.
    #[arg(long, requires = "head")]
    flight_sql_port: Option<u16>,
    /// Head with --flight-sql-port: a table to serve, as NAME=PATH (Parquet, CSV or
    /// newline-delimited JSON files). Repeat for more tables.
    #[arg(long = "table", value_name = "NAME=PATH", requires = "flight_sql_port")]
    tables: Vec<String>,
    /// Head with --flight-sql-port: let Flight SQL clients run DDL, DML and COPY, reading and
    /// writing only under this directory (or URL prefix). Repeat for more. Without it, clients
    /// may only query.
    #[arg(
        long = "sql-writable",
        value_name = "DIR",
        requires = "flight_sql_port"
    )]
    sql_writable: Vec<String>,
    /// Node: a name the head lists it by (the autoscaler names the nodes it launches).
    #[arg(long, conflicts_with = "head", default_value = "")]
    node_name: String,
    /// Serve Prometheus metrics of this node (a head: of its own node) at /metrics on this
    /// port (0 picks a free one), behind the token. A head's metrics are on --dashboard-port.
    #[arg(long)]
    metrics_port: Option<u16>,
    /// Head: serve the dashboard, its JSON API (/api/...) and the head's /metrics on this
    /// port (0 picks a free one) [default: 8265, skipped with a warning if taken]. Behind the
    /// cluster token: `manta dashboard` prints a link that signs a browser in.
    #[arg(long, requires = "head")]
    dashboard_port: Option<u16>,
    /// Head: serve no dashboard.
    #[arg(long, requires = "head", conflicts_with = "dashboard_port")]
    no_dashboard: bool,
    /// Head: keep no task events (what the dashboard's stages and `manta timeline` show).
    #[arg(long, requires = "head")]
    no_task_events: bool,
    /// Threads of this daemon's async runtime [default: a quarter of this machine's cores,
    /// at least 1 and at most 8]. The daemon mostly passes messages and shares the machine
    /// with its workers: on a small machine one thread serves its streams without waking
    /// another for each message.
    #[arg(long, value_parser = clap::value_parser!(u16).range(1..=256))]
    runtime_threads: Option<u16>,
    /// Head: run the autoscaler this cluster config file describes (what `manta up` does).
    #[arg(long, requires = "head", value_name = "CONFIG")]
    autoscaler: Option<PathBuf>,
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

/// Arguments of `manta up` and `manta down`.
#[derive(Debug, Args)]
pub struct UpArgs {
    /// The cluster config file.
    config: PathBuf,
}

/// Arguments of `manta status`.
#[derive(Debug, Args)]
pub struct StatusArgs {
    /// The head's address (default: MANTA_ADDRESS, else the head started on this machine).
    #[arg(long, env = "MANTA_ADDRESS", global = true)]
    address: Option<String>,
    /// The cluster token (default: the head's token file, on the head's machine).
    #[arg(long, env = "MANTA_TOKEN", hide_env_values = true, global = true)]
    token: Option<String>,
    #[command(flatten)]
    ca: CaArgs,
}

/// The certificate authority of a cluster serving TLS.
#[derive(Debug, Args, Clone)]
pub struct CaArgs {
    /// Trust this certificate authority (PEM) to verify the TLS certificates of the cluster's
    /// `https://HOST:PORT` addresses.
    #[arg(long, env = "MANTA_TLS_CA", global = true)]
    tls_ca: Option<PathBuf>,
}

impl CaArgs {
    /// Makes this process trust the authority, if one was given.
    fn trust(&self) -> Result<()> {
        if let Some(ca) = &self.tls_ca {
            manta::flight::tls::trust_file(ca).context("--tls-ca")?;
        }
        Ok(())
    }
}

/// Runs one command.
pub fn run(cli: Cli) -> Result<()> {
    match cli.command {
        Command::Start(args) if args.block => {
            args.ca.trust()?;
            daemon::run_foreground(*args)
        }
        Command::Start(args) => {
            let argv = std::env::args_os().skip(1).collect();
            daemon::start_background(*args, argv)
        }
        Command::Status(args) => {
            let (address, token) = head_of(&args)?;
            status::print_status(&address, token.as_ref())
        }
        Command::Job(args) => job::run(args),
        Command::Dashboard(args) => timeline::dashboard(args),
        Command::Timeline(args) => timeline::timeline(args),
        Command::Stop => daemon::stop_all(),
        Command::Up(args) => daemon::up(&args.config),
        Command::Down(args) => daemon::down(&args.config),
        Command::Sql(args) => {
            args.ca.trust()?;
            sql::run(args)
        }
    }
}

/// The head to talk to and the token to present: `--address` (or `MANTA_ADDRESS`, else the
/// head started on this machine) and `--token` (or `MANTA_TOKEN`, else its token file); trusts
/// `--tls-ca`.
fn head_of(args: &StatusArgs) -> Result<(String, Option<manta::Token>)> {
    let address = match &args.address {
        Some(address) => address.clone(),
        None => daemon::local_head_address()?
            .context("no head address: pass --address, set MANTA_ADDRESS, or start a head here")?,
    };
    args.ca.trust()?;
    Ok((address, token(args.token.as_deref())?))
}

/// A token given on the command line or in `MANTA_TOKEN`, checked.
fn token(given: Option<&str>) -> Result<Option<manta::Token>> {
    given
        .filter(|t| !t.trim().is_empty())
        .map(|t| manta::Token::new(t).context("--token / MANTA_TOKEN"))
        .transpose()
}

fn validate(args: &StartArgs) -> Result<()> {
    if !args.head && args.address.is_none() {
        bail!("pass --head to start a head, or --address HOST:PORT to start a node");
    }
    Ok(())
}
