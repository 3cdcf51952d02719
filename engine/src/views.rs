//! Compacting string and binary *view* columns before a block is stored.
//!
//! A `Utf8View`/`BinaryView` array keeps its long values in shared data buffers, and the kernels
//! that select rows (`take`, `filter`, slicing) hand out new views into the *same* buffers. In
//! memory that sharing is free, but an Arrow IPC writer writes every buffer a column references,
//! whole: the 24 partitions a shuffle cuts from one block would each be written with all of the
//! block's string data, 24 times the bytes, and the store would count them so too. So before a
//! block is stored (kept in the heap store, written to shared memory, spilled or sent), each view
//! column whose buffers are mostly bytes none of its views point at is garbage-collected: its
//! live values are copied into fresh buffers (`gc`), which is one copy of the strings a row
//! selection would have copied anyway with plain `Utf8`.

use std::sync::Arc;

use arrow::array::{Array, ArrayRef, AsArray, RecordBatch};
use arrow::buffer::Buffer;
use arrow::datatypes::DataType;

/// Buffers smaller than this are never worth a copy.
const MIN_WASTE_BYTES: usize = 64 * 1024;

/// `batch` with its wasteful view columns compacted (see the module doc); the same batch,
/// uncopied, when there is nothing to gain.
pub fn compact_views(batch: &RecordBatch) -> RecordBatch {
    let wasteful = |column: &ArrayRef| match column.data_type() {
        DataType::Utf8View => is_wasteful(
            column.as_string_view().views(),
            column.as_string_view().data_buffers(),
        ),
        DataType::BinaryView => is_wasteful(
            column.as_binary_view().views(),
            column.as_binary_view().data_buffers(),
        ),
        _ => false,
    };
    if !batch.columns().iter().any(wasteful) {
        return batch.clone();
    }
    let columns = batch
        .columns()
        .iter()
        .map(|column| {
            if !wasteful(column) {
                return Arc::clone(column);
            }
            match column.data_type() {
                DataType::Utf8View => Arc::new(column.as_string_view().gc()) as ArrayRef,
                _ => Arc::new(column.as_binary_view().gc()) as ArrayRef,
            }
        })
        .collect();
    RecordBatch::try_new_with_options(
        batch.schema(),
        columns,
        &arrow::array::RecordBatchOptions::new().with_row_count(Some(batch.num_rows())),
    )
    .expect("compacting keeps every column's type and length")
}

/// Whether the data buffers hold more than twice the bytes the views use (and enough of them
/// to matter).
fn is_wasteful(views: &[u128], buffers: &[Buffer]) -> bool {
    let held: usize = buffers.iter().map(Buffer::len).sum();
    if held < MIN_WASTE_BYTES {
        return false;
    }
    let used = out_of_line_bytes(views);
    held - used.min(held) >= MIN_WASTE_BYTES && held > 2 * used
}

/// Bytes of the values these views keep in data buffers: a view's low 32 bits are its length,
/// and values of 12 bytes or fewer live inside the view.
fn out_of_line_bytes(views: &[u128]) -> usize {
    views
        .iter()
        .map(|view| *view as u32 as usize)
        .filter(|&len| len > 12)
        .sum()
}

/// Bytes of string and binary *view* values that `data`'s views (and its children's, for
/// nested types) keep in data buffers. Arrow's `get_slice_memory_size` counts a view column's
/// 16-byte views only, none of its strings; the store adds this so that its budget sees them.
/// Like a slice's other buffers, each view counts its own value only, however many views share
/// a buffer.
pub fn view_value_bytes(data: &arrow::array::ArrayData) -> usize {
    let own = match data.data_type() {
        DataType::Utf8View | DataType::BinaryView => {
            let views: &[u128] = data.buffers()[0].typed_data();
            out_of_line_bytes(&views[data.offset()..data.offset() + data.len()])
        }
        _ => 0,
    };
    own + data
        .child_data()
        .iter()
        .map(view_value_bytes)
        .sum::<usize>()
}

#[cfg(test)]
mod tests {
    use arrow::array::{BinaryViewArray, StringViewArray};

    use super::*;

    fn long_strings(rows: usize) -> StringViewArray {
        StringViewArray::from_iter_values(
            (0..rows).map(|i| format!("a string long enough to be out of line #{i}")),
        )
    }

    #[test]
    fn a_small_selection_of_a_large_view_column_is_compacted_to_its_own_values() {
        let all = long_strings(20_000);
        let batch = RecordBatch::try_from_iter([("s", Arc::new(all.clone()) as ArrayRef)]).unwrap();
        let picked = arrow::compute::take_record_batch(
            &batch,
            &arrow::array::UInt32Array::from(vec![5, 17_000, 3]),
        )
        .unwrap();
        let compacted = compact_views(&picked);
        let column = compacted.column(0).as_string_view();
        let expected: Vec<&str> = [5, 17_000, 3].iter().map(|&i| all.value(i)).collect();
        assert_eq!(column.iter().flatten().collect::<Vec<_>>(), expected);
        let held: usize = column.data_buffers().iter().map(Buffer::len).sum();
        assert_eq!(held, expected.iter().map(|s| s.len()).sum::<usize>());
    }

    #[test]
    fn a_column_that_uses_its_buffers_is_left_alone() {
        let batch = RecordBatch::try_from_iter([("s", Arc::new(long_strings(20_000)) as ArrayRef)])
            .unwrap();
        let compacted = compact_views(&batch);
        assert!(Arc::ptr_eq(compacted.column(0), batch.column(0)));
    }

    #[test]
    fn binary_views_are_compacted_too() {
        let all = BinaryViewArray::from_iter_values(
            (0..20_000).map(|i| format!("some bytes that are not inline {i}").into_bytes()),
        );
        let picked = all.slice(10, 2);
        let batch =
            RecordBatch::try_from_iter([("b", Arc::new(picked.clone()) as ArrayRef)]).unwrap();
        let compacted = compact_views(&batch);
        let column = compacted.column(0).as_binary_view();
        assert_eq!(
            column.iter().collect::<Vec<_>>(),
            picked.iter().collect::<Vec<_>>()
        );
        assert!(column.data_buffers().iter().map(Buffer::len).sum::<usize>() < 100);
    }

    #[test]
    fn view_values_are_counted_once_per_view_inline_ones_not_at_all() {
        let all = long_strings(1_000);
        let long: usize = (0..1_000).map(|i| all.value(i).len()).sum();
        assert_eq!(view_value_bytes(&all.to_data()), long);
        // A slice counts its own values; two halves count the whole once.
        let (first, second) = (all.slice(0, 400), all.slice(400, 600));
        assert_eq!(
            view_value_bytes(&first.to_data()) + view_value_bytes(&second.to_data()),
            long
        );
        let short = StringViewArray::from_iter_values(["twelve bytes", "short", ""]);
        assert_eq!(view_value_bytes(&short.to_data()), 0);
        // Inside a list too.
        let list = arrow::array::ListArray::new(
            Arc::new(arrow::datatypes::Field::new_list_field(
                DataType::Utf8View,
                true,
            )),
            arrow::buffer::OffsetBuffer::from_lengths([600, 400]),
            Arc::new(all),
            None,
        );
        assert_eq!(view_value_bytes(&list.to_data()), long);
    }
}
