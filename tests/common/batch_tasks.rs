//! A task function over record batches, shared by the embedded and cluster tests.

use std::sync::Arc;

use arrow::array::{ArrayRef, Int64Array, RecordBatch};

/// Multiplies column `x` by `factor`.
#[manta::remote]
pub fn scale_x(batch: RecordBatch, factor: i64) -> Result<RecordBatch, manta::BoxError> {
    let x = batch
        .column_by_name("x")
        .ok_or("no column x")?
        .as_any()
        .downcast_ref::<Int64Array>()
        .ok_or("x is not Int64")?;
    Ok(with_x(x.iter().map(|v| v.map(|v| v * factor)).collect()))
}

/// `batch` with `x` multiplied by `factor`, computed here in plain Rust.
pub fn scaled(batch: &RecordBatch, factor: i64) -> RecordBatch {
    let x = batch
        .column(0)
        .as_any()
        .downcast_ref::<Int64Array>()
        .unwrap();
    with_x(x.values().iter().map(|v| Some(v * factor)).collect())
}

/// One column `x` of 0..n.
pub fn numbers(n: i64) -> RecordBatch {
    with_x(Int64Array::from_iter_values(0..n))
}

fn with_x(x: Int64Array) -> RecordBatch {
    RecordBatch::try_from_iter([("x", Arc::new(x) as ArrayRef)]).expect("one column")
}
