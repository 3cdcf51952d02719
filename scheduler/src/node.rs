//! The node daemon: one machine's object store, Flight endpoint and worker processes.
//!
//! A node registers with the head (its resources), heartbeats its store usage, and serves three
//! gRPC services on one port: `Node` (the head runs tasks here; drivers free objects),
//! `Worker` (its worker processes attach here) and Arrow Flight (other nodes and drivers pull
//! objects). Running a task means: make sure the job's executable is cached, pull the inputs
//! that live elsewhere over Flight into the local store (a reduce task's partitions with one
//! call per source node: [`partitions`]), pin them, hand the task to a worker process, and
//! adopt the output file the worker wrote into shared memory.

use std::collections::HashMap;
use std::ops::Range;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures::Stream;
use manta_engine::{
    ActorId, JobId, NodeId, ObjectId, ObjectStore, Resources, StoreConfig, TaskStats,
};
use manta_flight::{FlightPool, ObjectFlightService};
use parking_lot::Mutex;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};

use crate::error::{Error, Result};
use crate::executables::{ExecutableCache, JobExecutable, LoadedExecutable};
use crate::proto::head_client::HeadClient;
use crate::proto::node_server::{Node as NodeRpc, NodeServer};
use crate::proto::worker_server::{Worker as WorkerRpc, WorkerServer};
use crate::proto::{self, task_reply, worker_done, worker_message};
use crate::server;
use crate::task_stream;
use crate::together::Together;
use crate::worker_pool::{WorkerConn, WorkerPools};
use manta_flight::auth::{AuthChannel, guard};

mod partitions;
mod result_links;

use partitions::Scratch;

/// How a node daemon is set up.
#[derive(Clone, Debug)]
pub struct NodeConfig {
    /// The head's address.
    pub head_address: String,
    /// The IP address (or host name) advertised to the head and the other nodes, and bound
    /// unless [`NodeConfig::bind_host`] says otherwise.
    pub host: String,
    /// The address to bind, when not `host` (e.g. `0.0.0.0`, to listen on every interface
    /// while advertising one of them).
    pub bind_host: Option<String>,
    /// The port to bind (0: any free port).
    pub port: u16,
    /// CPUs offered to tasks.
    pub num_cpus: f64,
    /// Object store memory budget.
    pub object_store_memory: u64,
    /// Custom resources offered.
    pub custom_resources: std::collections::BTreeMap<String, f64>,
    /// Parent of the shared-memory session directory.
    pub shared_parent: PathBuf,
    /// Parent of the spill session directory.
    pub spill_parent: PathBuf,
    /// Where executables are cached.
    pub cache_dir: PathBuf,
    /// The cluster token (default: `MANTA_TOKEN`, else the head's token file on this machine;
    /// see [`crate::cluster_token`]).
    pub token: Option<manta_flight::auth::Token>,
    /// Serve TLS with this certificate and key (the node's address is then `https://`).
    pub tls: Option<manta_flight::tls::ServerIdentity>,
    /// A PEM file of the certificate authorities this node trusts, handed to its worker
    /// processes (`MANTA_TLS_CA`); the node itself trusts what `manta_flight::tls` was given.
    pub tls_ca: Option<PathBuf>,
    /// How long to keep trying to join a head that is not up (yet) before giving up.
    pub join_timeout: Duration,
    /// A name the head lists this node by (the autoscaler names the nodes it launches, and
    /// knows them by it); may be empty.
    pub name: String,
    /// Serve Prometheus metrics at `/metrics` on this port of the bound address (0: a free
    /// one), behind the token.
    pub metrics_port: Option<u16>,
}

/// The default of [`NodeConfig::join_timeout`].
pub const JOIN_TIMEOUT: Duration = Duration::from_secs(60);

/// How long one registration may wait for the head's answer.
const REGISTER_DEADLINE: Duration = Duration::from_secs(10);

impl NodeConfig {
    /// Defaults for a node of this machine joining `head_address`.
    pub fn new(head_address: impl Into<String>) -> Self {
        let store = StoreConfig::shared(0);
        Self {
            head_address: head_address.into(),
            host: "127.0.0.1".into(),
            bind_host: None,
            port: 0,
            num_cpus: std::thread::available_parallelism()
                .map(|n| n.get() as f64)
                .unwrap_or(1.0),
            object_store_memory: 2 << 30,
            custom_resources: Default::default(),
            shared_parent: store.shared_parent.expect("shared config"),
            spill_parent: store.spill_parent,
            cache_dir: ExecutableCache::default_dir(),
            token: None,
            tls: None,
            tls_ca: None,
            join_timeout: JOIN_TIMEOUT,
            name: String::new(),
            metrics_port: None,
        }
    }
}

