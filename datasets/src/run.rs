//! Running plans: barriers (limits, all-to-all exchanges) first, then the streaming executor.
//!
//! A plan whose input is a read or blocks in the store streams through [`crate::executor`]. A
//! plan whose input is a limit or an exchange is *resolved* first: the driver runs the inputs,
//! runs the exchange's map side (see [`crate::exchange`] for the map/reduce scheme), and
//! replaces the input with the exchange's reduce tasks (or, for a limit, a union, a zip, the
//! resulting blocks), so every plan that reaches the executor starts from a read, from blocks,
//! or from reduce tasks that run as its first stage. Figures of every round of tasks go into the
//! dataset's stats.

use std::time::Instant;

use arrow::array::RecordBatch;
use arrow::datatypes::SchemaRef;
use futures::StreamExt;
use manta_engine::{ObjectRef, Resources, TaskOutcome, TaskSpec};
use tokio::sync::mpsc;

use crate::context::Context;
use crate::error::Result;
use crate::exchange::combine;
use crate::exchange::{
    self, Exchange, PARTITION_FUNCTION, PartitionSpec, REDUCE_FUNCTION, ReduceSpec,
    SAMPLE_FUNCTION, SLICE_FUNCTION, ZIP_FUNCTION,
};
use crate::executor::{BlockOut, Limits, execute};
use crate::plan::{LogicalPlan, PlanInput, Sink};
use crate::stats::{DatasetStats, StageStats};

/// Replaces a limit or exchange input by the blocks it makes; other plans come back as they are.
pub fn resolve(
    ctx: &Context,
    plan: &LogicalPlan,
    stats: &mut Vec<StageStats>,
) -> Result<LogicalPlan> {
    let (resolved, schema) = match &plan.input {
        PlanInput::Read { .. } | PlanInput::Blocks { .. } | PlanInput::Tasks { .. } => {
            return Ok(plan.clone());
        }
        PlanInput::Limit { input, n } => {
            let (blocks, schema) = run_limit(ctx, input, *n, stats)?;
            (Resolved::Blocks(blocks), schema)
        }
        PlanInput::Exchange(exchange) => run_exchange(ctx, exchange, stats)?,
    };
    let input = match resolved {
        Resolved::Blocks(blocks) => PlanInput::Blocks {
            blocks: std::sync::Arc::new(blocks),
            schema,
        },
        Resolved::Reduce {
            name,
            tasks,
            rows_in,
        } => PlanInput::Tasks {
            name,
            tasks: std::sync::Arc::new(tasks),
            rows_in,
            schema,
        },
    };
    Ok(LogicalPlan {
        input,
        ops: plan.ops.clone(),
    })
}

/// What a limit or an exchange leaves for the rest of the plan to start from.
enum Resolved {
    /// Blocks in the store.
    Blocks(Vec<ObjectRef>),
    /// An exchange's reduce tasks, not yet run: they stream as the next run's first stage.
    Reduce {
        name: String,
        tasks: Vec<TaskSpec>,
        rows_in: u64,
    },
}

/// Starts the streaming executor on a resolved plan.
pub fn start(
    ctx: &Context,
    plan: &LogicalPlan,
    sink: Sink,
) -> Result<(
    mpsc::Receiver<BlockOut>,
    tokio::task::JoinHandle<Result<DatasetStats>>,
)> {
    launch(ctx, plan, sink, limits(ctx)?)
}

/// Starts the streaming executor on a resolved plan, with `limits`.
fn launch(
    ctx: &Context,
    plan: &LogicalPlan,
    sink: Sink,
    limits: Limits,
) -> Result<(
    mpsc::Receiver<BlockOut>,
    tokio::task::JoinHandle<Result<DatasetStats>>,
)> {
    let physical = plan.compile(sink)?;
    let client = ctx.client().clone();
    let (tx, rx) = mpsc::channel(limits.max_buffered);
    let handle = ctx.spawn(execute(client, physical, tx, limits, true));
    Ok((rx, handle))
}

