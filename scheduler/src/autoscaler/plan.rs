//! The autoscaler's decision, as a pure function: from the cluster's load and the nodes it
//! manages, which nodes to launch and which to stop, each with its reason.
//!
//! # How it decides
//!
//! * **Launch.** First, each node type below its `min_nodes` gets nodes up to it. Then the
//!   pending demand (the resource shapes of the tasks and actors waiting in the head, with
//!   their counts) is packed, one unit at a time and first fit, into what is free: the
//!   available resources of live nodes, the whole of nodes launching (not registered yet) and
//!   of nodes this plan launches. A unit that fits nowhere takes a new node of the smallest
//!   type (fewest CPUs, then name) that covers it and is below its `max_nodes`; a unit no type
//!   with room covers stays unmet (the head fails demand no type could ever meet; demand
//!   whose types are all at `max_nodes` waits for nodes to free up).
//! * **Upscaling speed** (Ray's `upscaling_speed`): at most `max(5, speed × running)` nodes
//!   may be launching at once, so a burst of demand grows the cluster in steps rather than
//!   asking the provider for hundreds of machines at once.
//! * **Stop.** A node this autoscaler launched that has had no task, actor or object for
//!   `idle_timeout` is stopped, as long as its type stays at or above `min_nodes`. (The head
//!   then drains it: it takes no new work, and is stopped only if it is still idle.)

use std::collections::BTreeMap;
use std::time::Duration;

use manta_engine::Resources;

use super::config::NodeType;

/// At least this many nodes may be launching at once, whatever the upscaling speed.
pub const MIN_LAUNCHING: usize = 5;

/// At most this many units of pending demand are packed in one plan (each unit is a task or
/// actor); more waits for the next round.
const MAX_DEMAND_UNITS: u64 = 10_000;

/// A node this autoscaler launched, as the plan sees it.
#[derive(Debug, Clone)]
pub struct ManagedNode {
    /// The node's name (what it registers with).
    pub name: String,
    /// Its node type.
    pub node_type: String,
    /// Where it is in its life.
    pub state: ManagedState,
}

/// Where a managed node is in its life.
#[derive(Debug, Clone)]
pub enum ManagedState {
    /// Launched, not registered with the head yet.
    Launching,
    /// Registered: what it has free, and for how long it has been idle (no tasks, actors or
    /// objects; zero while busy).
    Running {
        /// Its free resources.
        available: Resources,
        /// How long it has been idle.
        idle_for: Duration,
    },
    /// Being stopped.
    Stopping,
}

/// What the plan is given beyond the managed nodes.
#[derive(Debug, Clone, Default)]
pub struct Load {
    /// Demand waiting in the head: (shape, how many tasks or actors).
    pub pending: Vec<(Resources, u64)>,
    /// The free resources of live nodes the autoscaler did not launch (the head's own node,
    /// nodes started by hand).
    pub unmanaged_available: Vec<Resources>,
}

/// The plan's knobs.
#[derive(Debug, Clone)]
pub struct Limits {
    /// Ray's upscaling speed: launching nodes at most `max(5, speed × running nodes)`.
    pub upscaling_speed: f64,
    /// How long a node must be idle to be stopped.
    pub idle_timeout: Duration,
}

/// What to do now.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Plan {
    /// Nodes to launch: (node type, why).
    pub launch: Vec<(String, String)>,
    /// Nodes to stop: (node name, why).
    pub stop: Vec<(String, String)>,
    /// Demand no node type with room can take: (shape, how many), for the status.
    pub unmet: Vec<(Resources, u64)>,
}

