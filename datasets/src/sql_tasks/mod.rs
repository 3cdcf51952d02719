//! SQL queries as stages of tasks: a query's plan is cut at its exchanges, and everything
//! below the final merge runs as tasks on the cluster's nodes, over hash partitions that are
//! objects in the store.
//!
//! DataFusion plans a query in the driver as usual. Then the physical optimizer rule
//! [`StageTasks`], which runs after DataFusion's own rules, walks the plan from the leaves up
//! and finds the work that can run one partition at a time: file scans (local Parquet, CSV,
//! JSON) and registered datasets' blocks and, above them, operators that compute output partition *i* from input partition *i*
//! (filters, projections, partial and partitioned aggregates, sorts of a partition, windows,
//! partitioned joins). Such work is cut into **stages**:
//!
//! * a **hash exchange** (`RepartitionExec` by hash) over such work becomes a stage whose
//!   task *i* runs input partition *i* and splits its rows by the same hash into one block of
//!   *n* batches; the operators above read partition *j* as batch *j* of every task's block
//!   (a reduce task is given only that batch of each, [`manta_engine::TaskSpec::input_batches`]);
//! * a join that **collects its build side** (`HashJoinExec` in `CollectLeft` mode) gets the
//!   build side as a stage of its own, run once, its blocks read whole by every probe task (a
//!   broadcast);
//! * a join that collects its build side but emits rows for build rows only once every probe
//!   partition has been seen (left, full, left semi and anti, mark) is planned again in
//!   `Partitioned` mode: both sides become hash stages by the join keys, and each task joins
//!   one partition of keys (across tasks nobody could track which build rows matched); a semi,
//!   anti or mark join first cuts its probe side down to the rows that match some build row
//!   (a right semi join against the build side, broadcast), so only those travel;
//! * a partitioned join whose build side turns out small once its stage has run is run with
//!   that side broadcast instead, and its probe side is not exchanged (see [`adaptive`]);
//! * a round-robin spread (`RepartitionExec` round robin) over such work is dropped: it only
//!   makes more partitions of the same rows;
//! * a stage that does the same work as one made before (a view the query reads twice) is
//!   that one, run once ([`Stage::does_the_same_as`]);
//! * where the driver's own work begins (a merge of sorted partitions, a final aggregate over
//!   all partitions, a global limit), the work below becomes a stage whose partitions the
//!   driver reads in place, one per task.
//!
//! ```text
//!  driver: SortPreservingMergeExec
//!            StageExec: stage=2, read=partitions      ─┐ tasks: partition j of
//!              SortExec, AggregateExec(FinalPartitioned) │ every stage-1 block
//!                StageExec: stage=1, read=hash        ─┐ tasks: file partition i,
//!                  RepartitionExec(Hash) ─ AggregateExec(Partial) ─ DataSourceExec
//! ```
//!
//! A [`StageExec`] stands where a stage is read; its child is the stage's fragment, so
//! `EXPLAIN` shows the stages as a tree, and `EXPLAIN ANALYZE` shows on each what its tasks
//! did. A stage runs when first read, after the stages it reads (see [`stage`]), and its tasks
//! go through the client, so their outputs keep their lineage (a lost one is made again) and
//! their placement follows their inputs. A scalar subquery's value travels as a literal
//! written in when the stage runs (see [`subquery_values`]). Work that cannot travel (an
//! operator `datafusion-proto` does not encode, an expression bound outside the fragment) stays
//! in the driver, reading the stages below it.
//!
//! A registered dataset's scan answers a [`DatasetBlocksExec`]: its pipeline's blocks, left in
//! the store, one partition each, which stages read like file scans (task *i* is given block
//! *i*).
//!
//! The rule is on for contexts connected to a cluster, and `Config::sql_tasks` turns it on or
//! off.

mod adaptive;
mod blocks;
mod exec;
mod input;
mod metrics;
mod stage;
mod subquery_values;
mod task;

use std::sync::Arc;

