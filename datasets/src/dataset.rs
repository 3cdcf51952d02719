//! [`Dataset`]: a lazy pipeline over Arrow blocks.

use std::collections::VecDeque;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use arrow::array::{ArrayRef, AsArray, RecordBatch};
use arrow::datatypes::{SchemaRef, UInt64Type};
use datafusion::logical_expr::Expr;
use manta_engine::{ObjectRef, RegisteredCallable, RemoteBatchFn, RemoteRowFn};
use parking_lot::Mutex;
use serde::de::DeserializeOwned;
use tokio::sync::mpsc;

use crate::columns::Reshape;
use crate::context::Context;
use crate::error::{Error, Result};
use crate::exchange::{Aggregate, Exchange, JoinKind, SortKey};
use crate::executor::BlockOut;
use crate::plan::{LogicalOp, LogicalPlan, MapBatchesOptions, PlanInput, Sink};
use crate::rows::{self, RowMode};
use crate::run;
use crate::sink::{WriteFormat, WriteMode, WriteTarget};
use crate::split::SplitIter;
use crate::stats::{DatasetStats, StageStats};

/// A lazy dataset: a source and the operators to apply to it. Nothing runs until a consuming
/// call (`count`, `take`, `iter_batches`, `write_parquet`); each such call runs the pipeline,
/// streaming, and records its figures for [`Dataset::stats`].
///
/// ```no_run
/// use datafusion::prelude::{col, lit};
/// # fn main() -> manta_datasets::Result<()> {
/// let ctx = manta_datasets::Context::new(Default::default())?;
/// let cheap = ctx
///     .read_parquet("data/lineitem/")?
///     .filter(col("l_discount").gt(lit(0.05)))
///     .with_column("revenue", col("l_extendedprice") * (lit(1) - col("l_discount")));
/// cheap.write_parquet("out/cheap")?;
/// println!("{}", cheap.stats());
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct Dataset {
    pub(crate) ctx: Context,
    plan: Arc<LogicalPlan>,
    last_stats: Arc<Mutex<Option<DatasetStats>>>,
}

impl std::fmt::Debug for Dataset {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Dataset")
            .field("input", &self.plan.input)
            .field("ops", &self.plan.ops)
            .finish()
    }
}

/// A started pipeline: its output blocks, its executor, and the figures of the barriers run
/// before it.
pub(crate) type Running = (
    mpsc::Receiver<BlockOut>,
    tokio::task::JoinHandle<Result<DatasetStats>>,
    Vec<StageStats>,
);

/// What a write produced.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WriteSummary {
    /// The output directory.
    pub path: PathBuf,
    /// Part files written.
    pub files: u64,
    /// Rows written.
    pub rows: u64,
    /// Bytes written.
    pub bytes: u64,
}

impl Dataset {
    pub(crate) fn new(ctx: Context, plan: LogicalPlan) -> Self {
        Self {
            ctx,
            plan: Arc::new(plan),
            last_stats: Arc::default(),
        }
    }

    fn with_op(&self, op: LogicalOp) -> Self {
        Self::new(self.ctx.clone(), self.plan.with_op(op))
    }

    fn exchange(&self, exchange: Exchange) -> Self {
        Self::new(
            self.ctx.clone(),
            LogicalPlan {
                input: PlanInput::Exchange(Arc::new(exchange)),
                ops: Vec::new(),
            },
        )
    }

    fn plan(&self) -> LogicalPlan {
        self.plan.as_ref().clone()
    }

    /// The files, if this dataset is nothing but a read of local Parquet, CSV or JSON files
    /// (then SQL scans them with DataFusion's own reader): the format, the path as given, and
    /// the files' common extension (without the dot; empty if they differ).
    pub(crate) fn plain_local_files(&self) -> Option<(PlainFiles, &str)> {
        let PlanInput::Read { source, .. } = &self.plan.input else {
            return None;
        };
        if !self.plan.ops.is_empty() {
            return None;
        }
        match source.as_ref() {
            crate::source::Source::Parquet(parquet) if !crate::storage::is_url(&parquet.path) => {
                Some((PlainFiles::Parquet, parquet.path.as_str()))
            }
            crate::source::Source::Files {
                format,
                path,
                files,
                schema,
                parse,
            } if !crate::storage::is_url(path) => {
                let plain = PlainText {
                    extension: common_extension(files),
                    schema: Arc::clone(schema),
                    parse: *parse,
                };
                match format {
                    crate::source::FileFormat::Csv => Some((PlainFiles::Csv(plain), path)),
                    crate::source::FileFormat::Json => Some((PlainFiles::Json(plain), path)),
                    _ => None,
                }
            }
            _ => None,
        }
    }

