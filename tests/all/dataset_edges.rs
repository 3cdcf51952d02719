//! The edges an outside check of the Dataset API found wrong (issue 16), one test each, every
//! answer computed another way (DataFusion SQL over the same files, or plain Rust): blocks a
//! pushed filter empties, pruned columns meeting reshapes, empty partitions of `map_groups`,
//! writes where something exists, writes of nothing, JSON fields that appear late, unions that
//! differ in nullability; and the ergonomics that came with them.

use crate::common;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use arrow::array::{Array, ArrayRef, AsArray, Int64Array, RecordBatch, StringArray};
use arrow::datatypes::{DataType, Field, Int64Type, Schema};
use datafusion::prelude::SessionContext;
use manta::prelude::*;
use manta::{Config, CsvOptions, JsonOptions};
use parquet::arrow::ArrowWriter;
use parquet::file::properties::WriterProperties;

use common::*;

/// A context whose every exchange is partitioned (no one-task shortcut for small data).
fn partitioned() -> manta::Context {
    manta::init_with(Config {
        num_cpus: Some(2),
        small_exchange_bytes: Some(0),
        ..Default::default()
    })
    .unwrap()
}

/// One task per row group.
fn per_row_group() -> ReadOptions {
    ReadOptions {
        rows_per_task: 1,
        ..Default::default()
    }
}

/// `id` 0..n, `grp` id % 3 as text, `val` id * 10 (null for every seventh), all nullable:
/// written as Parquet in row groups of `group` rows.
fn numbers(dir: &std::path::Path, n: i64, group: usize) -> String {
    std::fs::create_dir_all(dir).unwrap();
    let ids: Vec<i64> = (0..n).collect();
    // Every column nullable, as most writers make them.
    let batch = RecordBatch::try_from_iter_with_nullable([
        (
            "id",
            Arc::new(Int64Array::from(ids.clone())) as ArrayRef,
            true,
        ),
        (
            "grp",
            Arc::new(StringArray::from_iter_values(
                ids.iter().map(|i| format!("g{}", i % 3)),
            )),
            true,
        ),
        (
            "val",
            Arc::new(Int64Array::from_iter(
                ids.iter().map(|i| (i % 7 != 0).then_some(i * 10)),
            )),
            true,
        ),
    ])
    .unwrap();
    // Pages of three rows, so that filters also skip pages within the row groups left.
    let properties = WriterProperties::builder()
        .set_max_row_group_row_count(Some(group))
        .set_data_page_row_count_limit(3)
        .set_write_batch_size(3)
        .build();
    let file = std::fs::File::create(dir.join("numbers.parquet")).unwrap();
    let mut writer = ArrowWriter::try_new(file, batch.schema(), Some(properties)).unwrap();
    writer.write(&batch).unwrap();
    writer.close().unwrap();
    dir.to_str().unwrap().to_string()
}

fn df_over(name: &str, path: &str) -> SessionContext {
    let df = SessionContext::new();
    tokio::runtime::Runtime::new()
        .unwrap()
        .block_on(df.register_parquet(name, path, Default::default()))
        .unwrap();
    df
}

#[test]
fn a_block_whose_rows_a_pushed_filter_removes_keeps_its_schema() {
    let tmp = tempfile::tempdir().unwrap();
    let path = numbers(&tmp.path().join("numbers"), 100, 10);
    let df = df_over("numbers", &path);
    // Row groups of ten rows: the filter keeps rows of the first two groups only, so eight of
    // the ten blocks come out of the reader empty; `nothing` empties all of them.
    for ctx in [embedded(), partitioned()] {
        let ds = ctx
            .read_parquet_with(&path, per_row_group())
            .unwrap()
            .filter(col("id").lt(lit(15i64)));
        let nothing = ds.filter(col("id").gt(lit(1000i64)));
        let want = |query: &str| sorted(rows(&sql(&df, query)));
        let got = |d: &Dataset| sorted(rows(&d.to_arrow().unwrap()));

        let sorted_desc = ds.sort(desc("val")).to_arrow().unwrap();
        let first_vals: Vec<Option<i64>> = sorted_desc
            .iter()
            .flat_map(|b| {
                b.column(2)
                    .as_primitive::<Int64Type>()
                    .iter()
                    .collect::<Vec<_>>()
            })
            .collect();
        let want_vals: Vec<Option<i64>> = sql(
            &df,
            "SELECT val FROM numbers WHERE id < 15 ORDER BY val DESC NULLS FIRST",
        )
        .iter()
        .flat_map(|b| {
            b.column(0)
                .as_primitive::<Int64Type>()
                .iter()
                .collect::<Vec<_>>()
        })
        .collect();
        assert_eq!(first_vals, want_vals);
        assert_eq!(
            got(&ds
                .groupby(&["grp"])
                .aggregate(vec![Aggregate::count(), Aggregate::sum("val")])),
            want("SELECT grp, count(*), sum(val) FROM numbers WHERE id < 15 GROUP BY grp")
        );
        assert_eq!(
            got(&nothing.aggregate(vec![Aggregate::count(), Aggregate::max("val")])),
            want("SELECT count(*), max(val) FROM numbers WHERE id > 1000")
        );
        assert_eq!(
            got(&ds.join(&nothing, &["id"], JoinKind::Left)),
            want(
                "SELECT l.id, l.grp, l.val, r.grp AS grp_right, r.val AS val_right FROM \
                 (SELECT * FROM numbers WHERE id < 15) l LEFT JOIN \
                 (SELECT * FROM numbers WHERE id > 1000) r ON l.id = r.id"
            )
        );
        assert_eq!(
            got(&ds.random_shuffle(Some(3))),
            want("SELECT * FROM numbers WHERE id < 15")
        );
        assert_eq!(nothing.sort("id").count().unwrap(), 0);
        assert_eq!(nothing.random_shuffle(Some(1)).count().unwrap(), 0);
    }
}