use datafusion::common::JoinType;
use datafusion::common::config::ConfigOptions;
use datafusion::common::tree_node::{Transformed, TreeNode};
use datafusion::datasource::physical_plan::FileScanConfig;
use datafusion::datasource::source::DataSourceExec;
use datafusion::error::Result;
use datafusion::physical_optimizer::PhysicalOptimizerRule;
use datafusion::physical_plan::aggregates::{AggregateExec, AggregateMode};
use datafusion::physical_plan::coalesce_partitions::CoalescePartitionsExec;
use datafusion::physical_plan::coop::CooperativeExec;
use datafusion::physical_plan::filter::FilterExec;
use datafusion::physical_plan::joins::{HashJoinExec, PartitionMode, SortMergeJoinExec};
use datafusion::physical_plan::limit::LocalLimitExec;
use datafusion::physical_plan::projection::ProjectionExec;
use datafusion::physical_plan::repartition::RepartitionExec;
use datafusion::physical_plan::sorts::sort::SortExec;
use datafusion::physical_plan::sorts::sort_preserving_merge::SortPreservingMergeExec;
use datafusion::physical_plan::statistics::{StatisticsArgs, StatisticsContext};
use datafusion::physical_plan::windows::{BoundedWindowAggExec, WindowAggExec};
use datafusion::physical_plan::{
    Distribution, ExecutionPlan, ExecutionPlanProperties, Partitioning,
    replace_children_if_necessary,
};
use manta_scheduler::Client;

pub use blocks::DatasetBlocksExec;
pub use exec::StageExec;
pub use input::Read;
pub use stage::{Output, Stage};
pub use task::STAGE_FUNCTION;

/// The physical optimizer rule (see the module doc).
#[derive(Debug)]
pub struct StageTasks {
    client: Client,
}

impl StageTasks {
    /// The rule, submitting tasks through `client`.
    pub fn new(client: Client) -> Self {
        Self { client }
    }
}

impl PhysicalOptimizerRule for StageTasks {
    fn optimize(
        &self,
        plan: Arc<dyn ExecutionPlan>,
        config: &ConfigOptions,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        let mut cut = Cut {
            client: self.client.clone(),
            stages: 0,
            partitions: config.execution.target_partitions.max(1),
            broadcast_rows: config.optimizer.hash_join_single_partition_threshold_rows,
            made: Vec::new(),
        };
        let plan = plan.transform_up(|node| Ok(cut.visit(node)))?.data;
        // A plan that runs whole as tasks: the driver reads its partitions.
        Ok(if in_tasks(&plan) && !read_in_place(&plan) {
            cut.stage(Arc::clone(&plan), Output::Partitions, Read::Partitions)
                .unwrap_or(plan)
        } else {
            plan
        })
    }

    fn name(&self) -> &str {
        "manta_stage_tasks"
    }

    fn schema_check(&self) -> bool {
        true
    }
}

/// The walk that cuts a plan into stages.
struct Cut {
    client: Client,
    /// Stages made so far.
    stages: usize,
    /// How many hash partitions an exchange this rule adds makes (the session's target).
    partitions: usize,
    /// The most rows DataFusion estimates a join side it broadcasts to have.
    broadcast_rows: usize,
    /// The stages made so far: a new stage that does the same work as one of them is that
    /// one (see [`Stage::does_the_same_as`]).
    made: Vec<Arc<Stage>>,
}

impl Cut {
    /// `node` (whose children have been visited) with its exchanges and the driver's inputs
    /// cut into stages.
    fn visit(&mut self, node: Arc<dyn ExecutionPlan>) -> Transformed<Arc<dyn ExecutionPlan>> {
        let (node, merged) = self.merge_inputs(node);
        let visited = self.visit_merged(node);
        match merged {
            true => Transformed::yes(visited.data),
            false => visited,
        }
    }

