//! The map side of an exchange (see [`crate::exchange`]): a partition task splits one block
//! into exactly `n` batches, batch *i* holding the rows of partition *i*, by a
//! [`Partitioner`]: at random (seeded by the seed, the block and the batch), by a hash of the
//! key columns (strings hashed as their key type, so `Utf8` and views of equal keys meet), or
//! by the range of the sort keys between sampled boundaries. Rows are counted per partition,
//! sorted by partition with one gather, a column at a time ([`super::gather`]: each column of
//! the input let go of once gathered), and the batches are zero-copy slices of that. An aggregation first combines the block into partial states
//! ([`super::combine`]).
//!
//! A sort's boundaries come from sample tasks (a few rows of each block's keys) or a sampling
//! first pass; [`boundaries`] picks `n - 1` evenly spaced rows of the sorted samples.

use std::sync::Arc;

use arrow::array::{ArrayRef, RecordBatch, UInt32Array};
use arrow::compute::{SortColumn, lexsort_to_indices, take_record_batch};
use arrow::datatypes::{Schema, SchemaRef};
use arrow::row::{RowConverter, SortField};
use manta_engine::{Block, Object, TaskContext, TaskInput};
use rand::{Rng, SeedableRng};

use super::{
    PartitionSpec, Partitioner, SAMPLES_PER_BLOCK, SortKey, decode, into_block, single_batch,
    user_error,
};
use super::{combine, gather};
use crate::columns::batch_seed;
use crate::error::Result;
pub use crate::ipc::write_ipc;

pub(crate) fn run_partition(_: &TaskContext, input: TaskInput) -> manta_engine::Result<Object> {
    let spec: PartitionSpec = decode(&input.args, "a partition task")?;
    let mut objects = input.objects.into_iter();
    let block = into_block(objects.next().ok_or_else(|| {
        manta_engine::Error::Internal("a partition task needs its block".into())
    })?)?;
    let label = format!("block {} ({:?})", spec.block, spec.partitioner);
    let schema = Arc::clone(block.schema());
    Ok(Object::Block(partition_batches(
        &schema,
        block.into_batches(),
        &spec,
        &label,
    )?))
}

/// The map side of an exchange on one block's rows (`batches` of `schema`): combined first if
/// the spec says so (over the batches as they are: an aggregate needs no single batch), then
/// split into exactly `spec.n` batches, batch *i* holding partition *i*, the rows gathered a
/// column at a time (see [`super::gather`]). Run
/// by partition tasks, and by the last stage of an input pipeline fused with the exchange's
/// map side.
pub fn partition_batches(
    schema: &SchemaRef,
    batches: Vec<RecordBatch>,
    spec: &PartitionSpec,
    label: &str,
) -> manta_engine::Result<Block> {
    let label = label.to_string();
    let n = spec.n.max(1);
    if schema.fields().is_empty() && batches.iter().all(|b| b.num_rows() == 0) {
        // Rows of a schema nobody knows (see [`super::reduce::is_unknown`]): none, in every partition.
        return Block::try_new(
            Arc::clone(schema),
            vec![RecordBatch::new_empty(Arc::clone(schema)); n],
        );
    }
    let batches = match &spec.combine {
        Some((keys, aggregates)) => vec![
            combine::partial(schema, batches, keys, aggregates)
                .map_err(|e| user_error("aggregate", label.clone(), e))?,
        ],
        None => batches,
    };
    let schema = match batches.first() {
        Some(first) if spec.combine.is_some() => first.schema(),
        _ => Arc::clone(schema),
    };
    // Checked before the keys are read, so that batches of other columns are named as such.
    crate::columns::check_columns(&schema, &batches)?;
    let rows: usize = batches.iter().map(RecordBatch::num_rows).sum();
    let assignment: Vec<u32> = match &spec.partitioner {
        Partitioner::Random { seed } => {
            let mut rng = rand::rngs::StdRng::seed_from_u64(batch_seed(*seed, spec.block, 0));
            (0..rows).map(|_| rng.random_range(0..n as u32)).collect()
        }
        Partitioner::Hash { keys } => hash_partitions(&batches, keys, n)
            .map_err(|e| user_error("partition by hash", label.clone(), e))?,
        Partitioner::Range { keys, boundaries } => range_partitions(&batches, keys, boundaries)
            .map_err(|e| user_error("partition by range", label.clone(), e))?,
    };
    // Counting sort of row positions by partition, one gather, then zero-copy slices.
    let mut counts = vec![0usize; n];
    for &p in &assignment {
        counts[p as usize] += 1;
    }
    let mut starts = vec![0usize; n];
    for p in 1..n {
        starts[p] = starts[p - 1] + counts[p - 1];
    }
    let mut next = starts.clone();
    let mut order = vec![0u32; rows];
    for (row, &p) in assignment.iter().enumerate() {
        order[next[p as usize]] = row as u32;
        next[p as usize] += 1;
    }
    drop(assignment);
    let sorted = gather::gather(&schema, batches, &UInt32Array::from(order))?;
    let batches = (0..n).map(|p| sorted.slice(starts[p], counts[p])).collect();
    Block::try_new(schema, batches)
}

