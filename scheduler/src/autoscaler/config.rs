//! The cluster config file of `manta up CONFIG`: the head's settings, the autoscaler's, the
//! provider that starts nodes and the node types it may start (TOML).
//!
//! ```toml
//! [head]
//! port = 6380            # 0 picks a free one
//! num_cpus = 0           # a head that runs no tasks itself
//!
//! [autoscaler]
//! idle_timeout_s = 60    # stop a node idle this long
//! upscaling_speed = 1.0  # launching at most max(5, speed x running nodes) at once
//!
//! [provider]
//! type = "local"         # node daemons as processes on this machine
//! # type = "command"; launch = "ssh ...", terminate = "ssh ..."
//!
//! [node_types.cpu2]
//! num_cpus = 2
//! object_store_memory = "1GiB"
//! resources = { ssd = 1 }
//! min_nodes = 0
//! max_nodes = 4
//! ```
//!
//! Unknown keys are errors (a typo would otherwise be a setting silently ignored), and so are
//! node types with `min_nodes` above `max_nodes` or no CPUs, memory or resources at all.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use manta_engine::{Resources, parse_bytes};
use serde::Deserialize;

use crate::error::{Error, Result};

/// The whole file.
#[derive(Debug, Clone)]
pub struct ClusterFile {
    /// How the head is started.
    pub head: HeadSection,
    /// The autoscaler it runs.
    pub autoscaler: AutoscalerConfig,
}

/// The `[head]` section: what `manta up` starts the head with.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HeadSection {
    /// The port (default 0: a free one).
    #[serde(default)]
    pub port: u16,
    /// The address to bind and advertise (default 127.0.0.1).
    pub host: Option<String>,
    /// CPUs the head's own node offers (0: none; default: this machine's).
    pub num_cpus: Option<f64>,
    /// The head's own node's object store, e.g. "2GiB".
    pub object_store_memory: Option<String>,
    /// Seconds demand that fits no live node waits before it fails.
    pub pending_timeout_s: Option<u64>,
}

/// What the autoscaler manages and how.
#[derive(Debug, Clone)]
pub struct AutoscalerConfig {
    /// The kinds of node it may start, by name.
    pub node_types: Vec<NodeType>,
    /// What starts and stops them.
    pub provider: ProviderConfig,
    /// A node it started that is idle this long is stopped.
    pub idle_timeout: Duration,
    /// Ray's upscaling speed: at most `max(5, speed × running nodes)` launching at once.
    pub upscaling_speed: f64,
    /// How often it looks at the cluster.
    pub update_interval: Duration,
    /// How long a launched node may take to register before the launch counts as failed.
    pub launch_timeout: Duration,
}

/// A kind of node the autoscaler may start.
#[derive(Debug, Clone, PartialEq)]
pub struct NodeType {
    /// Its name (nodes of it are named `<name>-<n>`).
    pub name: String,
    /// What one such node offers (memory is its object store budget).
    pub resources: Resources,
    /// Nodes of this type kept running whatever the demand.
    pub min_nodes: u32,
    /// The most nodes of this type at once.
    pub max_nodes: u32,
}

/// What launches and stops nodes.
#[derive(Debug, Clone, PartialEq)]
pub enum ProviderConfig {
    /// Node daemons as child processes of the head, on its machine: `program start ...`.
    Local {
        /// The `manta` executable.
        program: PathBuf,
        /// Where each node's log goes (`<name>.log`).
        log_dir: PathBuf,
    },
    /// Shell commands (see [`super::command`]).
    Command {
        /// Starts one node; its last line of output is the node's id for `terminate`.
        launch: String,
        /// Stops the node `MANTA_PROVIDER_ID` names.
        terminate: String,
    },
}

