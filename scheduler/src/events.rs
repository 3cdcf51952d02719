//! What happened in the cluster, kept by the head in bounded memory: every task run (a ring of
//! [`TASK_EVENTS_KEPT`] task events, what `manta timeline` draws), each job's progress by
//! stage (what the dashboard's job page shows while it runs), and cluster events (nodes
//! joining and lost, tasks retried and failed, actors restarted, lost objects made again from
//! their lineage, jobs changing state).
//!
//! ```text
//!  head.submit ─▶ submitted(): stage counts submitted += 1        (one lock, no allocation
//!       │ placed on a node ─▶ placed(): running += 1               but the stage name once)
//!       ▼ the node answers ─▶ ended(): running -= 1, finished/failed += 1, rows and bytes
//!                                       added; the task event pushed on the ring
//! ```
//!
//! A task's *stage* is its label without its block or partition number (`block 3 of stage 1
//! (map)` is of `stage 1 (map)`), so a dataset's stages and a SQL scan's partitions group
//! without the driver saying more. Drivers started by `manta job submit` register with their
//! job's id (`MANTA_JOB_ID`), so their tasks are shown under it.

mod label;
mod ring;

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use manta_engine::{JobId, Resources, TaskId};
use parking_lot::Mutex;
// Hashed on every task: Fx, not SipHash (these keys come from the head, not from outside).
use rustc_hash::FxHashMap as HashMap;
use serde::Serialize;

use crate::error::Error;
use crate::proto;
use label::LabelPrefix;
pub use label::stage_of;
pub use ring::TASK_EVENTS_KEPT;
use ring::{TaskRecord, TaskRing};

/// How many cluster events the head keeps.
pub const CLUSTER_EVENTS_KEPT: usize = 1_000;

/// How many jobs' stage progress the head keeps (the least recently started go first).
pub const JOBS_KEPT: usize = 100;

/// Milliseconds since the Unix epoch.
pub fn now_millis() -> u64 {
    now_micros() / 1000
}

/// Microseconds since the Unix epoch.
pub fn now_micros() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as u64)
}

/// What a cluster event is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum EventKind {
    /// A node registered.
    NodeJoined,
    /// A node missed its heartbeats or could not be reached.
    NodeLost,
    /// A task failed and runs again.
    TaskRetried,
    /// A task failed for good.
    TaskFailed,
    /// An actor's worker or node died and it is being made again.
    ActorRestarted,
    /// A driver made a lost object again from its lineage.
    LineageReconstruction,
    /// A submitted job started or ended.
    JobState,
}

/// Something that happened to the cluster, for people.
#[derive(Debug, Clone, Serialize)]
pub struct ClusterEvent {
    /// When (milliseconds since the Unix epoch).
    pub unix_millis: u64,
    /// What it is about.
    pub kind: EventKind,
    /// What happened, in a sentence.
    pub message: String,
}

/// One stage of one job: its tasks by state and what they read, made and cost.
#[derive(Debug, Clone, Default, Serialize)]
pub struct StageProgress {
    /// Its name ([`stage_of`] its tasks' labels).
    pub stage: String,
    /// Tasks submitted (each counted once, however often it ran).
    pub submitted: u64,
    /// Tasks on a node now.
    pub running: u64,
    /// Tasks that succeeded.
    pub finished: u64,
    /// Tasks that failed for good.
    pub failed: u64,
    /// Runs that failed and were run again.
    pub retried: u64,
    /// Tasks whose driver went away before they ended.
    pub cancelled: u64,
    /// Rows its tasks made.
    pub rows_out: u64,
    /// Bytes of its finished tasks' inputs.
    pub bytes_in: u64,
    /// Bytes its tasks made.
    pub bytes_out: u64,
    /// Bytes spilled to make room for its outputs.
    pub spilled_bytes: u64,
    /// Wall time of its tasks, summed.
    pub wall_ns: u64,
    /// CPU time of its tasks, summed.
    pub cpu_ns: u64,
    /// The largest peak memory of a worker while it ran one of its tasks (0: none measured).
    pub peak_memory_bytes: u64,
    /// When its first task was placed (0: not yet).
    pub first_placed_unix_micros: u64,
    /// When its last task to end ended (0: none yet).
    pub last_ended_unix_micros: u64,
}

