//! Broadcasting a join's build side that turns out small once it has run.
//!
//! DataFusion chooses between a partitioned hash join (both sides exchanged by the join keys)
//! and one that collects its build side (the build side broadcast, the probe side read where it
//! is) by its estimate of the build side's rows. Estimates through filters, semi joins and
//! aggregates can be far off: in TPC-H q18 the orders kept by `o_orderkey IN (...)` are
//! estimated at hundreds of thousands and are 57, so all six million line items were exchanged
//! to meet them.
//!
//! A stage whose fragment is such a partitioned join below its own hash exchange gets a second
//! form, made when the plan is cut: the same join collecting its build side, read whole from
//! the build side's stage (a broadcast), over the probe side's input below the probe side's
//! exchange. When the stage runs, it runs the build side's stage first and counts the rows its
//! tasks made ([`manta_engine::ObjectMeta::num_rows`]). The second form runs, and the probe
//! side's exchange never does, if they are at most the session's broadcast threshold
//! (`hash_join_single_partition_threshold_rows`) and sending them to every task moves fewer
//! rows than the probe side's exchange would, by DataFusion's estimate of that side (no
//! estimate, no broadcast). In q21 a build side of 182 K rows is not sent to each task to spare
//! an exchange of 73 K. Either way the stage's output is split by the same top exchange, so
//! whoever reads it reads the same partitions.
//!
//! ```text
//!   as planned                                      run when the build side is small
//!   RepartitionExec(Hash)                           RepartitionExec(Hash)
//!     HashJoinExec(Partitioned)                       HashJoinExec(CollectLeft)
//!       StageExec(build, read=hash)                     StageExec(build, read=broadcast)
//!       StageExec(probe, read=hash)                     (the probe stage's input, in place)
//!         RepartitionExec(Hash) ── probe input
//! ```
//!
//! Only the operators that do not care how their input is partitioned may stand between the
//! exchange and the join (projections, filters, partial aggregates): the join's output is no
//! longer partitioned by its keys. Only joins that emit rows for probe rows alone qualify
//! (inner, right, right semi and anti, mark): with the build side whole in every task, each
//! probe row still meets every build row exactly once.

use std::sync::Arc;

use datafusion::physical_plan::aggregates::{AggregateExec, AggregateMode};
use datafusion::physical_plan::coop::CooperativeExec;
use datafusion::physical_plan::filter::FilterExec;
use datafusion::physical_plan::joins::{HashJoinExec, PartitionMode};
use datafusion::physical_plan::projection::ProjectionExec;
use datafusion::physical_plan::repartition::RepartitionExec;
use datafusion::physical_plan::statistics::{StatisticsArgs, StatisticsContext};
use datafusion::physical_plan::{ExecutionPlan, Partitioning, replace_children_if_necessary};

use super::exec::StageExec;
use super::input::Read;
use super::stage::{Output, Stage};

/// A stage's second form (see the module doc).
#[derive(Debug)]
pub(super) struct BroadcastIfSmall {
    /// The join's build side: a hash stage, run first and its rows counted.
    pub build: Arc<Stage>,
    /// The most build rows broadcast ([`most_rows_to_broadcast`]).
    pub max_rows: u64,
    /// The stage with the join collecting its build side.
    pub broadcast: Arc<Stage>,
}

/// A hash stage's fragment with its partitioned join collecting its build side instead.
pub(super) struct BroadcastForm {
    pub fragment: Arc<dyn ExecutionPlan>,
    /// The join's build side's stage.
    pub build: Arc<Stage>,
    /// How many rows DataFusion estimates the probe side's exchange to move, if it can.
    pub probe_rows: Option<u64>,
}