    /// `node` with each input it needs as one partition (`Distribution::SinglePartition`)
    /// that has several merged into one, and whether there was one. DataFusion planned the
    /// inputs before this rule changed them: a join it collected in one partition and this rule
    /// partitioned now has as many partitions as the exchange it added, and a `SortExec` above
    /// it that sorts one partition would read only the first. An input that runs in tasks
    /// becomes a stage the driver reads, merged there; one that must stay in order is merged
    /// in order, if it says what its order is.
    fn merge_inputs(&mut self, node: Arc<dyn ExecutionPlan>) -> (Arc<dyn ExecutionPlan>, bool) {
        let requirements = node.input_distribution_requirements();
        let orders = node.required_input_ordering();
        let mut merged = false;
        let children: Vec<Arc<dyn ExecutionPlan>> = node
            .children()
            .into_iter()
            .enumerate()
            .map(|(i, child)| {
                let single = matches!(
                    requirements.child_distribution(i),
                    Some(Distribution::SinglePartition)
                );
                if !single || child.output_partitioning().partition_count() <= 1 {
                    return Arc::clone(child);
                }
                let ordered = orders.get(i).is_some_and(Option::is_some);
                let ordering = child.output_ordering().cloned();
                if ordered && ordering.is_none() {
                    return Arc::clone(child);
                }
                let input = match in_tasks(child) && !read_in_place(child) {
                    true => self
                        .stage(Arc::clone(child), Output::Partitions, Read::Partitions)
                        .unwrap_or_else(|| Arc::clone(child)),
                    false => Arc::clone(child),
                };
                merged = true;
                match (ordered, ordering) {
                    (true, Some(ordering)) => {
                        Arc::new(SortPreservingMergeExec::new(ordering, input)) as _
                    }
                    _ => Arc::new(CoalescePartitionsExec::new(input)) as _,
                }
            })
            .collect();
        if !merged {
            return (node, false);
        }
        match replace_children_if_necessary(Arc::clone(&node), children) {
            Ok(node) => (node, true),
            Err(e) => {
                tracing::debug!("{} keeps its inputs unmerged: {e}", node.name());
                (node, false)
            }
        }
    }

    /// [`visit`](Self::visit), once the inputs that must be one partition are.
    fn visit_merged(
        &mut self,
        node: Arc<dyn ExecutionPlan>,
    ) -> Transformed<Arc<dyn ExecutionPlan>> {
        // A hash exchange over work that runs as tasks: its map side becomes a stage.
        if let Some(repartition) = node.downcast_ref::<RepartitionExec>()
            && matches!(repartition.partitioning(), Partitioning::Hash(..))
            && !repartition.preserve_order()
            && in_tasks(repartition.input())
        {
            return match self.stage(Arc::clone(&node), Output::Hash, Read::Hash) {
                Some(read) => Transformed::yes(read),
                None => Transformed::no(node),
            };
        }
        // A round-robin spread over work that runs as tasks: only more partitions of the same
        // rows, which the tasks do not need (they run where their inputs are).
        if let Some(repartition) = node.downcast_ref::<RepartitionExec>()
            && matches!(repartition.partitioning(), Partitioning::RoundRobinBatch(_))
            && in_tasks(repartition.input())
        {
            return Transformed::yes(Arc::clone(repartition.input()));
        }
        // A join that collects its build side: built once, broadcast to every probe task.
        if let Some(join) = node.downcast_ref::<HashJoinExec>()
            && *join.partition_mode() == PartitionMode::CollectLeft
            && probe_side_only(*join.join_type())
            && in_tasks(join.right())
        {
            let build = match join.left().downcast_ref::<CoalescePartitionsExec>() {
                Some(coalesce) if coalesce.fetch().is_none() => Arc::clone(coalesce.input()),
                _ => Arc::clone(join.left()),
            };
            let broadcast = match build.downcast_ref::<StageExec>() {
                // Already a stage (the build side's gather was visited first): read it whole.
                Some(stage) => Some(Arc::new(StageExec::new(
                    Arc::clone(stage.stage()),
                    Read::Broadcast,
                )) as Arc<dyn ExecutionPlan>),
                None if in_tasks(&build) => self.stage(build, Output::Partitions, Read::Broadcast),
                None => None,
            };
            if let Some(read) = broadcast
                && let Ok(joined) = replace_children_if_necessary(
                    Arc::clone(&node),
                    vec![read, Arc::clone(join.right())],
                )
            {
                return Transformed::yes(joined);
            }
        }
        // A join that collects its build side but must see every probe partition to finish
        // (left, full, left semi and anti, mark): both sides hash-partitioned by the join keys
        // instead, so that each task joins one partition of keys (DataFusion's `Partitioned`
        // mode), rather than the whole probe side travelling to the driver.
        if let Some(join) = node.downcast_ref::<HashJoinExec>()
            && *join.partition_mode() == PartitionMode::CollectLeft
            && !probe_side_only(*join.join_type())
            && !join.null_aware
            // A limit pushed into the join counts its rows in its one partition.
            && join.fetch().is_none()
            && in_tasks(join.right())
            && let Some(joined) = self.partition_join(join)
        {
            return Transformed::yes(joined);
        }
        // A partitioned semi, anti or mark join whose kept side is small: the other side is
        // cut down to its rows matching a kept row before it is exchanged.
        if let Some(join) = node.downcast_ref::<HashJoinExec>()
            && *join.partition_mode() == PartitionMode::Partitioned
            && let Some(joined) = self.reduce_partitioned_join(join)
        {
            return Transformed::yes(joined);
        }
        if in_tasks(&node) {
            return Transformed::no(node);
        }
        // The driver's work: each input that runs as tasks becomes a stage it reads.
        let mut changed = false;
        let children = node
            .children()
            .into_iter()
            .map(|child| {
                if in_tasks(child) && !read_in_place(child) {
                    let read = self.stage(Arc::clone(child), Output::Partitions, Read::Partitions);
                    if let Some(read) = read {
                        changed = true;
                        return read;
                    }
                }
                Arc::clone(child)
            })
            .collect();
        if !changed {
            return Transformed::no(node);
        }
        match replace_children_if_necessary(Arc::clone(&node), children) {
            Ok(node) => Transformed::yes(node),
            Err(e) => {
                tracing::debug!("{} keeps its inputs in the driver: {e}", node.name());
                Transformed::no(node)
            }
        }
    }