/// One driver job's stages, in the order they first ran.
#[derive(Debug, Clone, Default, Serialize)]
pub struct JobProgress {
    /// The driver's job id (hex).
    pub job_id: String,
    /// The submitted job it runs for (empty: a driver started by hand).
    pub submission_id: String,
    /// Its stages, in the order their first tasks were submitted.
    pub stages: Vec<StageProgress>,
}

/// A task between its submission and its end: what [`Events::ended`] needs to record it.
pub struct TaskTrack {
    /// The log it is in flight in, which forgets it if it is dropped before it ends (its
    /// caller went away).
    events: std::sync::Weak<Events>,
    /// On a node now.
    on_node: bool,
    /// Ended for good.
    done: bool,
    job: JobId,
    /// Its slot among the tasks in flight ([`NO_SLOT`]: none).
    slot: u32,
    /// Its demand's index in [`Progress::demands`] (or [`ODD_DEMAND`]).
    demand: u32,
    stage_index: Option<usize>,
    submitted_unix_micros: u64,
    placed_unix_micros: u64,
    input_bytes: u64,
}

impl Drop for TaskTrack {
    fn drop(&mut self) {
        if !self.done
            && self.slot != NO_SLOT
            && let Some(events) = self.events.upgrade()
        {
            events.abandoned(self);
        }
    }
}

/// Where a task ran, for its event.
pub struct RanOn {
    /// The node, as [`Events::node`] numbered it.
    pub node: u32,
    /// Which run of the task this was (0: the first).
    pub attempt: u32,
}

/// No slot among the tasks in flight.
const NO_SLOT: u32 = u32::MAX;

/// What a task in flight is, written once when it is submitted (and left in its slot after it
/// ends, until the slot is reused). Plain data, like [`TaskRecord`]s, so that reusing a slot
/// written long before loads nothing from it: its label's prefix is inline, its demand an
/// index in [`Progress::demands`].
#[derive(Clone, Copy)]
struct InFlight {
    job: JobId,
    label: LabelPrefix,
    stage_index: Option<usize>,
    demand: u32,
}

/// A demand not in [`Progress::demands`] (too many different ones in flight): the task's is in
/// [`Progress::odd_demands`] under its slot.
const ODD_DEMAND: u32 = u32::MAX;

/// How many different demands [`Progress::demands`] holds at most.
const DEMANDS_KEPT: usize = 64;

/// Where a task in flight is, beside its [`InFlight`] in a compact array of its own: with a
/// long queue, a task's slot was written long before it is placed or ends and is out of the
/// cache by then, so placing and ending only store here (never load), which the processor
/// does without waiting for the line (a profile showed the load of the old slot as 80% of
/// `placed`).
#[derive(Clone, Copy)]
struct Whereabouts {
    /// Since when it waits (no node) or runs (on `node`, an index in [`Progress::nodes`]).
    since: Instant,
    /// [`NO_NODE`]: waiting for one.
    node: u32,
    /// Submitted and not ended (otherwise the slot is free).
    live: bool,
}

/// No node: the task waits for one.
const NO_NODE: u32 = u32::MAX;

/// The event of `record` (its error message `error`), its stage, job and node looked up in
/// `progress`.
fn record_to_proto(
    record: &TaskRecord,
    error: Option<&str>,
    progress: &Progress,
) -> proto::TaskEvent {
    let job = progress.jobs.get(&record.job);
    let stage = job
        .and_then(|j| j.progress.stages.get(record.stage as usize))
        .map_or("", |s| s.stage.as_str());
    let (node_address, node_name) = progress
        .nodes
        .get(record.node as usize)
        .cloned()
        .unwrap_or_default();
    proto::TaskEvent {
        task_id: record
            .task_id
            .map(|id| bytes::Bytes::copy_from_slice(id.as_bytes()))
            .unwrap_or_default(),
        label: record.label.label(stage),
        stage: stage.to_string(),
        job_id: bytes::Bytes::copy_from_slice(record.job.as_bytes()),
        submission_id: job.map_or_else(String::new, |j| j.progress.submission_id.clone()),
        node_address,
        node_name,
        worker_pid: record.worker_pid,
        attempt: record.attempt,
        submitted_unix_micros: record.submitted_unix_micros,
        placed_unix_micros: record.placed_unix_micros,
        finished_unix_micros: record.finished_unix_micros,
        stats: Some(record.stats),
        input_bytes: record.input_bytes,
        output_bytes: record.output_bytes,
        output_rows: record.output_rows,
        error: error.unwrap_or_default().to_string(),
        retried: record.retried,
    }
}

