//! The Dataset API in embedded mode, operation by operation, each result checked against
//! DataFusion SQL over the same input or against plain Rust.

use crate::common;

use std::collections::BTreeMap;
use std::sync::Arc;

use arrow::array::{Array, ArrayRef, Float64Array, Int64Array, RecordBatch, StringArray};
use arrow::datatypes::DataType;
use datafusion::prelude::SessionContext;
use manta::prelude::*;
use manta::{Config, JoinKind};

use common::*;

/// The values of an `Int64` column without nulls.
fn int64s(batch: &RecordBatch, column: usize) -> Vec<i64> {
    let array = batch
        .column(column)
        .as_any()
        .downcast_ref::<Int64Array>()
        .unwrap();
    array.values().to_vec()
}

fn people() -> RecordBatch {
    RecordBatch::try_from_iter([
        (
            "id",
            Arc::new(Int64Array::from(vec![
                Some(1),
                Some(2),
                None,
                Some(4),
                Some(5),
            ])) as ArrayRef,
        ),
        (
            "name",
            Arc::new(StringArray::from(vec![
                Some("Zoë"),
                Some("李"),
                Some("x"),
                None,
                Some("🦀"),
            ])) as ArrayRef,
        ),
        (
            "score",
            Arc::new(Float64Array::from(vec![1.5, -2.0, 0.0, 3.25, 1e10])) as ArrayRef,
        ),
    ])
    .unwrap()
}

#[test]
fn file_sources_read_what_datafusion_and_std_read() {
    let tmp = tempfile::tempdir().unwrap();
    let ctx = embedded();
    let batch = people();
    let df = SessionContext::new();
    let rt = tokio::runtime::Runtime::new().unwrap();

    // CSV and JSON in two files each: a directory read.
    for (dir, ext) in [("csv", "csv"), ("json", "json")] {
        std::fs::create_dir(tmp.path().join(dir)).unwrap();
        for part in 0..2 {
            let path = tmp.path().join(dir).join(format!("part{part}.{ext}"));
            let file = std::fs::File::create(&path).unwrap();
            if ext == "csv" {
                let mut w = arrow::csv::Writer::new(file);
                w.write(&batch).unwrap();
            } else {
                let mut w = arrow::json::LineDelimitedWriter::new(file);
                w.write(&batch).unwrap();
                w.finish().unwrap();
            }
        }
    }
    let dir = |d: &str| tmp.path().join(d).to_str().unwrap().to_string();
    rt.block_on(df.register_csv("c", &dir("csv"), Default::default()))
        .unwrap();
    rt.block_on(df.register_json("j", &dir("json"), Default::default()))
        .unwrap();
    let ours = ctx.read_csv(&dir("csv")).unwrap().to_arrow().unwrap();
    assert_eq!(
        sorted(rows(&ours)),
        sorted(rows(&sql(&df, "SELECT * FROM c")))
    );
    assert_eq!(ours.iter().map(|b| b.num_rows()).sum::<usize>(), 10);
    let ours = ctx.read_json(&dir("json")).unwrap().to_arrow().unwrap();
    assert_eq!(
        sorted(rows(&ours)),
        sorted(rows(&sql(&df, "SELECT * FROM j")))
    );

    // IPC: the batch comes back as written.
    let ipc = tmp.path().join("people.arrow");
    let mut w = arrow::ipc::writer::FileWriter::try_new(
        std::fs::File::create(&ipc).unwrap(),
        &batch.schema(),
    )
    .unwrap();
    w.write(&batch).unwrap();
    w.finish().unwrap();
    let ours = ctx
        .read_ipc(ipc.to_str().unwrap())
        .unwrap()
        .to_arrow()
        .unwrap();
    assert_eq!(ours, vec![batch.clone()]);

    // Text: a row per line; binary files: the bytes std reads.
    let text = tmp.path().join("lines.txt");
    std::fs::write(&text, "héllo\r\nworld\n\nlast").unwrap();
    let lines = ctx
        .read_text(text.to_str().unwrap())
        .unwrap()
        .to_arrow()
        .unwrap();
    let expected: Vec<String> = std::fs::read_to_string(&text)
        .unwrap()
        .lines()
        .map(String::from)
        .collect();
    assert_eq!(rows(&lines), expected);
    let files = ctx
        .read_binary_files(&dir("csv"))
        .unwrap()
        .to_arrow()
        .unwrap();
    let files = &files[0];
    for i in 0..files.num_rows() {
        let path = files
            .column(0)
            .as_any()
            .downcast_ref::<StringArray>()
            .unwrap()
            .value(i);
        let bytes = files
            .column(1)
            .as_any()
            .downcast_ref::<arrow::array::BinaryArray>()
            .unwrap()
            .value(i);
        assert_eq!(bytes, std::fs::read(path).unwrap().as_slice());
    }

    // range: every integer once.
    let ids = ctx.range(100_003).to_arrow().unwrap();
    let sum: i64 = ids
        .iter()
        .map(|b| {
            arrow::compute::sum(b.column(0).as_any().downcast_ref::<Int64Array>().unwrap()).unwrap()
        })
        .sum();
    assert_eq!(sum, (0..100_003i64).sum::<i64>());
}

