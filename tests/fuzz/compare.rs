//! Comparing answers: rows as cells (integers, floats within 1e-9, strings, nulls as nulls), as
//! multisets, in a promised order, or as a subset (a limit without an order).

use std::cmp::Ordering;

use arrow::array::{Array, ArrayRef, AsArray, RecordBatch};
use arrow::compute::cast;
use arrow::datatypes::{DataType, Float64Type, Int64Type};

/// One value of an answer.
#[derive(Clone, Debug)]
pub enum Cell {
    Null,
    Bool(bool),
    Int(i64),
    Float(f64),
    Str(String),
}

/// An answer: column names and rows.
#[derive(Clone, Debug, Default)]
pub struct Answer {
    pub columns: Vec<String>,
    pub rows: Vec<Vec<Cell>>,
}

impl Cell {
    fn rank(&self) -> u8 {
        match self {
            Cell::Null => 0,
            Cell::Bool(_) => 1,
            Cell::Int(_) => 2,
            Cell::Float(_) => 3,
            Cell::Str(_) => 4,
        }
    }

    /// A total order for sorting answers into a canonical order.
    fn canonical(&self, other: &Cell) -> Ordering {
        match (self, other) {
            (Cell::Bool(a), Cell::Bool(b)) => a.cmp(b),
            (Cell::Int(a), Cell::Int(b)) => a.cmp(b),
            (Cell::Float(a), Cell::Float(b)) => a.total_cmp(b),
            (Cell::Str(a), Cell::Str(b)) => a.cmp(b),
            _ => self.rank().cmp(&other.rank()),
        }
    }

    /// Equal, floats within 1e-9 (relative, or absolute near zero).
    fn same(&self, other: &Cell) -> bool {
        match (self, other) {
            (Cell::Float(a), Cell::Float(b)) => {
                a == b || (a - b).abs() <= 1e-9 * a.abs().max(b.abs()).max(1.0)
            }
            (Cell::Null, Cell::Null) => true,
            (Cell::Bool(a), Cell::Bool(b)) => a == b,
            (Cell::Int(a), Cell::Int(b)) => a == b,
            (Cell::Str(a), Cell::Str(b)) => a == b,
            _ => false,
        }
    }

    /// SQL's order of one key: nulls last ascending, first descending.
    pub fn sql_order(&self, other: &Cell, descending: bool) -> Ordering {
        let order = match (self, other) {
            (Cell::Null, Cell::Null) => Ordering::Equal,
            (Cell::Null, _) => Ordering::Greater,
            (_, Cell::Null) => Ordering::Less,
            _ => self.canonical(other),
        };
        if descending { order.reverse() } else { order }
    }
}

impl std::fmt::Display for Cell {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Cell::Null => write!(f, "null"),
            Cell::Bool(b) => write!(f, "{b}"),
            Cell::Int(i) => write!(f, "{i}"),
            Cell::Float(x) => write!(f, "{x:?}"),
            Cell::Str(s) => write!(f, "{s:?}"),
        }
    }
}

fn cells(array: &ArrayRef) -> Vec<Cell> {
    let n = array.len();
    let of = |to: &DataType| cast(array, to).expect("a castable column");
    match array.data_type() {
        DataType::Null => vec![Cell::Null; n],
        DataType::Boolean => {
            let a = array.as_boolean();
            (0..n)
                .map(|i| match a.is_null(i) {
                    true => Cell::Null,
                    false => Cell::Bool(a.value(i)),
                })
                .collect()
        }
        t if t.is_integer() => {
            let a = of(&DataType::Int64);
            let a = a.as_primitive::<Int64Type>();
            (0..n)
                .map(|i| match a.is_null(i) {
                    true => Cell::Null,
                    false => Cell::Int(a.value(i)),
                })
                .collect()
        }
        t if t.is_floating() || matches!(t, DataType::Decimal128(..)) => {
            let a = of(&DataType::Float64);
            let a = a.as_primitive::<Float64Type>();
            (0..n)
                .map(|i| match a.is_null(i) {
                    true => Cell::Null,
                    false => Cell::Float(a.value(i)),
                })
                .collect()
        }
        _ => {
            let a = of(&DataType::Utf8);
            let a = a.as_string::<i32>();
            (0..n)
                .map(|i| match a.is_null(i) {
                    true => Cell::Null,
                    false => Cell::Str(a.value(i).to_string()),
                })
                .collect()
        }
    }
}

