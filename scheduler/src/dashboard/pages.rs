//! The dashboard's pages, rendered on the server from what the head knows now (and the
//! sampled history): overview, nodes, jobs, one job, actors, objects, events. Each answers
//! the whole page, or with `?fragment=1` only its `<main>` (what the live-update script
//! fetches every 2 s).

use std::sync::Arc;

use axum::extract::{Path, Query, State};
use axum::response::{Html, IntoResponse, Response};
use manta_engine::human_bytes;
use serde::Deserialize;

use super::html::{self, ago, card, duration_ms, escape, link, progress, sparkline, table};
use super::{Dashboard, api};
use crate::events::{JobProgress, StageProgress, now_micros, now_millis};
use crate::jobs::http::state_name;
use crate::proto;

/// How much of a job's log its page shows (its end).
const LOG_TAIL_BYTES: u64 = 16 << 10;

/// How many cluster events the overview shows.
const RECENT_EVENTS: usize = 12;

/// `?fragment=1`: only the page's `<main>`.
#[derive(Deserialize)]
pub struct PageQuery {
    fragment: Option<u8>,
}

fn respond(query: &PageQuery, title: &str, body: String) -> Response {
    if query.fragment.is_some() {
        Html(body).into_response()
    } else {
        Html(html::page(title, &body)).into_response()
    }
}

fn node_title(node: &proto::NodeInfo) -> String {
    if node.name.is_empty() {
        node.address.trim_start_matches("http://").to_string()
    } else {
        format!(
            "{} ({})",
            node.name,
            node.address.trim_start_matches("http://")
        )
    }
}

fn state_cell(state: &str) -> String {
    let class = match state {
        "ALIVE" | "RUNNING" | "SUCCEEDED" | "FINISHED" => "ok",
        "DEAD" | "FAILED" => "bad",
        _ => "warn",
    };
    format!("<span class={class}>{}</span>", escape(state))
}

fn nodes_table(dashboard: &Dashboard, nodes: &[proto::NodeInfo]) -> String {
    let history = dashboard.history.lock();
    let rows: Vec<Vec<String>> = nodes
        .iter()
        .map(|n| {
            let total = n.total.clone().unwrap_or_default();
            let available = n.available.clone().unwrap_or_default();
            let store = n.store.unwrap_or_default();
            let samples = history.of(&n.address);
            let cpu: Vec<f64> = samples.iter().map(|s| s.cpus_used).collect();
            let bytes: Vec<f64> = samples.iter().map(|s| s.store_bytes as f64).collect();
            vec![
                escape(&node_title(n)),
                state_cell(api::node_state(n)),
                format!(
                    "{:.1} / {:.1}",
                    (total.cpus - available.cpus).max(0.0),
                    total.cpus
                ),
                sparkline(&cpu, Some(total.cpus), "CPUs in use, last 10 min"),
                format!(
                    "{} / {}",
                    human_bytes(total.memory_bytes.saturating_sub(available.memory_bytes)),
                    human_bytes(total.memory_bytes)
                ),
                format!(
                    "{} / {}",
                    human_bytes(store.resident_bytes),
                    human_bytes(store.budget_bytes)
                ),
                sparkline(
                    &bytes,
                    Some(store.budget_bytes as f64),
                    "object store bytes, last 10 min",
                ),
                human_bytes(store.spilled_bytes),
                n.running_tasks.to_string(),
                if n.alive {
                    format!("{} ms", n.millis_since_heartbeat)
                } else {
                    format!("{} ago", duration_ms(n.millis_since_heartbeat))
                },
                n.pid.to_string(),
            ]
        })
        .collect();
    table(
        &[
            "node",
            "state",
            "#CPUs used",
            "CPU",
            "#memory used",
            "#object store",
            "store",
            "#spilled",
            "#tasks",
            "#heartbeat",
            "#pid",
        ],
        &rows,
    )
}