#[test]
fn in_memory_sources_round_trip_nested_and_unicode_values() {
    #[derive(serde::Serialize)]
    struct Item {
        id: i64,
        tags: Vec<String>,
        point: Point,
        note: Option<String>,
    }
    #[derive(serde::Serialize)]
    struct Point {
        x: f64,
        y: f64,
    }
    let items: Vec<Item> = (0..50)
        .map(|i| Item {
            id: i,
            tags: (0..i % 3).map(|t| format!("t{t}·")).collect(),
            point: Point {
                x: i as f64,
                y: -(i as f64),
            },
            note: (i % 4 == 0).then(|| "ünïcode".to_string()),
        })
        .collect();
    let ctx = embedded();
    let ds = ctx.from_items(&items).unwrap();
    let batches = ds.sort(desc("id")).to_arrow().unwrap();
    let all = arrow::compute::concat_batches(&batches[0].schema(), &batches).unwrap();
    assert_eq!(all.num_rows(), 50);
    let ids = all
        .column_by_name("id")
        .unwrap()
        .as_any()
        .downcast_ref::<Int64Array>()
        .unwrap();
    assert_eq!(ids.values().to_vec(), (0..50).rev().collect::<Vec<i64>>());
    assert!(matches!(
        all.column_by_name("tags").unwrap().data_type(),
        DataType::List(_)
    ));
    assert!(matches!(
        all.column_by_name("point").unwrap().data_type(),
        DataType::Struct(_)
    ));
    assert_eq!(all.column_by_name("note").unwrap().null_count(), 37);

    let again = ctx.from_arrow(vec![people(), people()]).unwrap();
    assert_eq!(again.count().unwrap(), 10);
    assert_eq!(again.to_arrow().unwrap(), vec![people(), people()]);
}

