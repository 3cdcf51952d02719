//! The byte layout of a stored object, in shared memory, in a spill file and on the wire.
//!
//! ```text
//! offset 0   "MANTAOB1"            8-byte magic
//! offset 8   kind                  1 = block, 2 = bytes
//! offset 9   zero padding to 64
//! offset 64  payload               block: an Arrow IPC stream; bytes: the bytes as they are
//! ```
//!
//! The 64-byte header keeps the payload 64-byte aligned in a page-aligned mapping, and the IPC
//! writer aligns every message and buffer to 64 bytes within the stream, so decoding a mapped
//! block hands out Arrow buffers that point straight into the mapping: zero copies on read.
//! The payload of a block is a plain IPC *stream* (schema message, batch messages, end marker),
//! so its messages can also be forwarded over Arrow Flight as they are.

use std::io::Write;
use std::ops::Range;

use arrow::ipc::writer::{IpcWriteOptions, StreamEncoder};
use bytes::Bytes;

use crate::error::{Error, Result};
use crate::ids::ObjectId;
use crate::object::{Block, Object};

/// Bytes before the payload.
pub const HEADER_LEN: usize = 64;
const MAGIC: &[u8; 8] = b"MANTAOB1";
const KIND_BLOCK: u8 = 1;
const KIND_BYTES: u8 = 2;
const ALIGNMENT: usize = 64;
const CONTINUATION: [u8; 4] = [0xff; 4];

/// The 64-byte header of a stored block (`is_block == true`) or bytes object.
pub fn header(is_block: bool) -> [u8; HEADER_LEN] {
    let mut header = [0u8; HEADER_LEN];
    header[..8].copy_from_slice(MAGIC);
    header[8] = if is_block { KIND_BLOCK } else { KIND_BYTES };
    header
}

/// An object in the stored layout, as the pieces to write one after another: the header, then
/// for a block the IPC stream's messages, whose bodies are the block's own Arrow buffers (arrow's
/// `StreamEncoder` hands them out without copying), for bytes the bytes. So the one copy a
/// write makes is from the buffers into the file (or its mapping: [`Encoded::copy_range`]).
pub struct Encoded {
    pieces: Vec<Piece>,
    len: u64,
}

enum Piece {
    Header([u8; HEADER_LEN]),
    Arrow(arrow::buffer::Buffer),
    Bytes(Bytes),
}

impl Piece {
    fn as_slice(&self) -> &[u8] {
        match self {
            Piece::Header(header) => header,
            Piece::Arrow(buffer) => buffer.as_slice(),
            Piece::Bytes(bytes) => bytes,
        }
    }
}

impl Encoded {
    fn new() -> Self {
        Self {
            pieces: Vec::new(),
            len: 0,
        }
    }

    fn push(&mut self, piece: Piece) {
        self.len += piece.as_slice().len() as u64;
        self.pieces.push(piece);
    }

    /// The stored object's size in bytes.
    pub fn len(&self) -> u64 {
        self.len
    }

    /// Whether the object has no bytes at all (never true of a stored object, which has a
    /// header).
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Writes the pieces to `out`; the bytes written.
    pub fn write_to(&self, out: &mut impl Write) -> std::io::Result<u64> {
        for piece in &self.pieces {
            out.write_all(piece.as_slice())?;
        }
        Ok(self.len)
    }

    /// Copies the bytes `start..start + dest.len()` of the object into `dest`.
    pub fn copy_range(&self, start: usize, dest: &mut [u8]) {
        let end = start + dest.len();
        let mut at = 0;
        for piece in &self.pieces {
            let piece = piece.as_slice();
            let (from, to) = (at.max(start), (at + piece.len()).min(end));
            if from < to {
                dest[from - start..to - start].copy_from_slice(&piece[from - at..to - at]);
            }
            at += piece.len();
            if at >= end {
                break;
            }
        }
    }
}

