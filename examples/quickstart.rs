//! Quickstart: an ETL pipeline over TPC-H `lineitem`, embedded or on a cluster.
//!
//! read Parquet -> filter -> computed column -> your own batch function -> write Parquet, with a
//! progress bar and per-stage figures. Without `--input` it first generates `lineitem` at
//! `--scale` (default 0.1) with the tpchgen crates. With `MANTA_ADDRESS=host:port` the same
//! program runs on a cluster (`manta start ...`) and prints the same last line.
//!
//! ```text
//! cargo run --release --example quickstart -- [--scale S] [--input DIR] [--output DIR]
//! ```

use std::path::PathBuf;
use std::sync::Arc;

use arrow::array::{AsArray, StringViewArray};
use arrow::datatypes::{DataType, Field, Schema};
use clap::Parser;
use manta::prelude::*;

/// Adds `l_shipmode_upper`: the ship mode in upper case. Registered by name, so it runs in
/// worker processes on every node too.
#[manta::remote]
fn add_shipmode_upper(batch: RecordBatch) -> manta::Result<RecordBatch> {
    let modes = batch.column_by_name("l_shipmode").ok_or_else(|| {
        manta::Error::InvalidArgument("the batch has no l_shipmode column".into())
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

#[derive(Parser)]
struct Args {
    /// TPC-H scale factor of the generated input.
    #[arg(long, default_value_t = 0.1)]
    scale: f64,
    /// Read this directory of lineitem Parquet files instead of generating one.
    #[arg(long)]
    input: Option<PathBuf>,
    /// Where to write the result.
    #[arg(long, default_value = "target/quickstart-out")]
    output: PathBuf,
}

fn main() -> Result<(), manta::Report> {
    let ctx = manta::init()?; // first: in a worker process this never returns
    let args = Args::parse();
    let input = match args.input {
        Some(dir) => dir,
        None => manta::tpch::lineitem(&manta::tpch::default_dir(), args.scale)?,
    };

    let ds = ctx
        .read_parquet(input.to_str().expect("a UTF-8 path"))?
        .filter(
            col("l_shipdate")
                .lt_eq(lit("1998-09-02"))
                .and(col("l_discount").gt(lit(0.05))),
        )
        .with_column(
            "revenue",
            col("l_extendedprice") * (lit(1) - col("l_discount")),
        )
        .map_batches(add_shipmode_upper);
    // Overwrite: each run replaces the last one's output (the default refuses to write over
    // a directory that holds anything).
    let written = ds.write_with(&args.output, WriteFormat::Parquet, WriteMode::Overwrite)?;
    println!("{}", ds.stats());
    println!(
        "Wrote {} rows in {} files to {}",
        written.rows,
        written.files,
        written.path.display()
    );

    // Read the output back and checksum it: the same rows give the same checksum in any order.
    let mut checksum = manta::Checksum::default();
    for batch in ctx
        .read_parquet(written.path.to_str().expect("a UTF-8 path"))?
        .iter_batches()?
    {
        checksum.update(&batch?)?;
    }
    println!("rows_out={} checksum={}", checksum.rows, checksum.hex());
    Ok(())
}