/// Filters skip row groups by their statistics (several row groups per read task here, so a
/// task reads some of its row groups and not others): every answer is still SQL's, over
/// sorted and unsorted columns, nulls, strings, ranges, negations, and filters that keep
/// nothing or everything.
#[test]
fn filters_that_skip_row_groups_answer_as_sql() {
    let tmp = tempfile::tempdir().unwrap();
    let path = numbers(&tmp.path().join("numbers"), 100, 10);
    let df = df_over("numbers", &path);
    let ctx = embedded();
    let cases: Vec<(Expr, &str)> = vec![
        (col("val").gt(lit(500i64)), "val > 500"),
        (
            col("id").gt_eq(lit(40i64)).and(col("id").lt(lit(45i64))),
            "id >= 40 AND id < 45",
        ),
        (col("grp").eq(lit("g1")), "grp = 'g1'"),
        (col("val").is_null(), "val IS NULL"),
        (!col("id").lt(lit(90i64)), "NOT (id < 90)"),
        (col("id").lt(lit(0i64)), "id < 0"),
        (col("id").gt_eq(lit(0i64)), "id >= 0"),
        (
            col("val").lt(lit(100i64)).or(col("id").gt(lit(95i64))),
            "val < 100 OR id > 95",
        ),
    ];
    for (filter, text) in cases {
        let ds = ctx.read_parquet(&path).unwrap().filter(filter);
        let got = sorted(rows(&ds.to_arrow().unwrap()));
        let want = sorted(rows(&sql(
            &df,
            &format!("SELECT * FROM numbers WHERE {text}"),
        )));
        assert_eq!(got, want, "{text}");
    }
    // Long runs of kept rows on the pages left (read as runs, not filtered whole).
    let path = numbers(&tmp.path().join("long"), 3000, 1000);
    let df = df_over("long", &path);
    let cases: Vec<(Expr, &str)> = vec![
        (
            col("id").gt_eq(lit(40i64)).and(col("id").lt(lit(400i64))),
            "id >= 40 AND id < 400",
        ),
        (
            col("id").lt(lit(500i64)).and(col("val").gt(lit(100i64))),
            "id < 500 AND val > 100",
        ),
        (
            col("id").lt(lit(200i64)).or(col("id").gt_eq(lit(2900i64))),
            "id < 200 OR id >= 2900",
        ),
    ];
    for (filter, text) in cases {
        let ds = ctx.read_parquet(&path).unwrap().filter(filter);
        let got = sorted(rows(&ds.to_arrow().unwrap()));
        let want = sorted(rows(&sql(&df, &format!("SELECT * FROM long WHERE {text}"))));
        assert_eq!(got, want, "{text}");
    }
}

#[test]
fn columns_pruned_from_a_read_can_still_be_dropped_and_renamed() {
    let tmp = tempfile::tempdir().unwrap();
    let path = numbers(&tmp.path().join("numbers"), 50, 16);
    let ctx = embedded();
    let ds = ctx.read_parquet(&path).unwrap();
    let ids: Vec<i64> = (0..50).collect();
    let column = |d: Dataset, name: &str| -> Vec<i64> {
        let batches = d.to_arrow().unwrap();
        assert!(
            batches
                .iter()
                .all(|b| b.schema().fields().len() == 1 && b.schema().field(0).name() == name),
            "{:?}",
            batches.first().map(|b| b.schema())
        );
        batches
            .iter()
            .flat_map(|b| b.column(0).as_primitive::<Int64Type>().values().to_vec())
            .collect()
    };
    // `val` and `grp` are pruned from the read (nothing after uses them): dropping or renaming
    // them must still mean what it says.
    assert_eq!(
        column(ds.drop_columns(&["val"]).select_columns(&["id"]), "id"),
        ids
    );
    assert_eq!(
        column(
            ds.rename_columns(&[("val", "v"), ("grp", "g")])
                .select_columns(&["id"]),
            "id"
        ),
        ids
    );
    // A swap of two names: the output's `val` is the input's `id`, whatever the pairs' order.
    for pairs in [
        [("id", "val"), ("val", "id")],
        [("val", "id"), ("id", "val")],
    ] {
        assert_eq!(
            column(ds.rename_columns(&pairs).select_columns(&["val"]), "val"),
            ids
        );
    }
    // The same through an aggregate, whose input keeps only what it uses.
    let total = ds
        .drop_columns(&["grp"])
        .rename_columns(&[("val", "v")])
        .aggregate(vec![Aggregate::sum("id")])
        .to_arrow()
        .unwrap();
    assert_eq!(
        total[0].column(0).as_primitive::<Int64Type>().value(0),
        ids.iter().sum::<i64>()
    );
}

/// Calls of [`count_group`], to check it runs exactly once per group.
static GROUP_CALLS: AtomicUsize = AtomicUsize::new(0);

