//! Logical plans and the optimizer that fuses them into stages.
//!
//! A [`LogicalPlan`] is a source and a list of one-to-one operators, as the user wrote them.
//! [`LogicalPlan::compile`] checks every expression against the schema flowing into it (so an
//! unknown column fails before any task runs, with DataFusion's message naming the valid
//! columns), then fuses: the source and every following operator go into one stage, until a
//! `map_batches` asks for different resources, which starts a new stage (its tasks must run
//! where those resources are). A sink joins the last stage. Most pipelines are one stage: read,
//! filter, compute, map and write each block in one task, with no intermediate objects.

use std::collections::BTreeSet;
use std::sync::Arc;

use arrow::array::RecordBatch;
use arrow::datatypes::SchemaRef;
use bytes::Bytes;
use datafusion::logical_expr::Expr;
use manta_engine::{Resources, TaskSpec};

use manta_engine::ObjectRef;

use crate::columns::Reshape;
use crate::error::{Error, Result};
use crate::exchange::Exchange;
use crate::ops;
use crate::rows::RowMode;
use crate::sink::WriteFormat;
use crate::source::{ReadTask, Source};
use crate::stage::{OpSpec, SinkSpec, StageSpec, encode_expr, encode_spec};

/// Options for reading.
#[derive(Clone, Debug)]
pub struct ReadOptions {
    /// Resources each read task asks for (default: one CPU).
    pub resources: Resources,
    /// Rows per batch.
    pub batch_size: usize,
    /// Rows per read task (row groups are merged up to this).
    pub rows_per_task: u64,
}

impl Default for ReadOptions {
    fn default() -> Self {
        Self {
            resources: Resources::one_cpu(),
            batch_size: 8192,
            rows_per_task: 256 * 1024,
        }
    }
}

/// Options for `map_batches`.
///
/// ```
/// use manta_datasets::MapBatchesOptions;
/// let options = MapBatchesOptions::default().batch_size(4096).concurrency(2);
/// assert_eq!(options.batch_size, Some(4096));
/// ```
#[derive(Clone, Debug, Default)]
pub struct MapBatchesOptions {
    /// Resources each task asks for; `None` runs in the stage before it (fused).
    pub resources: Option<Resources>,
    /// Rows per call of the function (the last batch of a block may be smaller); `None` passes
    /// the batches as they come.
    pub batch_size: Option<usize>,
    /// Most tasks of this function running at once, cluster-wide: the size of the actor pool
    /// for a callable. `None`: no cap beyond the executor's.
    pub concurrency: Option<usize>,
}

impl MapBatchesOptions {
    /// Calls the function with batches of `rows` rows.
    pub fn batch_size(mut self, rows: usize) -> Self {
        self.batch_size = Some(rows.max(1));
        self
    }

    /// Runs at most `tasks` tasks of the function at once.
    pub fn concurrency(mut self, tasks: usize) -> Self {
        self.concurrency = Some(tasks.max(1));
        self
    }

    /// Asks for `resources` per task.
    pub fn resources(mut self, resources: Resources) -> Self {
        self.resources = Some(resources);
        self
    }
}

/// One operator as the user wrote it.
#[derive(Clone, Debug)]
pub enum LogicalOp {
    /// Keep rows where the predicate is true.
    Filter(Expr),
    /// Add or replace a column.
    WithColumn(String, Expr),
    /// Apply a registered batch function.
    MapBatches {
        /// Its registered name.
        function: &'static str,
        /// Its options.
        options: MapBatchesOptions,
        /// For a stateful callable: its constructor's arguments, as JSON.
        constructor: Option<Vec<u8>>,
    },
    /// Apply a registered row function (`map`, `flat_map`, `filter_fn`).
    MapRows {
        /// Its registered name.
        function: &'static str,
        /// What its result means.
        mode: RowMode,
    },
    /// Select, drop or rename columns.
    Reshape(Reshape),
    /// Keep each row with a probability.
    RandomSample {
        /// The probability.
        fraction: f64,
        /// The seed.
        seed: u64,
    },
    /// Give every batch this schema: the same columns, made nullable where it says (a union of
    /// inputs that differ only in nullability).
    Conform(SchemaRef),
}

