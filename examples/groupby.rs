//! Group and aggregate: TPC-H query 1's figures per return flag and line status, through the
//! Dataset API (each reduce task aggregates its partition with DataFusion).
//!
//! ```text
//! cargo run --release --example groupby -- [--scale S]
//! ```

use clap::Parser;
use manta::prelude::*;

#[derive(Parser)]
struct Args {
    /// TPC-H scale factor of the generated input.
    #[arg(long, default_value_t = 0.1)]
    scale: f64,
}

fn main() -> Result<(), manta::Report> {
    let ctx = manta::init()?; // first: in a worker process this never returns
    let args = Args::parse();
    let input = manta::tpch::lineitem(&manta::tpch::default_dir(), args.scale)?;
    let summary = ctx
        .read_parquet(input.to_str().expect("a UTF-8 path"))?
        .filter(col("l_shipdate").lt_eq(lit("1998-09-02")))
        .with_column(
            "disc_price",
            col("l_extendedprice") * (lit(1) - col("l_discount")),
        )
        .groupby(&["l_returnflag", "l_linestatus"])
        .aggregate(vec![
            Aggregate::sum("l_quantity").alias("sum_qty"),
            Aggregate::sum("disc_price").alias("sum_disc_price"),
            Aggregate::mean("l_quantity").alias("avg_qty"),
            Aggregate::count().alias("count_order"),
        ])
        .sort_by(vec![
            SortKey::asc("l_returnflag"),
            SortKey::asc("l_linestatus"),
        ]);
    summary.show(10)?;
    println!("{}", summary.stats());
    Ok(())
}