/// The partition of each row by key hash.
fn hash_partitions(
    batches: &[RecordBatch],
    keys: &[String],
    n: usize,
) -> Result<Vec<u32>, datafusion::error::DataFusionError> {
    let state = datafusion::common::hash_utils::RandomState::with_seed(0x006d_616e_7461);
    let mut partitions = Vec::with_capacity(batches.iter().map(RecordBatch::num_rows).sum());
    let mut hashes = Vec::new();
    for batch in batches {
        // Keys as their key type: a string key hashes alike as Utf8 or as a view.
        let columns: Vec<ArrayRef> = keys
            .iter()
            .map(|k| crate::columns::key_column(batch.column(batch.schema().index_of(k)?)))
            .collect::<Result<_, arrow::error::ArrowError>>()?;
        hashes.clear();
        hashes.resize(batch.num_rows(), 0u64);
        if !columns.is_empty() {
            datafusion::common::hash_utils::create_hashes(&columns, &state, &mut hashes)?;
        }
        partitions.extend(hashes.iter().map(|h| (h % n as u64) as u32));
    }
    Ok(partitions)
}

pub(crate) fn sort_fields(
    keys: &[SortKey],
    schema: &Schema,
) -> Result<Vec<SortField>, arrow::error::ArrowError> {
    keys.iter()
        .map(|k| {
            let field = schema.field_with_name(&k.column)?;
            Ok(SortField::new_with_options(
                field.data_type().clone(),
                k.options(),
            ))
        })
        .collect()
}

fn key_columns(
    batch: &RecordBatch,
    keys: &[SortKey],
) -> Result<Vec<ArrayRef>, arrow::error::ArrowError> {
    keys.iter()
        .map(|k| {
            Ok(Arc::clone(
                batch.column(batch.schema().index_of(&k.column)?),
            ))
        })
        .collect()
}

/// The partition of each row: how many boundaries sort before it.
fn range_partitions(
    batches: &[RecordBatch],
    keys: &[SortKey],
    boundaries: &[u8],
) -> Result<Vec<u32>, arrow::error::ArrowError> {
    let Some(first) = batches.first() else {
        return Ok(Vec::new());
    };
    let converter = RowConverter::new(sort_fields(keys, first.schema_ref())?)?;
    let bounds = read_ipc(boundaries)?;
    let bound_rows = match &bounds {
        Some(b) => converter.convert_columns(&key_columns(b, keys)?)?,
        None => converter.empty_rows(0, 0),
    };
    let bounds: Vec<_> = bound_rows.iter().collect();
    let mut partitions = Vec::with_capacity(batches.iter().map(RecordBatch::num_rows).sum());
    for batch in batches {
        let rows = converter.convert_columns(&key_columns(batch, keys)?)?;
        partitions.extend(
            rows.iter()
                .map(|row| bounds.partition_point(|b| *b < row) as u32),
        );
    }
    Ok(partitions)
}