impl LogicalOp {
    fn describe(&self) -> String {
        match self {
            LogicalOp::Filter(e) => format!("filter({e})"),
            LogicalOp::WithColumn(name, e) => format!("with_column({name}, {e})"),
            LogicalOp::MapBatches { function, .. } => {
                format!("map_batches({})", short_name(function))
            }
            LogicalOp::MapRows { function, mode } => {
                format!("{}({})", mode.name().to_lowercase(), short_name(function))
            }
            LogicalOp::Reshape(r) => format!("{r:?}"),
            LogicalOp::RandomSample { fraction, seed } => {
                format!("random_sample({fraction}, seed {seed})")
            }
            LogicalOp::Conform(_) => "conform".into(),
        }
    }

    fn stage_name(&self) -> String {
        match self {
            LogicalOp::Filter(_) => "Filter".into(),
            LogicalOp::WithColumn(name, _) => format!("WithColumn({name})"),
            LogicalOp::MapBatches { function, .. } => {
                format!("MapBatches({})", short_name(function))
            }
            LogicalOp::MapRows { function, mode } => {
                format!("{}({})", mode.name(), short_name(function))
            }
            LogicalOp::Reshape(Reshape::Select(_)) => "SelectColumns".into(),
            LogicalOp::Reshape(Reshape::Drop(_)) => "DropColumns".into(),
            LogicalOp::Reshape(Reshape::Rename(_)) => "RenameColumns".into(),
            LogicalOp::RandomSample { .. } => "RandomSample".into(),
            LogicalOp::Conform(_) => "Conform".into(),
        }
    }
}

fn short_name(function: &str) -> &str {
    function.rsplit("::").next().unwrap_or(function)
}

/// Where a plan's blocks come from.
#[derive(Clone, Debug)]
pub enum PlanInput {
    /// Read tasks of a source.
    Read {
        /// What is read.
        source: Arc<Source>,
        /// How.
        options: ReadOptions,
    },
    /// Blocks already in the object store (`from_arrow`, `materialize`, an all-to-all's output).
    Blocks {
        /// The blocks, in order.
        blocks: Arc<Vec<ObjectRef>>,
        /// Their schema, where known without reading them.
        schema: Option<SchemaRef>,
    },
    /// Blocks that tasks not yet run will make (an all-to-all's reduce round): the tasks run
    /// as the pipeline's first stage, throttled like reads, so their blocks stream on to the
    /// next stages and the consumer instead of all waiting in the store first.
    Tasks {
        /// The stage's name ("RandomShuffleReduce").
        name: String,
        /// The tasks, one output block each, in order.
        tasks: Arc<Vec<TaskSpec>>,
        /// Rows the tasks read in all (what the driver knows; a reduce task reads a partition
        /// of every map output, whose rows it does not know).
        rows_in: u64,
        /// Their output schema, where known.
        schema: Option<SchemaRef>,
    },
    /// The first `n` rows of another plan's output.
    Limit {
        /// The plan.
        input: Arc<LogicalPlan>,
        /// Rows.
        n: u64,
    },
    /// An all-to-all operation over other plans.
    Exchange(Arc<Exchange>),
}

/// An input and the one-to-one operators applied to its blocks.
#[derive(Clone, Debug)]
pub struct LogicalPlan {
    /// Where the blocks come from.
    pub input: PlanInput,
    /// Then what is done to each block.
    pub ops: Vec<LogicalOp>,
}

/// Where a compiled pipeline's output goes.
#[derive(Clone, Debug)]
pub enum Sink {
    /// Back to the driver (count, take, iterate).
    Driver,
    /// Part files of a format in this (temporary) directory.
    Files(std::path::PathBuf, WriteFormat),
    /// The map side of an exchange (named, e.g. "RandomShuffleMap"), fused with the last
    /// stage.
    Partition(String, crate::exchange::PartitionSpec),
}

