//! The tasks waiting for resources, one [`DemandQueue`] per demand: each task waits at the
//! node holding most of its input bytes, or anywhere if it has none.
//!
//! When a node has room for a demand, it takes the older of its own first waiter and the
//! first waiter that may run anywhere; only when both are empty does it take another node's
//! first waiter (it steals) — and the head lets it steal only once it has served its own
//! waiters of every demand, and only from a line that node cannot soon serve itself: longer
//! than its CPUs, or whose first has waited [`steal_after`] (delay scheduling, as Spark's
//! locality wait, but short, and shorter still for a task whose inputs are spread). On a busy
//! cluster each node therefore runs the tasks whose inputs it holds — the head's dispatch picks
//! by the node that has room, not by the task at the front of one global line — while tasks
//! without inputs still go in the order they came.
//!
//! Every operation costs about the waiters it returns: no operation looks at every node or
//! every waiter, except [`DemandQueue::take_expired`] (for a demand no node fits, which does
//! not wait long) and the read-only views for status and the autoscaler.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::ops::Bound;
use std::time::{Duration, Instant};

use manta_engine::{NodeId, Resources};
use tokio::sync::oneshot;

use super::Lease;
use crate::error::Result;

/// How long a task waits for the node holding its inputs before another node with room may
/// take it (when its line is short enough for that node to serve soon), besides the time
/// moving its inputs would take ([`steal_after`]).
pub(super) const STEAL_AFTER: Duration = Duration::from_millis(10);

/// The rate [`steal_after`] counts moving inputs between nodes at: about what a pull of a
/// task's partitions reaches on loopback here.
const STEAL_BYTES_PER_SECOND: f64 = 1e9;

/// How long a task waits for the node holding most of its inputs before another node may take
/// it. `extra_bytes` is what running elsewhere would pull beyond what running there pulls (its
/// bytes there, less those at the next best node); `pulled_anyway` is what it pulls even there.
///
/// A task held mostly by one node waits [`STEAL_AFTER`] plus as long as moving `extra_bytes`
/// would take: a task with a few MiB of inputs is taken after about 10 ms, one with 100 MB
/// after about 110. A task whose inputs are spread, so that running elsewhere pulls at most a
/// quarter more than running there (a reducer of a hash exchange, a task reading broadcast
/// blocks made on every node), gains little from waiting: it waits only as long as moving
/// `extra_bytes` takes, the ski-rental rule (wait as long as moving would cost, then move).
/// In TPC-H's short stages such a reducer waited 10 ms for the node running its sibling while
/// the other node was idle.
pub(super) fn steal_after(extra_bytes: u64, pulled_anyway: u64) -> Duration {
    let moving = Duration::from_secs_f64(extra_bytes as f64 / STEAL_BYTES_PER_SECOND);
    if extra_bytes <= pulled_anyway / 4 {
        moving
    } else {
        STEAL_AFTER + moving
    }
}

/// [`steal_after`] for a task whose inputs are `input_bytes` per node, waiting at `prefers`.
pub(super) fn wait_for(prefers: Option<NodeId>, input_bytes: &HashMap<NodeId, u64>) -> Duration {
    let there = prefers
        .and_then(|node| input_bytes.get(&node))
        .copied()
        .unwrap_or(0);
    let next_best = input_bytes
        .iter()
        .filter(|(node, _)| Some(**node) != prefers)
        .map(|(_, bytes)| *bytes)
        .max()
        .unwrap_or(0);
    let pulled_anyway = input_bytes.values().sum::<u64>() - there;
    steal_after(there.saturating_sub(next_best), pulled_anyway)
}

/// How many other nodes' lines a node with room looks at for one to steal from.
const STEAL_LOOKS: usize = 8;

/// The key of a demand's [`DemandQueue`]: equal for equal demands (CPUs and named resources
/// by their bits, so `-0.0` and `0.0` differ, as they would as text). Built per task placed,
/// so it allocates only for named resources, where formatting the demand allocated and printed
/// floats for every task.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub(super) struct DemandKey {
    cpus: u64,
    memory_bytes: u64,
    custom: Vec<(String, u64)>,
}

