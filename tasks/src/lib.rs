//! # manta-tasks: Ray Core's tasks and objects, in Rust
//!
//! `#[manta::remote]` on a function whose arguments and result are serde types makes it a
//! *remote function*: `add.remote(&ctx, 5, 10)` submits a task and returns an [`ObjectRef`]
//! at once; `ctx.get(&r)` waits for the value. Refs can be arguments of other calls: the
//! task waits for them and receives their values. It runs the same in the embedded runtime and
//! on a cluster, where the task runs in a worker process of some node and its result stays in
//! that node's object store until a `get` fetches it over Arrow Flight.
//!
//! ```ignore
//! #[manta::remote]
//! fn add(a: i64, b: i64) -> i64 { a + b }
//!
//! let ctx = manta::init()?;
//! let sum = add.remote(&ctx, 5, 10);        // ObjectRef<i64>
//! let more = add.remote(&ctx, &sum, 1);     // waits for `sum` on the cluster, not here
//! assert_eq!(ctx.get(&more)?, 16);
//! ```
//!
//! * [`args`]: how arguments travel (values encoded with postcard, refs as task inputs).
//! * [`object_ref`]: the typed, possibly-pending [`ObjectRef`]; `call`: a call's task and its
//!   retries (a lost output is made again by [`manta_scheduler::lineage`]).
//! * [`actor`]: actors ([`ActorRef`], [`ActorOptions`]), what `#[manta::actor]` builds on.
//! * [`api`]: [`submit`], [`put`], [`get`], [`get_all`], [`wait`], and [`TaskOptions`].

#![warn(missing_docs)]

pub mod actor;
pub mod api;
pub mod args;
mod call;
pub mod error;
pub mod object_ref;

pub use actor::{ActorClass, ActorOptions, ActorRef};
pub use api::{
    Runtime, TaskOptions, UnaryTask, get, get_all, get_async, get_batch, get_batch_async,
    get_timeout, put, put_batch, submit, wait,
};
pub use args::{Arg, Args, TaskArgs, output, output_batch, user_error};
pub use error::{Error, Result};
pub use object_ref::ObjectRef;
