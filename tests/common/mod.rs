//! Shared by the end-to-end tests: the quickstart pipeline, an independent way to compute its
//! result (DataFusion SQL), and a loopback cluster of real `manta` processes.

#![allow(dead_code)]

pub mod batch_tasks;
pub mod gate;
pub mod hosts;
pub mod tpch;
pub mod trainables;

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use std::sync::Arc;

use arrow::array::{Array, Float64Array, RecordBatch};
use arrow::datatypes::DataType;
use arrow::util::display::{ArrayFormatter, FormatOptions};
use datafusion::prelude::{ParquetReadOptions, SessionContext};
use manta::{Checksum, MapBatchesOptions, ReadOptions};

/// An embedded context of two CPUs, as most tests of one process use.
pub fn embedded() -> manta::Context {
    manta::init_with(manta::Config {
        num_cpus: Some(2),
        ..Default::default()
    })
    .unwrap()
}

/// A test of a test binary without libtest's harness (`harness = false`, so that `main` can
/// first let a worker process become one): its name and body, given what the tests share.
pub type Test<T> = (&'static str, fn(&T));

/// Runs the tests whose name contains the binary's first argument (every test without
/// one), each caught on its own, and exits with status 1 naming how many failed.
pub fn run_tests<T>(kind: &str, tests: &[Test<T>], shared: T) {
    let filter = std::env::args().nth(1).filter(|a| !a.starts_with('-'));
    let mut failed = 0;
    for (name, test) in tests
        .iter()
        .filter(|(name, _)| filter.as_deref().is_none_or(|f| name.contains(f)))
    {
        println!("test {name} ...");
        match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| test(&shared))) {
            Ok(()) => println!("test {name} ... ok"),
            Err(_) => {
                println!("test {name} ... FAILED");
                failed += 1;
            }
        }
    }
    drop(shared);
    if failed > 0 {
        eprintln!("{failed} {kind} test(s) failed");
        std::process::exit(1);
    }
}

/// Waits (up to 30 s, looking every 100 ms) until `condition` holds; fails naming `what`.
pub fn eventually(what: &str, condition: impl FnMut() -> bool) {
    eventually_within(std::time::Duration::from_secs(30), what, condition)
}

