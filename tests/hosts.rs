//! A cluster on separate hosts: an S3-compatible server, a head, two nodes and a driver, each
//! on a host of its own (a network namespace on a private bridge, a mount namespace with its
//! own /dev/shm and /tmp; see `common::hosts`). Nothing is shared but the network, the
//! program files and one directory the test makes for the run that needs a shared filesystem.
//!
//! Input and output go through a real S3 server (moto's server mode, a separate process on its
//! own host) by `s3://` URLs, so object_store's S3 path is tested end to end. The driver is
//! this test binary again, started on the driver host in a role (`MANTA_TEST_HOSTS_ROLE`): it
//! computes every answer once embedded and once on the cluster, and the two must be equal.
//!
//! Needs root, iproute2 and Python's `moto[server]`: elsewhere it skips, saying why, unless
//! `MANTA_REQUIRE_HOSTS` is set (as `.ci/run` does), when a missing piece fails it.
//!
//! `harness = false`: worker processes are this very executable, so `main` must first let a
//! worker become one (`manta::run_worker_if_requested`).

mod common;

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use common::hosts::{Host, Network};
use common::{Process, children_of};

/// The env variable that makes this binary a driver in a role (see [`driver`]).
const ROLE: &str = "MANTA_TEST_HOSTS_ROLE";
/// The env variable naming the lineitem directory in the shared directory, for drivers.
const SHARED: &str = "MANTA_TEST_HOSTS_SHARED";
/// The env variables carrying TPC-H queries to drivers (`MANTA_TEST_HOSTS_Q1`, ...).
const QUERY: &str = "MANTA_TEST_HOSTS_Q";
/// The S3 server's port on its host.
const S3_PORT: u16 = 9000;
/// The bucket every run reads and writes.
const BUCKET: &str = "manta";
/// The head's port on its host.
const HEAD_PORT: u16 = 6379;

fn main() {
    manta::run_worker_if_requested();
    if let Ok(role) = std::env::var(ROLE) {
        driver::run(&role);
        return;
    }
    let python = match Network::unavailable().map_or_else(moto_python, Err) {
        Ok(python) => python,
        Err(reason) => {
            assert!(
                std::env::var_os("MANTA_REQUIRE_HOSTS").is_none(),
                "the separate-hosts tests cannot run: {reason}"
            );
            println!("separate-hosts tests skipped: {reason}");
            return;
        }
    };
    // Every host mounts its own /tmp: the programs they run must live elsewhere.
    for program in [
        std::env::current_exe().unwrap(),
        env!("CARGO_BIN_EXE_manta").into(),
    ] {
        assert!(
            !program.starts_with("/tmp"),
            "{} is under /tmp, which each separate host replaces with its own: build with \
             CARGO_TARGET_DIR outside /tmp (as .ci/run does)",
            program.display()
        );
    }
    let cluster = Hosts::start(&python);
    type Test = common::Test<Hosts>;
    let tests: &[Test] = &[
        (
            "every_answer_on_separate_hosts_is_the_embedded_one",
            every_answer_on_separate_hosts_is_the_embedded_one,
        ),
        (
            "a_local_path_write_on_separate_hosts_fails_naming_object_stores",
            a_local_path_write_on_separate_hosts_fails_naming_object_stores,
        ),
        (
            "a_node_killed_mid_pipeline_on_separate_hosts_changes_nothing",
            a_node_killed_mid_pipeline_on_separate_hosts_changes_nothing,
        ),
        (
            "chaos_changes_no_answer_and_leaves_nothing_behind",
            chaos_changes_no_answer_and_leaves_nothing_behind,
        ),
    ];
    common::run_tests("separate-hosts", tests, cluster);
}

/// The Python that has moto's server, or why there is none.
fn moto_python() -> Result<String, String> {
    // The real interpreter, not a pyenv shim (shims look in $HOME, which hosts do not share).
    let out = Command::new("python3")
        .args(["-c", "import sys, moto.server; print(sys.executable)"])
        .output()
        .map_err(|e| format!("python3 cannot run: {e}"))?;
    if !out.status.success() {
        return Err("Python's moto[server] is not installed (pip install 'moto[server]')".into());
    }
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
}

