//! Pulls objects between two stores over a real Flight server on 127.0.0.1.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use arrow::array::{Int64Array, RecordBatch, StringViewArray};
use manta_engine::{Location, NodeId, Object, ObjectId, ObjectStore, StoreConfig};
use manta_flight::auth::{Token, guard};
use manta_flight::{Error, FlightPool, ObjectFlightService, Part};

/// The token the servers of this test binary require.
fn token() -> &'static Token {
    static TOKEN: std::sync::OnceLock<Token> = std::sync::OnceLock::new();
    TOKEN.get_or_init(Token::generate)
}

fn shared_store(dir: &std::path::Path) -> Arc<ObjectStore> {
    ObjectStore::new(StoreConfig {
        budget_bytes: 1 << 30,
        shared_parent: Some(dir.join("shm")),
        spill_parent: dir.join("spill"),
    })
    .unwrap()
}

async fn serve(store: Arc<ObjectStore>) -> Location {
    serve_counting(store).await.0
}

/// Serves `store`; the counter counts the calls the server takes.
async fn serve_counting(store: Arc<ObjectStore>) -> (Location, Arc<AtomicUsize>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    let calls = Arc::new(AtomicUsize::new(0));
    let counter = Arc::clone(&calls);
    tokio::spawn(
        tonic::transport::Server::builder()
            .layer(tonic::service::InterceptorLayer::new(
                move |request: tonic::Request<()>| {
                    counter.fetch_add(1, Ordering::SeqCst);
                    Ok(request)
                },
            ))
            .add_service(guard(
                ObjectFlightService::new(store).into_server(),
                token(),
            ))
            .serve_with_incoming(manta_flight::incoming(listener, None)),
    );
    let location = Location {
        node: NodeId::random(),
        flight_address: format!("http://{address}").into(),
    };
    (location, calls)
}

fn batches() -> Vec<RecordBatch> {
    (0..5)
        .map(|i| {
            let n = Int64Array::from_iter_values(i * 1000..(i + 1) * 1000);
            let s = StringViewArray::from_iter_values((0..1000).map(|j| {
                format!(
                    "row {} of batch {i}, long enough to spill out of the view",
                    j
                )
            }));
            RecordBatch::try_from_iter([("n", Arc::new(n) as _), ("s", Arc::new(s) as _)]).unwrap()
        })
        .collect()
}

#[tokio::test]
async fn block_moves_between_stores_and_into_memory() {
    let tmp = tempfile::tempdir().unwrap();
    let source = shared_store(&tmp.path().join("a"));
    let target = shared_store(&tmp.path().join("b"));
    let location = serve(Arc::clone(&source)).await;

    let id = ObjectId::random();
    let block = manta_engine::Block::try_new(batches()[0].schema(), batches()).unwrap();
    source.put(id, Object::Block(block)).unwrap();

    let pool = FlightPool::new(token());
    let received = pool.pull_into(&target, &location, id).await.unwrap();
    assert!(received > 5 * 1000 * 8);
    let pulled = target.get(id).unwrap().into_block(id).unwrap();
    assert_eq!(pulled.batches(), batches().as_slice());

    let fetched = pool
        .fetch(&location, id)
        .await
        .unwrap()
        .into_block(id)
        .unwrap();
    assert_eq!(fetched.batches(), batches().as_slice());
}

#[tokio::test]
async fn bytes_object_moves_in_pieces() {
    let tmp = tempfile::tempdir().unwrap();
    let source = shared_store(tmp.path());
    let location = serve(Arc::clone(&source)).await;
    let id = ObjectId::random();
    let payload: Vec<u8> = (0..5_000_000u32).map(|i| (i % 251) as u8).collect();
    source
        .put(id, Object::Bytes(payload.clone().into()))
        .unwrap();
    let fetched = FlightPool::new(token())
        .fetch(&location, id)
        .await
        .unwrap()
        .into_bytes(id)
        .unwrap();
    assert_eq!(fetched.as_ref(), payload.as_slice());
}

#[tokio::test]
async fn missing_object_is_fetch_failed_naming_node_and_object() {
    let tmp = tempfile::tempdir().unwrap();
    let location = serve(shared_store(tmp.path())).await;
    let id = ObjectId::random();
    match FlightPool::new(token()).fetch(&location, id).await {
        Err(Error::FetchFailed {
            node,
            object,
            status,
        }) => {
            assert_eq!(object, id);
            assert_eq!(node, location.flight_address.to_string());
            assert_eq!(status.code(), tonic::Code::NotFound);
        }
        other => panic!("expected FetchFailed, got {other:?}"),
    }
}

