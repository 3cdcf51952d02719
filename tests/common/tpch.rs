//! TPC-H answers for tests: the queries and answer files in `tests/data/tpch/` (copied from the
//! project's shared TPC-H kit; computed by an independent engine, DuckDB, over data from the
//! same generator), and the comparison: numbers within 1e-6 relative or 1e-2 absolute,
//! everything else exactly, rows in order.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use arrow::array::RecordBatch;
use arrow::datatypes::{DataType, Field, Schema};
use arrow::util::display::{ArrayFormatter, FormatOptions};

/// The scale the tests run at.
pub const SCALE: f64 = 0.1;

pub fn shared_tpch() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/tpch")
}

/// Every cell of the batches as text (NULL as the empty string), row by row.
/// The physical plan `EXPLAIN` shows for TPC-H query `n` on `ctx`.
pub fn physical_plan(ctx: &manta::Context, n: usize) -> String {
    physical_plan_of(ctx, &query(n))
}

/// The physical plan `EXPLAIN` shows for `sql`.
pub fn physical_plan_of(ctx: &manta::Context, sql: &str) -> String {
    let plan = cells(
        &ctx.sql(&format!("EXPLAIN {sql}"))
            .unwrap()
            .to_arrow()
            .unwrap(),
    );
    plan.iter()
        .find(|row| row[0] == "physical_plan")
        .map(|row| row[1].clone())
        .unwrap_or_default()
}

pub fn cells(batches: &[RecordBatch]) -> Vec<Vec<String>> {
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
pub fn answer(query: &str) -> Vec<Vec<String>> {
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

pub fn same_value(ours: &str, theirs: &str) -> bool {
    if ours == theirs {
        return true;
    }
    match (ours.parse::<f64>(), theirs.parse::<f64>()) {
        (Ok(a), Ok(b)) => (a - b).abs() <= (1e-6 * b.abs()).max(1e-2),
        _ => false,
    }
}

/// The text of query `n` (1 to 22).
pub fn query(n: usize) -> String {
    let path = shared_tpch().join(format!("queries/q{n:02}.sql"));
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// What differs from the answer files when `ctx` runs all 22 queries through `ctx.sql`
/// (empty if every answer is right).
pub fn wrong_answers(ctx: &manta::Context) -> Vec<String> {
    (1..=22)
        .filter_map(|n| check(n, &cells(&ctx.sql(&query(n)).unwrap().to_arrow().unwrap())))
        .collect()
}

/// `None` if `rows` are query `n`'s answer, else what differs.
pub fn check(n: usize, rows: &[Vec<String>]) -> Option<String> {
    let expected = answer(&format!("q{n:02}"));
    let matches = rows.len() == expected.len()
        && rows
            .iter()
            .zip(&expected)
            .all(|(a, b)| a.len() == b.len() && a.iter().zip(b).all(|(x, y)| same_value(x, y)));
    (!matches).then(|| {
        format!(
            "q{n:02}: {} rows, expected {}; first {:?} vs {:?}",
            rows.len(),
            expected.len(),
            rows.first(),
            expected.first()
        )
    })
}

/// The eight tables at [`SCALE`] (generated once, cached): (name, directory).
pub fn tables() -> Vec<(&'static str, String)> {
    let root = manta::tpch::default_dir();
    manta::tpch::TABLES
        .iter()
        .map(|table| {
            let dir = manta::tpch::table(&root, table, SCALE).unwrap();
            (*table, dir.to_str().unwrap().to_string())
        })
        .collect()
}

/// Registers `path` as `lineitem`, a pipeline (it computes a column) rather than a plain read:
/// SQL scans it by running it, with the query's projection and filters.
pub fn register_lineitem_pipeline(ctx: &manta::Context, path: &str) {
    let prepared = ctx
        .read_parquet(path)
        .unwrap()
        .with_column("l_unused", manta::prelude::lit(1));
    ctx.register("lineitem", &prepared).unwrap()
}
