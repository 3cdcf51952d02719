//! Operating a cluster as its users do, through the `manta` command line: `manta up` a head
//! whose autoscaler launches and stops nodes for the demand it sees, with the local provider
//! and with a command provider that fails before it works; and jobs: the quickstart submitted
//! to a head, one that fails, one that is stopped, through `manta job` and the HTTP API.
//!
//! `harness = false`: worker processes are this very executable, so `main` must first let a
//! worker become one (`manta::run_worker_if_requested`).

mod common;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use common::{Process, children_of, eventually, eventually_within, free_port, http};
use manta::Config;

/// The env variable that makes this binary a job's driver in a role (see [`hold_objects`]).
const ROLE: &str = "MANTA_TEST_OPERATE_ROLE";

fn main() {
    manta::run_worker_if_requested();
    match std::env::var(ROLE).as_deref() {
        Ok("hold") => hold_objects(),
        Ok(role) if role.starts_with("stall-") => stall(role),
        _ => {}
    }
    type Test = common::Test<()>;
    let tests: &[Test] = &[
        (
            "the_autoscaler_grows_to_max_nodes_for_demand_and_stops_idle_nodes",
            the_autoscaler_grows_to_max_nodes_for_demand_and_stops_idle_nodes,
        ),
        (
            "a_provider_that_fails_is_retried_with_backoff_and_the_head_lives",
            a_provider_that_fails_is_retried_with_backoff_and_the_head_lives,
        ),
        (
            "jobs_run_fail_and_stop_and_are_listed",
            jobs_run_fail_and_stop_and_are_listed,
        ),
        (
            "metrics_of_the_head_and_a_node_move_as_work_runs",
            metrics_of_the_head_and_a_node_move_as_work_runs,
        ),
        (
            "task_results_go_from_the_node_to_the_driver_not_through_the_head",
            task_results_go_from_the_node_to_the_driver_not_through_the_head,
        ),
        (
            "a_cut_result_link_loses_no_result",
            a_cut_result_link_loses_no_result,
        ),
        (
            "the_dashboard_in_a_real_browser_shows_the_job_its_stages_and_a_dead_node",
            the_dashboard_in_a_real_browser_shows_the_job_its_stages_and_a_dead_node,
        ),
        (
            "the_timeline_of_a_job_has_one_slice_per_task_run",
            the_timeline_of_a_job_has_one_slice_per_task_run,
        ),
        (
            "a_stalled_driver_says_what_it_waits_for",
            a_stalled_driver_says_what_it_waits_for,
        ),
    ];
    common::run_tests("operate", tests, ());
}

