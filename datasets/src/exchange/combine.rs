//! Map-side combine for `groupby().aggregate()`: DataFusion's two-phase aggregation, split
//! between the map and the reduce tasks.
//!
//! Without it every input row travels to its group's reducer. With it, each map task first
//! aggregates its own block into *partial states* (a sum and a count for a mean, a count, a
//! mean and a sum of squared deviations for a standard deviation, ...), one row per group, and
//! only those rows are partitioned and moved; the reducer merges the states of its groups.
//! Both halves are DataFusion's own: the aggregate is planned once, unoptimised, which gives an
//! `AggregateExec` in `Partial` mode under one in `Final` mode. The map task does what the
//! partial one does over its block, with its group values and accumulators, in a loop of its
//! own that lanes integer and decimal sums ([`super::partial_states`]; the exec itself where
//! that loop does not apply); the reducer runs the final one (and the projection above it) over
//! the states it receives. The results are DataFusion's, bit for bit, as with one-phase
//! aggregation.
//!
//! The states carry, in their schema's metadata, the schema of the rows they were made from,
//! so the reducer plans exactly the aggregate the map tasks planned. `count_distinct` is not
//! combined (its state is the set of values, which saves little).

use std::collections::HashMap;
use std::sync::{Arc, LazyLock, Mutex};

use arrow::array::RecordBatch;
use arrow::compute::concat_batches;
use arrow::datatypes::{DataType, Schema, SchemaRef};
use datafusion::datasource::MemTable;
use datafusion::datasource::memory::MemorySourceConfig;
use datafusion::error::{DataFusionError, Result};
use datafusion::execution::SessionStateBuilder;
use datafusion::physical_plan::ExecutionPlan;
use datafusion::physical_plan::aggregates::{AggregateExec, AggregateMode};
use datafusion::physical_plan::execution_plan::replace_children_if_necessary;
use datafusion::prelude::{SessionConfig, SessionContext, col};

use super::partial_states::GroupedStates;
use super::{Aggregate, AggregateFunction};
use crate::ipc::{decode_schema, encode_schema};

/// The metadata key under which partial states carry their input's schema (hex IPC message).
const INPUT_SCHEMA_KEY: &str = "manta.combine.input_schema";

/// Whether these aggregates can be combined on the map side.
pub fn combinable(aggregates: &[Aggregate]) -> bool {
    aggregates
        .iter()
        .all(|a| a.function != AggregateFunction::CountDistinct)
}

/// The map half: the rows of `batches` (of `schema`) aggregated into partial states, one row
/// per group.
pub fn partial(
    schema: &SchemaRef,
    batches: Vec<RecordBatch>,
    keys: &[String],
    aggregates: &[Aggregate],
) -> Result<RecordBatch> {
    let mut partial = PartialAggregate::new(schema, keys, aggregates)?;
    for batch in batches {
        partial.push(batch)?;
    }
    partial.finish()
}

/// The map half fed a batch at a time: each batch is aggregated as it comes (by
/// [`GroupedStates`]), or, where that loop does not apply, kept for DataFusion's `Partial` exec
/// to run over them all at the end.
pub struct PartialAggregate {
    input_schema: SchemaRef,
    /// The indices of the string keys in the input's columns: they may come as dictionaries.
    string_keys: Vec<usize>,
    partial: Arc<dyn ExecutionPlan>,
    way: Way,
}

/// How a [`PartialAggregate`] aggregates.
enum Way {
    AsTheyCome(Box<GroupedStates>),
    AtTheEnd(Vec<RecordBatch>),
}

impl PartialAggregate {
    /// Partial states of `aggregates` by `keys`, over batches of `schema`.
    pub fn new(schema: &SchemaRef, keys: &[String], aggregates: &[Aggregate]) -> Result<Self> {
        let plan = plan(schema, keys, aggregates)?;
        let partial = find_aggregate(&plan, AggregateMode::Partial)?;
        let way = match GroupedStates::new(&partial)? {
            Some(states) => Way::AsTheyCome(Box::new(states)),
            None => Way::AtTheEnd(Vec::new()),
        };
        let string_keys = keys
            .iter()
            .filter_map(|key| schema.index_of(key).ok())
            .filter(|&i| is_string(schema.field(i).data_type()))
            .collect();
        Ok(Self {
            input_schema: Arc::clone(schema),
            string_keys,
            partial,
            way,
        })
    }

