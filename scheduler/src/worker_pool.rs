//! A node's worker processes, per job.
//!
//! # How it works
//!
//! A worker is the job's own executable, started by the node with `MANTA_WORKER_*` variables in
//! its environment; its `manta::init()` sees them, connects back to the node's `Worker` service,
//! says hello, and then runs the tasks it is sent one at a time (see [`crate::worker`]).
//!
//! Per job the pool keeps idle workers and a queue of tasks waiting for one. A task takes an
//! idle worker if there is one; otherwise, if the job has fewer than `max_workers` processes, a
//! new one is started; otherwise the task waits in line and gets the next worker given back.
//! A worker that dies (its stream ends, or its process exits) fails the task it was running
//! with `WorkerDied`; a process that exits before it ever attached fails the waiting tasks, with
//! its exit status, since the likeliest cause (a `main` that does not call `manta::init()` first)
//! would fail every later start too.
//!
//! An actor gets a worker process of its own ([`WorkerPools::start_actor`]), outside the pool:
//! it runs the actor's constructor and then its calls, and is killed when the actor is.
//!
//! Workers are started with `kill_on_drop` and a parent-death signal, so they never outlive
//! their node, and `end_job` stops a job's workers when its driver is done.

use std::collections::{HashMap, VecDeque};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use bytes::Bytes;
use manta_engine::{ActorId, JobId, NodeId};
use manta_flight::auth::Token;
use parking_lot::Mutex;
use tokio::sync::{mpsc, oneshot};
use tonic::Status;

use crate::error::{Error, Result};
use crate::executables::JobExecutable;
use crate::proto::{WorkerAssignment, WorkerDone};

/// Environment variables a worker process is started with.
pub mod env {
    /// The node's address, to attach to.
    pub const NODE_ADDRESS: &str = "MANTA_WORKER_NODE_ADDRESS";
    /// The node's id.
    pub const NODE_ID: &str = "MANTA_WORKER_NODE_ID";
    /// The job the worker serves.
    pub const JOB_ID: &str = "MANTA_WORKER_JOB_ID";
    /// The node's shared-memory object directory.
    pub const SHARED_DIR: &str = "MANTA_WORKER_SHARED_DIR";
    /// The worker's index within its job on this node.
    pub const INDEX: &str = "MANTA_WORKER_INDEX";
    /// Set when the worker runs one actor: the actor's id.
    pub const ACTOR: &str = "MANTA_WORKER_ACTOR";
    /// The cluster token the worker presents when it attaches.
    pub const TOKEN: &str = "MANTA_WORKER_TOKEN";
}

/// Short tasks queued on one busy worker at most (see [`WorkerPools::run`]).
pub const PIPELINE_DEPTH: usize = 64;

/// One attached worker process.
pub struct WorkerConn {
    pid: u32,
    assignments: mpsc::Sender<Result<WorkerAssignment, Status>>,
    /// The tasks sent and not yet answered (a pool worker has one at most; an actor's worker
    /// has its queued calls), each with the sender its answer goes to.
    running: Mutex<HashMap<Bytes, oneshot::Sender<WorkerDone>>>,
}

impl WorkerConn {
    fn new(pid: u32, assignments: mpsc::Sender<Result<WorkerAssignment, Status>>) -> Arc<Self> {
        Arc::new(Self {
            pid,
            assignments,
            running: Mutex::new(HashMap::new()),
        })
    }

    /// The worker's process id.
    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// Delivers the worker's answer to the task waiting for it.
    pub fn complete(&self, done: WorkerDone) {
        if let Some(reply) = self.running.lock().remove(&done.task_id) {
            let _ = reply.send(done);
        }
    }

