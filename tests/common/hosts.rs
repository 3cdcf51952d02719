//! Separate hosts on one machine, for tests of what crosses a network.
//!
//! Each host is a network namespace with one address on a private bridge, and a mount
//! namespace with its own tmpfs on `/dev/shm` and `/tmp` (and `HOME=/tmp/home`): processes on
//! different hosts share no shared memory, no temporary files, no token files and no loopback.
//! The bridge lives in a namespace of its own ("the switch"), so no traffic reaches the
//! machine's own interfaces, and cutting a host's cable is taking its switch port down.
//!
//! An anchor process (`sleep`) holds each host's namespaces; every process of the host enters
//! them with nsenter(1), so a node daemon and the worker processes it starts see one `/dev/shm`.
//! Every process is killed if the test process dies (`PR_SET_PDEATHSIG`), and the namespaces
//! are deleted when the [`Network`] is dropped. Needs root, ip(8) from iproute2, unshare(1) and
//! nsenter(1): [`Network::unavailable`] says what is missing, so a test can skip saying why.

use std::io::{BufRead, BufReader};
use std::os::fd::AsRawFd;
use std::os::unix::process::CommandExt;
use std::process::{Child, Command, Stdio};

/// A bridge and hosts plugged into it, each in namespaces of its own.
pub struct Network {
    /// Prefix of every namespace name of this network (unique per test process).
    prefix: String,
    hosts: Vec<Host>,
}

/// One host: its address and the anchor process holding its namespaces.
pub struct Host {
    pub name: String,
    /// Its address on the bridge.
    pub ip: String,
    netns: String,
    /// Its port on the switch (a veth in the switch namespace).
    port: String,
    anchor: Child,
}

/// The subnet of every network: namespaces keep networks of different test runs apart.
const SUBNET: &str = "10.87.0";

impl Network {
    /// Why hosts cannot be made here, if they cannot.
    pub fn unavailable() -> Option<String> {
        // SAFETY: geteuid(2) has no preconditions.
        if unsafe { libc::geteuid() } != 0 {
            return Some("not root (network and mount namespaces need root)".into());
        }
        for (tool, arg) in [
            ("ip", "-V"),
            ("unshare", "--version"),
            ("nsenter", "--version"),
        ] {
            let runs = Command::new(tool)
                .arg(arg)
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .is_ok_and(|s| s.success());
            if !runs {
                return Some(format!("{tool} is not installed (iproute2, util-linux)"));
            }
        }
        let probe = format!("mtprobe{}", std::process::id());
        if !ip(&["netns", "add", &probe]) {
            return Some("`ip netns add` is not permitted here".into());
        }
        ip(&["netns", "del", &probe]);
        None
    }

    /// Hosts named `names`, at `10.87.0.2`, `10.87.0.3`, ... in that order.
    pub fn new(names: &[&str]) -> Network {
        let prefix = format!("mt{}", std::process::id());
        let mut network = Network {
            prefix,
            hosts: Vec::new(),
        };
        let switch = network.switch();
        must(&["netns", "add", &switch]);
        must(&["-n", &switch, "link", "add", "br0", "type", "bridge"]);
        must(&["-n", &switch, "link", "set", "br0", "up"]);
        for (i, name) in names.iter().enumerate() {
            let netns = format!("{}-{name}", network.prefix);
            let port = format!("p{i}");
            let ip_address = format!("{SUBNET}.{}", i + 2);
            must(&["netns", "add", &netns]);
            must(&[
                "-n", &switch, "link", "add", &port, "type", "veth", "peer", "name", "eth0",
                "netns", &netns,
            ]);
            must(&["-n", &switch, "link", "set", &port, "master", "br0", "up"]);
            must(&[
                "-n",
                &netns,
                "addr",
                "add",
                &format!("{ip_address}/24"),
                "dev",
                "eth0",
            ]);
            must(&["-n", &netns, "link", "set", "eth0", "up"]);
            must(&["-n", &netns, "link", "set", "lo", "up"]);
            let anchor = start_anchor(&netns);
            network.hosts.push(Host {
                name: name.to_string(),
                ip: ip_address,
                netns,
                port,
                anchor,
            });
        }
        network
    }

    fn switch(&self) -> String {
        format!("{}-switch", self.prefix)
    }

