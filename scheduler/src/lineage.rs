//! Object reconstruction, on the owner's side: a task whose input was lost is submitted again
//! after the input is made again from its lineage, and a lost object a driver reads is made
//! again before it is read.
//!
//! Every task a [`Client`] submits on a cluster records its [`Lineage`] on its output ref.
//! When the head answers that an input is gone (its node died, or no longer has it), the
//! client makes that input again — from its live ref's lineage, running the input's own
//! task, whose inputs are taken from their live refs or made again in turn — and submits the
//! task again with the new copy. The lost ref records the new copy as its replacement, so
//! every holder of it (a queue between dataset stages, a reduce task's list of map outputs, a
//! caller's `ObjectRef`) reads the new one from then on. The same serves Ray Core tasks and
//! every block a dataset stage, an exchange or a SQL scan task makes: they all are tasks.
//!
//! How often: each submission may make its inputs again in up to [`MAX_REMAKES`] rounds (a
//! copy can be lost again while the job runs), at once the first time and with a backoff
//! doubling from 50 ms after that. A round makes again, concurrently, every input that was on
//! the lost one's node: a reduce task whose map outputs were on a dead node waits for one
//! round, not one per output.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Weak};
use std::time::Duration;

use futures::FutureExt;
use futures::future::BoxFuture;
use manta_engine::lineage::Lineage;
use manta_engine::{ObjectId, ObjectRef, TaskOutcome, TaskSpec};

use crate::error::{Error, Result};
use crate::runtime::Client;

/// How many rounds of making lost inputs again one submission gets before it gives up.
pub const MAX_REMAKES: u32 = 8;

/// The pause before a submission's second round of remakes; doubled for each one after it.
const FIRST_BACKOFF: Duration = Duration::from_millis(50);

/// Objects this process made again, and their rows.
static REMADE_OBJECTS: AtomicU64 = AtomicU64::new(0);
static REMADE_ROWS: AtomicU64 = AtomicU64::new(0);

/// What this process has made again since it started: objects, and the rows of those that are
/// blocks (the cost of recovery).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Remade {
    /// Objects made again.
    pub objects: u64,
    /// Rows in them.
    pub rows: u64,
}

/// What this process has made again so far.
pub fn remade() -> Remade {
    Remade {
        objects: REMADE_OBJECTS.load(Ordering::Relaxed),
        rows: REMADE_ROWS.load(Ordering::Relaxed),
    }
}

/// The object a failure says is gone or unreachable, if it says so.
pub fn lost_object(error: &Error) -> Option<ObjectId> {
    match error {
        Error::FetchFailed { object, .. } | Error::ObjectLost { object, .. } => Some(*object),
        _ => None,
    }
}

/// Submits `spec` on a cluster: its inputs taken at their newest copies, its lineage recorded
/// on the output, and lost inputs made again (see the module doc).
pub(crate) fn submit(
    client: &Client,
    mut spec: TaskSpec,
) -> impl Future<Output = Result<TaskOutcome>> + Send + 'static {
    for input in &mut spec.inputs {
        *input = input.current();
    }
    let lineage = Lineage::of(&spec);
    let inputs = lineage.as_ref().map(|_| spec.inputs.clone());
    let first = client.submit_once(spec);
    let client = client.clone();
    // (The first run records no lineage of its own: `settle` records this one.)
    async move {
        let result = first.await;
        match (lineage, inputs) {
            (Some(lineage), Some(inputs)) => settle(&client, lineage, inputs, result).await,
            _ => result,
        }
    }
}

/// Takes `result`, a run of `lineage`'s task with `inputs`, to its end: the outcome with its
/// lineage recorded, or the task run again after each lost input is made again.
async fn settle(
    client: &Client,
    lineage: Arc<Lineage>,
    mut inputs: Vec<ObjectRef>,
    mut result: Result<TaskOutcome>,
) -> Result<TaskOutcome> {
    let mut remakes = 0;
    loop {
        let error = match result {
            Ok(outcome) => {
                outcome.output.set_lineage(lineage);
                return Ok(outcome);
            }
            Err(error) => error,
        };
        let lost =
            lost_object(&error).and_then(|lost| inputs.iter().position(|input| input.id() == lost));
        if lost.is_none()
            && remakes < MAX_REMAKES
            && lineage.max_retries() > 0
            && matches!(error, Error::NodeLost { .. })
        {
            // The head ran out of retries on a node that was dying under them (it can place a
            // retry on a node it has not yet found dead): submitted again after a pause, by
            // when the head knows. (A task that may not be retried is not.)
            tokio::time::sleep(FIRST_BACKOFF * 2u32.pow(remakes.min(6))).await;
            remakes += 1;
            tracing::info!(task = lineage.label(), "{error}; submitting it again");
            for input in &mut inputs {
                *input = input.current();
            }
            result = client.submit_once(lineage.task(inputs.clone())).await;
            continue;
        }
        let Some(index) = lost.filter(|_| remakes < MAX_REMAKES) else {
            return Err(error);
        };
        if remakes > 0 {
            tokio::time::sleep(FIRST_BACKOFF * 2u32.pow((remakes - 1).min(6))).await;
        }
        remakes += 1;
        // The other inputs that were on the lost one's node are most likely gone with it: all
        // are made again at once, rather than one per failed submission.
        let node = inputs[index].location().node;
        let gone: Vec<usize> = (0..inputs.len())
            .filter(|&i| {
                i == index
                    || (inputs[i].inline_value().is_none()
                        && inputs[i].current().location().node == node)
            })
            .collect();
        tracing::info!(
            task = lineage.label(),
            object = %inputs[index].id(),
            inputs = gone.len(),
            "an input was lost ({error}); making it and the others on its node again"
        );
        let copies =
            futures::future::try_join_all(gone.iter().map(|&i| remake(client, &inputs[i]))).await?;
        for (i, copy) in gone.into_iter().zip(copies) {
            inputs[i] = copy;
        }
        for input in &mut inputs {
            *input = input.current();
        }
        result = client.submit_once(lineage.task(inputs.clone())).await;
    }
}

