//! Actors: a stateful worker whose method calls run one at a time, in the order they were made.
//!
//! # How it works
//!
//! An actor is made of ordinary registered tasks: a *constructor* task that builds the state
//! and keeps it in its process ([`manta_engine::actor`]), and one task per method that borrows
//! it. What makes them an actor is where they run:
//!
//! * **Embedded**, the actor gets a thread of its own; calls reach it over a channel.
//! * **On a cluster**, the head places the actor like a task (its resources stay taken while it
//!   lives) and the chosen node starts a worker process for it alone. Method calls go straight
//!   from the driver to that node over one `ActorCalls` stream per actor, which keeps their
//!   order; the node hands them to the worker in that order. When the worker or its node dies,
//!   the node (or the head's liveness check) tells the head, which runs the constructor again
//!   elsewhere while restarts remain ([`proto::ActorInfo`] carries the incarnation). The calls
//!   that were sent to the dead incarnation fail with [`Error::ActorDied`], each naming itself;
//!   later calls go to the new one.
//!
//! Either way, a driver-side [`ActorHandle`] holds the call queue. A call may wait for object
//! refs among its arguments; the queue resolves calls strictly in order
//! ([`resolve_in_order`]), so a later call never overtakes an earlier one that waits.

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use bytes::Bytes;
use manta_engine::{ActorId, ObjectRef, TaskOutcome, TaskSpec};
use parking_lot::Mutex;
use tokio::sync::{mpsc, oneshot};
use tokio_stream::wrappers::ReceiverStream;

use crate::client::ClusterClient;
use crate::embedded::EmbeddedRuntime;
use crate::error::{Error, Result};
use crate::proto::node_client::NodeClient;
use crate::proto::{self, actor_info::State};
use crate::server;

/// How an actor is made.
#[derive(Clone, Debug)]
pub struct ActorSpec {
    /// Its id.
    pub id: ActorId,
    /// Its class, for messages (`module::Counter`).
    pub class: String,
    /// The constructor task; its resources are the actor's, taken while it lives.
    pub constructor: TaskSpec,
    /// How often it is started again after its worker or node dies.
    pub max_restarts: u32,
    /// A name it can be found by ([`Client::get_actor`](crate::Client::get_actor)).
    pub name: Option<String>,
}

/// A method call's task, once its arguments are resolved; `None` if resolving them failed
/// (the caller reports that failure itself).
pub type PendingCall = Pin<Box<dyn Future<Output = Option<TaskSpec>> + Send>>;

enum Command {
    Call {
        call: PendingCall,
        reply: oneshot::Sender<Result<TaskOutcome>>,
    },
    Kill {
        done: oneshot::Sender<()>,
    },
}

/// A call whose arguments are resolved, or a kill, in the order they were made.
enum Resolved {
    Call(TaskSpec, oneshot::Sender<Result<TaskOutcome>>),
    Kill(oneshot::Sender<()>),
}

/// The driver's handle on an actor: calls sent through it (or any clone) run in the order
/// sent. When the last handle is dropped (and no name keeps it), the actor is stopped.
#[derive(Clone)]
pub struct ActorHandle {
    id: ActorId,
    class: Arc<str>,
    commands: mpsc::UnboundedSender<Command>,
}

impl std::fmt::Debug for ActorHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.describe())
    }
}

impl ActorHandle {
    /// The actor's id.
    pub fn id(&self) -> ActorId {
        self.id
    }

    /// The actor's class.
    pub fn class(&self) -> &str {
        &self.class
    }

    /// The actor's class and short id, for messages.
    pub fn describe(&self) -> String {
        describe(&self.class, self.id)
    }

