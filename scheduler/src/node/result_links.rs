//! Result links: the node's side of the streams callers open to it, over which the successes
//! of their tasks go straight to them instead of through the head.
//!
//! A caller (a driver) opens `Node.Results` to every node it knows and names itself in the
//! first message; its task requests carry a [`proto::ReplyTo`] (the caller and a key). When such
//! a task succeeds here, [`ResultLinks::deliver`] sends the success over the caller's link and
//! waits for the caller to confirm it (the caller confirms each batch of results once it has
//! handed them on); only then does the head get its copy, a marker without the inline value,
//! which frees the task's resources and its place in the head's in-flight count. The head does
//! not answer the caller for it: the caller had let go of the call when it took the result.
//!
//! Nothing is lost on the way: a result whose caller has no link here, whose link breaks
//! before the caller confirms it, or that is not confirmed within [`CONFIRM_DEADLINE`], goes to
//! the head whole, as every result did before, and the caller takes whichever copy comes first.
//! A link that misses that deadline is given up at once (a silent peer or a dead path): every
//! result waiting on it goes through the head, and its stream ends, so the caller opens a new
//! one when its next result comes through the head.
//! A node that dies before the head hears of the task fails it with `NodeLost` as before: if
//! the caller had the result already, it ignores the failure (and the head's retry).

use std::sync::Arc;
use std::time::Duration;

use std::pin::Pin;

use futures::{Stream, StreamExt};
use parking_lot::Mutex;
use rustc_hash::FxHashMap;
use tokio::sync::{mpsc, oneshot};
use tonic::{Status, Streaming};

use crate::proto;
use crate::task_stream;

/// How long a node waits for a caller to confirm a result before sending it through the head.
pub const CONFIRM_DEADLINE: Duration = Duration::from_secs(30);

/// How long a caller has to name itself after opening a link.
const HELLO_DEADLINE: Duration = Duration::from_secs(10);

/// The stream of results a link sends its caller.
pub(crate) type ResultStream =
    Pin<Box<dyn Stream<Item = Result<proto::DirectResults, Status>> + Send>>;

/// The result links open to this node, by caller.
#[derive(Default)]
pub(crate) struct ResultLinks {
    links: Mutex<FxHashMap<u64, Arc<Link>>>,
}

/// One caller's link.
struct Link {
    /// `None` once the link broke or was given up, which ends the caller's stream.
    outgoing: Mutex<Option<mpsc::UnboundedSender<proto::DirectResult>>>,
    /// Results sent and not yet confirmed, by key; `None` once the link broke.
    awaiting: Mutex<Option<FxHashMap<u64, oneshot::Sender<()>>>>,
}

impl ResultLinks {
    /// Sends `success` of a task whose caller asked for it `to` over the caller's link; returns
    /// what the head is to get: the marker, if the caller confirmed it, else `success` itself.
    pub(crate) async fn deliver(
        &self,
        to: Option<&proto::ReplyTo>,
        success: proto::TaskSuccess,
    ) -> proto::TaskSuccess {
        let Some(to) = to else { return success };
        let Some(link) = self.links.lock().get(&to.caller).cloned() else {
            return success;
        };
        let (confirm, confirmed) = oneshot::channel();
        match link.awaiting.lock().as_mut() {
            Some(awaiting) => awaiting.insert(to.key, confirm),
            None => return success,
        };
        let result = proto::DirectResult {
            key: to.key,
            success: Some(success.clone()),
        };
        let sent = link
            .outgoing
            .lock()
            .as_ref()
            .is_some_and(|outgoing| outgoing.send(result).is_ok());
        if sent {
            match tokio::time::timeout(CONFIRM_DEADLINE, confirmed).await {
                Ok(Ok(())) => return marker(success),
                // The link broke meanwhile.
                Ok(Err(_)) => {}
                Err(_) => {
                    tracing::warn!(
                        caller = to.caller,
                        "a caller did not confirm a result within {CONFIRM_DEADLINE:?}: its \
                         result link is given up, its results go through the head"
                    );
                    self.close(to.caller, &link);
                }
            }
        }
        if let Some(awaiting) = link.awaiting.lock().as_mut() {
            awaiting.remove(&to.key);
        }
        success
    }

    /// Closes `caller`'s `link`: the deliveries waiting on it send their results through the
    /// head, its stream ends, and later results do not use it.
    fn close(&self, caller: u64, link: &Arc<Link>) {
        link.awaiting.lock().take();
        link.outgoing.lock().take();
        let mut open = self.links.lock();
        if open.get(&caller).is_some_and(|l| Arc::ptr_eq(l, link)) {
            open.remove(&caller);
        }
    }

    /// Serves a caller's link: waits for it to name itself, then streams its results to it,
    /// in batches, and hands its confirmations to the deliveries waiting for them.
    pub(crate) async fn serve(
        self: &Arc<Self>,
        mut acks: Streaming<proto::ResultAcks>,
    ) -> Result<ResultStream, Status> {
        let hello = tokio::time::timeout(HELLO_DEADLINE, acks.message())
            .await
            .map_err(|_| Status::deadline_exceeded("the caller did not name itself"))??
            .ok_or_else(|| Status::invalid_argument("the result link ended before its hello"))?;
        let caller = hello.caller;
        let (outgoing, results) = mpsc::unbounded_channel();
        let link = Arc::new(Link {
            outgoing: Mutex::new(Some(outgoing)),
            awaiting: Mutex::new(Some(FxHashMap::default())),
        });
        self.links.lock().insert(caller, Arc::clone(&link));
        let links = Arc::clone(self);
        tokio::spawn(async move {
            while let Ok(Some(acks)) = acks.message().await {
                let mut awaiting = link.awaiting.lock();
                let Some(awaiting) = awaiting.as_mut() else {
                    break;
                };
                for key in acks.received {
                    if let Some(confirm) = awaiting.remove(&key) {
                        let _ = confirm.send(());
                    }
                }
            }
            // Broken: the deliveries waiting send their results through the head.
            links.close(caller, &link);
        });
        Ok(task_stream::batches(results, |results| proto::DirectResults { results }).boxed())
    }
}

/// The head's copy of a success its caller has: everything but the inline value.
fn marker(mut success: proto::TaskSuccess) -> proto::TaskSuccess {
    if let Some(output) = &mut success.output {
        output.inline = None;
    }
    success.delivered = true;
    success
}
