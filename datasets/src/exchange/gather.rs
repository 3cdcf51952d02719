//! Rows of several batches put together in a given order, as one batch, a column at a time.
//!
//! The map side of an exchange reorders a block's rows by partition, and a shuffle's reduce
//! side reorders its partition's rows at random. Concatenating the batches whole and then
//! taking rows from the concatenation holds three copies of the block at the peak: the
//! batches, the concatenation and the output. [`gather`] does the same two steps one column at
//! a time: it concatenates that column of the batches, lets go of the batches' column, and
//! takes the rows from it, before it starts on the next column. Where the batches were this
//! task's alone (a block just read from Parquet, say), their memory is returned as the output
//! grows, so the peak is the block and about two columns rather than three blocks. Batches
//! shared with the object store are merely not referenced any more.
//!
//! Arrow's `interleave`, which takes `(batch, row)` pairs straight from the batches with no
//! concatenation at all, was tried first: it made the scale-1 `shuffle` and `sort` workloads
//! about 30% slower (its string-view path maps every row's buffer through a lookup, where
//! `concat` appends the buffers once and `take` copies the views).

use std::sync::Arc;

use arrow::array::{Array, ArrayRef, RecordBatch, RecordBatchOptions, UInt32Array};
use arrow::compute::{concat, take};
use arrow::datatypes::SchemaRef;
use arrow::error::ArrowError;

/// One batch of `schema` holding the rows of `batches` that `order` names, in that order, by
/// their number in the batches taken one after another. Each column of `batches` is let go of
/// once gathered (see the module doc). An error, not a panic, if a batch's columns differ from
/// `schema`'s in number or type, or a row number is past the last row.
pub(crate) fn gather(
    schema: &SchemaRef,
    batches: Vec<RecordBatch>,
    order: &UInt32Array,
) -> Result<RecordBatch, ArrowError> {
    crate::columns::check_columns(schema, &batches)?;
    let rows: usize = batches.iter().map(RecordBatch::num_rows).sum();
    if let Some(past) = order.values().iter().find(|&&row| row as usize >= rows) {
        return Err(ArrowError::InvalidArgumentError(format!(
            "row {past} gathered from batches of {rows} rows"
        )));
    }
    // Column-major, so that each column of every batch can be let go of on its own.
    let mut by_column: Vec<Vec<ArrayRef>> =
        vec![Vec::with_capacity(batches.len()); schema.fields().len()];
    for batch in batches {
        let (_, columns, _) = batch.into_parts();
        for (column, array) in columns.into_iter().enumerate() {
            by_column[column].push(array);
        }
    }
    let columns = by_column
        .into_iter()
        .zip(schema.fields())
        .map(|(inputs, field)| {
            let whole = match inputs.as_slice() {
                [] => arrow::array::new_empty_array(field.data_type()),
                [one] => Arc::clone(one),
                many => concat(&many.iter().map(|a| a.as_ref()).collect::<Vec<&dyn Array>>())?,
            };
            drop(inputs);
            take(whole.as_ref(), order, None)
        })
        .collect::<Result<Vec<_>, _>>()?;
    let options = RecordBatchOptions::new().with_row_count(Some(order.len()));
    RecordBatch::try_new_with_options(Arc::clone(schema), columns, &options)
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::array::{Int64Array, StringArray, StringViewArray};
    use arrow::compute::{concat_batches, take_record_batch};
    use arrow::datatypes::{DataType, Field, Schema};
    use proptest::prelude::*;

    fn schema() -> SchemaRef {
        Arc::new(Schema::new(vec![
            Field::new("id", DataType::Int64, true),
            Field::new("name", DataType::Utf8, true),
            Field::new("tag", DataType::Utf8View, true),
        ]))
    }

    fn batch(rows: &[(Option<i64>, Option<String>)]) -> RecordBatch {
        let ids = Int64Array::from_iter(rows.iter().map(|r| r.0));
        let names = StringArray::from_iter(rows.iter().map(|r| r.1.clone()));
        let tags =
            StringViewArray::from_iter(rows.iter().map(|r| r.1.as_ref().map(|s| s.repeat(3))));
        RecordBatch::try_new(
            schema(),
            vec![Arc::new(ids), Arc::new(names), Arc::new(tags)],
        )
        .unwrap()
    }

    proptest! {
        /// Gathering from the batches is concatenating them and taking the same rows, for any
        /// batches (empty ones, nulls, unicode, one batch) and any order of any of their rows.
        #[test]
        fn gathering_is_concatenating_then_taking(
            batches in prop::collection::vec(
                prop::collection::vec((any::<Option<i64>>(), any::<Option<String>>()), 0..20),
                0..5,
            ),
            picks in prop::collection::vec(any::<prop::sample::Index>(), 0..60),
        ) {
            let batches: Vec<RecordBatch> = batches.iter().map(|rows| batch(rows)).collect();
            let rows: usize = batches.iter().map(RecordBatch::num_rows).sum();
            let order = UInt32Array::from_iter_values(if rows == 0 {
                Vec::new()
            } else {
                picks.iter().map(|i| i.index(rows) as u32).collect()
            });
            let expected = take_record_batch(&concat_batches(&schema(), &batches).unwrap(), &order)
                .unwrap();
            let gathered = gather(&schema(), batches, &order).unwrap();
            prop_assert_eq!(gathered, expected);
        }
    }

    #[test]
    fn a_row_past_the_last_is_an_error_not_a_panic() {
        let rows = vec![(Some(1), Some("a".to_string()))];
        let error = gather(
            &schema(),
            vec![batch(&rows), batch(&rows)],
            &UInt32Array::from(vec![2]),
        )
        .unwrap_err()
        .to_string();
        assert!(
            error.contains("row 2 gathered from batches of 2 rows"),
            "{error}"
        );
    }

    #[test]
    fn batches_of_other_columns_are_an_error_naming_both() {
        let other = RecordBatch::try_from_iter([(
            "id",
            Arc::new(StringArray::from(vec!["1"])) as ArrayRef,
        )])
        .unwrap();
        let error = gather(&schema(), vec![other], &UInt32Array::from(vec![0]))
            .unwrap_err()
            .to_string();
        assert!(error.contains("cannot be put together"), "{error}");
        assert!(error.contains("id: Utf8"), "{error}");
    }
}