    /// Adds the rows of `batch`; a batch of other columns than the first is an error naming
    /// both (the accumulators read their arguments' types on trust, and would panic). A string
    /// key may come as a dictionary of strings (a stage's read of its codes): the states are
    /// the same.
    pub fn push(&mut self, batch: RecordBatch) -> Result<()> {
        let fields = batch.schema_ref().fields();
        let encoded = fields.len() == self.input_schema.fields().len()
            && fields
                .iter()
                .zip(self.input_schema.fields())
                .enumerate()
                .all(|(i, (came, own))| {
                    came.data_type() == own.data_type()
                        || self.string_keys.contains(&i)
                            && matches!(came.data_type(), DataType::Dictionary(_, values) if is_string(values))
                        || crate::narrow_decimals::wide_type(came.data_type()).as_ref()
                            == Some(own.data_type())
                });
        if !encoded {
            crate::columns::check_columns(&self.input_schema, std::slice::from_ref(&batch))?;
        }
        match &mut self.way {
            Way::AsTheyCome(states) => states.push(&batch),
            Way::AtTheEnd(batches) => {
                // The exec takes the input's own types.
                let plain = batch
                    .schema_ref()
                    .fields()
                    .iter()
                    .zip(self.input_schema.fields())
                    .all(|(came, own)| came.data_type() == own.data_type());
                batches.push(match plain {
                    true => batch,
                    false => crate::columns::conform(&batch, &self.input_schema)?,
                });
                Ok(())
            }
        }
    }

    /// The partial states, their schema tagged with the input's (see [`finish`]).
    pub fn finish(self) -> Result<RecordBatch> {
        let states = match self.way {
            Way::AsTheyCome(states) => states.finish()?,
            Way::AtTheEnd(batches) => {
                let input = MemorySourceConfig::try_new_exec(
                    &[batches],
                    Arc::clone(&self.input_schema),
                    None,
                )?;
                run(replace_children_if_necessary(self.partial, vec![input])?)?
            }
        };
        let mut metadata = states.schema().metadata().clone();
        metadata.insert(
            INPUT_SCHEMA_KEY.into(),
            hex::encode(encode_schema(&self.input_schema)),
        );
        let tagged = Arc::new(Schema::new_with_metadata(
            states.schema().fields().clone(),
            metadata,
        ));
        Ok(states.with_schema(tagged)?)
    }
}

/// Whether `data_type` is one of the string types.
fn is_string(data_type: &DataType) -> bool {
    matches!(
        data_type,
        DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View
    )
}

/// Whether `schema` is that of partial states (so the reduce must merge, not aggregate).
pub fn is_partial(schema: &Schema) -> bool {
    schema.metadata().contains_key(INPUT_SCHEMA_KEY)
}

/// The reduce half: merges the partial states of some groups into the aggregate's result.
pub fn finish(
    states_schema: &SchemaRef,
    states: Vec<RecordBatch>,
    keys: &[String],
    aggregates: &[Aggregate],
) -> Result<RecordBatch> {
    let encoded = states_schema
        .metadata()
        .get(INPUT_SCHEMA_KEY)
        .ok_or_else(|| DataFusionError::Internal("partial states without their input".into()))?;
    let input_schema = hex::decode(encoded)
        .ok()
        .and_then(|bytes| decode_schema(&bytes).ok())
        .ok_or_else(|| DataFusionError::Internal("unreadable partial states' schema".into()))?;
    let plan = plan(&input_schema, keys, aggregates)?;
    let partial = find_aggregate(&plan, AggregateMode::Partial)?;
    // The states as the partial aggregate's output, without the metadata tag.
    let plain = partial.schema();
    let states = states
        .into_iter()
        .map(|b| RecordBatch::try_new(Arc::clone(&plain), b.columns().to_vec()))
        .collect::<std::result::Result<Vec<_>, _>>()?;
    let merged = MemorySourceConfig::try_new_exec(&[states], plain, None)?;
    run(replace_final_input(&plan, merged)?)
}