#[test]
fn column_operators_sample_and_limit() {
    let ctx = embedded();
    let ds = ctx.from_arrow(vec![people()]).unwrap();
    let out = ds
        .select_columns(&["score", "id"])
        .rename_columns(&[("score", "points")])
        .to_arrow()
        .unwrap();
    assert_eq!(out[0].schema().field(0).name(), "points");
    assert_eq!(out[0].column(1), people().column(0));
    let dropped = ds.drop_columns(&["name"]).schema().unwrap();
    assert_eq!(dropped.fields().len(), 2);
    let error = ds
        .select_columns(&["nope"])
        .count()
        .unwrap_err()
        .to_string();
    assert!(
        error.contains("nope") && error.contains("id, name, score"),
        "{error}"
    );

    let numbers = ctx.range(20_000);
    let sample = numbers.random_sample(0.25, Some(7)).to_arrow().unwrap();
    let again = numbers.random_sample(0.25, Some(7)).to_arrow().unwrap();
    assert_eq!(sample, again, "the same seed keeps the same rows");
    let kept: usize = sample.iter().map(|b| b.num_rows()).sum();
    assert!((4_500..5_500).contains(&kept), "{kept}");

    let limited = numbers.limit(1234);
    assert_eq!(limited.count().unwrap(), 1234);
    let ids: Vec<i64> = limited
        .filter(col("id").gt_eq(lit(0)))
        .to_arrow()
        .unwrap()
        .iter()
        .flat_map(|b| int64s(b, 0))
        .collect();
    let mut unique = ids.clone();
    unique.sort();
    unique.dedup();
    assert_eq!(unique.len(), 1234, "distinct rows after the limit");
    let batch = numbers.take_batch(10).unwrap();
    assert_eq!(batch.num_rows(), 10);
    let sizes: Vec<usize> = numbers
        .iter_batches_of(3000)
        .unwrap()
        .map(|b| b.unwrap().num_rows())
        .collect();
    assert_eq!(sizes.iter().sum::<usize>(), 20_000);
    assert!(
        sizes[..sizes.len() - 1].iter().all(|s| *s == 3000),
        "{sizes:?}"
    );
}

#[test]
fn shuffle_sort_and_repartition_keep_every_row() {
    let tmp = tempfile::tempdir().unwrap();
    let input = small_lineitem(tmp.path());
    let ctx = embedded();
    let df = lineitem_sql(&input);
    let ds = ctx
        .read_parquet_with(input.to_str().unwrap(), small_tasks())
        .unwrap()
        .select_columns(&["l_orderkey", "l_linenumber", "l_shipmode", "l_quantity"]);

    let sorting = ds.sort_by(vec![
        SortKey::desc("l_shipmode"),
        SortKey::asc("l_orderkey"),
        SortKey::asc("l_linenumber"),
    ]);
    let sorted_ours = sorting.to_arrow().unwrap();
    let expected = sql(
        &df,
        "SELECT l_orderkey, l_linenumber, l_shipmode, l_quantity FROM lineitem \
         ORDER BY l_shipmode DESC, l_orderkey, l_linenumber",
    );
    assert_eq!(
        rows(&sorted_ours),
        rows(&expected),
        "sorted exactly as SQL sorts"
    );
    // A read is sorted in two passes (a sample of the keys, then partitioning inside the read
    // stage), and iterating streams the reduced blocks in sorted order.
    let streamed: Vec<RecordBatch> = sorting
        .iter_batches()
        .unwrap()
        .map(Result::unwrap)
        .collect();
    assert_eq!(rows(&streamed), rows(&expected), "iterated in sorted order");
    let stats = sorting.stats();
    let names: Vec<&str> = stats.stages.iter().map(|s| s.name.as_str()).collect();
    assert!(
        names[0].starts_with("SortSample(") && names[1].ends_with("->SortMap"),
        "{stats}"
    );
    assert_eq!(stats.stages[2].rows_in, stats.stages[1].rows_out, "{stats}");

    let shuffled = ds.random_shuffle(Some(3));
    let once = rows(&shuffled.to_arrow().unwrap());
    assert_eq!(sorted(once.clone()), sorted(rows(&expected)));
    assert_ne!(once, rows(&ds.to_arrow().unwrap()), "the order changed");
    assert_eq!(
        once,
        rows(&shuffled.to_arrow().unwrap()),
        "a seed repeats the order"
    );
    let stats = shuffled.stats();
    assert!(
        stats
            .stages
            .iter()
            .any(|s| s.name.ends_with("->RandomShuffleMap")),
        "{stats}"
    );

    for shuffle in [false, true] {
        let parts = match shuffle {
            true => ds.repartition_shuffled(3),
            false => ds.repartition(3),
        }
        .materialize()
        .unwrap();
        assert_eq!(parts.num_blocks(), Some(3));
        let blocks = parts.to_arrow().unwrap();
        assert_eq!(sorted(rows(&blocks)), sorted(rows(&expected)));
        if !shuffle {
            assert_eq!(
                rows(&blocks),
                rows(&ds.to_arrow().unwrap()),
                "split in order"
            );
        }
    }
}

