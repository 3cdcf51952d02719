//! Messages that become ready together leave together: a stream adapter for the streams a
//! process writes to another under load (a node's tasks to its worker, results to callers,
//! replies to the head).
//!
//! tokio runs the task that the running task woke next (its "LIFO slot"). When a node's answers
//! from a worker come in a batch, the first call handed its message to a stream's channel and
//! the stream's sender ran at once, before the other calls woken by the same batch: it found
//! one message, and wrote it alone. Under load a node made one `writev` per message on its
//! worker and result links, and the system calls and the receivers' wake-ups were most of its
//! cost. [`Together`] waits one turn of the runtime when its first item after a pause is
//! ready: it keeps the item, wakes itself and answers `Pending`, which puts its task at the
//! back of the run queue. The tasks ready before it add their items meanwhile, and the encoder
//! polling the stream takes them all into one write. A stream that keeps having items never
//! waits, and one waiting for items costs nothing more than its inner stream.

use std::pin::Pin;
use std::task::{Context, Poll};

use futures::Stream;

/// A stream whose items, when they start arriving after a pause, wait one turn of the runtime
/// for the items arriving with them (see the module documentation).
pub struct Together<S: Stream> {
    inner: S,
    /// The first item after a pause, kept while the stream waits its turn.
    held: Option<S::Item>,
    /// The stream is between its first item after a pause and its next pause.
    flowing: bool,
}

impl<S: Stream> Together<S> {
    /// `inner`, its items gathered.
    pub fn new(inner: S) -> Self {
        Self {
            inner,
            held: None,
            flowing: false,
        }
    }
}

impl<S> Stream for Together<S>
where
    S: Stream + Unpin,
    S::Item: Unpin,
{
    type Item = S::Item;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<S::Item>> {
        let this = self.get_mut();
        if let Some(item) = this.held.take() {
            return Poll::Ready(Some(item));
        }
        match Pin::new(&mut this.inner).poll_next(cx) {
            Poll::Ready(Some(item)) if !this.flowing => {
                this.flowing = true;
                this.held = Some(item);
                cx.waker().wake_by_ref();
                Poll::Pending
            }
            Poll::Ready(item) => Poll::Ready(item),
            Poll::Pending => {
                this.flowing = false;
                Poll::Pending
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures::StreamExt;
    use std::sync::Arc;
    use tokio::sync::mpsc;
    use tokio_stream::wrappers::UnboundedReceiverStream;

    /// Every item comes out once, in order, whether it arrived alone or with others, and the
    /// stream ends when its inner one does.
    #[tokio::test]
    async fn every_item_comes_out_once_in_order() {
        let (send, items) = mpsc::unbounded_channel();
        let mut together = Together::new(UnboundedReceiverStream::new(items));
        let mut expected = Vec::new();
        let mut next = 0;
        for burst in [1, 3, 1, 7, 2] {
            for _ in 0..burst {
                send.send(next).unwrap();
                expected.push(next);
                next += 1;
            }
            let mut got = Vec::new();
            while got.len() < burst {
                got.push(together.next().await.expect("an item"));
            }
            assert_eq!(got, expected[expected.len() - burst..]);
        }
        drop(send);
        assert_eq!(together.next().await, None);
    }

    /// The first item after a pause waits one turn: the stream wakes itself and answers
    /// `Pending`, and what arrives meanwhile comes out with it, in one run of ready items.
    #[test]
    fn the_first_item_after_a_pause_waits_for_those_arriving_with_it() {
        use std::sync::atomic::{AtomicUsize, Ordering};
        struct Count(AtomicUsize);
        impl futures::task::ArcWake for Count {
            fn wake_by_ref(count: &Arc<Self>) {
                count.0.fetch_add(1, Ordering::SeqCst);
            }
        }
        let wakes = Arc::new(Count(AtomicUsize::new(0)));
        let waker = futures::task::waker(Arc::clone(&wakes));
        let mut cx = Context::from_waker(&waker);
        let (send, items) = mpsc::unbounded_channel();
        let mut together = Together::new(UnboundedReceiverStream::new(items));
        let mut poll = || Pin::new(&mut together).poll_next(&mut cx);
        for burst in [3, 1, 5] {
            assert_eq!(poll(), Poll::Pending, "nothing there yet");
            let woken = wakes.0.load(Ordering::SeqCst);
            send.send(0).unwrap();
            assert_eq!(poll(), Poll::Pending, "the first item waits its turn");
            assert!(
                wakes.0.load(Ordering::SeqCst) > woken,
                "and the stream is woken for it"
            );
            for item in 1..burst {
                send.send(item).unwrap();
            }
            for item in 0..burst {
                assert_eq!(poll(), Poll::Ready(Some(item)));
            }
        }
        drop(send);
        assert_eq!(poll(), Poll::Ready(None));
    }
}