fn limits(ctx: &Context) -> Result<Limits> {
    let cpus = ctx.block_on(ctx.client().total_cpus())?;
    Ok(Limits::for_cpus(cpus))
}

/// Waits for the executor.
pub fn join(
    ctx: &Context,
    handle: tokio::task::JoinHandle<Result<DatasetStats>>,
) -> Result<DatasetStats> {
    ctx.block_on(handle).map_err(|e| {
        crate::Error::Execution(manta_scheduler::Error::Internal(format!(
            "the executor failed: {e}"
        )))
    })?
}

/// Runs a plan to blocks in the store, in block order, and the schema where known.
pub fn run_to_blocks(
    ctx: &Context,
    plan: &LogicalPlan,
    stats: &mut Vec<StageStats>,
) -> Result<(Vec<ObjectRef>, Option<SchemaRef>)> {
    let plan = resolve(ctx, plan, stats)?;
    let blocks = collect_blocks(ctx, &plan, Sink::Driver, stats)?;
    Ok((blocks, plan.schema()))
}

/// Runs a resolved plan into `sink`, returning its output blocks in block order.
fn collect_blocks(
    ctx: &Context,
    plan: &LogicalPlan,
    sink: Sink,
    stats: &mut Vec<StageStats>,
) -> Result<Vec<ObjectRef>> {
    // Every block is kept until the end: waiting for room in the store would free nothing.
    let limits = Limits {
        wait_for_store: false,
        ..limits(ctx)?
    };
    let (mut rx, handle) = launch(ctx, plan, sink, limits)?;
    let mut out = Vec::new();
    while let Some(block) = ctx.block_on(rx.recv()) {
        out.push(block);
    }
    let run = join(ctx, handle)?;
    stats.extend(run.stages);
    out.sort_by_key(|b| b.index);
    Ok(out.into_iter().map(|b| b.block).collect())
}

fn run_limit(
    ctx: &Context,
    input: &LogicalPlan,
    n: u64,
    stats: &mut Vec<StageStats>,
) -> Result<(Vec<ObjectRef>, Option<SchemaRef>)> {
    let plan = resolve(ctx, input, stats)?;
    let (mut rx, handle) = start(ctx, &plan, Sink::Driver)?;
    // The first n rows in block order: blocks arrive as they finish, and the run stops once
    // the blocks 0, 1, 2, ... that have all arrived hold n rows.
    let mut arrived: std::collections::BTreeMap<u64, BlockOut> = Default::default();
    let (mut next, mut rows, mut all_in) = (0u64, 0u64, false);
    while rows < n {
        let Some(block) = ctx.block_on(rx.recv()) else {
            all_in = true;
            break;
        };
        arrived.insert(block.index, block);
        while rows < n
            && let Some(block) = arrived.get(&next)
        {
            rows += block.block.meta().num_rows;
            next += 1;
        }
    }
    drop(rx);
    let run = join(ctx, handle)?;
    stats.extend(run.stages);
    // Blocks past a full prefix are not needed; with every block in, all are kept.
    let kept: Vec<BlockOut> = arrived
        .into_values()
        .filter(|b| all_in || b.index < next)
        .collect();
    let mut blocks = Vec::new();
    let mut left = n;
    for out in kept {
        let rows = out.block.meta().num_rows;
        if left == 0 {
            break;
        }
        if rows <= left {
            left -= rows;
            blocks.push(out.block);
        } else {
            let mut stage = StageStats::new("Limit");
            let outcome = run_tasks(
                ctx,
                vec![task(
                    SLICE_FUNCTION,
                    exchange::slice_args(&[(0, left)])?,
                    vec![out.block],
                    "limit",
                )],
                &mut stage,
            )?;
            stats.push(stage);
            blocks.extend(outcome.into_iter().map(|o| o.output));
            left = 0;
        }
    }
    Ok((blocks, plan.schema()))
}

fn task(function: &str, args: bytes::Bytes, inputs: Vec<ObjectRef>, label: &str) -> TaskSpec {
    TaskSpec {
        function: function.to_string(),
        args,
        inputs,
        input_batches: None,
        batched_inputs: None,
        resources: Resources::one_cpu(),
        max_retries: crate::retries::task_max_retries(),
        label: label.to_string(),
    }
}

