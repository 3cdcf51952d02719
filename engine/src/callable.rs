//! Stateful batch functions: Ray's callable-class pattern for `map_batches`.
//!
//! A [`Callable`] is a struct whose constructor does the expensive part once (load a model's
//! weights, open a connection) and whose `call` then runs on batch after batch. `#[manta::callable]`
//! on its `impl Callable for ...` block registers it by name, like `#[manta::remote]` does a
//! function, so any worker process can build one from its name and serialised arguments.
//!
//! Each worker process keeps a pool of built instances per (callable, arguments): a task takes
//! an idle instance, or builds one if none is idle, and gives it back when the batch is done. The
//! stage that runs a callable is capped at the pool size the user asks for (`concurrency`), so
//! each worker builds an instance once and reuses it for every later batch. An instance whose
//! `call` panicked is dropped, not given back, since its state may be broken.

use std::collections::HashMap;
use std::sync::LazyLock;

use arrow::array::RecordBatch;
use parking_lot::Mutex;
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::error::{BoxError, Error, Result};
use crate::registry::{guarded, lookup};

/// A stateful batch function, built once per worker and called on many batches.
///
/// ```ignore
/// struct Scorer { weights: Vec<f64> }
///
/// #[manta::callable]
/// impl manta::Callable for Scorer {
///     type Args = String; // the weights file
///     fn new(path: String) -> Result<Self, manta::BoxError> {
///         Ok(Scorer { weights: load(&path)? })
///     }
///     fn call(&mut self, batch: RecordBatch) -> Result<RecordBatch, manta::BoxError> {
///         score(&self.weights, batch)
///     }
/// }
///
/// ds.map_batches_callable::<Scorer>("weights.json".into(), MapBatchesOptions::actors(2))
/// ```
pub trait Callable: Send + Sized + 'static {
    /// What the constructor takes; serialised (as JSON) into the plan.
    type Args: Serialize + DeserializeOwned;

    /// Builds an instance; runs once per worker and pool slot.
    fn new(args: Self::Args) -> Result<Self, BoxError>;

    /// Transforms one batch.
    fn call(&mut self, batch: RecordBatch) -> Result<RecordBatch, BoxError>;
}

/// Implemented by `#[manta::callable]`: the name a callable is registered under.
pub trait RegisteredCallable: Callable {
    /// The registered name: the type's module path and name.
    const NAME: &'static str;
}

/// A built instance, type-erased.
pub trait DynCallable: Send {
    /// Transforms one batch.
    fn call(&mut self, batch: RecordBatch) -> Result<RecordBatch, BoxError>;
}

impl<T: Callable> DynCallable for T {
    fn call(&mut self, batch: RecordBatch) -> Result<RecordBatch, BoxError> {
        Callable::call(self, batch)
    }
}

/// Builds an instance from its JSON-serialised arguments.
pub type CallableFactory = fn(&[u8]) -> Result<Box<dyn DynCallable>, BoxError>;

/// The factory of `T`, what `#[manta::callable]` registers.
pub fn factory<T: Callable>(args: &[u8]) -> Result<Box<dyn DynCallable>, BoxError> {
    let args: T::Args = serde_json::from_slice(args)?;
    Ok(Box::new(T::new(args)?))
}

/// Serialises a callable's constructor arguments for the plan.
pub fn encode_args<T: Callable>(args: &T::Args) -> Result<Vec<u8>> {
    serde_json::to_vec(args).map_err(|e| Error::Internal(format!("constructor arguments: {e}")))
}

type PoolKey = (&'static str, Vec<u8>);
type Pools = HashMap<PoolKey, Vec<Box<dyn DynCallable>>>;

/// Idle instances in this process, by callable and arguments.
static POOLS: LazyLock<Mutex<Pools>> = LazyLock::new(Default::default);

/// Calls the callable registered as `name` (built with `args`) on `batch`, with an idle
/// instance of this process's pool or a new one. Errors and panics, of the constructor or of
/// `call`, name the callable and the input.
pub fn call_callable(
    name: &str,
    args: &[u8],
    batch: RecordBatch,
    input: impl Fn() -> String,
) -> Result<RecordBatch> {
    let registered = lookup(name)?;
    let crate::FunctionKind::Callable(factory) = registered.kind else {
        return Err(Error::FunctionNotFound {
            name: format!("{name} (registered, but not as a callable)"),
        });
    };
    let key: PoolKey = (registered.name, args.to_vec());
    let idle = POOLS.lock().get_mut(&key).and_then(Vec::pop);
    let mut instance = match idle {
        Some(instance) => instance,
        None => guarded(&format!("{name}::new"), || factory(args), &input)?,
    };
    let out = guarded(name, || instance.call(batch), &input);
    if !matches!(out, Err(Error::UserPanic { .. })) {
        POOLS.lock().entry(key).or_default().push(instance);
    }
    out
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};

    use arrow::array::Int64Array;

    use super::*;
    use crate::{FunctionKind, RemoteFunction};

    static BUILT: AtomicUsize = AtomicUsize::new(0);

    /// Adds its argument to column 0, and counts how often it was built.
    struct AddN(i64);

    impl Callable for AddN {
        type Args = i64;
        fn new(n: i64) -> Result<Self, BoxError> {
            if n < 0 {
                return Err("negative".into());
            }
            BUILT.fetch_add(1, Ordering::SeqCst);
            Ok(AddN(n))
        }
        fn call(&mut self, batch: RecordBatch) -> Result<RecordBatch, BoxError> {
            let x = batch
                .column(0)
                .as_any()
                .downcast_ref::<Int64Array>()
                .ok_or("not i64")?;
            let out: Int64Array = x.iter().map(|v| v.map(|v| v + self.0)).collect();
            Ok(RecordBatch::try_new(batch.schema(), vec![Arc::new(out)])?)
        }
    }

    inventory::submit! { RemoteFunction { name: "callable_tests::AddN", kind: FunctionKind::Callable(factory::<AddN>) } }

    fn batch() -> RecordBatch {
        RecordBatch::try_from_iter([("x", Arc::new(Int64Array::from(vec![1, 2])) as _)]).unwrap()
    }

    #[test]
    fn instances_are_built_once_and_reused() {
        let args = encode_args::<AddN>(&10).unwrap();
        let before = BUILT.load(Ordering::SeqCst);
        for _ in 0..5 {
            let out = call_callable("callable_tests::AddN", &args, batch(), || "b".into()).unwrap();
            assert_eq!(
                out.column(0).as_ref(),
                &Int64Array::from(vec![11, 12]) as &dyn arrow::array::Array
            );
        }
        assert_eq!(BUILT.load(Ordering::SeqCst) - before, 1);
    }

    #[test]
    fn constructor_errors_name_the_callable() {
        let args = encode_args::<AddN>(&-1).unwrap();
        let err = call_callable("callable_tests::AddN", &args, batch(), || "block 4".into())
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("callable_tests::AddN::new")
                && err.contains("block 4")
                && err.contains("negative"),
            "{err}"
        );
    }
}
