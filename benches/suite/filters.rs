//! `filters`: every column of lineitem read through one filter at a time, from 1% to 90% of the
//! rows kept, the kept rows scattered (an unsorted column) or in one run (the sorted
//! `l_orderkey`, where row-group statistics skip what the filter drops and, for the 99%
//! filter, prove it keeps every row of the rest). It measures how a reading stage evaluates its
//! filter (`datasets/src/row_group_pruning.rs`, `datasets/src/filtered_read.rs`). Baseline: the same `SELECT *` in plain DataFusion, whose
//! row count each run is checked against.

use datafusion::prelude::{Expr, col, lit};

use crate::{Args, timed};

/// The filters: a name, the Dataset expression and the same as SQL.
fn filters() -> Vec<(&'static str, Expr, &'static str)> {
    vec![
        (
            "quantity<2 (2%, scattered)",
            col("l_quantity").lt(lit(2)),
            "l_quantity < 2",
        ),
        (
            "quantity<6 (10%)",
            col("l_quantity").lt(lit(6)),
            "l_quantity < 6",
        ),
        (
            "quantity<16 (30%)",
            col("l_quantity").lt(lit(16)),
            "l_quantity < 16",
        ),
        (
            "quantity<26 (50%)",
            col("l_quantity").lt(lit(26)),
            "l_quantity < 26",
        ),
        (
            "quantity<46 (90%)",
            col("l_quantity").lt(lit(46)),
            "l_quantity < 46",
        ),
        (
            "orderkey<60000 (1%, one run)",
            col("l_orderkey").lt(lit(60_000)),
            "l_orderkey < 60000",
        ),
        (
            "orderkey>=60000 (99%, one run)",
            col("l_orderkey").gt_eq(lit(60_000)),
            "l_orderkey >= 60000",
        ),
    ]
}

pub fn run(args: &Args) -> anyhow::Result<()> {
    let input = manta::tpch::lineitem(&args.data_dir(), args.scale)?;
    let path = input.to_str().expect("a UTF-8 path");
    let mut config = manta::Config::from_env()?;
    config.address = args.address.clone();
    let ctx = manta::init_with(config)?;
    let runtime = tokio::runtime::Runtime::new()?;
    let baseline = datafusion::prelude::SessionContext::new();
    runtime.block_on(baseline.register_parquet("lineitem", path, Default::default()))?;
    for (name, filter, sql) in filters() {
        let mut expected = None;
        if !args.no_baseline {
            for run in 1..=args.runs {
                let query = format!("SELECT * FROM lineitem WHERE {sql}");
                let (seconds, rows) = timed(|| {
                    runtime.block_on(async {
                        let batches = baseline.sql(&query).await?.collect().await?;
                        anyhow::Ok(batches.iter().map(|b| b.num_rows()).sum::<usize>())
                    })
                });
                let rows = rows?;
                expected = Some(rows);
                println!(
                    "BASELINE workload=filters engine=datafusion filter={name:?} run={run} seconds={seconds:.3} rows={rows}"
                );
            }
        }
        for run in 1..=args.runs {
            let (seconds, rows) = timed(|| {
                let mut rows = 0;
                for batch in ctx
                    .read_parquet(path)?
                    .filter(filter.clone())
                    .iter_batches()?
                {
                    rows += batch?.num_rows();
                }
                anyhow::Ok(rows)
            });
            let rows = rows?;
            if let Some(expected) = expected {
                anyhow::ensure!(
                    rows == expected,
                    "{name}: {rows} rows, DataFusion {expected}"
                );
            }
            println!(
                "RESULT workload=filters mode={} filter={name:?} run={run} seconds={seconds:.3} rows={rows}",
                args.mode()
            );
        }
    }
    Ok(())
}
