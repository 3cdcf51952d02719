use std::sync::Arc;

use arrow::array::{Array, Int64Array, RecordBatch};

use super::*;

fn batch(start: i64, rows: i64) -> RecordBatch {
    RecordBatch::try_from_iter([(
        "x",
        Arc::new(Int64Array::from_iter_values(start..start + rows)) as _,
    )])
    .unwrap()
}

fn block_of(object: Object) -> RecordBatch {
    object
        .into_block(ObjectId::random())
        .unwrap()
        .concat()
        .unwrap()
}

fn heap_store(budget_bytes: u64, dir: &Path) -> Arc<ObjectStore> {
    ObjectStore::new(StoreConfig {
        budget_bytes,
        shared_parent: None,
        spill_parent: dir.to_path_buf(),
    })
    .unwrap()
}

fn shared_store(budget_bytes: u64, dir: &Path) -> Arc<ObjectStore> {
    ObjectStore::new(StoreConfig {
        budget_bytes,
        shared_parent: Some(dir.join("shm")),
        spill_parent: dir.join("spill"),
    })
    .unwrap()
}

/// A shared-memory store if `shared`, else a heap store.
fn store_of(shared: bool, budget_bytes: u64, dir: &Path) -> Arc<ObjectStore> {
    match shared {
        true => shared_store(budget_bytes, dir),
        false => heap_store(budget_bytes, dir),
    }
}

#[test]
fn heap_put_get_and_free() {
    let tmp = tempfile::tempdir().unwrap();
    let store = heap_store(1 << 30, tmp.path());
    let id = ObjectId::random();
    let size = store.put(id, batch(0, 100).into()).unwrap();
    assert_eq!(store.usage().resident_bytes, size);
    assert_eq!(block_of(store.get(id).unwrap()), batch(0, 100));
    store.free(id);
    assert!(!store.contains(id));
    assert!(matches!(store.get(id), Err(Error::ObjectNotFound { .. })));
    assert_eq!(
        store.usage(),
        StoreUsage {
            budget_bytes: 1 << 30,
            ..Default::default()
        }
    );
}

/// Puts ten blocks into a budget that holds about three; checks that the oldest were spilled,
/// that every block reads back equal, and that the counters add up.
fn spills_past_budget_and_restores(store: Arc<ObjectStore>) {
    let rows = 10_000;
    let ids: Vec<ObjectId> = (0..10)
        .map(|i| {
            let id = ObjectId::random();
            store.put(id, batch(i * rows, rows).into()).unwrap();
            id
        })
        .collect();
    let usage = store.usage();
    assert!(usage.resident_bytes <= usage.budget_bytes, "{usage:?}");
    assert!(
        usage.spilled_bytes > 0 && usage.spilled_bytes_total > 0,
        "{usage:?}"
    );
    assert_eq!(usage.objects, 10);
    for (i, id) in ids.iter().enumerate() {
        assert_eq!(
            block_of(store.get(*id).unwrap()),
            batch(i as i64 * rows, rows)
        );
    }
    assert!(store.usage().restored_bytes_total > 0);
    for id in &ids {
        store.free(*id);
    }
    let usage = store.usage();
    assert_eq!(
        (usage.resident_bytes, usage.spilled_bytes, usage.objects),
        (0, 0, 0),
        "{usage:?}"
    );
}

#[test]
fn heap_store_spills_past_budget_and_restores() {
    let tmp = tempfile::tempdir().unwrap();
    spills_past_budget_and_restores(heap_store(3 * 80_000 + 1000, tmp.path()));
}

#[test]
fn shared_store_spills_past_budget_and_restores() {
    let tmp = tempfile::tempdir().unwrap();
    spills_past_budget_and_restores(shared_store(3 * 80_500, tmp.path()));
}

