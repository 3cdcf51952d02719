//! What can go wrong with a task or an object: [`Error`].

use std::sync::Arc;

/// A failed task, put, get or wait.
#[derive(Debug, Clone, thiserror::Error)]
pub enum Error {
    /// The task failed: its function returned an error or panicked (the source names the
    /// function), its worker or node was lost past its retries, or no node can run it.
    #[error("task {function} failed: {source}")]
    Task {
        /// The registered name of the task's function.
        function: String,
        /// Why.
        #[source]
        source: Arc<manta_scheduler::Error>,
    },
    /// An argument of the task was an object ref whose own task failed.
    #[error("task {function} did not run: its argument {argument} failed: {source}")]
    Argument {
        /// The task that did not run.
        function: String,
        /// Which argument (0-based).
        argument: usize,
        /// The argument's failure.
        #[source]
        source: Box<Error>,
    },
    /// A value could not be encoded, or an object could not be decoded as the type asked for.
    #[error("could not {action} a value of type {type_name}: {reason}")]
    Codec {
        /// "encode" or "decode".
        action: &'static str,
        /// The Rust type.
        type_name: &'static str,
        /// The codec's message.
        reason: String,
    },
    /// Storing or fetching an object failed.
    #[error("object store: {0}")]
    Object(Arc<manta_scheduler::Error>),
    /// An actor could not be started.
    #[error("could not start actor {actor}: {source}")]
    Actor {
        /// The actor's class.
        actor: String,
        /// Why.
        #[source]
        source: Arc<manta_scheduler::Error>,
    },
    /// `get_actor` found no such actor.
    #[error("no actor named {name:?}: {reason}")]
    ActorNotFound {
        /// The name asked for.
        name: String,
        /// Why it does not match.
        reason: String,
    },
    /// An object's copy is gone (its node died) and it cannot be made again.
    #[error("object {object} is lost and cannot be rebuilt: {reason}")]
    Lost {
        /// The object.
        object: String,
        /// Why it cannot be rebuilt.
        reason: String,
    },
    /// `get` with a timeout: the object was not ready in time.
    #[error("object not ready after {0:?}")]
    Timeout(std::time::Duration),
}

impl From<manta_scheduler::Error> for Error {
    fn from(e: manta_scheduler::Error) -> Self {
        Error::Object(Arc::new(e))
    }
}

impl From<manta_engine::Error> for Error {
    fn from(e: manta_engine::Error) -> Self {
        Error::Object(Arc::new(e.into()))
    }
}

/// Results of this crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;