fn read_ipc(bytes: &[u8]) -> Result<Option<RecordBatch>, arrow::error::ArrowError> {
    if bytes.is_empty() {
        return Ok(None);
    }
    let reader = arrow::ipc::reader::StreamReader::try_new(std::io::Cursor::new(bytes), None)?;
    let schema = reader.schema();
    let batches = reader.collect::<Result<Vec<_>, _>>()?;
    Ok(Some(crate::columns::concat(&schema, &batches)?))
}

pub(crate) fn run_sample(_: &TaskContext, input: TaskInput) -> manta_engine::Result<Object> {
    let keys: Vec<SortKey> = decode(&input.args, "a sample task")?;
    let block =
        into_block(input.objects.into_iter().next().ok_or_else(|| {
            manta_engine::Error::Internal("a sample task needs its block".into())
        })?)?;
    if super::reduce::is_unknown(&block) {
        // No rows: no samples.
        return Ok(Object::Block(block));
    }
    let batch = single_batch(&block)?;
    let rows = batch.num_rows();
    let picks: Vec<u32> = (0..SAMPLES_PER_BLOCK.min(rows))
        .map(|i| (i * rows / SAMPLES_PER_BLOCK.min(rows)) as u32)
        .collect();
    let keys_only = batch.project(
        &keys
            .iter()
            .map(|k| batch.schema().index_of(&k.column))
            .collect::<Result<Vec<_>, _>>()?,
    )?;
    Ok(Object::Block(Block::from_batch(take_record_batch(
        &keys_only,
        &UInt32Array::from(picks),
    )?)))
}

/// Picks `n - 1` boundaries from the sampled key rows, as an IPC stream (empty if `n` is 1 or
/// there are no samples).
pub fn boundaries(samples: &[RecordBatch], keys: &[SortKey], n: usize) -> Result<Vec<u8>> {
    // Samples of blocks with no known schema have no rows and no columns.
    let samples: Vec<RecordBatch> = samples
        .iter()
        .filter(|b| b.num_rows() > 0 && b.num_columns() > 0)
        .cloned()
        .collect();
    let Some(first) = samples.first() else {
        return Ok(Vec::new());
    };
    let all = crate::columns::concat(first.schema_ref(), &samples)?;
    if n <= 1 || all.num_rows() == 0 {
        return Ok(Vec::new());
    }
    let sorted = sort_batch(&all, keys)?;
    let picks: Vec<u32> = (1..n)
        .map(|i| ((i * sorted.num_rows()) / n).min(sorted.num_rows() - 1) as u32)
        .collect();
    Ok(write_ipc(&take_record_batch(
        &sorted,
        &UInt32Array::from(picks),
    )?)?)
}

/// Sorts a batch by the keys (see [`sort_indices`]).
pub(crate) fn sort_batch(
    batch: &RecordBatch,
    keys: &[SortKey],
) -> Result<RecordBatch, arrow::error::ArrowError> {
    let indices = sort_indices(&key_columns(batch, keys)?, keys, batch.schema_ref())?;
    take_record_batch(batch, &indices)
}