/// A running node daemon's state.
pub struct NodeDaemon {
    id: NodeId,
    address: String,
    name: String,
    store: Arc<ObjectStore>,
    flight: FlightPool,
    workers: Arc<WorkerPools>,
    executables: ExecutableCache,
    /// Executables loaded (opened and verified) since this node started, by hash.
    loaded_executables: Mutex<HashMap<String, Arc<LoadedExecutable>>>,
    head: HeadClient<AuthChannel>,
    /// The actors running here.
    actors: Mutex<HashMap<ActorId, LocalActor>>,
    /// One lock per object being pulled, so two tasks needing it pull it once.
    pulls: Mutex<HashMap<ObjectId, Arc<tokio::sync::Mutex<()>>>>,
    downloads: tokio::sync::Mutex<()>,
    metrics: crate::metrics::NodeMetrics,
    /// What its Flight service sent and received.
    flight_traffic: Arc<manta_flight::FlightTraffic>,
    /// Callers' result links (see [`result_links`]).
    result_links: Arc<result_links::ResultLinks>,
}

impl NodeDaemon {
    /// Its store's directories, as registered with the head.
    fn store_dirs(&self) -> StoreDirs {
        StoreDirs::of(&self.store)
    }

    /// Counts a task's outcome (and the bytes it pulled) in the node's metrics.
    fn count(&self, outcome: &Result<proto::TaskSuccess>) {
        let m = &self.metrics;
        match outcome {
            Ok(success) => {
                m.tasks_ok.inc();
                let pulled = success.stats.as_ref().map_or(0, |s| s.pulled_bytes);
                m.pulled_bytes.inc_by(pulled);
            }
            Err(_) => m.tasks_error.inc(),
        }
    }

    /// Every metric in Prometheus' text format, the gauges set from the node's state now.
    pub fn encode_metrics(&self) -> Vec<u8> {
        let usage: proto::StoreUsage = self.store.usage().into();
        self.metrics.store.set([&usage]);
        self.metrics.workers.set(self.workers.live_workers() as i64);
        self.metrics.set_flight(&self.flight_traffic);
        self.metrics.encode()
    }

    /// The node's id.
    pub fn id(&self) -> NodeId {
        self.id
    }

    /// The node's store.
    pub fn store(&self) -> &Arc<ObjectStore> {
        &self.store
    }

    /// The executable with `hash`, loaded (verified) once per node; the worker pool checks it
    /// is still in place before each worker it starts (see [`crate::executables`]).
    async fn job_executable(&self, hash: &str) -> Result<JobExecutable> {
        let loaded = self.loaded_executables.lock().get(hash).cloned();
        let loaded = match loaded {
            Some(loaded) => loaded,
            None => {
                let mut loaded = None;
                // A cached file that fails verification is deleted: fetch it once more.
                for _ in 0..2 {
                    self.download_executable(hash).await?;
                    let cache = self.executables.clone();
                    let hash = hash.to_string();
                    loaded = tokio::task::spawn_blocking(move || cache.load(&hash))
                        .await
                        .map_err(|e| Error::Internal(e.to_string()))??;
                    if loaded.is_some() {
                        break;
                    }
                }
                let loaded = Arc::new(loaded.ok_or_else(|| {
                    Error::Internal(format!(
                        "the executable {hash} from the head does not have that hash"
                    ))
                })?);
                self.loaded_executables
                    .lock()
                    .insert(hash.to_string(), Arc::clone(&loaded));
                loaded
            }
        };
        Ok(JobExecutable::new(loaded, self.executables.clone()))
    }

    /// The executable with `hash` from the cache, downloaded from the head if missing.
    async fn download_executable(&self, hash: &str) -> Result<PathBuf> {
        if self.executables.contains(hash) {
            return Ok(self.executables.path(hash));
        }
        let _one_at_a_time = self.downloads.lock().await;
        if self.executables.contains(hash) {
            return Ok(self.executables.path(hash));
        }
        let mut head = self.head.clone();
        let mut chunks = head
            .download_executable(proto::DownloadRequest {
                hash: hash.to_string(),
            })
            .await
            .map_err(|s| Error::rpc("DownloadExecutable", s))?
            .into_inner();
        let mut writer = self.executables.writer(hash)?;
        while let Some(chunk) = chunks
            .message()
            .await
            .map_err(|s| Error::rpc("DownloadExecutable", s))?
        {
            writer.write(&chunk.data)?;
        }
        writer.finish()
    }

    /// Makes `meta`'s object local (pulling it over Flight if needed); returns bytes pulled.
    async fn make_local(&self, meta: &manta_engine::ObjectMeta) -> Result<u64> {
        if self.store.contains(meta.id) {
            return Ok(0);
        }
        if meta.location.node == self.id {
            return Err(Error::ObjectLost {
                object: meta.id,
                node: self.address.clone(),
            });
        }
        let lock = Arc::clone(self.pulls.lock().entry(meta.id).or_default());
        let _guard = lock.lock().await;
        let pulled = if self.store.contains(meta.id) {
            0
        } else {
            self.flight
                .pull_into(&self.store, &meta.location, meta.id)
                .await
                .map_err(|e| Error::fetching(&meta.location.flight_address, meta.id, e))?
        };
        self.pulls.lock().remove(&meta.id);
        Ok(pulled)
    }

