//! Search spaces: what each hyperparameter may be, and the trial configs drawn from them.
//!
//! Like Ray Tune, every point of the grid (the cross product of the [`grid_search`] domains)
//! is a trial, `num_samples` times over; each trial draws its random parameters ([`choice`],
//! [`uniform`], [`loguniform`], [`randint`]) anew. Values are JSON values, so a config holds
//! numbers, strings, `null` (Rust's `None`) and lists alike; a trial reads them back typed
//! with [`Config::get`].

use std::collections::BTreeMap;
use std::fmt;

use rand::Rng;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use serde_json::{Map, Value};

/// What one hyperparameter may be.
#[derive(Clone, Debug, PartialEq)]
pub enum Domain {
    /// Each of these values, in a trial of its own.
    Grid(Vec<Value>),
    /// One of these, drawn at random per trial.
    Choice(Vec<Value>),
    /// A float drawn uniformly from `[low, high)`.
    Uniform {
        /// Lower bound.
        low: f64,
        /// Upper bound (excluded).
        high: f64,
    },
    /// A float whose logarithm is drawn uniformly: from `[low, high)`, both positive.
    LogUniform {
        /// Lower bound.
        low: f64,
        /// Upper bound (excluded).
        high: f64,
    },
    /// An integer drawn uniformly from `[low, high)`.
    RandInt {
        /// Lower bound.
        low: i64,
        /// Upper bound (excluded).
        high: i64,
    },
}

fn to_values<T: Serialize>(values: impl IntoIterator<Item = T>) -> Vec<Value> {
    values
        .into_iter()
        .map(|v| serde_json::to_value(v).expect("a hyperparameter value encodes as JSON"))
        .collect()
}

/// A grid axis: every trial config is repeated for each of `values`.
pub fn grid_search<T: Serialize>(values: impl IntoIterator<Item = T>) -> Domain {
    Domain::Grid(to_values(values))
}

/// One of `values` at random.
pub fn choice<T: Serialize>(values: impl IntoIterator<Item = T>) -> Domain {
    Domain::Choice(to_values(values))
}

/// A float in `[low, high)`.
pub fn uniform(low: f64, high: f64) -> Domain {
    Domain::Uniform { low, high }
}

/// A float in `[low, high)`, uniform on a log scale (learning rates, regularisation).
pub fn loguniform(low: f64, high: f64) -> Domain {
    Domain::LogUniform { low, high }
}

/// An integer in `[low, high)`.
pub fn randint(low: i64, high: i64) -> Domain {
    Domain::RandInt { low, high }
}

impl Domain {
    /// A value drawn at random (the grid's first value for a grid).
    fn sample(&self, rng: &mut impl Rng) -> Value {
        match self {
            Domain::Grid(values) | Domain::Choice(values) if values.is_empty() => Value::Null,
            Domain::Grid(values) => values[0].clone(),
            Domain::Choice(values) => values[rng.random_range(0..values.len())].clone(),
            Domain::Uniform { low, high } => Value::from(low + rng.random::<f64>() * (high - low)),
            Domain::LogUniform { low, high } => {
                let (low, high) = (low.ln(), high.ln());
                Value::from((low + rng.random::<f64>() * (high - low)).exp())
            }
            Domain::RandInt { low, high } if high <= low => Value::from(*low),
            Domain::RandInt { low, high } => Value::from(rng.random_range(*low..*high)),
        }
    }
}

/// Hyperparameters by name, each with its domain.
#[derive(Clone, Debug, Default)]
pub struct SearchSpace {
    params: Vec<(String, Domain)>,
}

impl SearchSpace {
    /// An empty space (one trial of an empty config).
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds (or replaces) the hyperparameter `name`.
    pub fn with(mut self, name: impl Into<String>, domain: Domain) -> Self {
        let name = name.into();
        self.params.retain(|(n, _)| *n != name);
        self.params.push((name, domain));
        self
    }

    /// How many grid points there are (1 without grid axes).
    pub fn grid_size(&self) -> usize {
        self.params
            .iter()
            .map(|(_, d)| match d {
                Domain::Grid(values) => values.len().max(1),
                _ => 1,
            })
            .product()
    }

