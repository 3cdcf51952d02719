//! Result links, the caller's side: the successes of a driver's tasks come straight from the
//! node that ran them, not through the head.
//!
//! The head places tasks and keeps the cluster's state; the results need not pass through it.
//! A driver opens a link (`Node.Results`) to every live node when it joins, and to any node a
//! result later came from through the head (a node that joined after it, or whose link broke).
//! Each task it submits ([`DirectResults::send`]) carries a [`proto::ReplyTo`]: this process's
//! random caller id and a key, which is also the call's id on the task stream to the head. The
//! node that runs the task sends its success over the link
//! (`scheduler/src/node/result_links.rs`); this side hands it to the call, lets go of the call
//! on the task stream ([`TaskStream::forget`]) and confirms it, and only then does the node
//! report to the head, which then sends the call no answer at all: a task whose result came
//! this way costs the head no reply. Anything else the head answers (a failure, a success that
//! did not go over a link) goes to the call as before. Whichever copy of a result comes first
//! is the answer; the other is dropped: so a link that breaks loses nothing (the node sends
//! what was not confirmed through the head), and a failure or retry the head reports for a
//! task whose result arrived already changes nothing.
//!
//! Lineage, retries and the in-flight cap are untouched: the head still sees every task end
//! (it frees the task's resources and its place among the stream's calls in flight when the
//! node reports, after the caller has the result).

use std::collections::HashSet;
use std::sync::{Arc, Weak};
use std::time::Duration;

use manta_flight::auth::Token;
use parking_lot::Mutex;
use rustc_hash::FxHashMap;
use tokio::sync::mpsc;
use tokio_stream::wrappers::UnboundedReceiverStream;
use tokio_util::sync::CancellationToken;
use tonic::Status;

use crate::proto::node_client::NodeClient;
use crate::proto::{self, task_reply};
use crate::server;
use crate::task_stream::{OnReply, TaskStream};

/// How long opening a link may take before it is given up (results then come through the head).
const OPEN_DEADLINE: Duration = Duration::from_secs(10);

/// A caller's result links and the calls whose results may come over them.
pub(crate) struct DirectResults {
    /// Names this process to the nodes: random, so two callers never share it.
    caller: u64,
    /// The stream the calls go to the head over; a call's key is its id there.
    tasks: TaskStream,
    /// Calls not answered yet, by key (this process's own call ids: a quick hash is safe).
    pending: Mutex<FxHashMap<u64, OnReply>>,
    /// The nodes a link is open (or opening) to, by address.
    linked: Mutex<HashSet<String>>,
    token: Token,
    /// Closes every link when this is dropped.
    stop: CancellationToken,
}

impl Drop for DirectResults {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

impl DirectResults {
    /// No links yet; calls go to the head over `tasks`, and links present `token` when opened.
    pub(crate) fn new(token: Token, tasks: TaskStream) -> Arc<Self> {
        Arc::new(Self {
            caller: rand::random(),
            tasks,
            pending: Mutex::default(),
            linked: Mutex::default(),
            token,
            stop: CancellationToken::new(),
        })
    }

    /// Sends `task` to the head; `on_reply` gets its success from the node that runs it (over
    /// the link), or what the head answers instead (a failure, a success it carried).
    pub(crate) fn send(self: &Arc<Self>, mut task: proto::TaskRequest, on_reply: OnReply) {
        let key = self.tasks.reserve();
        self.pending.lock().insert(key, on_reply);
        task.reply_to = Some(proto::ReplyTo {
            caller: self.caller,
            key,
        });
        let results = Arc::clone(self);
        let from_head: OnReply = Box::new(move |reply| results.from_head(key, reply));
        self.tasks.send_as(key, task, from_head);
    }

    /// Opens a link to the node at `address` unless one is open, in the background (must be
    /// called inside a tokio runtime).
    pub(crate) fn link(self: &Arc<Self>, address: &str) {
        if address.is_empty() || !self.linked.lock().insert(address.to_string()) {
            return;
        }
        tokio::spawn(run_link(Arc::downgrade(self), address.to_string()));
    }

    /// The head's answer to call `key`: handed to the call unless its result came first.
    fn from_head(self: &Arc<Self>, key: u64, reply: Result<proto::TaskReply, Status>) {
        let Some(on_reply) = self.pending.lock().remove(&key) else {
            return;
        };
        if let Ok(proto::TaskReply {
            result: Some(task_reply::Result::Success(success)),
        }) = &reply
        {
            if success.delivered {
                // The head answers no call whose result came over a link, and the node reports
                // such a result only after this side took the call out of `pending`.
                return on_reply(Err(Status::internal(
                    "the head said the result went over the result link, but it never arrived",
                )));
            }
            if let Some(output) = &success.output {
                self.link(&output.address);
            }
        }
        on_reply(reply)
    }

    /// Hands each result of `batch` to its call and lets go of the call on the task stream
    /// (the head will not answer it); returns the keys to confirm (all of them: a result whose
    /// call the head answered first is confirmed too, and dropped).
    fn take(&self, batch: proto::DirectResults) -> Vec<u64> {
        let mut received = Vec::with_capacity(batch.results.len());
        let answered: Vec<_> = {
            let mut pending = self.pending.lock();
            batch
                .results
                .into_iter()
                .filter_map(|result| {
                    received.push(result.key);
                    Some((result.key, pending.remove(&result.key)?, result.success))
                })
                .collect()
        };
        self.tasks.forget(answered.iter().map(|(key, _, _)| *key));
        for (_, on_reply, success) in answered {
            on_reply(Ok(proto::TaskReply {
                result: success.map(task_reply::Result::Success),
            }));
        }
        received
    }
}

/// One link: opens it, takes its results until it breaks or the caller is gone, then forgets
/// it (so that the next result through the head from that node opens it again).
async fn run_link(results: Weak<DirectResults>, address: String) {
    let Some((caller, token, stop)) = results
        .upgrade()
        .map(|r| (r.caller, r.token.clone(), r.stop.clone()))
    else {
        return;
    };
    let linked = async {
        let mut node = NodeClient::new(server::lazy_channel(&address, &token).ok()?);
        let (acks, outgoing) = mpsc::unbounded_channel();
        acks.send(proto::ResultAcks {
            caller,
            received: Vec::new(),
        })
        .ok()?;
        let opened = node.results(UnboundedReceiverStream::new(outgoing));
        let mut stream = tokio::time::timeout(OPEN_DEADLINE, opened)
            .await
            .ok()?
            .ok()?
            .into_inner();
        while let Ok(Some(batch)) = stream.message().await {
            let received = results.upgrade()?.take(batch);
            acks.send(proto::ResultAcks { caller, received }).ok()?;
        }
        Some(())
    };
    tokio::select! {
        _ = linked => {}
        _ = stop.cancelled() => return,
    }
    tracing::debug!(node = %address, "result link closed");
    if let Some(results) = results.upgrade() {
        results.linked.lock().remove(&address);
    }
}