/// `fragment` (a hash stage's) in its broadcast form; `None` unless the fragment has the shape
/// of the module doc.
pub(super) fn broadcast_form(fragment: &Arc<dyn ExecutionPlan>) -> Option<BroadcastForm> {
    let exchange = fragment
        .downcast_ref::<RepartitionExec>()
        .filter(|r| matches!(r.partitioning(), Partitioning::Hash(..)))?;
    let mut sides = None;
    let input = rewrite_join(exchange.input(), &mut sides)?;
    let (build, probe) = sides?;
    let probe_rows = StatisticsContext::new()
        .compute(probe.fragment().as_ref(), &StatisticsArgs::new())
        .ok()
        .and_then(|stats| stats.num_rows.get_value().map(|&rows| rows as u64));
    Some(BroadcastForm {
        fragment: replace_children_if_necessary(Arc::clone(fragment), vec![input]).ok()?,
        build,
        probe_rows,
    })
}

/// The most build rows worth broadcasting to each of `tasks` tasks instead of exchanging a
/// probe side of `probe_rows`: within `max_rows`, and fewer rows sent than the probe side's
/// (`build * tasks < probe`).
pub(super) fn most_rows_to_broadcast(max_rows: u64, probe_rows: u64, tasks: usize) -> u64 {
    max_rows.min(probe_rows.saturating_sub(1) / (tasks.max(1) as u64))
}

/// `node` with the join below it (through operators indifferent to partitioning) collecting
/// its build side; the build and probe sides' stages go in `sides`.
fn rewrite_join(
    node: &Arc<dyn ExecutionPlan>,
    sides: &mut Option<(Arc<Stage>, Arc<Stage>)>,
) -> Option<Arc<dyn ExecutionPlan>> {
    let indifferent = node.is::<ProjectionExec>()
        || node.is::<FilterExec>()
        || node.is::<CooperativeExec>()
        || node
            .downcast_ref::<AggregateExec>()
            .is_some_and(|a| *a.mode() == AggregateMode::Partial);
    if indifferent {
        let [child] = node.children()[..] else {
            return None;
        };
        let child = rewrite_join(child, sides)?;
        return replace_children_if_necessary(Arc::clone(node), vec![child]).ok();
    }
    let join = node.downcast_ref::<HashJoinExec>()?;
    if *join.partition_mode() != PartitionMode::Partitioned
        || !super::probe_side_only(*join.join_type())
        || join.null_aware
    {
        return None;
    }
    let hash_stage = |side: &Arc<dyn ExecutionPlan>| {
        side.downcast_ref::<StageExec>()
            .filter(|s| s.read() == Read::Hash && s.stage().output() == Output::Hash)
            .map(|s| Arc::clone(s.stage()))
    };
    let (left, right) = (hash_stage(join.left())?, hash_stage(join.right())?);
    let probe_input = right.fragment().downcast_ref::<RepartitionExec>()?.input();
    let joined = join
        .builder()
        .with_partition_mode(PartitionMode::CollectLeft)
        .with_new_children(vec![
            Arc::new(StageExec::new(Arc::clone(&left), Read::Broadcast)),
            Arc::clone(probe_input),
        ])
        .and_then(|builder| builder.reset_state().build_exec())
        .inspect_err(|e| tracing::debug!("a join has no broadcast form: {e}"))
        .ok()?;
    *sides = Some((left, right));
    Some(joined)
}

#[cfg(test)]
mod tests {
    use super::most_rows_to_broadcast;

    #[test]
    fn a_build_side_is_broadcast_only_when_that_sends_fewer_rows_than_the_probe_side() {
        for (max, probe, tasks) in [
            (2_097_152, 6_001_215, 2),
            (2_097_152, 73_089, 2),
            (10, 7, 1),
        ] {
            let most = most_rows_to_broadcast(max, probe, tasks);
            let sent = |rows: u64| rows * (tasks as u64);
            assert!(most <= max);
            assert!(sent(most) < probe, "{most} x {tasks} >= {probe}");
            // One more row would break a bound.
            assert!(most == max || sent(most + 1) >= probe);
        }
        // q18: 57 orders against six million line items.
        assert!(57 <= most_rows_to_broadcast(2_097_152, 6_001_215, 2));
        // q21: 182 K lines sent to each of two tasks to spare exchanging 73 K: no.
        assert!(182_000 > most_rows_to_broadcast(2_097_152, 73_089, 2));
        assert_eq!(most_rows_to_broadcast(100, 0, 4), 0);
        assert_eq!(most_rows_to_broadcast(100, 1_000, 0), 100);
    }
}
