//! A stage: consecutive one-to-one operators fused into one task per block.
//!
//! The optimizer (see [`crate::plan`]) fuses a source or an upstream block with the operators
//! that follow it and share its resources into one [`StageSpec`]; every task of the stage runs
//! them over one input (a Parquet fragment, or one block), batch by batch, so a block is read
//! once and never materialised between operators.
//!
//! A stage runs as the registered task function [`STAGE_FUNCTION`], in the driver's thread pool
//! or in any worker process. Its arguments are the stage's spec (the same bytes for every task
//! of the stage) followed by the task's own part (which fragment, which block index). The spec
//! is decoded once per worker and kept in the worker's cache, keyed by its bytes.

use std::path::PathBuf;
use std::sync::Arc;

use arrow::array::RecordBatch;
use arrow::datatypes::{Schema, SchemaRef};
use bytes::Bytes;
use datafusion::logical_expr::Expr;
use datafusion_proto::bytes::Serializeable;
use manta_engine::callable::call_callable;
use manta_engine::registry::{BatchFn, RowFn, call_batch, lookup_batch, lookup_row};
use manta_engine::{Block, FunctionKind, Object, RemoteFunction, TaskContext, TaskInput};
use serde::{Deserialize, Serialize};

use crate::columns::{self, Reshape};
use crate::ops::{self, PlannedExpr, SESSION};
use crate::parquet_source::PushedPredicate;
use crate::rows::{self, RowMode};
use crate::sink::{WriteFormat, nothing_written, write_part};
use crate::source::ReadTask;

/// The registered name of the stage runner.
pub const STAGE_FUNCTION: &str = "manta::datasets::stage";

inventory::submit! {
    RemoteFunction { name: STAGE_FUNCTION, kind: FunctionKind::Task(run_stage) }
}

/// What a stage does, as plain data.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct StageSpec {
    /// The stage's name, for messages.
    pub name: String,
    /// Rows per batch when reading.
    pub batch_size: usize,
    /// The columns a read needs to produce (all if `None`): projection pushdown.
    pub read_columns: Option<Vec<String>>,
    /// String columns the read may give as dictionaries (see
    /// [`crate::parquet_source::read_fragment`]): the keys of the combining groupby that ends
    /// the stage, when nothing else reads them (chosen by [`crate::plan`]). The map side groups
    /// them on their codes and makes its states of their values, as a plain read would.
    pub dictionary_keys: Vec<String>,
    /// The operators, in order.
    pub ops: Vec<OpSpec>,
    /// Where the output goes, if the stage ends in a sink.
    pub sink: Option<SinkSpec>,
}

/// One operator, serialised.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub enum OpSpec {
    /// Keep rows where the expression (DataFusion protobuf) is true.
    Filter {
        /// The expression, as DataFusion protobuf bytes.
        expr: Vec<u8>,
    },
    /// Add or replace a column.
    WithColumn {
        /// The column.
        name: String,
        /// The expression, as DataFusion protobuf bytes.
        expr: Vec<u8>,
    },
    /// Call a registered batch function, or a stateful callable.
    MapBatches {
        /// Its registered name.
        function: String,
        /// Rows per call, if the user fixed it.
        batch_size: Option<usize>,
        /// For a callable: its constructor's arguments (JSON).
        constructor: Option<Vec<u8>>,
    },
    /// Call a registered row function on every row.
    MapRows {
        /// Its registered name.
        function: String,
        /// What its result means.
        mode: RowMode,
    },
    /// Select, drop or rename columns.
    Reshape(Reshape),
    /// Keep each row with probability `fraction`.
    RandomSample {
        /// The probability.
        fraction: f64,
        /// The user's seed.
        seed: u64,
    },
    /// Give every batch this schema (an IPC schema message), see [`columns::conform`].
    Conform {
        /// The schema.
        schema: Vec<u8>,
    },
}

