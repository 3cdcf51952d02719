//! End-to-end tests on a real loopback cluster: a head and two node daemons as separate
//! processes on 127.0.0.1, worker processes started from this test binary, blocks moving
//! between nodes over Arrow Flight.
//!
//! `harness = false`: worker processes are this very executable, so `main` must first let a
//! worker become one (`manta::run_worker_if_requested`), which libtest's `main` would not.

mod common;

use std::sync::Arc;

use arrow::array::{Array, BooleanArray, RecordBatch, UInt32Array};
use arrow::datatypes::{DataType, Field, Schema};
use manta::{Config, MapBatchesOptions, ReadOptions};

use common::*;

fn main() {
    manta::run_worker_if_requested();
    type Test = (&'static str, fn(&Cluster));
    let tests: &[Test] = &[
        (
            "quickstart_runs_across_two_nodes_and_matches_embedded",
            quickstart_runs_across_two_nodes_and_matches_embedded,
        ),
        (
            "workers_read_blocks_zero_copy_from_shared_memory",
            workers_read_blocks_zero_copy_from_shared_memory,
        ),
        (
            "a_failing_task_on_a_node_names_the_function",
            a_failing_task_on_a_node_names_the_function,
        ),
        (
            "all_to_all_operations_match_sql_across_nodes",
            all_to_all_operations_match_sql_across_nodes,
        ),
    ];
    let filter = std::env::args().nth(1).filter(|a| !a.starts_with('-'));
    let cluster = Cluster::start(&["a=1", "b=1"]);
    let mut failed = 0;
    for (name, test) in tests
        .iter()
        .filter(|(name, _)| filter.as_deref().is_none_or(|f| name.contains(f)))
    {
        println!("test {name} ...");
        match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| test(&cluster))) {
            Ok(()) => println!("test {name} ... ok"),
            Err(_) => {
                println!("test {name} ... FAILED");
                failed += 1;
            }
        }
    }
    drop(cluster);
    if failed > 0 {
        eprintln!("{failed} cluster test(s) failed");
        std::process::exit(1);
    }
}

fn quickstart_runs_across_two_nodes_and_matches_embedded(cluster: &Cluster) {
    let tmp = tempfile::tempdir().unwrap();
    let input = small_lineitem(tmp.path());
    // Reads run only on node "a", the batch function only on node "b": every block is produced
    // on one node and consumed on the other.
    let read = ReadOptions {
        resources: on("a"),
        ..small_tasks()
    };
    let map = MapBatchesOptions::default().resources(on("b"));

    let ctx = cluster.connect();
    let ds = etl(&ctx, &input, read.clone(), map.clone());
    let out = tmp.path().join("cluster-out");
    let written = ds.write_parquet(&out).unwrap();
    let stats = ds.stats();
    assert_eq!(stats.stages.len(), 2);
    let (produce, consume) = (&stats.stages[0], &stats.stages[1]);
    assert!(produce.tasks > 10);
    assert_eq!(
        consume.task.pulled_objects, produce.tasks,
        "every block crossed nodes: {stats}"
    );
    assert_eq!(consume.task.pulled_bytes, produce.bytes_out, "{stats}");

    let embedded = manta::init_with(Config {
        custom_resources: [("a".into(), 1.0), ("b".into(), 1.0)].into(),
        ..Default::default()
    })
    .unwrap();
    let local_out = tmp.path().join("embedded-out");
    let local = etl(&embedded, &input, read, map)
        .write_parquet(&local_out)
        .unwrap();
    assert_eq!(written.rows, local.rows);
    assert_eq!(
        checksum_of_parquet_dir(&out),
        checksum_of_parquet_dir(&local_out)
    );
    assert_eq!(checksum_of_parquet_dir(&out), expected_etl(&input));
}

/// For each batch: the pid of the process running it, and whether its first column's values
/// live in a mapping of a file under /dev/shm (the node's object store), read from
/// /proc/self/maps.
#[manta::remote]
fn where_is_my_data(batch: RecordBatch) -> Result<RecordBatch, manta::engine::BoxError> {
    let values = batch.column(0).to_data().buffers()[0].as_ptr() as usize;
    let maps = std::fs::read_to_string("/proc/self/maps")?;
    let in_shm = maps.lines().any(|line| {
        let mut parts = line.split_whitespace();
        let range = parts.next().unwrap_or("");
        let path = parts.nth(4).unwrap_or("");
        let (start, end) = range.split_once('-').unwrap_or(("0", "0"));
        let (start, end) = (
            usize::from_str_radix(start, 16).unwrap_or(0),
            usize::from_str_radix(end, 16).unwrap_or(0),
        );
        (start..end).contains(&values) && path.starts_with("/dev/shm/manta-")
    });
    let n = batch.num_rows();
    let schema = Arc::new(Schema::new(vec![
        Field::new("pid", DataType::UInt32, false),
        Field::new("in_shm", DataType::Boolean, false),
    ]));
    Ok(RecordBatch::try_new(
        schema,
        vec![
            Arc::new(UInt32Array::from(vec![std::process::id(); n])),
            Arc::new(BooleanArray::from(vec![in_shm; n])),
        ],
    )?)
}