    /// The host named `name`.
    pub fn host(&self, name: &str) -> &Host {
        self.hosts
            .iter()
            .find(|h| h.name == name)
            .unwrap_or_else(|| panic!("no host {name}"))
    }

    /// Unplugs `host`'s cable: nothing reaches it or leaves it until [`Network::plug`].
    pub fn unplug(&self, host: &str) {
        must(&[
            "-n",
            &self.switch(),
            "link",
            "set",
            &self.host(host).port,
            "down",
        ]);
    }

    /// Plugs `host`'s cable back in.
    pub fn plug(&self, host: &str) {
        must(&[
            "-n",
            &self.switch(),
            "link",
            "set",
            &self.host(host).port,
            "up",
        ]);
    }
}

impl Drop for Network {
    fn drop(&mut self) {
        for host in &mut self.hosts {
            let _ = host.anchor.kill();
            let _ = host.anchor.wait();
            ip(&["netns", "del", &host.netns]);
        }
        ip(&["netns", "del", &self.switch()]);
    }
}

impl Host {
    /// A command that runs `program` on this host (in its namespaces, with `HOME=/tmp/home`),
    /// killed if the test process dies.
    pub fn command(&self, program: &str) -> Command {
        let mut command = Command::new("nsenter");
        command
            .args([
                "-t",
                &self.anchor.id().to_string(),
                "-m",
                "-n",
                "--",
                program,
            ])
            .current_dir("/")
            .env("HOME", "/tmp/home");
        die_with_parent(&mut command);
        command
    }

    /// Runs `f` on a thread inside this host's network namespace (its sockets are the host's).
    pub fn in_network<T: Send>(&self, f: impl FnOnce() -> T + Send) -> T {
        let netns = std::fs::File::open(format!("/var/run/netns/{}", self.netns))
            .expect("open the host's network namespace");
        std::thread::scope(|scope| {
            scope
                .spawn(|| {
                    // SAFETY: setns(2) on a valid namespace fd; it moves only this thread.
                    let entered = unsafe { libc::setns(netns.as_raw_fd(), libc::CLONE_NEWNET) };
                    assert_eq!(entered, 0, "setns: {}", std::io::Error::last_os_error());
                    f()
                })
                .join()
                .expect("the host thread panicked")
        })
    }

    /// Runs `script` with sh on this host and returns its standard output.
    pub fn shell(&self, script: &str) -> String {
        let out = self
            .command("sh")
            .args(["-c", script])
            .output()
            .expect("run sh on the host");
        assert!(
            out.status.success(),
            "{script:?} on {} failed: {}",
            self.name,
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    }
}

/// Starts the process holding a host's namespaces: it enters the network namespace, makes a
/// mount namespace with private tmpfs on /dev/shm and /tmp, says "ready" and sleeps.
fn start_anchor(netns: &str) -> Child {
    let mut command = Command::new("ip");
    command.args([
        "netns",
        "exec",
        netns,
        "unshare",
        "--mount",
        "--propagation",
        "private",
        "--",
        "sh",
        "-c",
        "mount -t tmpfs manta-shm /dev/shm && mount -t tmpfs manta-tmp /tmp \
         && mkdir -m 700 /tmp/home && echo ready && exec sleep 100000",
    ]);
    command.stdout(Stdio::piped()).stdin(Stdio::null());
    die_with_parent(&mut command);
    let mut anchor = command.spawn().expect("start a host's anchor process");
    let mut line = String::new();
    BufReader::new(anchor.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    assert_eq!(line.trim(), "ready", "the host {netns} did not come up");
    anchor
}

/// Makes `command`'s process be killed when the test process dies.
fn die_with_parent(command: &mut Command) {
    // SAFETY: prctl(2) is async-signal-safe; nothing else runs between fork and exec.
    unsafe {
        command.pre_exec(|| {
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
            Ok(())
        });
    }
}

/// Runs `ip args`; whether it succeeded.
fn ip(args: &[&str]) -> bool {
    Command::new("ip")
        .args(args)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// Runs `ip args`, panicking with its error if it fails.
fn must(args: &[&str]) {
    let out = Command::new("ip").args(args).output().expect("run ip");
    assert!(
        out.status.success(),
        "ip {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
}
