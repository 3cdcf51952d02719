//! The engine's error type.
//!
//! Variants say what failed and on what, so that callers (and the scheduler's recovery) can match
//! on them instead of parsing strings.

use std::path::PathBuf;

use arrow::error::ArrowError;

use crate::ids::ObjectId;

/// A boxed error from user code or a lower layer, kept as a value so it can be chained.
pub type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// The engine's result type.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Everything that can go wrong in one node's runtime.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A string that should have been an id was not one.
    #[error("invalid {kind} {text:?}: expected 32 hex digits")]
    InvalidId {
        /// Which kind of id was expected.
        kind: &'static str,
        /// The text that was given.
        text: String,
    },

    /// The object is not (or no longer) in this node's store.
    #[error("object {id} is not in this node's object store (freed, or never stored here)")]
    ObjectNotFound {
        /// The missing object.
        id: ObjectId,
    },

    /// An object of this id is stored, or being received, already: objects never change.
    #[error(
        "object {id} already exists in this node's store (an object, once stored, never changes)"
    )]
    ObjectExists {
        /// The object.
        id: ObjectId,
    },

    /// Reading or writing the store's files failed.
    #[error("object store I/O on {path}: {source}")]
    StoreIo {
        /// The file or directory involved.
        path: PathBuf,
        /// The operating system's error.
        source: std::io::Error,
    },

    /// An object's bytes do not decode as what they claim to be.
    #[error("object {id} is corrupt: {reason}")]
    CorruptObject {
        /// The object.
        id: ObjectId,
        /// What did not decode.
        reason: String,
    },

    /// An object was used as the wrong kind (bytes where a block was expected, or the reverse).
    #[error("object {id} holds {actual}, not {expected}")]
    WrongObjectKind {
        /// The object.
        id: ObjectId,
        /// What the caller wanted.
        expected: &'static str,
        /// What the object holds.
        actual: &'static str,
    },

    /// A function name that no `#[manta::remote]` registered in this binary.
    #[error(
        "no function named {name:?} is registered in this binary: mark it #[manta::remote] and \
         make sure the crate defining it is linked into the driver"
    )]
    FunctionNotFound {
        /// The name looked up.
        name: String,
    },

    /// A registered function returned an error.
    #[error("function {name} failed on {input}: {source}")]
    UserFunction {
        /// The function's registered name.
        name: String,
        /// Which input it was working on (a block or task description).
        input: String,
        /// The function's own error.
        source: BoxError,
    },

    /// A registered function panicked.
    #[error("function {name} panicked on {input}: {message}")]
    UserPanic {
        /// The function's registered name.
        name: String,
        /// Which input it was working on.
        input: String,
        /// The panic message.
        message: String,
    },

    /// A size such as `--object-store-memory 2GiB` did not parse.
    #[error(
        "invalid byte size {text:?}: expected a number with an optional unit (B, KB, MB, GB, KiB, MiB, GiB)"
    )]
    InvalidByteSize {
        /// The text given.
        text: String,
    },

    /// A `--resources` value did not parse.
    #[error("invalid resources {text:?}: {part:?} is not name=amount with a non-negative amount")]
    InvalidResources {
        /// The whole text.
        text: String,
        /// The part that did not parse.
        part: String,
    },

    /// Encoding or decoding a serialised value failed.
    #[error("could not {action} {what}: {source}")]
    Serialization {
        /// "encode" or "decode".
        action: &'static str,
        /// What was being (de)serialised.
        what: String,
        /// The codec's error.
        source: postcard::Error,
    },

    /// Something that should not happen did; the message says what.
    #[error("{0}")]
    Internal(String),

    /// An Arrow operation failed.
    #[error("arrow: {0}")]
    Arrow(#[from] ArrowError),
}

impl Error {
    /// Wraps an I/O error with the path it happened on.
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::StoreIo {
            path: path.into(),
            source,
        }
    }
}