/// Where a stage's output goes.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub enum SinkSpec {
    /// Into partitions: the map side of an exchange, fused with the stage (each task's block
    /// is partitioned as [`crate::exchange::partition_batches`] does, `block` set per task).
    Partition(crate::exchange::PartitionSpec),
    /// One part file per task, in this directory.
    Files {
        /// The write's temporary directory.
        dir: PathBuf,
        /// The files' format.
        format: WriteFormat,
    },
}

/// One task's own input.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub enum TaskPart {
    /// Run this read.
    Read(ReadTask),
    /// Process the task's input blocks.
    Blocks,
}

/// One task's own arguments.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct TaskArgs {
    /// Its input.
    pub part: TaskPart,
    /// The index of the block it makes (names part files, keeps order).
    pub index: u64,
}

/// Serialises a stage spec (once per stage).
pub fn encode_spec(spec: &StageSpec) -> manta_engine::Result<Bytes> {
    postcard::to_stdvec(spec)
        .map(Bytes::from)
        .map_err(|source| manta_engine::Error::Serialization {
            action: "encode",
            what: "a stage".into(),
            source,
        })
}

/// Serialises an expression for a stage spec.
pub fn encode_expr(expr: &Expr) -> datafusion::error::Result<Vec<u8>> {
    Ok(expr.to_bytes()?.to_vec())
}

/// A task's arguments: the stage's spec, then the task's part.
pub fn encode_args(spec: &Bytes, args: &TaskArgs) -> manta_engine::Result<Bytes> {
    let part = postcard::to_stdvec(args).map_err(|source| manta_engine::Error::Serialization {
        action: "encode",
        what: "task arguments".into(),
        source,
    })?;
    let mut out = Vec::with_capacity(4 + spec.len() + part.len());
    out.extend_from_slice(&(spec.len() as u32).to_le_bytes());
    out.extend_from_slice(spec);
    out.extend_from_slice(&part);
    Ok(Bytes::from(out))
}

fn split_args(args: &Bytes) -> manta_engine::Result<(Bytes, TaskArgs)> {
    let corrupt = || manta_engine::Error::Internal("stage arguments are truncated".into());
    let len = u32::from_le_bytes(
        args.get(..4)
            .ok_or_else(corrupt)?
            .try_into()
            .expect("4 bytes"),
    ) as usize;
    let spec = args.get(4..4 + len).ok_or_else(corrupt)?;
    let part = postcard::from_bytes(&args[4 + len..]).map_err(|source| {
        manta_engine::Error::Serialization {
            action: "decode",
            what: "task arguments".into(),
            source,
        }
    })?;
    Ok((args.slice_ref(spec), part))
}

enum CompiledOp {
    Filter(Arc<PlannedExpr>),
    WithColumn(String, PlannedExpr),
    MapBatches {
        name: String,
        call: BatchCall,
        batch_size: Option<usize>,
    },
    MapRows(String, RowFn, RowMode),
    Reshape(Reshape),
    Sample(f64, u64),
    Conform(SchemaRef),
}

/// What a `map_batches` calls.
enum BatchCall {
    Function(BatchFn),
    /// A stateful callable, by its constructor's arguments.
    Callable(Vec<u8>),
}

impl CompiledOp {
    fn describe(&self) -> String {
        match self {
            CompiledOp::Filter(p) => format!("filter({})", p.expr()),
            CompiledOp::WithColumn(name, p) => format!("with_column({name}, {})", p.expr()),
            CompiledOp::MapBatches { name, .. } | CompiledOp::MapRows(name, ..) => name.clone(),
            CompiledOp::Reshape(r) => format!("{r:?}"),
            CompiledOp::Sample(fraction, _) => format!("random_sample({fraction})"),
            CompiledOp::Conform(_) => "conform".into(),
        }
    }

    /// Rows per call, if the operator wants its input regrouped.
    fn batch_size(&self) -> Option<usize> {
        match self {
            CompiledOp::MapBatches { batch_size, .. } => *batch_size,
            _ => None,
        }
    }
}

