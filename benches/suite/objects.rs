//! `objects`: put and zero-copy get of 64 MiB blocks, in the embedded (heap) store and in a
//! node's shared-memory store; then through the Ray Core API (`ctx.put_batch`,
//! `ctx.get_batch`), embedded or on the cluster at `--address`.

use manta::engine::{Object, ObjectId, ObjectStore, StoreConfig};

use crate::{Args, numbers_block, peak_rss_mib, timed};

const BLOCK_BYTES: usize = 64 << 20;
const BATCH_ROWS: usize = 64 * 1024;

pub fn run(args: &Args) -> anyhow::Result<()> {
    if args.address.is_none() {
        run_stores(args)?;
    }
    run_api(args)
}

/// `ctx.put_batch` and `ctx.get_batch` of a 64 MiB batch: in the driver's store embedded, on a
/// node's store (and back over Flight) on a cluster.
fn run_api(args: &Args) -> anyhow::Result<()> {
    let mut config = manta::Config::from_env()?;
    config.address = args.address.clone();
    let ctx = manta::init_with(config)?;
    let batch = numbers_block(BLOCK_BYTES, BLOCK_BYTES / 16).concat()?;
    let puts = if args.address.is_some() { 4 } else { 16 };
    for run in 1..=args.runs {
        let (put_seconds, refs) = timed(|| {
            (0..puts)
                .map(|_| ctx.put_batch(batch.clone()))
                .collect::<Result<Vec<_>, _>>()
        });
        let refs = refs?;
        let (get_seconds, rows) = timed(|| {
            refs.iter()
                .map(|r| ctx.get_batch(r).map(|b| b.num_rows()))
                .sum::<Result<usize, _>>()
        });
        anyhow::ensure!(
            rows? == puts * batch.num_rows(),
            "every get returns the batch"
        );
        let bytes = (puts * BLOCK_BYTES) as f64;
        println!(
            "RESULT workload=objects mode={} store=api run={run} put_gbps={:.2} get_gbps={:.2} get_per_s={:.0} block_mib=64 peak_rss_mib={}",
            args.mode(),
            bytes / put_seconds / 1e9,
            bytes / get_seconds / 1e9,
            puts as f64 / get_seconds,
            peak_rss_mib()
        );
    }
    Ok(())
}

fn run_stores(args: &Args) -> anyhow::Result<()> {
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