/// Runs tasks, at most the executor's limit at once, returning their outcomes in order.
fn run_tasks(
    ctx: &Context,
    tasks: Vec<TaskSpec>,
    stage: &mut StageStats,
) -> Result<Vec<TaskOutcome>> {
    let client = ctx.client().clone();
    let limit = limits(ctx)?.max_running;
    stage.started(Instant::now(), limit.min(tasks.len()));
    let rows_in: Vec<u64> = tasks
        .iter()
        .map(|t| t.inputs.iter().map(|i| i.meta().num_rows).sum())
        .collect();
    let results: Vec<_> = ctx.block_on(
        futures::stream::iter(tasks.into_iter().map(|t| client.submit(t)))
            .buffered(limit)
            .collect(),
    );
    let mut outcomes = Vec::with_capacity(results.len());
    for (result, rows_in) in results.into_iter().zip(rows_in) {
        let outcome = result?;
        let meta = outcome.meta().clone();
        stage.finished(
            Instant::now(),
            rows_in,
            meta.num_rows,
            meta.size_bytes,
            &outcome.stats,
        );
        outcomes.push(outcome);
    }
    Ok(outcomes)
}

/// Reads small blocks (samples) into the driver.
fn fetch(ctx: &Context, blocks: &[ObjectRef]) -> Result<Vec<RecordBatch>> {
    let mut out = Vec::new();
    for block in blocks {
        let client = ctx.client().clone();
        let object = ctx.block_on(async { client.get(block).await })?;
        out.extend(object.into_block(block.id())?.into_batches());
    }
    Ok(out)
}

/// `(block index, offset, length)` slices of `blocks` that cut them into pieces of `sizes` rows.
fn cut(blocks: &[ObjectRef], sizes: &[u64]) -> Vec<Vec<(usize, u64, u64)>> {
    let mut pieces = Vec::with_capacity(sizes.len());
    let (mut block, mut offset) = (0usize, 0u64);
    for &size in sizes {
        let mut piece = Vec::new();
        let mut left = size;
        while left > 0 && block < blocks.len() {
            let rows = blocks[block].meta().num_rows;
            let take = (rows - offset).min(left);
            if take > 0 {
                piece.push((block, offset, take));
            }
            left -= take;
            offset += take;
            if offset == rows {
                block += 1;
                offset = 0;
            }
        }
        pieces.push(piece);
    }
    pieces
}

fn slice_tasks(blocks: &[ObjectRef], sizes: &[u64], name: &str) -> Result<Vec<TaskSpec>> {
    cut(blocks, sizes)
        .into_iter()
        .enumerate()
        .map(|(i, mut piece)| {
            if piece.is_empty() && !blocks.is_empty() {
                // No rows for this one: no rows of the first block, which carry its schema.
                piece.push((0, 0, 0));
            }
            let slices: Vec<(u64, u64)> = piece.iter().map(|(_, o, l)| (*o, *l)).collect();
            let inputs = piece.iter().map(|(b, _, _)| blocks[*b].clone()).collect();
            Ok(task(
                SLICE_FUNCTION,
                exchange::slice_args(&slices)?,
                inputs,
                &format!("{name} block {i}"),
            ))
        })
        .collect()
}

