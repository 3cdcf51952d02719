//! The map half of a combined `groupby().aggregate()` as one loop over a task's batches.
//!
//! It does what DataFusion's `AggregateExec` in `Partial` mode does with a plain `GROUP BY`,
//! with DataFusion's own parts: its group values give each row its group (in the order groups
//! are first seen), its accumulators keep the states, and the output is the exec's schema, row
//! for row. Two things differ. The sums, means and counts of integers and decimals are laned
//! ([`super::laned_sums`]); where a batch has few groups, its rows are sorted by group once
//! ([`super::rows_by_group`]) and those aggregates add them group by group. And the batches go
//! straight in, without a plan to run over them all at the end (a memory source, a stream and
//! a runtime's turn per batch).
//!
//! [`GroupedStates`] takes the batches one at a time, as a map task's operators make them, so
//! each is aggregated while it is still in the processor's cache. A batch whose keys are all
//! dictionaries is grouped on their codes ([`super::dictionary_keys`]): a categorical column,
//! or a string key a stage read as codes for this loop while the exec's key is the strings.
//! Anything else (no keys, grouping sets, an aggregate's `FILTER`, an aggregate without a
//! groups accumulator) is left to the exec: [`GroupedStates::new`] answers `None`.

use std::sync::Arc;

use arrow::array::{ArrayRef, RecordBatch};
use arrow::datatypes::{DataType, SchemaRef};
use datafusion::common::Result;
use datafusion::logical_expr::{EmitTo, GroupsAccumulator};
use datafusion::physical_expr::PhysicalExpr;
use datafusion::physical_plan::ExecutionPlan;
use datafusion::physical_plan::aggregates::AggregateExec;
use datafusion::physical_plan::aggregates::group_values::{GroupValues, new_group_values};
use datafusion::physical_plan::aggregates::order::GroupOrdering;

use super::dictionary_keys::DictionaryKeys;
use super::laned_sums::LanedSums;
use super::rows_by_group::RowsByGroup;

/// The partial states of the batches pushed into it, kept as they come.
pub struct GroupedStates {
    /// The states' schema (the exec's output).
    schema: SchemaRef,
    /// The grouping keys.
    keys: Vec<Arc<dyn PhysicalExpr>>,
    groups: Box<dyn GroupValues>,
    accumulators: Vec<Accumulator>,
    /// Each aggregate's arguments.
    arguments: Vec<Vec<Arc<dyn PhysicalExpr>>>,
    /// Each row's group, in the batch at hand.
    indices: Vec<usize>,
    /// The types `groups` holds: each key's, or its values' for a dictionary.
    group_types: Vec<DataType>,
    /// Grouping by the codes of batches whose keys are all dictionaries.
    codes: DictionaryKeys,
    /// The batch at hand's rows by group, for the laned sums, when its groups are few.
    by_group: RowsByGroup,
}

/// One aggregate's states: laned sums, or DataFusion's accumulator.
enum Accumulator {
    Laned(LanedSums),
    DataFusion(Box<dyn GroupsAccumulator>),
}

impl Accumulator {
    fn as_dyn(&mut self) -> &mut dyn GroupsAccumulator {
        match self {
            Accumulator::Laned(laned) => laned,
            Accumulator::DataFusion(theirs) => theirs.as_mut(),
        }
    }
}