fn jobs_table(jobs: &[proto::JobInfo]) -> String {
    let now = now_millis();
    let rows: Vec<Vec<String>> = jobs
        .iter()
        .rev()
        .map(|j| {
            let end = if j.ended_unix_millis > 0 {
                j.ended_unix_millis
            } else {
                now
            };
            vec![
                link(
                    &format!("/jobs/{}", html::url_segment(&j.job_id)),
                    &j.job_id,
                ),
                state_cell(state_name(j.state)),
                format!("<code>{}</code>", escape(&j.entrypoint)),
                ago(j.submitted_unix_millis, now),
                duration_ms(end.saturating_sub(j.submitted_unix_millis)),
                escape(&j.message),
            ]
        })
        .collect();
    table(
        &[
            "job",
            "state",
            "entrypoint",
            "submitted",
            "#took",
            "message",
        ],
        &rows,
    )
}

fn events_table(events: &[crate::events::ClusterEvent]) -> String {
    let now = now_millis();
    let rows: Vec<Vec<String>> = events
        .iter()
        .rev()
        .map(|e| {
            vec![
                ago(e.unix_millis, now),
                escape(&serde_json::to_value(e.kind).map_or(String::new(), |k| {
                    k.as_str().unwrap_or_default().replace('_', " ")
                })),
                escape(&e.message),
            ]
        })
        .collect();
    table(&["when", "kind", "what"], &rows)
}

fn pending_table(pending: &[proto::PendingDemand]) -> String {
    let rows: Vec<Vec<String>> = pending
        .iter()
        .map(|d| {
            let r = d.demand.clone().unwrap_or_default();
            vec![
                escape(&d.label),
                d.count.to_string(),
                format!("{} CPU, {}", r.cpus, human_bytes(r.memory_bytes)),
                duration_ms(d.waited_millis),
                if d.fits_no_live_node {
                    "<span class=bad>no live node offers it</span>".into()
                } else {
                    "nodes busy".into()
                },
            ]
        })
        .collect();
    table(
        &["oldest waiting", "#count", "demand", "#waited", "why"],
        &rows,
    )
}

fn autoscaler_section(status: Option<proto::AutoscalerStatus>) -> String {
    let Some(status) = status else {
        return String::new();
    };
    let types: Vec<Vec<String>> = status
        .node_types
        .iter()
        .map(|t| {
            vec![
                escape(&t.name),
                t.running.to_string(),
                t.launching.to_string(),
                format!("{}–{}", t.min_nodes, t.max_nodes),
                t.failed_launches.to_string(),
            ]
        })
        .collect();
    let events: Vec<Vec<String>> = status
        .events
        .iter()
        .rev()
        .map(|e| {
            vec![
                format!("{} ago", duration_ms(e.millis_ago)),
                escape(&e.message),
            ]
        })
        .collect();
    format!(
        "<h2>Autoscaler</h2>{}{}",
        table(
            &[
                "node type",
                "#running",
                "#launching",
                "#min–max",
                "#failed launches"
            ],
            &types
        ),
        table(&["when", "decision"], &events)
    )
}

