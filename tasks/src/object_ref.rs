//! [`ObjectRef`]: a typed handle to a task's result or a `put` value, usable before it exists.
//!
//! A remote call returns its ref at once; the call itself (resolving its arguments, submitting
//! the task, waiting for it) runs on the driver's runtime and sets the ref when it is done. The
//! ref shares that outcome (and a `tokio::sync::watch` saying it is set), so any number of
//! clones can wait for it, and once set it holds the stored object's counted [`manta_engine::ObjectRef`]: the object is
//! freed when the last clone of every ref to it has dropped. On a cluster the ref also knows the
//! task that made it ([`Lineage`]), and is rebuilt from it when its node is lost.

use std::fmt;
use std::marker::PhantomData;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, Weak};

use tokio::sync::watch;

use crate::error::{Error, Result};

/// What a call ended with: the stored object, or why there is none.
pub(crate) type Resolution = Result<manta_engine::ObjectRef>;

/// What every clone of one ref shares: the outcome. (How to make the object again, if it is
/// lost, is the stored ref's lineage: see `manta_scheduler::lineage`.)
pub(crate) struct Shared {
    /// The outcome, once there is one.
    state: Mutex<Option<Resolution>>,
    /// Turns `true` when the outcome is set; closed if the call ended without one.
    ready: watch::Receiver<bool>,
}

impl Shared {
    fn state(&self) -> MutexGuard<'_, Option<Resolution>> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// A ref whose value type has been forgotten (a task's argument list holds these).
#[derive(Clone)]
pub(crate) struct UntypedRef {
    shared: Arc<Shared>,
}

/// Sets a pending ref: what the call producing it holds. It holds the ref weakly, so that the
/// outcome is never kept alive by the call: if every clone of the ref is gone, the outcome is
/// dropped (and its object freed) at once. The outcome is stored and the link let go *before*
/// waiters are woken, so a waiter that drops the last clone frees the object there and then.
#[derive(Clone)]
pub(crate) struct Setter {
    shared: Weak<Shared>,
    ready: Arc<watch::Sender<bool>>,
}

impl Setter {
    /// Sets the outcome; every clone of the ref sees it.
    pub(crate) fn set(&self, resolution: Resolution) {
        if let Some(shared) = self.shared.upgrade() {
            *shared.state() = Some(resolution);
        }
        self.ready.send_replace(true);
    }
}

impl UntypedRef {
    fn with_state(state: Option<Resolution>, ready: watch::Receiver<bool>) -> Self {
        Self {
            shared: Arc::new(Shared {
                state: Mutex::new(state),
                ready,
            }),
        }
    }

    /// A ref to be set through the returned setter.
    pub(crate) fn pending() -> (Setter, Self) {
        let (ready, waiting) = watch::channel(false);
        let object = Self::with_state(None, waiting);
        let setter = Setter {
            shared: Arc::downgrade(&object.shared),
            ready: Arc::new(ready),
        };
        (setter, object)
    }

    /// A ref that is already set.
    pub(crate) fn ready(resolution: Resolution) -> Self {
        let (_, ready) = watch::channel(true);
        Self::with_state(Some(resolution), ready)
    }

    /// Whether the call is done (successfully or not).
    pub(crate) fn is_ready(&self) -> bool {
        self.shared.state().is_some()
    }

    /// Whether the call is done and failed.
    pub(crate) fn has_failed(&self) -> bool {
        matches!(&*self.shared.state(), Some(Err(_)))
    }

    /// The outcome, if the call is done.
    pub(crate) fn try_resolution(&self) -> Option<Resolution> {
        self.shared.state().clone()
    }

    /// Waits for the call to be done.
    pub(crate) async fn resolution(&self) -> Resolution {
        // Subscribed before looking, so an outcome set in between still wakes this.
        let mut ready = self.shared.ready.clone();
        loop {
            if let Some(done) = &*self.shared.state() {
                return done.clone();
            }
            if ready.changed().await.is_err() && self.shared.state().is_none() {
                return Err(Error::Object(Arc::new(manta_scheduler::Error::Internal(
                    "the call producing this object ended without an outcome (its runtime \
                     stopped)"
                        .into(),
                ))));
            }
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

    /// Whether its call is done and failed.
    pub(crate) fn has_failed(&self) -> bool {
        self.inner.has_failed()
    }

    /// Whether the value (or the failure that replaces it) is there: `get` would not wait.
    pub fn is_ready(&self) -> bool {
        self.inner.is_ready()
    }

    /// The stored object (or why there is none), if the task is done.
    pub(crate) fn try_stored(&self) -> Option<Resolution> {
        self.inner.try_resolution()
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
        let state = match &*self.inner.shared.state() {
            None => "pending".to_string(),
            Some(Ok(object)) => object.id().to_string(),
            Some(Err(_)) => "failed".to_string(),
        };
        write!(f, "ObjectRef<{}>({state})", std::any::type_name::<T>())
    }
}