    /// Sends the worker a task; the receiver gets its answer, or is closed if the worker dies
    /// first. The worker runs what it is sent in the order sent.
    pub async fn send(
        &self,
        assignment: WorkerAssignment,
    ) -> std::result::Result<oneshot::Receiver<WorkerDone>, WorkerAssignment> {
        let (reply, answer) = oneshot::channel();
        let task = assignment.task_id.clone();
        self.running.lock().insert(task.clone(), reply);
        match self.assignments.send(Ok(assignment)).await {
            Ok(()) => Ok(answer),
            Err(returned) => {
                self.running.lock().remove(&task);
                Err(returned.0.expect("sent Ok"))
            }
        }
    }
}

struct JobWorkers {
    executable: JobExecutable,
    idle: Vec<Arc<WorkerConn>>,
    /// Every attached worker, idle or not (short tasks are queued on busy ones).
    attached: Vec<Arc<WorkerConn>>,
    /// Processes started and not yet dead (attached or still starting).
    live: usize,
    waiting: VecDeque<oneshot::Sender<Result<Arc<WorkerConn>>>>,
    next_index: u64,
    pids: Vec<u32>,
}

/// A worker taken for one task, given back when dropped: also when the task's caller went away
/// before the answer (the worker runs its tasks in order, so one sent meanwhile just queues).
struct Borrowed<'a> {
    pools: &'a WorkerPools,
    job: JobId,
    worker: Arc<WorkerConn>,
}

impl std::ops::Deref for Borrowed<'_> {
    type Target = WorkerConn;

    fn deref(&self) -> &WorkerConn {
        &self.worker
    }
}

impl Drop for Borrowed<'_> {
    fn drop(&mut self) {
        self.pools.give_back(self.job, Arc::clone(&self.worker));
    }
}

/// An actor's worker being started: its start's token, and who waits for it to attach.
type PendingStart = (u64, oneshot::Sender<Arc<WorkerConn>>);

/// Every job's workers on one node.
pub struct WorkerPools {
    jobs: Mutex<HashMap<JobId, JobWorkers>>,
    max_workers: usize,
    node_id: NodeId,
    node_address: String,
    shared_dir: PathBuf,
    /// The cluster token, handed to each worker to attach with.
    token: Token,
    /// The certificate authorities the node trusts (a PEM file), handed to each worker so that
    /// it can attach to a node serving TLS.
    tls_ca: Option<PathBuf>,
    /// Actors' workers started and not yet attached, with their start's token.
    actor_starts: Mutex<HashMap<ActorId, PendingStart>>,
    actor_start_tokens: std::sync::atomic::AtomicU64,
    /// Actors' worker processes: their job and pid.
    actor_pids: Mutex<HashMap<ActorId, (JobId, u32)>>,
}

impl WorkerPools {
    /// Pools for a node with `max_workers` workers per job.
    pub fn new(
        max_workers: usize,
        node_id: NodeId,
        node_address: String,
        shared_dir: PathBuf,
        token: Token,
        tls_ca: Option<PathBuf>,
    ) -> Arc<Self> {
        Arc::new(Self {
            token,
            tls_ca,
            jobs: Mutex::default(),
            max_workers: max_workers.max(1),
            node_id,
            node_address,
            shared_dir,
            actor_starts: Mutex::default(),
            actor_start_tokens: Default::default(),
            actor_pids: Mutex::default(),
        })
    }

    /// Runs one assignment on a worker of `job` and waits for its answer. A `pipeline`d (short)
    /// task that finds every worker busy is queued on the least loaded one rather than waiting
    /// for one to come back: the worker starts it the moment its current task ends, with no
    /// round trip in between. Answers the worker's process id too.
    pub async fn run(
        self: &Arc<Self>,
        job: JobId,
        executable: JobExecutable,
        assignment: WorkerAssignment,
        pipeline: bool,
    ) -> Result<(WorkerDone, u32)> {
        if let Some(worker) = pipeline.then(|| self.busy_worker(job)).flatten() {
            let done = self.send_to(&worker, assignment).await?;
            return Ok((done, worker.pid()));
        }
        let worker = Borrowed {
            pools: self,
            job,
            worker: self.acquire(job, executable).await?,
        };
        let done = self.send_to(&worker, assignment).await?;
        Ok((done, worker.pid()))
    }

