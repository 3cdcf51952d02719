//! The head: the node table, jobs and their executables, and task placement.
//!
//! # How a task runs on a cluster
//!
//! ```text
//! driver ══SubmitTasks══▶ head: place (PlacementPolicy) ══RunTasks══▶ node daemon
//!    ▲                         take the node's resources               pull inputs (Flight), pin,
//!    ║                         ...                                     hand to a worker process
//!    ╚═══ replies ◀═══════════ give resources back, wake waiters ◀═══ output's location (or a
//!                                                                      small output itself)
//! ```
//!
//! (Both links are one stream each, carrying calls and replies in batches: [`task_stream`].)
//!
//! The head holds one entry per node: its resources (total and available, the latter indexed
//! for placement in [`Nodes`]), its last store usage and the time of its last heartbeat. A
//! submitted task takes resources from the node the policy picks and gives them back when the
//! node answers. A task that finds no room waits with the tasks of the same demand, at the node
//! holding most of its input bytes or anywhere if it has none ([`waiting`]). When resources
//! come back on a node, that node takes the older of its own first waiter and the first that
//! may run anywhere, for every demand, and only then another node's waiter, for as long as it
//! has room: a release costs the tasks it places, not the tasks or nodes there are, and on a
//! busy cluster tasks run where their inputs are. When nodes come and go, every node with room is served
//! the same way. (`cargo bench --bench workloads -- sim` measures this against 1,000
//! simulated nodes: [`crate::simulation`].)
//!
//! *Short* tasks are the exception. The head keeps a moving average of each function's run
//! time; a task of a function averaging under 1 ms ([`SHORT_TASK_NS`]) that finds every node
//! busy is sent to the node with the fewest queued anyway (CPU-only demands, up to about 4 ms
//! of work per CPU), without taking its resources, and the node queues it on a busy worker. A
//! worker then goes from one short task to the next with no round trip to the head between
//! them, which is what lets tiny tasks run at tens of thousands a second.
//!
//! A node that misses heartbeats for `missed_heartbeats` intervals, or refuses a connection, is
//! marked dead: its running tasks fail with `NodeLost` at once, and are retried elsewhere if
//! their retry budget allows.

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use futures::Stream;
use manta_engine::{JobId, NodeId, Resources};
use manta_flight::auth::{AuthChannel, Token, guard};
use parking_lot::Mutex;
use rustc_hash::FxHashMap;
use tokio::sync::oneshot;
use tokio_util::sync::CancellationToken;
use tonic::{Request, Response, Status, Streaming};

use crate::error::{Error, Result};
use crate::executables::ExecutableCache;
use crate::placement::{LocalityFirst, Nodes, Placement, PlacementPolicy};
use crate::proto::head_server::{Head as HeadRpc, HeadServer};
use crate::proto::node_client::NodeClient;
use crate::proto::{self, task_reply};
use crate::server;
use crate::task_stream::{self, TaskStream};

mod actors;
mod autoscaling;
mod simulation;
mod stalls;
mod waiting;

use waiting::{DemandKey, DemandQueue, Waiter};

pub use actors::ActorSummary;

/// A function whose runs average at most this long is *short*: its tasks may queue on a node
/// whose workers are all busy, so that a worker goes from one to the next without waiting for
/// a round trip to the head.
const SHORT_TASK_NS: f64 = 1e6;

/// How long a short task may expect to wait in a node's queue: the queue holds this much work
/// per CPU.
const QUEUED_WORK_NS: f64 = 4e6;

/// How many tasks of a function averaging `mean_ns` may queue per CPU of a busy node; `None`
/// if it is not short.
fn short_task_queue(mean_ns: f64) -> Option<u64> {
    (mean_ns <= SHORT_TASK_NS).then(|| (QUEUED_WORK_NS / mean_ns.max(1.0)).clamp(1.0, 128.0) as u64)
}

/// Which of two demands is served first when a node has room: those asking for named
/// resources (which few nodes have), then the larger.
fn scarcer(a: &Resources, b: &Resources) -> std::cmp::Ordering {
    b.custom
        .len()
        .cmp(&a.custom.len())
        .then(b.cpus.total_cmp(&a.cpus))
        .then(b.memory_bytes.cmp(&a.memory_bytes))
}

/// How the head is set up.
#[derive(Clone)]
pub struct HeadConfig {
    /// How often nodes heartbeat.
    pub heartbeat_interval: Duration,
    /// Heartbeats a node may miss before it is declared dead.
    pub missed_heartbeats: u32,
    /// Where executables are cached.
    pub cache_dir: PathBuf,
    /// The placement rule.
    pub policy: Arc<dyn PlacementPolicy>,
    /// The cluster token every caller must present, and the head presents to nodes (default:
    /// a new random one).
    pub token: Token,
    /// Serve TLS with this certificate and key.
    pub tls: Option<manta_flight::tls::ServerIdentity>,
    /// How long a dead node stays in the node table (for `manta status` to show) before it is
    /// forgotten. A forgotten node that comes back registers again.
    pub forget_dead_nodes_after: Duration,
    /// How long a task or actor that fits no live node waits for one (a node joining, coming
    /// back, or started by an autoscaler) before it fails; meanwhile the head warns every
    /// [`PENDING_WARNING_EVERY`] naming the demand and what the nodes offer.
    pub pending_timeout: Duration,
    /// The autoscaler to run, if any: it launches nodes for waiting demand and stops idle
    /// ones; demand none of its node types could meet then fails at once.
    pub autoscaler: Option<crate::autoscaler::AutoscalerConfig>,
    /// The host nodes reach this head at, when not the address it binds (the autoscaler
    /// tells the nodes it launches).
    pub advertise_host: Option<String>,
    /// Where submitted jobs' working directories and logs go ([`crate::jobs`]).
    pub jobs_dir: PathBuf,
    /// Serve the dashboard, its JSON API and `/metrics` on this port of the bound address
    /// (0: a free one).
    pub dashboard_port: Option<u16>,
    /// Keep task events and stage progress ([`crate::events`]; on by default).
    pub task_events: bool,
}

/// The default of [`HeadConfig::pending_timeout`].
pub const PENDING_TIMEOUT: Duration = Duration::from_secs(300);

/// How often the head warns about demand that no live node can meet.
pub const PENDING_WARNING_EVERY: Duration = Duration::from_secs(10);

/// How long the head refuses a node the autoscaler stopped (it has exited long before).
const RETIRED_KEPT: Duration = Duration::from_secs(600);

/// The default of [`HeadConfig::forget_dead_nodes_after`].
pub const FORGET_DEAD_NODES_AFTER: Duration = Duration::from_secs(60);

impl Default for HeadConfig {
    fn default() -> Self {
        Self {
            heartbeat_interval: Duration::from_millis(500),
            missed_heartbeats: 6,
            cache_dir: ExecutableCache::default_dir(),
            policy: Arc::new(LocalityFirst),
            token: Token::generate(),
            tls: None,
            forget_dead_nodes_after: FORGET_DEAD_NODES_AFTER,
            pending_timeout: PENDING_TIMEOUT,
            autoscaler: None,
            advertise_host: None,
            jobs_dir: crate::jobs::Jobs::default_dir(),
            dashboard_port: None,
            task_events: true,
        }
    }
}

struct NodeEntry {
    address: String,
    /// Its number in the task events.
    events_node: u32,
    /// The name it registered with (may be empty).
    name: String,
    /// Its store's shared-memory and spill directories (for drivers on its machine).
    shared_dir: String,
    spill_dir: String,
    /// Taking no new work: the autoscaler is stopping it.
    draining: bool,
    /// Everything it offers (what is available is in [`HeadState::capacity`]).
    total: Resources,
    store: proto::StoreUsage,
    last_heartbeat: Instant,
    alive: bool,
    running: u64,
    /// Short tasks queued here behind busy workers, beyond its resources.
    queued: u64,
    pid: u32,
    /// The node's client, the stream its tasks are sent on, and its loss.
    link: Arc<NodeLink>,
}

/// How a task reaches its node, shared by the node's entry and every lease on it: placing a
/// task clones one `Arc` (cloning the stream, the client and the token each took locks and
/// reference counts of their own, a visible share of the head's time in `tasks`).
struct NodeLink {
    /// The node's address, for messages (the entry's, copied once when it joins).
    address: String,
    client: NodeClient<AuthChannel>,
    /// The stream the node's tasks are sent on.
    tasks: TaskStream,
    /// Cancelled when the node is lost: its tasks fail over.
    lost: CancellationToken,
}

/// What the head learns of a node when it joins.
struct Joining {
    address: String,
    name: String,
    /// Its store's shared-memory and spill directories (for drivers on its machine).
    shared_dir: String,
    spill_dir: String,
    total: Resources,
    store: proto::StoreUsage,
    pid: u32,
    client: NodeClient<AuthChannel>,
    tasks: TaskStream,
}

/// A node as people name it: its name and address, or its address.
fn node_title(node: &NodeEntry) -> String {
    if node.name.is_empty() {
        node.address.clone()
    } else {
        format!("{} ({})", node.name, node.address)
    }
}

