//! The [`NodeProvider`] trait: what the autoscaler needs from whatever starts machines (a
//! local process, a command that reaches SSH, Slurm or a cloud CLI, one day Kubernetes).

use manta_engine::Resources;
use manta_flight::auth::Token;

use crate::error::Result;

/// One node to start: it must run `manta start` with [`LaunchRequest::start_args`] (and the
/// token in `MANTA_TOKEN`), so that it joins the head under its name.
#[derive(Debug, Clone)]
pub struct LaunchRequest {
    /// The node's name, unique in this cluster: `<node type>-<n>`.
    pub name: String,
    /// Its node type.
    pub node_type: String,
    /// What it offers (memory is its object store budget).
    pub resources: Resources,
    /// The head to join.
    pub head_address: String,
    /// The cluster token.
    pub token: Token,
}

impl LaunchRequest {
    /// The arguments of `manta` that start this node: `start --address ... --node-name ...`.
    pub fn start_args(&self) -> Vec<String> {
        let mut args = vec![
            "start".to_string(),
            "--address".into(),
            self.head_address.clone(),
            "--node-name".into(),
            self.name.clone(),
            "--num-cpus".into(),
            self.resources.cpus.to_string(),
            "--object-store-memory".into(),
            self.resources.memory_bytes.to_string(),
        ];
        if !self.resources.custom.is_empty() {
            args.extend(["--resources".to_string(), self.custom_resources()]);
        }
        args
    }

    /// Its custom resources as `manta start --resources` takes them: `name=amount,...`.
    pub fn custom_resources(&self) -> String {
        let custom: Vec<String> = self
            .resources
            .custom
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect();
        custom.join(",")
    }
}

/// Starts and stops nodes for the autoscaler. Calls may take long (a cloud VM boots in a
/// minute); the autoscaler runs each on a task of its own, with a deadline, and treats an
/// error or a panic as a failed launch, retried with backoff.
#[async_trait::async_trait]
pub trait NodeProvider: Send + Sync {
    /// Starts the node; returns the provider's id for it (what [`NodeProvider::terminate`]
    /// takes). It may return before the node has joined the head.
    async fn launch(&self, request: &LaunchRequest) -> Result<String>;

    /// Stops the node `id` names (its daemon stops its workers and frees its store).
    async fn terminate(&self, id: &str) -> Result<()>;
}