/// One row per call: the group's rows. Called on no rows it would still answer a row, as an
/// aggregation does: exactly what showed extra groups when empty partitions called it.
#[manta::remote]
fn count_group(group: RecordBatch) -> manta::Result<RecordBatch> {
    GROUP_CALLS.fetch_add(1, Ordering::SeqCst);
    let keys = group.column(0).slice(0, group.num_rows().min(1));
    let keys = if keys.is_empty() {
        arrow::array::new_null_array(group.column(0).data_type(), 1)
    } else {
        keys
    };
    Ok(RecordBatch::try_from_iter([
        ("grp", keys),
        (
            "rows",
            Arc::new(Int64Array::from(vec![group.num_rows() as i64])) as ArrayRef,
        ),
    ])?)
}

#[test]
fn map_groups_runs_once_per_group_even_fully_partitioned() {
    let tmp = tempfile::tempdir().unwrap();
    let path = numbers(&tmp.path().join("numbers"), 60, 4);
    // 15 blocks, 15 partitions, 3 groups: most partitions get no group.
    let ds = partitioned()
        .read_parquet_with(&path, per_row_group())
        .unwrap()
        .select_columns(&["grp", "id"])
        .groupby(&["grp"])
        .map_groups(count_group);
    GROUP_CALLS.store(0, Ordering::SeqCst);
    let out = ds.to_arrow().unwrap();
    assert_eq!(GROUP_CALLS.load(Ordering::SeqCst), 3, "one call per group");
    let mut got: Vec<(String, i64)> = out
        .iter()
        .flat_map(|b| {
            let grp = arrow::compute::cast(b.column(0), &DataType::Utf8).unwrap();
            let grp = grp.as_string::<i32>().clone();
            let n = b.column(1).as_primitive::<Int64Type>().clone();
            (0..b.num_rows())
                .map(move |i| (grp.value(i).to_string(), n.value(i)))
                .collect::<Vec<_>>()
        })
        .collect();
    got.sort();
    let want: Vec<(String, i64)> = (0..3)
        .map(|g| {
            (
                format!("g{g}"),
                (0..60).filter(|i| i % 3 == g).count() as i64,
            )
        })
        .collect();
    assert_eq!(got, want);
    // No rows: no group, no call, no rows.
    GROUP_CALLS.store(0, Ordering::SeqCst);
    let none = partitioned()
        .read_parquet(&path)
        .unwrap()
        .filter(col("id").lt(lit(0i64)))
        .groupby(&["grp"])
        .map_groups(count_group);
    assert_eq!(none.count().unwrap(), 0);
    assert_eq!(GROUP_CALLS.load(Ordering::SeqCst), 0);
}

#[test]
fn writes_never_touch_a_file_and_follow_their_mode_over_a_directory() {
    let tmp = tempfile::tempdir().unwrap();
    let ctx = embedded();
    let ds = ctx.range(100);
    let file = tmp.path().join("notes.txt");
    std::fs::write(&file, "mine").unwrap();
    for mode in [WriteMode::Error, WriteMode::Overwrite, WriteMode::Append] {
        for format in [WriteFormat::Parquet, WriteFormat::Csv] {
            let err = ds.write_with(&file, format, mode).unwrap_err();
            assert!(matches!(err, manta::Error::OutputExists { .. }), "{err:?}");
            assert!(err.to_string().contains("notes.txt"), "{err}");
        }
    }
    assert_eq!(std::fs::read_to_string(&file).unwrap(), "mine");

    // A directory that holds something: refused by default, untouched.
    let dir = tmp.path().join("out");
    std::fs::create_dir(&dir).unwrap();
    std::fs::write(dir.join("keep.txt"), "keep").unwrap();
    let err = ds.write_parquet(&dir).unwrap_err();
    assert!(matches!(err, manta::Error::OutputExists { .. }), "{err:?}");
    assert!(err.to_string().contains("WriteMode::Overwrite"), "{err}");
    assert_eq!(
        std::fs::read_to_string(dir.join("keep.txt")).unwrap(),
        "keep"
    );
    let entries = |d: &std::path::Path| std::fs::read_dir(d).unwrap().count();
    assert_eq!(entries(tmp.path()), 2, "no temporary directory left");

    // Append adds beside what is there; the rows read back twice over.
    let path = dir.to_str().unwrap();
    ds.write_with(&dir, WriteFormat::Parquet, WriteMode::Append)
        .unwrap();
    ds.write_with(&dir, WriteFormat::Parquet, WriteMode::Append)
        .unwrap();
    assert_eq!(
        std::fs::read_to_string(dir.join("keep.txt")).unwrap(),
        "keep"
    );
    std::fs::remove_file(dir.join("keep.txt")).unwrap();
    assert_eq!(ctx.read_parquet(path).unwrap().count().unwrap(), 200);
    // Overwrite replaces it whole.
    ctx.range(7)
        .write_with(&dir, WriteFormat::Parquet, WriteMode::Overwrite)
        .unwrap();
    assert_eq!(ctx.read_parquet(path).unwrap().count().unwrap(), 7);
    // An empty directory is written into by default.
    let empty = tmp.path().join("empty");
    std::fs::create_dir(&empty).unwrap();
    assert_eq!(ds.write_parquet(&empty).unwrap().rows, 100);
}

