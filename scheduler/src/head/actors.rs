//! The head's side of actors: placing them, watching them, starting them again.
//!
//! Each actor has a *supervisor* task on the head. It takes the actor's resources on a node
//! (as for a task, but held while the actor lives), has that node run the constructor on a
//! worker process of its own, and then waits for the actor's end: its node reports that the
//! worker died (`ActorDied`), the node misses its heartbeats, or someone kills it. While
//! `max_restarts` allows, it then starts the next *incarnation*, possibly on another node.
//! Drivers follow along through [`proto::ActorInfo`], a `watch` value per actor that
//! `GetActor` waits on.

use std::collections::HashMap;
use std::sync::Arc;

use manta_engine::{ActorId, JobId, Resources};
use tokio::sync::{mpsc, watch};
use tonic::Status;

use super::Head;
use crate::error::Result;
use crate::proto::{self, actor_info::State};

/// What the head keeps of one actor.
pub(super) struct ActorEntry {
    job: JobId,
    pub(super) name: Option<String>,
    info: watch::Sender<proto::ActorInfo>,
    /// Deaths reported, by incarnation (0: whichever is current).
    deaths: mpsc::UnboundedSender<(u64, String)>,
    killed: bool,
}

impl ActorEntry {
    fn alive(&self) -> bool {
        self.info.borrow().state != State::Dead as i32
    }

    /// Whether it is alive (or starting) on the node at `address`.
    pub(super) fn runs_at(&self, address: &str) -> bool {
        let info = self.info.borrow();
        info.state != State::Dead as i32 && info.address == address
    }

    fn kill(&mut self, why: &str) {
        self.killed = true;
        let _ = self.deaths.send((0, why.to_string()));
    }
}

/// One actor, as the dashboard lists it.
#[derive(Debug, Clone, serde::Serialize)]
pub struct ActorSummary {
    /// Its id (hex).
    pub actor_id: String,
    /// Its name, if it was given one.
    pub name: String,
    /// The driver job that made it (hex).
    pub job_id: String,
    /// `PENDING`, `ALIVE`, `RESTARTING` or `DEAD`.
    pub state: &'static str,
    /// The node it runs on.
    pub address: String,
    /// How often it was started again after its worker or node died.
    pub restarts: u64,
    /// Why it is dead.
    pub death: String,
}

impl Head {
    /// Every actor the head knows, live or dead, alive ones first.
    pub fn actor_summaries(&self) -> Vec<ActorSummary> {
        let state = self.state.lock();
        let mut actors: Vec<ActorSummary> = state
            .actors
            .iter()
            .map(|(id, entry)| {
                let info = entry.info.borrow();
                ActorSummary {
                    actor_id: id.to_string(),
                    name: entry.name.clone().unwrap_or_default(),
                    job_id: entry.job.to_string(),
                    state: match State::try_from(info.state) {
                        Ok(State::Pending) => "PENDING",
                        Ok(State::Alive) => "ALIVE",
                        Ok(State::Restarting) => "RESTARTING",
                        _ => "DEAD",
                    },
                    address: info.address.clone(),
                    restarts: info.incarnation.saturating_sub(1),
                    death: info.death.clone(),
                }
            })
            .collect();
        actors.sort_by(|a, b| {
            (a.state == "DEAD", &a.actor_id).cmp(&(b.state == "DEAD", &b.actor_id))
        });
        actors
    }

    /// Registers the actor and starts its supervisor; answers once its first start is done.
    pub(super) async fn create_actor(
        &self,
        request: proto::CreateActorRequest,
    ) -> Result<proto::ActorInfo, Status> {
        let constructor = request
            .constructor
            .ok_or_else(|| Status::invalid_argument("CreateActor without a constructor"))?;
        let actor = proto::parse_id(&constructor.actor_id, ActorId::from_slice, "actor_id")?;
        let job = proto::parse_id(&constructor.job_id, JobId::from_slice, "job_id")?;
        let name = (!request.name.is_empty()).then_some(request.name);
        let (info, mut watcher) = watch::channel(proto::ActorInfo {
            actor_id: constructor.actor_id.clone(),
            ..Default::default()
        });
        let (deaths, died) = mpsc::unbounded_channel();
        {
            let mut state = self.state.lock();
            if let Some(name) = &name
                && state
                    .actors
                    .values()
                    .any(|a| a.job == job && a.name.as_ref() == Some(name) && a.alive())
            {
                return Err(Status::already_exists(format!(
                    "the job already has a live actor named {name:?}"
                )));
            }
            state.actors.insert(
                actor,
                ActorEntry {
                    job,
                    name,
                    info,
                    deaths,
                    killed: false,
                },
            );
        }
        let head = self
            .me
            .upgrade()
            .ok_or_else(|| Status::unavailable("the head is stopping"))?;
        tokio::spawn(head.supervise(actor, constructor, request.max_restarts, died));
        let info = watcher
            .wait_for(|info| info.state != State::Pending as i32)
            .await
            .map_err(|_| Status::internal("the actor's supervisor stopped"))?
            .clone();
        Ok(info)
    }

    /// The actor's state once it is alive in an incarnation after `after`, or dead.
    pub(super) async fn get_actor(
        &self,
        request: proto::GetActorRequest,
    ) -> Result<proto::ActorInfo, Status> {
        let actor = proto::parse_id(&request.actor_id, ActorId::from_slice, "actor_id")?;
        let mut watcher = self
            .state
            .lock()
            .actors
            .get(&actor)
            .map(|a| a.info.subscribe())
            .ok_or_else(|| Status::not_found(format!("no actor {actor:?}")))?;
        let info = watcher
            .wait_for(|info| {
                info.state == State::Dead as i32
                    || (info.state == State::Alive as i32
                        && info.incarnation > request.after_incarnation)
            })
            .await
            .map_err(|_| Status::internal("the actor's supervisor stopped"))?
            .clone();
        Ok(info)
    }

