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
    let tasks = args.count.unwrap_or(TASKS);
    for run in 1..=args.runs {
        let (seconds, (done_seconds, results)) = timed(|| {
            let refs: Vec<_> = (0..tasks).map(|_| noop.remote(&ctx)).collect();
            let (done_seconds, _) = timed(|| ctx.wait(&refs, refs.len(), None));
            (done_seconds, ctx.get_all(&refs))
        });
        anyhow::ensure!(results?.len() == tasks, "every task answers");
        println!(
            "RESULT workload=tasks mode={} run={run} seconds={seconds:.3} tasks={tasks} tasks_per_s={:.0} done_after_s={done_seconds:.3} peak_rss_mib={}",
            args.mode(),
            tasks as f64 / seconds,
            crate::peak_rss_mib()
        );
    }
    Ok(())
}
