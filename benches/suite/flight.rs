//! `flight`: pull a 1 GiB object from another process's store over Arrow Flight on loopback,
//! into this process's shared-memory store. Baseline: a raw TCP copy of the same bytes.
//!
//! The serving side is this binary again (`--serve-flight`): a node-like process with a
//! shared-memory store holding the object (1 MiB batches, the size readers produce), a Flight
//! endpoint and a plain TCP endpoint that writes the object's stored bytes.
//!
//! What security costs: the serving process has three Flight endpoints over the same store:
//! one without the token check (no `RequireToken`, as before tokens), one with it (what nodes
//! serve), and one with the token and TLS (a certificate made for the run with rcgen). The big
//! pull runs against the last two (`mode=loopback`, `mode=loopback-tls`); a small object
//! fetched 5,000 times one after another, one call each, against all three (`small-calls`):
//! the per-call cost of the token check, which a task or actor call pays at most once (they
//! travel many to a call, on streams).
//!
//! Both processes share the machine's cores unless `--split-cpus` puts the serving process on
//! CPU 0 and the pulling one on CPU 1: two hosts with a core each, where what TLS costs one
//! side does not slow the other (`cpus=split` in each result line).

use std::io::{BufRead, BufReader, Read, Write};
use std::process::{Command, Stdio};
use std::sync::Arc;

use manta::engine::{Location, NodeId, Object, ObjectId, ObjectStore, StoreConfig};
use manta::flight::{FlightPool, ObjectFlightService};

use crate::{Args, numbers_block, timed};

const OBJECT_BYTES: usize = 1 << 30;
const BATCH_ROWS: usize = 64 * 1024;

/// The cluster token the serving process requires, handed to it by `run`.
const TOKEN_ENV: &str = "MANTA_BENCH_FLIGHT_TOKEN";

/// The serving process's TLS certificate and key (PEM files), handed to it by `run`.
const CERT_ENV: &str = "MANTA_BENCH_FLIGHT_CERT";
const KEY_ENV: &str = "MANTA_BENCH_FLIGHT_KEY";

/// The serving process's CPU under `--split-cpus`, handed to it by `run`.
const CPU_ENV: &str = "MANTA_BENCH_FLIGHT_CPU";

/// Small objects fetched one call at a time, per endpoint.
const SMALL_CALLS: usize = 5_000;

/// Keeps this thread, and the threads it starts from now on, on CPU `cpu`.
fn pin_to_cpu(cpu: usize) -> anyhow::Result<()> {
    // SAFETY: a zeroed cpu_set_t is an empty set; CPU_SET writes inside it; the call reads
    // `size_of` bytes of it.
    let ok = unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu, &mut set);
        libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set) == 0
    };
    anyhow::ensure!(
        ok,
        "pinning to CPU {cpu}: {}",
        std::io::Error::last_os_error()
    );
    Ok(())
}