/// Decides which nodes to launch and which to stop (see the module doc).
pub fn plan(types: &[NodeType], managed: &[ManagedNode], load: &Load, limits: &Limits) -> Plan {
    let mut plan = Plan::default();
    // Nodes per type that are launching or running (stopping ones no longer count).
    let mut count: BTreeMap<&str, u32> = types.iter().map(|t| (t.name.as_str(), 0)).collect();
    let mut free: Vec<Resources> = load.unmanaged_available.clone();
    let mut running = 0usize;
    let mut launching = 0usize;
    for node in managed {
        match &node.state {
            ManagedState::Stopping => continue,
            ManagedState::Launching => {
                launching += 1;
                if let Some(t) = types.iter().find(|t| t.name == node.node_type) {
                    free.push(t.resources.clone());
                }
            }
            ManagedState::Running { available, .. } => {
                running += 1;
                free.push(available.clone());
            }
        }
        *count.entry(node.node_type.as_str()).or_default() += 1;
    }
    let room = (MIN_LAUNCHING.max((limits.upscaling_speed * running as f64).ceil() as usize))
        .saturating_sub(launching);
    let launch = |plan: &mut Plan, t: &NodeType, why: String| -> bool {
        if plan.launch.len() >= room {
            return false;
        }
        plan.launch.push((t.name.clone(), why));
        true
    };

    for t in types {
        let have = count[t.name.as_str()];
        for _ in have..t.min_nodes {
            if !launch(
                &mut plan,
                t,
                format!(
                    "{} has {have} node(s), below min_nodes {}",
                    t.name, t.min_nodes
                ),
            ) {
                break;
            }
            *count.get_mut(t.name.as_str()).expect("every type") += 1;
            free.push(t.resources.clone());
        }
    }

    // Smallest types first: a unit takes the cheapest node that covers it.
    let mut by_size: Vec<&NodeType> = types.iter().collect();
    by_size.sort_by(|a, b| {
        a.resources
            .cpus
            .total_cmp(&b.resources.cpus)
            .then(a.name.cmp(&b.name))
    });
    let mut budget = MAX_DEMAND_UNITS;
    for (shape, how_many) in &load.pending {
        let mut unmet = 0;
        let units = (*how_many).min(budget);
        budget -= units;
        for _ in 0..units {
            if let Some(bin) = free.iter_mut().find(|f| f.covers(shape)) {
                bin.subtract(shape);
                continue;
            }
            let Some(t) = by_size
                .iter()
                .find(|t| t.resources.covers(shape) && count[t.name.as_str()] < t.max_nodes)
            else {
                unmet += 1;
                continue;
            };
            let why = format!(
                "{how_many} task(s) or actor(s) wait for {}",
                describe(shape)
            );
            if !launch(&mut plan, t, why) {
                // Launching as fast as allowed; the rest waits for the next round.
                break;
            }
            *count.get_mut(t.name.as_str()).expect("every type") += 1;
            let mut bin = t.resources.clone();
            bin.subtract(shape);
            free.push(bin);
        }
        if unmet > 0 {
            plan.unmet.push((shape.clone(), unmet));
        }
    }

    // Stop nodes idle long enough, keeping each type at its min_nodes; none while this plan
    // launches (demand is arriving).
    if plan.launch.is_empty() {
        for node in managed {
            let ManagedState::Running { idle_for, .. } = &node.state else {
                continue;
            };
            let Some(t) = types.iter().find(|t| t.name == node.node_type) else {
                continue;
            };
            let have = count.get_mut(t.name.as_str()).expect("every type");
            if *idle_for >= limits.idle_timeout && *have > t.min_nodes {
                *have -= 1;
                plan.stop.push((
                    node.name.clone(),
                    format!("idle for {} s", idle_for.as_secs()),
                ));
            }
        }
    }
    plan
}

/// A resource shape for people: `1 CPU`, `0.5 CPU, 1 GiB, gpu=1`.
pub fn describe(shape: &Resources) -> String {
    let mut parts = vec![format!("{} CPU", shape.cpus)];
    if shape.memory_bytes > 0 {
        parts.push(bytesize(shape.memory_bytes));
    }
    for (name, amount) in &shape.custom {
        parts.push(format!("{name}={amount}"));
    }
    parts.join(", ")
}

