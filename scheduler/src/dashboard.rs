//! The web dashboard the head serves on `--dashboard-port` (8265 by default, as Ray's): what
//! every node, job, stage and actor is doing, updated live.
//!
//! ```text
//!  browser ──/login (token or one-time ticket)──▶ session cookie
//!     │ GET /, /nodes, /jobs, /jobs/{id}, /actors, /objects, /events   (HTML, rendered here)
//!     │   every 2 s: the same page with ?fragment=1, swapped into <main>
//!  scripts, CLI ── Authorization: Bearer <token> ──▶ /api/… (JSON), /metrics (Prometheus)
//!
//!  head state ──────────────┐  nodes, pending demand, autoscaler, actors: read at each request
//!  Events ──────────────────┤  stage progress, task events, cluster events ([`crate::events`])
//!  History (sampled / 2 s) ─┘  each node's CPU, memory, store and spilled bytes over time
//! ```
//!
//! Pages are server-rendered HTML ([`pages`]) with one small script (no JavaScript toolchain,
//! nothing fetched from elsewhere); each is backed by the JSON API ([`api`]). Everything but
//! the login form needs the cluster token or a session ([`login`]).

pub mod api;
pub mod history;
pub mod html;
pub mod login;
pub mod pages;

use std::sync::Arc;

use axum::Router;
use axum::routing::{get, post};
use parking_lot::Mutex;
use tokio_util::sync::CancellationToken;

use crate::head::Head;

/// The default dashboard port (Ray's).
pub const DEFAULT_PORT: u16 = 8265;

/// What the dashboard's handlers share.
pub struct Dashboard {
    head: Arc<Head>,
    /// Where browsers reach it, e.g. `http://10.0.0.1:8265`.
    url: String,
    history: Mutex<history::History>,
    sessions: login::Secrets,
    tickets: login::Secrets,
}

impl Dashboard {
    /// A dashboard of `head`, reached at `url` (e.g. `http://10.0.0.1:8265`).
    pub fn new(head: Arc<Head>, url: String) -> Arc<Self> {
        Arc::new(Self {
            head,
            url,
            history: Mutex::default(),
            sessions: login::Secrets::default(),
            tickets: login::Secrets::default(),
        })
    }

    /// A one-time link that signs a browser in and opens `next` (a path of the dashboard).
    pub fn login_link(&self, next: &str) -> String {
        let ticket = self.tickets.make(login::TICKET_LIFETIME);
        format!(
            "{}/login?ticket={ticket}&next={}",
            self.url,
            html::url_segment(&login::safe_next(Some(next)))
        )
    }

    /// Samples the nodes every [`history::SAMPLE_EVERY`] until `stop`.
    pub async fn sample(self: Arc<Self>, stop: CancellationToken) {
        let mut ticks = tokio::time::interval(history::SAMPLE_EVERY);
        loop {
            tokio::select! {
                _ = ticks.tick() => {}
                _ = stop.cancelled() => return,
            }
            let nodes = self.head.node_infos();
            let now = crate::events::now_millis();
            self.history.lock().record(&nodes, now);
        }
    }

    /// Every route: the pages, the JSON API, the jobs API and `/metrics` behind the login;
    /// the login routes in front of it.
    pub fn router(self: &Arc<Self>) -> Router {
        let head = Arc::downgrade(&self.head);
        let metrics = move || {
            head.upgrade()
                .map(|h| h.encode_metrics())
                .unwrap_or_default()
        };
        let guarded = Router::new()
            .route("/", get(pages::overview))
            .route("/nodes", get(pages::nodes))
            .route("/jobs", get(pages::jobs))
            .route("/jobs/{id}", get(pages::job))
            .route("/actors", get(pages::actors))
            .route("/objects", get(pages::objects))
            .route("/events", get(pages::events))
            .route("/api/cluster", get(api::cluster))
            .route("/api/nodes", get(api::nodes))
            .route("/api/actors", get(api::actors))
            .route("/api/objects", get(api::objects))
            .route("/api/events", get(api::events))
            .route("/api/jobs/{id}/stages", get(api::stages))
            .route("/api/jobs/{id}/tasks", get(api::tasks))
            .route("/api/jobs/{id}/waiting", get(api::waiting))
            .route("/api/timeline", get(api::timeline))
            .route("/api/login-ticket", post(login::ticket))
            .with_state(Arc::clone(self))
            .merge(crate::jobs::http::routes(Arc::clone(self.head.jobs())))
            .merge(crate::metrics::routes(metrics))
            .layer(axum::middleware::from_fn_with_state(
                Arc::clone(self),
                login::require_login,
            ));
        Router::new()
            .route("/login", get(login::login_page).post(login::login))
            .route("/logout", get(login::logout))
            .with_state(Arc::clone(self))
            .merge(guarded)
    }
}
