//! Sources: what a dataset reads, and the read tasks it is split into.
//!
//! A [`Source`] is planned in the driver: its files are listed and their schemas read (Parquet
//! footers, IPC headers) or inferred (CSV and JSON, from the first rows of every file, merged
//! into one schema as Ray Data does; files whose types conflict are an error naming both).
//! [`Source::tasks`] splits it into [`ReadTask`]s, plain data that any worker can run: Parquet
//! row groups (see [`crate::parquet_source`]), whole files of the other formats, or a range of
//! integers. [`ReadTask::read`] runs one, yielding batches of at most `batch_size` rows.

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::sync::Arc;

use arrow::array::{BinaryArray, Int64Array, RecordBatch, StringArray, StringBuilder};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::file_options::{CsvOptions, JsonOptions, ParseOptions};
use crate::files::list_files;
pub use crate::ipc::{decode_schema, encode_schema};
use crate::parquet_source::{Fragment, ParquetSource, PushedPredicate, read_fragment};
use crate::storage::ReadSeek;

/// Files per task for `read_binary_files` (each file is one row).
const BINARY_FILES_PER_TASK: usize = 16;
/// The most data one inline read task carries: tasks travel in gRPC messages, whose limit is
/// 4 MiB.
const INLINE_TASK_BYTES: usize = 2 << 20;

/// A file format read whole, file by file.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum FileFormat {
    /// Comma-separated values with a header row.
    Csv,
    /// Newline-delimited JSON objects.
    Json,
    /// Arrow IPC (file or stream format).
    Ipc,
    /// Text: one row per line, in a column `text`.
    Text,
    /// Whole files: columns `path` and `bytes`.
    Binary,
}

impl FileFormat {
    fn name(self) -> &'static str {
        match self {
            FileFormat::Csv => "Csv",
            FileFormat::Json => "Json",
            FileFormat::Ipc => "Ipc",
            FileFormat::Text => "Text",
            FileFormat::Binary => "BinaryFiles",
        }
    }
}

/// What a dataset reads.
#[derive(Clone, Debug)]
pub enum Source {
    /// Parquet files.
    Parquet(ParquetSource),
    /// Files of another format.
    Files {
        /// Their format.
        format: FileFormat,
        /// The path as given.
        path: String,
        /// The files, sorted.
        files: Vec<PathBuf>,
        /// The schema all of them are read with.
        schema: SchemaRef,
        /// How CSV and JSON files are parsed.
        parse: ParseOptions,
    },
    /// The integers `0..n` in a column `id`.
    Range {
        /// How many.
        n: u64,
    },
    /// Batches from the driver, shipped inside the read tasks (`from_arrow` on a cluster).
    Inline {
        /// Their schema.
        schema: SchemaRef,
        /// The batches.
        batches: Arc<Vec<RecordBatch>>,
    },
}

/// One read task: plain data, run by any worker.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum ReadTask {
    /// Some row groups of a Parquet file.
    Parquet(Fragment),
    /// Whole files.
    Files {
        /// Their format.
        format: FileFormat,
        /// The files.
        paths: Vec<PathBuf>,
        /// The schema to read them with, as an Arrow IPC schema message.
        schema: Vec<u8>,
        /// How CSV and JSON files are parsed.
        options: ParseOptions,
    },
    /// The integers `start..end`.
    Range {
        /// First.
        start: u64,
        /// One past the last.
        end: u64,
    },
    /// A batch carried in the task, as an Arrow IPC stream.
    Inline {
        /// The stream.
        ipc: Vec<u8>,
        /// Its rows.
        rows: u64,
    },
}

impl Source {
    /// Parquet files at `path`.
    pub fn parquet(path: &str) -> Result<Self> {
        Ok(Source::Parquet(ParquetSource::open(path)?))
    }

    /// Files of `format` at `path` (IPC, text or binary files), their schema read now.
    pub fn files(format: FileFormat, path: &str) -> Result<Self> {
        Self::files_with(format, path, ParseOptions::default(), None, None)
    }

    /// CSV files at `path`, their schema given or inferred now.
    pub fn csv(path: &str, options: &CsvOptions) -> Result<Self> {
        let schema = options.schema.clone();
        Self::files_with(
            FileFormat::Csv,
            path,
            options.parse(),
            schema,
            options.infer_rows,
        )
    }

