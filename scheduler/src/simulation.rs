//! A scheduling simulation: the real head against many simulated nodes, to see how it scales.
//!
//! Each simulated node is a [`TaskStream::in_process`] that answers every task
//! [`SimConfig::task_duration`] after it arrives (reporting that as its run time, so that no
//! function counts as short and none is queued behind busy workers); one clock task answers
//! the tasks that are due, every millisecond, for all nodes. So the head's own work —
//! placing, queueing, retrying, task events, metrics — is all that runs. A million tasks of mixed shapes are submitted at once as a
//! driver's would be (through the head's `submit`, without the driver's gRPC stream); most wait
//! in the head's queues. Halfway through, a share of the nodes vanish at once.
//!
//! What it measures ([`SimReport`]): dispatches per second (tasks sent to a node), the
//! process's memory per queued task, placement locality (the share of tasks with inputs sent
//! to the node holding most of their input bytes), and how the head goes on after the loss.
//!
//! ```no_run
//! # async fn example() -> manta_scheduler::Result<()> {
//! use manta_scheduler::simulation::{SimConfig, run};
//! let dir = std::env::temp_dir().join("manta-sim-example");
//! let report = run(&SimConfig { nodes: 100, tasks: 10_000, ..SimConfig::new(dir) }).await?;
//! assert_eq!(report.finished, 10_000);
//! # Ok(()) }
//! ```

use std::collections::HashMap;
use std::collections::VecDeque;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use manta_engine::{NodeId, Resources};
use parking_lot::Mutex;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use tonic::Status;

use crate::error::{Error, Result};
use crate::head::{Head, HeadConfig};
use crate::proto::{self, task_reply};
use crate::task_stream::{OnReply, TaskStream};

/// What to simulate.
#[derive(Clone, Debug)]
pub struct SimConfig {
    /// Simulated nodes: 70% of 4 CPUs, 20% of 8 CPUs, 10% of 4 CPUs and 4 GPUs.
    pub nodes: usize,
    /// Tasks submitted at once.
    pub tasks: usize,
    /// Share of the nodes lost at once when half the tasks have finished.
    pub lose_share: f64,
    /// How long each task runs on its simulated node (zero: answered as it arrives).
    pub task_duration: Duration,
    /// Seed of the task shapes and input placement.
    pub seed: u64,
    /// Where the head keeps its executables and jobs (created if missing).
    pub dir: PathBuf,
}

impl SimConfig {
    /// The issue's simulation: 1,000 nodes, a million tasks, 10% of the nodes lost.
    pub fn new(dir: PathBuf) -> Self {
        Self {
            nodes: 1000,
            tasks: 1_000_000,
            lose_share: 0.1,
            task_duration: Duration::from_millis(5),
            seed: 7,
            dir,
        }
    }
}

/// What the simulation measured.
#[derive(Clone, Debug)]
pub struct SimReport {
    /// Tasks that finished (all of them, unless the head failed some).
    pub finished: u64,
    /// Tasks that failed.
    pub failed: u64,
    /// Tasks sent to a node, retries included.
    pub dispatches: u64,
    /// From the first submission to the last task's end.
    pub seconds: f64,
    /// How long submitting every task took.
    pub submit_seconds: f64,
    /// Tasks waiting in the head when the last was submitted.
    pub queued: u64,
    /// The process's resident memory growth while they waited, per waiting task.
    pub bytes_per_queued_task: f64,
    /// Dispatches of tasks with inputs (on a node not lost).
    pub with_inputs: u64,
    /// Of those, sent to the node holding most of their input bytes.
    pub local: u64,
    /// Nodes lost at once.
    pub lost_nodes: usize,
    /// Seconds from the start to the loss, and tasks finished by then.
    pub lost_at_seconds: f64,
    /// Tasks finished when the nodes were lost.
    pub finished_at_loss: u64,
    /// Tasks the head retried (their node was lost under them).
    pub retried: u64,
}

impl SimReport {
    /// Dispatches per second over the whole run.
    pub fn dispatches_per_second(&self) -> f64 {
        self.dispatches as f64 / self.seconds
    }

