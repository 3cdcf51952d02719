//! The driver's stall watchdog: when tasks are in flight and none has finished for the stall
//! timeout (`MANTA_STALL_TIMEOUT`, in seconds, default [`DEFAULT_STALL_TIMEOUT`]; 0 turns it
//! off), the driver asks the head why (`ExplainJob`, [`crate::head::Head::explain_stall`])
//! and prints the answer: which stages have blocks pending, what their waiting tasks wait for,
//! which tasks run far longer than their peers. It says so again after each further timeout
//! without progress, so a stuck pipeline explains itself in seconds rather than hanging.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use manta_engine::JobId;
use manta_flight::auth::AuthChannel;
use parking_lot::Mutex;

use crate::proto;
use crate::proto::head_client::HeadClient;

/// The stall timeout unless `MANTA_STALL_TIMEOUT` says otherwise.
pub const DEFAULT_STALL_TIMEOUT: Duration = Duration::from_secs(30);

/// How long the head may take to explain.
const EXPLAIN_DEADLINE: Duration = Duration::from_secs(10);

/// Tasks in flight and the last time one ended.
pub struct StallWatch {
    in_flight: AtomicU64,
    /// When a task last ended (or the first of a busy spell started).
    last_progress: Mutex<Instant>,
    timeout: Duration,
}

impl StallWatch {
    /// A watch with the timeout `MANTA_STALL_TIMEOUT` sets (seconds; 0: never).
    pub fn from_env() -> Arc<Self> {
        let timeout = std::env::var("MANTA_STALL_TIMEOUT")
            .ok()
            .and_then(|v| v.trim().parse::<f64>().ok())
            .filter(|s| s.is_finite() && *s >= 0.0)
            .map_or(DEFAULT_STALL_TIMEOUT, Duration::from_secs_f64);
        Self::new(timeout)
    }

    /// A watch with `timeout` (zero: never).
    pub fn new(timeout: Duration) -> Arc<Self> {
        Arc::new(Self {
            in_flight: AtomicU64::new(0),
            last_progress: Mutex::new(Instant::now()),
            timeout,
        })
    }

    /// A task was submitted.
    pub fn started(&self) {
        if self.in_flight.fetch_add(1, Ordering::Relaxed) == 0 {
            // Idle time before this task is no stall.
            *self.last_progress.lock() = Instant::now();
        }
    }

    /// A task ended (whichever way).
    pub fn ended(&self) {
        *self.last_progress.lock() = Instant::now();
        self.in_flight.fetch_sub(1, Ordering::Relaxed);
    }

    /// How many tasks are in flight and how long since one ended; `None` if none is.
    pub fn stalled_for(&self) -> Option<(u64, Duration)> {
        let in_flight = self.in_flight.load(Ordering::Relaxed);
        (in_flight > 0).then(|| (in_flight, self.last_progress.lock().elapsed()))
    }

    /// Watches until the watch is dropped: after each `timeout` with tasks in flight and none
    /// ending, asks the head about `job` and prints what it says.
    pub async fn watch(watch: Weak<Self>, mut head: HeadClient<AuthChannel>, job: JobId) {
        let Some(timeout) = watch.upgrade().map(|w| w.timeout) else {
            return;
        };
        if timeout.is_zero() {
            return;
        }
        let mut ticks = tokio::time::interval(
            (timeout / 4).clamp(Duration::from_millis(50), Duration::from_secs(1)),
        );
        let mut warned_at: Option<Instant> = None;
        loop {
            ticks.tick().await;
            let Some(watch) = watch.upgrade() else { return };
            let Some((in_flight, stalled)) = watch.stalled_for() else {
                warned_at = None;
                continue;
            };
            drop(watch);
            let due = stalled >= timeout && warned_at.is_none_or(|at| at.elapsed() >= timeout);
            if !due {
                continue;
            }
            warned_at = Some(Instant::now());
            let request = proto::ExplainJobRequest {
                job: job.to_string(),
            };
            let lines =
                match tokio::time::timeout(EXPLAIN_DEADLINE, head.explain_job(request)).await {
                    Ok(Ok(reply)) => reply.into_inner().lines,
                    Ok(Err(status)) => vec![format!(
                        "(the head could not say why: {})",
                        status.message()
                    )],
                    Err(_) => vec![format!(
                        "(the head did not say why within {} s)",
                        EXPLAIN_DEADLINE.as_secs()
                    )],
                };
            let report = format!(
                "manta: no task of this job has finished for {:.0} s ({in_flight} in flight); \
                 waiting on:\n{}",
                stalled.as_secs_f64(),
                lines
                    .iter()
                    .map(|l| format!("  - {l}"))
                    .collect::<Vec<_>>()
                    .join("\n")
            );
            tracing::debug!("{report}");
            eprintln!("{report}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_in_flight_and_idle_time_is_no_stall() {
        let watch = StallWatch::new(Duration::from_secs(1));
        assert!(watch.stalled_for().is_none());
        watch.started();
        watch.started();
        assert_eq!(watch.stalled_for().unwrap().0, 2);
        watch.ended();
        watch.ended();
        assert!(watch.stalled_for().is_none());
        *watch.last_progress.lock() = Instant::now() - Duration::from_secs(100);
        watch.started();
        assert!(watch.stalled_for().unwrap().1 < Duration::from_secs(100));
    }
}
