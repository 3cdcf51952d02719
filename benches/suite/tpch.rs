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
    for run in 1..=args.runs {
        let mut total = 0.0;
        let mut rows = 0u64;
        let mut per_query = Vec::new();
        for (name, sql) in &queries {
            let started = Instant::now();
            let answer = ctx.sql(sql)?;
            rows += answer
                .to_arrow()?
                .iter()
                .map(|b| b.num_rows() as u64)
                .sum::<u64>();
            let seconds = started.elapsed().as_secs_f64();
            total += seconds;
            per_query.push(format!("{name}={seconds:.3}"));
        }
        println!("QUERY engine=manta run={run} {}", per_query.join(" "));
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
    runtime.block_on(async {
        let df = datafusion::prelude::SessionContext::new();
        for (name, path) in &tables {
            df.register_parquet(*name, path, Default::default()).await?;
        }
        for run in 1..=args.runs {
            let mut total = 0.0;
            let mut rows = 0u64;
            let mut per_query = Vec::new();
            for (name, sql) in &queries {
                let started = Instant::now();
                let batches = df.sql(sql).await?.collect().await?;
                rows += batches.iter().map(|b| b.num_rows() as u64).sum::<u64>();
                let seconds = started.elapsed().as_secs_f64();
                total += seconds;
                per_query.push(format!("{name}={seconds:.3}"));
            }
            println!("QUERY engine=datafusion run={run} {}", per_query.join(" "));
            println!(
                "BASELINE workload=tpch engine=datafusion scale={} run={run} seconds={total:.3} rows={rows}",
                args.scale
            );
        }
        Ok::<_, anyhow::Error>(())
    })
}
