//! `sim`: the head against 1,000 simulated nodes with a million tasks submitted at once, 10%
//! of the nodes lost halfway (see `manta::scheduler::simulation`): dispatches per second,
//! memory per queued task, placement locality, and the rate before and after the loss.

use crate::Args;
use manta::scheduler::simulation::{SimConfig, run as simulate};

pub fn run(args: &Args) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Runtime::new()?;
    let dir = tempfile::tempdir()?;
    for run in 1..=args.runs {
        let defaults = SimConfig::new(dir.path().join(format!("run-{run}")));
        let config = SimConfig {
            nodes: args.nodes.unwrap_or(defaults.nodes),
            tasks: args.count.unwrap_or(defaults.tasks),
            seed: run as u64,
            task_duration: args
                .task_ms
                .map_or(defaults.task_duration, std::time::Duration::from_millis),
            ..defaults
        };
        let report = runtime.block_on(simulate(&config))?;
        anyhow::ensure!(
            report.finished == config.tasks as u64,
            "every task finishes: {report:?}"
        );
        println!(
            "RESULT workload=sim run={run} nodes={} tasks={} task_ms={} seconds={:.3} dispatches={} \
             dispatches_per_s={:.0} submit_s={:.3} queued={} bytes_per_queued_task={:.0} \
             locality={:.3} lost_nodes={} retried={} tasks_per_s_before_loss={:.0} \
             tasks_per_s_after_loss={:.0} peak_rss_mib={}",
            config.nodes,
            config.tasks,
            config.task_duration.as_millis(),
            report.seconds,
            report.dispatches,
            report.dispatches_per_second(),
            report.submit_seconds,
            report.queued,
            report.bytes_per_queued_task,
            report.locality(),
            report.lost_nodes,
            report.retried,
            report.tasks_per_second_before_loss(),
            report.tasks_per_second_after_loss(),
            crate::peak_rss_mib()
        );
    }
    Ok(())
}