#[test]
fn groupby_aggregates_match_sql() {
    let tmp = tempfile::tempdir().unwrap();
    let input = small_lineitem(tmp.path());
    let ctx = embedded();
    let df = lineitem_sql(&input);
    let ds = ctx
        .read_parquet_with(input.to_str().unwrap(), small_tasks())
        .unwrap()
        .with_column(
            "qty",
            datafusion::logical_expr::cast(col("l_quantity"), DataType::Float64),
        );
    let grouped = ds
        .groupby(&["l_returnflag", "l_linestatus"])
        .aggregate(vec![
            Aggregate::count(),
            Aggregate::sum("l_extendedprice"),
            Aggregate::min("l_shipdate"),
            Aggregate::max("l_comment"),
            Aggregate::mean("qty"),
            Aggregate::std("qty"),
            Aggregate::count_distinct("l_suppkey"),
        ]);
    let expected = sql(
        &df,
        "SELECT l_returnflag, l_linestatus, count(*), sum(l_extendedprice), min(l_shipdate), \
         max(l_comment), avg(CAST(l_quantity AS DOUBLE)), stddev(CAST(l_quantity AS DOUBLE)), \
         count(DISTINCT l_suppkey) FROM lineitem GROUP BY l_returnflag, l_linestatus",
    );
    let ours = grouped.to_arrow().unwrap();
    assert_eq!(sorted(rows(&ours)), sorted(rows(&expected)));
    assert_eq!(grouped.schema().unwrap().field(2).name(), "count()");
    // A few kilobytes of partial states: one task reduces every partition.
    let stats = grouped.stats();
    let reduce = stats.stages.iter().find(|s| s.name == "AggregateReduce");
    assert_eq!(reduce.map(|s| s.tasks), Some(1), "{stats}");

    let whole = ds
        .aggregate(vec![Aggregate::sum("l_quantity").alias("q")])
        .to_arrow()
        .unwrap();
    assert_eq!(
        rows(&whole),
        rows(&sql(&df, "SELECT sum(l_quantity) FROM lineitem"))
    );

    let mut modes: Vec<String> =
        rows(&[RecordBatch::try_from_iter([("m", ds.unique("l_shipmode").unwrap())]).unwrap()]);
    modes.sort();
    assert_eq!(
        modes,
        rows(&sql(
            &df,
            "SELECT DISTINCT l_shipmode FROM lineitem ORDER BY 1"
        ))
    );
}

#[manta::remote]
fn biggest_quantity(group: RecordBatch) -> manta::Result<RecordBatch> {
    let q = group
        .column_by_name("q")
        .unwrap()
        .as_any()
        .downcast_ref::<Int64Array>()
        .unwrap();
    let best = (0..q.len()).max_by_key(|i| q.value(*i)).unwrap();
    Ok(group.slice(best, 1))
}

#[test]
fn map_groups_sees_whole_groups() {
    let ctx = embedded();
    let n = 10_000i64;
    let ds = ctx
        .range(n as u64)
        .with_column("k", col("id") % lit(37))
        .with_column("q", (col("id") * lit(7919)) % lit(10007));
    let ours = ds
        .groupby(&["k"])
        .map_groups(biggest_quantity)
        .to_arrow()
        .unwrap();
    let mut expected: BTreeMap<i64, (i64, i64)> = BTreeMap::new();
    for id in 0..n {
        let (k, q) = (id % 37, (id * 7919) % 10007);
        let e = expected.entry(k).or_insert((id, q));
        if q > e.1 {
            *e = (id, q);
        }
    }
    let expected: Vec<String> = expected
        .iter()
        .map(|(k, (id, q))| format!("{id}|{k}|{q}"))
        .collect();
    assert_eq!(sorted(rows(&ours)), sorted(expected));
}

