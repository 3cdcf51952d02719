//! `objects`: put and zero-copy get of 64 MiB blocks, in the embedded (heap) store and in a
//! node's shared-memory store.

use std::sync::Arc;

use arrow::array::{Float64Array, Int64Array, RecordBatch};
use manta::engine::{Object, ObjectId, ObjectStore, StoreConfig};

use crate::{Args, peak_rss_mib, timed};

const BLOCK_BYTES: usize = 64 << 20;
const BATCH_ROWS: usize = 64 * 1024;

/// A 64 MiB block of 1 MiB batches (two 8-byte columns).
fn block() -> manta::engine::Block {
    let batches: Vec<RecordBatch> = (0..BLOCK_BYTES / (BATCH_ROWS * 16))
        .map(|i| {
            let start = (i * BATCH_ROWS) as i64;
            RecordBatch::try_from_iter([
                (
                    "id",
                    Arc::new(Int64Array::from_iter_values(
                        start..start + BATCH_ROWS as i64,
                    )) as _,
                ),
                (
                    "value",
                    Arc::new(Float64Array::from_iter_values(
                        (0..BATCH_ROWS).map(|v| v as f64 * 0.5),
                    )) as _,
                ),
            ])
            .unwrap()
        })
        .collect();
    manta::engine::Block::try_new(batches[0].schema(), batches).unwrap()
}

pub fn run(args: &Args) -> anyhow::Result<()> {
    let block = block();
    let blocks_per_run = 16;
    for (name, config) in [
        ("heap", StoreConfig::heap(u64::MAX)),
        ("shm", StoreConfig::shared(u64::MAX)),
    ] {
        let store = ObjectStore::new(config)?;
        for run in 1..=args.runs {
            let ids: Vec<ObjectId> = (0..blocks_per_run).map(|_| ObjectId::random()).collect();
            let (put_seconds, ()) = timed(|| {
                for id in &ids {
                    store.put(*id, Object::Block(block.clone())).unwrap();
                }
            });
            let gets = 1000;
            let (get_seconds, rows) = timed(|| {
                let mut rows = 0;
                for i in 0..gets {
                    let id = ids[i % ids.len()];
                    rows += store.get(id).unwrap().into_block(id).unwrap().num_rows();
                }
                rows
            });
            assert_eq!(rows, gets * block.num_rows());
            let bytes = (blocks_per_run * BLOCK_BYTES) as f64;
            println!(
                "RESULT workload=objects mode={} store={name} run={run} seconds={:.3} put_gbps={:.2} get_per_s={:.0} block_mib=64 peak_rss_mib={}",
                args.mode(),
                put_seconds + get_seconds,
                bytes / put_seconds / 1e9,
                gets as f64 / get_seconds,
                peak_rss_mib()
            );
            for id in ids {
                store.free(id);
            }
        }
    }
    Ok(())
}