#[test]
fn a_write_of_no_rows_reads_back_as_no_rows_with_its_schema() {
    let tmp = tempfile::tempdir().unwrap();
    let path = numbers(&tmp.path().join("numbers"), 30, 8);
    let ctx = embedded();
    let nothing = ctx
        .read_parquet_with(&path, per_row_group())
        .unwrap()
        .filter(col("id").lt(lit(0i64)));
    let schema = nothing.schema().unwrap();
    let out = |name: &str| tmp.path().join(name);
    let written = nothing.write_parquet(out("parquet")).unwrap();
    assert_eq!((written.files, written.rows), (1, 0));
    let back = ctx.read_parquet(out("parquet").to_str().unwrap()).unwrap();
    assert_eq!(back.count().unwrap(), 0);
    assert_eq!(back.schema().unwrap().fields(), schema.fields());
    nothing.write_ipc(out("ipc")).unwrap();
    let back = ctx.read_ipc(out("ipc").to_str().unwrap()).unwrap();
    assert_eq!(back.count().unwrap(), 0);
    assert_eq!(back.schema().unwrap().fields(), schema.fields());
    // CSV keeps the column names (a header); JSON has nothing to keep but reads back empty.
    nothing.write_csv(out("csv")).unwrap();
    let back = ctx.read_csv(out("csv").to_str().unwrap()).unwrap();
    assert_eq!(back.count().unwrap(), 0);
    let names: Vec<String> = back
        .schema()
        .unwrap()
        .fields()
        .iter()
        .map(|f| f.name().clone())
        .collect();
    assert_eq!(names, ["id", "grp", "val"]);
    nothing.write_json(out("json")).unwrap();
    assert_eq!(
        ctx.read_json(out("json").to_str().unwrap())
            .unwrap()
            .count()
            .unwrap(),
        0
    );
    // So does an exchange with no output blocks at all.
    let sorted_nothing = nothing.sort("id");
    sorted_nothing.write_parquet(out("sorted")).unwrap();
    let back = ctx.read_parquet(out("sorted").to_str().unwrap()).unwrap();
    assert_eq!(back.schema().unwrap().fields(), schema.fields());
}

#[test]
fn a_json_field_that_appears_late_is_read_or_named_never_dropped() {
    let tmp = tempfile::tempdir().unwrap();
    let path = tmp.path().join("late.json");
    let mut text = String::new();
    for i in 0..3000 {
        let line = match i >= 2500 {
            true => serde_json::json!({"id": i, "late": format!("v{i}")}),
            false => serde_json::json!({"id": i}),
        };
        text.push_str(&line.to_string());
        text.push('\n');
    }
    std::fs::write(&path, &text).unwrap();
    let path = path.to_str().unwrap();
    let ctx = embedded();

    // By default the schema comes from every row: `late` is there, as the text has it.
    let batches = ctx.read_json(path).unwrap().to_arrow().unwrap();
    let late: Vec<Option<String>> = batches
        .iter()
        .flat_map(|b| {
            let column = b.column_by_name("late").expect("the late field is read");
            let column = arrow::compute::cast(column, &DataType::Utf8).unwrap();
            column
                .as_string::<i32>()
                .iter()
                .map(|v| v.map(str::to_string))
                .collect::<Vec<_>>()
        })
        .collect();
    let want: Vec<Option<String>> = text
        .lines()
        .map(|line| {
            let value: serde_json::Value = serde_json::from_str(line).unwrap();
            value["late"].as_str().map(str::to_string)
        })
        .collect();
    assert_eq!(late, want);

    // Inferred from fewer rows, the unseen field is an error naming it, not a lost column.
    let err = ctx
        .read_json_with(path, &JsonOptions::default().infer_rows(1000))
        .unwrap()
        .count()
        .unwrap_err()
        .to_string();
    assert!(err.contains("late") && err.contains("late.json"), "{err}");

    // With a schema given, just its fields.
    let schema = Arc::new(Schema::new(vec![Field::new("id", DataType::Int64, true)]));
    let ids = ctx
        .read_json_with(path, &JsonOptions::default().schema(schema))
        .unwrap();
    assert_eq!(ids.schema().unwrap().fields().len(), 1);
    assert_eq!(ids.count().unwrap(), 3000);
}

#[test]
fn a_union_of_schemas_that_differ_only_in_nullability_is_nullable() {
    let tmp = tempfile::tempdir().unwrap();
    let path = numbers(&tmp.path().join("numbers"), 20, 8);
    let ctx = embedded();
    // Parquet's `id` is nullable, range's is not.
    let from_file = ctx.read_parquet(&path).unwrap().select_columns(&["id"]);
    let from_range = ctx.range(5);
    assert_ne!(
        from_file.schema().unwrap().field(0).is_nullable(),
        from_range.schema().unwrap().field(0).is_nullable()
    );
    let both = from_range.union(&[&from_file]);
    assert!(both.schema().unwrap().field(0).is_nullable());
    let mut ids: Vec<i64> = both
        .to_arrow()
        .unwrap()
        .iter()
        .flat_map(|b| {
            assert!(b.schema().field(0).is_nullable(), "every block is nullable");
            b.column(0).as_primitive::<Int64Type>().values().to_vec()
        })
        .collect();
    ids.sort();
    let mut want: Vec<i64> = (0..5).chain(0..20).collect();
    want.sort();
    assert_eq!(ids, want);
    // Through an exchange too.
    assert_eq!(both.sort(desc("id")).count().unwrap(), 25);
    // Types that differ are refused, the message showing both columns' whole types.
    let text = ctx
        .read_parquet(&path)
        .unwrap()
        .select_columns(&["grp"])
        .rename_columns(&[("grp", "id")]);
    let err = from_range.union(&[&text]).count().unwrap_err().to_string();
    assert!(
        err.contains("id: Int64 not null") && err.contains("id: Utf8"),
        "{err}"
    );
}

