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
//! The policy sees plain data ([`Nodes`], [`NodeView`]), so it is tested without any process.
//! The nodes are indexed by available CPUs, so placing a task looks at the nodes holding its
//! inputs and the freest nodes, not at every node: on a thousand nodes it stays a few
//! microseconds.

use std::collections::HashMap;

use manta_engine::{NodeId, Resources};

mod nodes;

pub use nodes::{NodeView, Nodes};

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
        nodes: &Nodes,
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
        nodes: &Nodes,
    ) -> Placement {
        // The nodes holding inputs are few: each is looked at.
        let holder = input_bytes
            .iter()
            .filter(|(_, bytes)| **bytes > 0)
            .filter_map(|(id, bytes)| Some((nodes.get(*id)?, *bytes)))
            .filter(|(node, _)| node.alive && node.available.covers(demand))
            .max_by(|(a, a_bytes), (b, b_bytes)| {
                a_bytes
                    .cmp(b_bytes)
                    .then(a.available.cpus.total_cmp(&b.available.cpus))
                    .then(b.id.cmp(&a.id))
            });
        if let Some((node, _)) = holder {
            return Placement::Node(node.id);
        }
        // Otherwise the freest node that fits: the index gives them freest first.
        if let Some(node) = nodes
            .with_free_cpus(demand.cpus)
            .find(|n| n.available.covers(demand))
        {
            return Placement::Node(node.id);
        }
        if nodes.could_fit(demand) {
            Placement::Wait
        } else {
            Placement::Infeasible
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A node: its id, total and available resources, and whether it is alive.
    type Node = (NodeId, Resources, Resources, bool);

    fn node(cpus_total: f64, cpus_free: f64, custom: &[(&str, f64)]) -> Node {
        let custom: std::collections::BTreeMap<String, f64> =
            custom.iter().map(|(k, v)| (k.to_string(), *v)).collect();
        let total = Resources {
            cpus: cpus_total,
            memory_bytes: 0,
            custom: custom.clone(),
        };
        let available = Resources {
            cpus: cpus_free,
            memory_bytes: 0,
            custom,
        };
        (NodeId::random(), total, available, true)
    }

    fn place(demand: &Resources, inputs: &HashMap<NodeId, u64>, nodes: &[Node]) -> Placement {
        let nodes = Nodes::from_views(nodes.iter().map(|(id, total, available, alive)| NodeView {
            id: *id,
            total,
            available,
            alive: *alive,
        }));
        LocalityFirst.place(demand, inputs, &nodes)
    }

    #[test]
    fn prefers_the_node_holding_the_inputs() {
        let nodes = [node(2.0, 2.0, &[]), node(2.0, 1.0, &[])];
        let inputs = HashMap::from([(nodes[1].0, 1000)]);
        assert_eq!(
            place(&Resources::one_cpu(), &inputs, &nodes),
            Placement::Node(nodes[1].0)
        );
    }

    #[test]
    fn spreads_tasks_without_inputs_to_the_freest_node() {
        let nodes = [node(2.0, 1.0, &[]), node(2.0, 2.0, &[])];
        assert_eq!(
            place(&Resources::one_cpu(), &HashMap::new(), &nodes),
            Placement::Node(nodes[1].0)
        );
    }

    #[test]
    fn waits_when_busy_and_fails_when_impossible() {
        let nodes = [node(2.0, 0.0, &[])];
        assert_eq!(
            place(&Resources::one_cpu(), &HashMap::new(), &nodes),
            Placement::Wait
        );
        let big = Resources {
            cpus: 4.0,
            ..Default::default()
        };
        assert_eq!(place(&big, &HashMap::new(), &nodes), Placement::Infeasible);
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
            place(&demand, &HashMap::new(), &nodes),
            Placement::Node(nodes[1].0)
        );
    }

    #[test]
    fn dead_nodes_are_never_chosen() {
        let mut nodes = [node(2.0, 2.0, &[])];
        nodes[0].3 = false;
        assert_eq!(
            place(&Resources::one_cpu(), &HashMap::new(), &nodes),
            Placement::Infeasible
        );
    }
}