/// What an aggregate's plan is made from: the input's schema, the keys, the aggregates.
type PlanKey = (Schema, Vec<String>, Vec<Aggregate>);

/// The plans made so far, shared by every task of the process: each map task of a `groupby`
/// and each reducer needs the same one, and making it (a session with all of DataFusion's
/// functions, then planning) cost as much as a twentieth of a map task over 250k rows.
/// Emptied when it holds [`MAX_CACHED_PLANS`], so it stays small whatever a process runs.
static PLANS: LazyLock<Mutex<HashMap<PlanKey, Arc<dyn ExecutionPlan>>>> =
    LazyLock::new(Default::default);

/// The most plans [`PLANS`] holds.
const MAX_CACHED_PLANS: usize = 64;

/// The aggregate's physical plan over `schema` (see [`make_plan`]), made once per process.
fn plan(
    schema: &SchemaRef,
    keys: &[String],
    aggregates: &[Aggregate],
) -> Result<Arc<dyn ExecutionPlan>> {
    let key = (schema.as_ref().clone(), keys.to_vec(), aggregates.to_vec());
    if let Some(plan) = lock_plans().get(&key) {
        return Ok(Arc::clone(plan));
    }
    let plan = make_plan(schema, keys, aggregates)?;
    let mut plans = lock_plans();
    if plans.len() >= MAX_CACHED_PLANS {
        plans.clear();
    }
    plans.insert(key, Arc::clone(&plan));
    Ok(plan)
}

/// [`PLANS`], locked (a panic while it was held left nothing half-done: it is a cache).
fn lock_plans() -> std::sync::MutexGuard<'static, HashMap<PlanKey, Arc<dyn ExecutionPlan>>> {
    PLANS
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// The aggregate's physical plan over `schema`, unoptimised: `Final` over `Partial` over the
/// scan of the whole input. Neither optimizer runs: the logical one would put projections
/// between the scan and the `Partial` aggregate (pruning columns, or sharing an aggregate asked
/// for twice), and the halves are run over batches of the input's own columns.
fn make_plan(
    schema: &SchemaRef,
    keys: &[String],
    aggregates: &[Aggregate],
) -> Result<Arc<dyn ExecutionPlan>> {
    let state = SessionStateBuilder::new()
        .with_config(SessionConfig::new().with_target_partitions(1))
        .with_default_features()
        .with_optimizer_rules(Vec::new())
        .with_physical_optimizer_rules(Vec::new())
        .build();
    let ctx = SessionContext::new_with_state(state);
    let table = MemTable::try_new(Arc::clone(schema), vec![Vec::new()])?;
    let groups = keys
        .iter()
        .map(|k| col(datafusion::common::Column::new_unqualified(k)))
        .collect();
    let frame = ctx
        .read_table(Arc::new(table))?
        .aggregate(groups, aggregates.iter().map(|a| a.expr(schema)).collect())?;
    crate::thread_runtime::block_on(frame.create_physical_plan())
}

/// The first aggregate node in `mode`, searching from the top.
fn find_aggregate(
    plan: &Arc<dyn ExecutionPlan>,
    mode: AggregateMode,
) -> Result<Arc<dyn ExecutionPlan>> {
    if let Some(aggregate) = plan.downcast_ref::<AggregateExec>()
        && *aggregate.mode() == mode
    {
        return Ok(Arc::clone(plan));
    }
    for child in plan.children() {
        if let Ok(found) = find_aggregate(child, mode) {
            return Ok(found);
        }
    }
    Err(DataFusionError::Internal(format!(
        "no {mode:?} aggregate in the plan"
    )))
}

/// `plan` with the input of its `Final` aggregate replaced by `input`.
fn replace_final_input(
    plan: &Arc<dyn ExecutionPlan>,
    input: Arc<dyn ExecutionPlan>,
) -> Result<Arc<dyn ExecutionPlan>> {
    if let Some(aggregate) = plan.downcast_ref::<AggregateExec>()
        && *aggregate.mode() == AggregateMode::Final
    {
        return replace_children_if_necessary(Arc::clone(plan), vec![input]);
    }
    let children = plan
        .children()
        .into_iter()
        .map(|child| replace_final_input(child, Arc::clone(&input)))
        .collect::<Result<Vec<_>>>()?;
    replace_children_if_necessary(Arc::clone(plan), children)
}