/// `object` in the stored layout (see [`Encoded`]); nothing is copied yet.
pub fn encode_object(object: &Object) -> Result<Encoded> {
    let mut encoded = Encoded::new();
    match object {
        Object::Block(block) => {
            encoded.push(Piece::Header(header(true)));
            encode_block_stream(block, &mut encoded)?;
        }
        Object::Bytes(bytes) => {
            encoded.push(Piece::Header(header(false)));
            encoded.push(Piece::Bytes(bytes.clone()));
        }
    }
    Ok(encoded)
}

/// Writes `object` in the stored layout; returns the bytes written.
pub fn write_object(out: &mut impl Write, object: &Object) -> Result<u64> {
    encode_object(object)?
        .write_to(out)
        .map_err(|e| arrow::error::ArrowError::from(e).into())
}

/// A block's batches as an Arrow IPC stream (no Manta header), their view columns compacted
/// first where they point into mostly-unused buffers (see [`crate::views`]), appended to
/// `encoded`.
fn encode_block_stream(block: &Block, encoded: &mut Encoded) -> Result<()> {
    let mut encoder =
        StreamEncoder::try_new_with_options(block.schema(), IpcWriteOptions::default())?;
    for batch in block.batches() {
        for buffer in encoder.encode(&crate::views::compact_views(batch))? {
            encoded.push(Piece::Arrow(buffer));
        }
    }
    for buffer in encoder.finish()? {
        encoded.push(Piece::Arrow(buffer));
    }
    Ok(())
}

/// Writes a block as an Arrow IPC stream (no Manta header), its view columns compacted first
/// where they point into mostly-unused buffers (see [`crate::views`]).
pub fn write_block_stream(out: &mut impl Write, block: &Block) -> Result<()> {
    let mut encoded = Encoded::new();
    encode_block_stream(block, &mut encoded)?;
    encoded
        .write_to(out)
        .map_err(arrow::error::ArrowError::from)?;
    Ok(())
}

/// Whether `bytes` (a whole stored object) holds a block.
pub fn is_block(bytes: &[u8]) -> bool {
    bytes.len() >= HEADER_LEN && &bytes[..8] == MAGIC && bytes[8] == KIND_BLOCK
}

/// Decodes a stored object without copying: the returned batches (or bytes) share `bytes`'
/// memory, which keeps whatever owns it (a mapping, say) alive.
pub fn read_object(id: ObjectId, bytes: Bytes) -> Result<Object> {
    decode_object(id, bytes, false)
}

/// [`read_object`] with Arrow's full validation (offsets, UTF-8, lengths): for bytes that came
/// from outside the cluster's processes, before they are stored and then trusted.
///
/// Arrow's IPC reader panics on some malformed messages even when validating (a buffer length
/// past the body, a null bitmap shorter than its length: found by `flight/tests/hostile_bytes.rs`),
/// so a panic here is caught and reported as a corrupt object.
pub fn read_object_validated(id: ObjectId, bytes: Bytes) -> Result<Object> {
    std::panic::catch_unwind(|| decode_object(id, bytes, true)).unwrap_or_else(|panic| {
        let reason = panic
            .downcast_ref::<String>()
            .map(String::as_str)
            .or_else(|| panic.downcast_ref::<&str>().copied())
            .unwrap_or("the decoder panicked");
        Err(Error::CorruptObject {
            id,
            reason: format!("malformed Arrow IPC: {reason}"),
        })
    })
}

/// Batch `index` of a stored block, as a block of that one batch (empty past the last),
/// without copying; only that batch is decoded (the others' message headers are read to step
/// over them): a reduce task reading its partition of a mapped map output of hundreds of
/// batches builds the arrays of one.
pub fn read_object_batch(id: ObjectId, bytes: Bytes, index: usize) -> Result<Object> {
    if !is_block(&bytes) {
        return Err(Error::CorruptObject {
            id,
            reason: "a batch was asked of an object that is not a block".into(),
        });
    }
    decode_stored(id, bytes, false, Some(index))
}