    /// Newline-delimited JSON files at `path`, their schema given or inferred now.
    pub fn json(path: &str, options: &JsonOptions) -> Result<Self> {
        let schema = options.schema.clone();
        Self::files_with(
            FileFormat::Json,
            path,
            options.parse(),
            schema,
            options.infer_rows,
        )
    }

    fn files_with(
        format: FileFormat,
        path: &str,
        parse: ParseOptions,
        given: Option<SchemaRef>,
        infer_rows: Option<usize>,
    ) -> Result<Self> {
        let files = list_files(path)?;
        let schema = match (format, given) {
            (_, Some(schema)) => schema,
            (FileFormat::Text, None) => {
                Arc::new(Schema::new(vec![Field::new("text", DataType::Utf8, false)]))
            }
            (FileFormat::Binary, None) => Arc::new(Schema::new(vec![
                Field::new("path", DataType::Utf8, false),
                Field::new("bytes", DataType::Binary, false),
            ])),
            (FileFormat::Csv | FileFormat::Json | FileFormat::Ipc, None) => {
                let mut merged: Option<(Schema, PathBuf)> = None;
                for file in &files {
                    let schema = file_schema(format, &parse, infer_rows, file)?;
                    merged = Some(match merged {
                        None => (schema, file.clone()),
                        Some((so_far, first)) => {
                            let unified = Schema::try_merge([so_far.clone(), schema.clone()])
                                .map_err(|_| Error::SchemaMismatch {
                                    first: first.clone(),
                                    path: file.clone(),
                                    difference: crate::parquet_source::describe_difference(
                                        &Arc::new(so_far),
                                        &Arc::new(schema),
                                    ),
                                })?;
                            (unified, first)
                        }
                    });
                }
                Arc::new(merged.expect("list_files returns at least one file").0)
            }
        };
        Ok(Source::Files {
            format,
            path: path.to_string(),
            files,
            schema,
            parse,
        })
    }

    /// Batches from the driver, cut into read tasks of at most [`INLINE_TASK_BYTES`] each.
    ///
    /// String and binary *view* columns are compacted first: a view array keeps every buffer
    /// its values point into, so a few rows picked from a large scan (a top-k query's answer)
    /// would otherwise carry the whole scan's strings.
    pub fn inline(schema: SchemaRef, batches: Vec<RecordBatch>) -> Result<Self> {
        let mut pieces = Vec::with_capacity(batches.len());
        for batch in batches {
            let batch = compact_views(&batch)?;
            let parts = batch
                .get_array_memory_size()
                .div_ceil(INLINE_TASK_BYTES)
                .clamp(1, batch.num_rows().max(1));
            let rows = batch.num_rows().div_ceil(parts).max(1);
            if parts == 1 {
                pieces.push(batch);
                continue;
            }
            for start in (0..batch.num_rows()).step_by(rows) {
                let len = rows.min(batch.num_rows() - start);
                pieces.push(compact_views(&batch.slice(start, len))?);
            }
        }
        Ok(Source::Inline {
            schema,
            batches: Arc::new(pieces),
        })
    }

    /// The schema of what the source reads.
    pub fn schema(&self) -> SchemaRef {
        match self {
            Source::Parquet(p) => Arc::clone(&p.schema),
            Source::Files { schema, .. } => Arc::clone(schema),
            Source::Range { .. } => range_schema(),
            Source::Inline { schema, .. } => Arc::clone(schema),
        }
    }

    /// The name of the read, for stage names ("ReadParquet").
    pub fn stage_name(&self) -> String {
        match self {
            Source::Parquet(_) => "ReadParquet".into(),
            Source::Files { format, .. } => format!("Read{}", format.name()),
            Source::Range { .. } => "Range".into(),
            Source::Inline { .. } => "FromArrow".into(),
        }
    }

    /// What was asked for, for messages.
    pub fn describe(&self) -> String {
        match self {
            Source::Parquet(p) => p.path.clone(),
            Source::Files { path, .. } => path.clone(),
            Source::Range { n } => format!("range({n})"),
            Source::Inline { batches, .. } => format!("{} batches from the driver", batches.len()),
        }
    }