/// The task stream to the node `client` reaches.
fn node_tasks(client: &NodeClient<AuthChannel>) -> TaskStream {
    let client = client.clone();
    TaskStream::new(Arc::new(move |calls| {
        let mut client = client.clone();
        Box::pin(async move {
            let replies = client.run_tasks(calls).await?.into_inner();
            Ok(futures::StreamExt::boxed(replies))
        })
    }))
}

/// The head's tables, under one lock. Keyed maps hash with `FxHash`, as the event log's do:
/// they are looked up several times for every task placed and ended (a task function's
/// duration by its name, a node by its id), and SipHash was a visible share of the head's
/// time in `tasks`. Their keys come from authenticated cluster members only.
#[derive(Default)]
struct HeadState {
    nodes: FxHashMap<NodeId, NodeEntry>,
    /// What each node has available, indexed for placement; kept in step with `nodes` by
    /// [`HeadState::node_changed`].
    capacity: Nodes,
    jobs: FxHashMap<JobId, String>,
    /// Tasks waiting for resources, by demand (see the module doc).
    waiting: BTreeMap<DemandKey, DemandQueue>,
    /// The next waiter's place in line.
    next_seq: u64,
    /// Every actor created, live or dead ([`actors`]).
    actors: FxHashMap<manta_engine::ActorId, actors::ActorEntry>,
    /// How long each task function runs, in nanoseconds (a moving average), by function: not
    /// by label, which for a SQL or dataset stage's tasks ("SQL stage 1, partition 0 of 2
    /// (...)") names a place in a plan that every query has, doing different work in each.
    durations: FxHashMap<String, f64>,
    /// When the head last warned about demand no live node can meet.
    pending_warned: Option<Instant>,
    /// Nodes the autoscaler stopped, and when: one still shutting down that heartbeats is
    /// refused rather than registered again.
    retired: FxHashMap<NodeId, Instant>,
    /// When the waiters are next looked at again for a node with room to steal (see
    /// [`Head::steal_later`]), if a look is due.
    steal_check: Option<Instant>,
}

impl HeadState {
    /// Brings node `id`'s placement view in step with its entry, after it was added, removed,
    /// lost or (un)drained.
    fn node_changed(&mut self, id: NodeId) {
        match self.nodes.get(&id) {
            Some(node) => {
                if self.capacity.get(id).is_none() {
                    self.capacity.insert(id, node.total.clone());
                }
                self.capacity.set_alive(id, node.alive && !node.draining);
                if !node.alive {
                    for queue in self.waiting.values_mut() {
                        queue.forget_node(id);
                    }
                }
            }
            None => {
                self.capacity.remove(id);
                for queue in self.waiting.values_mut() {
                    queue.forget_node(id);
                }
            }
        }
    }
}

/// What the live nodes offer, for messages: each one's address and total resources.
fn offered(state: &HeadState) -> String {
    let offered: Vec<String> = state
        .nodes
        .values()
        .filter(|n| n.alive)
        .map(|n| format!("{} {:?}", n.address, n.total))
        .collect();
    if offered.is_empty() {
        "no live nodes".to_string()
    } else {
        offered.join("; ")
    }
}

/// The head's state and gRPC service.
pub struct Head {
    state: Mutex<HeadState>,
    /// This head, for reservations to give their resources back to.
    me: Weak<Head>,
    config: HeadConfig,
    executables: ExecutableCache,
    /// The autoscaler, when the head runs one (for `manta status`).
    autoscaler: std::sync::OnceLock<Weak<crate::autoscaler::Autoscaler>>,
    /// Submitted jobs.
    jobs: Arc<crate::jobs::Jobs>,
    metrics: crate::metrics::HeadMetrics,
    /// Task events, stage progress and cluster events.
    events: Arc<crate::events::Events>,
    /// The dashboard, when it is served.
    dashboard: std::sync::OnceLock<Weak<crate::dashboard::Dashboard>>,
}

/// A node's resources taken for one task; given back when dropped (also when a waiting task's
/// caller went away before it heard of them), which lets waiting tasks have them.
struct Reservation {
    head: Weak<Head>,
    node: NodeId,
    demand: Resources,
    /// Queued behind the node's busy workers rather than holding its resources.
    queued: bool,
    held: bool,
}

impl Reservation {
    /// Gives the resources back within a section that already holds the head's lock.
    fn give_back(mut self, state: &mut HeadState) {
        release(state, &self);
        self.held = false;
    }
}

impl Drop for Reservation {
    fn drop(&mut self) {
        if !self.held {
            return;
        }
        if let Some(head) = self.head.upgrade() {
            let mut state = head.state.lock();
            release(&mut state, self);
            head.dispatch_at(&mut state, self.node);
        }
    }
}

fn release(state: &mut HeadState, reservation: &Reservation) {
    if let Some(node) = state.nodes.get_mut(&reservation.node) {
        if reservation.queued {
            node.queued = node.queued.saturating_sub(1);
        } else {
            node.running = node.running.saturating_sub(1);
            state
                .capacity
                .give_back(reservation.node, &reservation.demand);
        }
    }
}

/// A reservation, with what it takes to run the task on its node.
struct Lease {
    reservation: Reservation,
    /// The task's function is short: the node may queue it behind busy workers.
    short: bool,
    /// The node's number in the task events.
    events_node: u32,
    link: Arc<NodeLink>,
}

/// A driver's `HoldJob` stream, open: when it is dropped (the driver's connection closed) and
/// the job has not ended, the head ends it.
struct JobHeld {
    head: Arc<Head>,
    job: JobId,
}

impl Drop for JobHeld {
    fn drop(&mut self) {
        if !self.head.state.lock().jobs.contains_key(&self.job) {
            return;
        }
        tracing::warn!(job = %self.job, "the job's driver went away without ending it; ending it");
        let (head, job) = (Arc::clone(&self.head), self.job);
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            runtime.spawn(async move { head.finish_job(job).await });
        }
    }
}

impl Head {
    /// Ends `job`: its actors are killed, and every node stops its workers and frees the
    /// objects its driver put there.
    async fn finish_job(&self, job: JobId) {
        self.end_job_actors(job);
        let clients: Vec<_> = {
            let mut state = self.state.lock();
            state.jobs.remove(&job);
            state
                .nodes
                .values()
                .filter(|n| n.alive)
                .map(|n| n.link.client.clone())
                .collect()
        };
        let job_id = bytes::Bytes::copy_from_slice(job.as_bytes());
        let calls = clients.into_iter().map(|mut c| {
            let request = proto::EndJobRequest {
                job_id: job_id.clone(),
            };
            async move { c.end_job(request).await }
        });
        futures::future::join_all(calls).await;
    }

    /// Lets `manta status` show `autoscaler`'s node types and events.
    pub(crate) fn attach_autoscaler(&self, autoscaler: &Arc<crate::autoscaler::Autoscaler>) {
        let _ = self.autoscaler.set(Arc::downgrade(autoscaler));
    }

    /// Task events, stage progress and cluster events.
    pub fn events(&self) -> &Arc<crate::events::Events> {
        &self.events
    }

    /// Submitted jobs.
    pub fn jobs(&self) -> &Arc<crate::jobs::Jobs> {
        &self.jobs
    }

    /// The cluster token.
    pub fn token(&self) -> &Token {
        &self.config.token
    }

    /// The head's metrics.
    pub(crate) fn metrics(&self) -> &crate::metrics::HeadMetrics {
        &self.metrics
    }

    /// Every metric in Prometheus' text format, the gauges set from the head's state now.
    pub fn encode_metrics(&self) -> Vec<u8> {
        let m = &self.metrics;
        {
            let state = self.state.lock();
            let count = |f: &dyn Fn(&NodeEntry) -> bool| {
                state.nodes.values().filter(|n| f(n)).count() as i64
            };
            m.nodes
                .with_label_values(&["alive"])
                .set(count(&|n| n.alive && !n.draining));
            m.nodes
                .with_label_values(&["draining"])
                .set(count(&|n| n.alive && n.draining));
            m.nodes
                .with_label_values(&["dead"])
                .set(count(&|n| !n.alive));
            let pending: usize = state
                .waiting
                .values()
                .map(|q| q.iter().filter(|w| !w.placed.is_closed()).count())
                .sum();
            m.pending.set(pending as i64);
            m.store
                .set(state.nodes.values().filter(|n| n.alive).map(|n| &n.store));
        }
        let jobs = self.jobs.list();
        for state in ["PENDING", "RUNNING", "SUCCEEDED", "FAILED", "STOPPED"] {
            let n = jobs
                .iter()
                .filter(|j| crate::jobs::http::state_name(j.state) == state)
                .count();
            m.jobs.with_label_values(&[state]).set(n as i64);
        }
        m.encode()
    }

    /// A head with no nodes.
    pub fn new(config: HeadConfig) -> Result<Arc<Self>> {
        let executables = ExecutableCache::new(&config.cache_dir)?;
        let jobs = crate::jobs::Jobs::new(config.jobs_dir.clone(), config.token.clone());
        let events = Arc::new(crate::events::Events::new(config.task_events));
        jobs.report_to(Arc::clone(&events));
        Ok(Arc::new_cyclic(|me| Self {
            jobs,
            events,
            dashboard: std::sync::OnceLock::new(),
            metrics: Default::default(),
            state: Mutex::default(),
            me: me.clone(),
            config,
            executables,
            autoscaler: std::sync::OnceLock::new(),
        }))
    }