    /// Keeps the rows where `predicate` (a DataFusion expression) is true; null counts as false.
    pub fn filter(&self, predicate: Expr) -> Self {
        self.with_op(LogicalOp::Filter(predicate))
    }

    /// Adds column `name` computed by `value` (replacing a column of that name).
    pub fn with_column(&self, name: &str, value: Expr) -> Self {
        self.with_op(LogicalOp::WithColumn(name.to_string(), value))
    }

    /// Applies a `#[manta::remote]` batch function to every batch, fused with the operators
    /// around it. The function sees string columns as `Utf8View` (`as_string_view()`) and
    /// binary columns as `BinaryView`, whatever the source (Parquet, CSV, SQL, `from_arrow`):
    /// one type to handle.
    pub fn map_batches(&self, function: impl RemoteBatchFn) -> Self {
        self.map_batches_with(function, MapBatchesOptions::default())
    }

    /// [`map_batches`](Self::map_batches) with options: rows per call (`batch_size`), the most
    /// tasks at once (`concurrency`), resources per task.
    pub fn map_batches_with(
        &self,
        function: impl RemoteBatchFn,
        options: MapBatchesOptions,
    ) -> Self {
        self.with_op(LogicalOp::MapBatches {
            function: function.name(),
            options,
            constructor: None,
        })
    }

    /// Runs a stateful callable (a `#[manta::callable]` struct) on every batch: each worker
    /// builds it once from `args` (loading a model, say) and reuses it for every batch it is
    /// given; `options.concurrency` is the size of the pool, the most instances working at
    /// once. Ray's `map_batches(CallableClass, fn_constructor_args=..., concurrency=n)`.
    ///
    /// ```ignore
    /// let scored = ds.map_batches_callable::<Scorer>(
    ///     "weights.json".to_string(),
    ///     MapBatchesOptions::default().concurrency(2).batch_size(4096),
    /// )?;
    /// ```
    pub fn map_batches_callable<C: RegisteredCallable>(
        &self,
        args: C::Args,
        options: MapBatchesOptions,
    ) -> Result<Self> {
        let constructor = manta_engine::callable::encode_args::<C>(&args)?;
        Ok(self.with_op(LogicalOp::MapBatches {
            function: C::NAME,
            options,
            constructor: Some(constructor),
        }))
    }

    /// Applies a `#[manta::remote]` row function to every row: it takes a row as a serde type
    /// and returns one. Rows travel to it as JSON values, so `map_batches` is much faster.
    ///
    /// ```ignore
    /// #[derive(Serialize, Deserialize)]
    /// struct Point { x: i64 }
    /// #[manta::remote]
    /// fn double(p: Point) -> Point { Point { x: 2 * p.x } }
    /// ds.map(double)
    /// ```
    pub fn map(&self, function: impl RemoteRowFn) -> Self {
        self.map_rows(function, RowMode::Map)
    }

    /// Applies a `#[manta::remote]` row function that returns a `Vec` of rows for each row;
    /// the output has every row of every list.
    pub fn flat_map(&self, function: impl RemoteRowFn) -> Self {
        self.map_rows(function, RowMode::FlatMap)
    }

    /// Keeps the rows for which a `#[manta::remote]` row function returns `true`.
    pub fn filter_fn(&self, function: impl RemoteRowFn) -> Self {
        self.map_rows(function, RowMode::Filter)
    }

    fn map_rows(&self, function: impl RemoteRowFn, mode: RowMode) -> Self {
        self.with_op(LogicalOp::MapRows {
            function: function.name(),
            mode,
        })
    }

    /// Keeps these columns, in this order.
    pub fn select_columns(&self, columns: &[&str]) -> Self {
        self.with_op(LogicalOp::Reshape(Reshape::Select(
            columns.iter().map(|c| c.to_string()).collect(),
        )))
    }

    /// Removes these columns.
    pub fn drop_columns(&self, columns: &[&str]) -> Self {
        self.with_op(LogicalOp::Reshape(Reshape::Drop(
            columns.iter().map(|c| c.to_string()).collect(),
        )))
    }

    /// Renames columns: `(old, new)` pairs.
    pub fn rename_columns(&self, renames: &[(&str, &str)]) -> Self {
        self.with_op(LogicalOp::Reshape(Reshape::Rename(
            renames
                .iter()
                .map(|(a, b)| (a.to_string(), b.to_string()))
                .collect(),
        )))
    }

    /// Keeps each row with probability `fraction`; the same seed keeps the same rows.
    pub fn random_sample(&self, fraction: f64, seed: Option<u64>) -> Self {
        self.with_op(LogicalOp::RandomSample {
            fraction,
            seed: seed.unwrap_or_else(rand::random),
        })
    }