    /// `join` (which collects its build side) in `Partitioned` mode, each side a stage
    /// hash-partitioned by its join keys; `None` if its build side does not run in tasks or a
    /// side cannot travel.
    ///
    /// A semi, anti or mark join reduces its probe side first: only probe rows that match
    /// some build row can change its answer, so the probe side's tasks keep just those (a
    /// right semi join against the build side, computed once and broadcast to them) before
    /// the exchange. TPC-H q21's `EXISTS` then exchanges the few hundred thousand lineitems
    /// of the orders it asks about, not all six million.
    fn partition_join(&mut self, join: &HashJoinExec) -> Option<Arc<dyn ExecutionPlan>> {
        let build = match join.left().downcast_ref::<CoalescePartitionsExec>() {
            Some(coalesce) if coalesce.fetch().is_none() => Arc::clone(coalesce.input()),
            _ => Arc::clone(join.left()),
        };
        let (build, number, probe) = if reduces_probe_side(*join.join_type()) {
            let collected = match build.downcast_ref::<StageExec>() {
                // The build side's gather, visited first: the stage both reads share.
                Some(stage) if stage.stage().output() == Output::Partitions => {
                    Arc::clone(stage.stage())
                }
                Some(_) => return None,
                None if in_tasks(&build) => self.new_stage(None, build, Output::Partitions)?,
                None => return None,
            };
            let reduced = reduced(join, Arc::clone(&collected), Arc::clone(join.right()), true)?;
            let partitions = Arc::new(StageExec::new(collected, Read::Partitions));
            (partitions as Arc<dyn ExecutionPlan>, None, reduced)
        } else {
            let (build, number) = match build.downcast_ref::<StageExec>() {
                // The build side's gather, visited first, is a stage already: its fragment is
                // hash-partitioned instead, under its number (the gather is never run).
                Some(gathered) if gathered.read() == Read::Partitions => (
                    Arc::clone(gathered.stage().fragment()),
                    Some(gathered.stage().number()),
                ),
                Some(_) => return None,
                None if in_tasks(&build) => (build, None),
                None => return None,
            };
            (build, number, Arc::clone(join.right()))
        };
        let hashed = |side: Arc<dyn ExecutionPlan>, keys: Vec<_>| {
            RepartitionExec::try_new(side, Partitioning::Hash(keys, self.partitions))
                .ok()
                .map(|r| Arc::new(r) as Arc<dyn ExecutionPlan>)
        };
        let probe_keys = join.on().iter().map(|(_, r)| Arc::clone(r)).collect();
        let probe = hashed(probe, probe_keys)?;
        let build_keys = join.on().iter().map(|(l, _)| Arc::clone(l)).collect();
        let build = hashed(build, build_keys)?;
        let build = Arc::new(StageExec::new(
            self.new_stage(number, build, Output::Hash)?,
            Read::Hash,
        ));
        let probe = self.stage(probe, Output::Hash, Read::Hash)?;
        let joined = join
            .builder()
            .with_partition_mode(PartitionMode::Partitioned)
            .with_new_children(vec![build, probe])
            .and_then(|builder| builder.reset_state().build_exec());
        joined
            .inspect_err(|e| tracing::debug!("a join stays in the driver: {e}"))
            .ok()
    }