/// One driver job's progress, and its stages' indices by name.
struct JobEntry {
    progress: JobProgress,
    index: HashMap<String, usize>,
}

/// A task in flight, as [`Events::in_flight`] describes it.
#[derive(Debug, Clone)]
pub struct TaskInFlight {
    /// Its label.
    pub label: String,
    /// Its stage's name.
    pub stage: String,
    /// What it asked for.
    pub demand: Resources,
    /// How long it has waited for a node, or run on `node`.
    pub for_: Duration,
    /// The node it runs on (`None`: waiting for one).
    pub node: Option<String>,
    /// Tasks of its stage that finished, and their mean run time.
    pub stage_finished: u64,
    /// The mean run time of its stage's finished tasks.
    pub stage_mean: Duration,
}

#[derive(Default)]
struct Progress {
    /// Each job's stages.
    jobs: HashMap<JobId, JobEntry>,
    /// Task runs, oldest first (at most [`TASK_EVENTS_KEPT`]).
    tasks: TaskRing,
    /// Nodes (address, name) task records name, by index; and the index of each address.
    nodes: Vec<(String, String)>,
    node_index: HashMap<String, u32>,
    /// Tasks submitted and not ended, by [`TaskTrack`] slot (a slab: no hashing per task):
    /// what each is, where each is, and the free slots.
    in_flight: Vec<InFlight>,
    whereabouts: Vec<Whereabouts>,
    free_slots: Vec<u32>,
    /// The demands of tasks in flight, each once, with how many tasks in flight ask for it (a
    /// job's tasks mostly ask for one or two); past [`DEMANDS_KEPT`] different ones, by slot.
    demands: Vec<(Resources, u32)>,
    odd_demands: HashMap<u32, Resources>,
    /// Jobs, oldest first, for eviction.
    order: VecDeque<JobId>,
}

/// The head's event log. Cheap enough to leave on (`enabled: false` records nothing, for
/// measuring what it costs).
pub struct Events {
    enabled: bool,
    /// A moment and its Unix time, to turn `Instant`s into Unix times without asking the
    /// clock twice.
    clock: (Instant, u64),
    cluster: Mutex<VecDeque<ClusterEvent>>,
    progress: Mutex<Progress>,
}

impl Events {
    /// An event log that records (or, `enabled: false`, records nothing).
    pub fn new(enabled: bool) -> Self {
        Self {
            enabled,
            clock: (Instant::now(), now_micros()),
            cluster: Mutex::default(),
            progress: Mutex::default(),
        }
    }

    /// Records a cluster event (and logs it).
    pub fn cluster(&self, kind: EventKind, message: impl Into<String>) {
        let message = message.into();
        let mut cluster = self.cluster.lock();
        if cluster.len() == CLUSTER_EVENTS_KEPT {
            cluster.pop_front();
        }
        cluster.push_back(ClusterEvent {
            unix_millis: now_millis(),
            kind,
            message,
        });
    }

    /// The cluster events kept, oldest first.
    pub fn cluster_events(&self) -> Vec<ClusterEvent> {
        self.cluster.lock().iter().cloned().collect()
    }

    /// A driver registered `job`, for the submitted job `submission` (may be empty).
    pub fn job_registered(&self, job: JobId, submission: &str) {
        if !self.enabled {
            return;
        }
        let mut progress = self.progress.lock();
        if progress.order.len() == JOBS_KEPT
            && let Some(oldest) = progress.order.pop_front()
        {
            progress.jobs.remove(&oldest);
        }
        progress.order.push_back(job);
        let entry = JobEntry {
            progress: JobProgress {
                job_id: job.to_string(),
                submission_id: submission.to_string(),
                stages: Vec::new(),
            },
            index: HashMap::default(),
        };
        progress.jobs.insert(job, entry);
    }

