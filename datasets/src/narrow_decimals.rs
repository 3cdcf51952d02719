//! Decimals that Parquet stores as 32- or 64-bit integers, read at that width and widened to
//! 128 bits in the pass that filters them.
//!
//! Parquet stores a decimal of up to 9 digits as `INT32` and one of up to 18 as `INT64`.
//! Arrow's reader widens them to `Decimal128` as it decodes (a pass over every row that writes
//! 16 bytes each), and a filter after it copies those 16 bytes again for each row it keeps.
//! Read at their stored width instead (`Decimal32`, `Decimal64`: the reader hands its decoded
//! integers over without a copy), the filter's one pass does both: it reads 4 or 8 bytes of
//! each row and writes 16 bytes for each row kept. The batch that comes out has the file's
//! `Decimal128` columns, as it would have read whole.
//!
//! [`narrow_schema`] says which columns to read narrow (the reader takes it as a schema
//! hint), and [`widen`] makes the wide column from a narrow one and the filter's mask.
//!
//! A stage that ends in a combining groupby goes further: its read leaves such columns narrow
//! (the schema still says `Decimal128`, as for the dictionary codes of its keys), and they
//! reach the decimal arithmetic of `with_column` (`crate::decimal_arithmetic`, which reads
//! 64-bit sides as they are) and the laned sums and means (`crate::exchange::laned_sums`),
//! each reading half the bytes. Whatever else reads them gets them widened first: an
//! expression other than decimal arithmetic ([`crate::decimal_arithmetic::takes_narrow`]), a
//! filter after the read, a user function, a key, or an aggregate DataFusion computes.

use std::sync::Arc;

use arrow::array::{
    Array, ArrayRef, ArrowPrimitiveType, AsArray, BooleanArray, Decimal128Array, PrimitiveArray,
    RecordBatch, RecordBatchOptions,
};
use arrow::buffer::ScalarBuffer;
use arrow::compute::filter;
use arrow::datatypes::{DataType, Decimal32Type, Decimal64Type, Schema, SchemaRef};
use parquet::arrow::arrow_reader::{ArrowReaderMetadata, ArrowReaderOptions};
use parquet::basic::Type as PhysicalType;

use arrow::error::ArrowError;

/// What the functions here give: Arrow's errors.
type Result<T> = std::result::Result<T, ArrowError>;

/// The file's schema with each of `columns` (indices into it) that is a `Decimal128` stored as
/// `INT32` or `INT64` read as `Decimal32` or `Decimal64`; `None` when no column is.
pub fn narrow_schema(metadata: &ArrowReaderMetadata, columns: &[usize]) -> Option<SchemaRef> {
    let schema = metadata.schema();
    let roots = metadata.parquet_schema().root_schema().get_fields();
    let mut fields: Vec<_> = schema.fields().iter().map(|f| f.as_ref().clone()).collect();
    let mut narrowed = false;
    for &index in columns {
        let (Some(field), Some(root)) = (fields.get_mut(index), roots.get(index)) else {
            continue;
        };
        let DataType::Decimal128(precision, scale) = *field.data_type() else {
            continue;
        };
        if !root.is_primitive() {
            continue;
        }
        let narrow = match root.get_physical_type() {
            PhysicalType::INT32 => DataType::Decimal32(precision, scale),
            PhysicalType::INT64 => DataType::Decimal64(precision, scale),
            _ => continue,
        };
        *field = field.clone().with_data_type(narrow);
        narrowed = true;
    }
    narrowed.then(|| Arc::new(Schema::new_with_metadata(fields, schema.metadata().clone())))
}

/// `metadata` with the decimals among `columns` that Parquet stores as integers read at that
/// width (itself when there are none).
pub fn narrow_metadata(
    metadata: &ArrowReaderMetadata,
    columns: &[usize],
) -> parquet::errors::Result<ArrowReaderMetadata> {
    match narrow_schema(metadata, columns) {
        Some(schema) => ArrowReaderMetadata::try_new(
            Arc::clone(metadata.metadata()),
            ArrowReaderOptions::new().with_schema(schema),
        ),
        None => Ok(metadata.clone()),
    }
}

