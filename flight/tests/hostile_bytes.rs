//! What a peer can send the data plane, at random: the decoders that face the network answer
//! every input, valid or not, with a value or an error, never a panic or a hang, and a node's
//! Flight service goes on serving.
//!
//! * Stored objects (what a `DoPut` becomes): random bytes, and real objects truncated or with
//!   bytes changed, through the validating decoder (`read_object_validated`) and the IPC
//!   message splitter (`ipc_messages`).
//! * `DoPut` itself, over a real server: real objects' Flight messages with their metadata,
//!   headers and bodies changed or cut, and messages of random bytes. The server refuses them
//!   (or stores a valid object), stores nothing else, and still answers a valid put and get.
//! * `DoGet` tickets, over the same server: random bytes, and many-part tickets naming stored
//!   and missing objects at any batch index; each call answers in time.

use std::sync::Arc;

use arrow::array::{Int64Array, RecordBatch, StringArray};
use arrow_flight::FlightData;
use bytes::Bytes;
use manta_engine::store::{ipc_messages, read_object_validated, write_object};
use manta_engine::{Location, NodeId, Object, ObjectId, ObjectStore, StoreConfig};
use manta_flight::auth::{Token, guard, with_token};
use manta_flight::service::object_messages;
use manta_flight::{FlightPool, ObjectFlightService};
use proptest::prelude::*;

/// A real stored block of `rows` rows (nullable strings, some of them unicode).
fn stored_block(rows: usize) -> Vec<u8> {
    let n = Int64Array::from_iter_values(0..rows as i64);
    let s = StringArray::from_iter((0..rows).map(|i| (i % 3 != 0).then(|| format!("é{i}✓"))));
    let batch =
        RecordBatch::try_from_iter([("n", Arc::new(n) as _), ("s", Arc::new(s) as _)]).unwrap();
    let mut out = Vec::new();
    write_object(&mut out, &Object::from(batch)).unwrap();
    out
}

/// A change to a real object's bytes.
#[derive(Clone, Debug)]
enum Damage {
    Truncate(usize),
    Set(Vec<(usize, u8)>),
}

fn damage() -> impl Strategy<Value = Damage> {
    prop_oneof![
        any::<usize>().prop_map(Damage::Truncate),
        proptest::collection::vec((any::<usize>(), any::<u8>()), 1..16).prop_map(Damage::Set),
    ]
}

fn apply(mut bytes: Vec<u8>, damage: &Damage) -> Vec<u8> {
    match damage {
        Damage::Truncate(at) => bytes.truncate(at % (bytes.len() + 1)),
        Damage::Set(changes) => {
            let len = bytes.len();
            for (at, value) in changes {
                bytes[at % len] = *value;
            }
        }
    }
    bytes
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn the_validating_decoder_never_panics(
        rows in 0usize..200,
        damage in damage(),
        noise in proptest::collection::vec(any::<u8>(), 0..512),
    ) {
        let id = ObjectId::random();
        let damaged = apply(stored_block(rows), &damage);
        let _ = read_object_validated(id, Bytes::from(damaged.clone()));
        if damaged.len() > manta_engine::store::HEADER_LEN {
            for message in ipc_messages(Bytes::from(damaged).slice(manta_engine::store::HEADER_LEN..)) {
                if message.is_err() {
                    break;
                }
            }
        }
        let _ = read_object_validated(id, Bytes::from(noise.clone()));
        let mut framed = b"MANTAOBJ".to_vec();
        framed.extend_from_slice(&noise);
        let _ = read_object_validated(id, Bytes::from(framed));
    }
}

fn token() -> &'static Token {
    static TOKEN: std::sync::OnceLock<Token> = std::sync::OnceLock::new();
    TOKEN.get_or_init(Token::generate)
}

/// What a hostile `DoPut` sends: a real object's messages, damaged.
#[derive(Clone, Debug)]
enum Hostile {
    /// The first message's metadata replaced.
    Metadata(Vec<u8>),
    /// One message's flatbuffer header damaged.
    Header(usize, Damage),
    /// One message's body damaged.
    Body(usize, Damage),
    /// Messages dropped from the end.
    Cut(usize),
    /// Random messages after a valid first one's metadata.
    Noise(Vec<(Vec<u8>, Vec<u8>)>),
}

fn hostile() -> impl Strategy<Value = Hostile> {
    let bytes = || proptest::collection::vec(any::<u8>(), 0..64);
    prop_oneof![
        prop_oneof![
            bytes(),
            (0usize..1 << 20).prop_map(|n| format!("manta:block:{n}").into_bytes()),
            Just(b"manta:bytes:-1".to_vec()),
            Just(b"manta:block:18446744073709551616".to_vec()),
        ]
        .prop_map(Hostile::Metadata),
        (any::<usize>(), damage()).prop_map(|(i, d)| Hostile::Header(i, d)),
        (any::<usize>(), damage()).prop_map(|(i, d)| Hostile::Body(i, d)),
        (1usize..8).prop_map(Hostile::Cut),
        proptest::collection::vec((bytes(), bytes()), 0..4).prop_map(Hostile::Noise),
    ]
}

