//! The autoscaler: grows the cluster for demand that waits and shrinks it when nodes idle,
//! in Ray's model.
//!
//! It runs in the head's process. Every `update_interval` it takes one look at the head's
//! nodes and waiting demand ([`crate::head`] queues every task and actor that finds no room,
//! by resource shape), matches the nodes to the ones it launched (a node it launches joins
//! under the name it was given, `<type>-<n>`), and asks [`plan::plan`] what to do:
//!
//! ```text
//!   head: waiting demand, nodes ──▶ plan: launch N of type T (why) ──▶ NodeProvider::launch
//!                                         stop node X (idle for S s) ──▶ drain, then
//!                                                                        NodeProvider::terminate
//! ```
//!
//! * A launch runs on a task of its own. The node counts as *launching* (and its resources
//!   as coming) until it registers; one that fails, panics or does not register within
//!   `launch_timeout` is a failed launch: reported, and its type backs off (1 s, 2 s, 4 s ...
//!   up to [`MAX_BACKOFF`]) before the next try. Nothing a provider does stops the head.
//! * A node to stop is first *drained* by the head (in one step with checking that it has no
//!   task, actor or object: an object still referenced keeps its node), then terminated and
//!   forgotten. A node that fails to stop takes work again.
//! * Every decision is logged with its reason and kept (the last [`EVENTS_KEPT`]) for
//!   `manta status`. When the head stops, so does every node the autoscaler launched.

pub mod command;
pub mod config;
pub mod local;
pub mod plan;
pub mod provider;

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::FutureExt as _;
use manta_engine::NodeId;
use manta_flight::auth::Token;
use parking_lot::Mutex;
use tokio_util::sync::CancellationToken;

pub use config::{AutoscalerConfig, ClusterFile, HeadSection, NodeType, ProviderConfig};
pub use provider::{LaunchRequest, NodeProvider};

use crate::head::Head;
use crate::proto;
use plan::{Limits, Load, ManagedNode, ManagedState};

/// How many recent events `manta status` can show.
pub const EVENTS_KEPT: usize = 50;

/// The first wait after a failed launch; it doubles with each failure in a row.
pub const FIRST_BACKOFF: Duration = Duration::from_secs(1);

/// The longest wait between launches of a type that keeps failing.
pub const MAX_BACKOFF: Duration = Duration::from_secs(60);

/// How long stopping one node may take.
const TERMINATE_DEADLINE: Duration = Duration::from_secs(60);

/// The autoscaler of one head (see the module doc).
pub struct Autoscaler {
    head: Arc<Head>,
    config: AutoscalerConfig,
    provider: Arc<dyn NodeProvider>,
    head_address: String,
    token: Token,
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    /// The nodes it launched, by name.
    nodes: BTreeMap<String, Managed>,
    /// The number in the next node's name.
    next_number: u64,
    /// Failed launches in a row, and when the next may be tried, by node type.
    backoff: HashMap<String, (u32, Instant)>,
    events: VecDeque<(Instant, String)>,
    /// The head is stopping: launches that finish now are stopped at once.
    stopping: bool,
}

struct Managed {
    node_type: String,
    /// The provider's id for it, once its launch returned.
    provider_id: Option<String>,
    phase: Phase,
    launched_at: Instant,
}

enum Phase {
    Launching,
    Running {
        id: NodeId,
        /// Since when it has had no work (`None`: busy).
        idle_since: Option<Instant>,
    },
    Stopping,
}

impl State {
    fn event(&mut self, message: String) {
        tracing::info!(target: "manta::autoscaler", "{message}");
        if self.events.len() == EVENTS_KEPT {
            self.events.pop_front();
        }
        self.events.push_back((Instant::now(), message));
    }

