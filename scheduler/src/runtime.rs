//! [`Client`]: the one handle a driver holds, embedded or on a cluster.

use std::sync::Arc;

use manta_engine::{Object, ObjectRef, StoreUsage, TaskOutcome, TaskSpec};

use crate::actors::{ActorHandle, ActorSpec};
use crate::client::ClusterClient;
use crate::embedded::EmbeddedRuntime;
use crate::error::{Error, Result};

/// What is done with a task's outcome (see [`Client::submit_then`]).
pub type OnOutcome = Box<dyn FnOnce(Result<TaskOutcome>) + Send>;

/// Where a driver's tasks run.
#[derive(Clone, Debug)]
pub enum Client {
    /// In this process.
    Embedded(Arc<EmbeddedRuntime>),
    /// On a cluster.
    Cluster(Arc<ClusterClient>),
}

impl std::fmt::Debug for EmbeddedRuntime {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EmbeddedRuntime")
            .field("cpus", &self.num_cpus())
            .field("store", &self.store().usage())
            .finish()
    }
}

impl Client {
    /// Runs a task; resolves when it is done. On a cluster the output keeps the task's lineage,
    /// and inputs found lost are made again from theirs (see [`crate::lineage`]).
    pub fn submit(
        &self,
        spec: TaskSpec,
    ) -> futures::future::Either<
        impl Future<Output = Result<TaskOutcome>> + Send + 'static,
        impl Future<Output = Result<TaskOutcome>> + Send + 'static,
    > {
        match self {
            Client::Embedded(_) => futures::future::Either::Left(self.submit_once(spec)),
            Client::Cluster(_) => {
                futures::future::Either::Right(crate::lineage::submit(self, spec))
            }
        }
    }

    /// Runs a task once, as it is: no lineage, nothing made again.
    pub(crate) fn submit_once(
        &self,
        spec: TaskSpec,
    ) -> impl Future<Output = Result<TaskOutcome>> + Send + 'static {
        let (done, outcome) = tokio::sync::oneshot::channel();
        self.submit_then_once(
            spec,
            Box::new(move |result| {
                let _ = done.send(result);
            }),
        );
        async move {
            outcome
                .await
                .map_err(|_| Error::Internal("a task's outcome was dropped unsent".into()))?
        }
    }

    /// Queues a task; `done` gets its outcome when it is done, on a thread of the client's (a
    /// task thread embedded, the task stream's receiving task on a cluster), so it must be
    /// quick and must not block. Callable from any thread: submitting this way needs no future
    /// per task. On a cluster the output keeps the task's lineage (but lost inputs are not made
    /// again: that needs [`submit`](Self::submit)).
    pub fn submit_then(&self, spec: TaskSpec, done: OnOutcome) {
        match self {
            Client::Embedded(runtime) => runtime.submit_then(spec, done),
            Client::Cluster(cluster) => match manta_engine::lineage::Lineage::of(&spec) {
                Some(lineage) => cluster.submit_then(
                    spec,
                    Box::new(move |outcome| {
                        if let Ok(outcome) = &outcome {
                            outcome.output.set_lineage(lineage);
                        }
                        done(outcome)
                    }),
                ),
                None => cluster.submit_then(spec, done),
            },
        }
    }

    /// [`submit_then`](Self::submit_then) without recording lineage.
    fn submit_then_once(&self, spec: TaskSpec, done: OnOutcome) {
        match self {
            Client::Embedded(runtime) => runtime.submit_then(spec, done),
            Client::Cluster(cluster) => cluster.submit_then(spec, done),
        }
    }

    /// Starts an actor; its calls and lifecycle go through the handle. `tokio` runs its
    /// driver-side queue.
    pub fn create_actor(
        &self,
        spec: ActorSpec,
        tokio: &tokio::runtime::Handle,
    ) -> Result<ActorHandle> {
        match self {
            Client::Embedded(runtime) => runtime.create_actor(spec, tokio),
            Client::Cluster(cluster) => cluster.create_actor(spec, tokio),
        }
    }

    /// The live actor this driver started under `name`.
    pub fn get_actor(&self, name: &str) -> Option<ActorHandle> {
        match self {
            Client::Embedded(runtime) => runtime.actors().get(name),
            Client::Cluster(cluster) => cluster.actors().get(name),
        }
    }

    /// Reads an object into this process (zero-copy when it is local). On a cluster, an
    /// object found lost is made again from its lineage first.
    pub async fn get(&self, object: &ObjectRef) -> Result<Object> {
        match self {
            Client::Embedded(runtime) => runtime.get(object),
            Client::Cluster(cluster) => {
                crate::lineage::read_remaking(self, object, |copy| async move {
                    cluster.get(&copy).await
                })
                .await
            }
        }
    }

    /// CPUs across the cluster (embedded: this process's task threads).
    pub async fn total_cpus(&self) -> Result<f64> {
        match self {
            Client::Embedded(runtime) => Ok(runtime.num_cpus() as f64),
            Client::Cluster(cluster) => Ok(cluster
                .nodes()
                .await?
                .iter()
                .filter(|n| n.alive)
                .map(|n| n.total.as_ref().map_or(0.0, |t| t.cpus))
                .sum()),
        }
    }

    /// The local store's usage, where there is one in this process.
    pub fn local_store_usage(&self) -> Option<StoreUsage> {
        match self {
            Client::Embedded(runtime) => Some(runtime.store().usage()),
            Client::Cluster(_) => None,
        }
    }

    /// The object store usage where tasks run: this process's store, or the cluster's nodes'
    /// stores summed (as of their last heartbeats); `None` if the head does not answer.
    pub async fn store_usage(&self) -> Option<StoreUsage> {
        match self {
            Client::Embedded(runtime) => Some(runtime.store().usage()),
            Client::Cluster(cluster) => cluster.store_usage().await.ok(),
        }
    }
}