    /// Serves on `listener` until `shutdown` resolves (then drains for at most
    /// [`server::DRAIN_TIMEOUT`]); also watches node liveness.
    pub async fn serve(
        self: Arc<Self>,
        listener: tokio::net::TcpListener,
        shutdown: impl std::future::Future<Output = ()> + Send,
    ) -> Result<()> {
        let watcher = tokio::spawn(Arc::clone(&self).watch_liveness());
        let mut builder = server::server_builder();
        let result = server::serve_until(shutdown, |graceful| {
            builder
                .add_service(guard(
                    HeadServer::from_arc(Arc::clone(&self)),
                    &self.config.token,
                ))
                .serve_with_incoming_shutdown(
                    manta_flight::incoming(listener, self.config.tls.as_ref()),
                    graceful,
                )
        })
        .await;
        watcher.abort();
        result.map_err(|e| Error::Internal(format!("head server: {e}")))
    }

    async fn watch_liveness(self: Arc<Self>) {
        let mut ticks = tokio::time::interval(self.config.heartbeat_interval);
        let timeout = self.config.heartbeat_interval * self.config.missed_heartbeats;
        loop {
            ticks.tick().await;
            let mut state = self.state.lock();
            let mut lost = Vec::new();
            for (id, node) in state.nodes.iter_mut().filter(|(_, n)| n.alive) {
                if node.last_heartbeat.elapsed() > timeout {
                    tracing::warn!(node = ?id, address = %node.address, "node missed its heartbeats; marking it dead");
                    self.events.cluster(
                        crate::events::EventKind::NodeLost,
                        format!("node {} lost: it missed its heartbeats", node_title(node)),
                    );
                    node.alive = false;
                    node.link.lost.cancel();
                    lost.push(*id);
                }
            }
            for id in &lost {
                state.node_changed(*id);
            }
            if !lost.is_empty() || !state.waiting.is_empty() {
                // Waiting demand that no live node fits fails once it has waited too long.
                self.dispatch(&mut state);
            }
            self.warn_about_pending(&mut state);
            let forget_after = timeout + self.config.forget_dead_nodes_after;
            state.retired.retain(|_, at| at.elapsed() < RETIRED_KEPT);
            let mut forgotten = Vec::new();
            state.nodes.retain(|id, node| {
                let forget = !node.alive && node.last_heartbeat.elapsed() > forget_after;
                if forget {
                    tracing::info!(node = ?id, address = %node.address, "forgetting a node dead for {} s", forget_after.as_secs());
                    forgotten.push(*id);
                }
                !forget
            });
            for id in forgotten {
                state.node_changed(id);
            }
        }
    }

    /// Every [`PENDING_WARNING_EVERY`], one warning per demand that no live node fits: how
    /// many wait for it, what the nodes offer, and how long until they fail.
    fn warn_about_pending(&self, state: &mut HeadState) {
        if state
            .pending_warned
            .is_some_and(|at| at.elapsed() < PENDING_WARNING_EVERY)
        {
            return;
        }
        let mut warned = false;
        for queue in state.waiting.values() {
            let Some(first) = queue.oldest() else {
                continue;
            };
            if state.capacity.could_fit(&queue.demand) {
                continue;
            }
            let left = self
                .config
                .pending_timeout
                .saturating_sub(first.since.elapsed());
            tracing::warn!(
                "{} task(s) or actor(s) wait for {:?} ({}), which no live node offers; nodes \
                 offer: {}. They fail in {} s unless a node that fits joins",
                queue.len(),
                queue.demand,
                first.label,
                offered(state),
                left.as_secs()
            );
            warned = true;
        }
        if warned {
            state.pending_warned = Some(Instant::now());
        }
    }

    /// Adds node `id` (or replaces an earlier entry of it) with all its resources available,
    /// and hands them to the tasks waiting.
    fn join(&self, id: NodeId, node: Joining) {
        let link = Arc::new(NodeLink {
            address: node.address.clone(),
            client: node.client,
            tasks: node.tasks,
            lost: CancellationToken::new(),
        });
        let entry = NodeEntry {
            events_node: self.events.node(&node.address, &node.name),
            address: node.address,
            name: node.name,
            shared_dir: node.shared_dir,
            spill_dir: node.spill_dir,
            draining: false,
            total: node.total.clone(),
            store: node.store,
            last_heartbeat: Instant::now(),
            alive: true,
            running: 0,
            queued: 0,
            pid: node.pid,
            link,
        };
        let mut state = self.state.lock();
        if let Some(old) = state.nodes.insert(id, entry) {
            old.link.lost.cancel();
        }
        state.capacity.insert(id, node.total);
        state.node_changed(id);
        self.dispatch(&mut state);
    }

    /// A node could not be reached: it is marked dead at once rather than after its missed
    /// heartbeats, so that retries go elsewhere. (A node that is in fact alive hears at its
    /// next heartbeat that the head does not know it, and registers again.)
    fn unreachable(&self, id: NodeId) {
        let mut state = self.state.lock();
        if let Some(node) = state.nodes.get_mut(&id)
            && node.alive
        {
            tracing::warn!(node = ?id, address = %node.address, "node unreachable; marking it dead");
            self.events.cluster(
                crate::events::EventKind::NodeLost,
                format!("node {} lost: it could not be reached", node_title(node)),
            );
            node.alive = false;
            node.link.lost.cancel();
            state.node_changed(id);
            self.dispatch(&mut state);
        }
    }

    /// Whether `error` is a task's input that is gone (or cannot be fetched because its node is
    /// dead): no retry helps, and the driver makes the input again from its lineage.
    fn input_gone(&self, error: &Error) -> bool {
        let node = match error {
            Error::ObjectLost { .. } => return true,
            Error::FetchFailed { node, .. } => node,
            _ => return false,
        };
        let state = self.state.lock();
        !state
            .nodes
            .values()
            .any(|n| n.alive && n.address.trim_end_matches('/') == node.trim_end_matches('/'))
    }

    /// The node holding most of a task's input bytes, if it takes work and could ever run
    /// `demand`: where the task waits when no node has room.
    fn preferred_node(
        state: &HeadState,
        demand: &Resources,
        input_bytes: &HashMap<NodeId, u64>,
    ) -> Option<NodeId> {
        let (id, _) = input_bytes
            .iter()
            .filter(|(_, bytes)| **bytes > 0)
            .max_by(|a, b| a.1.cmp(b.1).then(b.0.cmp(a.0)))?;
        let node = state.capacity.get(*id)?;
        (node.alive && node.total.covers(demand)).then_some(*id)
    }

    /// Takes resources on the node the policy picks, waiting in its demand's queue while every
    /// fitting node is busy. `label` names the task in messages; `function` is what its
    /// history of durations is kept by.
    async fn acquire(
        &self,
        demand: &Resources,
        input_bytes: &HashMap<NodeId, u64>,
        label: &str,
        function: &str,
    ) -> Result<Lease> {
        let placed = {
            let mut state = self.state.lock();
            let key = DemandKey::of(demand);
            let queued = state.waiting.get(&key).is_some_and(|q| !q.is_empty());
            if !queued {
                let placed = self.try_place(&mut state, demand, input_bytes, label, function);
                match placed {
                    Some(Ok(reservation)) => return Ok(self.lease(&state, reservation, function)),
                    Some(Err(e)) => return Err(e),
                    None => {}
                }
            }
            let (placed, told) = oneshot::channel();
            let prefers = Self::preferred_node(&state, demand, input_bytes);
            let waiter = Waiter {
                seq: state.next_seq,
                prefers,
                label: label.to_string(),
                function: function.to_string(),
                placed,
                since: Instant::now(),
                steal_after: waiting::wait_for(prefers, input_bytes),
            };
            state.next_seq += 1;
            state
                .waiting
                .entry(key)
                .or_insert_with(|| DemandQueue::new(demand.clone()))
                .push(waiter);
            told
        };
        placed
            .await
            .map_err(|_| Error::Internal("the head stopped while the task waited".into()))?
    }

    /// Takes resources for `demand` on the node the policy picks, for a task just arrived:
    /// `None` if it must wait. A demand that no live node fits waits too, until
    /// [`HeadConfig::pending_timeout`]; then it fails naming what the nodes offer.
    fn try_place(
        &self,
        state: &mut HeadState,
        demand: &Resources,
        input_bytes: &HashMap<NodeId, u64>,
        label: &str,
        function: &str,
    ) -> Option<Result<Reservation>> {
        match self
            .config
            .policy
            .place(demand, input_bytes, &state.capacity)
        {
            Placement::Node(id) => Some(Ok(self.reserve(state, id, demand))),
            Placement::Wait => self
                .queue_on_busy_node(state, demand, function, None)
                .map(Ok),
            Placement::Infeasible => self
                .infeasible(state, demand, label, Instant::now())
                .map(Err),
        }
    }

    /// Takes `demand` on node `id`, which has it available.
    fn reserve(&self, state: &mut HeadState, id: NodeId, demand: &Resources) -> Reservation {
        state.capacity.take(id, demand);
        if let Some(node) = state.nodes.get_mut(&id) {
            node.running += 1;
        }
        Reservation {
            head: self.me.clone(),
            node: id,
            demand: demand.clone(),
            queued: false,
            held: true,
        }
    }

