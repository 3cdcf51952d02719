//! User functions over rows and batches (map, flat_map, filter_fn, map_batches with a batch
//! size, stateful callables), row and split consumption, and object store URLs, in embedded
//! mode; each result checked against plain Rust over the same input.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use arrow::array::{AsArray, Int64Array, RecordBatch, UInt64Array};
use arrow::datatypes::{DataType, Field, Int64Type, Schema};
use manta::BoxError;
use manta::prelude::*;

use crate::common::embedded;
use serde::{Deserialize, Serialize};

/// `range(n)` in blocks of `per_block` rows.
fn ids(ctx: &manta::Context, n: u64, per_block: u64) -> Dataset {
    ctx.read(
        manta::datasets::source::Source::Range { n },
        ReadOptions {
            rows_per_task: per_block,
            ..Default::default()
        },
    )
    .unwrap()
}

fn column_i64(batches: &[RecordBatch], name: &str) -> Vec<i64> {
    batches
        .iter()
        .flat_map(|b| {
            b.column_by_name(name)
                .unwrap_or_else(|| panic!("no column {name}"))
                .as_primitive::<Int64Type>()
                .values()
                .to_vec()
        })
        .collect()
}

#[derive(Debug, Serialize, Deserialize, PartialEq)]
struct Row {
    id: i64,
}

#[derive(Debug, Serialize, Deserialize, PartialEq)]
struct Labelled {
    id: i64,
    square: i64,
    label: String,
}

#[manta::remote]
fn label(row: Row) -> Labelled {
    Labelled {
        id: row.id,
        square: row.id * row.id,
        label: format!("n{}", row.id),
    }
}

#[manta::remote]
fn repeat_by_remainder(row: Row) -> Vec<Row> {
    (0..row.id % 3).map(|_| Row { id: row.id }).collect()
}

#[manta::remote]
fn divisible_by_seven(row: Row) -> Result<bool, String> {
    if row.id < 0 {
        return Err(format!("negative id {}", row.id));
    }
    Ok(row.id % 7 == 0)
}

#[test]
fn row_functions_match_plain_rust() {
    let ctx = embedded();
    let n = 5_000i64;
    let ds = ids(&ctx, n as u64, 1_000);

    // Rows stream in as blocks finish, not necessarily in order.
    let mut labelled: Vec<Labelled> = ds
        .map(label)
        .iter_rows::<Labelled>()
        .unwrap()
        .collect::<manta::Result<_>>()
        .unwrap();
    labelled.sort_by_key(|l| l.id);
    let expected: Vec<Labelled> = (0..n).map(|id| label::call(Row { id })).collect();
    assert_eq!(labelled, expected);

    let repeated = column_i64(&ds.flat_map(repeat_by_remainder).to_arrow().unwrap(), "id");
    let expected: Vec<i64> = (0..n)
        .flat_map(|id| std::iter::repeat_n(id, (id % 3) as usize))
        .collect();
    assert_eq!(repeated, expected);

    let kept = column_i64(&ds.filter_fn(divisible_by_seven).to_arrow().unwrap(), "id");
    assert_eq!(kept, (0..n).filter(|id| id % 7 == 0).collect::<Vec<_>>());

    // Rows as plain JSON values work too, nulls included.
    let first: Vec<serde_json::Value> = ds
        .limit(2)
        .iter_rows()
        .unwrap()
        .collect::<manta::Result<_>>()
        .unwrap();
    assert_eq!(
        first,
        vec![serde_json::json!({"id": 0}), serde_json::json!({"id": 1})]
    );

    // A row function's error names the function and the row.
    let error = ctx
        .range(10)
        .with_column("id", lit(-1i64) - col("id"))
        .filter_fn(divisible_by_seven)
        .count()
        .unwrap_err()
        .to_string();
    assert!(
        error.contains("divisible_by_seven") && error.contains("negative id -1"),
        "{error}"
    );
}

/// Appends the number of rows of the batch it was called with.
#[manta::remote]
fn tag_batch_rows(batch: RecordBatch) -> manta::Result<RecordBatch> {
    let rows = UInt64Array::from(vec![batch.num_rows() as u64; batch.num_rows()]);
    let mut columns = batch.columns().to_vec();
    columns.push(Arc::new(rows));
    let mut fields = batch.schema().fields().to_vec();
    fields.push(Arc::new(Field::new("batch_rows", DataType::UInt64, false)));
    Ok(RecordBatch::try_new(
        Arc::new(Schema::new(fields)),
        columns,
    )?)
}

#[test]
fn map_batches_gets_batches_of_the_size_asked_for() {
    let ctx = embedded();
    // Blocks of 1000 rows read in batches of 300, regrouped into 256 per call.
    let ds = ctx
        .read(
            manta::datasets::source::Source::Range { n: 3_000 },
            ReadOptions {
                rows_per_task: 1_000,
                batch_size: 300,
                ..Default::default()
            },
        )
        .unwrap()
        .filter(col("id").gt_eq(lit(0i64)))
        .map_batches_with(tag_batch_rows, MapBatchesOptions::default().batch_size(256));
    let batches = ds.to_arrow().unwrap();
    assert_eq!(column_i64(&batches, "id"), (0..3_000).collect::<Vec<_>>());
    let mut per_block: Vec<Vec<u64>> = vec![Vec::new(); 3];
    for batch in &batches {
        let ids = batch.column(0).as_primitive::<Int64Type>();
        let sizes = batch
            .column(1)
            .as_primitive::<arrow::datatypes::UInt64Type>();
        for (id, size) in ids.values().iter().zip(sizes.values()) {
            per_block[(*id / 1000) as usize].push(*size);
        }
    }
    for sizes in per_block {
        // 1000 rows = 3 calls of 256 and one of 232, within each block.
        let mut counts = std::collections::BTreeMap::new();
        for size in sizes {
            *counts.entry(size).or_insert(0u64) += 1;
        }
        assert_eq!(counts, [(232, 232), (256, 768)].into_iter().collect());
    }
}

