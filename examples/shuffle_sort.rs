//! Shuffle and sort TPC-H `lineitem`: all-to-all operations that run as map and reduce tasks,
//! spilling past the object store's budget.
//!
//! ```text
//! cargo run --release --example shuffle_sort -- [--scale S]
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
    let lineitem = ctx.read_parquet(input.to_str().expect("a UTF-8 path"))?;

    let shuffled = lineitem.random_shuffle(Some(42));
    println!("shuffled {} rows", shuffled.count()?);
    println!("{}", shuffled.stats());

    let by_price = lineitem
        .select_columns(&["l_orderkey", "l_linenumber", "l_extendedprice"])
        .sort_by(vec![
            SortKey::desc("l_extendedprice"),
            SortKey::asc("l_orderkey"),
        ]);
    println!("the five most expensive line items:");
    by_price.show(5)?;
    println!("{}", by_price.stats());
    Ok(())
}
