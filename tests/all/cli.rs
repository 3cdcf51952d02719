//! The `manta` command line: start a head and a node in the background, see them in `manta
//! status`, stop them with `manta stop`, and check that nothing is left running or in /dev/shm.

use std::path::Path;
use std::process::{Command, Output};

/// Held by each test that starts an object store (a node, or an embedded engine): a store that
/// starts sweeps away the sessions of processes that died, which would race the test that
/// checks what a killed node leaves behind.
static STORES: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn one_store_test_at_a_time() -> std::sync::MutexGuard<'static, ()> {
    STORES
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

fn manta(run_dir: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_manta"))
        .args(args)
        .env("MANTA_RUN_DIR", run_dir)
        .env_remove("MANTA_ADDRESS")
        .output()
        .expect("run manta")
}

fn text(output: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

/// Runs `manta stop` when dropped, so a failed test leaves no daemons behind.
struct StopOnDrop<'a>(&'a Path);

impl Drop for StopOnDrop<'_> {
    fn drop(&mut self) {
        manta(self.0, &["stop"]);
    }
}

/// `manta start --head --port 0 ARGS` in the background; its address.
fn start_head(run_dir: &Path, args: &[&str]) -> String {
    let head = manta(
        run_dir,
        &[&["start", "--head", "--port", "0"], args].concat(),
    );
    assert!(head.status.success(), "{}", text(&head));
    let head_text = text(&head);
    head_text
        .split_whitespace()
        .find(|w| w.starts_with("127.0.0.1:"))
        .unwrap_or_else(|| panic!("no address in: {head_text}"))
        .to_string()
}

#[test]
fn start_status_stop() {
    let _one_at_a_time = one_store_test_at_a_time();
    let run_dir = tempfile::tempdir().unwrap();
    let _guard = StopOnDrop(run_dir.path());

    // The head is a node too (with one CPU here), unless started with --num-cpus 0.
    let address = start_head(
        run_dir.path(),
        &["--num-cpus", "1", "--object-store-memory", "128MiB"],
    );

    let node = manta(
        run_dir.path(),
        &[
            "start",
            "--address",
            &address,
            "--num-cpus",
            "3",
            "--object-store-memory",
            "256MiB",
        ],
    );
    assert!(node.status.success(), "{}", text(&node));

    let status = manta(run_dir.path(), &["status"]);
    let status_text = text(&status);
    assert!(status.status.success(), "{status_text}");
    assert!(status_text.contains("2 node(s), 2 alive"), "{status_text}");
    assert!(
        status_text.contains("0.0/3.0") && status_text.contains("0.0/1.0"),
        "three CPUs and the head's one, none used: {status_text}"
    );
    assert!(
        status_text.contains("128.0 MiB"),
        "the head's store's budget: {status_text}"
    );
    assert!(
        status_text.contains("256.0 MiB"),
        "the store's budget: {status_text}"
    );

    let pids: Vec<i32> = std::fs::read_dir(run_dir.path())
        .unwrap()
        .filter_map(|e| e.unwrap().file_name().to_str()?.parse().ok())
        .collect();
    assert_eq!(pids.len(), 2);

    let stop = manta(run_dir.path(), &["stop"]);
    assert!(stop.status.success(), "{}", text(&stop));
    for pid in pids {
        assert!(
            !manta::engine::store::process_alive(pid),
            "pid {pid} still runs after manta stop"
        );
        let leaked = std::fs::read_dir("/dev/shm")
            .map(|d| {
                d.flatten().any(|e| {
                    e.file_name()
                        .to_string_lossy()
                        .starts_with(&format!("manta-{pid}-"))
                })
            })
            .unwrap_or(false);
        assert!(!leaked, "pid {pid} left its shared memory behind");
    }
    let again = manta(run_dir.path(), &["status"]);
    assert!(!again.status.success(), "status with no head must fail");
}

/// Whether a session directory of process `pid` is in /dev/shm.
fn has_shm_session(pid: i32) -> bool {
    std::fs::read_dir("/dev/shm")
        .map(|d| {
            d.flatten().any(|e| {
                e.file_name()
                    .to_string_lossy()
                    .starts_with(&format!("manta-{pid}-"))
            })
        })
        .unwrap_or(false)
}

