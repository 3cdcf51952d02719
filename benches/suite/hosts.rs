//! `--hosts`: any cluster workload on separate hosts made on this machine, the harness of the
//! separate-hosts tests (`tests/common/hosts.rs`): a head, two nodes and the driver, each in a
//! network namespace of its own on a private bridge, with its own `/dev/shm` and `/tmp`.
//! Nothing crosses between them but TCP over the bridge: no shared memory, no loopback, no
//! token file, so every byte between stores goes through Flight over a real network stack.
//!
//! The head schedules nothing (`--num-cpus 0`), each node has one CPU and a store of
//! `--object-store-memory` (default 1 GiB), as on the loopback cluster of the other figures.
//! The driver is this bench again, on its host, with the same arguments plus `--address` and
//! `--data` (generated data lives outside `/tmp`, which every host replaces). Needs root and
//! iproute2.

use std::io::{BufRead, BufReader, Read};
use std::process::{Child, Stdio};

use anyhow::Context as _;

use crate::Args;

#[allow(dead_code)]
#[path = "../../tests/common/hosts.rs"]
mod network;

use network::{Host, Network};

/// The head's port on its host.
const HEAD_PORT: u16 = 6379;

/// Runs this bench's workload, with the arguments it was given, as the driver of a cluster on
/// separate hosts.
pub fn run(args: &Args) -> anyhow::Result<()> {
    if let Some(reason) = Network::unavailable() {
        anyhow::bail!("--hosts cannot make separate hosts here: {reason}");
    }
    let exe = std::env::current_exe()?;
    anyhow::ensure!(
        !exe.starts_with("/tmp"),
        "{} is under /tmp, which each host replaces with its own: build with CARGO_TARGET_DIR \
         outside /tmp",
        exe.display()
    );
    let data = std::path::absolute(args.data_dir())?;
    anyhow::ensure!(
        !data.starts_with("/tmp"),
        "the data directory {} is under /tmp, which each host replaces: pass --data",
        data.display()
    );
    let store = args.object_store_memory.as_deref().unwrap_or("1GiB");
    let network = Network::new(&["head", "n1", "n2", "driver"]);
    let token = random_token()?;

    let head_host = network.host("head");
    let port = HEAD_PORT.to_string();
    let (head, address) = start_manta(
        head_host,
        &token,
        &[
            "--head",
            "--port",
            &port,
            "--node-ip-address",
            &head_host.ip,
            "--num-cpus",
            "0",
        ],
    )?;
    let mut daemons = vec![Daemon(head)];
    for name in ["n1", "n2"] {
        let host = network.host(name);
        let (node, _) = start_manta(
            host,
            &token,
            &[
                "--address",
                &address,
                "--node-ip-address",
                &host.ip,
                "--num-cpus",
                "1",
                "--object-store-memory",
                store,
            ],
        )?;
        daemons.push(Daemon(node));
    }
    eprintln!("separate hosts: head {address}, nodes n1 and n2, driver on a host of its own");

    // This run's arguments but `--hosts` and `--data` (given again below, made absolute).
    let mut forwarded: Vec<String> = Vec::new();
    let mut given = std::env::args().skip(1);
    while let Some(arg) = given.next() {
        match arg.as_str() {
            "--hosts" | "--bench" => {}
            "--data" => {
                given.next();
            }
            _ if arg.starts_with("--data=") => {}
            _ => forwarded.push(arg),
        }
    }
    let status = network
        .host("driver")
        .command(exe.to_str().context("a UTF-8 executable path")?)
        .args(&forwarded)
        .arg("--data")
        .arg(&data)
        .args(["--address", &address])
        .env("MANTA_TOKEN", &token)
        .status()
        .context("start the driver on its host")?;
    drop(daemons);
    anyhow::ensure!(status.success(), "the driver on its host failed: {status}");
    Ok(())
}

/// A `manta start ... --block` daemon, stopped (SIGTERM, then waited for) when dropped.
struct Daemon(Child);

impl Drop for Daemon {
    fn drop(&mut self) {
        // SAFETY: kill(2) of our own child, not yet reaped.
        unsafe { libc::kill(self.0.id() as i32, libc::SIGTERM) };
        let _ = self.0.wait();
    }
}

/// Starts `manta start args --block` on `host` with the cluster token; the child and the
/// address from its ready line.
fn start_manta(host: &Host, token: &str, args: &[&str]) -> anyhow::Result<(Child, String)> {
    let mut child = host
        .command(env!("CARGO_BIN_EXE_manta"))
        .env("MANTA_TOKEN", token)
        .arg("start")
        .args(args)
        .arg("--block")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .spawn()
        .context("start manta on a host")?;
    let mut stdout = BufReader::new(child.stdout.take().expect("piped"));
    let mut line = String::new();
    stdout.read_line(&mut line)?;
    // Keep draining: worker processes inherit this pipe, and a full pipe would block them.
    std::thread::spawn(move || std::io::copy(&mut stdout, &mut std::io::sink()));
    let address = line
        .trim()
        .strip_prefix("MANTA_READY ")
        .and_then(|rest| rest.split_whitespace().next())
        .with_context(|| format!("manta start {args:?} did not get ready: {line:?}"))?
        .to_string();
    Ok((child, address))
}

/// 256 random bits, hex: the cluster token every process of the run presents.
fn random_token() -> anyhow::Result<String> {
    let mut bytes = [0u8; 32];
    std::fs::File::open("/dev/urandom")?.read_exact(&mut bytes)?;
    Ok(bytes.iter().map(|b| format!("{b:02x}")).collect())
}
