//! The driver's connection to a cluster.
//!
//! Joining: connect to the head (failing within seconds if nothing answers), hash this
//! executable and register a job with it, uploading the executable if the head lacks it. Then
//! tasks are submitted to the head over one stream ([`TaskStream`]); each task's success (the
//! output's location, or for a small result the value itself) comes straight from the node
//! that ran it ([`crate::direct_results`]), and objects are read straight from the node that
//! holds them over Flight. The driver owns the objects its
//! tasks create: when the last [`ObjectRef`] to one drops, a background task tells the node to
//! free it (batched per node).

use std::collections::HashMap;
use std::sync::Arc;

use bytes::Bytes;
use manta_engine::{
    JobId, Location, Object, ObjectId, ObjectRef, ReleaseObject, TaskId, TaskOutcome, TaskSpec,
};
use manta_flight::FlightPool;
use manta_flight::auth::{AuthChannel, Token};
use tokio::sync::mpsc;

use crate::error::{Error, Result};
use crate::executables::hash_file;
use crate::proto::head_client::HeadClient;
use crate::proto::node_client::NodeClient;
use crate::proto::{self, task_reply};
use crate::server;
use crate::task_stream::TaskStream;

/// A driver's handle on a cluster.
pub struct ClusterClient {
    address: String,
    head: HeadClient<AuthChannel>,
    /// The cluster token every call presents.
    token: Token,
    job: JobId,
    flight: FlightPool,
    releaser: Arc<dyn ReleaseObject>,
    /// Submits tasks to the head over one stream; their successes come back straight from
    /// the nodes.
    direct: Arc<crate::direct_results::DirectResults>,
    /// This process's IP address as seen on the way to the head: its host in the cluster.
    own_ip: Option<std::net::IpAddr>,
    /// The cluster's store usage as last asked of the head, and when.
    usage: parking_lot::Mutex<Option<(std::time::Instant, manta_engine::StoreUsage)>>,
    actors: Arc<crate::actors::ActorDirectory>,
    /// Tasks in flight, for the stall watchdog ([`crate::stall_watch`]).
    stalls: Arc<crate::stall_watch::StallWatch>,
    /// The stores of nodes on this machine, read in place ([`crate::local_stores`]).
    local: crate::local_stores::LocalStores,
}

/// How long a driver waits for the head's node list when looking a node's store up.
const LIST_DEADLINE: std::time::Duration = std::time::Duration::from_secs(10);

/// How long a store usage answer is reused before the head is asked again.
const USAGE_TTL: std::time::Duration = std::time::Duration::from_millis(200);

impl std::fmt::Debug for ClusterClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClusterClient")
            .field("address", &self.address)
            .field("job", &self.job)
            .finish()
    }
}

/// Queues released objects for the background freeing task.
struct FreeQueue(mpsc::UnboundedSender<(ObjectId, Location)>);

impl ReleaseObject for FreeQueue {
    fn release(&self, id: ObjectId, location: &Location) {
        let _ = self.0.send((id, location.clone()));
    }
}