fn run_exchange(
    ctx: &Context,
    exchange: &Exchange,
    stats: &mut Vec<StageStats>,
) -> Result<(Resolved, Option<SchemaRef>)> {
    exchange.check()?;
    let name = exchange.name();
    let schema = exchange.schema();
    // Operations whose partitioner is known before the data is seen partition inside the last
    // stage of their input pipelines: no input block is ever materialised.
    if matches!(
        exchange,
        Exchange::RandomShuffle { .. }
            | Exchange::Aggregate { .. }
            | Exchange::MapGroups { .. }
            | Exchange::Join { .. }
            | Exchange::Repartition { shuffle: true, .. }
    ) {
        return run_fused_exchange(ctx, exchange, stats);
    }
    if let Exchange::Sort { input, keys } = exchange
        && samples_in_a_first_pass(input)?
    {
        return run_two_pass_sort(ctx, exchange, input, keys, stats);
    }
    let mut inputs = Vec::new();
    for mut plan in exchange.input_plans() {
        // A union's inputs that differ from its schema only in nullability are given it.
        if let (Exchange::Union(_), Some(unified), Some(own)) = (exchange, &schema, plan.schema())
            && &own != unified
        {
            plan = plan.with_op(crate::plan::LogicalOp::Conform(std::sync::Arc::clone(
                unified,
            )));
        }
        inputs.push(run_to_blocks(ctx, &plan, stats)?);
    }
    match exchange {
        Exchange::Union(_) => {
            let schema = schema.or_else(|| inputs.iter().find_map(|(_, s)| s.clone()));
            let blocks = inputs.into_iter().flat_map(|(b, _)| b).collect();
            return Ok((Resolved::Blocks(blocks), schema));
        }
        Exchange::Zip { .. } => {
            let (left, _) = &inputs[0];
            let (right, _) = &inputs[1];
            let rows = |b: &[ObjectRef]| b.iter().map(|o| o.meta().num_rows).sum::<u64>();
            if rows(left) != rows(right) {
                return Err(crate::Error::InvalidArgument(format!(
                    "zip needs datasets of the same length, not {} and {} rows",
                    rows(left),
                    rows(right)
                )));
            }
            let sizes: Vec<u64> = left.iter().map(|b| b.meta().num_rows).collect();
            let mut tasks = Vec::new();
            for (i, piece) in cut(right, &sizes).into_iter().enumerate() {
                let slices: Vec<(u64, u64)> = piece.iter().map(|(_, o, l)| (*o, *l)).collect();
                let mut blocks = vec![left[i].clone()];
                blocks.extend(piece.iter().map(|(b, _, _)| right[*b].clone()));
                tasks.push(task(
                    ZIP_FUNCTION,
                    exchange::slice_args(&slices)?,
                    blocks,
                    &format!("zip block {i}"),
                ));
            }
            let mut stage = StageStats::new(name);
            let out = run_tasks(ctx, tasks, &mut stage)?;
            stats.push(stage);
            let blocks = out.into_iter().map(|o| o.output).collect();
            return Ok((Resolved::Blocks(blocks), schema));
        }
        Exchange::Repartition {
            n, shuffle: false, ..
        } => {
            let (blocks, input_schema) = &inputs[0];
            if blocks.is_empty() {
                // Nothing to cut (a read of files without rows).
                return Ok((Resolved::Blocks(Vec::new()), input_schema.clone()));
            }
            let total: u64 = blocks.iter().map(|b| b.meta().num_rows).sum();
            let n = *n as u64;
            let sizes: Vec<u64> = (0..n)
                .map(|i| (i + 1) * total / n - i * total / n)
                .collect();
            let mut stage = StageStats::new(name);
            let out = run_tasks(ctx, slice_tasks(blocks, &sizes, "repartition")?, &mut stage)?;
            stats.push(stage);
            let blocks = out.into_iter().map(|o| o.output).collect();
            return Ok((Resolved::Blocks(blocks), input_schema.clone()));
        }
        _ => {}
    }
    // A sort: sample the materialised input for range boundaries, then map and reduce.
    let Exchange::Sort { keys, .. } = exchange else {
        unreachable!("other exchanges return above or run fused")
    };
    let (blocks, input_schema) = inputs.remove(0);
    if blocks.is_empty() {
        return Ok((Resolved::Blocks(Vec::new()), schema));
    }
    let n = blocks.len();
    let tasks = blocks
        .iter()
        .enumerate()
        .map(|(i, b)| {
            Ok(task(
                SAMPLE_FUNCTION,
                exchange::sample_args(keys)?,
                vec![b.clone()],
                &format!("sample block {i}"),
            ))
        })
        .collect::<Result<Vec<_>>>()?;
    let mut stage = StageStats::new("SortSample");
    let samples = run_tasks(ctx, tasks, &mut stage)?;
    stats.push(stage);
    let refs: Vec<ObjectRef> = samples.into_iter().map(|o| o.output).collect();
    let boundaries = exchange::boundaries(&fetch(ctx, &refs)?, keys, n)?;
    let partitioner = exchange
        .partitioners(Some(boundaries))
        .pop()
        .expect("a sort partitions its input");
    let mut tasks = Vec::with_capacity(n);
    for (index, block) in blocks.into_iter().enumerate() {
        let spec = PartitionSpec {
            partitioner: partitioner.clone(),
            n,
            block: index as u64,
            combine: None,
        };
        tasks.push(task(
            PARTITION_FUNCTION,
            exchange::partition_args(&spec)?,
            vec![block],
            &format!("{name} map block {index}"),
        ));
    }
    let mut stage = StageStats::new(format!("{name}Map"));
    let map_outputs: Vec<ObjectRef> = run_tasks(ctx, tasks, &mut stage)?
        .into_iter()
        .map(|o| o.output)
        .collect();
    let side_schemas = vec![input_schema.map(|s| crate::source::encode_schema(&s))];
    let sides = vec![map_outputs.len()];
    let rows_in = stage.rows_out;
    stats.push(stage);
    let reduce = reduce_tasks(ctx, exchange, n, map_outputs, sides, side_schemas, rows_in)?;
    Ok((reduce, schema))
}