/// The one-batch block whose schema message lies at `schema` and batch message at `batch` (empty:
/// a block of no batches) in `stored`, a stored block (a mapping, say), without copying and
/// without reading any other message: a worker reads its partitions this way when its node
/// knows where they lie ([`crate::store::ObjectStore::batch_ranges`]), instead of stepping over
/// every message header before them.
pub fn read_batch_at(
    id: ObjectId,
    stored: &Bytes,
    schema: Range<u64>,
    batch: Range<u64>,
) -> Result<Object> {
    let corrupt = |reason: String| Error::CorruptObject { id, reason };
    if !is_block(stored) {
        return Err(corrupt(
            "a batch was asked of an object that is not a block".into(),
        ));
    }
    let slice = |range: Range<u64>| -> Result<Bytes> {
        let (start, end) = (range.start as usize, range.end as usize);
        if start == end {
            return Ok(Bytes::new());
        }
        if start < HEADER_LEN || start > end || end > stored.len() {
            return Err(corrupt(format!(
                "a message at {start}..{end} of a {}-byte object",
                stored.len()
            )));
        }
        Ok(stored.slice(start..end))
    };
    let messages = ipc_messages(slice(schema)?).chain(ipc_messages(slice(batch)?));
    decode_messages(messages, false, None)
        .map(Object::Block)
        .map_err(|e| corrupt(e.to_string()))
}

fn decode_object(id: ObjectId, bytes: Bytes, validate: bool) -> Result<Object> {
    decode_stored(id, bytes, validate, None)
}

/// Decodes a stored object; of a block, only batch `only` if given.
fn decode_stored(
    id: ObjectId,
    bytes: Bytes,
    validate: bool,
    only: Option<usize>,
) -> Result<Object> {
    let corrupt = |reason: String| Error::CorruptObject { id, reason };
    if bytes.len() < HEADER_LEN || &bytes[..8] != MAGIC {
        return Err(corrupt(format!("missing header ({} bytes)", bytes.len())));
    }
    let payload = bytes.slice(HEADER_LEN..);
    match bytes[8] {
        KIND_BLOCK => decode_block_stream(payload, validate, only)
            .map(Object::Block)
            .map_err(|e| corrupt(e.to_string())),
        KIND_BYTES => Ok(Object::Bytes(payload)),
        other => Err(corrupt(format!("unknown kind {other}"))),
    }
}

/// Decodes an Arrow IPC stream without copying, with validation skipped.
///
/// Arrow's `StreamDecoder` would validate every string of every batch (its skip-validation flag
/// does not reach record batches in arrow-ipc 59), which reads every page of a mapped block;
/// its `FileDecoder` honours the flag and decodes one framed message at a time, so the stream's
/// messages are split here and handed to it.
pub fn read_block_stream(payload: Bytes) -> Result<Block> {
    decode_block_stream(payload, false, None)
}

/// Decodes a block's IPC stream; only its batch `only` if given (none past the last).
fn decode_block_stream(payload: Bytes, validate: bool, only: Option<usize>) -> Result<Block> {
    decode_messages(ipc_messages(payload), validate, only)
}

