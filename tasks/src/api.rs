//! The calls: submitting a task, and `put`, `get`, `get_all`, `wait` on object refs.
//!
//! Everything runs on the driver's tokio runtime, which a [`Runtime`] (Manta's `Context`)
//! provides along with the [`Client`] that runs tasks, in this process or on a cluster. A
//! submitted call first waits for the refs among its arguments, then submits the task with
//! their objects as inputs (so the node fetches them before the task starts), then sets the
//! returned ref to the task's output.

use std::future::Future;

use std::time::Duration;

use arrow::array::RecordBatch;
use futures::StreamExt;
use futures::stream::FuturesUnordered;
use manta_engine::{Object, Resources};
use manta_scheduler::Client;
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::args::{Args, decode, encode};
use crate::call::Call;
use crate::error::{Error, Result};
use crate::object_ref::{ObjectRef, Resolution, UntypedRef};

/// What runs calls: a client and the runtime its futures run on (Manta's `Context`).
pub trait Runtime {
    /// Where tasks run.
    fn client(&self) -> &Client;
    /// The runtime that drives calls.
    fn handle(&self) -> tokio::runtime::Handle;
}

/// How one call runs (Ray's `.options(...)`).
#[derive(Clone, Debug)]
pub struct TaskOptions {
    /// What the task needs of its node; one CPU by default.
    pub resources: Resources,
    /// How often the task is run again when its worker or node is lost (and, with
    /// `retry_exceptions`, when it fails).
    pub max_retries: u32,
    /// Also retry when the function returns an error or panics.
    pub retry_exceptions: bool,
}

impl Default for TaskOptions {
    fn default() -> Self {
        Self {
            resources: Resources {
                cpus: 1.0,
                ..Resources::default()
            },
            max_retries: 3,
            retry_exceptions: false,
        }
    }
}

/// Implemented by `#[manta::remote]` for a task function of one argument, so that a library
/// can take the function itself and call it (Tune's trainable functions are these).
pub trait UnaryTask: Copy + Send + Sync + 'static {
    /// The argument's type.
    type Arg: Serialize;
    /// The result's type (the `Ok` type of a function returning a `Result`).
    type Output: DeserializeOwned;
    /// The name its task body is registered under.
    const TASK: &'static str;

    /// Runs it as a task; returns a ref to its result at once.
    fn submit(
        &self,
        runtime: &impl Runtime,
        arg: Self::Arg,
        options: &TaskOptions,
    ) -> ObjectRef<Self::Output> {
        let mut args = Args::new();
        args.push::<Self::Arg>(arg.into());
        submit(runtime, Self::TASK, args, options)
    }
}

/// Submits a call of the task function registered as `function`; returns its ref at once.
pub fn submit<R>(
    runtime: &impl Runtime,
    function: &'static str,
    args: Args,
    options: &TaskOptions,
) -> ObjectRef<R> {
    let (setter, object) = UntypedRef::pending();
    let client = runtime.client();
    if args.is_plain() && !options.retry_exceptions {
        // Nothing to wait for and nothing to retry: submitted from this thread, with no future
        // of its own (the common case, and the one that decides tasks per second).
        let (bytes, _, error) = args.into_parts();
        match error {
            Some(error) => setter.set(Err(error)),
            None => {
                Call::new(function, bytes, options).submit_then(client, setter);
            }
        }
        return ObjectRef::from_untyped(object);
    }
    let client = client.clone();
    let options = options.clone();
    runtime.handle().spawn(async move {
        let outcome = call(&client, function, args, &options).await;
        setter.set(outcome);
    });
    ObjectRef::from_untyped(object)
}

/// A call's arguments once its refs are resolved: the argument bytes, the input objects, and
/// the refs they came from (each with its argument's position).
pub(crate) type Resolved = (
    bytes::Bytes,
    Vec<manta_engine::ObjectRef>,
    Vec<(usize, UntypedRef)>,
);

/// Waits for the refs among a call's arguments: the argument bytes and the input objects, or
/// the failure of the first argument that failed.
pub(crate) async fn resolve(
    client: &Client,
    function: &'static str,
    mut args: Args,
) -> Result<Resolved> {
    args.place_batches(client).await;
    let (bytes, refs, error) = args.into_parts();
    if let Some(error) = error {
        return Err(error);
    }
    let mut inputs = Vec::with_capacity(refs.len());
    for (argument, object) in &refs {
        let stored = object
            .resolution()
            .await
            .map_err(|source| Error::Argument {
                function: function.to_string(),
                argument: *argument,
                source: Box::new(source),
            })?;
        inputs.push(stored);
    }
    Ok((bytes, inputs, refs))
}