/// Runs on a node until `nodes` different nodes run it at once (each leaves a file named after
/// its node's process in `dir`); answers its node's process id. With one CPU per node, the
/// tasks can only all finish once the autoscaler has launched `nodes` nodes.
#[manta::remote]
fn wait_for_nodes(dir: String, nodes: usize) -> Result<u32, manta::engine::BoxError> {
    let node = std::os::unix::process::parent_id();
    std::fs::write(Path::new(&dir).join(node.to_string()), b"")?;
    let deadline = Instant::now() + Duration::from_secs(120);
    while std::fs::read_dir(&dir)?.count() < nodes {
        if Instant::now() > deadline {
            return Err(format!("fewer than {nodes} nodes after 120 s").into());
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    Ok(node)
}

#[manta::remote]
fn add(a: i64, b: i64) -> i64 {
    a + b
}

/// `len` bytes that depend on `seed`: a small result (it travels inline, not as an object).
#[manta::remote]
fn pattern(seed: u64, len: usize) -> Vec<u8> {
    (0..len as u64)
        .map(|i| (i.wrapping_mul(31) ^ seed) as u8)
        .collect()
}

/// A cluster `manta up` started from a config file in a directory of its own (its run
/// directory too, so that `manta down` finds it); `manta down` when dropped.
struct UpCluster {
    dir: tempfile::TempDir,
    config: PathBuf,
    address: String,
    head_pid: u32,
}

impl UpCluster {
    /// `manta up` with this config (its `[head]` section is added: a free port, no CPUs).
    fn up(config: &str) -> UpCluster {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("cluster.toml");
        std::fs::write(
            &path,
            format!("[head]\nport = 0\nnum_cpus = 0\nobject_store_memory = \"128MiB\"\n{config}"),
        )
        .unwrap();
        let mut cluster = UpCluster {
            dir,
            config: path,
            address: String::new(),
            head_pid: 0,
        };
        let up = cluster.manta(&["up", cluster.config.to_str().unwrap()]);
        // "Started the head at ADDRESS (pid PID; log ...)."
        let started = up
            .lines()
            .find_map(|l| l.strip_prefix("Started the head at "))
            .unwrap_or_else(|| panic!("manta up: {up}"));
        let (address, rest) = started.split_once(" (pid ").unwrap();
        cluster.address = address.to_string();
        cluster.head_pid = rest.split(';').next().unwrap().parse().unwrap();
        cluster
    }

    /// Runs `manta ARGS` with this cluster's run directory; its standard output.
    fn manta(&self, args: &[&str]) -> String {
        let out = Command::new(env!("CARGO_BIN_EXE_manta"))
            .args(args)
            .env("MANTA_RUN_DIR", self.dir.path().join("run"))
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        assert!(
            out.status.success(),
            "manta {args:?}: {stdout}{}",
            String::from_utf8_lossy(&out.stderr)
        );
        stdout
    }

    fn status(&self) -> String {
        self.manta(&["status", "--address", &self.address])
    }

    fn driver(&self) -> manta::Context {
        manta::init_with(Config {
            address: Some(self.address.clone()),
            ..Default::default()
        })
        .unwrap()
    }

    /// The node daemons the local provider runs (children of the head).
    fn nodes(&self) -> Vec<u32> {
        children_of(self.head_pid)
    }
}

impl Drop for UpCluster {
    fn drop(&mut self) {
        let _ = Command::new(env!("CARGO_BIN_EXE_manta"))
            .args(["down", self.config.to_str().unwrap()])
            .env("MANTA_RUN_DIR", self.dir.path().join("run"))
            .output();
    }
}

/// Ray's autoscaler test: a head with no CPUs and `min_nodes = 0`; 40 one-CPU tasks that can
/// only finish once 3 nodes run them at once bring the cluster up to `max_nodes = 3` (and no
/// further), every task runs, and once idle for `idle_timeout` every node is stopped: the
/// head lists none and their processes are gone. `manta status` told the story meanwhile.
fn the_autoscaler_grows_to_max_nodes_for_demand_and_stops_idle_nodes(_: &()) {
    let cluster = UpCluster::up(
        r#"
        [autoscaler]
        idle_timeout_s = 2
        update_interval_s = 0.25

        [provider]
        type = "local"

        [node_types.cpu1]
        num_cpus = 1
        object_store_memory = "128MiB"
        max_nodes = 3
        "#,
    );
    assert!(
        cluster
            .status()
            .contains("cpu1 (1 CPU, 128 MiB): 0 running, 0 launching, min 0, max 3")
    );
    let markers = cluster.dir.path().join("markers");
    std::fs::create_dir(&markers).unwrap();
    let ctx = cluster.driver();
    let calls: Vec<_> = (0..40)
        .map(|_| wait_for_nodes.remote(&ctx, markers.display().to_string(), 3))
        .collect();
    let ran_on: Vec<u32> = ctx.get_all(&calls).unwrap();
    let nodes: BTreeSet<u32> = ran_on.iter().copied().collect();
    assert_eq!(ran_on.len(), 40);
    assert_eq!(nodes.len(), 3, "the tasks ran on {nodes:?}");
    drop(ctx);

    // Idle: every node is stopped, and gone.
    eventually_within(
        Duration::from_secs(60),
        "the idle nodes are stopped",
        || {
            let status = cluster.status();
            status.contains("0 node(s)") && cluster.nodes().is_empty()
        },
    );
    for pid in &nodes {
        assert!(
            !manta::engine::store::process_alive(*pid as i32),
            "node {pid} still runs"
        );
    }
    let status = cluster.status();
    for said in [
        "launching node cpu1-0: ",
        "task(s) or actor(s) wait for 1 CPU",
        "node cpu1-2 joined",
        "stopping node cpu1-1: idle for 2 s",
        "node cpu1-0 stopped",
    ] {
        assert!(status.contains(said), "{said}: {status}");
    }
    assert!(!status.contains("cpu1-3"), "{status}");

    cluster.manta(&["down", cluster.config.to_str().unwrap()]);
    assert!(!manta::engine::store::process_alive(
        cluster.head_pid as i32
    ));
}

/// A command provider whose launch command fails twice ("no capacity") before it starts a
/// node: the failures are reported with their reason and retried with growing waits, the head
/// keeps answering, and the tasks run once the node is up. Demand no node type could meet
/// fails at once, naming the node types; the idle node is stopped by the terminate command.
fn a_provider_that_fails_is_retried_with_backoff_and_the_head_lives(_: &()) {
    let dir = tempfile::tempdir().unwrap();
    let tries = dir.path().join("tries");
    let log = dir.path().join("node.log");
    let launch = dir.path().join("launch.sh");
    std::fs::write(
        &launch,
        format!(
            "n=$(cat {tries} 2>/dev/null || echo 0); echo $((n + 1)) > {tries}\n\
             if [ \"$n\" -lt 2 ]; then echo 'no capacity in this zone' >&2; exit 1; fi\n\
             \"$MANTA_PROGRAM\" $MANTA_START_ARGS --block > /dev/null 2>> {log} &\n\
             echo $!\n",
            tries = tries.display(),
            log = log.display()
        ),
    )
    .unwrap();
    let cluster = UpCluster::up(&format!(
        r#"
        [autoscaler]
        idle_timeout_s = 1
        update_interval_s = 0.25

        [provider]
        type = "command"
        launch = "sh {launch}"
        terminate = 'kill $MANTA_PROVIDER_ID'

        [node_types.cpu1]
        num_cpus = 1
        object_store_memory = "128MiB"
        max_nodes = 1
        "#,
        launch = launch.display()
    ));
    let ctx = cluster.driver();
    let sums: Vec<_> = (0..4).map(|i| add.remote(&ctx, i, 10)).collect();
    assert_eq!(ctx.get_all(&sums).unwrap(), vec![10, 11, 12, 13]);
    assert_eq!(std::fs::read_to_string(&tries).unwrap().trim(), "3");

    let too_big = manta::tasks::TaskOptions {
        resources: manta::Resources {
            cpus: 2.0,
            ..Default::default()
        },
        ..Default::default()
    };
    let error = ctx
        .get(&add.remote_with(&ctx, &too_big, 1, 1))
        .unwrap_err()
        .to_string();
    assert!(
        error.contains("nor does any node type the autoscaler can launch: cpu1"),
        "{error}"
    );
    drop(ctx);

    let status = cluster.status();
    for said in [
        "no capacity in this zone (failure 1 in a row for cpu1; next try in 1 s)",
        "(failure 2 in a row for cpu1; next try in 2 s)",
        "launching node cpu1-2: ",
    ] {
        assert!(status.contains(said), "{said}: {status}");
    }
    // The autoscaler sees the node it launched at its next look (the tasks may be done by then).
    eventually("the autoscaler sees its node join", || {
        cluster.status().contains("node cpu1-2 joined")
    });
    eventually_within(Duration::from_secs(60), "the idle node is stopped", || {
        cluster.status().contains("node cpu1-2 stopped")
    });
    assert!(cluster.status().contains("0 node(s)"));
}

/// A job's driver that puts a 16 MiB object on the cluster, says so, and waits to be stopped.
fn hold_objects() -> ! {
    let ctx = manta::init().expect("MANTA_ADDRESS and MANTA_TOKEN are set for jobs");
    let _held = ctx.put(&vec![7u8; 16 << 20]).unwrap();
    println!("holding an object");
    loop {
        std::thread::park();
    }
}

/// Sleeps `ms` milliseconds; answers `ms`.
#[manta::remote]
fn sleep_ms(ms: u64) -> u64 {
    std::thread::sleep(Duration::from_millis(ms));
    ms
}

/// An actor that holds a CPU while it lives, and does nothing else.
struct CpuHolder;

#[manta::actor]
impl CpuHolder {
    pub fn new() -> Self {
        CpuHolder
    }

    pub fn ping(&self) -> bool {
        true
    }
}

/// A job's driver that stalls in the way `role` names, on a cluster of one 1-CPU node:
/// `stall-infeasible` waits for a GPU no node has; `stall-busy` waits for the CPU an actor
/// holds; `stall-straggler` waits for one task of a stage whose others took 10 ms.
fn stall(role: &str) -> ! {
    let ctx = manta::init().expect("MANTA_ADDRESS and MANTA_TOKEN are set for jobs");
    let long = || sleep_ms.remote(&ctx, 600_000);
    // Every ref is kept: the driver waits on all of them.
    let waiting = match role {
        "stall-infeasible" => {
            let options = manta::TaskOptions {
                resources: manta::Resources {
                    cpus: 1.0,
                    custom: [("gpu".to_string(), 1.0)].into(),
                    ..Default::default()
                },
                ..Default::default()
            };
            vec![sleep_ms.remote_with(&ctx, &options, 1)]
        }
        "stall-busy" => {
            let options = manta::ActorOptions {
                resources: manta::Resources::one_cpu(),
                name: Some("cpu-holder".into()),
                ..Default::default()
            };
            // Alive (holding the only CPU) before the task is submitted: creating an actor
            // returns at once, and a task that reached the head first took the CPU, ran and
            // left nothing to stall on. Its first call's answer means it was created.
            let holder = CpuHolder::remote_with(&ctx, &options).unwrap();
            assert!(ctx.get(&holder.ping()).unwrap());
            std::mem::forget(holder);
            vec![sleep_ms.remote(&ctx, 1)]
        }
        "stall-straggler" => {
            let quick: Vec<_> = (0..4).map(|_| sleep_ms.remote(&ctx, 10)).collect();
            ctx.get_all(&quick).unwrap();
            vec![long()]
        }
        other => panic!("no role {other}"),
    };
    println!("stalling ({} waiting)", waiting.len());
    loop {
        std::thread::park();
    }
}

/// Runs `manta ARGS`; (success, stdout + stderr).
fn manta(args: &[&str]) -> (bool, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_manta"))
        .args(args)
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

/// The job id in `manta job submit`'s "Submitted job ID (STATE)." line.
fn submitted(output: &str) -> String {
    output
        .lines()
        .find_map(|l| l.strip_prefix("Submitted job "))
        .and_then(|rest| rest.split_whitespace().next())
        .unwrap_or_else(|| panic!("no job id: {output}"))
        .to_string()
}

/// Objects in the stores of the head's nodes.
fn objects_on(head: &str) -> u64 {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let (channel, _) = manta::scheduler::cluster_token::connect_head(head, None)
            .await
            .unwrap();
        let nodes = manta::scheduler::proto::head_client::HeadClient::new(channel)
            .list_nodes(manta::scheduler::proto::ListNodesRequest {})
            .await
            .unwrap()
            .into_inner()
            .nodes;
        nodes
            .iter()
            .map(|n| n.store.unwrap_or_default().objects)
            .sum()
    })
}

/// The quickstart example's executable (`cargo test` builds the examples).
fn quickstart() -> PathBuf {
    let quickstart = std::env::current_exe()
        .unwrap()
        .parent()
        .and_then(Path::parent)
        .unwrap()
        .join("examples/quickstart");
    assert!(
        quickstart.is_file(),
        "{} is not built: `cargo test` builds the examples (or cargo build --release --example quickstart)",
        quickstart.display()
    );
    quickstart
}

/// Ray Jobs' test: the quickstart submitted to a head runs there as a driver of the cluster;
/// its log, followed, ends with the `rows_out=` line whose checksum is DataFusion's over the
/// same input, and it succeeded. A job that fails says so with its exit status; a job that is
/// stopped has its driver killed and its object freed. `manta job list` and the HTTP API list
/// all three with their states; the HTTP API refuses a caller without the token, and runs a
/// command of its own.
fn jobs_run_fail_and_stop_and_are_listed(_: &()) {
    let quickstart = quickstart();
    let tmp = tempfile::tempdir().unwrap();
    let input = common::small_lineitem(tmp.path());
    let http_port = free_port().to_string();
    let head = Process::start(&["--head", "--port", "0", "--dashboard-port", &http_port]);
    let address = head.address.as_str();

    // The quickstart, submitted, its log followed to the end.
    let (ok, out) = manta(&[
        "job",
        "submit",
        "--address",
        address,
        "--",
        quickstart.to_str().unwrap(),
        "--input",
        input.to_str().unwrap(),
        "--output",
        "out",
    ]);
    assert!(ok, "{out}");
    let quickstart_job = submitted(&out);
    let (ok, log) = manta(&[
        "job",
        "logs",
        &quickstart_job,
        "--follow",
        "--address",
        address,
    ]);
    assert!(ok, "{log}");
    let expected = common::expected_etl(&input);
    let last = log
        .lines()
        .rfind(|l| l.starts_with("rows_out="))
        .unwrap_or_else(|| panic!("{log}"));
    assert_eq!(
        last,
        format!("rows_out={} checksum={}", expected.rows, expected.hex())
    );
    let (_, status) = manta(&["job", "status", &quickstart_job, "--address", address]);
    assert!(
        status.contains(&format!("Job {quickstart_job}: SUCCEEDED")),
        "{status}"
    );

    // A job that fails, followed with --wait: the command fails too, naming how.
    let (ok, out) = manta(&[
        "job",
        "submit",
        "--wait",
        "--address",
        address,
        "--",
        "sh",
        "-c",
        "echo about to fail; exit 3",
    ]);
    assert!(!ok, "{out}");
    let failing_job = submitted(&out);
    assert!(
        out.contains("about to fail") && out.contains("FAILED") && out.contains("exit status: 3"),
        "{out}"
    );

    // A job that holds an object until it is stopped.
    let this = std::env::current_exe().unwrap();
    let (ok, out) = manta(&[
        "job",
        "submit",
        "--address",
        address,
        "--env",
        &format!("{ROLE}=hold"),
        "--",
        this.to_str().unwrap(),
    ]);
    assert!(ok, "{out}");
    let held_job = submitted(&out);
    eventually("the job holds its object", || {
        manta(&["job", "logs", &held_job, "--address", address])
            .1
            .contains("holding an object")
    });
    eventually("its node reports the object", || objects_on(address) > 0);
    let (ok, out) = manta(&["job", "stop", &held_job, "--address", address]);
    assert!(ok, "{out}");
    eventually("the job is stopped and its object freed", || {
        manta(&["job", "status", &held_job, "--address", address])
            .1
            .contains("STOPPED")
            && objects_on(address) == 0
    });

    let (_, list) = manta(&["job", "list", "--address", address]);
    for (job, state) in [
        (&quickstart_job, "SUCCEEDED"),
        (&failing_job, "FAILED"),
        (&held_job, "STOPPED"),
    ] {
        assert!(
            list.lines()
                .any(|l| l.starts_with(job.as_str()) && l.contains(state)),
            "{job} {state}: {list}"
        );
    }

    // The HTTP API: the token or nothing; the same jobs; a command submitted and its log read.
    let http_address = format!("127.0.0.1:{http_port}");
    let port: u16 = address.rsplit(':').next().unwrap().parse().unwrap();
    let token = std::fs::read_to_string(manta::scheduler::cluster_token::token_file(port)).unwrap();
    let token = token.trim();
    let (code, _) = http(&http_address, "GET", "/api/jobs", None, "");
    assert_eq!(code, 401);
    let (code, _) = http(&http_address, "GET", "/api/jobs", Some("not-the-token"), "");
    assert_eq!(code, 401);
    let (code, body) = http(&http_address, "GET", "/api/jobs", Some(token), "");
    assert_eq!(code, 200, "{body}");
    let jobs: serde_json::Value = serde_json::from_str(&body).unwrap();
    let states: Vec<(&str, &str)> = jobs
        .as_array()
        .unwrap()
        .iter()
        .map(|j| (j["job_id"].as_str().unwrap(), j["state"].as_str().unwrap()))
        .collect();
    assert_eq!(
        states,
        vec![
            (quickstart_job.as_str(), "SUCCEEDED"),
            (failing_job.as_str(), "FAILED"),
            (held_job.as_str(), "STOPPED")
        ]
    );
    let (code, body) = http(
        &http_address,
        "POST",
        "/api/jobs",
        Some(token),
        r#"{"entrypoint": ["sh", "-c", "echo from http $GREETING"], "env": {"GREETING": "hello"}}"#,
    );
    assert_eq!(code, 200, "{body}");
    let job: serde_json::Value = serde_json::from_str(&body).unwrap();
    let id = job["job_id"].as_str().unwrap().to_string();
    eventually("the HTTP job succeeds", || {
        let (_, body) = http(
            &http_address,
            "GET",
            &format!("/api/jobs/{id}"),
            Some(token),
            "",
        );
        body.contains("\"SUCCEEDED\"")
    });
    let (code, log) = http(
        &http_address,
        "GET",
        &format!("/api/jobs/{id}/logs"),
        Some(token),
        "",
    );
    assert_eq!((code, log.as_str()), (200, "from http hello\n"));
    let (code, _) = http(&http_address, "GET", "/api/jobs/job-nope", Some(token), "");
    assert_eq!(code, 404);
}

/// The value of the sample `name` (with its labels, as exposed) in a Prometheus text
/// exposition; 0 when absent (a counter never incremented).
fn sample(text: &str, name: &str) -> f64 {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
        .unwrap_or(0.0)
}

/// `/metrics` on the head and on a node, scraped with the token (and refused without it),
/// before and after five tasks and a put: the task counters move by exactly five, the run-time
/// histogram counts five, the node's store holds the object and its worker process is counted,
/// the head's cluster-wide store gauge follows the node's heartbeat, and the driver (on the
/// node's machine) reads the object back from the node's shared memory: its Flight sends
/// nothing.
fn metrics_of_the_head_and_a_node_move_as_work_runs(_: &()) {
    let (head_port, node_port) = (free_port().to_string(), free_port().to_string());
    let head = head_serving_metrics(&head_port);
    let _node = node_serving_metrics(&head, node_port.parse().unwrap(), None);
    let token = head_token(&head);
    let scrape = |port: &str| scrape(port.parse().unwrap(), &token);
    for port in [&head_port, &node_port] {
        let (code, _) = http(&format!("127.0.0.1:{port}"), "GET", "/metrics", None, "");
        assert_eq!(code, 401, "/metrics on port {port} without the token");
    }
    let (head_before, node_before) = (scrape(&head_port), scrape(&node_port));
    assert_eq!(
        sample(&head_before, "manta_nodes{state=\"alive\"}"),
        1.0,
        "{head_before}"
    );

    let ctx = manta::init_with(Config {
        address: Some(head.address.clone()),
        ..Default::default()
    })
    .unwrap();
    let sums: Vec<_> = (0..5).map(|i| add.remote(&ctx, i, 1)).collect();
    assert_eq!(ctx.get_all(&sums).unwrap(), vec![1, 2, 3, 4, 5]);
    let held = ctx.put(&vec![1u8; 4 << 20]).unwrap();

    let (head_after, node_after) = (scrape(&head_port), scrape(&node_port));
    let moved = |before: &str, after: &str, name: &str| sample(after, name) - sample(before, name);
    assert_eq!(
        moved(
            &head_before,
            &head_after,
            "manta_tasks_total{state=\"submitted\"}"
        ),
        5.0
    );
    assert_eq!(
        moved(
            &head_before,
            &head_after,
            "manta_tasks_total{state=\"finished\"}"
        ),
        5.0
    );
    assert_eq!(
        moved(&head_before, &head_after, "manta_task_seconds_count"),
        5.0
    );
    assert_eq!(
        moved(
            &node_before,
            &node_after,
            "manta_node_tasks_total{outcome=\"ok\"}"
        ),
        5.0
    );
    assert!(
        sample(&node_after, "manta_object_store_objects") >= 1.0,
        "{node_after}"
    );
    assert!(sample(&node_after, "manta_object_store_bytes{kind=\"resident\"}") >= (4 << 20) as f64);
    assert_eq!(
        sample(&node_after, "manta_object_store_bytes{kind=\"budget\"}"),
        (256 << 20) as f64
    );
    assert!(
        sample(&node_after, "manta_node_worker_processes") >= 1.0,
        "{node_after}"
    );
    // The put went to the node over Flight (DoPut): its bytes, at least, came in.
    assert!(
        moved(
            &node_before,
            &node_after,
            "manta_node_flight_bytes_total{direction=\"in\"}"
        ) >= (4 << 20) as f64,
        "{node_after}"
    );
    // A driver on the node's machine reads it back from the node's shared memory, not over
    // Flight: the node sends no byte.
    let sent = "manta_node_flight_bytes_total{direction=\"out\"}";
    let sent_before = sample(&scrape(&node_port), sent);
    assert_eq!(ctx.get(&held).unwrap(), vec![1u8; 4 << 20]);
    assert_eq!(sample(&scrape(&node_port), sent), sent_before);
    eventually(
        "the head's store gauge follows the node's heartbeat",
        || {
            sample(
                &scrape(&head_port),
                "manta_object_store_bytes{kind=\"resident\"}",
            ) >= (4 << 20) as f64
        },
    );
    drop(held);
}

/// Small task results come from the node that ran them to the driver over its result link,
/// not through the head: after 200 tasks of 4 KiB results, all right, the node says it sent
/// each one direct, the head passed on no result byte and sent the driver no answer for any of
/// them (so the driver let go of each call when its result came). A node that joins after the driver
/// (which has no link to it yet) sends its first results through the head, and the driver
/// then links to it; its results are right either way, and each went one way or the other.
fn task_results_go_from_the_node_to_the_driver_not_through_the_head(_: &()) {
    let (head_port, first_port, late_port) = (free_port(), free_port(), free_port());
    let head = head_serving_metrics(&head_port.to_string());
    let node = |port: u16, resources: &str| node_serving_metrics(&head, port, Some(resources));
    let _first = node(first_port, "first=1");
    let token = head_token(&head);
    let ctx = manta::init_with(Config {
        address: Some(head.address.clone()),
        ..Default::default()
    })
    .unwrap();
    let relayed = "manta_head_relayed_result_bytes_total";
    let answered = |answer: &str| format!("manta_head_task_answers_total{{answer=\"{answer}\"}}");
    let (direct, through_head) = (
        "manta_node_results_total{path=\"direct\"}",
        "manta_node_results_total{path=\"head\"}",
    );
    let run = |count: u64, resource: &str| {
        let options = manta::tasks::TaskOptions {
            resources: common::on(resource),
            ..Default::default()
        };
        let refs: Vec<_> = (0..count)
            .map(|seed| pattern.remote_with(&ctx, &options, seed, 4096))
            .collect();
        let expected: Vec<_> = (0..count).map(|seed| pattern::call(seed, 4096)).collect();
        assert_eq!(ctx.get_all(&refs).unwrap(), expected);
    };

    let (head_before, node_before) = (scrape(head_port, &token), scrape(first_port, &token));
    run(200, "first");
    let node_after = results_counted(first_port, &token, &node_before, 200);
    let moved = |before: &str, after: &str, name: &str| sample(after, name) - sample(before, name);
    // The node reports each task to the head after counting it.
    let mut head_after = String::new();
    let answers = |head: &str| {
        ["none", "result", "failure"].map(|answer| moved(&head_before, head, &answered(answer)))
    };
    eventually("the head heard of each task's end", || {
        head_after = scrape(head_port, &token);
        answers(&head_after).iter().sum::<f64>() >= 200.0
    });
    assert_eq!(
        moved(&node_before, &node_after, direct),
        200.0,
        "{node_after}"
    );
    assert_eq!(
        moved(&node_before, &node_after, through_head),
        0.0,
        "{node_after}"
    );
    assert_eq!(
        moved(&head_before, &head_after, relayed),
        0.0,
        "{head_after}"
    );
    assert_eq!(answers(&head_after), [200.0, 0.0, 0.0], "{head_after}");

    let _late = node(late_port, "late=1");
    let head_before = scrape(head_port, &token);
    run(50, "late");
    let late = results_counted(late_port, &token, "", 50);
    let head_after = scrape(head_port, &token);
    assert_eq!(
        sample(&late, direct) + sample(&late, through_head),
        50.0,
        "{late}"
    );
    assert!(sample(&late, through_head) >= 1.0, "{late}");
    assert!(
        moved(&head_before, &head_after, relayed) >= 4096.0,
        "{head_after}"
    );
    // The head answers exactly the results it carried.
    assert_eq!(
        moved(&head_before, &head_after, &answered("result")),
        sample(&late, through_head),
        "{head_after}"
    );
}

/// A node of one CPU (and `resources`) joined to `head`, serving `/metrics` on `port`.
fn node_serving_metrics(head: &Process, port: u16, resources: Option<&str>) -> Process {
    let port = port.to_string();
    let mut args = vec![
        "--address",
        &head.address,
        "--num-cpus",
        "1",
        "--object-store-memory",
        "256MiB",
        "--metrics-port",
        &port,
    ];
    if let Some(resources) = resources {
        args.extend(["--resources", resources]);
    }
    Process::start(&args)
}

/// A small result, `pattern(seed, 64)`, once the file `gate` exists.
#[manta::remote]
fn pattern_once_open(gate: String, seed: u64) -> Result<Vec<u8>, manta::engine::BoxError> {
    let deadline = Instant::now() + Duration::from_secs(120);
    while !Path::new(&gate).exists() {
        if Instant::now() > deadline {
            return Err(format!("{gate} was not made within two minutes").into());
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    Ok(pattern::call(seed, 64))
}

/// A result link cut alone, with the node and the head fine: 300 tasks are queued on the node
/// behind a gate (a file), the driver's TCP connection to the node's gRPC port (its result link
/// only) is shut down, then the gate opens. Every answer is right, at least one result came
/// through the head (the cut link was noticed, not waited on), and each came one way or the
/// other.
fn a_cut_result_link_loses_no_result(_: &()) {
    let (head_port, node_port) = (free_port(), free_port());
    let head = head_serving_metrics(&head_port.to_string());
    let node = node_serving_metrics(&head, node_port, None);
    let token = head_token(&head);
    let ctx = manta::init_with(Config {
        address: Some(head.address.clone()),
        ..Default::default()
    })
    .unwrap();
    let (direct, through_head) = (
        "manta_node_results_total{path=\"direct\"}",
        "manta_node_results_total{path=\"head\"}",
    );
    // The link is open once a result came over it.
    eventually("a result over the driver's result link", || {
        ctx.get(&add.remote(&ctx, 1, 2)).unwrap();
        sample(&scrape(node_port, &token), direct) >= 1.0
    });
    // The last of those results is counted once the driver confirmed it, which may be after
    // `get` returned: `before` waits until every task the node ran is counted, or it would
    // miss one and the count below would be one over.
    let mut before = String::new();
    eventually("the node counted every result so far", || {
        before = scrape(node_port, &token);
        sample(&before, direct) + sample(&before, through_head)
            == sample(&before, "manta_node_tasks_total{outcome=\"ok\"}")
    });
    let dir = tempfile::tempdir().unwrap();
    let gate = dir.path().join("open").to_string_lossy().into_owned();
    let refs: Vec<_> = (0..300)
        .map(|seed| pattern_once_open.remote(&ctx, gate.clone(), seed))
        .collect();
    let node_grpc_port: u16 = node.address.rsplit(':').next().unwrap().parse().unwrap();
    assert!(
        shut_down_connections_to(node_grpc_port) >= 1,
        "the driver holds a connection to the node's gRPC port {node_grpc_port} (its link)"
    );
    std::fs::write(&gate, b"").unwrap();
    let expected: Vec<_> = (0..300).map(|seed| pattern::call(seed, 64)).collect();
    assert_eq!(ctx.get_all(&refs).unwrap(), expected);
    let after = results_counted(node_port, &token, &before, 300);
    let moved = |after: &str, name: &str| sample(after, name) - sample(&before, name);
    assert_eq!(
        moved(&after, direct) + moved(&after, through_head),
        300.0,
        "{after}"
    );
    assert!(moved(&after, through_head) >= 1.0, "{after}");
}

/// The node's `/metrics` on `port` once it counts `count` more results (either way) than in
/// `before`: a node counts a result once its caller confirmed it, so just after the caller has
/// it.
fn results_counted(port: u16, token: &str, before: &str, count: u64) -> String {
    let total = |metrics: &str| {
        sample(metrics, "manta_node_results_total{path=\"direct\"}")
            + sample(metrics, "manta_node_results_total{path=\"head\"}")
    };
    let mut after = String::new();
    eventually("the node counted each result", || {
        after = scrape(port, token);
        total(&after) - total(before) >= count as f64
    });
    after
}

/// Shuts down (both ways) every established TCP connection of this process to `port` on the
/// loopback: the peer sees it end, as if the path between them broke. Returns how many.
fn shut_down_connections_to(port: u16) -> usize {
    // Sockets of this process, by inode.
    let mut fds = std::collections::HashMap::new();
    for entry in std::fs::read_dir("/proc/self/fd").unwrap().flatten() {
        let Ok(target) = std::fs::read_link(entry.path()) else {
            continue;
        };
        let target = target.to_string_lossy().into_owned();
        if let Some(inode) = target
            .strip_prefix("socket:[")
            .and_then(|t| t.strip_suffix(']'))
        {
            let fd: i32 = entry.file_name().to_string_lossy().parse().unwrap();
            fds.insert(inode.to_string(), fd);
        }
    }
    let table = std::fs::read_to_string("/proc/self/net/tcp").unwrap();
    let mut cut = 0;
    for line in table.lines().skip(1) {
        let fields: Vec<&str> = line.split_whitespace().collect();
        // sl, local, remote, state (01: established), ..., inode (the tenth).
        let remote_port = fields[2].rsplit(':').next().unwrap();
        if u16::from_str_radix(remote_port, 16).unwrap() != port || fields[3] != "01" {
            continue;
        }
        if let Some(&fd) = fds.get(fields[9]) {
            // SAFETY: `fd` is an open socket of this process; shutting it down closes no file
            // descriptor, so nothing else can come to use its number.
            let done = unsafe { libc::shutdown(fd, libc::SHUT_RDWR) };
            assert_eq!(done, 0, "shutdown of fd {fd}");
            cut += 1;
        }
    }
    cut
}

/// A head with no CPUs of its own, serving its dashboard and `/metrics` on `port`.
fn head_serving_metrics(port: &str) -> Process {
    Process::start(&[
        "--head",
        "--port",
        "0",
        "--num-cpus",
        "0",
        "--dashboard-port",
        port,
    ])
}

/// The cluster token of the head `head` started (its token file on this machine).
fn head_token(head: &Process) -> String {
    let port: u16 = head.address.rsplit(':').next().unwrap().parse().unwrap();
    std::fs::read_to_string(manta::scheduler::cluster_token::token_file(port))
        .unwrap()
        .trim()
        .to_string()
}

/// `/metrics` of the process serving them on `port`, with the token.
fn scrape(port: u16, token: &str) -> String {
    let (code, text) = http(
        &format!("127.0.0.1:{port}"),
        "GET",
        "/metrics",
        Some(token),
        "",
    );
    assert_eq!(code, 200, "{text}");
    text
}

/// Chromium (or Chrome) on this machine, if any.
fn chromium() -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    ["chromium", "chromium-browser", "google-chrome"]
        .iter()
        .flat_map(|name| std::env::split_paths(&path).map(move |dir| dir.join(name)))
        .find(|p| p.is_file())
}

/// The page at `url` as headless Chromium leaves it after 5 s of (virtual) time, in a fresh
/// profile: its DOM, after the live-update script has run. Fails if the page logged anything
/// to the console (our pages log nothing; an uncaught error logs). With
/// `MANTA_DASHBOARD_SCREENSHOTS=DIR`, a screenshot of the page at `screenshot_url` (a second,
/// fresh link: links sign in once) goes to `DIR/<name>.png`.
fn browse(
    chromium: &Path,
    url: &str,
    name: &str,
    screenshot_url: impl FnOnce() -> String,
) -> String {
    let run = |extra: &[String], url: &str| {
        let profile = tempfile::tempdir().unwrap();
        let out = Command::new("timeout")
            .arg("120")
            .arg(chromium)
            .args([
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--no-first-run",
                "--enable-logging=stderr",
                "--v=0",
                "--virtual-time-budget=5000",
                "--window-size=1280,1000",
            ])
            .arg(format!("--user-data-dir={}", profile.path().display()))
            .args(extra)
            .arg(url)
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
        assert!(out.status.success(), "chromium on {url}: {stderr}");
        let console: Vec<&str> = stderr.lines().filter(|l| l.contains(":CONSOLE")).collect();
        assert!(console.is_empty(), "{name}: console output: {console:#?}");
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let dom = run(&["--dump-dom".to_string()], url);
    if let Some(dir) = std::env::var_os("MANTA_DASHBOARD_SCREENSHOTS") {
        let file = Path::new(&dir).join(format!("{name}.png"));
        run(
            &[format!("--screenshot={}", file.display())],
            &screenshot_url(),
        );
        assert!(file.is_file(), "no screenshot at {}", file.display());
    }
    dom
}

/// `text` as the dashboard escapes it in HTML.
fn html_escaped(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
        .replace('\'', "&#39;")
}

/// The `<tr>` of `dom` that mentions `needle`.
fn row_with<'a>(dom: &'a str, needle: &str) -> Option<&'a str> {
    dom.split("<tr>").find(|row| row.contains(needle))
}

/// Ray's dashboard test, in a real browser: a head with its dashboard, a second node, and the
/// quickstart submitted as a job. Headless Chromium, signed in by the one-time link `manta
/// dashboard` prints, loads every page without console output; the job page shows the job
/// SUCCEEDED with each of its stages (as the JSON API lists them: every task finished, and the
/// filtered stage's rows equal to DataFusion's count over the same input) and has been
/// updated live; after the second node is killed, the nodes page shows it DEAD and the events
/// page says it was lost. Without the link, the browser lands on the login form.
fn the_dashboard_in_a_real_browser_shows_the_job_its_stages_and_a_dead_node(_: &()) {
    let Some(chromium) = chromium() else {
        assert!(
            std::env::var_os("MANTA_REQUIRE_CHROMIUM").is_none(),
            "MANTA_REQUIRE_CHROMIUM is set but there is no chromium on PATH"
        );
        eprintln!(
            "skipped: no chromium on PATH (Debian: apt-get install chromium; .ci/run installs it)"
        );
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    let input = common::small_lineitem(tmp.path());
    let dashboard_port = free_port().to_string();
    let head = Process::start(&["--head", "--port", "0", "--dashboard-port", &dashboard_port]);
    let address = head.address.as_str();
    let mut doomed = Process::start(&[
        "--address",
        address,
        "--num-cpus",
        "1",
        "--node-name",
        "doomed",
    ]);
    let (ok, out) = manta(&[
        "job",
        "submit",
        "--wait",
        "--address",
        address,
        "--",
        quickstart().to_str().unwrap(),
        "--input",
        input.to_str().unwrap(),
        "--output",
        "out",
    ]);
    assert!(ok, "{out}");
    let job = submitted(&out);

    // What the job page must show, from the JSON API and from DataFusion.
    let port: u16 = address.rsplit(':').next().unwrap().parse().unwrap();
    let token = std::fs::read_to_string(manta::scheduler::cluster_token::token_file(port)).unwrap();
    let api = format!("127.0.0.1:{dashboard_port}");
    let (code, stages) = http(
        &api,
        "GET",
        &format!("/api/jobs/{job}/stages"),
        Some(token.trim()),
        "",
    );
    assert_eq!(code, 200, "{stages}");
    let drivers: serde_json::Value = serde_json::from_str(&stages).unwrap();
    let stages: Vec<&serde_json::Value> = drivers
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|d| d["stages"].as_array().unwrap())
        .collect();
    assert!(!stages.is_empty(), "{drivers}");
    for stage in &stages {
        assert_eq!(stage["finished"], stage["submitted"], "{stage}");
        assert_eq!(stage["failed"], 0, "{stage}");
        assert_eq!(stage["running"], 0, "{stage}");
    }
    let expected = common::expected_etl(&input);
    assert!(
        stages.iter().any(|s| s["rows_out"] == expected.rows),
        "no stage made the {} rows DataFusion counts: {drivers}",
        expected.rows
    );

    let link = |page: &str| {
        let (ok, out) = manta(&["dashboard", "--address", address, "--page", page]);
        assert!(ok, "{out}");
        out.lines().next().unwrap().to_string()
    };
    let job_page = format!("/jobs/{job}");
    let dom = browse(&chromium, &link(&job_page), "job", || link(&job_page));
    assert!(dom.contains(&format!("Job {job}")), "{dom}");
    assert!(dom.contains("SUCCEEDED"), "{dom}");
    for stage in &stages {
        let name = html_escaped(stage["stage"].as_str().unwrap());
        assert!(
            dom.contains(&name),
            "stage {name} not on the job page: {dom}"
        );
    }
    assert!(
        dom.contains("id=\"updated\">updated "),
        "the page did not update itself: {dom}"
    );
    assert!(
        dom.contains(&format!("rows_out={}", expected.rows)),
        "no log tail: {dom}"
    );
    for (page, name, heading) in [
        ("/", "overview", "<h1>Cluster</h1>"),
        ("/jobs", "jobs", "<h1>Jobs</h1>"),
        ("/actors", "actors", "<h1>Actors</h1>"),
        ("/objects", "objects", "<h1>Objects</h1>"),
    ] {
        let dom = browse(&chromium, &link(page), name, || link(page));
        assert!(dom.contains(heading), "{page}: {dom}");
        if page == "/" {
            assert!(dom.contains(&job), "the overview lists no job {job}: {dom}");
        }
    }

    // Without the link: the login form, and nothing of the cluster.
    let dom = browse(
        &chromium,
        &format!("http://{api}{job_page}"),
        "login",
        || format!("http://{api}/login"),
    );
    assert!(
        dom.contains("Sign in") && !dom.contains("SUCCEEDED"),
        "{dom}"
    );

    // A killed node shows as dead.
    doomed.child.kill().unwrap();
    doomed.child.wait().unwrap();
    eventually("the head marks the killed node dead", || {
        let (_, nodes) = http(&api, "GET", "/api/nodes", Some(token.trim()), "");
        let nodes: serde_json::Value = serde_json::from_str(&nodes).unwrap();
        nodes
            .as_array()
            .unwrap()
            .iter()
            .any(|n| n["name"] == "doomed" && n["state"] == "DEAD")
    });
    let dom = browse(&chromium, &link("/nodes"), "nodes", || link("/nodes"));
    let row = row_with(&dom, "doomed").unwrap_or_else(|| panic!("no node doomed: {dom}"));
    assert!(row.contains("DEAD"), "{row}");
    let dom = browse(&chromium, &link("/events"), "events", || link("/events"));
    let row = row_with(&dom, "doomed").unwrap_or_else(|| panic!("no event of doomed: {dom}"));
    assert!(row.contains("lost"), "{row}");
}

/// `manta timeline` after a driver ran twelve tasks: a Chrome trace with one slice per task,
/// on the worker process that ran it, named as the task was, without error; a job id the
/// head never saw gives an empty trace; the file is JSON Perfetto reads (an array of trace
/// events with the fields it needs, and the nodes named).
fn the_timeline_of_a_job_has_one_slice_per_task_run(_: &()) {
    let head = Process::start(&["--head", "--port", "0", "--no-dashboard", "--num-cpus", "2"]);
    let ctx = manta::init_with(Config {
        address: Some(head.address.clone()),
        ..Default::default()
    })
    .unwrap();
    let sums: Vec<_> = (0..12).map(|i| add.remote(&ctx, i, 1)).collect();
    let expected: Vec<i64> = (1..=12).collect();
    assert_eq!(ctx.get_all(&sums).unwrap(), expected);
    let tmp = tempfile::tempdir().unwrap();
    let trace_path = tmp.path().join("trace.json");
    // Every job's tasks: this driver's are the only ones.
    let (ok, out) = manta(&[
        "timeline",
        "--address",
        &head.address,
        "-o",
        trace_path.to_str().unwrap(),
    ]);
    assert!(ok, "{out}");
    let trace: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&trace_path).unwrap()).unwrap();
    let slices: Vec<&serde_json::Value> = trace
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["ph"] == "X")
        .collect();
    assert_eq!(slices.len(), 12, "{trace}");
    let pids: BTreeSet<u64> = slices.iter().map(|s| s["tid"].as_u64().unwrap()).collect();
    let workers = children_of(head.pid());
    for slice in &slices {
        assert!(slice["name"].as_str().unwrap().contains("add"), "{slice}");
        assert!(
            slice["ts"].as_u64().unwrap() > 0 && slice["dur"].as_u64().is_some(),
            "{slice}"
        );
        assert_eq!(slice["args"]["error"], "", "{slice}");
    }
    assert!(
        pids.iter().all(|pid| workers.contains(&(*pid as u32))),
        "the slices' threads {pids:?} are not the node's worker processes {workers:?}"
    );
    assert!(
        trace
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e["ph"] == "M" && e["name"] == "process_name"),
        "{trace}"
    );
    let other = tmp.path().join("other.json");
    let (ok, out) = manta(&[
        "timeline",
        "--address",
        &head.address,
        "--job",
        "job-never-submitted",
        "-o",
        other.to_str().unwrap(),
    ]);
    assert!(ok, "{out}");
    assert_eq!(std::fs::read_to_string(&other).unwrap(), "[]");
}