    /// The read tasks, each about `rows_per_task` rows where the source can tell.
    pub fn tasks(&self, rows_per_task: u64) -> Vec<ReadTask> {
        match self {
            Source::Parquet(p) => p
                .fragments(rows_per_task)
                .into_iter()
                .map(ReadTask::Parquet)
                .collect(),
            Source::Files {
                format,
                files,
                schema,
                parse,
                ..
            } => {
                let per_task = if *format == FileFormat::Binary {
                    BINARY_FILES_PER_TASK
                } else {
                    1
                };
                let schema = encode_schema(schema);
                files
                    .chunks(per_task)
                    .map(|paths| ReadTask::Files {
                        format: *format,
                        paths: paths.to_vec(),
                        schema: schema.clone(),
                        options: *parse,
                    })
                    .collect()
            }
            Source::Range { n } => {
                let step = rows_per_task.max(1);
                (0..n.div_ceil(step))
                    .map(|i| ReadTask::Range {
                        start: i * step,
                        end: ((i + 1) * step).min(*n),
                    })
                    .collect()
            }
            Source::Inline { batches, .. } => batches
                .iter()
                .map(|b| ReadTask::Inline {
                    ipc: crate::ipc::write_ipc(b).expect("a valid batch encodes"),
                    rows: b.num_rows() as u64,
                })
                .collect(),
        }
    }
}

/// `batch` with its top-level string and binary view columns holding only the bytes their
/// rows use.
fn compact_views(batch: &RecordBatch) -> Result<RecordBatch> {
    use arrow::array::{Array, ArrayRef, BinaryViewArray, StringViewArray};
    if !batch
        .columns()
        .iter()
        .any(|c| matches!(c.data_type(), DataType::Utf8View | DataType::BinaryView))
    {
        return Ok(batch.clone());
    }
    let columns = batch
        .columns()
        .iter()
        .map(|column| -> ArrayRef {
            if let Some(strings) = column.as_any().downcast_ref::<StringViewArray>() {
                Arc::new(strings.gc())
            } else if let Some(bytes) = column.as_any().downcast_ref::<BinaryViewArray>() {
                Arc::new(bytes.gc())
            } else {
                Arc::clone(column)
            }
        })
        .collect();
    Ok(RecordBatch::try_new(batch.schema(), columns)?)
}

impl ReadTask {
    /// Rows the task will read, where known before reading (0 if not).
    pub fn rows(&self) -> u64 {
        match self {
            ReadTask::Parquet(f) => f.rows,
            ReadTask::Files { .. } => 0,
            ReadTask::Range { start, end } => end - start,
            ReadTask::Inline { rows, .. } => *rows,
        }
    }

    /// What the task reads, for messages.
    pub fn describe(&self) -> String {
        match self {
            ReadTask::Parquet(f) => format!("{} row groups {:?}", f.path.display(), f.row_groups),
            ReadTask::Files { paths, .. } if paths.len() == 1 => paths[0].display().to_string(),
            ReadTask::Files { paths, .. } => format!(
                "{} .. {} ({} files)",
                paths[0].display(),
                paths[paths.len() - 1].display(),
                paths.len()
            ),
            ReadTask::Range { start, end } => format!("range {start}..{end}"),
            ReadTask::Inline { rows, .. } => format!("{rows} rows from the driver"),
        }
    }

    /// Whether [`read`](Self::read) can evaluate a predicate inside the reader.
    pub fn pushes_predicates(&self) -> bool {
        matches!(self, ReadTask::Parquet(_))
    }