#[test]
fn shared_get_is_zero_copy_and_pins_until_dropped() {
    let tmp = tempfile::tempdir().unwrap();
    let store = shared_store(1 << 20, tmp.path());
    let first = ObjectId::random();
    store.put(first, batch(0, 100_000).into()).unwrap();
    let object = store.get(first).unwrap();
    let file = store.shared_dir().unwrap().join(first.to_string());
    assert!(file.exists());

    // A second object pushes the store over budget; the first is mapped, hence pinned, so the
    // second (unpinned) is the one spilled.
    let second = ObjectId::random();
    store.put(second, batch(0, 100_000).into()).unwrap();
    assert!(file.exists(), "a pinned object was spilled");
    assert!(
        !store
            .shared_dir()
            .unwrap()
            .join(second.to_string())
            .exists()
    );

    // Once the mapping is dropped, the first can be spilled: reading the second makes room.
    let values = block_of(object);
    assert_eq!(values, batch(0, 100_000));
    drop(values);
    assert_eq!(block_of(store.get(second).unwrap()), batch(0, 100_000));
    assert!(
        !file.exists(),
        "an unpinned, least recently used object was not spilled"
    );
}

#[test]
fn shared_object_buffers_point_into_shared_memory() {
    let tmp = tempfile::tempdir().unwrap();
    let store = shared_store(1 << 30, tmp.path());
    let id = ObjectId::random();
    store.put(id, batch(0, 1000).into()).unwrap();
    let raw = store.stored_bytes(id).unwrap();
    let range = raw.as_ptr() as usize..raw.as_ptr() as usize + raw.len();
    // A second mapping of the same file is a different address range; the decoded buffers must
    // lie inside the mapping they were decoded from.
    let decoded = block_of(read_object(id, raw.clone()).unwrap());
    let ptr = decoded.column(0).to_data().buffers()[0].as_ptr() as usize;
    assert!(range.contains(&ptr));
}

#[test]
fn free_removes_files_resident_and_spilled() {
    let tmp = tempfile::tempdir().unwrap();
    let store = shared_store(1, tmp.path());
    let id = ObjectId::random();
    store.put(id, batch(0, 10).into()).unwrap();
    assert_eq!(
        store.usage().spilled_bytes_total,
        store.usage().spilled_bytes
    );
    assert!(store.usage().spilled_bytes > 0);
    store.free(id);
    let leftovers: Vec<_> = walk(tmp.path())
        .into_iter()
        .filter(|file| !file.ends_with(".owner"))
        .collect();
    assert!(leftovers.is_empty(), "files left after free: {leftovers:?}");
}

#[test]
fn concurrent_readers_and_writers_under_a_tight_budget() {
    let tmp = tempfile::tempdir().unwrap();
    let store = heap_store(200_000, tmp.path());
    std::thread::scope(|scope| {
        for t in 0..4 {
            let store = Arc::clone(&store);
            scope.spawn(move || {
                for i in 0..20 {
                    let id = ObjectId::random();
                    let start = t * 1_000_000 + i * 1000;
                    store.put(id, batch(start, 5000).into()).unwrap();
                    assert_eq!(block_of(store.get(id).unwrap()), batch(start, 5000));
                    if i % 2 == 0 {
                        store.free(id);
                    }
                }
            });
        }
    });
    let usage = store.usage();
    assert_eq!(usage.objects, 40);
    assert!(usage.resident_bytes <= usage.budget_bytes);
}

fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap().flatten() {
        if entry.file_type().unwrap().is_dir() {
            files.extend(walk(&entry.path()));
        } else {
            files.push(entry.path());
        }
    }
    files
}

#[test]
fn repeated_gets_share_one_mapping_and_readers_keep_it_resident() {
    let tmp = tempfile::tempdir().unwrap();
    let store = shared_store(1 << 20, tmp.path());
    let id = ObjectId::random();
    store.put(id, batch(0, 100_000).into()).unwrap();
    let first = block_of(store.get(id).unwrap());
    let second = block_of(store.get(id).unwrap());
    let ptr = |b: &RecordBatch| b.column(0).to_data().buffers()[0].as_ptr();
    assert_eq!(
        ptr(&first),
        ptr(&second),
        "the second get reuses the first's mapping"
    );

    // Only a column of the first read is still held: that is enough to keep the object in.
    let held = first.column(0).clone();
    drop((first, second));
    let other = ObjectId::random();
    store.put(other, batch(0, 100_000).into()).unwrap();
    assert!(
        store.shared_dir().unwrap().join(id.to_string()).exists(),
        "a block in use was spilled"
    );
    drop(held);
    store.get(other).unwrap();
    assert!(
        !store.shared_dir().unwrap().join(id.to_string()).exists(),
        "an unused block was not spilled"
    );
    assert_eq!(block_of(store.get(id).unwrap()), batch(0, 100_000));
}