impl ClusterClient {
    /// Joins the cluster whose head is at `address` (must run inside a tokio runtime),
    /// presenting `token`, else the one [`crate::cluster_token::resolve`] finds.
    pub async fn connect(address: &str, token: Option<&Token>) -> Result<Arc<Self>> {
        let (channel, token) = crate::cluster_token::connect_head(address, token).await?;
        let mut head = HeadClient::new(channel);
        let executable = std::env::current_exe().map_err(|source| Error::Io {
            action: "finding",
            path: "the current executable".into(),
            source,
        })?;
        let (hash, size) = {
            let executable = executable.clone();
            tokio::task::spawn_blocking(move || hash_file(&executable))
                .await
                .map_err(|e| Error::Internal(e.to_string()))??
        };
        let reply = head
            .register_job(proto::RegisterJobRequest {
                executable_hash: hash.clone(),
                executable_size: size,
                // A driver `manta job submit` started: its tasks are shown under that job.
                submission_id: std::env::var("MANTA_JOB_ID").unwrap_or_default(),
            })
            .await
            .map_err(|s| joining_failed(address, s))?
            .into_inner();
        if !reply.has_executable {
            upload(&mut head, &executable, &hash).await?;
        }
        let job = JobId::from_slice(&reply.job_id)?;
        // Open for as long as this process runs: if it dies, the head ends the job (its
        // workers stop, the objects it put are freed).
        let mut holder = head.clone();
        let hold = proto::EndJobRequest {
            job_id: reply.job_id.clone(),
        };
        tokio::spawn(async move {
            if let Ok(stream) = holder.hold_job(hold).await {
                let _ = stream.into_inner().message().await;
            }
        });
        let (tx, rx) = mpsc::unbounded_channel();
        tokio::spawn(free_objects(rx, token.clone()));
        let submitter = head.clone();
        let tasks = TaskStream::new(Arc::new(move |calls| {
            let mut head = submitter.clone();
            Box::pin(async move {
                let replies = head.submit_tasks(calls).await?.into_inner();
                Ok(futures::StreamExt::boxed(replies))
            })
        }));
        // Results come straight from the nodes (those that join later are linked to when their
        // first result arrives through the head).
        let direct = crate::direct_results::DirectResults::new(token.clone(), tasks);
        let mut lister = head.clone();
        let nodes = tokio::time::timeout(
            std::time::Duration::from_secs(10),
            lister.list_nodes(proto::ListNodesRequest {}),
        )
        .await;
        let nodes = match nodes {
            Ok(Ok(nodes)) => nodes.into_inner().nodes,
            // No links yet: results come through the head until they are made.
            _ => Vec::new(),
        };
        for node in nodes {
            if node.alive {
                direct.link(&node.address);
            }
        }
        tracing::info!(%job, address, "joined the cluster");
        let stalls = crate::stall_watch::StallWatch::from_env();
        tokio::spawn(crate::stall_watch::StallWatch::watch(
            Arc::downgrade(&stalls),
            head.clone(),
            job,
        ));
        Ok(Arc::new(Self {
            local: Default::default(),
            stalls,
            address: address.to_string(),
            head,
            job,
            flight: FlightPool::new(&token),
            token,
            releaser: Arc::new(FreeQueue(tx)),
            direct,
            own_ip: own_ip_towards(address),
            usage: parking_lot::Mutex::new(None),
            actors: Arc::default(),
        }))
    }

    /// The head's address.
    pub fn address(&self) -> &str {
        &self.address
    }

    /// The cluster token this driver presents.
    pub fn token(&self) -> &Token {
        &self.token
    }

    /// A client of the head's control service.
    pub(crate) fn head(&self) -> HeadClient<AuthChannel> {
        self.head.clone()
    }

    /// Starts an actor on the cluster.
    pub fn create_actor(
        self: &Arc<Self>,
        spec: crate::actors::ActorSpec,
        tokio: &tokio::runtime::Handle,
    ) -> Result<crate::actors::ActorHandle> {
        crate::actors::spawn_cluster(self, spec, &self.actors, tokio)
    }

    /// The named actors this driver started.
    pub fn actors(&self) -> &crate::actors::ActorDirectory {
        &self.actors
    }

    /// The request that runs `spec` as this job's task.
    pub(crate) fn request(&self, spec: &TaskSpec) -> proto::TaskRequest {
        proto::TaskRequest {
            job_id: Bytes::copy_from_slice(self.job.as_bytes()),
            task_id: Bytes::copy_from_slice(TaskId::random().as_bytes()),
            function: spec.function.clone(),
            args: spec.args.clone(),
            inputs: spec
                .inputs
                .iter()
                .map(proto::ObjectLocation::from)
                .collect(),
            resources: Some((&spec.resources).into()),
            max_retries: spec.max_retries,
            label: spec.label.clone(),
            output_id: Bytes::copy_from_slice(ObjectId::random().as_bytes()),
            executable_hash: String::new(),
            input_batch: spec.input_batches.as_ref().map(|batches| batches.start),
            input_batch_end: spec.input_batches.as_ref().map(|batches| batches.end),
            batched_inputs: spec.batched_inputs,
            actor_id: Bytes::new(),
            actor_incarnation: 0,
            pipeline: false,
            reply_to: None,
        }
    }

    /// Tells the head (for its cluster events) that the lost object `object` was made again by
    /// running `task` again; in the background, with a deadline, its failure only logged.
    pub fn report_reconstruction(&self, object: ObjectId, task: &str, rows: u64) {
        let mut head = self.head.clone();
        let request = proto::ReportReconstructionRequest {
            job_id: Bytes::copy_from_slice(self.job.as_bytes()),
            object_id: Bytes::copy_from_slice(object.as_bytes()),
            task: task.to_string(),
            rows,
        };
        tokio::spawn(async move {
            let told = tokio::time::timeout(
                std::time::Duration::from_secs(10),
                head.report_reconstruction(request),
            )
            .await;
            if !matches!(told, Ok(Ok(_))) {
                tracing::debug!("could not tell the head of a reconstruction: {told:?}");
            }
        });
    }