/// What one task of the first stage starts from.
#[derive(Clone, Debug)]
pub enum SourceTask {
    /// A read.
    Read(ReadTask),
    /// A block in the store.
    Block(ObjectRef),
    /// A task that makes the block (a reduce task), run as it is.
    Task(Box<TaskSpec>),
}

impl SourceTask {
    /// Rows in, where known.
    pub fn rows(&self) -> u64 {
        match self {
            SourceTask::Read(task) => task.rows(),
            SourceTask::Block(block) => block.meta().num_rows,
            SourceTask::Task(_) => 0,
        }
    }
}

/// A stage ready to run.
#[derive(Clone, Debug)]
pub struct PhysicalStage {
    /// Its name ("ReadParquet->Filter->...").
    pub name: String,
    /// Its serialised spec.
    pub spec: Bytes,
    /// Resources per task.
    pub resources: Resources,
    /// Most tasks of the stage running at once, if capped.
    pub concurrency: Option<usize>,
    /// Rows its tasks read in all, where the driver knows the total but not each task's (a
    /// reduce round).
    pub rows_in: Option<u64>,
}

/// A stage being built by [`LogicalPlan::compile`].
struct NewStage {
    name: String,
    resources: Resources,
    ops: Vec<OpSpec>,
    concurrency: Option<usize>,
}

/// A compiled pipeline: the source fragments and the stages each block flows through.
#[derive(Clone, Debug)]
pub struct PhysicalPlan {
    /// Tasks of the first stage, one block each.
    pub sources: Vec<SourceTask>,
    /// The stages, in order.
    pub stages: Vec<PhysicalStage>,
    /// The output schema, when the operators let it be known before running.
    pub schema: Option<SchemaRef>,
}

impl LogicalPlan {
    /// A plan reading `source`.
    pub fn read(source: Source, options: ReadOptions) -> Self {
        Self {
            input: PlanInput::Read {
                source: Arc::new(source),
                options,
            },
            ops: Vec::new(),
        }
    }

    /// A plan over blocks in the store.
    pub fn blocks(blocks: Vec<ObjectRef>, schema: Option<SchemaRef>) -> Self {
        Self {
            input: PlanInput::Blocks {
                blocks: Arc::new(blocks),
                schema,
            },
            ops: Vec::new(),
        }
    }

    /// The plan with one more operator.
    pub fn with_op(&self, op: LogicalOp) -> Self {
        let mut plan = self.clone();
        plan.ops.push(op);
        plan
    }

    /// The schema of the plan's output, where it can be known without running anything.
    pub fn schema(&self) -> Option<SchemaRef> {
        let mut schema = self.input_schema()?;
        for op in &self.ops {
            schema = op_schema(op, &schema).ok()??;
        }
        Some(schema)
    }

    /// The driver's own batches, for a plan that only reads them (`from_arrow` on a cluster,
    /// so a SQL answer there): exactly what running it would return, so a consumer in the
    /// driver takes them as they are instead of shipping them to a worker and back.
    pub fn driver_batches(&self) -> Option<&Arc<Vec<RecordBatch>>> {
        match &self.input {
            PlanInput::Read { source, .. } if self.ops.is_empty() => match source.as_ref() {
                Source::Inline { batches, .. } => Some(batches),
                _ => None,
            },
            _ => None,
        }
    }

    /// The blocks of a plan that is nothing but blocks already in the store (`materialize`,
    /// `from_arrow` embedded): a consumer in the driver reads them as they are, where running
    /// the plan would copy each into a new block first.
    pub fn stored_blocks(&self) -> Option<&Arc<Vec<ObjectRef>>> {
        match &self.input {
            PlanInput::Blocks { blocks, .. } if self.ops.is_empty() => Some(blocks),
            _ => None,
        }
    }