#[test]
fn one_batch_of_a_spilled_block_is_read_in_place() {
    for shared in [false, true] {
        let tmp = tempfile::tempdir().unwrap();
        // Room for the first block (160 kB), not for both.
        let store = store_of(shared, 200_000, tmp.path());
        let parts: Vec<RecordBatch> = (0..4).map(|i| batch(i * 5000, 5000)).collect();
        let first = ObjectId::random();
        let block = Block::try_new(parts[0].schema(), parts.clone()).unwrap();
        let stored = store.put_reporting(first, Object::Block(block)).unwrap();
        // A second block pushes the first out to disk.
        let second = ObjectId::random();
        let spilled = store
            .put_reporting(second, batch(0, 10_000).into())
            .unwrap();
        assert_eq!(spilled.spilled_bytes, stored.size_bytes, "shared: {shared}");
        assert_eq!(store.usage().spilled_bytes, stored.size_bytes);

        for (i, part) in parts.iter().enumerate() {
            assert_eq!(&block_of(store.get_batch(first, i).unwrap()), part);
        }
        assert_eq!(block_of(store.get_batch(first, 9).unwrap()).num_rows(), 0);
        assert_eq!(
            store.usage().restored_bytes_total,
            0,
            "reading batches restored the block (shared: {shared})"
        );
        assert!(store.pin_if_resident(first).unwrap().is_none());
        assert!(store.pin_if_resident(second).unwrap().is_some());
        // The stored bytes of one spilled batch decode to that batch; a restore still gives
        // the whole block.
        let one = store
            .spilled_batch(first, 2)
            .unwrap()
            .expect("spilled and indexed");
        let one = crate::store::read_object(first, one).unwrap();
        assert_eq!(block_of(one), parts[2]);
        // A link for another process's reader keeps reading the batches after the restore
        // below removes the spill file.
        let links: Vec<_> = (0..=parts.len())
            .map(|i| {
                store
                    .link_spilled_batch(first, i)
                    .unwrap()
                    .expect("spilled and indexed")
            })
            .collect();
        let whole = store.get(first).unwrap().into_block(first).unwrap();
        assert_eq!(whole.batches(), parts.as_slice());
        assert!(
            store.spilled_batch(first, 0).unwrap().is_none(),
            "resident now"
        );
        assert!(store.link_spilled_batch(first, 0).unwrap().is_none());
        store.free(first);
        for (i, link) in links.iter().enumerate() {
            let read = block_of(link.read(first).unwrap());
            match parts.get(i) {
                Some(part) => assert_eq!(&read, part),
                None => assert_eq!(read.num_rows(), 0, "past the last batch"),
            }
            std::fs::remove_file(&link.path).unwrap();
        }
    }
}

#[test]
fn a_spilled_block_with_dictionaries_is_restored_to_read_one_batch() {
    use arrow::array::DictionaryArray;
    use arrow::datatypes::Int32Type;
    let tmp = tempfile::tempdir().unwrap();
    let store = heap_store(100_000, tmp.path());
    let words: Vec<String> = (0..20_000).map(|i| format!("word{}", i % 7)).collect();
    let dict = |from: usize| {
        RecordBatch::try_from_iter([(
            "w",
            Arc::new(DictionaryArray::<Int32Type>::from_iter(
                words[from..from + 10_000].iter().map(String::as_str),
            )) as _,
        )])
        .unwrap()
    };
    let parts = vec![dict(0), dict(5)];
    let id = ObjectId::random();
    store
        .put(
            id,
            Object::Block(Block::try_new(parts[0].schema(), parts.clone()).unwrap()),
        )
        .unwrap();
    store
        .put(ObjectId::random(), batch(0, 10_000).into())
        .unwrap();
    assert!(store.pin_if_resident(id).unwrap().is_none(), "not spilled");
    assert!(store.spilled_batch(id, 1).unwrap().is_none());
    assert_eq!(block_of(store.get_batch(id, 1).unwrap()), parts[1]);
}