    fn launch_failed(&mut self, node_type: &str, message: String) {
        let failures = self.backoff.get(node_type).map_or(0, |(n, _)| *n) + 1;
        let wait = (FIRST_BACKOFF * 2u32.saturating_pow(failures - 1)).min(MAX_BACKOFF);
        self.backoff
            .insert(node_type.to_string(), (failures, Instant::now() + wait));
        self.event(format!(
            "{message} (failure {failures} in a row for {node_type}; next try in {} s)",
            wait.as_secs_f64()
        ));
    }
}

impl Autoscaler {
    /// The autoscaler of `head`, which nodes join at `head_address` with `token`.
    pub fn new(
        head: Arc<Head>,
        config: AutoscalerConfig,
        head_address: String,
        token: Token,
    ) -> Arc<Self> {
        let provider: Arc<dyn NodeProvider> = match &config.provider {
            ProviderConfig::Local { program, log_dir } => {
                Arc::new(local::LocalProvider::new(program.clone(), log_dir.clone()))
            }
            ProviderConfig::Command { launch, terminate } => Arc::new(
                command::CommandProvider::new(launch.clone(), terminate.clone()),
            ),
        };
        Self::with_provider(head, config, provider, head_address, token)
    }

    /// The autoscaler of `head` with a provider of the caller's.
    pub fn with_provider(
        head: Arc<Head>,
        config: AutoscalerConfig,
        provider: Arc<dyn NodeProvider>,
        head_address: String,
        token: Token,
    ) -> Arc<Self> {
        let autoscaler = Arc::new(Self {
            head,
            config,
            provider,
            head_address,
            token,
            state: Mutex::default(),
        });
        autoscaler.head.attach_autoscaler(&autoscaler);
        autoscaler
    }

