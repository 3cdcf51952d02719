//! The function registry: user and built-in functions, found by name in any process.
//!
//! Rust cannot ship closures between processes, so every function a task runs is registered
//! under a stable name when the binary is built: `#[manta::remote]` expands to an
//! [`inventory::submit!`] of a [`RemoteFunction`], and built-in operators (the dataset pipeline
//! runner, for instance) register themselves the same way. A worker process is the driver's own
//! executable, so it holds the same registrations, and a task names its function by string.
//!
//! The kinds of function:
//! * [`FunctionKind::Batch`]: `fn(RecordBatch) -> Result<RecordBatch>`, what `map_batches` runs;
//! * [`FunctionKind::Row`]: a function over one row of a serde type, what `map`, `flat_map`
//!   and `filter_fn` run (rows travel as JSON values);
//! * [`FunctionKind::Callable`]: a stateful batch function built once per worker
//!   ([`crate::callable`]);
//! * [`FunctionKind::Task`]: a general task body over serialised arguments and input objects.

use std::any::Any;
use std::collections::HashMap;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::{Arc, OnceLock};

pub use arrow::array::RecordBatch;
use bytes::Bytes;
use parking_lot::Mutex;

use crate::error::{BoxError, Error, Result};
use crate::ids::NodeId;
use crate::object::Object;

/// A batch-to-batch function.
pub type BatchFn = fn(RecordBatch) -> Result<RecordBatch, BoxError>;

/// A task body: serialised arguments and resolved input objects in, one object out.
pub type TaskFn = fn(&TaskContext, TaskInput) -> Result<Object>;

/// A row-to-value function over serde types, erased to JSON values: `map` expects an object
/// back, `flat_map` an array of objects, `filter_fn` a boolean.
pub type RowFn = fn(serde_json::Value) -> Result<serde_json::Value, BoxError>;

/// What a registered function is.
#[derive(Clone, Copy, Debug)]
pub enum FunctionKind {
    /// Runs on each batch of a block (`map_batches`).
    Batch(BatchFn),
    /// Runs on each row, as a serde value (`map`, `flat_map`, `filter_fn`).
    Row(RowFn),
    /// A stateful batch function: constructed once per worker (see [`crate::callable`]).
    Callable(crate::callable::CallableFactory),
    /// Runs as a whole task.
    Task(TaskFn),
}

/// One registered function.
#[derive(Debug)]
pub struct RemoteFunction {
    /// The name tasks use: the function's module path and name.
    pub name: &'static str,
    /// Its kind and entry point.
    pub kind: FunctionKind,
}

inventory::collect!(RemoteFunction);

/// Implemented by the unit struct `#[manta::remote]` makes of a batch function, so that a
/// pipeline can take the function itself (`ds.map_batches(add_upper)`) and record its name.
pub trait RemoteBatchFn: Copy + Send + Sync + 'static {
    /// The registered name.
    fn name(&self) -> &'static str;
}

/// Implemented by the unit struct `#[manta::remote]` makes of a row function (one argument of
/// a serde type), so that `ds.map(f)`, `ds.flat_map(f)` and `ds.filter_fn(f)` can take it.
pub trait RemoteRowFn: Copy + Send + Sync + 'static {
    /// The registered name.
    fn name(&self) -> &'static str;
}

/// What a batch function may return: a batch, or a `Result` of one with any error type.
pub trait IntoBatchResult {
    /// The batch, or the error boxed.
    fn into_batch_result(self) -> Result<RecordBatch, BoxError>;
}

impl IntoBatchResult for RecordBatch {
    fn into_batch_result(self) -> Result<RecordBatch, BoxError> {
        Ok(self)
    }
}

impl<E: Into<BoxError>> IntoBatchResult for Result<RecordBatch, E> {
    fn into_batch_result(self) -> Result<RecordBatch, BoxError> {
        self.map_err(Into::into)
    }
}

