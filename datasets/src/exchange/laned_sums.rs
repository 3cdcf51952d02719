//! Sums, means and counts of integers and decimals kept in four lanes per group, so that the
//! rows of a batch do not wait on each other.
//!
//! DataFusion's accumulators add each row's value into its group's slot in memory. When
//! consecutive rows often fall in the same group (a `groupby` with few groups, such as TPC-H
//! q1's four), each addition waits for the one before it to reach that slot: in q1 the map
//! side's eight accumulators took 15% of the run, most of it stalled on those stores. Here
//! row `i` of a batch adds into lane `i % 4` of its group, so four additions are in flight at
//! once, and the lanes are added up when the states are asked for. That pays once the values
//! come from cache, as they do when each batch is aggregated as it is made
//! ([`super::partial_states`]): there the lanes took about 5% off q1's CPU, against 3% when the
//! values came from memory. Where the caller has sorted a batch's rows by group
//! ([`super::rows_by_group`], for a batch of few groups), [`LanedSums::update_by_group`] adds
//! each group's values in a register instead and stores one sum per group; those totals
//! ([`GroupTotals`]) are worked out once per column and batch, for all the aggregates of that
//! column (a `sum` and an `avg` of one column, as in q1, add its values once).
//!
//! Integer addition that wraps, as DataFusion's does, gives the same total in any order, so
//! the states are DataFusion's, bit for bit. Floating-point sums (and means of integers, which
//! DataFusion takes in floating point) are not laned. A [`LanedSums`] wraps DataFusion's own
//! accumulator for the aggregate and hands it the lanes' totals as partial states (through
//! `merge_batch`) before anything reads it, so that every answer comes from DataFusion's code.
//! Past [`MAX_LANED_GROUPS`] groups, where rows rarely repeat a group and the lanes would only
//! take memory, it hands over for good and leaves every later batch to DataFusion's accumulator.

use std::sync::Arc;

use arrow::array::{Array, ArrayRef, AsArray, BooleanArray, PrimitiveArray};
use arrow::buffer::NullBuffer;
use arrow::datatypes::{
    ArrowPrimitiveType, DataType, Decimal32Type, Decimal64Type, Decimal128Type, Int64Type, Schema,
    UInt64Type,
};
use datafusion::common::Result;
use datafusion::logical_expr::{EmitTo, GroupsAccumulator};
use datafusion::physical_expr::aggregate::AggregateFunctionExpr;

use super::rows_by_group::RowsByGroup;

/// Copies of each group's running sum and count.
const LANES: usize = 4;

/// The most groups kept in lanes; past it, DataFusion's accumulator takes over.
pub const MAX_LANED_GROUPS: usize = 4096;

/// Which aggregate, by the partial state DataFusion keeps for it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Shape {
    /// `sum`: the sum, null for a group without values.
    Sum,
    /// `avg` of decimals: the count (`UInt64`), then the sum.
    Mean,
    /// `count`: the count of non-null values (`Int64`).
    Count,
}

/// The input's values, as they are added.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Input {
    Decimal128,
    Int64,
    /// Only counted.
    Any,
}

/// DataFusion's accumulator for one aggregate, with the updates of few groups laned.
pub struct LanedSums {
    shape: Shape,
    input: Input,
    /// The types of the partial state's columns.
    state_types: Vec<DataType>,
    inner: Box<dyn GroupsAccumulator>,
    /// Running sums (wrapping), `group * LANES + lane`.
    sums: Vec<i128>,
    /// Running counts of non-null values, `group * LANES + lane`.
    counts: Vec<u64>,
    /// Whether the lanes were given up for good (too many groups).
    handed_over: bool,
}

/// What `function` keeps, if it is one this module lanes.
fn shape(
    function: &AggregateFunctionExpr,
    input_schema: &Schema,
) -> Result<Option<(Shape, Input, Vec<DataType>)>> {
    let arguments = function.expressions();
    if function.is_distinct() || arguments.len() != 1 {
        return Ok(None);
    }
    let input = arguments[0].data_type(input_schema)?;
    let states: Vec<DataType> = function
        .state_fields()?
        .iter()
        .map(|f| f.data_type().clone())
        .collect();
    let found = match (function.fun().name(), &input, states.as_slice()) {
        ("sum", DataType::Decimal128(_, s), [DataType::Decimal128(_, t)]) if s == t => {
            Some((Shape::Sum, Input::Decimal128))
        }
        ("sum", DataType::Int64, [DataType::Int64]) => Some((Shape::Sum, Input::Int64)),
        ("avg", DataType::Decimal128(_, s), [DataType::UInt64, DataType::Decimal128(_, t)])
            if s == t =>
        {
            Some((Shape::Mean, Input::Decimal128))
        }
        ("count", _, [DataType::Int64]) => Some((Shape::Count, Input::Any)),
        _ => None,
    };
    Ok(found.map(|(shape, input)| (shape, input, states)))
}

