//! Reading a Parquet fragment through a filter: the filter's columns first, then the others
//! read whichever of two ways costs less for the rows the filter keeps.
//!
//! The first pass decodes only the columns the predicate reads and evaluates it, batch by
//! batch, keeping the masks and the decoded columns. What the masks look like decides the
//! second pass:
//!
//! - **Long runs** (kept or dropped rows come in runs averaging at least [`MIN_RUN_ROWS`] rows,
//!   as when a filter picks a range of a sorted column): the masks become a
//!   [`RowSelection`] of runs and the reader decodes the columns only within the kept runs,
//!   skipping whole pages and row groups between them.
//! - **Scattered rows** (a filter on an unsorted column, whatever it keeps): the other columns
//!   are decoded whole, batch for batch beside the first pass's, and each assembled batch is
//!   filtered by its mask. The filter's columns are decoded once, not again for the output.
//!
//! Parquet's own row filter (`RowFilter`) always takes the first way: it decodes the filter's
//! columns a second time for the output, and a selection of many short runs costs more than
//! decoding everything (in one pass per run, or through a mask over spans of rows many times
//! a batch long). On lineitem at scale 1, reading all columns through a filter on the unsorted
//! `l_quantity` took 0.68 s against 0.33 s this way when it kept 2% of the rows, and 8–10%
//! longer when it kept 45% (the `etl` workload) or 98% (`q1`); a filter keeping the first 1%
//! of the sorted `l_orderkey` took 0.025 s through the runs against 0.27 s read whole.

use std::sync::Arc;

use arrow::array::{Array, ArrayRef, BooleanArray, RecordBatch, RecordBatchOptions};
use arrow::compute::{FilterBuilder, prep_null_mask_filter};
use parquet::arrow::ProjectionMask;
use parquet::arrow::arrow_reader::{
    ArrowReaderMetadata, ParquetRecordBatchReader, ParquetRecordBatchReaderBuilder, RowSelection,
    RowSelectionPolicy,
};

use crate::error::{Error, Result};
use crate::parquet_source::{Fragment, PushedPredicate};
use crate::source::ReadBatches;
use crate::storage::StorageFile;

/// The shortest average run of kept or dropped rows for which decoding only the kept runs
/// beats decoding every row and filtering.
pub const MIN_RUN_ROWS: usize = 64;