fn table() -> &'static HashMap<&'static str, &'static RemoteFunction> {
    static TABLE: OnceLock<HashMap<&'static str, &'static RemoteFunction>> = OnceLock::new();
    TABLE.get_or_init(|| {
        inventory::iter::<RemoteFunction>
            .into_iter()
            .map(|f| (f.name, f))
            .collect()
    })
}

/// The function registered as `name`.
pub fn lookup(name: &str) -> Result<&'static RemoteFunction> {
    table()
        .get(name)
        .copied()
        .ok_or_else(|| Error::FunctionNotFound {
            name: name.to_string(),
        })
}

/// The batch function registered as `name`.
pub fn lookup_batch(name: &str) -> Result<BatchFn> {
    match lookup(name)?.kind {
        FunctionKind::Batch(f) => Ok(f),
        _ => Err(Error::FunctionNotFound {
            name: format!("{name} (registered, but not as a batch function)"),
        }),
    }
}

/// The row function registered as `name`.
pub fn lookup_row(name: &str) -> Result<RowFn> {
    match lookup(name)?.kind {
        FunctionKind::Row(f) => Ok(f),
        _ => Err(Error::FunctionNotFound {
            name: format!("{name} (registered, but not as a row function)"),
        }),
    }
}

/// Calls a row function, turning its error or panic into [`Error::UserFunction`] or
/// [`Error::UserPanic`] that name the function and the input.
pub fn call_row(
    name: &str,
    f: RowFn,
    row: serde_json::Value,
    input: impl FnOnce() -> String,
) -> Result<serde_json::Value> {
    guarded(name, || f(row), input)
}

/// Runs `f`, turning its error or panic into an error naming `name` and the input.
pub(crate) fn guarded<T>(
    name: &str,
    f: impl FnOnce() -> Result<T, BoxError>,
    input: impl FnOnce() -> String,
) -> Result<T> {
    match catch_unwind(AssertUnwindSafe(f)) {
        Ok(Ok(value)) => Ok(value),
        Ok(Err(source)) => Err(Error::UserFunction {
            name: name.to_string(),
            input: input(),
            source,
        }),
        Err(panic) => Err(Error::UserPanic {
            name: name.to_string(),
            input: input(),
            message: panic_message(&*panic),
        }),
    }
}

/// Every registered name, sorted (for diagnostics).
pub fn names() -> Vec<&'static str> {
    let mut names: Vec<_> = table().keys().copied().collect();
    names.sort_unstable();
    names
}

/// Calls a batch function, turning its error or panic into [`Error::UserFunction`] or
/// [`Error::UserPanic`] that name the function and the input.
pub fn call_batch(
    name: &str,
    f: BatchFn,
    batch: RecordBatch,
    input: impl FnOnce() -> String,
) -> Result<RecordBatch> {
    guarded(name, || f(batch), input)
}

/// Runs the task function registered as `name`, catching a panic as [`Error::UserPanic`].
pub fn run_task(name: &str, ctx: &TaskContext, input: TaskInput) -> Result<Object> {
    let FunctionKind::Task(f) = lookup(name)?.kind else {
        return Err(Error::FunctionNotFound {
            name: format!("{name} (registered, but not as a task)"),
        });
    };
    match catch_unwind(AssertUnwindSafe(|| f(ctx, input))) {
        Ok(result) => result,
        Err(panic) => Err(Error::UserPanic {
            name: name.to_string(),
            input: "a task".into(),
            message: panic_message(&*panic),
        }),
    }
}

/// The text of a panic payload.
pub fn panic_message(panic: &(dyn Any + Send)) -> String {
    if let Some(s) = panic.downcast_ref::<&str>() {
        s.to_string()
    } else if let Some(s) = panic.downcast_ref::<String>() {
        s.clone()
    } else {
        "a panic with a non-string payload".to_string()
    }
}

/// What a task body gets: its serialised arguments and its resolved input objects.
#[derive(Debug)]
pub struct TaskInput {
    /// Arguments, serialised by whoever submitted the task.
    pub args: Bytes,
    /// Input objects, in the order the task named them.
    pub objects: Vec<Object>,
}