/// Adds the non-null `values` (each widened by `widen`) of the rows whose groups are `groups`
/// into their lanes: row `i` into lane `i % LANES`.
fn add_rows<V: Copy>(
    sums: &mut [i128],
    counts: &mut [u64],
    groups: &[usize],
    values: &[V],
    nulls: Option<&NullBuffer>,
    widen: impl Fn(V) -> i128,
) {
    match nulls {
        None => {
            let mut group_chunks = groups.chunks_exact(LANES);
            let mut value_chunks = values.chunks_exact(LANES);
            for (g, v) in (&mut group_chunks).zip(&mut value_chunks) {
                for lane in 0..LANES {
                    let slot = g[lane] * LANES + lane;
                    sums[slot] = sums[slot].wrapping_add(widen(v[lane]));
                    counts[slot] += 1;
                }
            }
            let rest = group_chunks.remainder().iter();
            for (lane, (&g, &v)) in rest.zip(value_chunks.remainder()).enumerate() {
                let slot = g * LANES + lane;
                sums[slot] = sums[slot].wrapping_add(widen(v));
                counts[slot] += 1;
            }
        }
        Some(nulls) => {
            for (row, (&g, &v)) in groups.iter().zip(values).enumerate() {
                if nulls.is_valid(row) {
                    let slot = g * LANES + row % LANES;
                    sums[slot] = sums[slot].wrapping_add(widen(v));
                    counts[slot] += 1;
                }
            }
        }
    }
}

/// One batch's sum and count of non-null values of one column per group, from its rows
/// sorted by group: each group's values added up in a register. Worked out once per column and
/// batch, and shared by every laned aggregate of that column (q1's `sum` and `avg` of
/// `l_quantity`).
pub struct GroupTotals {
    column: ArrayRef,
    input: Input,
    /// `(group, sum, count)` for each group with rows in the batch.
    totals: Vec<(usize, i128, u64)>,
}

impl GroupTotals {
    /// The totals of `column`'s values, read as `input`, for the rows of `by_group`.
    fn of(column: &ArrayRef, input: Input, by_group: &RowsByGroup) -> Self {
        let nulls = column.logical_nulls();
        let nulls = nulls.as_ref().filter(|n| n.null_count() > 0);
        let totals = match input {
            Input::Decimal128 => match column.data_type() {
                DataType::Decimal64(..) => {
                    let values = column.as_primitive::<Decimal64Type>().values();
                    group_totals(by_group, nulls, |r| i128::from(values[r]))
                }
                DataType::Decimal32(..) => {
                    let values = column.as_primitive::<Decimal32Type>().values();
                    group_totals(by_group, nulls, |r| i128::from(values[r]))
                }
                _ => {
                    let values = column.as_primitive::<Decimal128Type>().values();
                    group_totals(by_group, nulls, |r| values[r])
                }
            },
            Input::Int64 => {
                let values = column.as_primitive::<Int64Type>().values();
                group_totals(by_group, nulls, |r| i128::from(values[r]))
            }
            Input::Any => group_totals(by_group, nulls, |_| 0),
        };
        GroupTotals {
            column: Arc::clone(column),
            input,
            totals,
        }
    }

    /// Whether these are totals of `column` that an aggregate reading it as `input` can take:
    /// the same input, or any for one that only counts.
    fn serve(&self, column: &ArrayRef, input: Input) -> bool {
        Arc::ptr_eq(&self.column, column) && (self.input == input || input == Input::Any)
    }
}

/// `(group, sum, count)` of the non-null values of each group's rows in `by_group`, `value`
/// giving a row's (zero for an aggregate that only counts).
fn group_totals(
    by_group: &RowsByGroup,
    nulls: Option<&NullBuffer>,
    value: impl Fn(usize) -> i128,
) -> Vec<(usize, i128, u64)> {
    by_group
        .groups()
        .map(|(group, rows)| {
            let (sum, count) = match nulls {
                None => (
                    rows.iter()
                        .fold(0i128, |sum, &r| sum.wrapping_add(value(r as usize))),
                    rows.len() as u64,
                ),
                Some(nulls) => rows
                    .iter()
                    .filter(|&&r| nulls.is_valid(r as usize))
                    .fold((0i128, 0u64), |(sum, count), &r| {
                        (sum.wrapping_add(value(r as usize)), count + 1)
                    }),
            };
            (group, sum, count)
        })
        .collect()
}

