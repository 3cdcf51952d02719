//! How CSV and newline-delimited JSON files are read: [`CsvOptions`] and [`JsonOptions`].
//!
//! Both formats carry no schema, so the driver finds one before any task runs: the user's
//! (`schema(...)`), or one inferred from the files. By default inference reads **every row** of
//! every file, so a field or a type that first appears late in a file is never missed; a large
//! input can bound it with `infer_rows(n)` (the first `n` rows of each file). Whatever the
//! schema's origin, a row that does not fit it is an error naming the file, never a silently
//! dropped value: JSON is read in strict mode when its schema was inferred, so a field the
//! inferred rows never showed fails the read (a user-given schema keeps just its own fields,
//! as Spark and pyarrow do with an explicit schema).
//!
//! What the read tasks need of these options travels in them as [`ParseOptions`], plain data.

use arrow::datatypes::SchemaRef;
use serde::{Deserialize, Serialize};

/// Options for `read_csv_with`.
///
/// ```
/// use manta_datasets::CsvOptions;
/// let options = CsvOptions::default().delimiter(b';').has_header(false).infer_rows(100);
/// assert_eq!(options.delimiter, b';');
/// assert_eq!(options.infer_rows, Some(100));
/// ```
#[derive(Clone, Debug)]
pub struct CsvOptions {
    /// The field separator (default `,`).
    pub delimiter: u8,
    /// The quote character (default `"`).
    pub quote: u8,
    /// Whether the first line of each file names the columns (default yes). Without a header
    /// the columns are `column_1`, `column_2`, ... unless a schema names them.
    pub has_header: bool,
    /// The schema to read with, instead of inferring one.
    pub schema: Option<SchemaRef>,
    /// Rows of each file to infer the schema from (default `None`: all of them).
    pub infer_rows: Option<usize>,
}

impl Default for CsvOptions {
    fn default() -> Self {
        Self {
            delimiter: b',',
            quote: b'"',
            has_header: true,
            schema: None,
            infer_rows: None,
        }
    }
}

impl CsvOptions {
    /// Fields separated by `delimiter` (`b'\t'` for TSV).
    pub fn delimiter(mut self, delimiter: u8) -> Self {
        self.delimiter = delimiter;
        self
    }

    /// Values quoted with `quote`.
    pub fn quote(mut self, quote: u8) -> Self {
        self.quote = quote;
        self
    }

    /// Whether the first line is a header.
    pub fn has_header(mut self, has_header: bool) -> Self {
        self.has_header = has_header;
        self
    }

    /// Reads with this schema (column types and names, in file order) instead of inferring.
    pub fn schema(mut self, schema: SchemaRef) -> Self {
        self.schema = Some(schema);
        self
    }

    /// Infers the schema from the first `rows` rows of each file only.
    pub fn infer_rows(mut self, rows: usize) -> Self {
        self.infer_rows = Some(rows.max(1));
        self
    }

    pub(crate) fn parse(&self) -> ParseOptions {
        ParseOptions {
            delimiter: self.delimiter,
            quote: self.quote,
            has_header: self.has_header,
            strict: false,
        }
    }
}

/// Options for `read_json_with`.
///
/// ```
/// use manta_datasets::JsonOptions;
/// let options = JsonOptions::default().infer_rows(1000);
/// assert_eq!(options.infer_rows, Some(1000));
/// ```
#[derive(Clone, Debug, Default)]
pub struct JsonOptions {
    /// The schema to read with, instead of inferring one; fields of the files that it does not
    /// name are skipped.
    pub schema: Option<SchemaRef>,
    /// Rows of each file to infer the schema from (default `None`: all of them). A field that
    /// first appears after them fails the read with an error naming it.
    pub infer_rows: Option<usize>,
}

impl JsonOptions {
    /// Reads with this schema instead of inferring one.
    pub fn schema(mut self, schema: SchemaRef) -> Self {
        self.schema = Some(schema);
        self
    }

    /// Infers the schema from the first `rows` rows of each file only.
    pub fn infer_rows(mut self, rows: usize) -> Self {
        self.infer_rows = Some(rows.max(1));
        self
    }

    pub(crate) fn parse(&self) -> ParseOptions {
        ParseOptions {
            strict: self.schema.is_none(),
            ..ParseOptions::default()
        }
    }
}

/// What a read task needs to parse a CSV or JSON file: plain data, carried in the task.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ParseOptions {
    /// CSV: the field separator.
    pub delimiter: u8,
    /// CSV: the quote character.
    pub quote: u8,
    /// CSV: whether the first line is a header.
    pub has_header: bool,
    /// JSON: a field not in the schema is an error (the schema was inferred), not skipped.
    pub strict: bool,
}

impl Default for ParseOptions {
    fn default() -> Self {
        CsvOptions::default().parse()
    }
}
