//! The reduce side of an exchange (see [`crate::exchange`]): a reduce task takes its partition
//! of every map output (or a range of partitions, for a mid-sized exchange; or, for a small
//! exchange, every map output whole) and reduces the rows of each side with a [`Reducer`]:
//! concatenate, shuffle, sort, aggregate or join with DataFusion (one partition, on this
//! thread), merge partial states ([`super::combine`]), or call a registered function once per
//! group of equal keys. Every reducer takes any set of whole partitions: keys of one partition
//! are in no other (hash), and consecutive ranges of a sort stay in order.
//!
//! Blocks of no known schema (see [`is_unknown`]) hold no rows and are skipped; where a
//! side has nothing else, [`Reducer::reduce_sides`] answers what it can without that schema
//! and says why where it cannot.

use std::sync::Arc;

use arrow::array::{RecordBatch, UInt32Array};
use arrow::datatypes::{Schema, SchemaRef};
use datafusion::datasource::MemTable;
use datafusion::logical_expr::{Expr, col};
use datafusion::prelude::{SessionConfig, SessionContext};
use manta_engine::registry::{call_batch, lookup_batch};
use manta_engine::{Block, Object, TaskContext, TaskInput};
use rand::SeedableRng;
use rand::seq::SliceRandom;

use super::combine;
use super::gather;
use super::partition::sort_batches;
use super::{
    JoinKind, ReduceSpec, Reducer, SortKey, check_join_keys, decode, ident, into_block, user_error,
};
use crate::columns::batch_seed;
use crate::thread_runtime::block_on;

pub(crate) fn run_reduce(_: &TaskContext, input: TaskInput) -> manta_engine::Result<Object> {
    let spec: ReduceSpec = decode(&input.args, "a reduce task")?;
    let label = match &spec.partitions {
        Some(p) if p.len() == 1 => format!("partition {} (stage {})", p.start, spec.stage),
        Some(p) => format!("partitions {p:?} (stage {})", spec.stage),
        None => format!("all partitions (stage {})", spec.stage),
    };
    // Each map output arrives as one input per partition read (a range: all of them, one
    // map output after another).
    let per_output = spec.partitions.as_ref().map_or(1, |p| p.len());
    let mut objects = input.objects.into_iter();
    let mut schemas = Vec::new();
    let mut sides = Vec::new();
    for (side_index, &count) in spec.sides.iter().enumerate() {
        let mut side = Vec::new();
        let mut schema = None;
        // Each input arrives as one partition alone (the task's `input_batches`). Blocks of no
        // known schema hold no rows and are skipped; the others all carry the side's schema.
        for object in objects.by_ref().take(count * per_output) {
            let block = into_block(object)?;
            if is_unknown(&block) {
                continue;
            }
            schema = Some(match schema {
                None => Arc::clone(block.schema()),
                // Blocks of a side may differ in nullability (a column null in some blocks
                // only): the side's schema is nullable wherever any block's is.
                Some(so_far) if &so_far == block.schema() => so_far,
                Some(so_far) => {
                    crate::columns::unify(&[Arc::clone(&so_far), Arc::clone(block.schema())])
                        .unwrap_or(so_far)
                }
            });
            side.extend(block.batches().iter().filter(|b| b.num_rows() > 0).cloned());
        }
        if schema.is_none()
            && let Some(Some(bytes)) = spec.side_schemas.get(side_index)
        {
            schema = Some(crate::source::decode_schema(bytes).map_err(|e| {
                manta_engine::Error::Internal(format!("a reduce task's schema: {e}"))
            })?);
        }
        schemas.push(schema.unwrap_or_else(|| Arc::new(Schema::empty())));
        sides.push(side);
    }
    let name = spec.reducer.name();
    let out = spec
        .reducer
        .reduce_sides(&schemas, sides)
        .map_err(|e| match e {
            ReduceError::User(e) => e,
            ReduceError::DataFusion(e) => user_error(&name, label.clone(), e),
        })?;
    Ok(Object::Block(Block::try_new(out.schema(), vec![out])?))
}

/// Why a reduce failed.
#[derive(Debug, thiserror::Error)]
pub enum ReduceError {
    /// DataFusion or Arrow failed.
    #[error(transparent)]
    DataFusion(#[from] datafusion::error::DataFusionError),
    /// A user function failed.
    #[error(transparent)]
    User(manta_engine::Error),
}

impl From<arrow::error::ArrowError> for ReduceError {
    fn from(e: arrow::error::ArrowError) -> Self {
        ReduceError::DataFusion(e.into())
    }
}

impl Reducer {
    fn name(&self) -> String {
        match self {
            Reducer::Concat => "repartition".into(),
            Reducer::Shuffle { .. } => "random_shuffle".into(),
            Reducer::Sort { .. } => "sort".into(),
            Reducer::Aggregate { .. } => "aggregate".into(),
            Reducer::MapGroups { function, .. } => function.clone(),
            Reducer::Join { .. } => "join".into(),
        }
    }

