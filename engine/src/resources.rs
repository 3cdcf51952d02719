//! Resources: what a task asks for and what a node offers.
//!
//! CPUs and memory as in Ray, plus named custom resources (`{"gpu": 1}`, `{"reader": 0.5}`) that
//! a node advertises at start and a task can ask for, which is also how a user pins work to
//! particular nodes.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// An amount of CPUs, memory and custom resources.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Resources {
    /// CPUs (fractions allowed).
    pub cpus: f64,
    /// Bytes of memory.
    pub memory_bytes: u64,
    /// Named resources.
    pub custom: BTreeMap<String, f64>,
}

impl Resources {
    /// One CPU, what a task asks for by default.
    pub fn one_cpu() -> Self {
        Self {
            cpus: 1.0,
            ..Default::default()
        }
    }

    /// Whether `self` (what is free) covers `demand`.
    pub fn covers(&self, demand: &Resources) -> bool {
        const EPS: f64 = 1e-9;
        self.cpus + EPS >= demand.cpus
            && self.memory_bytes >= demand.memory_bytes
            && demand
                .custom
                .iter()
                .all(|(k, v)| self.custom.get(k).copied().unwrap_or(0.0) + EPS >= *v)
    }

    /// Takes `demand` out of `self`.
    pub fn subtract(&mut self, demand: &Resources) {
        self.cpus -= demand.cpus;
        self.memory_bytes = self.memory_bytes.saturating_sub(demand.memory_bytes);
        for (k, v) in &demand.custom {
            *self.custom.entry(k.clone()).or_default() -= v;
        }
    }

    /// Gives `demand` back to `self`.
    pub fn add(&mut self, demand: &Resources) {
        self.cpus += demand.cpus;
        self.memory_bytes += demand.memory_bytes;
        for (k, v) in &demand.custom {
            *self.custom.entry(k.clone()).or_default() += v;
        }
    }

    /// Parses `name=amount,name=amount` (the `--resources` flag).
    pub fn parse_custom(text: &str) -> Result<BTreeMap<String, f64>> {
        let mut custom = BTreeMap::new();
        for part in text.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let bad = || Error::InvalidResources {
                text: text.to_string(),
                part: part.to_string(),
            };
            let (name, amount) = part.split_once('=').ok_or_else(bad)?;
            let amount: f64 = amount.trim().parse().map_err(|_| bad())?;
            if name.trim().is_empty() || amount.is_nan() || amount < 0.0 {
                return Err(bad());
            }
            custom.insert(name.trim().to_string(), amount);
        }
        Ok(custom)
    }
}

/// `1.5 MiB`-style sizes (what [`parse_bytes`] reads, to one decimal).
pub fn human_bytes(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut value = bytes as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit < UNITS.len() - 1 {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{bytes} B")
    } else {
        format!("{value:.1} {}", UNITS[unit])
    }
}

/// Parses a byte size such as `1GiB`, `512MB` or `1000000`.
///
/// ```
/// assert_eq!(manta_engine::parse_bytes("1GiB").unwrap(), 1 << 30);
/// assert_eq!(manta_engine::parse_bytes("2000").unwrap(), 2000);
/// ```
pub fn parse_bytes(text: &str) -> Result<u64> {
    text.trim()
        .parse::<bytesize::ByteSize>()
        .map(|size| size.as_u64())
        .map_err(|_| Error::InvalidByteSize {
            text: text.to_string(),
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn covers_and_accounting() {
        let mut free = Resources {
            cpus: 2.0,
            memory_bytes: 100,
            custom: [("gpu".to_string(), 1.0)].into(),
        };
        let demand = Resources {
            cpus: 1.5,
            memory_bytes: 50,
            custom: [("gpu".to_string(), 0.5)].into(),
        };
        assert!(free.covers(&demand));
        free.subtract(&demand);
        assert!(!free.covers(&demand));
        free.add(&demand);
        assert!(free.covers(&demand));
        assert!(!free.covers(&Resources {
            custom: [("tpu".to_string(), 1.0)].into(),
            ..Default::default()
        }));
    }

    #[test]
    fn parses_custom_resources_and_sizes() {
        assert_eq!(
            Resources::parse_custom("a=1, b=0.5").unwrap(),
            [("a".into(), 1.0), ("b".into(), 0.5)].into()
        );
        assert!(matches!(
            Resources::parse_custom("a"),
            Err(Error::InvalidResources { .. })
        ));
        assert!(matches!(
            Resources::parse_custom("a=-1"),
            Err(Error::InvalidResources { .. })
        ));
        assert_eq!(parse_bytes("512MiB").unwrap(), 512 << 20);
        assert!(matches!(
            parse_bytes("lots"),
            Err(Error::InvalidByteSize { .. })
        ));
    }
}
