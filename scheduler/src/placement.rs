//! Where a task runs: the head's placement rule, behind a small trait.
//!
//! # The rule ([`LocalityFirst`])
//!
//! 1. Only live nodes whose *available* resources cover the task's demand are candidates.
//! 2. Among them, the node that already holds the most bytes of the task's inputs wins: moving
//!    the task is cheaper than moving its data.
//! 3. Ties (tasks without inputs, say) go to the node with the most CPUs free, which spreads
//!    independent work across the cluster; then to the lower node id, for determinism.
//!
//! If no node has the resources free now but some live node has them in total, the task waits
//! until a running task gives resources back; if no live node has them at all, the task is
//! infeasible and fails at once with a message listing what the nodes offer.
//!
//! The policy sees plain data ([`NodeView`]), so it is tested without any process.

use std::collections::HashMap;

use manta_engine::{NodeId, Resources};

/// A node as the placement policy sees it.
#[derive(Clone, Debug)]
pub struct NodeView {
    /// The node.
    pub id: NodeId,
    /// Everything it offers.
    pub total: Resources,
    /// What is not taken by running tasks.
    pub available: Resources,
    /// Whether it is heartbeating.
    pub alive: bool,
}

/// A placement decision.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Placement {
    /// Run it on this node now.
    Node(NodeId),
    /// Wait for resources to be released.
    Wait,
    /// No live node can ever run it.
    Infeasible,
}

/// Decides where tasks run.
pub trait PlacementPolicy: Send + Sync {
    /// Where to run a task needing `demand` whose inputs are held as `input_bytes` per node.
    fn place(
        &self,
        demand: &Resources,
        input_bytes: &HashMap<NodeId, u64>,
        nodes: &[NodeView],
    ) -> Placement;
}

/// Data locality first, then spread; see the module documentation.
#[derive(Clone, Copy, Debug, Default)]
pub struct LocalityFirst;

impl PlacementPolicy for LocalityFirst {
    fn place(
        &self,
        demand: &Resources,
        input_bytes: &HashMap<NodeId, u64>,
        nodes: &[NodeView],
    ) -> Placement {
        let best = nodes
            .iter()
            .filter(|n| n.alive && n.available.covers(demand))
            .max_by(|a, b| {
                let local = |n: &NodeView| input_bytes.get(&n.id).copied().unwrap_or(0);
                local(a)
                    .cmp(&local(b))
                    .then(a.available.cpus.total_cmp(&b.available.cpus))
                    .then(b.id.cmp(&a.id))
            });
        match best {
            Some(node) => Placement::Node(node.id),
            None if nodes.iter().any(|n| n.alive && n.total.covers(demand)) => Placement::Wait,
            None => Placement::Infeasible,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(cpus_total: f64, cpus_free: f64, custom: &[(&str, f64)]) -> NodeView {
        let custom: std::collections::BTreeMap<String, f64> =
            custom.iter().map(|(k, v)| (k.to_string(), *v)).collect();
        NodeView {
            id: NodeId::random(),
            total: Resources {
                cpus: cpus_total,
                memory_bytes: 0,
                custom: custom.clone(),
            },
            available: Resources {
                cpus: cpus_free,
                memory_bytes: 0,
                custom,
            },
            alive: true,
        }
    }

    #[test]
    fn prefers_the_node_holding_the_inputs() {
        let nodes = [node(2.0, 2.0, &[]), node(2.0, 1.0, &[])];
        let inputs = HashMap::from([(nodes[1].id, 1000)]);
        assert_eq!(
            LocalityFirst.place(&Resources::one_cpu(), &inputs, &nodes),
            Placement::Node(nodes[1].id)
        );
    }

    #[test]
    fn spreads_tasks_without_inputs_to_the_freest_node() {
        let nodes = [node(2.0, 1.0, &[]), node(2.0, 2.0, &[])];
        assert_eq!(
            LocalityFirst.place(&Resources::one_cpu(), &HashMap::new(), &nodes),
            Placement::Node(nodes[1].id)
        );
    }

    #[test]
    fn waits_when_busy_and_fails_when_impossible() {
        let nodes = [node(2.0, 0.0, &[])];
        assert_eq!(
            LocalityFirst.place(&Resources::one_cpu(), &HashMap::new(), &nodes),
            Placement::Wait
        );
        let big = Resources {
            cpus: 4.0,
            ..Default::default()
        };
        assert_eq!(
            LocalityFirst.place(&big, &HashMap::new(), &nodes),
            Placement::Infeasible
        );
    }

    #[test]
    fn custom_resources_pick_the_node_that_has_them() {
        let nodes = [node(2.0, 2.0, &[]), node(2.0, 2.0, &[("writer", 1.0)])];
        let demand = Resources {
            cpus: 1.0,
            memory_bytes: 0,
            custom: [("writer".to_string(), 0.1)].into(),
        };
        assert_eq!(
            LocalityFirst.place(&demand, &HashMap::new(), &nodes),
            Placement::Node(nodes[1].id)
        );
    }

    #[test]
    fn dead_nodes_are_never_chosen() {
        let mut nodes = [node(2.0, 2.0, &[])];
        nodes[0].alive = false;
        assert_eq!(
            LocalityFirst.place(&Resources::one_cpu(), &HashMap::new(), &nodes),
            Placement::Infeasible
        );
    }
}
