//! Prometheus metrics of the head and of each node, served at `/metrics` in the text
//! exposition format (the `prometheus` crate), behind the cluster token like every service:
//! Prometheus scrapes with `authorization: {credentials_file: ~/.manta/head-<port>.token}`.
//!
//! Counters move as work happens (tasks placed and finished, bytes pulled over Flight,
//! autoscaler decisions); gauges that mirror state the head or node already keeps (nodes,
//! pending demand, store use, jobs by state, worker processes) are set from it at each scrape,
//! so they cannot drift from what `manta status` shows.
//!
//! | metric | where | what |
//! |---|---|---|
//! | `manta_tasks_total{state}` | head | tasks `submitted`, `finished`, `failed`, `retried` |
//! | `manta_task_seconds` | head | run time of finished tasks (histogram) |
//! | `manta_task_rows_total` | head | rows made by finished tasks (datasets' blocks) |
//! | `manta_task_bytes_total{direction}` | head | bytes finished tasks read (`in`) and made (`out`) |
//! | `manta_nodes{state}` | head | nodes `alive`, `draining`, `dead` |
//! | `manta_pending_tasks` | head | tasks and actors waiting for resources |
//! | `manta_object_store_bytes{kind}` | head (cluster), node | `resident`, `spilled`, `budget` |
//! | `manta_object_store_objects` | head (cluster), node | objects in the stores |
//! | `manta_object_store_spilled_bytes_total`, `..._restored_bytes_total` | head, node | since start |
//! | `manta_actor_restarts_total` | head | actor restarts after a worker or node died |
//! | `manta_autoscaler_decisions_total{decision}` | head | `launch`, `launch_failed`, `stop`, `lost` |
//! | `manta_jobs{state}` | head | submitted jobs by state |
//! | `manta_node_tasks_total{outcome}` | node | tasks run here: `ok`, `error` |
//! | `manta_node_pulled_bytes_total` | node | input bytes fetched from other nodes (Flight) |
//! | `manta_node_flight_bytes_total{direction}` | node | object bytes its Flight service sent (`out`) and stored (`in`) |
//! | `manta_node_worker_processes` | node | live worker processes |

use prometheus::{
    Encoder as _, Histogram, HistogramOpts, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts,
    Registry, TextEncoder,
};

use crate::proto;

/// `metric`, registered with `registry` (names are fixed here, so neither step can fail).
fn registered<M: prometheus::core::Collector + Clone + 'static>(
    registry: &Registry,
    metric: prometheus::Result<M>,
) -> M {
    let metric = metric.expect("valid metric");
    registry
        .register(Box::new(metric.clone()))
        .expect("registered once");
    metric
}

fn counter_vec(registry: &Registry, name: &str, help: &str, label: &str) -> IntCounterVec {
    registered(
        registry,
        IntCounterVec::new(Opts::new(name, help), &[label]),
    )
}

/// The counters of `vec` for each of `values` of its one label, looked up once: counting with
/// one is then a single atomic add, where `with_label_values` hashes and locks on every call.
fn children<const N: usize>(vec: &IntCounterVec, values: [&str; N]) -> [IntCounter; N] {
    values.map(|value| vec.with_label_values(&[value]))
}

fn gauge_vec(registry: &Registry, name: &str, help: &str, label: &str) -> IntGaugeVec {
    registered(registry, IntGaugeVec::new(Opts::new(name, help), &[label]))
}

fn gauge(registry: &Registry, name: &str, help: &str) -> IntGauge {
    registered(registry, IntGauge::new(name, help))
}

fn counter(registry: &Registry, name: &str, help: &str) -> IntCounter {
    registered(registry, IntCounter::new(name, help))
}

/// The store gauges, shared by the head (summed over its nodes) and each node.
pub struct StoreGauges {
    bytes: IntGaugeVec,
    objects: IntGauge,
    spilled_total: IntGauge,
    restored_total: IntGauge,
}

impl StoreGauges {
    fn new(registry: &Registry) -> Self {
        Self {
            bytes: gauge_vec(
                registry,
                "manta_object_store_bytes",
                "Object store bytes: resident in shared memory, spilled to disk, and the budget",
                "kind",
            ),
            objects: gauge(
                registry,
                "manta_object_store_objects",
                "Objects in the store",
            ),
            spilled_total: gauge(
                registry,
                "manta_object_store_spilled_bytes_total",
                "Bytes spilled to disk since the store started",
            ),
            restored_total: gauge(
                registry,
                "manta_object_store_restored_bytes_total",
                "Bytes restored from disk since the store started",
            ),
        }
    }

