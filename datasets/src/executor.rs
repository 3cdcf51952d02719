//! The streaming executor: runs a compiled pipeline's stages at once, blocks flowing through.
//!
//! # How it works
//!
//! Blocks flow as object refs: a task of stage *s* produces one block, which waits in stage
//! *s+1*'s input queue (or goes to the consumer after the last stage). One loop decides what to
//! launch next, each time a task finishes:
//!
//! 1. at most `max_running` tasks run at once (twice the cluster's CPUs, so no CPU idles while
//!    a result travels back);
//! 2. the most downstream stage with a queued block goes first, so blocks leave the pipeline
//!    as soon as they can and memory is given back;
//! 3. a new source task starts only while the blocks waiting between stages, plus the source
//!    tasks running, stay under `max_buffered`, and while the object store (this process's, or
//!    the cluster's nodes' summed, as of their last heartbeats) is under 90% of its budget;
//!    the consumer's channel is bounded too, so a slow consumer (`iter_batches`) throttles
//!    the whole pipeline instead of filling memory. Only what waiting can free counts
//!    against the store's budget: not the inputs of the source tasks (an exchange's map
//!    outputs, which every reduce task reads and which stay until the last one ends), and
//!    nothing at all when the consumer keeps every block (`Limits::wait_for_store` off: an
//!    exchange's map stage, `materialize`), where the store spills what does not fit.
//!    Waiting there only ran the tasks one at a time: a scale-10 shuffle on two nodes spent
//!    29 s in a reduce stage whose tasks ran for 4.5 s.
//!
//! A source is a read, a block already in the store, or a task that makes a block (an
//! all-to-all's reduce task, see [`crate::run`]): reduce tasks are throttled like reads, so a
//! shuffle's reduced blocks stream to the consumer instead of piling up in the store.
//!
//! A stage with a concurrency cap (`map_batches` with `concurrency`, an actor pool) never has
//! more tasks running than its cap; its input waits in its queue meanwhile.
//!
//! Each submission runs as a tokio task of its own, so that it makes progress while this loop
//! waits on the consumer (who may be waiting on it, to make a lost block again).
//!
//! No stage waits for the previous one to finish. On the first failure the executor stops
//! launching, waits for the tasks already running (so nothing writes after the error is
//! reported), and returns the error.

use std::collections::VecDeque;
use std::time::Instant;

use futures::StreamExt;
use futures::stream::FuturesUnordered;
use manta_engine::{ObjectRef, StoreUsage, TaskSpec};
use manta_scheduler::Client;
use tokio::sync::mpsc;

use crate::error::Result;
use crate::plan::{PhysicalPlan, SourceTask};
use crate::progress::Progress;
use crate::stage::{TaskArgs, TaskPart, encode_args};
use crate::stats::{DatasetStats, StageStats};

/// A block out of the last stage.
#[derive(Debug)]
pub struct BlockOut {
    /// Its index (the index of the source fragment it came from).
    pub index: u64,
    /// The block.
    pub block: ObjectRef,
}

/// How much runs and waits at once.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    /// Tasks running at once.
    pub max_running: usize,
    /// Blocks waiting between stages, plus source tasks running.
    pub max_buffered: usize,
    /// Whether a new source task waits while the object store is nearly full: worth it only
    /// when the consumer frees blocks as it takes them (see the module documentation).
    pub wait_for_store: bool,
}

impl Limits {
    /// Limits for a cluster (or process) with `cpus` CPUs.
    pub fn for_cpus(cpus: f64) -> Self {
        let cpus = cpus.ceil().max(1.0) as usize;
        Self {
            max_running: 2 * cpus,
            max_buffered: (2 * cpus).max(4),
            wait_for_store: true,
        }
    }
}