/// Counts the rows whose groups are `groups` and that are not null, into their lanes.
fn count_rows(counts: &mut [u64], groups: &[usize], nulls: Option<&NullBuffer>) {
    for (row, &g) in groups.iter().enumerate() {
        if nulls.is_none_or(|n| n.is_valid(row)) {
            counts[g * LANES + row % LANES] += 1;
        }
    }
}

/// `values` with any decimal read narrow widened to the `Decimal128` DataFusion's
/// accumulators take ([`crate::narrow_decimals`]).
fn widened(values: &[ArrayRef]) -> Result<Vec<ArrayRef>> {
    Ok(values
        .iter()
        .map(crate::narrow_decimals::widened)
        .collect::<std::result::Result<_, _>>()?)
}

/// `values` (one per group, null where `nulls` says) as an array of `data_type`.
fn state_array<T: ArrowPrimitiveType>(
    values: Vec<T::Native>,
    nulls: Option<NullBuffer>,
    data_type: &DataType,
) -> ArrayRef {
    Arc::new(PrimitiveArray::<T>::new(values.into(), nulls).with_data_type(data_type.clone()))
}

impl LanedSums {
    /// The laned accumulator for `function` over rows of `input_schema`, if its shape allows.
    pub fn try_new(
        function: &AggregateFunctionExpr,
        input_schema: &Schema,
    ) -> Result<Option<Self>> {
        let Some((shape, input, state_types)) = shape(function, input_schema)? else {
            return Ok(None);
        };
        Ok(Some(LanedSums {
            shape,
            input,
            state_types,
            inner: function.create_groups_accumulator()?,
            sums: Vec::new(),
            counts: Vec::new(),
            handed_over: false,
        }))
    }

    /// Whether the lanes take `column` for rows whose groups are `group_indices`, of
    /// `total_num_groups`, all rows counting.
    fn takes(
        &self,
        column: &ArrayRef,
        group_indices: &[usize],
        opt_filter: Option<&BooleanArray>,
        total_num_groups: usize,
    ) -> bool {
        !self.handed_over
            && opt_filter.is_none()
            && total_num_groups <= MAX_LANED_GROUPS
            && column.len() == group_indices.len()
            && match self.input {
                // Also a decimal read at the width Parquet stores it in.
                Input::Decimal128 => matches!(
                    column.data_type(),
                    DataType::Decimal128(..) | DataType::Decimal64(..) | DataType::Decimal32(..)
                ),
                Input::Int64 => column.data_type() == &DataType::Int64,
                Input::Any => true,
            }
    }

    /// Makes room for `total_num_groups` groups in the lanes.
    fn grow(&mut self, total_num_groups: usize) {
        let slots = total_num_groups * LANES;
        if self.counts.len() < slots {
            self.counts.resize(slots, 0);
            self.sums.resize(slots, 0);
        }
    }

    /// [`GroupsAccumulator::update_batch`] for rows already listed by group in `by_group`
    /// (sorted from `group_indices`): each group's total is added into its first lane once.
    /// The totals of a column are worked out once per batch and kept in `shared` for the other
    /// aggregates of the same column.
    pub fn update_by_group(
        &mut self,
        values: &[ArrayRef],
        group_indices: &[usize],
        by_group: &RowsByGroup,
        total_num_groups: usize,
        shared: &mut Vec<GroupTotals>,
    ) -> Result<()> {
        let column = &values[0];
        if !self.takes(column, group_indices, None, total_num_groups) {
            return self.update_batch(values, group_indices, None, total_num_groups);
        }
        self.grow(total_num_groups);
        let totals = match shared.iter().position(|t| t.serve(column, self.input)) {
            Some(found) => &shared[found],
            None => {
                shared.push(GroupTotals::of(column, self.input, by_group));
                &shared[shared.len() - 1]
            }
        };
        for &(group, sum, count) in &totals.totals {
            let slot = group * LANES;
            self.sums[slot] = self.sums[slot].wrapping_add(sum);
            self.counts[slot] += count;
        }
        Ok(())
    }