#[tokio::test]
async fn node_that_does_not_answer_is_a_connect_error() {
    // Bind a port, then close it, so nothing listens there.
    let address = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let location = Location {
        node: NodeId::random(),
        flight_address: format!("http://{address}").into(),
    };
    let err = FlightPool::new(token())
        .fetch(&location, ObjectId::random())
        .await
        .unwrap_err();
    assert!(matches!(err, Error::Connect { .. }), "{err:?}");
    assert!(err.to_string().contains(&address.to_string()));
}

#[tokio::test]
async fn one_batch_moves_alone_even_from_a_spilled_block() {
    let tmp = tempfile::tempdir().unwrap();
    // A source whose budget holds one block at most, so the first block spills.
    let source = ObjectStore::new(StoreConfig {
        budget_bytes: 200_000,
        shared_parent: Some(tmp.path().join("a/shm")),
        spill_parent: tmp.path().join("a/spill"),
    })
    .unwrap();
    let target = shared_store(&tmp.path().join("b"));
    let location = serve(Arc::clone(&source)).await;

    let id = ObjectId::random();
    let block = manta_engine::Block::try_new(batches()[0].schema(), batches()).unwrap();
    let whole = source.put(id, Object::Block(block.clone())).unwrap();
    source
        .put(ObjectId::random(), Object::Block(block))
        .unwrap();
    assert!(source.usage().spilled_bytes > 0);

    let pool = FlightPool::new(token());
    for (i, expected) in batches().iter().enumerate() {
        let local = ObjectId::random();
        let received = pool
            .pull_batch_into(&target, &location, id, i as u32, local)
            .await
            .unwrap();
        assert!(
            received < whole / 3,
            "{received} of {whole} bytes for one batch of five"
        );
        let pulled = target.get(local).unwrap().into_block(local).unwrap();
        assert_eq!(pulled.batches(), std::slice::from_ref(expected));
    }
    assert_eq!(
        source.usage().restored_bytes_total,
        0,
        "serving batches restored the block"
    );
}

#[tokio::test]
async fn a_caller_without_the_token_or_with_another_gets_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let source = shared_store(tmp.path());
    let location = serve(Arc::clone(&source)).await;
    let id = ObjectId::random();
    source
        .put(id, Object::Bytes(vec![7u8; 100].into()))
        .unwrap();

    let refused = |result: Result<Object, Error>| match result {
        Err(Error::FetchFailed { status, .. }) => {
            assert_eq!(status.code(), tonic::Code::Unauthenticated, "{status}")
        }
        other => panic!("expected UNAUTHENTICATED, got {other:?}"),
    };
    refused(
        FlightPool::new(&Token::generate())
            .fetch(&location, id)
            .await,
    );

    // A plain Flight client, as anyone could write: no token, so no object, and no DoPut.
    let channel = tonic::transport::Endpoint::from_shared(location.flight_address.to_string())
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut plain = arrow_flight::flight_service_client::FlightServiceClient::new(channel);
    let got = plain
        .do_get(arrow_flight::Ticket::new(id.as_bytes().to_vec()))
        .await
        .unwrap_err();
    assert_eq!(got.code(), tonic::Code::Unauthenticated);
    let put = plain
        .do_put(futures::stream::iter([arrow_flight::FlightData::default()]))
        .await
        .unwrap_err();
    assert_eq!(put.code(), tonic::Code::Unauthenticated);
    // The object is untouched and the right token still reads it.
    let fetched = FlightPool::new(token()).fetch(&location, id).await.unwrap();
    assert_eq!(fetched.into_bytes(id).unwrap().as_ref(), &[7u8; 100][..]);
}

/// The code of a failed push.
fn push_refused(result: Result<u64, Error>) -> tonic::Code {
    match result {
        Err(Error::FetchFailed { status, .. }) => status.code(),
        other => panic!("expected a refusal, got {other:?}"),
    }
}