impl Answer {
    /// The rows of `batches`, in order; `columns` names them when there are no batches.
    pub fn of(batches: &[RecordBatch], columns: &[String]) -> Answer {
        let mut answer = Answer {
            columns: columns.to_vec(),
            rows: Vec::new(),
        };
        if let Some(first) = batches.first() {
            answer.columns = first
                .schema()
                .fields()
                .iter()
                .map(|f| f.name().clone())
                .collect();
        }
        for batch in batches {
            let columns: Vec<Vec<Cell>> = batch.columns().iter().map(cells).collect();
            for row in 0..batch.num_rows() {
                answer
                    .rows
                    .push(columns.iter().map(|c| c[row].clone()).collect());
            }
        }
        answer
    }

    /// One column's values as an answer of one column.
    pub fn of_array(name: &str, array: &ArrayRef) -> Answer {
        Answer {
            columns: vec![name.to_string()],
            rows: cells(array).into_iter().map(|c| vec![c]).collect(),
        }
    }

    fn canonical_rows(&self) -> Vec<Vec<Cell>> {
        let mut rows = self.rows.clone();
        rows.sort_by(|a, b| {
            a.iter()
                .zip(b)
                .map(|(x, y)| x.canonical(y))
                .find(|o| o.is_ne())
                .unwrap_or(Ordering::Equal)
        });
        rows
    }

    fn columns_match(&self, expected: &Answer) -> Result<(), String> {
        if self.rows.is_empty() && expected.rows.is_empty() {
            // No rows: a schema nobody could know (map_groups of nothing) is no difference.
            return Ok(());
        }
        if self.columns != expected.columns {
            return Err(format!(
                "columns differ: got {:?}, expected {:?}",
                self.columns, expected.columns
            ));
        }
        Ok(())
    }

    /// The same rows, in any order.
    pub fn same_rows(&self, expected: &Answer) -> Result<(), String> {
        self.columns_match(expected)?;
        let (got, want) = (self.canonical_rows(), expected.canonical_rows());
        if got.len() != want.len() {
            return Err(format!(
                "{} rows, expected {}\n{}",
                got.len(),
                want.len(),
                diff(&got, &want)
            ));
        }
        for (g, w) in got.iter().zip(&want) {
            if !same_row(g, w) {
                return Err(format!(
                    "row {} differs from {}\n{}",
                    show(g),
                    show(w),
                    diff(&got, &want)
                ));
            }
        }
        Ok(())
    }

    /// Every row also in `superset` (as a multiset), and `rows` of them.
    pub fn rows_within(&self, superset: &Answer, rows: usize) -> Result<(), String> {
        self.columns_match(superset)?;
        if self.rows.len() != rows {
            return Err(format!("{} rows, expected {rows}", self.rows.len()));
        }
        let mut pool = superset.canonical_rows();
        for row in self.canonical_rows() {
            match pool.iter().position(|r| same_row(r, &row)) {
                Some(i) => {
                    pool.remove(i);
                }
                None => return Err(format!("row {} is not in the full answer", show(&row))),
            }
        }
        Ok(())
    }

    /// Whether the rows are in order by the keys (column indices, descending or not).
    pub fn ordered_by(&self, keys: &[(usize, bool)]) -> Result<(), String> {
        for pair in self.rows.windows(2) {
            let order = keys
                .iter()
                .map(|&(i, descending)| pair[0][i].sql_order(&pair[1][i], descending))
                .find(|o| o.is_ne())
                .unwrap_or(Ordering::Equal);
            if order == Ordering::Greater {
                return Err(format!(
                    "rows out of order: {} before {}",
                    show(&pair[0]),
                    show(&pair[1])
                ));
            }
        }
        Ok(())
    }

    /// The key columns of the rows, in order.
    pub fn keys(&self, keys: &[(usize, bool)]) -> Vec<Vec<Cell>> {
        self.rows
            .iter()
            .map(|r| keys.iter().map(|&(i, _)| r[i].clone()).collect())
            .collect()
    }
}

pub fn same_row(a: &[Cell], b: &[Cell]) -> bool {
    a.len() == b.len() && a.iter().zip(b).all(|(x, y)| x.same(y))
}

fn show(row: &[Cell]) -> String {
    let cells: Vec<String> = row.iter().map(|c| c.to_string()).collect();
    format!("({})", cells.join(", "))
}

/// The first rows of both sides, for a failure message.
fn diff(got: &[Vec<Cell>], want: &[Vec<Cell>]) -> String {
    let lines = |rows: &[Vec<Cell>]| {
        let mut text: Vec<String> = rows.iter().take(40).map(|r| show(r)).collect();
        if rows.len() > 40 {
            text.push(format!("... {} more", rows.len() - 40));
        }
        text.join("\n  ")
    };
    format!(
        "got (sorted):\n  {}\nexpected (sorted):\n  {}",
        lines(got),
        lines(want)
    )
}
