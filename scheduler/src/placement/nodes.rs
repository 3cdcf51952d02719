//! The nodes as placement sees them, indexed so that placing a task costs about the nodes it
//! looks at, not every node of the cluster.
//!
//! Beside each node's total and available resources, [`Nodes`] keeps:
//!
//! * the nodes taking work ordered by available CPUs, most first, then by id: the freest node
//!   is the first of the order, and the nodes with at least `c` CPUs free are a prefix of it;
//! * how many nodes taking work have each total (clusters have a few node shapes, not a
//!   thousand), which answers "could any node ever run this?" without a scan.
//!
//! Every change of a node's resources or state goes through a method that updates both, so
//! they cannot drift from the table.

use std::cmp::{Ordering, Reverse};
use std::collections::BTreeSet;

use rustc_hash::FxHashMap;

use manta_engine::{NodeId, Resources};

/// A node as the placement policy sees it.
#[derive(Clone, Copy, Debug)]
pub struct NodeView<'a> {
    /// The node.
    pub id: NodeId,
    /// Everything it offers.
    pub total: &'a Resources,
    /// What is not taken by running tasks.
    pub available: &'a Resources,
    /// Whether it takes work (heartbeating and not being drained).
    pub alive: bool,
}

/// A CPU count ordered as a number (resources never hold NaN).
#[derive(Clone, Copy, Debug, PartialEq)]
struct Cpus(f64);

impl Eq for Cpus {}

impl PartialOrd for Cpus {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for Cpus {
    fn cmp(&self, other: &Self) -> Ordering {
        self.0.total_cmp(&other.0)
    }
}

#[derive(Debug)]
struct Slot {
    total: Resources,
    available: Resources,
    alive: bool,
}

/// The placement view of every node the head knows; see the module documentation.
#[derive(Debug, Default)]
pub struct Nodes {
    slots: FxHashMap<NodeId, Slot>,
    /// The nodes taking work, by available CPUs (most first), then by id.
    by_free_cpus: BTreeSet<(Reverse<Cpus>, NodeId)>,
    /// The totals of the nodes taking work, each with how many nodes have it.
    shapes: Vec<(Resources, usize)>,
}

impl Nodes {
    /// Nodes from plain views (for tests and tools).
    pub fn from_views<'a>(views: impl IntoIterator<Item = NodeView<'a>>) -> Self {
        let mut nodes = Self::default();
        for view in views {
            nodes.insert(view.id, view.total.clone());
            nodes.take(view.id, &difference(view.total, view.available));
            nodes.set_alive(view.id, view.alive);
        }
        nodes
    }

    /// Adds node `id` (or replaces it), alive with all of `total` available.
    pub fn insert(&mut self, id: NodeId, total: Resources) {
        self.remove(id);
        let slot = Slot {
            available: total.clone(),
            total,
            alive: true,
        };
        self.index(id, &slot);
        self.slots.insert(id, slot);
    }

    /// Forgets node `id`.
    pub fn remove(&mut self, id: NodeId) {
        if let Some(slot) = self.slots.remove(&id) {
            self.unindex(id, &slot);
        }
    }

    /// Whether node `id` takes work (it can also be known and not take any: dead or draining).
    pub fn set_alive(&mut self, id: NodeId, alive: bool) {
        self.update(id, |slot| slot.alive = alive);
    }

    /// Takes `demand` from node `id`'s available resources.
    pub fn take(&mut self, id: NodeId, demand: &Resources) {
        self.update(id, |slot| slot.available.subtract(demand));
    }

    /// Gives `demand` back to node `id` (nothing if it was forgotten meanwhile).
    pub fn give_back(&mut self, id: NodeId, demand: &Resources) {
        self.update(id, |slot| slot.available.add(demand));
    }

    /// Node `id`, if known.
    pub fn get(&self, id: NodeId) -> Option<NodeView<'_>> {
        self.slots.get(&id).map(|slot| view(id, slot))
    }

    /// Every known node, in no particular order.
    pub fn iter(&self) -> impl Iterator<Item = NodeView<'_>> {
        self.slots.iter().map(|(id, slot)| view(*id, slot))
    }

    /// The nodes taking work with at least `cpus` CPUs available, most available first, then
    /// lower id first.
    pub fn with_free_cpus(&self, cpus: f64) -> impl Iterator<Item = NodeView<'_>> {
        self.by_free_cpus
            .iter()
            .take_while(move |(Reverse(free), _)| free.0 >= cpus)
            .map(|(_, id)| view(*id, &self.slots[id]))
    }

    /// Whether node `id` takes work and has `demand` available now.
    pub fn fits_now(&self, id: NodeId, demand: &Resources) -> bool {
        self.slots
            .get(&id)
            .is_some_and(|slot| slot.alive && slot.available.covers(demand))
    }

    /// Whether some node taking work has `demand` in total (is not infeasible).
    pub fn could_fit(&self, demand: &Resources) -> bool {
        self.shapes.iter().any(|(total, _)| total.covers(demand))
    }

    fn update(&mut self, id: NodeId, change: impl FnOnce(&mut Slot)) {
        let Some(mut slot) = self.slots.remove(&id) else {
            return;
        };
        self.unindex(id, &slot);
        change(&mut slot);
        self.index(id, &slot);
        self.slots.insert(id, slot);
    }

    fn index(&mut self, id: NodeId, slot: &Slot) {
        if !slot.alive {
            return;
        }
        self.by_free_cpus
            .insert((Reverse(Cpus(slot.available.cpus)), id));
        match self
            .shapes
            .iter_mut()
            .find(|(total, _)| *total == slot.total)
        {
            Some((_, count)) => *count += 1,
            None => self.shapes.push((slot.total.clone(), 1)),
        }
    }

    fn unindex(&mut self, id: NodeId, slot: &Slot) {
        if !slot.alive {
            return;
        }
        self.by_free_cpus
            .remove(&(Reverse(Cpus(slot.available.cpus)), id));
        if let Some(at) = self
            .shapes
            .iter()
            .position(|(total, _)| *total == slot.total)
        {
            self.shapes[at].1 -= 1;
            if self.shapes[at].1 == 0 {
                self.shapes.swap_remove(at);
            }
        }
    }
}

