//! Manta's TLS transport against a real Flight server on 127.0.0.1: objects cross it intact,
//! and clients that stall or send garbage instead of a handshake hold up nobody.

use std::sync::Arc;

use arrow::array::{Int64Array, RecordBatch, StringArray};
use manta_engine::{Block, Location, NodeId, Object, ObjectId, ObjectStore, StoreConfig};
use manta_flight::auth::{Token, guard};
use manta_flight::tls::ServerIdentity;
use manta_flight::{FlightPool, ObjectFlightService};
use tokio::io::AsyncWriteExt;

/// A certificate authority (trusted by this process) and a certificate it signed for 127.0.0.1.
fn identity() -> ServerIdentity {
    let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    let ca = rcgen::CertifiedIssuer::self_signed(ca_params, rcgen::KeyPair::generate().unwrap())
        .unwrap();
    let key = rcgen::KeyPair::generate().unwrap();
    let cert = rcgen::CertificateParams::new(vec!["127.0.0.1".into()])
        .unwrap()
        .signed_by(&key, &ca)
        .unwrap();
    manta_flight::tls::trust_pem(ca.pem().as_bytes()).unwrap();
    ServerIdentity::from_pem(cert.pem().as_bytes(), key.serialize_pem().as_bytes()).unwrap()
}

/// Serves `store` on a free port of 127.0.0.1, with TLS when given `tls`.
async fn serve(
    store: Arc<ObjectStore>,
    token: &Token,
    tls: Option<&ServerIdentity>,
) -> (Location, std::net::SocketAddr) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(guard(ObjectFlightService::new(store).into_server(), token))
            .serve_with_incoming(manta_flight::incoming(listener, tls)),
    );
    let scheme = if tls.is_some() { "https" } else { "http" };
    let location = Location {
        node: NodeId::random(),
        flight_address: format!("{scheme}://{address}").into(),
    };
    (location, address)
}

fn store(dir: &std::path::Path) -> Arc<ObjectStore> {
    ObjectStore::new(StoreConfig {
        budget_bytes: 1 << 30,
        shared_parent: Some(dir.join("shm")),
        spill_parent: dir.join("spill"),
    })
    .unwrap()
}

/// Batches of uneven sizes (an empty one, one row, many rows) with nulls and unicode, so that
/// messages end mid-record, fill several TLS records and span many socket reads.
fn batches() -> Vec<RecordBatch> {
    [0usize, 1, 70_000, 3, 250_000]
        .into_iter()
        .enumerate()
        .map(|(b, rows)| {
            let n = Int64Array::from_iter_values((0..rows as i64).map(|i| i * 7 + b as i64));
            let s = StringArray::from_iter((0..rows).map(|i| {
                (i % 5 != 0).then(|| format!("ряд {i} · партия {b} · {}", "é".repeat(i % 13)))
            }));
            RecordBatch::try_from_iter_with_nullable([
                ("n", Arc::new(n) as _, false),
                ("s", Arc::new(s) as _, true),
            ])
            .unwrap()
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_object_crosses_tls_as_it_crosses_plain_tcp() {
    let tmp = tempfile::tempdir().unwrap();
    let token = Token::generate();
    let identity = identity();
    let source = store(&tmp.path().join("source"));
    let (plain, _) = serve(Arc::clone(&source), &token, None).await;
    let (tls, _) = serve(Arc::clone(&source), &token, Some(&identity)).await;
    let id = ObjectId::random();
    let expected = batches();
    source
        .put(
            id,
            Object::Block(Block::try_new(expected[0].schema(), expected.clone()).unwrap()),
        )
        .unwrap();

    let pool = FlightPool::new(&token);
    for location in [&plain, &tls] {
        let target = store(
            &tmp.path()
                .join(location.flight_address.replace([':', '/'], "_")),
        );
        pool.pull_into(&target, location, id).await.unwrap();
        let pulled = target.get(id).unwrap().into_block(id).unwrap();
        assert_eq!(
            pulled.batches(),
            expected.as_slice(),
            "{}",
            location.flight_address
        );
        let fetched = pool
            .fetch(location, id)
            .await
            .unwrap()
            .into_block(id)
            .unwrap();
        assert_eq!(
            fetched.batches(),
            expected.as_slice(),
            "{}",
            location.flight_address
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_or_garbage_handshake_holds_up_no_other_client() {
    let tmp = tempfile::tempdir().unwrap();
    let token = Token::generate();
    let identity = identity();
    let source = store(tmp.path());
    let (tls, address) = serve(Arc::clone(&source), &token, Some(&identity)).await;
    let id = ObjectId::random();
    let expected = batches()[..2].to_vec();
    source
        .put(
            id,
            Object::Block(Block::try_new(expected[0].schema(), expected.clone()).unwrap()),
        )
        .unwrap();

    // Connections that never finish a handshake: one silent, one that sent half a TLS record
    // header, one that sent bytes that are not TLS at all.
    let silent = tokio::net::TcpStream::connect(address).await.unwrap();
    let mut half = tokio::net::TcpStream::connect(address).await.unwrap();
    half.write_all(&[0x16, 0x03, 0x01]).await.unwrap();
    let mut garbage = tokio::net::TcpStream::connect(address).await.unwrap();
    garbage
        .write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n\x00\xff")
        .await
        .unwrap();

    let pool = FlightPool::new(&token);
    let fetched = tokio::time::timeout(std::time::Duration::from_secs(30), pool.fetch(&tls, id))
        .await
        .expect("a fetch waited behind unfinished handshakes")
        .unwrap()
        .into_block(id)
        .unwrap();
    assert_eq!(fetched.batches(), expected.as_slice());
    drop((silent, half, garbage));
}

#[tokio::test]
async fn a_plain_client_of_a_tls_server_gets_an_error_not_a_hang() {
    let tmp = tempfile::tempdir().unwrap();
    let token = Token::generate();
    let identity = identity();
    let (tls, _) = serve(store(tmp.path()), &token, Some(&identity)).await;
    let plain = Location {
        node: tls.node,
        flight_address: tls.flight_address.replace("https://", "http://").into(),
    };
    let error = FlightPool::new(&token)
        .fetch(&plain, ObjectId::random())
        .await
        .unwrap_err();
    assert!(error.to_string().contains("127.0.0.1"), "{error}");
}