#[tokio::test]
async fn a_put_never_replaces_an_object_nor_outgrows_the_store() {
    let tmp = tempfile::tempdir().unwrap();
    // Room for one block of five batches (about 400 KB), not for a 1 MB bytes object.
    let store = ObjectStore::new(StoreConfig {
        budget_bytes: 600_000,
        shared_parent: Some(tmp.path().join("shm")),
        spill_parent: tmp.path().join("spill"),
    })
    .unwrap();
    let location = serve(Arc::clone(&store)).await;
    let pool = FlightPool::new(token());

    let id = ObjectId::random();
    let block = manta_engine::Block::try_new(batches()[0].schema(), batches()).unwrap();
    pool.push(&location, id, &Object::Block(block))
        .await
        .unwrap();
    // The same id again, with other contents: ALREADY_EXISTS, and the object is unchanged.
    let other = Object::Bytes(vec![1u8; 1000].into());
    assert_eq!(
        push_refused(pool.push(&location, id, &other).await),
        tonic::Code::AlreadyExists
    );
    let kept = store.get(id).unwrap().into_block(id).unwrap();
    assert_eq!(kept.batches(), batches().as_slice());

    // An object larger than the whole budget is refused before it is received.
    let big = ObjectId::random();
    let huge = Object::Bytes(vec![2u8; 1 << 20].into());
    assert_eq!(
        push_refused(pool.push(&location, big, &huge).await),
        tonic::Code::ResourceExhausted
    );
    assert!(!store.contains(big));

    // A sender that sends more than its metadata declared is cut off, and nothing is stored.
    let liar = ObjectId::random();
    let mut first = arrow_flight::FlightData {
        app_metadata: bytes::Bytes::from_static(b"manta:bytes:100"),
        data_body: bytes::Bytes::from(vec![3u8; 80]),
        ..Default::default()
    };
    first.flight_descriptor = Some(arrow_flight::FlightDescriptor::new_cmd(
        liar.as_bytes().to_vec(),
    ));
    let rest = arrow_flight::FlightData {
        data_body: bytes::Bytes::from(vec![3u8; 80]),
        ..Default::default()
    };
    let channel = tonic::transport::Endpoint::from_shared(location.flight_address.to_string())
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut client = arrow_flight::flight_service_client::FlightServiceClient::new(
        manta_flight::auth::with_token(channel, token()),
    );
    let refused = client
        .do_put(futures::stream::iter([first, rest]))
        .await
        .unwrap_err();
    assert_eq!(refused.code(), tonic::Code::InvalidArgument, "{refused}");
    assert!(refused.message().contains("declared"), "{refused}");
    assert!(!store.contains(liar));
    // The id the liar took is free again.
    let fine = Object::Bytes(vec![4u8; 50].into());
    pool.push(&location, liar, &fine).await.unwrap();
}

/// A store on `dir` whose budget holds about one block of [`batches`], so others spill.
fn small_store(dir: &std::path::Path) -> Arc<ObjectStore> {
    ObjectStore::new(StoreConfig {
        budget_bytes: 200_000,
        shared_parent: Some(dir.join("shm")),
        spill_parent: dir.join("spill"),
    })
    .unwrap()
}

#[tokio::test]
async fn many_parts_of_many_blocks_cross_in_one_call() {
    let tmp = tempfile::tempdir().unwrap();
    let source = small_store(&tmp.path().join("a"));
    let target = shared_store(&tmp.path().join("b"));
    let (location, calls) = serve_counting(Arc::clone(&source)).await;

    // Three blocks with their batches in different orders; all but the last spill.
    let mut blocks = Vec::new();
    for rotation in 0..3 {
        let mut rotated = batches();
        rotated.rotate_left(rotation);
        let id = ObjectId::random();
        let block = manta_engine::Block::try_new(rotated[0].schema(), rotated.clone()).unwrap();
        source.put(id, Object::Block(block)).unwrap();
        blocks.push((id, rotated));
    }
    assert!(source.usage().spilled_bytes > 0);

    // Every batch of every block, the same block asked for more than once, out of order.
    let mut wanted = Vec::new();
    for index in [4u32, 0, 2, 2, 1, 3] {
        for (id, rotated) in &blocks {
            wanted.push((*id, index, rotated[index as usize].clone()));
        }
    }
    let parts: Vec<_> = wanted
        .iter()
        .map(|(object, batch, _)| Part {
            object: *object,
            batch: *batch,
            local: ObjectId::random(),
        })
        .collect();
    let sizes = FlightPool::new(token())
        .pull_parts_into(&target, &location, &parts)
        .await
        .unwrap();
    assert_eq!(sizes.len(), parts.len());
    assert_eq!(calls.load(Ordering::SeqCst), 1, "one DoGet for every part");
    for (part, (_, _, expected)) in parts.iter().zip(&wanted) {
        assert_eq!(
            batches_of(&target, part.local),
            std::slice::from_ref(expected)
        );
    }
    assert_eq!(source.usage().restored_bytes_total, 0);
}