#[test]
fn joins_match_sql_for_every_kind() {
    let ctx = embedded();
    let df = SessionContext::new();
    let left = RecordBatch::try_from_iter([
        (
            "k",
            Arc::new(Int64Array::from(vec![
                Some(1),
                Some(2),
                Some(2),
                None,
                Some(5),
                Some(7),
            ])) as ArrayRef,
        ),
        (
            "v",
            Arc::new(StringArray::from(vec!["a", "b", "c", "d", "e", "f"])) as ArrayRef,
        ),
    ])
    .unwrap();
    let right = RecordBatch::try_from_iter([
        (
            "k",
            Arc::new(Int64Array::from(vec![
                Some(2),
                Some(5),
                Some(5),
                None,
                Some(9),
            ])) as ArrayRef,
        ),
        (
            "v",
            Arc::new(StringArray::from(vec!["B", "E", "É", "N", "I"])) as ArrayRef,
        ),
    ])
    .unwrap();
    df.register_batch("l", left.clone()).unwrap();
    df.register_batch("r", right.clone()).unwrap();
    // Two blocks per side, so rows meet across blocks.
    let l = ctx
        .from_arrow(vec![left.slice(0, 3), left.slice(3, 3)])
        .unwrap();
    let r = ctx
        .from_arrow(vec![right.slice(0, 2), right.slice(2, 3)])
        .unwrap();
    for (how, query) in [
        (
            JoinKind::Inner,
            "SELECT l.k, l.v, r.v FROM l JOIN r ON l.k = r.k",
        ),
        (
            JoinKind::Left,
            "SELECT l.k, l.v, r.v FROM l LEFT JOIN r ON l.k = r.k",
        ),
        (
            JoinKind::Right,
            "SELECT r.k, l.v, r.v FROM l RIGHT JOIN r ON l.k = r.k",
        ),
        (
            JoinKind::Full,
            "SELECT coalesce(l.k, r.k), l.v, r.v FROM l FULL JOIN r ON l.k = r.k",
        ),
        (
            JoinKind::Semi,
            "SELECT l.k, l.v FROM l LEFT SEMI JOIN r ON l.k = r.k",
        ),
        (
            JoinKind::Anti,
            "SELECT l.k, l.v FROM l LEFT ANTI JOIN r ON l.k = r.k",
        ),
    ] {
        let joined = l.join(&r, &["k"], how);
        let ours = joined.to_arrow().unwrap();
        assert_eq!(
            sorted(rows(&ours)),
            sorted(rows(&sql(&df, query))),
            "{how:?}"
        );
        if let Some(first) = ours.first()
            && !matches!(how, JoinKind::Semi | JoinKind::Anti)
        {
            assert_eq!(first.schema().field(2).name(), "v_right");
        }
    }
    let error = l
        .join(&r, &["missing"], JoinKind::Inner)
        .count()
        .unwrap_err()
        .to_string();
    assert!(
        error.contains("missing") && error.contains("k, v"),
        "{error}"
    );
}

#[test]
fn union_and_zip() {
    let ctx = embedded();
    let a = ctx.range(1000);
    let b = ctx.range(500).with_column("id", col("id") + lit(1000));
    let both = a.union(&[&b]);
    assert_eq!(both.count().unwrap(), 1500);
    let ids: Vec<i64> = both
        .sort("id")
        .to_arrow()
        .unwrap()
        .iter()
        .flat_map(|b| int64s(b, 0))
        .collect();
    assert_eq!(ids, (0..1500).collect::<Vec<i64>>());

    let left = ctx.range(1000).repartition(3);
    let right = ctx
        .range(1000)
        .with_column("twice", col("id") * lit(2))
        .repartition(7);
    let zipped = left.zip(&right).to_arrow().unwrap();
    let mut n = 0;
    for batch in &zipped {
        assert_eq!(batch.schema().field(1).name(), "id_1");
        for (a, b) in int64s(batch, 0).iter().zip(int64s(batch, 2)) {
            assert_eq!(b, 2 * a);
            n += 1;
        }
    }
    assert_eq!(n, 1000);
    let error = ctx
        .range(3)
        .zip(&ctx.range(4))
        .count()
        .unwrap_err()
        .to_string();
    assert!(error.contains("same length"), "{error}");
}