    /// `join` (partitioned, both sides hash stages) with the side whose rows it does not emit
    /// cut down, in that side's stage, to the rows matching a row of the side it keeps (a
    /// right semi join against the kept side's stage, read whole); `None` unless the join is
    /// a semi, anti or mark join whose kept side DataFusion estimates small enough to
    /// broadcast. TPC-H q21's `NOT EXISTS` then exchanges the lines of the 73 K candidate
    /// lines' orders, not all 3.8 M late lines.
    fn reduce_partitioned_join(&mut self, join: &HashJoinExec) -> Option<Arc<dyn ExecutionPlan>> {
        if join.null_aware {
            return None;
        }
        let keeps_left = match join.join_type() {
            JoinType::LeftSemi | JoinType::LeftAnti | JoinType::LeftMark => true,
            JoinType::RightSemi | JoinType::RightAnti | JoinType::RightMark => false,
            _ => return None,
        };
        let hash_stage = |side: &Arc<dyn ExecutionPlan>| {
            side.downcast_ref::<StageExec>()
                .filter(|s| s.read() == Read::Hash && s.stage().output() == Output::Hash)
                .map(|s| Arc::clone(s.stage()))
        };
        let (left, right) = (hash_stage(join.left())?, hash_stage(join.right())?);
        let (kept, other) = if keeps_left {
            (left, right)
        } else {
            (right, left)
        };
        let rows = StatisticsContext::new()
            .compute(kept.fragment().as_ref(), &StatisticsArgs::new())
            .ok()?
            .num_rows;
        tracing::debug!(
            stage = kept.number(),
            ?rows,
            "the kept side of a semi or anti join"
        );
        if rows
            .get_value()
            .is_none_or(|&rows| rows > self.broadcast_rows)
        {
            return None;
        }
        let exchange = other.fragment().downcast_ref::<RepartitionExec>()?;
        let reduced = reduced(join, kept, Arc::clone(exchange.input()), keeps_left)?;
        let exchange = RepartitionExec::try_new(reduced, exchange.partitioning().clone()).ok()?;
        // Made again in place of the stage it replaces, which never runs.
        let other = Arc::new(StageExec::new(
            self.new_stage(Some(other.number()), Arc::new(exchange), Output::Hash)?,
            Read::Hash,
        ));
        let children: Vec<Arc<dyn ExecutionPlan>> = match keeps_left {
            true => vec![Arc::clone(join.left()), other],
            false => vec![other, Arc::clone(join.right())],
        };
        join.builder()
            .with_new_children(children)
            .and_then(|builder| builder.reset_state().build_exec())
            .inspect_err(|e| tracing::debug!("a join's other side is not reduced: {e}"))
            .ok()
    }

    /// A [`StageExec`] reading a new stage that runs `fragment`, or `None` (and the reason in
    /// the log) if the fragment cannot travel to tasks.
    fn stage(
        &mut self,
        fragment: Arc<dyn ExecutionPlan>,
        output: Output,
        read: Read,
    ) -> Option<Arc<dyn ExecutionPlan>> {
        let stage = self.new_stage(None, fragment, output)?;
        Some(Arc::new(StageExec::new(stage, read)))
    }

    /// A new stage running `fragment`, numbered `number` if given (a stage made again in
    /// place of one that will never run), else the next number, or else a stage made before
    /// that does the same work; `None` (and the reason in the log) if the fragment cannot
    /// travel to tasks.
    fn new_stage(
        &mut self,
        number: Option<usize>,
        fragment: Arc<dyn ExecutionPlan>,
        output: Output,
    ) -> Option<Arc<Stage>> {
        let name = fragment.name().to_string();
        let next = number.unwrap_or(self.stages + 1);
        match Stage::try_new(next, fragment, output, self.client.clone()) {
            Ok(stage) => {
                if number.is_none()
                    && let Some(same) = self.made.iter().find(|made| made.does_the_same_as(&stage))
                {
                    tracing::debug!(stage = same.number(), "{name} is a stage made before");
                    return Some(Arc::clone(same));
                }
                self.stages = self.stages.max(next);
                let stage = Arc::new(stage.with_broadcast_if_small(self.broadcast_rows));
                self.made.push(Arc::clone(&stage));
                Some(stage)
            }
            Err(e) => {
                tracing::debug!("{name} stays in the driver: it does not travel ({e})");
                None
            }
        }
    }
}