    /// The busy worker with the fewest tasks queued, when no worker is idle, none can be
    /// started, and one has fewer than [`PIPELINE_DEPTH`] queued.
    fn busy_worker(&self, job: JobId) -> Option<Arc<WorkerConn>> {
        let jobs = self.jobs.lock();
        let workers = jobs.get(&job)?;
        if !workers.idle.is_empty() || workers.live < self.max_workers {
            return None;
        }
        workers
            .attached
            .iter()
            .map(|w| (w.running.lock().len(), w))
            .filter(|(queued, _)| *queued < PIPELINE_DEPTH)
            .min_by_key(|(queued, _)| *queued)
            .map(|(_, w)| Arc::clone(w))
    }

    async fn send_to(
        &self,
        worker: &WorkerConn,
        assignment: WorkerAssignment,
    ) -> Result<WorkerDone> {
        let label = assignment.label.clone();
        let died = |message: &str| Error::WorkerDied {
            task: label.clone(),
            node: self.node_address.clone(),
            message: format!("worker pid {} {message}", worker.pid),
        };
        let Ok(answer) = worker.send(assignment).await else {
            return Err(died("was gone before the task reached it"));
        };
        answer
            .await
            .map_err(|_| died("exited while running the task"))
    }

    async fn acquire(
        self: &Arc<Self>,
        job: JobId,
        executable: JobExecutable,
    ) -> Result<Arc<WorkerConn>> {
        let (tx, rx) = oneshot::channel();
        let start = {
            let mut jobs = self.jobs.lock();
            let workers = jobs.entry(job).or_insert_with(|| JobWorkers {
                executable,
                idle: Vec::new(),
                attached: Vec::new(),
                live: 0,
                waiting: VecDeque::new(),
                next_index: 0,
                pids: Vec::new(),
            });
            while let Some(worker) = workers.idle.pop() {
                if !worker.assignments.is_closed() {
                    return Ok(worker);
                }
            }
            workers.waiting.push_back(tx);
            if workers.live < self.max_workers {
                workers.live += 1;
                workers.next_index += 1;
                Some((workers.executable.clone(), workers.next_index))
            } else {
                None
            }
        };
        if let Some((executable, index)) = start {
            self.start(job, executable, index);
        }
        rx.await
            .map_err(|_| Error::Internal("the node stopped the job's workers".into()))?
    }

    fn give_back(&self, job: JobId, worker: Arc<WorkerConn>) {
        if worker.assignments.is_closed() {
            return;
        }
        let mut jobs = self.jobs.lock();
        let Some(workers) = jobs.get_mut(&job) else {
            return;
        };
        let mut worker = Some(worker);
        while let Some(waiter) = workers.waiting.pop_front() {
            match waiter.send(Ok(worker.take().expect("present"))) {
                Ok(()) => return,
                Err(returned) => worker = returned.ok(),
            }
        }
        workers.idle.extend(worker);
    }

    /// The command that starts a worker process of `job`.
    fn command(&self, job: JobId, executable: &Path, index: u64) -> tokio::process::Command {
        let mut command = tokio::process::Command::new(executable);
        command
            .env(env::NODE_ADDRESS, &self.node_address)
            .env(env::NODE_ID, self.node_id.to_string())
            .env(env::JOB_ID, job.to_string())
            .env(env::SHARED_DIR, &self.shared_dir)
            .env(env::INDEX, index.to_string())
            .env(env::TOKEN, self.token.secret())
            // A worker must never act as a driver and submit work of its own.
            .env_remove("MANTA_ADDRESS")
            .stdin(std::process::Stdio::null())
            .kill_on_drop(true);
        if let Some(ca) = &self.tls_ca {
            command.env(manta_flight::tls::CA_ENV, ca);
        }
        // SAFETY: prctl is async-signal-safe; it asks the kernel to kill the worker if the node
        // daemon dies, so workers never outlive their node.
        unsafe {
            command.pre_exec(|| {
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
                Ok(())
            });
        }
        command
    }