    fn input_schema(&self) -> Option<SchemaRef> {
        match &self.input {
            PlanInput::Read { source, .. } => Some(source.schema()),
            PlanInput::Blocks { schema, .. } | PlanInput::Tasks { schema, .. } => schema.clone(),
            PlanInput::Limit { input, .. } => input.schema(),
            PlanInput::Exchange(exchange) => exchange.schema(),
        }
    }

    /// Checks the expressions and column names against the schema flowing into each operator.
    pub fn check(&self) -> Result<()> {
        match &self.input {
            PlanInput::Limit { input, .. } => input.check()?,
            PlanInput::Exchange(exchange) => exchange.check()?,
            _ => {}
        }
        let mut schema = self.input_schema();
        for op in &self.ops {
            if let Some(current) = &schema {
                schema = op_schema(op, current).map_err(|source| Error::Plan {
                    operator: op.describe(),
                    source,
                })?;
            }
        }
        Ok(())
    }

    /// Fuses the operators into stages. The input must be a read or blocks (the caller runs
    /// limits and exchanges first).
    pub fn compile(&self, sink: Sink) -> Result<PhysicalPlan> {
        self.check()?;
        if let PlanInput::Tasks {
            name,
            tasks,
            rows_in,
            schema,
        } = &self.input
        {
            // The tasks' stage, then the stages the operators make over its blocks.
            let over_blocks = LogicalPlan::blocks(Vec::new(), schema.clone());
            let mut compiled = LogicalPlan {
                ops: self.ops.clone(),
                ..over_blocks
            }
            .compile(sink)?;
            compiled.sources = tasks
                .iter()
                .map(|task| SourceTask::Task(Box::new(task.clone())))
                .collect();
            compiled.stages.insert(
                0,
                PhysicalStage {
                    name: name.clone(),
                    spec: Bytes::new(),
                    resources: Resources::one_cpu(),
                    concurrency: None,
                    rows_in: Some(*rows_in),
                },
            );
            return Ok(compiled);
        }
        let (sources, first_stage, first_resources, batch_size) = match &self.input {
            PlanInput::Read { source, options } => (
                source
                    .tasks(options.rows_per_task)
                    .into_iter()
                    .map(SourceTask::Read)
                    .collect::<Vec<_>>(),
                source.stage_name(),
                options.resources.clone(),
                options.batch_size,
            ),
            PlanInput::Blocks { blocks, .. } => (
                blocks.iter().cloned().map(SourceTask::Block).collect(),
                String::new(),
                Resources::one_cpu(),
                ReadOptions::default().batch_size,
            ),
            PlanInput::Tasks { .. } => unreachable!("compiled above"),
            PlanInput::Limit { .. } | PlanInput::Exchange(_) => {
                return Err(Error::InvalidArgument(
                    "internal: a limit or all-to-all input must run before compiling".into(),
                ));
            }
        };
        if first_stage.is_empty() && self.ops.is_empty() && matches!(sink, Sink::Driver) {
            // Blocks straight to the driver: nothing to run.
            return Ok(PhysicalPlan {
                sources,
                stages: Vec::new(),
                schema: self.schema(),
            });
        }
        let mut sources = sources;
        if sources.is_empty()
            && let Some(schema) = self.input_schema()
        {
            // No input at all (files without row groups, an exchange without output): one task
            // over no rows of the input's schema, so the output still has a block that says
            // what its rows would be (the operators' schema, a user function's included), and a
            // write still writes its one empty file.
            let empty = arrow::array::RecordBatch::new_empty(schema);
            let ipc = crate::exchange::write_ipc(&empty).map_err(Error::Arrow)?;
            sources.push(SourceTask::Read(ReadTask::Inline { ipc, rows: 0 }));
        }
        let mut stages = vec![NewStage {
            name: first_stage,
            resources: first_resources,
            ops: Vec::new(),
            concurrency: None,
        }];
        let read_columns = self.needed_columns();
        // The columns flowing at each operator once the read is pruned to `read_columns`
        // (`None` from the first user function on: it sees whole batches).
        let mut present = read_columns.clone();
        for op in &self.ops {
            let plan_error = |source| Error::Plan {
                operator: op.describe(),
                source,
            };
            let spec = match op {
                LogicalOp::Filter(predicate) => OpSpec::Filter {
                    expr: encode_expr(predicate).map_err(plan_error)?,
                },
                LogicalOp::WithColumn(name, value) => OpSpec::WithColumn {
                    name: name.clone(),
                    expr: encode_expr(value).map_err(plan_error)?,
                },
                LogicalOp::MapBatches {
                    function,
                    options,
                    constructor,
                } => {
                    let current = stages.last().expect("at least one stage");
                    let resources = options.resources.as_ref().unwrap_or(&current.resources);
                    // A capped map (an actor pool) is a stage of its own, so the cap holds
                    // for it alone; so is a map that asks for other resources.
                    if options.concurrency.is_some() || resources != &current.resources {
                        let stage = NewStage {
                            name: String::new(),
                            resources: resources.clone(),
                            ops: Vec::new(),
                            concurrency: options.concurrency,
                        };
                        // Blocks with nothing done to them yet need no stage of their own.
                        if current.name.is_empty() && current.ops.is_empty() {
                            *stages.last_mut().expect("at least one stage") = stage;
                        } else {
                            stages.push(stage);
                        }
                    }
                    OpSpec::MapBatches {
                        function: function.to_string(),
                        batch_size: options.batch_size,
                        constructor: constructor.clone(),
                    }
                }
                LogicalOp::MapRows { function, mode } => OpSpec::MapRows {
                    function: function.to_string(),
                    mode: *mode,
                },
                LogicalOp::Reshape(reshape) => {
                    OpSpec::Reshape(pruned_reshape(reshape, present.as_deref()))
                }
                LogicalOp::RandomSample { fraction, seed } => OpSpec::RandomSample {
                    fraction: *fraction,
                    seed: *seed,
                },
                LogicalOp::Conform(schema) => OpSpec::Conform {
                    schema: crate::source::encode_schema(schema),
                },
            };
            present = present.and_then(|columns| columns_after(op, columns));
            let stage = stages.last_mut().expect("at least one stage");
            if !stage.name.is_empty() {
                stage.name.push_str("->");
            }
            stage.name.push_str(&op.stage_name());
            stage.ops.push(spec);
        }
        let last = stages.len() - 1;
        let stages = stages
            .into_iter()
            .enumerate()
            .map(|(i, stage)| {
                let NewStage {
                    mut name,
                    resources,
                    ops,
                    concurrency,
                } = stage;
                let sink = match (&sink, i == last) {
                    (Sink::Files(dir, format), true) => {
                        if !name.is_empty() {
                            name.push_str("->");
                        }
                        name.push_str(format.stage_name());
                        Some(SinkSpec::Files {
                            dir: dir.clone(),
                            format: *format,
                        })
                    }
                    (Sink::Partition(map_name, spec), true) => {
                        if !name.is_empty() {
                            name.push_str("->");
                        }
                        name.push_str(map_name);
                        Some(SinkSpec::Partition(spec.clone()))
                    }
                    _ => None,
                };
                if name.is_empty() {
                    name = "Blocks".into();
                }
                let spec = StageSpec {
                    name: name.clone(),
                    batch_size,
                    read_columns: if i == 0 { read_columns.clone() } else { None },
                    dictionary_keys: match (i, last) {
                        (0, 0) => self.dictionary_keys(sink.as_ref()),
                        _ => Vec::new(),
                    },
                    ops,
                    sink,
                };
                Ok(PhysicalStage {
                    name,
                    spec: encode_spec(&spec)?,
                    resources,
                    concurrency,
                    rows_in: None,
                })
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(PhysicalPlan {
            sources,
            stages,
            schema: self.schema(),
        })
    }
}

impl LogicalPlan {
    /// The input columns the operators need, in the input's order: all (`None`) if a user
    /// function sees the batches, or the plan cannot tell. Found walking the operators
    /// backwards from the output (which needs every column it has).
    pub fn needed_columns(&self) -> Option<Vec<String>> {
        let input = self.input_schema()?;
        let mut needed: Option<BTreeSet<String>> = None;
        for op in self.ops.iter().rev() {
            match op {
                LogicalOp::Reshape(Reshape::Select(columns)) => {
                    needed = Some(columns.iter().cloned().collect());
                }
                LogicalOp::Conform(schema) => {
                    needed = Some(schema.fields().iter().map(|f| f.name().clone()).collect());
                }
                LogicalOp::Reshape(Reshape::Rename(pairs)) => {
                    // All pairs at once: `a -> b, b -> a` swaps, whatever the pairs' order.
                    if let Some(set) = &mut needed {
                        *set = set
                            .iter()
                            .map(|name| match pairs.iter().find(|(_, new)| new == name) {
                                Some((old, _)) => old.clone(),
                                None => name.clone(),
                            })
                            .collect();
                    }
                }
                LogicalOp::WithColumn(name, expr) => {
                    if let Some(set) = &mut needed {
                        set.remove(name);
                        set.extend(expr.column_refs().into_iter().map(|c| c.name.clone()));
                    }
                }
                LogicalOp::Filter(expr) => {
                    if let Some(set) = &mut needed {
                        set.extend(expr.column_refs().into_iter().map(|c| c.name.clone()));
                    }
                }
                // Dropping removes columns, never needs one.
                LogicalOp::RandomSample { .. } | LogicalOp::Reshape(Reshape::Drop(_)) => {}
                LogicalOp::MapBatches { .. } | LogicalOp::MapRows { .. } => needed = None,
            }
        }
        let needed = needed?;
        Some(
            input
                .fields()
                .iter()
                .map(|f| f.name().clone())
                .filter(|name| needed.contains(name))
                .collect(),
        )
    }
}

impl LogicalPlan {
    /// The string keys of the combining groupby `sink` ends in that a Parquet read may give
    /// as dictionaries ([`StageSpec::dictionary_keys`]): those read from the files and passed
    /// to the groupby untouched, read by no filter or expression, renamed by none, and no
    /// aggregate's argument. None if a user function sees the batches (it would see codes).
    fn dictionary_keys(&self, sink: Option<&SinkSpec>) -> Vec<String> {
        use arrow::datatypes::DataType;
        let (PlanInput::Read { source, .. }, Some(SinkSpec::Partition(spec))) = (&self.input, sink)
        else {
            return Vec::new();
        };
        let (Source::Parquet(parquet), Some((keys, aggregates))) = (source.as_ref(), &spec.combine)
        else {
            return Vec::new();
        };
        let untouched = |key: &String| {
            let read_by = |expr: &Expr| expr.column_refs().iter().any(|c| &c.name == key);
            self.ops.iter().all(|op| match op {
                LogicalOp::Filter(predicate) => !read_by(predicate),
                LogicalOp::WithColumn(name, value) => name != key && !read_by(value),
                LogicalOp::Reshape(Reshape::Select(_)) | LogicalOp::RandomSample { .. } => true,
                LogicalOp::Reshape(Reshape::Drop(columns)) => !columns.contains(key),
                LogicalOp::Reshape(Reshape::Rename(pairs)) => {
                    !pairs.iter().any(|(old, new)| old == key || new == key)
                }
                LogicalOp::MapBatches { .. }
                | LogicalOp::MapRows { .. }
                | LogicalOp::Conform(_) => false,
            })
        };
        keys.iter()
            .filter(|key| {
                parquet.schema.field_with_name(key).is_ok_and(|field| {
                    matches!(
                        field.data_type(),
                        DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View
                    )
                })
            })
            .filter(|key| !aggregates.iter().any(|a| a.column.as_ref() == Some(*key)))
            .filter(|key| untouched(key))
            .cloned()
            .collect()
    }
}

/// `reshape` as it runs on a read pruned to the `present` columns (all if `None`): dropping or
/// renaming a column that pruning already removed is nothing to do. (Pruning removes only
/// columns that no later operator uses, and the plan checked the names against the whole
/// schema, so this never hides a mistake.)
fn pruned_reshape(reshape: &Reshape, present: Option<&[String]>) -> Reshape {
    let Some(present) = present else {
        return reshape.clone();
    };
    let here = |name: &String| present.contains(name);
    match reshape {
        Reshape::Select(columns) => Reshape::Select(columns.clone()),
        Reshape::Drop(columns) => {
            Reshape::Drop(columns.iter().filter(|c| here(c)).cloned().collect())
        }
        Reshape::Rename(pairs) => {
            Reshape::Rename(pairs.iter().filter(|(old, _)| here(old)).cloned().collect())
        }
    }
}

/// The columns flowing after `op` when `columns` flow into it; `None` once a user function
/// decides them.
fn columns_after(op: &LogicalOp, mut columns: Vec<String>) -> Option<Vec<String>> {
    match op {
        LogicalOp::Filter(_) | LogicalOp::RandomSample { .. } => {}
        LogicalOp::WithColumn(name, _) => {
            if !columns.contains(name) {
                columns.push(name.clone());
            }
        }
        LogicalOp::Reshape(Reshape::Select(selected)) => columns = selected.clone(),
        LogicalOp::Conform(schema) => {
            columns = schema.fields().iter().map(|f| f.name().clone()).collect();
        }
        LogicalOp::Reshape(Reshape::Drop(dropped)) => columns.retain(|c| !dropped.contains(c)),
        LogicalOp::Reshape(Reshape::Rename(pairs)) => {
            for column in &mut columns {
                if let Some((_, new)) = pairs.iter().find(|(old, _)| old == column) {
                    *column = new.clone();
                }
            }
        }
        LogicalOp::MapBatches { .. } | LogicalOp::MapRows { .. } => return None,
    }
    Some(columns)
}

/// The schema `op` makes of `schema`: `Ok(None)` if only running it can tell (a user function).
fn op_schema(op: &LogicalOp, schema: &SchemaRef) -> datafusion::error::Result<Option<SchemaRef>> {
    Ok(Some(match op {
        LogicalOp::Filter(predicate) => {
            ops::check_predicate(predicate, schema)?;
            Arc::clone(schema)
        }
        LogicalOp::WithColumn(name, value) => ops::with_column_schema(name, value, schema)?,
        LogicalOp::MapBatches { .. } => return Ok(None),
        LogicalOp::MapRows { mode, .. } => match mode {
            RowMode::Filter => Arc::clone(schema),
            RowMode::Map | RowMode::FlatMap => return Ok(None),
        },
        LogicalOp::Reshape(reshape) => reshape
            .schema(schema)
            .map_err(|e| datafusion::error::DataFusionError::ArrowError(Box::new(e), None))?,
        LogicalOp::Conform(target) => Arc::clone(target),
        LogicalOp::RandomSample { fraction, .. } => {
            if !(0.0..=1.0).contains(fraction) {
                return Err(datafusion::error::DataFusionError::Plan(format!(
                    "a sample fraction must be between 0 and 1, not {fraction}"
                )));
            }
            Arc::clone(schema)
        }
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::datatypes::{DataType, Field, Schema};
    use datafusion::prelude::{col, lit};

    #[test]
    fn reads_need_only_the_columns_the_operators_use() {
        let schema = Arc::new(Schema::new(
            ["a", "b", "c", "d"]
                .map(|n| Field::new(n, DataType::Int64, true))
                .to_vec(),
        ));
        let plan = LogicalPlan::blocks(Vec::new(), Some(schema))
            .with_op(LogicalOp::Filter(col("a").gt(lit(1))))
            .with_op(LogicalOp::WithColumn("e".into(), col("b") * lit(2)))
            .with_op(LogicalOp::Reshape(Reshape::Rename(vec![(
                "e".into(),
                "f".into(),
            )])))
            .with_op(LogicalOp::Reshape(Reshape::Select(vec![
                "f".into(),
                "c".into(),
            ])));
        assert_eq!(
            plan.needed_columns(),
            Some(vec!["a".to_string(), "b".to_string(), "c".to_string()])
        );
        let without_select = plan.clone();
        let mut ops = without_select.ops.clone();
        ops.pop();
        let all = LogicalPlan {
            ops,
            ..without_select
        };
        assert_eq!(all.needed_columns(), None, "the output keeps every column");
    }

    #[test]
    fn only_string_keys_nothing_else_reads_are_read_as_dictionaries() {
        use crate::exchange::{Aggregate, PartitionSpec, Partitioner};
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("t.parquet");
        let schema = Arc::new(Schema::new(vec![
            Field::new("g", DataType::Utf8, true),
            Field::new("h", DataType::Utf8View, true),
            Field::new("k", DataType::Int64, true),
            Field::new("v", DataType::Int64, true),
        ]));
        let file = std::fs::File::create(&path).unwrap();
        let writer = parquet::arrow::ArrowWriter::try_new(file, schema, None).unwrap();
        writer.close().unwrap();
        let read = LogicalPlan::read(
            Source::parquet(path.to_str().unwrap()).unwrap(),
            ReadOptions::default(),
        );
        // The stage's choice, for a groupby by `keys` of `aggregates` after `ops`.
        let chosen = |ops: Vec<LogicalOp>, keys: &[&str], aggregates: Vec<Aggregate>| {
            let keys: Vec<String> = keys.iter().map(|k| k.to_string()).collect();
            let spec = PartitionSpec {
                partitioner: Partitioner::Hash { keys: keys.clone() },
                n: 2,
                block: 0,
                combine: Some((keys, aggregates)),
            };
            let plan = ops
                .into_iter()
                .fold(read.clone(), |plan, op| plan.with_op(op));
            let compiled = plan.compile(Sink::Partition("Map".into(), spec)).unwrap();
            let stage: StageSpec = postcard::from_bytes(&compiled.stages[0].spec).unwrap();
            stage.dictionary_keys
        };
        let sum = || vec![Aggregate::sum("v")];
        let both = chosen(
            vec![
                LogicalOp::Filter(col("v").gt(lit(1))),
                LogicalOp::WithColumn("w".into(), col("v") * lit(2)),
            ],
            &["g", "h", "k"],
            sum(),
        );
        assert_eq!(both, ["g", "h"], "strings only, untouched");
        let filtered = chosen(
            vec![LogicalOp::Filter(col("g").eq(lit("x")))],
            &["g", "h"],
            sum(),
        );
        assert_eq!(filtered, ["h"], "a filter reads g");
        let made = chosen(
            vec![LogicalOp::WithColumn("g".into(), col("h"))],
            &["g", "h"],
            sum(),
        );
        assert!(made.is_empty(), "g is made and h read: {made:?}");
        let counted = chosen(
            Vec::new(),
            &["g", "h"],
            vec![Aggregate::count_non_null("g")],
        );
        assert_eq!(counted, ["h"], "an aggregate reads g");
        let renamed = chosen(
            vec![LogicalOp::Reshape(Reshape::Rename(vec![(
                "h".into(),
                "x".into(),
            )]))],
            &["g", "x"],
            sum(),
        );
        assert_eq!(renamed, ["g"], "h is renamed");
        let mapped = chosen(
            vec![LogicalOp::MapRows {
                function: "f",
                mode: RowMode::Map,
            }],
            &["g", "h"],
            sum(),
        );
        assert!(
            mapped.is_empty(),
            "a user function would see codes: {mapped:?}"
        );
        let to_driver = read.compile(Sink::Driver).unwrap();
        let stage: StageSpec = postcard::from_bytes(&to_driver.stages[0].spec).unwrap();
        assert!(stage.dictionary_keys.is_empty(), "no groupby");
    }
}