    /// Sets them to the sum of `usages`.
    pub fn set<'a>(&self, usages: impl IntoIterator<Item = &'a proto::StoreUsage>) {
        let mut sum = proto::StoreUsage::default();
        for u in usages {
            sum += u;
        }
        let bytes = |kind: &str, value: u64| {
            self.bytes.with_label_values(&[kind]).set(value as i64);
        };
        bytes("resident", sum.resident_bytes);
        bytes("spilled", sum.spilled_bytes);
        bytes("budget", sum.budget_bytes);
        self.objects.set(sum.objects as i64);
        self.spilled_total.set(sum.spilled_bytes_total as i64);
        self.restored_total.set(sum.restored_bytes_total as i64);
    }
}

/// `manta_tasks_total` by state.
pub struct TaskCounters {
    /// Tasks submitted to the head.
    pub submitted: IntCounter,
    /// Tasks that ended well.
    pub finished: IntCounter,
    /// Tasks that failed for good.
    pub failed: IntCounter,
    /// Runs that failed and were run again.
    pub retried: IntCounter,
}

/// The head's metrics (see the module doc).
pub struct HeadMetrics {
    registry: Registry,
    /// Tasks by state.
    pub tasks: TaskCounters,
    /// Run time of finished tasks.
    pub task_seconds: Histogram,
    /// Nodes by state (set at scrape).
    pub nodes: IntGaugeVec,
    /// Waiting tasks and actors (set at scrape).
    pub pending: IntGauge,
    /// The cluster's stores, summed (set at scrape).
    pub store: StoreGauges,
    /// Actor restarts.
    pub actor_restarts: IntCounter,
    /// Autoscaler decisions: `launch`, `launch_failed`, `stop`, `lost`.
    pub autoscaler: IntCounterVec,
    /// Jobs by state (set at scrape).
    pub jobs: IntGaugeVec,
    /// Rows made by finished tasks (a dataset's blocks).
    pub task_rows: IntCounter,
    /// Bytes read by finished tasks.
    pub task_bytes_in: IntCounter,
    /// Bytes made by finished tasks.
    pub task_bytes_out: IntCounter,
    /// Inline result bytes the head passed on to callers: results that did not reach their
    /// caller over a result link (see `scheduler/src/node/result_links.rs`).
    pub relayed_result_bytes: IntCounter,
    /// What the head answered the callers of finished tasks.
    pub task_answers: TaskAnswers,
}

/// What the head answered a caller when its task ended (`manta_head_task_answers_total`).
pub struct TaskAnswers {
    /// The success itself: its result did not go over a result link.
    pub result: IntCounter,
    /// The failure.
    pub failure: IntCounter,
    /// Nothing: the caller had the result over its result link already.
    pub none: IntCounter,
}

impl Default for HeadMetrics {
    fn default() -> Self {
        let registry = Registry::new();
        let task_seconds = registered(
            &registry,
            Histogram::with_opts(
                HistogramOpts::new("manta_task_seconds", "Run time of finished tasks").buckets(
                    prometheus::exponential_buckets(1e-5, 4.0, 12).expect("valid buckets"),
                ),
            ),
        );
        let tasks = counter_vec(&registry, "manta_tasks_total", "Tasks by state", "state");
        let [submitted, finished, failed, retried] =
            children(&tasks, ["submitted", "finished", "failed", "retried"]);
        let task_bytes = counter_vec(
            &registry,
            "manta_task_bytes_total",
            "Bytes finished tasks read (in) and made (out)",
            "direction",
        );
        let [task_bytes_in, task_bytes_out] = children(&task_bytes, ["in", "out"]);
        let answers = counter_vec(
            &registry,
            "manta_head_task_answers_total",
            "The head's answers to callers of finished tasks: result, failure, or none (the \
             caller had the result over its result link)",
            "answer",
        );
        let [result, failure, none] = children(&answers, ["result", "failure", "none"]);
        Self {
            task_answers: TaskAnswers {
                result,
                failure,
                none,
            },
            tasks: TaskCounters {
                submitted,
                finished,
                failed,
                retried,
            },
            task_seconds,
            task_rows: counter(
                &registry,
                "manta_task_rows_total",
                "Rows made by finished tasks",
            ),
            task_bytes_in,
            task_bytes_out,
            relayed_result_bytes: counter(
                &registry,
                "manta_head_relayed_result_bytes_total",
                "Inline task result bytes the head passed on to callers (not sent over a result link)",
            ),
            nodes: gauge_vec(&registry, "manta_nodes", "Nodes by state", "state"),
            pending: gauge(
                &registry,
                "manta_pending_tasks",
                "Tasks and actors waiting for resources",
            ),
            store: StoreGauges::new(&registry),
            actor_restarts: counter(
                &registry,
                "manta_actor_restarts_total",
                "Actor restarts after their worker or node died",
            ),
            autoscaler: counter_vec(
                &registry,
                "manta_autoscaler_decisions_total",
                "Autoscaler decisions and failures",
                "decision",
            ),
            jobs: gauge_vec(&registry, "manta_jobs", "Submitted jobs by state", "state"),
            registry,
        }
    }
}