/// `GET /`.
pub async fn overview(
    State(dashboard): State<Arc<Dashboard>>,
    Query(query): Query<PageQuery>,
) -> Response {
    let head = &dashboard.head;
    let nodes = head.node_infos();
    let totals = api::totals(&nodes);
    let (cpus, store) = (totals.cpus, &totals.store);
    let pending = head.pending_demand();
    let jobs = head.jobs().list();
    let history = dashboard.history.lock().cluster();
    let series = |f: &dyn Fn(&super::history::Sample) -> f64| -> Vec<f64> {
        history.iter().map(f).collect()
    };
    let mut events = head.events().cluster_events();
    let recent = events.split_off(events.len().saturating_sub(RECENT_EVENTS));
    let body = format!(
        "<h1>Cluster</h1><div class=cards>{}{}{}{}{}{}</div>\
         <h2>Over the last 10 minutes</h2><table><tr><th>CPUs in use</th><th>object store</th>\
         <th>spilled</th><th>tasks running</th></tr><tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr></table>\
         <h2>Nodes</h2>{}<h2>Jobs</h2>{}<h2>Pending demand</h2>{}{}<h2>Recent events</h2>{}",
        card(
            &format!("{} / {}", totals.alive, nodes.len()),
            "nodes alive / known"
        ),
        card(
            &format!("{:.1} / {cpus:.1}", totals.cpus_used),
            "CPUs in use"
        ),
        card(
            &format!(
                "{} / {}",
                human_bytes(store.resident_bytes),
                human_bytes(store.budget_bytes)
            ),
            "object store"
        ),
        card(&human_bytes(store.spilled_bytes), "spilled to disk"),
        card(&totals.running_tasks.to_string(), "tasks running"),
        card(
            &pending.iter().map(|d| d.count).sum::<u64>().to_string(),
            "tasks and actors waiting"
        ),
        sparkline(&series(&|s| s.cpus_used), Some(cpus), "CPUs in use"),
        sparkline(
            &series(&|s| s.store_bytes as f64),
            Some(store.budget_bytes as f64),
            "object store bytes"
        ),
        sparkline(&series(&|s| s.spilled_bytes as f64), None, "spilled bytes"),
        sparkline(&series(&|s| s.running_tasks as f64), None, "tasks running"),
        nodes_table(&dashboard, &nodes),
        jobs_table(&jobs),
        pending_table(&pending),
        autoscaler_section(head.autoscaler_status()),
        events_table(&recent),
    );
    respond(&query, "overview", body)
}

/// `GET /nodes`.
pub async fn nodes(
    State(dashboard): State<Arc<Dashboard>>,
    Query(query): Query<PageQuery>,
) -> Response {
    let nodes = dashboard.head.node_infos();
    let body = format!(
        "<h1>Nodes</h1>{}<h2>Pending demand</h2>{}",
        nodes_table(&dashboard, &nodes),
        pending_table(&dashboard.head.pending_demand())
    );
    respond(&query, "nodes", body)
}

/// The jobs a job page or list shows: drivers that were not submitted as jobs are listed by
/// their driver job id.
fn driver_jobs_table(jobs: &[JobProgress]) -> String {
    let rows: Vec<Vec<String>> = jobs
        .iter()
        .rev()
        .filter(|p| p.submission_id.is_empty() && !p.stages.is_empty())
        .map(|p| {
            let submitted: u64 = p.stages.iter().map(|s| s.submitted).sum();
            let finished: u64 = p.stages.iter().map(|s| s.finished).sum();
            vec![
                link(
                    &format!("/jobs/{}", html::url_segment(&p.job_id)),
                    &p.job_id,
                ),
                p.stages.len().to_string(),
                progress(finished, submitted),
            ]
        })
        .collect();
    table(&["driver job", "#stages", "tasks done"], &rows)
}

/// `GET /jobs`.
pub async fn jobs(
    State(dashboard): State<Arc<Dashboard>>,
    Query(query): Query<PageQuery>,
) -> Response {
    let head = &dashboard.head;
    let body = format!(
        "<h1>Jobs</h1>{}<h2>Drivers started by hand</h2>{}",
        jobs_table(&head.jobs().list()),
        driver_jobs_table(&head.events().progress(""))
    );
    respond(&query, "jobs", body)
}