impl DemandKey {
    pub(super) fn of(demand: &Resources) -> Self {
        Self {
            cpus: demand.cpus.to_bits(),
            memory_bytes: demand.memory_bytes,
            custom: demand
                .custom
                .iter()
                .map(|(name, amount)| (name.clone(), amount.to_bits()))
                .collect(),
        }
    }
}

/// A task waiting for resources: told the node whose resources were taken for it.
pub(super) struct Waiter {
    /// Its place in line among every waiter of the head.
    pub(super) seq: u64,
    /// The node holding most of its input bytes (which can run it), if any.
    pub(super) prefers: Option<NodeId>,
    pub(super) label: String,
    /// Its function, by which its history of durations is kept.
    pub(super) function: String,
    pub(super) placed: oneshot::Sender<Result<Lease>>,
    /// When it started waiting (a demand no live node fits waits at most
    /// [`super::HeadConfig::pending_timeout`]).
    pub(super) since: Instant,
    /// How long it waits for the node it prefers before another may take it ([`steal_after`]).
    pub(super) steal_after: Duration,
}

/// The tasks waiting for one demand; see the module documentation.
pub(super) struct DemandQueue {
    pub(super) demand: Resources,
    anywhere: VecDeque<Waiter>,
    /// Per node, the waiters whose inputs it holds; a node is here only while it has some.
    at: BTreeMap<NodeId, VecDeque<Waiter>>,
    len: usize,
    /// The line last stolen from: the next steal looks after it, so steals go round.
    stolen_from: Option<NodeId>,
}

impl DemandQueue {
    pub(super) fn new(demand: Resources) -> Self {
        Self {
            demand,
            anywhere: VecDeque::new(),
            at: BTreeMap::new(),
            len: 0,
            stolen_from: None,
        }
    }

    /// Waiters, including those whose callers went away (they are dropped when reached).
    pub(super) fn len(&self) -> usize {
        self.len
    }

    pub(super) fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Adds a waiter at the end of its line.
    pub(super) fn push(&mut self, waiter: Waiter) {
        self.len += 1;
        match waiter.prefers {
            Some(node) => self.at.entry(node).or_default().push_back(waiter),
            None => self.anywhere.push_back(waiter),
        }
    }

    /// Puts back a waiter just taken (by [`DemandQueue::take_for`]) at the front of its line.
    pub(super) fn put_back(&mut self, waiter: Waiter) {
        self.len += 1;
        match waiter.prefers {
            Some(node) => self.at.entry(node).or_default().push_front(waiter),
            None => self.anywhere.push_front(waiter),
        }
    }

    /// The nodes some waiters wait at.
    pub(super) fn preferred_nodes(&self) -> Vec<NodeId> {
        self.at.keys().copied().collect()
    }

    /// The next waiter for `node`, which has room: the older of its own first and the first
    /// that may run anywhere, or else the first of another node's line that `may_steal` (given
    /// that node and the line's length and first waiter) lets go.
    pub(super) fn take_for(
        &mut self,
        node: NodeId,
        may_steal: impl Fn(NodeId, usize, &Waiter) -> bool,
    ) -> Option<Waiter> {
        let own = self.at.get(&node).and_then(VecDeque::front).map(|w| w.seq);
        let anywhere = self.anywhere.front().map(|w| w.seq);
        let waiter = match (own, anywhere) {
            (Some(own), Some(anywhere)) if anywhere < own => self.anywhere.pop_front(),
            (Some(_), _) => self.pop_at(node),
            (None, Some(_)) => self.anywhere.pop_front(),
            (None, None) => {
                let victim = self.line_to_steal(may_steal)?;
                self.stolen_from = Some(victim);
                self.pop_at(victim)
            }
        };
        self.len -= usize::from(waiter.is_some());
        waiter
    }

