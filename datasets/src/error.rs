//! The Dataset API's errors: each names the thing that was wrong (a path, a column, a stage).

use std::path::PathBuf;

/// The datasets crate's result type.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Everything that can go wrong building or running a pipeline.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A path given to a reader does not exist or matches nothing.
    #[error("input not found: {path} (no file, directory or glob match)")]
    InputNotFound {
        /// The path as given.
        path: String,
    },

    /// A file that should be Parquet is not (or is corrupt).
    #[error("{path} is not a readable Parquet file: {source}")]
    InvalidParquet {
        /// The file.
        path: PathBuf,
        /// The Parquet reader's error.
        source: parquet::errors::ParquetError,
    },

    /// A file that should be CSV, JSON, Arrow IPC or text is not (or is corrupt).
    #[error("{path} is not a readable {format} file: {reason}")]
    InvalidFile {
        /// The format expected.
        format: &'static str,
        /// The file.
        path: PathBuf,
        /// The reader's message (e.g. a row with the wrong number of fields).
        reason: String,
    },

    /// Files read as one dataset have different schemas.
    #[error("{path} has a different schema from {first}: {difference}")]
    SchemaMismatch {
        /// The first file read.
        first: PathBuf,
        /// The file that differs.
        path: PathBuf,
        /// How it differs.
        difference: String,
    },

    /// An operator's expression does not fit its input (an unknown column, a wrong type).
    #[error("{operator}: {source}")]
    Plan {
        /// The operator and its argument, e.g. `filter(l_foo > 1)`.
        operator: String,
        /// DataFusion's message, which names the column and lists the valid ones.
        source: datafusion::error::DataFusionError,
    },

    /// An argument to the API is not acceptable.
    #[error("{0}")]
    InvalidArgument(String),

    /// Running the pipeline failed.
    #[error(transparent)]
    Execution(#[from] manta_scheduler::Error),

    /// A remote call, `put`, `get` or `wait` failed.
    #[error(transparent)]
    Task(#[from] manta_tasks::Error),

    /// Writing the output failed; nothing was left at the destination.
    #[error("writing {path} failed: {reason}")]
    Write {
        /// The destination.
        path: PathBuf,
        /// Why.
        reason: String,
    },

    /// A write's destination is there already and the write mode does not allow replacing
    /// or adding to it; nothing was written, nothing there was touched.
    #[error("cannot write to {path}: {reason}; nothing was written")]
    OutputExists {
        /// The destination.
        path: PathBuf,
        /// What is there, and what to do about it.
        reason: String,
    },

    /// A write task found no temporary directory of its write on its node: the local output
    /// path is on the driver's machine only. On a cluster the nodes write the parts, so a local
    /// path must be a directory every node shares (the write then moves nothing else).
    #[error(
        "cannot write to {path}: its directory is not on {node}. On a cluster the nodes write \
         the output, so a local path must be a directory every node and the driver share; \
         write to an object-store URL (s3://bucket/path) instead"
    )]
    OutputNotShared {
        /// The destination, on the driver's machine.
        path: PathBuf,
        /// The node that looked for it.
        node: String,
    },

    /// The pipeline feeding a `streaming_split` consumer failed (another consumer saw the
    /// error first).
    #[error("the pipeline feeding this split failed: {reason}")]
    PipelineFailed {
        /// The pipeline's error.
        reason: String,
    },

    /// A file operation failed.
    #[error("{action} {path}: {source}")]
    Io {
        /// What was being done.
        action: &'static str,
        /// On what.
        path: PathBuf,
        /// The operating system's error.
        source: std::io::Error,
    },

    /// An engine error outside a task.
    #[error(transparent)]
    Engine(#[from] manta_engine::Error),

    /// A DataFusion error outside an operator.
    #[error(transparent)]
    DataFusion(#[from] datafusion::error::DataFusionError),

    /// An Arrow error outside an operator.
    #[error(transparent)]
    Arrow(#[from] arrow::error::ArrowError),
}