/// Single batches read while other objects push theirs out: a reader that finds its block
/// being spilled waits for the spill rather than restoring the whole block (which is what a
/// reduce task's partitions did on a full store), so nothing is ever restored, and every batch
/// reads back as written.
#[test]
fn batches_read_during_spills_never_restore_their_block() {
    for shared in [false, true] {
        let tmp = tempfile::tempdir().unwrap();
        // Room for about two of the blocks below: every put spills one.
        let store = store_of(shared, 700_000, tmp.path());
        let parts: Vec<RecordBatch> = (0..8).map(|i| batch(i * 2500, 2500)).collect();
        let blocks: Vec<ObjectId> = (0..24).map(|_| ObjectId::random()).collect();
        let block = || Object::Block(Block::try_new(parts[0].schema(), parts.clone()).unwrap());
        // The first few go in before the readers start, so every read finds a block.
        let (early, late) = blocks.split_at(4);
        for id in early {
            store.put(*id, block()).unwrap();
        }
        std::thread::scope(|scope| {
            scope.spawn(|| {
                for id in late {
                    store.put(*id, block()).unwrap();
                }
            });
            for reader in 0..3 {
                let (store, parts) = (&store, &parts);
                scope.spawn(move || {
                    for round in 0..200 {
                        let id = early[(reader + round) % early.len()];
                        let index = (reader * 7 + round) % parts.len();
                        let read = block_of(store.get_batch(id, index).unwrap());
                        assert_eq!(read, parts[index], "shared: {shared}");
                        if let Some(link) = store.link_spilled_batch(id, index).unwrap() {
                            assert_eq!(block_of(link.read(id).unwrap()), parts[index]);
                            std::fs::remove_file(&link.path).unwrap();
                        }
                    }
                });
            }
        });
        assert!(store.usage().spilled_bytes > 0, "nothing was spilled");
        assert_eq!(
            store.usage().restored_bytes_total,
            0,
            "a batch read restored its block (shared: {shared})"
        );
    }
}

#[test]
fn object_files_and_session_directories_are_their_users_alone() {
    use std::os::unix::fs::PermissionsExt;
    let tmp = tempfile::tempdir().unwrap();
    // A budget of one object: the second put spills the first.
    let size = heap_store(1 << 30, tmp.path())
        .put(ObjectId::random(), batch(0, 1000).into())
        .unwrap();
    let store = shared_store(size, tmp.path());
    let (first, second) = (ObjectId::random(), ObjectId::random());
    store.put(first, batch(0, 1000).into()).unwrap();
    store.put(second, batch(0, 1000).into()).unwrap();
    let mode = |path: &Path| std::fs::metadata(path).unwrap().permissions().mode() & 0o777;
    let mut files = 0;
    for parent in [tmp.path().join("shm"), tmp.path().join("spill")] {
        for session in std::fs::read_dir(&parent).unwrap() {
            let session = session.unwrap().path();
            assert_eq!(mode(&session), 0o700, "{}", session.display());
            for file in std::fs::read_dir(&session).unwrap() {
                let file = file.unwrap().path();
                assert_eq!(mode(&file), 0o600, "{}", file.display());
                files += usize::from(!file.ends_with(".owner"));
            }
        }
    }
    assert_eq!(files, 2, "one object resident, one spilled");
}

/// A reader in another process (a worker's actor keeping an input) maps an object through
/// `read_locked`; the store frees it and writes the next object: the reader's bytes do not
/// change, because a file someone holds locked is deleted, never recycled. (`flock` locks of
/// two opens conflict within one process as across processes, so this one stands for both.)
#[test]
fn a_file_a_worker_still_maps_is_never_written_over() {
    let tmp = tempfile::tempdir().unwrap();
    let store = shared_store(1 << 30, tmp.path());
    let worker_view = ObjectDir::open(store.shared_dir().unwrap());
    // Large enough to be recycled (at least 256 KiB).
    let (kept, next) = (batch(0, 100_000), batch(1_000_000, 100_000));
    let id = ObjectId::random();
    store.put(id, kept.clone().into()).unwrap();
    let held = block_of(worker_view.read_locked(id).unwrap());
    store.free(id);
    assert_eq!(
        store.usage().recycled_bytes,
        0,
        "a locked file is not pooled"
    );
    let other = ObjectId::random();
    store.put(other, next.clone().into()).unwrap();
    assert_eq!(held, kept, "the held input changed under its reader");
    assert!(matches!(
        worker_view.read_locked(id),
        Err(Error::ObjectNotFound { .. })
    ));

    // Once nobody holds it, a freed file is recycled as before.
    drop(held);
    let third = ObjectId::random();
    store.put(third, kept.clone().into()).unwrap();
    let view = block_of(worker_view.read_locked(third).unwrap());
    store.free(other);
    assert!(
        store.usage().recycled_bytes > 0,
        "an unlocked file is pooled"
    );
    assert_eq!(view, kept);
}