    /// Up to [`STEAL_LOOKS`] lines after the last stolen from (round the end), the first that
    /// `may_steal` lets go.
    fn line_to_steal(&self, may_steal: impl Fn(NodeId, usize, &Waiter) -> bool) -> Option<NodeId> {
        let after = match self.stolen_from {
            Some(last) => self.at.range((Bound::Excluded(last), Bound::Unbounded)),
            None => self.at.range(..),
        };
        after
            .chain(self.at.iter())
            .take(STEAL_LOOKS.min(self.at.len()))
            .find(|(owner, line)| {
                line.front()
                    .is_some_and(|w| may_steal(**owner, line.len(), w))
            })
            .map(|(owner, _)| *owner)
    }

    fn pop_at(&mut self, node: NodeId) -> Option<Waiter> {
        let line = self.at.get_mut(&node)?;
        let waiter = line.pop_front();
        if line.is_empty() {
            self.at.remove(&node);
        }
        waiter
    }

    /// `node` is gone: the waiters at it may run anywhere now, in the order they came.
    pub(super) fn forget_node(&mut self, node: NodeId) {
        let Some(line) = self.at.remove(&node) else {
            return;
        };
        let mut merged: Vec<Waiter> = self.anywhere.drain(..).chain(line).collect();
        merged.sort_by_key(|w| w.seq);
        for waiter in &mut merged {
            waiter.prefers = None;
        }
        self.anywhere = merged.into();
    }

    /// Removes and returns the waiters that have waited longer than `timeout`.
    pub(super) fn take_expired(&mut self, timeout: Duration) -> Vec<Waiter> {
        self.take_where(|w| w.since.elapsed() >= timeout)
    }

    /// Drops the waiters whose callers went away (a job that ended, a driver that died): a
    /// queue no node can serve would otherwise keep them, and count them, until they expire.
    pub(super) fn drop_gone(&mut self) {
        self.take_where(|w| w.placed.is_closed());
    }

    /// Removes and returns the waiters `which` picks, keeping the others' order.
    fn take_where(&mut self, which: impl Fn(&Waiter) -> bool) -> Vec<Waiter> {
        let mut taken = Vec::new();
        let lines = std::iter::once(&mut self.anywhere).chain(self.at.values_mut());
        for line in lines {
            let (picked, kept): (Vec<Waiter>, Vec<Waiter>) = line.drain(..).partition(&which);
            *line = kept.into();
            taken.extend(picked);
        }
        self.at.retain(|_, line| !line.is_empty());
        self.len -= taken.len();
        taken
    }

    /// Every waiter, in no particular order.
    pub(super) fn iter(&self) -> impl Iterator<Item = &Waiter> {
        self.anywhere.iter().chain(self.at.values().flatten())
    }