/// Resolves the arguments and runs the task (again on failure, as `options` allow). On a
/// cluster the output keeps the task's lineage, so that it can be made again if lost.
async fn call(
    client: &Client,
    function: &'static str,
    args: Args,
    options: &TaskOptions,
) -> Resolution {
    let (bytes, inputs, _sources) = resolve(client, function, args).await?;
    Call::new(function, bytes, options)
        .submit(client, inputs)
        .await
}

/// The object behind `object` if reading it needs no waiting and no network: its call is done
/// and the value is in this process (in the embedded store, or inline in the ref).
fn read_local<T>(client: &Client, object: &ObjectRef<T>) -> Option<Result<Object>> {
    let stored = match object.try_stored()? {
        Ok(stored) => stored,
        Err(error) => return Some(Err(error)),
    };
    if let Some(value) = stored.inline_value() {
        return Some(Ok(Object::Bytes(value.clone())));
    }
    match client {
        Client::Embedded(embedded) => Some(embedded.get(&stored).map_err(Error::from)),
        Client::Cluster(_) => None,
    }
}

/// The object behind `object` as this process reads it: fetched from its node on a cluster,
/// and made again from its lineage if its node is gone.
async fn fetch<T>(client: &Client, object: &ObjectRef<T>) -> Result<Object> {
    if let Some(local) = read_local(client, object) {
        return local;
    }
    let stored = object.stored().await?;
    Ok(client.get(&stored).await?)
}

/// Stores `value` and returns a ref to it: in this process's store, or on a cluster in the
/// store of a node (pushed there over Flight).
pub fn put<T: Serialize>(runtime: &impl Runtime, value: &T) -> Result<ObjectRef<T>> {
    let bytes = bytes::Bytes::from(encode(value)?);
    put_object(runtime, Object::Bytes(bytes))
}

/// Stores a record batch and returns a ref to it: zero-copy in this process's store, or on a
/// cluster in the store of a node (pushed there over Flight).
pub fn put_batch(runtime: &impl Runtime, batch: RecordBatch) -> Result<ObjectRef<RecordBatch>> {
    put_object(
        runtime,
        Object::Block(manta_engine::Block::from_batch(batch)),
    )
}

fn put_object<T>(runtime: &impl Runtime, object: Object) -> Result<ObjectRef<T>> {
    let stored = match runtime.client() {
        Client::Embedded(embedded) => embedded.put_object(object)?,
        Client::Cluster(cluster) => block_on(runtime, cluster.put_object(object))?,
    };
    Ok(ObjectRef::from_untyped(UntypedRef::ready(Ok(stored))))
}

/// The record batch behind `object` (zero-copy when it is in this process's store).
pub async fn get_batch_async(
    client: &Client,
    object: &ObjectRef<RecordBatch>,
) -> Result<RecordBatch> {
    let block = match fetch(client, object).await? {
        Object::Block(block) => block,
        Object::Bytes(_) => {
            return Err(Error::Codec {
                action: "decode",
                type_name: "RecordBatch",
                reason: "the object is bytes, not a block of record batches".into(),
            });
        }
    };
    Ok(crate::args::one_batch(&block)?)
}

/// Waits for the record batch behind `object`.
pub fn get_batch(runtime: &impl Runtime, object: &ObjectRef<RecordBatch>) -> Result<RecordBatch> {
    block_on(runtime, get_batch_async(runtime.client(), object))
}

/// The value behind `object`, once its task is done.
pub async fn get_async<T: DeserializeOwned>(client: &Client, object: &ObjectRef<T>) -> Result<T> {
    value(fetch(client, object).await?)
}

/// The value `object` holds.
fn value<T: DeserializeOwned>(object: Object) -> Result<T> {
    match object {
        Object::Bytes(bytes) => decode(&bytes),
        Object::Block(_) => Err(Error::Codec {
            action: "decode",
            type_name: std::any::type_name::<T>(),
            reason: "the object is a block of record batches".into(),
        }),
    }
}

/// Waits for `object`'s value: the task's result, or its error.
pub fn get<T: DeserializeOwned>(runtime: &impl Runtime, object: &ObjectRef<T>) -> Result<T> {
    block_on(runtime, get_async(runtime.client(), object))
}

/// [`get`] with a deadline: [`Error::Timeout`] if the value is not there in time.
pub fn get_timeout<T: DeserializeOwned>(
    runtime: &impl Runtime,
    object: &ObjectRef<T>,
    timeout: Duration,
) -> Result<T> {
    block_on(runtime, async {
        tokio::time::timeout(timeout, get_async(runtime.client(), object))
            .await
            .map_err(|_| Error::Timeout(timeout))?
    })
}