/// Outputs adopted while the store is full are taken at once and spilled behind them, never
/// more than a quarter of the budget (plus the one being adopted) over it; when the spiller is
/// done every block reads back equal, and the spills reported by the adoptions are spills the
/// store made.
#[test]
fn adopting_spills_behind_within_a_quarter_of_the_budget() {
    let tmp = tempfile::tempdir().unwrap();
    let budget = 4 * 80_500;
    let store = shared_store(budget, tmp.path());
    let worker = ObjectDir::open(store.shared_dir().unwrap());
    let rows = 10_000;
    let mut reported = 0;
    let ids: Vec<ObjectId> = (0..12)
        .map(|i| {
            let id = ObjectId::random();
            let size = worker.write(id, &batch(i * rows, rows).into()).unwrap();
            reported += store.adopt_spilling_behind(id).unwrap().spilled_bytes;
            let usage = store.usage();
            let held = usage.resident_bytes + usage.recycled_bytes;
            assert!(held <= budget + budget / 4 + size, "{usage:?}");
            id
        })
        .collect();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while store.spilling_behind() {
        assert!(
            std::time::Instant::now() < deadline,
            "the spiller never stopped"
        );
        std::thread::yield_now();
    }
    let usage = store.usage();
    assert!(usage.spilled_bytes_total > 0, "{usage:?}");
    assert!(
        reported <= usage.spilled_bytes_total,
        "{reported} {usage:?}"
    );
    for (i, id) in ids.iter().enumerate() {
        assert_eq!(
            block_of(store.get(*id).unwrap()),
            batch(i as i64 * rows, rows)
        );
    }
}

/// A store its objects overflow keeps a reserve of recycled files (spilling objects instead)
/// for the next objects to be written over, never holding more than its budget; with
/// nothing it may spill, it gives up recycled files past the budget. Every object reads back
/// whole.
#[test]
fn a_full_store_keeps_recycled_files_to_write_over() {
    let tmp = tempfile::tempdir().unwrap();
    // Objects of about 320 KB (recycled files are at least 256 KiB), sixteen to the budget:
    // the reserve (an eighth of the budget) holds two of their files.
    let rows = 40_000;
    let size = ObjectStore::new(StoreConfig {
        budget_bytes: 1 << 30,
        shared_parent: Some(tmp.path().join("probe")),
        spill_parent: tmp.path().join("probe-spill"),
    })
    .unwrap()
    .put(ObjectId::random(), batch(0, rows).into())
    .unwrap();
    let budget = 16 * size;
    let store = shared_store(budget, tmp.path());
    let mut ids = Vec::new();
    let (mut full, mut kept_while_full) = (0, 0);
    for i in 0..40 {
        let id = ObjectId::random();
        store.put(id, batch(i * rows, rows).into()).unwrap();
        ids.push(id);
        let usage = store.usage();
        assert!(
            usage.resident_bytes + usage.recycled_bytes <= budget,
            "{usage:?}"
        );
        if usage.spilled_bytes > 0 {
            full += 1;
            kept_while_full += usize::from(usage.recycled_bytes > 0);
        }
    }
    // The pool refills when a put spills (up to the reserve, two files) and the next puts
    // take from it: two of every three puts leave a file.
    assert!(
        full > 20 && kept_while_full * 2 > full,
        "a full store kept recycled files after only {kept_while_full} of {full} puts"
    );
    for (i, id) in ids.iter().enumerate() {
        assert_eq!(
            block_of(store.get(*id).unwrap()),
            batch(i as i64 * rows, rows)
        );
    }
    // Every resident object pinned: nothing to spill, so the reserve goes past the budget.
    let resident: Vec<ObjectId> = ids
        .iter()
        .copied()
        .filter(|id| store.pin_if_resident(*id).unwrap().is_some())
        .collect();
    let _pins: Vec<Pin> = resident.iter().map(|id| store.pin(*id).unwrap()).collect();
    assert!(store.usage().recycled_bytes > 0, "{:?}", store.usage());
    // Written by a worker (not over a recycled file), counted, pinned too, then room made.
    let id = ObjectId::random();
    ObjectDir::open(store.shared_dir().unwrap())
        .write(id, &batch(0, rows).into())
        .unwrap();
    store.take_sealed(id, None).unwrap();
    let _last = store.pin(id).unwrap();
    let before = store.usage();
    assert!(
        before.resident_bytes + before.recycled_bytes > budget,
        "{before:?}"
    );
    assert_eq!(store.make_room(None).unwrap(), 0);
    let after = store.usage();
    assert!(after.recycled_bytes < before.recycled_bytes, "{after:?}");
    assert!(
        after.resident_bytes + after.recycled_bytes <= budget,
        "{after:?}"
    );
}