    /// Starts a worker process for `actor` alone and waits until it has attached.
    pub async fn start_actor(
        self: &Arc<Self>,
        job: JobId,
        executable: JobExecutable,
        actor: ActorId,
    ) -> Result<Arc<WorkerConn>> {
        let executable = executable.path().await?;
        let mut command = self.command(job, &executable, 0);
        command.env(env::ACTOR, actor.to_string());
        let (attached, answer) = oneshot::channel();
        // This start's token: the exit watcher of an earlier worker of the same actor (a
        // restart) must not take away this start's entries.
        let token = self
            .actor_start_tokens
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        self.actor_starts.lock().insert(actor, (token, attached));
        let mut child = command.spawn().map_err(|e| Error::WorkerDied {
            task: format!("actor {actor:?}"),
            node: self.node_address.clone(),
            message: format!("could not start worker {}: {e}", executable.display()),
        })?;
        let pid = child.id().unwrap_or(0);
        tracing::info!(%job, pid, ?actor, "started an actor's worker");
        self.actor_pids.lock().insert(actor, (job, pid));
        let pools = Arc::clone(self);
        tokio::spawn(async move {
            let status = child.wait().await;
            tracing::info!(?actor, pid, ?status, "actor worker exited");
            let mut pids = pools.actor_pids.lock();
            if pids.get(&actor).is_some_and(|(_, p)| *p == pid) {
                pids.remove(&actor);
            }
            let mut starts = pools.actor_starts.lock();
            if starts.get(&actor).is_some_and(|(t, _)| *t == token) {
                starts.remove(&actor);
            }
        });
        answer.await.map_err(|_| Error::WorkerDied {
            task: format!("actor {actor:?}"),
            node: self.node_address.clone(),
            message: format!("worker pid {pid} exited before it attached"),
        })
    }

    /// An actor's worker attached: hand it to the start waiting for it.
    pub fn attached_actor(
        &self,
        actor: ActorId,
        pid: u32,
        assignments: mpsc::Sender<Result<WorkerAssignment, Status>>,
    ) -> Arc<WorkerConn> {
        let worker = WorkerConn::new(pid, assignments);
        if let Some((_, start)) = self.actor_starts.lock().remove(&actor) {
            let _ = start.send(Arc::clone(&worker));
        }
        worker
    }

    /// Kills `actor`'s worker process, if it runs here.
    pub fn kill_actor(&self, actor: ActorId) {
        if let Some((_, pid)) = self.actor_pids.lock().get(&actor) {
            // SAFETY: plain kill(2) of a child this pool started; its watcher task reaps it.
            unsafe { libc::kill(*pid as i32, libc::SIGKILL) };
        }
    }

    /// Starts one worker process, from its executable checked to be in place (on a task of
    /// its own); a task watches it until it exits.
    fn start(self: &Arc<Self>, job: JobId, executable: JobExecutable, index: u64) {
        let pools = Arc::clone(self);
        tokio::spawn(async move {
            let spawned = match executable.path().await {
                Ok(path) => pools
                    .command(job, &path, index)
                    .spawn()
                    .map_err(|e| format!("could not start worker {}: {e}", path.display())),
                Err(e) => Err(format!("could not start a worker: {e}")),
            };
            let mut child = match spawned {
                Ok(child) => child,
                Err(message) => return pools.start_failed(job, &message),
            };
            let pid = child.id().unwrap_or(0);
            match pools.jobs.lock().get_mut(&job) {
                Some(workers) => workers.pids.push(pid),
                // The job ended while the executable was checked: `end_job` could not stop
                // this worker, so dropping it does (`kill_on_drop`).
                None => return,
            }
            tracing::info!(%job, pid, index, "started worker");
            let status = child.wait().await;
            let status = status
                .map(|s| s.to_string())
                .unwrap_or_else(|e| e.to_string());
            pools.exited(job, pid, &status);
        });
    }

