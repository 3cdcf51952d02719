//! The fuzzer's input: two tables, `a` and `b`, written as several uneven Parquet files with
//! small, uneven row groups, from a seed. The values are chosen to reach the edges: nulls,
//! empty strings, unicode, keys that make one-row and all-null groups, files with no rows.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use arrow::array::{ArrayRef, Float64Array, Int64Array, RecordBatch, StringArray};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use parquet::arrow::ArrowWriter;
use parquet::file::properties::WriterProperties;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

/// Strings that make for trouble: empty, accents, other scripts, emoji, a space, a quote.
const STRINGS: [&str; 8] = ["", "x", "ü", "日本", "🦀", "y z", "O'Neil", "x"];

/// How the input of one case is made.
#[derive(Clone, Debug)]
pub struct DataSpec {
    /// Seeds every value and every file cut.
    pub seed: u64,
    /// At most this many rows per table (0 makes empty tables).
    pub max_rows: usize,
}

/// The tables of one case, written under a directory.
pub struct Tables {
    pub a: PathBuf,
    pub b: PathBuf,
    /// The rows of each, for the reproducer.
    pub a_rows: Vec<RecordBatch>,
    pub b_rows: Vec<RecordBatch>,
}

pub fn schema_a() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new("k", DataType::Int64, true),
        Field::new("g", DataType::Utf8, true),
        Field::new("v", DataType::Int64, true),
        Field::new("f", DataType::Float64, true),
    ]))
}

pub fn schema_b() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new("k", DataType::Int64, true),
        Field::new("h", DataType::Utf8, true),
        Field::new("w", DataType::Int64, true),
    ]))
}

impl DataSpec {
    /// Writes both tables under `root`.
    pub fn write(&self, root: &Path) -> Tables {
        let mut rng = StdRng::seed_from_u64(self.seed);
        let rows_a = rng.random_range(0..=self.max_rows);
        let rows_b = rng.random_range(0..=self.max_rows);
        // Few keys, so groups of one row and joins with many matches both happen; the key 4
        // has no value of `v` ever (an all-null group).
        let keys = rng.random_range(1..8i64);
        let a = table_a(&mut rng, rows_a, keys);
        let b = table_b(&mut rng, rows_b, keys);
        let a_dir = root.join("a");
        let b_dir = root.join("b");
        write_files(&mut rng, &a_dir, &a);
        write_files(&mut rng, &b_dir, &b);
        Tables {
            a: a_dir,
            b: b_dir,
            a_rows: vec![a],
            b_rows: vec![b],
        }
    }
}

fn maybe<T>(rng: &mut StdRng, null_percent: u32, value: T) -> Option<T> {
    (rng.random_range(0..100) >= null_percent).then_some(value)
}

fn table_a(rng: &mut StdRng, rows: usize, keys: i64) -> RecordBatch {
    let mut k = Vec::with_capacity(rows);
    let mut g = Vec::with_capacity(rows);
    let mut v = Vec::with_capacity(rows);
    let mut f = Vec::with_capacity(rows);
    for _ in 0..rows {
        let key = rng.random_range(0..keys);
        k.push(maybe(rng, 10, key));
        let s = STRINGS[rng.random_range(0..STRINGS.len())];
        g.push(maybe(rng, 15, s));
        let value = rng.random_range(-50..50i64);
        v.push(if key == 4 {
            None
        } else {
            maybe(rng, 20, value)
        });
        // Eighths add exactly, so sums do not depend on the order of the rows.
        let x = rng.random_range(-80..80i64) as f64 / 8.0;
        f.push(maybe(rng, 20, x));
    }
    RecordBatch::try_new(
        schema_a(),
        vec![
            Arc::new(Int64Array::from(k)) as ArrayRef,
            Arc::new(StringArray::from(g)),
            Arc::new(Int64Array::from(v)),
            Arc::new(Float64Array::from(f)),
        ],
    )
    .expect("table a")
}

fn table_b(rng: &mut StdRng, rows: usize, keys: i64) -> RecordBatch {
    let mut k = Vec::with_capacity(rows);
    let mut h = Vec::with_capacity(rows);
    let mut w = Vec::with_capacity(rows);
    for _ in 0..rows {
        let key = rng.random_range(0..keys + 1);
        k.push(maybe(rng, 10, key));
        let s = STRINGS[rng.random_range(0..STRINGS.len())];
        h.push(maybe(rng, 15, s));
        let value = rng.random_range(0..1000i64);
        w.push(maybe(rng, 20, value));
    }
    RecordBatch::try_new(
        schema_b(),
        vec![
            Arc::new(Int64Array::from(k)) as ArrayRef,
            Arc::new(StringArray::from(h)),
            Arc::new(Int64Array::from(w)),
        ],
    )
    .expect("table b")
}

/// Cuts `rows` into 1 to 4 files of uneven sizes (some may have no rows), each with row groups
/// of a random small size, some declaring their columns without nulls not nullable.
fn write_files(rng: &mut StdRng, dir: &Path, rows: &RecordBatch) {
    std::fs::create_dir_all(dir).expect("create a table directory");
    let files = rng.random_range(1..=4usize);
    let mut cuts: Vec<usize> = (0..files - 1)
        .map(|_| rng.random_range(0..=rows.num_rows()))
        .collect();
    cuts.push(0);
    cuts.push(rows.num_rows());
    cuts.sort_unstable();
    for (i, pair) in cuts.windows(2).enumerate() {
        let mut part = rows.slice(pair[0], pair[1] - pair[0]);
        if rng.random_range(0..3) == 0 {
            // As another writer might: columns without a null here declared not nullable, so
            // the files differ in nullability.
            let fields: Vec<Field> = part
                .schema()
                .fields()
                .iter()
                .zip(part.columns())
                .map(|(f, c)| f.as_ref().clone().with_nullable(c.null_count() > 0))
                .collect();
            part = part
                .clone()
                .with_schema(Arc::new(Schema::new(fields)))
                .unwrap_or(part);
        }
        let properties = WriterProperties::builder()
            .set_max_row_group_row_count(Some(rng.random_range(1..=16)))
            .build();
        let file = std::fs::File::create(dir.join(format!("part-{i}.parquet"))).expect("create");
        let mut writer =
            ArrowWriter::try_new(file, part.schema(), Some(properties)).expect("a writer");
        // Written in small batches, so row groups end where the writer cuts them.
        for start in (0..part.num_rows()).step_by(5) {
            let len = 5.min(part.num_rows() - start);
            writer.write(&part.slice(start, len)).expect("write");
        }
        writer.close().expect("close");
    }
}