    /// The first `n` rows, in block order.
    pub fn limit(&self, n: u64) -> Self {
        Self::new(
            self.ctx.clone(),
            LogicalPlan {
                input: PlanInput::Limit {
                    input: Arc::clone(&self.plan),
                    n,
                },
                ops: Vec::new(),
            },
        )
    }

    /// The rows in a random order (a seed makes the order repeatable).
    pub fn random_shuffle(&self, seed: Option<u64>) -> Self {
        self.exchange(Exchange::RandomShuffle {
            input: self.plan(),
            seed: seed.unwrap_or_else(rand::random),
        })
    }

    /// `n` blocks of about equal size, the rows split in order (Ray's `repartition(n)`).
    pub fn repartition(&self, n: usize) -> Self {
        self.exchange(Exchange::Repartition {
            input: self.plan(),
            n,
            shuffle: false,
        })
    }

    /// `n` blocks of about equal size, each row sent to one at random (Ray's
    /// `repartition(n, shuffle=True)`): a cheaper mix than [`random_shuffle`](Self::random_shuffle),
    /// which also shuffles within blocks.
    pub fn repartition_shuffled(&self, n: usize) -> Self {
        self.exchange(Exchange::Repartition {
            input: self.plan(),
            n,
            shuffle: true,
        })
    }

    /// Sorted by one key: a column name for ascending, or [`asc`](crate::asc) /
    /// [`desc`](crate::desc) of one. Nulls go last ascending and first descending, as in SQL.
    ///
    /// ```no_run
    /// use manta_datasets::desc;
    /// # fn main() -> manta_datasets::Result<()> {
    /// let ctx = manta_datasets::Context::new(Default::default())?;
    /// let items = ctx.read_parquet("data/lineitem/")?;
    /// let cheapest_first = items.sort("l_extendedprice");
    /// let dearest_first = items.sort(desc("l_extendedprice"));
    /// # Ok(()) }
    /// ```
    pub fn sort(&self, key: impl Into<SortKey>) -> Self {
        self.sort_by([key.into()])
    }

    /// Sorted by several keys, most significant first: `sort_by([desc("a"), asc("b")])`.
    pub fn sort_by(&self, keys: impl IntoIterator<Item = SortKey>) -> Self {
        self.exchange(Exchange::Sort {
            input: self.plan(),
            keys: keys.into_iter().collect(),
        })
    }

    /// Groups rows by key columns, for [`GroupedData::aggregate`] or
    /// [`GroupedData::map_groups`]. No keys: one group of every row.
    pub fn groupby(&self, keys: &[&str]) -> GroupedData {
        GroupedData {
            dataset: self.clone(),
            keys: keys.iter().map(|k| k.to_string()).collect(),
        }
    }

    /// Aggregates over the whole dataset, as one row.
    pub fn aggregate(&self, aggregates: Vec<Aggregate>) -> Self {
        self.groupby(&[]).aggregate(aggregates)
    }

    /// Joins with `other` where the columns `on` are equal on both sides.
    pub fn join(&self, other: &Dataset, on: &[&str], how: JoinKind) -> Self {
        self.join_on(other, on, on, how)
    }

    /// Joins where `left_on` of this dataset equals `right_on` of `other`, pairwise.
    pub fn join_on(
        &self,
        other: &Dataset,
        left_on: &[&str],
        right_on: &[&str],
        how: JoinKind,
    ) -> Self {
        self.exchange(Exchange::Join {
            left: self.plan(),
            right: other.plan(),
            left_on: left_on.iter().map(|c| c.to_string()).collect(),
            right_on: right_on.iter().map(|c| c.to_string()).collect(),
            how,
        })
    }

    /// The rows of this dataset, then those of `others` (all with the same schema).
    pub fn union(&self, others: &[&Dataset]) -> Self {
        let mut plans = vec![self.plan()];
        plans.extend(others.iter().map(|d| d.plan()));
        self.exchange(Exchange::Union(plans))
    }

    /// This dataset's columns beside `other`'s, row by row (both must have as many rows).
    pub fn zip(&self, other: &Dataset) -> Self {
        self.exchange(Exchange::Zip {
            left: self.plan(),
            right: other.plan(),
        })
    }

    /// The distinct values of `column`, in no particular order.
    pub fn unique(&self, column: &str) -> Result<ArrayRef> {
        let distinct = self.groupby(&[column]).aggregate(Vec::new()).to_arrow()?;
        let schema = match distinct.first() {
            Some(b) => b.schema(),
            None => {
                let schema = self.schema()?;
                if schema.fields().is_empty() {
                    // No rows and no known schema (a map_groups of nothing): no values.
                    return Ok(arrow::array::new_empty_array(
                        &arrow::datatypes::DataType::Null,
                    ));
                }
                Arc::new(schema.project(&[schema.index_of(column)?])?)
            }
        };
        let batch = crate::columns::concat(&schema, &distinct)?;
        Ok(Arc::clone(batch.column(batch.schema().index_of(column)?)))
    }