#[test]
fn counting_non_null_values_matches_sql() {
    let tmp = tempfile::tempdir().unwrap();
    let path = numbers(&tmp.path().join("numbers"), 40, 8);
    let df = df_over("numbers", &path);
    let ds = embedded()
        .read_parquet(&path)
        .unwrap()
        .groupby(&["grp"])
        .aggregate(vec![Aggregate::count(), Aggregate::count_non_null("val")]);
    assert_eq!(
        sorted(rows(&ds.to_arrow().unwrap())),
        sorted(rows(&sql(
            &df,
            "SELECT grp, count(*), count(val) FROM numbers GROUP BY grp"
        )))
    );
}

#[test]
fn csv_reader_options_delimiter_header_and_schema() {
    let tmp = tempfile::tempdir().unwrap();
    let path = tmp.path().join("data.tsv");
    std::fs::write(&path, "1\tZoë\n2\t李\n3\t\n").unwrap();
    let path = path.to_str().unwrap();
    let ctx = embedded();
    let options = CsvOptions::default().delimiter(b'\t').has_header(false);
    let ds = ctx.read_csv_with(path, &options).unwrap();
    let batch = ds.take_batch(10).unwrap();
    assert_eq!(batch.num_rows(), 3, "no line taken for a header");
    assert_eq!(batch.schema().field(0).name(), "column_1");
    assert_eq!(
        batch
            .column(0)
            .as_primitive::<Int64Type>()
            .values()
            .to_vec(),
        vec![1, 2, 3]
    );
    let schema = Arc::new(Schema::new(vec![
        Field::new("n", DataType::Int32, false),
        Field::new("name", DataType::Utf8, true),
    ]));
    let named = ctx
        .read_csv_with(path, &options.clone().schema(schema.clone()))
        .unwrap();
    assert_eq!(named.schema().unwrap(), schema);
    // SQL over it reads the file the same way.
    ctx.register("people", &named).unwrap();
    let total = ctx
        .sql("SELECT sum(n) AS s FROM people")
        .unwrap()
        .to_arrow()
        .unwrap();
    assert_eq!(total[0].column(0).as_primitive::<Int64Type>().value(0), 6);
}

/// The type name of the first string column the function sees.
#[manta::remote]
fn string_type(batch: RecordBatch) -> manta::Result<RecordBatch> {
    let field = batch
        .schema()
        .fields()
        .iter()
        .find(|f| f.name() == "name")
        .cloned()
        .expect("a name column");
    Ok(RecordBatch::try_from_iter([(
        "type",
        Arc::new(StringArray::from(vec![
            field.data_type().to_string();
            batch.num_rows()
        ])) as ArrayRef,
    )])?)
}

#[test]
fn map_batches_sees_strings_as_views_whatever_the_source() {
    let tmp = tempfile::tempdir().unwrap();
    let csv = tmp.path().join("people.csv");
    std::fs::write(&csv, "name\nZoë\n李\n").unwrap();
    let ctx = embedded();
    let sources = [
        ctx.read_csv(csv.to_str().unwrap()).unwrap(),
        ctx.from_arrow(vec![
            RecordBatch::try_from_iter([(
                "name",
                Arc::new(arrow::array::LargeStringArray::from(vec!["a"])) as ArrayRef,
            )])
            .unwrap(),
        ])
        .unwrap(),
        ctx.sql("SELECT 'x' AS name").unwrap(),
    ];
    for ds in sources {
        let types = ds.map_batches(string_type).take_batch(10).unwrap();
        let types = types.column(0).as_string::<i32>();
        assert!(types.iter().all(|t| t == Some("Utf8View")), "{types:?}");
    }
}