    /// A task of `job` with `label` asking for `demand` was submitted, its inputs
    /// `input_bytes` in all.
    pub fn submitted(
        self: &Arc<Self>,
        job: JobId,
        label: &str,
        demand: &Resources,
        input_bytes: u64,
    ) -> TaskTrack {
        let mut track = TaskTrack {
            events: Arc::downgrade(self),
            on_node: false,
            done: false,
            job,
            slot: NO_SLOT,
            demand: ODD_DEMAND,
            stage_index: None,
            submitted_unix_micros: 0,
            placed_unix_micros: 0,
            input_bytes,
        };
        if !self.enabled {
            return track;
        }
        let now = Instant::now();
        track.submitted_unix_micros = self.unix_micros(now);
        let stage = stage_of(label);
        let mut progress = self.progress.lock();
        if let Some(entry) = progress.jobs.get_mut(&job) {
            // Looked up by a borrowed key first: a known stage costs no allocation.
            let i = match entry.index.get(stage) {
                Some(i) => *i,
                None => {
                    entry.progress.stages.push(StageProgress {
                        stage: stage.to_string(),
                        ..Default::default()
                    });
                    let i = entry.progress.stages.len() - 1;
                    entry.index.insert(stage.to_string(), i);
                    i
                }
            };
            entry.progress.stages[i].submitted += 1;
            track.stage_index = Some(i);
        }
        let prefix_of = if track.stage_index.is_some() {
            stage
        } else {
            ""
        };
        let task = InFlight {
            job,
            label: LabelPrefix::of(label, prefix_of),
            stage_index: track.stage_index,
            demand: intern_demand(&mut progress.demands, demand),
        };
        track.demand = task.demand;
        let whereabouts = Whereabouts {
            since: now,
            node: NO_NODE,
            live: true,
        };
        track.slot = match progress.free_slots.pop() {
            Some(slot) => {
                progress.in_flight[slot as usize] = task;
                progress.whereabouts[slot as usize] = whereabouts;
                slot
            }
            None => {
                progress.in_flight.push(task);
                progress.whereabouts.push(whereabouts);
                (progress.in_flight.len() - 1) as u32
            }
        };
        if track.demand == ODD_DEMAND {
            progress.odd_demands.insert(track.slot, demand.clone());
        }
        track
    }

    /// The task was sent to `node` (as [`Events::node`] numbered it).
    pub fn placed(&self, track: &mut TaskTrack, node: u32) {
        if !self.enabled {
            return;
        }
        let now = Instant::now();
        track.placed_unix_micros = self.unix_micros(now);
        track.on_node = true;
        let mut progress = self.progress.lock();
        if let Some(whereabouts) = progress.whereabouts.get_mut(track.slot as usize) {
            whereabouts.since = now;
            whereabouts.node = node;
        }
        if let Some(stage) = Self::stage_mut(&mut progress, track) {
            stage.running += 1;
            if stage.first_placed_unix_micros == 0 {
                stage.first_placed_unix_micros = track.placed_unix_micros;
            }
        }
    }

    /// The Unix time (microseconds) of `at`.
    fn unix_micros(&self, at: Instant) -> u64 {
        let (base, base_unix) = self.clock;
        base_unix + at.saturating_duration_since(base).as_micros() as u64
    }

    /// The number task events and tasks in flight name the node at `address` by; its name is
    /// recorded (the head calls this when a node registers).
    pub fn node(&self, address: &str, name: &str) -> u32 {
        let mut progress = self.progress.lock();
        let i = match progress.node_index.get(address) {
            Some(i) => *i,
            None => {
                progress.nodes.push((address.to_string(), String::new()));
                let i = (progress.nodes.len() - 1) as u32;
                progress.node_index.insert(address.to_string(), i);
                i
            }
        };
        progress.nodes[i as usize].1 = name.to_string();
        i
    }

