//! The cluster over time: every [`SAMPLE_EVERY`] the dashboard samples each node's CPU,
//! memory and object store use, keeping the last [`SAMPLES_KEPT`] per node (10 minutes), for
//! the overview's and the nodes page's charts.

use std::collections::{HashMap, VecDeque};
use std::time::Duration;

use serde::Serialize;

use crate::proto;

/// How often the nodes are sampled.
pub const SAMPLE_EVERY: Duration = Duration::from_secs(2);

/// Samples kept per node.
pub const SAMPLES_KEPT: usize = 300;

/// One node at one moment.
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct Sample {
    /// When (milliseconds since the Unix epoch).
    pub unix_millis: u64,
    /// CPUs taken by tasks and actors.
    pub cpus_used: f64,
    /// Memory taken by tasks and actors (their resource demands).
    pub memory_used_bytes: u64,
    /// Object store bytes in shared memory.
    pub store_bytes: u64,
    /// Object store bytes spilled to disk.
    pub spilled_bytes: u64,
    /// Tasks running.
    pub running_tasks: u64,
}

impl Sample {
    /// `node` as it is now.
    pub fn of(node: &proto::NodeInfo, unix_millis: u64) -> Self {
        let total = node.total.clone().unwrap_or_default();
        let available = node.available.clone().unwrap_or_default();
        let store = node.store.unwrap_or_default();
        Self {
            unix_millis,
            cpus_used: (total.cpus - available.cpus).max(0.0),
            memory_used_bytes: total.memory_bytes.saturating_sub(available.memory_bytes),
            store_bytes: store.resident_bytes,
            spilled_bytes: store.spilled_bytes,
            running_tasks: node.running_tasks,
        }
    }
}

/// Samples by node address.
#[derive(Default)]
pub struct History {
    nodes: HashMap<String, VecDeque<Sample>>,
}

impl History {
    /// Adds a sample of each of `nodes`; forgets nodes the head no longer lists.
    pub fn record(&mut self, nodes: &[proto::NodeInfo], unix_millis: u64) {
        self.nodes
            .retain(|address, _| nodes.iter().any(|n| &n.address == address));
        for node in nodes.iter().filter(|n| n.alive) {
            let samples = self.nodes.entry(node.address.clone()).or_default();
            if samples.len() == SAMPLES_KEPT {
                samples.pop_front();
            }
            samples.push_back(Sample::of(node, unix_millis));
        }
    }

    /// The samples of the node at `address`, oldest first.
    pub fn of(&self, address: &str) -> Vec<Sample> {
        self.nodes
            .get(address)
            .map(|s| s.iter().copied().collect())
            .unwrap_or_default()
    }

    /// The whole cluster's samples (summed over nodes at each moment), oldest first.
    pub fn cluster(&self) -> Vec<Sample> {
        let mut by_time: std::collections::BTreeMap<u64, Sample> = Default::default();
        for sample in self.nodes.values().flatten() {
            let sum = by_time.entry(sample.unix_millis).or_default();
            sum.unix_millis = sample.unix_millis;
            sum.cpus_used += sample.cpus_used;
            sum.memory_used_bytes += sample.memory_used_bytes;
            sum.store_bytes += sample.store_bytes;
            sum.spilled_bytes += sample.spilled_bytes;
            sum.running_tasks += sample.running_tasks;
        }
        by_time.into_values().collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(address: &str, cpus_used: f64, store: u64) -> proto::NodeInfo {
        proto::NodeInfo {
            address: address.into(),
            alive: true,
            total: Some(proto::Resources {
                cpus: 4.0,
                ..Default::default()
            }),
            available: Some(proto::Resources {
                cpus: 4.0 - cpus_used,
                ..Default::default()
            }),
            store: Some(proto::StoreUsage {
                resident_bytes: store,
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    #[test]
    fn keeps_a_bounded_window_and_sums_the_cluster() {
        let mut history = History::default();
        for t in 0..(SAMPLES_KEPT as u64 + 10) {
            history.record(&[node("a", 1.0, t), node("b", 2.0, 1)], t);
        }
        let a = history.of("a");
        assert_eq!(a.len(), SAMPLES_KEPT);
        assert_eq!(a.first().unwrap().unix_millis, 10);
        let cluster = history.cluster();
        assert_eq!(cluster.len(), SAMPLES_KEPT);
        let last = cluster.last().unwrap();
        assert_eq!(last.cpus_used, 3.0);
        assert_eq!(last.store_bytes, SAMPLES_KEPT as u64 + 9 + 1);
        history.record(&[node("b", 0.0, 0)], 1000);
        assert!(history.of("a").is_empty());
    }
}
