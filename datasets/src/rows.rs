//! Rows as serde values: what `map`, `flat_map`, `filter_fn`, `iter_rows` and `from_items`
//! work with.
//!
//! A batch becomes rows through arrow-json's writer (one JSON object per row, nulls explicit),
//! and rows become a batch through arrow-json's serde decoder, with the schema inferred from
//! the values. Row functions are registered erased to `serde_json::Value`
//! (see `#[manta::remote]`), so these conversions are all the engine needs; they cost a JSON
//! value per row, which is why `map_batches` stays the fast path.

use std::sync::Arc;

use arrow::array::RecordBatch;
use arrow::compute::filter_record_batch;
use arrow::datatypes::SchemaRef;
use manta_engine::registry::{RowFn, call_row};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::error::{Error, Result};

/// What a row function's result means.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum RowMode {
    /// One row out per row in (`map`).
    Map,
    /// Any number of rows out per row in: the function returns a list (`flat_map`).
    FlatMap,
    /// Keep the row if the function returns `true` (`filter_fn`).
    Filter,
}

impl RowMode {
    /// The operator's name.
    pub fn name(self) -> &'static str {
        match self {
            RowMode::Map => "Map",
            RowMode::FlatMap => "FlatMap",
            RowMode::Filter => "FilterFn",
        }
    }
}

/// The rows of `batch` as JSON objects, nulls included.
pub fn to_values(batch: &RecordBatch) -> Result<Vec<Value>> {
    if batch.num_rows() == 0 {
        return Ok(Vec::new());
    }
    let mut writer = arrow::json::WriterBuilder::new()
        .with_explicit_nulls(true)
        .build::<_, arrow::json::writer::JsonArray>(Vec::new());
    writer.write(batch)?;
    writer.finish()?;
    let bytes = writer.into_inner();
    serde_json::from_slice(&bytes)
        .map_err(|e| Error::InvalidArgument(format!("could not convert rows to values: {e}")))
}

/// A batch of `values` (objects), its schema inferred from them.
pub fn from_values(values: &[Value]) -> Result<RecordBatch> {
    let schema: SchemaRef = Arc::new(arrow::json::reader::infer_json_schema_from_iterator(
        values.iter().map(|v| Ok(v.clone())),
    )?);
    from_values_with(values, schema)
}

/// A batch of `values` with `schema`.
pub fn from_values_with(values: &[Value], schema: SchemaRef) -> Result<RecordBatch> {
    let mut decoder = arrow::json::ReaderBuilder::new(Arc::clone(&schema))
        .with_batch_size(values.len().max(1))
        .build_decoder()?;
    decoder.serialize(values)?;
    Ok(decoder
        .flush()?
        .unwrap_or_else(|| RecordBatch::new_empty(schema)))
}

/// Runs row function `f` (registered as `name`) over every row of `batch`.
pub fn apply(
    name: &str,
    f: RowFn,
    mode: RowMode,
    batch: &RecordBatch,
    input: &str,
) -> manta_engine::Result<RecordBatch> {
    let rows = to_values(batch).map_err(|e| failed(name, input, e))?;
    let label = |i: usize| move || format!("row {i} of {input}");
    match mode {
        RowMode::Filter => {
            let mut keep = Vec::with_capacity(rows.len());
            for (i, row) in rows.into_iter().enumerate() {
                match call_row(name, f, row, label(i))? {
                    Value::Bool(b) => keep.push(b),
                    other => {
                        return Err(wrong_result(name, input, "a bool", &other));
                    }
                }
            }
            filter_record_batch(batch, &keep.into())
                .map_err(|e| failed(name, input, Error::Arrow(e)))
        }
        RowMode::Map | RowMode::FlatMap => {
            let mut out = Vec::with_capacity(rows.len());
            for (i, row) in rows.into_iter().enumerate() {
                match (mode, call_row(name, f, row, label(i))?) {
                    (RowMode::Map, value @ Value::Object(_)) => out.push(value),
                    (RowMode::FlatMap, Value::Array(values)) => {
                        if let Some(bad) = values.iter().find(|v| !v.is_object()) {
                            return Err(wrong_result(name, input, "a list of rows", bad));
                        }
                        out.extend(values)
                    }
                    (RowMode::Map, other) => {
                        return Err(wrong_result(name, input, "a row (struct or map)", &other));
                    }
                    (_, other) => {
                        return Err(wrong_result(name, input, "a list of rows", &other));
                    }
                }
            }
            if out.is_empty() {
                // No rows to infer a schema from: nothing flows on from this batch.
                return Ok(RecordBatch::new_empty(Arc::new(
                    arrow::datatypes::Schema::empty(),
                )));
            }
            from_values(&out).map_err(|e| failed(name, input, e))
        }
    }
}

fn failed(name: &str, input: &str, error: Error) -> manta_engine::Error {
    manta_engine::Error::UserFunction {
        name: name.to_string(),
        input: input.to_string(),
        source: Box::new(error),
    }
}

fn wrong_result(name: &str, input: &str, expected: &str, got: &Value) -> manta_engine::Error {
    let mut shown = got.to_string();
    shown.truncate(80);
    failed(
        name,
        input,
        Error::InvalidArgument(format!("returned {shown}, expected {expected}")),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::array::{Int64Array, StringArray};

    #[test]
    fn rows_round_trip_through_values() {
        let batch = RecordBatch::try_from_iter([
            (
                "a",
                Arc::new(Int64Array::from(vec![Some(1), None, Some(-3)])) as _,
            ),
            (
                "s",
                Arc::new(StringArray::from(vec![Some("x"), Some("ü"), None])) as _,
            ),
        ])
        .unwrap();
        let values = to_values(&batch).unwrap();
        assert_eq!(values[1], serde_json::json!({"a": null, "s": "ü"}));
        let back = from_values_with(&values, batch.schema()).unwrap();
        assert_eq!(back, batch);
    }
}