/// The hosts and what runs on them.
struct Hosts {
    // Fields drop in order: nodes, head, the S3 server, then the network.
    /// The node daemons on hosts "n1" and "n2".
    nodes: Mutex<BTreeMap<&'static str, Process>>,
    head: Process,
    s3: Child,
    /// The directory every host sees (held to be removed at the end).
    _shared: tempfile::TempDir,
    /// `lineitem` in it.
    input: PathBuf,
    /// Environment every host's processes get: the token, the S3 endpoint and credentials.
    env: Vec<(String, String)>,
    network: Network,
}

impl Hosts {
    /// Makes the hosts; starts the S3 server, the head and the nodes; puts `lineitem` into
    /// the bucket and into the shared directory.
    fn start(python: &str) -> Hosts {
        let network = Network::new(&["s3", "head", "n1", "n2", "driver"]);
        let s3_host = network.host("s3");
        let s3 = s3_host
            .command(python)
            .args([
                "-m",
                "moto.server",
                "-H",
                "0.0.0.0",
                "-p",
                &S3_PORT.to_string(),
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start moto's S3 server");
        let s3_address = format!("{}:{S3_PORT}", s3_host.ip);
        network
            .host("driver")
            .in_network(|| create_bucket(&s3_address));

        let token = hex_token();
        let env: Vec<(String, String)> = [
            ("MANTA_TOKEN", token.as_str()),
            ("AWS_ENDPOINT", &format!("http://{s3_address}")),
            ("AWS_ALLOW_HTTP", "true"),
            ("AWS_ACCESS_KEY_ID", "test"),
            ("AWS_SECRET_ACCESS_KEY", "test"),
            ("AWS_REGION", "us-east-1"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();

        let shared = tempfile::Builder::new()
            .prefix("manta-hosts-")
            .tempdir_in("/var/tmp")
            .unwrap();
        let input = common::small_lineitem(shared.path());
        let head_host = network.host("head");
        let head = Process::start_from(
            manta_on(head_host, &env),
            &[
                "--head",
                "--port",
                &HEAD_PORT.to_string(),
                "--node-ip-address",
                &head_host.ip,
                // A head that schedules nothing: the nodes are on hosts of their own.
                "--num-cpus",
                "0",
            ],
        );
        let hosts = Hosts {
            head,
            nodes: Mutex::default(),
            s3,
            input,
            _shared: shared,
            env,
            network,
        };
        for name in ["n1", "n2"] {
            hosts.start_node(name);
        }
        // The input: lineitem in the shared directory, and copied from there to the bucket.
        let out = hosts.driver("setup", "embedded", &[]);
        assert!(out.contains("uploaded"), "setup: {out}");
        hosts
    }

    /// Starts (or restarts) the node daemon on host `name`.
    fn start_node(&self, name: &'static str) {
        let host = self.network.host(name);
        let node = Process::start_from(
            manta_on(host, &self.env),
            &[
                "--address",
                &self.head.address,
                "--node-ip-address",
                &host.ip,
                "--num-cpus",
                "2",
                "--object-store-memory",
                "1GiB",
            ],
        );
        self.nodes.lock().unwrap().insert(name, node);
    }

    /// Kills the node daemon on host `name` (SIGKILL: it cleans up nothing).
    fn kill_node(&self, name: &str) {
        let mut node = self
            .nodes
            .lock()
            .unwrap()
            .remove(name)
            .expect("a node there");
        node.child.kill().unwrap();
        node.child.wait().unwrap();
    }

    /// The pid of the node daemon on host `name`.
    fn node_pid(&self, name: &str) -> u32 {
        self.nodes.lock().unwrap()[name].pid()
    }

    /// The driver host's command for this binary in `role`, `mode` "embedded" or "cluster".
    fn driver_command(&self, role: &str, mode: &str, args: &[&str]) -> Command {
        let exe = std::env::current_exe().unwrap();
        let mut command = self.network.host("driver").command(exe.to_str().unwrap());
        command
            .args(args)
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .env(ROLE, role)
            .env(SHARED, &self.input);
        for n in [1, 6] {
            command.env(format!("{QUERY}{n}"), common::tpch::query(n));
        }
        if mode == "cluster" {
            command.env("MANTA_ADDRESS", &self.head.address);
        }
        command
    }

    /// Runs the driver in `role` to the end; its standard output (it must succeed).
    fn driver(&self, role: &str, mode: &str, args: &[&str]) -> String {
        let out = self
            .driver_command(role, mode, args)
            .stderr(Stdio::inherit())
            .output()
            .expect("run the driver");
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        assert!(
            out.status.success(),
            "the {mode} driver in role {role} failed: {stdout}"
        );
        stdout
    }
}

impl Drop for Hosts {
    fn drop(&mut self) {
        let _ = self.s3.kill();
        let _ = self.s3.wait();
    }
}

/// `manta` on `host`, with `env`.
fn manta_on(host: &Host, env: &[(String, String)]) -> Command {
    let mut command = host.command(env!("CARGO_BIN_EXE_manta"));
    command.envs(env.iter().map(|(k, v)| (k, v)));
    command
}

/// 64 random hex digits.
fn hex_token() -> String {
    let mut bytes = [0u8; 32];
    std::fs::File::open("/dev/urandom")
        .unwrap()
        .read_exact(&mut bytes)
        .unwrap();
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Waits for the S3 server at `address` and creates the bucket (a plain `PUT /bucket`).
fn create_bucket(address: &str) {
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut stream = loop {
        match TcpStream::connect_timeout(&address.parse().unwrap(), Duration::from_secs(1)) {
            Ok(stream) => break stream,
            Err(e) => {
                assert!(
                    Instant::now() < deadline,
                    "the S3 server never listened: {e}"
                );
                std::thread::sleep(Duration::from_millis(100));
            }
        }
    };
    stream
        .set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    write!(
        stream,
        "PUT /{BUCKET} HTTP/1.1\r\nHost: {address}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut status = String::new();
    BufReader::new(stream).read_line(&mut status).unwrap();
    assert!(status.contains(" 200 "), "creating the bucket: {status}");
}

/// The `ANSWER name value` lines of a driver's output.
fn answers(out: &str) -> BTreeMap<String, String> {
    out.lines()
        .filter_map(|line| line.strip_prefix("ANSWER "))
        .filter_map(|line| line.split_once(' '))
        .map(|(name, value)| (name.to_string(), value.to_string()))
        .collect()
}

/// The quickstart (S3 in and out, and the shared directory in and out), a shuffle+sort, a
/// join, SQL queries and an actor give the same answers on the cluster as embedded.
fn every_answer_on_separate_hosts_is_the_embedded_one(hosts: &Hosts) {
    let embedded = answers(&hosts.driver("answers", "embedded", &[]));
    let cluster = answers(&hosts.driver("answers", "cluster", &[]));
    for name in driver::ANSWERS {
        let ours = cluster.get(*name);
        assert!(ours.is_some(), "the cluster driver gave no answer {name}");
        assert_eq!(ours, embedded.get(*name), "{name}: cluster vs embedded");
    }
}

/// A write to a local path of the driver's host: the nodes cannot see it, so the write fails
/// at once saying so, and no part file is left on any host.
fn a_local_path_write_on_separate_hosts_fails_naming_object_stores(hosts: &Hosts) {
    let out = hosts.driver("local_write", "cluster", &[]);
    let refused = out
        .lines()
        .find_map(|l| l.strip_prefix("REFUSED "))
        .unwrap_or_else(|| panic!("the write was not refused: {out}"));
    assert!(
        refused.contains("object-store URL") && refused.contains("/tmp/out"),
        "{refused}"
    );
    for host in ["n1", "n2", "driver"] {
        let left = hosts
            .network
            .host(host)
            .shell("find /tmp -name '*manta-tmp*' -o -name 'part-*' -o -path /tmp/out");
        assert!(left.is_empty(), "left on {host}: {left}");
    }
}

/// A node killed (SIGKILL) once the quickstart's first batch reached the driver: the driver's
/// answer is the embedded one; the node, restarted, rejoins.
fn a_node_killed_mid_pipeline_on_separate_hosts_changes_nothing(hosts: &Hosts) {
    let embedded = answers(&hosts.driver("stream", "embedded", &[]));
    let mut driver = hosts
        .driver_command("stream", "cluster", &["--pause"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let mut stdout = BufReader::new(driver.stdout.take().unwrap());
    let mut line = String::new();
    stdout.read_line(&mut line).unwrap();
    assert_eq!(line.trim(), "FIRST", "the driver's first line");
    hosts.kill_node("n1");
    writeln!(driver.stdin.take().unwrap(), "go").unwrap();
    let mut rest = String::new();
    stdout.read_to_string(&mut rest).unwrap();
    assert!(
        driver.wait().unwrap().success(),
        "the driver failed: {rest}"
    );
    assert_eq!(answers(&rest), embedded);
    assert!(!embedded.is_empty());
    hosts.start_node("n1");
}

/// Seconds of chaos: `MANTA_CHAOS_SECONDS`, else 60.
fn chaos_seconds() -> u64 {
    std::env::var("MANTA_CHAOS_SECONDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(60)
}

/// What the chaos thread does next.
#[derive(Clone, Copy, Debug)]
enum Blow {
    /// SIGKILL one worker process of a node.
    KillWorker,
    /// SIGKILL a node daemon, then start a new one on its host.
    KillNode,
    /// Unplug a node's cable for a few seconds.
    Partition,
}

/// A soak: drivers run pipelines, SQL and a task graph one after another on the cluster while
/// the chaos loop (on this thread) kills a random worker or node (restarting it) or unplugs a
/// node's cable every few seconds. Every answer is the embedded one. Then the nodes stop, and
/// after `manta stop` on each node's host (and the driver's) nothing is left there: no process
/// but the host's own anchor, no file in /dev/shm, no spill session.
fn chaos_changes_no_answer_and_leaves_nothing_behind(hosts: &Hosts) {
    let embedded = answers(&hosts.driver("chaos", "embedded", &[]));
    assert_eq!(embedded.len(), driver::CHAOS_ANSWERS.len(), "{embedded:?}");
    let seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64;
    println!("chaos seed {seed} for {} s", chaos_seconds());
    let mut random = Random(seed | 1);
    let stop = AtomicBool::new(false);
    let mut blows = Vec::new();
    let runs = std::thread::scope(|scope| {
        let runner = scope.spawn(|| {
            let mut runs = 0;
            while !stop.load(Ordering::Relaxed) {
                let out = hosts.driver("chaos", "cluster", &[]);
                assert_eq!(answers(&out), embedded, "run {runs} under chaos");
                runs += 1;
            }
            runs
        });
        let deadline = Instant::now() + Duration::from_secs(chaos_seconds());
        while Instant::now() < deadline && !runner.is_finished() {
            // Chaos is paced, not synchronised: a blow every 2 to 4 seconds.
            std::thread::sleep(Duration::from_millis(2000 + random.below(2000)));
            let node = ["n1", "n2"][random.below(2) as usize];
            let blow =
                [Blow::KillWorker, Blow::KillNode, Blow::Partition][random.below(3) as usize];
            blows.push(format!("{blow:?} {node}"));
            match blow {
                Blow::KillWorker => {
                    let workers = children_of(hosts.node_pid(node));
                    if let Some(&worker) =
                        workers.get(random.below(workers.len().max(1) as u64) as usize)
                    {
                        // SAFETY: kill(2) of a worker process of our node.
                        unsafe { libc::kill(worker as i32, libc::SIGKILL) };
                    }
                }
                Blow::KillNode => {
                    hosts.kill_node(node);
                    hosts.start_node(node);
                }
                Blow::Partition => {
                    hosts.network.unplug(node);
                    std::thread::sleep(Duration::from_millis(1000 + random.below(3000)));
                    hosts.network.plug(node);
                }
            }
        }
        stop.store(true, Ordering::Relaxed);
        runner.join()
    });
    let runs = runs.unwrap_or_else(|_| panic!("a run failed under chaos; blows: {blows:?}"));
    println!("{runs} runs under chaos, blows: {blows:?}");
    assert!(runs > 0, "no run finished");

    // Stop the nodes, then look for what is left on their hosts and the driver's.
    for name in ["n1", "n2", "driver"] {
        let node = hosts.nodes.lock().unwrap().remove(name);
        if let Some(mut node) = node {
            node.stop();
        }
        let host = hosts.network.host(name);
        let mut stop = manta_on(host, &hosts.env);
        let out = stop.arg("stop").output().unwrap();
        assert!(out.status.success(), "manta stop on {name}");
        let left = host.shell(
            "ls -A /dev/shm; ls -A /tmp/home/.cache/manta/spill 2>/dev/null; \
             for p in /proc/[0-9]*; do \
               [ \"$(readlink $p/ns/net)\" = \"$(readlink /proc/self/ns/net)\" ] && echo \"$p $(cat $p/comm)\"; \
             done; true",
        );
        let left: Vec<_> = left
            .lines()
            .filter(|line| {
                !["sleep", "sh", "ls", "cat", "readlink"]
                    .iter()
                    .any(|own| line.ends_with(own))
            })
            .collect();
        assert!(left.is_empty(), "left on {name}: {left:?}");
    }
}

/// xorshift64: the chaos thread's dice (the seed is printed, to replay a run).
struct Random(u64);

impl Random {
    /// A number in `0..n`.
    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % n
    }
}

/// What the driver does in each role, on the driver host.
mod driver {
    use super::*;
    use manta::prelude::*;
    use manta::{JoinKind, SortKey, WriteFormat, WriteMode};

    /// Every answer the `answers` role gives.
    pub const ANSWERS: &[&str] = &[
        "quickstart_s3",
        "quickstart_shared",
        "shuffle_sort",
        "join",
        "sql_q1",
        "sql_q6",
        "actor",
    ];

    /// Every answer the `chaos` role gives.
    pub const CHAOS_ANSWERS: &[&str] = &[
        "stream",
        "quickstart_s3",
        "shuffle_sort",
        "join",
        "sql_q6",
        "task_tree",
    ];

    /// The input in the bucket.
    fn lineitem_url() -> String {
        format!("s3://{BUCKET}/lineitem")
    }

    /// Counts, one call at a time.
    pub struct Counter {
        value: i64,
    }

    #[manta::actor]
    impl Counter {
        pub fn new(start: i64) -> Self {
            Counter { value: start }
        }

        pub fn add(&mut self, n: i64) -> i64 {
            self.value += n;
            self.value
        }
    }

    pub fn run(role: &str) {
        let ctx = manta::init_with(manta::Config {
            // Small data still takes the partitioned exchange path.
            small_exchange_bytes: Some(0),
            ..manta::Config::from_env().unwrap()
        })
        .expect("start the driver");
        let mode = if std::env::var_os("MANTA_ADDRESS").is_some() {
            "cluster"
        } else {
            "embedded"
        };
        // The lineitem directory in the shared directory.
        let input = PathBuf::from(std::env::var(SHARED).unwrap());
        let shared = input.parent().unwrap();
        match role {
            "setup" => {
                let written = ctx
                    .read_parquet_with(input.to_str().unwrap(), common::small_tasks())
                    .unwrap()
                    .write_with(lineitem_url(), WriteFormat::Parquet, WriteMode::Overwrite)
                    .unwrap();
                println!("uploaded {} rows in {} files", written.rows, written.files);
            }
            "answers" => {
                let s3_out = format!("s3://{BUCKET}/quickstart-{mode}");
                answer("quickstart_s3", quickstart(&ctx, &lineitem_url(), &s3_out));
                let local_in = &input;
                let local_out = shared.join(format!("quickstart-{mode}"));
                answer(
                    "quickstart_shared",
                    quickstart(
                        &ctx,
                        local_in.to_str().unwrap(),
                        local_out.to_str().unwrap(),
                    ),
                );
                answer("shuffle_sort", shuffle_sort(&ctx));
                answer("join", join(&ctx));
                let lineitem = read(&ctx);
                ctx.register("lineitem", &lineitem).unwrap();
                answer("sql_q1", sql(&ctx, &query(1)));
                answer("sql_q6", sql(&ctx, &query(6)));
                let counter = Counter::remote(&ctx, 10).unwrap();
                let sums: Vec<_> = (1..=20).map(|n| counter.add(n)).collect();
                answer("actor", format!("{:?}", ctx.get_all(&sums).unwrap()));
            }
            "local_write" => {
                let written = common::etl(
                    &ctx,
                    Path::new(&lineitem_url()),
                    common::small_tasks(),
                    Default::default(),
                )
                .write_with("/tmp/out", WriteFormat::Parquet, WriteMode::Error);
                match written {
                    Ok(w) => println!("WROTE {} files", w.files),
                    Err(e) => println!("REFUSED {}", manta::error_chain(&e)),
                }
            }
            "stream" => {
                let pause = std::env::args().any(|a| a == "--pause");
                answer("stream", stream(&ctx, pause));
            }
            "chaos" => {
                answer("stream", stream(&ctx, false));
                let s3_out = format!("s3://{BUCKET}/chaos-{mode}");
                answer("quickstart_s3", quickstart(&ctx, &lineitem_url(), &s3_out));
                answer("shuffle_sort", shuffle_sort(&ctx));
                answer("join", join(&ctx));
                ctx.register("lineitem", &read(&ctx)).unwrap();
                answer("sql_q6", sql(&ctx, &query(6)));
                // A task graph: leaves made by tasks (so a lost one can be made again), then a
                // tree of additions, each level taking the refs of the one below.
                let mut level: Vec<_> = (0..32i64).map(|i| add.remote(&ctx, i, i * i)).collect();
                while level.len() > 1 {
                    level = level
                        .chunks(2)
                        .map(|pair| add.remote(&ctx, &pair[0], &pair[1]))
                        .collect();
                }
                answer("task_tree", ctx.get(&level[0]).unwrap().to_string());
            }
            other => panic!("no driver role {other}"),
        }
    }

    /// Adds.
    #[manta::remote]
    fn add(a: i64, b: i64) -> i64 {
        a + b
    }

    /// The quickstart's rows streamed to the driver: rows and checksum. With `pause`, says
    /// "FIRST" after the first batch and waits for a line on stdin.
    fn stream(ctx: &manta::Context, pause: bool) -> String {
        let ds = common::etl(
            ctx,
            Path::new(&lineitem_url()),
            common::small_tasks(),
            Default::default(),
        );
        let mut checksum = manta::Checksum::default();
        for (i, batch) in ds.iter_batches().unwrap().enumerate() {
            checksum.update(&batch.unwrap()).unwrap();
            if i == 0 && pause {
                println!("FIRST");
                let mut go = String::new();
                std::io::stdin().read_line(&mut go).unwrap();
            }
        }
        format!("rows={} checksum={}", checksum.rows, checksum.hex())
    }

    /// TPC-H query `n`, as the test process read it (the checkout may be under /tmp, which
    /// the driver's host does not share).
    fn query(n: usize) -> String {
        std::env::var(format!("{QUERY}{n}")).expect("the query, from the test process")
    }

    fn answer(name: &str, value: String) {
        println!("ANSWER {name} {value}");
    }

    fn read(ctx: &manta::Context) -> manta::Dataset {
        ctx.read_parquet_with(&lineitem_url(), common::small_tasks())
            .unwrap()
    }

    /// The quickstart from `input` to `output`, its output read back: rows and checksum.
    fn quickstart(ctx: &manta::Context, input: &str, output: &str) -> String {
        let written = common::etl(
            ctx,
            Path::new(input),
            common::small_tasks(),
            Default::default(),
        )
        .write_with(output, WriteFormat::Parquet, WriteMode::Overwrite)
        .unwrap();
        let mut checksum = manta::Checksum::default();
        for batch in ctx.read_parquet(output).unwrap().iter_batches().unwrap() {
            checksum.update(&batch.unwrap()).unwrap();
        }
        assert_eq!(checksum.rows, written.rows);
        format!("rows={} checksum={}", checksum.rows, checksum.hex())
    }

    /// Shuffled, then sorted by a unique key: the rows in order.
    fn shuffle_sort(ctx: &manta::Context) -> String {
        let sorted = read(ctx)
            .select_columns(&["l_orderkey", "l_linenumber", "l_comment", "l_quantity"])
            .random_shuffle(Some(7))
            .sort_by(vec![
                SortKey::asc("l_orderkey"),
                SortKey::desc("l_linenumber"),
            ])
            .to_arrow()
            .unwrap();
        digest(common::rows(&sorted))
    }

    /// Each line item joined with its order's first line item's supplier.
    fn join(ctx: &manta::Context) -> String {
        let lineitem = read(ctx);
        let firsts = lineitem
            .filter(col("l_linenumber").eq(lit(1)))
            .select_columns(&["l_orderkey", "l_suppkey"]);
        let joined = lineitem
            .select_columns(&["l_orderkey", "l_partkey"])
            .join(&firsts, &["l_orderkey"], JoinKind::Inner)
            .to_arrow()
            .unwrap();
        digest(common::sorted(common::rows(&joined)))
    }

    fn sql(ctx: &manta::Context, query: &str) -> String {
        digest(common::rows(&ctx.sql(query).unwrap().to_arrow().unwrap()))
    }

    /// The number of rows and a hash of them (in the order given).
    fn digest(rows: Vec<String>) -> String {
        use std::hash::{Hash, Hasher};
        let mut hasher = std::hash::DefaultHasher::new();
        rows.hash(&mut hasher);
        assert!(!rows.is_empty(), "no rows");
        format!("rows={} hash={:016x}", rows.len(), hasher.finish())
    }
}
