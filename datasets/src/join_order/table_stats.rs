//! What a Parquet table's footers say about its size: rows, each numeric column's range, and
//! how many distinct values its dictionary-encoded string columns hold.
//!
//! [`table_stats`] reads the footers of the local files of a DataFusion listing table over
//! Parquet (the table Manta registers for Parquet files) and sums them: rows, and per column
//! the smallest minimum and largest maximum of its row groups, as numbers (dates as days,
//! decimals as their value). For a string column whose first row group is all
//! dictionary-encoded, it reads the dictionary page's header: its number of values is the
//! column's distinct values there. A file's figures are cached by path, length and modification
//! time, so a query plans without reading a footer twice. Tables of other kinds, files
//! elsewhere than the local file system, and globs have no figures (`None`), and the join
//! order then stays as written.

use std::collections::HashMap;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::SystemTime;

use arrow::array::{Array, Float64Array};
use arrow::compute::cast;
use arrow::datatypes::{DataType, Schema};
use datafusion::catalog::default_table_source::source_as_provider;
use datafusion::datasource::listing::ListingTable;
use datafusion::logical_expr::TableSource;
use parquet::arrow::arrow_reader::statistics::StatisticsConverter;
use parquet::arrow::parquet_to_arrow_schema;
use parquet::basic::{Encoding, Type};
use parquet::column::page::Page;
use parquet::file::metadata::{ColumnChunkMetaData, ParquetMetaData};
use parquet::file::reader::{FileReader, SerializedFileReader};

/// A table's size from its files' footers.
#[derive(Debug, Clone, Default)]
pub(super) struct TableStats {
    /// Rows in all files.
    pub rows: f64,
    /// Each numeric column's range, by column name.
    pub ranges: HashMap<String, ColumnRange>,
    /// Distinct values of each string column that its first row group's dictionary holds
    /// whole (all its pages dictionary-encoded), by column name: the largest over the files.
    pub distinct: HashMap<String, f64>,
}

/// A numeric column's smallest and largest value over a table.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(super) struct ColumnRange {
    pub min: f64,
    pub max: f64,
    /// Integers or dates: at most `max - min + 1` distinct values.
    pub whole: bool,
}

impl ColumnRange {
    fn union(self, other: ColumnRange) -> ColumnRange {
        ColumnRange {
            min: self.min.min(other.min),
            max: self.max.max(other.max),
            whole: self.whole && other.whole,
        }
    }
}

/// The figures of the table `source` scans, if it is a listing table over local Parquet files.
pub(super) fn table_stats(source: &Arc<dyn TableSource>) -> Option<TableStats> {
    let provider = source_as_provider(source).ok()?;
    let table = provider.downcast_ref::<ListingTable>()?;
    let options = table.options();
    if options.format.get_ext() != "parquet" {
        return None;
    }
    let mut files = Vec::new();
    for url in table.table_paths() {
        if url.scheme() != "file" || url.get_glob().is_some() {
            return None;
        }
        let path = url.get_url().to_file_path().ok()?;
        files_under(&path, &options.file_extension, &mut files).ok()?;
    }
    let mut total = TableStats::default();
    for file in files {
        let stats = file_stats(&file)?;
        total.rows += stats.rows;
        for (name, range) in &stats.ranges {
            total
                .ranges
                .entry(name.clone())
                .and_modify(|r| *r = r.union(*range))
                .or_insert(*range);
        }
        for (name, distinct) in &stats.distinct {
            let most = total.distinct.entry(name.clone()).or_default();
            *most = most.max(*distinct);
        }
    }
    Some(total)
}

/// The files under `path` (itself, if a file) whose names end in `extension`.
fn files_under(path: &Path, extension: &str, files: &mut Vec<PathBuf>) -> std::io::Result<()> {
    if !path.is_dir() {
        files.push(path.to_path_buf());
        return Ok(());
    }
    for entry in std::fs::read_dir(path)? {
        let entry = entry?.path();
        if entry.is_dir() {
            files_under(&entry, extension, files)?;
        } else if entry.to_string_lossy().ends_with(extension) {
            files.push(entry);
        }
    }
    Ok(())
}

/// A file's identity for the cache: its length and modification time.
type Version = (u64, Option<SystemTime>);

/// Figures of files read before, by path, with the version they were read from.
type Cache = Mutex<HashMap<PathBuf, (Version, Arc<TableStats>)>>;

/// The figures of files read before.
fn cache() -> &'static Cache {
    static CACHE: OnceLock<Cache> = OnceLock::new();
    CACHE.get_or_init(Default::default)
}

/// One file's figures, from the cache or its footer; `None` if it cannot be read.
fn file_stats(path: &Path) -> Option<Arc<TableStats>> {
    let meta = std::fs::metadata(path).ok()?;
    let version = (meta.len(), meta.modified().ok());
    if let Some((cached, stats)) = cache().lock().ok()?.get(path)
        && *cached == version
    {
        return Some(Arc::clone(stats));
    }
    let reader = SerializedFileReader::new(File::open(path).ok()?).ok()?;
    let mut stats = footer_stats(reader.metadata())?;
    stats.distinct = dictionary_sizes(&reader);
    let stats = Arc::new(stats);
    cache()
        .lock()
        .ok()?
        .insert(path.to_path_buf(), (version, Arc::clone(&stats)));
    Some(stats)
}

/// Rows and numeric column ranges from a footer.
fn footer_stats(footer: &ParquetMetaData) -> Option<TableStats> {
    let file = footer.file_metadata();
    let schema = parquet_to_arrow_schema(file.schema_descr(), file.key_value_metadata()).ok()?;
    let mut stats = TableStats {
        rows: file.num_rows() as f64,
        ..Default::default()
    };
    for field in schema.fields() {
        if let Some(range) = column_range(footer, &schema, field.name(), field.data_type()) {
            stats.ranges.insert(field.name().clone(), range);
        }
    }
    Some(stats)
}