/// One task's batches waiting to be regrouped, per operator that fixes its batch size.
#[derive(Default)]
struct Regroup {
    pending: Vec<Vec<RecordBatch>>,
}

impl Regroup {
    fn new(ops: usize) -> Self {
        Self {
            pending: (0..ops).map(|_| Vec::new()).collect(),
        }
    }

    /// Adds `batch` before operator `op`; returns the batches of exactly `size` rows now ready.
    fn push(
        &mut self,
        op: usize,
        size: usize,
        batch: RecordBatch,
    ) -> arrow::error::Result<Vec<RecordBatch>> {
        let pending = &mut self.pending[op];
        pending.push(batch);
        let rows: usize = pending.iter().map(RecordBatch::num_rows).sum();
        if rows < size {
            return Ok(Vec::new());
        }
        let all = crate::columns::concat(&pending[0].schema(), pending)?;
        pending.clear();
        let mut ready = Vec::with_capacity(rows / size);
        let mut offset = 0;
        while rows - offset >= size {
            ready.push(all.slice(offset, size));
            offset += size;
        }
        if offset < rows {
            pending.push(all.slice(offset, rows - offset));
        }
        Ok(ready)
    }

    /// What is left before operator `op`, as one batch.
    fn rest(&mut self, op: usize) -> arrow::error::Result<Option<RecordBatch>> {
        let pending = std::mem::take(&mut self.pending[op]);
        match pending.first() {
            None => Ok(None),
            Some(first) => Ok(Some(crate::columns::concat(&first.schema(), &pending)?)),
        }
    }
}

/// The partial aggregate of a map side that combines (see [`crate::exchange::combine`]): each
/// batch the stage's operators make is aggregated at once, while it is still in the processor's
/// cache, rather than kept until the task ends and aggregated then.
struct Combining<'a> {
    /// The keys and aggregates, if the stage combines.
    combine: Option<&'a (Vec<String>, Vec<crate::exchange::Aggregate>)>,
    partial: Option<crate::exchange::combine::PartialAggregate>,
    /// The read's schema, when its key columns may come as dictionaries: the aggregate is
    /// planned with their own types.
    read_schema: Option<SchemaRef>,
}

impl<'a> Combining<'a> {
    /// For a stage whose output is `sink`; does nothing unless it is a combining partition.
    fn of(sink: &'a Option<SinkSpec>) -> Self {
        let combine = match sink {
            Some(SinkSpec::Partition(spec)) => spec.combine.as_ref(),
            _ => None,
        };
        Self {
            combine,
            partial: None,
            read_schema: None,
        }
    }

    /// Aggregates the batches of `out` and empties it, if the stage combines.
    fn absorb(&mut self, out: &mut Vec<RecordBatch>, label: &str) -> manta_engine::Result<()> {
        let Some((keys, aggregates)) = self.combine else {
            return Ok(());
        };
        let failed = |e| crate::exchange::user_error("aggregate", label.to_string(), e);
        for batch in out.drain(..) {
            let partial = match &mut self.partial {
                Some(partial) => partial,
                None => {
                    let schema = match &self.read_schema {
                        Some(read) => decoded(batch.schema_ref(), read),
                        None => batch.schema(),
                    };
                    // Planned with the types decimals read narrow stand for.
                    let schema = crate::narrow_decimals::wide_schema(&schema);
                    self.partial.insert(
                        crate::exchange::combine::PartialAggregate::new(&schema, keys, aggregates)
                            .map_err(failed)?,
                    )
                }
            };
            partial.push(batch).map_err(failed)?;
        }
        Ok(())
    }

    /// The partial states, if any batch came.
    fn finish(self, label: &str) -> manta_engine::Result<Option<RecordBatch>> {
        self.partial
            .map(|partial| {
                partial
                    .finish()
                    .map_err(|e| crate::exchange::user_error("aggregate", label.to_string(), e))
            })
            .transpose()
    }
}

