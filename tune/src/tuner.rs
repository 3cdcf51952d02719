//! Running a search: trials as tasks or actors, at most so many at a time.
//!
//! # How it works
//!
//! [`Tuner::fit`] draws the trial configs, then keeps up to `max_concurrent_trials` trials
//! going on the driver's runtime (by default as many as the cluster's CPUs fit, given each
//! trial's resources) and starts the next as each ends. A function trial is one task: its
//! config in, its metrics out. A class trial is an actor: built from its config, then asked
//! for `step()` after `step()`; each report goes to the [`Asha`] scheduler, if there is one,
//! which may stop it, and the actor is killed when the trial ends. A failed trial is recorded
//! with its error; past `max_failures` failed trials the run stops with an error.

use std::cell::RefCell;

use futures::StreamExt;
use indicatif::{ProgressBar, ProgressStyle};
use manta_engine::Resources;
use manta_tasks::{
    ActorClass, ActorOptions, ActorRef, Args, ObjectRef, Runtime, TaskOptions, UnaryTask,
};
use rand::SeedableRng;

use crate::asha::{Asha, AshaState, Decision};
use crate::results::{ResultGrid, TrialResult};
use crate::space::{Config, Metrics, SearchSpace};

/// Whether the metric is to be maximised or minimised.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// Higher is better (accuracy).
    Max,
    /// Lower is better (loss).
    Min,
}

/// How a search runs (Ray's `TuneConfig`, `RunConfig` and `FailureConfig` in one).
#[derive(Clone, Debug)]
pub struct TuneConfig {
    /// The metric trials are ranked (and ASHA decides) by.
    pub metric: String,
    /// Maximise or minimise it.
    pub mode: Mode,
    /// How often the whole grid is run, with random parameters drawn anew each time.
    pub num_samples: usize,
    /// At most this many trials at once; `None`: as many as the cluster's CPUs fit.
    pub max_concurrent_trials: Option<usize>,
    /// What each trial takes of a node (one CPU by default).
    pub resources: Resources,
    /// Early stopping for class trainables.
    pub scheduler: Option<Asha>,
    /// Steps a class trainable runs at most.
    pub max_iterations: u64,
    /// Failed trials allowed before the run stops; `None`: any number (all recorded).
    pub max_failures: Option<usize>,
    /// Seeds the random parameters.
    pub seed: u64,
    /// Show a progress bar (on a terminal).
    pub progress: bool,
}

impl TuneConfig {
    /// Tune for `metric` in `mode`; one sample, one CPU per trial, progress bar on.
    pub fn new(metric: impl Into<String>, mode: Mode) -> Self {
        Self {
            metric: metric.into(),
            mode,
            num_samples: 1,
            max_concurrent_trials: None,
            resources: Resources {
                cpus: 1.0,
                ..Resources::default()
            },
            scheduler: None,
            max_iterations: 10,
            max_failures: None,
            seed: 0,
            progress: true,
        }
    }

    /// Sets `num_samples`.
    pub fn num_samples(mut self, n: usize) -> Self {
        self.num_samples = n;
        self
    }

    /// Sets `max_concurrent_trials`.
    pub fn max_concurrent_trials(mut self, n: usize) -> Self {
        self.max_concurrent_trials = Some(n);
        self
    }

    /// Sets the resources of each trial.
    pub fn resources(mut self, resources: Resources) -> Self {
        self.resources = resources;
        self
    }

    /// Stops poor class trials early with ASHA.
    pub fn scheduler(mut self, asha: Asha) -> Self {
        self.scheduler = Some(asha);
        self
    }

    /// Sets `max_iterations`.
    pub fn max_iterations(mut self, n: u64) -> Self {
        self.max_iterations = n;
        self
    }

    /// Sets `max_failures`.
    pub fn max_failures(mut self, n: usize) -> Self {
        self.max_failures = Some(n);
        self
    }

    /// Sets the seed.
    pub fn seed(mut self, seed: u64) -> Self {
        self.seed = seed;
        self
    }

    /// Turns the progress bar on or off.
    pub fn progress(mut self, on: bool) -> Self {
        self.progress = on;
        self
    }
}