    /// A node reports an actor's worker died.
    pub(super) fn actor_died(&self, request: proto::ActorDiedRequest) -> Result<(), Status> {
        let actor = proto::parse_id(&request.actor_id, ActorId::from_slice, "actor_id")?;
        if let Some(entry) = self.state.lock().actors.get(&actor) {
            let _ = entry.deaths.send((request.incarnation, request.message));
        }
        Ok(())
    }

    /// Kills an actor for good: its worker is killed and it is not started again.
    pub(super) fn kill_actor(&self, request: proto::KillActorRequest) -> Result<(), Status> {
        let actor = proto::parse_id(&request.actor_id, ActorId::from_slice, "actor_id")?;
        let address = {
            let mut state = self.state.lock();
            let Some(entry) = state.actors.get_mut(&actor) else {
                return Err(Status::not_found(format!("no actor {actor:?}")));
            };
            entry.kill("it was killed");
            let info = entry.info.borrow();
            (info.state == State::Alive as i32).then(|| info.address.clone())
        };
        if let Some(address) = address {
            let client = self.client_for(&address);
            tokio::spawn(async move {
                if let Some(mut client) = client {
                    let _ = client
                        .kill_actor(proto::KillActorRequest {
                            actor_id: request.actor_id,
                        })
                        .await;
                }
            });
        }
        Ok(())
    }

    /// Kills the actors of a job whose driver is done.
    pub(super) fn end_job_actors(&self, job: JobId) {
        let mut state = self.state.lock();
        for entry in state.actors.values_mut().filter(|a| a.job == job) {
            entry.kill("its job ended");
        }
    }

    fn set_info(&self, actor: ActorId, info: proto::ActorInfo) {
        if let Some(entry) = self.state.lock().actors.get(&actor) {
            entry.info.send_replace(info);
        }
    }

    /// Starts the actor, waits for its end, starts it again while restarts remain.
    async fn supervise(
        self: Arc<Self>,
        actor: ActorId,
        mut constructor: proto::TaskRequest,
        max_restarts: u32,
        mut deaths: mpsc::UnboundedReceiver<(u64, String)>,
    ) {
        let info =
            |state: State, address: String, incarnation: u64, death: String| proto::ActorInfo {
                actor_id: constructor.actor_id.clone(),
                state: state as i32,
                address,
                incarnation,
                death,
            };
        let mut incarnation = 0;
        let death = match self.executable_of(&constructor.job_id) {
            Err(e) => e.to_string(),
            Ok(hash) => {
                constructor.executable_hash = hash;
                let demand: Resources = constructor.resources.clone().unwrap_or_default().into();
                let mut restarts_left = max_restarts;
                loop {
                    incarnation += 1;
                    constructor.actor_incarnation = incarnation;
                    let lease = match self
                        .acquire(
                            &demand,
                            &HashMap::new(),
                            &constructor.label,
                            &constructor.function,
                        )
                        .await
                    {
                        Ok(lease) => lease,
                        Err(e) => break format!("it could not be placed: {e}"),
                    };
                    let created = self.run_on(&lease, &constructor).await.map(|_| ());
                    let why = match created {
                        Ok(()) => {
                            tracing::info!(?actor, incarnation, node = %lease.link.address, "actor started");
                            self.set_info(
                                actor,
                                info(
                                    State::Alive,
                                    lease.link.address.clone(),
                                    incarnation,
                                    String::new(),
                                ),
                            );
                            loop {
                                tokio::select! {
                                    _ = lease.link.lost.cancelled() => {
                                        break format!("its node {} was lost", lease.link.address);
                                    }
                                    died = deaths.recv() => match died {
                                        Some((of, why)) if of == 0 || of == incarnation => break why,
                                        Some(_) => continue,
                                        None => return,
                                    },
                                }
                            }
                        }
                        Err(e) if e.is_retryable() => e.to_string(),
                        Err(e) => break format!("its constructor failed: {e}"),
                    };
                    let killed = self
                        .state
                        .lock()
                        .actors
                        .get(&actor)
                        .is_some_and(|a| a.killed);
                    if killed {
                        // Also when the kill came while the constructor ran.
                        let _ = lease
                            .link
                            .client
                            .clone()
                            .kill_actor(proto::KillActorRequest {
                                actor_id: constructor.actor_id.clone(),
                            })
                            .await;
                        break why;
                    }
                    drop(lease);
                    if restarts_left == 0 {
                        break format!(
                            "{why}, and it has no restarts left (max_restarts {max_restarts})"
                        );
                    }
                    restarts_left -= 1;
                    self.metrics().actor_restarts.inc();
                    self.events.cluster(
                        crate::events::EventKind::ActorRestarted,
                        format!("actor {actor} restarting: {why}"),
                    );
                    tracing::warn!(?actor, incarnation, %why, "restarting an actor");
                    self.set_info(
                        actor,
                        info(State::Restarting, String::new(), incarnation, why),
                    );
                }
            }
        };
        tracing::info!(?actor, %death, "actor dead");
        self.set_info(actor, info(State::Dead, String::new(), incarnation, death));
    }
}