    /// [`make_local`](Self::make_local) for all of `metas` at once, then pins them (so none is
    /// spilled before the worker maps it); returns the pins and the bytes each pull moved.
    async fn make_all_local(
        &self,
        metas: &[manta_engine::ObjectMeta],
    ) -> Result<(Vec<manta_engine::Pin>, Vec<u64>)> {
        if metas.is_empty() {
            return Ok((Vec::new(), Vec::new()));
        }
        let pulled =
            futures::future::try_join_all(metas.iter().map(|m| self.make_local(m))).await?;
        let store = Arc::clone(&self.store);
        let ids: Vec<ObjectId> = metas.iter().map(|m| m.id).collect();
        // Off the async threads: an object spilled meanwhile is read back.
        let pins = tokio::task::spawn_blocking(move || {
            ids.into_iter()
                .map(|id| store.pin(id))
                .collect::<manta_engine::Result<Vec<_>>>()
        })
        .await
        .map_err(|e| Error::Internal(e.to_string()))??;
        Ok((pins, pulled))
    }

    /// Runs a task here, in a span carrying its task and stage ids (as its worker's does).
    async fn run(&self, request: proto::TaskRequest) -> Result<proto::TaskSuccess> {
        let span = tracing::info_span!(
            "task",
            task_id = %hex::encode(&request.task_id),
            stage = %crate::events::stage_of(&request.label),
            label = %request.label,
        );
        tracing::Instrument::instrument(self.run_in_span(request), span).await
    }

    async fn run_in_span(&self, request: proto::TaskRequest) -> Result<proto::TaskSuccess> {
        if !request.actor_id.is_empty() {
            return self.create_actor(request).await;
        }
        let job = JobId::from_slice(&request.job_id)?;
        let output_id = ObjectId::from_slice(&request.output_id)?;
        if self.store.contains(output_id) {
            // A retry of a task whose earlier attempt finished here after the head gave this
            // node up (a network partition it has rejoined from): that output was never
            // reported, and makes way for this attempt's (readers that mapped it keep it).
            tracing::info!(object = %output_id, "a retried task's unreported output is replaced");
            self.store.free(output_id);
        }
        let executable = self.job_executable(&request.executable_hash).await?;
        let mut prepared = self.prepare(&request).await?;
        let assignment = prepared.assignment.take().expect("just prepared");
        let (done, worker_pid) = self
            .workers
            .run(job, executable, assignment, request.pipeline)
            .await?;
        let mut success = self.finish(prepared, done).await?;
        success.worker_pid = worker_pid;
        Ok(success)
    }

    /// Starts a worker process for the actor `request` constructs, and runs the constructor
    /// on it; the actor then lives here until its worker dies or it is killed.
    async fn create_actor(&self, request: proto::TaskRequest) -> Result<proto::TaskSuccess> {
        let job = JobId::from_slice(&request.job_id)?;
        let actor = ActorId::from_slice(&request.actor_id)?;
        let executable = self.job_executable(&request.executable_hash).await?;
        let worker = self.workers.start_actor(job, executable, actor).await?;
        self.actors.lock().insert(
            actor,
            LocalActor {
                worker: Arc::clone(&worker),
                incarnation: request.actor_incarnation,
            },
        );
        let created = async {
            let mut prepared = self.prepare(&request).await?;
            let assignment = prepared.assignment.take().expect("just prepared");
            let lost = || Error::WorkerDied {
                task: request.label.clone(),
                node: self.address.clone(),
                message: format!("the actor's worker pid {} exited", worker.pid()),
            };
            let answer = worker.send(assignment).await.map_err(|_| lost())?;
            let done = answer.await.map_err(|_| lost())?;
            self.finish(prepared, done).await
        };
        match created.await {
            Ok(success) => {
                // The constructor's output is nothing; only its state in the worker matters.
                self.store.free(ObjectId::from_slice(&request.output_id)?);
                Ok(success)
            }
            Err(e) => {
                self.actors.lock().remove(&actor);
                self.workers.kill_actor(actor);
                Err(e)
            }
        }
    }

    /// Sends one method call to its actor's worker: resolves its inputs, then queues it
    /// behind the calls sent before. Returns what must live until the answer, and the answer.
    async fn send_actor_call(
        &self,
        request: &proto::TaskRequest,
    ) -> Result<(Prepared, tokio::sync::oneshot::Receiver<proto::WorkerDone>)> {
        let actor = ActorId::from_slice(&request.actor_id)?;
        let died = |message: String| Error::ActorDied {
            actor: format!("{actor:?}"),
            call: request.label.clone(),
            message,
        };
        let worker = self
            .actors
            .lock()
            .get(&actor)
            .map(|local| Arc::clone(&local.worker))
            .ok_or_else(|| died(format!("it does not run on node {}", self.address)))?;
        let mut prepared = self.prepare(request).await?;
        let assignment = prepared.assignment.take().expect("just prepared");
        let answer = worker
            .send(assignment)
            .await
            .map_err(|_| died(format!("its worker pid {} has exited", worker.pid())))?;
        Ok((prepared, answer))
    }