    /// The error for a task waiting since `since` for `demand`, which no live node fits: at
    /// once if no node type the autoscaler can launch fits it either, after
    /// [`HeadConfig::pending_timeout`] otherwise; `None` while it may still wait.
    fn infeasible(
        &self,
        state: &HeadState,
        demand: &Resources,
        label: &str,
        since: Instant,
    ) -> Option<Error> {
        if let Some(autoscaler) = &self.config.autoscaler
            && !autoscaler.could_ever_run(demand)
        {
            let types: Vec<String> = autoscaler
                .node_types
                .iter()
                .map(|t| format!("{} {:?} (max_nodes {})", t.name, t.resources, t.max_nodes))
                .collect();
            return Some(Error::Infeasible {
                task: label.to_string(),
                demand: demand.clone(),
                offered: format!(
                    "{}; nor does any node type the autoscaler can launch: {}",
                    offered(state),
                    types.join("; ")
                ),
            });
        }
        (since.elapsed() >= self.config.pending_timeout).then(|| Error::Infeasible {
            task: label.to_string(),
            demand: demand.clone(),
            offered: format!(
                "{} (waited {} s for a node that fits)",
                offered(state),
                self.config.pending_timeout.as_secs()
            ),
        })
    }

    /// A short task (of `function`) that finds every fitting node busy: queued on the node
    /// with the fewest queued (or on node `only`), if one has room (see [`short_task_queue`]).
    fn queue_on_busy_node(
        &self,
        state: &mut HeadState,
        demand: &Resources,
        function: &str,
        only: Option<NodeId>,
    ) -> Option<Reservation> {
        if demand.memory_bytes > 0 || !demand.custom.is_empty() {
            return None;
        }
        let per_cpu = short_task_queue(*state.durations.get(function)?)?;
        let has_room = |n: &NodeEntry| {
            n.alive
                && !n.draining
                && n.total.covers(demand)
                && n.queued < per_cpu * n.total.cpus.ceil().max(1.0) as u64
        };
        let (id, node) = match only {
            Some(id) => (id, state.nodes.get_mut(&id).filter(|n| has_room(n))?),
            None => {
                let (id, node) = state
                    .nodes
                    .iter_mut()
                    .filter(|(_, n)| has_room(n))
                    .min_by_key(|(_, n)| n.queued)?;
                (*id, node)
            }
        };
        node.queued += 1;
        Some(Reservation {
            head: self.me.clone(),
            node: id,
            demand: demand.clone(),
            queued: true,
            held: true,
        })
    }

    /// A task's run on its node ended: notes how long it ran (if it did; a moving average
    /// per function) and gives the node's resources to the tasks waiting, under one lock.
    fn ended_on_node(&self, reservation: Reservation, function: &str, wall_ns: Option<u64>) {
        let node = reservation.node;
        let mut state = self.state.lock();
        if let Some(wall_ns) = wall_ns {
            match state.durations.get_mut(function) {
                Some(mean) => *mean = *mean * 0.9 + wall_ns as f64 * 0.1,
                None => {
                    state.durations.insert(function.to_string(), wall_ns as f64);
                }
            }
        }
        reservation.give_back(&mut state);
        self.dispatch_at(&mut state, node);
    }

    /// Resources came back on node `node`: its room goes to the tasks waiting for it (see
    /// [`waiting`]). Costs the tasks it places, not the tasks or nodes there are.
    fn dispatch_at(&self, state: &mut HeadState, node: NodeId) {
        if state.waiting.is_empty() {
            return;
        }
        let mut waiting = std::mem::take(&mut state.waiting);
        let mut queues: Vec<&mut DemandQueue> = waiting.values_mut().collect();
        // The scarcest demands first: a GPU freed goes to a task that needs one, not to a task
        // of CPUs only that would take the CPU it comes with.
        queues.sort_by(|a, b| scarcer(&a.demand, &b.demand));
        // The node's own waiters of every demand before any other node's.
        for steal in [false, true] {
            for queue in &mut queues {
                self.serve_waiters(state, queue, node, steal);
            }
        }
        waiting.retain(|_, queue| !queue.is_empty());
        state.waiting = waiting;
    }

    /// Hands free resources to waiting tasks after nodes came, went or changed (and on every
    /// liveness tick): each demand's waiters go first to the nodes they wait at, then to the
    /// freest nodes with room. Waiters for a demand no live node fits fail once they have
    /// waited too long.
    fn dispatch(&self, state: &mut HeadState) {
        let mut waiting = std::mem::take(&mut state.waiting);
        let mut queues: Vec<&mut DemandQueue> = waiting.values_mut().collect();
        queues.sort_by(|a, b| scarcer(&a.demand, &b.demand));
        for queue in queues {
            for node in queue.preferred_nodes() {
                self.serve_waiters(state, queue, node, false);
            }
            while !queue.is_empty() {
                let Some(node) = state
                    .capacity
                    .with_free_cpus(queue.demand.cpus)
                    .find(|n| n.available.covers(&queue.demand))
                    .map(|n| n.id)
                else {
                    break;
                };
                let before = queue.len();
                self.serve_waiters(state, queue, node, true);
                if queue.len() == before {
                    break;
                }
            }
            if !queue.is_empty() && !state.capacity.could_fit(&queue.demand) {
                queue.drop_gone();
                let timeout = if self
                    .config
                    .autoscaler
                    .as_ref()
                    .is_some_and(|a| !a.could_ever_run(&queue.demand))
                {
                    Duration::ZERO
                } else {
                    self.config.pending_timeout
                };
                for waiter in queue.take_expired(timeout) {
                    if let Some(error) =
                        self.infeasible(state, &queue.demand, &waiter.label, waiter.since)
                    {
                        let _ = waiter.placed.send(Err(error));
                    }
                }
            }
        }
        waiting.retain(|_, queue| !queue.is_empty());
        state.waiting = waiting;
    }

    /// Gives node `node`'s room to `queue`'s waiters while it has room for them (a short task
    /// may also queue behind its busy workers); to other nodes' waiters only if `steal`.
    fn serve_waiters(
        &self,
        state: &mut HeadState,
        queue: &mut DemandQueue,
        node: NodeId,
        steal: bool,
    ) {
        // The earliest time a waiter this node may not steal yet becomes one it may.
        let steal_at = std::cell::Cell::new(None::<Instant>);
        while !queue.is_empty() {
            let has_room = state.capacity.fits_now(node, &queue.demand);
            let capacity = &state.capacity;
            // Another node's waiter is taken only if that node cannot soon serve it itself.
            let may_steal = |owner: NodeId, len: usize, first: &Waiter| {
                let cpus = capacity.get(owner).map_or(0.0, |n| n.total.cpus);
                if !steal || len as f64 > cpus {
                    return steal;
                }
                let at = first.since + first.steal_after;
                if Instant::now() < at {
                    steal_at.set(Some(steal_at.get().map_or(at, |t| t.min(at))));
                    return false;
                }
                true
            };
            let Some(waiter) = queue.take_for(node, may_steal) else {
                break;
            };
            if waiter.placed.is_closed() {
                continue;
            }
            let reservation = if has_room {
                self.reserve(state, node, &queue.demand)
            } else {
                match self.queue_on_busy_node(state, &queue.demand, &waiter.function, Some(node)) {
                    Some(reservation) => reservation,
                    None => {
                        queue.put_back(waiter);
                        break;
                    }
                }
            };
            let lease = self.lease(state, reservation, &waiter.function);
            if let Err(Ok(lease)) = waiter.placed.send(Ok(lease)) {
                lease.reservation.give_back(state);
            }
        }
        if let Some(at) = steal_at.get() {
            self.steal_later(state, at);
        }
    }

    /// Looks at the waiters again at `at`, when a node with room may steal one it may not
    /// steal yet. Without it, a node that freed up before a waiter's time to wait for its own
    /// node ([`waiting::steal_after`]) was up would stay idle until the next task ended or
    /// the next liveness tick (half a second): in TPC-H's short stages on nodes of one CPU, a
    /// task waited out its sibling's whole run at the node holding its inputs while the other
    /// node was idle.
    fn steal_later(&self, state: &mut HeadState, at: Instant) {
        if state.steal_check.is_some_and(|due| due <= at) {
            return;
        }
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        state.steal_check = Some(at);
        let head = self.me.clone();
        runtime.spawn(async move {
            tokio::time::sleep_until(at.into()).await;
            let Some(head) = head.upgrade() else {
                return;
            };
            let mut state = head.state.lock();
            if state.steal_check == Some(at) {
                state.steal_check = None;
            }
            head.dispatch(&mut state);
        });
    }

    /// What it takes to run a task of `function` on the node `reservation` is on.
    fn lease(&self, state: &HeadState, reservation: Reservation, function: &str) -> Lease {
        let Some(node) = state.nodes.get(&reservation.node) else {
            unreachable!("a node is forgotten only after its reservations are given back")
        };
        Lease {
            short: state
                .durations
                .get(function)
                .is_some_and(|mean| short_task_queue(*mean).is_some()),
            events_node: node.events_node,
            link: Arc::clone(&node.link),
            reservation,
        }
    }