    /// Share of the dispatches of tasks with inputs that went where their inputs are.
    pub fn locality(&self) -> f64 {
        self.local as f64 / self.with_inputs.max(1) as f64
    }

    /// Tasks finished per second after the loss.
    pub fn tasks_per_second_after_loss(&self) -> f64 {
        (self.finished - self.finished_at_loss) as f64 / (self.seconds - self.lost_at_seconds)
    }

    /// Tasks finished per second before the loss.
    pub fn tasks_per_second_before_loss(&self) -> f64 {
        self.finished_at_loss as f64 / self.lost_at_seconds
    }
}

/// What the simulated nodes saw, shared by all of them.
#[derive(Default)]
struct Seen {
    dispatches: AtomicU64,
    with_inputs: AtomicU64,
    local: AtomicU64,
    /// Each node's lost flag, by id: a task whose inputs were on a lost node can run where
    /// they are nowhere, so it does not count for locality.
    lost: HashMap<Bytes, Arc<AtomicBool>>,
}

/// The tasks running on every simulated node, in the order they are due (they all run as
/// long), each with its answer.
#[derive(Default)]
struct Running {
    due: Mutex<VecDeque<(Instant, OnReply, proto::TaskReply)>>,
}

impl Running {
    /// Answers the tasks that are due, every millisecond, until `stop`.
    async fn answer_when_due(self: Arc<Self>, stop: CancellationToken) {
        let mut ticks = tokio::time::interval(Duration::from_millis(1));
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut ready = Vec::new();
        loop {
            tokio::select! {
                _ = ticks.tick() => {}
                _ = stop.cancelled() => return,
            }
            let now = Instant::now();
            {
                let mut due = self.due.lock();
                while due.front().is_some_and(|(at, _, _)| *at <= now) {
                    ready.extend(due.pop_front());
                }
            }
            for (_, reply, answer) in ready.drain(..) {
                reply(Ok(answer));
            }
        }
    }
}

/// A simulated node: runs each task for `duration` (on `running`), or refuses it once lost.
fn simulated_node(
    id: NodeId,
    lost: Arc<AtomicBool>,
    seen: Arc<Seen>,
    running: Arc<Running>,
    duration: Duration,
) -> TaskStream {
    TaskStream::in_process(Arc::new(move |task: proto::TaskRequest, reply: OnReply| {
        if lost.load(Ordering::Relaxed) {
            reply(Err(Status::unavailable("the simulated node is lost")));
            return;
        }
        seen.dispatches.fetch_add(1, Ordering::Relaxed);
        let holder = main_holder(&task.inputs).filter(|holder| {
            !seen
                .lost
                .get(holder)
                .is_some_and(|l| l.load(Ordering::Relaxed))
        });
        if let Some(holder) = holder {
            seen.with_inputs.fetch_add(1, Ordering::Relaxed);
            if holder.as_ref() == id.as_bytes() {
                seen.local.fetch_add(1, Ordering::Relaxed);
            }
        }
        let output = proto::ObjectLocation {
            object_id: task.output_id,
            node_id: Bytes::copy_from_slice(id.as_bytes()),
            size_bytes: 1024,
            num_rows: 1,
            ..Default::default()
        };
        let stats = proto::TaskStats {
            wall_ns: duration.as_nanos() as u64,
            ..Default::default()
        };
        let answer = proto::TaskReply {
            result: Some(task_reply::Result::Success(proto::TaskSuccess {
                output: Some(output),
                stats: Some(stats),
                worker_pid: 0,
                delivered: false,
            })),
        };
        if duration.is_zero() {
            reply(Ok(answer));
        } else {
            running
                .due
                .lock()
                .push_back((Instant::now() + duration, reply, answer));
        }
    }))
}

/// The node holding most of a task's input bytes, if it has inputs.
fn main_holder(inputs: &[proto::ObjectLocation]) -> Option<Bytes> {
    let mut bytes: HashMap<&Bytes, u64> = HashMap::new();
    for input in inputs {
        *bytes.entry(&input.node_id).or_default() += input.size_bytes;
    }
    bytes
        .into_iter()
        .max_by(|a, b| a.1.cmp(&b.1).then(b.0.cmp(a.0)))
        .map(|(node, _)| node.clone())
}

