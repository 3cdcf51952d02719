//! TPC-H data for examples, tests and benchmarks, generated with the tpchgen crates.
//!
//! [`table`] writes one of the eight TPC-H tables ([`TABLES`]) at a scale factor as Parquet
//! files (snappy, row groups of 128Ki rows) under a cache directory, generating the parts in
//! parallel, and reuses them on later calls; [`lineitem`] is the one most workloads read. The
//! directory appears atomically (written under a temporary name of its own, then renamed), so
//! a half-generated table is never mistaken for a whole one, and callers that generate the same
//! table at once (threads of one test binary, or several processes) each write their own copy
//! and the first rename wins.

use std::fs;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use arrow::array::{AsArray, RecordBatch, StringViewArray};
use arrow::datatypes::{DataType, Field, Schema};
use parquet::arrow::ArrowWriter;
use parquet::basic::Compression;
use parquet::file::properties::WriterProperties;
use tpchgen_arrow::RecordBatchIterator;

/// Rows per Parquet row group in generated tables.
pub const ROW_GROUP_ROWS: usize = 128 * 1024;

/// The default cache: `target/tpch` under the workspace.
pub fn default_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("target")
        .join("tpch")
}

/// The eight TPC-H tables.
pub const TABLES: [&str; 8] = [
    "nation", "region", "part", "supplier", "partsupp", "customer", "orders", "lineitem",
];

/// The directory of `lineitem` at `scale` under `root`, generated if missing.
pub fn lineitem(root: &Path, scale: f64) -> std::io::Result<PathBuf> {
    table(root, "lineitem", scale)
}

/// [`lineitem`] with row groups of `row_group_rows` rows (small ones make many tasks of a small
/// table, for tests).
pub fn lineitem_with(root: &Path, scale: f64, row_group_rows: usize) -> std::io::Result<PathBuf> {
    table_with(root, "lineitem", scale, row_group_rows)
}

/// The directory of TPC-H table `name` (one of [`TABLES`]) at `scale` under `root`, generated
/// if missing.
pub fn table(root: &Path, name: &str, scale: f64) -> std::io::Result<PathBuf> {
    table_with(root, name, scale, ROW_GROUP_ROWS)
}

/// [`table`] with row groups of `row_group_rows` rows.
pub fn table_with(
    root: &Path,
    table: &str,
    scale: f64,
    row_group_rows: usize,
) -> std::io::Result<PathBuf> {
    if !TABLES.contains(&table) {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            format!("{table:?} is not a TPC-H table; they are {TABLES:?}"),
        ));
    }
    let name = if row_group_rows == ROW_GROUP_ROWS {
        format!("sf{scale}")
    } else {
        format!("sf{scale}-rg{row_group_rows}")
    };
    let dir = root.join(name).join(table);
    if dir.is_dir() {
        return Ok(dir);
    }
    let parent = dir.parent().expect("has a parent");
    fs::create_dir_all(parent)?;
    // Named for this call alone: two threads of one process generating the same table must
    // not write into (or remove) each other's temporary directory.
    static CALLS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let call = CALLS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let tmp = parent.join(format!(".{table}.tmp-{}-{call}", std::process::id()));
    let _ = fs::remove_dir_all(&tmp);
    fs::create_dir_all(&tmp)?;
    // Parts generated in parallel: about 750k lineitem rows, 375k orders rows, 200k partsupp
    // rows, or 100k part and 75k customer rows each. Every part is a file, so the tables a
    // query scans split evenly over two or more partitions: one file of 150k customer rows would
    // be a row group of 128Ki rows and one of 19k, and the task scanning the first would do
    // nearly all the work.
    let parts = match table {
        "lineitem" => ((scale * 8.0).ceil() as i32).max(1),
        "orders" | "partsupp" => ((scale * 4.0).ceil() as i32).max(1),
        "part" | "customer" => ((scale * 2.0).ceil() as i32).max(1),
        _ => 1,
    };
    let threads = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1);
    let next = std::sync::atomic::AtomicI32::new(1);
    let result: std::io::Result<()> = std::thread::scope(|scope| {
        let workers: Vec<_> = (0..threads)
            .map(|_| {
                scope.spawn(|| -> std::io::Result<()> {
                    loop {
                        let part = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        if part > parts {
                            return Ok(());
                        }
                        write_part(&tmp, table, scale, part, parts, row_group_rows)?;
                    }
                })
            })
            .collect();
        workers
            .into_iter()
            .try_for_each(|w| w.join().expect("generator thread panicked"))
    });
    if let Err(e) = result {
        let _ = fs::remove_dir_all(&tmp);
        return Err(e);
    }
    if let Err(e) = fs::rename(&tmp, &dir) {
        let _ = fs::remove_dir_all(&tmp);
        // Another caller's copy got there first: it is as whole as ours.
        if !dir.is_dir() {
            return Err(e);
        }
    }
    Ok(dir)
}