    /// Reduces the batches of each side (their schemas given, for empty sides) into one batch.
    pub fn reduce_sides(
        &self,
        schemas: &[SchemaRef],
        mut sides: Vec<Vec<RecordBatch>>,
    ) -> Result<RecordBatch, ReduceError> {
        if schemas.iter().any(|s| s.fields().is_empty()) {
            return self.reduce_unknown(schemas, sides);
        }
        let schema = Arc::clone(&schemas[0]);
        if let Reducer::Aggregate { keys, aggregates } = self
            && combine::is_partial(&schema)
        {
            return Ok(combine::finish(
                &schema,
                sides.swap_remove(0),
                keys,
                aggregates,
            )?);
        }
        // The left side's batches: put together into one batch by most reducers; shuffled or
        // sorted by a gather, a column at a time (see [`super::gather`]).
        let left = std::mem::take(&mut sides[0]);
        match self {
            Reducer::Concat => Ok(crate::columns::concat(&schema, &left)?),
            Reducer::Shuffle { seed } => {
                let rows = left.iter().map(RecordBatch::num_rows).sum::<usize>();
                let mut order: Vec<u32> = (0..rows as u32).collect();
                order.shuffle(&mut rand::rngs::StdRng::seed_from_u64(batch_seed(
                    *seed,
                    rows as u64,
                    1,
                )));
                Ok(gather::gather(&schema, left, &UInt32Array::from(order))?)
            }
            Reducer::Sort { keys } => Ok(sort_batches(&schema, left, keys)?),
            Reducer::Aggregate { keys, aggregates } => {
                let rows = crate::columns::concat(&schema, &left)?;
                let ctx = single_partition_session();
                let aggregates = aggregates.iter().map(|a| a.expr(&schema)).collect();
                let frame =
                    ctx.read_table(Arc::new(MemTable::try_new(schema, vec![vec![rows]])?))?;
                let groups = keys.iter().map(|k| col(ident(k))).collect();
                let frame = frame.aggregate(groups, aggregates)?;
                collect(frame)
            }
            Reducer::MapGroups { keys, function } => {
                let f = lookup_batch(function).map_err(ReduceError::User)?;
                let sorted = sort_batches(
                    &schema,
                    left,
                    &keys.iter().map(|k| SortKey::asc(k)).collect::<Vec<_>>(),
                )?;
                let columns = keys
                    .iter()
                    .map(|k| Ok(Arc::clone(sorted.column(sorted.schema().index_of(k)?))))
                    .collect::<Result<Vec<_>, arrow::error::ArrowError>>()?;
                let ranges = arrow::compute::partition(&columns)?.ranges();
                let mut out: Vec<RecordBatch> = Vec::new();
                let sorted = crate::columns::string_views(sorted)?;
                for range in ranges {
                    let group = sorted.slice(range.start, range.end - range.start);
                    let result = call_batch(function, f, group, || {
                        format!("a group of {} rows", range.end - range.start)
                    })
                    .map_err(ReduceError::User)?;
                    out.push(result);
                }
                // The function runs once per group and never on no rows: a partition without
                // a group makes a block of no known schema, which every consumer skips.
                match out.first() {
                    Some(first) => Ok(crate::columns::concat(first.schema_ref(), &out)?),
                    None => Ok(RecordBatch::new_empty(Arc::new(Schema::empty()))),
                }
            }
            Reducer::Join {
                left_on,
                right_on,
                how,
            } => {
                let right_schema = Arc::clone(&schemas[1]);
                let rows = crate::columns::concat(&schema, &left)?;
                let right_rows = crate::columns::concat(&right_schema, &sides.swap_remove(1))?;
                join(rows, right_rows, left_on, right_on, *how)
            }
        }
    }
}

impl Reducer {
    /// A reduce where a side has no known schema, so no rows (see [`is_unknown`]): what
    /// the answer is, where it can be told without that schema, or an error saying why not.
    fn reduce_unknown(
        &self,
        schemas: &[SchemaRef],
        sides: Vec<Vec<RecordBatch>>,
    ) -> Result<RecordBatch, ReduceError> {
        let unknown = |side: usize| schemas[side].fields().is_empty();
        let has_rows = |side: usize| sides[side].iter().any(|b| b.num_rows() > 0);
        let nothing = || Ok(RecordBatch::new_empty(Arc::new(Schema::empty())));
        let cannot = |what: String| {
            Err(ReduceError::DataFusion(
                datafusion::error::DataFusionError::Plan(format!(
                    "{what}: its input has no rows and no known schema (a map_groups that found \
                     no group never calls its function, which alone knows its columns)"
                )),
            ))
        };
        match self {
            Reducer::Aggregate { keys, .. } if keys.is_empty() => {
                cannot("an aggregate of the whole dataset answers one row, of columns".into())
            }
            Reducer::Join { how, .. } => {
                let (left, right) = (unknown(0), unknown(1));
                let keeps_left = matches!(how, JoinKind::Left | JoinKind::Full);
                let keeps_right = matches!(how, JoinKind::Right | JoinKind::Full);
                if (right && keeps_left && has_rows(0)) || (left && keeps_right && has_rows(1)) {
                    return cannot(format!(
                        "a {how:?} join keeps the rows of one side with the other's columns"
                    ));
                }
                match how {
                    // No match possible: no left row, or every left row.
                    JoinKind::Semi if !left => Ok(RecordBatch::new_empty(Arc::clone(&schemas[0]))),
                    JoinKind::Anti if !left => Ok(crate::columns::concat(&schemas[0], &sides[0])?),
                    _ => nothing(),
                }
            }
            _ => nothing(),
        }
    }
}

fn single_partition_session() -> SessionContext {
    SessionContext::new_with_config(SessionConfig::new().with_target_partitions(1))
}

/// Runs a DataFusion plan to one batch, on this thread.
fn collect(frame: datafusion::dataframe::DataFrame) -> Result<RecordBatch, ReduceError> {
    let schema: SchemaRef = Arc::new(frame.schema().as_arrow().clone());
    let batches = block_on(frame.collect())?;
    Ok(crate::columns::concat(&schema, &batches)?)
}

/// Joins two partitions with DataFusion. Key columns of the same name appear once (for a full
/// join, the value of whichever side has one); other clashing right columns get `_right`.
fn join(
    left: RecordBatch,
    right: RecordBatch,
    left_on: &[String],
    right_on: &[String],
    how: JoinKind,
) -> Result<RecordBatch, ReduceError> {
    let left_schema = left.schema();
    let right_schema = right.schema();
    // Checked here too: the plan could not when a user function made a side.
    for (l, r) in left_on.iter().zip(right_on) {
        let lt = left_schema.field_with_name(l)?.data_type();
        let rt = right_schema.field_with_name(r)?.data_type();
        check_join_keys(l, lt, r, rt)
            .map_err(|e| ReduceError::DataFusion(datafusion::error::DataFusionError::Plan(e)))?;
    }
    let ctx = single_partition_session();
    let l = ctx
        .read_table(Arc::new(MemTable::try_new(
            Arc::clone(&left_schema),
            vec![vec![left]],
        )?))?
        .alias("l")?;
    let r = ctx
        .read_table(Arc::new(MemTable::try_new(
            Arc::clone(&right_schema),
            vec![vec![right]],
        )?))?
        .alias("r")?;
    let lk: Vec<&str> = left_on.iter().map(String::as_str).collect();
    let rk: Vec<&str> = right_on.iter().map(String::as_str).collect();
    let qualified = |side: &str, name: &str| col(datafusion::common::Column::new(Some(side), name));
    // Join on qualified keys so names may be shared.
    let on: Vec<Expr> = lk
        .iter()
        .zip(&rk)
        .map(|(a, b)| qualified("l", a).eq(qualified("r", b)))
        .collect();
    let joined = l.join_on(r, how.datafusion(), on)?;
    let mut select: Vec<Expr> = Vec::new();
    let shared_key = |name: &str| lk.iter().zip(&rk).any(|(a, b)| a == b && *a == name);
    for field in left_schema.fields() {
        let name = field.name();
        let value = if shared_key(name) {
            match how {
                JoinKind::Right => qualified("r", name),
                JoinKind::Full => datafusion::functions::expr_fn::coalesce(vec![
                    qualified("l", name),
                    qualified("r", name),
                ]),
                _ => qualified("l", name),
            }
        } else {
            qualified("l", name)
        };
        select.push(value.alias(name));
    }
    if !matches!(how, JoinKind::Semi | JoinKind::Anti) {
        for field in right_schema.fields() {
            let name = field.name();
            if shared_key(name) {
                continue;
            }
            let alias = if left_schema.index_of(name).is_ok() {
                format!("{name}_right")
            } else {
                name.clone()
            };
            select.push(qualified("r", name).alias(alias));
        }
    }
    collect(joined.select(select)?)
}

/// Whether a block has no rows and no columns: a block whose schema nobody could tell (a
/// `map_groups` reducer that got no group, and so never called the function that makes it).
/// Every consumer skips such blocks; any block with a schema is taken as it is, rows or not.
pub(crate) fn is_unknown(block: &Block) -> bool {
    block.num_rows() == 0 && block.schema().fields().is_empty()
}