    /// The trial configs: every grid point, `num_samples` times, random parameters drawn anew
    /// for each. The first grid axis varies slowest.
    pub fn configs(&self, num_samples: usize, rng: &mut impl Rng) -> Vec<Config> {
        let mut configs = Vec::with_capacity(self.grid_size() * num_samples);
        for _ in 0..num_samples {
            for point in 0..self.grid_size() {
                let mut config = Map::new();
                // Mixed-radix digits of `point`, the last grid axis fastest.
                let mut rest = point;
                let mut grid_values = Vec::new();
                for (name, domain) in self.params.iter().rev() {
                    if let Domain::Grid(values) = domain
                        && !values.is_empty()
                    {
                        grid_values.push((name, values[rest % values.len()].clone()));
                        rest /= values.len();
                    }
                }
                for (name, domain) in &self.params {
                    let value = match domain {
                        Domain::Grid(_) => grid_values
                            .iter()
                            .find(|(n, _)| *n == name)
                            .map(|(_, v)| v.clone())
                            .unwrap_or(Value::Null),
                        other => other.sample(rng),
                    };
                    config.insert(name.clone(), value);
                }
                configs.push(Config(config));
            }
        }
        configs
    }
}

/// One trial's hyperparameters: any serde values, by name.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Config(Map<String, Value>);

/// A hyperparameter a trial asked for is missing or of another type.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// No such hyperparameter.
    #[error("the config has no {key:?} (it has {config})")]
    Missing {
        /// The name asked for.
        key: String,
        /// The config.
        config: String,
    },
    /// The value is not of the type asked for.
    #[error("config value {key:?} = {value} is not a {type_name}: {reason}")]
    WrongType {
        /// The name.
        key: String,
        /// Its value.
        value: String,
        /// The type asked for.
        type_name: &'static str,
        /// Why it does not convert.
        reason: String,
    },
}

impl Config {
    /// The hyperparameter `key` as a `T` (`Option<T>` reads `null` as `None`).
    pub fn get<T: DeserializeOwned>(&self, key: &str) -> Result<T, ConfigError> {
        let value = self.0.get(key).ok_or_else(|| ConfigError::Missing {
            key: key.to_string(),
            config: self.to_string(),
        })?;
        serde_json::from_value(value.clone()).map_err(|e| ConfigError::WrongType {
            key: key.to_string(),
            value: value.to_string(),
            type_name: std::any::type_name::<T>(),
            reason: e.to_string(),
        })
    }

    /// Sets `key` (for configs built by hand).
    pub fn insert(&mut self, key: impl Into<String>, value: impl Serialize) {
        let value = serde_json::to_value(value).expect("a hyperparameter value encodes as JSON");
        self.0.insert(key.into(), value);
    }

    /// The values by name.
    pub fn values(&self) -> &Map<String, Value> {
        &self.0
    }
}

impl fmt::Display for Config {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("{")?;
        for (i, (name, value)) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str(", ")?;
            }
            write!(f, "{name}: {value}")?;
        }
        f.write_str("}")
    }
}

impl Serialize for Config {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        // As a tree of plain variants: postcard (how task arguments travel) cannot carry a
        // JSON value as such, and JSON text would not bring every float back bit for bit.
        let wire: Vec<(&String, Wire)> = self.0.iter().map(|(k, v)| (k, Wire::from(v))).collect();
        wire.serialize(serializer)
    }
}

impl<'de> Deserialize<'de> for Config {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let wire = Vec::<(String, Wire)>::deserialize(deserializer)?;
        Ok(Config(
            wire.into_iter().map(|(k, v)| (k, Value::from(v))).collect(),
        ))
    }
}

/// A JSON value as plain serde variants, exact for every number.
#[derive(Serialize, Deserialize)]
enum Wire {
    Null,
    Bool(bool),
    U64(u64),
    I64(i64),
    F64(f64),
    String(String),
    Array(Vec<Wire>),
    Object(Vec<(String, Wire)>),
}