/// Part `part` of `parts` of `table`'s rows, as Arrow batches of `batch_size` rows.
fn generator(
    table: &str,
    scale: f64,
    part: i32,
    parts: i32,
    batch_size: usize,
) -> Box<dyn RecordBatchIterator> {
    use tpchgen::generators::*;
    use tpchgen_arrow::*;
    match table {
        "nation" => Box::new(
            NationArrow::new(NationGenerator::new(scale, part, parts)).with_batch_size(batch_size),
        ),
        "region" => Box::new(
            RegionArrow::new(RegionGenerator::new(scale, part, parts)).with_batch_size(batch_size),
        ),
        "part" => Box::new(
            PartArrow::new(PartGenerator::new(scale, part, parts)).with_batch_size(batch_size),
        ),
        "supplier" => Box::new(
            SupplierArrow::new(SupplierGenerator::new(scale, part, parts))
                .with_batch_size(batch_size),
        ),
        "partsupp" => Box::new(
            PartSuppArrow::new(PartSuppGenerator::new(scale, part, parts))
                .with_batch_size(batch_size),
        ),
        "customer" => Box::new(
            CustomerArrow::new(CustomerGenerator::new(scale, part, parts))
                .with_batch_size(batch_size),
        ),
        "orders" => Box::new(
            OrderArrow::new(OrderGenerator::new(scale, part, parts)).with_batch_size(batch_size),
        ),
        _ => Box::new(
            LineItemArrow::new(LineItemGenerator::new(scale, part, parts))
                .with_batch_size(batch_size),
        ),
    }
}

fn write_part(
    dir: &Path,
    table: &str,
    scale: f64,
    part: i32,
    parts: i32,
    row_group_rows: usize,
) -> std::io::Result<()> {
    let batches = generator(
        table,
        scale,
        part,
        parts,
        row_group_rows.min(ROW_GROUP_ROWS),
    );
    let schema = Arc::clone(batches.schema());
    let file = fs::File::create(dir.join(format!("part-{part:03}.parquet")))?;
    let properties = WriterProperties::builder()
        .set_compression(Compression::SNAPPY)
        .set_max_row_group_row_count(Some(row_group_rows))
        .build();
    let mut writer =
        ArrowWriter::try_new(file, schema, Some(properties)).map_err(std::io::Error::other)?;
    for batch in batches {
        writer.write(&batch).map_err(std::io::Error::other)?;
    }
    writer.close().map_err(std::io::Error::other)?;
    Ok(())
}