    /// Reads the task's rows as batches of at most `batch_size` rows, with only the `columns`
    /// named (all if `None`), in the source's order. `predicate` is evaluated inside the reader
    /// where [`pushes_predicates`](Self::pushes_predicates) says so (and ignored elsewhere);
    /// Parquet also decodes only the columns named, other formats read everything and then
    /// keep the columns named. The schema comes with the batches, so a read that yields no
    /// batch (every row filtered out in the reader) still says what its rows would be. The
    /// string columns named in `as_dictionaries` may come dictionary-encoded, as
    /// [`read_fragment`] says; the schema keeps their own type. So may Parquet's narrow
    /// decimals, with `narrow_decimals`.
    pub fn read(
        &self,
        batch_size: usize,
        predicate: Option<PushedPredicate>,
        columns: Option<&[String]>,
        as_dictionaries: &[String],
        narrow_decimals: bool,
    ) -> Result<ReadBatches> {
        let whole = match self {
            ReadTask::Parquet(fragment) => {
                return read_fragment(
                    fragment,
                    batch_size,
                    predicate,
                    columns,
                    as_dictionaries,
                    narrow_decimals,
                );
            }
            ReadTask::Range { start, end } => {
                let (start, end) = (*start, *end);
                let schema = range_schema();
                let batch_schema = Arc::clone(&schema);
                let batches = (start..end).step_by(batch_size.max(1)).map(move |from| {
                    let to = (from + batch_size as u64).min(end);
                    let ids = Int64Array::from_iter_values(from as i64..to as i64);
                    Ok(RecordBatch::try_new(
                        Arc::clone(&batch_schema),
                        vec![Arc::new(ids)],
                    )?)
                });
                ReadBatches {
                    schema,
                    batches: Box::new(batches),
                }
            }
            ReadTask::Inline { ipc, .. } => {
                let reader = arrow::ipc::reader::StreamReader::try_new(
                    std::io::Cursor::new(ipc.clone()),
                    None,
                )?;
                let schema = reader.schema();
                let batches: Vec<_> = reader.map(|b| b.map_err(Error::from)).collect();
                ReadBatches {
                    schema,
                    batches: Box::new(batches.into_iter()),
                }
            }
            ReadTask::Files {
                format,
                paths,
                schema,
                options,
            } => {
                let schema = decode_schema(schema)?;
                let mut batches = Vec::new();
                match format {
                    FileFormat::Binary => {
                        let mut bytes = Vec::with_capacity(paths.len());
                        for path in paths {
                            bytes.push(crate::storage::read_all(path)?);
                        }
                        let names: StringArray = paths
                            .iter()
                            .map(|p| Some(p.display().to_string()))
                            .collect();
                        let bytes = BinaryArray::from_iter_values(bytes.iter());
                        batches.push(RecordBatch::try_new(
                            Arc::clone(&schema),
                            vec![Arc::new(names), Arc::new(bytes)],
                        )?);
                    }
                    _ => {
                        for path in paths {
                            read_file(*format, options, path, &schema, batch_size, &mut batches)?;
                        }
                    }
                }
                ReadBatches {
                    schema,
                    batches: Box::new(batches.into_iter().map(Ok)),
                }
            }
        };
        match columns {
            Some(columns) => whole.project(columns),
            None => Ok(whole),
        }
    }
}

/// What a read task yields: its schema, and its batches.
pub struct ReadBatches {
    /// The schema of every batch (after projection); a column read as a dictionary (see
    /// [`ReadTask::read`]) has here the type its values stand for.
    pub schema: SchemaRef,
    /// The batches.
    pub batches: Box<dyn Iterator<Item = Result<RecordBatch>> + Send>,
}

impl ReadBatches {
    /// Keeps only the `columns` named, in the schema's order.
    fn project(self, columns: &[String]) -> Result<Self> {
        let Some(indices) = crate::columns::pruned_indices(&self.schema, columns) else {
            return Ok(self);
        };
        let schema = Arc::new(self.schema.project(&indices)?);
        let batch_schema = Arc::clone(&schema);
        let batches = self
            .batches
            .map(move |batch| Ok(crate::columns::project(&batch?, &batch_schema, &indices)?));
        Ok(Self {
            schema,
            batches: Box::new(batches),
        })
    }
}

fn range_schema() -> SchemaRef {
    Arc::new(Schema::new(vec![Field::new("id", DataType::Int64, false)]))
}

fn open(path: &std::path::Path) -> Result<Box<dyn ReadSeek>> {
    crate::storage::open(path)
}

fn invalid(format: FileFormat, path: &std::path::Path, reason: impl std::fmt::Display) -> Error {
    Error::InvalidFile {
        format: format.name(),
        path: path.to_path_buf(),
        reason: reason.to_string(),
    }
}

