//! [`Dataset`]: a lazy pipeline over Arrow blocks.

use std::collections::VecDeque;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use arrow::array::{AsArray, RecordBatch};
use arrow::datatypes::UInt64Type;
use datafusion::logical_expr::Expr;
use manta_engine::RemoteBatchFn;
use parking_lot::Mutex;
use tokio::sync::mpsc;

use crate::context::Context;
use crate::error::{Error, Result};
use crate::executor::{BlockOut, Limits, execute};
use crate::parquet_sink::WriteTarget;
use crate::plan::{LogicalOp, LogicalPlan, MapBatchesOptions, Sink};
use crate::stats::DatasetStats;

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
    ctx: Context,
    plan: Arc<LogicalPlan>,
    last_stats: Arc<Mutex<Option<DatasetStats>>>,
}

impl std::fmt::Debug for Dataset {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Dataset")
            .field("source", &self.plan.source.path)
            .field("ops", &self.plan.ops)
            .finish()
    }
}

/// What `write_parquet` wrote.
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

    /// Keeps the rows where `predicate` (a DataFusion expression) is true.
    pub fn filter(&self, predicate: Expr) -> Self {
        self.with_op(LogicalOp::Filter(predicate))
    }

    /// Adds column `name` computed by `value` (replacing a column of that name).
    pub fn with_column(&self, name: &str, value: Expr) -> Self {
        self.with_op(LogicalOp::WithColumn(name.to_string(), value))
    }

    /// Applies a `#[manta::remote]` batch function to every batch.
    pub fn map_batches(&self, function: impl RemoteBatchFn) -> Self {
        self.map_batches_with(function, MapBatchesOptions::default())
    }

    /// [`map_batches`](Self::map_batches) with options: resources per task (which makes the
    /// function a stage of its own, run where those resources are).
    pub fn map_batches_with(
        &self,
        function: impl RemoteBatchFn,
        options: MapBatchesOptions,
    ) -> Self {
        self.with_op(LogicalOp::MapBatches {
            function: function.name(),
            options,
        })
    }

    /// The figures of this dataset's last run (empty before any).
    pub fn stats(&self) -> DatasetStats {
        self.last_stats.lock().clone().unwrap_or_default()
    }

    /// Starts the pipeline; blocks arrive on the returned channel.
    fn start(
        &self,
        sink: Sink,
    ) -> Result<(
        mpsc::Receiver<BlockOut>,
        tokio::task::JoinHandle<Result<DatasetStats>>,
    )> {
        let plan = self.plan.compile(sink)?;
        let client = self.ctx.client().clone();
        let cpus = self.ctx.block_on(client.total_cpus())?;
        let limits = Limits::for_cpus(cpus);
        let (tx, rx) = mpsc::channel(limits.max_buffered);
        let handle = self.ctx.spawn(execute(client, plan, tx, limits, true));
        Ok((rx, handle))
    }

    fn finish(
        &self,
        handle: tokio::task::JoinHandle<Result<DatasetStats>>,
    ) -> Result<DatasetStats> {
        let stats = self.ctx.block_on(handle).map_err(|e| {
            Error::Execution(manta_scheduler::Error::Internal(format!(
                "the executor failed: {e}"
            )))
        })??;
        *self.last_stats.lock() = Some(stats.clone());
        Ok(stats)
    }

    /// Runs the pipeline and counts its rows (no data comes back to the driver).
    pub fn count(&self) -> Result<u64> {
        let (mut rx, handle) = self.start(Sink::Driver)?;
        let mut rows = 0;
        while let Some(out) = self.ctx.block_on(rx.recv()) {
            rows += out.block.meta().num_rows;
        }
        self.finish(handle)?;
        Ok(rows)
    }

    /// Up to `limit` rows, as batches; stops the pipeline once it has them.
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

    /// Runs the pipeline, yielding its batches as blocks finish (in completion order).
    pub fn iter_batches(&self) -> Result<BatchIter> {
        let (rx, handle) = self.start(Sink::Driver)?;
        Ok(BatchIter {
            dataset: self.clone(),
            rx: Some(rx),
            handle: Some(handle),
            pending: VecDeque::new(),
        })
    }

    /// Runs the pipeline and writes it as Parquet part files under `path`, atomically: on
    /// success `path` holds exactly the new files; on failure it is untouched.
    pub fn write_parquet(&self, path: impl AsRef<Path>) -> Result<WriteSummary> {
        let started = std::time::Instant::now();
        let target = WriteTarget::prepare(path.as_ref())?;
        let (mut rx, handle) = self.start(Sink::Parquet(target.tmp_dir().to_path_buf()))?;
        tracing::debug!(elapsed = ?started.elapsed(), "write_parquet: pipeline started");
        let mut written = Vec::new();
        while let Some(out) = self.ctx.block_on(rx.recv()) {
            written.push(out.block);
        }
        self.finish(handle)?;
        tracing::debug!(elapsed = ?started.elapsed(), "write_parquet: pipeline finished");
        let mut summary = WriteSummary {
            path: target.destination().to_path_buf(),
            files: 0,
            rows: 0,
            bytes: 0,
        };
        for block in written {
            let object = self.ctx.block_on(self.ctx.client().get(&block))?;
            for record in object.into_block(block.id())?.batches() {
                summary.files += record.num_rows() as u64;
                summary.rows += record
                    .column(1)
                    .as_primitive::<UInt64Type>()
                    .iter()
                    .flatten()
                    .sum::<u64>();
                summary.bytes += record
                    .column(2)
                    .as_primitive::<UInt64Type>()
                    .iter()
                    .flatten()
                    .sum::<u64>();
            }
        }
        tracing::debug!(elapsed = ?started.elapsed(), "write_parquet: file records read");
        target.commit()?;
        tracing::debug!(elapsed = ?started.elapsed(), "write_parquet: committed");
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

/// The batches of a running pipeline; see [`Dataset::iter_batches`].
pub struct BatchIter {
    dataset: Dataset,
    rx: Option<mpsc::Receiver<BlockOut>>,
    handle: Option<tokio::task::JoinHandle<Result<DatasetStats>>>,
    pending: VecDeque<RecordBatch>,
}

impl BatchIter {
    /// Stops the pipeline (if still running) and reports how it ended.
    pub fn close(mut self) -> Result<()> {
        self.rx.take();
        match self.handle.take() {
            Some(handle) => self.dataset.finish(handle).map(|_| ()),
            None => Ok(()),
        }
    }
}

impl Iterator for BatchIter {
    type Item = Result<RecordBatch>;

    fn next(&mut self) -> Option<Self::Item> {
        loop {
            if let Some(batch) = self.pending.pop_front() {
                return Some(Ok(batch));
            }
            let rx = self.rx.as_mut()?;
            match self.dataset.ctx.block_on(rx.recv()) {
                Some(out) => {
                    let client = self.dataset.ctx.client().clone();
                    let id = out.block.id();
                    let fetched = self
                        .dataset
                        .ctx
                        .block_on(async move { client.get(&out.block).await });
                    match fetched
                        .map_err(Error::from)
                        .and_then(|o| Ok(o.into_block(id)?))
                    {
                        Ok(block) => self.pending.extend(
                            block
                                .into_batches()
                                .into_iter()
                                .filter(|b| b.num_rows() > 0),
                        ),
                        Err(e) => {
                            self.rx = None;
                            return Some(Err(e));
                        }
                    }
                }
                None => {
                    self.rx = None;
                    let handle = self.handle.take()?;
                    return self.dataset.finish(handle).err().map(Err);
                }
            }
        }
    }
}

impl Drop for BatchIter {
    fn drop(&mut self) {
        self.rx.take();
        if let Some(handle) = self.handle.take() {
            let _ = self.dataset.finish(handle);
        }
    }
}