    /// The executable hash of the job with these id bytes.
    fn executable_of(&self, job: &[u8]) -> Result<String> {
        let job = JobId::from_slice(job)?;
        self.state
            .lock()
            .jobs
            .get(&job)
            .cloned()
            .ok_or_else(|| Error::Internal(format!("unknown job {job}: register it first")))
    }

    /// A client of the live node at `address`.
    fn client_for(&self, address: &str) -> Option<NodeClient<AuthChannel>> {
        let state = self.state.lock();
        state
            .nodes
            .values()
            .find(|n| n.alive && n.address == address)
            .map(|n| n.link.client.clone())
    }

    /// Places and runs one task, retrying on machine failures within its retry budget.
    async fn submit(&self, mut request: proto::TaskRequest) -> Result<proto::TaskSuccess> {
        request.executable_hash = self.executable_of(&request.job_id)?;
        let demand: Resources = request.resources.clone().unwrap_or_default().into();
        let mut input_bytes: HashMap<NodeId, u64> = HashMap::new();
        for input in &request.inputs {
            *input_bytes
                .entry(NodeId::from_slice(&input.node_id)?)
                .or_default() += input.size_bytes;
        }
        let mut attempt = 0;
        let tasks = &self.metrics.tasks;
        tasks.submitted.inc();
        let mut track = self.events.submitted(
            JobId::from_slice(&request.job_id)?,
            &request.label,
            &demand,
            input_bytes.values().sum(),
        );
        loop {
            let lease = self
                .acquire(&demand, &input_bytes, &request.label, &request.function)
                .await?;
            request.pipeline = lease.short;
            self.events.placed(&mut track, lease.events_node);
            // Boxed: a task waiting for a node then holds only what it needs to be placed.
            let outcome = Box::pin(self.run_on(&lease, &request)).await;
            let wall_ns = outcome
                .as_ref()
                .ok()
                .map(|success| success.stats.as_ref().map_or(0, |s| s.wall_ns));
            self.ended_on_node(lease.reservation, &request.function, wall_ns);
            let retry = matches!(&outcome, Err(e) if e.is_retryable()
                && attempt < request.max_retries
                && !self.input_gone(e));
            let ran_on = crate::events::RanOn {
                node: lease.events_node,
                attempt,
            };
            self.events
                .ended(&mut track, &request, ran_on, outcome.as_ref(), retry);
            match outcome {
                Err(e) if retry => {
                    attempt += 1;
                    tasks.retried.inc();
                    tracing::warn!(task = %request.label, attempt, error = %e, "retrying task");
                }
                Ok(success) => {
                    tasks.finished.inc();
                    let wall_ns = success.stats.as_ref().map_or(0, |s| s.wall_ns);
                    self.metrics.task_seconds.observe(wall_ns as f64 / 1e9);
                    if let Some(output) = &success.output {
                        self.metrics.task_rows.inc_by(output.num_rows);
                        self.metrics.task_bytes_out.inc_by(output.size_bytes);
                        self.metrics
                            .task_bytes_in
                            .inc_by(input_bytes.values().sum());
                    }
                    return Ok(success);
                }
                Err(e) => {
                    tasks.failed.inc();
                    return Err(e);
                }
            }
        }
    }

    /// Runs `request` on the node `lease` holds resources on; fails if the node is lost first.
    async fn run_on(
        &self,
        lease: &Lease,
        request: &proto::TaskRequest,
    ) -> Result<proto::TaskSuccess> {
        tokio::select! {
            reply = lease.link.tasks.call(request.clone()) => match reply {
                Ok(reply) => match reply.result {
                    Some(task_reply::Result::Success(success)) => Ok(success),
                    Some(task_reply::Result::Error(error)) => Err(error.into_error()),
                    None => Err(Error::Internal("node sent an empty reply".into())),
                },
                Err(status) => {
                    if status.code() == tonic::Code::Unavailable {
                        self.unreachable(lease.reservation.node);
                    }
                    Err(Error::NodeLost {
                        node: lease.link.address.clone(),
                        task: request.label.clone(),
                        message: status.message().to_string(),
                    })
                }
            },
            _ = lease.link.lost.cancelled() => Err(Error::NodeLost {
                node: lease.link.address.clone(),
                task: request.label.clone(),
                message: "the node missed its heartbeats".into(),
            }),
        }
    }

    /// Every node the head knows, live or dead, by address.
    pub fn node_infos(&self) -> Vec<proto::NodeInfo> {
        let state = self.state.lock();
        let mut nodes: Vec<_> = state
            .nodes
            .iter()
            .map(|(id, n)| proto::NodeInfo {
                node_id: bytes::Bytes::copy_from_slice(id.as_bytes()),
                address: n.address.clone(),
                total: Some((&n.total).into()),
                available: state.capacity.get(*id).map(|c| c.available.into()),
                store: Some(n.store),
                alive: n.alive,
                running_tasks: n.running,
                millis_since_heartbeat: n.last_heartbeat.elapsed().as_millis() as u64,
                pid: n.pid,
                name: n.name.clone(),
                draining: n.draining,
                shared_dir: n.shared_dir.clone(),
                spill_dir: n.spill_dir.clone(),
            })
            .collect();
        nodes.sort_by(|a, b| a.address.cmp(&b.address));
        nodes
    }

    /// The demand waiting for resources, one entry per resource shape: what an operator (and
    /// an autoscaler) needs to see.
    pub fn pending_demand(&self) -> Vec<proto::PendingDemand> {
        let state = self.state.lock();
        state
            .waiting
            .values()
            .filter_map(|queue| {
                let waiting: Vec<&Waiter> =
                    queue.iter().filter(|w| !w.placed.is_closed()).collect();
                let oldest = waiting.iter().min_by_key(|w| w.seq)?;
                let fits_no_live_node = !state.capacity.could_fit(&queue.demand);
                Some(proto::PendingDemand {
                    demand: Some((&queue.demand).into()),
                    label: oldest.label.clone(),
                    count: waiting.len() as u64,
                    waited_millis: oldest.since.elapsed().as_millis() as u64,
                    fits_no_live_node,
                })
            })
            .collect()
    }
}

type ChunkStream = Pin<Box<dyn Stream<Item = Result<proto::ExecutableChunk, Status>> + Send>>;

#[tonic::async_trait]
impl HeadRpc for Head {
    async fn register_node(
        &self,
        request: Request<proto::RegisterNodeRequest>,
    ) -> Result<Response<proto::RegisterNodeReply>, Status> {
        let r = request.into_inner();
        let id = proto::parse_id(&r.node_id, NodeId::from_slice, "node_id")?;
        if self.state.lock().retired.contains_key(&id) {
            return Err(Status::failed_precondition(format!(
                "node {} was stopped by the autoscaler; it may not register again",
                r.address
            )));
        }
        let client = NodeClient::new(
            server::lazy_channel(&r.address, &self.config.token)
                .map_err(|e| Status::invalid_argument(e.to_string()))?,
        );
        let total: Resources = r.resources.unwrap_or_default().into();
        tracing::info!(node = ?id, address = %r.address, resources = ?total, "node registered");
        self.events.cluster(
            crate::events::EventKind::NodeJoined,
            format!(
                "node {}{} joined with {}",
                r.name,
                if r.name.is_empty() {
                    r.address.clone()
                } else {
                    format!(" ({})", r.address)
                },
                crate::autoscaler::plan::describe(&total)
            ),
        );
        // Until its first heartbeat, the node's store is empty and has the budget it asked
        // for as memory (what `manta status` shows right after `manta start`).
        let store = proto::StoreUsage {
            budget_bytes: total.memory_bytes,
            ..Default::default()
        };
        self.join(
            id,
            Joining {
                address: r.address,
                name: r.name,
                shared_dir: r.shared_dir,
                spill_dir: r.spill_dir,
                total,
                store,
                pid: r.pid,
                tasks: node_tasks(&client),
                client,
            },
        );
        Ok(Response::new(proto::RegisterNodeReply {
            heartbeat_interval_ms: self.config.heartbeat_interval.as_millis() as u64,
        }))
    }

    async fn heartbeat(
        &self,
        request: Request<proto::HeartbeatRequest>,
    ) -> Result<Response<proto::HeartbeatReply>, Status> {
        let r = request.into_inner();
        let id = proto::parse_id(&r.node_id, NodeId::from_slice, "node_id")?;
        let mut state = self.state.lock();
        let known = match state.nodes.get_mut(&id) {
            Some(node) if node.alive => {
                node.last_heartbeat = Instant::now();
                node.store = r.store.unwrap_or_default();
                true
            }
            _ => false,
        };
        Ok(Response::new(proto::HeartbeatReply { known }))
    }

    async fn list_nodes(
        &self,
        _: Request<proto::ListNodesRequest>,
    ) -> Result<Response<proto::ListNodesReply>, Status> {
        Ok(Response::new(proto::ListNodesReply {
            nodes: self.node_infos(),
            pending: self.pending_demand(),
            autoscaler: self.autoscaler_status(),
        }))
    }