/// Why a search could not finish.
#[derive(Debug, thiserror::Error)]
pub enum TuneError {
    /// The space gives no trial (`num_samples` is 0).
    #[error("the search space gives no trials (num_samples is 0?)")]
    NoTrials,
    /// More trials failed than `max_failures` allows.
    #[error(
        "{failed} trials failed, more than max_failures ({max}); trial {trial} failed with: {first}"
    )]
    TooManyFailures {
        /// Trials failed so far.
        failed: usize,
        /// The limit.
        max: usize,
        /// The first failed trial.
        trial: usize,
        /// Its error.
        first: String,
    },
    /// Asking the cluster for its CPUs failed.
    #[error(transparent)]
    Tasks(#[from] manta_tasks::Error),
}

/// What a trial runs.
#[derive(Clone, Copy)]
enum Trainable {
    /// A task function of a config, returning metrics.
    Function(&'static str),
    /// An actor class built from a config, stepped for metrics.
    Class {
        class: &'static str,
        constructor: &'static str,
        step: &'static str,
    },
}

/// A hyperparameter search: a trainable, a search space, and how to run it.
pub struct Tuner<'a, R: Runtime> {
    runtime: &'a R,
    trainable: Trainable,
    space: SearchSpace,
    config: TuneConfig,
}

impl<'a, R: Runtime> Tuner<'a, R> {
    /// Tunes a `#[manta::remote]` function of a [`Config`] returning [`Metrics`] (or a
    /// `Result` of them): one task per trial.
    pub fn new<F: UnaryTask<Arg = Config, Output = Metrics>>(
        runtime: &'a R,
        _function: F,
        space: SearchSpace,
    ) -> Self {
        Self {
            runtime,
            trainable: Trainable::Function(F::TASK),
            space,
            config: TuneConfig::new("score", Mode::Max),
        }
    }

    /// Tunes a `#[manta::actor]` class with `fn new(config: Config) -> Self` and
    /// `fn step(&mut self) -> Metrics` (or a `Result` of them): one actor per trial, stepped
    /// up to `max_iterations` times or until the scheduler stops it.
    pub fn with_class<A: ActorClass>(runtime: &'a R, space: SearchSpace) -> Self {
        let leak = |name: String| -> &'static str { Box::leak(name.into_boxed_str()) };
        Self {
            runtime,
            trainable: Trainable::Class {
                class: A::CLASS,
                constructor: leak(format!("{}::new/actor", A::CLASS)),
                step: leak(format!("{}::step/actor", A::CLASS)),
            },
            space,
            config: TuneConfig::new("score", Mode::Max),
        }
    }

    /// Sets how the search runs.
    pub fn with_config(mut self, config: TuneConfig) -> Self {
        self.config = config;
        self
    }

