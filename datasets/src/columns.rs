//! Operators that reshape a batch without computing: selecting, dropping and renaming columns,
//! sampling rows, and conforming a batch to a wider schema.
//!
//! Each works on a schema too, so the plan checks column names before any task runs and the
//! message lists the columns there are.

use std::sync::Arc;

use arrow::array::{BooleanArray, RecordBatch, new_null_array};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use arrow::error::ArrowError;
use rand::{Rng, SeedableRng};
use serde::{Deserialize, Serialize};

/// A change of columns.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum Reshape {
    /// Keep these columns, in this order.
    Select(Vec<String>),
    /// Remove these columns.
    Drop(Vec<String>),
    /// Rename columns, `(old, new)`.
    Rename(Vec<(String, String)>),
}

impl Reshape {
    /// The columns of `input` to keep, in output order, and their output names.
    fn plan(&self, input: &Schema) -> Result<Vec<(usize, String)>, ArrowError> {
        let index = |name: &String| {
            input.index_of(name).map_err(|_| {
                ArrowError::SchemaError(format!(
                    "no column named {name:?}; the columns are [{}]",
                    input
                        .fields()
                        .iter()
                        .map(|f| f.name().as_str())
                        .collect::<Vec<_>>()
                        .join(", ")
                ))
            })
        };
        let all = || {
            input
                .fields()
                .iter()
                .enumerate()
                .map(|(i, f)| (i, f.name().clone()))
        };
        Ok(match self {
            Reshape::Select(names) => names
                .iter()
                .map(|n| Ok((index(n)?, n.clone())))
                .collect::<Result<_, ArrowError>>()?,
            Reshape::Drop(names) => {
                for name in names {
                    index(name)?;
                }
                all().filter(|(_, n)| !names.contains(n)).collect()
            }
            Reshape::Rename(pairs) => {
                for (old, _) in pairs {
                    index(old)?;
                }
                all()
                    .map(|(i, name)| {
                        let renamed = pairs.iter().find(|(old, _)| *old == name);
                        (i, renamed.map_or(name, |(_, new)| new.clone()))
                    })
                    .collect()
            }
        })
    }

    /// The schema this makes of `input`.
    pub fn schema(&self, input: &SchemaRef) -> Result<SchemaRef, ArrowError> {
        let columns = self.plan(input)?;
        let fields: Vec<_> = columns
            .iter()
            .map(|(i, name)| input.field(*i).clone().with_name(name))
            .collect();
        let schema = Schema::new_with_metadata(fields, input.metadata().clone());
        let mut seen = std::collections::HashSet::new();
        if let Some(dup) = schema.fields().iter().find(|f| !seen.insert(f.name())) {
            return Err(ArrowError::SchemaError(format!(
                "two columns would be named {:?}",
                dup.name()
            )));
        }
        Ok(Arc::new(schema))
    }

    /// Applies the change to a batch, without copying any column.
    pub fn apply(&self, batch: &RecordBatch) -> Result<RecordBatch, ArrowError> {
        let columns = self.plan(batch.schema_ref())?;
        let schema = self.schema(batch.schema_ref())?;
        let arrays = columns
            .iter()
            .map(|(i, _)| Arc::clone(batch.column(*i)))
            .collect();
        with_columns(schema, arrays, batch.num_rows())
    }
}

/// Keeps each row with probability `fraction`, decided by a generator seeded with `seed`, so
/// the same seed, block and batch always keep the same rows.
pub fn sample(batch: &RecordBatch, fraction: f64, seed: u64) -> Result<RecordBatch, ArrowError> {
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let keep: BooleanArray = (0..batch.num_rows())
        .map(|_| Some(rng.random::<f64>() < fraction))
        .collect();
    arrow::compute::filter_record_batch(batch, &keep)
}