    /// Queues a method call: its task once `call` resolves it. The answer is `None` when the
    /// call was dropped because its arguments did not resolve.
    pub fn call(
        &self,
        call: PendingCall,
    ) -> impl Future<Output = Option<Result<TaskOutcome>>> + Send + 'static {
        let (reply, answer) = oneshot::channel();
        let sent = self.commands.send(Command::Call { call, reply }).is_ok();
        let actor = self.describe();
        async move {
            if !sent {
                return Some(Err(Error::ActorDied {
                    actor,
                    call: "a call".into(),
                    message: "the actor's driver task has stopped".into(),
                }));
            }
            answer.await.ok()
        }
    }

    /// Kills the actor: calls not yet run fail with [`Error::ActorDied`], and it is not
    /// restarted. Resolves once the kill has been carried out.
    pub fn kill(&self) -> impl Future<Output = ()> + Send + 'static {
        let (done, killed) = oneshot::channel();
        let _ = self.commands.send(Command::Kill { done });
        async move {
            let _ = killed.await;
        }
    }
}

fn describe(class: &str, id: ActorId) -> String {
    format!("{class}({})", &id.to_string()[..8])
}

fn died(actor: &str, call: &str, message: impl Into<String>) -> Error {
    Error::ActorDied {
        actor: actor.to_string(),
        call: call.to_string(),
        message: message.into(),
    }
}

/// Named actors of one driver.
#[derive(Default)]
pub struct ActorDirectory(Mutex<HashMap<String, ActorHandle>>);

impl ActorDirectory {
    /// Registers `handle` under `name`, unless a live actor has it.
    fn register(&self, name: &str, handle: &ActorHandle) -> Result<()> {
        let mut names = self.0.lock();
        if let Some(existing) = names.get(name)
            && !existing.commands.is_closed()
        {
            return Err(Error::Internal(format!(
                "an actor named {name:?} already exists ({})",
                existing.describe()
            )));
        }
        names.insert(name.to_string(), handle.clone());
        Ok(())
    }

    /// The actor named `name`, if it is known and not killed.
    pub fn get(&self, name: &str) -> Option<ActorHandle> {
        let names = self.0.lock();
        names.get(name).filter(|h| !h.commands.is_closed()).cloned()
    }

    fn forget(&self, id: ActorId) {
        self.0.lock().retain(|_, handle| handle.id != id);
    }
}

/// Starts an actor's driver-side queue on `runtime` and returns its handle; `run` consumes
/// the resolved calls (on a thread of its own, or over the network).
fn start(
    spec: &ActorSpec,
    directory: &ActorDirectory,
    runtime: &tokio::runtime::Handle,
) -> Result<(ActorHandle, mpsc::UnboundedReceiver<Resolved>)> {
    let (commands, received) = mpsc::unbounded_channel();
    let handle = ActorHandle {
        id: spec.id,
        class: Arc::from(spec.class.as_str()),
        commands,
    };
    if let Some(name) = &spec.name {
        directory.register(name, &handle)?;
    }
    let (resolved, calls) = mpsc::unbounded_channel();
    runtime.spawn(resolve_in_order(received, resolved));
    Ok((handle, calls))
}

/// Resolves each call's arguments in turn and passes it on: calls keep the order they were
/// made in even when an earlier one waits for an object ref.
async fn resolve_in_order(
    mut commands: mpsc::UnboundedReceiver<Command>,
    resolved: mpsc::UnboundedSender<Resolved>,
) {
    while let Some(command) = commands.recv().await {
        let next = match command {
            Command::Call { call, reply } => match call.await {
                Some(spec) => Resolved::Call(spec, reply),
                None => continue,
            },
            Command::Kill { done } => Resolved::Kill(done),
        };
        if resolved.send(next).is_err() {
            return;
        }
    }
}