/// A numeric column's range over all row groups; `None` if it is not numeric or a row group
/// has no statistics for it.
fn column_range(
    footer: &ParquetMetaData,
    schema: &Schema,
    name: &str,
    data_type: &DataType,
) -> Option<ColumnRange> {
    let (whole, steps): (bool, &[DataType]) = match data_type {
        DataType::Int8
        | DataType::Int16
        | DataType::Int32
        | DataType::Int64
        | DataType::UInt8
        | DataType::UInt16
        | DataType::UInt32
        | DataType::UInt64 => (true, &[]),
        DataType::Date32 => (true, &[DataType::Int32]),
        DataType::Float32 | DataType::Float64 | DataType::Decimal128(..) => (false, &[]),
        _ => return None,
    };
    let converter =
        StatisticsConverter::try_new(name, schema, footer.file_metadata().schema_descr()).ok()?;
    let bound = |values: Arc<dyn Array>| -> Option<Float64Array> {
        let mut values = values;
        for step in steps {
            values = cast(&values, step).ok()?;
        }
        let values = cast(&values, &DataType::Float64).ok()?;
        let values = values.as_any().downcast_ref::<Float64Array>()?.clone();
        (values.null_count() == 0).then_some(values)
    };
    let mins = bound(converter.row_group_mins(footer.row_groups().iter()).ok()?)?;
    let maxes = bound(converter.row_group_maxes(footer.row_groups().iter()).ok()?)?;
    Some(ColumnRange {
        min: arrow::compute::min(&mins)?,
        max: arrow::compute::max(&maxes)?,
        whole,
    })
}

/// The dictionary size of each top-level string column of the first row group whose pages are
/// all dictionary-encoded (the dictionary then holds each of its distinct values once): a few
/// small reads, for the distinct values of columns like `p_type` or `n_name` that a range
/// cannot tell.
fn dictionary_sizes(reader: &SerializedFileReader<File>) -> HashMap<String, f64> {
    let mut sizes = HashMap::new();
    let Some(group) = reader.metadata().row_groups().first() else {
        return sizes;
    };
    let Ok(group_reader) = reader.get_row_group(0) else {
        return sizes;
    };
    for (i, column) in group.columns().iter().enumerate() {
        let descr = column.column_descr();
        let string = matches!(
            descr.physical_type(),
            Type::BYTE_ARRAY | Type::FIXED_LEN_BYTE_ARRAY
        );
        if !string || descr.path().parts().len() != 1 || !all_dictionary(column) {
            continue;
        }
        if let Ok(mut pages) = group_reader.get_column_page_reader(i)
            && let Ok(Some(Page::DictionaryPage { num_values, .. })) = pages.get_next_page()
        {
            sizes.insert(descr.name().to_string(), num_values as f64);
        }
    }
    sizes
}

/// Whether all data pages of a column chunk are dictionary-encoded, as far as its metadata
/// tells (writers that do not record their pages' encodings are taken at their dictionary).
fn all_dictionary(column: &ColumnChunkMetaData) -> bool {
    column.dictionary_page_offset().is_some()
        && column.page_encoding_stats_mask().is_none_or(|mask| {
            mask.is_only(Encoding::PLAIN_DICTIONARY) || mask.is_only(Encoding::RLE_DICTIONARY)
        })
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use arrow::array::{Date32Array, Int64Array, RecordBatch, StringArray};
    use datafusion::datasource::provider_as_source;
    use datafusion::prelude::{ParquetReadOptions, SessionContext};
    use parquet::arrow::ArrowWriter;

    use super::*;

    #[test]
    fn rows_ranges_and_dictionary_sizes_of_two_files() {
        let dir = tempfile::tempdir().unwrap();
        for (file, first) in [("a.parquet", 0i64), ("b.parquet", 100)] {
            let n = 1000;
            let batch = RecordBatch::try_from_iter([
                (
                    "k",
                    Arc::new(Int64Array::from_iter_values(first..first + n)) as _,
                ),
                (
                    "day",
                    Arc::new(Date32Array::from_iter_values(10..10 + n as i32)) as _,
                ),
                (
                    "kind",
                    Arc::new(StringArray::from_iter_values(
                        (0..n).map(|i| ["x", "é", "☃"][i as usize % 3]),
                    )) as _,
                ),
            ])
            .unwrap();
            let out = File::create(dir.path().join(file)).unwrap();
            let mut writer = ArrowWriter::try_new(out, batch.schema(), None).unwrap();
            writer.write(&batch).unwrap();
            writer.close().unwrap();
        }
        let ctx = SessionContext::new();
        let path = dir.path().to_str().unwrap();
        crate::thread_runtime::block_on(ctx.register_parquet(
            "t",
            path,
            ParquetReadOptions::default(),
        ))
        .unwrap();
        let table = crate::thread_runtime::block_on(ctx.table_provider("t")).unwrap();
        let stats = table_stats(&provider_as_source(table)).unwrap();
        assert_eq!(stats.rows, 2000.0);
        let whole = |min, max| ColumnRange {
            min,
            max,
            whole: true,
        };
        assert_eq!(stats.ranges["k"], whole(0.0, 1099.0));
        assert_eq!(stats.ranges["day"], whole(10.0, 1009.0));
        assert_eq!(stats.distinct["kind"], 3.0);
        assert!(!stats.ranges.contains_key("kind"));
    }
}