/// A node killed with SIGKILL cannot clean up; `manta stop` removes what it left in /dev/shm.
#[test]
fn manta_stop_reclaims_what_a_killed_node_left() {
    let _one_at_a_time = one_store_test_at_a_time();
    let run_dir = tempfile::tempdir().unwrap();
    let _guard = StopOnDrop(run_dir.path());
    let address = start_head(run_dir.path(), &["--num-cpus", "0"]);
    let before: Vec<i32> = std::fs::read_dir(run_dir.path())
        .unwrap()
        .filter_map(|e| e.unwrap().file_name().to_str()?.parse().ok())
        .collect();
    let spill = tempfile::tempdir().unwrap();
    let spill_dir = spill.path().join("spill");
    let node = manta(
        run_dir.path(),
        &[
            "start",
            "--address",
            &address,
            "--spill-dir",
            spill_dir.to_str().unwrap(),
        ],
    );
    assert!(node.status.success(), "{}", text(&node));
    let spill_sessions = || {
        std::fs::read_dir(&spill_dir)
            .map(|entries| entries.count())
            .unwrap_or(0)
    };
    let node_pid = std::fs::read_dir(run_dir.path())
        .unwrap()
        .filter_map(|e| e.unwrap().file_name().to_str()?.parse::<i32>().ok())
        .find(|pid| !before.contains(pid))
        .expect("the node's pid file");
    assert!(
        has_shm_session(node_pid),
        "the node's session is in /dev/shm"
    );
    // SAFETY: kill(2) of the node this test started.
    unsafe { libc::kill(node_pid, libc::SIGKILL) };
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while manta::engine::store::process_alive(node_pid) {
        assert!(
            std::time::Instant::now() < deadline,
            "the node outlived SIGKILL"
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    assert!(has_shm_session(node_pid), "a killed node cannot clean up");
    assert_eq!(spill_sessions(), 1, "its spill session is left too");
    let stop = manta(run_dir.path(), &["stop"]);
    assert!(stop.status.success(), "{}", text(&stop));
    assert!(
        !has_shm_session(node_pid),
        "manta stop left the killed node's shared memory"
    );
    assert_eq!(
        spill_sessions(),
        0,
        "manta stop left the killed node's spill session in its --spill-dir"
    );
}

/// `manta sql` over a CSV table: a query's answer in CSV and JSON (checked against sums of the
/// rows written here), a shell reading several statements (one bad: its error is printed and
/// the shell goes on), and a bad query as an argument (a failure naming the table).
#[test]
fn sql_over_files_in_every_format_and_in_a_shell() {
    let _one_at_a_time = one_store_test_at_a_time();
    let tmp = tempfile::tempdir().unwrap();
    let rows = [(1i64, "a"), (2, "b"), (3, "ü"), (40, "d")];
    let mut csv = String::from("id,name\n");
    for (id, name) in rows {
        csv.push_str(&format!("{id},{name}\n"));
    }
    let path = tmp.path().join("t.csv");
    std::fs::write(&path, csv).unwrap();
    let table = format!("t={}", path.display());
    let sum: i64 = rows.iter().map(|(id, _)| id).sum();

    let out = manta(
        tmp.path(),
        &[
            "sql",
            "--table",
            &table,
            "--format",
            "csv",
            "SELECT count(*) AS n, sum(id) AS s FROM t",
        ],
    );
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        format!("n,s\n{},{sum}\n", rows.len())
    );

    let out = manta(
        tmp.path(),
        &[
            "sql",
            "--table",
            &table,
            "--format",
            "json",
            "SELECT name FROM t WHERE id = 3",
        ],
    );
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        r#"{"name":"ü"}"#
    );

    let mut shell = Command::new(env!("CARGO_BIN_EXE_manta"))
        .args(["sql", "--table", &table, "--format", "csv"])
        .env("MANTA_RUN_DIR", tmp.path())
        .env_remove("MANTA_ADDRESS")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    use std::io::Write as _;
    shell
        .stdin
        .take()
        .unwrap()
        .write_all(b"SELECT max(id)\n  AS top FROM t;\nSELEC oops;\nSELECT count(*) AS n FROM t;\n")
        .unwrap();
    let out = shell.wait_with_output().unwrap();
    assert!(out.status.success(), "{}", text(&out));
    let top = rows.iter().map(|(id, _)| id).max().unwrap();
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        format!("top\n{top}\nn\n{}\n", rows.len())
    );
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("SELEC"),
        "{}",
        text(&out)
    );

    let out = manta(
        tmp.path(),
        &["sql", "--table", &table, "SELECT * FROM nowhere"],
    );
    assert!(!out.status.success());
    assert!(text(&out).contains("nowhere"), "{}", text(&out));
}

/// A node whose head never comes up keeps trying for `--join-timeout` seconds, then fails
/// naming the head's address.
#[test]
fn a_node_whose_head_never_comes_up_gives_up_naming_it() {
    // The node makes its store (sweeping dead sessions) before it tries the head.
    let _one_at_a_time = one_store_test_at_a_time();
    let run_dir = tempfile::tempdir().unwrap();
    // A port nobody listens on: bound, then let go.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let address = format!("127.0.0.1:{port}");
    let node = manta(
        run_dir.path(),
        &[
            "start",
            "--address",
            &address,
            "--join-timeout",
            "1",
            "--num-cpus",
            "1",
            "--block",
        ],
    );
    let out = text(&node);
    assert!(!node.status.success(), "{out}");
    assert!(
        out.contains(&format!("could not reach the Manta head at {address}")),
        "{out}"
    );
}