/// The values of all `objects`, in order; the first failure if any fails.
pub fn get_all<T: DeserializeOwned>(
    runtime: &impl Runtime,
    objects: &[ObjectRef<T>],
) -> Result<Vec<T>> {
    let client = runtime.client();
    // Waits for the calls first, on the runtime (see `wait_on_runtime`); a failure ends the
    // wait, to be returned below. A call that has failed already ends it before it starts:
    // waiting for the others then would wait for nothing, and maybe forever.
    if !objects.iter().any(ObjectRef::has_failed) {
        let pending: Vec<UntypedRef> = objects
            .iter()
            .filter(|o| !o.is_ready())
            .map(ObjectRef::untyped)
            .collect();
        let wanted = pending.len();
        wait_on_runtime(runtime, pending, wanted, true, None);
    }
    // Values already here are read in place; only the rest are fetched, concurrently (a
    // future per object would cost more than the read itself).
    let mut values = Vec::with_capacity(objects.len());
    let mut elsewhere = Vec::new();
    for (index, object) in objects.iter().enumerate() {
        match read_local(client, object) {
            Some(local) => values.push(Some(value(local?)?)),
            None => {
                values.push(None);
                elsewhere.push(index);
            }
        }
    }
    if !elsewhere.is_empty() {
        let fetched = block_on(
            runtime,
            futures::future::try_join_all(
                elsewhere
                    .iter()
                    .map(|&index| get_async(client, &objects[index])),
            ),
        )?;
        for (index, fetched) in elsewhere.into_iter().zip(fetched) {
            values[index] = Some(fetched);
        }
    }
    Ok(values
        .into_iter()
        .map(|v| v.expect("every value read or fetched"))
        .collect())
}

/// Waits until `num_returns` of `objects` are done (or failed), or `timeout` passes; returns
/// the done ones (at most `num_returns`, in the order given) and the rest.
pub fn wait<T>(
    runtime: &impl Runtime,
    objects: &[ObjectRef<T>],
    num_returns: usize,
    timeout: Option<Duration>,
) -> (Vec<ObjectRef<T>>, Vec<ObjectRef<T>>) {
    let wanted = num_returns.min(objects.len());
    let done = objects.iter().filter(|o| o.is_ready()).count();
    let pending: Vec<UntypedRef> = objects
        .iter()
        .filter(|o| !o.is_ready())
        .map(ObjectRef::untyped)
        .collect();
    wait_on_runtime(
        runtime,
        pending,
        wanted.saturating_sub(done),
        false,
        timeout,
    );
    let (mut ready, mut rest) = (Vec::new(), Vec::new());
    for object in objects {
        if ready.len() < wanted && object.is_ready() {
            ready.push(object.clone());
        } else {
            rest.push(object.clone());
        }
    }
    (ready, rest)
}

/// Blocks the calling thread until `wanted` of `pending` are done (or, with
/// `stop_on_failure`, one has failed), or `timeout` passes.
///
/// On a cluster the refs are set on the driver's runtime, as results arrive: there the waiting
/// runs as a task of that runtime, so each ref set wakes only that task, on the thread that
/// set it, and the calling thread is woken once, at the end. Waited for on the calling
/// thread, each ref set woke it across threads (a futex wake and a context switch): a seventh
/// of the driver's time at 50,000 tasks a second. Embedded, the refs are set on the
/// executor's threads, and a waiting task on the runtime would only add a hop: the calling
/// thread waits itself.
fn wait_on_runtime(
    runtime: &impl Runtime,
    pending: Vec<UntypedRef>,
    wanted: usize,
    stop_on_failure: bool,
    timeout: Option<Duration>,
) {
    if wanted == 0 {
        return;
    }
    let waiting = async move {
        let mut left: FuturesUnordered<_> = pending
            .iter()
            .map(|o| async move { o.resolution().await.is_err() })
            .collect();
        let mut done = 0;
        while done < wanted {
            match left.next().await {
                Some(failed) if failed && stop_on_failure => break,
                Some(_) => done += 1,
                None => break,
            }
        }
    };
    let waiting = async move {
        match timeout {
            Some(timeout) => {
                let _ = tokio::time::timeout(timeout, waiting).await;
            }
            None => waiting.await,
        }
    };
    match runtime.client() {
        // Ends when the waiting does; an error means the runtime is stopping, and then the
        // refs' own outcomes say why.
        Client::Cluster(_) => {
            let _ = block_on(runtime, runtime.handle().spawn(waiting));
        }
        Client::Embedded(_) => block_on(runtime, waiting),
    }
}

pub(crate) fn block_on<F: Future>(runtime: &impl Runtime, future: F) -> F::Output {
    runtime.handle().block_on(future)
}