/// Whether `array` is a decimal read narrow, which [`widen`] turns into its `Decimal128`.
pub fn is_narrow(array: &dyn Array) -> bool {
    matches!(
        array.data_type(),
        DataType::Decimal32(..) | DataType::Decimal64(..)
    )
}

/// The `Decimal128` a narrow decimal type stands for (the same precision and scale).
pub fn wide_type(data_type: &DataType) -> Option<DataType> {
    match *data_type {
        DataType::Decimal32(p, s) | DataType::Decimal64(p, s) => Some(DataType::Decimal128(p, s)),
        _ => None,
    }
}

/// `array` as the `Decimal128` it stands for, if it is a narrow decimal; else itself.
pub fn widened(array: &ArrayRef) -> Result<ArrayRef> {
    match wide_type(array.data_type()) {
        Some(wide) => widen(array, &wide, None),
        None => Ok(Arc::clone(array)),
    }
}

/// `schema` with each narrow decimal field given the `Decimal128` it stands for.
pub fn wide_schema(schema: &SchemaRef) -> SchemaRef {
    if !schema
        .fields()
        .iter()
        .any(|f| wide_type(f.data_type()).is_some())
    {
        return Arc::clone(schema);
    }
    let fields: Vec<_> = schema
        .fields()
        .iter()
        .map(|f| match wide_type(f.data_type()) {
            Some(wide) => f.as_ref().clone().with_data_type(wide),
            None => f.as_ref().clone(),
        })
        .collect();
    Arc::new(Schema::new_with_metadata(fields, schema.metadata().clone()))
}

/// `batch` with its narrow decimal columns widened (itself when it has none).
pub fn widened_batch(batch: &RecordBatch) -> Result<RecordBatch> {
    let schema = wide_schema(batch.schema_ref());
    if Arc::ptr_eq(&schema, batch.schema_ref()) {
        return Ok(batch.clone());
    }
    let columns = batch
        .columns()
        .iter()
        .map(widened)
        .collect::<Result<Vec<_>>>()?;
    RecordBatch::try_new_with_options(
        schema,
        columns,
        &RecordBatchOptions::new().with_row_count(Some(batch.num_rows())),
    )
}

/// `array` as `target`'s type, with only the rows `mask` keeps (every row without one): a
/// `Decimal32` or `Decimal64` column widened to the `Decimal128` `target`. Any other array is
/// only filtered.
pub fn widen(array: &ArrayRef, target: &DataType, mask: Option<&BooleanArray>) -> Result<ArrayRef> {
    let DataType::Decimal128(precision, scale) = *target else {
        return keep(array, mask);
    };
    let widened = match array.data_type() {
        DataType::Decimal32(..) => widen_values(array.as_primitive::<Decimal32Type>(), mask)?,
        DataType::Decimal64(..) => widen_values(array.as_primitive::<Decimal64Type>(), mask)?,
        _ => return keep(array, mask),
    };
    Ok(Arc::new(
        widened.with_precision_and_scale(precision, scale)?,
    ))
}

/// The rows of `array` that `mask` keeps (all of them without one).
fn keep(array: &ArrayRef, mask: Option<&BooleanArray>) -> Result<ArrayRef> {
    Ok(match mask {
        Some(mask) => filter(array, mask)?,
        None => Arc::clone(array),
    })
}