    /// Adds `column`'s values of rows whose groups are `groups` into the lanes, grown to
    /// `total_num_groups` groups.
    fn add(&mut self, column: &ArrayRef, groups: &[usize], total_num_groups: usize) {
        self.grow(total_num_groups);
        let nulls = column.logical_nulls();
        let nulls = nulls.as_ref().filter(|n| n.null_count() > 0);
        let (sums, counts) = (&mut self.sums, &mut self.counts);
        match self.input {
            Input::Decimal128 => match column.data_type() {
                DataType::Decimal64(..) => {
                    let values = column.as_primitive::<Decimal64Type>().values();
                    add_rows(sums, counts, groups, values, nulls, i128::from);
                }
                DataType::Decimal32(..) => {
                    let values = column.as_primitive::<Decimal32Type>().values();
                    add_rows(sums, counts, groups, values, nulls, i128::from);
                }
                _ => {
                    let values = column.as_primitive::<Decimal128Type>().values();
                    add_rows(sums, counts, groups, values, nulls, |v| v);
                }
            },
            Input::Int64 => {
                let values = column.as_primitive::<Int64Type>().values();
                add_rows(sums, counts, groups, values, nulls, i128::from);
            }
            Input::Any => count_rows(counts, groups, nulls),
        }
    }

    /// The groups the lanes hold.
    fn groups(&self) -> usize {
        self.counts.len() / LANES
    }

    /// Hands the lanes' totals to DataFusion's accumulator, as partial states of every group
    /// the lanes hold, and empties them.
    fn hand_over(&mut self) -> Result<()> {
        let groups = self.groups();
        if groups == 0 {
            return Ok(());
        }
        let counts: Vec<u64> = self
            .counts
            .chunks_exact(LANES)
            .map(|lanes| lanes.iter().sum())
            .collect();
        let sums: Vec<i128> = self
            .sums
            .chunks_exact(LANES)
            .map(|lanes| lanes.iter().fold(0i128, |total, &s| total.wrapping_add(s)))
            .collect();
        // A group without values has a null state, as DataFusion's update leaves it: no sum,
        // nothing added to a mean (a non-null state would mark it as having seen a value).
        let seen = NullBuffer::from_iter(counts.iter().map(|&c| c > 0));
        let seen = (seen.null_count() > 0).then_some(seen);
        let sums_as = |data_type: &DataType| match self.input {
            // An `Int64` sum wraps at 64 bits: the low word of the 128-bit wrapping sum.
            Input::Int64 => state_array::<Int64Type>(
                sums.iter().map(|&s| s as i64).collect(),
                seen.clone(),
                data_type,
            ),
            _ => state_array::<Decimal128Type>(sums.clone(), seen.clone(), data_type),
        };
        let states: Vec<ArrayRef> = match self.shape {
            Shape::Sum => vec![sums_as(&self.state_types[0])],
            Shape::Mean => vec![
                state_array::<UInt64Type>(counts, seen.clone(), &self.state_types[0]),
                sums_as(&self.state_types[1]),
            ],
            Shape::Count => vec![state_array::<Int64Type>(
                counts.iter().map(|&c| c as i64).collect(),
                None,
                &self.state_types[0],
            )],
        };
        self.sums.clear();
        self.counts.clear();
        let indices: Vec<usize> = (0..groups).collect();
        self.inner.merge_batch(&states, &indices, groups)
    }
}

impl GroupsAccumulator for LanedSums {
    fn update_batch(
        &mut self,
        values: &[ArrayRef],
        group_indices: &[usize],
        opt_filter: Option<&BooleanArray>,
        total_num_groups: usize,
    ) -> Result<()> {
        let column = &values[0];
        if !self.takes(column, group_indices, opt_filter, total_num_groups) {
            self.hand_over()?;
            self.handed_over |= total_num_groups > MAX_LANED_GROUPS;
            return self.inner.update_batch(
                &widened(values)?,
                group_indices,
                opt_filter,
                total_num_groups,
            );
        }
        self.add(column, group_indices, total_num_groups);
        Ok(())
    }

    fn evaluate(&mut self, emit_to: EmitTo) -> Result<ArrayRef> {
        self.hand_over()?;
        self.inner.evaluate(emit_to)
    }

    fn state(&mut self, emit_to: EmitTo) -> Result<Vec<ArrayRef>> {
        self.hand_over()?;
        self.inner.state(emit_to)
    }

    fn merge_batch(
        &mut self,
        values: &[ArrayRef],
        group_indices: &[usize],
        total_num_groups: usize,
    ) -> Result<()> {
        self.hand_over()?;
        self.inner
            .merge_batch(values, group_indices, total_num_groups)
    }

    fn convert_to_state(
        &self,
        values: &[ArrayRef],
        opt_filter: Option<&BooleanArray>,
    ) -> Result<Vec<ArrayRef>> {
        self.inner.convert_to_state(&widened(values)?, opt_filter)
    }

    fn size(&self) -> usize {
        self.inner.size()
            + self.sums.capacity() * size_of::<i128>()
            + self.counts.capacity() * size_of::<u64>()
    }
}