    /// The waiter that came first.
    pub(super) fn oldest(&self) -> Option<&Waiter> {
        self.anywhere
            .front()
            .into_iter()
            .chain(self.at.values().filter_map(VecDeque::front))
            .min_by_key(|w| w.seq)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn waiter(seq: u64, prefers: Option<NodeId>) -> Waiter {
        let (placed, _) = oneshot::channel();
        Waiter {
            seq,
            prefers,
            label: format!("task {seq}"),
            function: "f".into(),
            placed,
            since: Instant::now(),
            steal_after: STEAL_AFTER,
        }
    }

    fn taken(queue: &mut DemandQueue, node: NodeId) -> Option<u64> {
        queue.take_for(node, |_, _, _| true).map(|w| w.seq)
    }

    #[test]
    fn a_node_takes_its_own_waiters_and_older_ones_that_run_anywhere() {
        let (a, b) = (NodeId::random(), NodeId::random());
        let mut queue = DemandQueue::new(Resources::one_cpu());
        for (seq, prefers) in [(1, Some(a)), (2, Some(b)), (3, None), (4, Some(a))] {
            queue.push(waiter(seq, prefers));
        }
        assert_eq!(taken(&mut queue, a), Some(1));
        assert_eq!(taken(&mut queue, a), Some(3), "older than a's next");
        assert_eq!(taken(&mut queue, a), Some(4));
        assert_eq!(
            taken(&mut queue, a),
            Some(2),
            "a steals b's once it has none"
        );
        assert_eq!(taken(&mut queue, a), None);
        assert!(queue.is_empty());
    }

    #[test]
    fn a_node_steals_only_what_may_be_stolen_and_goes_round() {
        let (a, b, c) = (NodeId::random(), NodeId::random(), NodeId::random());
        let mut queue = DemandQueue::new(Resources::one_cpu());
        for (seq, prefers) in [(1, Some(b)), (2, Some(c)), (3, Some(b)), (4, Some(c))] {
            queue.push(waiter(seq, prefers));
        }
        assert!(
            queue.take_for(a, |_, _, _| false).is_none(),
            "nothing may be stolen"
        );
        assert_eq!(queue.len(), 4);
        let only_c = |owner: NodeId, _: usize, _: &Waiter| owner == c;
        assert_eq!(queue.take_for(a, only_c).map(|w| w.seq), Some(2));
        let long = |_: NodeId, len: usize, _: &Waiter| len > 1;
        assert_eq!(
            queue.take_for(a, long).map(|w| w.seq),
            Some(1),
            "b's line has two"
        );
        let first_steal = queue.take_for(a, |_, _, _| true).map(|w| w.seq);
        let second_steal = queue.take_for(a, |_, _, _| true).map(|w| w.seq);
        let mut both = [first_steal, second_steal];
        both.sort();
        assert_eq!(both, [Some(3), Some(4)]);
    }

    #[test]
    fn waiters_at_a_lost_node_run_anywhere_in_order() {
        let (a, b) = (NodeId::random(), NodeId::random());
        let mut queue = DemandQueue::new(Resources::one_cpu());
        for (seq, prefers) in [(1, Some(a)), (2, None), (3, Some(a)), (4, Some(b))] {
            queue.push(waiter(seq, prefers));
        }
        queue.forget_node(a);
        assert_eq!(queue.preferred_nodes(), vec![b]);
        let order: Vec<u64> = std::iter::from_fn(|| taken(&mut queue, b)).collect();
        assert_eq!(order, vec![1, 2, 3, 4]);
    }

    #[test]
    fn spread_inputs_wait_only_as_long_as_moving_them_takes() {
        let mib = 1 << 20;
        assert!(steal_after(mib, 0) > STEAL_AFTER, "one node holds it all");
        let spread = steal_after(mib, 8 * mib);
        assert!(
            spread < STEAL_AFTER,
            "a reducer pulls most of its inputs anyway"
        );
        assert!(spread > Duration::ZERO);
        assert_eq!(steal_after(0, 8 * mib), Duration::ZERO, "evenly spread");

        let (a, b, c) = (NodeId::random(), NodeId::random(), NodeId::random());
        let reducer = HashMap::from([(a, 5 * mib), (b, 5 * mib - 1024), (c, 4 * mib)]);
        assert!(wait_for(Some(a), &reducer) < STEAL_AFTER);
        let local = HashMap::from([(a, 5 * mib), (b, 1024)]);
        assert!(wait_for(Some(a), &local) > STEAL_AFTER);
    }

    #[test]
    fn put_back_keeps_the_front() {
        let a = NodeId::random();
        let mut queue = DemandQueue::new(Resources::one_cpu());
        queue.push(waiter(1, Some(a)));
        queue.push(waiter(2, Some(a)));
        let first = queue.take_for(a, |_, _, _| true).expect("a waiter");
        queue.put_back(first);
        assert_eq!(queue.len(), 2);
        assert_eq!(queue.oldest().map(|w| w.seq), Some(1));
        assert_eq!(taken(&mut queue, a), Some(1));
    }

    #[test]
    fn only_expired_waiters_are_taken() {
        let a = NodeId::random();
        let mut queue = DemandQueue::new(Resources::one_cpu());
        let mut old = waiter(1, Some(a));
        old.since = Instant::now() - Duration::from_secs(60);
        queue.push(old);
        queue.push(waiter(2, None));
        let expired = queue.take_expired(Duration::from_secs(30));
        assert_eq!(expired.iter().map(|w| w.seq).collect::<Vec<_>>(), vec![1]);
        assert_eq!(queue.len(), 1);
        assert!(queue.preferred_nodes().is_empty());
    }
}