/// The shape of node `i`.
fn node_shape(i: usize) -> Resources {
    const GIB: u64 = 1 << 30;
    let (cpus, memory, gpu) = match i % 10 {
        0..=6 => (4.0, 16 * GIB, false),
        7 | 8 => (8.0, 32 * GIB, false),
        _ => (4.0, 16 * GIB, true),
    };
    let mut shape = Resources {
        cpus,
        memory_bytes: memory,
        ..Default::default()
    };
    if gpu {
        shape.custom.insert("gpu".to_string(), 4.0);
    }
    shape
}

/// Task `i` (inputs on a node of `nodes`, where each node is as often as it has CPUs, or of
/// `gpu_nodes`): 65% one CPU with one to three inputs, 20% one CPU with none, 10% two CPUs and
/// 2 GiB with inputs, 5% a CPU and a GPU with one input on a GPU node.
fn task(
    i: usize,
    job: &Bytes,
    nodes: &[NodeId],
    gpu_nodes: &[NodeId],
    rng: &mut StdRng,
) -> proto::TaskRequest {
    let mut demand = Resources::one_cpu();
    let (label, inputs, holders) = match i % 20 {
        0..=12 => ("map", rng.random_range(1..=3), nodes),
        13..=16 => ("read", 0, nodes),
        17 | 18 => {
            demand.cpus = 2.0;
            demand.memory_bytes = 2 << 30;
            ("join", rng.random_range(1..=3), nodes)
        }
        _ => {
            demand.custom.insert("gpu".to_string(), 1.0);
            ("infer", 1, gpu_nodes)
        }
    };
    let inputs = (0..inputs)
        .map(|_| {
            let node = holders[rng.random_range(0..holders.len())];
            proto::ObjectLocation {
                object_id: Bytes::copy_from_slice(manta_engine::ObjectId::random().as_bytes()),
                node_id: Bytes::copy_from_slice(node.as_bytes()),
                size_bytes: 1 << rng.random_range(10..26),
                num_rows: 1,
                ..Default::default()
            }
        })
        .collect();
    proto::TaskRequest {
        job_id: job.clone(),
        task_id: Bytes::copy_from_slice(manta_engine::TaskId::random().as_bytes()),
        output_id: Bytes::copy_from_slice(manta_engine::ObjectId::random().as_bytes()),
        label: label.to_string(),
        function: label.to_string(),
        inputs,
        resources: Some((&demand).into()),
        max_retries: 3,
        ..Default::default()
    }
}

/// The process's resident memory, in bytes (0 where /proc is missing).
fn resident_bytes() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse::<u64>().ok())
        .map_or(0, |kib| kib * 1024)
}