/// Decodes a block from its IPC messages; only its batch `only` if given (none past the last).
fn decode_messages(
    messages: impl Iterator<Item = Result<IpcMessage>>,
    validate: bool,
    only: Option<usize>,
) -> Result<Block> {
    use arrow::ipc::MessageHeader;
    use arrow::ipc::reader::FileDecoder;

    let bad = |reason: String| Error::Arrow(arrow::error::ArrowError::IpcError(reason));
    let mut decoder: Option<FileDecoder> = None;
    let mut schema = None;
    let mut batches = Vec::new();
    let mut batches_seen = 0usize;
    for message in messages {
        let message = message?;
        let parsed = arrow::ipc::root_as_message(&message.header)
            .map_err(|e| bad(format!("invalid message header: {e}")))?;
        match parsed.header_type() {
            MessageHeader::Schema => {
                let fb = parsed.header_as_schema().expect("a schema message");
                let decoded = std::sync::Arc::new(arrow::ipc::convert::fb_to_schema(fb));
                // SAFETY: validation is skipped only for streams the cluster's own processes
                // wrote: `write_block_stream` in this process or a worker of the same node, or
                // another node (which holds the cluster token and is trusted as this one is).
                // What a client sends with `DoPut` is decoded with validation once, before it
                // is stored (`ObjectReceiver::finish_validated`), and never changes after (see
                // `super::recycle`). Skipping validation is what DataFusion does for the spill
                // files it writes itself. Buffers stay zero-copy: the layout is 64-byte aligned.
                decoder = Some(unsafe {
                    FileDecoder::new(std::sync::Arc::clone(&decoded), parsed.version())
                        .with_skip_validation(!validate)
                });
                schema = Some(decoded);
            }
            MessageHeader::DictionaryBatch | MessageHeader::RecordBatch => {
                if parsed.header_type() == MessageHeader::RecordBatch {
                    batches_seen += 1;
                    if only.is_some_and(|only| batches_seen != only + 1) {
                        // Not the batch asked for: stepped over, not decoded.
                        continue;
                    }
                }
                let decoder = decoder
                    .as_mut()
                    .ok_or_else(|| bad("a batch before the schema message".into()))?;
                let framed = arrow::buffer::Buffer::from(message.framed.clone());
                let meta_len = message.framed.len() - message.body.len();
                let block = arrow::ipc::Block::new(
                    0,
                    i32::try_from(meta_len).map_err(|_| bad("huge message header".into()))?,
                    message.body.len() as i64,
                );
                if parsed.header_type() == MessageHeader::DictionaryBatch {
                    decoder.read_dictionary(&block, &framed)?;
                    continue;
                }
                if let Some(batch) = decoder.read_record_batch(&block, &framed)? {
                    batches.push(batch);
                }
                if only.is_some() {
                    // The one batch asked for: nothing after it is read.
                    break;
                }
            }
            other => return Err(bad(format!("unexpected {other:?} message in a block"))),
        }
    }
    let schema = schema.ok_or_else(|| bad("stream has no schema message".into()))?;
    Block::try_new(schema, batches)
}

/// One message of an Arrow IPC stream: its flatbuffer header and its body.
#[derive(Clone, Debug)]
pub struct IpcMessage {
    /// The whole message as it is in the stream: length prefix, header, body.
    pub framed: Bytes,
    /// The `Message` flatbuffer (with any padding that followed it).
    pub header: Bytes,
    /// The message body (`bodyLength` bytes).
    pub body: Bytes,
}

/// Splits an Arrow IPC stream into its messages without copying; stops at the end marker.
pub fn ipc_messages(stream: Bytes) -> impl Iterator<Item = Result<IpcMessage>> {
    let mut pos = 0usize;
    let mut done = false;
    std::iter::from_fn(move || {
        if done {
            return None;
        }
        let result = next_message(&stream, &mut pos);
        if !matches!(result, Ok(Some(_))) {
            done = true;
        }
        result.transpose()
    })
}

fn next_message(stream: &Bytes, pos: &mut usize) -> Result<Option<IpcMessage>> {
    let bad = |reason: &str| {
        Error::Arrow(arrow::error::ArrowError::IpcError(format!(
            "IPC stream: {reason}"
        )))
    };
    let read_u32 = |at: usize| -> Result<u32> {
        let word = stream
            .get(at..at + 4)
            .ok_or_else(|| bad("truncated message prefix"))?;
        Ok(u32::from_le_bytes(word.try_into().expect("4 bytes")))
    };
    if *pos >= stream.len() {
        return Ok(None);
    }
    let mut at = *pos;
    let mut len = read_u32(at)?;
    at += 4;
    if len == u32::MAX {
        len = read_u32(at)?;
        at += 4;
    }
    if len == 0 {
        *pos = stream.len();
        return Ok(None);
    }
    let header_end = at + len as usize;
    let header = stream
        .get(at..header_end)
        .ok_or_else(|| bad("truncated message header"))?;
    let message = arrow::ipc::root_as_message(header)
        .map_err(|e| bad(&format!("invalid message header: {e}")))?;
    let body_len =
        usize::try_from(message.bodyLength()).map_err(|_| bad("negative body length"))?;
    let body_end = header_end + body_len;
    if body_end > stream.len() {
        return Err(bad("truncated message body"));
    }
    let framed = stream.slice(*pos..body_end);
    *pos = body_end;
    Ok(Some(IpcMessage {
        framed,
        header: stream.slice(at..header_end),
        body: stream.slice(header_end..body_end),
    }))
}

