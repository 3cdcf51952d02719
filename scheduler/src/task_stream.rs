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
//!   A call may end without a reply when the caller has its answer already by another way (a
//!   driver's task whose result came over a result link, [`crate::direct_results`]); the caller
//!   then lets go of the call itself ([`TaskStream::forget`]).
//!
//! Batching costs no latency: the sender takes what is queued *now*; under light load a batch
//! is one call.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use futures::future::BoxFuture;
use futures::stream::BoxStream;
use futures::{Stream, StreamExt};
use parking_lot::Mutex;
use prost::Message;
use rustc_hash::FxHashMap;
use tokio::sync::{Semaphore, mpsc, oneshot};
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Status, Streaming};

use crate::proto::{TaskCall, TaskCallReplies, TaskCallReply, TaskCalls, TaskReply, TaskRequest};
use crate::together::Together;

/// Calls sent in one message at most.
pub const MAX_CALLS: usize = 4096;

/// A message is cut once its calls (or replies) pass this size, well under gRPC's 4 MiB.
pub const MAX_BATCH_BYTES: usize = 1 << 20;

/// The replies of an open stream (a gRPC response stream, or in a test, anything).
pub type Replies = BoxStream<'static, Result<TaskCallReplies, Status>>;

/// Opens the stream: given the outgoing messages, starts the RPC and returns the replies.
pub type Opener = Arc<
    dyn Fn(ReceiverStream<TaskCalls>) -> BoxFuture<'static, Result<Replies, Status>> + Send + Sync,
>;

/// How every status this module makes up (the stream stopped, ended, broke) begins.
pub(crate) const STREAM_ENDED: &str = "the task stream";

/// What is done with a call's reply (or with the status that replaces it).
pub type OnReply = Box<dyn FnOnce(Result<TaskReply, Status>) + Send>;

/// A call queued on a stream: its id, the task, what to do with the reply.
type Queued = (u64, TaskRequest, OnReply);

/// The caller's side of a task stream (see the module documentation).
#[derive(Clone)]
pub struct TaskStream {
    queue: mpsc::UnboundedSender<Queued>,
    /// The id of the next call: unique over the stream's life, across the links it opens.
    next_id: Arc<AtomicU64>,
    /// The calls the link open now carries ([`TaskStream::forget`] looks there).
    current: Arc<Mutex<Option<Arc<Mutex<InFlight>>>>>,
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
        let current = Arc::default();
        tokio::spawn(send_calls(open, calls, Arc::clone(&current)));
        Self {
            queue,
            next_id: Arc::new(AtomicU64::new(1)),
            current,
        }
    }

    /// A stream whose calls `answer` takes in this process, in order, with no transport: how
    /// the scheduling simulation ([`crate::simulation`]) stands in for a node. `answer`
    /// runs on the stream's own task, so it must not block.
    pub fn in_process(answer: Arc<dyn Fn(TaskRequest, OnReply) + Send + Sync>) -> Self {
        let (queue, mut calls) = mpsc::unbounded_channel::<Queued>();
        tokio::spawn(async move {
            let mut queued = Vec::new();
            while calls.recv_many(&mut queued, MAX_CALLS).await > 0 {
                for (_, task, on_reply) in queued.drain(..) {
                    answer(task, on_reply);
                }
            }
        });
        Self {
            queue,
            next_id: Arc::new(AtomicU64::new(1)),
            current: Arc::default(),
        }
    }

    /// Queues one task; `on_reply` gets its reply, or the error status that replaces it if
    /// the stream broke first. It runs on the stream's receiving task, so it must not block.
    /// Needs no runtime context: a plain thread can send.
    pub fn send(&self, task: TaskRequest, on_reply: OnReply) {
        self.send_as(self.reserve(), task, on_reply);
    }

    /// An id for a call not sent yet, for [`TaskStream::send_as`]: so that the caller knows
    /// the call's id before the call goes (to [`forget`](TaskStream::forget) it later).
    pub(crate) fn reserve(&self) -> u64 {
        self.next_id.fetch_add(1, Ordering::Relaxed)
    }

    /// [`TaskStream::send`] of a call whose id was [reserved](TaskStream::reserve).
    pub(crate) fn send_as(&self, call: u64, task: TaskRequest, on_reply: OnReply) {
        if let Err(refused) = self.queue.send((call, task, on_reply)) {
            let (_, _, on_reply) = refused.0;
            on_reply(Err(Status::unavailable("the task stream has stopped")));
        }
    }

    /// Lets go of `calls`, whose answers the caller has by another way: their handlers are
    /// dropped without being called, and a reply that comes for one later is ignored. A call
    /// the stream answered already (or failed, when it broke) is skipped.
    pub(crate) fn forget(&self, calls: impl IntoIterator<Item = u64>) {
        let Some(link) = self.current.lock().clone() else {
            return;
        };
        let forgotten: Vec<OnReply> = {
            let mut in_flight = link.lock();
            calls
                .into_iter()
                .filter_map(|call| in_flight.waiting.remove(&call))
                .collect()
        };
        // Dropped outside the lock: a handler may own what takes a lock of its own to drop.
        drop(forgotten);
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
    /// By call id: this process's own sequence of numbers, so a quick hash is safe.
    waiting: FxHashMap<u64, OnReply>,
}

