//! Starting processes in the background, remembering them, and stopping them.
//!
//! `manta start` without `--block` runs itself again with `--block --daemon-child` in a new
//! session (so it outlives the shell), its log going to a file, and waits for the child's
//! `MANTA_READY <address> [flight-sql=<address>]` line on a pipe: when `manta start` returns, the head is listening or
//! the node is registered. Each started process is recorded as a file `<pid>` in the run
//! directory (`$MANTA_RUN_DIR`, default `<temp>/manta-run`), which `manta stop` reads.

use std::fs;
use std::io::{BufRead, BufReader};
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, bail};
use clap::Parser as _;
use manta::engine::{Resources, parse_bytes};
use manta::scheduler::{HeadConfig, NodeConfig};

use super::StartArgs;

const READY: &str = "MANTA_READY";

fn run_dir() -> PathBuf {
    std::env::var_os("MANTA_RUN_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| std::env::temp_dir().join("manta-run"))
}

/// Runs the head or node in this process until SIGTERM.
pub fn run_foreground(args: StartArgs) -> Result<()> {
    super::validate(&args)?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(
            args.runtime_threads
                .map_or_else(manta::scheduler::io_threads::io_threads, usize::from),
        )
        .enable_all()
        .build()?;
    let daemon_child = args.daemon_child;
    let announce = move |address: &str| {
        println!("{READY} {address}");
        if daemon_child {
            redirect_stdout_to_null();
        }
    };
    let token = super::token(args.token.as_deref())?;
    let tls = match (&args.tls_cert, &args.tls_key) {
        (Some(cert), Some(key)) => Some(
            manta::flight::tls::ServerIdentity::from_files(cert, key)
                .context("--tls-cert / --tls-key")?,
        ),
        _ => None,
    };
    let bind_host = args
        .bind_address
        .clone()
        .unwrap_or_else(|| args.host.clone());
    if args.head {
        let token = token.unwrap_or_else(manta::Token::generate);
        let flight_sql = args
            .flight_sql_port
            .map(|port| (port, args.clone(), token.clone(), tls.clone()));
        // The head is also a node (as Ray's is) unless it offers no CPUs: once the head
        // listens, a node daemon in this process joins it, and the head says it is ready only
        // when its node is, so that work handed to a just-started head finds a node.
        let own_node = match args.num_cpus {
            Some(0.0) => None,
            _ => Some(node_config(
                &args,
                String::new(),
                Some(token.clone()),
                tls.clone(),
            )?),
        };
        // The dashboard is on by default, but not on TLS (it does not serve TLS yet) unless
        // asked for, which then fails saying so.
        let dashboard_port = match (args.no_dashboard, args.dashboard_port, &tls) {
            (true, _, _) => None,
            (false, Some(port), _) => Some(port),
            (false, None, None) => Some(manta::scheduler::dashboard::DEFAULT_PORT),
            (false, None, Some(_)) => None,
        };
        let config = HeadConfig {
            token,
            tls,
            forget_dead_nodes_after: Duration::from_secs(args.forget_dead_nodes_after),
            pending_timeout: Duration::from_secs(args.pending_timeout),
            autoscaler: match &args.autoscaler {
                Some(path) => Some(
                    manta::scheduler::autoscaler::ClusterFile::read(path, &run_dir().join("logs"))?
                        .autoscaler,
                ),
                None => None,
            },
            advertise_host: Some(args.host.clone()),
            dashboard_port,
            task_events: !args.no_task_events,
            ..HeadConfig::default()
        };
        let host = args.host.clone();
        let serves_tls = config.tls.is_some();
        let ready = move |address: String| match flight_sql {
            // Ready once the Flight SQL endpoint listens too.
            Some((port, args, token, tls)) => {
                serve_flight_sql(address, port, args, token, tls, announce)
            }
            None => announce(&address),
        };
        let (listening, head_address) = tokio::sync::oneshot::channel::<String>();
        let head = manta::scheduler::run_head(&bind_host, args.port, config, move |bound| {
            // The advertised host with the bound port, as an https:// URL when serving TLS.
            let address =
                std::net::SocketAddr::new(host.parse().unwrap_or(bound.ip()), bound.port());
            let address = match serves_tls {
                true => format!("https://{address}"),
                false => address.to_string(),
            };
            let _ = listening.send(address);
        });
        let after_head = async move {
            // No address: the head did not start (its error is the one returned).
            let Ok(address) = head_address.await else {
                return Ok(());
            };
            match own_node {
                Some(mut node) => {
                    node.head_address = address.clone();
                    manta::scheduler::run_node(node, move |_| ready(address)).await
                }
                None => {
                    ready(address);
                    Ok(())
                }
            }
        };
        // Either failing (the head cannot bind, its node cannot start) ends the process.
        runtime.block_on(async { tokio::try_join!(head, after_head) })?;
        // The Flight SQL endpoint's token file goes with the head.
        drop(
            FLIGHT_SQL_TOKEN_FILE
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .take(),
        );
    } else {
        let head = args.address.clone().expect("validated");
        let mut config = node_config(&args, head, token, tls)?;
        config.port = args.port;
        runtime.block_on(manta::scheduler::run_node(config, |a| announce(a)))?;
    }
    Ok(())
}

/// A node daemon's configuration from `manta start` arguments (any free port).
fn node_config(
    args: &StartArgs,
    head: String,
    token: Option<manta::Token>,
    tls: Option<manta::flight::tls::ServerIdentity>,
) -> Result<NodeConfig> {
    let mut config = NodeConfig::new(head);
    config.token = token;
    config.host = args.host.clone();
    config.bind_host = args.bind_address.clone();
    config.tls = tls;
    config.tls_ca = args.ca.tls_ca.clone();
    config.join_timeout = Duration::from_secs(args.join_timeout);
    config.name = args.node_name.clone();
    config.metrics_port = args.metrics_port;
    if let Some(cpus) = args.num_cpus {
        config.num_cpus = cpus;
    }
    config.object_store_memory = parse_bytes(&args.object_store_memory)?;
    config.custom_resources = Resources::parse_custom(&args.resources)?;
    if let Some(dir) = &args.spill_dir {
        config.spill_parent = dir.clone();
    }
    Ok(config)
}

/// The token file of the head's Flight SQL endpoint, removed when the head stops.
static FLIGHT_SQL_TOKEN_FILE: std::sync::Mutex<Option<manta::scheduler::cluster_token::TokenFile>> =
    std::sync::Mutex::new(None);

/// Serves Flight SQL from a driver of the head at `head`, on a thread of its own: the driver
/// joins the head, which starts serving only once this returns. The endpoint takes the
/// cluster's `token`, whose token file it writes for its own port too (so that `manta sql
/// --flight-sql` on this machine finds it). `announce` runs when the endpoint listens; if it
/// cannot start, the process exits with the reason.
fn serve_flight_sql(
    head: String,
    port: u16,
    args: StartArgs,
    token: manta::Token,
    tls: Option<manta::flight::tls::ServerIdentity>,
    announce: impl FnOnce(&str) + Send + 'static,
) {
    std::thread::spawn(move || {
        type Started = (
            manta::Context,
            manta::datasets::FlightSqlServer,
            manta::scheduler::cluster_token::TokenFile,
        );
        let started = (|| -> Result<Started> {
            let ctx = manta::init_with(manta::Config {
                address: Some(head.clone()),
                token: Some(token.clone()),
                ..manta::Config::from_env()?
            })?;
            for table in &args.tables {
                let (name, path) = super::sql::parse_table(table)?;
                super::sql::register(&ctx, name, path)
                    .with_context(|| format!("table {name} at {path}"))?;
            }
            let options = manta::datasets::FlightSqlOptions {
                access: writable_locations(&args.sql_writable)?,
                tls,
            };
            let bind_host = args.bind_address.as_deref().unwrap_or(&args.host);
            let server = ctx.serve_flight_sql_with(&format!("{bind_host}:{port}"), options)?;
            let file =
                manta::scheduler::cluster_token::TokenFile::write(server.address().port(), &token)?;
            Ok((ctx, server, file))
        })();
        match started {
            Ok((_ctx, server, file)) => {
                *FLIGHT_SQL_TOKEN_FILE
                    .lock()
                    .unwrap_or_else(|e| e.into_inner()) = Some(file);
                eprintln!("Flight SQL clients: {}", server.address());
                announce(&format!("{head} flight-sql={}", server.address()));
                // Serve for as long as the head runs: the process ends when the head's
                // server stops (within its drain deadline, though this driver's connections
                // stay open).
                loop {
                    std::thread::park();
                }
            }
            Err(e) => {
                eprintln!("the Flight SQL endpoint did not start: {e:#}");
                std::process::exit(1);
            }
        }
    });
}

/// `--sql-writable` locations: local directories made absolute (they must exist), URLs as
/// given.
fn writable_locations(locations: &[String]) -> Result<manta::datasets::SqlAccess> {
    let absolute = locations
        .iter()
        .map(|location| {
            if location.contains("://") {
                return Ok(location.clone());
            }
            let path =
                fs::canonicalize(location).with_context(|| format!("--sql-writable {location}"))?;
            Ok(path.display().to_string())
        })
        .collect::<Result<Vec<_>>>()?;
    Ok(manta::datasets::SqlAccess::writable_under(absolute))
}

fn redirect_stdout_to_null() {
    use std::io::Write;
    let _ = std::io::stdout().flush();
    if let Ok(null) = fs::OpenOptions::new().write(true).open("/dev/null") {
        use std::os::fd::AsRawFd;
        // SAFETY: dup2 onto stdout's descriptor; nothing else holds a raw copy of it.
        unsafe { libc::dup2(null.as_raw_fd(), 1) };
    }
}

/// Starts the head or node in the background and waits until it is ready: runs `manta
/// ARGV --block --daemon-child` (ARGV being `start ...`).
pub fn start_background(args: StartArgs, argv: Vec<std::ffi::OsString>) -> Result<()> {
    super::validate(&args)?;
    let kind = if args.head { "head" } else { "node" };
    let dir = run_dir();
    fs::create_dir_all(dir.join("logs")).with_context(|| format!("creating {}", dir.display()))?;
    let log_path = dir.join("logs").join(format!(
        "{kind}-{}.log",
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)?
            .as_millis()
    ));
    let log =
        fs::File::create(&log_path).with_context(|| format!("creating {}", log_path.display()))?;
    let mut command = Command::new(std::env::current_exe()?);
    command.args(argv).arg("--block").arg("--daemon-child");
    command
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(log);
    // SAFETY: setsid is async-signal-safe; it detaches the child from the terminal's session.
    unsafe {
        command.pre_exec(|| {
            libc::setsid();
            Ok(())
        });
    }
    let mut child = command.spawn().context("starting the background process")?;
    let stdout = child.stdout.take().expect("piped");
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut line = String::new();
        let _ = BufReader::new(stdout).read_line(&mut line);
        let _ = tx.send(line);
    });
    let line = rx.recv_timeout(Duration::from_secs(60)).unwrap_or_default();
    // `MANTA_READY <address> [flight-sql=<address>]`
    let mut ready = line
        .trim()
        .strip_prefix(READY)
        .map(|rest| rest.split_whitespace())
        .into_iter()
        .flatten();
    let Some(address) = ready.next() else {
        let _ = child.kill();
        let log = fs::read_to_string(&log_path).unwrap_or_default();
        bail!("the {kind} did not start:\n{}", log.trim());
    };
    let flight_sql = ready.find_map(|part| part.strip_prefix("flight-sql="));
    let pid = child.id();
    // `<kind> <address>`, and for a node with its own spill directory `spill <dir>`, which
    // `manta stop` sweeps for the sessions of nodes that died.
    let mut record = format!("{kind} {address}\n");
    if let Some(config) = args
        .autoscaler
        .as_ref()
        .and_then(|c| fs::canonicalize(c).ok())
    {
        record.push_str(&format!("config {}\n", config.display()));
    }
    if let Some(spill) = args
        .spill_dir
        .as_ref()
        .and_then(|d| std::path::absolute(d).ok())
    {
        record.push_str(&format!("spill {}\n", spill.display()));
    }
    fs::write(dir.join(pid.to_string()), record)?;
    println!(
        "Started the {kind} at {address} (pid {pid}; log {}).",
        log_path.display()
    );
    if let Some(flight_sql) = flight_sql {
        println!("Flight SQL clients connect to {flight_sql}.");
    }
    if args.head {
        println!("Join it with:  manta start --address {address}");
        println!("Run a driver:  MANTA_ADDRESS={address} cargo run --release --example quickstart");
    }
    Ok(())
}

