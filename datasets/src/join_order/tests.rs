//! The join order rule against plain DataFusion, over Parquet files written for each case.

use std::path::Path;
use std::sync::Arc;

use arrow::array::{ArrayRef, Int64Array, RecordBatch, StringArray};
use arrow::datatypes::{DataType, Field, Schema};
use datafusion::prelude::{ParquetReadOptions, SessionContext};
use parquet::arrow::ArrowWriter;
use proptest::prelude::*;

use crate::sql::session;
use crate::sql::test_support::{optimized_plan, sorted_answer as answer};

/// A key: small, repeating, sometimes null.
type Key = Option<i64>;

/// The rows of the five tables (see [`write_tables`]).
#[derive(Debug, Clone, Default)]
struct Tables {
    f: Vec<(Key, Key, i64, i64)>,
    a: Vec<(Key, String, Key)>,
    b: Vec<(Key, Key)>,
    c: Vec<(Key, String)>,
    p: Vec<(Key, Key, i64)>,
}

fn ints(values: impl Iterator<Item = Key>) -> ArrayRef {
    Arc::new(Int64Array::from_iter(values))
}

fn strings<'a>(values: impl Iterator<Item = &'a String>) -> ArrayRef {
    Arc::new(StringArray::from_iter_values(values))
}

/// One Parquet file `dir/name/part.parquet` holding `columns`.
fn write(dir: &Path, name: &str, columns: Vec<(&str, ArrayRef)>) {
    let schema = Arc::new(Schema::new(
        columns
            .iter()
            .map(|(n, c)| Field::new(*n, c.data_type().clone(), c.data_type() != &DataType::Utf8))
            .collect::<Vec<_>>(),
    ));
    let batch = RecordBatch::try_new(
        Arc::clone(&schema),
        columns.into_iter().map(|(_, c)| c).collect(),
    )
    .unwrap();
    std::fs::create_dir_all(dir.join(name)).unwrap();
    let file = std::fs::File::create(dir.join(name).join("part.parquet")).unwrap();
    let mut writer = ArrowWriter::try_new(file, schema, None).unwrap();
    writer.write(&batch).unwrap();
    writer.close().unwrap();
}

/// Writes the tables under `dir`: a fact table `f(k1, k2, d, v)`, dimensions `a(k, name, r)`
/// and `b(k, x)`, `c(r, label)` under `a`, and `p(k1, k2, w)` on both of `f`'s keys.
fn write_tables(dir: &Path, t: &Tables) {
    write(
        dir,
        "f",
        vec![
            ("k1", ints(t.f.iter().map(|r| r.0))),
            ("k2", ints(t.f.iter().map(|r| r.1))),
            ("d", ints(t.f.iter().map(|r| Some(r.2)))),
            ("v", ints(t.f.iter().map(|r| Some(r.3)))),
        ],
    );
    write(
        dir,
        "a",
        vec![
            ("k", ints(t.a.iter().map(|r| r.0))),
            ("name", strings(t.a.iter().map(|r| &r.1))),
            ("r", ints(t.a.iter().map(|r| r.2))),
        ],
    );
    write(
        dir,
        "b",
        vec![
            ("k", ints(t.b.iter().map(|r| r.0))),
            ("x", ints(t.b.iter().map(|r| r.1))),
        ],
    );
    write(
        dir,
        "c",
        vec![
            ("r", ints(t.c.iter().map(|r| r.0))),
            ("label", strings(t.c.iter().map(|r| &r.1))),
        ],
    );
    write(
        dir,
        "p",
        vec![
            ("k1", ints(t.p.iter().map(|r| r.0))),
            ("k2", ints(t.p.iter().map(|r| r.1))),
            ("w", ints(t.p.iter().map(|r| Some(r.2)))),
        ],
    );
}

/// Registers the tables under `dir` in `ctx`.
fn register(ctx: &SessionContext, dir: &Path) {
    for name in ["f", "a", "b", "c", "p"] {
        let path = dir.join(name);
        crate::thread_runtime::block_on(ctx.register_parquet(
            name,
            path.to_str().unwrap(),
            ParquetReadOptions::default(),
        ))
        .unwrap();
    }
}

