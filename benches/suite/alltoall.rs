//! `q1`, `shuffle`, `sort`: TPC-H lineitem through the Dataset API's all-to-all operations.
//! Baselines: the same question in plain DataFusion SQL over the same files (none for
//! `shuffle`, which SQL has no way to say).

use arrow::array::{Array, Decimal128Array};
use manta::prelude::*;

use crate::{Args, rss_report, timed};

fn context(args: &Args) -> anyhow::Result<manta::Context> {
    let mut config = manta::Config::from_env()?;
    config.address = args.address.clone();
    if let Some(bytes) = &args.object_store_memory {
        config.object_store_memory = Some(manta::engine::parse_bytes(bytes)?);
    }
    Ok(manta::init_with(config)?)
}

/// TPC-H Q1 through the Dataset API.
fn q1(lineitem: &Dataset) -> Dataset {
    lineitem
        .filter(col("l_shipdate").lt_eq(lit("1998-09-02")))
        .with_column(
            "disc_price",
            col("l_extendedprice") * (lit(1) - col("l_discount")),
        )
        .with_column("charge", col("disc_price") * (lit(1) + col("l_tax")))
        .groupby(&["l_returnflag", "l_linestatus"])
        .aggregate(vec![
            Aggregate::sum("l_quantity").alias("sum_qty"),
            Aggregate::sum("l_extendedprice").alias("sum_base_price"),
            Aggregate::sum("disc_price").alias("sum_disc_price"),
            Aggregate::sum("charge").alias("sum_charge"),
            Aggregate::mean("l_quantity").alias("avg_qty"),
            Aggregate::mean("l_extendedprice").alias("avg_price"),
            Aggregate::mean("l_discount").alias("avg_disc"),
            Aggregate::count().alias("count_order"),
        ])
        .sort_by(vec![
            SortKey::asc("l_returnflag"),
            SortKey::asc("l_linestatus"),
        ])
}

const Q1_SQL: &str = "SELECT l_returnflag, l_linestatus, sum(l_quantity), sum(l_extendedprice), \
    sum(l_extendedprice * (1 - l_discount)), sum(l_extendedprice * (1 - l_discount) * (1 + l_tax)), \
    avg(l_quantity), avg(l_extendedprice), avg(l_discount), count(*) FROM lineitem \
    WHERE l_shipdate <= DATE '1998-09-02' GROUP BY l_returnflag, l_linestatus \
    ORDER BY l_returnflag, l_linestatus";

const SORT_SQL: &str = "SELECT * FROM lineitem ORDER BY l_extendedprice DESC";

pub fn run(args: &Args) -> anyhow::Result<()> {
    let input = manta::tpch::lineitem(&args.data_dir(), args.scale)?;
    let ctx = context(args)?;
    let mut read = manta::ReadOptions::default();
    if let Some(rows) = args.rows_per_task {
        read.rows_per_task = rows;
    }
    let lineitem = ctx.read_parquet_with(input.to_str().expect("a UTF-8 path"), read)?;
    let workload = args.workload.as_str();
    for run in 1..=args.runs {
        let (seconds, result) = timed(|| -> anyhow::Result<_> {
            Ok(match workload {
                "q1" => {
                    let ds = q1(&lineitem);
                    let rows = ds.to_arrow()?.iter().map(|b| b.num_rows()).sum::<usize>();
                    (rows as u64, String::new(), ds.stats())
                }
                "shuffle" => {
                    let ds = lineitem.random_shuffle(Some(run as u64));
                    let (mut rows, mut quantity) = (0u64, 0i128);
                    for batch in ds.iter_batches()? {
                        let batch = batch?;
                        rows += batch.num_rows() as u64;
                        let q = batch.column_by_name("l_quantity").expect("l_quantity");
                        let q = q
                            .as_any()
                            .downcast_ref::<Decimal128Array>()
                            .expect("decimal");
                        quantity += q.iter().flatten().sum::<i128>();
                    }
                    (rows, format!(" sum_quantity_raw={quantity}"), ds.stats())
                }
                "sort" => {
                    // Every row comes out, and in order: the whole sort is timed, checked.
                    let ds = lineitem.sort(desc("l_extendedprice"));
                    let (mut rows, mut previous, mut top) = (0u64, i128::MAX, None);
                    for batch in ds.iter_batches()? {
                        let batch = batch?;
                        let price = batch.column_by_name("l_extendedprice").expect("price");
                        let price = price
                            .as_any()
                            .downcast_ref::<Decimal128Array>()
                            .expect("decimal");
                        for value in price.iter().flatten() {
                            anyhow::ensure!(value <= previous, "sort output out of order");
                            previous = value;
                        }
                        top = top.or_else(|| price.iter().flatten().next());
                        rows += batch.num_rows() as u64;
                    }
                    let top = top.map_or("none".into(), |v| format!("{}.{:02}", v / 100, v % 100));
                    (rows, format!(" top_price={top}"), ds.stats())
                }
                other => anyhow::bail!("unknown workload {other}"),
            })
        });
        let (rows, detail, stats) = result?;
        println!(
            "RESULT workload={workload} mode={} scale={} run={run} seconds={seconds:.3} rows={rows} rows_per_s={:.0} {} spilled_mib={}{detail}",
            args.mode(),
            args.scale,
            6_000_000.0 * args.scale / seconds,
            rss_report(&ctx)?,
            stats.spilled_bytes() >> 20,
        );
        if run == args.runs {
            eprintln!("{stats}");
        }
    }
    let sql = match workload {
        "q1" => Some(Q1_SQL),
        "sort" => Some(SORT_SQL),
        _ => None,
    };
    if let Some(sql) = sql.filter(|_| !args.no_baseline) {
        let runtime = tokio::runtime::Runtime::new()?;
        for run in 1..=args.runs {
            let (seconds, rows) = runtime.block_on(async {
                let df = datafusion::prelude::SessionContext::new();
                df.register_parquet("lineitem", input.to_str().unwrap(), Default::default())
                    .await?;
                let started = std::time::Instant::now();
                let batches = df.sql(sql).await?.collect().await?;
                let rows: usize = batches.iter().map(|b| b.num_rows()).sum();
                anyhow::Ok((started.elapsed().as_secs_f64(), rows))
            })?;
            println!(
                "BASELINE workload={workload} engine=datafusion scale={} run={run} seconds={seconds:.3} rows={rows}",
                args.scale
            );
        }
    }
    Ok(())
}