/// A served store holding one block of [`batches`], an empty target store, the block's id,
/// and an id the source does not have (the temporary directory lives as long as the first).
async fn a_served_block_and_a_missing_id() -> (
    tempfile::TempDir,
    Arc<ObjectStore>,
    Location,
    ObjectId,
    ObjectId,
) {
    let tmp = tempfile::tempdir().unwrap();
    let source = shared_store(&tmp.path().join("a"));
    let target = shared_store(&tmp.path().join("b"));
    let location = serve(Arc::clone(&source)).await;
    let present = ObjectId::random();
    let block = manta_engine::Block::try_new(batches()[0].schema(), batches()).unwrap();
    source.put(present, Object::Block(block)).unwrap();
    (tmp, target, location, present, ObjectId::random())
}

/// The batches of block `id` in `store`.
fn batches_of(store: &Arc<ObjectStore>, id: ObjectId) -> Vec<RecordBatch> {
    store
        .get(id)
        .unwrap()
        .into_block(id)
        .unwrap()
        .batches()
        .to_vec()
}

#[tokio::test]
async fn a_missing_part_is_named_and_the_parts_before_it_are_freed() {
    let (_tmp, target, location, present, missing) = a_served_block_and_a_missing_id().await;

    let part = |object, batch| Part {
        object,
        batch,
        local: ObjectId::random(),
    };
    let parts = [
        part(present, 0),
        part(present, 1),
        part(missing, 0),
        part(present, 2),
    ];
    let error = FlightPool::new(token())
        .pull_parts_into(&target, &location, &parts)
        .await
        .unwrap_err();
    match &error {
        Error::FetchFailed { object, status, .. } => {
            assert_eq!(*object, missing, "{error}");
            assert_eq!(status.code(), tonic::Code::NotFound, "{error}");
        }
        other => panic!("expected FetchFailed, got {other:?}"),
    }
    for part in &parts {
        assert!(!target.contains(part.local), "a part was left behind");
    }
    assert_eq!(target.usage().objects, 0);
}

/// Every part the wanted batches name, its expected batch, and what `pull_parts_combined` made
/// of them: the combined block's batch `k` must be part `k`.
fn assert_combined(
    target: &Arc<ObjectStore>,
    into: ObjectId,
    wanted: &[(ObjectId, u32, RecordBatch)],
) {
    let combined = target.get(into).unwrap().into_block(into).unwrap();
    assert_eq!(combined.batches().len(), wanted.len());
    for (k, (_, _, expected)) in wanted.iter().enumerate() {
        assert_eq!(&combined.batches()[k], expected, "part {k}");
    }
    assert_eq!(target.usage().objects, 1, "one object for every part");
}

#[tokio::test]
async fn parts_of_many_blocks_combine_into_one_block() {
    let tmp = tempfile::tempdir().unwrap();
    let source = small_store(&tmp.path().join("a"));
    let target = shared_store(&tmp.path().join("b"));
    let (location, calls) = serve_counting(Arc::clone(&source)).await;

    // Blocks with their batches in different orders (all but the last spill), one of them
    // with nulls, unicode and an empty batch.
    let nullable = Arc::new(arrow::datatypes::Schema::new(
        batches()[0]
            .schema()
            .fields()
            .iter()
            .map(|field| field.as_ref().clone().with_nullable(true))
            .collect::<Vec<_>>(),
    ));
    let mut blocks = Vec::new();
    for rotation in 0..3 {
        let mut rotated: Vec<RecordBatch> = batches()
            .into_iter()
            .map(|b| RecordBatch::try_new(Arc::clone(&nullable), b.columns().to_vec()).unwrap())
            .collect();
        rotated.rotate_left(rotation);
        if rotation == 1 {
            let n = Int64Array::from(vec![Some(1), None, Some(-3)]);
            let s = StringViewArray::from(vec![None, Some("ünïcödé 🦀"), Some("")]);
            let odd =
                RecordBatch::try_new(rotated[0].schema(), vec![Arc::new(n), Arc::new(s)]).unwrap();
            rotated[1] = odd;
            rotated[3] = rotated[0].slice(0, 0);
        }
        let id = ObjectId::random();
        let block = manta_engine::Block::try_new(rotated[0].schema(), rotated.clone()).unwrap();
        source.put(id, Object::Block(block)).unwrap();
        blocks.push((id, rotated));
    }
    assert!(source.usage().spilled_bytes > 0);
    let mut wanted = Vec::new();
    for index in [3u32, 0, 1, 1, 4] {
        for (id, rotated) in &blocks {
            wanted.push((*id, index, rotated[index as usize].clone()));
        }
    }
    let parts: Vec<_> = wanted.iter().map(|(id, batch, _)| (*id, *batch)).collect();
    let into = ObjectId::random();
    let pulled = FlightPool::new(token())
        .pull_parts_combined(&target, &location, &parts, into)
        .await
        .unwrap()
        .expect("parts of one schema combine");
    assert_eq!(calls.load(Ordering::SeqCst), 1, "one DoGet for every part");
    assert_eq!(target.usage().resident_bytes, pulled.size);
    assert_combined(&target, into, &wanted);
    // Each part read alone through the layout the pull reported is that part.
    let stored = target.stored_bytes(into).unwrap();
    assert_eq!(pulled.parts.len(), wanted.len());
    for (k, ((_, _, expected), range)) in wanted.iter().zip(&pulled.parts).enumerate() {
        let alone =
            manta_engine::store::read_batch_at(into, &stored, pulled.schema.clone(), range.clone())
                .unwrap()
                .into_block(into)
                .unwrap();
        assert_eq!(alone.batches(), std::slice::from_ref(expected), "part {k}");
    }
}

