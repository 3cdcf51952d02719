//! # manta-engine: one node's runtime
//!
//! The bottom layer of Manta (`engine` <- `flight` <- `scheduler` <- `datasets` <- `manta`): the
//! vocabulary every other crate speaks, and the object store each node runs.
//!
//! ```text
//!   #[manta::remote] fn ──▶ registry (by name) ──▶ task::execute(spec, inputs) ──▶ Object
//!                                                        ▲                          │
//!                     ObjectRef (id, location) ──▶ store.get            store.put ◀─┘
//!                                                  (heap, or /dev/shm files mapped zero-copy;
//!                                                   spills to disk past its budget)
//! ```
//!
//! * [`ids`]: [`ObjectId`], [`TaskId`], [`ActorId`], [`NodeId`], [`JobId`].
//! * [`actor`]: the actor instances living in this process, by id.
//! * [`object`]: what an object holds: a [`Block`] of record batches, or bytes.
//! * [`object_ref`]: [`ObjectRef`], the counted, typed handle a program holds.
//! * [`store`]: the [`ObjectStore`]: memory budget, spilling, pins, freeing; its file layout.
//! * [`registry`]: functions registered by name, and calling them safely.
//! * [`task`]: [`TaskSpec`], [`execute`](task::execute), [`TaskStats`].
//! * [`resources`]: CPUs, memory and custom resources; byte sizes.
//! * [`huge_pages`]: transparent huge pages, off for Manta's processes.
//!
//! ```
//! use std::sync::Arc;
//! use arrow::array::{Int64Array, RecordBatch};
//! use manta_engine::{ObjectId, ObjectStore, StoreConfig};
//!
//! let store = ObjectStore::new(StoreConfig::heap(1 << 30)).unwrap();
//! let batch = RecordBatch::try_from_iter([("x", Arc::new(Int64Array::from(vec![1, 2])) as _)]).unwrap();
//! let id = ObjectId::random();
//! store.put(id, batch.clone().into()).unwrap();
//! let block = store.get(id).unwrap().into_block(id).unwrap();
//! assert_eq!(block.batches(), &[batch]);
//! ```

#![warn(missing_docs)]

pub mod actor;
pub mod callable;
pub mod dirs;
pub mod error;
pub mod huge_pages;
pub mod ids;
pub mod lineage;
pub mod object;
pub mod object_ref;
pub mod registry;
pub mod resources;
pub mod store;
pub mod task;
pub mod views;

pub use callable::{Callable, RegisteredCallable};
pub use error::{BoxError, Error, Result};
pub use ids::{ActorId, JobId, NodeId, ObjectId, TaskId};
pub use object::{Block, Object};
pub use object_ref::{Location, ObjectMeta, ObjectRef, ReleaseObject};
pub use registry::{
    FunctionKind, RemoteBatchFn, RemoteFunction, RemoteRowFn, TaskContext, TaskInput,
};
pub use resources::{Resources, human_bytes, parse_bytes};
pub use store::{ObjectStore, Pin, StoreConfig, StoreUsage, Stored};
pub use task::{TaskOutcome, TaskSpec, TaskStats};

/// Re-exported so that `#[manta::remote]` can register functions from any crate.
pub use inventory;
#[doc(hidden)]
pub use serde_json;
