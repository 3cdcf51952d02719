//! Arrow IPC helpers the dataset tasks share: a batch as an IPC stream (a sort's boundaries,
//! batches shipped inside read tasks), a schema as an IPC schema message (a stage's known
//! schema, an aggregate's partial-state schema).

use std::sync::Arc;

use arrow::array::RecordBatch;
use arrow::datatypes::{Schema, SchemaRef};

use crate::error::{Error, Result};

/// A batch as an Arrow IPC stream.
pub fn write_ipc(batch: &RecordBatch) -> Result<Vec<u8>, arrow::error::ArrowError> {
    let mut out = Vec::new();
    let mut writer = arrow::ipc::writer::StreamWriter::try_new(&mut out, batch.schema_ref())?;
    writer.write(batch)?;
    writer.finish()?;
    drop(writer);
    Ok(out)
}

/// A schema as an Arrow IPC schema message.
pub fn encode_schema(schema: &Schema) -> Vec<u8> {
    let generator = arrow::ipc::writer::IpcDataGenerator::default();
    let mut tracker = arrow::ipc::writer::DictionaryTracker::new(false);
    generator
        .schema_to_bytes_with_dictionary_tracker(
            schema,
            &mut tracker,
            &arrow::ipc::writer::IpcWriteOptions::default(),
        )
        .ipc_message
}

/// The schema of an Arrow IPC schema message.
pub fn decode_schema(bytes: &[u8]) -> Result<SchemaRef> {
    let message = arrow::ipc::root_as_message(bytes).map_err(|e| {
        Error::Arrow(arrow::error::ArrowError::ParseError(format!(
            "not a schema message: {e}"
        )))
    })?;
    let schema = message.header_as_schema().ok_or_else(|| {
        Error::Arrow(arrow::error::ArrowError::ParseError(
            "not a schema message".into(),
        ))
    })?;
    Ok(Arc::new(arrow::ipc::convert::fb_to_schema(schema)))
}