    fn stage_mut<'a>(
        progress: &'a mut Progress,
        track: &TaskTrack,
    ) -> Option<&'a mut StageProgress> {
        let i = track.stage_index?;
        progress
            .jobs
            .get_mut(&track.job)
            .and_then(|entry| entry.progress.stages.get_mut(i))
    }

    /// A task whose caller went away before it ended: it is no longer in flight.
    fn abandoned(&self, track: &TaskTrack) {
        let mut progress = self.progress.lock();
        free_slot(&mut progress, track);
        if let Some(stage) = Self::stage_mut(&mut progress, track) {
            if track.on_node {
                stage.running = stage.running.saturating_sub(1);
            }
            stage.cancelled += 1;
        }
    }

    /// The tasks in flight of `job` (a submitted job's id or a driver's job id; empty: every
    /// job), oldest first.
    pub fn in_flight(&self, job: &str) -> Vec<TaskInFlight> {
        let progress = self.progress.lock();
        let mut tasks: Vec<(Instant, TaskInFlight)> = progress
            .in_flight
            .iter()
            .zip(&progress.whereabouts)
            .zip(0u32..)
            .filter(|((_, whereabouts), _)| whereabouts.live)
            .filter_map(|((task, whereabouts), slot)| {
                let job_progress = &progress.jobs.get(&task.job)?.progress;
                let matches = job.is_empty()
                    || job_progress.submission_id == job
                    || job_progress.job_id == job;
                if !matches {
                    return None;
                }
                let stage = task.stage_index.and_then(|i| job_progress.stages.get(i));
                let finished = stage.map_or(0, |s| s.finished);
                let mean_ns = stage.map_or(0, |s| s.wall_ns / s.finished.max(1));
                Some((
                    whereabouts.since,
                    TaskInFlight {
                        label: task.label.label(stage.map_or("", |s| s.stage.as_str())),
                        stage: stage.map_or_else(String::new, |s| s.stage.clone()),
                        demand: match task.demand {
                            ODD_DEMAND => progress.odd_demands.get(&slot).cloned(),
                            i => progress.demands.get(i as usize).map(|(d, _)| d.clone()),
                        }
                        .unwrap_or_default(),
                        for_: whereabouts.since.elapsed(),
                        node: progress
                            .nodes
                            .get(whereabouts.node as usize)
                            .map(|(address, _)| address.clone()),
                        stage_finished: finished,
                        stage_mean: Duration::from_nanos(mean_ns),
                    },
                ))
            })
            .collect();
        tasks.sort_by_key(|(since, _)| *since);
        tasks.into_iter().map(|(_, task)| task).collect()
    }

    /// The task's run on `ran_on` ended with `outcome`; `retried`: it runs again.
    pub fn ended(
        &self,
        track: &mut TaskTrack,
        request: &proto::TaskRequest,
        ran_on: RanOn,
        outcome: Result<&proto::TaskSuccess, &Error>,
        retried: bool,
    ) {
        if retried && let Err(e) = outcome {
            self.cluster(
                EventKind::TaskRetried,
                format!(
                    "task {} retried (attempt {}) after: {e}",
                    request.label,
                    ran_on.attempt + 1
                ),
            );
        } else if let Err(e) = outcome {
            self.cluster(
                EventKind::TaskFailed,
                format!("task {} failed: {e}", request.label),
            );
        }
        if !self.enabled {
            return;
        }
        let now = Instant::now();
        let finished = self.unix_micros(now);
        let (stats, output, worker_pid) = match outcome {
            Ok(success) => (
                success.stats.unwrap_or_default(),
                success.output.as_ref(),
                success.worker_pid,
            ),
            Err(_) => (Default::default(), None, 0),
        };
        let (output_bytes, output_rows) = output.map_or((0, 0), |o| (o.size_bytes, o.num_rows));
        track.on_node = false;
        track.done = !retried;
        let mut progress = self.progress.lock();
        if retried {
            if let Some(whereabouts) = progress.whereabouts.get_mut(track.slot as usize) {
                whereabouts.since = now;
                whereabouts.node = NO_NODE;
            }
        } else {
            free_slot(&mut progress, track);
        }
        let node = ran_on.node;
        let Progress { jobs, tasks, .. } = &mut *progress;
        let Some(entry) = jobs.get_mut(&track.job) else {
            return;
        };
        if let Some(s) = track
            .stage_index
            .and_then(|i| entry.progress.stages.get_mut(i))
        {
            s.running = s.running.saturating_sub(1);
            s.last_ended_unix_micros = finished;
            s.wall_ns += stats.wall_ns;
            s.cpu_ns += stats.cpu_ns;
            s.spilled_bytes += stats.spilled_bytes;
            s.peak_memory_bytes = s.peak_memory_bytes.max(stats.peak_memory_bytes);
            match (outcome, retried) {
                (Ok(_), _) => {
                    s.finished += 1;
                    s.rows_out += output_rows;
                    s.bytes_in += track.input_bytes;
                    s.bytes_out += output_bytes;
                }
                (Err(_), true) => s.retried += 1,
                (Err(_), false) => s.failed += 1,
            }
        }
        let stage_name = match track.stage_index {
            Some(_) => stage_of(&request.label),
            None => "",
        };
        let record = TaskRecord {
            task_id: TaskId::from_slice(&request.task_id).ok(),
            job: track.job,
            label: LabelPrefix::of(&request.label, stage_name),
            stage: track.stage_index.map_or(u32::MAX, |i| i as u32),
            node,
            worker_pid,
            attempt: ran_on.attempt,
            submitted_unix_micros: track.submitted_unix_micros,
            placed_unix_micros: track.placed_unix_micros,
            finished_unix_micros: finished,
            stats,
            input_bytes: track.input_bytes,
            output_bytes,
            output_rows,
            failed: outcome.is_err(),
            retried,
        };
        tasks.push(record, outcome.err().map(|e| e.to_string()));
    }

    /// The task events of `job` (a submitted job's id, or a driver's job id in hex; empty:
    /// all), oldest first.
    pub fn task_events(&self, job: &str) -> Vec<proto::TaskEvent> {
        let driver = job.parse::<JobId>().ok();
        let progress = self.progress.lock();
        let submitted_as = |e: &TaskRecord| {
            progress
                .jobs
                .get(&e.job)
                .is_some_and(|j| j.progress.submission_id == job)
        };
        progress
            .tasks
            .iter()
            .filter(|(e, _)| job.is_empty() || driver == Some(e.job) || submitted_as(e))
            .map(|(e, error)| record_to_proto(e, error, &progress))
            .collect()
    }

    /// The stage progress of the driver jobs of `job` (a submitted job's id or a driver's
    /// job id), or of every job kept if it is empty.
    pub fn progress(&self, job: &str) -> Vec<JobProgress> {
        let progress = self.progress.lock();
        progress
            .order
            .iter()
            .filter_map(|id| progress.jobs.get(id).map(|entry| &entry.progress))
            .filter(|p| job.is_empty() || p.submission_id == job || p.job_id == job)
            .cloned()
            .collect()
    }
}

