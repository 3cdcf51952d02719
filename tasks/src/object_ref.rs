//! [`ObjectRef`]: a typed handle to a task's result or a `put` value, usable before it exists.
//!
//! A remote call returns its ref at once; the call itself (resolving its arguments, submitting
//! the task, waiting for it) runs on the driver's runtime and sets the ref when it is done. The
//! ref is a `tokio::sync::watch` receiver of that outcome, so any number of clones can wait
//! for it, and once set it holds the stored object's counted [`manta_engine::ObjectRef`]: the
//! object is freed when the last clone of every ref to it has dropped.

use std::fmt;
use std::marker::PhantomData;

use tokio::sync::watch;

use crate::error::{Error, Result};

/// What a call ended with: the stored object, or why there is none.
pub(crate) type Resolution = Result<manta_engine::ObjectRef>;

/// A ref whose value type has been forgotten (a task's argument list holds these).
#[derive(Clone)]
pub(crate) struct UntypedRef {
    state: watch::Receiver<Option<Resolution>>,
}

impl UntypedRef {
    /// A ref to be set through the returned sender.
    pub(crate) fn pending() -> (watch::Sender<Option<Resolution>>, Self) {
        let (sender, state) = watch::channel(None);
        (sender, Self { state })
    }

    /// A ref that is already set.
    pub(crate) fn ready(resolution: Resolution) -> Self {
        let (_, state) = watch::channel(Some(resolution));
        Self { state }
    }

    /// Whether the call is done (successfully or not).
    pub(crate) fn is_ready(&self) -> bool {
        self.state.borrow().is_some()
    }

    /// Waits for the call to be done.
    pub(crate) async fn resolution(&self) -> Resolution {
        let mut state = self.state.clone();
        match state.wait_for(Option::is_some).await {
            Ok(done) => done.clone().expect("waited for Some"),
            Err(_) => Err(Error::Object(std::sync::Arc::new(
                manta_scheduler::Error::Internal(
                    "the call producing this object ended without an outcome (its runtime \
                     stopped)"
                        .into(),
                ),
            ))),
        }
    }
}

/// A handle to a value of type `T` that a task returns (or `put` stored), possibly before it
/// exists. Clones share the object; it is freed when the last one drops.
pub struct ObjectRef<T> {
    inner: UntypedRef,
    _type: PhantomData<fn() -> T>,
}

impl<T> ObjectRef<T> {
    pub(crate) fn from_untyped(inner: UntypedRef) -> Self {
        Self {
            inner,
            _type: PhantomData,
        }
    }

    pub(crate) fn untyped(&self) -> UntypedRef {
        self.inner.clone()
    }

    /// Whether the value (or the failure that replaces it) is there: `get` would not wait.
    pub fn is_ready(&self) -> bool {
        self.inner.is_ready()
    }

    /// Waits until the task is done; the stored object, or why there is none.
    pub(crate) async fn stored(&self) -> Resolution {
        self.inner.resolution().await
    }
}

impl<T> Clone for ObjectRef<T> {
    fn clone(&self) -> Self {
        Self::from_untyped(self.inner.clone())
    }
}

impl<T> fmt::Debug for ObjectRef<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let state = match &*self.inner.state.borrow() {
            None => "pending".to_string(),
            Some(Ok(object)) => object.id().to_string(),
            Some(Err(_)) => "failed".to_string(),
        };
        write!(f, "ObjectRef<{}>({state})", std::any::type_name::<T>())
    }
}
