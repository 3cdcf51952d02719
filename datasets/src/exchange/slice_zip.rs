//! The slice task (repartition without a shuffle, limit: the rows `(offset, length)` of each
//! input block, one after another) and the zip task (a left block beside the right rows cut
//! to its length), and the block helpers the exchange's tasks share.

use std::sync::Arc;

use arrow::array::RecordBatch;
use arrow::datatypes::{Field, Schema, SchemaRef};
use manta_engine::{Block, Object, TaskContext, TaskInput};

use super::specs::decode;

pub(crate) fn into_block(object: Object) -> manta_engine::Result<Block> {
    match object {
        Object::Block(block) => Ok(block),
        other => Err(manta_engine::Error::Internal(format!(
            "an exchange's input is {}, not a block",
            other.kind()
        ))),
    }
}

pub(crate) fn user_error(
    name: &str,
    input: String,
    e: impl std::error::Error + Send + Sync + 'static,
) -> manta_engine::Error {
    manta_engine::Error::UserFunction {
        name: name.into(),
        input,
        source: Box::new(e),
    }
}

/// One batch of a block's rows (zero-copy when it has one batch already).
pub(crate) fn single_batch(block: &Block) -> manta_engine::Result<RecordBatch> {
    match block.batches() {
        [one] => Ok(one.clone()),
        batches => Ok(crate::columns::concat(block.schema(), batches)?),
    }
}

pub(super) fn run_slice(_: &TaskContext, input: TaskInput) -> manta_engine::Result<Object> {
    let slices: Vec<(u64, u64)> = decode(&input.args, "a slice task")?;
    Ok(Object::Block(slice_blocks(input.objects, &slices)?))
}

/// A zip task: the first input is the left block, the rest are cut by the slices into the
/// right rows that go beside it.
pub(super) fn run_zip(_: &TaskContext, input: TaskInput) -> manta_engine::Result<Object> {
    let slices: Vec<(u64, u64)> = decode(&input.args, "a zip task")?;
    let mut objects = input.objects.into_iter();
    let left =
        into_block(objects.next().ok_or_else(|| {
            manta_engine::Error::Internal("a zip task needs its left block".into())
        })?)?;
    let right = slice_blocks(objects.collect(), &slices)?;
    let zipped = zip_batches(&single_batch(&left)?, &single_batch(&right)?)?;
    Ok(Object::Block(Block::from_batch(zipped)))
}

/// The rows `(offset, length)` of each block, one after another.
fn slice_blocks(objects: Vec<Object>, slices: &[(u64, u64)]) -> manta_engine::Result<Block> {
    let mut schema = None;
    let mut out = Vec::new();
    for (object, &(offset, length)) in objects.into_iter().zip(slices) {
        let block = into_block(object)?;
        if super::reduce::is_unknown(&block) {
            continue;
        }
        schema.get_or_insert_with(|| Arc::clone(block.schema()));
        let (mut skip, mut left) = (offset as usize, length as usize);
        for batch in block.batches() {
            if left == 0 {
                break;
            }
            if skip >= batch.num_rows() {
                skip -= batch.num_rows();
                continue;
            }
            let take = (batch.num_rows() - skip).min(left);
            out.push(batch.slice(skip, take));
            left -= take;
            skip = 0;
        }
    }
    let schema = schema.unwrap_or_else(|| Arc::new(Schema::empty()));
    Block::try_new(schema, out)
}

/// Zips a left block with right rows already cut to the same length.
pub fn zip_batches(
    left: &RecordBatch,
    right: &RecordBatch,
) -> Result<RecordBatch, arrow::error::ArrowError> {
    let schema = zip_schema(left.schema_ref(), right.schema_ref());
    let mut columns = left.columns().to_vec();
    columns.extend(right.columns().iter().cloned());
    RecordBatch::try_new(schema, columns)
}

/// The schema of `zip`: left columns, then right columns (a clashing name gets `_1`).
pub fn zip_schema(left: &Schema, right: &Schema) -> SchemaRef {
    let mut fields: Vec<Field> = left.fields().iter().map(|f| f.as_ref().clone()).collect();
    for field in right.fields() {
        let mut name = field.name().clone();
        while fields.iter().any(|f| *f.name() == name) {
            name.push_str("_1");
        }
        fields.push(field.as_ref().clone().with_name(name));
    }
    Arc::new(Schema::new(fields))
}