/// Records of processes started here: (pid, kind, address).
fn started() -> Vec<(i32, String, String)> {
    let mut processes: Vec<_> = records()
        .into_iter()
        .filter_map(|(pid, text)| {
            let (kind, address) = text.lines().next()?.trim().split_once(' ')?;
            Some((pid, kind.to_string(), address.to_string()))
        })
        .collect();
    processes.sort_by_key(|(pid, kind, _)| (kind == "head", *pid));
    processes
}

/// The spill directories nodes started here were given (`--spill-dir`).
fn spill_dirs() -> Vec<PathBuf> {
    let mut dirs: Vec<PathBuf> = records()
        .iter()
        .flat_map(|(_, text)| text.lines().filter_map(|l| l.strip_prefix("spill ")))
        .map(PathBuf::from)
        .collect();
    dirs.sort();
    dirs.dedup();
    dirs
}

/// Each record file of the run directory: (pid, its text).
fn records() -> Vec<(i32, String)> {
    let Ok(entries) = fs::read_dir(run_dir()) else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter_map(|entry| {
            let pid = entry.file_name().to_str()?.parse().ok()?;
            Some((pid, fs::read_to_string(entry.path()).ok()?))
        })
        .collect()
}

/// The address of a live head started on this machine.
pub fn local_head_address() -> Result<Option<String>> {
    Ok(started()
        .into_iter()
        .find(|(pid, kind, _)| kind == "head" && manta::engine::store::process_alive(*pid))
        .map(|(_, _, address)| address))
}