/// One open stream: where its messages go, and the calls awaiting replies on it.
struct Link {
    outgoing: mpsc::Sender<TaskCalls>,
    in_flight: Arc<Mutex<InFlight>>,
}

async fn send_calls(
    open: Opener,
    mut queue: mpsc::UnboundedReceiver<Queued>,
    current: Arc<Mutex<Option<Arc<Mutex<InFlight>>>>>,
) {
    let mut link: Option<Link> = None;
    let mut queued = Vec::new();
    while queue.recv_many(&mut queued, MAX_CALLS).await > 0 {
        let mut calls = queued.drain(..).peekable();
        while calls.peek().is_some() {
            if link.as_ref().is_none_or(|l| l.in_flight.lock().broken) {
                match open_link(&open).await {
                    Ok(opened) => link = Some(opened),
                    Err(status) => {
                        for (_, _, reply) in calls.by_ref() {
                            reply(Err(status.clone()));
                        }
                        break;
                    }
                }
                *current.lock() = link.as_ref().map(|l| Arc::clone(&l.in_flight));
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
                    && let Some((call_id, task, reply)) = calls.next()
                {
                    bytes += task.encoded_len();
                    in_flight.waiting.insert(call_id, reply);
                    message.calls.push(TaskCall {
                        call_id,
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
async fn receive_replies(mut replies: Replies, in_flight: Arc<Mutex<InFlight>>) {
    let status = loop {
        match replies.next().await {
            Some(Ok(batch)) => {
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
            None => break Status::unavailable("the task stream ended"),
            Some(Err(status)) => break status,
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
/// finish. A call `run` ends with `None` is not answered: the caller has its answer already
/// and [forgets](TaskStream::forget) the call itself.
pub fn serve<F, Fut>(mut calls: Streaming<TaskCalls>, run: F) -> ReplyStream
where
    F: Fn(TaskRequest) -> Fut + Send + 'static,
    Fut: Future<Output = Option<TaskReply>> + Send + 'static,
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
                    if let Some(reply) = running.await {
                        let _ = done.send(TaskCallReply {
                            call_id: call.call_id,
                            reply: Some(reply),
                        });
                    }
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
) -> Together<BoxStream<'static, Result<M, Status>>>
where
    T: Message + Send + 'static,
    M: Send + 'static,
{
    let batches = futures::stream::unfold(
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
    );
    Together::new(batches.boxed())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::{TaskSuccess, task_reply};

    /// A call's outcome as a test sees it: the call's id, and `Ok` or the failure's code.
    type Answer = (u64, Result<(), tonic::Code>);

    /// A stream whose callee is the test, and `count` calls sent on it: returns the stream, the
    /// calls' ids, where their answers go, and where the test puts the callee's replies (after
    /// the calls reached the callee, each with the id reserved for it).
    async fn calls_to_test(
        count: usize,
    ) -> (
        TaskStream,
        Vec<u64>,
        mpsc::UnboundedReceiver<Answer>,
        mpsc::UnboundedSender<Result<TaskCallReplies, Status>>,
    ) {
        let (calls_out, mut calls) = mpsc::unbounded_channel();
        let (replies, replies_in) = mpsc::unbounded_channel();
        let replies_in = Arc::new(Mutex::new(Some(replies_in)));
        let stream = TaskStream::new(Arc::new(move |mut outgoing: ReceiverStream<TaskCalls>| {
            let calls_out = calls_out.clone();
            let replies_in = replies_in.lock().take();
            Box::pin(async move {
                tokio::spawn(async move {
                    while let Some(message) = outgoing.next().await {
                        let _ = calls_out.send(message);
                    }
                });
                let replies_in = replies_in.ok_or_else(|| Status::unavailable("opened twice"))?;
                Ok(tokio_stream::wrappers::UnboundedReceiverStream::new(replies_in).boxed())
            })
        }));
        let (answered, answers) = mpsc::unbounded_channel();
        let ids: Vec<u64> = (0..count).map(|_| stream.reserve()).collect();
        for &id in &ids {
            let answered = answered.clone();
            let on_reply: OnReply = Box::new(move |reply: Result<TaskReply, Status>| {
                let _ = answered.send((id, reply.map(|_| ()).map_err(|s| s.code())));
            });
            stream.send_as(id, TaskRequest::default(), on_reply);
        }
        let mut seen = Vec::new();
        while seen.len() < count {
            let message: TaskCalls = calls.recv().await.expect("the calls arrive");
            seen.extend(message.calls.iter().map(|call| call.call_id));
        }
        assert_eq!(seen, ids, "each call goes with the id reserved for it");
        (stream, ids, answers, replies)
    }

    /// The calls the open link awaits replies for.
    fn waiting(stream: &TaskStream) -> usize {
        let link = stream.current.lock().clone().expect("a link is open");
        link.lock().waiting.len()
    }

    /// The ids of the next `count` answers, sorted, each checked to be `outcome`.
    async fn answered(
        answers: &mut mpsc::UnboundedReceiver<Answer>,
        count: usize,
        outcome: Result<(), tonic::Code>,
    ) -> Vec<u64> {
        let mut ids = Vec::new();
        for _ in 0..count {
            let (id, got) = answers.recv().await.expect("an answer");
            assert_eq!(got, outcome, "call {id}");
            ids.push(id);
        }
        ids.sort_unstable();
        ids
    }

    /// Calls the caller forgets (their answers came another way) are let go of at once; the
    /// callee's later replies to them are ignored, and the other calls get theirs.
    #[tokio::test]
    async fn forgotten_calls_are_let_go_and_their_late_replies_ignored() {
        let (stream, ids, mut answers, replies) = calls_to_test(6).await;
        assert_eq!(waiting(&stream), 6);
        let (forgotten, kept): (Vec<u64>, Vec<u64>) = ids.iter().partition(|id| *id % 2 == 0);
        // Forgetting is idempotent, and an id never sent is skipped.
        let twice = forgotten.iter().chain(&forgotten).copied();
        stream.forget(twice.chain([u64::MAX]));
        assert_eq!(waiting(&stream), kept.len());

        // One batch answers every call: the forgotten ones are skipped as the batch is read,
        // before any handler runs, so once the kept calls are answered nothing else can be.
        let batch = ids.iter().map(|&call_id| TaskCallReply {
            call_id,
            reply: Some(TaskReply {
                result: Some(task_reply::Result::Success(TaskSuccess::default())),
            }),
        });
        let batch = TaskCallReplies {
            replies: batch.collect(),
        };
        replies.send(Ok(batch)).unwrap();
        assert_eq!(answered(&mut answers, kept.len(), Ok(())).await, kept);
        assert!(answers.try_recv().is_err(), "a forgotten call was answered");
        assert_eq!(waiting(&stream), 0);
    }

    /// When the stream breaks, the calls still waiting fail with its status; forgotten ones
    /// are not called at all.
    #[tokio::test]
    async fn a_broken_stream_fails_the_waiting_calls_but_not_the_forgotten() {
        let (stream, ids, mut answers, replies) = calls_to_test(3).await;
        stream.forget([ids[1]]);
        replies.send(Err(Status::aborted("cut"))).unwrap();
        let failed = answered(&mut answers, 2, Err(tonic::Code::Aborted)).await;
        assert_eq!(failed, [ids[0], ids[2]]);
        // Every handler is gone (called or dropped), and none answered again.
        assert_eq!(answers.recv().await, None);
    }
}
