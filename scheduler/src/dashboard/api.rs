//! The dashboard's JSON API: what every page shows, for scripts and the CLI. All behind the
//! cluster token (`Authorization: Bearer <token>`) or a dashboard session.
//!
//! | request | answer |
//! |---|---|
//! | `GET /api/cluster` | totals, `nodes`, `pending` demand, `autoscaler` (node types, events) |
//! | `GET /api/nodes` | every node with its `history` (samples every 2 s, last 10 min) |
//! | `GET /api/actors` | every actor: id, name, job, state, node, restarts, why it died |
//! | `GET /api/objects` | object store figures by node, and their sum |
//! | `GET /api/events` | cluster events, oldest first |
//! | `GET /api/jobs/{id}/stages` | the stages of the job's drivers: tasks by state, rows, bytes, times |
//! | `GET /api/jobs/{id}/tasks` | the job's task events (one per run) |
//! | `GET /api/jobs/{id}/waiting` | what the job waits for, one sentence each (empty: nothing) |
//! | `GET /api/timeline?job={id}` | the job's (or, without `job`, every) task events as a Chrome trace |
//! | `POST /api/login-ticket` | a one-time dashboard link ([`super::login`]) |
//!
//! The jobs API (`/api/jobs`, …) is [`crate::jobs::http`]'s.

use std::sync::Arc;

use axum::Json;
use axum::extract::{Path, Query, State};
use serde::Deserialize;
use serde_json::{Value, json};

use super::Dashboard;
use super::history::Sample;
use crate::proto;

/// A node as JSON.
pub fn node_json(node: &proto::NodeInfo, history: Option<Vec<Sample>>) -> Value {
    let total = node.total.clone().unwrap_or_default();
    let available = node.available.clone().unwrap_or_default();
    let mut value = json!({
        "node_id": hex::encode(&node.node_id),
        "address": node.address,
        "name": node.name,
        "state": node_state(node),
        "pid": node.pid,
        "cpus": total.cpus,
        "cpus_used": (total.cpus - available.cpus).max(0.0),
        "memory_bytes": total.memory_bytes,
        "memory_used_bytes": total.memory_bytes.saturating_sub(available.memory_bytes),
        "custom_resources": total.custom,
        "running_tasks": node.running_tasks,
        "millis_since_heartbeat": node.millis_since_heartbeat,
        "store": store_json(&node.store.unwrap_or_default()),
    });
    if let Some(history) = history {
        value["history"] = json!(history);
    }
    value
}

/// `ALIVE`, `DRAINING` or `DEAD`.
pub fn node_state(node: &proto::NodeInfo) -> &'static str {
    match (node.alive, node.draining) {
        (false, _) => "DEAD",
        (true, true) => "DRAINING",
        (true, false) => "ALIVE",
    }
}

fn store_json(store: &proto::StoreUsage) -> Value {
    json!({
        "budget_bytes": store.budget_bytes,
        "resident_bytes": store.resident_bytes,
        "spilled_bytes": store.spilled_bytes,
        "objects": store.objects,
        "spilled_bytes_total": store.spilled_bytes_total,
        "restored_bytes_total": store.restored_bytes_total,
    })
}

fn demand_json(demand: &proto::PendingDemand) -> Value {
    let resources = demand.demand.clone().unwrap_or_default();
    json!({
        "label": demand.label,
        "count": demand.count,
        "cpus": resources.cpus,
        "memory_bytes": resources.memory_bytes,
        "custom_resources": resources.custom,
        "waited_millis": demand.waited_millis,
        "fits_no_live_node": demand.fits_no_live_node,
    })
}

fn autoscaler_json(status: &proto::AutoscalerStatus) -> Value {
    json!({
        "node_types": status.node_types.iter().map(|t| json!({
            "name": t.name,
            "min_nodes": t.min_nodes,
            "max_nodes": t.max_nodes,
            "running": t.running,
            "launching": t.launching,
            "failed_launches": t.failed_launches,
            "backoff_millis": t.backoff_millis,
        })).collect::<Vec<_>>(),
        "events": status.events.iter().map(|e| json!({
            "millis_ago": e.millis_ago,
            "message": e.message,
        })).collect::<Vec<_>>(),
    })
}

/// The store figures of the live nodes, summed.
pub fn store_total(nodes: &[proto::NodeInfo]) -> proto::StoreUsage {
    let mut total = proto::StoreUsage::default();
    for node in nodes.iter().filter(|n| n.alive) {
        total += &node.store.unwrap_or_default();
    }
    total
}

/// The live nodes' sums.
pub struct Totals {
    /// Nodes alive.
    pub alive: usize,
    /// CPUs they offer.
    pub cpus: f64,
    /// CPUs taken.
    pub cpus_used: f64,
    /// Tasks running on them.
    pub running_tasks: u64,
    /// Their stores, summed.
    pub store: proto::StoreUsage,
}