/// `schema` with its dictionary columns given the type `read` has for them (the dictionaries
/// of a read's key columns pass the operators unchanged: see [`StageSpec::dictionary_keys`]).
fn decoded(schema: &SchemaRef, read: &SchemaRef) -> SchemaRef {
    let fields: Vec<_> = schema
        .fields()
        .iter()
        .map(
            |field| match (field.data_type(), read.field_with_name(field.name())) {
                (arrow::datatypes::DataType::Dictionary(..), Ok(own))
                    if own.data_type() != field.data_type() =>
                {
                    field
                        .as_ref()
                        .clone()
                        .with_data_type(own.data_type().clone())
                }
                _ => field.as_ref().clone(),
            },
        )
        .collect();
    Arc::new(Schema::new_with_metadata(fields, schema.metadata().clone()))
}

/// A decoded stage, shared by every task of the stage in one worker.
struct CompiledStage {
    spec: StageSpec,
    ops: Vec<CompiledOp>,
}

impl CompiledStage {
    fn decode(bytes: &[u8]) -> manta_engine::Result<Self> {
        let spec: StageSpec =
            postcard::from_bytes(bytes).map_err(|source| manta_engine::Error::Serialization {
                action: "decode",
                what: "a stage".into(),
                source,
            })?;
        let decode_expr = |bytes: &[u8]| {
            Expr::from_bytes_with_ctx(bytes, &SESSION.task_ctx()).map_err(|e| {
                manta_engine::Error::Internal(format!(
                    "could not decode an expression of stage {}: {e}",
                    spec.name
                ))
            })
        };
        let ops = spec
            .ops
            .iter()
            .map(|op| {
                Ok(match op {
                    OpSpec::Filter { expr } => {
                        CompiledOp::Filter(Arc::new(PlannedExpr::new(decode_expr(expr)?)))
                    }
                    OpSpec::WithColumn { name, expr } => {
                        CompiledOp::WithColumn(name.clone(), PlannedExpr::new(decode_expr(expr)?))
                    }
                    OpSpec::MapBatches {
                        function,
                        batch_size,
                        constructor,
                    } => CompiledOp::MapBatches {
                        name: function.clone(),
                        call: match constructor {
                            Some(args) => BatchCall::Callable(args.clone()),
                            None => BatchCall::Function(lookup_batch(function)?),
                        },
                        batch_size: *batch_size,
                    },
                    OpSpec::MapRows { function, mode } => {
                        CompiledOp::MapRows(function.clone(), lookup_row(function)?, *mode)
                    }
                    OpSpec::Reshape(reshape) => CompiledOp::Reshape(reshape.clone()),
                    OpSpec::RandomSample { fraction, seed } => CompiledOp::Sample(*fraction, *seed),
                    OpSpec::Conform { schema } => {
                        CompiledOp::Conform(crate::ipc::decode_schema(schema).map_err(|e| {
                            manta_engine::Error::Internal(format!(
                                "could not decode a schema of stage {}: {e}",
                                spec.name
                            ))
                        })?)
                    }
                })
            })
            .collect::<manta_engine::Result<_>>()?;
        Ok(Self { spec, ops })
    }

    /// Runs the operators from `first` on one batch (the `position`th of block `block`),
    /// appending what comes out to `out`. Before an operator that fixes its batch size, the
    /// batch waits in `regroup` until enough rows have come.
    fn push(
        &self,
        mut batch: RecordBatch,
        first: usize,
        input: &str,
        at: (u64, u64),
        regroup: &mut Regroup,
        out: &mut Vec<RecordBatch>,
    ) -> manta_engine::Result<()> {
        for (index, op) in self.ops.iter().enumerate().skip(first) {
            if batch.num_rows() == 0 {
                return Ok(());
            }
            if let Some(size) = op.batch_size() {
                let ready = regroup
                    .push(index, size, batch)
                    .map_err(|e| self.failed(op, input, e.into()))?;
                for chunk in ready {
                    let mapped = self.run_op(op, chunk, input, at)?;
                    self.push(mapped, index + 1, input, at, regroup, out)?;
                }
                return Ok(());
            }
            batch = self.run_op(op, batch, input, at)?;
        }
        if batch.num_rows() > 0 {
            out.push(batch);
        }
        Ok(())
    }

