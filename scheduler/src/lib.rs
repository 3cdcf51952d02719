//! # manta-scheduler: the control plane
//!
//! Third layer of Manta (`engine` <- `flight` <- **`scheduler`** <- `datasets` <- `manta`): who
//! runs what, where. On a cluster there are three kinds of process, talking tonic gRPC
//! (`proto/manta.proto`):
//!
//! ```text
//!                 SubmitTasks                RunTasks                Attach (stream)
//!   driver ─────────────────▶ head ─────────────────▶ node daemon ◀──────────────── worker process
//!   (ClusterClient)           placement,              object store,                (the driver's own
//!                             node table,             Flight endpoint,              executable, runs
//!                             executables             worker pool                   registered functions)
//!        ◀════════════════ Arrow Flight DoGet(object id) ════════════════▶  other nodes
//!        ◀══════════════════════ Results (task successes) ══════════════  node daemon
//! ```
//!
//! Without an address the driver gets the [`EmbeddedRuntime`] instead: the same tasks on a
//! thread pool in-process, no serialisation. [`Client`] is the one handle either way.
//!
//! * [`head`]: node table, jobs, placement, retries, liveness.
//! * [`autoscaler`]: launches nodes for waiting demand and stops idle ones, through a
//!   [`autoscaler::NodeProvider`].
//! * [`jobs`]: submitted jobs (an entrypoint the head runs as a driver), and their HTTP API.
//! * [`metrics`]: Prometheus metrics of the head and the nodes; [`http_auth`]: the token on
//!   HTTP endpoints.
//! * [`placement`]: the placement rule behind a two-method trait, unit-tested without processes.
//! * [`node`]: the node daemon; [`worker_pool`]: its worker processes; [`worker`]: a worker.
//! * [`client`]: the driver side of a cluster; [`embedded`]: the in-process runtime.
//! * `direct_results` and `node/result_links`: task results from the node to the caller, not
//!   through the head.
//! * [`actors`]: actors, their call queues, restarts and kills.
//! * [`cluster_token`]: where a process finds the cluster token every service requires.
//! * [`executables`]: the content-addressed executable cache.
//! * [`error`]: typed errors that survive crossing processes.

#![warn(missing_docs)]

pub mod actors;
pub mod autoscaler;
pub mod client;
pub mod cluster_token;
pub mod dashboard;
pub(crate) mod direct_results;
pub mod embedded;
pub mod error;
pub mod events;
pub mod executables;
pub mod head;
pub mod http_auth;
pub mod io_threads;
pub mod jobs;
pub mod lineage;
pub mod local_stores;
pub mod metrics;
pub mod node;
pub mod peak_memory;
pub mod placement;
pub mod proto;
pub mod runtime;
pub mod server;
pub mod simulation;
pub mod stall_watch;
pub mod task_stream;
pub mod together;
pub mod worker;
pub mod worker_pool;

pub use actors::{ActorHandle, ActorSpec};
pub use client::ClusterClient;
pub use embedded::{EmbeddedConfig, EmbeddedRuntime};
pub use error::{Error, Result};
pub use head::{HeadConfig, run_head};
pub use node::{NodeConfig, run_node};
pub use runtime::Client;
pub use worker::{WorkerEnv, run_worker};
