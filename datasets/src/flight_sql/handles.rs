//! What a Flight SQL client carries between calls: statement tickets and prepared-statement
//! handles, both self-contained.
//!
//! The server keeps no per-statement state. A ticket carries the SQL text (and any bound
//! parameters), and `DoGet` plans it again. A prepared statement's handle carries the SQL
//! text, and binding parameters (`DoPut`) returns a new handle that also carries them,
//! as an Arrow IPC stream of the one-row parameter batch. Nothing leaks when a client
//! disappears without closing its statements, and any server of the cluster can answer.
//!
//! Layout: one kind byte, then a little-endian `u32` length and the SQL text, then the rest is
//! the parameters' IPC stream (empty when none are bound).

use std::sync::Arc;

use arrow::array::RecordBatch;
use arrow::ipc::reader::StreamReader;
use arrow::ipc::writer::StreamWriter;
use bytes::Bytes;
use datafusion::common::ScalarValue;
use datafusion::sql::sqlparser::dialect::GenericDialect;
use datafusion::sql::sqlparser::tokenizer::{Token, Tokenizer};
use tonic::Status;

/// A query to run: its SQL text and the values bound to its placeholders.
#[derive(Clone, Debug, PartialEq)]
pub struct Statement {
    /// The SQL text, with `?` placeholders already numbered (`$1`, `$2`, ...).
    pub sql: String,
    /// Values for `$1`, `$2`, ...; empty when none are bound.
    pub params: Vec<ScalarValue>,
}

/// What a ticket or handle holds.
#[derive(Clone, Copy, Debug, PartialEq)]
#[repr(u8)]
enum Kind {
    Statement = b's',
}

impl Statement {
    /// A statement without parameters.
    pub fn new(sql: &str) -> Self {
        Self {
            sql: number_placeholders(sql),
            params: Vec::new(),
        }
    }

    /// Encodes the statement as an opaque handle.
    pub fn encode(&self) -> Result<Bytes, Status> {
        let mut out = vec![Kind::Statement as u8];
        out.extend_from_slice(&(self.sql.len() as u32).to_le_bytes());
        out.extend_from_slice(self.sql.as_bytes());
        if !self.params.is_empty() {
            let batch = params_batch(&self.params)?;
            let mut writer = StreamWriter::try_new(&mut out, &batch.schema())
                .map_err(|e| Status::internal(format!("encoding parameters: {e}")))?;
            writer
                .write(&batch)
                .and_then(|()| writer.finish())
                .map_err(|e| Status::internal(format!("encoding parameters: {e}")))?;
        }
        Ok(out.into())
    }

    /// Decodes a handle made by [`Statement::encode`].
    pub fn decode(handle: &[u8]) -> Result<Self, Status> {
        let bad = || Status::invalid_argument("not a statement handle of this server");
        let (&kind, rest) = handle.split_first().ok_or_else(bad)?;
        if kind != Kind::Statement as u8 || rest.len() < 4 {
            return Err(bad());
        }
        let len = u32::from_le_bytes(rest[..4].try_into().expect("4 bytes")) as usize;
        let rest = &rest[4..];
        if rest.len() < len {
            return Err(bad());
        }
        let sql = std::str::from_utf8(&rest[..len])
            .map_err(|_| bad())?
            .to_string();
        let params = if rest.len() > len {
            let batch = single_batch(&rest[len..])?;
            row_values(&batch)?
        } else {
            Vec::new()
        };
        Ok(Self { sql, params })
    }

    /// This statement with `batch`'s one row bound to its placeholders.
    pub fn bind(&self, batch: &RecordBatch) -> Result<Self, Status> {
        Ok(Self {
            sql: self.sql.clone(),
            params: row_values(batch)?,
        })
    }
}

/// The values of a parameter batch's one row, in column order.
fn row_values(batch: &RecordBatch) -> Result<Vec<ScalarValue>, Status> {
    if batch.num_rows() != 1 {
        return Err(Status::invalid_argument(format!(
            "parameters must be bound one row at a time; got {} rows",
            batch.num_rows()
        )));
    }
    batch
        .columns()
        .iter()
        .map(|column| {
            ScalarValue::try_from_array(column, 0)
                .map_err(|e| Status::invalid_argument(format!("a parameter value: {e}")))
        })
        .collect()
}

/// The one-row batch of `values`, columns named `$1`, `$2`, ...
fn params_batch(values: &[ScalarValue]) -> Result<RecordBatch, Status> {
    let columns = values
        .iter()
        .enumerate()
        .map(|(i, value)| {
            value
                .to_array()
                .map(|array| (format!("${}", i + 1), array))
                .map_err(|e| Status::internal(format!("encoding parameter ${}: {e}", i + 1)))
        })
        .collect::<Result<Vec<_>, _>>()?;
    RecordBatch::try_from_iter(columns).map_err(|e| Status::internal(e.to_string()))
}

fn single_batch(ipc: &[u8]) -> Result<RecordBatch, Status> {
    let reader = StreamReader::try_new(ipc, None)
        .map_err(|e| Status::invalid_argument(format!("bound parameters: {e}")))?;
    let batches = reader
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| Status::invalid_argument(format!("bound parameters: {e}")))?;
    let schema = batches
        .first()
        .map(|b| b.schema())
        .unwrap_or_else(|| Arc::new(arrow::datatypes::Schema::empty()));
    arrow::compute::concat_batches(&schema, &batches)
        .map_err(|e| Status::invalid_argument(format!("bound parameters: {e}")))
}

/// Rewrites `?` placeholders (what ODBC, JDBC and ADBC clients write) as DataFusion's `$1`,
/// `$2`, ... in order, leaving string literals, identifiers and comments alone. Text that does
/// not tokenize is returned as it is, for DataFusion's parser to report.
pub fn number_placeholders(sql: &str) -> String {
    if !sql.contains('?') {
        return sql.to_string();
    }
    let Ok(tokens) = Tokenizer::new(&GenericDialect {}, sql).tokenize() else {
        return sql.to_string();
    };
    let mut next = 0;
    tokens
        .into_iter()
        .map(|token| match token {
            Token::Placeholder(p) if p == "?" => {
                next += 1;
                format!("${next}")
            }
            other => other.to_string(),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn question_marks_become_numbered_placeholders_outside_literals() {
        assert_eq!(
            number_placeholders("SELECT a FROM t WHERE a > ? AND b = '?' AND c < ?"),
            "SELECT a FROM t WHERE a > $1 AND b = '?' AND c < $2"
        );
        assert_eq!(number_placeholders("SELECT 1"), "SELECT 1");
    }

    #[test]
    fn a_handle_round_trips_with_and_without_parameters() {
        let plain = Statement::new("SELECT 1");
        assert_eq!(Statement::decode(&plain.encode().unwrap()).unwrap(), plain);
        let bound = Statement {
            sql: "SELECT $1, $2".into(),
            params: vec![ScalarValue::Int64(Some(7)), ScalarValue::from("x")],
        };
        let decoded = Statement::decode(&bound.encode().unwrap()).unwrap();
        assert_eq!(decoded.sql, bound.sql);
        assert_eq!(decoded.params.len(), 2);
        assert_eq!(decoded.params[0], ScalarValue::Int64(Some(7)));
        assert_eq!(decoded.params[1].to_string(), "x");
        assert!(Statement::decode(b"nonsense").is_err());
    }
}