/// Joins written fact table first, the filtered small tables last.
const QUERIES: [&str; 8] = [
    "SELECT f.v, a.name, c.label FROM f, a, c WHERE f.k1 = a.k AND a.r = c.r AND c.label = 'x'",
    "SELECT count(*) FROM f JOIN b ON f.k2 = b.k JOIN a ON f.k1 = a.k JOIN c ON a.r = c.r \
     WHERE c.label IN ('é', 'x') AND f.d BETWEEN 3 AND 20",
    // A key of two columns.
    "SELECT f.v, p.w, b.x FROM f, p, b WHERE f.k1 = p.k1 AND f.k2 = p.k2 AND p.k2 = b.k AND b.x < 3",
    // q07's shape: one table twice, and a condition over two of the joined plans.
    "SELECT a1.name, a2.name, f.v FROM f, a a1, b, a a2 \
     WHERE f.k1 = a1.k AND f.k2 = b.k AND b.x = a2.k \
     AND ((a1.name = 'x' AND a2.name = 'é') OR (a1.name = 'é' AND a2.name = 'x'))",
    // Two columns of different plans compared, under an aggregate.
    "SELECT c.label, sum(f.v), count(*) FROM f, a, c, b \
     WHERE f.k1 = a.k AND a.r = c.r AND f.k2 = b.k AND b.x > f.d GROUP BY c.label",
    // q05's shape: `a` and `c` equal through `b` only, and a cycle.
    "SELECT f.v, c.label FROM f, a, b, c \
     WHERE f.k1 = a.k AND f.k2 = b.k AND a.r = b.x AND b.x = c.r AND c.label = 'x'",
    // Joins inside a plan of two joined plans (too few to reorder): the inner ones reorder.
    "SELECT f.v, g.label, g.n FROM f JOIN (SELECT a.k, c.label, count(*) AS n FROM f f2, a, c \
     WHERE f2.k1 = a.k AND a.r = c.r AND c.label = 'x' GROUP BY a.k, c.label) g ON f.k1 = g.k",
    // An aggregate among the joined plans.
    "SELECT f.v, g.n FROM f JOIN (SELECT k, count(*) AS n FROM b GROUP BY k) g ON f.k2 = g.k \
     JOIN a ON f.k1 = a.k JOIN c ON a.r = c.r WHERE c.label <> 'é'",
];

fn key(most: i64) -> impl Strategy<Value = Key> {
    prop::option::weighted(0.9, 0..most)
}

fn label() -> impl Strategy<Value = String> {
    "[xé☃]{0,1}"
}

fn tables() -> impl Strategy<Value = Tables> {
    (
        prop::collection::vec((key(12), key(12), 0i64..30, -5i64..50), 0..300),
        prop::collection::vec((key(12), label(), key(4)), 0..14),
        prop::collection::vec((key(12), key(12)), 0..14),
        prop::collection::vec((key(4), label()), 0..5),
        prop::collection::vec((key(12), key(12), 0i64..9), 0..30),
    )
        .prop_map(|(f, a, b, c, p)| Tables { f, a, b, c, p })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(40))]

    #[test]
    fn answers_as_datafusion(tables in tables(), query in 0..QUERIES.len()) {
        let dir = tempfile::tempdir().unwrap();
        write_tables(dir.path(), &tables);
        let (manta, plain) = (session(), SessionContext::new());
        register(&manta, dir.path());
        register(&plain, dir.path());
        prop_assert_eq!(answer(&manta, QUERIES[query]), answer(&plain, QUERIES[query]));
    }
}

/// Tables large enough that the written order of [`QUERIES`]`[0]` is clearly the worse.
fn skewed() -> Tables {
    Tables {
        f: (0..4000)
            .map(|i| (Some(i % 100), Some(i % 7), i % 30, i))
            .collect(),
        a: (0..100)
            .map(|i| (Some(i), format!("n{i}"), Some(i % 40)))
            .collect(),
        c: (0..40)
            .map(|i| {
                (
                    Some(i),
                    ["x", "é"][i as usize % 2].repeat(1 + i as usize / 2),
                )
            })
            .collect(),
        ..Default::default()
    }
}

/// The line of `plan`'s first join whose condition mentions `column`.
fn join_line(plan: &str, column: &str) -> usize {
    plan.lines()
        .position(|l| l.contains("Inner Join") && l.contains(column))
        .unwrap_or_else(|| panic!("no join on {column} in\n{plan}"))
}

#[test]
fn joins_the_filtered_dimension_before_the_fact_table() {
    let dir = tempfile::tempdir().unwrap();
    write_tables(dir.path(), &skewed());
    let (manta, plain) = (session(), SessionContext::new());
    register(&manta, dir.path());
    register(&plain, dir.path());
    let plan = optimized_plan(&manta, QUERIES[0]);
    // Below in the indented plan: joined first.
    assert!(join_line(&plan, "c.r") > join_line(&plan, "f.k1"), "{plan}");
    let written = optimized_plan(&plain, QUERIES[0]);
    assert!(
        join_line(&written, "c.r") < join_line(&written, "f.k1"),
        "{written}"
    );
    assert_eq!(answer(&manta, QUERIES[0]), answer(&plain, QUERIES[0]));
    // The same joins inside a plan of a group too small to reorder.
    let plan = optimized_plan(&manta, QUERIES[6]);
    assert!(
        join_line(&plan, "c.r") > join_line(&plan, "f2.k1"),
        "{plan}"
    );
    assert_eq!(answer(&manta, QUERIES[6]), answer(&plain, QUERIES[6]));
}

#[test]
fn tables_without_footers_keep_the_written_order() {
    let dir = tempfile::tempdir().unwrap();
    write_tables(dir.path(), &skewed());
    let manta = session();
    register(&manta, dir.path());
    // The same fact table, but in memory: nothing says how large it is.
    let facts =
        crate::thread_runtime::block_on(async { manta.table("f").await?.collect().await }).unwrap();
    manta.deregister_table("f").unwrap();
    manta
        .register_batch(
            "f",
            arrow::compute::concat_batches(&facts[0].schema(), &facts).unwrap(),
        )
        .unwrap();
    let plan = optimized_plan(&manta, QUERIES[0]);
    assert!(join_line(&plan, "c.r") < join_line(&plan, "f.k1"), "{plan}");
}
