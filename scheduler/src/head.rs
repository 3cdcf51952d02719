//! The head: the node table, jobs and their executables, and task placement.
//!
//! # How a task runs on a cluster
//!
//! ```text
//! driver ──SubmitTask──▶ head: place (PlacementPolicy) ──RunTask──▶ node daemon
//!    ▲                        take the node's resources              pull inputs (Flight), pin,
//!    │                        ...                                    hand to a worker process
//!    └──── TaskReply ◀────── give resources back, wake waiters ◀──── output object's location
//! ```
//!
//! The head holds one entry per node: its resources (total and available), its last store
//! usage and the time of its last heartbeat. A submitted task takes resources from the node the
//! policy picks and gives them back when the node answers, which wakes the tasks waiting for
//! resources (a `Notify`, never a sleep). A node that misses heartbeats for
//! `missed_heartbeats` intervals is marked dead: its running tasks fail with `NodeLost` at once,
//! and are retried elsewhere if their retry budget allows.

use std::collections::HashMap;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::Stream;
use manta_engine::{JobId, NodeId, Resources};
use parking_lot::Mutex;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use tonic::transport::Channel;
use tonic::{Request, Response, Status, Streaming};

use crate::error::{Error, Result};
use crate::executables::ExecutableCache;
use crate::placement::{LocalityFirst, NodeView, Placement, PlacementPolicy};
use crate::proto::head_server::{Head as HeadRpc, HeadServer};
use crate::proto::node_client::NodeClient;
use crate::proto::{self, task_reply};
use crate::server;

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
}

impl Default for HeadConfig {
    fn default() -> Self {
        Self {
            heartbeat_interval: Duration::from_millis(500),
            missed_heartbeats: 6,
            cache_dir: ExecutableCache::default_dir(),
            policy: Arc::new(LocalityFirst),
        }
    }
}

struct NodeEntry {
    address: String,
    total: Resources,
    available: Resources,
    store: proto::StoreUsage,
    last_heartbeat: Instant,
    alive: bool,
    running: u64,
    pid: u32,
    client: NodeClient<Channel>,
    lost: CancellationToken,
}

#[derive(Default)]
struct HeadState {
    nodes: HashMap<NodeId, NodeEntry>,
    jobs: HashMap<JobId, String>,
}

/// The head's state and gRPC service.
pub struct Head {
    state: Mutex<HeadState>,
    changed: Notify,
    config: HeadConfig,
    executables: ExecutableCache,
}

/// A node's resources taken for one task; given back when dropped, so a task whose caller
/// went away (its RPC cancelled) does not keep them.
struct Lease<'a> {
    head: &'a Head,
    demand: &'a Resources,
    node: NodeId,
    address: String,
    client: NodeClient<Channel>,
    lost: CancellationToken,
}

impl Drop for Lease<'_> {
    fn drop(&mut self) {
        if let Some(node) = self.head.state.lock().nodes.get_mut(&self.node) {
            node.available.add(self.demand);
            node.running -= 1;
        }
        self.head.changed.notify_waiters();
    }
}