    /// An actor's worker process is gone: its queued calls fail, and the head hears of it (to
    /// start the actor again, if it may).
    async fn actor_worker_gone(&self, actor: ActorId, worker: &Arc<WorkerConn>) {
        let local = {
            let mut actors = self.actors.lock();
            match actors.get(&actor) {
                Some(local) if Arc::ptr_eq(&local.worker, worker) => actors.remove(&actor),
                _ => None,
            }
        };
        let Some(local) = local else {
            return;
        };
        tracing::warn!(?actor, pid = worker.pid(), "an actor's worker died");
        let mut head = self.head.clone();
        let report = proto::ActorDiedRequest {
            actor_id: Bytes::copy_from_slice(actor.as_bytes()),
            incarnation: local.incarnation,
            message: format!(
                "its worker (pid {}) on node {} exited",
                worker.pid(),
                self.address
            ),
        };
        if let Err(status) = head.actor_died(report).await {
            tracing::warn!(%status, "could not tell the head an actor died");
        }
    }

    /// Makes a task's inputs readable by a worker and builds its assignment.
    async fn prepare(&self, request: &proto::TaskRequest) -> Result<Prepared> {
        let started = std::time::Instant::now();
        let output_id = ObjectId::from_slice(&request.output_id)?;
        let mut stats = TaskStats::default();
        let mut pins = Vec::with_capacity(request.inputs.len());
        let mut input_ids = Vec::with_capacity(request.inputs.len());
        let mut input_batches = Vec::new();
        let mut spilled_inputs = Vec::new();
        let mut mapped_inputs = Vec::new();
        // Partitions copied or pulled for this task alone, freed when it ends.
        let mut scratch = Scratch::new(&self.store);
        // How many inputs (the first ones) are read as one batch; the rest arrive whole.
        let batched = match request.input_batch {
            Some(_) => request.batched_inputs.map_or(request.inputs.len(), |n| {
                request.inputs.len().min(n as usize)
            }),
            None => 0,
        };
        // A reduce task's partitions of every map output (see `partitions`), input by input.
        let mut wanted = Vec::new();
        if let Some(batches) = batch_range(request, batched)? {
            wanted.reserve(batched * batches.len());
            for input in &request.inputs[..batched] {
                let meta = input.to_meta()?;
                wanted.extend(batches.clone().map(|batch| (meta.clone(), batch)));
            }
        }
        // The rest are read whole (broadcasts, arguments), unless sent inline.
        let whole = &request.inputs[batched..];
        let metas = whole
            .iter()
            .filter(|input| input.inline.is_none())
            .map(|input| input.to_meta())
            .collect::<Result<Vec<_>>>()?;
        // Both kinds are pulled at once: a task waits for its slowest pull, not for their sum.
        let gathering = async {
            if wanted.is_empty() {
                return Ok(Vec::new());
            }
            self.gather_partitions(&wanted, &mut scratch, &mut stats)
                .await
        };
        let (partitions, whole_pulled) = futures::join!(gathering, self.make_all_local(&metas));
        let (whole_pins, pulled) = whole_pulled?;
        for (index, partition) in partitions?.into_iter().enumerate() {
            pins.extend(partition.pin);
            input_ids.push(Bytes::copy_from_slice(partition.id.as_bytes()));
            input_batches.push(partition.index);
            if let Some(spilled) = partition.spilled {
                spilled_inputs.push(proto::SpilledInput {
                    index: index as u32,
                    path: spilled.path.to_string_lossy().into_owned(),
                    schema_start: spilled.schema.start,
                    schema_end: spilled.schema.end,
                    batch_start: spilled.batch.start,
                    batch_end: spilled.batch.end,
                });
            }
            if let Some((schema, batch)) = partition.ranges {
                mapped_inputs.push(proto::MappedInput {
                    index: index as u32,
                    schema_start: schema.start,
                    schema_end: schema.end,
                    batch_start: batch.start,
                    batch_end: batch.end,
                });
            }
        }
        for bytes in pulled.into_iter().filter(|&bytes| bytes > 0) {
            stats.pulled_bytes += bytes;
            stats.pulled_objects += 1;
        }
        pins.extend(whole_pins);
        let mut inline_inputs = Vec::new();
        for input in whole {
            if let Some(data) = &input.inline {
                inline_inputs.push(proto::InlineInput {
                    // Its place among the worker's inputs, after the partitions.
                    index: input_ids.len() as u32,
                    data: data.clone(),
                });
            }
            input_ids.push(input.object_id.clone());
        }
        let output_file = self.store.take_recycled();
        stats.inputs_ns = started.elapsed().as_nanos() as u64;
        let assignment = proto::WorkerAssignment {
            task_id: request.task_id.clone(),
            function: request.function.clone(),
            args: request.args.clone(),
            input_ids,
            input_batches,
            output_id: request.output_id.clone(),
            label: request.label.clone(),
            output_file: output_file
                .as_ref()
                .map(|p| p.to_string_lossy().into_owned())
                .unwrap_or_default(),
            inline_inputs,
            spilled_inputs,
            mapped_inputs,
        };
        Ok(Prepared {
            assignment: Some(assignment),
            output_file,
            output_id,
            stats,
            pins,
            scratch,
        })
    }