/// Whether a sort's input is better read twice (once for a sample of its keys, once to
/// partition it) than materialised: a read whose row counts are known and whose operators are
/// cheap, deterministic expressions (nothing to resolve first). The sampling pass reads only the
/// key columns (projection pushdown), and no input block is ever stored.
fn samples_in_a_first_pass(plan: &LogicalPlan) -> Result<bool> {
    use crate::plan::LogicalOp;
    if !matches!(plan.input, PlanInput::Read { .. }) {
        return Ok(false);
    }
    let cheap = plan.ops.iter().all(|op| {
        matches!(
            op,
            LogicalOp::Filter(_)
                | LogicalOp::WithColumn(..)
                | LogicalOp::Reshape(_)
                | LogicalOp::RandomSample { .. }
        )
    });
    let sources = plan.compile(Sink::Driver)?.sources;
    Ok(cheap && !sources.is_empty() && sources.iter().all(|s| s.rows() > 0))
}

/// A sort whose input is read twice (see [`samples_in_a_first_pass`]): a first pass keeps a
/// random sample of the key columns (about [`exchange::SAMPLES_PER_BLOCK`] rows per block), the
/// driver picks range boundaries from it, and the second pass partitions by them inside its
/// last stage, like the other fused exchanges.
fn run_two_pass_sort(
    ctx: &Context,
    exchange: &Exchange,
    plan: &LogicalPlan,
    keys: &[crate::exchange::SortKey],
    stats: &mut Vec<StageStats>,
) -> Result<(Resolved, Option<SchemaRef>)> {
    use crate::columns::Reshape;
    use crate::plan::LogicalOp;
    /// Any fixed seed: the sample only has to be spread evenly.
    const SAMPLE_SEED: u64 = 0x5eed_5eed;
    let name = exchange.name();
    let sources = plan.compile(Sink::Driver)?.sources;
    let n = sources.len();
    let rows: u64 = sources.iter().map(|s| s.rows()).sum();
    let fraction = ((exchange::SAMPLES_PER_BLOCK * n) as f64 / rows as f64).min(1.0);
    let key_columns = keys.iter().map(|k| k.column.clone()).collect();
    let sampling = plan
        .with_op(LogicalOp::Reshape(Reshape::Select(key_columns)))
        .with_op(LogicalOp::RandomSample {
            fraction,
            seed: SAMPLE_SEED,
        });
    let sample_blocks = collect_blocks(ctx, &sampling, Sink::Driver, stats)?;
    if let Some(stage) = stats.last_mut() {
        stage.name = format!("{name}Sample({})", stage.name);
    }
    let boundaries = exchange::boundaries(&fetch(ctx, &sample_blocks)?, keys, n)?;
    let partitioner = exchange
        .partitioners(Some(boundaries))
        .pop()
        .expect("a sort partitions its input");
    let spec = PartitionSpec {
        partitioner,
        n,
        block: 0,
        combine: None,
    };
    let map_outputs = collect_blocks(
        ctx,
        plan,
        Sink::Partition(format!("{name}Map"), spec),
        stats,
    )?;
    let rows_in = stats.last().map_or(0, |map| map.rows_out);
    let side_schemas = vec![plan.schema().map(|s| crate::source::encode_schema(&s))];
    let sides = vec![map_outputs.len()];
    let reduce = reduce_tasks(ctx, exchange, n, map_outputs, sides, side_schemas, rows_in)?;
    Ok((reduce, exchange.schema()))
}