    /// A task's reply as its outcome: the output, owned by this driver, or the error.
    pub(crate) fn outcome(&self, reply: proto::TaskReply) -> Result<TaskOutcome> {
        outcome(reply, &self.releaser)
    }

    /// Queues a task on the cluster; `done` gets its outcome, on the task stream's receiving
    /// task (so it must not block). Callable from any thread.
    pub fn submit_then(&self, spec: TaskSpec, done: crate::runtime::OnOutcome) {
        let request = self.request(&spec);
        let releaser = Arc::clone(&self.releaser);
        // The inputs stay referenced (so not freed) until the task is done.
        let inputs = spec.inputs;
        let address = self.address.clone();
        let stalls = Arc::clone(&self.stalls);
        stalls.started();
        let on_reply: crate::task_stream::OnReply = Box::new(move |reply| {
            drop(inputs);
            stalls.ended();
            done(
                reply
                    .map_err(|s| head_call_failed(&address, "SubmitTasks", s))
                    .and_then(|reply| outcome(reply, &releaser)),
            )
        });
        self.direct.send(request, on_reply);
    }

    /// Stores `object` (a driver's `put`) on a node over Flight `DoPut`: a live node on this
    /// process's own host if there is one (the driver has no store of its own), the one whose
    /// store holds the least. The driver owns it like a task's output; the store keeps it
    /// (spilling it under pressure, never dropping it) until the last ref drops.
    pub async fn put_object(&self, object: Object) -> Result<ObjectRef> {
        let nodes = self.nodes().await?;
        let node = put_node(&nodes, self.own_ip)
            .ok_or_else(|| Error::Internal("no live node to put the object on".into()))?;
        let location = Location {
            node: manta_engine::NodeId::from_slice(&node.node_id)?,
            flight_address: Arc::from(node.address.as_str()),
        };
        let id = ObjectId::random();
        let num_rows = match &object {
            Object::Block(block) => block.num_rows() as u64,
            Object::Bytes(_) => 0,
        };
        let size_bytes = self
            .flight
            .push_for_job(&location, id, &object, self.job)
            .await?;
        let meta = manta_engine::ObjectMeta {
            id,
            location,
            size_bytes,
            num_rows,
        };
        Ok(ObjectRef::new(meta, Arc::clone(&self.releaser)))
    }

    /// Reads an object from the node that holds it (or from the ref, for a small task result
    /// that came back inline): in place from its shared memory if the node is on this
    /// machine ([`crate::local_stores`]), else over Flight.
    pub async fn get(&self, object: &ObjectRef) -> Result<Object> {
        if let Some(value) = object.inline_value() {
            return Ok(Object::Bytes(value.clone()));
        }
        let location = object.location();
        if let Some(object) = self.read_in_place(location.node, object.id()).await {
            return Ok(object);
        }
        self.flight
            .fetch(location, object.id())
            .await
            .map_err(|e| Error::fetching(&location.flight_address, object.id(), e))
    }

    /// Object `id` of `node` read from the node's shared memory, if the node is on this
    /// machine and has it there (the head is asked where a node's store is once per node).
    async fn read_in_place(&self, node: manta_engine::NodeId, id: ObjectId) -> Option<Object> {
        let dir = match self.local.lookup(node) {
            Some(known) => known,
            None => {
                let listed = tokio::time::timeout(LIST_DEADLINE, self.nodes()).await;
                let nodes = listed.ok()?.ok()?;
                self.local.learn(&nodes, node);
                self.local.lookup(node).flatten()
            }
        }?;
        // A few syscalls (open, flock, mmap): the bytes are read when the caller touches them.
        crate::local_stores::LocalStores::read(&dir, id)
    }

    /// The cluster's nodes, as the head sees them.
    pub async fn nodes(&self) -> Result<Vec<proto::NodeInfo>> {
        let mut head = self.head.clone();
        Ok(head
            .list_nodes(proto::ListNodesRequest {})
            .await
            .map_err(|s| head_call_failed(&self.address, "ListNodes", s))?
            .into_inner()
            .nodes)
    }