/// Objects written over recycled files (through a mapping, see `object_dir::write_encoded`)
/// of larger and smaller objects, and into fresh files, read back as they were put: blocks of
/// nulls, strings and empty batches of random sizes, and bytes objects.
#[test]
fn objects_written_over_recycled_files_of_any_size_read_back_whole() {
    use rand::SeedableRng;

    let tmp = tempfile::tempdir().unwrap();
    let store = shared_store(1 << 30, tmp.path());
    let mut rng = rand::rngs::StdRng::seed_from_u64(7);
    let mut kept: Vec<(ObjectId, Object)> = Vec::new();
    let mut recycled_into = 0;
    for round in 0..40 {
        let object = a_random_object(&mut rng, round);
        if store.usage().recycled_bytes > 0 {
            recycled_into += 1;
        }
        let id = ObjectId::random();
        store.put(id, object.clone()).unwrap();
        kept.push((id, object));
        // Free about half of what is kept, so later puts land on recycled files.
        free_one_now_and_then(&store, &mut kept, &mut rng);
    }
    assert_all_read_back(&store, &kept);
    assert!(
        recycled_into > 5,
        "only {recycled_into} puts found a recycled file"
    );
}

/// Objects received piece by piece (as from another node) over recycled files read back whole,
/// whatever the size the sender announced: exact, too small (the rest written past the
/// mapping), too large (the file cut after), or none. The files come from puts and receives
/// before (so with the store's kept mappings) and from files another process wrote (without);
/// a receive abandoned halfway leaves nothing behind.
#[test]
fn objects_received_over_recycled_files_of_any_size_read_back_whole() {
    use rand::{Rng, SeedableRng};

    let tmp = tempfile::tempdir().unwrap();
    let store = shared_store(1 << 30, tmp.path());
    let mut rng = rand::rngs::StdRng::seed_from_u64(11);
    let mut kept: Vec<(ObjectId, Object)> = Vec::new();
    let mut received_over_recycled = 0;
    for round in 0..60 {
        let object = a_random_object(&mut rng, round);
        let mut stored = Vec::new();
        format::write_object(&mut stored, &object).unwrap();
        let id = ObjectId::random();
        match round % 4 {
            0 => {
                store.put(id, object.clone()).unwrap();
            }
            1 => {
                // Written by "a worker": a sealed file the store adopts, no mapping kept.
                let dir = store.shared_dir_ref();
                dir.write_reusing(id, &object, store.take_recycled().as_deref())
                    .unwrap();
                store.adopt(id).unwrap();
            }
            _ => {
                if store.usage().recycled_bytes > 0 {
                    received_over_recycled += 1;
                }
                let announced = match rng.random_range(0..4) {
                    0 => stored.len(),
                    1 => stored.len() / 3,
                    2 => stored.len() * 2 + 4096,
                    _ => 0,
                };
                let mut receiver = store.receive(id, announced).unwrap();
                let mut rest = &stored[..];
                while !rest.is_empty() {
                    let piece = rng.random_range(1..=rest.len().min(300_000));
                    receiver.writer().write_all(&rest[..piece]).unwrap();
                    rest = &rest[piece..];
                }
                assert_eq!(receiver.finish().unwrap(), stored.len() as u64);
                // One abandoned halfway: its id stays free, and nothing is left of it.
                let abandoned = ObjectId::random();
                let mut receiver = store.receive(abandoned, stored.len()).unwrap();
                receiver
                    .writer()
                    .write_all(&stored[..stored.len() / 2])
                    .unwrap();
                drop(receiver);
                assert!(!store.contains(abandoned));
                assert!(!store.shared_dir_ref().file(abandoned).exists());
            }
        }
        assert_eq!(
            std::fs::read(store.shared_dir_ref().file(id)).unwrap(),
            stored,
            "round {round}: the file holds the object's stored bytes"
        );
        kept.push((id, object));
        free_one_now_and_then(&store, &mut kept, &mut rng);
    }
    assert_all_read_back(&store, &kept);
    assert!(
        received_over_recycled > 10,
        "only {received_over_recycled} receives found a recycled file"
    );
}

