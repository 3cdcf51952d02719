//! # manta-flight: the data plane
//!
//! Second layer of Manta (`engine` <- **`flight`** <- `scheduler` <- `datasets` <- `manta`).
//! Every node serves its object store over Arrow Flight, and pulls the objects its tasks need
//! from other nodes the same way.
//!
//! ```text
//!   node A                                             node B
//!   ObjectStore ──mmap──▶ ObjectFlightService ═DoGet(id)═▶ FlightPool::pull_into ──▶ ObjectStore
//!   (/dev/shm file)       one FlightData per IPC message    writes the messages back    (/dev/shm)
//! ```
//!
//! * [`auth`]: the cluster [`auth::Token`], presented on every call and required by every service.
//! * [`tls`]: opt-in TLS: a server's [`tls::ServerIdentity`], the authorities a client trusts.
//! * [`ticket`]: what a `DoGet` asks for: an object whole, or parts of many blocks at once.
//! * [`service`]: [`ObjectFlightService`], the server side, zero-copy from the mapping.
//! * [`client`]: [`FlightPool`], the client side, into a store or into memory.
//! * [`combined`]: many parts from one node pulled into one block (a reduce task's partitions).
//! * [`error`]: [`Error`], typed (`FetchFailed { node, object, .. }`), never a string.
//!
//! Any Flight client can read a block: the ticket is the 16-byte object id and the stream is a
//! plain Arrow IPC stream.

#![warn(missing_docs)]

pub mod auth;
pub mod client;
pub mod combined;
pub mod error;
pub mod service;
pub mod ticket;
pub mod tls;

pub use client::{FlightPool, Part, tune_endpoint};
pub use combined::CombinedBlock;

pub use error::{Error, Result};
pub use service::{FlightTraffic, ObjectFlightService};
pub use tls::incoming;
