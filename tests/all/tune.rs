//! Tune in embedded mode: grid and random search over task and actor trainables, failures,
//! concurrency limits and ASHA; each trial's report checked against the objective computed
//! here.

use std::sync::atomic::{AtomicUsize, Ordering};

use crate::common;

use common::trainables::{Climber, grid, objective, quadratic};
use manta::tune::{
    self, Asha, Config, Metrics, Mode, SearchSpace, TuneConfig, TuneError, Tuner, choice,
    grid_search, loguniform, randint, uniform,
};
use manta::{Config as MantaConfig, Context};

static RUNNING: AtomicUsize = AtomicUsize::new(0);
static MOST_AT_ONCE: AtomicUsize = AtomicUsize::new(0);

/// Records how many trials run at once, and reports its random parameters.
#[manta::remote]
fn counted(config: Config) -> Result<Metrics, manta::BoxError> {
    let now = RUNNING.fetch_add(1, Ordering::SeqCst) + 1;
    MOST_AT_ONCE.fetch_max(now, Ordering::SeqCst);
    std::thread::sleep(std::time::Duration::from_millis(20)); // work, not synchronisation
    RUNNING.fetch_sub(1, Ordering::SeqCst);
    let lr: f64 = config.get("lr")?;
    Ok(tune::metrics([("lr", lr)]))
}

fn embedded(cpus: usize) -> Context {
    manta::init_with(MantaConfig {
        num_cpus: Some(cpus),
        ..Default::default()
    })
    .unwrap()
}

#[test]
fn a_grid_search_reports_every_trial_and_the_best() {
    let ctx = embedded(2);
    let results = Tuner::new(&ctx, quadratic, grid())
        .with_config(TuneConfig::new("score", Mode::Max).progress(false))
        .fit()
        .unwrap();
    assert_eq!(results.trials().len(), 8);
    for trial in results.trials() {
        let (x, y): (f64, f64) = (
            trial.config.get("x").unwrap(),
            trial.config.get("y").unwrap(),
        );
        assert_eq!(trial.metrics["score"], objective(x, y), "{}", trial.config);
    }
    // The best by plain search over the same points.
    let mut points = Vec::new();
    for x in [1.0, 2.0, 3.0, 4.0] {
        for y in [-1.0, 0.0] {
            points.push((objective(x, y), x, y));
        }
    }
    points.sort_by(|a, b| b.0.total_cmp(&a.0));
    let best = results.best().unwrap();
    let (x, y): (f64, f64) = (best.config.get("x").unwrap(), best.config.get("y").unwrap());
    assert_eq!((x, y), (points[0].1, points[0].2));
    let worst = results.best_by("score", Mode::Min).unwrap();
    assert_eq!(worst.metrics["score"], points.last().unwrap().0);
    assert!(results.table(3).contains("score"));
}

#[test]
fn failed_trials_are_recorded_up_to_max_failures() {
    let ctx = embedded(2);
    let space = grid().with("fail_on_two", grid_search([true]));
    let results = Tuner::new(&ctx, quadratic, space.clone())
        .with_config(TuneConfig::new("score", Mode::Max).progress(false))
        .fit()
        .unwrap();
    let failed: Vec<_> = results.errors().collect();
    assert_eq!(failed.len(), 2);
    for trial in failed {
        assert_eq!(trial.config.get::<f64>("x").unwrap(), 2.0);
        let error = trial.error.as_deref().unwrap();
        assert!(
            error.contains("quadratic") && error.contains("cursed"),
            "{error}"
        );
    }
    assert_eq!(results.best().unwrap().metrics["score"], 0.0);

    let error = Tuner::new(&ctx, quadratic, space)
        .with_config(
            TuneConfig::new("score", Mode::Max)
                .progress(false)
                .max_failures(1),
        )
        .fit()
        .unwrap_err();
    assert!(
        matches!(
            error,
            TuneError::TooManyFailures {
                failed: 2,
                max: 1,
                ..
            }
        ),
        "{error}"
    );
}

#[test]
fn random_search_draws_num_samples_within_bounds_and_limits_concurrency() {
    let ctx = embedded(4);
    let space = SearchSpace::new()
        .with("lr", loguniform(1e-4, 1e-1))
        .with("dropout", uniform(0.0, 0.5))
        .with("layers", randint(1, 4))
        .with("activation", choice(["relu", "tanh"]));
    let results = Tuner::new(&ctx, counted, space)
        .with_config(
            TuneConfig::new("lr", Mode::Min)
                .num_samples(12)
                .max_concurrent_trials(2)
                .progress(false),
        )
        .fit()
        .unwrap();
    assert_eq!(results.trials().len(), 12);
    assert!(MOST_AT_ONCE.load(Ordering::SeqCst) <= 2);
    let mut lrs: Vec<f64> = Vec::new();
    for trial in results.trials() {
        let lr: f64 = trial.config.get("lr").unwrap();
        assert_eq!(trial.metrics["lr"], lr);
        assert!((1e-4..1e-1).contains(&lr));
        assert!((0.0..0.5).contains(&trial.config.get::<f64>("dropout").unwrap()));
        assert!((1..4).contains(&trial.config.get::<i64>("layers").unwrap()));
        lrs.push(lr);
    }
    let least = lrs.iter().copied().fold(f64::INFINITY, f64::min);
    assert_eq!(results.best().unwrap().metrics["lr"], least);
}

#[test]
fn asha_stops_slow_climbers_and_lets_the_fastest_finish() {
    let ctx = embedded(2);
    let rates = [4.0, 2.0, 1.0, 0.5, 0.2, 0.1]; // the slow ones last, to be stopped
    let space = SearchSpace::new().with("rate", grid_search(rates));
    let asha = Asha {
        grace_period: 1,
        reduction_factor: 2.0,
        max_t: 16,
    };
    let results = Tuner::<_>::with_class::<Climber>(&ctx, space)
        .with_config(
            TuneConfig::new("height", Mode::Max)
                .scheduler(asha)
                .max_iterations(16)
                .max_concurrent_trials(2)
                .progress(false),
        )
        .fit()
        .unwrap();
    assert_eq!(results.errors().count(), 0);
    for trial in results.trials() {
        let rate: f64 = trial.config.get("rate").unwrap();
        // Each report is the height after that many steps.
        for (step, report) in trial.history.iter().enumerate() {
            let expected = (0..=step).fold(0.0, |h, _| h + rate);
            assert_eq!(report["height"], expected);
        }
    }
    let best = results.best().unwrap();
    assert_eq!(best.config.get::<f64>("rate").unwrap(), 4.0);
    assert_eq!(best.history.len(), 16);
    assert!(!best.stopped_early);
    let stopped: Vec<_> = results
        .trials()
        .iter()
        .filter(|t| t.stopped_early)
        .collect();
    assert!(!stopped.is_empty());
    assert!(stopped.iter().all(|t| t.history.len() < 16));
}