    async fn register_job(
        &self,
        request: Request<proto::RegisterJobRequest>,
    ) -> Result<Response<proto::RegisterJobReply>, Status> {
        let r = request.into_inner();
        let job = JobId::random();
        let has_executable = self.executables.contains(&r.executable_hash);
        self.state.lock().jobs.insert(job, r.executable_hash);
        self.events.job_registered(job, &r.submission_id);
        tracing::info!(job = %job, has_executable, "job registered");
        Ok(Response::new(proto::RegisterJobReply {
            job_id: bytes::Bytes::copy_from_slice(job.as_bytes()),
            has_executable,
        }))
    }

    async fn upload_executable(
        &self,
        request: Request<Streaming<proto::ExecutableChunk>>,
    ) -> Result<Response<proto::UploadReply>, Status> {
        let mut chunks = request.into_inner();
        let first = chunks
            .message()
            .await?
            .ok_or_else(|| Status::invalid_argument("empty upload"))?;
        let internal = |e: Error| Status::internal(e.to_string());
        let mut writer = self.executables.writer(&first.hash).map_err(internal)?;
        writer.write(&first.data).map_err(internal)?;
        while let Some(chunk) = chunks.message().await? {
            writer.write(&chunk.data).map_err(internal)?;
        }
        writer.finish().map_err(internal)?;
        Ok(Response::new(proto::UploadReply {}))
    }

    type DownloadExecutableStream = ChunkStream;

    async fn download_executable(
        &self,
        request: Request<proto::DownloadRequest>,
    ) -> Result<Response<ChunkStream>, Status> {
        let hash = request.into_inner().hash;
        if !self.executables.contains(&hash) {
            return Err(Status::not_found(format!("no executable with hash {hash}")));
        }
        let path = self.executables.path(&hash);
        let file = tokio::fs::File::open(&path)
            .await
            .map_err(|e| Status::internal(format!("{}: {e}", path.display())))?;
        let stream = tokio_util::io::ReaderStream::with_capacity(file, 1 << 20);
        let chunks = futures::StreamExt::map(stream, move |data| {
            data.map(|data| proto::ExecutableChunk {
                hash: String::new(),
                data,
            })
            .map_err(|e| Status::internal(e.to_string()))
        });
        Ok(Response::new(Box::pin(chunks)))
    }

    type SubmitTasksStream = task_stream::ReplyStream;

    async fn submit_tasks(
        &self,
        request: Request<Streaming<proto::TaskCalls>>,
    ) -> Result<Response<task_stream::ReplyStream>, Status> {
        let head = self
            .me
            .upgrade()
            .ok_or_else(|| Status::unavailable("the head is stopping"))?;
        let replies = task_stream::serve(request.into_inner(), move |task| {
            let head = Arc::clone(&head);
            async move {
                match head.submit(task).await {
                    // The caller has it (over its result link, and confirmed it before the
                    // node reported here) and has let go of the call: no answer.
                    Ok(success) if success.delivered => {
                        head.metrics.task_answers.none.inc();
                        None
                    }
                    Ok(success) => {
                        head.metrics.task_answers.result.inc();
                        if let Some(inline) =
                            success.output.as_ref().and_then(|o| o.inline.as_ref())
                        {
                            head.metrics
                                .relayed_result_bytes
                                .inc_by(inline.len() as u64);
                        }
                        Some(proto::TaskReply {
                            result: Some(task_reply::Result::Success(success)),
                        })
                    }
                    Err(error) => {
                        head.metrics.task_answers.failure.inc();
                        Some(proto::TaskReply::failed(&error))
                    }
                }
            }
        });
        Ok(Response::new(replies))
    }

    async fn end_job(
        &self,
        request: Request<proto::EndJobRequest>,
    ) -> Result<Response<proto::EndJobReply>, Status> {
        let r = request.into_inner();
        let job = proto::parse_id(&r.job_id, JobId::from_slice, "job_id")?;
        self.finish_job(job).await;
        Ok(Response::new(proto::EndJobReply {}))
    }

    type HoldJobStream = Pin<Box<dyn Stream<Item = Result<proto::HoldJobReply, Status>> + Send>>;

    async fn hold_job(
        &self,
        request: Request<proto::EndJobRequest>,
    ) -> Result<Response<Self::HoldJobStream>, Status> {
        let job = proto::parse_id(&request.into_inner().job_id, JobId::from_slice, "job_id")?;
        if !self.state.lock().jobs.contains_key(&job) {
            return Err(Status::not_found(format!("no job {job}")));
        }
        let head = self
            .me
            .upgrade()
            .ok_or_else(|| Status::unavailable("the head is stopping"))?;
        let held = JobHeld { head, job };
        // Never yields: it ends when the driver's connection does, dropping `held`.
        let stream = futures::stream::unfold(held, |held| async move {
            let _held = held;
            futures::future::pending::<Option<(Result<proto::HoldJobReply, Status>, JobHeld)>>()
                .await
        });
        Ok(Response::new(Box::pin(stream)))
    }

    async fn create_actor(
        &self,
        request: Request<proto::CreateActorRequest>,
    ) -> Result<Response<proto::ActorInfo>, Status> {
        Head::create_actor(self, request.into_inner())
            .await
            .map(Response::new)
    }

    async fn get_actor(
        &self,
        request: Request<proto::GetActorRequest>,
    ) -> Result<Response<proto::ActorInfo>, Status> {
        Head::get_actor(self, request.into_inner())
            .await
            .map(Response::new)
    }

    async fn actor_died(
        &self,
        request: Request<proto::ActorDiedRequest>,
    ) -> Result<Response<proto::ActorReply>, Status> {
        Head::actor_died(self, request.into_inner())?;
        Ok(Response::new(proto::ActorReply {}))
    }

    async fn kill_actor(
        &self,
        request: Request<proto::KillActorRequest>,
    ) -> Result<Response<proto::ActorReply>, Status> {
        Head::kill_actor(self, request.into_inner())?;
        Ok(Response::new(proto::ActorReply {}))
    }

    async fn submit_job(
        &self,
        request: Request<proto::SubmitJobRequest>,
    ) -> Result<Response<proto::JobInfo>, Status> {
        let r = request.into_inner();
        let program = if r.executable_hash.is_empty() {
            if r.command.is_empty() {
                return Err(Status::invalid_argument(
                    "a job needs an executable or a command",
                ));
            }
            PathBuf::from(&r.command)
        } else {
            if !self.executables.contains(&r.executable_hash) {
                return Err(Status::failed_precondition(format!(
                    "no executable with hash {}: upload it first",
                    r.executable_hash
                )));
            }
            self.executables.path(&r.executable_hash)
        };
        let name = match r.entrypoint_name.is_empty() {
            true => r.command.clone(),
            false => r.entrypoint_name.clone(),
        };
        let entrypoint = std::iter::once(name)
            .chain(r.args.iter().cloned())
            .collect::<Vec<_>>()
            .join(" ");
        let spec = crate::jobs::JobSpec {
            program,
            args: r.args,
            env: r.env.into_iter().collect(),
            entrypoint,
        };
        self.jobs
            .submit(spec)
            .map(Response::new)
            .map_err(job_status)
    }

    async fn get_job(
        &self,
        request: Request<proto::GetJobRequest>,
    ) -> Result<Response<proto::JobInfo>, Status> {
        self.jobs
            .get(&request.into_inner().job_id)
            .map(Response::new)
            .map_err(job_status)
    }

    async fn list_jobs(
        &self,
        _: Request<proto::ListJobsRequest>,
    ) -> Result<Response<proto::ListJobsReply>, Status> {
        Ok(Response::new(proto::ListJobsReply {
            jobs: self.jobs.list(),
        }))
    }

    async fn stop_job(
        &self,
        request: Request<proto::GetJobRequest>,
    ) -> Result<Response<proto::JobInfo>, Status> {
        self.jobs
            .stop(&request.into_inner().job_id)
            .map(Response::new)
            .map_err(job_status)
    }

    type JobLogsStream = Pin<Box<dyn Stream<Item = Result<proto::JobLogChunk, Status>> + Send>>;

    async fn job_logs(
        &self,
        request: Request<proto::JobLogsRequest>,
    ) -> Result<Response<Self::JobLogsStream>, Status> {
        let r = request.into_inner();
        let chunks = self
            .jobs
            .logs(&r.job_id, r.offset, r.follow)
            .map_err(job_status)?;
        let chunks = futures::StreamExt::map(chunks, |chunk| {
            chunk
                .map(|data| proto::JobLogChunk { data })
                .map_err(job_status)
        });
        Ok(Response::new(Box::pin(chunks)))
    }

    type TaskEventsStream =
        Pin<Box<dyn Stream<Item = Result<proto::TaskEventBatch, Status>> + Send>>;

    async fn report_reconstruction(
        &self,
        request: Request<proto::ReportReconstructionRequest>,
    ) -> Result<Response<proto::ReportReconstructionReply>, Status> {
        let r = request.into_inner();
        let job = proto::parse_id(&r.job_id, JobId::from_slice, "job_id")?;
        let object = proto::parse_id(
            &r.object_id,
            manta_engine::ObjectId::from_slice,
            "object_id",
        )?;
        // A label is short; a longer one is cut (the event ring holds sentences, not payloads).
        let task: String = r.task.chars().take(200).collect();
        self.events.cluster(
            crate::events::EventKind::LineageReconstruction,
            format!(
                "job {job} made lost object {object} again ({} rows) by running {task} again",
                r.rows
            ),
        );
        Ok(Response::new(proto::ReportReconstructionReply {}))
    }

