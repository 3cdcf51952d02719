//! Pulling many parts from one node into **one** object: batch `k` of the stored block is part
//! `k`.
//!
//! A reduce task reads one batch of every map output. Pulled one object per part (see
//! [`FlightPool::pull_parts_into`]), a scale-10 shuffle on two nodes made 28,800 shared-memory
//! files of about 220 KB: each one created, its pages allocated and zeroed, then truncated and
//! deleted when the task ended, and mapped and unmapped by the worker; in a profile those files
//! cost more of the nodes' CPU than the bytes in them. Here the parts from one node arrive in one
//! `DoGet` as before, and are written as they come into one file: the first part's schema
//! message, then every part's batch message, then the end marker. One file per source node and
//! task is big enough to be written over a recycled one, and freed whole.
//!
//! Parts can share one IPC stream only if each is one record batch of the same schema (the map
//! outputs of one exchange are). A part that is not (a bytes object, a schema that differs, a
//! dictionary batch, other than one batch) ends the pull with `Ok(None)` and stores nothing:
//! the caller then pulls the parts one object each.

use std::ops::Range;
use std::sync::Arc;

use arrow::ipc::MessageHeader;
use arrow_flight::FlightData;
use manta_engine::store::{HEADER_LEN, header, write_ipc_end, write_ipc_message};
use manta_engine::{Location, ObjectId, ObjectStore};

use crate::client::{
    FlightPool, count_received, fetch_failed, in_time, malformed, next_message, parse_metadata,
};
use crate::error::Result;
use crate::ticket::{MAX_PARTS, encode_parts};

/// A block [`FlightPool::pull_parts_combined`] stored: its size, and where its messages lie in
/// it, so that its reader slices each part out
/// ([`read_batch_at`](manta_engine::store::read_batch_at)) instead of stepping over the parts
/// before it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CombinedBlock {
    /// Its size as stored.
    pub size: u64,
    /// The schema message's bytes.
    pub schema: Range<u64>,
    /// Each part's batch message's bytes, in the order asked for.
    pub parts: Vec<Range<u64>>,
}

impl FlightPool {
    /// Pulls batch `batch` of each block `object` of `parts` from `location` into `store` as
    /// one new block `into`, whose batch `k` is part `k` (see the module doc); returns its size
    /// as stored and its layout, or `None` if the parts cannot share one block (nothing is
    /// stored then). On failure nothing is stored, and the error names the object of the part
    /// that failed.
    pub async fn pull_parts_combined(
        &self,
        store: &Arc<ObjectStore>,
        location: &Location,
        parts: &[(ObjectId, u32)],
        into: ObjectId,
    ) -> Result<Option<CombinedBlock>> {
        let mut combined = Combined::default();
        for chunk in parts.chunks(MAX_PARTS) {
            let first_object = chunk[0].0;
            let mut stream = self
                .open(location, encode_parts(chunk), first_object)
                .await?;
            let mut next = next_message(&mut stream, location, first_object).await?;
            for &(object, _) in chunk {
                let first = next.take().ok_or_else(|| {
                    malformed(location, object, "the answer ended before this part")
                })?;
                let (is_block, declared) = parse_metadata(&first, location, object)?;
                if !is_block {
                    return Ok(None);
                }
                if combined.receiver.is_none() {
                    // Parts of one exchange are about the same size: the first tells the total,
                    // which picks the recycled file to write over.
                    let mut receiver = store.receive(into, declared.saturating_mul(parts.len()))?;
                    let io = |e| malformed(location, object, &format!("could not store it: {e}"));
                    receiver.writer().write_all(&header(true)).map_err(io)?;
                    combined.receiver = Some(receiver);
                    combined.written = HEADER_LEN as u64;
                }
                let mut received = 0u64;
                let mut batches = 0;
                let mut message = Some(first);
                while let Some(data) = message {
                    count_received(&mut received, &data, declared, location, object)?;
                    match combined.add(&data, location, object)? {
                        Added::Batch => batches += 1,
                        Added::Schema => {}
                        Added::NotCombinable => return Ok(None),
                    }
                    message = in_time("the object's next message", stream.message())
                        .await
                        .map_err(|status| fetch_failed(location, object, status))?;
                    if message.as_ref().is_some_and(|m| !m.app_metadata.is_empty()) {
                        break;
                    }
                }
                if batches != 1 {
                    return Ok(None);
                }
                next = message;
            }
            if next.is_some() {
                return Err(malformed(
                    location,
                    first_object,
                    "more parts in the answer than were asked for",
                ));
            }
        }
        let (Some(mut receiver), Some(schema)) = (combined.receiver, combined.schema_range) else {
            return Ok(None);
        };
        write_ipc_end(receiver.writer())
            .map_err(|e| malformed(location, into, &format!("could not store it: {e}")))?;
        Ok(Some(CombinedBlock {
            size: receiver.finish()?,
            schema,
            parts: combined.parts,
        }))
    }
}

/// The block being written: its receiver (dropped unfinished, it removes what was written),
/// the schema message every part must repeat, and where what was written so far lies.
#[derive(Default)]
struct Combined {
    receiver: Option<manta_engine::store::ObjectReceiver>,
    schema: Option<bytes::Bytes>,
    /// Bytes written so far.
    written: u64,
    schema_range: Option<Range<u64>>,
    parts: Vec<Range<u64>>,
}

/// What one message of a part was.
enum Added {
    Schema,
    Batch,
    NotCombinable,
}

impl Combined {
    /// Writes `data` (a message of part `object`) unless it is a schema already written.
    fn add(&mut self, data: &FlightData, location: &Location, object: ObjectId) -> Result<Added> {
        let kind = arrow::ipc::root_as_message(&data.data_header)
            .map_err(|e| malformed(location, object, &format!("invalid message header: {e}")))?
            .header_type();
        let added = match kind {
            MessageHeader::Schema => match &self.schema {
                Some(schema) if *schema == data.data_header => return Ok(Added::Schema),
                Some(_) => return Ok(Added::NotCombinable),
                None => {
                    self.schema = Some(data.data_header.clone());
                    Added::Schema
                }
            },
            MessageHeader::RecordBatch if self.schema.is_some() => Added::Batch,
            _ => return Ok(Added::NotCombinable),
        };
        let receiver = self
            .receiver
            .as_mut()
            .expect("opened before the first message");
        let len = write_ipc_message(receiver.writer(), &data.data_header, &data.data_body)
            .map_err(|e| malformed(location, object, &format!("could not store it: {e}")))?;
        let range = self.written..self.written + len;
        self.written += len;
        match added {
            Added::Schema => self.schema_range = Some(range),
            Added::Batch => self.parts.push(range),
            Added::NotCombinable => {}
        }
        Ok(added)
    }
}
