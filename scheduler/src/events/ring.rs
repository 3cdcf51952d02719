//! The ring of task runs the head keeps: the last [`TASK_EVENTS_KEPT`] records, overwritten
//! in place, oldest first when read.
//!
//! A record is plain data (`Copy`: ids, numbers, indices, its label's prefix inline), so that
//! writing one over the oldest stores into the ring and loads nothing from it: the oldest was
//! written 100,000 tasks ago and is out of the cache, and freeing anything it owned would cost
//! the head a cache miss per task. Error messages, rarer and longer, go to a ring of their
//! own, matched to their records by sequence number.

use std::collections::VecDeque;

use manta_engine::{JobId, TaskId};

use super::label::LabelPrefix;
use crate::proto;

/// How many task events the head keeps (the oldest go first).
pub const TASK_EVENTS_KEPT: usize = 100_000;

/// How many failed runs' error messages the head keeps.
const ERRORS_KEPT: usize = 10_000;

/// One task run.
#[derive(Clone, Copy)]
pub(super) struct TaskRecord {
    pub task_id: Option<TaskId>,
    pub job: JobId,
    /// Its label before its stage's name.
    pub label: LabelPrefix,
    /// Index in its job's stages (`u32::MAX`: none).
    pub stage: u32,
    /// Index in the event log's nodes.
    pub node: u32,
    pub worker_pid: u32,
    pub attempt: u32,
    pub submitted_unix_micros: u64,
    pub placed_unix_micros: u64,
    pub finished_unix_micros: u64,
    pub stats: proto::TaskStats,
    pub input_bytes: u64,
    pub output_bytes: u64,
    pub output_rows: u64,
    /// It failed (its message is in the errors ring, while kept).
    pub failed: bool,
    pub retried: bool,
}

/// The records and the error messages of the failed ones.
#[derive(Default)]
pub(super) struct TaskRing {
    records: Vec<TaskRecord>,
    /// Where the next record goes once the ring is full (then the oldest is there).
    next: usize,
    /// Records pushed so far: the next one's sequence number.
    pushed: u64,
    /// (sequence number, message) of failed runs, oldest first.
    errors: VecDeque<(u64, Box<str>)>,
}

impl TaskRing {
    /// Adds `record`, over the oldest if the ring is full; `error` is its failure's message.
    pub fn push(&mut self, record: TaskRecord, error: Option<String>) {
        if let Some(message) = error {
            if self.errors.len() == ERRORS_KEPT {
                self.errors.pop_front();
            }
            self.errors
                .push_back((self.pushed, message.into_boxed_str()));
        }
        if self.records.len() < TASK_EVENTS_KEPT {
            self.records.push(record);
        } else {
            self.records[self.next] = record;
            self.next = (self.next + 1) % TASK_EVENTS_KEPT;
        }
        self.pushed += 1;
    }

    /// The records, oldest first, each with its error message if it failed (a placeholder
    /// once the message is no longer kept).
    pub fn iter(&self) -> impl Iterator<Item = (&TaskRecord, Option<&str>)> {
        let (newer, older) = self.records.split_at(self.next);
        let first = self.pushed - self.records.len() as u64;
        let mut errors = self.errors.iter().peekable();
        older
            .iter()
            .chain(newer)
            .zip(first..)
            .map(move |(record, seq)| {
                while errors.next_if(|(at, _)| *at < seq).is_some() {}
                let error = errors.next_if(|(at, _)| *at == seq).map(|(_, m)| &**m);
                let error = match (record.failed, error) {
                    (false, _) => None,
                    (true, Some(message)) => Some(message),
                    (true, None) => Some("(its error message is no longer kept)"),
                };
                (record, error)
            })
    }

    /// How many records it holds.
    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.records.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(attempt: u32, failed: bool) -> TaskRecord {
        TaskRecord {
            task_id: None,
            job: JobId::random(),
            label: LabelPrefix::of("block 1 of ", ""),
            stage: 0,
            node: 0,
            worker_pid: 0,
            attempt,
            submitted_unix_micros: 0,
            placed_unix_micros: 0,
            finished_unix_micros: 0,
            stats: Default::default(),
            input_bytes: 0,
            output_bytes: 0,
            output_rows: 0,
            failed,
            retried: false,
        }
    }

    /// Past its size the ring keeps the newest records in order, and each failed one keeps
    /// its own message (checked against a plain list of everything pushed).
    #[test]
    fn keeps_the_newest_in_order_with_their_errors() {
        let mut ring = TaskRing::default();
        let total = TASK_EVENTS_KEPT + 2_345;
        for i in 0..total {
            let failed = i % 7 == 0;
            ring.push(
                record(i as u32, failed),
                failed.then(|| format!("error {i}")),
            );
        }
        assert_eq!(ring.len(), TASK_EVENTS_KEPT);
        let kept: Vec<(u32, Option<String>)> = ring
            .iter()
            .map(|(r, e)| (r.attempt, e.map(str::to_string)))
            .collect();
        let first_error_kept = (0..total).filter(|i| i % 7 == 0).rev().nth(ERRORS_KEPT - 1);
        let expected: Vec<(u32, Option<String>)> = (total - TASK_EVENTS_KEPT..total)
            .map(|i| {
                let error = (i % 7 == 0).then(|| match first_error_kept {
                    Some(first) if i < first => "(its error message is no longer kept)".into(),
                    _ => format!("error {i}"),
                });
                (i as u32, error)
            })
            .collect();
        assert!(kept == expected, "the ring's order or errors differ");
    }
}
