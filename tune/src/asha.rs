//! ASHA: asynchronous successive halving (Li et al., 2018), the scheduler Ray Tune uses to stop
//! poor trials early.
//!
//! # How it works
//!
//! Rungs sit at `grace_period * reduction_factor^k` iterations, below `max_t`. When a trial
//! reaches a rung, its metric joins the values recorded there; if it falls below the
//! `1 - 1/reduction_factor` quantile of them (the top `1/reduction_factor` go on), the trial
//! stops. Nothing waits for other trials (hence *asynchronous*): early trials compare against
//! fewer values, which is the price of never leaving a CPU idle.

use crate::tuner::Mode;

/// The ASHA settings (Ray's `ASHAScheduler`).
#[derive(Clone, Debug)]
pub struct Asha {
    /// Iterations every trial runs before it can be stopped.
    pub grace_period: u64,
    /// Keep the top `1 / reduction_factor` at each rung.
    pub reduction_factor: f64,
    /// Iterations a trial runs at most.
    pub max_t: u64,
}

impl Default for Asha {
    fn default() -> Self {
        Self {
            grace_period: 1,
            reduction_factor: 4.0,
            max_t: 100,
        }
    }
}

/// What the scheduler says after a report.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Decision {
    /// Run the next iteration.
    Continue,
    /// Stop the trial.
    Stop,
}

/// The values recorded at each rung, as a run goes.
#[derive(Debug)]
pub(crate) struct AshaState {
    settings: Asha,
    mode: Mode,
    /// (milestone, the trials recorded there with their values), highest milestone first.
    rungs: Vec<(u64, Vec<(usize, f64)>)>,
}

impl AshaState {
    pub(crate) fn new(settings: Asha, mode: Mode) -> Self {
        let factor = settings.reduction_factor.max(1.01);
        let mut milestones = Vec::new();
        let mut milestone = settings.grace_period.max(1) as f64;
        while (milestone as u64) < settings.max_t {
            milestones.push(milestone as u64);
            milestone *= factor;
        }
        milestones.dedup();
        let rungs = milestones
            .into_iter()
            .rev()
            .map(|m| (m, Vec::new()))
            .collect();
        Self {
            settings,
            mode,
            rungs,
        }
    }

    /// Records `trial`'s metric after `iteration` iterations; whether it goes on.
    pub(crate) fn on_result(&mut self, trial: usize, iteration: u64, value: f64) -> Decision {
        if iteration >= self.settings.max_t {
            return Decision::Stop;
        }
        // Higher is better inside; a minimised metric is negated.
        let value = match self.mode {
            Mode::Max => value,
            Mode::Min => -value,
        };
        let keep = 1.0 / self.settings.reduction_factor.max(1.01);
        for (milestone, recorded) in &mut self.rungs {
            if iteration < *milestone || recorded.iter().any(|(t, _)| *t == trial) {
                continue;
            }
            let values: Vec<f64> = recorded.iter().map(|(_, v)| *v).collect();
            let cutoff = quantile(values, 1.0 - keep);
            recorded.push((trial, value));
            return match cutoff {
                Some(cutoff) if value < cutoff => Decision::Stop,
                _ => Decision::Continue,
            };
        }
        Decision::Continue
    }
}

/// The `q` quantile of `values` with linear interpolation (numpy's default); `None` if empty.
/// NaNs are ignored.
fn quantile(mut values: Vec<f64>, q: f64) -> Option<f64> {
    values.retain(|v| !v.is_nan());
    if values.is_empty() {
        return None;
    }
    values.sort_by(f64::total_cmp);
    let rank = q.clamp(0.0, 1.0) * (values.len() - 1) as f64;
    let (below, above) = (rank.floor() as usize, rank.ceil() as usize);
    Some(values[below] + (values[above] - values[below]) * (rank - below as f64))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantiles_match_numpy() {
        // numpy.percentile([1, 2, 3, 4], 75) == 3.25
        assert_eq!(quantile(vec![4.0, 1.0, 3.0, 2.0], 0.75), Some(3.25));
        assert_eq!(quantile(vec![5.0], 0.5), Some(5.0));
        assert_eq!(quantile(vec![f64::NAN], 0.5), None);
    }

    #[test]
    fn trials_below_the_rung_quantile_stop() {
        let settings = Asha {
            grace_period: 1,
            reduction_factor: 2.0,
            max_t: 8,
        };
        let mut asha = AshaState::new(settings, Mode::Max);
        let milestones: Vec<u64> = asha.rungs.iter().map(|(m, _)| *m).collect();
        assert_eq!(milestones, [4, 2, 1]);
        // Rung 1: the first trial sets the bar; a worse one stops, a better one goes on.
        assert_eq!(asha.on_result(0, 1, 0.5), Decision::Continue);
        assert_eq!(asha.on_result(1, 1, 0.4), Decision::Stop);
        assert_eq!(asha.on_result(2, 1, 0.9), Decision::Continue);
        // Between rungs nothing is decided.
        assert_eq!(asha.on_result(2, 1, 0.1), Decision::Continue);
        assert_eq!(asha.on_result(0, 2, 0.6), Decision::Continue);
        assert_eq!(asha.on_result(2, 3, 0.95), Decision::Continue);
        // max_t ends every trial.
        assert_eq!(asha.on_result(2, 8, 0.99), Decision::Stop);

        // Minimising: lower is better.
        let mut asha = AshaState::new(Asha::default(), Mode::Min);
        assert_eq!(asha.on_result(0, 1, 1.0), Decision::Continue);
        assert_eq!(asha.on_result(1, 1, 2.0), Decision::Stop);
        assert_eq!(asha.on_result(2, 1, 0.5), Decision::Continue);
    }
}
