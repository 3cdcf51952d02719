//! The worker process: what `manta::init()` becomes when a node daemon started the program.
//!
//! The worker attaches to its node's `Worker` service, says hello, and then runs each task it
//! is sent: it maps the task's inputs from the node's shared memory (zero-copy: the batches'
//! buffers point into the mapping), runs the registered function, writes the output object into
//! shared memory for the node to adopt (or, a small bytes result, sends it back inline), and
//! answers. Tasks run one at a time, in the order sent, on a thread of their own (the node may
//! queue several short ones); when the node closes the stream (or dies), the worker exits.

use std::ops::Range;
use std::path::PathBuf;

use bytes::Bytes;
use manta_engine::store::{ObjectDir, SpilledBatch};
use manta_engine::{NodeId, Object, ObjectId, TaskContext};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;

use crate::error::{Error, Result, from_task_error};
use crate::peak_memory::PeakMemory;
use crate::proto::worker_client::WorkerClient;
use crate::proto::{self, worker_done, worker_message};
use crate::worker_pool::{PIPELINE_DEPTH, env};

/// Bytes results up to this size go back with the task's answer (and on to the driver) rather
/// than into shared memory: a small result costs no file, no fetch and no free (Ray's
/// `max_direct_call_object_size` is 100 KiB).
pub const INLINE_RESULT_BYTES: usize = 64 << 10;

/// What a worker process learns from its environment.
#[derive(Clone, Debug)]
pub struct WorkerEnv {
    /// Its node's address.
    pub node_address: String,
    /// Its node's id.
    pub node_id: NodeId,
    /// Its job.
    pub job_id: manta_engine::JobId,
    /// The node's shared-memory directory.
    pub shared_dir: PathBuf,
    /// Its index among the job's workers on the node.
    pub index: u64,
    /// The actor it was started for, if any.
    pub actor: Option<manta_engine::ActorId>,
    /// The cluster token it attaches with.
    pub token: manta_flight::auth::Token,
}

impl WorkerEnv {
    /// The worker environment, if this process was started as a worker.
    pub fn from_env() -> Option<Self> {
        let node_address = std::env::var(env::NODE_ADDRESS).ok()?;
        let parse_err = |what: &str| -> ! {
            eprintln!("manta worker: invalid {what} in the environment");
            std::process::exit(2)
        };
        Some(Self {
            node_address,
            node_id: std::env::var(env::NODE_ID)
                .ok()
                .and_then(|v| v.parse().ok())
                .unwrap_or_else(|| parse_err(env::NODE_ID)),
            job_id: std::env::var(env::JOB_ID)
                .ok()
                .and_then(|v| v.parse().ok())
                .unwrap_or_else(|| parse_err(env::JOB_ID)),
            shared_dir: std::env::var_os(env::SHARED_DIR)
                .map(PathBuf::from)
                .unwrap_or_else(|| parse_err(env::SHARED_DIR)),
            index: std::env::var(env::INDEX)
                .ok()
                .and_then(|v| v.parse().ok())
                .unwrap_or(0),
            actor: std::env::var(env::ACTOR).ok().and_then(|v| v.parse().ok()),
            token: std::env::var(env::TOKEN)
                .ok()
                .and_then(|v| manta_flight::auth::Token::new(&v).ok())
                .unwrap_or_else(|| parse_err(env::TOKEN)),
        })
    }
}

/// Runs the worker loop until the node closes the stream, then exits the process.
pub fn run_worker(worker: WorkerEnv) -> ! {
    raise_open_files_limit();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    let code = match runtime.block_on(serve(worker)) {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("manta worker: {e}");
            1
        }
    };
    std::process::exit(code)
}

/// Every input a worker maps keeps its file open (and locked) while it lives (see
/// `ObjectDir::read_locked`): a task reading a thousand partitions needs a thousand
/// descriptors, past the usual soft limit of 1,024. The hard limit is the real one.
fn raise_open_files_limit() {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: get/setrlimit with a valid pointer to a local struct.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) == 0 && limit.rlim_cur < limit.rlim_max
        {
            limit.rlim_cur = limit.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &limit);
        }
    }
}