#[test]
fn writes_round_trip_in_every_format() {
    let tmp = tempfile::tempdir().unwrap();
    let ctx = embedded();
    let ds = ctx
        .from_arrow(vec![people(), people().slice(1, 3)])
        .unwrap();
    let expected = sorted(rows(&ds.to_arrow().unwrap()));
    let out = |name: &str| tmp.path().join(name).to_str().unwrap().to_string();
    ds.write_csv(out("csv")).unwrap();
    ds.write_json(out("json")).unwrap();
    ds.write_ipc(out("ipc")).unwrap();
    let summary = ds.write_parquet(out("parquet")).unwrap();
    assert_eq!((summary.files, summary.rows), (2, 8));
    assert_eq!(
        sorted(rows(
            &ctx.read_csv(&out("csv")).unwrap().to_arrow().unwrap()
        )),
        expected
    );
    assert_eq!(
        sorted(rows(
            &ctx.read_json(&out("json")).unwrap().to_arrow().unwrap()
        )),
        expected
    );
    assert_eq!(
        sorted(rows(
            &ctx.read_ipc(&out("ipc")).unwrap().to_arrow().unwrap()
        )),
        expected
    );
    assert_eq!(
        sorted(rows(
            &ctx.read_parquet(&out("parquet"))
                .unwrap()
                .to_arrow()
                .unwrap()
        )),
        expected
    );
}

#[test]
fn bad_input_gets_clear_errors() {
    let tmp = tempfile::tempdir().unwrap();
    let ctx = embedded();
    let csv = tmp.path().join("bad.csv");
    std::fs::write(&csv, "a,b\n1,2\n3,4,5\n").unwrap();
    let error = ctx
        .read_csv(csv.to_str().unwrap())
        .and_then(|ds| ds.count())
        .unwrap_err()
        .to_string();
    assert!(
        error.contains("bad.csv") && error.contains("CSV"),
        "{error}"
    );

    let nested = RecordBatch::try_from_iter([(
        "m",
        Arc::new(
            arrow::array::MapArray::new_from_strings(
                ["a"].into_iter(),
                &StringArray::from(vec!["x"]),
                &[0, 1],
            )
            .unwrap(),
        ) as ArrayRef,
    )])
    .unwrap();
    let ds = ctx.from_arrow(vec![nested]).unwrap();
    let error = ds.sort("m").count().unwrap_err().to_string();
    assert!(
        error.contains("cannot sort") || error.contains("not supported"),
        "{error}"
    );
    let error = ctx.range(10).sort("nope").count().unwrap_err().to_string();
    assert!(error.contains("nope") && error.contains("id"), "{error}");
}

/// A context of two CPUs whose store holds `store_bytes`, and a dataset reading the small
/// lineitem file written under `dir` (also returned) in several tasks.
fn small_lineitem_under_a_store_of(
    dir: &std::path::Path,
    store_bytes: u64,
) -> (std::path::PathBuf, manta::Context, manta::Dataset) {
    let input = small_lineitem(dir);
    let ctx = manta::init_with(Config {
        num_cpus: Some(2),
        object_store_memory: Some(store_bytes),
        ..Default::default()
    })
    .unwrap();
    let ds = ctx
        .read_parquet_with(input.to_str().unwrap(), small_tasks())
        .unwrap();
    (input, ctx, ds)
}