/// Ray's 30-minute no-progress timeout, done better: a driver whose tasks stop finishing says
/// within its stall timeout (1 s here) what it waits for, naming the cause, for three kinds of
/// stall made on purpose (see [`stall`]): a task no live node can run (it wants a GPU: the
/// message names the demand and that no node offers it), a task waiting for the CPU an actor
/// holds (the message names the node and the actor holding it), and a straggler (one
/// task running far longer than its stage's others). Each driver runs as a job whose log is
/// read; the job is stopped before the next.
fn a_stalled_driver_says_what_it_waits_for(_: &()) {
    let head = Process::start(&["--head", "--port", "0", "--no-dashboard", "--num-cpus", "1"]);
    let address = head.address.as_str();
    let this = std::env::current_exe().unwrap();
    let cases: [(&str, &[&str]); 3] = [
        (
            "stall-infeasible",
            &[
                "wait for a node with 1 CPU, gpu=1",
                "no live node offers it",
            ],
        ),
        (
            "stall-busy",
            &["every node that fits is busy", "holds actor 'cpu-holder'"],
        ),
        ("stall-straggler", &["longer than its peers", "sleep_ms"]),
    ];
    for (role, expected) in cases {
        let (ok, out) = manta(&[
            "job",
            "submit",
            "--address",
            address,
            "--env",
            &format!("{ROLE}={role}"),
            "--env",
            "MANTA_STALL_TIMEOUT=1",
            "--",
            this.to_str().unwrap(),
        ]);
        assert!(ok, "{out}");
        let job = submitted(&out);
        let mut log = String::new();
        let said = |log: &str| {
            log.contains("no task of this job has finished for")
                && expected.iter().all(|e| log.contains(e))
        };
        let deadline = std::time::Instant::now() + Duration::from_secs(60);
        while !said(&log) {
            assert!(
                std::time::Instant::now() < deadline,
                "{role}: the driver never said why it is stalled in 60 s; its log:\n{log}"
            );
            std::thread::sleep(Duration::from_millis(100));
            log = manta(&["job", "logs", &job, "--address", address]).1;
        }
        let (ok, out) = manta(&["job", "stop", &job, "--address", address]);
        assert!(ok, "{out}");
        eventually(&format!("{role}: the job stops"), || {
            manta(&["job", "status", &job, "--address", address])
                .1
                .contains("STOPPED")
        });
    }
}