/// Reads or infers one file's schema (CSV and JSON: from its first `infer_rows` rows, or all).
fn file_schema(
    format: FileFormat,
    parse: &ParseOptions,
    infer_rows: Option<usize>,
    path: &std::path::Path,
) -> Result<Schema> {
    let mut file = open(path)?;
    match format {
        FileFormat::Csv => arrow::csv::reader::Format::default()
            .with_header(parse.has_header)
            .with_delimiter(parse.delimiter)
            .with_quote(parse.quote)
            .infer_schema(&mut file, infer_rows)
            .map(|(schema, _)| schema)
            .map_err(|e| invalid(format, path, e)),
        FileFormat::Json => {
            arrow::json::reader::infer_json_schema_from_seekable(BufReader::new(file), infer_rows)
                .map(|(schema, _)| schema)
                .map_err(|e| invalid(format, path, e))
        }
        FileFormat::Ipc => {
            let schema = if is_ipc_file(&mut file)? {
                arrow::ipc::reader::FileReader::try_new(file, None)
                    .map_err(|e| invalid(format, path, e))?
                    .schema()
            } else {
                arrow::ipc::reader::StreamReader::try_new(BufReader::new(file), None)
                    .map_err(|e| invalid(format, path, e))?
                    .schema()
            };
            Ok(schema.as_ref().clone())
        }
        FileFormat::Text | FileFormat::Binary => unreachable!("fixed schemas"),
    }
}

/// Whether an IPC file starts with the file format's magic (else it is a stream).
fn is_ipc_file(file: &mut dyn ReadSeek) -> Result<bool> {
    let mut magic = [0u8; 6];
    let n = file.read(&mut magic).unwrap_or(0);
    file.rewind().map_err(|source| Error::Io {
        action: "rewinding",
        path: PathBuf::new(),
        source,
    })?;
    Ok(n == 6 && &magic == b"ARROW1")
}