/// Parts that cannot share one IPC stream (dictionary batches, schemas that differ) are not
/// combined: nothing is stored, and pulled one object each they arrive whole.
#[tokio::test]
async fn parts_that_cannot_share_a_stream_are_not_combined() {
    use arrow::array::{DictionaryArray, Int32Array, StringArray};
    use arrow::datatypes::Int32Type;

    let tmp = tempfile::tempdir().unwrap();
    let source = shared_store(&tmp.path().join("a"));
    let target = shared_store(&tmp.path().join("b"));
    let location = serve(Arc::clone(&source)).await;
    let put = |batch: RecordBatch| {
        let id = ObjectId::random();
        let block = manta_engine::Block::try_new(batch.schema(), vec![batch.clone()]).unwrap();
        source.put(id, Object::Block(block)).unwrap();
        (id, 0u32, batch)
    };
    let dictionary = || {
        let keys = Int32Array::from(vec![0, 1, 0]);
        let values = Arc::new(StringArray::from(vec!["a", "b"]));
        let d = DictionaryArray::<Int32Type>::try_new(keys, values).unwrap();
        RecordBatch::try_from_iter([("d", Arc::new(d) as _)]).unwrap()
    };
    let cases = [
        ("dictionaries", vec![put(dictionary()), put(dictionary())]),
        (
            "schemas that differ",
            vec![put(batches()[0].clone()), put(dictionary())],
        ),
    ];
    for (case, wanted) in cases {
        let parts: Vec<_> = wanted.iter().map(|(id, batch, _)| (*id, *batch)).collect();
        let combined = FlightPool::new(token())
            .pull_parts_combined(&target, &location, &parts, ObjectId::random())
            .await
            .unwrap();
        assert!(combined.is_none(), "{case}: combined");
        assert_eq!(target.usage().objects, 0, "{case}: something was stored");
        let one_each: Vec<_> = wanted
            .iter()
            .map(|(object, batch, _)| Part {
                object: *object,
                batch: *batch,
                local: ObjectId::random(),
            })
            .collect();
        FlightPool::new(token())
            .pull_parts_into(&target, &location, &one_each)
            .await
            .unwrap();
        for (part, (_, _, expected)) in one_each.iter().zip(&wanted) {
            let pulled = batches_of(&target, part.local);
            assert_eq!(pulled, std::slice::from_ref(expected), "{case}");
            target.free(part.local);
        }
    }
}

#[tokio::test]
async fn a_missing_part_fails_a_combined_pull_and_leaves_nothing() {
    let (_tmp, target, location, present, missing) = a_served_block_and_a_missing_id().await;
    let parts = [(present, 0), (present, 1), (missing, 0), (present, 2)];
    let error = FlightPool::new(token())
        .pull_parts_combined(&target, &location, &parts, ObjectId::random())
        .await
        .unwrap_err();
    match &error {
        Error::FetchFailed { object, status, .. } => {
            assert_eq!(*object, missing, "{error}");
            assert_eq!(status.code(), tonic::Code::NotFound, "{error}");
        }
        other => panic!("expected FetchFailed, got {other:?}"),
    }
    assert_eq!(target.usage().objects, 0);
    assert_eq!(target.usage().resident_bytes, 0);
}