    /// How many blocks the dataset holds, for one whose blocks are in the store already
    /// (after [`materialize`](Self::materialize)); `None` for a pipeline not yet run.
    pub fn num_blocks(&self) -> Option<usize> {
        match &self.plan.input {
            PlanInput::Blocks { blocks, .. } if self.plan.ops.is_empty() => Some(blocks.len()),
            _ => None,
        }
    }

    /// Figures of the last run (per stage: wall time, rows, bytes).
    pub fn stats(&self) -> DatasetStats {
        self.last_stats.lock().clone().unwrap_or_default()
    }

    pub(crate) fn start(&self, sink: Sink) -> Result<Running> {
        let mut before = Vec::new();
        let plan = run::resolve(&self.ctx, &self.plan, &mut before)?;
        let (rx, handle) = run::start(&self.ctx, &plan, sink)?;
        Ok((rx, handle, before))
    }

    pub(crate) fn finish(
        &self,
        handle: tokio::task::JoinHandle<Result<DatasetStats>>,
        before: Vec<StageStats>,
    ) -> Result<DatasetStats> {
        let mut stats = run::join(&self.ctx, handle)?;
        if !before.is_empty() {
            // The barriers before the last pipeline ran one after the other.
            stats.wall += before.iter().map(|s| s.wall).sum::<std::time::Duration>();
            let mut stages = before;
            stages.append(&mut stats.stages);
            stats.stages = stages;
        }
        *self.last_stats.lock() = Some(stats.clone());
        Ok(stats)
    }

    /// The batches of a dataset that only reads the driver's own batches (see
    /// [`LogicalPlan::driver_batches`]), without the empty ones, and recorded as a run of no
    /// stages; `None` for anything with work to run.
    fn driver_batches(&self) -> Option<Vec<RecordBatch>> {
        let batches = self.plan.driver_batches()?;
        *self.last_stats.lock() = Some(DatasetStats::default());
        Some(
            batches
                .iter()
                .filter(|b| b.num_rows() > 0)
                .cloned()
                .collect(),
        )
    }

    /// The blocks of a dataset that is nothing but blocks in the store (see
    /// [`LogicalPlan::stored_blocks`]), recorded as a run of no stages; `None` for anything
    /// with work to run.
    fn stored_blocks(&self) -> Option<Arc<Vec<ObjectRef>>> {
        let blocks = Arc::clone(self.plan.stored_blocks()?);
        *self.last_stats.lock() = Some(DatasetStats::default());
        Some(blocks)
    }

    /// For a dataset with nothing to run (the driver's own batches, or blocks in the store),
    /// an iterator over its batches as they are, like a finished pipeline's: the batches in
    /// hand, or the blocks read one by one as it goes.
    fn ready_batches(&self) -> Option<BatchIter> {
        let (pending, early) = match self.driver_batches() {
            Some(batches) => (batches.into(), Default::default()),
            None => {
                let blocks = self.stored_blocks()?;
                (VecDeque::new(), (0..).zip(blocks.iter().cloned()).collect())
            }
        };
        Some(BatchIter {
            dataset: self.clone(),
            rx: None,
            handle: None,
            before: Vec::new(),
            pending,
            batch_size: None,
            early,
            next_index: 0,
        })
    }

    /// Runs the pipeline and counts the rows.
    pub fn count(&self) -> Result<u64> {
        if let Some(batches) = self.driver_batches() {
            return Ok(batches.iter().map(|b| b.num_rows() as u64).sum());
        }
        if let Some(blocks) = self.stored_blocks() {
            return Ok(blocks.iter().map(|b| b.meta().num_rows).sum());
        }
        let (mut rx, handle, before) = self.start(Sink::Driver)?;
        let mut rows = 0;
        while let Some(out) = self.ctx.block_on(rx.recv()) {
            rows += out.block.meta().num_rows;
        }
        self.finish(handle, before)?;
        Ok(rows)
    }

    /// The schema of the rows: known from the plan, or (after a user function) from running
    /// the pipeline up to its first block.
    pub fn schema(&self) -> Result<SchemaRef> {
        if let Some(schema) = self.plan.schema() {
            return Ok(schema);
        }
        let mut iter = self.iter_batches()?;
        let first = iter.next().transpose()?;
        iter.close()?;
        Ok(first
            .map(|b| b.schema())
            .unwrap_or_else(|| Arc::new(arrow::datatypes::Schema::empty())))
    }

