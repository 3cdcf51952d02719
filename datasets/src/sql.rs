//! SQL over datasets, with Apache DataFusion as the engine.
//!
//! A [`Context`] keeps one DataFusion `SessionContext` whose tables are of two kinds:
//!
//! * files registered with [`Context::register_parquet`] (and `_csv`, `_json`) are DataFusion's
//!   own listing tables, so its scans prune row groups and pages with the query's filters;
//! * a dataset registered with [`Context::register`] that is nothing but a read of local
//!   Parquet, CSV or JSON files is registered the same way;
//! * any other registered dataset is a [`DatasetTable`]: its scan adds the
//!   query's filters, projection and limit to the dataset's plan (the projection reaches the
//!   dataset's read, filters on a Parquet read reach its row groups) and runs it as a pipeline,
//!   whose blocks stay in the store as the scan's partitions
//!   ([`crate::sql_tasks::DatasetBlocksExec`]).
//!
//! [`Context::sql`] plans and runs a query and returns its result as a dataset over blocks in
//! the store, so a pipeline continues from it. Embedded, DataFusion runs the query in this
//! process; on a cluster its plan is cut into stages of tasks (see [`crate::sql_tasks`]). A
//! registered dataset's pipeline runs its tasks wherever the context runs them (the embedded
//! pool, or the cluster's nodes).

use std::sync::Arc;

use arrow::array::{RecordBatch, RecordBatchOptions};
use arrow::datatypes::SchemaRef;
use async_trait::async_trait;
use datafusion::catalog::{Session, TableProvider};
use datafusion::common::tree_node::{Transformed, TreeNode};
use datafusion::datasource::TableType;
use datafusion::datasource::memory::MemorySourceConfig;
use datafusion::error::DataFusionError;
use datafusion::execution::SessionStateBuilder;
use datafusion::logical_expr::{Expr, TableProviderFilterPushDown};
use datafusion::optimizer::{Optimizer, OptimizerRule};
use datafusion::physical_optimizer::PhysicalOptimizerRule;
use datafusion::physical_optimizer::optimizer::PhysicalOptimizer;
use datafusion::physical_plan::ExecutionPlan;
use datafusion::prelude::{
    CsvReadOptions, JsonReadOptions, ParquetReadOptions, SessionConfig, SessionContext,
};
use manta_scheduler::Client;

use crate::context::Context;
use crate::dataset::{Dataset, PlainFiles};
use crate::error::Result;
use crate::sql_tasks::{DatasetBlocksExec, StageTasks};

/// A dataset as a DataFusion table (see the module doc).
#[derive(Debug)]
pub struct DatasetTable {
    dataset: Dataset,
    schema: SchemaRef,
}

impl DatasetTable {
    /// The table over `dataset`, whose schema must be known (it runs the plan's first block
    /// if the operators do not tell it).
    pub fn new(dataset: &Dataset) -> Result<Self> {
        Ok(Self {
            schema: dataset.schema()?,
            dataset: dataset.clone(),
        })
    }
}

#[async_trait]
impl TableProvider for DatasetTable {
    fn schema(&self) -> SchemaRef {
        Arc::clone(&self.schema)
    }

    fn table_type(&self) -> TableType {
        TableType::Base
    }

    fn supports_filters_pushdown(
        &self,
        filters: &[&Expr],
    ) -> datafusion::error::Result<Vec<TableProviderFilterPushDown>> {
        // Applied in the pipeline; DataFusion keeps its own filter above as well.
        Ok(vec![TableProviderFilterPushDown::Inexact; filters.len()])
    }

    async fn scan(
        &self,
        _state: &dyn Session,
        projection: Option<&Vec<usize>>,
        filters: &[Expr],
        limit: Option<usize>,
    ) -> datafusion::error::Result<Arc<dyn ExecutionPlan>> {
        let mut dataset = self.dataset.clone();
        for filter in filters {
            dataset = dataset.filter(unqualified(filter.clone())?);
        }
        let schema = match projection {
            Some(columns) => Arc::new(self.schema.project(columns)?),
            None => Arc::clone(&self.schema),
        };
        if projection.is_some() {
            // `count(*)` projects no columns, but rows need a column to travel in: keep the
            // first, and drop it below.
            let names: Vec<&str> = match schema.fields().is_empty() {
                true => self
                    .schema
                    .fields()
                    .iter()
                    .take(1)
                    .map(|f| f.name().as_str())
                    .collect(),
                false => schema.fields().iter().map(|f| f.name().as_str()).collect(),
            };
            dataset = dataset.select_columns(&names);
        }
        if let Some(n) = limit {
            dataset = dataset.limit(n as u64);
        }
        if !schema.fields().is_empty() {
            // Its blocks stay in the store, read a partition each (and, in stages of tasks,
            // where they are).
            let client = dataset.ctx.client().clone();
            let blocks = on_a_thread(move || dataset.run_to_blocks()).await?;
            return Ok(Arc::new(DatasetBlocksExec::new(blocks, schema, client)));
        }
        let batches = on_a_thread(move || dataset.to_arrow()).await?;
        let batches = batches
            .into_iter()
            .map(|b| {
                let options = RecordBatchOptions::new().with_row_count(Some(b.num_rows()));
                let columns = match schema.fields().is_empty() {
                    true => Vec::new(),
                    false => b.columns().to_vec(),
                };
                RecordBatch::try_new_with_options(Arc::clone(&schema), columns, &options)
            })
            .collect::<std::result::Result<Vec<_>, _>>()?;
        Ok(MemorySourceConfig::try_new_exec(&[batches], schema, None)?)
    }
}