async fn serve(worker: WorkerEnv) -> Result<()> {
    let channel = crate::server::lazy_channel(&worker.node_address, &worker.token)?;
    let mut client = WorkerClient::new(channel);
    // Room for every answer the task thread can have ready at once (the node queues at most
    // `PIPELINE_DEPTH` tasks on a worker): the answers ready when the stream's encoder runs
    // go in one write. With room for two, a worker of short tasks wrote once per one or two
    // answers, and its writes and wake-ups were most of its cost.
    let (tx, rx) = mpsc::channel(PIPELINE_DEPTH + 1);
    let hello = proto::WorkerHello {
        job_id: Bytes::copy_from_slice(worker.job_id.as_bytes()),
        pid: std::process::id(),
        worker_index: worker.index,
        actor_id: worker
            .actor
            .map(|a| Bytes::copy_from_slice(a.as_bytes()))
            .unwrap_or_default(),
    };
    tx.send(proto::WorkerMessage {
        kind: Some(worker_message::Kind::Hello(hello)),
    })
    .await
    .map_err(|_| Error::Internal("worker channel closed".into()))?;
    let mut assignments = client
        .attach(ReceiverStream::new(rx))
        .await
        .map_err(|s| Error::rpc("Attach", s))?
        .into_inner();
    // Tasks run one after another on a thread of their own, which takes the next assignment
    // queued (the node may queue several short ones) without waiting on this runtime.
    let (to_runner, queued) = std::sync::mpsc::channel::<proto::WorkerAssignment>();
    let (finished, mut answers) = mpsc::unbounded_channel::<proto::WorkerDone>();
    let dir = ObjectDir::open(&worker.shared_dir);
    let ctx = TaskContext::new(worker.node_id);
    std::thread::Builder::new()
        .name("manta-task".into())
        .spawn(move || {
            let peak_memory = PeakMemory::open();
            // The thread's CPU clock, read once per task (see `execute_wall_timed`): each task
            // is charged what this thread did since the last task's output was stored.
            let mut cpu_read = manta_engine::task::thread_cpu_time();
            for assignment in queued {
                let task_id = assignment.task_id.clone();
                // The same task and stage ids as the node's span for this task: a task's log
                // lines can be followed across processes.
                let span = tracing::info_span!(
                    "task",
                    task_id = %hex::encode(&task_id),
                    stage = %crate::events::stage_of(&assignment.label),
                    label = %assignment.label,
                );
                let _in_task = span.enter();
                let started = std::time::Instant::now();
                let outcome = run_assignment(&ctx, &dir, assignment);
                let cpu_now = manta_engine::task::thread_cpu_time();
                let cpu_ns = cpu_now.saturating_sub(cpu_read).as_nanos() as u64;
                cpu_read = cpu_now;
                let result = match outcome {
                    Ok(mut output) => {
                        if let Some(stats) = &mut output.stats {
                            stats.cpu_ns = cpu_ns;
                            if let Some(peak) = &peak_memory {
                                stats.peak_memory_bytes = peak.after_task(started.elapsed());
                            }
                        }
                        worker_done::Result::Output(output)
                    }
                    Err(e) => worker_done::Result::Error(proto::TaskError::from_error(&e)),
                };
                let done = proto::WorkerDone {
                    task_id,
                    result: Some(result),
                };
                if finished.send(done).is_err() {
                    break;
                }
            }
        })
        .map_err(|e| Error::Internal(format!("starting the task thread: {e}")))?;
    loop {
        tokio::select! {
            assignment = assignments.message() => {
                match assignment.map_err(|s| Error::rpc("Attach", s))? {
                    Some(assignment) => {
                        if to_runner.send(assignment).is_err() {
                            return Err(Error::Internal("the task thread stopped".into()));
                        }
                    }
                    None => break,
                }
            }
            Some(done) = answers.recv() => {
                // Every answer ready now, then the encoder: one write for them all.
                let more = std::iter::from_fn(|| answers.try_recv().ok()).take(PIPELINE_DEPTH);
                let ready = std::iter::once(done).chain(more);
                for done in ready {
                    let message = proto::WorkerMessage {
                        kind: Some(worker_message::Kind::Done(done)),
                    };
                    if tx.send(message).await.is_err() {
                        return Ok(());
                    }
                }
            }
        }
    }
    Ok(())
}