pub fn serve(_args: &Args) -> anyhow::Result<()> {
    if let Ok(cpu) = std::env::var(CPU_ENV) {
        pin_to_cpu(cpu.parse()?)?;
    }
    let token = manta::Token::new(&std::env::var(TOKEN_ENV)?)?;
    let identity = manta::flight::tls::ServerIdentity::from_files(
        std::env::var(CERT_ENV)?.as_ref(),
        std::env::var(KEY_ENV)?.as_ref(),
    )?;
    let store = ObjectStore::new(StoreConfig::shared(u64::MAX))?;
    let id = ObjectId::random();
    let size = store.put(id, Object::Block(numbers_block(OBJECT_BYTES, BATCH_ROWS)))?;
    let small = ObjectId::random();
    store.put(small, Object::Block(numbers_block(1024, 64)))?;
    let runtime = tokio::runtime::Runtime::new()?;
    let (addresses, tcp_address) = runtime.block_on(async {
        let mut addresses = Vec::new();
        for (guarded, tls) in [(false, None), (true, None), (true, Some(&identity))] {
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
            let address = listener.local_addr()?;
            let service = ObjectFlightService::new(Arc::clone(&store)).into_server();
            let mut builder = manta::scheduler::server::server_builder();
            let router = match guarded {
                true => builder.add_service(manta::flight::auth::guard(service, &token)),
                false => builder.add_service(service),
            };
            tokio::spawn(router.serve_with_incoming(manta::flight::incoming(listener, tls)));
            let scheme = if tls.is_some() { "https" } else { "http" };
            addresses.push(format!("{scheme}://{address}"));
        }
        anyhow::Ok((addresses, std::net::TcpListener::bind("127.0.0.1:0")?))
    })?;
    let raw_address = tcp_address.local_addr()?;
    let bytes = store.stored_bytes(id)?;
    std::thread::spawn(move || {
        for stream in tcp_address.incoming().flatten() {
            let mut stream = stream;
            let _ = stream.set_nodelay(true);
            let _ = stream.write_all(&bytes);
        }
    });
    println!(
        "READY {} {raw_address} {id} {size} {small}",
        addresses.join(",")
    );
    // Serve until the parent closes our stdin.
    let _ = std::io::stdin().read_to_end(&mut Vec::new());
    Ok(())
}

pub fn run(args: &Args) -> anyhow::Result<()> {
    let token = manta::Token::generate();
    let certificates = tempfile::tempdir()?;
    let (ca, cert, key) = certificates_for_localhost(certificates.path())?;
    manta::flight::tls::trust_file(&ca)?;
    let mut server = Command::new(std::env::current_exe()?);
    server
        .args(["flight", "--serve-flight"])
        .env(TOKEN_ENV, token.secret())
        .env(CERT_ENV, &cert)
        .env(KEY_ENV, &key)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped());
    let cpus = if args.split_cpus {
        server.env(CPU_ENV, "0");
        pin_to_cpu(1)?;
        "split"
    } else {
        "shared"
    };
    let mut child = server.spawn()?;
    let mut line = String::new();
    BufReader::new(child.stdout.as_mut().unwrap()).read_line(&mut line)?;
    let parts: Vec<&str> = line.split_whitespace().collect();
    anyhow::ensure!(
        parts.len() == 6 && parts[0] == "READY",
        "flight server did not start: {line:?}"
    );
    let endpoints: Vec<Location> = parts[1]
        .split(',')
        .map(|address| Location {
            node: NodeId::random(),
            flight_address: address.into(),
        })
        .collect();
    let (unguarded, location, tls) = (&endpoints[0], &endpoints[1], &endpoints[2]);
    let raw_address = parts[2].to_string();
    let id: ObjectId = parts[3].parse()?;
    let size: usize = parts[4].parse()?;
    let small: ObjectId = parts[5].parse()?;

    let store = ObjectStore::new(StoreConfig::shared(u64::MAX))?;
    let pool = FlightPool::new(&token);
    let runtime = tokio::runtime::Runtime::new()?;
    for run in 1..=args.runs {
        for (mode, location) in [("loopback", location), ("loopback-tls", tls)] {
            let (seconds, received) =
                timed(|| runtime.block_on(pool.pull_into(&store, location, id)));
            let received = received?;
            let block = store.get(id)?.into_block(id)?;
            anyhow::ensure!(
                block.num_rows() == OBJECT_BYTES / 16,
                "pulled object is incomplete"
            );
            drop(block);
            store.free(id);
            println!(
                "RESULT workload=flight mode={mode} cpus={cpus} run={run} seconds={seconds:.3} bytes={received} gbps={:.2}",
                size as f64 / seconds / 1e9
            );
        }
    }
    for run in 1..=args.runs {
        for (mode, location) in [
            ("small-calls-no-token", unguarded),
            ("small-calls-token", location),
            ("small-calls-token-tls", tls),
        ] {
            let (seconds, fetched) = timed(|| {
                runtime.block_on(async {
                    for _ in 0..SMALL_CALLS {
                        pool.fetch(location, small).await?;
                    }
                    anyhow::Ok(())
                })
            });
            fetched?;
            println!(
                "RESULT workload=flight mode={mode} cpus={cpus} run={run} seconds={seconds:.3} calls_per_s={:.0}",
                SMALL_CALLS as f64 / seconds
            );
        }
    }
    for run in 1..=args.runs {
        let (seconds, object) = timed(|| runtime.block_on(pool.fetch(location, id)));
        let rows = object?.into_block(id)?.num_rows();
        anyhow::ensure!(rows == OBJECT_BYTES / 16, "fetched object is incomplete");
        println!(
            "RESULT workload=flight mode=loopback-into-memory cpus={cpus} run={run} seconds={seconds:.3} gbps={:.2}",
            size as f64 / seconds / 1e9
        );
    }
    for run in 1..=args.runs {
        // Only the transfer: the messages are dropped as they arrive.
        let (seconds, bytes) = timed(|| runtime.block_on(drain(location, id, &token)));
        let bytes = bytes?;
        println!(
            "RESULT workload=flight mode=loopback-drain cpus={cpus} run={run} seconds={seconds:.3} bytes={bytes} gbps={:.2}",
            bytes as f64 / seconds / 1e9
        );
    }
    if !args.no_baseline {
        // One buffer, touched before timing, so the copy is measured rather than page faults.
        let mut buffer = vec![1u8; size];
        for run in 1..=args.runs {
            let mut stream = std::net::TcpStream::connect(&raw_address)?;
            let (seconds, ()) = timed(|| stream.read_exact(&mut buffer).unwrap());
            println!(
                "BASELINE workload=flight engine=raw-tcp cpus={cpus} run={run} seconds={seconds:.3} bytes={size} gbps={:.2}",
                size as f64 / seconds / 1e9
            );
        }
    }
    drop(child.stdin.take());
    let _ = child.wait();
    Ok(())
}

