//! Which object to spill when the store is over its budget.
//!
//! The least recently used resident object that nobody has pinned. In a streaming pipeline the
//! blocks waiting longest for a consumer are the ones least recently touched, and the blocks a
//! running task reads are pinned, so LRU spills exactly the blocks that are not needed soonest.
//! A linear scan is fine: a store holds hundreds to a few thousand objects of megabytes each,
//! and a spill costs a disk write of megabytes.

use super::{Entry, Residence};
use crate::ids::ObjectId;

pub(super) fn choose_victim<'a>(
    entries: impl Iterator<Item = (ObjectId, &'a Entry)>,
) -> Option<ObjectId> {
    entries
        .filter(|(_, e)| {
            !e.in_use() && matches!(e.residence, Residence::Heap(_) | Residence::Shared(_))
        })
        .min_by_key(|(_, e)| e.last_used)
        .map(|(id, _)| id)
}