/// [`eventually`] with a deadline of its own.
pub fn eventually_within(
    limit: std::time::Duration,
    what: &str,
    mut condition: impl FnMut() -> bool,
) {
    let deadline = std::time::Instant::now() + limit;
    while !condition() {
        assert!(std::time::Instant::now() < deadline, "never: {what}");
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
}

/// A TCP port of 127.0.0.1 that nothing listens on (now).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// The processes whose parent is `pid`.
pub fn children_of(pid: u32) -> Vec<u32> {
    std::fs::read_dir("/proc")
        .unwrap()
        .filter_map(|entry| entry.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|child| {
            std::fs::read_to_string(format!("/proc/{child}/stat"))
                .ok()
                .and_then(|stat| {
                    // The parent pid is the second field after the parenthesised name.
                    let after_name = stat.rsplit_once(')')?.1;
                    after_name.split_whitespace().nth(1)?.parse::<u32>().ok()
                })
                == Some(pid)
        })
        .collect()
}

/// Generates a small lineitem with many row groups (so many tasks), once per test binary run.
pub fn small_lineitem(root: &Path) -> PathBuf {
    manta::tpch::lineitem_with(root, 0.01, 4096).expect("generate lineitem")
}

/// Reads in tasks of one row group each.
pub fn small_tasks() -> ReadOptions {
    ReadOptions {
        rows_per_task: 4096,
        ..Default::default()
    }
}

/// The quickstart pipeline; `read` and `map` place its two halves (defaults: fused).
pub fn etl(
    ctx: &manta::Context,
    input: &Path,
    read: ReadOptions,
    map: MapBatchesOptions,
) -> manta::Dataset {
    manta::tpch::etl(ctx, input, read, map).expect("read lineitem")
}

/// The quickstart's result computed by DataFusion SQL over the same files.
pub fn expected_etl(input: &Path) -> Checksum {
    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(async {
        let ctx = datafusion::prelude::SessionContext::new();
        ctx.register_parquet("lineitem", input.to_str().unwrap(), Default::default()).await.unwrap();
        let batches = ctx
            .sql(
                "SELECT *, l_extendedprice * (1 - l_discount) AS revenue, upper(l_shipmode) AS l_shipmode_upper \
                 FROM lineitem WHERE l_shipdate <= DATE '1998-09-02' AND l_discount > 0.05",
            )
            .await
            .unwrap()
            .collect()
            .await
            .unwrap();
        Checksum::of(&batches).unwrap()
    })
}

/// The checksum of every Parquet file under `dir`, read with the parquet crate directly.
pub fn checksum_of_parquet_dir(dir: &Path) -> Checksum {
    let mut checksum = Checksum::default();
    let mut files: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    files.sort();
    for file in files {
        let reader = parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new(
            std::fs::File::open(&file).unwrap(),
        )
        .unwrap()
        .build()
        .unwrap();
        for batch in reader {
            checksum.update(&batch.unwrap()).unwrap();
        }
    }
    checksum
}

/// A process started by a test, stopped (SIGTERM, then waited for) when dropped.
pub struct Process {
    pub child: Child,
    pub address: String,
    /// A head's Flight SQL endpoint, when started with `--flight-sql-port`.
    pub flight_sql: Option<String>,
}

impl Process {
    /// Runs `manta start ... --block` and waits for its ready line.
    pub fn start(args: &[&str]) -> Process {
        Self::start_from(Command::new(env!("CARGO_BIN_EXE_manta")), args)
    }

    /// Runs `command start ... --block` (a command that runs `manta`, maybe through another
    /// program) and waits for its ready line.
    pub fn start_from(mut command: Command, args: &[&str]) -> Process {
        let mut child = command
            .arg("start")
            .args(args)
            .arg("--block")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .spawn()
            .expect("start manta");
        let mut stdout = BufReader::new(child.stdout.take().unwrap());
        let mut line = String::new();
        stdout.read_line(&mut line).unwrap();
        // Keep draining: worker processes inherit this pipe, and a full pipe would block them.
        std::thread::spawn(move || std::io::copy(&mut stdout, &mut std::io::sink()));
        // MANTA_READY <address> [flight-sql=<address>]
        let mut ready = line
            .trim()
            .strip_prefix("MANTA_READY ")
            .unwrap_or_else(|| panic!("manta start {args:?} did not get ready: {line:?}"))
            .split_whitespace();
        let address = ready.next().expect("an address").to_string();
        let flight_sql = ready
            .find_map(|part| part.strip_prefix("flight-sql="))
            .map(str::to_string);
        Process {
            child,
            address,
            flight_sql,
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// SIGTERM and wait.
    /// Asks the process to stop (SIGTERM) and waits for it; one that is still running 30 s
    /// later is killed, and says so, so that a shutdown bug fails loudly instead of hanging.
    pub fn stop(&mut self) {
        // SAFETY: kill(2) of our own child.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let pid = self.child.id() as i32;
        let (exited, waiting) = std::sync::mpsc::channel::<()>();
        let watchdog = std::thread::spawn(move || {
            if waiting
                .recv_timeout(std::time::Duration::from_secs(30))
                .is_err()
            {
                eprintln!("process {pid} ignored SIGTERM for 30 s: killed");
                // SAFETY: kill(2) of our own child, not yet reaped.
                unsafe { libc::kill(pid, libc::SIGKILL) };
            }
        });
        let _ = self.child.wait();
        let _ = exited.send(());
        let _ = watchdog.join();
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A certificate authority made at test time, and a server certificate it signed for
/// 127.0.0.1 and localhost, as PEM files in a directory.
pub struct TestCa {
    pub ca: PathBuf,
    pub cert: PathBuf,
    pub key: PathBuf,
}

impl TestCa {
    pub fn new(dir: &Path) -> TestCa {
        let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        let ca =
            rcgen::CertifiedIssuer::self_signed(ca_params, rcgen::KeyPair::generate().unwrap())
                .unwrap();
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = rcgen::CertificateParams::new(vec!["127.0.0.1".into(), "localhost".into()])
            .unwrap()
            .signed_by(&key, &ca)
            .unwrap();
        let files = TestCa {
            ca: dir.join("ca.pem"),
            cert: dir.join("cert.pem"),
            key: dir.join("key.pem"),
        };
        std::fs::write(&files.ca, ca.pem()).unwrap();
        std::fs::write(&files.cert, cert.pem()).unwrap();
        std::fs::write(&files.key, key.serialize_pem()).unwrap();
        files
    }

    /// `--tls-cert .. --tls-key .. --tls-ca ..`
    pub fn args(&self) -> Vec<String> {
        [
            ("--tls-cert", &self.cert),
            ("--tls-key", &self.key),
            ("--tls-ca", &self.ca),
        ]
        .into_iter()
        .flat_map(|(flag, path)| [flag.to_string(), path.display().to_string()])
        .collect()
    }
}

/// A head and nodes on 127.0.0.1.
pub struct Cluster {
    pub nodes: Vec<Process>,
    pub head: Process,
}

impl Cluster {
    /// A head and one node per entry of `node_resources` (custom resources, e.g. "a=1").
    pub fn start(node_resources: &[&str]) -> Cluster {
        Self::start_with_head(&["--head", "--port", "0"], node_resources)
    }

    /// A head started with `head_args` and one node per entry of `node_resources`.
    pub fn start_with_head(head_args: &[&str], node_resources: &[&str]) -> Cluster {
        Self::start_with(head_args, node_resources, &[])
    }

    /// A head started with `head_args`, one node per entry of `node_resources`, each node
    /// started with `node_args` too (a store of 1 GiB unless they say otherwise).
    /// The head schedules nothing (`--num-cpus 0`): the tests place work on the nodes.
    pub fn start_with(head_args: &[&str], node_resources: &[&str], node_args: &[&str]) -> Cluster {
        let head = Process::start(&[head_args, &["--num-cpus", "0"]].concat());
        let nodes = node_resources
            .iter()
            .map(|resources| {
                let mut args = vec![
                    "--address",
                    &head.address,
                    "--num-cpus",
                    "2",
                    "--resources",
                    resources,
                ];
                if !node_args.contains(&"--object-store-memory") {
                    args.extend(["--object-store-memory", "1GiB"]);
                }
                args.extend_from_slice(node_args);
                Process::start(&args)
            })
            .collect();
        Cluster { head, nodes }
    }

    /// A driver context joined to this cluster.
    pub fn connect(&self) -> manta::Context {
        self.connect_with(manta::Config::default())
    }

    /// A driver context joined to this cluster, configured as `config` says besides.
    pub fn connect_with(&self, config: manta::Config) -> manta::Context {
        manta::init_with(manta::Config {
            address: Some(self.head.address.clone()),
            // Small test data still takes the partitioned reduce path: each reducer fetching
            // (and pulling over Flight) its partition of every map output.
            small_exchange_bytes: Some(0),
            ..config
        })
        .expect("join the cluster")
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for node in &mut self.nodes {
            node.stop();
        }
        self.head.stop();
    }
}

/// A task on a node with this custom resource.
pub fn on(resource: &str) -> manta::Resources {
    manta::Resources {
        cpus: 1.0,
        memory_bytes: 0,
        custom: [(resource.to_string(), 0.5)].into(),
    }
}

/// Each row as text (floats to 9 significant digits, so sums in another order compare equal).
pub fn rows(batches: &[RecordBatch]) -> Vec<String> {
    let options = FormatOptions::default().with_null("NULL");
    let mut out = Vec::new();
    for batch in batches {
        let columns: Vec<Box<dyn Fn(usize) -> String>> = batch
            .columns()
            .iter()
            .map(|c| -> Box<dyn Fn(usize) -> String> {
                match c.data_type() {
                    DataType::Float64 => {
                        let c = c.as_any().downcast_ref::<Float64Array>().unwrap().clone();
                        Box::new(move |i| {
                            if c.is_null(i) {
                                "NULL".into()
                            } else {
                                format!("{:.8e}", c.value(i))
                            }
                        })
                    }
                    _ => {
                        let c = Arc::clone(c);
                        let options = options.clone();
                        Box::new(move |i| {
                            ArrayFormatter::try_new(c.as_ref(), &options)
                                .unwrap()
                                .value(i)
                                .to_string()
                        })
                    }
                }
            })
            .collect();
        for i in 0..batch.num_rows() {
            out.push(columns.iter().map(|f| f(i)).collect::<Vec<_>>().join("|"));
        }
    }
    out
}

pub fn sorted(mut rows: Vec<String>) -> Vec<String> {
    rows.sort();
    rows
}

pub fn sql(df: &SessionContext, query: &str) -> Vec<RecordBatch> {
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async { df.sql(query).await.unwrap().collect().await.unwrap() })
}

pub fn lineitem_sql(input: &Path) -> SessionContext {
    parquet_sql("lineitem", input.to_str().unwrap())
}

/// Writes `batch` to a new Parquet file at `path`.
pub fn write_parquet_file(
    path: &Path,
    batch: &RecordBatch,
    properties: parquet::file::properties::WriterProperties,
) {
    let out = std::fs::File::create(path).unwrap();
    let mut writer =
        parquet::arrow::ArrowWriter::try_new(out, batch.schema(), Some(properties)).unwrap();
    writer.write(batch).unwrap();
    writer.close().unwrap();
}

/// The dataset's rows, sorted, each of its batches checked to have the types its schema
/// promises.
pub fn promised_rows(ds: &manta::Dataset) -> Vec<String> {
    let promised = ds.schema().unwrap();
    let batches = ds.to_arrow().unwrap();
    let types = |fields: &arrow::datatypes::Fields| -> Vec<DataType> {
        fields.iter().map(|f| f.data_type().clone()).collect()
    };
    for batch in &batches {
        assert_eq!(
            types(batch.schema().fields()),
            types(promised.fields()),
            "the output's types"
        );
    }
    sorted(rows(&batches))
}

/// For each of `seeds`: the Parquet files `write` makes in a fresh directory from a generator
/// of that seed, and `check` given the seed, the generator, the directory and a DataFusion
/// session with the files as table `t`.
pub fn for_seeded_files(
    seeds: std::ops::Range<u64>,
    write: fn(&mut rand::rngs::StdRng, &Path),
    mut check: impl FnMut(u64, &mut rand::rngs::StdRng, &str, &SessionContext),
) {
    use rand::SeedableRng;
    for seed in seeds {
        let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("t");
        write(&mut rng, &dir);
        let path = dir.to_str().unwrap();
        check(seed, &mut rng, path, &parquet_sql("t", path));
    }
}

/// A plain DataFusion session with the Parquet files at `path` as table `name`.
pub fn parquet_sql(name: &str, path: &str) -> SessionContext {
    let df = SessionContext::new();
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(df.register_parquet(name, path, ParquetReadOptions::default()))
        .unwrap();
    df
}

/// Two embedded contexts of two CPUs: one as [`embedded`], and one that exchanges through
/// the store however small the exchange.
pub fn embedded_and_exchanged() -> [manta::Context; 2] {
    [
        embedded(),
        manta::init_with(manta::Config {
            num_cpus: Some(2),
            small_exchange_bytes: Some(0),
            ..Default::default()
        })
        .unwrap(),
    ]
}

/// A TCP relay on 127.0.0.1 to `target` whose link can be cut without closing it: after
/// [`Relay::cut`] no byte crosses in either direction and no connection is closed or refused,
/// which is what a network partition looks like to both ends.
pub struct Relay {
    /// The relay's `127.0.0.1:port`.
    pub address: String,
    cut: tokio::sync::watch::Sender<bool>,
    _runtime: tokio::runtime::Runtime,
}

impl Relay {
    /// Relays connections to `target` (`host:port`).
    pub fn start(target: &str) -> Relay {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        let listener = runtime
            .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
            .unwrap();
        let address = listener.local_addr().unwrap().to_string();
        let (cut, is_cut) = tokio::sync::watch::channel(false);
        let target = target.to_string();
        runtime.spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let Ok(server) = tokio::net::TcpStream::connect(&target).await else {
                    continue;
                };
                let (client_read, client_write) = client.into_split();
                let (server_read, server_write) = server.into_split();
                tokio::spawn(relay_one_way(client_read, server_write, is_cut.clone()));
                tokio::spawn(relay_one_way(server_read, client_write, is_cut.clone()));
            }
        });
        Relay {
            address,
            cut,
            _runtime: runtime,
        }
    }

    /// Cuts the link: from now on bytes stop in both directions, and connections stay open.
    pub fn cut(&self) {
        self.cut.send_replace(true);
    }
}

async fn relay_one_way(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    mut is_cut: tokio::sync::watch::Receiver<bool>,
) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut buffer = vec![0u8; 64 << 10];
    loop {
        let read = tokio::select! {
            read = from.read(&mut buffer) => read,
            _ = is_cut.wait_for(|cut| *cut) => break,
        };
        match read {
            Ok(0) | Err(_) => return,
            Ok(n) if !*is_cut.borrow() => {
                if to.write_all(&buffer[..n]).await.is_err() {
                    return;
                }
            }
            Ok(_) => break,
        }
    }
    // Cut: hold both ends open, silent, for as long as the relay lives.
    std::future::pending::<()>().await;
    drop((from, to));
}

/// One HTTP/1.1 request to `address`; (status code, body).
pub fn http(
    address: &str,
    method: &str,
    path: &str,
    token: Option<&str>,
    body: &str,
) -> (u16, String) {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(address).unwrap();
    stream
        .set_read_timeout(Some(std::time::Duration::from_secs(30)))
        .unwrap();
    let auth = token.map_or(String::new(), |t| format!("Authorization: Bearer {t}\r\n"));
    write!(
        stream,
        "{method} {path} HTTP/1.1\r\nHost: {address}\r\n{auth}Content-Type: application/json\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).unwrap();
    let (head, body) = response.split_once("\r\n\r\n").unwrap_or((&response, ""));
    let code = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    (code, body.to_string())
}
