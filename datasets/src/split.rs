//! [`Dataset::streaming_split`]: one running pipeline feeding `n` consumers.
//!
//! The consumers share the pipeline's output channel behind a lock. By blocks (the default),
//! whichever consumer asks next takes the next block whole: shares are disjoint, cover the
//! dataset, and a fast consumer takes more.
//!
//! By rows (`streaming_split_equal`, Ray's `equal=True`), every share ends with exactly
//! `total / n` rows, though `total` is known only at the end. The rule that makes it work:
//! rows that have come out of the pipeline so far, `seen`, wait in a buffer, and a consumer is
//! handed rows only while it has had fewer than `seen / n`. Since `seen <= total`, no share ever
//! passes `total / n`; so when the pipeline ends, the buffer holds at least what every share
//! still lacks, and each is topped up to exactly `total / n` (the `total % n` rows left go to no
//! one). Batches are cut (zero-copy slices) where a share needs it. A consumer that runs ahead
//! pulls more blocks into the buffer; a slow one makes the buffer grow, as in Ray.

use std::collections::VecDeque;
use std::sync::Arc;

use arrow::array::RecordBatch;
use parking_lot::Mutex;
use tokio::sync::mpsc;

use crate::dataset::{Dataset, fetch_batches};
use crate::error::{Error, Result};
use crate::executor::BlockOut;
use crate::plan::Sink;
use crate::stats::{DatasetStats, StageStats};

/// One consumer's share of a [`Dataset::streaming_split`].
pub struct SplitIter {
    shared: Arc<Shared>,
    /// Which consumer this is.
    index: usize,
    pending: VecDeque<RecordBatch>,
}

struct Shared {
    dataset: Dataset,
    state: Mutex<State>,
}

struct State {
    rx: Option<mpsc::Receiver<BlockOut>>,
    handle: Option<tokio::task::JoinHandle<Result<DatasetStats>>>,
    before: Vec<StageStats>,
    /// The pipeline's error, for the consumers that did not see it first.
    failure: Option<String>,
    /// For shares of equal rows.
    equal: Option<EqualRows>,
}

/// The bookkeeping of shares of equal rows (see the module's doc).
struct EqualRows {
    /// Rows handed to each consumer.
    delivered: Vec<u64>,
    /// Rows out of the pipeline so far.
    seen: u64,
    /// Rows seen and not yet handed out, in order.
    buffer: VecDeque<RecordBatch>,
    /// Whether the pipeline has ended (so `seen` is the total).
    done: bool,
}

/// Starts the pipeline and makes the `n` consumers' iterators.
pub(crate) fn start(dataset: &Dataset, n: usize, equal: bool) -> Result<Vec<SplitIter>> {
    if n == 0 {
        return Err(Error::InvalidArgument(
            "streaming_split needs at least one consumer".into(),
        ));
    }
    let (rx, handle, before) = dataset.start(Sink::Driver)?;
    let shared = Arc::new(Shared {
        dataset: dataset.clone(),
        state: Mutex::new(State {
            rx: Some(rx),
            handle: Some(handle),
            before,
            failure: None,
            equal: equal.then(|| EqualRows {
                delivered: vec![0; n],
                seen: 0,
                buffer: VecDeque::new(),
                done: false,
            }),
        }),
    });
    Ok((0..n)
        .map(|index| SplitIter {
            shared: Arc::clone(&shared),
            index,
            pending: VecDeque::new(),
        })
        .collect())
}

impl Shared {
    /// The next block out of the pipeline; `None` at its end (having checked how it ended).
    fn next_block(&self, state: &mut State) -> Option<Result<BlockOut>> {
        if let Some(reason) = &state.failure {
            return Some(Err(Error::PipelineFailed {
                reason: reason.clone(),
            }));
        }
        let rx = state.rx.as_mut()?;
        if let Some(out) = self.dataset.ctx.block_on(rx.recv()) {
            return Some(Ok(out));
        }
        state.rx = None;
        let handle = state.handle.take()?;
        let before = std::mem::take(&mut state.before);
        match self.dataset.finish(handle, before) {
            Ok(_) => None,
            Err(e) => {
                state.failure = Some(e.to_string());
                Some(Err(e))
            }
        }
    }

    /// The next rows for consumer `index` of an equal split; `None` once it has its share.
    fn next_equal(&self, index: usize) -> Option<Result<RecordBatch>> {
        let mut guard = self.state.lock();
        let state = &mut *guard;
        loop {
            let equal = state.equal.as_mut().expect("an equal split");
            let n = equal.delivered.len() as u64;
            let allowed = (equal.seen / n).saturating_sub(equal.delivered[index]);
            if allowed > 0
                && let Some(front) = equal.buffer.pop_front()
            {
                let take = (allowed as usize).min(front.num_rows());
                if take < front.num_rows() {
                    equal
                        .buffer
                        .push_front(front.slice(take, front.num_rows() - take));
                }
                equal.delivered[index] += take as u64;
                return Some(Ok(front.slice(0, take)));
            }
            if equal.done {
                return None;
            }
            match self.next_block(state) {
                Some(Ok(out)) => match fetch_batches(&self.dataset.ctx, out.block) {
                    Ok(batches) => {
                        let equal = state.equal.as_mut().expect("an equal split");
                        equal.seen += batches.iter().map(|b| b.num_rows() as u64).sum::<u64>();
                        equal.buffer.extend(batches);
                    }
                    Err(e) => {
                        state.failure = Some(e.to_string());
                        return Some(Err(e));
                    }
                },
                Some(Err(e)) => return Some(Err(e)),
                None => state.equal.as_mut().expect("an equal split").done = true,
            }
        }
    }
}

impl Drop for Shared {
    fn drop(&mut self) {
        let state = self.state.get_mut();
        state.rx.take();
        if let Some(handle) = state.handle.take() {
            let _ = self
                .dataset
                .finish(handle, std::mem::take(&mut state.before));
        }
    }
}

impl Iterator for SplitIter {
    type Item = Result<RecordBatch>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.shared.state.lock().equal.is_some() {
            return self.shared.next_equal(self.index);
        }
        loop {
            if let Some(batch) = self.pending.pop_front() {
                return Some(Ok(batch));
            }
            let out = {
                let mut state = self.shared.state.lock();
                match self.shared.next_block(&mut state)? {
                    Ok(out) => out,
                    Err(e) => return Some(Err(e)),
                }
            };
            match fetch_batches(&self.shared.dataset.ctx, out.block) {
                Ok(batches) => self.pending.extend(batches),
                Err(e) => return Some(Err(e)),
            }
        }
    }
}
