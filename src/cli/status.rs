//! `manta status`: the head's node table.

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
    let (nodes, pending) = (reply.nodes, reply.pending);
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
            if node.alive { "alive" } else { "dead" },
            total.cpus - available.cpus,
            total.cpus,
            node.running_tasks,
            human_bytes(store.resident_bytes),
            human_bytes(store.budget_bytes),
            human_bytes(store.spilled_bytes),
            custom.join(","),
        );
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
    Ok(())
}

/// A resource shape as `1 CPU, 2.0 GiB, gpu=1`.
fn describe(resources: &manta::scheduler::proto::Resources) -> String {
    let mut parts = vec![format!("{} CPU", resources.cpus)];
    if resources.memory_bytes > 0 {
        parts.push(human_bytes(resources.memory_bytes));
    }
    parts.extend(resources.custom.iter().map(|(k, v)| format!("{k}={v}")));
    parts.join(", ")
}