fn bytesize(bytes: u64) -> String {
    const GIB: f64 = (1u64 << 30) as f64;
    const MIB: f64 = (1u64 << 20) as f64;
    match bytes as f64 {
        b if b >= GIB => format!("{:.1} GiB", b / GIB),
        b => format!("{:.0} MiB", b / MIB),
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

    fn node_type(name: &str, n: f64, min_nodes: u32, max_nodes: u32) -> NodeType {
        NodeType {
            name: name.into(),
            resources: cpus(n),
            min_nodes,
            max_nodes,
        }
    }

    fn limits() -> Limits {
        Limits {
            upscaling_speed: 1.0,
            idle_timeout: Duration::from_secs(60),
        }
    }

    fn running(name: &str, node_type: &str, free: f64, idle_s: u64) -> ManagedNode {
        ManagedNode {
            name: name.into(),
            node_type: node_type.into(),
            state: ManagedState::Running {
                available: cpus(free),
                idle_for: Duration::from_secs(idle_s),
            },
        }
    }

    fn demand(shape: Resources, n: u64) -> Load {
        Load {
            pending: vec![(shape, n)],
            unmanaged_available: vec![],
        }
    }

    #[test]
    fn a_burst_of_one_cpu_tasks_launches_up_to_max_nodes() {
        let types = [node_type("cpu1", 1.0, 0, 3)];
        let plan = plan(&types, &[], &demand(cpus(1.0), 40), &limits());
        assert_eq!(plan.launch.len(), 3);
        assert!(plan.launch[0].1.contains("40 task(s)"), "{:?}", plan.launch);
        assert_eq!(plan.unmet, vec![(cpus(1.0), 37)]);
    }

    #[test]
    fn demand_that_fits_free_or_launching_capacity_launches_nothing() {
        let types = [node_type("cpu4", 4.0, 0, 10)];
        let launching = ManagedNode {
            name: "cpu4-1".into(),
            node_type: "cpu4".into(),
            state: ManagedState::Launching,
        };
        let managed = [launching, running("cpu4-0", "cpu4", 2.0, 0)];
        let plan = plan(&types, &managed, &demand(cpus(1.0), 6), &limits());
        assert_eq!(plan, Plan::default());
    }

    #[test]
    fn the_smallest_type_that_covers_a_shape_is_launched() {
        let mut gpu = node_type("gpu", 8.0, 0, 2);
        gpu.resources.custom.insert("gpu".into(), 1.0);
        let types = [
            gpu,
            node_type("big", 16.0, 0, 2),
            node_type("small", 2.0, 0, 2),
        ];
        let plan = plan(&types, &[], &demand(cpus(2.0), 1), &limits());
        assert_eq!(plan.launch[0].0, "small");
        let mut wants_gpu = cpus(1.0);
        wants_gpu.custom.insert("gpu".into(), 1.0);
        let plan = super::plan(&types, &[], &demand(wants_gpu, 1), &limits());
        assert_eq!(plan.launch[0].0, "gpu");
    }

    #[test]
    fn min_nodes_are_kept_and_idle_nodes_above_them_stop() {
        let types = [node_type("cpu1", 1.0, 1, 4)];
        let plan = plan(&types, &[], &Load::default(), &limits());
        assert_eq!(plan.launch.len(), 1);
        assert!(plan.launch[0].1.contains("min_nodes"));
        let managed = [
            running("a", "cpu1", 1.0, 61),
            running("b", "cpu1", 1.0, 61),
            running("c", "cpu1", 1.0, 10),
        ];
        let plan = super::plan(&types, &managed, &Load::default(), &limits());
        // Two are idle long enough; min_nodes 1 keeps one of the three.
        assert_eq!(plan.stop.len(), 2);
        assert!(
            plan.stop
                .iter()
                .all(|(_, why)| why.contains("idle for 61 s"))
        );
    }

    #[test]
    fn launching_is_limited_by_the_upscaling_speed() {
        let types = [node_type("cpu1", 1.0, 0, 1000)];
        let plan = plan(&types, &[], &demand(cpus(1.0), 100), &limits());
        assert_eq!(plan.launch.len(), MIN_LAUNCHING);
        let managed: Vec<_> = (0..20)
            .map(|i| running(&format!("n{i}"), "cpu1", 0.0, 0))
            .collect();
        let fast = Limits {
            upscaling_speed: 2.0,
            ..limits()
        };
        let plan = super::plan(&types, &managed, &demand(cpus(1.0), 100), &fast);
        assert_eq!(plan.launch.len(), 40);
    }

    proptest! {
        /// Whatever the demand and nodes, a plan never takes a type past max_nodes, never
        /// stops below min_nodes, never stops while launching, and launches only types that
        /// cover some pending shape or are below min_nodes.
        #[test]
        fn plans_respect_the_limits(
            maxes in prop::collection::vec((0u32..3, 0u32..6, 1u32..5), 1..4),
            pending in prop::collection::vec((1u32..6, 0u64..30), 0..4),
            nodes in prop::collection::vec((0usize..4, 0u32..5, 0u64..120, 0u8..3), 0..12),
        ) {
            let types: Vec<NodeType> = maxes
                .iter()
                .enumerate()
                .map(|(i, (min, extra, size))| {
                    node_type(&format!("t{i}"), f64::from(*size), *min, min + extra)
                })
                .collect();
            let managed: Vec<ManagedNode> = nodes
                .iter()
                .enumerate()
                .map(|(i, (t, free, idle, state))| ManagedNode {
                    name: format!("n{i}"),
                    node_type: types[t % types.len()].name.clone(),
                    state: match state {
                        0 => ManagedState::Launching,
                        1 => ManagedState::Stopping,
                        _ => ManagedState::Running {
                            available: cpus(f64::from(*free)),
                            idle_for: Duration::from_secs(*idle),
                        },
                    },
                })
                .collect();
            let load = Load {
                pending: pending.iter().map(|(c, n)| (cpus(f64::from(*c)), *n)).collect(),
                unmanaged_available: vec![],
            };
            let plan = plan(&types, &managed, &load, &limits());
            prop_assert!(plan.launch.is_empty() || plan.stop.is_empty());
            for t in &types {
                let live = managed
                    .iter()
                    .filter(|n| n.node_type == t.name && !matches!(n.state, ManagedState::Stopping))
                    .count() as u32;
                let launched = plan.launch.iter().filter(|(name, _)| *name == t.name).count() as u32;
                let stopped = plan
                    .stop
                    .iter()
                    .filter(|(name, _)| managed.iter().any(|n| &n.name == name && n.node_type == t.name))
                    .count() as u32;
                prop_assert!(launched == 0 || live + launched <= t.max_nodes.max(t.min_nodes));
                prop_assert!(stopped == 0 || live - stopped >= t.min_nodes);
                if launched > live.max(t.min_nodes).saturating_sub(live) {
                    prop_assert!(load.pending.iter().any(|(s, n)| *n > 0 && t.resources.covers(s)));
                }
            }
        }
    }
}