/// Whether the driver reads `node` as it is: a stage's output, or a dataset's blocks (a stage
/// of its own would only copy them).
fn read_in_place(node: &Arc<dyn ExecutionPlan>) -> bool {
    node.is::<StageExec>() || node.is::<DatasetBlocksExec>()
}

/// Whether `node` can run one partition at a time in tasks: a local file scan, a registered
/// dataset's blocks, a stage's output read by hash or broadcast, or an operator computing
/// partition *i* from partition *i* of inputs that can.
fn in_tasks(node: &Arc<dyn ExecutionPlan>) -> bool {
    if let Some(stage) = node.downcast_ref::<StageExec>() {
        return stage.runs_in_tasks();
    }
    if node.is::<DatasetBlocksExec>() {
        return true;
    }
    if let Some(source) = node.downcast_ref::<DataSourceExec>() {
        return source
            .data_source()
            .downcast_ref::<FileScanConfig>()
            .is_some_and(|files| files.object_store_url.as_str().starts_with("file://"));
    }
    let per_partition = node.is::<FilterExec>()
        || node.is::<ProjectionExec>()
        || node.is::<CooperativeExec>()
        || node.is::<LocalLimitExec>()
        || node.is::<SortExec>()
        || node.is::<BoundedWindowAggExec>()
        || node.is::<WindowAggExec>()
        || node.is::<SortMergeJoinExec>()
        || node.downcast_ref::<AggregateExec>().is_some_and(|a| {
            matches!(
                a.mode(),
                AggregateMode::Partial
                    | AggregateMode::FinalPartitioned
                    | AggregateMode::SinglePartitioned
            )
        })
        || node.downcast_ref::<HashJoinExec>().is_some_and(|join| {
            match join.partition_mode() {
                PartitionMode::Partitioned => true,
                // Its build side must be a broadcast stage, or every task would build it.
                PartitionMode::CollectLeft => {
                    probe_side_only(*join.join_type())
                        && join
                            .left()
                            .downcast_ref::<StageExec>()
                            .is_some_and(|s| s.read() == Read::Broadcast)
                }
                PartitionMode::Auto => false,
            }
        });
    per_partition && node.children().iter().all(|child| in_tasks(child))
}

/// Whether a join that collects its build side can run each probe partition in a task of its
/// own: only if it emits nothing for build rows after the probe side ends (build rows never
/// or not matched are known only once every probe partition has been seen, which in one
/// process DataFusion tracks across partitions, and across tasks nobody would).
fn probe_side_only(join_type: JoinType) -> bool {
    matches!(
        join_type,
        JoinType::Inner
            | JoinType::Right
            | JoinType::RightSemi
            | JoinType::RightAnti
            | JoinType::RightMark
    )
}

/// `other`, one side of semi, anti or mark `join`, cut down to its rows matching a row of the
/// side the join keeps (left if `keeps_left`), whose stage is `kept`: a right semi join with
/// `kept` read whole as its build side, on `join`'s keys and filter turned to match.
fn reduced(
    join: &HashJoinExec,
    kept: Arc<Stage>,
    other: Arc<dyn ExecutionPlan>,
    keeps_left: bool,
) -> Option<Arc<dyn ExecutionPlan>> {
    let (on, filter) = match keeps_left {
        true => (join.on().to_vec(), join.filter().cloned()),
        false => (
            join.on()
                .iter()
                .map(|(l, r)| (Arc::clone(r), Arc::clone(l)))
                .collect(),
            join.filter().map(|f| f.swap()),
        ),
    };
    join.builder()
        .with_type(JoinType::RightSemi)
        .with_partition_mode(PartitionMode::CollectLeft)
        .with_projection(None)
        .with_on(on)
        .with_filter(filter)
        .with_new_children(vec![Arc::new(StageExec::new(kept, Read::Broadcast)), other])
        .and_then(|builder| builder.reset_state().build_exec())
        .inspect_err(|e| tracing::debug!("a join's other side is not reduced: {e}"))
        .ok()
}

/// Whether a join's answer depends on the probe side only through the probe rows that match
/// some build row (semi, anti and mark joins keep or mark build rows; a probe row matching
/// none changes nothing), so the probe side can be cut down to those before it travels.
fn reduces_probe_side(join_type: JoinType) -> bool {
    matches!(
        join_type,
        JoinType::LeftSemi | JoinType::LeftAnti | JoinType::LeftMark
    )
}
