//! Actors: Ray's stateful workers. `#[manta::actor]` on an `impl` block makes its type one.
//!
//! ```ignore
//! pub struct Counter { value: i64 }
//!
//! #[manta::actor]
//! impl Counter {
//!     pub fn new(start: i64) -> Self { Counter { value: start } }
//!     pub fn incr(&mut self, by: i64) -> i64 { self.value += by; self.value }
//! }
//!
//! let counter = Counter::remote(&ctx, 10)?;    // CounterHandle, made on a worker
//! let a = counter.incr(1);                     // ObjectRef<i64>, at once
//! let b = counter.incr(2);                     // runs after `a`
//! assert_eq!(ctx.get_all(&[a, b])?, [11, 13]);
//! ```
//!
//! The macro registers the constructor (`new`) and each method as tasks, and writes a handle
//! type (`CounterHandle`) with one method per actor method, which queues the call and returns
//! its [`ObjectRef`]. The handle derefs to [`ActorRef`] for [`ActorRef::kill`] and the id.
//! How actors are placed, called in order and restarted is in `manta_scheduler::actors`.

use manta_engine::{ActorId, Resources, TaskSpec};
use manta_scheduler::{ActorHandle, ActorSpec};

use crate::api::{Runtime, block_on, resolve};
use crate::args::Args;
use crate::error::{Error, Result};
use crate::object_ref::{ObjectRef, UntypedRef};

/// How an actor is started (Ray's `.options(...)` on an actor class).
#[derive(Clone, Debug, Default)]
pub struct ActorOptions {
    /// What it takes of its node while it lives. None by default (like Ray, which holds no
    /// CPU for a running actor), so actors never starve tasks unless asked to.
    pub resources: Resources,
    /// How often it is started again (its constructor run anew) after its worker process or
    /// node dies. Calls that were sent to the dead worker fail; later calls go to the new one.
    pub max_restarts: u32,
    /// A name to find it by with `ctx.get_actor::<T>(name)`; unique among the live actors.
    pub name: Option<String>,
}

/// Implemented by `#[manta::actor]` for the actor's type.
pub trait ActorClass: Sized + Send + 'static {
    /// The registered class name: the type's module path and name.
    const CLASS: &'static str;
    /// The handle type the macro writes (`CounterHandle`).
    type Handle: From<ActorRef>;
}

/// A handle on a live actor, whatever its class: what generated handles wrap. Clones share the
/// actor and its call order. Dropping the last one stops an unnamed actor.
#[derive(Clone)]
pub struct ActorRef {
    inner: ActorHandle,
    client: manta_scheduler::Client,
    tokio: tokio::runtime::Handle,
}

impl std::fmt::Debug for ActorRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("ActorRef").field(&self.inner).finish()
    }
}

impl ActorRef {
    /// Starts an actor of `class` whose constructor task is `constructor`. Waits only for
    /// object refs among the arguments; the constructor runs on its own.
    pub fn create(
        runtime: &impl Runtime,
        class: &'static str,
        constructor: &'static str,
        args: Args,
        options: &ActorOptions,
    ) -> Result<Self> {
        block_on(
            runtime,
            Self::create_async(runtime, class, constructor, args, options),
        )
    }

    /// [`ActorRef::create`], for async code.
    pub async fn create_async(
        runtime: &impl Runtime,
        class: &'static str,
        constructor: &'static str,
        args: Args,
        options: &ActorOptions,
    ) -> Result<Self> {
        let id = ActorId::random();
        let (bytes, inputs, _) = resolve(runtime.client(), constructor, args.for_actor(id)).await?;
        let spec = ActorSpec {
            id,
            class: class.to_string(),
            constructor: TaskSpec {
                function: constructor.to_string(),
                args: bytes,
                inputs,
                input_batches: None,
                batched_inputs: None,
                resources: options.resources.clone(),
                max_retries: 0,
                label: constructor.to_string(),
            },
            max_restarts: options.max_restarts,
            name: options.name.clone(),
        };
        let tokio = runtime.handle();
        let inner = runtime
            .client()
            .create_actor(spec, &tokio)
            .map_err(|e| Error::Actor {
                actor: class.to_string(),
                source: std::sync::Arc::new(e),
            })?;
        Ok(Self {
            inner,
            client: runtime.client().clone(),
            tokio,
        })
    }

    /// The live actor this driver started under `name`, if it is a `class`.
    pub fn named(runtime: &impl Runtime, class: &'static str, name: &str) -> Result<Self> {
        let inner = runtime
            .client()
            .get_actor(name)
            .ok_or_else(|| Error::ActorNotFound {
                name: name.to_string(),
                reason: "no live actor has that name".into(),
            })?;
        if inner.class() != class {
            return Err(Error::ActorNotFound {
                name: name.to_string(),
                reason: format!("it is a {}, not a {class}", inner.class()),
            });
        }
        Ok(Self {
            inner,
            client: runtime.client().clone(),
            tokio: runtime.handle(),
        })
    }

    /// The actor's id.
    pub fn id(&self) -> ActorId {
        self.inner.id()
    }

    /// Queues a call of the method task `method`; returns its ref at once. Calls run one at a
    /// time, in the order made.
    pub fn call<R>(&self, method: &'static str, args: Args) -> ObjectRef<R> {
        let (sender, object) = UntypedRef::pending();
        let failed = sender.clone();
        let args = args.for_actor(self.inner.id());
        let client = self.client.clone();
        let pending = Box::pin(async move {
            match resolve(&client, method, args).await {
                Ok((bytes, inputs, _)) => Some(TaskSpec {
                    function: method.to_string(),
                    args: bytes,
                    inputs,
                    input_batches: None,
                    batched_inputs: None,
                    resources: Resources::default(),
                    max_retries: 0,
                    label: method.to_string(),
                }),
                Err(e) => {
                    failed.set(Err(e));
                    None
                }
            }
        });
        let answer = self.inner.call(pending);
        self.tokio.spawn(async move {
            let outcome = match answer.await {
                Some(Ok(outcome)) => Ok(outcome.output),
                Some(Err(error)) => Err(Error::Task {
                    function: method.to_string(),
                    source: std::sync::Arc::new(error),
                }),
                None => return,
            };
            sender.set(outcome);
        });
        ObjectRef::from_untyped(object)
    }

    /// Kills the actor: calls not yet run fail, it is not restarted, and a name it had is free.
    /// (Blocks; from async code use [`ActorRef::kill_async`].)
    pub fn kill(&self) {
        let killed = self.inner.kill();
        self.tokio.block_on(killed);
    }

    /// [`ActorRef::kill`], for async code.
    pub async fn kill_async(&self) {
        self.inner.kill().await
    }
}