/// Reads a whole file of `format` with `schema`, appending its batches.
fn read_file(
    format: FileFormat,
    parse: &ParseOptions,
    path: &std::path::Path,
    schema: &SchemaRef,
    batch_size: usize,
    out: &mut Vec<RecordBatch>,
) -> Result<()> {
    let mut file = open(path)?;
    let fail = |e: arrow::error::ArrowError| invalid(format, path, e);
    match format {
        FileFormat::Csv => {
            let reader = arrow::csv::ReaderBuilder::new(Arc::clone(schema))
                .with_header(parse.has_header)
                .with_delimiter(parse.delimiter)
                .with_quote(parse.quote)
                .with_batch_size(batch_size)
                .build(file)
                .map_err(fail)?;
            for batch in reader {
                out.push(batch.map_err(fail)?);
            }
        }
        FileFormat::Json => {
            let reader = arrow::json::ReaderBuilder::new(Arc::clone(schema))
                .with_batch_size(batch_size)
                .with_strict_mode(parse.strict)
                .build(BufReader::new(file))
                .map_err(fail)?;
            for batch in reader {
                out.push(batch.map_err(|e| match parse.strict {
                    true => invalid(
                        format,
                        path,
                        format!(
                            "{e} (the schema was inferred from the files' first rows: infer \
                             from more rows, or give the schema, with JsonOptions)"
                        ),
                    ),
                    false => fail(e),
                })?);
            }
        }
        FileFormat::Ipc => {
            let batches: Box<dyn Iterator<Item = std::result::Result<RecordBatch, _>>> =
                if is_ipc_file(&mut file)? {
                    Box::new(arrow::ipc::reader::FileReader::try_new(file, None).map_err(fail)?)
                } else {
                    Box::new(
                        arrow::ipc::reader::StreamReader::try_new(BufReader::new(file), None)
                            .map_err(fail)?,
                    )
                };
            for batch in batches {
                let batch = batch.map_err(fail)?;
                // Files merged into a wider schema: fill the missing columns with nulls.
                out.push(crate::columns::conform(&batch, schema).map_err(fail)?);
            }
        }
        FileFormat::Text => {
            let mut lines = BufReader::new(file).lines();
            loop {
                let mut builder = StringBuilder::new();
                let mut rows = 0;
                for line in lines.by_ref().take(batch_size) {
                    let line = line.map_err(|e| invalid(format, path, e))?;
                    builder.append_value(line.strip_suffix('\r').unwrap_or(&line));
                    rows += 1;
                }
                if rows == 0 {
                    break;
                }
                out.push(RecordBatch::try_new(
                    Arc::clone(schema),
                    vec![Arc::new(builder.finish())],
                )?);
            }
        }
        FileFormat::Binary => unreachable!("read whole"),
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn schemas_round_trip_through_ipc_messages() {
        let schema = Schema::new(vec![
            Field::new("a", DataType::Int64, true),
            Field::new(
                "l",
                DataType::List(Arc::new(Field::new("item", DataType::Utf8, true))),
                false,
            ),
        ]);
        assert_eq!(
            decode_schema(&encode_schema(&schema)).unwrap().as_ref(),
            &schema
        );
    }

    #[test]
    fn range_tasks_cover_every_integer_once() {
        let source = Source::Range { n: 1003 };
        let mut seen = Vec::new();
        for task in source.tasks(100) {
            for batch in task.read(64, None, None, &[], false).unwrap().batches {
                let batch = batch.unwrap();
                assert!(batch.num_rows() <= 64);
                let ids = batch
                    .column(0)
                    .as_any()
                    .downcast_ref::<Int64Array>()
                    .unwrap();
                seen.extend(ids.values().iter().copied());
            }
        }
        assert_eq!(seen, (0..1003).collect::<Vec<i64>>());
    }

    #[test]
    fn csv_with_a_wrong_column_count_names_the_file() {
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("bad.csv");
        std::fs::write(&path, "a,b\n1,2\n3,4,5\n").unwrap();
        // Inferring the schema reads the first rows, so planning already finds it.
        let error = Source::csv(path.to_str().unwrap(), &CsvOptions::default())
            .unwrap_err()
            .to_string();
        assert!(
            error.contains("bad.csv") && error.contains("line 3"),
            "{error}"
        );
        // Past the rows inference reads, the read task finds it.
        let mut text = String::from("a,b\n");
        text.extend((0..1000).map(|i| format!("{i},{i}\n")));
        text.push_str("1,2,3\n");
        std::fs::write(&path, text).unwrap();
        let options = CsvOptions::default().infer_rows(1000);
        let source = Source::csv(path.to_str().unwrap(), &options).unwrap();
        let task = source.tasks(1000).remove(0);
        let error = match task.read(1024, None, None, &[], false) {
            Err(e) => e.to_string(),
            Ok(mut read) => read
                .batches
                .find_map(|b| b.err())
                .expect("an error")
                .to_string(),
        };
        assert!(
            error.contains("bad.csv") && error.contains("line"),
            "{error}"
        );
    }

    /// The strings of every read task's batches, in order, and the largest task's IPC bytes.
    fn inline_strings(source: &Source) -> (Vec<String>, usize) {
        let (mut strings, mut largest) = (Vec::new(), 0);
        for task in source.tasks(u64::MAX) {
            if let ReadTask::Inline { ipc, .. } = &task {
                largest = largest.max(ipc.len());
            }
            for batch in task
                .read(usize::MAX, None, None, &[], false)
                .unwrap()
                .batches
            {
                let batch =
                    arrow::compute::cast(batch.unwrap().column(0), &DataType::Utf8).unwrap();
                let column = batch.as_any().downcast_ref::<StringArray>().unwrap();
                strings.extend(column.iter().map(|s| s.unwrap().to_string()));
            }
        }
        (strings, largest)
    }

    #[test]
    fn inline_batches_travel_in_tasks_of_bounded_size() {
        use arrow::array::StringViewArray;
        // 6 MiB of strings in one view column.
        let values: Vec<String> = (0..6 * 1024).map(|i| format!("{i:01024}")).collect();
        let schema = Arc::new(Schema::new(vec![Field::new(
            "s",
            DataType::Utf8View,
            false,
        )]));
        let column = Arc::new(StringViewArray::from_iter_values(&values));
        let batch = RecordBatch::try_new(Arc::clone(&schema), vec![column]).unwrap();

        let whole = Source::inline(Arc::clone(&schema), vec![batch.clone()]).unwrap();
        let (strings, largest) = inline_strings(&whole);
        assert_eq!(strings, values);
        assert!(largest <= INLINE_TASK_BYTES + 64 * 1024, "{largest} bytes");

        // Three rows picked from the batch carry their own bytes, not the batch's.
        let picked = Source::inline(schema, vec![batch.slice(100, 3)]).unwrap();
        let (strings, largest) = inline_strings(&picked);
        assert_eq!(strings, values[100..103]);
        assert!(largest < 16 * 1024, "{largest} bytes");
    }
}