/// Writes one IPC message so that its body starts 64-byte aligned if the stream so far is
/// 64-byte aligned; returns the bytes written.
pub fn write_ipc_message(
    out: &mut (impl Write + ?Sized),
    header: &[u8],
    body: &[u8],
) -> std::io::Result<u64> {
    let padding = (ALIGNMENT - (8 + header.len()) % ALIGNMENT) % ALIGNMENT;
    let len = u32::try_from(header.len() + padding).map_err(std::io::Error::other)?;
    out.write_all(&CONTINUATION)?;
    out.write_all(&len.to_le_bytes())?;
    out.write_all(header)?;
    out.write_all(&[0u8; ALIGNMENT][..padding])?;
    out.write_all(body)?;
    Ok((8 + header.len() + padding + body.len()) as u64)
}

/// Writes the end-of-stream marker; returns the bytes written.
pub fn write_ipc_end(out: &mut (impl Write + ?Sized)) -> std::io::Result<u64> {
    out.write_all(&CONTINUATION)?;
    out.write_all(&0u32.to_le_bytes())?;
    Ok(8)
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use arrow::array::RecordBatch;
    use arrow::array::{Int64Array, StringArray};

    use super::*;

    fn block() -> Block {
        let batch = RecordBatch::try_from_iter([
            ("n", Arc::new(Int64Array::from(vec![1, 2, 3])) as _),
            (
                "s",
                Arc::new(StringArray::from(vec![Some("a"), None, Some("ünï")])) as _,
            ),
        ])
        .unwrap();
        Block::try_new(batch.schema(), vec![batch.clone(), batch.slice(1, 2)]).unwrap()
    }

    /// Each batch read alone is that batch, for blocks of plain and dictionary-encoded
    /// columns (whose dictionaries come before the batches), empty batches included; past the
    /// last, an empty block of the schema; a bytes object has no batches.
    #[test]
    fn one_batch_is_read_alone() {
        use arrow::array::DictionaryArray;
        use arrow::datatypes::Int32Type;
        let words: DictionaryArray<Int32Type> = ["x", "ÿ", "x", "z", "x"].into_iter().collect();
        let dictionary = RecordBatch::try_from_iter([("w", Arc::new(words) as _)]).unwrap();
        let plain = block();
        let parts =
            |b: &RecordBatch| vec![b.slice(0, 2), b.slice(2, 0), b.slice(2, b.num_rows() - 2)];
        for batches in [parts(&plain.concat().unwrap()), parts(&dictionary)] {
            let stored =
                Object::Block(Block::try_new(batches[0].schema(), batches.clone()).unwrap());
            let mut out = Vec::new();
            write_object(&mut out, &stored).unwrap();
            let out = Bytes::from(out);
            let id = ObjectId::random();
            for (index, expected) in batches.iter().enumerate() {
                let alone = read_object_batch(id, out.clone(), index)
                    .unwrap()
                    .into_block(id)
                    .unwrap();
                assert_eq!(
                    alone.batches(),
                    std::slice::from_ref(expected),
                    "batch {index}"
                );
            }
            let past = read_object_batch(id, out, batches.len())
                .unwrap()
                .into_block(id)
                .unwrap();
            assert_eq!(past.num_rows(), 0);
            assert_eq!(past.schema(), &batches[0].schema());
        }
        let mut bytes = Vec::new();
        write_object(&mut bytes, &Object::Bytes(Bytes::from_static(b"abc"))).unwrap();
        assert!(read_object_batch(ObjectId::random(), Bytes::from(bytes), 0).is_err());
    }

    #[test]
    fn block_round_trips() {
        let mut out = Vec::new();
        let written = write_object(&mut out, &Object::Block(block())).unwrap();
        assert_eq!(written as usize, out.len());
        assert!(is_block(&out));
        let Object::Block(back) = read_object(ObjectId::random(), Bytes::from(out)).unwrap() else {
            panic!("expected a block")
        };
        assert_eq!(back.batches(), block().batches());
    }

    /// Views, dictionaries, nested lists and nulls decode through the validation-free path.
    #[test]
    fn every_kind_of_column_round_trips() {
        use arrow::array::{DictionaryArray, ListArray, StringViewArray};
        use arrow::datatypes::{Int32Type, Int64Type};
        let batch = |offset: i64| {
            RecordBatch::try_from_iter([
                (
                    "view",
                    Arc::new(StringViewArray::from(vec![
                        Some("a value longer than twelve bytes"),
                        None,
                        Some("ünï"),
                    ])) as _,
                ),
                (
                    "dict",
                    Arc::new(DictionaryArray::<Int32Type>::from_iter(["x", "y", "x"])) as _,
                ),
                (
                    "list",
                    Arc::new(ListArray::from_iter_primitive::<Int64Type, _, _>(vec![
                        Some(vec![Some(offset), None]),
                        None,
                        Some(vec![]),
                    ])) as _,
                ),
            ])
            .unwrap()
        };
        let (first, second) = (batch(1), batch(2));
        let block = Block::try_new(first.schema(), vec![first.clone(), second.clone()]).unwrap();
        let mut out = Vec::new();
        write_object(&mut out, &Object::Block(block)).unwrap();
        let out = Bytes::from(out);
        let whole = read_object(ObjectId::random(), out.clone()).unwrap();
        assert_eq!(
            whole.into_block(ObjectId::random()).unwrap().batches(),
            &[first, second.clone()]
        );
    }

    #[test]
    fn bytes_round_trip() {
        let mut out = Vec::new();
        write_object(&mut out, &Object::Bytes(Bytes::from_static(b"hello"))).unwrap();
        let back = read_object(ObjectId::random(), Bytes::from(out)).unwrap();
        assert_eq!(
            back.into_bytes(ObjectId::random()).unwrap(),
            Bytes::from_static(b"hello")
        );
    }

    #[test]
    fn messages_split_and_rejoin_to_the_same_block() {
        let mut stream = Vec::new();
        write_block_stream(&mut stream, &block()).unwrap();
        let messages: Vec<IpcMessage> = ipc_messages(Bytes::from(stream))
            .collect::<Result<_>>()
            .unwrap();
        assert_eq!(messages.len(), 3, "a schema message and two batches");

        let mut rejoined = header(true).to_vec();
        for m in &messages {
            write_ipc_message(&mut rejoined, &m.header, &m.body).unwrap();
        }
        write_ipc_end(&mut rejoined).unwrap();
        let back = read_object(ObjectId::random(), Bytes::from(rejoined)).unwrap();
        assert_eq!(
            back.into_block(ObjectId::random()).unwrap().batches(),
            block().batches()
        );
    }

    #[test]
    fn truncated_stream_is_an_error() {
        let mut stream = Vec::new();
        write_block_stream(&mut stream, &block()).unwrap();
        stream.truncate(stream.len() - 100);
        let result: Result<Vec<IpcMessage>> = ipc_messages(Bytes::from(stream)).collect();
        assert!(result.is_err());
    }

    #[test]
    fn garbage_is_corrupt_not_a_panic() {
        let id = ObjectId::random();
        let err = read_object(id, Bytes::from_static(b"not an object")).unwrap_err();
        assert!(matches!(err, Error::CorruptObject { id: got, .. } if got == id));
        let mut truncated = Vec::new();
        write_object(&mut truncated, &Object::Block(block())).unwrap();
        truncated.truncate(HEADER_LEN + 40);
        assert!(matches!(
            read_object(id, Bytes::from(truncated)),
            Err(Error::CorruptObject { .. })
        ));
    }
}
