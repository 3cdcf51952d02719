//! The head's side of the scheduling simulation ([`crate::simulation`]): nodes that are
//! in-process fakes answering on a [`TaskStream`] of their own, a job with no executable, a
//! task submitted as a driver's would be, and many nodes lost at once.
//!
//! Everything else — placement, the waiting queues, retries, task events, metrics — is the
//! head's own code, unchanged: the simulation measures the head, not a model of it.

use manta_engine::{JobId, NodeId, Resources};

use super::{Head, Joining};
use crate::error::Result;
use crate::proto::{self, node_client::NodeClient};
use crate::server;
use crate::task_stream::TaskStream;

impl Head {
    /// Registers node `id`, which is not a process: `tasks` answers what the head sends it. It
    /// never heartbeats (the head run by the simulation does not watch liveness) and nothing
    /// connects to its address.
    pub fn add_simulated_node(
        &self,
        id: NodeId,
        name: &str,
        total: Resources,
        tasks: TaskStream,
    ) -> Result<()> {
        let address = format!("http://{name}.simulated.invalid:1");
        let client = NodeClient::new(server::lazy_channel(&address, &self.config.token)?);
        self.join(
            id,
            Joining {
                name: name.to_string(),
                shared_dir: String::new(),
                spill_dir: String::new(),
                address,
                total,
                store: proto::StoreUsage::default(),
                pid: 0,
                client,
                tasks,
            },
        );
        Ok(())
    }

    /// Registers a job whose tasks the simulated nodes answer (it has no executable).
    pub fn add_simulated_job(&self) -> JobId {
        let job = JobId::random();
        self.state.lock().jobs.insert(job, "simulated".to_string());
        job
    }

    /// Places and runs one task as if a driver had submitted it, retries included.
    pub async fn submit_simulated(&self, task: proto::TaskRequest) -> Result<proto::TaskSuccess> {
        self.submit(task).await
    }

    /// Loses every node of `nodes` at once, as if all had missed their heartbeats in the same
    /// tick: their tasks fail over and nothing more is placed on them.
    pub fn lose_nodes(&self, nodes: &[NodeId]) {
        let mut state = self.state.lock();
        for id in nodes {
            if let Some(node) = state.nodes.get_mut(id) {
                node.alive = false;
                node.link.lost.cancel();
            }
            state.node_changed(*id);
        }
        self.dispatch(&mut state);
    }
}