    /// Looks at the cluster every `update_interval` until `stop`; then stops every node it
    /// launched.
    pub async fn run(self: Arc<Self>, stop: CancellationToken) {
        let mut ticks = tokio::time::interval(self.config.update_interval);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = ticks.tick() => self.tick(),
                _ = stop.cancelled() => break,
            }
        }
        self.stop_all().await;
    }

    /// One look and its decisions.
    fn tick(self: &Arc<Self>) {
        let load = self.head.load();
        let now = Instant::now();
        let mut state = self.state.lock();
        let state = &mut *state;
        let mut lost = Vec::new();
        let mut joined_types = Vec::new();
        let mut events = Vec::new();
        for (name, node) in state.nodes.iter_mut() {
            let seen = load.nodes.iter().find(|n| &n.name == name);
            match (&mut node.phase, seen) {
                (Phase::Launching, Some(n)) if n.alive => {
                    events.push(format!(
                        "node {name} joined, {:.1} s after its launch",
                        node.launched_at.elapsed().as_secs_f64()
                    ));
                    joined_types.push(node.node_type.clone());
                    node.phase = Phase::Running {
                        id: n.id,
                        idle_since: (!n.busy).then_some(now),
                    };
                }
                (Phase::Launching, _) => {
                    if node.launched_at.elapsed() > self.config.launch_timeout
                        && node.provider_id.is_some()
                    {
                        lost.push((name.clone(), "did not join within the launch timeout"));
                    }
                }
                (Phase::Running { idle_since, .. }, Some(n)) if n.alive => {
                    if n.busy {
                        *idle_since = None;
                    } else if idle_since.is_none() {
                        *idle_since = Some(now);
                    }
                }
                (Phase::Running { .. }, _) => lost.push((name.clone(), "was lost")),
                (Phase::Stopping, _) => {}
            }
        }
        for message in events {
            state.event(message);
        }
        for node_type in joined_types {
            state.backoff.remove(&node_type);
        }
        for (name, why) in lost {
            let Some(node) = state.nodes.remove(&name) else {
                continue;
            };
            self.decided("lost");
            let message = format!("node {name} {why}; stopping what is left of it");
            if matches!(node.phase, Phase::Launching) {
                state.launch_failed(&node.node_type, message);
            } else {
                state.event(message);
            }
            if let Some(id) = node.provider_id {
                self.spawn_terminate(name, id, None);
            }
        }

        let managed: Vec<ManagedNode> = state
            .nodes
            .iter()
            .map(|(name, node)| ManagedNode {
                name: name.clone(),
                node_type: node.node_type.clone(),
                state: match &node.phase {
                    Phase::Launching => ManagedState::Launching,
                    Phase::Stopping => ManagedState::Stopping,
                    Phase::Running { id, idle_since } => ManagedState::Running {
                        available: load
                            .nodes
                            .iter()
                            .find(|n| n.id == *id)
                            .map(|n| n.available.clone())
                            .unwrap_or_default(),
                        idle_for: idle_since.map_or(Duration::ZERO, |at| now - at),
                    },
                },
            })
            .collect();
        let plan_load = Load {
            pending: load.pending.clone(),
            unmanaged_available: load
                .nodes
                .iter()
                .filter(|n| n.alive && !n.draining && !state.nodes.contains_key(&n.name))
                .map(|n| n.available.clone())
                .collect(),
        };
        let limits = Limits {
            upscaling_speed: self.config.upscaling_speed,
            idle_timeout: self.config.idle_timeout,
        };
        let decided = plan::plan(&self.config.node_types, &managed, &plan_load, &limits);
        if state.stopping {
            return;
        }
        for (node_type, why) in decided.launch {
            if state
                .backoff
                .get(&node_type)
                .is_some_and(|(_, until)| *until > now)
            {
                continue;
            }
            let name = format!("{node_type}-{}", state.next_number);
            state.next_number += 1;
            state.event(format!("launching node {name}: {why}"));
            self.decided("launch");
            state.nodes.insert(
                name.clone(),
                Managed {
                    node_type: node_type.clone(),
                    provider_id: None,
                    phase: Phase::Launching,
                    launched_at: now,
                },
            );
            self.spawn_launch(name, node_type);
        }
        for (name, why) in decided.stop {
            let Some(node) = state.nodes.get_mut(&name) else {
                continue;
            };
            let Phase::Running { id, .. } = node.phase else {
                continue;
            };
            if !self.head.drain_if_idle(id) {
                continue;
            }
            node.phase = Phase::Stopping;
            let provider_id = node.provider_id.clone().unwrap_or_default();
            state.event(format!("stopping node {name}: {why}"));
            self.decided("stop");
            self.spawn_terminate(name, provider_id, Some(id));
        }
    }

    /// Counts a decision in the head's metrics.
    fn decided(&self, decision: &str) {
        self.head
            .metrics()
            .autoscaler
            .with_label_values(&[decision])
            .inc();
    }

    fn spawn_launch(self: &Arc<Self>, name: String, node_type: String) {
        let Some(t) = self.config.node_types.iter().find(|t| t.name == node_type) else {
            return;
        };
        let request = LaunchRequest {
            name: name.clone(),
            node_type: node_type.clone(),
            resources: t.resources.clone(),
            head_address: self.head_address.clone(),
            token: self.token.clone(),
        };
        let me = Arc::clone(self);
        tokio::spawn(async move {
            let launched = tokio::time::timeout(
                me.config.launch_timeout,
                std::panic::AssertUnwindSafe(me.provider.launch(&request)).catch_unwind(),
            )
            .await;
            let outcome = match launched {
                Ok(Ok(Ok(id))) => Ok(id),
                Ok(Ok(Err(e))) => Err(e.to_string()),
                Ok(Err(_panic)) => Err(format!("the provider panicked launching node {name}")),
                Err(_) => Err(format!(
                    "launching node {name} took over {} s",
                    me.config.launch_timeout.as_secs()
                )),
            };
            let mut state = me.state.lock();
            match outcome {
                Ok(id) if state.stopping => {
                    drop(state);
                    me.spawn_terminate(name, id, None);
                }
                Ok(id) => {
                    if let Some(node) = state.nodes.get_mut(&name) {
                        node.provider_id = Some(id);
                    }
                }
                Err(message) => {
                    state.nodes.remove(&name);
                    me.decided("launch_failed");
                    state.launch_failed(&node_type, message);
                }
            }
        });
    }

    /// Stops the node the provider knows as `provider_id`; `drained` is its head id when it
    /// was drained (forgotten once stopped, or let take work again if stopping failed).
    fn spawn_terminate(
        self: &Arc<Self>,
        name: String,
        provider_id: String,
        drained: Option<NodeId>,
    ) {
        let me = Arc::clone(self);
        tokio::spawn(async move { me.terminate(name, provider_id, drained).await });
    }

    async fn terminate(&self, name: String, provider_id: String, drained: Option<NodeId>) {
        let stopped = tokio::time::timeout(
            TERMINATE_DEADLINE,
            std::panic::AssertUnwindSafe(self.provider.terminate(&provider_id)).catch_unwind(),
        )
        .await;
        let failure = match stopped {
            Ok(Ok(Ok(()))) => None,
            Ok(Ok(Err(e))) => Some(e.to_string()),
            Ok(Err(_panic)) => Some(format!("the provider panicked stopping node {name}")),
            Err(_) => Some(format!(
                "stopping node {name} took over {} s",
                TERMINATE_DEADLINE.as_secs()
            )),
        };
        let mut state = self.state.lock();
        match (failure, drained) {
            (None, Some(id)) => {
                self.head.forget_node(id);
                state.nodes.remove(&name);
                state.event(format!("node {name} stopped"));
            }
            (None, None) => {}
            (Some(message), Some(id)) => {
                self.head.undrain(id);
                if let Some(node) = state.nodes.get_mut(&name) {
                    node.phase = Phase::Running {
                        id,
                        idle_since: None,
                    };
                }
                state.event(format!("{message}; node {name} takes work again"));
            }
            (Some(message), None) => state.event(message),
        }
    }

    /// Stops every node it launched (the head is stopping).
    async fn stop_all(&self) {
        let nodes: Vec<(String, String)> = {
            let mut state = self.state.lock();
            state.stopping = true;
            state
                .nodes
                .iter()
                .filter_map(|(name, n)| Some((name.clone(), n.provider_id.clone()?)))
                .collect()
        };
        let stops = nodes
            .into_iter()
            .map(|(name, id)| self.terminate(name, id, None));
        futures::future::join_all(stops).await;
    }

    /// Node types with their counts, and recent events, for `manta status`.
    pub fn status(&self) -> proto::AutoscalerStatus {
        let state = self.state.lock();
        let now = Instant::now();
        let node_types = self
            .config
            .node_types
            .iter()
            .map(|t| {
                let of_type = state.nodes.values().filter(|n| n.node_type == t.name);
                let backoff = state.backoff.get(&t.name);
                proto::NodeTypeStatus {
                    name: t.name.clone(),
                    resources: Some((&t.resources).into()),
                    min_nodes: t.min_nodes,
                    max_nodes: t.max_nodes,
                    running: of_type
                        .clone()
                        .filter(|n| matches!(n.phase, Phase::Running { .. }))
                        .count() as u32,
                    launching: of_type
                        .filter(|n| matches!(n.phase, Phase::Launching))
                        .count() as u32,
                    failed_launches: backoff.map_or(0, |(n, _)| *n),
                    backoff_millis: backoff.map_or(0, |(_, until)| {
                        until.saturating_duration_since(now).as_millis() as u64
                    }),
                }
            })
            .collect();
        let events = state
            .events
            .iter()
            .map(|(at, message)| proto::AutoscalerEvent {
                millis_ago: (now - *at).as_millis() as u64,
                message: message.clone(),
            })
            .collect();
        proto::AutoscalerStatus { node_types, events }
    }
}