/// A shuffle streamed through a store its map outputs overflow: every row comes out, and the
/// stats say how many tasks of each stage ran at once. (Which store usage holds back a task is
/// `executor::store_has_room`'s unit test: the map outputs no longer do.)
#[test]
fn a_shuffle_streamed_through_a_full_store_keeps_every_row() {
    let tmp = tempfile::tempdir().unwrap();
    let (input, ctx, ds) = small_lineitem_under_a_store_of(tmp.path(), 1 << 20);
    let shuffled = ds.random_shuffle(Some(5));
    let mut ours = Vec::new();
    for batch in shuffled.iter_batches().unwrap() {
        ours.push(batch.unwrap());
    }
    let expected = sql(&lineitem_sql(&input), "SELECT * FROM lineitem");
    assert_eq!(sorted(rows(&ours)), sorted(rows(&expected)));
    let usage = ctx.client().local_store_usage().unwrap();
    assert!(
        usage.spilled_bytes_total > 0,
        "the map outputs overflow the store: {usage:?}"
    );
    let stats = shuffled.stats();
    assert_eq!(stats.stages.len(), 2, "{stats}");
    for stage in &stats.stages {
        assert!(stage.tasks >= 2, "{stats}");
        assert!(stage.most_running >= 2, "{stats}");
    }
}

#[test]
fn a_shuffle_larger_than_the_store_spills_and_stays_right() {
    let tmp = tempfile::tempdir().unwrap();
    let (input, ctx, ds) = small_lineitem_under_a_store_of(tmp.path(), 2 << 20);
    let shuffled = ds.random_shuffle(Some(11)).sort_by(vec![
        SortKey::asc("l_orderkey"),
        SortKey::asc("l_linenumber"),
    ]);
    let ours = shuffled.to_arrow().unwrap();
    let expected = sql(
        &lineitem_sql(&input),
        "SELECT * FROM lineitem ORDER BY l_orderkey, l_linenumber",
    );
    assert_eq!(rows(&ours), rows(&expected));
    let bytes: usize = expected.iter().map(|b| b.get_array_memory_size()).sum();
    assert!(
        bytes > 4 * (2 << 20),
        "the data ({bytes} B) is several times the budget"
    );
    let usage = ctx.client().local_store_usage().unwrap();
    assert!(usage.spilled_bytes_total > 0, "{usage:?}");
    // Four rounds at most wrote the data (shuffle map, sort input, sort map, reduced blocks
    // held for to_arrow): a partition stores its own strings, not every string of the block it
    // was cut from (string views compacted before storing).
    let compact: usize = ours
        .iter()
        .map(|b| manta::engine::views::compact_views(b).get_array_memory_size())
        .sum();
    assert!(
        usage.spilled_bytes_total < 5 * compact as u64,
        "spilled {} B for {compact} B of data",
        usage.spilled_bytes_total
    );
    assert!(usage.restored_bytes_total > 0, "{usage:?}");
    // The stages that spilled say so, and account for all of it.
    let stats = shuffled.stats();
    assert!(stats.spilled_bytes() > 0, "{stats}");
    // Map outputs past a quarter of the budget: one reduce task per partition.
    let reduce = stats.stages.iter().find(|s| s.name == "SortReduce");
    assert!(reduce.is_some_and(|s| s.tasks > 1), "{stats}");
    assert!(
        stats.spilled_bytes() <= usage.spilled_bytes_total,
        "{stats}"
    );

    // A groupby over the same data, with its map-side combine, spills too and stays right.
    let grouped = ds
        .groupby(&["l_returnflag", "l_linestatus"])
        .aggregate(vec![
            Aggregate::sum("l_quantity").alias("sum_qty"),
            Aggregate::mean("l_extendedprice").alias("avg_price"),
            Aggregate::std("l_discount").alias("std_disc"),
            Aggregate::count().alias("count_order"),
        ])
        .sort_by(vec![
            SortKey::asc("l_returnflag"),
            SortKey::asc("l_linestatus"),
        ]);
    let expected = sql(
        &lineitem_sql(&input),
        "SELECT l_returnflag, l_linestatus, sum(l_quantity), avg(l_extendedprice), \
         stddev(l_discount), count(1) FROM lineitem GROUP BY l_returnflag, l_linestatus \
         ORDER BY l_returnflag, l_linestatus",
    );
    assert_eq!(rows(&grouped.to_arrow().unwrap()), rows(&expected));
}

