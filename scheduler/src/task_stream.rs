//! Many task calls over one gRPC stream, in batches: how a driver submits tasks to the head,
//! and how the head runs them on a node.
//!
//! A unary RPC per task costs an HTTP/2 stream, headers, and a round of wake-ups on both sides;
//! at tens of thousands of tasks a second that is most of the work. So each link is one
//! long-lived bidirectional stream of [`TaskCalls`] one way and [`TaskCallReplies`] the other:
//!
//! * The caller's side is a [`TaskStream`]. [`TaskStream::send`] queues a call with what to do
//!   with its reply (a callback, so a call in flight costs no task of its own), and
//!   [`TaskStream::call`] queues one and waits for its reply. One sender task takes everything
//!   queued (up to [`MAX_CALLS`] calls or [`MAX_BATCH_BYTES`]) and sends it as one message;
//!   one receiver task per stream hands each reply to the call waiting for it, by call id. If
//!   the stream breaks, the calls it carried fail with the transport's status, and the next
//!   call opens a new stream.
//! * The callee's side is [`serve`]: it runs each call of each message as a tokio task of its
//!   own, [`MAX_IN_FLIGHT`] at once at most, and sends the replies back, batched the same way.
//!
//! Batching costs no latency: the sender takes what is queued *now*; under light load a batch
//! is one call.

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use futures::future::BoxFuture;
use futures::{Stream, StreamExt};
use parking_lot::Mutex;
use prost::Message;
use tokio::sync::{Semaphore, mpsc, oneshot};
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Status, Streaming};

use crate::proto::{TaskCall, TaskCallReplies, TaskCallReply, TaskCalls, TaskReply, TaskRequest};

/// Calls sent in one message at most.
pub const MAX_CALLS: usize = 4096;

/// A message is cut once its calls (or replies) pass this size, well under gRPC's 4 MiB.
pub const MAX_BATCH_BYTES: usize = 1 << 20;

/// Opens the stream: given the outgoing messages, starts the RPC and returns the replies.
pub type Opener = Arc<
    dyn Fn(
            ReceiverStream<TaskCalls>,
        ) -> BoxFuture<'static, Result<Streaming<TaskCallReplies>, Status>>
        + Send
        + Sync,
>;

/// How every status this module makes up (the stream stopped, ended, broke) begins.
pub(crate) const STREAM_ENDED: &str = "the task stream";

/// What is done with a call's reply (or with the status that replaces it).
pub type OnReply = Box<dyn FnOnce(Result<TaskReply, Status>) + Send>;

/// The caller's side of a task stream (see the module documentation).
#[derive(Clone)]
pub struct TaskStream {
    queue: mpsc::UnboundedSender<(TaskRequest, OnReply)>,
}

impl std::fmt::Debug for TaskStream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TaskStream").finish_non_exhaustive()
    }
}

impl TaskStream {
    /// A stream opened with `open` at the first call (must be created inside a tokio runtime).
    pub fn new(open: Opener) -> Self {
        let (queue, calls) = mpsc::unbounded_channel();
        tokio::spawn(send_calls(open, calls));
        Self { queue }
    }

    /// A stream whose calls `answer` takes in this process, in order, with no transport: how
    /// the scheduling simulation ([`crate::simulation`]) stands in for a node. `answer`
    /// runs on the stream's own task, so it must not block.
    pub fn in_process(answer: Arc<dyn Fn(TaskRequest, OnReply) + Send + Sync>) -> Self {
        let (queue, mut calls) = mpsc::unbounded_channel::<(TaskRequest, OnReply)>();
        tokio::spawn(async move {
            let mut queued = Vec::new();
            while calls.recv_many(&mut queued, MAX_CALLS).await > 0 {
                for (task, on_reply) in queued.drain(..) {
                    answer(task, on_reply);
                }
            }
        });
        Self { queue }
    }

    /// Queues one task; `on_reply` gets its reply, or the error status that replaces it if
    /// the stream broke first. It runs on the stream's receiving task, so it must not block.
    /// Needs no runtime context: a plain thread can send.
    pub fn send(&self, task: TaskRequest, on_reply: OnReply) {
        if let Err(refused) = self.queue.send((task, on_reply)) {
            let (_, on_reply) = refused.0;
            on_reply(Err(Status::unavailable("the task stream has stopped")));
        }
    }

    /// Sends one task and waits for its reply; an error status if the stream broke first.
    pub async fn call(&self, task: TaskRequest) -> Result<TaskReply, Status> {
        let (reply, answer) = oneshot::channel();
        self.send(
            task,
            Box::new(move |outcome| {
                let _ = reply.send(outcome);
            }),
        );
        answer
            .await
            .map_err(|_| Status::unavailable("the task stream stopped before the reply"))?
    }
}

/// The calls one stream carries and awaits; once it breaks, no call is added to it.
#[derive(Default)]
struct InFlight {
    broken: bool,
    waiting: HashMap<u64, OnReply>,
}

/// One open stream: where its messages go, and the calls awaiting replies on it.
struct Link {
    outgoing: mpsc::Sender<TaskCalls>,
    in_flight: Arc<Mutex<InFlight>>,
}