    /// Runs what waits in `regroup` at the end of a task, operator by operator.
    fn finish(
        &self,
        input: &str,
        at: (u64, u64),
        regroup: &mut Regroup,
        out: &mut Vec<RecordBatch>,
    ) -> manta_engine::Result<()> {
        for (index, op) in self.ops.iter().enumerate() {
            let rest = regroup
                .rest(index)
                .map_err(|e| self.failed(op, input, e.into()))?;
            if let Some(rest) = rest {
                let mapped = self.run_op(op, rest, input, at)?;
                self.push(mapped, index + 1, input, at, regroup, out)?;
            }
        }
        Ok(())
    }

    fn failed(
        &self,
        op: &CompiledOp,
        input: &str,
        e: datafusion::error::DataFusionError,
    ) -> manta_engine::Error {
        manta_engine::Error::UserFunction {
            name: op.describe(),
            input: input.to_string(),
            source: Box::new(e),
        }
    }

    /// Runs one operator on one batch.
    fn run_op(
        &self,
        op: &CompiledOp,
        batch: RecordBatch,
        input: &str,
        (block, position): (u64, u64),
    ) -> manta_engine::Result<RecordBatch> {
        let failed = |e| self.failed(op, input, e);
        // Decimals read narrow pass the operators that move columns as they are, and the
        // expressions of `with_column` (which plan against their wide types and widen what
        // only their decimal arithmetic does not take); before any other operator, they are
        // widened to the types the plan gave them.
        let batch = match op {
            CompiledOp::WithColumn(..) | CompiledOp::Reshape(_) | CompiledOp::Sample(..) => batch,
            _ => crate::narrow_decimals::widened_batch(&batch)
                .map_err(|e| failed(datafusion::error::DataFusionError::from(e)))?,
        };
        Ok(match op {
            CompiledOp::Filter(predicate) => ops::filter(predicate, &batch).map_err(failed)?,
            CompiledOp::WithColumn(name, value) => {
                ops::with_column(name, value, &batch).map_err(failed)?
            }
            CompiledOp::MapBatches { name, call, .. } => {
                let batch = columns::string_views(batch)
                    .map_err(|e| failed(datafusion::error::DataFusionError::from(e)))?;
                match call {
                    BatchCall::Function(f) => call_batch(name, *f, batch, || input.to_string())?,
                    BatchCall::Callable(args) => {
                        call_callable(name, args, batch, || input.to_string())?
                    }
                }
            }
            CompiledOp::MapRows(name, f, mode) => rows::apply(name, *f, *mode, &batch, input)?,
            CompiledOp::Reshape(reshape) => reshape
                .apply(&batch)
                .map_err(|e| failed(datafusion::error::DataFusionError::from(e)))?,
            CompiledOp::Sample(fraction, seed) => columns::sample(
                &batch,
                *fraction,
                columns::batch_seed(*seed, block, position),
            )
            .map_err(|e| failed(datafusion::error::DataFusionError::from(e)))?,
            CompiledOp::Conform(schema) => columns::conform(&batch, schema)
                .map_err(|e| failed(datafusion::error::DataFusionError::from(e)))?,
        })
    }

