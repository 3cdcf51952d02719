//! Tune trainables shared by the embedded and cluster tests: a function with a known best, and
//! an actor class that climbs at its configured rate.

use manta::tune::{self, Config, Metrics, SearchSpace, grid_search};

/// The objective, computed here to check what trials report: best at x = 3, y = -1.
pub fn objective(x: f64, y: f64) -> f64 {
    -(x - 3.0).powi(2) - (y + 1.0).powi(2)
}

/// Reports `objective(x, y)` as "score" and its process id as "pid"; fails for x = 2 when
/// the config asks it to.
#[manta::remote]
pub fn quadratic(config: Config) -> Result<Metrics, manta::BoxError> {
    let (x, y): (f64, f64) = (config.get("x")?, config.get("y")?);
    if config.get::<bool>("fail_on_two").unwrap_or(false) && x == 2.0 {
        return Err(format!("x = {x} is cursed").into());
    }
    Ok(tune::metrics([
        ("score", objective(x, y)),
        ("pid", f64::from(std::process::id())),
    ]))
}

/// The 8-point grid over x and y.
pub fn grid() -> SearchSpace {
    SearchSpace::new()
        .with("x", grid_search([1.0, 2.0, 3.0, 4.0]))
        .with("y", grid_search([-1.0, 0.0]))
}

/// Climbs by `rate` per step.
pub struct Climber {
    rate: f64,
    height: f64,
}

#[manta::actor]
impl Climber {
    pub fn new(config: Config) -> Result<Self, manta::BoxError> {
        Ok(Climber {
            rate: config.get("rate")?,
            height: 0.0,
        })
    }

    pub fn step(&mut self) -> Metrics {
        self.height += self.rate;
        tune::metrics([("height", self.height)])
    }
}
