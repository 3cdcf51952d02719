//! What a tuning run found: each trial's config and reports, and the best.

use std::sync::Arc;

use arrow::array::{ArrayRef, RecordBatch, StringArray};

use crate::space::{Config, Metrics};
use crate::tuner::Mode;

/// One trial's outcome.
#[derive(Clone, Debug)]
pub struct TrialResult {
    /// Its number, in the order configs were drawn.
    pub id: usize,
    /// Its hyperparameters.
    pub config: Config,
    /// Its last report (empty if it failed before reporting).
    pub metrics: Metrics,
    /// Every report, in order (one for a function trainable).
    pub history: Vec<Metrics>,
    /// Whether the scheduler stopped it early.
    pub stopped_early: bool,
    /// Why it failed, if it did.
    pub error: Option<String>,
}

/// Every trial of a run, and the metric it was tuned for.
#[derive(Clone, Debug)]
pub struct ResultGrid {
    trials: Vec<TrialResult>,
    metric: String,
    mode: Mode,
}

impl ResultGrid {
    pub(crate) fn new(mut trials: Vec<TrialResult>, metric: String, mode: Mode) -> Self {
        trials.sort_by_key(|t| t.id);
        Self {
            trials,
            metric,
            mode,
        }
    }

    /// Every trial, by id.
    pub fn trials(&self) -> &[TrialResult] {
        &self.trials
    }

    /// The trials that failed.
    pub fn errors(&self) -> impl Iterator<Item = &TrialResult> {
        self.trials.iter().filter(|t| t.error.is_some())
    }

    /// The best trial by the run's metric and mode.
    pub fn best(&self) -> Option<&TrialResult> {
        self.best_by(&self.metric, self.mode)
    }

    /// The best trial by `metric` (its last report) in `mode`; failed trials and trials that
    /// did not report it are left out. Ties go to the lower id.
    pub fn best_by(&self, metric: &str, mode: Mode) -> Option<&TrialResult> {
        self.top_by(1, metric, mode).into_iter().next()
    }

    /// The `n` best trials by the run's metric, best first.
    pub fn top(&self, n: usize) -> Vec<&TrialResult> {
        self.top_by(n, &self.metric, self.mode)
    }

    fn top_by(&self, n: usize, metric: &str, mode: Mode) -> Vec<&TrialResult> {
        let mut ranked: Vec<(&TrialResult, f64)> = self
            .trials
            .iter()
            .filter(|t| t.error.is_none())
            .filter_map(|t| t.metrics.get(metric).map(|v| (t, *v)))
            .filter(|(_, v)| !v.is_nan())
            .collect();
        ranked.sort_by(|(a, x), (b, y)| {
            let order = match mode {
                Mode::Max => y.total_cmp(x),
                Mode::Min => x.total_cmp(y),
            };
            order.then(a.id.cmp(&b.id))
        });
        ranked.into_iter().take(n).map(|(t, _)| t).collect()
    }

    /// The `n` best trials as a table: id, each hyperparameter, the metric, iterations.
    pub fn table(&self, n: usize) -> String {
        let top = self.top(n);
        let Some(first) = top.first() else {
            return "no trial finished".into();
        };
        let params: Vec<&String> = first.config.values().keys().collect();
        let mut columns: Vec<(String, ArrayRef)> = Vec::new();
        let text = |f: &dyn Fn(&TrialResult) -> String| -> ArrayRef {
            Arc::new(StringArray::from_iter_values(top.iter().map(|t| f(t))))
        };
        columns.push(("trial".into(), text(&|t| t.id.to_string())));
        for param in params {
            let column = text(&|t| {
                t.config
                    .values()
                    .get(param.as_str())
                    .map(|v| v.to_string())
                    .unwrap_or_default()
            });
            columns.push((param.clone(), column));
        }
        let metric = self.metric.clone();
        columns.push((
            metric.clone(),
            text(&|t| format!("{:.4}", t.metrics.get(&metric).copied().unwrap_or(f64::NAN))),
        ));
        columns.push(("iterations".into(), text(&|t| t.history.len().to_string())));
        RecordBatch::try_from_iter(columns)
            .and_then(|batch| arrow::util::pretty::pretty_format_batches(&[batch]))
            .map(|table| table.to_string())
            .unwrap_or_else(|e| format!("could not format the table: {e}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::space::metrics;

    fn trial(id: usize, accuracy: Option<f64>, error: bool) -> TrialResult {
        let mut config = Config::default();
        config.insert("depth", id);
        let metrics = accuracy
            .map(|a| metrics([("accuracy", a)]))
            .unwrap_or_default();
        TrialResult {
            id,
            config,
            history: vec![metrics.clone()],
            metrics,
            stopped_early: false,
            error: error.then(|| "boom".to_string()),
        }
    }

    #[test]
    fn best_ranks_by_metric_and_mode_skipping_failures() {
        let grid = ResultGrid::new(
            vec![
                trial(2, Some(0.9), false),
                trial(0, Some(0.7), false),
                trial(1, Some(0.99), true),
                trial(3, Some(0.9), false),
                trial(4, None, false),
            ],
            "accuracy".into(),
            Mode::Max,
        );
        assert_eq!(grid.best().unwrap().id, 2);
        assert_eq!(grid.best_by("accuracy", Mode::Min).unwrap().id, 0);
        let top: Vec<usize> = grid.top(3).iter().map(|t| t.id).collect();
        assert_eq!(top, [2, 3, 0]);
        assert_eq!(grid.errors().count(), 1);
        let table = grid.table(2);
        assert!(
            table.contains("accuracy") && table.contains("0.9000"),
            "{table}"
        );
        assert!(grid.best_by("loss", Mode::Min).is_none());
    }
}
