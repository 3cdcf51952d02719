//! Reading Parquet: finding the files, checking their schemas, splitting them into fragments.
//!
//! `read_parquet(path)` takes a file, a directory (read recursively, skipping names that start
//! with `.` or `_`, as Spark and Ray do) or a glob. Planning reads each file's footer once, in
//! the driver: a file that is not Parquet, or whose schema differs from the first file's, is an
//! error before any task runs. Each row group becomes a *fragment*, one read task; consecutive
//! small row groups of a file are merged until a fragment holds `target_rows`, so tiny row groups
//! do not make tiny tasks.

use std::path::{Path, PathBuf};

use arrow::array::{BooleanArray, RecordBatch};
use arrow::datatypes::SchemaRef;
use arrow::error::ArrowError;
use parquet::arrow::ProjectionMask;
use parquet::arrow::arrow_reader::{
    ArrowReaderMetadata, ArrowReaderOptions, ParquetRecordBatchReaderBuilder,
};
use parquet::file::metadata::PageIndexPolicy;
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::files::list_files;
use crate::source::ReadBatches;
use crate::storage::StorageFile;

/// The files of one Parquet dataset and their common schema.
#[derive(Clone, Debug)]
pub struct ParquetSource {
    /// The path as given, for messages.
    pub path: String,
    /// The files, sorted by path.
    pub files: Vec<ParquetFile>,
    /// The schema every file has.
    pub schema: SchemaRef,
}

/// One file and the rows in each of its row groups.
#[derive(Clone, Debug)]
pub struct ParquetFile {
    /// The file.
    pub path: PathBuf,
    /// Rows per row group.
    pub row_group_rows: Vec<u64>,
    /// The file's own schema (it may differ from the dataset's in nullability).
    pub schema: SchemaRef,
}

/// What one read task reads: some row groups of one file.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Fragment {
    /// The file.
    pub path: PathBuf,
    /// Its row groups to read, in order.
    pub row_groups: Vec<usize>,
    /// Rows in those row groups.
    pub rows: u64,
    /// The dataset's schema (an IPC schema message), when it differs from the file's in
    /// nullability: the batches read are given it.
    pub conform_to: Option<Vec<u8>>,
}

impl ParquetSource {
    /// Finds the files at `path` and checks that they are Parquet with one schema.
    pub fn open(path: &str) -> Result<Self> {
        let files = list_files(path)?;
        let mut parquet_files = Vec::with_capacity(files.len());
        let mut schema: Option<(SchemaRef, PathBuf)> = None;
        for file in files {
            let metadata = read_metadata(&file)?;
            let file_schema = metadata.schema();
            schema = Some(match schema {
                None => (std::sync::Arc::clone(file_schema), file.clone()),
                // Files written by different tools may differ in nullability: nullable wins.
                Some((so_far, first)) if so_far.fields() != file_schema.fields() => {
                    let unified = crate::columns::unify(&[
                        std::sync::Arc::clone(&so_far),
                        std::sync::Arc::clone(file_schema),
                    ])
                    .map_err(|_| Error::SchemaMismatch {
                        first: first.clone(),
                        path: file.clone(),
                        difference: describe_difference(&so_far, file_schema),
                    })?;
                    (unified, first)
                }
                Some(same) => same,
            });
            let row_group_rows = metadata
                .metadata()
                .row_groups()
                .iter()
                .map(|rg| rg.num_rows() as u64)
                .collect();
            parquet_files.push(ParquetFile {
                path: file,
                row_group_rows,
                schema: std::sync::Arc::clone(file_schema),
            });
        }
        let (schema, _) = schema.expect("list_files returns at least one file");
        Ok(Self {
            path: path.to_string(),
            files: parquet_files,
            schema,
        })
    }

    /// Total rows.
    pub fn num_rows(&self) -> u64 {
        self.files.iter().flat_map(|f| &f.row_group_rows).sum()
    }

    /// The read tasks: row groups, merged within a file up to `target_rows`.
    pub fn fragments(&self, target_rows: u64) -> Vec<Fragment> {
        let mut fragments = Vec::new();
        let encoded = crate::source::encode_schema(&self.schema);
        for file in &self.files {
            let conform_to =
                (file.schema.fields() != self.schema.fields()).then(|| encoded.clone());
            let mut current = Fragment {
                path: file.path.clone(),
                row_groups: Vec::new(),
                rows: 0,
                conform_to: conform_to.clone(),
            };
            for (index, rows) in file.row_group_rows.iter().enumerate() {
                if !current.row_groups.is_empty() && current.rows + rows > target_rows {
                    fragments.push(std::mem::replace(
                        &mut current,
                        Fragment {
                            path: file.path.clone(),
                            row_groups: Vec::new(),
                            rows: 0,
                            conform_to: conform_to.clone(),
                        },
                    ));
                }
                current.row_groups.push(index);
                current.rows += rows;
            }
            if !current.row_groups.is_empty() {
                fragments.push(current);
            }
        }
        fragments
    }
}