fn stage_row(stage: &StageProgress) -> Vec<String> {
    let took_ms = if stage.first_placed_unix_micros == 0 {
        0
    } else {
        let end = if stage.running > 0 || stage.last_ended_unix_micros == 0 {
            now_micros()
        } else {
            stage.last_ended_unix_micros
        };
        end.saturating_sub(stage.first_placed_unix_micros) / 1000
    };
    let waiting = stage
        .submitted
        .saturating_sub(stage.finished + stage.failed + stage.cancelled + stage.running);
    vec![
        escape(&stage.stage),
        progress(stage.finished, stage.submitted),
        waiting.to_string(),
        stage.running.to_string(),
        stage.finished.to_string(),
        if stage.failed > 0 {
            format!("<span class=bad>{}</span>", stage.failed)
        } else {
            "0".into()
        },
        stage.retried.to_string(),
        stage.rows_out.to_string(),
        human_bytes(stage.bytes_in),
        human_bytes(stage.bytes_out),
        human_bytes(stage.spilled_bytes),
        if stage.peak_memory_bytes == 0 {
            "-".into()
        } else {
            human_bytes(stage.peak_memory_bytes)
        },
        duration_ms(took_ms),
        duration_ms(stage.cpu_ns / 1_000_000),
    ]
}

/// The stages table of `progress` (one driver's stages after another's).
pub fn stages_table(progress: &[JobProgress]) -> String {
    let rows: Vec<Vec<String>> = progress
        .iter()
        .flat_map(|p| p.stages.iter().map(stage_row))
        .collect();
    table(
        &[
            "stage",
            "progress",
            "#waiting",
            "#running",
            "#finished",
            "#failed",
            "#retried",
            "#rows out",
            "#bytes in",
            "#bytes out",
            "#spilled",
            "#peak task memory",
            "#time",
            "#task CPU",
        ],
        &rows,
    )
}

/// The end of job `id`'s log, as text.
async fn log_tail(dashboard: &Dashboard, id: &str, log_bytes: u64) -> String {
    let from = log_bytes.saturating_sub(LOG_TAIL_BYTES);
    let Ok(stream) = dashboard.head.jobs().logs(id, from, false) else {
        return String::new();
    };
    let mut text = Vec::new();
    let mut stream = std::pin::pin!(stream);
    while let Some(Ok(chunk)) = futures::StreamExt::next(&mut stream).await {
        text.extend_from_slice(&chunk);
    }
    String::from_utf8_lossy(&text).into_owned()
}

/// `GET /jobs/{id}`: a submitted job (state, log tail, stages, tasks) or a driver's job.
pub async fn job(
    State(dashboard): State<Arc<Dashboard>>,
    Path(id): Path<String>,
    Query(query): Query<PageQuery>,
) -> Response {
    let head = &dashboard.head;
    let progress = head.events().progress(&id);
    let stages = progress.iter().flat_map(|p| &p.stages);
    let (mut waiting, mut running, mut finished, mut failed) = (0, 0, 0, 0);
    for s in stages {
        running += s.running;
        finished += s.finished;
        failed += s.failed;
        waiting += s
            .submitted
            .saturating_sub(s.finished + s.failed + s.cancelled + s.running);
    }
    let tasks = format!(
        "<div class=cards>{}{}{}{}</div>",
        card(&waiting.to_string(), "tasks waiting"),
        card(&running.to_string(), "tasks running"),
        card(&finished.to_string(), "tasks finished"),
        card(&failed.to_string(), "tasks failed"),
    );
    let now = now_millis();
    let (title, about, log) = match head.jobs().get(&id) {
        Ok(info) => {
            let end = if info.ended_unix_millis > 0 {
                info.ended_unix_millis
            } else {
                now
            };
            let about = format!(
                "<div class=cards>{}{}{}</div><p>Entrypoint: <code>{}</code></p>{}",
                card(state_name(info.state), "state"),
                card(&ago(info.submitted_unix_millis, now), "submitted"),
                card(
                    &duration_ms(end.saturating_sub(info.submitted_unix_millis)),
                    "took"
                ),
                escape(&info.entrypoint),
                if info.message.is_empty() {
                    String::new()
                } else {
                    format!("<p class=bad>{}</p>", escape(&info.message))
                },
            );
            let log = log_tail(&dashboard, &id, info.log_bytes).await;
            let log = format!(
                "<h2>Log (its last {})</h2><pre>{}</pre>",
                human_bytes(LOG_TAIL_BYTES),
                escape(&log)
            );
            (format!("Job {id}"), about, log)
        }
        Err(_) if !progress.is_empty() => {
            (format!("Driver job {id}"), String::new(), String::new())
        }
        Err(_) => {
            let body = format!(
                "<h1>No job {}</h1><p>The head knows no such job.</p>",
                escape(&id)
            );
            return (
                axum::http::StatusCode::NOT_FOUND,
                respond(&query, "no such job", body),
            )
                .into_response();
        }
    };
    let waiting = head.explain_stall(&id);
    let waiting = if waiting.is_empty() {
        String::new()
    } else {
        let items: String = waiting
            .iter()
            .map(|l| format!("<li>{}</li>", escape(l)))
            .collect();
        format!("<h2>Waiting on</h2><ul class=waiting>{items}</ul>")
    };
    let body = format!(
        "<h1>{}</h1>{about}<h2>Tasks</h2>{tasks}{waiting}<h2>Stages</h2>{}\
         <p class=muted>A timeline of its tasks: <code>manta timeline --job {}</code> (or \
         <a href='/api/timeline?job={}'>its Chrome trace</a>, for Perfetto).</p>{log}",
        escape(&title),
        stages_table(&progress),
        escape(&id),
        html::url_segment(&id),
    );
    respond(&query, &title, body)
}

