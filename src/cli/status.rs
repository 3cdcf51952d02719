//! `manta status`: the head's node table, the demand waiting for nodes, and the autoscaler's
//! node types and recent decisions.

use anyhow::Result;
use manta::datasets::stats::human_bytes;
use manta::scheduler::proto::ListNodesRequest;
use manta::scheduler::proto::head_client::HeadClient;

/// Prints one line per node.
pub fn print_status(address: &str, token: Option<&manta::Token>) -> Result<()> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let reply = runtime.block_on(async {
        let (channel, _) = manta::scheduler::cluster_token::connect_head(address, token).await?;
        let reply = HeadClient::new(channel)
            .list_nodes(ListNodesRequest {})
            .await?;
        anyhow::Ok(reply.into_inner())
    })?;
    let (nodes, pending, autoscaler) = (reply.nodes, reply.pending, reply.autoscaler);
    println!(
        "Head {address}: {} node(s), {} alive",
        nodes.len(),
        nodes.iter().filter(|n| n.alive).count()
    );
    println!(
        "{:<24} {:<6} {:>11} {:>7} {:>23} {:>10}  resources",
        "node", "state", "CPUs used", "tasks", "object store", "spilled"
    );
    for node in nodes {
        let state = match (node.alive, node.draining) {
            (false, _) => "dead",
            (true, true) => "drain",
            (true, false) => "alive",
        };
        let total = node.total.unwrap_or_default();
        let available = node.available.unwrap_or_default();
        let store = node.store.unwrap_or_default();
        let custom: Vec<String> = total
            .custom
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect();
        println!(
            "{:<24} {:<6} {:>5.1}/{:<5.1} {:>7} {:>10}/{:<12} {:>10}  {}",
            node.address.trim_start_matches("http://"),
            state,
            total.cpus - available.cpus,
            total.cpus,
            node.running_tasks,
            human_bytes(store.resident_bytes),
            human_bytes(store.budget_bytes),
            human_bytes(store.spilled_bytes),
            custom.join(","),
        );
        if !node.name.is_empty() {
            println!("  (named {})", node.name);
        }
    }
    if !pending.is_empty() {
        println!("Pending demand:");
    }
    for demand in pending {
        println!(
            "  {} waiting for {} ({}), the oldest for {} s{}",
            demand.count,
            describe(&demand.demand.unwrap_or_default()),
            demand.label,
            demand.waited_millis / 1000,
            if demand.fits_no_live_node {
                ": no live node offers it"
            } else {
                ""
            }
        );
    }
    if let Some(autoscaler) = autoscaler {
        print_autoscaler(autoscaler);
    }
    Ok(())
}

/// The autoscaler's node types with their counts, then its recent decisions.
fn print_autoscaler(autoscaler: manta::scheduler::proto::AutoscalerStatus) {
    println!("Autoscaler node types:");
    for t in autoscaler.node_types {
        let mut line = format!(
            "  {} ({}): {} running, {} launching, min {}, max {}",
            t.name,
            describe(&t.resources.unwrap_or_default()),
            t.running,
            t.launching,
            t.min_nodes,
            t.max_nodes
        );
        if t.failed_launches > 0 {
            line.push_str(&format!(
                "; {} failed launch(es) in a row, next try in {:.0} s",
                t.failed_launches,
                t.backoff_millis as f64 / 1000.0
            ));
        }
        println!("{line}");
    }
    if !autoscaler.events.is_empty() {
        println!("Autoscaler events:");
    }
    for event in autoscaler.events {
        println!(
            "  {:>5.1} s ago  {}",
            event.millis_ago as f64 / 1000.0,
            event.message
        );
    }
}

/// A resource shape as `1 CPU, 2.0 GiB, gpu=1`.
fn describe(resources: &manta::scheduler::proto::Resources) -> String {
    manta::scheduler::autoscaler::plan::describe(&resources.clone().into())
}