    /// The object stores of the live nodes, summed (as of their last heartbeats); asks the head
    /// at most every 200 ms.
    pub async fn store_usage(&self) -> Result<manta_engine::StoreUsage> {
        if let Some((at, usage)) = *self.usage.lock()
            && at.elapsed() < USAGE_TTL
        {
            return Ok(usage);
        }
        let mut sum = proto::StoreUsage::default();
        for node in self.nodes().await?.into_iter().filter(|n| n.alive) {
            sum += &node.store.unwrap_or_default();
        }
        let total: manta_engine::StoreUsage = sum.into();
        *self.usage.lock() = Some((std::time::Instant::now(), total));
        Ok(total)
    }

    /// Tells the nodes to stop this job's workers.
    pub async fn end_job(&self) -> Result<()> {
        let mut head = self.head.clone();
        head.end_job(proto::EndJobRequest {
            job_id: Bytes::copy_from_slice(self.job.as_bytes()),
        })
        .await
        .map_err(|s| head_call_failed(&self.address, "EndJob", s))?;
        Ok(())
    }
}

/// The error of a call to the head: [`Error::HeadLost`] when the connection broke (the status
/// came from the transport, or from the task stream that ended with it), else what the head
/// answered.
fn head_call_failed(address: &str, call: &'static str, status: tonic::Status) -> Error {
    let from_transport = std::error::Error::source(&status).is_some()
        || status
            .message()
            .starts_with(crate::task_stream::STREAM_ENDED);
    if !from_transport {
        return Error::rpc(call, status);
    }
    let reason = match std::error::Error::source(&status) {
        Some(source) => server::transport_reason(source),
        None => status.message().to_string(),
    };
    Error::HeadLost {
        address: address.to_string(),
        call,
        reason,
    }
}

/// The error of a driver's first call to the head: a transport failure (the head's end does
/// not speak what this end does, most often TLS on one side only) is [`Error::HeadUnreachable`]
/// with a hint; an answer from the head (a wrong token, ...) is what the head said.
fn joining_failed(address: &str, status: tonic::Status) -> Error {
    let Some(source) = std::error::Error::source(&status) else {
        return Error::rpc("RegisterJob", status);
    };
    let hint = if server::normalize_address(address).starts_with("https://") {
        "; is the head serving TLS, and does its certificate name this address?"
    } else {
        "; if the head serves TLS, address it as https://HOST:PORT"
    };
    Error::HeadUnreachable {
        address: address.to_string(),
        reason: format!("{}{hint}", server::transport_reason(source)),
    }
}

/// The IP address of `address` (a `host:port` or a URL).
fn ip_of(address: &str) -> Option<std::net::IpAddr> {
    use std::net::ToSocketAddrs;
    let url = server::normalize_address(address);
    let authority = url.split("://").nth(1)?.trim_end_matches('/');
    Some(authority.to_socket_addrs().ok()?.next()?.ip())
}

/// The IP address this process reaches `address` from (connecting a UDP socket only picks the
/// route; nothing is sent).
fn own_ip_towards(address: &str) -> Option<std::net::IpAddr> {
    let target = ip_of(address)?;
    let any: std::net::IpAddr = if target.is_ipv4() {
        std::net::Ipv4Addr::UNSPECIFIED.into()
    } else {
        std::net::Ipv6Addr::UNSPECIFIED.into()
    };
    let socket = std::net::UdpSocket::bind((any, 0)).ok()?;
    socket.connect((target, 9)).ok()?;
    Some(socket.local_addr().ok()?.ip())
}

/// Where a driver's `put` goes: among the live nodes on the host at `own_ip` (all live nodes
/// if none is there), the one whose store holds the least.
fn put_node(
    nodes: &[proto::NodeInfo],
    own_ip: Option<std::net::IpAddr>,
) -> Option<&proto::NodeInfo> {
    let live = || nodes.iter().filter(|n| n.alive);
    let local = || live().filter(|n| own_ip.is_some() && ip_of(&n.address) == own_ip);
    let least = |n: &&proto::NodeInfo| n.store.map_or(0, |s| s.resident_bytes);
    local()
        .min_by_key(least)
        .or_else(|| live().min_by_key(least))
}

fn outcome(reply: proto::TaskReply, releaser: &Arc<dyn ReleaseObject>) -> Result<TaskOutcome> {
    match reply.result {
        Some(task_reply::Result::Success(success)) => {
            let output = success
                .output
                .ok_or_else(|| Error::Internal("task reply without output".into()))?;
            let meta = output.to_meta()?;
            let output = match output.inline {
                Some(value) => ObjectRef::inline(meta, value),
                None => ObjectRef::new(meta, Arc::clone(releaser)),
            };
            Ok(TaskOutcome {
                output,
                stats: success.stats.unwrap_or_default().into(),
            })
        }
        Some(task_reply::Result::Error(error)) => Err(error.into_error()),
        None => Err(Error::Internal("empty task reply".into())),
    }
}