    async fn explain_job(
        &self,
        request: Request<proto::ExplainJobRequest>,
    ) -> Result<Response<proto::ExplainJobReply>, Status> {
        Ok(Response::new(proto::ExplainJobReply {
            lines: self.explain_stall(&request.into_inner().job),
        }))
    }

    async fn dashboard_link(
        &self,
        request: Request<proto::DashboardLinkRequest>,
    ) -> Result<Response<proto::DashboardLinkReply>, Status> {
        let dashboard = self
            .dashboard
            .get()
            .and_then(Weak::upgrade)
            .ok_or_else(|| {
                Status::failed_precondition(
                    "this head serves no dashboard (started with --no-dashboard, on TLS, or \
                     its port was taken)",
                )
            })?;
        Ok(Response::new(proto::DashboardLinkReply {
            url: dashboard.login_link(&request.into_inner().next),
            expires_in_seconds: crate::dashboard::login::TICKET_LIFETIME.as_secs(),
        }))
    }

    async fn task_events(
        &self,
        request: Request<proto::TaskEventsRequest>,
    ) -> Result<Response<Self::TaskEventsStream>, Status> {
        let events = self.events.task_events(&request.into_inner().job);
        let batches: Vec<_> = events
            .chunks(TASK_EVENTS_PER_MESSAGE)
            .map(|chunk| {
                Ok(proto::TaskEventBatch {
                    events: chunk.to_vec(),
                })
            })
            .collect();
        Ok(Response::new(Box::pin(futures::stream::iter(batches))))
    }
}

/// How many task events go in one message of `TaskEvents`.
const TASK_EVENTS_PER_MESSAGE: usize = 1_000;

/// A jobs error as a gRPC status.
fn job_status(error: Error) -> Status {
    match error {
        Error::NoSuchJob { .. } => Status::not_found(error.to_string()),
        _ => Status::internal(error.to_string()),
    }
}

/// Runs a head on `host:port` until SIGTERM or Ctrl-C; `ready` is called with the bound address.
pub async fn run_head(
    host: &str,
    port: u16,
    config: HeadConfig,
    ready: impl FnOnce(std::net::SocketAddr),
) -> Result<()> {
    let (listener, address) = server::bind(host, port).await?;
    let stop = server::shutdown_signal();
    // Processes of this user on this machine find the token here; removed when the head stops.
    let _token_file = crate::cluster_token::TokenFile::write(address.port(), &config.token)?;
    let autoscaler_config = config.autoscaler.clone();
    let token = config.token.clone();
    let scheme = if config.tls.is_some() { "https://" } else { "" };
    let host = config
        .advertise_host
        .clone()
        .unwrap_or_else(|| address.ip().to_string());
    let dashboard_port = config.dashboard_port;
    if dashboard_port.is_some() && config.tls.is_some() {
        return Err(Error::Internal(
            "the dashboard (--dashboard-port) does not serve TLS yet: leave it off on a TLS \
             cluster and use `manta job` and `manta status` (gRPC over TLS)"
                .into(),
        ));
    }
    let head_address = format!(
        "{scheme}{}",
        std::net::SocketAddr::new(host.parse().unwrap_or(address.ip()), address.port())
    );
    let head = Head::new(config)?;
    head.jobs.set_head_address(head_address.clone());
    let stop_http = CancellationToken::new();
    let bound = match dashboard_port {
        Some(port) => match server::bind(&address.ip().to_string(), port).await {
            Ok(bound) => Some(bound),
            // The default port is taken (by another head on this machine, say): the cluster
            // runs without a dashboard rather than not at all.
            Err(e) if port == crate::dashboard::DEFAULT_PORT => {
                tracing::warn!("no dashboard: {e}");
                eprintln!(
                    "No dashboard: port {port} is taken ({e}); pass --dashboard-port to choose another"
                );
                None
            }
            Err(e) => return Err(e),
        },
        None => None,
    };
    if let Some((listener, http_address)) = bound {
        tracing::info!(
            "dashboard at http://{http_address}/ (JSON at /api/..., metrics at /metrics)"
        );
        eprintln!(
            "Dashboard: http://{http_address}/ (sign in with the cluster token, or open the link \
             `manta dashboard` prints); JSON API at /api/..., metrics at /metrics"
        );
        let url = format!(
            "http://{}",
            std::net::SocketAddr::new(
                host.parse().unwrap_or(http_address.ip()),
                http_address.port()
            )
        );
        let dashboard = crate::dashboard::Dashboard::new(Arc::clone(&head), url);
        let _ = head.dashboard.set(Arc::downgrade(&dashboard));
        let router = dashboard.router();
        tokio::spawn(Arc::clone(&dashboard).sample(stop_http.clone()));
        let stop = stop_http.clone();
        tokio::spawn(async move {
            let served = axum::serve(listener, router)
                .with_graceful_shutdown(async move { stop.cancelled().await })
                .await;
            if let Err(e) = served {
                tracing::warn!("the dashboard stopped: {e}");
            }
        });
    }
    let stop_autoscaler = CancellationToken::new();
    let autoscaler = autoscaler_config.map(|config| {
        let head_address = head_address.clone();
        let autoscaler =
            crate::autoscaler::Autoscaler::new(Arc::clone(&head), config, head_address, token);
        tokio::spawn(autoscaler.run(stop_autoscaler.clone()))
    });
    ready(address);
    let served = head.serve(listener, stop).await;
    stop_http.cancel();
    // The nodes the autoscaler launched stop with the head.
    stop_autoscaler.cancel();
    if let Some(autoscaler) = autoscaler {
        let _ = autoscaler.await;
    }
    served
}

#[cfg(test)]
mod tests {
    use std::pin::pin;

    use futures::poll;

    use super::*;

    fn head_with_one_cpu(dir: &std::path::Path) -> (Arc<Head>, NodeId) {
        head_with_one_cpu_waiting(dir, PENDING_TIMEOUT)
    }

    /// [`head_with_one_cpu`] whose demand that fits no node waits `pending_timeout`.
    fn head_with_one_cpu_waiting(
        dir: &std::path::Path,
        pending_timeout: Duration,
    ) -> (Arc<Head>, NodeId) {
        head_with_one_cpu_and(HeadConfig {
            cache_dir: dir.to_path_buf(),
            pending_timeout,
            ..HeadConfig::default()
        })
    }

    /// A head with `config` and one node of one CPU.
    fn head_with_one_cpu_and(config: HeadConfig) -> (Arc<Head>, NodeId) {
        let head = Head::new(config).unwrap();
        let id = add_node(&head, Resources::one_cpu());
        (head, id)
    }

    /// Adds a node offering `total` that nothing answers at (tests here only place tasks).
    fn add_node(head: &Head, total: Resources) -> NodeId {
        let id = NodeId::random();
        let client =
            NodeClient::new(server::lazy_channel("127.0.0.1:9", &Token::generate()).unwrap());
        head.join(
            id,
            Joining {
                address: "http://127.0.0.1:9".into(),
                name: String::new(),
                shared_dir: String::new(),
                spill_dir: String::new(),
                total,
                store: proto::StoreUsage::default(),
                pid: 0,
                tasks: node_tasks(&client),
                client,
            },
        );
        id
    }

    /// On a busy cluster a freed CPU goes to a task whose inputs its node holds, before older
    /// tasks whose inputs are elsewhere; a task with no inputs keeps its place in line; and
    /// the tasks waiting at a lost node wait anywhere.
    #[tokio::test]
    async fn waiting_tasks_wait_at_the_node_holding_their_inputs() {
        let dir = tempfile::tempdir().unwrap();
        let (head, a) = head_with_one_cpu(dir.path());
        let b = add_node(&head, Resources::one_cpu());
        let c = add_node(&head, Resources::one_cpu());
        let (cpu, none) = (Resources::one_cpu(), HashMap::new());
        let on = |node: NodeId| HashMap::from([(node, 1000u64)]);
        let (on_a, on_b, on_c) = (on(a), on(b), on(c));
        let mut running = HashMap::new();
        for _ in 0..3 {
            let lease = head.acquire(&cpu, &none, "busy", "busy").await.unwrap();
            running.insert(lease.reservation.node, lease);
        }
        let mut at_b = pin!(head.acquire(&cpu, &on_b, "at b", "at b"));
        let mut at_a = pin!(head.acquire(&cpu, &on_a, "at a", "at a"));
        let mut anywhere = pin!(head.acquire(&cpu, &none, "anywhere", "anywhere"));
        let mut at_c = pin!(head.acquire(&cpu, &on_c, "at c", "at c"));
        for waiting in [
            at_b.as_mut(),
            at_a.as_mut(),
            anywhere.as_mut(),
            at_c.as_mut(),
        ] {
            assert!(poll!(waiting).is_pending());
        }

        drop(running.remove(&a));
        let ran_at_a = at_a.await.unwrap();
        assert_eq!(
            ran_at_a.reservation.node, a,
            "a runs the task whose inputs it holds"
        );
        assert!(poll!(at_b.as_mut()).is_pending(), "b's task waits for b");

        drop(ran_at_a);
        let anywhere = anywhere.await.unwrap();
        assert_eq!(
            anywhere.reservation.node, a,
            "a takes the task that may run anywhere"
        );

        head.lose_nodes(&[c]);
        drop(running.remove(&b));
        let first = at_b.await.unwrap();
        assert_eq!(first.reservation.node, b);
        drop(first);
        let at_c = at_c.await.unwrap();
        assert_eq!(
            at_c.reservation.node, b,
            "c's task ran where there was room once c was lost"
        );
    }