static MODELS_LOADED: AtomicUsize = AtomicUsize::new(0);

/// A "model": adds a constant read from a file once, at construction.
struct AddFromFile {
    offset: i64,
}

#[manta::callable]
impl Callable for AddFromFile {
    type Args = String;

    fn new(path: String) -> Result<Self, BoxError> {
        let offset = std::fs::read_to_string(&path)?.trim().parse()?;
        MODELS_LOADED.fetch_add(1, Ordering::SeqCst);
        Ok(Self { offset })
    }

    fn call(&mut self, batch: RecordBatch) -> Result<RecordBatch, BoxError> {
        let ids = batch.column(0).as_primitive::<Int64Type>();
        let shifted: Int64Array = ids.iter().map(|v| v.map(|v| v + self.offset)).collect();
        Ok(RecordBatch::try_new(
            batch.schema(),
            vec![Arc::new(shifted)],
        )?)
    }
}

#[test]
fn a_callable_is_built_once_per_pool_slot_and_reused() {
    let ctx = embedded();
    let tmp = tempfile::tempdir().unwrap();
    let model = tmp.path().join("offset.txt");
    std::fs::write(&model, "1000\n").unwrap();
    let model = model.to_string_lossy().into_owned();

    let before = MODELS_LOADED.load(Ordering::SeqCst);
    let out = ids(&ctx, 20_000, 1_000)
        .map_batches_callable::<AddFromFile>(
            model.clone(),
            MapBatchesOptions::default().concurrency(1).batch_size(500),
        )
        .unwrap()
        .to_arrow()
        .unwrap();
    assert_eq!(column_i64(&out, "id"), (1_000..21_000).collect::<Vec<_>>());
    // 20 blocks, 40 calls, one pool slot: one load.
    assert_eq!(MODELS_LOADED.load(Ordering::SeqCst) - before, 1);

    // A missing model file: the constructor's error names the callable and the block.
    let error = ids(&ctx, 100, 100)
        .map_batches_callable::<AddFromFile>(
            tmp.path().join("missing").to_string_lossy().into_owned(),
            MapBatchesOptions::default().concurrency(2),
        )
        .unwrap()
        .count()
        .unwrap_err()
        .to_string();
    assert!(
        error.contains("AddFromFile::new") && error.contains("block 0"),
        "{error}"
    );
}

#[test]
fn streaming_split_shares_are_disjoint_and_complete() {
    let ctx = embedded();
    let splits = ids(&ctx, 50_000, 1_000).streaming_split(3).unwrap();
    let shares: Vec<Vec<i64>> = std::thread::scope(|scope| {
        let handles: Vec<_> = splits
            .into_iter()
            .map(|split| {
                scope.spawn(move || {
                    let batches: Vec<RecordBatch> = split.collect::<manta::Result<_>>().unwrap();
                    column_i64(&batches, "id")
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let mut seen = BTreeSet::new();
    for share in &shares {
        for id in share {
            assert!(seen.insert(*id), "row {id} went to two consumers");
        }
    }
    assert_eq!(seen, (0..50_000).collect::<BTreeSet<_>>());
}

#[test]
fn object_store_urls_read_and_write_atomically() {
    let ctx = embedded();
    let ds = ids(&ctx, 10_000, 2_500).with_column("twice", col("id") * lit(2i64));
    let expected = column_i64(&ds.to_arrow().unwrap(), "twice");

    let base = "memory:///functions-test";
    let summary = ds.write_parquet(format!("{base}/parquet")).unwrap();
    assert_eq!((summary.files, summary.rows), (4, 10_000));
    ds.write_csv(format!("{base}/csv")).unwrap();
    ds.write_json(format!("{base}/json")).unwrap();

    let parquet = ctx.read_parquet(&format!("{base}/parquet")).unwrap();
    assert_eq!(column_i64(&parquet.to_arrow().unwrap(), "twice"), expected);
    // Projection and predicate pushdown work on remote files too.
    let filtered = parquet
        .filter(col("id").lt(lit(10i64)))
        .select_columns(&["twice"]);
    assert_eq!(
        column_i64(&filtered.to_arrow().unwrap(), "twice"),
        (0..10).map(|i| 2 * i).collect::<Vec<_>>()
    );
    let csv = ctx.read_csv(&format!("{base}/csv/*.csv")).unwrap();
    assert_eq!(column_i64(&csv.to_arrow().unwrap(), "twice"), expected);
    let json = ctx.read_json(&format!("{base}/json")).unwrap();
    assert_eq!(column_i64(&json.to_arrow().unwrap(), "twice"), expected);

    // A write that fails leaves nothing at the destination, not even staged parts.
    let failing = ids(&ctx, 100, 10).filter_fn(divisible_by_seven_or_fail);
    assert!(failing.write_parquet(format!("{base}/failed")).is_err());
    let error = ctx
        .read_parquet(&format!("{base}/failed"))
        .unwrap_err()
        .to_string();
    assert!(error.contains("not found"), "{error}");

    // A missing object is a clear error naming the URL.
    let error = ctx
        .read_parquet("memory:///functions-test/nothing-here")
        .unwrap_err()
        .to_string();
    assert!(error.contains("nothing-here"), "{error}");
}

#[manta::remote]
fn divisible_by_seven_or_fail(row: Row) -> Result<bool, String> {
    if row.id == 95 {
        return Err("row 95 is cursed".into());
    }
    Ok(row.id % 7 == 0)
}