/// Stops a process `manta start` started (SIGTERM, then SIGKILL after `grace`) and removes
/// its record.
fn stop_process(pid: i32, kind: &str, address: &str, grace: Duration) {
    if manta::engine::store::process_alive(pid) {
        // SAFETY: kill(2) of a process this command line started.
        unsafe { libc::kill(pid, libc::SIGTERM) };
        let deadline = Instant::now() + grace;
        while manta::engine::store::process_alive(pid) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
        if manta::engine::store::process_alive(pid) {
            // SAFETY: as above.
            unsafe { libc::kill(pid, libc::SIGKILL) };
        }
        println!("Stopped the {kind} at {address} (pid {pid}).");
    }
    let _ = fs::remove_file(run_dir().join(pid.to_string()));
}

/// `manta up CONFIG`: a head started in the background with the config's `[head]` settings
/// and its autoscaler.
pub fn up(config: &std::path::Path) -> Result<()> {
    let file = manta::scheduler::autoscaler::ClusterFile::read(config, &run_dir().join("logs"))?;
    if let Some(address) = head_of_config(config)? {
        bail!(
            "{} is already up: its head is at {address}",
            config.display()
        );
    }
    let head = file.head;
    let mut argv: Vec<String> = vec![
        "start".into(),
        "--head".into(),
        "--port".into(),
        head.port.to_string(),
        "--autoscaler".into(),
        config.display().to_string(),
    ];
    if let Some(host) = head.host {
        argv.extend(["--node-ip-address".into(), host]);
    }
    if let Some(cpus) = head.num_cpus {
        argv.extend(["--num-cpus".into(), cpus.to_string()]);
    }
    if let Some(memory) = head.object_store_memory {
        argv.extend(["--object-store-memory".into(), memory]);
    }
    if let Some(seconds) = head.pending_timeout_s {
        argv.extend(["--pending-timeout".into(), seconds.to_string()]);
    }
    let args = match super::Cli::try_parse_from(
        std::iter::once("manta".to_string()).chain(argv.clone()),
    ) {
        Ok(super::Cli {
            command: super::Command::Start(args),
        }) => *args,
        Ok(_) => unreachable!("argv starts with `start`"),
        Err(e) => bail!("{}: {e}", config.display()),
    };
    start_background(args, argv.into_iter().map(Into::into).collect())
}