/// An actor in this process: a thread of its own runs the constructor, then each call.
pub(crate) fn spawn_embedded(
    runtime: &Arc<EmbeddedRuntime>,
    spec: ActorSpec,
    directory: &Arc<ActorDirectory>,
    tokio: &tokio::runtime::Handle,
) -> Result<ActorHandle> {
    let (handle, mut calls) = start(&spec, directory, tokio)?;
    let actor = handle.describe();
    let killed = Arc::new(AtomicBool::new(false));
    let (to_thread, thread_calls) =
        std::sync::mpsc::channel::<(TaskSpec, oneshot::Sender<Result<TaskOutcome>>)>();
    let thread_runtime = Arc::clone(runtime);
    let thread_killed = Arc::clone(&killed);
    let thread_actor = actor.clone();
    let ActorSpec {
        id, constructor, ..
    } = spec;
    std::thread::Builder::new()
        .name(format!("manta-actor-{}", &id.to_string()[..8]))
        .spawn(move || {
            let runtime = thread_runtime;
            let death = match runtime.check_feasible(&constructor) {
                Err(e) => Some(format!("it could not be created: {e}")),
                Ok(()) => match runtime.run(constructor) {
                    Ok(_unit) => None,
                    Err(e) => Some(format!("its constructor failed: {e}")),
                },
            };
            for (call, reply) in thread_calls {
                let answer = if let Some(death) = &death {
                    Err(died(&thread_actor, &call.label, death.clone()))
                } else if thread_killed.load(Ordering::SeqCst) {
                    Err(died(&thread_actor, &call.label, "it was killed"))
                } else {
                    runtime.run(call)
                };
                let _ = reply.send(answer);
            }
            manta_engine::actor::remove(id);
        })
        .map_err(|e| Error::Internal(format!("could not start the actor's thread: {e}")))?;
    let directory = Arc::clone(directory);
    tokio.spawn(async move {
        while let Some(resolved) = calls.recv().await {
            match resolved {
                Resolved::Call(call, reply) => {
                    if let Err(returned) = to_thread.send((call, reply)) {
                        let (call, reply) = returned.0;
                        let _ = reply.send(Err(died(&actor, &call.label, "its thread ended")));
                    }
                }
                Resolved::Kill(done) => {
                    killed.store(true, Ordering::SeqCst);
                    directory.forget(id);
                    fail_rest(&actor, calls, "it was killed");
                    let _ = done.send(());
                    return;
                }
            }
        }
    });
    Ok(handle)
}

/// Answers every call still to come with `ActorDied` (the actor is gone for good).
fn fail_rest(actor: &str, mut calls: mpsc::UnboundedReceiver<Resolved>, message: &str) {
    let actor = actor.to_string();
    let message = message.to_string();
    tokio::spawn(async move {
        while let Some(resolved) = calls.recv().await {
            match resolved {
                Resolved::Call(call, reply) => {
                    let _ = reply.send(Err(died(&actor, &call.label, message.clone())));
                }
                Resolved::Kill(done) => {
                    let _ = done.send(());
                }
            }
        }
    });
}

/// An actor on a cluster: created through the head, called over a stream to its node.
pub(crate) fn spawn_cluster(
    client: &Arc<ClusterClient>,
    spec: ActorSpec,
    directory: &Arc<ActorDirectory>,
    tokio: &tokio::runtime::Handle,
) -> Result<ActorHandle> {
    let (handle, calls) = start(&spec, directory, tokio)?;
    tokio.spawn(drive_cluster(
        Arc::clone(client),
        spec,
        handle.describe(),
        calls,
        Arc::clone(directory),
    ));
    Ok(handle)
}

/// How one incarnation's stream of calls ended.
enum Ended {
    /// Its worker or node died, or the connection to it broke.
    Lost,
    /// The actor was killed.
    Killed,
    /// Every handle was dropped and every call answered.
    Unused,
}