/// Values decoded once per worker, by type and key.
type WorkerCache = HashMap<(std::any::TypeId, Bytes), Arc<dyn Any + Send + Sync>>;

/// Where a task runs: the node, and a cache that lives as long as the worker.
#[derive(Clone, Debug)]
pub struct TaskContext {
    node: NodeId,
    cache: Arc<Mutex<WorkerCache>>,
}

impl TaskContext {
    /// A context for tasks on `node`.
    pub fn new(node: NodeId) -> Self {
        Self {
            node,
            cache: Arc::default(),
        }
    }

    /// The node the task runs on.
    pub fn node(&self) -> NodeId {
        self.node
    }

    /// A value decoded from `key` once per worker and shared by every later task with the same
    /// key: a stage's decoded plan, say, so each block does not decode it again.
    pub fn cached<T: Any + Send + Sync>(
        &self,
        key: &Bytes,
        make: impl FnOnce() -> Result<T>,
    ) -> Result<Arc<T>> {
        let slot = (std::any::TypeId::of::<T>(), key.clone());
        if let Some(value) = self.cache.lock().get(&slot) {
            return Ok(Arc::clone(value).downcast::<T>().expect("keyed by type"));
        }
        let value = Arc::new(make()?);
        self.cache.lock().insert(slot, Arc::clone(&value) as _);
        Ok(value)
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use arrow::array::Int64Array;

    use super::*;

    fn double(batch: RecordBatch) -> Result<RecordBatch, BoxError> {
        let x = batch
            .column(0)
            .as_any()
            .downcast_ref::<Int64Array>()
            .ok_or("not i64")?;
        let doubled: Int64Array = x.iter().map(|v| v.map(|v| v * 2)).collect();
        Ok(RecordBatch::try_new(
            batch.schema(),
            vec![Arc::new(doubled)],
        )?)
    }

    fn explode(_batch: RecordBatch) -> Result<RecordBatch, BoxError> {
        panic!("boom at row 7")
    }

    inventory::submit! { RemoteFunction { name: "registry_tests::double", kind: FunctionKind::Batch(double) } }

    fn batch() -> RecordBatch {
        RecordBatch::try_from_iter([("x", Arc::new(Int64Array::from(vec![1, 2])) as _)]).unwrap()
    }

    #[test]
    fn registered_function_is_found_and_runs() {
        let f = lookup_batch("registry_tests::double").unwrap();
        let out = call_batch("registry_tests::double", f, batch(), || "block 0".into()).unwrap();
        assert_eq!(
            out.column(0).as_ref(),
            &Int64Array::from(vec![2, 4]) as &dyn arrow::array::Array
        );
        assert!(names().contains(&"registry_tests::double"));
    }

    #[test]
    fn unknown_name_is_a_clear_error() {
        let err = lookup("nope::missing").unwrap_err();
        assert!(
            err.to_string().contains("nope::missing")
                && err.to_string().contains("#[manta::remote]")
        );
    }

    #[test]
    fn panic_becomes_an_error_naming_function_and_input() {
        let err =
            call_batch("explode", explode, batch(), || "block 3 of stage 1".into()).unwrap_err();
        match err {
            Error::UserPanic {
                name,
                input,
                message,
            } => {
                assert_eq!(name, "explode");
                assert_eq!(input, "block 3 of stage 1");
                assert!(message.contains("boom at row 7"));
            }
            other => panic!("unexpected {other:?}"),
        }
    }

    #[test]
    fn cache_makes_each_key_once() {
        let ctx = TaskContext::new(NodeId::random());
        let key = Bytes::from_static(b"plan");
        let mut made = 0;
        for _ in 0..3 {
            let v = ctx.cached(&key, || {
                made += 1;
                Ok(42u32)
            });
            assert_eq!(*v.unwrap(), 42);
        }
        assert_eq!(made, 1);
    }
}
