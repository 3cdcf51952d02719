//! The memory pressure hook (a process of its own, since the hook and the count of stores under
//! pressure are process-wide): called with `true` when a store of the process is three
//! quarters full or spills, and with `false` when no store is any more, whether its objects
//! were freed, read back or their store dropped.

use std::sync::Arc;

use arrow::array::{Int64Array, RecordBatch};
use manta_engine::store::{on_pressure_change, under_pressure};
use manta_engine::{ObjectId, ObjectStore, StoreConfig};
use parking_lot::Mutex;

static CALLS: Mutex<Vec<bool>> = Mutex::new(Vec::new());

fn record(under: bool) {
    CALLS.lock().push(under);
}

fn calls() -> Vec<bool> {
    std::mem::take(&mut *CALLS.lock())
}

fn store(budget_bytes: u64, dir: &std::path::Path) -> Arc<ObjectStore> {
    ObjectStore::new(StoreConfig {
        budget_bytes,
        shared_parent: None,
        spill_parent: dir.to_path_buf(),
    })
    .unwrap()
}

/// Puts `count` blocks of 10,000 `i64`s (80,000 bytes each) and returns their ids.
fn put_blocks(store: &ObjectStore, count: usize) -> Vec<ObjectId> {
    (0..count)
        .map(|i| {
            let start = i as i64 * 10_000;
            let column = Int64Array::from_iter_values(start..start + 10_000);
            let batch = RecordBatch::try_from_iter([("x", Arc::new(column) as _)]).unwrap();
            let id = ObjectId::random();
            store.put(id, batch.into()).unwrap();
            id
        })
        .collect()
}

#[test]
fn the_hook_hears_when_stores_come_under_and_leave_pressure() {
    let tmp = tempfile::tempdir().unwrap();
    on_pressure_change(record);

    // Well within budget: no pressure, no call.
    let roomy = store(1 << 30, tmp.path());
    put_blocks(&roomy, 4);
    assert!(!under_pressure());
    assert_eq!(calls(), Vec::<bool>::new());

    // Three quarters full, nothing spilled yet: pressure, until an object is freed.
    let block_bytes = roomy.usage().resident_bytes / 4;
    let nearly_full = store(block_bytes * 5 / 4, tmp.path());
    let ids = put_blocks(&nearly_full, 1);
    assert_eq!(nearly_full.usage().spilled_bytes, 0);
    assert_eq!(calls(), vec![true]);
    nearly_full.free(ids[0]);
    assert_eq!(calls(), vec![false]);

    // Past the budget the store spills: pressure, told once however much more spills.
    let tight = store(200_000, tmp.path());
    let spilled = put_blocks(&tight, 6);
    assert!(tight.usage().spilled_bytes > 0);
    assert!(under_pressure());
    assert_eq!(calls(), vec![true]);

    // A second store spilling adds no call; the process stays under pressure until both stop.
    let other = store(100_000, tmp.path());
    put_blocks(&other, 3);
    assert!(other.usage().spilled_bytes > 0);
    assert_eq!(calls(), Vec::<bool>::new());

    // Reading a spilled object back and freeing the rest clears the first store...
    for (i, id) in spilled.iter().enumerate() {
        if i % 2 == 0 {
            tight.get(*id).unwrap();
        }
        tight.free(*id);
    }
    assert_eq!(tight.usage().spilled_bytes, 0);
    assert!(
        under_pressure(),
        "the other store still holds spilled objects"
    );
    assert_eq!(calls(), Vec::<bool>::new());

    // ...and dropping the second one, spilled objects and all, ends the pressure.
    drop(other);
    assert!(!under_pressure());
    assert_eq!(calls(), vec![false]);

    // A hook registered while a store is under pressure hears of it at once.
    let again = store(100_000, tmp.path());
    put_blocks(&again, 3);
    assert_eq!(calls(), vec![true]);
    on_pressure_change(record);
    assert_eq!(calls(), vec![true]);
    drop(again);
    assert_eq!(calls(), vec![false]);
}