    /// Up to `limit` rows, as batches.
    pub fn take(&self, limit: usize) -> Result<Vec<RecordBatch>> {
        let mut batches = Vec::new();
        let mut rows = 0;
        let mut iter = self.iter_batches()?;
        while rows < limit {
            let Some(batch) = iter.next().transpose()? else {
                break;
            };
            let batch = batch.slice(0, batch.num_rows().min(limit - rows));
            rows += batch.num_rows();
            batches.push(batch);
        }
        iter.close()?;
        Ok(batches)
    }

    /// Up to `limit` rows, as one batch.
    pub fn take_batch(&self, limit: usize) -> Result<RecordBatch> {
        let batches = self.take(limit)?;
        let schema = match batches.first() {
            Some(b) => b.schema(),
            None => self.schema()?,
        };
        Ok(crate::columns::concat(&schema, &batches)?)
    }

    /// Prints up to `limit` rows as a table.
    pub fn show(&self, limit: usize) -> Result<()> {
        let batches = self.take(limit)?;
        println!("{}", arrow::util::pretty::pretty_format_batches(&batches)?);
        Ok(())
    }

    /// Every row, as batches in block order.
    pub fn to_arrow(&self) -> Result<Vec<RecordBatch>> {
        if let Some(ready) = self.ready_batches() {
            return ready.collect();
        }
        let mut blocks: Vec<(u64, Vec<RecordBatch>)> = Vec::new();
        let (mut rx, handle, before) = self.start(Sink::Driver)?;
        while let Some(out) = self.ctx.block_on(rx.recv()) {
            let client = self.ctx.client().clone();
            let id = out.block.id();
            let object = self
                .ctx
                .block_on(async move { client.get(&out.block).await });
            match object
                .map_err(Error::from)
                .and_then(|o| Ok(o.into_block(id)?))
            {
                Ok(block) => blocks.push((out.index, block.into_batches())),
                Err(e) => {
                    drop(rx);
                    let _ = self.finish(handle, before);
                    return Err(e);
                }
            }
        }
        self.finish(handle, before)?;
        blocks.sort_by_key(|(index, _)| *index);
        Ok(blocks
            .into_iter()
            .flat_map(|(_, b)| b)
            .filter(|b| b.num_rows() > 0)
            .collect())
    }

    /// Runs the pipeline and returns its blocks in the object store, in block order (a SQL
    /// scan of a registered dataset reads them as partitions).
    pub(crate) fn run_to_blocks(&self) -> Result<Vec<ObjectRef>> {
        let mut stats = Vec::new();
        let (blocks, _) = run::run_to_blocks(&self.ctx, &self.plan, &mut stats)?;
        *self.last_stats.lock() = Some(DatasetStats {
            wall: stats.iter().map(|s| s.wall).sum(),
            stages: stats,
        });
        Ok(blocks)
    }

    /// Runs the pipeline and keeps its blocks in the object store: a dataset over them, which
    /// later pipelines read without running this one again.
    pub fn materialize(&self) -> Result<Dataset> {
        let mut stats = Vec::new();
        let (blocks, schema) = run::run_to_blocks(&self.ctx, &self.plan, &mut stats)?;
        *self.last_stats.lock() = Some(DatasetStats {
            wall: stats.iter().map(|s| s.wall).sum(),
            stages: stats,
        });
        Ok(Dataset::new(
            self.ctx.clone(),
            LogicalPlan::blocks(blocks, schema),
        ))
    }

    /// Iterates over the rows as batches, streaming: the pipeline runs as the batches are
    /// consumed, and stops if the iterator is dropped. Batches come in block order (a sorted
    /// dataset's in sorted order); a block that finishes early waits for the ones before it.
    pub fn iter_batches(&self) -> Result<BatchIter> {
        if let Some(ready) = self.ready_batches() {
            return Ok(ready);
        }
        let (rx, handle, before) = self.start(Sink::Driver)?;
        Ok(BatchIter {
            dataset: self.clone(),
            rx: Some(rx),
            handle: Some(handle),
            before,
            pending: VecDeque::new(),
            batch_size: None,
            early: Default::default(),
            next_index: 0,
        })
    }

    /// Iterates over batches of exactly `batch_size` rows (the last may be smaller).
    pub fn iter_batches_of(&self, batch_size: usize) -> Result<BatchIter> {
        let mut iter = self.iter_batches()?;
        iter.batch_size = Some(batch_size.max(1));
        Ok(iter)
    }