/// `run`'s answer: a pipeline blocks on the context's runtime, which may be the one running
/// this query, so it runs on a thread of its own.
async fn on_a_thread<T: Send + 'static>(
    run: impl FnOnce() -> Result<T> + Send + 'static,
) -> datafusion::error::Result<T> {
    let (tx, rx) = tokio::sync::oneshot::channel();
    std::thread::spawn(move || {
        let _ = tx.send(run());
    });
    rx.await
        .map_err(|_| DataFusionError::Execution("a dataset scan's thread died".into()))?
        .map_err(|e| DataFusionError::External(Box::new(e)))
}

/// `expr` with its column references stripped of table qualifiers (a dataset's columns have
/// none).
fn unqualified(expr: Expr) -> datafusion::error::Result<Expr> {
    expr.transform_up(|e| match e {
        Expr::Column(column) if column.relation.is_some() => Ok(Transformed::yes(Expr::Column(
            datafusion::common::Column::new_unqualified(column.name),
        ))),
        other => Ok(Transformed::no(other)),
    })
    .map(|t| t.data)
}

/// The physical optimizer rules of Manta's SQL sessions: DataFusion's, but for the first
/// `FilterPushdown` pass. In DataFusion 55 that pass pushes a filter above a join whose sides
/// `JoinSelection` swapped into the wrong side when both sides have a column of the filter's
/// name, and drops it from above the join: `SELECT * FROM (SELECT l.k AS k, r.k AS k_right FROM
/// a l RIGHT JOIN b r ON l.g = r.h) WHERE NOT (k IS NOT NULL AND k_right >= -3)` keeps rows
/// that fail the filter (found by `tests/all/differential.rs`). The pass after the others
/// (dynamic filters) is kept, and
/// [`ScanPredicates`](crate::scan_predicates::ScanPredicates) gives the scans the predicates
/// of the filters right above them, for pruning. DataFusion's rules run between
/// [`ForgetNullableConstants`](crate::outer_join_constants::ForgetNullableConstants) and
/// [`RemoveForgetConstants`](crate::outer_join_constants::RemoveForgetConstants), so that an
/// outer join's nullable side does not pass its constants on and a sort on them is kept.
pub fn physical_rules() -> Vec<Arc<dyn PhysicalOptimizerRule + Send + Sync>> {
    use crate::outer_join_constants::{ForgetNullableConstants, RemoveForgetConstants};
    let mut rules: Vec<Arc<dyn PhysicalOptimizerRule + Send + Sync>> =
        vec![Arc::new(ForgetNullableConstants)];
    rules.extend(
        PhysicalOptimizer::new()
            .rules
            .into_iter()
            .filter(|rule| rule.name() != "FilterPushdown"),
    );
    rules.push(Arc::new(RemoveForgetConstants));
    rules
}

/// The SQL session of an embedded context: DataFusion's defaults, with [`logical_rules`],
/// [`SharedSubplans`](crate::shared_subplan::SharedSubplans) (a subplan a query holds twice,
/// such as q15's view, computed once) and [`physical_rules`] followed by
/// [`WholeFileScans`](crate::whole_file_scans::WholeFileScans) (a scan's files dealt whole
/// over its partitions where they balance),
/// [`ScanPredicates`](crate::scan_predicates::ScanPredicates) (scans pruned by the filters
/// above them),
/// [`FasterDecimalArithmetic`](crate::decimal_arithmetic::FasterDecimalArithmetic) (decimal
/// `+`, `-` and `*` without a per-row overflow check where none can overflow) and
/// [`FilterOrder`](crate::filter_order::FilterOrder). The two rules a session with tasks does
/// without make plan nodes and expressions of Manta's own, which its serialized plans cannot
/// carry.
pub fn session() -> SessionContext {
    let mut rules = physical_rules();
    rules.push(Arc::new(crate::whole_file_scans::WholeFileScans));
    rules.push(Arc::new(crate::scan_predicates::ScanPredicates));
    rules.push(Arc::new(crate::decimal_arithmetic::FasterDecimalArithmetic));
    rules.push(Arc::new(crate::filter_order::FilterOrder));
    let state = SessionStateBuilder::new()
        .with_default_features()
        .with_optimizer_rules(logical_rules())
        .with_optimizer_rule(Arc::new(crate::shared_subplan::SharedSubplans))
        .with_query_planner(Arc::new(crate::shared_subplan::SharedSubplanQueryPlanner))
        .with_physical_optimizer_rules(rules)
        .build();
    SessionContext::new_with_state(state)
}