/// Per lost object, the lock its remakers take, so that one makes it and the others take its
/// copy.
static REMAKING: parking_lot::Mutex<Vec<(ObjectId, Weak<tokio::sync::Mutex<()>>)>> =
    parking_lot::Mutex::new(Vec::new());

fn remake_lock(object: ObjectId) -> Arc<tokio::sync::Mutex<()>> {
    let mut remaking = REMAKING.lock();
    remaking.retain(|(_, lock)| lock.strong_count() > 0);
    if let Some(lock) = remaking
        .iter()
        .find(|(id, _)| *id == object)
        .and_then(|(_, lock)| lock.upgrade())
    {
        return lock;
    }
    let lock = Arc::new(tokio::sync::Mutex::new(()));
    remaking.push((object, Arc::downgrade(&lock)));
    lock
}

/// Makes `lost` (a copy found gone) again from its lineage, unless another holder already
/// did (concurrent callers make it once); records the new copy as its replacement and
/// returns it.
pub fn remake<'a>(client: &'a Client, lost: &'a ObjectRef) -> BoxFuture<'a, Result<ObjectRef>> {
    async move {
        let lock = remake_lock(lost.id());
        let _one_at_a_time = lock.lock().await;
        let newest = lost.current();
        if newest.id() != lost.id() {
            return Ok(newest);
        }
        let Some(lineage) = lost.lineage() else {
            return Err(Error::CannotRemake {
                object: lost.id(),
                reason: format!(
                    "it has no lineage (it was `put`, or made past the lineage cap {})",
                    manta_engine::lineage::MAX_LINEAGE_BYTES_ENV
                ),
            });
        };
        let made = run_again(client, &lineage).await.map_err(|e| match e {
            Error::CannotRemake { .. } => e,
            other => Error::CannotRemake {
                object: lost.id(),
                reason: format!("running {} again failed: {other}", lineage.label()),
            },
        })?;
        REMADE_OBJECTS.fetch_add(1, Ordering::Relaxed);
        REMADE_ROWS.fetch_add(made.meta().num_rows, Ordering::Relaxed);
        if let Client::Cluster(cluster) = client {
            cluster.report_reconstruction(lost.id(), lineage.label(), made.meta().num_rows);
        }
        lost.set_replacement(made.clone());
        Ok(made)
    }
    .boxed()
}

/// Runs `lineage`'s task again: each input from its live ref, or made again from its own
/// lineage when no ref to it is left.
fn run_again<'a>(
    client: &'a Client,
    lineage: &'a Arc<Lineage>,
) -> BoxFuture<'a, Result<ObjectRef>> {
    async move {
        let mut inputs = Vec::with_capacity(lineage.inputs().len());
        for input in lineage.inputs() {
            let made = match (input.live(), input.lineage()) {
                (Some(live), _) => live,
                (None, Some(its_lineage)) => run_again(client, its_lineage).await?,
                (None, None) => {
                    return Err(Error::CannotRemake {
                        object: input.id(),
                        reason: "it was dropped, and it has no lineage to make it from".into(),
                    });
                }
            };
            inputs.push(made);
        }
        let result = client.submit_once(lineage.task(inputs.clone())).await;
        Ok(settle(client, Arc::clone(lineage), inputs, result)
            .await?
            .output)
    }
    .boxed()
}

/// Reads `object` (its newest copy) through `read`, making it again from its lineage when
/// its copy is found lost.
pub(crate) async fn read_remaking<T, F, Fut>(
    client: &Client,
    object: &ObjectRef,
    read: F,
) -> Result<T>
where
    F: Fn(ObjectRef) -> Fut,
    Fut: Future<Output = Result<T>>,
{
    let mut current = object.current();
    let mut remakes = 0;
    loop {
        let error = match read(current.clone()).await {
            Ok(value) => return Ok(value),
            Err(error) => error,
        };
        if lost_object(&error) != Some(current.id()) || remakes >= MAX_REMAKES {
            return Err(error);
        }
        tokio::time::sleep(FIRST_BACKOFF * 2u32.pow(remakes.min(6))).await;
        remakes += 1;
        tracing::info!(object = %current.id(), "an object was lost ({error}); making it again");
        current = remake(client, &current).await?;
    }
}