    /// The filters at the head of the stage, to evaluate inside the Parquet reader, and the
    /// index of the first operator left to apply to what the reader returns.
    fn pushed_predicate(&self) -> (Option<PushedPredicate>, usize) {
        let filters: Vec<Arc<PlannedExpr>> = self
            .ops
            .iter()
            .map_while(|op| match op {
                CompiledOp::Filter(predicate) => Some(Arc::clone(predicate)),
                _ => None,
            })
            .collect();
        if filters.is_empty() {
            return (None, 0);
        }
        let mut columns: Vec<String> = filters
            .iter()
            .flat_map(|f| f.expr().column_refs())
            .map(|c| c.name.clone())
            .collect();
        columns.sort();
        columns.dedup();
        let count = filters.len();
        let conjunction = filters
            .iter()
            .map(|f| f.expr().clone())
            .reduce(datafusion::logical_expr::Expr::and);
        let keep = move |batch: RecordBatch| {
            let mut keep: Option<arrow::array::BooleanArray> = None;
            for filter in &filters {
                let mask = ops::evaluate_predicate(filter, &batch)
                    .map_err(|e| arrow::error::ArrowError::ExternalError(Box::new(e)))?;
                keep = Some(match keep {
                    None => mask,
                    Some(previous) => arrow::compute::and_kleene(&previous, &mask)?,
                });
            }
            Ok(keep.expect("at least one filter"))
        };
        (
            Some(PushedPredicate {
                columns,
                keep: Box::new(keep),
                filter: conjunction,
            }),
            count,
        )
    }

    /// The schema the operators make of `input`, found by running them on no rows; `None` if
    /// an operator cannot say (a user function that rejects an empty batch).
    fn output_schema(&self, input: &SchemaRef, label: &str) -> Option<SchemaRef> {
        let mut batch = RecordBatch::new_empty(Arc::clone(input));
        for op in &self.ops {
            batch = match op {
                CompiledOp::Filter(_) | CompiledOp::Sample(..) => batch,
                CompiledOp::Reshape(reshape) => reshape.apply(&batch).ok()?,
                CompiledOp::Conform(schema) => RecordBatch::new_empty(Arc::clone(schema)),
                CompiledOp::WithColumn(name, value) => {
                    ops::with_column(name, value, &batch).ok()?
                }
                CompiledOp::MapBatches {
                    name,
                    call: BatchCall::Function(f),
                    ..
                } => {
                    let batch = columns::string_views(batch).ok()?;
                    call_batch(name, *f, batch, || label.to_string()).ok()?
                }
                // A callable is not built just to learn a schema; nor are rows mapped.
                CompiledOp::MapBatches { .. } | CompiledOp::MapRows(..) => return None,
            };
        }
        Some(batch.schema())
    }

    /// The schema and column indices that keep only the stage's `read_columns` of a block of
    /// `schema`; `None` if the block has no other columns. Blocks are pruned as reads are, so
    /// the operators see the same columns whichever way the stage's input comes.
    fn projection(
        &self,
        schema: &SchemaRef,
    ) -> manta_engine::Result<Option<(SchemaRef, Vec<usize>)>> {
        let Some(columns) = &self.spec.read_columns else {
            return Ok(None);
        };
        let Some(indices) = columns::pruned_indices(schema, columns) else {
            return Ok(None);
        };
        Ok(Some((Arc::new(schema.project(&indices)?), indices)))
    }

