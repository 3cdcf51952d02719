//! `etl`: read lineitem -> filter -> revenue -> registered map_batches -> write Parquet.
//! Baseline: the same query in plain DataFusion (`COPY ... TO ... STORED AS PARQUET`).

use crate::{Args, rss_report, timed};

pub fn run(args: &Args) -> anyhow::Result<()> {
    let input = manta::tpch::lineitem(&args.data_dir(), args.scale)?;
    let out = std::env::temp_dir().join(format!("manta-bench-etl-{}", std::process::id()));
    let mut config = manta::Config::from_env()?;
    config.address = args.address.clone();
    if let Some(bytes) = &args.object_store_memory {
        config.object_store_memory = Some(manta::engine::parse_bytes(bytes)?);
    }
    let ctx = manta::init_with(config)?;
    for run in 1..=args.runs {
        let ds = manta::tpch::etl(&ctx, &input, Default::default(), Default::default())?;
        let (seconds, written) = timed(|| {
            ds.write_with(
                &out,
                manta::WriteFormat::Parquet,
                manta::WriteMode::Overwrite,
            )
        });
        let written = written?;
        let checksum = checksum_dir(&ctx, &written.path)?;
        let rss = rss_report(&ctx)?;
        println!(
            "RESULT workload=etl mode={} scale={} run={run} seconds={seconds:.3} rows={} out_mib={:.1} {rss} checksum={}",
            args.mode(),
            args.scale,
            written.rows,
            dir_bytes(&written.path)? as f64 / (1 << 20) as f64,
            checksum.hex()
        );
        if run == args.runs {
            eprintln!("{}", ds.stats());
        }
    }
    let _ = std::fs::remove_dir_all(&out);
    if !args.no_baseline {
        baseline(args, &input)?;
    }
    Ok(())
}

/// The bytes of the files in `dir`.
fn dir_bytes(dir: &std::path::Path) -> anyhow::Result<u64> {
    let mut bytes = 0;
    for entry in std::fs::read_dir(dir)? {
        bytes += entry?.metadata()?.len();
    }
    Ok(bytes)
}

fn checksum_dir(ctx: &manta::Context, dir: &std::path::Path) -> anyhow::Result<manta::Checksum> {
    let mut checksum = manta::Checksum::default();
    for batch in ctx.read_parquet(dir.to_str().unwrap())?.iter_batches()? {
        checksum.update(&batch?)?;
    }
    Ok(checksum)
}

fn baseline(args: &Args, input: &std::path::Path) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Runtime::new()?;
    let out = std::env::temp_dir().join(format!("manta-bench-etl-df-{}", std::process::id()));
    for run in 1..=args.runs {
        let _ = std::fs::remove_dir_all(&out);
        std::fs::create_dir_all(&out)?;
        let (seconds, rows) = runtime.block_on(async {
            let ctx = datafusion::prelude::SessionContext::new();
            ctx.register_parquet("lineitem", input.to_str().unwrap(), Default::default()).await?;
            let started = std::time::Instant::now();
            let result = ctx
                .sql(&format!(
                    "COPY (SELECT *, l_extendedprice * (1 - l_discount) AS revenue, upper(l_shipmode) AS l_shipmode_upper \
                     FROM lineitem WHERE l_shipdate <= DATE '1998-09-02' AND l_discount > 0.05) \
                     TO '{}' STORED AS PARQUET OPTIONS (compression 'snappy')",
                    out.display()
                ))
                .await?
                .collect()
                .await?;
            let rows = arrow::util::display::array_value_to_string(result[0].column(0), 0)?;
            anyhow::Ok((started.elapsed().as_secs_f64(), rows))
        })?;
        println!(
            "BASELINE workload=etl engine=datafusion scale={} run={run} seconds={seconds:.3} rows={rows}",
            args.scale
        );
    }
    let _ = std::fs::remove_dir_all(&out);
    Ok(())
}
