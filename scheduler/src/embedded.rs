//! The embedded runtime: head, node and executor inside the driver process.
//!
//! What `manta::init()` gives without an address. Tasks run on a thread pool with one thread
//! per CPU; the object store keeps blocks on the heap as Arrow arrays, so passing a block from
//! one task to the next clones `Arc`s and serialises nothing. Past the store's budget, blocks
//! spill to disk like on a node. Failures come out as the same [`Error`] variants a cluster
//! gives.

use std::sync::{Arc, Weak};

use manta_engine::{
    Location, NodeId, Object, ObjectId, ObjectMeta, ObjectRef, ObjectStore, ReleaseObject,
    Resources, StoreConfig, TaskContext, TaskOutcome, TaskSpec,
};

use crate::error::{Error, Result, from_task_error};

/// How the embedded runtime is set up.
#[derive(Clone, Debug)]
pub struct EmbeddedConfig {
    /// Threads running tasks (CPUs offered).
    pub num_cpus: usize,
    /// Object store budget before spilling.
    pub object_store_memory: u64,
    /// Custom resources offered, so pipelines that ask for some run embedded too.
    pub custom_resources: std::collections::BTreeMap<String, f64>,
    /// Where the spill directory is created.
    pub spill_parent: std::path::PathBuf,
}

impl Default for EmbeddedConfig {
    fn default() -> Self {
        Self {
            num_cpus: std::thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(1),
            object_store_memory: default_store_memory(),
            custom_resources: Default::default(),
            spill_parent: std::env::temp_dir(),
        }
    }
}

/// 30% of physical memory, like Ray's default object store size.
pub fn default_store_memory() -> u64 {
    // SAFETY: sysconf only reads system configuration.
    let (pages, page_size) = unsafe {
        (
            libc::sysconf(libc::_SC_PHYS_PAGES),
            libc::sysconf(libc::_SC_PAGESIZE),
        )
    };
    if pages <= 0 || page_size <= 0 {
        return 2 << 30;
    }
    (pages as u64 * page_size as u64) * 3 / 10
}

/// The in-process runtime.
pub struct EmbeddedRuntime {
    node: NodeId,
    store: Arc<ObjectStore>,
    pool: rayon::ThreadPool,
    ctx: TaskContext,
    resources: Resources,
    releaser: Arc<dyn ReleaseObject>,
    actors: Arc<crate::actors::ActorDirectory>,
}

struct FreeFromStore(Weak<ObjectStore>);

impl ReleaseObject for FreeFromStore {
    fn release(&self, id: ObjectId, _location: &Location) {
        if let Some(store) = self.0.upgrade() {
            store.free(id);
        }
    }
}

impl EmbeddedRuntime {
    /// Starts the thread pool and the store.
    pub fn new(config: EmbeddedConfig) -> Result<Arc<Self>> {
        let node = NodeId::random();
        let store = ObjectStore::new(StoreConfig {
            budget_bytes: config.object_store_memory,
            shared_parent: None,
            spill_parent: config.spill_parent,
        })?;
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(config.num_cpus.max(1))
            .thread_name(|i| format!("manta-task-{i}"))
            .build()
            .map_err(|e| Error::Internal(format!("could not start the task threads: {e}")))?;
        let resources = Resources {
            cpus: config.num_cpus.max(1) as f64,
            memory_bytes: config.object_store_memory,
            custom: config.custom_resources,
        };
        let releaser = Arc::new(FreeFromStore(Arc::downgrade(&store)));
        Ok(Arc::new(Self {
            node,
            store,
            pool,
            ctx: TaskContext::new(node),
            resources,
            releaser,
            actors: Arc::default(),
        }))
    }

    /// The in-process store.
    pub fn store(&self) -> &Arc<ObjectStore> {
        &self.store
    }

    /// CPUs offered.
    pub fn num_cpus(&self) -> usize {
        self.pool.current_num_threads()
    }

    /// Runs a task on the pool; `done` gets its outcome there.
    pub fn submit_then(self: &Arc<Self>, spec: TaskSpec, done: crate::runtime::OnOutcome) {
        if let Err(infeasible) = self.check_feasible(&spec) {
            return done(Err(infeasible));
        }
        let runtime = Arc::clone(self);
        self.pool.spawn(move || done(runtime.run(spec)));
    }

    /// Starts an actor on a thread of its own.
    pub fn create_actor(
        self: &Arc<Self>,
        spec: crate::actors::ActorSpec,
        tokio: &tokio::runtime::Handle,
    ) -> Result<crate::actors::ActorHandle> {
        crate::actors::spawn_embedded(self, spec, &self.actors, tokio)
    }

    /// The named actors started here.
    pub fn actors(&self) -> &crate::actors::ActorDirectory {
        &self.actors
    }

    /// `Infeasible` if this runtime can never give `spec` what it asks for.
    pub(crate) fn check_feasible(&self, spec: &TaskSpec) -> Result<()> {
        if self.resources.covers(&spec.resources) {
            return Ok(());
        }
        Err(Error::Infeasible {
            task: spec.label.clone(),
            demand: spec.resources.clone(),
            offered: format!("the embedded runtime offers {:?}", self.resources),
        })
    }

    /// Runs a task in this thread.
    pub(crate) fn run(&self, spec: TaskSpec) -> Result<TaskOutcome> {
        let batched = match &spec.input_batches {
            Some(_) => spec
                .inputs
                .len()
                .min(spec.batched_inputs.map_or(usize::MAX, |n| n as usize)),
            None => 0,
        };
        let batches = spec.input_batches.clone().unwrap_or(0..0);
        let (sliced, whole) = spec.inputs.split_at(batched);
        let objects = sliced
            .iter()
            .flat_map(|r| batches.clone().map(move |batch| (r, batch)))
            .map(|(r, batch)| self.store.get_batch(r.id(), batch as usize))
            .chain(whole.iter().map(|r| self.store.get(r.id())))
            .collect::<manta_engine::Result<Vec<_>>>()?;
        let (output, mut stats) =
            manta_engine::task::execute(&self.ctx, &spec.function, &spec.label, spec.args, objects)
                .map_err(from_task_error)?;
        let (output, spilled_bytes) = self.store_object(output)?;
        stats.spilled_bytes += spilled_bytes;
        Ok(TaskOutcome { output, stats })
    }

    /// Stores a value and returns a counted ref to it.
    pub fn put_object(&self, object: Object) -> Result<ObjectRef> {
        self.store_object(object).map(|(object, _)| object)
    }

    /// Stores a value; returns a counted ref to it and the bytes it made the store spill.
    fn store_object(&self, object: Object) -> Result<(ObjectRef, u64)> {
        let num_rows = match &object {
            Object::Block(block) => block.num_rows() as u64,
            Object::Bytes(_) => 0,
        };
        let id = ObjectId::random();
        let stored = self.store.put_reporting(id, object)?;
        let meta = ObjectMeta {
            id,
            location: Location {
                node: self.node,
                flight_address: "".into(),
            },
            size_bytes: stored.size_bytes,
            num_rows,
        };
        Ok((
            ObjectRef::new(meta, Arc::clone(&self.releaser)),
            stored.spilled_bytes,
        ))
    }

    /// Reads an object (zero-copy).
    pub fn get(&self, object: &ObjectRef) -> Result<Object> {
        Ok(self.store.get(object.id())?)
    }
}