/// Maps the inputs, runs the function, writes the output into shared memory.
fn run_assignment(
    ctx: &TaskContext,
    dir: &ObjectDir,
    assignment: proto::WorkerAssignment,
) -> Result<proto::WorkerOutput> {
    let started = std::time::Instant::now();
    let mut inline: std::collections::HashMap<u32, Bytes> = assignment
        .inline_inputs
        .iter()
        .map(|input| (input.index, input.data.clone()))
        .collect();
    let mut spilled: std::collections::HashMap<u32, SpilledBatch> = assignment
        .spilled_inputs
        .iter()
        .map(|input| {
            let batch = SpilledBatch {
                path: input.path.clone().into(),
                schema: input.schema_start..input.schema_end,
                batch: input.batch_start..input.batch_end,
            };
            (input.index, batch)
        })
        .collect();
    // Partitions whose messages the node says where to find in the object (`read_batch_at`).
    let mut ranged: std::collections::HashMap<u32, (Range<u64>, Range<u64>)> = assignment
        .mapped_inputs
        .iter()
        .map(|input| {
            let ranges = (
                input.schema_start..input.schema_end,
                input.batch_start..input.batch_end,
            );
            (input.index, ranges)
        })
        .collect();
    // Objects mapped so far: a node's partitions pulled from another node are the batches of
    // one object (see `manta_flight::combined`), mapped once.
    let mut mapped: std::collections::HashMap<ObjectId, Bytes> = std::collections::HashMap::new();
    let inputs = assignment
        .input_ids
        .iter()
        .enumerate()
        .map(|(i, id)| {
            if let Some(value) = inline.remove(&(i as u32)) {
                return Ok(Object::Bytes(value));
            }
            let id = ObjectId::from_slice(id)?;
            if let Some(spilled) = spilled.remove(&(i as u32)) {
                // A partition read alone from a spill file (see the node's `partitions`).
                return spilled.read(id);
            }
            match assignment.input_batches.get(i) {
                // Only the batch is decoded, not the hundreds of others of a map output.
                Some(batch) => {
                    let bytes = match mapped.get(&id) {
                        Some(bytes) => bytes.clone(),
                        None => mapped.entry(id).or_insert(dir.map_locked(id)?).clone(),
                    };
                    match ranged.remove(&(i as u32)) {
                        Some((schema, batch)) => {
                            manta_engine::store::read_batch_at(id, &bytes, schema, batch)
                        }
                        None => manta_engine::store::read_object_batch(id, bytes, *batch as usize),
                    }
                }
                None => dir.read_locked(id),
            }
        })
        .collect::<manta_engine::Result<Vec<Object>>>()?;
    let inputs_ns = started.elapsed().as_nanos() as u64;
    let (output, mut stats) = manta_engine::task::execute_wall_timed(
        ctx,
        &assignment.function,
        &assignment.label,
        assignment.args,
        inputs,
    )
    .map_err(from_task_error)?;
    stats.inputs_ns = inputs_ns;
    let num_rows = match &output {
        Object::Block(block) => block.num_rows() as u64,
        Object::Bytes(value) if value.len() <= INLINE_RESULT_BYTES => {
            return Ok(proto::WorkerOutput {
                num_rows: 0,
                stats: Some(stats.into()),
                inline: Some(value.clone()),
            });
        }
        Object::Bytes(_) => 0,
    };
    let recycled =
        (!assignment.output_file.is_empty()).then(|| std::path::Path::new(&assignment.output_file));
    let writing = std::time::Instant::now();
    dir.write_reusing(
        ObjectId::from_slice(&assignment.output_id)?,
        &output,
        recycled,
    )?;
    stats.output_ns = writing.elapsed().as_nanos() as u64;
    Ok(proto::WorkerOutput {
        num_rows,
        stats: Some(stats.into()),
        inline: None,
    })
}