/// The map side fused into the input pipelines (see [`run_exchange`]), then the reduce tasks.
fn run_fused_exchange(
    ctx: &Context,
    exchange: &Exchange,
    stats: &mut Vec<StageStats>,
) -> Result<(Resolved, Option<SchemaRef>)> {
    let name = exchange.name();
    let plans = exchange
        .input_plans()
        .iter()
        .map(|plan| resolve(ctx, plan, stats))
        .collect::<Result<Vec<_>>>()?;
    let side_schemas: Vec<Option<Vec<u8>>> = plans
        .iter()
        .map(|plan| plan.schema().map(|s| crate::source::encode_schema(&s)))
        .collect();
    let blocks_in = plans
        .iter()
        .map(|plan| Ok(plan.compile(Sink::Driver)?.sources.len()))
        .collect::<Result<Vec<usize>>>()?;
    let global_aggregate = matches!(exchange, Exchange::Aggregate { keys, .. } if keys.is_empty());
    if blocks_in.iter().all(|&b| b == 0) && !global_aggregate {
        // Nothing to partition: no output blocks (a global aggregate still answers one row).
        return Ok((Resolved::Blocks(Vec::new()), exchange.schema()));
    }
    let n = match exchange {
        Exchange::Repartition { n, .. } => *n,
        _ if global_aggregate => 1,
        _ => blocks_in.iter().copied().max().unwrap_or(1).max(1),
    };
    let combine = match exchange {
        Exchange::Aggregate {
            keys, aggregates, ..
        } if combine::combinable(aggregates) => Some((keys.clone(), aggregates.clone())),
        _ => None,
    };
    let mut map_outputs = Vec::new();
    let mut sides = Vec::new();
    // Rows the map sides wrote (each side's last stage partitions): what the reducers read.
    let mut rows_in = 0;
    for (plan, partitioner) in plans.iter().zip(exchange.partitioners(None)) {
        let spec = PartitionSpec {
            partitioner,
            n,
            block: 0,
            combine: combine.clone(),
        };
        let out = collect_blocks(
            ctx,
            plan,
            Sink::Partition(format!("{name}Map"), spec),
            stats,
        )?;
        sides.push(out.len());
        map_outputs.extend(out);
        rows_in += stats.last().map_or(0, |map| map.rows_out);
    }
    let reduce = reduce_tasks(ctx, exchange, n, map_outputs, sides, side_schemas, rows_in)?;
    Ok((reduce, exchange.schema()))
}

/// A partition is merged with others into one reduce task only if it is at most this share of
/// what the task reads ([`Config::reduce_task_bytes`](crate::Config::reduce_task_bytes)).
const MERGED_PARTITION_SHARE: u64 = 16;

/// The most pieces (a partition of a map output) one merged reduce task reads: each costs the
/// worker a block's worth of bookkeeping whatever its size.
const MAX_REDUCE_PIECES: usize = 1 << 16;

