//! Where each batch of a spilled block lies in its spill file, so that one batch is read alone.
//!
//! A reduce task wants one partition (one batch) of each of many spilled map outputs. Mapping
//! each whole spill file and walking its messages would touch every message header, and with
//! the large page-cache folios of modern kernels each touch maps far more than the header: a
//! reducer over 240 map outputs mapped most of them into its resident set. So when a block is
//! spilled, its messages are indexed once (their byte ranges, read header by header with
//! `pread`), and a batch is later read with two `pread`s into a fresh 64-byte-aligned buffer laid
//! out as a stored one-batch block: header, schema message, the batch's message, end marker.
//! Blocks with dictionary-encoded columns are not indexed (a batch may need dictionaries sent
//! with an earlier one); readers of those restore the block instead.
//!
//! A block in shared memory is indexed too, the first time one of its batches is served to
//! another node ([`super::ObjectStore::shared_batch`]) or read by a worker of this node
//! ([`super::ObjectStore::batch_ranges`]): finding a reduce task's partition walked every
//! message header before it, so reading all the partitions of a map output of hundreds of
//! batches took time quadratic in their number.

use std::fs::File;
use std::ops::Range;
use std::os::unix::fs::FileExt;
use std::path::Path;

use arrow::buffer::MutableBuffer;
use arrow::ipc::MessageHeader;
use bytes::Bytes;

use super::ArrowBytes;
use super::format::{HEADER_LEN, header, is_block};
use crate::error::{Error, Result};
use crate::ids::ObjectId;

/// The IPC end-of-stream marker: continuation, zero length.
const END_MARKER: [u8; 8] = [0xff, 0xff, 0xff, 0xff, 0, 0, 0, 0];

/// Byte ranges of a spilled block's schema message and of each batch message, in its file.
#[derive(Debug)]
pub(super) struct BatchIndex {
    schema: Range<u64>,
    batches: Vec<Range<u64>>,
}

impl BatchIndex {
    /// Indexes the stored object in `file`; `None` for a bytes object or a block with
    /// dictionaries.
    pub(super) fn of_file(id: ObjectId, file: &File, path: &Path) -> Result<Option<Self>> {
        let io = |e| Error::io(path, e);
        let len = file.metadata().map_err(io)?.len();
        let mut head = [0u8; HEADER_LEN];
        if len < HEADER_LEN as u64 {
            return Ok(None);
        }
        file.read_exact_at(&mut head, 0).map_err(io)?;
        if !is_block(&head) {
            return Ok(None);
        }
        let mut schema = None;
        let mut batches = Vec::new();
        let mut at = HEADER_LEN as u64;
        while at + 8 <= len {
            let mut prefix = [0u8; 8];
            file.read_exact_at(&mut prefix, at).map_err(io)?;
            let (meta_len, header_at) = if prefix[..4] == [0xff; 4] {
                (
                    u32::from_le_bytes(prefix[4..].try_into().expect("4 bytes")),
                    at + 8,
                )
            } else {
                (
                    u32::from_le_bytes(prefix[..4].try_into().expect("4 bytes")),
                    at + 4,
                )
            };
            if meta_len == 0 {
                break;
            }
            let mut meta = vec![0u8; meta_len as usize];
            file.read_exact_at(&mut meta, header_at).map_err(io)?;
            let message = arrow::ipc::root_as_message(&meta).map_err(|e| Error::CorruptObject {
                id,
                reason: format!("{}: invalid message header: {e}", path.display()),
            })?;
            let end = header_at + meta_len as u64 + message.bodyLength().max(0) as u64;
            match message.header_type() {
                MessageHeader::Schema => schema = Some(at..end),
                MessageHeader::RecordBatch => batches.push(at..end),
                _ => return Ok(None),
            }
            at = end;
        }
        Ok(schema.map(|schema| Self { schema, batches }))
    }

    /// Batch `index` of the indexed block in `file`, as the stored bytes of a block of that one
    /// batch (of none, past the last).
    pub(super) fn read_batch(&self, file: &File, path: &Path, index: usize) -> Result<Bytes> {
        read_ranges(file, path, &self.schema, &self.batch(index))
    }

    /// Where the schema lies in the file.
    pub(super) fn schema(&self) -> Range<u64> {
        self.schema.clone()
    }

    /// Where batch `index` lies in the file (an empty range past the last).
    pub(super) fn batch(&self, index: usize) -> Range<u64> {
        self.batches.get(index).cloned().unwrap_or(0..0)
    }
}

/// One batch of a spilled block, read alone from its file by any process: the file (a link to
/// the spill file the store made for this reader, see [`super::ObjectStore::link_spilled_batch`])
/// and where the schema message and the batch's message lie in it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SpilledBatch {
    /// The file.
    pub path: std::path::PathBuf,
    /// The schema message's bytes in it.
    pub schema: Range<u64>,
    /// The batch message's bytes in it (empty: a block of no rows).
    pub batch: Range<u64>,
}

impl SpilledBatch {
    /// Reads the batch into a fresh buffer (two `pread`s) as a block of that one batch, `id`.
    pub fn read(&self, id: ObjectId) -> Result<crate::Object> {
        let file = File::open(&self.path).map_err(|e| Error::io(&self.path, e))?;
        let bytes = read_ranges(&file, &self.path, &self.schema, &self.batch)?;
        super::read_object(id, bytes)
    }
}

/// The stored bytes of a block of one batch: header, the schema message at `schema` in `file`,
/// the batch message at `batch` (none if empty), end marker; 64-byte aligned.
fn read_ranges(file: &File, path: &Path, schema: &Range<u64>, batch: &Range<u64>) -> Result<Bytes> {
    let io = |e| Error::io(path, e);
    let schema_len = (schema.end - schema.start) as usize;
    let batch_len = (batch.end - batch.start) as usize;
    let total = HEADER_LEN + schema_len + batch_len + END_MARKER.len();
    let mut buffer = MutableBuffer::from_len_zeroed(total);
    let out = buffer.as_slice_mut();
    out[..HEADER_LEN].copy_from_slice(&header(true));
    let (schema_out, rest) = out[HEADER_LEN..].split_at_mut(schema_len);
    file.read_exact_at(schema_out, schema.start).map_err(io)?;
    let (batch_out, end) = rest.split_at_mut(batch_len);
    file.read_exact_at(batch_out, batch.start).map_err(io)?;
    end.copy_from_slice(&END_MARKER);
    Ok(Bytes::from_owner(ArrowBytes(buffer.into())))
}