    /// Adopts the output a worker wrote for a prepared task, or returns its error.
    async fn finish(
        &self,
        prepared: Prepared,
        done: proto::WorkerDone,
    ) -> Result<proto::TaskSuccess> {
        let Prepared {
            output_id,
            output_file,
            mut stats,
            pins,
            scratch,
            ..
        } = prepared;
        drop(pins);
        drop(scratch);
        if let Some(unwritten) = output_file {
            // The worker wrote its output over this file, or (an inline result, a failure)
            // left it: then it goes back to the pool.
            self.store.give_back_recycled(&unwritten);
        }
        match done.result {
            Some(worker_done::Result::Output(mut output)) => {
                stats.add(&output.stats.unwrap_or_default().into());
                let inline = output.inline.take();
                let size_bytes = match &inline {
                    Some(value) => value.len() as u64,
                    None => {
                        let started = std::time::Instant::now();
                        let store = Arc::clone(&self.store);
                        let stored = tokio::task::spawn_blocking(move || {
                            store.adopt_spilling_behind(output_id)
                        })
                        .await
                        .map_err(|e| Error::Internal(e.to_string()))??;
                        stats.spilled_bytes += stored.spilled_bytes;
                        stats.output_ns += started.elapsed().as_nanos() as u64;
                        stored.size_bytes
                    }
                };
                Ok(proto::TaskSuccess {
                    output: Some(proto::ObjectLocation {
                        object_id: Bytes::copy_from_slice(output_id.as_bytes()),
                        node_id: Bytes::copy_from_slice(self.id.as_bytes()),
                        address: self.address.clone(),
                        size_bytes,
                        num_rows: output.num_rows,
                        inline,
                    }),
                    stats: Some(stats.into()),
                    worker_pid: 0,
                    delivered: false,
                })
            }
            Some(worker_done::Result::Error(error)) => Err(error.into_error()),
            None => Err(Error::Internal("worker sent an empty answer".into())),
        }
    }

    async fn heartbeat_loop(self: Arc<Self>, interval: Duration, resources: Resources) {
        let mut ticks = tokio::time::interval(interval);
        // After a stall, beat once and go on at the interval, rather than in a burst.
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        // A heartbeat never waits on a stuck connection longer than this: the next one goes
        // out on time (over a new connection once the keepalive gives the old one up).
        let deadline = (interval * 2).max(Duration::from_millis(500));
        // The head is taken for lost after as long as it takes to declare a node dead; the
        // jobs' workers are stopped then (their drivers have failed: nothing can reach them).
        let head_lost_after = interval * HEAD_LOST_AFTER_BEATS;
        let mut last_answer = std::time::Instant::now();
        let mut jobs_stopped = false;
        let mut failed_beats = 0u64;
        let mut head = self.head.clone();
        loop {
            ticks.tick().await;
            if !jobs_stopped && last_answer.elapsed() > head_lost_after {
                jobs_stopped = true;
                let jobs = self.workers.end_all_jobs();
                tracing::warn!(
                    "no answer from the head for {} s: stopped the workers of {jobs} job(s); \
                     objects are kept, and this node rejoins the head when it answers again",
                    head_lost_after.as_secs_f64().round()
                );
            }
            let request = proto::HeartbeatRequest {
                node_id: Bytes::copy_from_slice(self.id.as_bytes()),
                store: Some(self.store.usage().into()),
            };
            let beat = match tokio::time::timeout(deadline, head.heartbeat(request)).await {
                Ok(beat) => beat,
                Err(_) => {
                    tracing::warn!(
                        "no answer to a heartbeat within {} ms; is the head reachable?",
                        deadline.as_millis()
                    );
                    continue;
                }
            };
            if beat.is_ok() {
                last_answer = std::time::Instant::now();
                jobs_stopped = false;
                failed_beats = 0;
            }
            match beat {
                Ok(reply) if reply.get_ref().known => {}
                Ok(_) => {
                    tracing::warn!(
                        "the head does not know this node (it restarted?); registering again"
                    );
                    if let Err(e) = register(
                        &mut head,
                        self.id,
                        &self.address,
                        &self.name,
                        &resources,
                        &self.store_dirs(),
                    )
                    .await
                    {
                        tracing::warn!(error = %e, "registering again failed");
                    }
                }
                Err(status) => {
                    // Once, then every 20 beats: a lost head is one story, not a flood.
                    if failed_beats.is_multiple_of(20) {
                        tracing::warn!(
                            failed_beats = failed_beats + 1,
                            "heartbeat to the head failed: {}",
                            crate::server::transport_reason(&status)
                        );
                    }
                    failed_beats += 1;
                }
            }
        }
    }
}

/// Heartbeat intervals without an answer after which a node takes its head for lost (the
/// head's own default for declaring a node dead).
const HEAD_LOST_AFTER_BEATS: u32 = 6;

