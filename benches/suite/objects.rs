//! `objects`: put and zero-copy get of 64 MiB blocks, in the embedded (heap) store and in a
//! node's shared-memory store.

use manta::engine::{Object, ObjectId, ObjectStore, StoreConfig};

use crate::{Args, numbers_block, peak_rss_mib, timed};

const BLOCK_BYTES: usize = 64 << 20;
const BATCH_ROWS: usize = 64 * 1024;

pub fn run(args: &Args) -> anyhow::Result<()> {
    let block = numbers_block(BLOCK_BYTES, BATCH_ROWS);
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