/// What the live nodes among `nodes` add up to.
pub fn totals(nodes: &[proto::NodeInfo]) -> Totals {
    let alive: Vec<_> = nodes.iter().filter(|n| n.alive).collect();
    let sum = |f: &dyn Fn(&proto::NodeInfo) -> f64| alive.iter().map(|n| f(n)).sum::<f64>();
    let cpus = sum(&|n| n.total.as_ref().map_or(0.0, |r| r.cpus));
    let free = sum(&|n| n.available.as_ref().map_or(0.0, |r| r.cpus));
    Totals {
        alive: alive.len(),
        cpus,
        cpus_used: (cpus - free).max(0.0),
        running_tasks: alive.iter().map(|n| n.running_tasks).sum(),
        store: store_total(nodes),
    }
}

/// `GET /api/cluster`.
pub async fn cluster(State(dashboard): State<Arc<Dashboard>>) -> Json<Value> {
    let head = &dashboard.head;
    let nodes = head.node_infos();
    let totals = totals(&nodes);
    Json(json!({
        "nodes_alive": totals.alive,
        "nodes_dead": nodes.len() - totals.alive,
        "cpus": totals.cpus,
        "cpus_used": totals.cpus_used,
        "running_tasks": totals.running_tasks,
        "store": store_json(&totals.store),
        "nodes": nodes.iter().map(|n| node_json(n, None)).collect::<Vec<_>>(),
        "pending": head.pending_demand().iter().map(demand_json).collect::<Vec<_>>(),
        "autoscaler": head.autoscaler_status().as_ref().map(autoscaler_json),
    }))
}

/// `GET /api/nodes`.
pub async fn nodes(State(dashboard): State<Arc<Dashboard>>) -> Json<Value> {
    let history = dashboard.history.lock();
    Json(Value::Array(
        dashboard
            .head
            .node_infos()
            .iter()
            .map(|n| node_json(n, Some(history.of(&n.address))))
            .collect(),
    ))
}

/// `GET /api/actors`.
pub async fn actors(State(dashboard): State<Arc<Dashboard>>) -> Json<Value> {
    Json(json!(dashboard.head.actor_summaries()))
}

/// `GET /api/objects`.
pub async fn objects(State(dashboard): State<Arc<Dashboard>>) -> Json<Value> {
    let nodes = dashboard.head.node_infos();
    Json(json!({
        "total": store_json(&store_total(&nodes)),
        "nodes": nodes.iter().filter(|n| n.alive).map(|n| json!({
            "address": n.address,
            "name": n.name,
            "store": store_json(&n.store.unwrap_or_default()),
        })).collect::<Vec<_>>(),
    }))
}

/// `GET /api/events`.
pub async fn events(State(dashboard): State<Arc<Dashboard>>) -> Json<Value> {
    Json(json!(dashboard.head.events().cluster_events()))
}

/// `GET /api/jobs/{id}/stages`.
pub async fn stages(
    State(dashboard): State<Arc<Dashboard>>,
    Path(id): Path<String>,
) -> Json<Value> {
    Json(json!(dashboard.head.events().progress(&id)))
}

/// `GET /api/jobs/{id}/waiting`.
pub async fn waiting(
    State(dashboard): State<Arc<Dashboard>>,
    Path(id): Path<String>,
) -> Json<Value> {
    Json(json!(dashboard.head.explain_stall(&id)))
}

/// A task event as JSON.
fn task_json(event: &proto::TaskEvent) -> Value {
    let stats = event.stats.unwrap_or_default();
    json!({
        "task_id": hex::encode(&event.task_id),
        "label": event.label,
        "stage": event.stage,
        "job_id": hex::encode(&event.job_id),
        "submission_id": event.submission_id,
        "node_address": event.node_address,
        "node_name": event.node_name,
        "worker_pid": event.worker_pid,
        "attempt": event.attempt,
        "submitted_unix_micros": event.submitted_unix_micros,
        "placed_unix_micros": event.placed_unix_micros,
        "finished_unix_micros": event.finished_unix_micros,
        "wall_ns": stats.wall_ns,
        "cpu_ns": stats.cpu_ns,
        "pulled_bytes": stats.pulled_bytes,
        "spilled_bytes": stats.spilled_bytes,
        "peak_memory_bytes": stats.peak_memory_bytes,
        "input_bytes": event.input_bytes,
        "output_bytes": event.output_bytes,
        "output_rows": event.output_rows,
        "error": event.error,
        "retried": event.retried,
    })
}

/// `GET /api/jobs/{id}/tasks`.
pub async fn tasks(State(dashboard): State<Arc<Dashboard>>, Path(id): Path<String>) -> Json<Value> {
    let events = dashboard.head.events().task_events(&id);
    Json(Value::Array(events.iter().map(task_json).collect()))
}

/// `?job=ID` (empty: every job).
#[derive(Deserialize)]
pub struct TimelineQuery {
    #[serde(default)]
    job: String,
}

/// `GET /api/timeline?job=ID`.
pub async fn timeline(
    State(dashboard): State<Arc<Dashboard>>,
    Query(query): Query<TimelineQuery>,
) -> Json<Value> {
    let events = dashboard.head.events().task_events(&query.job);
    Json(crate::events::chrome_trace(&events))
}
