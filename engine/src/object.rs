//! What an object holds: a [`Block`] of Arrow record batches, or opaque bytes.
//!
//! A block is the unit of data in Manta: a schema and a few record batches that share it (a few
//! MiB to tens of MiB in all). Stored, it is one Arrow IPC stream, so a reader on the same node
//! maps it and gets batches whose buffers point into the mapping. Any other value (a task's serde
//! result, a small control record) is stored as bytes.

use arrow::array::RecordBatch;
use arrow::compute::concat_batches;
use arrow::datatypes::SchemaRef;

use crate::error::{Error, Result};
use crate::ids::ObjectId;

/// A schema and the record batches that share it.
///
/// Cloning a block clones `Arc`s, never data.
///
/// ```
/// use std::sync::Arc;
/// use arrow::array::{Int64Array, RecordBatch};
/// use manta_engine::Block;
///
/// let batch = RecordBatch::try_from_iter([("x", Arc::new(Int64Array::from(vec![1, 2, 3])) as _)]).unwrap();
/// let block = Block::from_batch(batch);
/// assert_eq!(block.num_rows(), 3);
/// ```
#[derive(Clone, Debug)]
pub struct Block {
    schema: SchemaRef,
    batches: Vec<RecordBatch>,
}

impl Block {
    /// A block of these batches, which must all have `schema`.
    pub fn try_new(schema: SchemaRef, batches: Vec<RecordBatch>) -> Result<Self> {
        if let Some(other) = batches
            .iter()
            .find(|b| b.schema_ref().fields() != schema.fields())
        {
            return Err(Error::Arrow(arrow::error::ArrowError::SchemaError(
                format!(
                    "a block's batches must share one schema: expected {:?}, got {:?}",
                    schema,
                    other.schema()
                ),
            )));
        }
        Ok(Self { schema, batches })
    }

    /// A block of one batch.
    pub fn from_batch(batch: RecordBatch) -> Self {
        Self {
            schema: batch.schema(),
            batches: vec![batch],
        }
    }

    /// A block with a schema and no rows.
    pub fn empty(schema: SchemaRef) -> Self {
        Self {
            schema,
            batches: Vec::new(),
        }
    }

    /// The schema every batch shares.
    pub fn schema(&self) -> &SchemaRef {
        &self.schema
    }

    /// The batches, in order.
    pub fn batches(&self) -> &[RecordBatch] {
        &self.batches
    }

    /// Takes the batches out.
    pub fn into_batches(self) -> Vec<RecordBatch> {
        self.batches
    }

    /// Rows over all batches.
    pub fn num_rows(&self) -> usize {
        self.batches.iter().map(RecordBatch::num_rows).sum()
    }

    /// Bytes of Arrow memory the batches' rows use (a slice counts its rows, not the whole
    /// buffer it points into; a string view column its views and the values they point at, see
    /// [`crate::views::view_value_bytes`]).
    pub fn size_bytes(&self) -> usize {
        self.batches
            .iter()
            .flat_map(|b| b.columns())
            .map(|c| {
                let data = c.to_data();
                data.get_slice_memory_size()
                    .unwrap_or_else(|_| c.get_array_memory_size())
                    + crate::views::view_value_bytes(&data)
            })
            .sum()
    }

    /// The block with its wasteful string/binary view columns compacted (see
    /// [`views`](crate::views)): what is stored, so that a row selection is stored with its own
    /// values only.
    pub fn compacted(self) -> Self {
        Self {
            batches: self
                .batches
                .iter()
                .map(crate::views::compact_views)
                .collect(),
            schema: self.schema,
        }
    }

    /// The block as one batch (copies unless it already is one batch).
    pub fn concat(&self) -> Result<RecordBatch> {
        match self.batches.as_slice() {
            [one] => Ok(one.clone()),
            many => Ok(concat_batches(&self.schema, many)?),
        }
    }
}

/// The contents of one object.
#[derive(Clone, Debug)]
pub enum Object {
    /// Arrow data.
    Block(Block),
    /// Any other value, serialised.
    Bytes(bytes::Bytes),
}

impl Object {
    /// "a block" or "bytes", for messages.
    pub fn kind(&self) -> &'static str {
        match self {
            Object::Block(_) => "a block",
            Object::Bytes(_) => "bytes",
        }
    }

    /// The object ready to be stored: a block [compacted](Block::compacted), bytes as they are.
    pub fn compacted(self) -> Self {
        match self {
            Object::Block(block) => Object::Block(block.compacted()),
            bytes => bytes,
        }
    }

    /// Bytes of memory the object uses.
    pub fn size_bytes(&self) -> usize {
        match self {
            Object::Block(block) => block.size_bytes(),
            Object::Bytes(bytes) => bytes.len(),
        }
    }

    /// The block inside, or [`Error::WrongObjectKind`].
    pub fn into_block(self, id: ObjectId) -> Result<Block> {
        match self {
            Object::Block(block) => Ok(block),
            other => Err(Error::WrongObjectKind {
                id,
                expected: "a block",
                actual: other.kind(),
            }),
        }
    }

    /// The bytes inside, or [`Error::WrongObjectKind`].
    pub fn into_bytes(self, id: ObjectId) -> Result<bytes::Bytes> {
        match self {
            Object::Bytes(bytes) => Ok(bytes),
            other => Err(Error::WrongObjectKind {
                id,
                expected: "bytes",
                actual: other.kind(),
            }),
        }
    }
}

impl From<Block> for Object {
    fn from(block: Block) -> Self {
        Object::Block(block)
    }
}

impl From<RecordBatch> for Object {
    fn from(batch: RecordBatch) -> Self {
        Object::Block(Block::from_batch(batch))
    }
}
