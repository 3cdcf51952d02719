//! The data plane's errors: which node, which object, what went wrong.

use manta_engine::ObjectId;

/// The flight crate's result type.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Everything that can go wrong moving an object between nodes.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// No connection could be made to a node's Flight endpoint.
    #[error("could not connect to the Flight endpoint of node {address}: {source}")]
    Connect {
        /// The node's Flight address.
        address: String,
        /// The transport's error.
        source: tonic::transport::Error,
    },

    /// A TLS certificate, key or authority could not be used.
    #[error("TLS: {what}: {reason}")]
    Tls {
        /// The file, address or part concerned.
        what: String,
        /// What is wrong with it.
        reason: String,
    },

    /// The node answered, but not with the object.
    #[error("fetching object {object} from node {node} failed: {status}")]
    FetchFailed {
        /// The node's Flight address.
        node: String,
        /// The object asked for.
        object: ObjectId,
        /// What the node said.
        status: Box<tonic::Status>,
    },

    /// The object's messages did not make an object.
    #[error("object {object} from node {node} arrived malformed: {reason}")]
    Malformed {
        /// The node's Flight address.
        node: String,
        /// The object.
        object: ObjectId,
        /// What was wrong.
        reason: String,
    },

    /// The local store failed to take the object.
    #[error(transparent)]
    Engine(#[from] manta_engine::Error),
}

impl Error {
    /// The object this error is about, when it names one.
    pub fn object(&self) -> Option<ObjectId> {
        match self {
            Error::FetchFailed { object, .. } | Error::Malformed { object, .. } => Some(*object),
            _ => None,
        }
    }
}
