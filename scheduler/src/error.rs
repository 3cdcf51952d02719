//! The control plane's errors, typed end to end.
//!
//! A task failure travels from a worker through its node and the head to the driver as a
//! `TaskError` message with a kind, and comes out here as the matching variant, in the embedded
//! runtime and on a cluster alike: recovery and tests match on variants, never on strings.

use manta_engine::{ObjectId, Resources};

/// The scheduler's result type.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Everything that can go wrong placing and running work.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Nothing answered at the head's address.
    #[error(
        "could not reach the Manta head at {address}: {reason}. Is `manta start --head` running there \
         (and is MANTA_ADDRESS right)?"
    )]
    HeadUnreachable {
        /// The address tried.
        address: String,
        /// What the transport said.
        reason: String,
    },

    /// The connection to the head broke while a call was on it: the head died or stopped, or
    /// the network between failed (noticed by keepalive within seconds).
    #[error("lost the connection to the Manta head at {address} during {call}: {reason}")]
    HeadLost {
        /// The head's address.
        address: String,
        /// The call that was on the connection.
        call: &'static str,
        /// What the transport said.
        reason: String,
    },

    /// No cluster token to present to the head at `address`.
    #[error(
        "no cluster token for the Manta head at {address}: {reason}. Pass --token or set MANTA_TOKEN \
         (the head's token is in its token file, e.g. ~/.manta/head-<port>.token on its machine)"
    )]
    NoToken {
        /// The head's address.
        address: String,
        /// Where the token was looked for.
        reason: String,
    },

    /// A node daemon did not answer.
    #[error("could not reach the node at {address}: {reason}")]
    NodeUnreachable {
        /// The node's address.
        address: String,
        /// What the transport said.
        reason: String,
    },

    /// An RPC failed for a reason outside the task.
    #[error("{call} failed: {status}")]
    Rpc {
        /// Which call.
        call: &'static str,
        /// The status returned.
        status: Box<tonic::Status>,
    },

    /// A user function returned an error.
    #[error("function {function} failed on {input}: {message}")]
    UserFunction {
        /// The registered function.
        function: String,
        /// What it was working on.
        input: String,
        /// Its error, as text (it crossed a process boundary).
        message: String,
    },

    /// A user function panicked.
    #[error("function {function} panicked on {input}: {message}")]
    UserPanic {
        /// The registered function.
        function: String,
        /// What it was working on.
        input: String,
        /// The panic message.
        message: String,
    },

    /// The function is not registered in the binary the workers run.
    #[error(
        "no function named {function:?} is registered in the job's binary: mark it #[manta::remote]"
    )]
    FunctionNotFound {
        /// The name.
        function: String,
    },

    /// A task's input could not be pulled from the node holding it.
    #[error("fetching object {object} from node {node} failed: {message}")]
    FetchFailed {
        /// The node's address.
        node: String,
        /// The object.
        object: ObjectId,
        /// What went wrong.
        message: String,
    },

    /// An object is gone from the node that held it.
    #[error("object {object} is lost: node {node} no longer has it")]
    ObjectLost {
        /// The object.
        object: ObjectId,
        /// The node that held it.
        node: String,
    },

    /// An object was lost and could not be made again from its lineage.
    #[error("object {object} was lost and cannot be made again: {reason}")]
    CannotRemake {
        /// The object.
        object: ObjectId,
        /// Why not (no lineage, or what failed while making it).
        reason: String,
    },

    /// The worker process running a task died.
    #[error("the worker running {task} on node {node} died: {message}")]
    WorkerDied {
        /// The task's label.
        task: String,
        /// The node's address.
        node: String,
        /// What is known of the death.
        message: String,
    },

    /// A node stopped answering while running a task.
    #[error("node {node} was lost while running {task}: {message}")]
    NodeLost {
        /// The node's address.
        node: String,
        /// The task's label.
        task: String,
        /// What is known.
        message: String,
    },

    /// No node could ever run the task.
    #[error("no node offers the resources {demand:?} that {task} asks for; nodes offer: {offered}")]
    Infeasible {
        /// The task's label.
        task: String,
        /// What it asked for.
        demand: Resources,
        /// What the nodes offer, for the message.
        offered: String,
    },

    /// The actor a method call was sent to died (or was killed) before answering it, or is
    /// dead for good.
    #[error("actor {actor} died before {call} ran or finished: {message}")]
    ActorDied {
        /// The actor's class and id.
        actor: String,
        /// The lost call.
        call: String,
        /// What is known of the death.
        message: String,
    },

    /// No submitted job has this id.
    #[error("no job {job} (see `manta job list`)")]
    NoSuchJob {
        /// The id asked for.
        job: String,
    },

    /// The autoscaler's node provider could not start or stop a node.
    #[error("could not {action} node {node}: {message}")]
    Provider {
        /// `launch` or `terminate`.
        action: &'static str,
        /// The node's name (or the provider's id for it).
        node: String,
        /// What went wrong.
        message: String,
    },

    /// A remote failure of some other kind.
    #[error("{0}")]
    Internal(String),

    /// A local engine failure.
    #[error(transparent)]
    Engine(#[from] manta_engine::Error),

    /// A local data-plane failure.
    #[error(transparent)]
    Flight(#[from] manta_flight::Error),

    /// A file operation failed.
    #[error("{action} {path}: {source}")]
    Io {
        /// What was being done.
        action: &'static str,
        /// On what.
        path: std::path::PathBuf,
        /// The operating system's error.
        source: std::io::Error,
    },
}

impl Error {
    /// Whether running the task again (elsewhere) may succeed: the failure was the machine's,
    /// not the function's.
    pub fn is_retryable(&self) -> bool {
        matches!(
            self,
            Error::WorkerDied { .. }
                | Error::NodeLost { .. }
                | Error::FetchFailed { .. }
                | Error::ObjectLost { .. }
        )
    }

    /// A failure to fetch `object` from the node at `node`: [`Error::FetchFailed`] naming the
    /// object whatever the transport said (lineage recovery keys on the object), except a
    /// local store failure, which is not the object's fault.
    pub fn fetching(node: &str, object: ObjectId, error: manta_flight::Error) -> Self {
        match error {
            manta_flight::Error::Engine(e) => Error::Engine(e),
            other => Error::FetchFailed {
                node: node.to_string(),
                object,
                message: other.to_string(),
            },
        }
    }

    pub(crate) fn rpc(call: &'static str, status: tonic::Status) -> Self {
        Error::Rpc {
            call,
            status: Box::new(status),
        }
    }
}

/// Converts an engine error raised by a task into the scheduler's task-failure variants, so
/// that the embedded runtime reports failures exactly as a cluster does.
pub fn from_task_error(error: manta_engine::Error) -> Error {
    match error {
        manta_engine::Error::UserFunction {
            name,
            input,
            source,
        } => Error::UserFunction {
            function: name,
            input,
            message: source.to_string(),
        },
        manta_engine::Error::UserPanic {
            name,
            input,
            message,
        } => Error::UserPanic {
            function: name,
            input,
            message,
        },
        manta_engine::Error::FunctionNotFound { name } => {
            Error::FunctionNotFound { function: name }
        }
        other => Error::Engine(other),
    }
}