    /// Iterates over the rows, each deserialised into `T` (a struct whose fields are columns,
    /// or `serde_json::Value`), streaming like [`iter_batches`](Self::iter_batches).
    pub fn iter_rows<T: DeserializeOwned>(&self) -> Result<RowIter<T>> {
        Ok(RowIter {
            batches: self.iter_batches()?,
            rows: VecDeque::new(),
            _type: std::marker::PhantomData,
        })
    }

    /// Splits the output into `n` iterators that share one running pipeline, for feeding `n`
    /// consumers (training workers) in parallel: each block goes to exactly one of them, the
    /// one that asks next, so the shares are disjoint and together are the whole dataset.
    /// The iterators can move to other threads. See [`streaming_split_equal`](
    /// Self::streaming_split_equal) for shares of equal rows.
    pub fn streaming_split(&self, n: usize) -> Result<Vec<SplitIter>> {
        crate::split::start(self, n, false)
    }

    /// [`streaming_split`](Self::streaming_split) into shares of exactly the same number of
    /// rows, `total / n` each (Ray's `equal=True`): blocks are cut where a share needs it, and
    /// the `total % n` rows left over at the end go to no one.
    pub fn streaming_split_equal(&self, n: usize) -> Result<Vec<SplitIter>> {
        crate::split::start(self, n, true)
    }

    /// Writes Parquet part files into directory `path`, atomically: the directory appears
    /// complete, or (on failure) not at all. `path` must not exist, or be an empty directory
    /// ([`WriteMode::Error`]); [`write_with`](Self::write_with) takes another mode.
    pub fn write_parquet(&self, path: impl AsRef<Path>) -> Result<WriteSummary> {
        self.write_with(path, WriteFormat::Parquet, WriteMode::default())
    }

    /// Writes CSV part files (with a header row) into directory `path`, atomically.
    pub fn write_csv(&self, path: impl AsRef<Path>) -> Result<WriteSummary> {
        self.write_with(path, WriteFormat::Csv, WriteMode::default())
    }

    /// Writes newline-delimited JSON part files into directory `path`, atomically.
    pub fn write_json(&self, path: impl AsRef<Path>) -> Result<WriteSummary> {
        self.write_with(path, WriteFormat::Json, WriteMode::default())
    }

    /// Writes Arrow IPC part files into directory `path`, atomically.
    pub fn write_ipc(&self, path: impl AsRef<Path>) -> Result<WriteSummary> {
        self.write_with(path, WriteFormat::Ipc, WriteMode::default())
    }

    /// Writes part files of `format` into directory `path`, atomically, doing what `mode`
    /// says where `path` exists: refuse ([`WriteMode::Error`], the default of the `write_*`
    /// calls), replace it ([`WriteMode::Overwrite`]) or add to it ([`WriteMode::Append`]).
    /// A path that is a file is never written over. A dataset with no rows is written as one
    /// file with no rows, so it reads back as an empty dataset.
    ///
    /// ```no_run
    /// use manta_datasets::{WriteFormat, WriteMode};
    /// # fn main() -> manta_datasets::Result<()> {
    /// let ctx = manta_datasets::Context::new(Default::default())?;
    /// let ds = ctx.read_parquet("data/lineitem/")?;
    /// ds.write_with("out/lineitem", WriteFormat::Parquet, WriteMode::Overwrite)?;
    /// # Ok(()) }
    /// ```
    pub fn write_with(
        &self,
        path: impl AsRef<Path>,
        format: WriteFormat,
        mode: WriteMode,
    ) -> Result<WriteSummary> {
        let target = WriteTarget::prepare(path.as_ref(), mode)?;
        let (mut rx, handle, before) =
            self.start(Sink::Files(target.tmp_dir().to_path_buf(), format))?;
        let mut written = Vec::new();
        while let Some(out) = self.ctx.block_on(rx.recv()) {
            written.push(out.block);
        }
        self.finish(handle, before)?;
        let mut summary = WriteSummary {
            path: target.destination().to_path_buf(),
            files: 0,
            rows: 0,
            bytes: 0,
        };
        // The rows' schema, as the tasks that wrote nothing saw it.
        let mut unwritten = None;
        for block in written {
            let object = self.ctx.block_on(self.ctx.client().get(&block))?;
            let records = object.into_block(block.id())?;
            if unwritten.is_none() {
                unwritten = crate::sink::unwritten_schema(records.schema());
            }
            for record in records.batches() {
                summary.add(record);
            }
        }
        if summary.files == 0 {
            // No rows at all: one empty file, so the output reads back with its schema.
            let schema = self
                .plan
                .schema()
                .or(unwritten)
                .unwrap_or_else(|| Arc::new(arrow::datatypes::Schema::empty()));
            let record = crate::sink::write_part(target.tmp_dir(), 0, format, &schema, &[])?;
            summary.add(&record);
        }
        target.commit()?;
        if let Some(stats) = self
            .last_stats
            .lock()
            .as_mut()
            .and_then(|s| s.stages.last_mut())
        {
            // The write stage's blocks are records of the files; report what the files hold.
            stats.rows_out = summary.rows;
            stats.bytes_out = summary.bytes;
        }
        Ok(summary)
    }
}