/// The batches of `fragment` whose rows `predicate` keeps, with only `output`'s columns, and
/// their schema (the file's types). With `pages` (a selection of the fragment's rows, from the
/// page index), only those rows are read at all.
pub fn read_filtered(
    file: &StorageFile,
    fragment: &Fragment,
    metadata: &ArrowReaderMetadata,
    batch_size: usize,
    predicate: PushedPredicate,
    output: Output<'_>,
    pages: Option<RowSelection>,
) -> Result<ReadBatches> {
    let Output {
        columns: output,
        narrow_decimals,
    } = output;
    let file_schema = metadata.schema();
    let schema = Arc::new(file_schema.project(output)?);
    let mut filter_columns = predicate
        .columns
        .iter()
        .map(|name| file_schema.index_of(name))
        .collect::<std::result::Result<Vec<_>, _>>()?;
    filter_columns.sort_unstable();
    filter_columns.dedup();

    let first = FirstPass::run(
        file,
        fragment,
        metadata,
        batch_size,
        predicate,
        &filter_columns,
        pages.clone(),
    )?;
    if first.kept_rows == 0 {
        return Ok(ReadBatches {
            schema,
            batches: Box::new(std::iter::empty()),
        });
    }
    let invalid = |source| Error::InvalidParquet {
        path: fragment.path.clone(),
        source,
    };
    if first.average_run() >= MIN_RUN_ROWS {
        // No predicate reads this second decoding: every decimal may come narrow.
        let metadata = match narrow_decimals {
            true => crate::narrow_decimals::narrow_metadata(metadata, output).map_err(invalid)?,
            false => metadata.clone(),
        };
        // The masks answer for the rows the first pass read: the pages' rows, if any.
        let kept = RowSelection::from_filters(&first.masks);
        let selection = match &pages {
            Some(pages) => pages.and_then(&kept),
            None => kept,
        };
        let batches = reader(
            file,
            fragment,
            &metadata,
            batch_size,
            output,
            Some(selection),
        )?;
        let path = fragment.path.clone();
        return Ok(ReadBatches {
            schema,
            batches: Box::new(batches.map(move |b| read_error(&path, b))),
        });
    }

    // Scattered: the rest decoded whole, beside the first pass's columns.
    let rest: Vec<usize> = output
        .iter()
        .copied()
        .filter(|i| filter_columns.binary_search(i).is_err())
        .collect();
    // Decimals stored as 32- or 64-bit integers are read at that width (`narrow_decimals`), and
    // either widened as they are filtered or, with `narrow_decimals`, kept narrow.
    let narrow = crate::narrow_decimals::narrow_metadata(metadata, &rest).map_err(invalid)?;
    let mut rest_batches: Option<ParquetRecordBatchReader> = match rest.is_empty() {
        true => None,
        false => Some(reader(file, fragment, &narrow, batch_size, &rest, pages)?),
    };
    let path = fragment.path.clone();
    // The batches' own types: the file's, or the narrow ones where they are kept.
    let out_schema = match narrow_decimals {
        true => Arc::new(narrow.schema().project(output)?),
        false => Arc::clone(&schema),
    };
    let output = output.to_vec();
    let assembled = first
        .batches
        .into_iter()
        .zip(first.masks)
        .map(move |(filtered, mask)| {
            let others = match rest_batches.as_mut() {
                None => None,
                Some(reader) => Some(read_error(
                    &path,
                    reader.next().ok_or_else(|| {
                        Error::InvalidArgument(format!(
                            "{} ended early on a second read",
                            path.display()
                        ))
                    })?,
                )?),
            };
            let kept = mask.true_count();
            let every_row = kept == mask.len();
            let keep = (!every_row).then(|| FilterBuilder::new(&mask).optimize().build());
            let columns = output
                .iter()
                .zip(out_schema.fields())
                .map(|(i, field)| {
                    let column = pick(*i, &filter_columns, &filtered, &rest, others.as_ref())?;
                    if crate::narrow_decimals::is_narrow(column.as_ref()) && !narrow_decimals {
                        let mask = (!every_row).then_some(&mask);
                        return Ok(crate::narrow_decimals::widen(
                            &column,
                            field.data_type(),
                            mask,
                        )?);
                    }
                    Ok(match &keep {
                        Some(keep) => keep.filter(column.as_ref())?,
                        None => column,
                    })
                })
                .collect::<Result<Vec<ArrayRef>>>()?;
            let options = RecordBatchOptions::new().with_row_count(Some(kept));
            Ok(RecordBatch::try_new_with_options(
                Arc::clone(&out_schema),
                columns,
                &options,
            )?)
        })
        .filter(|batch| !matches!(batch, Ok(b) if b.num_rows() == 0));
    Ok(ReadBatches {
        schema,
        batches: Box::new(assembled),
    })
}

/// The columns a filtered read gives.
pub struct Output<'a> {
    /// Indices into the file's schema, ascending.
    pub columns: &'a [usize],
    /// Whether decimals Parquet stores as integers that the filter does not read may come at
    /// that width (`Decimal32`, `Decimal64`; see [`crate::narrow_decimals`]), rather than
    /// widened to the file's `Decimal128`.
    pub narrow_decimals: bool,
}

/// A reader of `columns` of the fragment's row groups (only the `selection`'s runs, if
/// given), from metadata already read.
fn reader(
    file: &StorageFile,
    fragment: &Fragment,
    metadata: &ArrowReaderMetadata,
    batch_size: usize,
    columns: &[usize],
    selection: Option<RowSelection>,
) -> Result<ParquetRecordBatchReader> {
    let file = file.try_clone(&fragment.path)?;
    let mask = ProjectionMask::roots(metadata.parquet_schema(), columns.iter().copied());
    let mut builder = ParquetRecordBatchReaderBuilder::new_with_metadata(file, metadata.clone())
        .with_row_groups(fragment.row_groups.clone())
        .with_batch_size(batch_size)
        .with_projection(mask);
    if let Some(selection) = selection {
        builder = builder
            .with_row_selection(selection)
            .with_row_selection_policy(RowSelectionPolicy::Selectors);
    }
    builder.build().map_err(|source| Error::InvalidParquet {
        path: fragment.path.clone(),
        source,
    })
}

/// A batch from a reader, its error naming the file.
pub fn read_error(
    path: &std::path::Path,
    batch: std::result::Result<RecordBatch, arrow::error::ArrowError>,
) -> Result<RecordBatch> {
    batch.map_err(|e| Error::InvalidParquet {
        path: path.to_path_buf(),
        source: parquet::errors::ParquetError::ArrowError(e.to_string()),
    })
}