/// `events` as a Chrome trace (the JSON that Perfetto and chrome://tracing open): one
/// process per node, one thread per worker process, one slice per task run from the moment
/// it was placed until its node answered, with its figures as arguments.
pub fn chrome_trace(events: &[proto::TaskEvent]) -> serde_json::Value {
    use serde_json::json;
    let mut nodes: HashMap<&str, usize> = HashMap::default();
    let mut trace = Vec::with_capacity(events.len() + 8);
    for event in events {
        let next = nodes.len() + 1;
        let pid = *nodes.entry(event.node_address.as_str()).or_insert_with(|| {
            let name = if event.node_name.is_empty() {
                format!("node {}", event.node_address)
            } else {
                format!("node {} ({})", event.node_name, event.node_address)
            };
            trace.push(json!({"name": "process_name", "ph": "M", "pid": next,
                "args": {"name": name}}));
            next
        });
        let stats = event.stats.unwrap_or_default();
        let start = if event.placed_unix_micros > 0 {
            event.placed_unix_micros
        } else {
            event.submitted_unix_micros
        };
        trace.push(json!({
            "name": event.label,
            "cat": if event.error.is_empty() { "task" } else { "task,failed" },
            "ph": "X",
            "ts": start,
            "dur": event.finished_unix_micros.saturating_sub(start),
            "pid": pid,
            "tid": event.worker_pid,
            "args": {
                "stage": event.stage,
                "job_id": hex::encode(&event.job_id),
                "submission_id": event.submission_id,
                "task_id": hex::encode(&event.task_id),
                "attempt": event.attempt,
                "waited_us": event.placed_unix_micros.saturating_sub(event.submitted_unix_micros),
                "run_us": stats.wall_ns / 1000,
                "inputs_us": stats.inputs_ns / 1000,
                "output_us": stats.output_ns / 1000,
                "cpu_us": stats.cpu_ns / 1000,
                "input_bytes": event.input_bytes,
                "output_bytes": event.output_bytes,
                "output_rows": event.output_rows,
                "pulled_bytes": stats.pulled_bytes,
                "spilled_bytes": stats.spilled_bytes,
                "peak_memory_bytes": stats.peak_memory_bytes,
                "error": event.error,
            },
        }));
    }
    serde_json::Value::Array(trace)
}