/// The reduce round: one task per partition, each reading its partition of every map output;
/// for a mid-sized exchange of small partitions, one task per range of consecutive partitions
/// (about [`Config::reduce_task_bytes`] of map output each, and at least one task per CPU), each
/// reading its range of every map output in one gather; or, when the map outputs are small,
/// one task reading them whole. Every reducer accepts any set of whole partitions, and
/// fetching n small pieces from each of n outputs costs far more than the reduce. The tasks
/// are not run here: they become the first stage of whatever runs next, so reduced blocks
/// stream on instead of all waiting in the store (and spilling) for their consumer.
///
/// [`Config::reduce_task_bytes`]: crate::Config::reduce_task_bytes
fn reduce_tasks(
    ctx: &Context,
    exchange: &Exchange,
    n: usize,
    map_outputs: Vec<ObjectRef>,
    sides: Vec<usize>,
    side_schemas: Vec<Option<Vec<u8>>>,
    rows_in: u64,
) -> Result<Resolved> {
    let name = exchange.name();
    let reducer = exchange.reducer().expect("partitioning exchanges reduce");
    let map_bytes: u64 = map_outputs.iter().map(|o| o.meta().size_bytes).sum();
    let budget = ctx
        .block_on(ctx.client().store_usage())
        .map_or(u64::MAX, |usage| usage.budget_bytes);
    // `repartition` makes exactly its `n` blocks.
    let merges = !matches!(exchange, Exchange::Repartition { .. });
    if merges && map_bytes <= ctx.small_exchange_bytes().min(budget / 4) {
        let spec = ReduceSpec {
            reducer,
            partitions: None,
            sides,
            side_schemas,
            stage: format!("{name}Reduce"),
        };
        let label = format!("{name} reduce (all {n} partitions, {map_bytes} bytes)");
        return Ok(Resolved::Reduce {
            name: format!("{name}Reduce"),
            tasks: vec![task(
                REDUCE_FUNCTION,
                exchange::reduce_args(&spec)?,
                map_outputs,
                &label,
            )],
            rows_in,
        });
    }
    // What one reduce task reads: small enough to hold at once beside others.
    let per_task = ctx.reduce_task_bytes().min(budget / 4);
    // Merged only where partitions are small against a task's share (a sixteenth or less):
    // measured on the loopback cluster, merging partitions of tens of MiB saved no time and
    // made bigger blocks for the consumer to wait for and hold.
    let small_partitions = map_bytes / n as u64 <= per_task / MERGED_PARTITION_SHARE;
    let reducers = if merges && per_task > 0 && small_partitions {
        let cpus = ctx
            .block_on(ctx.client().total_cpus())
            .map_or(n, |cpus| cpus.ceil() as usize);
        // Every task reads its partitions of every map output: a piece each, and never more
        // than MAX_REDUCE_PIECES of them (tiny partitions of many map outputs add up).
        let pieces = map_outputs.len() * n;
        (map_bytes.div_ceil(per_task) as usize)
            .max(cpus)
            .max(pieces.div_ceil(MAX_REDUCE_PIECES))
            .clamp(1, n)
    } else {
        n
    };
    let tasks = (0..reducers)
        .map(|i| {
            let partitions = i * n / reducers..(i + 1) * n / reducers;
            let label = match partitions.len() {
                1 => format!("{name} reduce partition {}", partitions.start),
                _ => format!("{name} reduce partitions {partitions:?}"),
            };
            let batches = partitions.start as u32..partitions.end as u32;
            let spec = ReduceSpec {
                reducer: reducer.clone(),
                partitions: Some(partitions),
                sides: sides.clone(),
                side_schemas: side_schemas.clone(),
                stage: format!("{name}Reduce"),
            };
            // Each reduce task reads (and pulls) only its own partitions of every map output.
            Ok(TaskSpec {
                input_batches: Some(batches),
                batched_inputs: None,
                ..task(
                    REDUCE_FUNCTION,
                    exchange::reduce_args(&spec)?,
                    map_outputs.clone(),
                    &label,
                )
            })
        })
        .collect::<Result<Vec<_>>>()?;
    Ok(Resolved::Reduce {
        name: format!("{name}Reduce"),
        tasks,
        rows_in,
    })
}