/// `GET /actors`.
pub async fn actors(
    State(dashboard): State<Arc<Dashboard>>,
    Query(query): Query<PageQuery>,
) -> Response {
    let rows: Vec<Vec<String>> = dashboard
        .head
        .actor_summaries()
        .iter()
        .map(|a| {
            vec![
                format!("<code>{}</code>", escape(&a.actor_id)),
                escape(&a.name),
                state_cell(a.state),
                escape(a.address.trim_start_matches("http://")),
                a.restarts.to_string(),
                format!("<code>{}</code>", escape(&a.job_id)),
                escape(&a.death),
            ]
        })
        .collect();
    let body = format!(
        "<h1>Actors</h1>{}",
        table(
            &[
                "actor",
                "name",
                "state",
                "node",
                "#restarts",
                "driver job",
                "why it died"
            ],
            &rows
        )
    );
    respond(&query, "actors", body)
}

/// `GET /objects`.
pub async fn objects(
    State(dashboard): State<Arc<Dashboard>>,
    Query(query): Query<PageQuery>,
) -> Response {
    let nodes = dashboard.head.node_infos();
    let row = |name: String, s: &proto::StoreUsage| {
        vec![
            name,
            s.objects.to_string(),
            human_bytes(s.resident_bytes),
            human_bytes(s.budget_bytes),
            human_bytes(s.spilled_bytes),
            human_bytes(s.spilled_bytes_total),
            human_bytes(s.restored_bytes_total),
        ]
    };
    let mut rows: Vec<Vec<String>> = nodes
        .iter()
        .filter(|n| n.alive)
        .map(|n| row(escape(&node_title(n)), &n.store.unwrap_or_default()))
        .collect();
    rows.push(row("<b>all nodes</b>".into(), &api::store_total(&nodes)));
    let body = format!(
        "<h1>Objects</h1>{}",
        table(
            &[
                "node",
                "#objects",
                "#in memory",
                "#budget",
                "#spilled now",
                "#spilled since start",
                "#restored since start"
            ],
            &rows
        )
    );
    respond(&query, "objects", body)
}

/// `GET /events`.
pub async fn events(
    State(dashboard): State<Arc<Dashboard>>,
    Query(query): Query<PageQuery>,
) -> Response {
    let body = format!(
        "<h1>Cluster events</h1>{}",
        events_table(&dashboard.head.events().cluster_events())
    );
    respond(&query, "events", body)
}