impl From<&Value> for Wire {
    fn from(value: &Value) -> Self {
        match value {
            Value::Null => Wire::Null,
            Value::Bool(b) => Wire::Bool(*b),
            Value::Number(n) => match (n.as_u64(), n.as_i64(), n.as_f64()) {
                (Some(u), _, _) => Wire::U64(u),
                (_, Some(i), _) => Wire::I64(i),
                (_, _, f) => Wire::F64(f.unwrap_or(f64::NAN)),
            },
            Value::String(s) => Wire::String(s.clone()),
            Value::Array(items) => Wire::Array(items.iter().map(Wire::from).collect()),
            Value::Object(map) => Wire::Object(
                map.iter()
                    .map(|(k, v)| (k.clone(), Wire::from(v)))
                    .collect(),
            ),
        }
    }
}

impl From<Wire> for Value {
    fn from(wire: Wire) -> Self {
        match wire {
            Wire::Null => Value::Null,
            Wire::Bool(b) => Value::Bool(b),
            Wire::U64(u) => Value::from(u),
            Wire::I64(i) => Value::from(i),
            Wire::F64(f) => Value::from(f),
            Wire::String(s) => Value::String(s),
            Wire::Array(items) => Value::Array(items.into_iter().map(Value::from).collect()),
            Wire::Object(entries) => Value::Object(
                entries
                    .into_iter()
                    .map(|(k, v)| (k, Value::from(v)))
                    .collect(),
            ),
        }
    }
}

/// What a trial reports: metric values by name.
pub type Metrics = BTreeMap<String, f64>;

/// Metrics from `(name, value)` pairs: `tune::metrics([("accuracy", 0.97)])`.
pub fn metrics<'a>(values: impl IntoIterator<Item = (&'a str, f64)>) -> Metrics {
    values
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect()
}

#[cfg(test)]
mod tests {
    use rand::SeedableRng;

    use super::*;

    #[test]
    fn the_grid_is_the_cross_product_repeated_num_samples_times() {
        let space = SearchSpace::new()
            .with("a", grid_search([1, 2, 3]))
            .with("b", grid_search([None, Some(10)]))
            .with("lr", loguniform(1e-4, 1e-1))
            .with("k", randint(2, 5))
            .with("kind", choice(["gini", "entropy"]));
        let mut rng = rand::rngs::StdRng::seed_from_u64(7);
        let configs = space.configs(2, &mut rng);
        assert_eq!((space.grid_size(), configs.len()), (6, 12));
        let mut points: Vec<(i64, Option<i64>)> = configs
            .iter()
            .map(|c| (c.get("a").unwrap(), c.get("b").unwrap()))
            .collect();
        points.sort();
        let mut expected: Vec<(i64, Option<i64>)> = Vec::new();
        for a in [1, 2, 3] {
            for b in [None, Some(10)] {
                expected.extend([(a, b), (a, b)]);
            }
        }
        assert_eq!(points, expected);
        for config in &configs {
            let lr: f64 = config.get("lr").unwrap();
            let k: i64 = config.get("k").unwrap();
            let kind: String = config.get("kind").unwrap();
            assert!(
                (1e-4..1e-1).contains(&lr) && (2..5).contains(&k),
                "{config}"
            );
            assert!(kind == "gini" || kind == "entropy");
        }
        let error = configs[0].get::<String>("a").unwrap_err().to_string();
        assert!(error.contains("\"a\""), "{error}");
        assert!(configs[0].get::<i64>("missing").is_err());
    }

    #[test]
    fn a_config_travels_through_postcard() {
        let mut config = Config::default();
        config.insert("depth", Some(3));
        config.insert("name", "forest");
        config.insert("none", None::<u8>);
        config.insert("lr", 0.1f64 + 0.2);
        config.insert("list", [1.5, -2.0]);
        let bytes = postcard::to_stdvec(&config).unwrap();
        let back: Config = postcard::from_bytes(&bytes).unwrap();
        assert_eq!(back, config);
        assert_eq!(back.get::<Option<u32>>("none").unwrap(), None);
    }
}