/// Uploads the executable at `path` to the head's content-addressed cache (unless it has it
/// already); its hash, which names it there (what `manta job submit` runs).
pub async fn upload_executable(
    head: &mut HeadClient<AuthChannel>,
    path: &std::path::Path,
) -> Result<String> {
    let (hash, size) = {
        let path = path.to_path_buf();
        tokio::task::spawn_blocking(move || hash_file(&path))
            .await
            .map_err(|e| Error::Internal(e.to_string()))??
    };
    // Registering with the hash answers whether the head has it (the job id is not used).
    let reply = head
        .register_job(proto::RegisterJobRequest {
            executable_hash: hash.clone(),
            executable_size: size,
            ..Default::default()
        })
        .await
        .map_err(|s| Error::rpc("RegisterJob", s))?
        .into_inner();
    if !reply.has_executable {
        upload(head, path, &hash).await?;
    }
    head.end_job(proto::EndJobRequest {
        job_id: reply.job_id,
    })
    .await
    .map_err(|s| Error::rpc("EndJob", s))?;
    Ok(hash)
}

async fn upload(
    head: &mut HeadClient<AuthChannel>,
    executable: &std::path::Path,
    hash: &str,
) -> Result<()> {
    let file = tokio::fs::File::open(executable)
        .await
        .map_err(|source| Error::Io {
            action: "reading",
            path: executable.to_path_buf(),
            source,
        })?;
    let mut first = true;
    let hash = hash.to_string();
    let chunks = futures::StreamExt::map(
        tokio_util::io::ReaderStream::with_capacity(file, 1 << 20),
        move |data| {
            let hash = if std::mem::take(&mut first) {
                hash.clone()
            } else {
                String::new()
            };
            proto::ExecutableChunk {
                hash,
                data: data.unwrap_or_default(),
            }
        },
    );
    head.upload_executable(chunks)
        .await
        .map_err(|s| Error::rpc("UploadExecutable", s))?;
    Ok(())
}

/// Frees released objects on their nodes, a batch per node at a time.
async fn free_objects(mut released: mpsc::UnboundedReceiver<(ObjectId, Location)>, token: Token) {
    let mut clients: HashMap<Arc<str>, NodeClient<AuthChannel>> = HashMap::new();
    let mut batch = Vec::new();
    while released.recv_many(&mut batch, 1024).await > 0 {
        let mut by_node: HashMap<Arc<str>, Vec<Bytes>> = HashMap::new();
        for (id, location) in batch.drain(..) {
            by_node
                .entry(location.flight_address)
                .or_default()
                .push(Bytes::copy_from_slice(id.as_bytes()));
        }
        for (address, object_ids) in by_node {
            let client = match clients.get(&address) {
                Some(client) => client.clone(),
                None => match server::lazy_channel(&address, &token) {
                    Ok(channel) => clients
                        .entry(Arc::clone(&address))
                        .or_insert(NodeClient::new(channel))
                        .clone(),
                    Err(_) => continue,
                },
            };
            let mut client = client;
            if let Err(status) = client
                .free_objects(proto::FreeObjectsRequest { object_ids })
                .await
            {
                tracing::debug!(%address, %status, "freeing objects failed (node gone?)");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(address: &str, resident_bytes: u64, alive: bool) -> proto::NodeInfo {
        proto::NodeInfo {
            address: address.into(),
            alive,
            store: Some(proto::StoreUsage {
                resident_bytes,
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    #[test]
    fn puts_go_to_the_emptiest_live_node_on_the_drivers_host() {
        let nodes = [
            node("http://10.0.0.2:4000", 0, true),
            node("http://127.0.0.1:4001", 500, true),
            node("http://127.0.0.1:4002", 100, false),
            node("http://127.0.0.1:4003", 200, true),
        ];
        let own = own_ip_towards("127.0.0.1:4000");
        assert_eq!(own, Some(std::net::Ipv4Addr::LOCALHOST.into()));
        assert_eq!(
            put_node(&nodes, own).unwrap().address,
            "http://127.0.0.1:4003"
        );
        // No live node on this host: the emptiest live node anywhere.
        let elsewhere = Some("192.168.9.9".parse().unwrap());
        assert_eq!(
            put_node(&nodes, elsewhere).unwrap().address,
            "http://10.0.0.2:4000"
        );
        assert!(put_node(&nodes[2..3], own).is_none());
    }
}
