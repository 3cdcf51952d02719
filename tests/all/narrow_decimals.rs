//! Decimals Parquet stores as `INT32` or `INT64`, which a combining groupby's stage reads at that
//! width and carries narrow to the decimal arithmetic and the laned sums: every other reader (a
//! filter after the read, an expression that is no decimal arithmetic, a key, `min` and `max`)
//! gets them widened. Over files of nullable decimals of both widths, values past 64 bits in
//! the products, filters that keep scattered rows, runs, or all, the answers are DataFusion
//! SQL's over the same files, and the columns keep the types the dataset's schema promises.

use crate::common;

use std::sync::Arc;

use arrow::array::{ArrayRef, Decimal128Array, Int64Array, RecordBatch, StringArray};
use datafusion::prelude::{col, lit};
use manta::prelude::*;
use parquet::file::properties::WriterProperties;
use rand::Rng;
use rand::rngs::StdRng;

use common::*;

/// `rows` rows starting at `first`: `k` (strings), `f` (ascending, so that a range of it keeps
/// runs of rows), and three decimals, `d` (`INT64`), `e` (`INT32`) and `p` (`INT64`, past 64
/// bits in products), nulls in `k`, `d` and `e`.
fn table(rng: &mut StdRng, first: i64, rows: usize) -> RecordBatch {
    let some = |rng: &mut StdRng| rng.random_range(0..6) > 0;
    let k: StringArray = (0..rows)
        .map(|_| some(rng).then(|| ["a", "ü", "日本"][rng.random_range(0..3)]))
        .collect();
    let f = Int64Array::from_iter_values(first..first + rows as i64);
    let decimals = |rng: &mut StdRng, bound: i128, nulls: bool, precision: u8, scale: i8| {
        (0..rows)
            .map(|_| (!nulls || some(rng)).then(|| rng.random_range(-bound..=bound)))
            .collect::<Decimal128Array>()
            .with_precision_and_scale(precision, scale)
            .unwrap()
    };
    let d = decimals(rng, 999_999_999_999, true, 15, 2);
    let e = decimals(rng, 9_999_999, true, 7, 3);
    let p = decimals(rng, 99_999_999_999_999, false, 18, 2);
    RecordBatch::try_from_iter_with_nullable([
        ("k", Arc::new(k) as ArrayRef, true),
        ("f", Arc::new(f), false),
        ("d", Arc::new(d), true),
        ("e", Arc::new(e), true),
        ("p", Arc::new(p), false),
    ])
    .unwrap()
}

/// Three files under `dir`, of row groups of a random size.
fn write(rng: &mut StdRng, dir: &std::path::Path) {
    std::fs::create_dir_all(dir).unwrap();
    let mut first = 0;
    for file in 0..3 {
        let count = rng.random_range(0..400);
        let batch = table(rng, first, count);
        first += count as i64;
        let properties = WriterProperties::builder()
            .set_max_row_group_row_count(Some(rng.random_range(1..=150)))
            .build();
        write_parquet_file(
            &dir.join(format!("part-{file}.parquet")),
            &batch,
            properties,
        );
    }
}

#[test]
fn narrow_decimals_answer_as_sql_does() {
    let contexts = embedded_and_exchanged();
    for_seeded_files(0..10, write, |seed, rng, path, df| {
        // Scattered rows (every third), a run of them, or every row.
        let (filter, sql_filter) = match seed % 3 {
            0 => ((col("f") % lit(3)).not_eq(lit(0)), "f % 3 <> 0".to_string()),
            1 => {
                let below = rng.random_range(0..900);
                (col("f").lt(lit(below)), format!("f < {below}"))
            }
            _ => (col("f").gt_eq(lit(0)), "f >= 0".to_string()),
        };
        for ctx in &contexts {
            let read = ctx
                .read_parquet_with(
                    path,
                    ReadOptions {
                        rows_per_task: 70,
                        ..Default::default()
                    },
                )
                .unwrap()
                .filter(filter.clone())
                // Decimal arithmetic over narrow sides, one of them a column shifted by a
                // scalar, and then over a wide side (`x`, past 64 bits) and a narrow one.
                .with_column("x", col("d") * (lit(1) - col("e")))
                .with_column("y", col("x") + col("p"));
            let arithmetic = read.groupby(&["k"]).aggregate(vec![
                Aggregate::sum("d"),
                Aggregate::mean("d"),
                Aggregate::sum("e"),
                Aggregate::mean("e"),
                Aggregate::sum("x"),
                Aggregate::sum("y"),
                Aggregate::min("d"),
                Aggregate::max("e"),
                Aggregate::count(),
            ]);
            let expected = sql(
                df,
                &format!(
                    "SELECT k, sum(d), avg(d), sum(e), avg(e), sum(d * (1 - e)), \
                     sum(d * (1 - e) + p), min(d), max(e), count(*) FROM t \
                     WHERE {sql_filter} GROUP BY k"
                ),
            );
            assert_eq!(
                promised_rows(&arithmetic),
                sorted(common::rows(&expected)),
                "seed {seed}, arithmetic"
            );

            // Read by what takes them only wide: a comparison, a filter after the read, a
            // decimal key.
            let others = read
                .with_column("big", col("d").gt(lit(1000)))
                .filter(col("p").gt(lit(0)))
                .groupby(&["e", "big"])
                .aggregate(vec![Aggregate::sum("d"), Aggregate::sum("p")]);
            let expected = sql(
                df,
                &format!(
                    "SELECT e, d > 1000, sum(d), sum(p) FROM t \
                     WHERE {sql_filter} AND p > 0 GROUP BY e, d > 1000"
                ),
            );
            assert_eq!(
                promised_rows(&others),
                sorted(common::rows(&expected)),
                "seed {seed}, other readers"
            );
        }
    });
}
