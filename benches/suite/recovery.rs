//! `recovery`: what losing a node costs. On a cluster (`--address`), the quickstart (read →
//! filter → revenue → map_batches, consumed as a stream) and a shuffle (`random_shuffle`,
//! consumed as a stream) run once undisturbed, then once more while the node given with
//! `--kill-node PID` is SIGKILLed halfway (at half the undisturbed run's time). Each prints
//! its seconds, the objects and rows made again from lineage, and an order-independent
//! checksum, which must match the undisturbed run's. Once, before: the lineage kept per block
//! of the quickstart's output (`lineage_bytes_per_block`).
//!
//! ```text
//! manta start --head --port 0 ; manta start --address A --num-cpus 1 (three times, noting one pid)
//! cargo bench --bench workloads -- recovery --address A --kill-node PID [--scale 1]
//! ```
//! The killed node is gone afterwards: start another before the next invocation.

use std::time::Duration;

use manta::prelude::*;

use crate::{Args, timed};

pub fn run(args: &Args) -> anyhow::Result<()> {
    anyhow::ensure!(
        args.address.is_some(),
        "recovery runs on a cluster: pass --address"
    );
    let victim = args
        .kill_node
        .ok_or_else(|| anyhow::anyhow!("pass --kill-node PID, a node of the cluster"))?;
    let input = manta::tpch::lineitem(&args.data_dir(), args.scale)?;
    let mut config = manta::Config::from_env()?;
    config.address = args.address.clone();
    let ctx = manta::init_with(config)?;
    let path = input.to_str().expect("a UTF-8 path");
    let quickstart = || manta::tpch::etl(&ctx, &input, Default::default(), Default::default());
    let shuffle = || -> manta::Result<Dataset> {
        Ok(ctx
            .read_parquet(path)?
            .select_columns(&["l_orderkey", "l_partkey", "l_quantity", "l_comment"])
            .random_shuffle(Some(7)))
    };

    let kept = quickstart()?.materialize()?;
    let blocks = kept.num_blocks().unwrap_or(1).max(1);
    println!(
        "RESULT workload=recovery case=lineage scale={} blocks={blocks} lineage_bytes_per_block={}",
        args.scale,
        manta::engine::lineage::lineage_bytes() / blocks as u64
    );
    drop(kept);

    let (quickstart_seconds, undisturbed) = timed(|| stream(&quickstart()?));
    let undisturbed = undisturbed?;
    report(
        args,
        "quickstart",
        "undisturbed",
        quickstart_seconds,
        &undisturbed,
        &undisturbed,
    );
    let (shuffle_seconds, shuffled) = timed(|| stream(&shuffle()?));
    let shuffled = shuffled?;
    report(
        args,
        "shuffle",
        "undisturbed",
        shuffle_seconds,
        &shuffled,
        &shuffled,
    );

    // Again, the node killed halfway through: the quickstart, or with `--no-baseline` the
    // shuffle (start another node and pass its pid for the second invocation).
    let (case, dataset, expected, half) = if args.no_baseline {
        ("shuffle", shuffle()?, &shuffled, shuffle_seconds / 2.0)
    } else {
        (
            "quickstart",
            quickstart()?,
            &undisturbed,
            quickstart_seconds / 2.0,
        )
    };
    let killer = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_secs_f64(half));
        // SAFETY: kill(2) of the node the operator named.
        unsafe { libc::kill(victim, libc::SIGKILL) }
    });
    let (seconds, disturbed) = timed(|| stream(&dataset));
    let killed = killer.join().expect("the killer thread") == 0;
    anyhow::ensure!(killed, "could not kill node pid {victim}");
    report(
        args,
        case,
        "node-killed-halfway",
        seconds,
        &disturbed?,
        expected,
    );
    Ok(())
}

/// What a run gave: its checksum, and what this process had made again by its end.
struct Outcome {
    checksum: manta::Checksum,
    remade: manta::scheduler::lineage::Remade,
}

/// Consumes `dataset` as a stream.
fn stream(dataset: &Dataset) -> manta::Result<Outcome> {
    let before = manta::scheduler::lineage::remade();
    let mut checksum = manta::Checksum::default();
    for batch in dataset.iter_batches()? {
        checksum.update(&batch?)?;
    }
    let after = manta::scheduler::lineage::remade();
    Ok(Outcome {
        checksum,
        remade: manta::scheduler::lineage::Remade {
            objects: after.objects - before.objects,
            rows: after.rows - before.rows,
        },
    })
}

fn report(
    args: &Args,
    case: &str,
    mode: &str,
    seconds: f64,
    outcome: &Outcome,
    expected: &Outcome,
) {
    println!(
        "RESULT workload=recovery case={case} mode={mode} scale={} seconds={seconds:.3} rows={} \
         remade_objects={} remade_rows={} same_answer={}",
        args.scale,
        outcome.checksum.rows,
        outcome.remade.objects,
        outcome.remade.rows,
        outcome.checksum == expected.checksum
    );
}
