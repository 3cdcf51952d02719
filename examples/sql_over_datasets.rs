//! SQL over a dataset: prepare lineitem with a registered `map_batches` function, register the
//! pipeline as a table, ask DataFusion SQL about it, and continue the answer as a pipeline.
//!
//! ```text
//! cargo run --release --example sql_over_datasets -- [--scale S]
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
    // A pipeline: read, then a registered batch function adding `l_shipmode_upper`.
    let prepared = ctx
        .read_parquet(input.to_str().expect("a UTF-8 path"))?
        .map_batches(manta::tpch::add_shipmode_upper);
    ctx.register("lineitem", &prepared)?;
    let per_mode = ctx.sql(
        "SELECT l_shipmode_upper AS mode, count(*) AS items, sum(l_quantity) AS quantity \
         FROM lineitem WHERE l_shipdate >= DATE '1997-01-01' \
         GROUP BY l_shipmode_upper ORDER BY items DESC",
    )?;
    per_mode.show(10)?;
    // The answer is a dataset: keep going with the Dataset API.
    let busy = per_mode.filter(col("items").gt(lit(22_850)));
    println!(
        "modes with more than 22,850 items since 1997: {}",
        busy.count()?
    );
    Ok(())
}