/// Whether the store has room for another source task's output: it is under 90% of its
/// budget, not counting `source_inputs` (bytes that waiting would not free). Yes when its
/// usage is unknown.
fn store_has_room(usage: Option<StoreUsage>, source_inputs: u64) -> bool {
    usage.is_none_or(|u| u.resident_bytes.saturating_sub(source_inputs) <= u.budget_bytes / 10 * 9)
}

/// The bytes of the distinct inputs of `sources`' tasks (reads and blocks have none).
fn source_input_bytes(sources: &VecDeque<(u64, SourceTask)>) -> u64 {
    let mut seen = std::collections::HashSet::new();
    sources
        .iter()
        .filter_map(|(_, source)| match source {
            SourceTask::Task(task) => Some(&task.inputs),
            _ => None,
        })
        .flatten()
        .filter(|input| seen.insert(input.id()))
        .map(|input| input.meta().size_bytes)
        .sum()
}

/// The task that runs `stage` of `plan` over one source fragment or block.
fn stage_task(
    plan: &PhysicalPlan,
    stage: usize,
    index: u64,
    part: TaskPart,
    inputs: Vec<ObjectRef>,
) -> Result<TaskSpec> {
    let physical = &plan.stages[stage];
    Ok(TaskSpec {
        function: crate::stage::STAGE_FUNCTION.to_string(),
        args: encode_args(&physical.spec, &TaskArgs { part, index })?,
        inputs,
        input_batches: None,
        batched_inputs: None,
        resources: physical.resources.clone(),
        max_retries: crate::retries::task_max_retries(),
        label: format!("block {index} of stage {stage} ({})", physical.name),
    })
}

