//! An order-independent checksum of a table's rows, to compare results computed different ways.
//!
//! Each row is hashed over all its columns (DataFusion's row hashing, fixed seeds), and the row
//! hashes are added with wrapping arithmetic, so the sum does not depend on row order or on how
//! rows are split into batches or files. Columns are first cast to a canonical type (string
//! views to strings), so two engines that chose different string layouts agree.

use std::sync::Arc;

use arrow::array::{ArrayRef, RecordBatch};
use arrow::compute::cast;
use arrow::datatypes::DataType;
use datafusion::common::hash_utils::create_hashes;

use crate::error::Result;

/// Sums and counts row hashes; see the module documentation.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Checksum {
    /// Rows seen.
    pub rows: u64,
    /// Wrapping sum of row hashes.
    pub sum: u64,
}

impl Checksum {
    /// Adds a batch's rows.
    pub fn update(&mut self, batch: &RecordBatch) -> Result<()> {
        let columns = batch
            .columns()
            .iter()
            .map(canonical)
            .collect::<Result<Vec<ArrayRef>>>()?;
        let state = datafusion::common::hash_utils::RandomState::with_seed(0x006d_616e_7461);
        let mut hashes = vec![0u64; batch.num_rows()];
        if !columns.is_empty() {
            create_hashes(&columns, &state, &mut hashes)?;
        }
        self.rows += batch.num_rows() as u64;
        self.sum = hashes.iter().fold(self.sum, |acc, h| acc.wrapping_add(*h));
        Ok(())
    }

    /// The checksum of all these batches.
    pub fn of<'a>(batches: impl IntoIterator<Item = &'a RecordBatch>) -> Result<Self> {
        let mut checksum = Self::default();
        for batch in batches {
            checksum.update(batch)?;
        }
        Ok(checksum)
    }

    /// The sum as 16 hex digits.
    pub fn hex(&self) -> String {
        format!("{:016x}", self.sum)
    }
}

fn canonical(column: &ArrayRef) -> Result<ArrayRef> {
    Ok(match column.data_type() {
        DataType::Utf8View | DataType::LargeUtf8 => cast(column, &DataType::Utf8)?,
        DataType::BinaryView | DataType::LargeBinary => cast(column, &DataType::Binary)?,
        _ => Arc::clone(column),
    })
}

#[cfg(test)]
mod tests {
    use arrow::array::{Int64Array, StringArray, StringViewArray};

    use super::*;

    #[test]
    fn independent_of_order_batching_and_string_layout() {
        let a = RecordBatch::try_from_iter([
            ("n", Arc::new(Int64Array::from(vec![1, 2, 3])) as ArrayRef),
            (
                "s",
                Arc::new(StringArray::from(vec!["x", "y", "z"])) as ArrayRef,
            ),
        ])
        .unwrap();
        let b = RecordBatch::try_from_iter([
            ("n", Arc::new(Int64Array::from(vec![3, 1])) as ArrayRef),
            (
                "s",
                Arc::new(StringViewArray::from(vec!["z", "x"])) as ArrayRef,
            ),
        ])
        .unwrap();
        let c = RecordBatch::try_from_iter([
            ("n", Arc::new(Int64Array::from(vec![2])) as ArrayRef),
            ("s", Arc::new(StringViewArray::from(vec!["y"])) as ArrayRef),
        ])
        .unwrap();
        assert_eq!(Checksum::of([&a]).unwrap(), Checksum::of([&b, &c]).unwrap());
        let different = a.slice(0, 2);
        assert_ne!(
            Checksum::of([&a]).unwrap(),
            Checksum::of([&different, &c.slice(0, 0)]).unwrap()
        );
    }
}