async fn send_calls(open: Opener, mut queue: mpsc::UnboundedReceiver<(TaskRequest, OnReply)>) {
    let mut link: Option<Link> = None;
    let mut next_id = 0u64;
    let mut queued = Vec::new();
    while queue.recv_many(&mut queued, MAX_CALLS).await > 0 {
        let mut calls = queued.drain(..).peekable();
        while calls.peek().is_some() {
            if link.as_ref().is_none_or(|l| l.in_flight.lock().broken) {
                match open_link(&open).await {
                    Ok(opened) => link = Some(opened),
                    Err(status) => {
                        for (_, reply) in calls.by_ref() {
                            reply(Err(status.clone()));
                        }
                        break;
                    }
                }
            }
            let link = link.as_ref().expect("opened");
            // Room for every call queued, so the batch is not moved as it grows.
            let mut message = TaskCalls {
                calls: Vec::with_capacity(calls.len()),
            };
            let mut bytes = 0;
            {
                let mut in_flight = link.in_flight.lock();
                if in_flight.broken {
                    continue;
                }
                while bytes < MAX_BATCH_BYTES
                    && let Some((task, reply)) = calls.next()
                {
                    next_id += 1;
                    bytes += task.encoded_len();
                    in_flight.waiting.insert(next_id, reply);
                    message.calls.push(TaskCall {
                        call_id: next_id,
                        task: Some(task),
                    });
                }
            }
            // If the stream is gone, its receiver fails the calls just added.
            let _ = link.outgoing.send(message).await;
        }
    }
}

async fn open_link(open: &Opener) -> Result<Link, Status> {
    let (outgoing, messages) = mpsc::channel(64);
    let replies = open(ReceiverStream::new(messages)).await?;
    let in_flight = Arc::new(Mutex::new(InFlight::default()));
    tokio::spawn(receive_replies(replies, Arc::clone(&in_flight)));
    Ok(Link {
        outgoing,
        in_flight,
    })
}

/// Hands each reply to its call; when the stream ends, fails the calls still waiting.
async fn receive_replies(mut replies: Streaming<TaskCallReplies>, in_flight: Arc<Mutex<InFlight>>) {
    let status = loop {
        match replies.message().await {
            Ok(Some(batch)) => {
                // Taken under the lock, answered outside it.
                let answered: Vec<_> = {
                    let mut in_flight = in_flight.lock();
                    batch
                        .replies
                        .into_iter()
                        .filter_map(|reply| {
                            let waiting = in_flight.waiting.remove(&reply.call_id)?;
                            Some((waiting, reply.reply))
                        })
                        .collect()
                };
                for (waiting, reply) in answered {
                    waiting(
                        reply
                            .ok_or_else(|| Status::internal("a task call's reply came back empty")),
                    );
                }
            }
            Ok(None) => break Status::unavailable("the task stream ended"),
            Err(status) => break status,
        }
    };
    let waiting = {
        let mut in_flight = in_flight.lock();
        in_flight.broken = true;
        std::mem::take(&mut in_flight.waiting)
    };
    for (_, waiting) in waiting {
        waiting(Err(status.clone()));
    }
}

/// Calls one served stream runs at once at most; past it, [`serve`] stops reading the stream
/// until a call finishes. Calls waiting beyond it wait at the caller (as queued requests, far
/// smaller than running calls) and in the transport's flow control, so a callee's memory stays
/// bounded however many calls a caller sends.
pub const MAX_IN_FLIGHT: usize = 2 * MAX_CALLS;

/// The reply stream [`serve`] returns.
pub type ReplyStream = Pin<Box<dyn Stream<Item = Result<TaskCallReplies, Status>> + Send>>;

/// The callee's side: runs every call arriving on `calls` with `run`, each as a tokio task of
/// its own ([`MAX_IN_FLIGHT`] at once at most), and streams the replies back in batches as they
/// finish.
pub fn serve<F, Fut>(mut calls: Streaming<TaskCalls>, run: F) -> ReplyStream
where
    F: Fn(TaskRequest) -> Fut + Send + 'static,
    Fut: Future<Output = TaskReply> + Send + 'static,
{
    let (done, replies) = mpsc::unbounded_channel::<TaskCallReply>();
    let room = Arc::new(Semaphore::new(MAX_IN_FLIGHT));
    tokio::spawn(async move {
        while let Ok(Some(message)) = calls.message().await {
            for call in message.calls {
                let Ok(slot) = Arc::clone(&room).acquire_owned().await else {
                    return;
                };
                // Boxed once where it is made: a call's future is large (the head's holds a
                // whole placement and retry loop), and spawning moves what it is given twice
                // more; a profile of the tasks workload found a tenth of the head's and nodes'
                // time in those copies.
                let running = Box::pin(run(call.task.unwrap_or_default()));
                let done = done.clone();
                tokio::spawn(async move {
                    let reply = running.await;
                    let _ = done.send(TaskCallReply {
                        call_id: call.call_id,
                        reply: Some(reply),
                    });
                    drop(slot);
                });
            }
        }
    });
    batches(replies, |replies| TaskCallReplies { replies }).boxed()
}

/// What arrives on `items` as a stream of messages made by `message`, each of up to
/// [`MAX_CALLS`] items and about [`MAX_BATCH_BYTES`]: whatever is there when the last message
/// went, so batching costs no latency. Ends when every sender is gone.
pub(crate) fn batches<T, M>(
    items: mpsc::UnboundedReceiver<T>,
    message: fn(Vec<T>) -> M,
) -> impl Stream<Item = Result<M, Status>> + Send + 'static
where
    T: Message + Send + 'static,
    M: Send + 'static,
{
    futures::stream::unfold(
        (items, None::<T>),
        move |(mut items, mut carried)| async move {
            let first = match carried.take() {
                Some(item) => item,
                None => items.recv().await?,
            };
            let mut bytes = first.encoded_len();
            let mut batch = vec![first];
            while batch.len() < MAX_CALLS
                && let Ok(item) = items.try_recv()
            {
                let size = item.encoded_len();
                if bytes + size > MAX_BATCH_BYTES {
                    carried = Some(item);
                    break;
                }
                bytes += size;
                batch.push(item);
            }
            Some((Ok(message(batch)), (items, carried)))
        },
    )
}