impl HeadMetrics {
    /// The text exposition of every metric.
    pub fn encode(&self) -> Vec<u8> {
        encode(&self.registry)
    }
}

/// A node's metrics (see the module doc).
pub struct NodeMetrics {
    registry: Registry,
    /// Tasks run here that ended well.
    pub tasks_ok: IntCounter,
    /// Tasks run here that failed.
    pub tasks_error: IntCounter,
    /// Successes sent to their caller over its result link.
    pub results_direct: IntCounter,
    /// Successes sent to the head whole (no result link, or it broke).
    pub results_through_head: IntCounter,
    /// Input bytes fetched from other nodes.
    pub pulled_bytes: IntCounter,
    /// Live worker processes (set at scrape).
    pub workers: IntGauge,
    /// This node's store (set at scrape).
    pub store: StoreGauges,
    /// Bytes its Flight service sent (`out`) and stored (`in`), brought up to date at scrape.
    pub flight_bytes: IntCounterVec,
}

impl Default for NodeMetrics {
    fn default() -> Self {
        let registry = Registry::new();
        let tasks = counter_vec(
            &registry,
            "manta_node_tasks_total",
            "Tasks run on this node by outcome",
            "outcome",
        );
        let [tasks_ok, tasks_error] = children(&tasks, ["ok", "error"]);
        let results = counter_vec(
            &registry,
            "manta_node_results_total",
            "Task successes by the way they went to their caller: direct (its result link) or head",
            "path",
        );
        let [results_direct, results_through_head] = children(&results, ["direct", "head"]);
        Self {
            tasks_ok,
            tasks_error,
            results_direct,
            results_through_head,
            pulled_bytes: counter(
                &registry,
                "manta_node_pulled_bytes_total",
                "Input bytes fetched from other nodes over Flight",
            ),
            workers: gauge(
                &registry,
                "manta_node_worker_processes",
                "Live worker processes",
            ),
            store: StoreGauges::new(&registry),
            flight_bytes: counter_vec(
                &registry,
                "manta_node_flight_bytes_total",
                "Object bytes this node's Flight service sent (out, DoGet) and stored (in, DoPut)",
                "direction",
            ),
            registry,
        }
    }
}

impl NodeMetrics {
    /// Brings the Flight counters up to `traffic` (they only grow).
    pub fn set_flight(&self, traffic: &manta_flight::FlightTraffic) {
        use std::sync::atomic::Ordering::Relaxed;
        for (direction, total) in [
            ("out", traffic.served_bytes.load(Relaxed)),
            ("in", traffic.received_bytes.load(Relaxed)),
        ] {
            let counter = self.flight_bytes.with_label_values(&[direction]);
            counter.inc_by(total.saturating_sub(counter.get()));
        }
    }

    /// The text exposition of every metric.
    pub fn encode(&self) -> Vec<u8> {
        encode(&self.registry)
    }
}

fn encode(registry: &Registry) -> Vec<u8> {
    let mut text = Vec::new();
    // Encoding gathered families into a Vec cannot fail.
    let _ = TextEncoder::new().encode(&registry.gather(), &mut text);
    text
}

/// An axum router serving `/metrics` from `encode` (called at each scrape), behind `token`.
pub fn router(
    encode: impl Fn() -> Vec<u8> + Clone + Send + Sync + 'static,
    token: manta_flight::auth::Token,
) -> axum::Router {
    routes(encode).layer(axum::middleware::from_fn_with_state(
        token,
        crate::http_auth::require_token,
    ))
}

/// The `/metrics` route with no check of its own (the dashboard puts its login in front).
pub fn routes(encode: impl Fn() -> Vec<u8> + Clone + Send + Sync + 'static) -> axum::Router {
    axum::Router::new().route(
        "/metrics",
        axum::routing::get(move || {
            let encode = encode.clone();
            async move {
                (
                    [(axum::http::header::CONTENT_TYPE, prometheus::TEXT_FORMAT)],
                    encode(),
                )
            }
        }),
    )
}