fn hostile_messages(id: ObjectId, stored: Vec<u8>, hostile: &Hostile) -> Vec<FlightData> {
    let mut messages = object_messages(id, Bytes::from(stored)).unwrap();
    let n = messages.len();
    match hostile {
        Hostile::Metadata(metadata) => messages[0].app_metadata = Bytes::from(metadata.clone()),
        Hostile::Header(i, d) => {
            let m = &mut messages[i % n];
            m.data_header = Bytes::from(apply(m.data_header.to_vec(), d));
        }
        Hostile::Body(i, d) => {
            let m = &mut messages[i % n];
            if !m.data_body.is_empty() {
                m.data_body = Bytes::from(apply(m.data_body.to_vec(), d));
            }
        }
        Hostile::Cut(k) => messages.truncate(n.saturating_sub(*k).max(1)),
        Hostile::Noise(noise) => {
            messages.truncate(1);
            messages.extend(noise.iter().map(|(header, body)| FlightData {
                data_header: Bytes::from(header.clone()),
                data_body: Bytes::from(body.clone()),
                ..Default::default()
            }));
        }
    }
    messages[0].flight_descriptor = Some(arrow_flight::FlightDescriptor::new_cmd(
        id.as_bytes().to_vec(),
    ));
    messages
}

#[test]
fn hostile_puts_are_refused_and_the_node_goes_on() {
    let tmp = tempfile::tempdir().unwrap();
    let store = ObjectStore::new(StoreConfig {
        budget_bytes: 64 << 20,
        shared_parent: Some(tmp.path().join("shm")),
        spill_parent: tmp.path().join("spill"),
    })
    .unwrap();
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let (location, client) = runtime.block_on(async {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        tokio::spawn(
            tonic::transport::Server::builder()
                .add_service(guard(
                    ObjectFlightService::new(Arc::clone(&store)).into_server(),
                    token(),
                ))
                .serve_with_incoming(manta_flight::incoming(listener, None)),
        );
        let url = format!("http://{address}");
        let channel = tonic::transport::Endpoint::from_shared(url.clone())
            .unwrap()
            .connect()
            .await
            .unwrap();
        let location = Location {
            node: NodeId::random(),
            flight_address: url.into(),
        };
        let client = arrow_flight::flight_service_client::FlightServiceClient::new(with_token(
            channel,
            token(),
        ));
        (location, client)
    });

    let stored_ok = std::cell::Cell::new(0u64);
    let mut runner = proptest::test_runner::TestRunner::new(ProptestConfig::with_cases(200));
    runner
        .run(&(0usize..100, hostile()), |(rows, hostile)| {
            let id = ObjectId::random();
            let messages = hostile_messages(id, stored_block(rows), &hostile);
            let answer = runtime.block_on(async {
                tokio::time::timeout(
                    std::time::Duration::from_secs(10),
                    client.clone().do_put(futures::stream::iter(messages)),
                )
                .await
            });
            let answer =
                answer.map_err(|_| TestCaseError::fail(format!("DoPut hung: {hostile:?}")))?;
            match answer {
                // A change the validating decoder accepts (a different but valid value).
                Ok(_) => {
                    prop_assert!(store.contains(id));
                    stored_ok.set(stored_ok.get() + 1);
                }
                Err(status) => {
                    prop_assert!(!store.contains(id), "a refused put left {id}: {status}");
                }
            }
            Ok(())
        })
        .unwrap();
    assert_eq!(
        store.usage().objects,
        stored_ok.get(),
        "only accepted puts are stored"
    );

    // Hostile tickets: random bytes, and parts of a stored block and of missing objects at
    // any batch index. Every DoGet answers in time (messages, or an error), and the node goes
    // on serving.
    let real = ObjectId::random();
    let block = manta_engine::store::read_object(real, Bytes::from(stored_block(50))).unwrap();
    store.put(real, block).unwrap();
    let tickets = prop_oneof![
        proptest::collection::vec(any::<u8>(), 0..120),
        proptest::collection::vec((any::<bool>(), any::<u32>()), 1..8).prop_map(move |parts| {
            let parts: Vec<_> = parts
                .into_iter()
                .map(|(stored, batch)| {
                    let id = if stored { real } else { ObjectId::random() };
                    (id, if batch % 2 == 0 { batch % 3 } else { batch })
                })
                .collect();
            manta_flight::ticket::encode_parts(&parts).to_vec()
        }),
    ];
    runner
        .run(&tickets, |ticket| {
            let answer = runtime.block_on(tokio::time::timeout(
                std::time::Duration::from_secs(10),
                async {
                    let request = arrow_flight::Ticket {
                        ticket: Bytes::from(ticket.clone()),
                    };
                    let mut stream = client.clone().do_get(request).await?.into_inner();
                    let mut messages = 0usize;
                    while stream.message().await?.is_some() {
                        messages += 1;
                    }
                    Ok::<_, tonic::Status>(messages)
                },
            ));
            prop_assert!(answer.is_ok(), "DoGet hung on ticket {ticket:?}");
            Ok(())
        })
        .unwrap();

    // The node still serves: a valid put and a pull of it.
    runtime.block_on(async {
        let pool = FlightPool::new(token());
        let id = ObjectId::random();
        let block = stored_block(100);
        let object = manta_engine::store::read_object(id, Bytes::from(block)).unwrap();
        pool.push(&location, id, &object).await.unwrap();
        let back = pool.fetch(&location, id).await.unwrap();
        assert_eq!(
            back.into_block(id).unwrap().concat().unwrap(),
            object.into_block(id).unwrap().concat().unwrap()
        );
    });
}