/// The quickstart's pipeline over the lineitem files at `input` (also used by the tests and the
/// `etl` benchmark): filter, `revenue`, then [`add_shipmode_upper`]. `read` and `map` say where
/// its two halves run (by default they fuse into one stage).
pub fn etl(
    ctx: &crate::Context,
    input: &Path,
    read: crate::ReadOptions,
    map: crate::MapBatchesOptions,
) -> crate::Result<crate::Dataset> {
    use datafusion::prelude::{col, lit};
    let path = input.to_str().ok_or_else(|| {
        crate::Error::InvalidArgument(format!("{} is not a UTF-8 path", input.display()))
    })?;
    Ok(ctx
        .read_parquet_with(path, read)?
        .filter(
            col("l_shipdate")
                .lt_eq(lit("1998-09-02"))
                .and(col("l_discount").gt(lit(0.05))),
        )
        .with_column(
            "revenue",
            col("l_extendedprice") * (lit(1) - col("l_discount")),
        )
        .map_batches_with(add_shipmode_upper, map))
}

/// The quickstart's batch function (also used by the tests and the `etl` benchmark): adds
/// `l_shipmode_upper`, the ship mode in upper case.
#[crate::remote]
pub fn add_shipmode_upper(batch: RecordBatch) -> crate::Result<RecordBatch> {
    let modes = batch.column_by_name("l_shipmode").ok_or_else(|| {
        crate::Error::InvalidArgument("the batch has no l_shipmode column".into())
    })?;
    // Batch functions see every string column as a view (`Utf8View`), whatever the source.
    let upper: StringViewArray = modes
        .as_string_view()
        .iter()
        .map(|mode| mode.map(str::to_uppercase))
        .collect();
    let mut fields = batch.schema().fields().to_vec();
    fields.push(Arc::new(Field::new(
        "l_shipmode_upper",
        DataType::Utf8View,
        true,
    )));
    let mut columns = batch.columns().to_vec();
    columns.push(Arc::new(upper));
    Ok(RecordBatch::try_new(
        Arc::new(Schema::new(fields)),
        columns,
    )?)
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;

    use arrow::array::Int64Array;
    use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;

    use super::*;

    /// Every `o_orderkey` in the Parquet files of `dir`.
    fn order_keys(dir: &Path) -> Vec<i64> {
        let mut keys = Vec::new();
        for file in fs::read_dir(dir).unwrap() {
            let file = fs::File::open(file.unwrap().path()).unwrap();
            for batch in ParquetRecordBatchReaderBuilder::try_new(file)
                .unwrap()
                .build()
                .unwrap()
            {
                let batch = batch.unwrap();
                let column = batch.column_by_name("o_orderkey").unwrap();
                let column = column.as_any().downcast_ref::<Int64Array>().unwrap();
                keys.extend(column.values().iter());
            }
        }
        keys
    }

    /// Threads of one process that ask for the same missing table at once (as the tests of one
    /// binary do on a fresh checkout) all get it whole: each writes its own temporary copy and
    /// the first to rename it wins.
    #[test]
    fn callers_generating_one_table_at_once_all_get_it_whole() {
        let root = std::env::temp_dir().join(format!(
            "manta-tpch-race-{}-{}",
            std::process::id(),
            rand::random::<u64>()
        ));
        let scale = 0.01;
        let dirs: Vec<PathBuf> = std::thread::scope(|scope| {
            let callers: Vec<_> = (0..4)
                .map(|_| scope.spawn(|| table(&root, "orders", scale)))
                .collect();
            callers
                .into_iter()
                .map(|c| c.join().unwrap().unwrap())
                .collect()
        });
        assert!(dirs.iter().all(|dir| *dir == dirs[0]));
        // TPC-H has 1.5 M orders per unit of scale, each key once.
        let keys = order_keys(&dirs[0]);
        assert_eq!(keys.len(), (1_500_000.0 * scale) as usize);
        assert_eq!(keys.iter().collect::<HashSet<_>>().len(), keys.len());
        let leftovers: Vec<_> = fs::read_dir(dirs[0].parent().unwrap())
            .unwrap()
            .map(|entry| entry.unwrap().file_name())
            .filter(|name| name != "orders")
            .collect();
        assert!(leftovers.is_empty(), "temporary copies left: {leftovers:?}");
        fs::remove_dir_all(&root).unwrap();
    }
}