impl AutoscalerConfig {
    /// Whether any node type could run `demand` (an idle node of that type covers it).
    pub fn could_ever_run(&self, demand: &Resources) -> bool {
        self.node_types
            .iter()
            .any(|t| t.max_nodes > 0 && t.resources.covers(demand))
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawFile {
    #[serde(default)]
    head: HeadSection,
    #[serde(default)]
    autoscaler: RawAutoscaler,
    provider: RawProvider,
    node_types: BTreeMap<String, RawNodeType>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawAutoscaler {
    idle_timeout_s: Option<f64>,
    upscaling_speed: Option<f64>,
    update_interval_s: Option<f64>,
    launch_timeout_s: Option<f64>,
}

#[derive(Deserialize)]
#[serde(tag = "type", rename_all = "lowercase", deny_unknown_fields)]
enum RawProvider {
    Local {
        program: Option<PathBuf>,
        log_dir: Option<PathBuf>,
    },
    Command {
        launch: String,
        terminate: String,
    },
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawNodeType {
    num_cpus: f64,
    #[serde(default)]
    object_store_memory: Option<String>,
    #[serde(default)]
    resources: BTreeMap<String, f64>,
    #[serde(default)]
    min_nodes: u32,
    max_nodes: u32,
}

/// The default object store of a node type that names none.
const DEFAULT_NODE_STORE: u64 = 2 << 30;

impl ClusterFile {
    /// Reads and checks the file at `path`. A local provider's program defaults to this
    /// executable (the `manta` that reads the file) and its log directory to `log_dir`.
    pub fn read(path: &Path, log_dir: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|source| Error::Io {
            action: "reading the cluster config",
            path: path.to_path_buf(),
            source,
        })?;
        Self::parse(&text, log_dir)
            .map_err(|e| Error::Internal(format!("cluster config {}: {e}", path.display())))
    }

    /// Parses and checks a config's text (see [`ClusterFile::read`]).
    pub fn parse(text: &str, log_dir: &Path) -> std::result::Result<Self, String> {
        let raw: RawFile = toml::from_str(text).map_err(|e| e.to_string())?;
        let seconds = |value: Option<f64>, default: f64, key: &str| {
            let s = value.unwrap_or(default);
            if !(s.is_finite() && s > 0.0) {
                return Err(format!(
                    "[autoscaler] {key} must be a positive number, not {s}"
                ));
            }
            Ok(Duration::from_secs_f64(s))
        };
        let a = raw.autoscaler;
        let upscaling_speed = a.upscaling_speed.unwrap_or(1.0);
        if !(upscaling_speed.is_finite() && upscaling_speed >= 0.0) {
            return Err(format!(
                "[autoscaler] upscaling_speed must be 0 or more, not {upscaling_speed}"
            ));
        }
        if raw.node_types.is_empty() {
            return Err("no [node_types.NAME] section: the autoscaler needs a node type".into());
        }
        let node_types = raw
            .node_types
            .into_iter()
            .map(|(name, t)| {
                let at = |what: String| format!("[node_types.{name}] {what}");
                if !(t.num_cpus.is_finite() && t.num_cpus >= 0.0) {
                    return Err(at(format!(
                        "num_cpus must be 0 or more, not {}",
                        t.num_cpus
                    )));
                }
                if t.min_nodes > t.max_nodes {
                    return Err(at(format!(
                        "min_nodes {} is above max_nodes {}",
                        t.min_nodes, t.max_nodes
                    )));
                }
                let memory = match &t.object_store_memory {
                    Some(text) => parse_bytes(text).map_err(|e| at(e.to_string()))?,
                    None => DEFAULT_NODE_STORE,
                };
                if let Some((key, amount)) = t
                    .resources
                    .iter()
                    .find(|(_, v)| !(v.is_finite() && **v >= 0.0))
                {
                    return Err(at(format!(
                        "resource {key} must be 0 or more, not {amount}"
                    )));
                }
                if name.is_empty()
                    || !name
                        .chars()
                        .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
                {
                    return Err(at(
                        "names a node type with letters, digits, - and _ only".into()
                    ));
                }
                Ok(NodeType {
                    resources: Resources {
                        cpus: t.num_cpus,
                        memory_bytes: memory,
                        custom: t.resources,
                    },
                    name,
                    min_nodes: t.min_nodes,
                    max_nodes: t.max_nodes,
                })
            })
            .collect::<std::result::Result<Vec<_>, String>>()?;
        let provider = match raw.provider {
            RawProvider::Local {
                program,
                log_dir: dir,
            } => ProviderConfig::Local {
                program: match program {
                    Some(p) => p,
                    None => std::env::current_exe()
                        .map_err(|e| format!("[provider] the manta executable: {e}"))?,
                },
                log_dir: dir.unwrap_or_else(|| log_dir.to_path_buf()),
            },
            RawProvider::Command { launch, terminate } => {
                if launch.trim().is_empty() || terminate.trim().is_empty() {
                    return Err("[provider] a command provider needs launch and terminate".into());
                }
                ProviderConfig::Command { launch, terminate }
            }
        };
        Ok(ClusterFile {
            head: raw.head,
            autoscaler: AutoscalerConfig {
                node_types,
                provider,
                idle_timeout: seconds(a.idle_timeout_s, 60.0, "idle_timeout_s")?,
                upscaling_speed,
                update_interval: seconds(a.update_interval_s, 1.0, "update_interval_s")?,
                launch_timeout: seconds(a.launch_timeout_s, 120.0, "launch_timeout_s")?,
            },
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const EXAMPLE: &str = r#"
        [head]
        port = 0
        num_cpus = 0

        [autoscaler]
        idle_timeout_s = 5

        [provider]
        type = "command"
        launch = "echo launched"
        terminate = "true"

        [node_types.cpu1]
        num_cpus = 1
        object_store_memory = "256MiB"
        resources = { ssd = 1 }
        max_nodes = 3
    "#;

    #[test]
    fn a_config_parses_into_node_types_and_a_provider() {
        let file = ClusterFile::parse(EXAMPLE, Path::new("/tmp")).unwrap();
        assert_eq!(file.head.num_cpus, Some(0.0));
        let a = &file.autoscaler;
        assert_eq!(a.idle_timeout, Duration::from_secs(5));
        assert_eq!(a.upscaling_speed, 1.0);
        assert_eq!(
            a.node_types,
            vec![NodeType {
                name: "cpu1".into(),
                resources: Resources {
                    cpus: 1.0,
                    memory_bytes: 256 << 20,
                    custom: [("ssd".to_string(), 1.0)].into(),
                },
                min_nodes: 0,
                max_nodes: 3,
            }]
        );
        assert!(a.could_ever_run(&Resources::one_cpu()));
        assert!(!a.could_ever_run(&Resources {
            cpus: 2.0,
            ..Default::default()
        }));
    }

    #[test]
    fn mistakes_are_named() {
        let cases = [
            (
                EXAMPLE.replace("max_nodes = 3", "max_nodes = 3\nmin_nodez = 1"),
                "min_nodez",
            ),
            (
                EXAMPLE.replace("max_nodes = 3", "max_nodes = 1\nmin_nodes = 2"),
                "min_nodes 2 is above max_nodes 1",
            ),
            (EXAMPLE.replace("\"256MiB\"", "\"lots\""), "lots"),
            (
                EXAMPLE.replace("type = \"command\"", "type = \"kubernetes\""),
                "kubernetes",
            ),
            (
                EXAMPLE.replace("idle_timeout_s = 5", "idle_timeout_s = -1"),
                "idle_timeout_s",
            ),
            (
                EXAMPLE.replace("[node_types.cpu1]", "[node_types.\"cpu 1\"]"),
                "letters, digits",
            ),
            (
                EXAMPLE.split("[node_types").next().unwrap().to_string(),
                "node_types",
            ),
        ];
        for (text, named) in cases {
            let error = ClusterFile::parse(&text, Path::new("/tmp")).unwrap_err();
            assert!(error.contains(named), "{named}: {error}");
        }
    }
}
