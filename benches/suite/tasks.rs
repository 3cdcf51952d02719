//! `tasks`: 100,000 no-op remote tasks submitted, then all their results fetched (tasks/s),
//! embedded or on the cluster at `--address`.

use crate::{Args, timed};

const TASKS: usize = 100_000;

#[manta::remote]
fn noop() {}

pub fn run(args: &Args) -> anyhow::Result<()> {
    let mut config = manta::Config::from_env()?;
    config.address = args.address.clone();
    let ctx = manta::init_with(config)?;
    // Warm up: worker processes started, the executable shipped.
    ctx.get_all(&(0..100).map(|_| noop.remote(&ctx)).collect::<Vec<_>>())?;
    for run in 1..=args.runs {
        let (seconds, results) = timed(|| {
            let refs: Vec<_> = (0..TASKS).map(|_| noop.remote(&ctx)).collect();
            ctx.get_all(&refs)
        });
        anyhow::ensure!(results?.len() == TASKS, "every task answers");
        println!(
            "RESULT workload=tasks mode={} run={run} seconds={seconds:.3} tasks={TASKS} tasks_per_s={:.0} peak_rss_mib={}",
            args.mode(),
            TASKS as f64 / seconds,
            crate::peak_rss_mib()
        );
    }
    Ok(())
}
