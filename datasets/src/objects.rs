//! Ray Core's object calls on a [`Context`]: `put`, `get`, `get_all`, `wait`, `get_actor`.
//!
//! The context is the [`manta_tasks::Runtime`] that remote calls run on (`add.remote(&ctx, 5,
//! 10)`); these methods are thin forwards to [`manta_tasks`], so that a program needs only its
//! context.

use std::time::Duration;

use manta_tasks::ObjectRef;
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::context::Context;
use crate::error::Result;

impl manta_tasks::Runtime for Context {
    fn client(&self) -> &manta_scheduler::Client {
        Context::client(self)
    }

    fn handle(&self) -> tokio::runtime::Handle {
        self.runtime_handle()
    }
}

impl Context {
    /// Stores `value` (in this process's store, or on a cluster node) and returns a ref to
    /// it, which tasks can take as an argument.
    ///
    /// ```no_run
    /// # fn main() -> manta_datasets::Result<()> {
    /// let ctx = manta_datasets::Context::new(Default::default())?;
    /// let weights = ctx.put(&vec![0.5f64; 1000])?;
    /// assert_eq!(ctx.get(&weights)?.len(), 1000);
    /// # Ok(()) }
    /// ```
    pub fn put<T: Serialize>(&self, value: &T) -> Result<ObjectRef<T>> {
        Ok(manta_tasks::put(self, value)?)
    }

    /// Stores a record batch (zero-copy embedded) and returns a ref to it, which tasks taking a
    /// `RecordBatch` argument accept.
    pub fn put_batch(
        &self,
        batch: arrow::array::RecordBatch,
    ) -> Result<ObjectRef<arrow::array::RecordBatch>> {
        Ok(manta_tasks::put_batch(self, batch)?)
    }

    /// The record batch behind `object` (zero-copy when it is in this process's store).
    pub fn get_batch(
        &self,
        object: &ObjectRef<arrow::array::RecordBatch>,
    ) -> Result<arrow::array::RecordBatch> {
        Ok(manta_tasks::get_batch(self, object)?)
    }

    /// Waits for the value behind `object`: a task's result, or the task's error (naming its
    /// function).
    pub fn get<T: DeserializeOwned>(&self, object: &ObjectRef<T>) -> Result<T> {
        Ok(manta_tasks::get(self, object)?)
    }

    /// [`Context::get`], or an error if the value is not there within `timeout`.
    pub fn get_timeout<T: DeserializeOwned>(
        &self,
        object: &ObjectRef<T>,
        timeout: Duration,
    ) -> Result<T> {
        Ok(manta_tasks::get_timeout(self, object, timeout)?)
    }

    /// The values of all `objects`, in order, fetched concurrently.
    pub fn get_all<T: DeserializeOwned>(&self, objects: &[ObjectRef<T>]) -> Result<Vec<T>> {
        Ok(manta_tasks::get_all(self, objects)?)
    }

    /// Waits until `num_returns` of `objects` are done or `timeout` passes: (done, not done).
    pub fn wait<T>(
        &self,
        objects: &[ObjectRef<T>],
        num_returns: usize,
        timeout: Option<Duration>,
    ) -> (Vec<ObjectRef<T>>, Vec<ObjectRef<T>>) {
        manta_tasks::wait(self, objects, num_returns, timeout)
    }

    /// The live actor of type `A` this driver started with `name` (in [`ActorOptions`]).
    ///
    /// [`ActorOptions`]: manta_tasks::ActorOptions
    pub fn get_actor<A: manta_tasks::ActorClass>(&self, name: &str) -> Result<A::Handle> {
        Ok(manta_tasks::ActorRef::named(self, A::CLASS, name)?.into())
    }
}