/// With probability 0.6, frees one of the `kept` objects (at random) after checking it reads
/// back, so that later writes land on its recycled file.
fn free_one_now_and_then(
    store: &Arc<ObjectStore>,
    kept: &mut Vec<(ObjectId, Object)>,
    rng: &mut impl rand::Rng,
) {
    if rng.random_bool(0.6) {
        let (id, object) = kept.swap_remove(rng.random_range(0..kept.len()));
        assert_objects_equal(&store.get(id).unwrap(), &object);
        store.free(id);
    }
}

/// Every `kept` object reads back as it was put.
fn assert_all_read_back(store: &Arc<ObjectStore>, kept: &[(ObjectId, Object)]) {
    for (id, object) in kept {
        assert_objects_equal(&store.get(*id).unwrap(), object);
    }
}

/// An object of up to 120,000 rows: every fifth round bytes, else a block of numbers with
/// nulls, unicode strings and bytes cut into three batches (one empty).
fn a_random_object(rng: &mut impl rand::Rng, round: usize) -> Object {
    use arrow::array::{StringViewArray, UInt8Array};

    let rows = rng.random_range(0..120_000usize);
    if round % 5 == 4 {
        let bytes: Vec<u8> = (0..rows * 8).map(|i| (i * 31 + round) as u8).collect();
        return Object::Bytes(bytes::Bytes::from(bytes));
    }
    let numbers =
        Int64Array::from_iter((0..rows).map(|i| (i % 7 != 3).then_some((i * round) as i64)));
    let text = StringViewArray::from_iter(
        (0..rows).map(|i| (i % 11 != 0).then(|| format!("ünïcode row {i} of round {round}"))),
    );
    let flags = UInt8Array::from_iter_values((0..rows).map(|i| (i % 3) as u8));
    let batch = RecordBatch::try_from_iter([
        ("n", Arc::new(numbers) as _),
        ("s", Arc::new(text) as _),
        ("f", Arc::new(flags) as _),
    ])
    .unwrap();
    let cut = rng.random_range(0..=rows);
    let empty = batch.slice(0, 0);
    Object::Block(
        Block::try_new(
            batch.schema(),
            vec![batch.slice(0, cut), empty, batch.slice(cut, rows - cut)],
        )
        .unwrap(),
    )
}

fn assert_objects_equal(got: &Object, put: &Object) {
    match (got, put) {
        (Object::Bytes(got), Object::Bytes(put)) => assert_eq!(got, put),
        (Object::Block(got), Object::Block(put)) => {
            assert_eq!(got.concat().unwrap(), put.concat().unwrap());
        }
        _ => panic!("the object came back as another kind"),
    }
}

/// A block of four batches (one of them empty) put in `store`: its id and its batches.
fn a_block_of_four_batches_in(store: &ObjectStore) -> (ObjectId, Vec<RecordBatch>) {
    let batches = vec![batch(0, 5), batch(5, 0), batch(5, 1000), batch(1005, 1)];
    let id = ObjectId::random();
    let block = Block::try_new(batches[0].schema(), batches.clone()).unwrap();
    store.put(id, Object::Block(block)).unwrap();
    (id, batches)
}