/// A predicate evaluated inside the Parquet reader: the columns it reads and the function that
/// says which rows of a batch of those columns to keep.
pub struct PushedPredicate {
    /// Names of the columns the predicate reads.
    pub columns: Vec<String>,
    /// Which rows to keep.
    pub keep: Box<dyn FnMut(RecordBatch) -> std::result::Result<BooleanArray, ArrowError> + Send>,
    /// What `keep` computes, as an expression, for skipping row groups by their statistics
    /// ([`crate::row_group_pruning`]); none skips none.
    pub filter: Option<datafusion::logical_expr::Expr>,
}

/// Reads one fragment as batches of `batch_size` rows, only the `columns` named (all if
/// `None`). With `predicate`, the predicate's columns are decoded first and the others then
/// read the cheaper way for the rows it keeps ([`crate::filtered_read`]). The schema comes
/// back with the batches: a fragment whose every row the predicate drops yields no batch, but
/// its rows still have a schema.
///
/// The string columns named in `as_dictionaries` come as `Dictionary(Int32, Utf8)` where the
/// fragment's every chunk of them is dictionary-encoded (see [`dictionary_reads`]): the codes
/// and the chunk's dictionary as Parquet stores them, not a string per row. The schema still
/// gives them the file's own type, which their values stand for; only the batches differ.
/// With `narrow_decimals`, so do the decimals Parquet stores as `INT32` or `INT64` that the
/// predicate does not read: they come as `Decimal32` or `Decimal64`, the width they are stored
/// at ([`crate::narrow_decimals`]).
pub fn read_fragment(
    fragment: &Fragment,
    batch_size: usize,
    predicate: Option<PushedPredicate>,
    columns: Option<&[String]>,
    as_dictionaries: &[String],
    narrow_decimals: bool,
) -> Result<ReadBatches> {
    let invalid = |source| Error::InvalidParquet {
        path: fragment.path.clone(),
        source,
    };
    let file = StorageFile::open(&fragment.path)?;
    let filter = predicate.as_ref().and_then(|p| p.filter.clone());
    // A filter reads the page index too (when the file has one): to skip pages by their
    // statistics, and whole pages between the runs of rows it keeps.
    let options = ArrowReaderOptions::new().with_page_index_policy(match filter {
        Some(_) => PageIndexPolicy::Optional,
        None => PageIndexPolicy::Skip,
    });
    let metadata = ArrowReaderMetadata::load(&file, options.clone()).map_err(invalid)?;
    // The file's own schema, which the batches stand for.
    let plain = std::sync::Arc::clone(metadata.schema());
    let metadata = match dictionary_reads(&metadata, &fragment.row_groups, as_dictionaries) {
        Some(schema) => ArrowReaderMetadata::try_new(
            std::sync::Arc::clone(metadata.metadata()),
            options.with_schema(schema),
        )
        .map_err(invalid)?,
        None => metadata,
    };
    let mut predicate = predicate;
    let mut pages = None;
    let pruned;
    let fragment = match &filter {
        Some(filter) => {
            let kept =
                crate::row_group_pruning::prune_row_groups(&metadata, &fragment.row_groups, filter);
            if kept.every_row_kept {
                predicate = None;
            }
            pages = kept.pages;
            pruned = Fragment {
                rows: kept
                    .row_groups
                    .iter()
                    .map(|&i| metadata.metadata().row_group(i).num_rows() as u64)
                    .sum(),
                row_groups: kept.row_groups,
                ..fragment.clone()
            };
            &pruned
        }
        None => fragment,
    };
    let output: Vec<usize> = match columns {
        Some(columns) => {
            let mut indices = columns
                .iter()
                .map(|name| metadata.schema().index_of(name))
                .collect::<std::result::Result<Vec<_>, _>>()?;
            indices.sort_unstable();
            indices.dedup();
            indices
        }
        None => (0..metadata.schema().fields().len()).collect(),
    };
    let ReadBatches {
        mut schema,
        batches,
    } = match predicate {
        Some(predicate) => crate::filtered_read::read_filtered(
            &file,
            fragment,
            &metadata,
            batch_size,
            predicate,
            crate::filtered_read::Output {
                columns: &output,
                narrow_decimals,
            },
            pages,
        )?,
        None => {
            let metadata = match narrow_decimals {
                true => {
                    crate::narrow_decimals::narrow_metadata(&metadata, &output).map_err(invalid)?
                }
                false => metadata,
            };
            let builder = ParquetRecordBatchReaderBuilder::new_with_metadata(file, metadata)
                .with_row_groups(fragment.row_groups.clone())
                .with_batch_size(batch_size);
            let mask = ProjectionMask::roots(builder.parquet_schema(), output);
            let reader = builder.with_projection(mask).build().map_err(invalid)?;
            let schema = arrow::record_batch::RecordBatchReader::schema(&reader);
            let path = fragment.path.clone();
            let batches = reader.map(move |batch| crate::filtered_read::read_error(&path, batch));
            ReadBatches {
                schema,
                batches: Box::new(batches),
            }
        }
    };
    if let Some(bytes) = &fragment.conform_to {
        // The dataset's fields (nullable where any file's is) for the columns read.
        let dataset = crate::source::decode_schema(bytes)?;
        let fields: Vec<_> = schema
            .fields()
            .iter()
            .map(|f| {
                dataset
                    .field_with_name(f.name())
                    .map(|d| f.as_ref().clone().with_nullable(d.is_nullable()))
            })
            .collect::<std::result::Result<_, _>>()?;
        schema = std::sync::Arc::new(arrow::datatypes::Schema::new_with_metadata(
            fields,
            schema.metadata().clone(),
        ));
    }
    let target = fragment
        .conform_to
        .is_some()
        .then(|| std::sync::Arc::clone(&schema));
    let batches = batches.map(move |batch| {
        let batch = batch?;
        match &target {
            Some(target) => Ok(crate::columns::conform(&batch, target)?),
            None => Ok(batch),
        }
    });
    // Columns read as dictionaries keep the file's type in the schema.
    let fields: Vec<_> = schema
        .fields()
        .iter()
        .map(|f| match plain.field_with_name(f.name()) {
            Ok(own) if own.data_type() != f.data_type() => {
                f.as_ref().clone().with_data_type(own.data_type().clone())
            }
            _ => f.as_ref().clone(),
        })
        .collect();
    let schema = std::sync::Arc::new(arrow::datatypes::Schema::new_with_metadata(
        fields,
        schema.metadata().clone(),
    ));
    Ok(ReadBatches {
        schema,
        batches: Box::new(batches),
    })
}