/// File column `index`, from the first pass's batch if the filter read it, else from the
/// second pass's.
fn pick(
    index: usize,
    filter_columns: &[usize],
    filtered: &RecordBatch,
    rest: &[usize],
    others: Option<&RecordBatch>,
) -> Result<ArrayRef> {
    let column = match filter_columns.binary_search(&index) {
        Ok(at) => Arc::clone(filtered.column(at)),
        Err(_) => {
            let at = rest
                .binary_search(&index)
                .expect("every output column is read");
            let others = others.expect("a second pass when columns are left");
            if others.num_rows() != filtered.num_rows() {
                return Err(Error::InvalidArgument(format!(
                    "a second read gave a batch of {} rows where the first gave {}",
                    others.num_rows(),
                    filtered.num_rows()
                )));
            }
            Arc::clone(others.column(at))
        }
    };
    Ok(column)
}

/// The filter's columns, decoded, and which of their rows it keeps.
struct FirstPass {
    /// The filter's columns, batch by batch.
    batches: Vec<RecordBatch>,
    /// Which rows of each batch it keeps (no nulls).
    masks: Vec<BooleanArray>,
    /// Rows read.
    rows: usize,
    /// Rows kept.
    kept_rows: usize,
    /// Runs of kept rows.
    kept_runs: usize,
}

impl FirstPass {
    fn run(
        file: &StorageFile,
        fragment: &Fragment,
        metadata: &ArrowReaderMetadata,
        batch_size: usize,
        mut predicate: PushedPredicate,
        filter_columns: &[usize],
        pages: Option<RowSelection>,
    ) -> Result<Self> {
        let reader = reader(file, fragment, metadata, batch_size, filter_columns, pages)?;
        let mut pass = FirstPass {
            batches: Vec::new(),
            masks: Vec::new(),
            rows: 0,
            kept_rows: 0,
            kept_runs: 0,
        };
        let mut previous_kept = false;
        for batch in reader {
            let batch = read_error(&fragment.path, batch)?;
            let mut mask = (predicate.keep)(batch.clone())?;
            if mask.len() != batch.num_rows() {
                return Err(Error::InvalidArgument(format!(
                    "a filter gave {} answers for {} rows",
                    mask.len(),
                    batch.num_rows()
                )));
            }
            if mask.null_count() > 0 {
                mask = prep_null_mask_filter(&mask);
            }
            pass.rows += batch.num_rows();
            pass.kept_rows += mask.true_count();
            // A run that carries on from the last batch is not a new one.
            let mut runs = mask.values().set_slices().peekable();
            if previous_kept && runs.peek().is_some_and(|(start, _)| *start == 0) {
                runs.next();
            }
            pass.kept_runs += runs.count();
            previous_kept = !mask.is_empty() && mask.value(mask.len() - 1);
            pass.batches.push(batch);
            pass.masks.push(mask);
        }
        Ok(pass)
    }

