//! # manta-tune: Ray Tune in Rust
//!
//! Parallel hyperparameter search on Manta's tasks and actors. A *search space* says what
//! each hyperparameter may be ([`grid_search`], [`choice`], [`uniform`], [`loguniform`],
//! [`randint`]); the [`Tuner`] draws trial configs from it and runs each trial where Manta
//! runs work (threads embedded, worker processes on a cluster), with the resources asked for,
//! at most `max_concurrent_trials` at a time; the [`ResultGrid`] holds what each trial
//! reported, and the best.
//!
//! A trainable is either a remote function of a [`Config`] returning [`Metrics`] (one report
//! per trial), or an actor class with `new(Config)` and `step(&mut self) -> Metrics` (a report
//! per step, which the [`Asha`] scheduler uses to stop poor trials early).
//!
//! ```ignore
//! #[manta::remote]
//! fn train(config: tune::Config) -> Result<tune::Metrics, manta::BoxError> {
//!     let depth: usize = config.get("max_depth")?;
//!     Ok(tune::metrics([("accuracy", fit_and_score(depth))]))
//! }
//!
//! let space = SearchSpace::new()
//!     .with("max_depth", grid_search([2, 4, 8]))
//!     .with("lr", loguniform(1e-4, 1e-1));
//! let results = Tuner::new(&ctx, train, space)
//!     .with_config(TuneConfig::new("accuracy", Mode::Max).num_samples(4))
//!     .fit()?;
//! println!("{}", results.best().unwrap().config);
//! ```
//!
//! * [`space`]: domains, search spaces, trial configs.
//! * [`asha`]: the asynchronous successive halving scheduler.
//! * [`tuner`]: running the trials.
//! * [`results`]: trial results and the result grid.

#![warn(missing_docs)]

pub mod asha;
pub mod results;
pub mod space;
pub mod tuner;

pub use asha::Asha;
pub use results::{ResultGrid, TrialResult};
pub use space::{
    Config, ConfigError, Domain, Metrics, SearchSpace, choice, grid_search, loguniform, metrics,
    randint, uniform,
};
pub use tuner::{Mode, TuneConfig, TuneError, Tuner};