/// The rows of `batches` (of `schema`) sorted by the keys, as one batch: the key columns are
/// put together to be sorted, and the rows gathered in that order a column at a time (see
/// [`super::gather`]).
pub(crate) fn sort_batches(
    schema: &SchemaRef,
    batches: Vec<RecordBatch>,
    keys: &[SortKey],
) -> Result<RecordBatch, arrow::error::ArrowError> {
    crate::columns::check_columns(schema, &batches)?;
    if batches.is_empty() || keys.is_empty() {
        // No rows, or no order to put them in.
        let rows = batches.iter().map(RecordBatch::num_rows).sum::<usize>() as u32;
        return gather::gather(schema, batches, &UInt32Array::from_iter_values(0..rows));
    }
    let mut key_arrays: Vec<Vec<ArrayRef>> = vec![Vec::with_capacity(batches.len()); keys.len()];
    for batch in &batches {
        for (k, column) in key_columns(batch, keys)?.into_iter().enumerate() {
            key_arrays[k].push(column);
        }
    }
    let columns = key_arrays
        .iter()
        .map(|arrays| match arrays.as_slice() {
            [one] => Ok(Arc::clone(one)),
            many => arrow::compute::concat(&many.iter().map(|a| a.as_ref()).collect::<Vec<_>>()),
        })
        .collect::<Result<Vec<_>, _>>()?;
    let indices = sort_indices(&columns, keys, schema)?;
    drop(columns);
    gather::gather(schema, batches, &indices)
}