impl WriteSummary {
    /// Counts the files of a write task's record (one row per file: path, rows, bytes).
    fn add(&mut self, record: &RecordBatch) {
        let sum = |column: usize| {
            record
                .column(column)
                .as_primitive::<UInt64Type>()
                .iter()
                .flatten()
                .sum::<u64>()
        };
        self.files += record.num_rows() as u64;
        self.rows += sum(1);
        self.bytes += sum(2);
    }
}

/// A dataset grouped by key columns.
#[derive(Clone, Debug)]
pub struct GroupedData {
    dataset: Dataset,
    keys: Vec<String>,
}

impl GroupedData {
    /// One row per group: the keys, then the aggregates.
    ///
    /// ```no_run
    /// use manta_datasets::Aggregate;
    /// # fn main() -> manta_datasets::Result<()> {
    /// let ctx = manta_datasets::Context::new(Default::default())?;
    /// let by_flag = ctx
    ///     .read_parquet("data/lineitem/")?
    ///     .groupby(&["l_returnflag"])
    ///     .aggregate(vec![Aggregate::count(), Aggregate::mean("l_quantity")]);
    /// by_flag.show(10)?;
    /// # Ok(()) }
    /// ```
    pub fn aggregate(&self, aggregates: Vec<Aggregate>) -> Dataset {
        self.dataset.exchange(Exchange::Aggregate {
            input: self.dataset.plan(),
            keys: self.keys.clone(),
            aggregates,
        })
    }

    /// Rows per group, in a column `count()`.
    pub fn count(&self) -> Dataset {
        self.aggregate(vec![Aggregate::count()])
    }

    /// `sum(column)` per group.
    pub fn sum(&self, column: &str) -> Dataset {
        self.aggregate(vec![Aggregate::sum(column)])
    }

    /// `min(column)` per group.
    pub fn min(&self, column: &str) -> Dataset {
        self.aggregate(vec![Aggregate::min(column)])
    }

    /// `max(column)` per group.
    pub fn max(&self, column: &str) -> Dataset {
        self.aggregate(vec![Aggregate::max(column)])
    }

    /// `mean(column)` per group.
    pub fn mean(&self, column: &str) -> Dataset {
        self.aggregate(vec![Aggregate::mean(column)])
    }

    /// `std(column)` per group (sample standard deviation).
    pub fn std(&self, column: &str) -> Dataset {
        self.aggregate(vec![Aggregate::std(column)])
    }

    /// Calls a registered batch function exactly once per group (each call sees all of one
    /// group's rows, sorted by the keys; strings as `Utf8View`, as in
    /// [`Dataset::map_batches`]) and concatenates what it returns. It is never called on no
    /// rows, so a dataset with no rows gives no rows (and, since only the function knows its
    /// output's schema, no schema).
    pub fn map_groups(&self, function: impl RemoteBatchFn) -> Dataset {
        self.dataset.exchange(Exchange::MapGroups {
            input: self.dataset.plan(),
            keys: self.keys.clone(),
            function: function.name(),
        })
    }
}

/// An iterator over a running pipeline's batches.
pub struct BatchIter {
    dataset: Dataset,
    rx: Option<mpsc::Receiver<BlockOut>>,
    handle: Option<tokio::task::JoinHandle<Result<DatasetStats>>>,
    before: Vec<StageStats>,
    pending: VecDeque<RecordBatch>,
    batch_size: Option<usize>,
    /// Blocks that finished before the ones ahead of them, by block index, and the index of
    /// the next block to hand out: batches come out in block order (a sort's order).
    early: std::collections::BTreeMap<u64, ObjectRef>,
    next_index: u64,
}

impl BatchIter {
    /// Stops the pipeline and reports its error, if it failed.
    pub fn close(mut self) -> Result<()> {
        self.rx.take();
        match self.handle.take() {
            Some(handle) => self
                .dataset
                .finish(handle, std::mem::take(&mut self.before))
                .map(|_| ()),
            None => Ok(()),
        }
    }

