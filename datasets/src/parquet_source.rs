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
    ArrowPredicateFn, ArrowReaderMetadata, ArrowReaderOptions, ParquetRecordBatchReaderBuilder,
    RowFilter,
};
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
            match &schema {
                None => schema = Some((std::sync::Arc::clone(file_schema), file.clone())),
                Some((first_schema, first)) => {
                    if first_schema.fields() != file_schema.fields() {
                        return Err(Error::SchemaMismatch {
                            first: first.clone(),
                            path: file.clone(),
                            difference: describe_difference(first_schema, file_schema),
                        });
                    }
                }
            }
            let row_group_rows = metadata
                .metadata()
                .row_groups()
                .iter()
                .map(|rg| rg.num_rows() as u64)
                .collect();
            parquet_files.push(ParquetFile {
                path: file,
                row_group_rows,
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
        for file in &self.files {
            let mut current = Fragment {
                path: file.path.clone(),
                row_groups: Vec::new(),
                rows: 0,
            };
            for (index, rows) in file.row_group_rows.iter().enumerate() {
                if !current.row_groups.is_empty() && current.rows + rows > target_rows {
                    fragments.push(std::mem::replace(
                        &mut current,
                        Fragment {
                            path: file.path.clone(),
                            row_groups: Vec::new(),
                            rows: 0,
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
}

/// Reads one fragment as batches of `batch_size` rows, only the `columns` named (all if
/// `None`). With `predicate`, the reader decodes the predicate's columns first and the other
/// columns only for the rows it keeps. The schema comes back with the batches: a fragment whose
/// every row the predicate drops yields no batch, but its rows still have a schema.
pub fn read_fragment(
    fragment: &Fragment,
    batch_size: usize,
    predicate: Option<PushedPredicate>,
    columns: Option<&[String]>,
) -> Result<ReadBatches> {
    let invalid = |source| Error::InvalidParquet {
        path: fragment.path.clone(),
        source,
    };
    let file = StorageFile::open(&fragment.path)?;
    let mut builder = ParquetRecordBatchReaderBuilder::try_new(file)
        .map_err(invalid)?
        .with_row_groups(fragment.row_groups.clone())
        .with_batch_size(batch_size);
    if let Some(columns) = columns {
        let schema = builder.schema();
        let mut indices = columns
            .iter()
            .map(|name| schema.index_of(name))
            .collect::<std::result::Result<Vec<_>, _>>()?;
        indices.sort_unstable();
        let mask = ProjectionMask::roots(builder.parquet_schema(), indices);
        builder = builder.with_projection(mask);
    }
    if let Some(predicate) = predicate {
        let schema = builder.schema();
        let indices = predicate
            .columns
            .iter()
            .map(|name| schema.index_of(name))
            .collect::<std::result::Result<Vec<_>, _>>()?;
        let mask = ProjectionMask::roots(builder.parquet_schema(), indices);
        builder = builder.with_row_filter(RowFilter::new(vec![Box::new(ArrowPredicateFn::new(
            mask,
            predicate.keep,
        ))]));
    }
    let reader = builder.build().map_err(invalid)?;
    let schema = arrow::record_batch::RecordBatchReader::schema(&reader);
    let path = fragment.path.clone();
    let batches = reader.map(move |batch| {
        batch.map_err(|e| Error::InvalidParquet {
            path: path.clone(),
            source: parquet::errors::ParquetError::ArrowError(e.to_string()),
        })
    });
    Ok(ReadBatches {
        schema,
        batches: Box::new(batches),
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