/// The logical optimizer rules of both SQL sessions, embedded and with tasks: DataFusion's, with
/// [`JoinOrder`](crate::join_order::JoinOrder) (inner joins in the order estimated to join
/// the fewest rows) before its projection pruning, so that each pass prunes the columns of the
/// joins in their new order, and then
/// [`SemiJoinPushdown`](crate::semi_join_pushdown::SemiJoinPushdown) (a semi join on a join's
/// key moved below it) and [`GroupKeyReduction`](crate::group_key_reduction::GroupKeyReduction)
/// (an aggregate joined on its group key with a filtered scan reads only that scan's keys).
fn logical_rules() -> Vec<Arc<dyn OptimizerRule + Send + Sync>> {
    let mut rules = Optimizer::new().rules;
    let pruning = rules
        .iter()
        .position(|rule| rule.name() == "optimize_projections")
        .unwrap_or(rules.len());
    rules.insert(pruning, Arc::new(crate::join_order::JoinOrder));
    rules.push(Arc::new(crate::semi_join_pushdown::SemiJoinPushdown));
    rules.push(Arc::new(crate::group_key_reduction::GroupKeyReduction));
    rules
}

/// The largest estimated join side a session with tasks broadcasts, in bytes.
const BROADCAST_BYTES: usize = 32 << 20;

/// The largest estimated join side a session with tasks broadcasts, in rows.
const BROADCAST_ROWS: usize = 2 << 20;

/// A SQL session whose queries run as stages of tasks through `client` (see
/// [`crate::sql_tasks`]). Scans and exchanges are split into at least as many partitions as
/// the cluster has CPUs. It has the embedded session's [`logical_rules`] and, before cutting the
/// plan into stages, `WholeFileScans`, `ScanPredicates` and
/// [`FilterOrder`](crate::filter_order::FilterOrder). Dynamic filters (a
/// join's build side narrowing its probe side's scan at run time) are off: the scans they would
/// narrow run elsewhere.
pub fn session_with_tasks(client: &Client, cpus: f64) -> SessionContext {
    let mut config =
        SessionConfig::new().set_bool("datafusion.optimizer.enable_dynamic_filter_pushdown", false);
    let partitions = config.target_partitions().max(cpus.ceil() as usize);
    config = config.with_target_partitions(partitions);
    // A join side this small is built once and broadcast to every probe task instead of both
    // sides being hash-partitioned through the store (DataFusion's defaults, 1 MiB and 128k
    // rows, are for partitions that share memory).
    let optimizer = &mut config.options_mut().optimizer;
    optimizer.hash_join_single_partition_threshold = BROADCAST_BYTES;
    optimizer.hash_join_single_partition_threshold_rows = BROADCAST_ROWS;
    let mut rules = physical_rules();
    rules.push(Arc::new(crate::whole_file_scans::WholeFileScans));
    rules.push(Arc::new(crate::scan_predicates::ScanPredicates));
    rules.push(Arc::new(crate::filter_order::FilterOrder));
    rules.push(Arc::new(StageTasks::new(client.clone())));
    let state = SessionStateBuilder::new()
        .with_config(config)
        .with_default_features()
        .with_optimizer_rules(logical_rules())
        .with_physical_optimizer_rules(rules)
        .build();
    SessionContext::new_with_state(state)
}