/// A block with a dictionary-encoded column put in `store`: its id.
fn a_block_with_dictionaries_in(store: &ObjectStore) -> ObjectId {
    use arrow::array::{DictionaryArray, Int32Array, StringArray};
    use arrow::datatypes::Int32Type;

    let keys = Int32Array::from(vec![0, 1, 0]);
    let values = Arc::new(StringArray::from(vec!["a", "b"]));
    let d = DictionaryArray::<Int32Type>::try_new(keys, values).unwrap();
    let dictionary = RecordBatch::try_from_iter([("d", Arc::new(d) as _)]).unwrap();
    let id = ObjectId::random();
    store.put(id, dictionary.into()).unwrap();
    id
}

/// One batch of a shared-memory block, found through its index, is that batch: every batch
/// (empty ones too), asked for in any order and more than once, and nothing past the last; a
/// block with dictionaries and a heap store have no index.
#[test]
fn a_shared_block_serves_each_batch_through_its_index() {
    let tmp = tempfile::tempdir().unwrap();
    let store = shared_store(1 << 30, tmp.path());
    let (id, batches) = a_block_of_four_batches_in(&store);
    for index in [2usize, 0, 3, 1, 2, 0] {
        let (schema, message) = store.shared_batch(id, index).unwrap().unwrap();
        let mut stored = format::header(true).to_vec();
        stored.extend_from_slice(&schema);
        stored.extend_from_slice(&message);
        format::write_ipc_end(&mut stored).unwrap();
        let read = read_object(id, Bytes::from(stored)).unwrap();
        assert_eq!(block_of(read), batches[index], "batch {index}");
    }
    let (_, past) = store.shared_batch(id, 4).unwrap().unwrap();
    assert!(past.is_empty());

    let with_dictionaries = a_block_with_dictionaries_in(&store);
    assert!(store.shared_batch(with_dictionaries, 0).unwrap().is_none());

    let heap = heap_store(1 << 30, &tmp.path().join("heap"));
    heap.put(id, batch(0, 5).into()).unwrap();
    assert!(heap.shared_batch(id, 0).unwrap().is_none());
    assert!(matches!(
        store.shared_batch(ObjectId::random(), 0),
        Err(Error::ObjectNotFound { .. })
    ));
}

/// A batch read at the ranges `batch_ranges` gives, out of the stored bytes, is that batch, in
/// any order and repeated (empty batches and past the last included); blocks with
/// dictionaries and heap objects have none, and ranges that do not fit the object are an
/// error, not a panic.
#[test]
fn each_batch_reads_alone_where_the_store_says_it_lies() {
    let tmp = tempfile::tempdir().unwrap();
    let store = shared_store(1 << 30, tmp.path());
    let (id, batches) = a_block_of_four_batches_in(&store);
    let stored = store.stored_bytes(id).unwrap();
    for index in [2usize, 0, 3, 1, 2, 0, 4] {
        let (schema, message) = store.batch_ranges(id, index).unwrap().unwrap();
        let read = format::read_batch_at(id, &stored, schema, message).unwrap();
        let expected = batches.get(index).map_or(0, |b| b.num_rows());
        let read = read.into_block(id).unwrap();
        assert_eq!(read.num_rows(), expected, "batch {index}");
        if let Some(expected) = batches.get(index) {
            assert_eq!(
                read.batches(),
                std::slice::from_ref(expected),
                "batch {index}"
            );
        }
    }
    let (schema, message) = store.batch_ranges(id, 0).unwrap().unwrap();
    let past_the_end = message.start..stored.len() as u64 + 1;
    for (schema, message) in [
        (schema.clone(), past_the_end),
        (0..schema.end, message.clone()),
        (message.clone(), schema.clone()),
    ] {
        assert!(matches!(
            format::read_batch_at(id, &stored, schema, message),
            Err(Error::CorruptObject { .. })
        ));
    }

    let with_dictionaries = a_block_with_dictionaries_in(&store);
    assert!(store.batch_ranges(with_dictionaries, 0).unwrap().is_none());
    let heap = heap_store(1 << 30, &tmp.path().join("heap"));
    heap.put(id, batch(0, 5).into()).unwrap();
    assert!(heap.batch_ranges(id, 0).unwrap().is_none());
}
