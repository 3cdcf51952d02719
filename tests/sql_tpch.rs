//! The 22 TPC-H queries through `Context::sql`, at scale 0.1, against the answer files in
//! `tests/data/tpch/` (copied from the project's shared TPC-H kit; computed by an independent
//! engine, DuckDB, over data from the same generator): numbers within 1e-6 relative or 1e-2
//! absolute, everything else exactly, rows in order. `lineitem` is a registered pipeline
//! (scanned by running it with the query's projection and filters), `orders` a registered plain
//! Parquet dataset, the other tables DataFusion's own Parquet tables.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use arrow::array::RecordBatch;
use arrow::datatypes::{DataType, Field, Schema};
use arrow::util::display::{ArrayFormatter, FormatOptions};

const SCALE: f64 = 0.1;

fn shared_tpch() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/tpch")
}

/// Every cell of the batches as text (NULL as the empty string), row by row.
fn cells(batches: &[RecordBatch]) -> Vec<Vec<String>> {
    let options = FormatOptions::default().with_null("");
    let mut rows = Vec::new();
    for batch in batches {
        let formatters: Vec<ArrayFormatter> = batch
            .columns()
            .iter()
            .map(|c| ArrayFormatter::try_new(c.as_ref(), &options).unwrap())
            .collect();
        for row in 0..batch.num_rows() {
            rows.push(
                formatters
                    .iter()
                    .map(|f| f.value(row).to_string())
                    .collect(),
            );
        }
    }
    rows
}

/// The answer file's rows, every field as text.
fn answer(query: &str) -> Vec<Vec<String>> {
    let path = shared_tpch().join(format!("answers/sf{SCALE}/{query}.csv"));
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let header = text.lines().next().expect("a header row");
    let fields: Vec<Field> = header
        .split(',')
        .map(|name| Field::new(name, DataType::Utf8, true))
        .collect();
    let reader = arrow::csv::ReaderBuilder::new(Arc::new(Schema::new(fields)))
        .with_header(true)
        .build(std::io::Cursor::new(text.into_bytes()))
        .unwrap();
    let batches: Vec<RecordBatch> = reader.map(Result::unwrap).collect();
    cells(&batches)
}

fn same_value(ours: &str, theirs: &str) -> bool {
    if ours == theirs {
        return true;
    }
    match (ours.parse::<f64>(), theirs.parse::<f64>()) {
        (Ok(a), Ok(b)) => (a - b).abs() <= (1e-6 * b.abs()).max(1e-2),
        _ => false,
    }
}

#[test]
fn all_22_tpch_queries_answer_right_at_scale_0_1() {
    let root = manta::tpch::default_dir();
    let ctx = manta::init_with(manta::Config::default()).unwrap();
    for table in manta::tpch::TABLES {
        let dir = manta::tpch::table(&root, table, SCALE).unwrap();
        let path = dir.to_str().unwrap();
        match table {
            // A pipeline: scanned by running it, with the query's projection and filters.
            "lineitem" => {
                let prepared = ctx
                    .read_parquet(path)
                    .unwrap()
                    .with_column("l_unused", manta::prelude::lit(1));
                ctx.register(table, &prepared).unwrap()
            }
            // A plain Parquet read: registered as DataFusion's own Parquet table.
            "orders" => ctx
                .register(table, &ctx.read_parquet(path).unwrap())
                .unwrap(),
            _ => ctx.register_parquet(table, path).unwrap(),
        }
    }
    let mut wrong = Vec::new();
    for n in 1..=22 {
        let query = format!("q{n:02}");
        let sql =
            std::fs::read_to_string(shared_tpch().join(format!("queries/{query}.sql"))).unwrap();
        let ours = cells(&ctx.sql(&sql).unwrap().to_arrow().unwrap());
        let expected = answer(&query);
        let matches = ours.len() == expected.len()
            && ours
                .iter()
                .zip(&expected)
                .all(|(a, b)| a.len() == b.len() && a.iter().zip(b).all(|(x, y)| same_value(x, y)));
        if !matches {
            wrong.push(format!(
                "{query}: {} rows, expected {}; first {:?} vs {:?}",
                ours.len(),
                expected.len(),
                ours.first(),
                expected.first()
            ));
        }
    }
    assert!(wrong.is_empty(), "wrong answers:\n{}", wrong.join("\n"));
}

/// A pipeline's result is queryable, a query's result continues as a pipeline, and bad queries
/// are clear errors.
#[test]
fn datasets_and_queries_compose_and_bad_queries_are_clear_errors() {
    use manta::prelude::*;
    let ctx = manta::init_with(manta::Config::default()).unwrap();
    let numbers = ctx
        .range(10_000)
        .with_column("y", col("id") * lit(3))
        .filter(col("id").gt_eq(lit(100)));
    ctx.register("numbers", &numbers).unwrap();
    let result = ctx
        .sql("SELECT id, y FROM numbers WHERE id % 7 = 0 ORDER BY id DESC LIMIT 50")
        .unwrap();
    let expected: Vec<Vec<String>> = (100..10_000i64)
        .rev()
        .filter(|id| id % 7 == 0)
        .take(50)
        .map(|id| vec![id.to_string(), (id * 3).to_string()])
        .collect();
    assert_eq!(cells(&result.to_arrow().unwrap()), expected);
    // The query's result is a dataset: a pipeline continues from it.
    let continued = result.filter(col("y").gt(lit(29_000))).count().unwrap();
    let plain = expected
        .iter()
        .filter(|row| row[1].parse::<i64>().unwrap() > 29_000)
        .count() as u64;
    assert_eq!(continued, plain);

    let syntax = ctx.sql("SELEC id FROM numbers").unwrap_err().to_string();
    assert!(syntax.contains("SELEC"), "{syntax}");
    let table = ctx.sql("SELECT * FROM nowhere").unwrap_err().to_string();
    assert!(table.contains("nowhere"), "{table}");
    let column = ctx
        .sql("SELECT nothing FROM numbers")
        .unwrap_err()
        .to_string();
    assert!(column.contains("nothing"), "{column}");
}