/// Takes the task in flight at `slot` out, freeing the slot.
/// Frees `track`'s slot (what was in it stays until it is reused: nothing to load now) and
/// its hold on its demand.
fn free_slot(progress: &mut Progress, track: &TaskTrack) {
    let slot = track.slot;
    let Some(whereabouts) = progress.whereabouts.get_mut(slot as usize) else {
        return;
    };
    // A slot is freed once: its track is then done (or dropped).
    debug_assert!(whereabouts.live, "slot {slot} freed twice");
    whereabouts.live = false;
    progress.free_slots.push(slot);
    match track.demand {
        ODD_DEMAND => {
            progress.odd_demands.remove(&slot);
        }
        i => {
            if let Some((_, holders)) = progress.demands.get_mut(i as usize) {
                *holders = holders.saturating_sub(1);
            }
        }
    }
}

/// The index of `demand` in `demands`, held once more: where it is already, or in a place no
/// task holds any more, or a new one ([`ODD_DEMAND`] if there are [`DEMANDS_KEPT`] already).
fn intern_demand(demands: &mut Vec<(Resources, u32)>, demand: &Resources) -> u32 {
    let at = match demands.iter().position(|(d, _)| d == demand) {
        Some(i) => i,
        None => match demands.iter().position(|(_, holders)| *holders == 0) {
            Some(i) => {
                demands[i].0 = demand.clone();
                i
            }
            None if demands.len() < DEMANDS_KEPT => {
                demands.push((demand.clone(), 0));
                demands.len() - 1
            }
            None => return ODD_DEMAND,
        },
    };
    demands[at].1 += 1;
    at as u32
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(job: JobId, label: &str) -> proto::TaskRequest {
        proto::TaskRequest {
            job_id: bytes::Bytes::copy_from_slice(job.as_bytes()),
            label: label.into(),
            ..Default::default()
        }
    }

    fn success(rows: u64, bytes: u64) -> proto::TaskSuccess {
        proto::TaskSuccess {
            output: Some(proto::ObjectLocation {
                size_bytes: bytes,
                num_rows: rows,
                ..Default::default()
            }),
            stats: Some(proto::TaskStats {
                wall_ns: 1000,
                ..Default::default()
            }),
            worker_pid: 7,
            delivered: false,
        }
    }

    #[test]
    fn stage_progress_counts_every_task_once_and_the_ring_keeps_each_run() {
        let events = Arc::new(Events::new(true));
        let job = JobId::random();
        events.job_registered(job, "job-1");
        let a = events.node("a", "n");
        let on = || RanOn {
            node: a,
            attempt: 0,
        };
        let mut expected_rows = 0;
        for i in 0..10u64 {
            let label = format!("block {i} of stage {} (map)", i % 2);
            let request = request(job, &label);
            let mut track = events.submitted(job, &label, &Resources::one_cpu(), 5);
            assert_eq!(events.in_flight("job-1").last().unwrap().node, None);
            events.placed(&mut track, a);
            assert_eq!(
                events.in_flight("job-1").last().unwrap().node.as_deref(),
                Some("a")
            );
            if i == 3 {
                let lost = Error::Internal("lost".into());
                events.ended(&mut track, &request, on(), Err(&lost), true);
                assert_eq!(events.in_flight("job-1").last().unwrap().node, None);
                events.placed(&mut track, a);
            }
            events.ended(&mut track, &request, on(), Ok(&success(i, 2 * i)), false);
            expected_rows += i;
        }
        let progress = events.progress("job-1");
        assert_eq!(progress.len(), 1);
        let stages = &progress[0].stages;
        assert_eq!(
            stages.iter().map(|s| s.stage.as_str()).collect::<Vec<_>>(),
            ["stage 0 (map)", "stage 1 (map)"]
        );
        assert_eq!(stages.iter().map(|s| s.finished).sum::<u64>(), 10);
        assert_eq!(stages.iter().map(|s| s.submitted).sum::<u64>(), 10);
        assert_eq!(stages.iter().map(|s| s.running).sum::<u64>(), 0);
        assert_eq!(stages.iter().map(|s| s.retried).sum::<u64>(), 1);
        assert_eq!(
            stages.iter().map(|s| s.rows_out).sum::<u64>(),
            expected_rows
        );
        assert_eq!(stages.iter().map(|s| s.bytes_in).sum::<u64>(), 50);
        assert!(events.in_flight("").is_empty(), "every task ended");
        // A task whose caller goes away is no longer in flight, and counted as cancelled.
        let mut gone = events.submitted(job, "block 0 of stage 0 (map)", &Resources::one_cpu(), 0);
        events.placed(&mut gone, a);
        assert_eq!(events.in_flight("job-1").len(), 1);
        drop(gone);
        assert!(events.in_flight("job-1").is_empty());
        let stage = &events.progress("job-1")[0].stages[0];
        assert_eq!((stage.running, stage.cancelled), (0, 1));
        assert_eq!(events.task_events("job-1").len(), 11);
        assert_eq!(events.task_events(&job.to_string()).len(), 11);
        assert!(events.task_events("job-2").is_empty());
        let trace = chrome_trace(&events.task_events(""));
        let slices = trace
            .as_array()
            .unwrap()
            .iter()
            .filter(|e| e["ph"] == "X")
            .count();
        assert_eq!(slices, 11);
        assert!(
            events
                .cluster_events()
                .iter()
                .any(|e| e.kind == EventKind::TaskRetried)
        );
    }

    /// Tasks in flight keep their own demands, however many different ones there are (past
    /// the interned ones too), and a demand no task holds any more makes room for another.
    #[test]
    fn tasks_in_flight_keep_their_demands() {
        let events = Arc::new(Events::new(true));
        let job = JobId::random();
        events.job_registered(job, "job-1");
        let demand = |i: usize| Resources {
            memory_bytes: i as u64,
            ..Resources::one_cpu()
        };
        let many = DEMANDS_KEPT + 10;
        let tracks: Vec<TaskTrack> = (0..many)
            .map(|i| events.submitted(job, &format!("block {i} of s"), &demand(i), 0))
            .collect();
        let mut seen: Vec<(String, u64)> = events
            .in_flight("job-1")
            .into_iter()
            .map(|t| (t.label, t.demand.memory_bytes))
            .collect();
        seen.sort_by_key(|(_, memory)| *memory);
        let expected: Vec<(String, u64)> = (0..many)
            .map(|i| (format!("block {i} of s"), i as u64))
            .collect();
        assert_eq!(seen, expected);
        drop(tracks);
        assert!(events.in_flight("").is_empty());
        let _again = events.submitted(job, "block 0 of s", &demand(many), 0);
        let progress = events.progress.lock();
        assert!(progress.odd_demands.is_empty());
        assert!(progress.demands.len() <= DEMANDS_KEPT);
        assert_eq!(progress.demands.iter().map(|(_, n)| n).sum::<u32>(), 1);
    }

    #[test]
    fn disabled_records_no_tasks() {
        let events = Arc::new(Events::new(false));
        let job = JobId::random();
        events.job_registered(job, "");
        let request = request(job, "add");
        let mut track = events.submitted(job, "add", &Resources::one_cpu(), 0);
        events.placed(&mut track, 0);
        events.ended(
            &mut track,
            &request,
            RanOn {
                node: 0,
                attempt: 0,
            },
            Ok(&success(1, 1)),
            false,
        );
        assert!(events.task_events("").is_empty());
        assert!(events.progress("").is_empty());
        assert!(events.in_flight("").is_empty());
    }
}