/// The kept values of a narrow decimal column as 128-bit ones. A column with nulls is filtered
/// first (so that its validity is filtered with it) and then widened.
fn widen_values<T>(
    array: &PrimitiveArray<T>,
    mask: Option<&BooleanArray>,
) -> Result<Decimal128Array>
where
    T: ArrowPrimitiveType,
    T::Native: Into<i128>,
{
    if array.null_count() > 0 {
        let kept = match mask {
            Some(mask) => filter(array, mask)?,
            None => Arc::new(array.clone()),
        };
        return Ok(kept.as_primitive::<T>().unary(|v| v.into()));
    }
    let values = array.values();
    let wide: Vec<i128> = match mask {
        None => values.iter().map(|&v| v.into()).collect(),
        Some(mask) => {
            let kept = mask.true_count();
            let mut wide = Vec::with_capacity(kept);
            // Most rows kept: copy runs; few: pick rows one by one.
            if kept * 5 >= mask.len() * 4 {
                for (start, end) in mask.values().set_slices() {
                    wide.extend(values[start..end].iter().map(|&v| v.into()));
                }
            } else {
                wide.extend(mask.values().set_indices().map(|i| values[i].into()));
            }
            wide
        }
    };
    Ok(Decimal128Array::new(ScalarBuffer::from(wide), None))
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::array::{Decimal32Array, Decimal64Array};
    use arrow::compute::cast;
    use proptest::prelude::*;

    /// `array` widened by Arrow's cast and then filtered: what [`widen`] must give.
    fn expected(array: &ArrayRef, target: &DataType, mask: Option<&BooleanArray>) -> ArrayRef {
        let wide = cast(array, target).unwrap();
        match mask {
            Some(mask) => filter(&wide, mask).unwrap(),
            None => wide,
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]

        /// Widened and filtered in one pass, a narrow column equals Arrow's cast then filter,
        /// with nulls or without, for any mask (nulls in it drop their rows).
        #[test]
        fn widening_through_a_mask_matches_cast_then_filter(
            values in proptest::collection::vec(
                proptest::option::weighted(0.9, proptest::num::i64::ANY), 0..300),
            nulls: bool,
            keep in proptest::collection::vec(proptest::option::weighted(0.95, 0u8..10), 300),
            kept_of_ten in 0u8..=10,
            masked: bool,
            thirty_two: bool,
        ) {
            let values: Vec<Option<i64>> = values
                .into_iter()
                .map(|v| if nulls { v } else { Some(v.unwrap_or(-7)) })
                .collect();
            let (array, precision): (ArrayRef, u8) = match thirty_two {
                true => (
                    Arc::new(
                        values.iter().map(|v| v.map(|v| (v % 1_000_000_000) as i32))
                            .collect::<Decimal32Array>()
                            .with_precision_and_scale(9, 2).unwrap(),
                    ),
                    9,
                ),
                false => (
                    Arc::new(
                        values.iter().map(|v| v.map(|v| v % 1_000_000_000_000_000_000))
                            .collect::<Decimal64Array>()
                            .with_precision_and_scale(18, 2).unwrap(),
                    ),
                    18,
                ),
            };
            let mask: BooleanArray = keep[..values.len()]
                .iter()
                .map(|k| k.map(|k| k < kept_of_ten))
                .collect();
            let mask = match mask.null_count() {
                0 => mask,
                _ => arrow::compute::prep_null_mask_filter(&mask),
            };
            let mask = masked.then_some(&mask);
            let target = DataType::Decimal128(precision, 2);
            let wide = widen(&array, &target, mask).unwrap();
            prop_assert_eq!(wide.data_type(), &target);
            prop_assert_eq!(&wide, &expected(&array, &target, mask));
        }
    }

    #[test]
    fn other_columns_are_only_filtered() {
        let array: ArrayRef = Arc::new(arrow::array::Int64Array::from(vec![1, 2, 3]));
        let mask = BooleanArray::from(vec![true, false, true]);
        let kept = widen(&array, &DataType::Int64, Some(&mask)).unwrap();
        assert_eq!(&kept, &expected(&array, &DataType::Int64, Some(&mask)));
        let wide: ArrayRef = Arc::new(
            Decimal128Array::from(vec![5, 6])
                .with_precision_and_scale(20, 1)
                .unwrap(),
        );
        let target = wide.data_type().clone();
        assert_eq!(&widen(&wide, &target, None).unwrap(), &wide);
    }
}
