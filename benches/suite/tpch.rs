//! `tpch`: the 22 TPC-H queries through `ctx.sql` over all eight tables (registered Parquet
//! files); baseline: a plain DataFusion `SessionContext` over the same files, in the same run.
//! One `RESULT`/`BASELINE` line per run with the total, and one `QUERY` line per query.

use std::time::Instant;

use crate::{Args, rss_report};

fn query_texts() -> anyhow::Result<Vec<(String, String)>> {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/tpch/queries");
    (1..=22)
        .map(|n| {
            let name = format!("q{n:02}");
            let text = std::fs::read_to_string(dir.join(format!("{name}.sql")))?;
            Ok((name, text))
        })
        .collect()
}

/// Runs every query once with `run_one` (which returns the answer's rows): the total seconds,
/// the rows, and `qNN=seconds` for each query.
fn time_queries(
    queries: &[(String, String)],
    mut run_one: impl FnMut(&str) -> anyhow::Result<u64>,
) -> anyhow::Result<(f64, u64, String)> {
    let (mut total, mut rows, mut per_query) = (0.0, 0u64, Vec::new());
    for (name, sql) in queries {
        let started = Instant::now();
        rows += run_one(sql).map_err(|e| e.context(format!("TPC-H {name}")))?;
        let seconds = started.elapsed().as_secs_f64();
        total += seconds;
        per_query.push(format!("{name}={seconds:.3}"));
    }
    Ok((total, rows, per_query.join(" ")))
}

pub fn run(args: &Args) -> anyhow::Result<()> {
    let root = args.data_dir();
    let mut tables = Vec::new();
    for name in manta::tpch::TABLES {
        let dir = manta::tpch::table(&root, name, args.scale)?;
        tables.push((name, dir.to_str().expect("a UTF-8 path").to_string()));
    }
    let queries = query_texts()?;
    let mut config = manta::Config::from_env()?;
    config.address = args.address.clone();
    let ctx = manta::init_with(config)?;
    for (name, path) in &tables {
        ctx.register_parquet(name, path)?;
    }
    // Session settings to try, as `SET` statements separated by `;` (for experiments).
    if let Ok(settings) = std::env::var("MANTA_BENCH_SQL_SETTINGS") {
        for statement in settings.split(';').filter(|s| !s.trim().is_empty()) {
            ctx.sql(statement)?;
        }
    }
    for run in 1..=args.runs {
        let (total, rows, per_query) = time_queries(&queries, |sql| {
            let answer = ctx.sql(sql)?.to_arrow()?;
            Ok(answer.iter().map(|b| b.num_rows() as u64).sum())
        })?;
        println!("QUERY engine=manta run={run} {per_query}");
        println!(
            "RESULT workload=tpch mode={} scale={} run={run} seconds={total:.3} rows={rows} {}",
            args.mode(),
            args.scale,
            rss_report(&ctx)?
        );
    }
    if args.no_baseline {
        return Ok(());
    }
    let runtime = tokio::runtime::Runtime::new()?;
    let df = datafusion::prelude::SessionContext::new();
    for (name, path) in &tables {
        runtime.block_on(df.register_parquet(*name, path, Default::default()))?;
    }
    for run in 1..=args.runs {
        let (total, rows, per_query) = time_queries(&queries, |sql| {
            let answer = runtime.block_on(async { df.sql(sql).await?.collect().await })?;
            Ok(answer.iter().map(|b| b.num_rows() as u64).sum())
        })?;
        println!("QUERY engine=datafusion run={run} {per_query}");
        println!(
            "BASELINE workload=tpch engine=datafusion scale={} run={run} seconds={total:.3} rows={rows}",
            args.scale
        );
    }
    Ok(())
}