    /// The next batch as the pipeline makes it.
    fn next_raw(&mut self) -> Option<Result<RecordBatch>> {
        loop {
            if let Some(batch) = self.pending.pop_front() {
                return Some(Ok(batch));
            }
            // The next block in order if it is here; once the pipeline is done, whatever is
            // left, in order.
            let next = match self.early.first_key_value() {
                Some((&index, _)) if index == self.next_index || self.rx.is_none() => {
                    self.early.pop_first()
                }
                _ => None,
            };
            if let Some((index, block)) = next {
                self.next_index = index + 1;
                match fetch_batches(&self.dataset.ctx, block) {
                    Ok(batches) => self.pending.extend(batches),
                    Err(e) => {
                        self.rx = None;
                        self.early.clear();
                        return Some(Err(e));
                    }
                }
                continue;
            }
            let rx = self.rx.as_mut()?;
            match self.dataset.ctx.block_on(rx.recv()) {
                Some(out) => {
                    self.early.insert(out.index, out.block);
                }
                None => {
                    self.rx = None;
                    if let Some(handle) = self.handle.take() {
                        let before = std::mem::take(&mut self.before);
                        if let Err(e) = self.dataset.finish(handle, before) {
                            self.early.clear();
                            return Some(Err(e));
                        }
                    }
                }
            }
        }
    }
}

impl Iterator for BatchIter {
    type Item = Result<RecordBatch>;

    fn next(&mut self) -> Option<Self::Item> {
        let Some(size) = self.batch_size else {
            return self.next_raw();
        };
        let mut parts: Vec<RecordBatch> = Vec::new();
        let mut rows = 0;
        while rows < size {
            match self.next_raw() {
                Some(Ok(batch)) => {
                    let take = (size - rows).min(batch.num_rows());
                    if take < batch.num_rows() {
                        self.pending
                            .push_front(batch.slice(take, batch.num_rows() - take));
                    }
                    rows += take;
                    parts.push(batch.slice(0, take));
                }
                Some(Err(e)) => return Some(Err(e)),
                None => break,
            }
        }
        let first = parts.first()?;
        Some(crate::columns::concat(first.schema_ref(), &parts).map_err(Error::from))
    }
}

impl Drop for BatchIter {
    fn drop(&mut self) {
        self.rx.take();
        if let Some(handle) = self.handle.take() {
            let _ = self
                .dataset
                .finish(handle, std::mem::take(&mut self.before));
        }
    }
}

/// An iterator over a running pipeline's rows, as `T`s.
pub struct RowIter<T> {
    batches: BatchIter,
    rows: VecDeque<serde_json::Value>,
    _type: std::marker::PhantomData<fn() -> T>,
}

impl<T: DeserializeOwned> Iterator for RowIter<T> {
    type Item = Result<T>;

    fn next(&mut self) -> Option<Self::Item> {
        while self.rows.is_empty() {
            match self.batches.next()? {
                Ok(batch) => match rows::to_values(&batch) {
                    Ok(values) => self.rows.extend(values),
                    Err(e) => return Some(Err(e)),
                },
                Err(e) => return Some(Err(e)),
            }
        }
        let value = self.rows.pop_front()?;
        Some(serde_json::from_value(value).map_err(|e| {
            Error::InvalidArgument(format!(
                "iter_rows: a row does not fit {}: {e}",
                std::any::type_name::<T>()
            ))
        }))
    }
}

/// The non-empty batches of an output block, read into this process.
pub(crate) fn fetch_batches(
    ctx: &Context,
    block: manta_engine::ObjectRef,
) -> Result<Vec<RecordBatch>> {
    let client = ctx.client().clone();
    let id = block.id();
    let object = ctx.block_on(async move { client.get(&block).await })?;
    Ok(object
        .into_block(id)?
        .into_batches()
        .into_iter()
        .filter(|b| b.num_rows() > 0)
        .collect())
}

/// The format of a dataset that is a plain read of local files (see
/// [`Dataset::plain_local_files`]), with how CSV and JSON files are read.
#[derive(Clone, Debug, PartialEq)]
pub(crate) enum PlainFiles {
    Parquet,
    Csv(PlainText),
    Json(PlainText),
}

/// How the dataset reads its CSV or JSON files, for DataFusion to read them the same way.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct PlainText {
    /// The files' common extension (without the dot; empty if they differ).
    pub extension: String,
    /// The schema the dataset reads them with.
    pub schema: SchemaRef,
    /// Delimiter, quote, header.
    pub parse: crate::file_options::ParseOptions,
}

/// The extension every one of `files` has (without the dot), or empty.
fn common_extension(files: &[std::path::PathBuf]) -> String {
    let mut extensions = files
        .iter()
        .map(|f| f.extension().and_then(|e| e.to_str()).unwrap_or(""));
    let first = extensions.next().unwrap_or("");
    match extensions.all(|e| e == first) {
        true => first.to_string(),
        false => String::new(),
    }
}