#[test]
fn streaming_split_equal_gives_every_consumer_the_same_rows() {
    let ctx = embedded();
    // Uneven blocks: 1003 rows in blocks of 100 (and one of 3).
    let ds = ctx.range(1003).repartition(11);
    let splits = ds.streaming_split_equal(4).unwrap();
    let shares: Vec<Vec<i64>> = std::thread::scope(|scope| {
        let handles: Vec<_> = splits
            .into_iter()
            .map(|split| {
                scope.spawn(move || {
                    split
                        .flat_map(|b| {
                            b.unwrap()
                                .column(0)
                                .as_primitive::<Int64Type>()
                                .values()
                                .to_vec()
                        })
                        .collect::<Vec<i64>>()
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    assert!(
        shares.iter().all(|s| s.len() == 1003 / 4),
        "{:?}",
        shares.iter().map(Vec::len).collect::<Vec<_>>()
    );
    let mut all: Vec<i64> = shares.concat();
    all.sort_unstable();
    all.dedup();
    assert_eq!(all.len(), 4 * (1003 / 4), "disjoint shares");
    assert!(all.iter().all(|id| (0..1003).contains(id)));
}

#[test]
fn parquet_files_that_differ_only_in_nullability_read_as_one_nullable_dataset() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("mixed");
    std::fs::create_dir(&dir).unwrap();
    let write = |name: &str, nullable: bool, ids: Vec<Option<i64>>| {
        let batch = RecordBatch::try_from_iter_with_nullable([(
            "id",
            Arc::new(Int64Array::from(ids)) as ArrayRef,
            nullable,
        )])
        .unwrap();
        let file = std::fs::File::create(dir.join(name)).unwrap();
        let mut writer = ArrowWriter::try_new(file, batch.schema(), None).unwrap();
        writer.write(&batch).unwrap();
        writer.close().unwrap();
    };
    write("a.parquet", false, vec![Some(3), Some(1)]);
    write("b.parquet", true, vec![None, Some(2)]);
    let ctx = embedded();
    let ds = ctx.read_parquet(dir.to_str().unwrap()).unwrap();
    assert!(ds.schema().unwrap().field(0).is_nullable());
    let sorted_ids: Vec<Option<i64>> = ds
        .sort(desc("id"))
        .to_arrow()
        .unwrap()
        .iter()
        .flat_map(|b| {
            assert!(b.schema().field(0).is_nullable(), "every block is nullable");
            b.column(0)
                .as_primitive::<Int64Type>()
                .iter()
                .collect::<Vec<_>>()
        })
        .collect();
    assert_eq!(sorted_ids, vec![None, Some(3), Some(2), Some(1)]);
}

/// Passes the rows on, as a batch function may: its strings come (and so go) as views.
#[manta::remote]
fn pass_on(batch: RecordBatch) -> manta::Result<RecordBatch> {
    Ok(batch)
}

#[test]
fn keys_of_a_batch_function_join_keys_read_from_files_fully_partitioned() {
    let tmp = tempfile::tempdir().unwrap();
    let path = numbers(&tmp.path().join("numbers"), 30, 4);
    let df = df_over("numbers", &path);
    let ctx = partitioned();
    let read = ctx.read_parquet_with(&path, per_row_group()).unwrap();
    // The left keys are Utf8View (what the function was given), the right ones Utf8: equal
    // keys must meet in one partition.
    let left = read.map_batches(pass_on).select_columns(&["grp", "id"]);
    let right = read.select_columns(&["grp", "val"]);
    let joined = left.join(&right, &["grp"], JoinKind::Inner);
    assert_eq!(
        sorted(rows(&joined.to_arrow().unwrap())),
        sorted(rows(&sql(
            &df,
            "SELECT l.grp, l.id, r.val FROM numbers l JOIN numbers r ON l.grp = r.grp"
        )))
    );
}

#[test]
fn a_pipeline_over_no_input_still_has_its_schema() {
    let tmp = tempfile::tempdir().unwrap();
    let path = numbers(&tmp.path().join("none"), 0, 4);
    let ctx = embedded();
    // The file has no row group: no read task at all.
    let mapped = ctx
        .read_parquet(&path)
        .unwrap()
        .map_batches(pass_on)
        .with_column(
            "val_or_zero",
            datafusion::functions::expr_fn::coalesce(vec![col("val"), lit(0i64)]),
        );
    assert_eq!(mapped.count().unwrap(), 0);
    let out = tmp.path().join("out");
    mapped.write_parquet(&out).unwrap();
    let back = ctx.read_parquet(out.to_str().unwrap()).unwrap();
    let names: Vec<String> = back
        .schema()
        .unwrap()
        .fields()
        .iter()
        .map(|f| f.name().clone())
        .collect();
    assert_eq!(names, ["id", "grp", "val", "val_or_zero"]);
    assert_eq!(
        back.groupby(&["grp"]).count().count().unwrap(),
        0,
        "no groups of no rows"
    );
}

/// Writes one Parquet file of `batch` into a new directory `dir`.
fn parquet_dir(dir: &std::path::Path, batch: &RecordBatch) -> String {
    std::fs::create_dir_all(dir).unwrap();
    let file = std::fs::File::create(dir.join("part.parquet")).unwrap();
    let mut writer = ArrowWriter::try_new(file, batch.schema(), None).unwrap();
    writer.write(batch).unwrap();
    writer.close().unwrap();
    dir.to_str().unwrap().to_string()
}

#[test]
fn sql_keeps_a_filter_above_a_join_of_sides_with_a_column_of_one_name() {
    // DataFusion 55's first physical FilterPushdown pass pushed this filter on the left's `k`
    // into the right side (also with a `k`) and dropped it: Manta's sessions run without it.
    let tmp = tempfile::tempdir().unwrap();
    let strings = ["x", "ü", "y"];
    let a_k: Vec<Option<i64>> = (0..18).map(|i| (i % 7 != 0).then_some(i % 3)).collect();
    let a_g: Vec<&str> = (0..18).map(|i| strings[i % 3]).collect();
    let mut b_k: Vec<Option<i64>> = (0..20).map(|i| Some(i % 4)).collect();
    let mut b_h: Vec<&str> = (0..20).map(|i| ["x", "y", "z"][i % 3]).collect();
    b_k.extend([None, Some(3)]);
    b_h.extend(["x", "ü"]);
    let a = RecordBatch::try_from_iter([
        ("k", Arc::new(Int64Array::from(a_k.clone())) as ArrayRef),
        ("g", Arc::new(StringArray::from(a_g.clone()))),
    ])
    .unwrap();
    let b = RecordBatch::try_from_iter([
        ("k", Arc::new(Int64Array::from(b_k.clone())) as ArrayRef),
        ("h", Arc::new(StringArray::from(b_h.clone()))),
    ])
    .unwrap();
    let ctx = embedded();
    ctx.register_parquet("a", &parquet_dir(&tmp.path().join("a"), &a))
        .unwrap();
    ctx.register_parquet("b", &parquet_dir(&tmp.path().join("b"), &b))
        .unwrap();
    let got = ctx
        .sql(
            "SELECT * FROM (SELECT l.k AS k, l.g AS g, r.k AS k_right, r.h AS h FROM a l \
             RIGHT JOIN (SELECT * FROM b WHERE k IS NULL OR h = 'ü') r ON l.g = r.h) t \
             WHERE NOT (k IS NOT NULL AND k_right >= -3)",
        )
        .unwrap()
        .to_arrow()
        .unwrap();
    // The same in plain Rust, with SQL's three-valued logic.
    let mut want = Vec::new();
    for (rk, rh) in b_k.iter().zip(&b_h) {
        if !(rk.is_none() || *rh == "ü") {
            continue;
        }
        let matches: Vec<(Option<i64>, Option<&str>)> = a_k
            .iter()
            .zip(&a_g)
            .filter(|(_, g)| *g == rh)
            .map(|(k, g)| (*k, Some(*g)))
            .collect();
        let rows = match matches.is_empty() {
            true => vec![(None, None)],
            false => matches,
        };
        for (k, g) in rows {
            let not_null = Some(k.is_some());
            let at_least = rk.map(|v| v >= -3);
            let both = match (not_null, at_least) {
                (Some(false), _) | (_, Some(false)) => Some(false),
                (Some(true), Some(true)) => Some(true),
                _ => None,
            };
            if both.map(|b| !b) == Some(true) {
                want.push(format!("{k:?}|{g:?}|{rk:?}|{rh}"));
            }
        }
    }
    let mut got_rows: Vec<String> = got
        .iter()
        .flat_map(|batch| {
            let k = batch.column(0).as_primitive::<Int64Type>().clone();
            let g = arrow::compute::cast(batch.column(1), &DataType::Utf8).unwrap();
            let g = g.as_string::<i32>().clone();
            let rk = batch.column(2).as_primitive::<Int64Type>().clone();
            let rh = arrow::compute::cast(batch.column(3), &DataType::Utf8).unwrap();
            let rh = rh.as_string::<i32>().clone();
            (0..batch.num_rows())
                .map(|i| {
                    let k = (!k.is_null(i)).then(|| k.value(i));
                    let g = (!g.is_null(i)).then(|| g.value(i));
                    let rk = (!rk.is_null(i)).then(|| rk.value(i));
                    format!("{k:?}|{g:?}|{rk:?}|{}", rh.value(i))
                })
                .collect::<Vec<_>>()
        })
        .collect();
    got_rows.sort();
    want.sort();
    assert_eq!(got_rows, want);
}

/// The rows of a query's answer, each as text, and its `column`'s values (nulls as `None`).
fn answer_and_column(batches: &[RecordBatch], column: usize) -> (Vec<String>, Vec<Option<i64>>) {
    let values = batches
        .iter()
        .flat_map(|b| {
            b.column(column)
                .as_primitive::<Int64Type>()
                .iter()
                .collect::<Vec<_>>()
        })
        .collect();
    (rows(batches), values)
}

#[test]
fn sql_sorts_every_row_of_outer_joins_in_stages_of_tasks_or_not() {
    // Three mistakes outer joins met (found by `tests/all/differential.rs`): DataFusion 55 let
    // the nullable side's constant `j = 3` drop the sort; cut into stages of tasks, a join
    // partitioned under a sort of one partition sorted only the first of its partitions, and
    // a limit pushed into a join counted in each of its partitions.
    let tmp = tempfile::tempdir().unwrap();
    let ids: Vec<Option<i64>> = (0..40).map(|i| (i % 9 != 4).then_some(i % 7)).collect();
    let a = RecordBatch::try_from_iter([
        ("k", Arc::new(Int64Array::from(ids.clone())) as ArrayRef),
        (
            "v",
            Arc::new(Int64Array::from((0..40).collect::<Vec<i64>>())),
        ),
    ])
    .unwrap();
    let b = RecordBatch::try_from_iter([
        (
            "j",
            Arc::new(Int64Array::from(vec![Some(3), Some(3), Some(5), None])) as ArrayRef,
        ),
        ("w", Arc::new(Int64Array::from(vec![1, 2, 3, 4]))),
    ])
    .unwrap();
    let a_path = parquet_dir(&tmp.path().join("a"), &a);
    let b_path = parquet_dir(&tmp.path().join("b"), &b);
    let df = df_over("a", &a_path);
    tokio::runtime::Runtime::new()
        .unwrap()
        .block_on(df.register_parquet("b", &b_path, Default::default()))
        .unwrap();
    let queries = [
        // `j` is null or 3: nulls first.
        (
            "SELECT a.k, a.v, r.j, r.w FROM a FULL JOIN (SELECT * FROM b WHERE j = 3) r \
          ON a.k = r.j ORDER BY j DESC NULLS FIRST, v, w",
            2,
        ),
        (
            "SELECT l.k, l.v, r.k AS rk, r.v AS rv FROM a l LEFT JOIN a r ON l.v = r.k \
          ORDER BY rv DESC NULLS FIRST, v",
            3,
        ),
    ];
    for tasks in [false, true] {
        let ctx = manta::init_with(Config {
            num_cpus: Some(2),
            sql_tasks: Some(tasks),
            ..Default::default()
        })
        .unwrap();
        ctx.register_parquet("a", &a_path).unwrap();
        ctx.register_parquet("b", &b_path).unwrap();
        for (query, column) in queries {
            let got = ctx.sql(query).unwrap().to_arrow().unwrap();
            let (got_rows, sorted_by) = answer_and_column(&got, column);
            let want = sql(&df, query);
            assert_eq!(
                sorted(got_rows),
                sorted(rows(&want)),
                "tasks {tasks}: {query}"
            );
            // Descending, nulls first.
            let in_order = sorted_by.windows(2).all(|pair| match (pair[0], pair[1]) {
                (Some(_), None) => false,
                (Some(x), Some(y)) => x >= y,
                _ => true,
            });
            assert!(in_order, "tasks {tasks}: {query} gave {sorted_by:?}");
        }
        // A limit DataFusion pushed into a join it collected in one partition.
        let limited = "SELECT * FROM a FULL JOIN b ON a.k = b.j LIMIT 3";
        let got = ctx.sql(limited).unwrap().to_arrow().unwrap();
        let rows_got: usize = got.iter().map(RecordBatch::num_rows).sum();
        assert_eq!(rows_got, 3, "tasks {tasks}: {limited}");
    }
}

/// `count_distinct` of a float column counts `-0.0` and `0.0` once (they are equal) and NaN
/// once, as SQL does, whether the groups are reduced in one task or in partitions, and whether
/// there are groups or one global aggregate. Found by the differential fuzzer (seed 2024),
/// where a column `f * 0` made both zeros. SQL is asked one `count(DISTINCT)` per query: that
/// is rewritten into a `GROUP BY`, which takes the zeros as one, where DataFusion 55's
/// accumulator for several distinct counts in one query tells them apart.
#[test]
fn count_distinct_counts_both_float_zeros_as_one_value() {
    let values = [-0.0, 0.0, f64::NAN, 1.5, -1.5, -0.0, f64::NAN, 0.0, -1.5];
    let n = 60;
    let g: Vec<i64> = (0..n).map(|i| i % 4).collect();
    // Group 3 only ever sees zeros of both signs and nulls.
    let x: Vec<Option<f64>> = (0..n)
        .map(|i| match (i % 4, i % 5) {
            (_, 4) => None,
            (3, _) => Some(if (i / 4) % 2 == 0 { -0.0 } else { 0.0 }),
            _ => Some(values[i as usize % values.len()]),
        })
        .collect();
    let batch = RecordBatch::try_from_iter([
        ("g", Arc::new(Int64Array::from(g.clone())) as ArrayRef),
        ("x", Arc::new(arrow::array::Float64Array::from(x.clone()))),
        (
            "y",
            Arc::new(arrow::array::Float32Array::from_iter(
                x.iter().map(|v| v.map(|v| v as f32)),
            )),
        ),
    ])
    .unwrap();
    // Blocks of seven rows, so zeros of each sign land in different map tasks.
    let blocks: Vec<RecordBatch> = (0..n as usize)
        .step_by(7)
        .map(|start| batch.slice(start, 7.min(n as usize - start)))
        .collect();

    // Plain Rust: a value's identity is its bits, with -0.0 taken as 0.0.
    let distinct = |group: Option<i64>| {
        let bits: std::collections::HashSet<u64> = g
            .iter()
            .zip(&x)
            .filter(|(k, _)| group.is_none_or(|group| **k == group))
            .filter_map(|(_, v)| v.map(|v| if v == 0.0 { 0 } else { v.to_bits() }))
            .collect();
        bits.len() as i64
    };
    assert_eq!(distinct(Some(3)), 1, "group 3 holds only zeros");

    let df = SessionContext::new();
    df.register_batch("t", batch.clone()).unwrap();
    for ctx in [embedded(), partitioned()] {
        let ds = ctx.from_arrow(blocks.clone()).unwrap();
        let counts = [
            Aggregate::count_distinct("x").alias("dx"),
            Aggregate::count_distinct("y").alias("dy"),
        ];
        let grouped = ds
            .groupby(&["g"])
            .aggregate(counts.to_vec())
            .to_arrow()
            .unwrap();
        let mut expected: Vec<String> = (0..4)
            .map(|k| format!("{k}|{}|{}", distinct(Some(k)), distinct(Some(k))))
            .collect();
        expected.sort();
        let ours = sorted(rows(&grouped));
        assert_eq!(ours, expected);
        assert_eq!(
            ours,
            sorted(rows(&sql(
                &df,
                "SELECT a.g, dx, dy FROM (SELECT g, count(DISTINCT x) AS dx FROM t GROUP BY g) a \
                 JOIN (SELECT g, count(DISTINCT y) AS dy FROM t GROUP BY g) b ON a.g = b.g"
            )))
        );

        let whole = ds
            .groupby(&[])
            .aggregate(counts.to_vec())
            .to_arrow()
            .unwrap();
        assert_eq!(
            rows(&whole),
            [format!("{}|{}", distinct(None), distinct(None))]
        );
    }
}