/// The head `manta up CONFIG` started here and that still runs: its address.
fn head_of_config(config: &std::path::Path) -> Result<Option<String>> {
    Ok(up_heads(config)?
        .into_iter()
        .next()
        .map(|(_, address)| address))
}

/// Live heads started here with the autoscaler config at `config`: (pid, address).
fn up_heads(config: &std::path::Path) -> Result<Vec<(i32, String)>> {
    let config = fs::canonicalize(config).with_context(|| config.display().to_string())?;
    let wanted = format!("config {}", config.display());
    Ok(records()
        .into_iter()
        .filter(|(pid, text)| {
            text.lines().any(|l| l == wanted) && manta::engine::store::process_alive(*pid)
        })
        .filter_map(|(pid, text)| {
            let address = text.lines().next()?.strip_prefix("head ")?.to_string();
            Some((pid, address))
        })
        .collect())
}

/// `manta down CONFIG`: stops the head `manta up CONFIG` started; it stops the nodes its
/// autoscaler launched before it exits.
pub fn down(config: &std::path::Path) -> Result<()> {
    let heads = up_heads(config)?;
    if heads.is_empty() {
        println!("{} is not up here.", config.display());
    }
    for (pid, address) in heads {
        // Time for the autoscaler to stop its nodes (each has 15 s) before the head is killed.
        stop_process(pid, "head", &address, Duration::from_secs(90));
    }
    manta::engine::store::remove_stale_sessions(&manta::engine::store::default_shared_parent());
    manta::engine::store::remove_stale_sessions(&manta::engine::store::default_spill_parent());
    Ok(())
}

/// Stops every process `manta start` started here: nodes first, then heads; then removes the
/// object-store sessions of nodes that are gone (a node killed with SIGKILL leaves its
/// `/dev/shm` session behind).
pub fn stop_all() -> Result<()> {
    let processes = started();
    let spill_dirs = spill_dirs();
    if processes.is_empty() {
        println!("Nothing to stop.");
    }
    for (pid, kind, address) in processes {
        stop_process(pid, &kind, &address, Duration::from_secs(15));
    }
    // What nodes that died without cleaning up (SIGKILL, a crash) left in shared memory and in
    // the default spill directory: sessions whose process is gone.
    manta::engine::store::remove_stale_sessions(&manta::engine::store::default_shared_parent());
    manta::engine::store::remove_stale_sessions(&manta::engine::store::default_spill_parent());
    for dir in spill_dirs {
        manta::engine::store::remove_stale_sessions(&dir);
    }
    Ok(())
}