impl GroupedStates {
    /// The states `partial` (an `AggregateExec` in `Partial` mode) would make, or `None` if
    /// this loop does not do what it asks.
    pub fn new(partial: &Arc<dyn ExecutionPlan>) -> Result<Option<Self>> {
        let Some(aggregate) = partial.downcast_ref::<AggregateExec>() else {
            return Ok(None);
        };
        let group_by = aggregate.group_expr();
        let functions = aggregate.aggr_expr();
        if !group_by.is_single()
            || group_by.expr().is_empty()
            || aggregate.filter_expr().iter().any(Option::is_some)
            || !functions.iter().all(|f| f.groups_accumulator_supported())
        {
            return Ok(None);
        }
        let input_schema = aggregate.input_schema();
        let group_schema = DictionaryKeys::values_schema(&group_by.group_schema(&input_schema)?);
        let group_types = group_schema
            .fields()
            .iter()
            .map(|f| f.data_type().clone())
            .collect();
        let groups = new_group_values(group_schema, &GroupOrdering::None)?;
        let accumulators = functions
            .iter()
            .map(|f| match LanedSums::try_new(f, &input_schema)? {
                Some(laned) => Ok(Accumulator::Laned(laned)),
                None => Ok(Accumulator::DataFusion(f.create_groups_accumulator()?)),
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(Some(Self {
            schema: aggregate.schema(),
            keys: group_by.expr().iter().map(|(e, _)| Arc::clone(e)).collect(),
            groups,
            accumulators,
            arguments: functions.iter().map(|f| f.expressions()).collect(),
            indices: Vec::new(),
            group_types,
            codes: DictionaryKeys::default(),
            by_group: RowsByGroup::default(),
        }))
    }

    /// Adds the rows of `batch` (of the aggregate's input schema, but for keys that may come
    /// as dictionaries of their values).
    pub fn push(&mut self, batch: &RecordBatch) -> Result<()> {
        if batch.num_rows() == 0 {
            return Ok(());
        }
        // A decimal read narrow is widened for the group values; the laned sums take it as
        // it is, and every other accumulator gets it wide.
        let keys = widened(evaluate(&self.keys, batch)?)?;
        self.indices.clear();
        let groups = self.groups.as_mut();
        match DictionaryKeys::all_dictionaries(&keys) {
            true => self
                .codes
                .intern(&keys, &self.group_types, groups, &mut self.indices)?,
            false => {
                let decoded = DictionaryKeys::decode(&keys, &self.group_types)?;
                groups.intern(&decoded, &mut self.indices)?
            }
        }
        let total = self.groups.len();
        let by_group = RowsByGroup::worth_it(total, batch.num_rows())
            && self
                .accumulators
                .iter()
                .any(|a| matches!(a, Accumulator::Laned(_)));
        if by_group {
            self.by_group.sort(&self.indices, total);
        }
        // The group totals of each column the laned aggregates read, for this batch.
        let mut shared = Vec::new();
        for (accumulator, exprs) in self.accumulators.iter_mut().zip(&self.arguments) {
            let values = evaluate(exprs, batch)?;
            match accumulator {
                Accumulator::Laned(laned) if by_group => laned.update_by_group(
                    &values,
                    &self.indices,
                    &self.by_group,
                    total,
                    &mut shared,
                )?,
                Accumulator::Laned(laned) => {
                    laned.update_batch(&values, &self.indices, None, total)?
                }
                other => {
                    other
                        .as_dyn()
                        .update_batch(&widened(values)?, &self.indices, None, total)?
                }
            }
        }
        Ok(())
    }

    /// The states: one row per group, in the order the groups were first seen.
    pub fn finish(mut self) -> Result<RecordBatch> {
        let schema = self.schema;
        if self.groups.is_empty() {
            // Group values that never saw a row may not know their columns yet.
            return Ok(RecordBatch::new_empty(schema));
        }
        let mut columns = self.groups.emit(EmitTo::All)?;
        for (column, field) in columns.iter_mut().zip(schema.fields()) {
            // A dictionary key's values, encoded again as the exec's keys are.
            if column.data_type() != field.data_type() {
                *column = arrow::compute::cast(column, field.data_type())?;
            }
        }
        for accumulator in &mut self.accumulators {
            columns.extend(accumulator.as_dyn().state(EmitTo::All)?);
        }
        Ok(RecordBatch::try_new(schema, columns)?)
    }
}

/// `columns` with any decimal read narrow widened to its `Decimal128`.
fn widened(columns: Vec<ArrayRef>) -> Result<Vec<ArrayRef>> {
    if !columns
        .iter()
        .any(|c| crate::narrow_decimals::is_narrow(c.as_ref()))
    {
        return Ok(columns);
    }
    Ok(columns
        .iter()
        .map(crate::narrow_decimals::widened)
        .collect::<std::result::Result<_, _>>()?)
}

/// The columns `exprs` make of `batch`.
fn evaluate<'a>(
    exprs: impl IntoIterator<Item = &'a Arc<dyn PhysicalExpr>>,
    batch: &RecordBatch,
) -> Result<Vec<ArrayRef>> {
    exprs
        .into_iter()
        .map(|e| e.evaluate(batch)?.into_array(batch.num_rows()))
        .collect()
}