/// The file's schema with the columns of `names` that are strings as `Dictionary(Int32,
/// Utf8)`, for those whose every chunk in `row_groups` Parquet stored dictionary-encoded, by
/// the chunks' page encoding statistics (a chunk that fell back to plain pages would have its
/// values hashed into a dictionary while reading, which costs more than reading them plain);
/// `None` if no column qualifies.
pub fn dictionary_reads(
    metadata: &ArrowReaderMetadata,
    row_groups: &[usize],
    names: &[String],
) -> Option<SchemaRef> {
    use arrow::datatypes::DataType;
    use parquet::basic::Encoding;
    let schema = metadata.schema();
    let parquet = metadata.metadata();
    let mut changed = false;
    let fields: Vec<_> = schema
        .fields()
        .iter()
        .map(|field| {
            let string = matches!(
                field.data_type(),
                DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View
            );
            let leaf = parquet
                .file_metadata()
                .schema_descr()
                .columns()
                .iter()
                .position(|c| c.path().parts() == [field.name().as_str()]);
            let encoded = |leaf: usize| {
                row_groups.iter().all(|&group| {
                    let Some(chunk) = parquet.row_groups().get(group).map(|g| g.column(leaf))
                    else {
                        return false;
                    };
                    chunk.dictionary_page_offset().is_some()
                        && chunk.page_encoding_stats_mask().is_some_and(|mask| {
                            mask.is_only(Encoding::RLE_DICTIONARY)
                                || mask.is_only(Encoding::PLAIN_DICTIONARY)
                        })
                })
            };
            match string && names.contains(field.name()) && leaf.is_some_and(encoded) {
                true => {
                    changed = true;
                    let dictionary =
                        DataType::Dictionary(Box::new(DataType::Int32), Box::new(DataType::Utf8));
                    field.as_ref().clone().with_data_type(dictionary)
                }
                false => field.as_ref().clone(),
            }
        })
        .collect();
    changed.then(|| {
        std::sync::Arc::new(arrow::datatypes::Schema::new_with_metadata(
            fields,
            schema.metadata().clone(),
        ))
    })
}

fn read_metadata(path: &Path) -> Result<ArrowReaderMetadata> {
    let file = StorageFile::open(path)?;
    ArrowReaderMetadata::load(&file, ArrowReaderOptions::new()).map_err(|source| {
        Error::InvalidParquet {
            path: path.to_path_buf(),
            source,
        }
    })
}

pub(crate) fn describe_difference(first: &SchemaRef, other: &SchemaRef) -> String {
    let names = |s: &SchemaRef| {
        s.fields()
            .iter()
            .map(|f| format!("{}: {}", f.name(), f.data_type()))
            .collect::<Vec<_>>()
    };
    let (a, b) = (names(first), names(other));
    let missing: Vec<_> = a.iter().filter(|f| !b.contains(f)).cloned().collect();
    let extra: Vec<_> = b.iter().filter(|f| !a.contains(f)).cloned().collect();
    format!(
        "missing [{}], unexpected [{}]",
        missing.join(", "),
        extra.join(", ")
    )
}
