//! Why a job makes no progress, in sentences: which of its stages have blocks pending, what
//! its waiting tasks wait for (no live node offers their demand, or what holds the nodes that
//! would fit: tasks of which stages, which actors), and which of its running tasks run far
//! longer than their stage's finished ones. A driver that sees no task finish for its stall
//! timeout prints this (`ExplainJob`); the dashboard's job page shows it.

use std::collections::BTreeMap;
use std::time::Duration;

use manta_engine::Resources;

use super::{Head, offered};
use crate::autoscaler::plan::describe;
use crate::events::TaskInFlight;

/// A running task is a straggler once it has run this many times its stage's mean...
const STRAGGLER_FACTOR: u32 = 4;

/// ... and at least this long.
const STRAGGLER_MIN: Duration = Duration::from_secs(1);

fn seconds(d: Duration) -> String {
    format!("{:.1} s", d.as_secs_f64())
}

impl Head {
    /// What `job` (a submitted job's id or a driver's job id) waits for, one sentence each;
    /// empty if it has nothing in flight.
    pub fn explain_stall(&self, job: &str) -> Vec<String> {
        let tasks = self.events.in_flight(job);
        if tasks.is_empty() {
            return Vec::new();
        }
        let mut lines = Vec::new();
        for stage in self.events.progress(job).iter().flat_map(|p| &p.stages) {
            let pending = stage
                .submitted
                .saturating_sub(stage.finished + stage.failed + stage.cancelled);
            if pending > 0 {
                lines.push(format!(
                    "stage '{}': {pending} of {} block(s) pending ({} running, {} waiting for a node)",
                    stage.stage,
                    stage.submitted,
                    stage.running,
                    pending.saturating_sub(stage.running)
                ));
            }
        }
        lines.extend(self.explain_waiting(&tasks));
        lines.extend(explain_stragglers(&tasks));
        lines
    }

    /// One sentence per (stage, demand) of the waiting tasks: why no node takes them.
    fn explain_waiting(&self, tasks: &[TaskInFlight]) -> Vec<String> {
        let mut groups: BTreeMap<(String, String), (u64, Duration, Resources)> = BTreeMap::new();
        for task in tasks.iter().filter(|t| t.node.is_none()) {
            let group = groups
                .entry((task.stage.clone(), describe(&task.demand)))
                .or_insert((0, Duration::ZERO, task.demand.clone()));
            group.0 += 1;
            group.1 = group.1.max(task.for_);
        }
        if groups.is_empty() {
            return Vec::new();
        }
        let everywhere = self.events.in_flight("");
        let state = self.state.lock();
        groups
            .into_iter()
            .map(|((stage, shape), (count, longest, demand))| {
                let waiting = format!(
                    "{count} task(s) of stage '{stage}' wait for a node with {shape} (the oldest \
                     for {})",
                    seconds(longest)
                );
                if !state.capacity.could_fit(&demand) {
                    return format!(
                        "{waiting}: no live node offers it (nodes offer: {})",
                        offered(&state)
                    );
                }
                let holders: Vec<String> = state
                    .nodes
                    .values()
                    .filter(|n| n.alive && !n.draining && n.total.covers(&demand))
                    .map(|node| {
                        let mut held: BTreeMap<&str, (u64, Duration)> = BTreeMap::new();
                        for task in &everywhere {
                            if task.node.as_deref() == Some(node.address.as_str()) {
                                let h = held.entry(task.stage.as_str()).or_default();
                                h.0 += 1;
                                h.1 = h.1.max(task.for_);
                            }
                        }
                        let mut what: Vec<String> = held
                            .iter()
                            .map(|(stage, (n, longest))| {
                                format!(
                                    "{n} task(s) of stage '{stage}' (the longest running for {})",
                                    seconds(*longest)
                                )
                            })
                            .collect();
                        what.extend(
                            state
                                .actors
                                .iter()
                                .filter(|(_, a)| a.runs_at(&node.address))
                                .map(|(id, a)| match &a.name {
                                    Some(name) => format!("actor '{name}' ({id})"),
                                    None => format!("actor {id}"),
                                }),
                        );
                        if what.is_empty() {
                            what.push("nothing the head knows of".into());
                        }
                        format!("{} holds {}", node.address, what.join(", "))
                    })
                    .collect();
                format!(
                    "{waiting}: every node that fits is busy: {}",
                    holders.join("; ")
                )
            })
            .collect()
    }
}

/// One sentence per running task that has run far longer than its stage's finished ones (or,
/// with none finished, longer than [`STRAGGLER_MIN`]).
fn explain_stragglers(tasks: &[TaskInFlight]) -> Vec<String> {
    tasks
        .iter()
        .filter_map(|task| {
            let node = task.node.as_deref()?;
            if task.for_ < STRAGGLER_MIN {
                return None;
            }
            if task.stage_finished == 0 {
                return Some(format!(
                    "task '{}' has run for {} on {node}, and no task of its stage has finished yet",
                    task.label,
                    seconds(task.for_)
                ));
            }
            (task.for_ > task.stage_mean * STRAGGLER_FACTOR).then(|| {
                format!(
                    "task '{}' has run for {} on {node}: longer than its peers (the {} finished \
                     task(s) of its stage took {} on average)",
                    task.label,
                    seconds(task.for_),
                    task.stage_finished,
                    seconds(task.stage_mean)
                )
            })
        })
        .collect()
}