async fn drive_cluster(
    client: Arc<ClusterClient>,
    spec: ActorSpec,
    actor: String,
    mut calls: mpsc::UnboundedReceiver<Resolved>,
    directory: Arc<ActorDirectory>,
) {
    let mut head = client.head();
    let id = Bytes::copy_from_slice(spec.id.as_bytes());
    let mut constructor = client.request(&spec.constructor);
    constructor.actor_id = id.clone();
    let request = proto::CreateActorRequest {
        constructor: Some(constructor),
        max_restarts: spec.max_restarts,
        name: spec.name.clone().unwrap_or_default(),
    };
    let dead = |death: String| proto::ActorInfo {
        state: State::Dead as i32,
        death,
        ..Default::default()
    };
    let mut info = match head.create_actor(request).await {
        Ok(reply) => reply.into_inner(),
        Err(status) => dead(format!("creating it failed: {}", status.message())),
    };
    loop {
        if info.state == State::Dead as i32 {
            directory.forget(spec.id);
            fail_rest(&actor, calls, &info.death);
            return;
        }
        let ended = run_incarnation(&client, &actor, &info, &mut calls).await;
        info = match ended {
            Ended::Lost => {
                let request = proto::GetActorRequest {
                    actor_id: id.clone(),
                    after_incarnation: info.incarnation,
                };
                match head.get_actor(request).await {
                    Ok(reply) => reply.into_inner(),
                    Err(status) => dead(format!("the head did not answer: {}", status.message())),
                }
            }
            Ended::Killed => dead("it was killed".into()),
            Ended::Unused => {
                let _ = head
                    .kill_actor(proto::KillActorRequest { actor_id: id })
                    .await;
                return;
            }
        };
    }
}

/// Sends calls to one incarnation of the actor until it is lost, killed or no longer used.
async fn run_incarnation(
    client: &ClusterClient,
    actor: &str,
    info: &proto::ActorInfo,
    calls: &mut mpsc::UnboundedReceiver<Resolved>,
) -> Ended {
    type Outstanding = HashMap<u64, (String, Vec<ObjectRef>, oneshot::Sender<Result<TaskOutcome>>)>;
    let mut outstanding: Outstanding = HashMap::new();
    let lost_message = format!(
        "its worker on node {} died (start {} of the actor) before answering",
        info.address, info.incarnation
    );
    let fail_all = |outstanding: &mut Outstanding, message: &str| {
        for (_, (label, _inputs, reply)) in outstanding.drain() {
            let _ = reply.send(Err(died(actor, &label, message)));
        }
    };
    let (sender, receiver) = mpsc::channel(1024);
    let stream = async {
        let channel = server::lazy_channel(&info.address, client.token())?;
        NodeClient::new(channel)
            .actor_calls(ReceiverStream::new(receiver))
            .await
            .map_err(|status| Error::rpc("ActorCalls", status))
    };
    let mut replies = match stream.await {
        Ok(replies) => replies.into_inner(),
        Err(e) => {
            tracing::warn!(%actor, error = %e, "could not reach the actor's node");
            return Ended::Lost;
        }
    };
    let mut next_call = 0_u64;
    let mut unused = false;
    loop {
        tokio::select! {
            resolved = calls.recv(), if !unused => match resolved {
                None if outstanding.is_empty() => return Ended::Unused,
                None => unused = true,
                Some(Resolved::Call(call, reply)) => {
                    let mut task = client.request(&call);
                    task.actor_id = info.actor_id.clone();
                    next_call += 1;
                    outstanding.insert(next_call, (call.label, call.inputs, reply));
                    let message = proto::ActorCall { call_id: next_call, task: Some(task) };
                    if sender.send(message).await.is_err() {
                        fail_all(&mut outstanding, &lost_message);
                        return Ended::Lost;
                    }
                }
                Some(Resolved::Kill(done)) => {
                    let mut head = client.head();
                    let _ = head
                        .kill_actor(proto::KillActorRequest { actor_id: info.actor_id.clone() })
                        .await;
                    fail_all(&mut outstanding, "it was killed");
                    let _ = done.send(());
                    return Ended::Killed;
                }
            },
            reply = replies.message() => match reply {
                Ok(Some(reply)) => {
                    let Some((_, _inputs, answer)) = outstanding.remove(&reply.call_id) else {
                        continue;
                    };
                    let result = client.outcome(reply.reply.unwrap_or_default());
                    let lost = matches!(result, Err(Error::ActorDied { .. }));
                    let _ = answer.send(result);
                    if lost {
                        fail_all(&mut outstanding, &lost_message);
                        return Ended::Lost;
                    }
                    if unused && outstanding.is_empty() {
                        return Ended::Unused;
                    }
                }
                Ok(None) | Err(_) => {
                    fail_all(&mut outstanding, &lost_message);
                    return Ended::Lost;
                }
            },
        }
    }
}
