//! Join: line items with a small table of what their return flags mean, and the count of line
//! items per meaning. Both sides are hash-partitioned on the key; each reduce task joins one
//! partition of each with DataFusion.
//!
//! ```text
//! cargo run --release --example join -- [--scale S]
//! ```

use clap::Parser;
use manta::prelude::*;

#[derive(Parser)]
struct Args {
    /// TPC-H scale factor of the generated input.
    #[arg(long, default_value_t = 0.1)]
    scale: f64,
}

#[derive(serde::Serialize)]
struct Flag {
    flag: &'static str,
    meaning: &'static str,
}

fn main() -> Result<(), manta::Report> {
    let ctx = manta::init()?; // first: in a worker process this never returns
    let args = Args::parse();
    let input = manta::tpch::lineitem(&manta::tpch::default_dir(), args.scale)?;
    let lineitem = ctx
        .read_parquet(input.to_str().expect("a UTF-8 path"))?
        .select_columns(&["l_orderkey", "l_returnflag"]);
    let flags = ctx.from_items(&[
        Flag {
            flag: "A",
            meaning: "accepted",
        },
        Flag {
            flag: "N",
            meaning: "none",
        },
        Flag {
            flag: "R",
            meaning: "returned",
        },
    ])?;
    // tpchgen writes string views; from_items makes plain strings: cast so the keys match.
    let lineitem = lineitem.with_column(
        "l_returnflag",
        datafusion::logical_expr::cast(col("l_returnflag"), arrow::datatypes::DataType::Utf8),
    );
    let counts = lineitem
        .join_on(&flags, &["l_returnflag"], &["flag"], JoinKind::Inner)
        .groupby(&["meaning"])
        .count()
        .sort("meaning");
    counts.show(10)?;
    println!("{}", counts.stats());
    Ok(())
}