    fn run(&self, args: TaskArgs, objects: Vec<Object>) -> manta_engine::Result<Object> {
        let mut out = Vec::new();
        let mut combining = Combining::of(&self.spec.sink);
        let mut regroup = Regroup::new(self.ops.len());
        let mut position = 0u64;
        let mut input_schema: Option<SchemaRef> = None;
        let label = match &args.part {
            TaskPart::Read(task) => format!(
                "{} (block {}, stage {})",
                task.describe(),
                args.index,
                self.spec.name
            ),
            TaskPart::Blocks => format!("block {} (stage {})", args.index, self.spec.name),
        };
        match &args.part {
            TaskPart::Read(task) => {
                let (predicate, first_op) = if task.pushes_predicates() {
                    self.pushed_predicate()
                } else {
                    (None, 0)
                };
                let read = task
                    .read(
                        self.spec.batch_size,
                        predicate,
                        self.spec.read_columns.as_deref(),
                        &self.spec.dictionary_keys,
                        // A combining stage's batches end in the laned sums, which take
                        // Parquet's narrow decimals as they are (see `run_op`).
                        combining.combine.is_some(),
                    )
                    .map_err(|e| read_failed(&label, e))?;
                if !self.spec.dictionary_keys.is_empty() {
                    combining.read_schema = Some(Arc::clone(&read.schema));
                }
                input_schema = Some(read.schema);
                for batch in read.batches {
                    let batch = batch.map_err(|e| read_failed(&label, e))?;
                    let at = (args.index, position);
                    position += 1;
                    self.push(batch, first_op, &label, at, &mut regroup, &mut out)?;
                    combining.absorb(&mut out, &label)?;
                }
            }
            TaskPart::Blocks => {
                for object in objects {
                    let block = match object {
                        Object::Block(block) => block,
                        other => {
                            return Err(manta_engine::Error::Internal(format!(
                                "stage input is {}, not a block",
                                other.kind()
                            )));
                        }
                    };
                    if crate::exchange::reduce::is_unknown(&block) {
                        // No rows and no schema (a map_groups reducer without a group).
                        continue;
                    }
                    let projection = self.projection(block.schema())?;
                    let schema = match &projection {
                        Some((schema, _)) => Arc::clone(schema),
                        None => Arc::clone(block.schema()),
                    };
                    input_schema.get_or_insert_with(|| Arc::clone(&schema));
                    for batch in block.into_batches() {
                        let batch = match &projection {
                            Some((schema, indices)) => columns::project(&batch, schema, indices)?,
                            None => batch,
                        };
                        let at = (args.index, position);
                        position += 1;
                        self.push(batch, 0, &label, at, &mut regroup, &mut out)?;
                        combining.absorb(&mut out, &label)?;
                    }
                }
            }
        }
        self.finish(&label, (args.index, position), &mut regroup, &mut out)?;
        combining.absorb(&mut out, &label)?;
        // A combining map side's output is its partial states, partitioned as they are.
        let mut sink = self.spec.sink.clone();
        if let Some(states) = combining.finish(&label)? {
            out = vec![states];
            if let Some(SinkSpec::Partition(spec)) = &mut sink {
                spec.combine = None;
            }
        }
        let schema = match out.first() {
            Some(batch) => batch.schema(),
            None => input_schema
                .and_then(|input| self.output_schema(&input, &label))
                .unwrap_or_else(|| Arc::new(Schema::empty())),
        };
        match &sink {
            None => Ok(Object::Block(Block::try_new(schema, out)?)),
            Some(SinkSpec::Partition(spec)) => {
                let spec = crate::exchange::PartitionSpec {
                    block: args.index,
                    ..spec.clone()
                };
                Ok(Object::Block(crate::exchange::partition_batches(
                    &schema, out, &spec, &label,
                )?))
            }
            Some(SinkSpec::Files { dir, format }) => {
                if out.is_empty() {
                    return Ok(Object::Block(Block::empty(nothing_written(&schema))));
                }
                let record = write_part(dir, args.index, *format, &schema, &out).map_err(|e| {
                    manta_engine::Error::UserFunction {
                        name: format!("write_{}", format.extension()),
                        input: label.clone(),
                        source: Box::new(e),
                    }
                })?;
                Ok(Object::from(record))
            }
        }
    }
}

fn read_failed(label: &str, error: crate::Error) -> manta_engine::Error {
    manta_engine::Error::UserFunction {
        name: "read".into(),
        input: label.to_string(),
        source: Box::new(error),
    }
}

fn run_stage(ctx: &TaskContext, input: TaskInput) -> manta_engine::Result<Object> {
    let (spec, args) = split_args(&input.args)?;
    let stage = ctx.cached(&spec, || CompiledStage::decode(&spec))?;
    stage.run(args, input.objects)
}