/// A seed for one batch, from the user's seed, the block index and the batch's position.
pub fn batch_seed(seed: u64, block: u64, batch: u64) -> u64 {
    let mut x = seed
        ^ block.wrapping_mul(0x9E37_79B9_7F4A_7C15)
        ^ batch.wrapping_mul(0xC2B2_AE3D_27D4_EB4F);
    // splitmix64 finaliser: nearby inputs give unrelated seeds.
    x = (x ^ (x >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    x ^ (x >> 31)
}

/// The batch with `schema`'s columns, by name: columns it lacks become nulls, columns of
/// another type are cast (files merged into one wider schema).
pub fn conform(batch: &RecordBatch, schema: &SchemaRef) -> Result<RecordBatch, ArrowError> {
    if batch.schema_ref() == schema {
        return Ok(batch.clone());
    }
    let columns = schema
        .fields()
        .iter()
        .map(|field| match batch.column_by_name(field.name()) {
            Some(column) if column.data_type() == field.data_type() => Ok(Arc::clone(column)),
            Some(column) => arrow::compute::cast(column, field.data_type()),
            None => Ok(new_null_array(field.data_type(), batch.num_rows())),
        })
        .collect::<Result<_, _>>()?;
    with_columns(Arc::clone(schema), columns, batch.num_rows())
}

/// A batch of these columns and `rows` rows: the row count is kept even with no column left
/// (a pipeline that needs none of a read's columns, only how many rows it has).
pub fn with_columns(
    schema: SchemaRef,
    columns: Vec<arrow::array::ArrayRef>,
    rows: usize,
) -> Result<RecordBatch, ArrowError> {
    RecordBatch::try_new_with_options(
        schema,
        columns,
        &arrow::array::RecordBatchOptions::new().with_row_count(Some(rows)),
    )
}

/// `batch` with its string columns as `Utf8View` and binary columns as `BinaryView`, whatever
/// their type was (`Utf8`, `LargeUtf8`, a dictionary of strings; the binary ones alike): what
/// user functions are given, so that they handle one type whether the rows came from Parquet,
/// CSV, SQL or `from_arrow`. Views over `Utf8` point into its buffer, so nothing is copied but
/// the 16-byte views; a batch with no such column comes back as it is.
pub fn string_views(batch: RecordBatch) -> Result<RecordBatch, ArrowError> {
    let target = |data_type: &DataType| -> Option<DataType> {
        match data_type {
            DataType::Utf8 | DataType::LargeUtf8 => Some(DataType::Utf8View),
            DataType::Binary | DataType::LargeBinary => Some(DataType::BinaryView),
            DataType::Dictionary(_, values) => match values.as_ref() {
                DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View => {
                    Some(DataType::Utf8View)
                }
                DataType::Binary | DataType::LargeBinary | DataType::BinaryView => {
                    Some(DataType::BinaryView)
                }
                _ => None,
            },
            _ => None,
        }
    };
    let schema = batch.schema();
    if !schema
        .fields()
        .iter()
        .any(|f| target(f.data_type()).is_some())
    {
        return Ok(batch);
    }
    let mut fields = Vec::with_capacity(schema.fields().len());
    let mut columns = Vec::with_capacity(schema.fields().len());
    for (field, column) in schema.fields().iter().zip(batch.columns()) {
        match target(field.data_type()) {
            Some(view) => {
                columns.push(arrow::compute::cast(column, &view)?);
                fields.push(field.as_ref().clone().with_data_type(view));
            }
            None => {
                columns.push(Arc::clone(column));
                fields.push(field.as_ref().clone());
            }
        }
    }
    let schema = Schema::new_with_metadata(fields, schema.metadata().clone());
    with_columns(Arc::new(schema), columns, batch.num_rows())
}

/// The indices of `schema`'s columns named in `columns`, in the schema's order; `None` if that
/// is every column (nothing to prune).
pub fn pruned_indices(schema: &Schema, columns: &[String]) -> Option<Vec<usize>> {
    let indices: Vec<usize> = schema
        .fields()
        .iter()
        .enumerate()
        .filter(|(_, f)| columns.contains(f.name()))
        .map(|(i, _)| i)
        .collect();
    (indices.len() < schema.fields().len()).then_some(indices)
}

/// The columns of `batch` at `indices`, as a batch of `schema` (the projected schema).
pub fn project(
    batch: &RecordBatch,
    schema: &SchemaRef,
    indices: &[usize],
) -> Result<RecordBatch, ArrowError> {
    let columns = indices
        .iter()
        .map(|&i| Arc::clone(batch.column(i)))
        .collect();
    with_columns(Arc::clone(schema), columns, batch.num_rows())
}

/// The batches as one, with `schema`: an error naming the first batch whose columns differ in
/// number or type (where arrow's `concat_batches` would panic or fail obscurely), such as the
/// outputs of a user function that does not always return the same columns.
pub fn concat(schema: &SchemaRef, batches: &[RecordBatch]) -> Result<RecordBatch, ArrowError> {
    check_columns(schema, batches)?;
    arrow::compute::concat_batches(schema, batches)
}

/// Whether every batch has `schema`'s columns, in number and type: an error naming the first
/// that does not, as [`concat`] gives.
pub fn check_columns(schema: &SchemaRef, batches: &[RecordBatch]) -> Result<(), ArrowError> {
    let fits = |batch: &RecordBatch| {
        batch.num_columns() == schema.fields().len()
            && batch
                .schema_ref()
                .fields()
                .iter()
                .zip(schema.fields())
                .all(|(a, b)| a.data_type() == b.data_type())
    };
    if let Some(other) = batches.iter().find(|b| !fits(b)) {
        return Err(ArrowError::SchemaError(format!(
            "batches of different columns cannot be put together: [{}] and [{}]",
            describe_fields(schema),
            describe_fields(other.schema_ref())
        )));
    }
    Ok(())
}

/// The type a key column of `data_type` is compared and hashed as: strings of every kind
/// (`Utf8`, `LargeUtf8`, `Utf8View`, dictionaries of them) as `Utf8View`, binary alike as
/// `BinaryView`, any other type as itself. Equal keys of either side of a join, or of blocks
/// of one dataset, then hash alike whatever their string type.
pub fn key_type(data_type: &DataType) -> DataType {
    match data_type {
        DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View => DataType::Utf8View,
        DataType::Binary | DataType::LargeBinary | DataType::BinaryView => DataType::BinaryView,
        DataType::Dictionary(_, values) => key_type(values),
        other => other.clone(),
    }
}

/// `column` as its [`key_type`] (no copy if it is one already).
pub fn key_column(column: &arrow::array::ArrayRef) -> Result<arrow::array::ArrayRef, ArrowError> {
    let target = key_type(column.data_type());
    match &target == column.data_type() {
        true => Ok(Arc::clone(column)),
        false => arrow::compute::cast(column, &target),
    }
}

/// One schema for batches of `schemas`, which must have the same column names and types in
/// the same order: a column is nullable if it is in any of them (so every batch fits). Where
/// they differ otherwise, the error names the two schemas, with each column's full type.
pub fn unify(schemas: &[SchemaRef]) -> Result<SchemaRef, String> {
    let Some(first) = schemas.first() else {
        return Err("no schemas to unify".into());
    };
    let mut fields: Vec<Field> = first.fields().iter().map(|f| f.as_ref().clone()).collect();
    for other in &schemas[1..] {
        let same_shape = other.fields().len() == fields.len()
            && fields
                .iter()
                .zip(other.fields())
                .all(|(a, b)| a.name() == b.name() && a.data_type().equals_datatype(b.data_type()));
        if !same_shape {
            return Err(format!(
                "[{}] and [{}]",
                describe_fields(first),
                describe_fields(other)
            ));
        }
        for (field, theirs) in fields.iter_mut().zip(other.fields()) {
            if theirs.is_nullable() && !field.is_nullable() {
                *field = field.clone().with_nullable(true);
            }
        }
    }
    Ok(Arc::new(Schema::new_with_metadata(
        fields,
        first.metadata().clone(),
    )))
}

/// A schema's columns with their whole types: `id: Int64 not null, name: Utf8`.
pub fn describe_fields(schema: &Schema) -> String {
    schema
        .fields()
        .iter()
        .map(|f| {
            let null = if f.is_nullable() { "" } else { " not null" };
            format!("{}: {}{null}", f.name(), f.data_type())
        })
        .collect::<Vec<_>>()
        .join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::array::{Int32Array, StringArray};

    fn batch() -> RecordBatch {
        RecordBatch::try_from_iter([
            ("a", Arc::new(Int32Array::from(vec![1, 2, 3])) as _),
            ("b", Arc::new(StringArray::from(vec!["x", "ÿ", "z"])) as _),
            (
                "c",
                Arc::new(Int32Array::from(vec![None, Some(5), None])) as _,
            ),
        ])
        .unwrap()
    }

    #[test]
    fn select_drop_and_rename_keep_the_columns_asked_for() {
        let b = batch();
        let selected = Reshape::Select(vec!["c".into(), "a".into()])
            .apply(&b)
            .unwrap();
        assert_eq!(selected.schema().field(0).name(), "c");
        assert_eq!(selected.column(1), b.column(0));
        let dropped = Reshape::Drop(vec!["b".into()]).apply(&b).unwrap();
        assert_eq!(dropped.num_columns(), 2);
        assert_eq!(dropped.column(1), b.column(2));
        let renamed = Reshape::Rename(vec![("b".into(), "name".into())])
            .apply(&b)
            .unwrap();
        assert_eq!(renamed.schema().field(1).name(), "name");
        assert_eq!(renamed.column(1), b.column(1));
    }

    #[test]
    fn unknown_and_clashing_columns_are_errors_naming_them() {
        let b = batch();
        let error = Reshape::Select(vec!["nope".into()])
            .apply(&b)
            .unwrap_err()
            .to_string();
        assert!(
            error.contains("\"nope\"") && error.contains("a, b, c"),
            "{error}"
        );
        let error = Reshape::Rename(vec![("a".into(), "b".into())])
            .apply(&b)
            .unwrap_err()
            .to_string();
        assert!(error.contains("\"b\""), "{error}");
    }

    #[test]
    fn sampling_is_repeatable_and_near_the_fraction() {
        let ids = Int32Array::from_iter_values(0..10_000);
        let b = RecordBatch::try_from_iter([("id", Arc::new(ids) as _)]).unwrap();
        let once = sample(&b, 0.3, 42).unwrap();
        assert_eq!(once, sample(&b, 0.3, 42).unwrap());
        assert!(
            (2700..3300).contains(&once.num_rows()),
            "{}",
            once.num_rows()
        );
        assert_ne!(batch_seed(1, 0, 0), batch_seed(1, 1, 0));
    }
}
