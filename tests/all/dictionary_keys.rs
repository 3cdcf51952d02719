//! String keys of a groupby read as dictionary codes (a stage whose only reader of a string
//! column is the combining groupby at its end reads it as `Dictionary(Int32, Utf8)`): over
//! files whose chunks are dictionary-encoded, plain, or fall back to plain partway, with keys
//! of few and of many values, the answers are DataFusion SQL's over the same files, and the
//! columns keep the types the dataset's schema promises.

use crate::common;

use std::sync::Arc;

use arrow::array::StringViewArray;
use arrow::array::{ArrayRef, Decimal128Array, Int64Array, RecordBatch, StringArray};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use datafusion::prelude::{col, lit};
use manta::prelude::*;
use parquet::file::properties::WriterProperties;
use rand::Rng;
use rand::rngs::StdRng;

use common::*;

/// Strings that make for trouble: empty, accents, other scripts, emoji, a space, a quote.
const STRINGS: [&str; 7] = ["", "x", "ü", "日本", "🦀", "y z", "O'Neil"];

fn schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new("g", DataType::Utf8, true),
        Field::new("h", DataType::Utf8View, true),
        Field::new("v", DataType::Int64, true),
        Field::new("d", DataType::Decimal128(12, 2), true),
    ]))
}

/// `rows` rows: `g` of few values, `h` of few or (when `many`) one value per row, nulls in
/// every column.
fn table(rng: &mut StdRng, rows: usize, many: bool) -> RecordBatch {
    let pick = |rng: &mut StdRng| -> Option<String> {
        (rng.random_range(0..6) > 0).then(|| STRINGS[rng.random_range(0..STRINGS.len())].into())
    };
    let g: StringArray = (0..rows).map(|_| pick(rng)).collect();
    let h: StringViewArray = (0..rows)
        .map(|i| match many {
            true => Some(format!("h{i}-{}", rng.random_range(0..1_000_000))),
            false => pick(rng),
        })
        .collect();
    let v: Int64Array = (0..rows)
        .map(|_| (rng.random_range(0..5) > 0).then(|| rng.random_range(-100..100)))
        .collect();
    let d = (0..rows)
        .map(|_| (rng.random_range(0..5) > 0).then(|| rng.random_range(-100_000..100_000)))
        .collect::<Decimal128Array>()
        .with_precision_and_scale(12, 2)
        .unwrap();
    RecordBatch::try_new(
        schema(),
        vec![
            Arc::new(g) as ArrayRef,
            Arc::new(h),
            Arc::new(v),
            Arc::new(d),
        ],
    )
    .unwrap()
}

/// Four files under `dir`: dictionary-encoded, plain, falling back to plain partway (a
/// dictionary page of at most 8 bytes), and dictionary-encoded with `h` of a value per row;
/// row groups of a random size.
fn write(rng: &mut StdRng, dir: &std::path::Path) {
    std::fs::create_dir_all(dir).unwrap();
    for file in 0..4 {
        let count = rng.random_range(0..300);
        let batch = table(rng, count, file == 3);
        let properties = WriterProperties::builder()
            .set_max_row_group_row_count(Some(rng.random_range(1..=120)));
        let properties = match file {
            1 => properties.set_dictionary_enabled(false),
            2 => properties.set_dictionary_page_size_limit(8),
            _ => properties,
        };
        write_parquet_file(
            &dir.join(format!("part-{file}.parquet")),
            &batch,
            properties.build(),
        );
    }
}

fn rows_of(batches: &[RecordBatch]) -> Vec<String> {
    common::rows(batches)
}

#[test]
fn string_keys_read_as_codes_group_as_sql_does() {
    let contexts = embedded_and_exchanged();
    for_seeded_files(0..12, write, |seed, rng, path, df| {
        let below = rng.random_range(-100..120);
        let aggregates = || {
            vec![
                Aggregate::sum("v"),
                Aggregate::mean("d"),
                Aggregate::sum("w"),
                Aggregate::count(),
            ]
        };
        let sql_aggregates = "sum(v), avg(d), sum(v * 2), count(*)";
        for ctx in &contexts {
            let read = ctx
                .read_parquet_with(
                    path,
                    ReadOptions {
                        rows_per_task: 50,
                        ..Default::default()
                    },
                )
                .unwrap()
                .filter(col("v").lt(lit(below)))
                .with_column("w", col("v") * lit(2));
            // Both keys read as codes; then `g` read by a filter, so only `h` is.
            let both = read.groupby(&["g", "h"]).aggregate(aggregates());
            let expected = sql(
                df,
                &format!("SELECT g, h, {sql_aggregates} FROM t WHERE v < {below} GROUP BY g, h"),
            );
            assert_eq!(
                promised_rows(&both),
                sorted(rows_of(&expected)),
                "seed {seed}, g and h"
            );
            let one = read
                .filter(col("g").not_eq(lit("x")))
                .groupby(&["h", "g"])
                .aggregate(aggregates());
            let expected = sql(
                df,
                &format!(
                    "SELECT h, g, {sql_aggregates} FROM t WHERE v < {below} AND g <> 'x' \
                     GROUP BY h, g"
                ),
            );
            assert_eq!(
                promised_rows(&one),
                sorted(rows_of(&expected)),
                "seed {seed}, h"
            );
        }
    });
}