/// A certificate authority and a certificate it signed for 127.0.0.1, as PEM files in `dir`:
/// (authority, certificate, key).
fn certificates_for_localhost(
    dir: &std::path::Path,
) -> anyhow::Result<(std::path::PathBuf, std::path::PathBuf, std::path::PathBuf)> {
    let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new())?;
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    let ca = rcgen::CertifiedIssuer::self_signed(ca_params, rcgen::KeyPair::generate()?)?;
    let key = rcgen::KeyPair::generate()?;
    let cert = rcgen::CertificateParams::new(vec!["127.0.0.1".into()])?.signed_by(&key, &ca)?;
    let paths = (
        dir.join("ca.pem"),
        dir.join("cert.pem"),
        dir.join("key.pem"),
    );
    std::fs::write(&paths.0, ca.pem())?;
    std::fs::write(&paths.1, cert.pem())?;
    std::fs::write(&paths.2, key.serialize_pem())?;
    Ok(paths)
}

async fn drain(location: &Location, id: ObjectId, token: &manta::Token) -> anyhow::Result<u64> {
    let endpoint = manta::flight::tune_endpoint(tonic::transport::Endpoint::from_shared(
        location.flight_address.to_string(),
    )?);
    let mut client = arrow_flight::flight_service_client::FlightServiceClient::new(
        manta::flight::auth::with_token(endpoint.connect().await?, token),
    )
    .max_decoding_message_size(1 << 30);
    let mut stream = client
        .do_get(arrow_flight::Ticket {
            ticket: bytes::Bytes::copy_from_slice(id.as_bytes()),
        })
        .await?
        .into_inner();
    let mut bytes = 0;
    while let Some(data) = stream.message().await? {
        bytes += (data.data_header.len() + data.data_body.len()) as u64;
    }
    Ok(bytes)
}