impl Context {
    /// Registers `dataset` as the SQL table `name` (replacing any table of that name). A dataset
    /// that is nothing but a read of local Parquet, CSV or JSON files is registered as
    /// DataFusion's own table over them (for Parquet: row-group and page pruning, statistics);
    /// any other is a [`DatasetTable`].
    ///
    /// ```no_run
    /// let ctx = manta_datasets::Context::new(Default::default()).unwrap();
    /// let items = ctx.read_parquet("data/lineitem/").unwrap();
    /// ctx.register("lineitem", &items).unwrap();
    /// let big = ctx.sql("SELECT count(*) FROM lineitem WHERE l_quantity > 45").unwrap();
    /// big.show(10).unwrap();
    /// ```
    pub fn register(&self, name: &str, dataset: &Dataset) -> Result<()> {
        if let Some((format, path)) = dataset.plain_local_files() {
            let session = self.sql_session();
            session.deregister_table(name)?;
            match format {
                PlainFiles::Parquet => {
                    self.block_on(session.register_parquet(name, path, Default::default()))?
                }
                // The dataset's own schema and parsing, so SQL sees what the dataset reads.
                PlainFiles::Csv(plain) => {
                    let extension = format!(".{}", plain.extension);
                    let options = CsvReadOptions::new()
                        .file_extension(&extension)
                        .schema(&plain.schema)
                        .delimiter(plain.parse.delimiter)
                        .quote(plain.parse.quote)
                        .has_header(plain.parse.has_header);
                    self.block_on(session.register_csv(name, path, options))?
                }
                PlainFiles::Json(plain) => {
                    let extension = format!(".{}", plain.extension);
                    let options = JsonReadOptions::default()
                        .file_extension(&extension)
                        .schema(&plain.schema);
                    self.block_on(session.register_json(name, path, options))?
                }
            }
            return Ok(());
        }
        let table = DatasetTable::new(dataset)?;
        let session = self.sql_session();
        session.deregister_table(name)?;
        session.register_table(name, Arc::new(table))?;
        Ok(())
    }

    /// Registers Parquet files (a file, a directory or a glob) as the SQL table `name`, scanned
    /// by DataFusion itself (row-group and page pruning).
    pub fn register_parquet(&self, name: &str, path: &str) -> Result<()> {
        let session = self.sql_session();
        self.block_on(session.register_parquet(name, path, ParquetReadOptions::default()))?;
        Ok(())
    }

    /// Registers CSV files (with a header row) as the SQL table `name`.
    pub fn register_csv(&self, name: &str, path: &str) -> Result<()> {
        let session = self.sql_session();
        self.block_on(session.register_csv(name, path, CsvReadOptions::default()))?;
        Ok(())
    }

    /// Registers newline-delimited JSON files as the SQL table `name`.
    pub fn register_json(&self, name: &str, path: &str) -> Result<()> {
        let session = self.sql_session();
        self.block_on(session.register_json(name, path, JsonReadOptions::default()))?;
        Ok(())
    }

    /// Runs a SQL query over the registered tables; its result is a dataset (blocks in the
    /// store) that a pipeline can continue from.
    pub fn sql(&self, query: &str) -> Result<Dataset> {
        let session = self.sql_session();
        let (schema, batches): (SchemaRef, Vec<RecordBatch>) = self.block_on(async move {
            let frame = session.sql(query).await?;
            let schema = Arc::new(frame.schema().as_arrow().clone());
            Ok::<_, DataFusionError>((schema, frame.collect().await?))
        })?;
        let mut batches: Vec<RecordBatch> =
            batches.into_iter().filter(|b| b.num_rows() > 0).collect();
        if batches.is_empty() {
            batches.push(RecordBatch::new_empty(schema));
        }
        self.from_arrow(batches)
    }
}

/// Helpers for the tests of the SQL session's own rules.
#[cfg(test)]
pub(crate) mod test_support {
    use datafusion::prelude::SessionContext;

    /// The rows of `sql`'s answer in `ctx`, printed and sorted (so that two engines' answers
    /// compare whatever their row order).
    pub(crate) fn sorted_answer(ctx: &SessionContext, sql: &str) -> Vec<String> {
        try_sorted_answer(ctx, sql).unwrap()
    }

    /// [`sorted_answer`], or the query's error, printed.
    pub(crate) fn try_sorted_answer(
        ctx: &SessionContext,
        sql: &str,
    ) -> Result<Vec<String>, String> {
        let batches =
            crate::thread_runtime::block_on(async { ctx.sql(sql).await?.collect().await })
                .map_err(|e| e.to_string())?;
        let text = arrow::util::pretty::pretty_format_batches(&batches)
            .unwrap()
            .to_string();
        let mut lines: Vec<String> = text.lines().skip(3).map(str::to_string).collect();
        lines.sort();
        Ok(lines)
    }

    /// `sql`'s optimized logical plan in `ctx`, indented, one node per line.
    pub(crate) fn optimized_plan(ctx: &SessionContext, sql: &str) -> String {
        let frame = crate::thread_runtime::block_on(ctx.sql(sql)).unwrap();
        format!("{}", frame.into_optimized_plan().unwrap().display_indent())
    }
}