/// Empty datasets (no blocks), datasets of empty blocks (everything filtered out) and a single
/// row, through every all-to-all operation, each against DataFusion SQL over the same rows.
#[test]
fn empty_datasets_empty_blocks_and_a_single_row() {
    let ctx = embedded();
    let df = SessionContext::new();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let base = people();
    df.register_batch("people", base.clone()).unwrap();

    let all = ctx
        .from_arrow(vec![base.slice(0, 3), base.slice(3, 2)])
        .unwrap();
    let cases = [
        (
            "no rows in any block",
            all.filter(col("score").gt(lit(1e20))),
            "score > 1e20",
        ),
        (
            "one row",
            all.filter(col("name").eq(lit("李"))),
            "name = '李'",
        ),
    ];
    for (what, ds, condition) in cases {
        let expect = |query: &str| -> Vec<String> {
            let query = query.replace("{t}", &format!("(SELECT * FROM people WHERE {condition})"));
            rows(
                &rt.block_on(async { df.sql(&query).await?.collect().await })
                    .unwrap(),
            )
        };
        let sorted_rows = ds.sort(desc("score")).to_arrow().unwrap();
        assert_eq!(
            rows(&sorted_rows),
            expect("SELECT * FROM {t} ORDER BY score DESC"),
            "{what}: sort"
        );
        assert_eq!(
            sorted(rows(&ds.random_shuffle(Some(1)).to_arrow().unwrap())),
            sorted(expect("SELECT * FROM {t}")),
            "{what}: shuffle"
        );
        assert_eq!(
            sorted(rows(&ds.repartition_shuffled(3).to_arrow().unwrap())),
            sorted(expect("SELECT * FROM {t}")),
            "{what}: repartition"
        );
        let grouped = ds
            .groupby(&["name"])
            .aggregate(vec![Aggregate::count(), Aggregate::sum("score")]);
        assert_eq!(
            sorted(rows(&grouped.to_arrow().unwrap())),
            sorted(expect(
                "SELECT name, count(1), sum(score) FROM {t} GROUP BY name"
            )),
            "{what}: groupby"
        );
        let total = ds.aggregate(vec![Aggregate::count(), Aggregate::max("score")]);
        assert_eq!(
            rows(&total.to_arrow().unwrap()),
            expect("SELECT count(1), max(score) FROM {t}"),
            "{what}: global aggregate"
        );
        let joined = ds.select_columns(&["id", "name"]).join(
            &all.select_columns(&["id", "score"]),
            &["id"],
            JoinKind::Inner,
        );
        assert_eq!(
            sorted(rows(&joined.to_arrow().unwrap())),
            sorted(expect(
                "SELECT t.id, t.name, p.score FROM {t} t JOIN people p ON t.id = p.id"
            )),
            "{what}: join"
        );
        assert_eq!(
            ds.count().unwrap() as usize,
            expect("SELECT * FROM {t}").len()
        );
        assert_eq!(ds.union(&[&ds]).count().unwrap(), 2 * ds.count().unwrap());
    }

    // A source with no blocks at all.
    let nothing = ctx.range(0);
    assert_eq!(nothing.count().unwrap(), 0);
    assert!(nothing.to_arrow().unwrap().is_empty());
    assert!(nothing.sort("id").to_arrow().unwrap().is_empty());
    assert!(nothing.random_shuffle(None).to_arrow().unwrap().is_empty());
    let counted = nothing
        .aggregate(vec![Aggregate::count()])
        .to_arrow()
        .unwrap();
    assert_eq!(
        rows(&counted),
        vec!["0".to_string()],
        "count of nothing is 0, as in SQL"
    );
    let tmp = tempfile::tempdir().unwrap();
    let written = nothing.write_parquet(tmp.path().join("empty")).unwrap();
    assert_eq!(
        (written.files, written.rows),
        (1, 0),
        "one empty file, which reads back"
    );
}