impl Head {
    /// A head with no nodes.
    pub fn new(config: HeadConfig) -> Result<Arc<Self>> {
        let executables = ExecutableCache::new(&config.cache_dir)?;
        Ok(Arc::new(Self {
            state: Mutex::default(),
            changed: Notify::new(),
            config,
            executables,
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
        let result = server::serve_until(shutdown, |graceful| {
            server::server_builder()
                .add_service(HeadServer::from_arc(Arc::clone(&self)))
                .serve_with_incoming_shutdown(manta_flight::incoming(listener), graceful)
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
            let mut changed = false;
            for (id, node) in state.nodes.iter_mut().filter(|(_, n)| n.alive) {
                if node.last_heartbeat.elapsed() > timeout {
                    tracing::warn!(node = ?id, address = %node.address, "node missed its heartbeats; marking it dead");
                    node.alive = false;
                    node.lost.cancel();
                    changed = true;
                }
            }
            drop(state);
            if changed {
                self.changed.notify_waiters();
            }
        }
    }

    fn views(state: &HeadState) -> Vec<NodeView> {
        state
            .nodes
            .iter()
            .map(|(id, n)| NodeView {
                id: *id,
                total: n.total.clone(),
                available: n.available.clone(),
                alive: n.alive,
            })
            .collect()
    }

    /// Takes resources on the node the policy picks, waiting while every fitting node is busy.
    async fn acquire<'a>(
        &'a self,
        demand: &'a Resources,
        input_bytes: &HashMap<NodeId, u64>,
        label: &str,
    ) -> Result<Lease<'a>> {
        loop {
            let notified = self.changed.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            {
                let mut state = self.state.lock();
                match self
                    .config
                    .policy
                    .place(demand, input_bytes, &Self::views(&state))
                {
                    Placement::Node(id) => {
                        let node = state.nodes.get_mut(&id).expect("policy picks a known node");
                        node.available.subtract(demand);
                        node.running += 1;
                        return Ok(Lease {
                            head: self,
                            demand,
                            node: id,
                            address: node.address.clone(),
                            client: node.client.clone(),
                            lost: node.lost.clone(),
                        });
                    }
                    Placement::Infeasible => {
                        let offered = state
                            .nodes
                            .values()
                            .filter(|n| n.alive)
                            .map(|n| format!("{} {:?}", n.address, n.total))
                            .collect::<Vec<_>>();
                        let offered = if offered.is_empty() {
                            "no live nodes".to_string()
                        } else {
                            offered.join("; ")
                        };
                        return Err(Error::Infeasible {
                            task: label.to_string(),
                            demand: demand.clone(),
                            offered,
                        });
                    }
                    Placement::Wait => {}
                }
            }
            notified.await;
        }
    }

    /// Places and runs one task, retrying on machine failures within its retry budget.
    async fn submit(&self, mut request: proto::TaskRequest) -> Result<proto::TaskSuccess> {
        let job = JobId::from_slice(&request.job_id)?;
        request.executable_hash = self
            .state
            .lock()
            .jobs
            .get(&job)
            .cloned()
            .ok_or_else(|| Error::Internal(format!("unknown job {job}: register it first")))?;
        let demand: Resources = request.resources.clone().unwrap_or_default().into();
        let mut input_bytes: HashMap<NodeId, u64> = HashMap::new();
        for input in &request.inputs {
            *input_bytes
                .entry(NodeId::from_slice(&input.node_id)?)
                .or_default() += input.size_bytes;
        }
        let mut attempt = 0;
        loop {
            let lease = self.acquire(&demand, &input_bytes, &request.label).await?;
            let mut client = lease.client.clone();
            let outcome = tokio::select! {
                reply = client.run_task(request.clone()) => match reply {
                    Ok(reply) => match reply.into_inner().result {
                        Some(task_reply::Result::Success(success)) => Ok(success),
                        Some(task_reply::Result::Error(error)) => Err(error.into_error()),
                        None => Err(Error::Internal("node sent an empty reply".into())),
                    },
                    Err(status) => Err(Error::NodeLost {
                        node: lease.address.clone(),
                        task: request.label.clone(),
                        message: status.message().to_string(),
                    }),
                },
                _ = lease.lost.cancelled() => Err(Error::NodeLost {
                    node: lease.address.clone(),
                    task: request.label.clone(),
                    message: "the node missed its heartbeats".into(),
                }),
            };
            drop(lease);
            match outcome {
                Err(e) if e.is_retryable() && attempt < request.max_retries => {
                    attempt += 1;
                    tracing::warn!(task = %request.label, attempt, error = %e, "retrying task");
                }
                other => return other,
            }
        }
    }

    fn node_infos(&self) -> Vec<proto::NodeInfo> {
        let state = self.state.lock();
        let mut nodes: Vec<_> = state
            .nodes
            .iter()
            .map(|(id, n)| proto::NodeInfo {
                node_id: bytes::Bytes::copy_from_slice(id.as_bytes()),
                address: n.address.clone(),
                total: Some((&n.total).into()),
                available: Some((&n.available).into()),
                store: Some(n.store),
                alive: n.alive,
                running_tasks: n.running,
                millis_since_heartbeat: n.last_heartbeat.elapsed().as_millis() as u64,
                pid: n.pid,
            })
            .collect();
        nodes.sort_by(|a, b| a.address.cmp(&b.address));
        nodes
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
        let client = NodeClient::new(
            server::lazy_channel(&r.address)
                .map_err(|e| Status::invalid_argument(e.to_string()))?,
        );
        let total: Resources = r.resources.unwrap_or_default().into();
        tracing::info!(node = ?id, address = %r.address, resources = ?total, "node registered");
        let entry = NodeEntry {
            address: r.address,
            available: total.clone(),
            total,
            store: proto::StoreUsage::default(),
            last_heartbeat: Instant::now(),
            alive: true,
            running: 0,
            pid: r.pid,
            client,
            lost: CancellationToken::new(),
        };
        if let Some(old) = self.state.lock().nodes.insert(id, entry) {
            old.lost.cancel();
        }
        self.changed.notify_waiters();
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

    async fn submit_task(
        &self,
        request: Request<proto::TaskRequest>,
    ) -> Result<Response<proto::TaskReply>, Status> {
        let reply = match self.submit(request.into_inner()).await {
            Ok(success) => proto::TaskReply {
                result: Some(task_reply::Result::Success(success)),
            },
            Err(error) => proto::TaskReply::failed(&error),
        };
        Ok(Response::new(reply))
    }

    async fn end_job(
        &self,
        request: Request<proto::EndJobRequest>,
    ) -> Result<Response<proto::EndJobReply>, Status> {
        let r = request.into_inner();
        let job = proto::parse_id(&r.job_id, JobId::from_slice, "job_id")?;
        let clients: Vec<_> = {
            let mut state = self.state.lock();
            state.jobs.remove(&job);
            state
                .nodes
                .values()
                .filter(|n| n.alive)
                .map(|n| n.client.clone())
                .collect()
        };
        let calls = clients.into_iter().map(|mut c| {
            let request = proto::EndJobRequest {
                job_id: r.job_id.clone(),
            };
            async move { c.end_job(request).await }
        });
        futures::future::join_all(calls).await;
        Ok(Response::new(proto::EndJobReply {}))
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
    let head = Head::new(config)?;
    ready(address);
    head.serve(listener, server::shutdown_signal()).await
}
