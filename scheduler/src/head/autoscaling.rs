//! What the head offers its autoscaler: the cluster's load in one consistent look, and
//! draining, forgetting and reporting on nodes.

use manta_engine::{NodeId, Resources};

use super::{Head, HeadState};
use crate::proto;

/// One node as the autoscaler sees it.
#[derive(Debug, Clone)]
pub(crate) struct NodeLoad {
    pub id: NodeId,
    pub name: String,
    pub alive: bool,
    pub draining: bool,
    pub available: Resources,
    /// Running or queued tasks, live actors, or objects in its store.
    pub busy: bool,
}

/// The cluster's nodes and the demand waiting for them, taken under one lock.
#[derive(Debug, Clone, Default)]
pub(crate) struct ClusterLoad {
    pub nodes: Vec<NodeLoad>,
    /// Waiting demand: (shape, how many).
    pub pending: Vec<(Resources, u64)>,
}

/// Whether the node at `id` has work: tasks, live actors or objects.
fn busy(state: &HeadState, id: &NodeId) -> bool {
    let Some(node) = state.nodes.get(id) else {
        return false;
    };
    node.running > 0
        || node.queued > 0
        || node.store.objects > 0
        || state
            .actors
            .values()
            .any(|actor| actor.runs_at(&node.address))
}

impl Head {
    /// The nodes and the waiting demand.
    pub(crate) fn load(&self) -> ClusterLoad {
        let state = self.state.lock();
        let nodes = state
            .nodes
            .iter()
            .map(|(id, n)| NodeLoad {
                id: *id,
                name: n.name.clone(),
                alive: n.alive,
                draining: n.draining,
                available: state
                    .capacity
                    .get(*id)
                    .map(|c| c.available.clone())
                    .unwrap_or_default(),
                busy: busy(&state, id),
            })
            .collect();
        let pending = state
            .waiting
            .values()
            .filter_map(|queue| {
                let waiting = queue.iter().filter(|w| !w.placed.is_closed()).count();
                (waiting > 0).then(|| (queue.demand.clone(), waiting as u64))
            })
            .collect();
        ClusterLoad { nodes, pending }
    }

    /// Stops placing work on node `id` if it is idle, in one step (so that no task lands on
    /// it between the look and the drain); whether it was.
    pub(crate) fn drain_if_idle(&self, id: NodeId) -> bool {
        let mut state = self.state.lock();
        if busy(&state, &id) {
            return false;
        }
        match state.nodes.get_mut(&id) {
            Some(node) if node.alive => {
                node.draining = true;
                state.node_changed(id);
                true
            }
            _ => false,
        }
    }

    /// Lets node `id` take work again (stopping it failed).
    pub(crate) fn undrain(&self, id: NodeId) {
        let mut state = self.state.lock();
        if let Some(node) = state.nodes.get_mut(&id) {
            node.draining = false;
        }
        state.node_changed(id);
        self.dispatch(&mut state);
    }

    /// Forgets node `id`, which was stopped on purpose; should it register again while it
    /// shuts down (its terminate may return before it exits), it is refused.
    pub(crate) fn forget_node(&self, id: NodeId) {
        let mut state = self.state.lock();
        state.retired.insert(id, std::time::Instant::now());
        if let Some(node) = state.nodes.remove(&id) {
            node.link.lost.cancel();
            tracing::info!(node = ?id, address = %node.address, name = %node.name, "node stopped by the autoscaler");
        }
        state.node_changed(id);
        self.dispatch(&mut state);
    }

    /// What the autoscaler reports, if the head runs one.
    pub(crate) fn autoscaler_status(&self) -> Option<proto::AutoscalerStatus> {
        self.autoscaler.get()?.upgrade().map(|a| a.status())
    }
}