/// Runs the simulation on the current tokio runtime; see the module documentation.
pub async fn run(config: &SimConfig) -> Result<SimReport> {
    std::fs::create_dir_all(&config.dir)
        .map_err(|e| Error::Internal(format!("{}: {e}", config.dir.display())))?;
    let head = Head::new(HeadConfig {
        cache_dir: config.dir.join("executables"),
        jobs_dir: config.dir.join("jobs"),
        ..HeadConfig::default()
    })?;
    let ids: Vec<NodeId> = (0..config.nodes).map(|_| NodeId::random()).collect();
    let lost_flags: Vec<Arc<AtomicBool>> = ids
        .iter()
        .map(|_| Arc::new(AtomicBool::new(false)))
        .collect();
    let seen = Arc::new(Seen {
        lost: ids
            .iter()
            .zip(&lost_flags)
            .map(|(id, lost)| (Bytes::copy_from_slice(id.as_bytes()), Arc::clone(lost)))
            .collect(),
        ..Seen::default()
    });
    let running = Arc::new(Running::default());
    let stop = CancellationToken::new();
    tokio::spawn(Arc::clone(&running).answer_when_due(stop.clone()));
    let _stop = stop.drop_guard();
    let mut nodes = Vec::new();
    let mut gpu_nodes = Vec::new();
    for (i, (&id, lost)) in ids.iter().zip(&lost_flags).enumerate() {
        let shape = node_shape(i);
        let gpu = !shape.custom.is_empty();
        let shape_cpus = shape.cpus as usize;
        let tasks = simulated_node(
            id,
            Arc::clone(lost),
            Arc::clone(&seen),
            Arc::clone(&running),
            config.task_duration,
        );
        head.add_simulated_node(id, &format!("sim-{i}"), shape, tasks)?;
        if gpu {
            gpu_nodes.push(id);
        }
        // Inputs are earlier tasks' outputs: a node holds them in proportion to its CPUs.
        nodes.extend(std::iter::repeat_n(id, shape_cpus));
    }
    let job = Bytes::copy_from_slice(head.add_simulated_job().as_bytes());
    let mut rng = StdRng::seed_from_u64(config.seed);
    let requests: Vec<_> = (0..config.tasks)
        .map(|i| task(i, &job, &nodes, &gpu_nodes, &mut rng))
        .collect();

    let finished = Arc::new(AtomicU64::new(0));
    let failed = Arc::new(AtomicU64::new(0));
    let half = Arc::new(Notify::new());
    let all = Arc::new(Notify::new());
    let total = config.tasks as u64;
    let resident_before = resident_bytes();
    let started = Instant::now();
    for request in requests {
        let (head, finished, failed) = (
            Arc::clone(&head),
            Arc::clone(&finished),
            Arc::clone(&failed),
        );
        let (half, all) = (Arc::clone(&half), Arc::clone(&all));
        tokio::spawn(async move {
            if head.submit_simulated(request).await.is_err() {
                failed.fetch_add(1, Ordering::Relaxed);
            }
            let done = finished.fetch_add(1, Ordering::AcqRel) + 1;
            if done == total / 2 {
                half.notify_one();
            }
            if done == total {
                all.notify_one();
            }
        });
    }
    let submit_seconds = started.elapsed().as_secs_f64();
    let queued = total - finished.load(Ordering::Acquire);
    let bytes_per_queued_task =
        resident_bytes().saturating_sub(resident_before) as f64 / queued.max(1) as f64;

    if total >= 2 {
        half.notified().await;
    }
    let lost_nodes = ((config.nodes as f64 * config.lose_share) as usize).min(config.nodes);
    let lost_at_seconds = started.elapsed().as_secs_f64();
    let finished_at_loss = finished.load(Ordering::Acquire);
    // Spread over the node shapes: every tenth node, from a seeded start.
    let mut lost = Vec::with_capacity(lost_nodes);
    for k in 0..lost_nodes {
        let i = (k * config.nodes / lost_nodes.max(1) + config.seed as usize) % config.nodes;
        lost_flags[i].store(true, Ordering::Relaxed);
        lost.push(ids[i]);
    }
    head.lose_nodes(&lost);
    if total > 0 {
        all.notified().await;
    }
    let seconds = started.elapsed().as_secs_f64();
    Ok(SimReport {
        finished: finished.load(Ordering::Acquire) - failed.load(Ordering::Acquire),
        failed: failed.load(Ordering::Acquire),
        dispatches: seen.dispatches.load(Ordering::Relaxed),
        seconds,
        submit_seconds,
        queued,
        bytes_per_queued_task,
        with_inputs: seen.with_inputs.load(Ordering::Relaxed),
        local: seen.local.load(Ordering::Relaxed),
        lost_nodes,
        lost_at_seconds,
        finished_at_loss,
        retried: head.metrics().tasks.retried.get(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every task finishes once, retries included, when a tenth of the nodes vanish halfway;
    /// most tasks with inputs run where their inputs are.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn every_task_finishes_when_nodes_vanish() {
        let dir = tempfile::tempdir().unwrap();
        let config = SimConfig {
            nodes: 40,
            tasks: 20_000,
            task_duration: Duration::from_millis(1),
            ..SimConfig::new(dir.path().to_path_buf())
        };
        let report = run(&config).await.unwrap();
        assert_eq!(report.failed, 0, "{report:?}");
        assert_eq!(report.finished, 20_000, "{report:?}");
        assert_eq!(report.lost_nodes, 4);
        assert!(report.dispatches >= 20_000, "{report:?}");
        assert!(report.dispatches <= 20_000 + report.retried, "{report:?}");
        assert!(report.with_inputs > 0 && report.local <= report.with_inputs);
    }
}