/// The order of rows that sorts `columns` (the key columns of `schema`'s rows) by the keys: by
/// lexicographic sort for one primitive key, else by comparing rows in Arrow's row format (one
/// byte comparison per pair, any key types).
fn sort_indices(
    columns: &[ArrayRef],
    keys: &[SortKey],
    schema: &Schema,
) -> Result<UInt32Array, arrow::error::ArrowError> {
    if let ([column], [key]) = (columns, keys)
        && column.data_type().is_primitive()
    {
        return lexsort_to_indices(
            &[SortColumn {
                values: Arc::clone(column),
                options: Some(key.options()),
            }],
            None,
        );
    }
    let converter = RowConverter::new(sort_fields(keys, schema)?)?;
    let rows = converter.convert_columns(columns)?;
    let mut order: Vec<u32> = (0..rows.num_rows() as u32).collect();
    order.sort_by(|a, b| rows.row(*a as usize).cmp(&rows.row(*b as usize)));
    Ok(UInt32Array::from(order))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::exchange::partition_args;
    use arrow::array::{Int64Array, StringArray};

    fn people() -> RecordBatch {
        RecordBatch::try_from_iter([
            (
                "id",
                Arc::new(Int64Array::from(vec![3, 1, 2, 1, 5])) as ArrayRef,
            ),
            (
                "name",
                Arc::new(StringArray::from(vec![
                    Some("c"),
                    Some("a"),
                    None,
                    Some("á"),
                    Some("e"),
                ])) as ArrayRef,
            ),
        ])
        .unwrap()
    }

    fn partition(spec: PartitionSpec, batch: RecordBatch) -> Block {
        let ctx = TaskContext::new(manta_engine::NodeId::random());
        let out = run_partition(
            &ctx,
            TaskInput {
                args: partition_args(&spec).unwrap(),
                objects: vec![Object::Block(Block::from_batch(batch))],
            },
        )
        .unwrap();
        into_block(out).unwrap()
    }

    #[test]
    fn hash_partitions_keep_equal_keys_together_and_every_row_once() {
        let spec = PartitionSpec {
            partitioner: Partitioner::Hash {
                keys: vec!["id".into()],
            },
            n: 3,
            block: 0,
            combine: None,
        };
        let block = partition(spec, people());
        assert_eq!(block.batches().len(), 3);
        assert_eq!(block.num_rows(), 5);
        let holding_one: Vec<usize> = block
            .batches()
            .iter()
            .enumerate()
            .filter(|(_, b)| {
                let ids = b.column(0).as_any().downcast_ref::<Int64Array>().unwrap();
                ids.values().contains(&1)
            })
            .map(|(i, _)| i)
            .collect();
        assert_eq!(holding_one.len(), 1, "both rows with id 1 in one partition");
    }

    #[test]
    fn range_partitions_are_ordered_by_the_boundaries() {
        let keys = vec![SortKey::desc("id")];
        let sample = people().project(&[0]).unwrap();
        let bounds = boundaries(&[sample], &keys, 2).unwrap();
        let block = partition(
            PartitionSpec {
                partitioner: Partitioner::Range {
                    keys: keys.clone(),
                    boundaries: bounds,
                },
                n: 2,
                block: 0,
                combine: None,
            },
            people(),
        );
        let ids = |b: &RecordBatch| -> Vec<i64> {
            b.column(0)
                .as_any()
                .downcast_ref::<Int64Array>()
                .unwrap()
                .values()
                .to_vec()
        };
        let (first, second) = (ids(&block.batches()[0]), ids(&block.batches()[1]));
        assert_eq!(first.len() + second.len(), 5);
        assert!(
            first.iter().min() >= second.iter().max(),
            "{first:?} then {second:?}"
        );
    }

    fn people_batches(batches: &[Vec<(Option<i64>, Option<String>)>]) -> Vec<RecordBatch> {
        batches
            .iter()
            .map(|rows| {
                RecordBatch::try_new(
                    nullable_people(),
                    vec![
                        Arc::new(Int64Array::from_iter(rows.iter().map(|r| r.0))),
                        Arc::new(StringArray::from_iter(rows.iter().map(|r| r.1.clone()))),
                    ],
                )
                .unwrap()
            })
            .collect()
    }

    fn nullable_people() -> SchemaRef {
        Arc::new(Schema::new(vec![
            arrow::datatypes::Field::new("id", arrow::datatypes::DataType::Int64, true),
            arrow::datatypes::Field::new("name", arrow::datatypes::DataType::Utf8, true),
        ]))
    }

    fn some_people()
    -> impl proptest::strategy::Strategy<Value = Vec<Vec<(Option<i64>, Option<String>)>>> {
        proptest::collection::vec(
            proptest::collection::vec(
                (
                    proptest::option::of(0i64..4),
                    proptest::option::of("[aé😀]{0,3}"),
                ),
                0..12,
            ),
            0..4,
        )
    }

    proptest::proptest! {
        /// A block of several batches is partitioned as their concatenation is, by every
        /// partitioner, into any number of partitions.
        #[test]
        fn partitioning_batches_is_partitioning_their_concatenation(
            batches in some_people(),
            partitioner in 0..3usize,
            n in 1..5usize,
        ) {
            let schema = nullable_people();
            let batches = people_batches(&batches);
            let whole = crate::columns::concat(&schema, &batches).unwrap();
            let keys = vec![SortKey::asc("id"), SortKey::desc("name")];
            let partitioner = match partitioner {
                0 => Partitioner::Random { seed: 7 },
                1 => Partitioner::Hash { keys: vec!["name".into()] },
                _ => Partitioner::Range {
                    boundaries: boundaries(std::slice::from_ref(&whole), &keys, n).unwrap(),
                    keys,
                },
            };
            let spec = PartitionSpec { partitioner, n, block: 3, combine: None };
            let expected = partition_batches(&schema, vec![whole], &spec, "test").unwrap();
            let partitioned = partition_batches(&schema, batches, &spec, "test").unwrap();
            proptest::prop_assert_eq!(partitioned.batches(), expected.batches());
        }

        /// Sorting batches as they are is sorting their concatenation, by one primitive key
        /// (lexicographic sort) or by several of any type (row format), with nulls, ties,
        /// unicode and empty batches.
        #[test]
        fn sorting_batches_is_sorting_their_concatenation(
            batches in some_people(),
            descending: bool,
            by_name_too: bool,
        ) {
            let schema = nullable_people();
            let batches = people_batches(&batches);
            let mut keys = vec![if descending { SortKey::desc("id") } else { SortKey::asc("id") }];
            if by_name_too {
                keys.push(SortKey::desc("name"));
            }
            let expected = sort_batch(&crate::columns::concat(&schema, &batches).unwrap(), &keys).unwrap();
            let sorted = sort_batches(&schema, batches, &keys).unwrap();
            proptest::prop_assert_eq!(sorted, expected);
        }
    }
}