    /// Rows per run of kept or dropped rows, on average.
    fn average_run(&self) -> usize {
        self.rows / (2 * self.kept_runs + 1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::parquet_source::read_fragment;
    use arrow::array::{AsArray, Decimal128Array, Int32Array, Int64Array, StringArray};
    use arrow::compute::filter_record_batch;
    use arrow::datatypes::{DataType, Field, Int32Type, Int64Type, Schema};
    use parquet::arrow::ArrowWriter;
    use parquet::file::properties::WriterProperties;
    use proptest::prelude::*;

    /// A file of `k` (ascending), `v` (nullable), `s` (nullable, some of it not ASCII), and
    /// two decimals Parquet stores as integers: `d` (nullable, `INT64`) and `e` (`INT32`), in
    /// row groups of `group_rows`.
    fn write_file(dir: &std::path::Path, values: &[Option<i32>], group_rows: usize) -> Fragment {
        let schema = Arc::new(Schema::new(vec![
            Field::new("k", DataType::Int64, false),
            Field::new("v", DataType::Int32, true),
            Field::new("s", DataType::Utf8, true),
            Field::new("d", DataType::Decimal128(15, 2), true),
            Field::new("e", DataType::Decimal128(9, 3), false),
        ]));
        let k = Int64Array::from_iter_values(0..values.len() as i64);
        let v = Int32Array::from(values.to_vec());
        let s: StringArray = values.iter().map(|v| v.map(|v| format!("é{v}ß"))).collect();
        let d = values
            .iter()
            .map(|v| v.map(|v| i128::from(v) * 12_345_678_901))
            .collect::<Decimal128Array>()
            .with_precision_and_scale(15, 2)
            .unwrap();
        let e = Decimal128Array::from_iter_values((0..values.len() as i128).map(|k| 7 * k - 2_000))
            .with_precision_and_scale(9, 3)
            .unwrap();
        let batch = RecordBatch::try_new(
            Arc::clone(&schema),
            vec![
                Arc::new(k),
                Arc::new(v),
                Arc::new(s),
                Arc::new(d),
                Arc::new(e),
            ],
        )
        .unwrap();
        let path = dir.join("data.parquet");
        let properties = WriterProperties::builder()
            .set_max_row_group_row_count(Some(group_rows))
            .build();
        let file = std::fs::File::create(&path).unwrap();
        let mut writer = ArrowWriter::try_new(file, schema, Some(properties)).unwrap();
        writer.write(&batch).unwrap();
        writer.close().unwrap();
        let groups = values.len().div_ceil(group_rows);
        Fragment {
            path,
            // Every row group but the first, when there are several.
            row_groups: (usize::from(groups > 1)..groups).collect(),
            rows: 0,
            conform_to: None,
        }
    }

    /// Keeps rows whose `v` is `v % modulus == 0` (scattered), or whose `k` is under `below`
    /// (one run); null is not kept.
    fn predicate(scattered: bool, modulus: i32, below: i64) -> PushedPredicate {
        let keep = move |batch: RecordBatch| {
            Ok(match scattered {
                true => batch
                    .column(0)
                    .as_primitive::<Int32Type>()
                    .iter()
                    .map(|v| v.map(|v| v % modulus == 0))
                    .collect::<BooleanArray>(),
                false => batch
                    .column(0)
                    .as_primitive::<Int64Type>()
                    .iter()
                    .map(|k| k.map(|k| k < below))
                    .collect::<BooleanArray>(),
            })
        };
        PushedPredicate {
            columns: vec![if scattered { "v" } else { "k" }.to_string()],
            keep: Box::new(keep),
            filter: None,
        }
    }

    /// All of a read's rows as one batch, with the schema's types (a column read as a
    /// dictionary decoded).
    fn rows(read: crate::source::ReadBatches) -> RecordBatch {
        let batches = read.batches.collect::<Result<Vec<_>>>().unwrap();
        assert!(batches.iter().all(|b| b.num_rows() > 0));
        let batches = batches
            .iter()
            .map(|b| crate::columns::conform(b, &read.schema))
            .collect::<std::result::Result<Vec<_>, _>>()
            .unwrap();
        arrow::compute::concat_batches(&read.schema, &batches).unwrap()
    }

    /// The types of the batches of a read, and the read.
    fn types(read: crate::source::ReadBatches) -> (Vec<Vec<DataType>>, crate::source::ReadBatches) {
        let batches = read.batches.collect::<Result<Vec<_>>>().unwrap();
        let types = batches
            .iter()
            .map(|b| {
                b.schema()
                    .fields()
                    .iter()
                    .map(|f| f.data_type().clone())
                    .collect()
            })
            .collect();
        let read = crate::source::ReadBatches {
            schema: read.schema,
            batches: Box::new(batches.into_iter().map(Ok)),
        };
        (types, read)
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]

        /// Through a filter, a fragment reads as it does whole and then filtered, whichever
        /// way the filter's rows fall, for any projection and batch size.
        #[test]
        fn filtered_reads_match_read_then_filter(
            values in proptest::collection::vec(proptest::option::weighted(0.9, -50i32..50), 1..600),
            group_rows in 1usize..200,
            batch_size in 1usize..300,
            scattered: bool,
            modulus in 1i32..7,
            below in 0i64..700,
            projection in 0usize..5,
            dictionaries: bool,
            narrow: bool,
        ) {
            let tmp = tempfile::tempdir().unwrap();
            let fragment = write_file(tmp.path(), &values, group_rows);
            let columns: Option<Vec<String>> = match projection {
                0 => None,
                1 => Some(vec!["s".into()]),
                2 => Some(vec![if scattered { "v" } else { "k" }.into()]),
                3 => Some(vec!["e".into(), "d".into()]),
                _ => Some(vec!["s".into(), "k".into(), "v".into(), "d".into()]),
            };
            // `s` (and `v`, which is no string and stays as it is) asked for as dictionaries.
            let as_dictionaries: Vec<String> = match dictionaries {
                true => vec!["s".into(), "v".into()],
                false => Vec::new(),
            };
            let (types, read) = types(read_fragment(
                &fragment,
                batch_size,
                Some(predicate(scattered, modulus, below)),
                columns.as_deref(),
                &as_dictionaries,
                narrow,
            ).unwrap());
            let schema = Arc::clone(&read.schema);
            let filtered = rows(read);
            // The schema keeps the file's types; the batches have `s` as codes when asked.
            for batch_types in &types {
                for (field, data_type) in schema.fields().iter().zip(batch_types) {
                    let encoded = dictionaries && field.name() == "s";
                    prop_assert_eq!(
                        matches!(data_type, DataType::Dictionary(..)),
                        encoded,
                        "{} read as {}", field.name(), data_type
                    );
                    // Decimals come out at the file's width, or at the stored one when
                    // asked (`d` and `e` only: `v`, when the filter reads it, comes wide).
                    if !encoded {
                        let narrowed = crate::narrow_decimals::wide_type(data_type);
                        match narrowed {
                            Some(wide) => {
                                prop_assert!(narrow && ["d", "e"].contains(&field.name().as_str()));
                                prop_assert_eq!(&wide, field.data_type());
                            }
                            None => prop_assert_eq!(data_type, field.data_type()),
                        }
                    }
                }
            }

            let whole = rows(read_fragment(&fragment, batch_size, None, None, &[], false).unwrap());
            let whole_encoded = rows(
                read_fragment(&fragment, batch_size, None, None, &as_dictionaries, narrow).unwrap(),
            );
            prop_assert_eq!(&whole_encoded, &whole);
            let needed = predicate(scattered, modulus, below).columns;
            let index = whole.schema().index_of(&needed[0]).unwrap();
            let mask = (predicate(scattered, modulus, below).keep)(whole.project(&[index]).unwrap()).unwrap();
            let mask = match mask.null_count() {
                0 => mask,
                _ => prep_null_mask_filter(&mask),
            };
            let expected = filter_record_batch(&whole, &mask).unwrap();
            let expected = match &columns {
                None => expected,
                Some(columns) => {
                    let mut indices: Vec<usize> = columns.iter().map(|c| whole.schema().index_of(c).unwrap()).collect();
                    indices.sort_unstable();
                    expected.project(&indices).unwrap()
                }
            };
            prop_assert_eq!(filtered.schema(), expected.schema());
            prop_assert_eq!(filtered, expected);
        }
    }

    #[test]
    fn a_range_of_a_sorted_column_reads_as_runs_and_scattered_rows_whole() {
        let tmp = tempfile::tempdir().unwrap();
        let values: Vec<Option<i32>> = (0..1000).map(|i| Some(i % 10)).collect();
        let fragment = write_file(tmp.path(), &values, 1000);
        let file = StorageFile::open(&fragment.path).unwrap();
        let metadata = ArrowReaderMetadata::load(&file, Default::default()).unwrap();
        let first = |scattered, columns: &[usize]| {
            FirstPass::run(
                &file,
                &fragment,
                &metadata,
                100,
                predicate(scattered, 10, 300),
                columns,
                None,
            )
            .unwrap()
        };
        let range = first(false, &[0]);
        assert_eq!((range.kept_rows, range.kept_runs), (300, 1));
        assert!(range.average_run() >= MIN_RUN_ROWS);
        let scattered = first(true, &[1]);
        assert_eq!((scattered.kept_rows, scattered.kept_runs), (100, 100));
        assert!(scattered.average_run() < MIN_RUN_ROWS);
    }

    #[test]
    fn a_filter_that_answers_for_the_wrong_rows_is_an_error() {
        let tmp = tempfile::tempdir().unwrap();
        let fragment = write_file(tmp.path(), &[Some(1), Some(2), None], 10);
        let wrong = PushedPredicate {
            columns: vec!["v".into()],
            keep: Box::new(|_| Ok(BooleanArray::from(vec![true]))),
            filter: None,
        };
        let error = read_fragment(&fragment, 10, Some(wrong), None, &[], false)
            .err()
            .expect("an error");
        assert!(
            error.to_string().contains("1 answers for 3 rows"),
            "{error}"
        );
    }
}