/// Connects to the head and registers this node, trying again while the head is not up (not
/// listening, or not answering) until [`NodeConfig::join_timeout`], and saying every few
/// seconds that it waits. A head that answers and refuses (a wrong token, say) is not retried.
async fn join_head(
    config: &NodeConfig,
    id: NodeId,
    address: &str,
    resources: &Resources,
    dirs: &StoreDirs,
) -> Result<(HeadClient<AuthChannel>, manta_flight::auth::Token, Duration)> {
    let started = std::time::Instant::now();
    let mut said: Option<std::time::Instant> = None;
    loop {
        let attempt = async {
            let (channel, token) =
                crate::cluster_token::connect_head(&config.head_address, config.token.as_ref())
                    .await?;
            let mut head = HeadClient::new(channel);
            let registered = tokio::time::timeout(
                REGISTER_DEADLINE,
                register(&mut head, id, address, &config.name, resources, dirs),
            );
            let interval = registered.await.map_err(|_| Error::HeadUnreachable {
                address: config.head_address.clone(),
                reason: format!(
                    "no answer to RegisterNode within {} s",
                    REGISTER_DEADLINE.as_secs()
                ),
            })??;
            Ok::<_, Error>((head, token, interval))
        };
        match attempt.await {
            Ok(joined) => return Ok(joined),
            Err(e) if not_up_yet(&e) && started.elapsed() < config.join_timeout => {
                if said.is_none_or(|at| at.elapsed() >= Duration::from_secs(5)) {
                    tracing::warn!(
                        "waiting for the head at {} (up to {} s): {e}",
                        config.head_address,
                        config.join_timeout.as_secs()
                    );
                    said = Some(std::time::Instant::now());
                }
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
            Err(e) => return Err(e),
        }
    }
}

/// The most inputs a task's batch range may expand to (its batched inputs times its batches):
/// far more than any reduce task reads, and few enough that a malformed request cannot make
/// the node allocate without bound.
const MAX_BATCHED_INPUTS: usize = 1 << 20;

/// The batches a task reads of each of its first `batched` inputs (`input_batch` up to
/// `input_batch_end`), or `None` if it reads them whole; an error for an empty, reversed or
/// too large range.
fn batch_range(request: &proto::TaskRequest, batched: usize) -> Result<Option<Range<u32>>> {
    let Some(start) = request.input_batch else {
        return Ok(None);
    };
    let end = request.input_batch_end.unwrap_or(start.saturating_add(1));
    let count = end.saturating_sub(start) as usize;
    if count == 0 || count.saturating_mul(batched) > MAX_BATCHED_INPUTS {
        return Err(Error::Internal(format!(
            "task {:?} asks for batches {start}..{end} of {batched} inputs: an empty range, or \
             more than {MAX_BATCHED_INPUTS} partitions",
            request.label
        )));
    }
    Ok(Some(start..end))
}

/// Whether joining failed only because the head is not up (yet).
fn not_up_yet(error: &Error) -> bool {
    match error {
        Error::HeadUnreachable { .. } => true,
        Error::Rpc { status, .. } => status.code() == tonic::Code::Unavailable,
        _ => false,
    }
}

/// A store's shared-memory and spill directories, as the head hands them to drivers (see
/// [`crate::local_stores`]).
struct StoreDirs {
    shared: String,
    spill: String,
}

impl StoreDirs {
    fn of(store: &ObjectStore) -> Self {
        let text = |path: &std::path::Path| path.to_string_lossy().into_owned();
        Self {
            shared: store.shared_dir().map(text).unwrap_or_default(),
            spill: text(store.spill_dir()),
        }
    }
}

async fn register(
    head: &mut HeadClient<AuthChannel>,
    id: NodeId,
    address: &str,
    name: &str,
    resources: &Resources,
    dirs: &StoreDirs,
) -> Result<Duration> {
    let reply = head
        .register_node(proto::RegisterNodeRequest {
            node_id: Bytes::copy_from_slice(id.as_bytes()),
            address: address.to_string(),
            resources: Some(resources.into()),
            pid: std::process::id(),
            name: name.to_string(),
            shared_dir: dirs.shared.clone(),
            spill_dir: dirs.spill.clone(),
        })
        .await
        .map_err(|s| Error::rpc("RegisterNode", s))?;
    Ok(Duration::from_millis(
        reply.into_inner().heartbeat_interval_ms.max(10),
    ))
}

/// A task ready for a worker: its assignment, and the pins and scratch objects that keep its
/// inputs readable until the worker answers.
struct Prepared {
    assignment: Option<proto::WorkerAssignment>,
    /// The recycled file the worker may write its output over.
    output_file: Option<PathBuf>,
    output_id: ObjectId,
    stats: TaskStats,
    pins: Vec<manta_engine::Pin>,
    scratch: Scratch,
}

/// An actor whose worker runs on this node.
struct LocalActor {
    worker: Arc<WorkerConn>,
    incarnation: u64,
}

/// The `Node` and `Worker` services of a daemon.
#[derive(Clone)]
struct NodeService(Arc<NodeDaemon>);

#[tonic::async_trait]
impl NodeRpc for NodeService {
    type RunTasksStream = task_stream::ReplyStream;

    async fn run_tasks(
        &self,
        request: Request<Streaming<proto::TaskCalls>>,
    ) -> Result<Response<task_stream::ReplyStream>, Status> {
        let daemon = Arc::clone(&self.0);
        let replies = task_stream::serve(request.into_inner(), move |task| {
            let daemon = Arc::clone(&daemon);
            async move {
                let reply_to = task.reply_to;
                let outcome = daemon.run(task).await;
                daemon.count(&outcome);
                match outcome {
                    Ok(success) => {
                        let success = daemon
                            .result_links
                            .deliver(reply_to.as_ref(), success)
                            .await;
                        match success.delivered {
                            true => daemon.metrics.results_direct.inc(),
                            false => daemon.metrics.results_through_head.inc(),
                        }
                        Some(proto::TaskReply {
                            result: Some(task_reply::Result::Success(success)),
                        })
                    }
                    Err(error) => Some(proto::TaskReply::failed(&error)),
                }
            }
        });
        Ok(Response::new(replies))
    }

    async fn free_objects(
        &self,
        request: Request<proto::FreeObjectsRequest>,
    ) -> Result<Response<proto::FreeObjectsReply>, Status> {
        for id in request.into_inner().object_ids {
            if let Ok(id) = ObjectId::from_slice(&id) {
                self.0.store.free(id);
            }
        }
        Ok(Response::new(proto::FreeObjectsReply {}))
    }

    async fn end_job(
        &self,
        request: Request<proto::EndJobRequest>,
    ) -> Result<Response<proto::EndJobReply>, Status> {
        let job = proto::parse_id(&request.into_inner().job_id, JobId::from_slice, "job_id")?;
        self.0.workers.end_job(job);
        let freed = self.0.store.free_job(job);
        if freed > 0 {
            tracing::info!(%job, freed, "freed the objects its driver put and left behind");
        }
        Ok(Response::new(proto::EndJobReply {}))
    }

    type ResultsStream = result_links::ResultStream;

    async fn results(
        &self,
        request: Request<Streaming<proto::ResultAcks>>,
    ) -> Result<Response<result_links::ResultStream>, Status> {
        Ok(Response::new(
            self.0.result_links.serve(request.into_inner()).await?,
        ))
    }

    type ActorCallsStream = ActorReplyStream;

    async fn actor_calls(
        &self,
        request: Request<Streaming<proto::ActorCall>>,
    ) -> Result<Response<ActorReplyStream>, Status> {
        let mut inbound = request.into_inner();
        let (replies, outbound) = mpsc::channel(1024);
        let daemon = Arc::clone(&self.0);
        tokio::spawn(async move {
            while let Ok(Some(call)) = inbound.message().await {
                let Some(task) = call.task else {
                    continue;
                };
                let call_id = call.call_id;
                let reply = move |reply: proto::TaskReply| {
                    Ok(proto::ActorCallReply {
                        call_id,
                        reply: Some(reply),
                    })
                };
                // Sent to the worker in the order received; answered whenever each is done.
                match daemon.send_actor_call(&task).await {
                    Ok((prepared, answer)) => {
                        let (daemon, replies) = (Arc::clone(&daemon), replies.clone());
                        tokio::spawn(async move {
                            let outcome = match answer.await {
                                Ok(done) => daemon.finish(prepared, done).await,
                                Err(_) => Err(Error::ActorDied {
                                    actor: format!("{:?}", ActorId::from_slice(&task.actor_id)),
                                    call: task.label.clone(),
                                    message: format!(
                                        "its worker on node {} exited before answering",
                                        daemon.address
                                    ),
                                }),
                            };
                            let _ = replies.send(reply(proto::TaskReply::from(outcome))).await;
                        });
                    }
                    Err(e) => {
                        let _ = replies.send(reply(proto::TaskReply::failed(&e))).await;
                    }
                }
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(outbound))))
    }

    async fn kill_actor(
        &self,
        request: Request<proto::KillActorRequest>,
    ) -> Result<Response<proto::ActorReply>, Status> {
        let actor = proto::parse_id(
            &request.into_inner().actor_id,
            ActorId::from_slice,
            "actor_id",
        )?;
        self.0.workers.kill_actor(actor);
        Ok(Response::new(proto::ActorReply {}))
    }
}

type ActorReplyStream = Pin<Box<dyn Stream<Item = Result<proto::ActorCallReply, Status>> + Send>>;

/// Hands each answer a worker sends to the task waiting for it, until its stream ends.
async fn deliver_answers(inbound: &mut Streaming<proto::WorkerMessage>, worker: &WorkerConn) {
    while let Ok(Some(message)) = inbound.message().await {
        if let Some(worker_message::Kind::Done(done)) = message.kind {
            worker.complete(done);
        }
    }
}

type AssignmentStream = Pin<Box<dyn Stream<Item = Result<proto::WorkerAssignment, Status>> + Send>>;

#[tonic::async_trait]
impl WorkerRpc for NodeService {
    type AttachStream = AssignmentStream;

    async fn attach(
        &self,
        request: Request<Streaming<proto::WorkerMessage>>,
    ) -> Result<Response<AssignmentStream>, Status> {
        let mut inbound = request.into_inner();
        let hello = match inbound.message().await? {
            Some(proto::WorkerMessage {
                kind: Some(worker_message::Kind::Hello(hello)),
            }) => hello,
            _ => {
                return Err(Status::invalid_argument(
                    "a worker's first message must be its hello",
                ));
            }
        };
        let job = proto::parse_id(&hello.job_id, JobId::from_slice, "job_id")?;
        let (tx, rx) = mpsc::channel(crate::worker_pool::PIPELINE_DEPTH);
        if !hello.actor_id.is_empty() {
            let actor = proto::parse_id(&hello.actor_id, ActorId::from_slice, "actor_id")?;
            let worker = self.0.workers.attached_actor(actor, hello.pid, tx);
            let daemon = Arc::clone(&self.0);
            tokio::spawn(async move {
                deliver_answers(&mut inbound, &worker).await;
                daemon.actor_worker_gone(actor, &worker).await;
                daemon.workers.detached(job, &worker);
            });
            return Ok(Response::new(Box::pin(ReceiverStream::new(rx))));
        }
        let worker = self.0.workers.attached(job, hello.pid, tx);
        let workers = Arc::clone(&self.0.workers);
        tokio::spawn(async move {
            deliver_answers(&mut inbound, &worker).await;
            workers.detached(job, &worker);
        });
        // The tasks a batch of answers lets go reach the worker in one write.
        Ok(Response::new(Box::pin(Together::new(ReceiverStream::new(
            rx,
        )))))
    }
}

/// The URL other processes reach this node at: the advertised host with the bound port. An
/// unspecified host (`0.0.0.0`, `::`) cannot be reached: it is advertised anyway (a node on the
/// head's machine may still work) with a warning saying to pass an address of this machine.
fn advertised_address(config: &NodeConfig, port: u16) -> String {
    let host = config.host.trim();
    if host
        .trim_matches(['[', ']'])
        .parse::<std::net::IpAddr>()
        .is_ok_and(|ip| ip.is_unspecified())
    {
        tracing::warn!(
            "advertising the unspecified address {host}: other machines cannot reach this node \
             there; pass --node-ip-address with an address of this machine (and --bind-address \
             {host} to listen on every interface)"
        );
    }
    let host = if host.contains(':') && !host.starts_with('[') {
        format!("[{host}]")
    } else {
        host.to_string()
    };
    format!("{}://{host}:{port}", server::scheme(config.tls.as_ref()))
}

/// Runs a node daemon until SIGTERM or Ctrl-C; `ready` is called with its address once it is
/// registered with the head.
pub async fn run_node(config: NodeConfig, ready: impl FnOnce(&str)) -> Result<()> {
    let stop = server::shutdown_signal();
    let bind_host = config.bind_host.as_deref().unwrap_or(&config.host);
    let (listener, bound) = server::bind(bind_host, config.port).await?;
    let address = advertised_address(&config, bound.port());
    let mut builder = server::server_builder();
    let id = NodeId::random();
    let store = ObjectStore::new(StoreConfig {
        budget_bytes: config.object_store_memory,
        shared_parent: Some(config.shared_parent.clone()),
        spill_parent: config.spill_parent.clone(),
    })?;
    let shared_dir = store
        .shared_dir()
        .expect("a node's store is in shared memory")
        .to_path_buf();
    let resources = Resources {
        cpus: config.num_cpus,
        memory_bytes: config.object_store_memory,
        custom: config.custom_resources.clone(),
    };
    let (head, token, interval) =
        join_head(&config, id, &address, &resources, &StoreDirs::of(&store)).await?;
    let daemon = Arc::new(NodeDaemon {
        id,
        address: address.clone(),
        name: config.name.clone(),
        store: Arc::clone(&store),
        flight: FlightPool::new(&token),
        workers: WorkerPools::new(
            config.num_cpus.ceil() as usize,
            id,
            address.clone(),
            shared_dir,
            token.clone(),
            config.tls_ca.clone(),
        ),
        executables: ExecutableCache::new(&config.cache_dir)?,
        loaded_executables: Mutex::default(),
        head,
        actors: Mutex::default(),
        pulls: Mutex::default(),
        downloads: tokio::sync::Mutex::new(()),
        metrics: Default::default(),
        flight_traffic: Arc::default(),
        result_links: Arc::default(),
    });
    let heartbeats = tokio::spawn(Arc::clone(&daemon).heartbeat_loop(interval, resources));
    let metrics = match config.metrics_port {
        Some(port) => {
            let (listener, at) = server::bind(bind_host, port).await?;
            tracing::info!("metrics at http://{at}/metrics");
            let node = Arc::downgrade(&daemon);
            let router = crate::metrics::router(
                move || {
                    node.upgrade()
                        .map(|n| n.encode_metrics())
                        .unwrap_or_default()
                },
                token.clone(),
            );
            Some(tokio::spawn(async move {
                if let Err(e) = axum::serve(listener, router).await {
                    tracing::warn!("the metrics endpoint stopped: {e}");
                }
            }))
        }
        None => None,
    };
    tracing::info!(node = ?id, %address, "node registered with the head at {}", config.head_address);
    ready(&address);
    let service = NodeService(Arc::clone(&daemon));
    let result = server::serve_until(stop, |graceful| {
        builder
            .add_service(guard(NodeServer::new(service.clone()), &token))
            .add_service(guard(WorkerServer::new(service), &token))
            .add_service(guard(
                ObjectFlightService::new(store)
                    .counting(Arc::clone(&daemon.flight_traffic))
                    .into_server(),
                &token,
            ))
            .serve_with_incoming_shutdown(
                manta_flight::incoming(listener, config.tls.as_ref()),
                graceful,
            )
    })
    .await;
    heartbeats.abort();
    if let Some(metrics) = metrics {
        metrics.abort();
    }
    result.map_err(|e| Error::Internal(format!("node server: {e}")))
}