/// Runs `plan`, sending the last stage's blocks to `out`. Stops early (without error) if `out`
/// is closed.
pub async fn execute(
    client: Client,
    plan: PhysicalPlan,
    out: mpsc::Sender<BlockOut>,
    limits: Limits,
    show_progress: bool,
) -> Result<DatasetStats> {
    let started = Instant::now();
    let n_stages = plan.stages.len();
    let mut stats: Vec<StageStats> = plan
        .stages
        .iter()
        .map(|s| StageStats::new(&s.name))
        .collect();
    let names: Vec<String> = plan.stages.iter().map(|s| s.name.clone()).collect();
    let mut sources: VecDeque<(u64, SourceTask)> = plan
        .sources
        .iter()
        .cloned()
        .enumerate()
        .map(|(i, f)| (i as u64, f))
        .collect();
    if n_stages == 0 {
        // Blocks already in the store, asked for as they are.
        for (index, source) in sources {
            let SourceTask::Block(block) = source else {
                unreachable!("a plan without stages starts from blocks")
            };
            if out.send(BlockOut { index, block }).await.is_err() {
                break;
            }
        }
        return Ok(DatasetStats {
            stages: Vec::new(),
            wall: started.elapsed(),
        });
    }
    // The inputs of reduce tasks (an exchange's map outputs) stay in the store until the last
    // of those tasks ends, so the room they take does not come back by waiting.
    let source_inputs = source_input_bytes(&sources);
    let progress = show_progress.then(|| Progress::new(&names, plan.sources.len() as u64));
    let mut queues: Vec<VecDeque<(u64, ObjectRef)>> =
        (0..n_stages).map(|_| VecDeque::new()).collect();
    let mut running = FuturesUnordered::new();
    let mut running_sources = 0usize;
    let mut running_per_stage = vec![0usize; n_stages];
    let mut failure = None;
    let mut consumer_gone = false;

    loop {
        // Launch what the limits allow, most downstream first.
        while failure.is_none() && !consumer_gone && running.len() < limits.max_running {
            let has_room = |s: usize| {
                plan.stages[s]
                    .concurrency
                    .is_none_or(|cap| running_per_stage[s] < cap)
            };
            let (stage, index, input_rows, spec) = if let Some(stage) = (1..n_stages)
                .rev()
                .find(|s| !queues[*s].is_empty() && has_room(*s))
            {
                let (index, block) = queues[stage].pop_front().expect("non-empty");
                let rows = block.meta().num_rows;
                let spec = stage_task(&plan, stage, index, TaskPart::Blocks, vec![block])?;
                (stage, index, rows, spec)
            } else {
                let buffered: usize =
                    queues.iter().map(VecDeque::len).sum::<usize>() + running_sources;
                let memory_ok = running.is_empty()
                    || !limits.wait_for_store
                    || store_has_room(client.store_usage().await, source_inputs);
                if sources.is_empty()
                    || buffered >= limits.max_buffered
                    || !memory_ok
                    || !has_room(0)
                {
                    break;
                }
                let (index, source) = sources.pop_front().expect("non-empty");
                running_sources += 1;
                let rows = source.rows();
                let spec = match source {
                    SourceTask::Read(task) => {
                        stage_task(&plan, 0, index, TaskPart::Read(task), Vec::new())?
                    }
                    SourceTask::Block(block) => {
                        stage_task(&plan, 0, index, TaskPart::Blocks, vec![block])?
                    }
                    SourceTask::Task(task) => *task,
                };
                (0, index, rows, spec)
            };
            running_per_stage[stage] += 1;
            stats[stage].started(Instant::now(), running_per_stage[stage]);
            // A task of its own, not only a future this loop polls: while the loop waits for
            // the consumer (`out.send`), a submission must still make progress, since the
            // consumer may be waiting for it (to make a lost block again, say).
            let task = tokio::spawn(client.submit(spec));
            running.push(async move {
                let result = task.await.unwrap_or_else(|e| {
                    Err(manta_scheduler::Error::Internal(format!(
                        "a task submission failed: {e}"
                    )))
                });
                (stage, index, input_rows, result)
            });
        }

        let Some((stage, index, input_rows, result)) = running.next().await else {
            break;
        };
        running_per_stage[stage] -= 1;
        if stage == 0 {
            running_sources -= 1;
        }
        let outcome = match result {
            Ok(outcome) => outcome,
            Err(e) => {
                failure.get_or_insert(e);
                continue;
            }
        };
        let meta = outcome.meta().clone();
        stats[stage].finished(
            Instant::now(),
            input_rows,
            meta.num_rows,
            meta.size_bytes,
            &outcome.stats,
        );
        if let Some(progress) = &progress {
            progress.task_done(stage, stats[stage].rows_out);
        }
        if stage + 1 < n_stages {
            queues[stage + 1].push_back((index, outcome.output));
        } else if !consumer_gone
            && out
                .send(BlockOut {
                    index,
                    block: outcome.output,
                })
                .await
                .is_err()
        {
            consumer_gone = true;
        }
    }
    if let Some(progress) = &progress {
        progress.finish();
    }
    for (stage, physical) in stats.iter_mut().zip(&plan.stages) {
        if let Some(rows) = physical.rows_in {
            stage.rows_in = rows;
        }
    }
    match failure {
        Some(e) => Err(e.into()),
        None => Ok(DatasetStats {
            stages: stats,
            wall: started.elapsed(),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn usage(budget_bytes: u64, resident_bytes: u64) -> Option<StoreUsage> {
        Some(StoreUsage {
            budget_bytes,
            resident_bytes,
            ..Default::default()
        })
    }

    #[test]
    fn only_what_waiting_frees_counts_against_the_store() {
        // Under 90% of the budget, or unknown: room.
        assert!(store_has_room(usage(1000, 900), 0));
        assert!(store_has_room(None, 0));
        // Over it with nothing that stays: no room, until something is freed.
        assert!(!store_has_room(usage(1000, 901), 0));
        assert!(!store_has_room(usage(1000, 5000), 0));
        // Over it because of the source tasks' own inputs (which stay until the last of them
        // ends): room, as long as the rest is under 90%.
        assert!(store_has_room(usage(1000, 1000), 100));
        assert!(store_has_room(usage(1000, 1000), 5000));
        assert!(!store_has_room(usage(1000, 1000), 99));
    }
}