    /// A node that frees up while a task waits at another, busy node (the one holding its
    /// inputs) takes that task once it has waited its while, without another task ending or a
    /// liveness tick (which this head, never served, does not have).
    #[tokio::test]
    async fn an_idle_node_steals_a_waiting_task_without_another_event() {
        let dir = tempfile::tempdir().unwrap();
        let (head, a) = head_with_one_cpu(dir.path());
        let b = add_node(&head, Resources::one_cpu());
        let (cpu, none) = (Resources::one_cpu(), HashMap::new());
        let mut running = HashMap::new();
        for _ in 0..2 {
            let lease = head.acquire(&cpu, &none, "busy", "busy").await.unwrap();
            running.insert(lease.reservation.node, lease);
        }
        let inputs_on_a = HashMap::from([(a, 1000u64)]);
        let mut at_a = pin!(head.acquire(&cpu, &inputs_on_a, "at a", "at a"));
        assert!(poll!(at_a.as_mut()).is_pending());
        drop(running.remove(&b));
        let stolen = tokio::time::timeout(Duration::from_secs(60), at_a)
            .await
            .expect("the task waited for its busy node while another had room")
            .unwrap();
        assert_eq!(stolen.reservation.node, b);
        assert!(running.contains_key(&a), "a is still busy");
    }

    /// Whether a task is short enough to queue on a busy node is told by its function's
    /// history, not its label: a SQL stage's label ("SQL stage 1, partition 0 of 2 (...)")
    /// names a place that every query's plan has, doing different work in each.
    #[tokio::test]
    async fn a_task_queues_on_a_busy_node_by_its_functions_history() {
        let dir = tempfile::tempdir().unwrap();
        let (head, _) = head_with_one_cpu(dir.path());
        let (cpu, none) = (Resources::one_cpu(), HashMap::new());
        let label = "SQL stage 1, partition 0 of 1 (FilterExec)";
        for _ in 0..3 {
            let lease = head.acquire(&cpu, &none, label, "tiny").await.unwrap();
            head.ended_on_node(lease.reservation, "tiny", Some(1_000));
        }
        let busy = head.acquire(&cpu, &none, "busy", "busy").await.unwrap();
        let queued = match poll!(pin!(head.acquire(&cpu, &none, "another label", "tiny"))) {
            std::task::Poll::Ready(lease) => lease.unwrap(),
            std::task::Poll::Pending => panic!("a short function's task queues on the busy node"),
        };
        assert!(queued.short && queued.reservation.queued);
        let mut other = pin!(head.acquire(&cpu, &none, label, "other"));
        assert!(
            poll!(other.as_mut()).is_pending(),
            "a function without a short history waits for a free CPU, whatever its label"
        );
        drop(queued);
        drop(busy);
        assert!(!other.await.unwrap().short);
    }

    #[tokio::test]
    async fn waiting_tasks_get_freed_resources_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let (head, node) = head_with_one_cpu(dir.path());
        let (cpu, none) = (Resources::one_cpu(), HashMap::new());
        let first = head.acquire(&cpu, &none, "first", "first").await.unwrap();
        let mut second = pin!(head.acquire(&cpu, &none, "second", "second"));
        let mut third = pin!(head.acquire(&cpu, &none, "third", "third"));
        assert!(poll!(second.as_mut()).is_pending());
        assert!(poll!(third.as_mut()).is_pending());
        {
            // A waiter whose caller goes away is skipped, not given the CPU.
            let mut gone = pin!(head.acquire(&cpu, &none, "gone", "gone"));
            assert!(poll!(gone.as_mut()).is_pending());
        }
        drop(first);
        let second = match poll!(second.as_mut()) {
            std::task::Poll::Ready(lease) => lease.unwrap(),
            std::task::Poll::Pending => panic!("the second task waits on a free CPU"),
        };
        assert!(poll!(third.as_mut()).is_pending());
        drop(second);
        let third = third.await.unwrap();
        drop(third);
        let state = head.state.lock();
        assert_eq!(
            *state.capacity.get(node).expect("known").available,
            Resources::one_cpu()
        );
        assert_eq!(state.nodes[&node].running, 0);
        assert!(state.waiting.is_empty());
    }

    /// With no time to wait for a node that fits, a task no node can run fails at once,
    /// naming itself; with time, it waits (queued, not failed) for one.
    #[tokio::test]
    async fn a_task_no_node_can_run_waits_then_fails_naming_itself() {
        let dir = tempfile::tempdir().unwrap();
        let big = Resources {
            cpus: 4.0,
            ..Resources::default()
        };
        let (head, _) = head_with_one_cpu_waiting(dir.path(), Duration::ZERO);
        let error = match head.acquire(&big, &HashMap::new(), "big", "big").await {
            Err(e) => e.to_string(),
            Ok(_) => panic!("4 CPUs on a 1-CPU node"),
        };
        assert!(error.contains("big"), "{error}");

        let (head, _) = head_with_one_cpu(dir.path());
        let no_inputs = HashMap::new();
        let mut acquiring = Box::pin(head.acquire(&big, &no_inputs, "big", "big"));
        assert!(futures::poll!(&mut acquiring).is_pending());
        assert_eq!(head.pending_demand().len(), 1);
        assert!(head.pending_demand()[0].fits_no_live_node);

        // Its caller goes away (its job ended): the next dispatch forgets it rather than
        // counting it as demand until it would have expired.
        drop(acquiring);
        let mut state = head.state.lock();
        head.dispatch(&mut state);
        assert!(state.waiting.is_empty());
    }

    #[tokio::test]
    async fn with_an_autoscaler_demand_no_node_type_could_meet_fails_at_once() {
        let dir = tempfile::tempdir().unwrap();
        let cpus = |n: f64| Resources {
            cpus: n,
            ..Resources::default()
        };
        let autoscaler = crate::autoscaler::AutoscalerConfig {
            node_types: vec![crate::autoscaler::NodeType {
                name: "cpu2".into(),
                resources: cpus(2.0),
                min_nodes: 0,
                max_nodes: 2,
            }],
            provider: crate::autoscaler::ProviderConfig::Command {
                launch: "false".into(),
                terminate: "true".into(),
            },
            idle_timeout: Duration::from_secs(60),
            upscaling_speed: 1.0,
            update_interval: Duration::from_secs(1),
            launch_timeout: Duration::from_secs(60),
        };
        let (head, _) = head_with_one_cpu_and(HeadConfig {
            cache_dir: dir.path().to_path_buf(),
            autoscaler: Some(autoscaler),
            ..HeadConfig::default()
        });
        let none = HashMap::new();
        let error = match head.acquire(&cpus(4.0), &none, "huge", "huge").await {
            Err(e) => e.to_string(),
            Ok(_) => panic!("4 CPUs placed on a 1-CPU node"),
        };
        assert!(
            error.contains("huge")
                && error.contains("nor does any node type the autoscaler can launch: cpu2"),
            "{error}"
        );
        // Two CPUs: a node type offers them, so the task waits for the autoscaler.
        let pair = cpus(2.0);
        let acquiring = head.acquire(&pair, &none, "pair", "pair");
        tokio::pin!(acquiring);
        assert!(futures::poll!(&mut acquiring).is_pending());
        assert_eq!(head.load().pending, vec![(cpus(2.0), 1)]);
    }

    #[tokio::test]
    async fn a_node_the_autoscaler_stopped_may_not_register_again() {
        let dir = tempfile::tempdir().unwrap();
        let (head, node) = head_with_one_cpu(dir.path());
        head.forget_node(node);
        let again = proto::RegisterNodeRequest {
            node_id: bytes::Bytes::copy_from_slice(node.as_bytes()),
            address: "http://127.0.0.1:9".into(),
            resources: Some((&Resources::one_cpu()).into()),
            pid: 0,
            name: "cpu1-0".into(),
            shared_dir: String::new(),
            spill_dir: String::new(),
        };
        let refused = HeadRpc::register_node(&*head, Request::new(again))
            .await
            .unwrap_err();
        assert_eq!(refused.code(), tonic::Code::FailedPrecondition);
        assert!(head.load().nodes.is_empty());
    }

    #[tokio::test]
    async fn a_busy_node_is_not_drained_and_a_drained_one_takes_no_work() {
        let dir = tempfile::tempdir().unwrap();
        let (head, node) = head_with_one_cpu(dir.path());
        let (cpu, none) = (Resources::one_cpu(), HashMap::new());
        let lease = head.acquire(&cpu, &none, "first", "first").await.unwrap();
        assert!(head.load().nodes[0].busy);
        assert!(!head.drain_if_idle(node));
        drop(lease);
        assert!(head.drain_if_idle(node));
        let mut waiting = pin!(head.acquire(&cpu, &none, "second", "second"));
        assert!(poll!(&mut waiting).is_pending());
        head.undrain(node);
        assert!(waiting.await.is_ok());
    }
}