fn view(id: NodeId, slot: &Slot) -> NodeView<'_> {
    NodeView {
        id,
        total: &slot.total,
        available: &slot.available,
        alive: slot.alive,
    }
}

/// What `total` has beyond `available`: the resources taken.
fn difference(total: &Resources, available: &Resources) -> Resources {
    Resources {
        cpus: total.cpus - available.cpus,
        memory_bytes: total.memory_bytes.saturating_sub(available.memory_bytes),
        custom: total
            .custom
            .iter()
            .map(|(name, amount)| {
                let left = available.custom.get(name).copied().unwrap_or(0.0);
                (name.clone(), amount - left)
            })
            .collect(),
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn cpus(n: f64) -> Resources {
        Resources {
            cpus: n,
            ..Default::default()
        }
    }

    /// The same questions answered by scanning every node.
    fn scanned(nodes: &Nodes, free: f64) -> Vec<NodeId> {
        let mut live: Vec<NodeView> = nodes
            .iter()
            .filter(|n| n.alive && n.available.cpus >= free)
            .collect();
        live.sort_by(|a, b| {
            b.available
                .cpus
                .total_cmp(&a.available.cpus)
                .then(a.id.cmp(&b.id))
        });
        live.into_iter().map(|n| n.id).collect()
    }

    #[derive(Clone, Debug)]
    enum Change {
        Insert(f64),
        Take(usize, f64),
        GiveBack(usize, f64),
        Alive(usize, bool),
        Remove(usize),
    }

    fn change() -> impl Strategy<Value = Change> {
        prop_oneof![
            (1u8..9).prop_map(|c| Change::Insert(c as f64)),
            (0usize..16, 0u8..5).prop_map(|(n, c)| Change::Take(n, c as f64 * 0.5)),
            (0usize..16, 0u8..5).prop_map(|(n, c)| Change::GiveBack(n, c as f64 * 0.5)),
            (0usize..16, any::<bool>()).prop_map(|(n, a)| Change::Alive(n, a)),
            (0usize..16).prop_map(Change::Remove),
        ]
    }

    proptest! {
        /// After any sequence of changes, the index answers as a scan of every node does.
        #[test]
        fn the_index_answers_as_a_scan_does(changes in prop::collection::vec(change(), 0..80)) {
            let mut nodes = Nodes::default();
            let mut ids = Vec::new();
            for change in changes {
                let pick = |ids: &Vec<NodeId>, n: usize| (!ids.is_empty()).then(|| ids[n % ids.len()]);
                match change {
                    Change::Insert(c) => {
                        let id = NodeId::random();
                        nodes.insert(id, cpus(c));
                        ids.push(id);
                    }
                    Change::Take(n, c) => if let Some(id) = pick(&ids, n) { nodes.take(id, &cpus(c)) },
                    Change::GiveBack(n, c) => if let Some(id) = pick(&ids, n) { nodes.give_back(id, &cpus(c)) },
                    Change::Alive(n, a) => if let Some(id) = pick(&ids, n) { nodes.set_alive(id, a) },
                    Change::Remove(n) => if let Some(id) = pick(&ids, n) { nodes.remove(id) },
                }
                for free in [0.0, 0.5, 1.0, 3.0, 8.0] {
                    let indexed: Vec<NodeId> = nodes.with_free_cpus(free).map(|n| n.id).collect();
                    prop_assert_eq!(indexed, scanned(&nodes, free));
                }
                for want in [1.0, 4.0, 8.5] {
                    let could = nodes.iter().any(|n| n.alive && n.total.cpus >= want);
                    prop_assert_eq!(nodes.could_fit(&cpus(want)), could);
                }
            }
        }
    }

    #[test]
    fn from_views_keeps_what_was_taken() {
        let (total, available) = (cpus(4.0), cpus(1.5));
        let id = NodeId::random();
        let nodes = Nodes::from_views([NodeView {
            id,
            total: &total,
            available: &available,
            alive: false,
        }]);
        let node = nodes.get(id).expect("inserted");
        assert_eq!(node.available.cpus, 1.5);
        assert!(!node.alive);
        assert!(!nodes.could_fit(&cpus(1.0)), "a dead node fits nothing");
    }
}
