//! What a `DoGet` asks a node for: a whole object, or parts of one or more blocks.
//!
//! A ticket is bytes, as Flight's are:
//!
//! * 16 bytes: one object id. The answer is the object whole (for a block, a plain Arrow IPC
//!   stream any Flight client can read).
//! * 20 × n bytes (1 ≤ n ≤ [`MAX_PARTS`]): n parts, each a 16-byte object id and a
//!   little-endian `u32` batch index. The answer is each part in turn, as its own IPC stream
//!   (schema, dictionaries, the one batch), each starting with a message whose `app_metadata`
//!   says its size: a reduce task's partitions of many map outputs cross in one call.
//!
//! Anything else is refused before the node reads anything.
//!
//! ```
//! use manta_engine::ObjectId;
//! use manta_flight::ticket::{Ticket, encode_parts};
//!
//! let parts = vec![(ObjectId::random(), 3), (ObjectId::random(), 0)];
//! assert_eq!(Ticket::parse(&encode_parts(&parts)), Some(Ticket::Parts(parts)));
//! ```

use bytes::Bytes;
use manta_engine::ObjectId;

/// Bytes of one part of a ticket: the object id and the batch index.
const PART_BYTES: usize = 16 + 4;

/// The most parts one ticket may name (a 1.3 MB ticket): a caller with more splits them.
pub const MAX_PARTS: usize = 1 << 16;

/// What a `DoGet` ticket asks for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Ticket {
    /// One object, whole.
    Object(ObjectId),
    /// Batch `index` of each block named, in this order.
    Parts(Vec<(ObjectId, u32)>),
}

impl Ticket {
    /// The ticket `bytes` encode, or `None` if they encode none.
    pub fn parse(bytes: &[u8]) -> Option<Ticket> {
        if bytes.len() == 16 {
            return ObjectId::from_slice(bytes).ok().map(Ticket::Object);
        }
        if bytes.is_empty()
            || !bytes.len().is_multiple_of(PART_BYTES)
            || bytes.len() / PART_BYTES > MAX_PARTS
        {
            return None;
        }
        bytes
            .chunks_exact(PART_BYTES)
            .map(|part| {
                let id = ObjectId::from_slice(&part[..16]).ok()?;
                let index = u32::from_le_bytes(part[16..].try_into().ok()?);
                Some((id, index))
            })
            .collect::<Option<Vec<_>>>()
            .map(Ticket::Parts)
    }
}

/// The ticket for object `id` whole.
pub fn encode_object(id: ObjectId) -> Bytes {
    Bytes::copy_from_slice(id.as_bytes())
}

/// The ticket for batch `index` of each block in `parts`, in order (at most [`MAX_PARTS`]).
pub fn encode_parts(parts: &[(ObjectId, u32)]) -> Bytes {
    debug_assert!(!parts.is_empty() && parts.len() <= MAX_PARTS);
    let mut ticket = Vec::with_capacity(parts.len() * PART_BYTES);
    for (id, index) in parts {
        ticket.extend_from_slice(id.as_bytes());
        ticket.extend_from_slice(&index.to_le_bytes());
    }
    Bytes::from(ticket)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn id() -> impl Strategy<Value = ObjectId> {
        any::<[u8; 16]>().prop_map(ObjectId::from_bytes)
    }

    proptest! {
        #[test]
        fn parts_survive_the_round_trip(parts in proptest::collection::vec((id(), any::<u32>()), 1..50)) {
            prop_assert_eq!(Ticket::parse(&encode_parts(&parts)), Some(Ticket::Parts(parts)));
        }

        #[test]
        fn an_object_survives_the_round_trip(id in id()) {
            prop_assert_eq!(Ticket::parse(&encode_object(id)), Some(Ticket::Object(id)));
        }

        /// Random bytes parse exactly when their length is one a ticket can have.
        #[test]
        fn random_bytes_parse_only_at_a_ticket_length(bytes in proptest::collection::vec(any::<u8>(), 0..200)) {
            let valid = bytes.len() == 16 || (!bytes.is_empty() && bytes.len().is_multiple_of(PART_BYTES));
            prop_assert_eq!(Ticket::parse(&bytes).is_some(), valid);
        }
    }

    #[test]
    fn too_many_parts_are_refused() {
        let part = encode_parts(&[(ObjectId::random(), 1)]);
        let ticket = part.repeat(MAX_PARTS + 1);
        assert_eq!(Ticket::parse(&ticket), None);
        assert!(Ticket::parse(&ticket[..ticket.len() - PART_BYTES]).is_some());
    }
}