    /// Runs every trial; the result grid once all are done.
    pub fn fit(self) -> Result<ResultGrid, TuneError> {
        let mut rng = rand::rngs::StdRng::seed_from_u64(self.config.seed);
        let configs = self.space.configs(self.config.num_samples, &mut rng);
        if configs.is_empty() {
            return Err(TuneError::NoTrials);
        }
        let handle = self.runtime.handle();
        let concurrency = match self.config.max_concurrent_trials {
            Some(n) => n.max(1),
            None => {
                let cpus = handle
                    .block_on(self.runtime.client().total_cpus())
                    .map_err(manta_tasks::Error::from)?;
                let per_trial = self.config.resources.cpus;
                if per_trial > 0.0 {
                    ((cpus / per_trial).floor() as usize).max(1)
                } else {
                    configs.len()
                }
            }
        };
        let bar = if self.config.progress {
            ProgressBar::new(configs.len() as u64)
        } else {
            ProgressBar::hidden()
        };
        bar.set_style(
            ProgressStyle::with_template("{elapsed_precise} [{bar:30}] {pos}/{len} trials {msg}")
                .expect("a valid template")
                .progress_chars("=> "),
        );
        let asha = self
            .config
            .scheduler
            .clone()
            .map(|settings| RefCell::new(AshaState::new(settings, self.config.mode)));
        let trials = handle.block_on(async {
            let mut running = futures::stream::iter(configs.into_iter().enumerate())
                .map(|(id, config)| self.run_trial(id, config, asha.as_ref()))
                .buffer_unordered(concurrency);
            let mut done: Vec<TrialResult> = Vec::new();
            let mut failed = 0;
            while let Some(trial) = running.next().await {
                if let Some(error) = &trial.error {
                    failed += 1;
                    tracing::warn!(trial = trial.id, config = %trial.config, %error, "trial failed");
                    if let Some(max) = self.config.max_failures
                        && failed > max
                    {
                        let first = done
                            .iter()
                            .chain(std::iter::once(&trial))
                            .find(|t| t.error.is_some())
                            .expect("one failed");
                        return Err(TuneError::TooManyFailures {
                            failed,
                            max,
                            trial: first.id,
                            first: first.error.clone().unwrap_or_default(),
                        });
                    }
                }
                done.push(trial);
                bar.inc(1);
                let grid = ResultGrid::new(
                    done.clone(),
                    self.config.metric.clone(),
                    self.config.mode,
                );
                if let Some(best) = grid.best()
                    && let Some(value) = best.metrics.get(&self.config.metric)
                {
                    bar.set_message(format!("best {} {value:.4}", self.config.metric));
                }
            }
            Ok(done)
        });
        bar.finish();
        Ok(ResultGrid::new(
            trials?,
            self.config.metric.clone(),
            self.config.mode,
        ))
    }

    async fn run_trial(
        &self,
        id: usize,
        config: Config,
        asha: Option<&RefCell<AshaState>>,
    ) -> TrialResult {
        let mut trial = TrialResult {
            id,
            config: config.clone(),
            metrics: Metrics::new(),
            history: Vec::new(),
            stopped_early: false,
            error: None,
        };
        let mut args = Args::new();
        args.push::<Config>(config.into());
        match self.trainable {
            Trainable::Function(function) => {
                let options = TaskOptions {
                    resources: self.config.resources.clone(),
                    ..TaskOptions::default()
                };
                let report: ObjectRef<Metrics> =
                    manta_tasks::submit(self.runtime, function, args, &options);
                match manta_tasks::get_async(self.runtime.client(), &report).await {
                    Ok(metrics) => trial.history.push(metrics),
                    Err(e) => trial.error = Some(e.to_string()),
                }
            }
            Trainable::Class {
                class,
                constructor,
                step,
            } => {
                let options = ActorOptions {
                    resources: self.config.resources.clone(),
                    ..ActorOptions::default()
                };
                match ActorRef::create_async(self.runtime, class, constructor, args, &options).await
                {
                    Ok(actor) => {
                        self.step_trial(&actor, step, &mut trial, asha).await;
                        actor.kill_async().await;
                    }
                    Err(e) => trial.error = Some(e.to_string()),
                }
            }
        }
        trial.metrics = trial.history.last().cloned().unwrap_or_default();
        trial
    }

    /// Steps a class trial until its iterations are spent, the scheduler stops it, or it fails.
    async fn step_trial(
        &self,
        actor: &ActorRef,
        step: &'static str,
        trial: &mut TrialResult,
        asha: Option<&RefCell<AshaState>>,
    ) {
        let limit = match &self.config.scheduler {
            Some(asha) => self.config.max_iterations.min(asha.max_t),
            None => self.config.max_iterations,
        };
        for iteration in 1..=limit {
            let report: ObjectRef<Metrics> = actor.call(step, Args::new());
            let metrics = match manta_tasks::get_async(self.runtime.client(), &report).await {
                Ok(metrics) => metrics,
                Err(e) => {
                    trial.error = Some(e.to_string());
                    return;
                }
            };
            let value = metrics.get(&self.config.metric).copied();
            trial.history.push(metrics);
            let Some(value) = value else {
                trial.error = Some(format!("step() reported no {:?}", self.config.metric));
                return;
            };
            if let Some(asha) = asha
                && asha.borrow_mut().on_result(trial.id, iteration, value) == Decision::Stop
            {
                trial.stopped_early = iteration < limit;
                return;
            }
        }
    }
}