fn workers_read_blocks_zero_copy_from_shared_memory(cluster: &Cluster) {
    let tmp = tempfile::tempdir().unwrap();
    let input = small_lineitem(tmp.path());
    let ctx = cluster.connect();
    let ds = ctx
        .read_parquet_with(
            input.to_str().unwrap(),
            ReadOptions {
                resources: on("a"),
                ..small_tasks()
            },
        )
        .unwrap()
        .map_batches_with(
            where_is_my_data,
            MapBatchesOptions::default().resources(on("b")),
        );
    let batches = ds.take(usize::MAX).unwrap();
    assert!(!batches.is_empty());
    let node_pids = [
        cluster.nodes[0].pid(),
        cluster.nodes[1].pid(),
        std::process::id(),
    ];
    for batch in &batches {
        let pids = batch
            .column(0)
            .as_any()
            .downcast_ref::<UInt32Array>()
            .unwrap();
        let in_shm = batch
            .column(1)
            .as_any()
            .downcast_ref::<BooleanArray>()
            .unwrap();
        assert!(
            pids.iter().flatten().all(|pid| !node_pids.contains(&pid)),
            "ran in a worker process"
        );
        assert_eq!(
            in_shm.true_count(),
            in_shm.len(),
            "the block was mapped from shared memory, not copied"
        );
    }
}

#[manta::remote]
fn reject_everything(_batch: RecordBatch) -> manta::Result<RecordBatch> {
    Err(manta::Error::InvalidArgument(
        "this function rejects every batch".into(),
    ))
}

fn a_failing_task_on_a_node_names_the_function(cluster: &Cluster) {
    let tmp = tempfile::tempdir().unwrap();
    let input = small_lineitem(tmp.path());
    let out = tmp.path().join("out");
    let ctx = cluster.connect();
    let err = ctx
        .read_parquet(input.to_str().unwrap())
        .unwrap()
        .map_batches(reject_everything)
        .write_parquet(&out)
        .unwrap_err();
    match &err {
        manta::Error::Execution(manta::scheduler::Error::UserFunction {
            function,
            message,
            ..
        }) => {
            assert!(function.ends_with("reject_everything"), "{function}");
            assert!(message.contains("rejects every batch"), "{message}");
        }
        other => panic!("expected UserFunction, got {other:?}"),
    }
    assert!(!out.exists());
}

fn all_to_all_operations_match_sql_across_nodes(cluster: &Cluster) {
    use manta::{Aggregate, JoinKind, SortKey};
    let tmp = tempfile::tempdir().unwrap();
    let input = small_lineitem(tmp.path());
    let df = lineitem_sql(&input);
    let ctx = cluster.connect();
    let lineitem = ctx
        .read_parquet_with(input.to_str().unwrap(), small_tasks())
        .unwrap()
        .select_columns(&["l_orderkey", "l_linenumber", "l_returnflag", "l_quantity"]);

    // A shuffle then a sort: every row crosses the map/reduce boundary twice.
    let sorted_ds = lineitem.random_shuffle(Some(5)).sort_by(vec![
        SortKey::asc("l_orderkey"),
        SortKey::desc("l_linenumber"),
    ]);
    let ours = sorted_ds.to_arrow().unwrap();
    let expected = sql(
        &df,
        "SELECT l_orderkey, l_linenumber, l_returnflag, l_quantity FROM lineitem \
         ORDER BY l_orderkey, l_linenumber DESC",
    );
    assert_eq!(rows(&ours), rows(&expected));
    let stats = sorted_ds.stats();
    assert!(
        stats.pulled_bytes() > 0,
        "reducers pulled partitions from the other node: {stats}"
    );

    // Group and aggregate, with the reduce running DataFusion in worker processes.
    let grouped = lineitem
        .groupby(&["l_returnflag"])
        .aggregate(vec![Aggregate::count(), Aggregate::sum("l_quantity")])
        .to_arrow()
        .unwrap();
    let expected = sql(
        &df,
        "SELECT l_returnflag, count(*), sum(l_quantity) FROM lineitem GROUP BY l_returnflag",
    );
    assert_eq!(sorted(rows(&grouped)), sorted(rows(&expected)));

    // A join with a small table shipped from the driver (from_arrow on a cluster).
    let flags = RecordBatch::try_from_iter([
        (
            "l_returnflag",
            Arc::new(arrow::array::StringViewArray::from(vec!["A", "R"])) as _,
        ),
        (
            "meaning",
            Arc::new(arrow::array::StringArray::from(vec![
                "accepted", "returned",
            ])) as _,
        ),
    ])
    .unwrap();
    let joined = lineitem
        .join(
            &ctx.from_arrow(vec![flags.clone()]).unwrap(),
            &["l_returnflag"],
            JoinKind::Inner,
        )
        .to_arrow()
        .unwrap();
    df.register_batch("flags", flags).unwrap();
    let expected = sql(
        &df,
        "SELECT l.l_orderkey, l.l_linenumber, l.l_returnflag, l.l_quantity, f.meaning \
         FROM lineitem l JOIN flags f ON l.l_returnflag = f.l_returnflag",
    );
    assert_eq!(sorted(rows(&joined)), sorted(rows(&expected)));
}