    /// A worker process connected and said hello: hand it to a waiting task, or keep it idle.
    pub fn attached(
        &self,
        job: JobId,
        pid: u32,
        assignments: mpsc::Sender<Result<WorkerAssignment, Status>>,
    ) -> Arc<WorkerConn> {
        let worker = WorkerConn::new(pid, assignments);
        tracing::debug!(%job, pid, "worker attached");
        if let Some(workers) = self.jobs.lock().get_mut(&job) {
            workers.attached.push(Arc::clone(&worker));
        }
        self.give_back(job, Arc::clone(&worker));
        worker
    }

    /// A worker's stream ended: it is dead. The task it was running (if any) has already
    /// failed, since its reply channel is dropped with the connection.
    pub fn detached(&self, job: JobId, worker: &Arc<WorkerConn>) {
        worker.running.lock().clear();
        let mut jobs = self.jobs.lock();
        if let Some(workers) = jobs.get_mut(&job) {
            workers.idle.retain(|w| !Arc::ptr_eq(w, worker));
            workers.attached.retain(|w| !Arc::ptr_eq(w, worker));
        }
    }

    /// A worker process exited, attached or not.
    fn exited(&self, job: JobId, pid: u32, status: &str) {
        tracing::info!(%job, pid, status, "worker exited");
        let mut jobs = self.jobs.lock();
        let Some(workers) = jobs.get_mut(&job) else {
            return;
        };
        workers.live = workers.live.saturating_sub(1);
        workers.idle.retain(|w| w.pid != pid);
        workers.attached.retain(|w| w.pid != pid);
        workers.pids.retain(|p| *p != pid);
        if workers.live == 0 && !workers.waiting.is_empty() {
            let message = format!(
                "worker pid {pid} exited ({status}) and no worker of the job is left; \
                 does the program's main() call manta::init() before anything else?"
            );
            for waiter in workers.waiting.drain(..) {
                let _ = waiter.send(Err(Error::WorkerDied {
                    task: "a task".into(),
                    node: self.node_address.clone(),
                    message: message.clone(),
                }));
            }
        }
    }

    fn start_failed(&self, job: JobId, message: &str) {
        let mut jobs = self.jobs.lock();
        let Some(workers) = jobs.get_mut(&job) else {
            return;
        };
        workers.live = workers.live.saturating_sub(1);
        if workers.live == 0 {
            for waiter in workers.waiting.drain(..) {
                let _ = waiter.send(Err(Error::WorkerDied {
                    task: "a task".into(),
                    node: self.node_address.clone(),
                    message: message.to_string(),
                }));
            }
        }
    }

    /// Live worker processes: those running tasks (attached or starting) and actors'.
    pub fn live_workers(&self) -> usize {
        let tasks: usize = self.jobs.lock().values().map(|j| j.live).sum();
        tasks + self.actor_pids.lock().len()
    }

    /// Stops the workers of every job (the head is lost); returns how many jobs had some.
    pub fn end_all_jobs(&self) -> usize {
        let mut jobs: Vec<JobId> = self.jobs.lock().keys().copied().collect();
        jobs.extend(self.actor_pids.lock().values().map(|(job, _)| *job));
        jobs.sort_unstable();
        jobs.dedup();
        for job in &jobs {
            self.end_job(*job);
        }
        jobs.len()
    }

    /// Stops every worker of `job` (its driver is done), its actors' too.
    pub fn end_job(&self, job: JobId) {
        for (_, (actor_job, pid)) in self.actor_pids.lock().iter() {
            if *actor_job == job {
                // SAFETY: plain kill(2) of a child this pool started; its watcher reaps it.
                unsafe { libc::kill(*pid as i32, libc::SIGTERM) };
            }
        }
        let Some(workers) = self.jobs.lock().remove(&job) else {
            return;
        };
        for pid in workers.pids {
            // SAFETY: plain kill(2) of a child this pool started; its watcher task reaps it.
            unsafe { libc::kill(pid as i32, libc::SIGTERM) };
        }
        for waiter in workers.waiting {
            let _ = waiter.send(Err(Error::Internal(format!("job {job} ended"))));
        }
    }
}
