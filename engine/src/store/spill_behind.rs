//! Making room behind a writer: adopting a worker's output without waiting for the spill it
//! causes.
//!
//! [`ObjectStore::adopt`] spills (least recently used, unpinned first) until the store is
//! back within its budget before it returns, and a node answers a finished task only then: on
//! a full store every map task's worker waited for the disk before its next task, and with
//! one CPU per node nothing filled the gap (a profile of a scale-10 shuffle showed 40% of the
//! CPU idle in its map stage). [`ObjectStore::adopt_spilling_behind`] takes the output at once
//! and leaves the spilling to one background thread per store, which runs while the store is
//! over budget. Objects received from other processes (a pull over Flight, a reduce task's
//! partitions from another node) are sealed the same way: in a scale-10 shuffle's reduce
//! stage every task's pulled partitions spilled as much again before the task could start.
//!
//! The budget still holds, with slack: a writer that finds the store more than a quarter of
//! its budget over waits for room, as `adopt` does. So memory is bounded by 1.25 times the
//! budget (plus the object being adopted), and a disk slower than the tasks slows the tasks
//! instead of filling memory. Bytes spilled in the background are reported by the next
//! adoption ([`Stored::spilled_bytes`]), so a stage's spill total stays about right. An
//! adoption that lands just as the spiller stops may leave the store over budget (within the
//! slack) until the next one.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use super::{ObjectStore, Stored};
use crate::error::Result;
use crate::ids::ObjectId;

/// The store's background spiller: whether it runs, and what it spilled since last reported.
#[derive(Debug, Default)]
pub(crate) struct SpillBehind {
    running: AtomicBool,
    spilled: AtomicU64,
}

impl ObjectStore {
    /// [`adopt`](Self::adopt), making room in the background unless the store is more than a
    /// quarter of its budget over (see the module doc). `spilled_bytes` is what this call
    /// spilled plus what the background spilled since the last adoption reported it.
    pub fn adopt_spilling_behind(self: &Arc<Self>, id: ObjectId) -> Result<Stored> {
        let size = self.take_sealed(id, None)?;
        // What the background spilled is reported here, by the adoptions of task outputs.
        let spilled_bytes =
            self.make_room_behind()? + self.spilling.spilled.swap(0, Ordering::Relaxed);
        Ok(Stored {
            size_bytes: size,
            spilled_bytes,
        })
    }

    /// Makes room after an object came in: here if the store is more than a quarter of its
    /// budget over, else in the background. Returns what this call spilled.
    pub(super) fn make_room_behind(self: &Arc<Self>) -> Result<u64> {
        let usage = self.state.lock().usage;
        let held = usage.resident_bytes + self.recycler.bytes();
        let over = held.saturating_sub(usage.budget_bytes);
        let mut spilled_bytes = 0;
        if over > usage.budget_bytes / 4 {
            spilled_bytes += self.make_room(None)?;
        } else if over > 0 {
            self.spill_behind();
        }
        Ok(spilled_bytes)
    }

    /// Starts the background spiller unless it runs already (it makes room until the store
    /// is within budget, then stops).
    fn spill_behind(self: &Arc<Self>) {
        if self.spilling.running.swap(true, Ordering::AcqRel) {
            return;
        }
        let store = Arc::downgrade(self);
        let started = std::thread::Builder::new()
            .name("manta-spill".into())
            .spawn(move || {
                let Some(store) = store.upgrade() else {
                    return;
                };
                match store.make_room(None) {
                    Ok(bytes) => {
                        store.spilling.spilled.fetch_add(bytes, Ordering::Relaxed);
                    }
                    Err(e) => tracing::warn!(error = %e, "spilling to make room failed"),
                }
                store.spilling.running.store(false, Ordering::Release);
            });
        if started.is_err() {
            // No thread: the next adoption over the slack makes room itself.
            self.spilling.running.store(false, Ordering::Release);
        }
    }

    /// Whether the background spiller is running (for tests).
    pub fn spilling_behind(&self) -> bool {
        self.spilling.running.load(Ordering::Acquire)
    }
}