/// Runs a one-partition plan to one batch.
fn run(plan: Arc<dyn ExecutionPlan>) -> Result<RecordBatch> {
    let schema = plan.schema();
    let batches = crate::thread_runtime::block_on(datafusion::physical_plan::collect(
        plan,
        Arc::new(datafusion::execution::TaskContext::default()),
    ))?;
    Ok(concat_batches(&schema, &batches)?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::array::{Array, ArrayRef, Float64Array, Int64Array, StringArray};

    fn batch(keys: &[&str], values: &[f64]) -> RecordBatch {
        RecordBatch::try_from_iter([
            ("k", Arc::new(StringArray::from(keys.to_vec())) as _),
            ("v", Arc::new(Float64Array::from(values.to_vec())) as _),
            (
                "n",
                Arc::new(Int64Array::from(
                    values.iter().map(|v| *v as i64).collect::<Vec<_>>(),
                )) as _,
            ),
        ])
        .unwrap()
    }

    #[test]
    fn two_phases_give_what_one_phase_gives() {
        let aggregates = vec![
            Aggregate::count(),
            Aggregate::sum("n"),
            Aggregate::mean("v"),
            Aggregate::std("v"),
            Aggregate::min("v"),
            Aggregate::max("n"),
        ];
        let keys = vec!["k".to_string()];
        let parts = [
            batch(&["a", "b", "a"], &[1.0, 2.0, 4.0]),
            batch(&["b", "c"], &[8.0, 16.0]),
        ];
        let states: Vec<RecordBatch> = parts
            .iter()
            // Each part as two batches: a map task aggregates its batches as they come.
            .map(|p| {
                let halves = vec![p.slice(0, 1), p.slice(1, p.num_rows() - 1)];
                partial(&p.schema(), halves, &keys, &aggregates).unwrap()
            })
            .collect();
        assert!(is_partial(&states[0].schema()));
        let schema = states[0].schema();
        let combined = finish(&schema, states, &keys, &aggregates).unwrap();

        let all = concat_batches(&parts[0].schema(), &parts).unwrap();
        let ctx = SessionContext::new();
        ctx.register_batch("t", all).unwrap();
        let expected = crate::thread_runtime::block_on(async {
            ctx.sql(
                "SELECT k, count(1), sum(n), avg(v), stddev(v), min(v), max(n) FROM t GROUP BY k",
            )
            .await?
            .collect()
            .await
        })
        .unwrap();
        let expected = concat_batches(&expected[0].schema(), &expected).unwrap();
        // Rows as text, floats rounded: the merge adds in another order than one pass does.
        let rows = |b: &RecordBatch| {
            let mut rows: Vec<String> = (0..b.num_rows())
                .map(|i| {
                    b.columns()
                        .iter()
                        .map(|c| {
                            let text = arrow::util::display::array_value_to_string(c, i).unwrap();
                            match text.parse::<f64>() {
                                Ok(x) if text.contains('.') => format!("{x:.9e}"),
                                _ => text,
                            }
                        })
                        .collect::<Vec<_>>()
                        .join("|")
                })
                .collect();
            rows.sort();
            rows
        };
        assert_eq!(combined.num_rows(), 3);
        assert_eq!(rows(&combined), rows(&expected));
        assert_eq!(combined.num_columns(), 7);
    }

    #[test]
    fn the_same_aggregate_twice_combines() {
        let batch = RecordBatch::try_from_iter([
            ("nn_v", Arc::new(Int64Array::from(vec![1, 1, 0])) as _),
            (
                "min_v",
                Arc::new(Int64Array::from(vec![Some(3), None, Some(-2)])) as _,
            ),
            ("nn_g", Arc::new(Int64Array::from(vec![2, 0, 1])) as _),
        ])
        .unwrap();
        let keys = vec!["nn_v".to_string()];
        let aggregates = vec![
            Aggregate::min("min_v").alias("c1"),
            Aggregate::mean("nn_g").alias("c2"),
            Aggregate::mean("nn_g").alias("c3"),
        ];
        let states = partial(&batch.schema(), vec![batch.clone()], &keys, &aggregates).unwrap();
        let combined = finish(&states.schema(), vec![states], &keys, &aggregates).unwrap();
        assert_eq!(combined.num_rows(), 2);
        assert_eq!(combined.num_columns(), 4);
    }

    /// The map side's own loop ([`super::super::partial_states`], sums laned) gives what
    /// DataFusion's `Partial` exec gives, column for column and row for row, over random
    /// batches: keys of strings and integers with nulls, one or two of them; decimals and
    /// integers with nulls or without, some so large that their sums wrap; floats; empty
    /// batches; batches of few groups (whose rows are sorted by group) and of many; more
    /// groups than the lanes hold, reached part way through; and keys that are all
    /// dictionaries (grouped on their codes, or decoded when their codes combine too many ways),
    /// with values repeated, unused or null, and each batch its own dictionary.
    #[test]
    fn the_map_sides_loop_gives_the_execs_states() {
        use arrow::array::Decimal128Array;
        use rand::{Rng, SeedableRng};

        let mut rng = rand::rngs::StdRng::seed_from_u64(17);
        let aggregates = vec![
            Aggregate::count(),
            Aggregate::count_non_null("d"),
            Aggregate::sum("d"),
            Aggregate::mean("d"),
            Aggregate::sum("i"),
            Aggregate::mean("i"),
            Aggregate::count_non_null("i"),
            Aggregate::sum("f"),
            Aggregate::mean("f"),
            Aggregate::min("d"),
            Aggregate::max("i"),
            Aggregate::std("f"),
            Aggregate::sum("w"),
            Aggregate::mean("w"),
        ];
        for round in 0..200 {
            let many_groups = round % 10 == 0;
            let dictionaries = round % 4 == 3 || round % 20 == 0;
            let huge = round % 3 == 0;
            let key_range = if many_groups {
                12_000
            } else {
                rng.random_range(1..12)
            };
            let batches: Vec<RecordBatch> = (0..rng.random_range(1..5))
                .map(|_| {
                    let rows = match (many_groups, rng.random_bool(0.2)) {
                        (_, true) => 0,
                        (true, false) => rng.random_range(1_000..3_000),
                        (false, false) => rng.random_range(1..400),
                    };
                    // Some rounds without nulls, where sums and counts take every row.
                    let null_share = if round % 5 == 1 { 0.0 } else { 0.1 };
                    let opt = |rng: &mut rand::rngs::StdRng| !rng.random_bool(null_share);
                    let k1: Vec<Option<String>> = (0..rows)
                        .map(|_| {
                            opt(&mut rng).then(|| {
                                ["R", "A", "N", "ünï", ""][rng.random_range(0..5)].to_string()
                            })
                        })
                        .collect();
                    let k2: Vec<Option<i64>> = (0..rows)
                        .map(|_| opt(&mut rng).then(|| rng.random_range(0..key_range)))
                        .collect();
                    let d: Vec<Option<i128>> = (0..rows)
                        .map(|_| {
                            opt(&mut rng).then(|| rng.random_range(-1_000_000_000..1_000_000_000))
                        })
                        .collect();
                    let i: Vec<Option<i64>> = (0..rows)
                        .map(|_| {
                            opt(&mut rng).then(|| match huge {
                                true => rng.random_range(i64::MAX / 2..=i64::MAX),
                                false => rng.random_range(-1000..1000),
                            })
                        })
                        .collect();
                    let f: Vec<Option<f64>> = (0..rows)
                        .map(|_| opt(&mut rng).then(|| rng.random_range(-1e3..1e3)))
                        .collect();
                    // Wide decimals whose sums wrap past 128 bits in the rounds with huge values.
                    let w: Vec<Option<i128>> = (0..rows)
                        .map(|_| {
                            opt(&mut rng).then(|| match huge {
                                true => rng.random_range(i128::MAX / 2..=i128::MAX),
                                false => rng.random_range(-5..5),
                            })
                        })
                        .collect();
                    let (k1, k2, k3): (ArrayRef, ArrayRef, ArrayRef) = match dictionaries {
                        true => (
                            {
                                let k1 = encoded(&k1, "unused".into(), &mut rng, StringArray::from);
                                // Some rounds' string codes in 16 bits, not Parquet's 32.
                                let narrow = DataType::Dictionary(
                                    Box::new(DataType::Int16),
                                    Box::new(DataType::Utf8),
                                );
                                match round % 8 == 3 {
                                    true => arrow::compute::cast(&k1, &narrow).unwrap(),
                                    false => k1,
                                }
                            },
                            encoded(&k2, -1, &mut rng, Int64Array::from),
                            encoded(&k2, -1, &mut rng, Int64Array::from),
                        ),
                        false => (
                            Arc::new(StringArray::from(k1)),
                            Arc::new(Int64Array::from(k2.clone())),
                            Arc::new(Int64Array::from(k2)),
                        ),
                    };
                    RecordBatch::try_from_iter_with_nullable([
                        ("k1", k1, true),
                        ("k2", k2, true),
                        ("k3", k3, true),
                        (
                            "d",
                            Arc::new(
                                Decimal128Array::from(d)
                                    .with_precision_and_scale(15, 2)
                                    .unwrap(),
                            ) as _,
                            true,
                        ),
                        ("i", Arc::new(Int64Array::from(i)) as _, true),
                        ("f", Arc::new(Float64Array::from(f)) as _, true),
                        (
                            "w",
                            Arc::new(
                                Decimal128Array::from(w)
                                    .with_precision_and_scale(38, 0)
                                    .unwrap(),
                            ) as _,
                            true,
                        ),
                    ])
                    .unwrap()
                })
                .collect();
            let schema = batches[0].schema();
            let keys: Vec<String> = match (round % 3, many_groups, dictionaries) {
                // Codes that combine too many ways for a table.
                (_, true, true) => vec!["k1".into(), "k2".into(), "k3".into()],
                (_, true, false) | (0, _, _) => vec!["k2".into()],
                (1, _, _) => vec!["k1".into()],
                _ => vec!["k1".into(), "k2".into()],
            };
            let plan = plan(&schema, &keys, &aggregates).unwrap();
            let partial = find_aggregate(&plan, AggregateMode::Partial).unwrap();
            if round == 0 {
                // Laned: the counts, and the sums and means of decimals and integers, except
                // the mean of integers (taken in floats) and of `w` (whose sum DataFusion
                // keeps in 256 bits).
                let aggregate = partial.downcast_ref::<AggregateExec>().unwrap();
                let not_laned: Vec<String> = aggregate
                    .aggr_expr()
                    .iter()
                    .filter(|f| {
                        super::super::laned_sums::LanedSums::try_new(f, &schema)
                            .unwrap()
                            .is_none()
                    })
                    .map(|f| f.name().to_string())
                    .collect();
                assert_eq!(
                    not_laned,
                    [
                        "mean(i)", "sum(f)", "mean(f)", "min(d)", "max(i)", "std(f)", "mean(w)"
                    ]
                );
            }
            let mut states = GroupedStates::new(&partial)
                .unwrap()
                .expect("the loop takes a plain groupby");
            for batch in &batches {
                states.push(batch).unwrap();
            }
            let ours = states.finish().unwrap();
            let input = MemorySourceConfig::try_new_exec(&[batches], schema, None).unwrap();
            let theirs = run(replace_children_if_necessary(partial, vec![input]).unwrap()).unwrap();
            assert_eq!(ours.schema(), theirs.schema(), "round {round}");
            for (i, field) in theirs.schema().fields().iter().enumerate() {
                let (o, t) = (ours.column(i), theirs.column(i));
                let first = (0..t.len().min(o.len())).find(|&r| o.slice(r, 1) != t.slice(r, 1));
                assert!(
                    o.len() == t.len() && first.is_none(),
                    "round {round}, keys {keys:?}: {} differs ({} rows against {}) first at {first:?}: {:?} against {:?}",
                    field.name(),
                    o.len(),
                    t.len(),
                    first.map(|r| o.slice(r, 1)),
                    first.map(|r| t.slice(r, 1)),
                );
            }
        }
    }

    /// `values` dictionary-encoded the hard way: the dictionary holds their distinct values in
    /// random order, the first of them again, `unused` and a null; a null is a null key or a
    /// key to the null entry, and a repeated value is either of its two keys.
    fn encoded<T: Clone + PartialEq, A: Array + 'static>(
        values: &[Option<T>],
        unused: T,
        rng: &mut rand::rngs::StdRng,
        array: impl Fn(Vec<Option<T>>) -> A,
    ) -> ArrayRef {
        use arrow::array::{DictionaryArray, Int32Array};
        use rand::Rng;
        use rand::seq::SliceRandom;

        let mut dictionary: Vec<Option<T>> = Vec::new();
        for value in values.iter().flatten() {
            if !dictionary.iter().any(|d| d.as_ref() == Some(value)) {
                dictionary.push(Some(value.clone()));
            }
        }
        dictionary.shuffle(rng);
        dictionary.extend(dictionary.first().cloned());
        dictionary.extend([Some(unused), None]);
        let keys: Int32Array = values
            .iter()
            .map(|value| {
                let matching: Vec<usize> = (0..dictionary.len())
                    .filter(|&i| dictionary[i] == *value)
                    .collect();
                match value {
                    None if rng.random_bool(0.5) => None,
                    _ => Some(matching[rng.random_range(0..matching.len())] as i32),
                }
            })
            .collect();
        Arc::new(DictionaryArray::try_new(keys, Arc::new(array(dictionary))).unwrap())
    }

    /// A batch whose columns differ in type from the first is an error naming both, not a
    /// panic in an accumulator.
    #[test]
    fn batches_of_other_types_are_an_error_not_a_panic() {
        let keys = vec!["k".to_string()];
        let aggregates = vec![Aggregate::sum("n"), Aggregate::count()];
        let first = batch(&["a", "b"], &[1.0, 2.0]);
        let other = RecordBatch::try_from_iter([
            ("k", Arc::new(StringArray::from(vec!["a"])) as _),
            ("v", Arc::new(Float64Array::from(vec![1.0])) as _),
            ("n", Arc::new(Float64Array::from(vec![1.5])) as _),
        ])
        .unwrap();
        let error = partial(
            &first.schema(),
            vec![first.clone(), other],
            &keys,
            &aggregates,
        )
        .unwrap_err()
        .to_string();
        assert!(error.contains("cannot be put together"), "{error}");
        assert!(error.contains("n: Float64"), "{error}");
    }

    /// Plans are cached by input schema: the same keys and aggregates over columns of other
    /// types (and over more schemas than the cache holds) get plans of their own.
    #[test]
    fn each_input_schema_gets_its_own_plan() {
        use arrow::array::AsArray;
        use arrow::datatypes::{Float64Type, Int64Type};
        let keys = vec!["k".to_string()];
        let aggregates = vec![Aggregate::sum("v"), Aggregate::count()];
        for width in 0..MAX_CACHED_PLANS + 3 {
            // `v` alternately integers and floats; `pad` columns make every schema new.
            let values: Vec<i64> = (0..=width as i64).collect();
            let mut columns: Vec<(String, arrow::array::ArrayRef)> = vec![
                (
                    "k".into(),
                    Arc::new(StringArray::from(vec!["x"; values.len()])),
                ),
                (
                    "v".into(),
                    if width % 2 == 0 {
                        Arc::new(Int64Array::from(values.clone()))
                    } else {
                        Arc::new(Float64Array::from_iter_values(
                            values.iter().map(|&v| v as f64),
                        ))
                    },
                ),
            ];
            for pad in 0..width {
                columns.push((
                    format!("pad{pad}"),
                    Arc::new(Int64Array::from(values.clone())),
                ));
            }
            let batch = RecordBatch::try_from_iter(columns).unwrap();
            let states = partial(&batch.schema(), vec![batch.clone()], &keys, &aggregates).unwrap();
            let combined = finish(&states.schema(), vec![states], &keys, &aggregates).unwrap();
            let expected: i64 = values.iter().sum();
            let sum = combined.column(1);
            let sum = if width % 2 == 0 {
                sum.as_primitive::<Int64Type>().value(0)
            } else {
                sum.as_primitive::<Float64Type>().value(0) as i64
            };
            assert_eq!(sum, expected, "schema {width}");
            assert_eq!(
                combined.column(2).as_primitive::<Int64Type>().value(0),
                values.len() as i64
            );
            assert!(lock_plans().len() <= MAX_CACHED_PLANS);
        }
    }
}
