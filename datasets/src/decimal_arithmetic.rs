//! Sums, differences and products of `Decimal128` values without an overflow check per row,
//! where none can overflow.
//!
//! DataFusion computes decimal arithmetic with arrow's checked kernels: 128-bit operations with
//! an overflow test, through a closure per row. In TPC-H q1 through the Dataset API
//! (`l_extendedprice * (1 - l_discount)`, then that times `1 + l_tax`) those four operations
//! were a third of the stage's CPU. Yet the values of a `Decimal128` column almost always fit
//! in 64 bits (any precision up to 18 does), and then nothing can overflow: a product of two
//! 64-bit values fits in 128 bits (one `imul`), and so does a sum of two 64-bit values each
//! scaled by at most 10^18 (under 2^124). So [`DecimalArithmetic`] takes the place of
//! DataFusion's `BinaryExpr` for `+`, `-` and `*` of two decimals (arrays or a scalar and an
//! array) whose result has arrow's scale (`max(s1, s2)` for a sum, `s1 + s2` for a product): it
//! computes without checks, testing as it goes that every value it reads fits in 64 bits (a
//! test OR-ed over the values, without a branch per value); where one did not (or for two
//! scalars, a null scalar) it throws that result away and calls the kernel DataFusion would
//! have called. The result, its type and the errors are the same either way.
//!
//! A side that is itself a column shifted by a scalar (`1 - l_discount`, `1 + l_tax`) is not
//! computed into an array of its own: the parent reads the column and shifts each value in its
//! loop (checking the shifted value fits too), so `l_extendedprice * (1 - l_discount)` reads
//! two columns and writes one, where it took two loops and a temporary array.
//!
//! Used for the expressions of `filter` and `with_column` ([`crate::ops::plan_expr`]).

use std::fmt;
use std::hash::Hash;
use std::sync::Arc;

use arrow::array::{Array, ArrayRef, AsArray, Decimal128Array};
use arrow::buffer::NullBuffer;
use arrow::datatypes::{DataType, Decimal64Type, Decimal128Type, Schema};
use arrow::record_batch::RecordBatch;
use datafusion::common::tree_node::{Transformed, TreeNode};
use datafusion::common::{Result, ScalarValue};
use datafusion::logical_expr::{ColumnarValue, Operator};
use datafusion::physical_expr::PhysicalExpr;
use datafusion::physical_expr::expressions::{BinaryExpr, Column};
use datafusion::physical_expr_common::datum::apply;

/// The largest power of ten a sum's side may be scaled by on the unchecked path.
const MAX_SCALE_UP: i8 = 18;

/// `left op right` over two `Decimal128` expressions, with the result type `data_type`.
#[derive(Debug, Eq)]
pub struct DecimalArithmetic {
    op: Operator,
    left: Arc<dyn PhysicalExpr>,
    right: Arc<dyn PhysicalExpr>,
    data_type: DataType,
    /// The powers of ten the left and right values are multiplied by before a sum (one for
    /// a product), at most 10^[`MAX_SCALE_UP`].
    scale_up: (i64, i64),
}

impl PartialEq for DecimalArithmetic {
    fn eq(&self, other: &Self) -> bool {
        self.op == other.op
            && self.left.eq(&other.left)
            && self.right.eq(&other.right)
            && self.data_type == other.data_type
    }
}

impl Hash for DecimalArithmetic {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.op.hash(state);
        self.left.hash(state);
        self.right.hash(state);
        self.data_type.hash(state);
    }
}

impl fmt::Display for DecimalArithmetic {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        write!(f, "{} {} {}", self.left, self.op, self.right)
    }
}

/// `expr` with every `+`, `-` and `*` of two `Decimal128` values that has arrow's result scale
/// computed by [`DecimalArithmetic`].
pub fn faster_decimal_arithmetic(
    expr: Arc<dyn PhysicalExpr>,
    schema: &Schema,
) -> Result<Arc<dyn PhysicalExpr>> {
    expr.transform_up(|node| {
        let Some(binary) = node.downcast_ref::<BinaryExpr>() else {
            return Ok(Transformed::no(node));
        };
        let op = *binary.op();
        let types = (
            binary.left().data_type(schema)?,
            binary.right().data_type(schema)?,
            node.data_type(schema)?,
        );
        let (DataType::Decimal128(_, s1), DataType::Decimal128(_, s2), DataType::Decimal128(_, s)) =
            types
        else {
            return Ok(Transformed::no(node));
        };
        let scale_up = match op {
            Operator::Multiply if i16::from(s) == i16::from(s1) + i16::from(s2) => (1, 1),
            Operator::Plus | Operator::Minus
                if s == s1.max(s2) && s - s1 <= MAX_SCALE_UP && s - s2 <= MAX_SCALE_UP =>
            {
                (10i64.pow((s - s1) as u32), 10i64.pow((s - s2) as u32))
            }
            _ => return Ok(Transformed::no(node)),
        };
        Ok(Transformed::yes(Arc::new(DecimalArithmetic {
            op,
            left: Arc::clone(binary.left()),
            right: Arc::clone(binary.right()),
            data_type: types.2,
            scale_up,
        }) as Arc<dyn PhysicalExpr>))
    })
    .map(|t| t.data)
}

/// Whether `expr` can be evaluated over batches of `schema` as they are, where some decimal
/// columns are read narrow ([`crate::narrow_decimals`]): whether it reads each such column only
/// as a side of a [`DecimalArithmetic`], which takes 64-bit values (any other expression was
/// planned for the wide type, and is given that).
pub fn takes_narrow(expr: &Arc<dyn PhysicalExpr>, schema: &Schema) -> bool {
    fn walk(expr: &Arc<dyn PhysicalExpr>, schema: &Schema, side_of_arithmetic: bool) -> bool {
        if let Some(column) = expr.downcast_ref::<Column>() {
            let narrow = schema
                .fields()
                .get(column.index())
                .is_some_and(|f| crate::narrow_decimals::wide_type(f.data_type()).is_some());
            return side_of_arithmetic || !narrow;
        }
        let arithmetic = expr.downcast_ref::<DecimalArithmetic>().is_some();
        expr.children()
            .into_iter()
            .all(|child| walk(child, schema, arithmetic))
    }
    walk(expr, schema, false)
}

/// Whether `value` fits in 64 bits.
fn narrow(value: i128) -> bool {
    i128::from(value as i64) == value
}

/// A word that is zero exactly when `value` fits in 64 bits: its high word, less its low
/// word's sign spread out. OR-ed over the values a loop reads, it tells afterwards whether all
/// of them fit, without a branch per value.
fn spread(value: i128) -> i64 {
    ((value >> 64) as i64) ^ ((value as i64) >> 63)
}

/// The product of two 64-bit values: one widening multiply.
fn widening_mul(a: i64, b: i64) -> i128 {
    i128::from(a) * i128::from(b)
}

/// A side of an operation as the parent's loop gets it: its value, or, for a side that is
/// itself a sum or difference of a column and a scalar (`1 - l_discount`), the column and how
/// to shift it, left for the parent's loop to compute row by row. So `l_extendedprice * (1 -
/// l_discount)` is one loop and one result array, not two.
enum Operand {
    /// The side evaluated.
    Value(ColumnarValue),
    /// A decimal array, each value shifted as the parent reads it.
    Shifted(ArrayRef, Shifted),
}

impl Operand {
    /// `expr` over `batch` as a side of a parent [`DecimalArithmetic`].
    fn of(expr: &Arc<dyn PhysicalExpr>, batch: &RecordBatch) -> Result<Self> {
        let Some(inner) = expr.downcast_ref::<DecimalArithmetic>() else {
            return Ok(Operand::Value(expr.evaluate(batch)?));
        };
        let sign = match inner.op {
            Operator::Plus => 1,
            Operator::Minus => -1,
            _ => return Ok(Operand::Value(expr.evaluate(batch)?)),
        };
        let (left, right) = (inner.left.evaluate(batch)?, inner.right.evaluate(batch)?);
        let (lm, rm) = inner.scale_up;
        let decimals = |v: &ColumnarValue| match v {
            ColumnarValue::Array(a) if Values::of(a).is_some() => Some(Arc::clone(a)),
            _ => None,
        };
        Ok(match (narrow_scalar(&left), narrow_scalar(&right)) {
            (Some(s), None) if let Some(column) = decimals(&right) => {
                Operand::Shifted(column, Shifted(widening_mul(s, lm), sign * rm))
            }
            (None, Some(s)) if let Some(column) = decimals(&left) => {
                Operand::Shifted(column, Shifted(i128::from(sign) * widening_mul(s, rm), lm))
            }
            _ => {
                Operand::Value(inner.finish(Operand::Value(left), Operand::Value(right), batch)?)
            }
        })
    }
}

/// The value of a non-null decimal scalar that fits in 64 bits.
fn narrow_scalar(value: &ColumnarValue) -> Option<i64> {
    match value {
        ColumnarValue::Scalar(ScalarValue::Decimal128(Some(v), _, _)) if narrow(*v) => {
            Some(*v as i64)
        }
        _ => None,
    }
}

/// The values of an array side: 128-bit, or 64-bit for a decimal read at the width Parquet
/// stores it in ([`crate::narrow_decimals`]).
#[derive(Clone, Copy)]
enum Values<'a> {
    Wide(&'a [i128]),
    Narrow(&'a [i64]),
}

impl<'a> Values<'a> {
    /// The values of `array`, if it is a decimal array either way.
    fn of(array: &'a ArrayRef) -> Option<Self> {
        match array.data_type() {
            DataType::Decimal128(..) => Some(Values::Wide(
                array.as_primitive::<Decimal128Type>().values(),
            )),
            DataType::Decimal64(..) => Some(Values::Narrow(
                array.as_primitive::<Decimal64Type>().values(),
            )),
            _ => None,
        }
    }

    fn len(&self) -> usize {
        match self {
            Values::Wide(v) => v.len(),
            Values::Narrow(v) => v.len(),
        }
    }
}

/// One side of an operation on the unchecked path: an array's values and nulls (its values
/// shifted or not), or a non-null scalar that fits in 64 bits.
enum Side<'a> {
    Array(Values<'a>, Option<&'a NullBuffer>, Option<Shifted>),
    Scalar(i64),
}

impl<'a> Side<'a> {
    /// The side `operand` makes, if the unchecked path can take it.
    fn of(operand: &'a Operand) -> Option<Self> {
        match operand {
            Operand::Value(ColumnarValue::Array(array)) => {
                Values::of(array).map(|v| Side::Array(v, array.nulls(), None))
            }
            Operand::Value(value) => narrow_scalar(value).map(Side::Scalar),
            Operand::Shifted(column, shift) => {
                Values::of(column).map(|v| Side::Array(v, column.nulls(), Some(*shift)))
            }
        }
    }
}

/// A value of an array side: 128 bits wide, or 64.
trait Value: Copy {
    /// Zero exactly when the value fits in 64 bits (see [`spread`]).
    fn spread(self) -> i64;
    /// Its low 64 bits: the value, when it fits.
    fn low(self) -> i64;
}

impl Value for i128 {
    #[inline(always)]
    fn spread(self) -> i64 {
        spread(self)
    }

    #[inline(always)]
    fn low(self) -> i64 {
        self as i64
    }
}

impl Value for i64 {
    #[inline(always)]
    fn spread(self) -> i64 {
        0
    }

    #[inline(always)]
    fn low(self) -> i64 {
        self
    }
}

/// Reads a value of an array side on the unchecked path, OR-ing into `wide` what tells whether
/// it (and, shifted, its result) fits in 64 bits.
trait Read: Copy {
    fn read<V: Value>(self, value: V, wide: &mut i64) -> i64;
}

/// A value as it is.
#[derive(Clone, Copy)]
struct Plain;

impl Read for Plain {
    #[inline(always)]
    fn read<V: Value>(self, value: V, wide: &mut i64) -> i64 {
        *wide |= value.spread();
        value.low()
    }
}

/// A value shifted, `offset + factor * value` (`Shifted(offset, factor)`): no overflow in 128
/// bits, for a value and an offset under 2^63 times at most 10^18.
#[derive(Clone, Copy)]
struct Shifted(i128, i64);

impl Read for Shifted {
    #[inline(always)]
    fn read<V: Value>(self, value: V, wide: &mut i64) -> i64 {
        let shifted = self.0 + widening_mul(value.low(), self.1);
        *wide |= value.spread() | spread(shifted);
        shifted as i64
    }
}

/// `f` applied row by row to two sides, at least one an array, with nulls where either is
/// null; `None` if a value of an array side (a null's slot too), or its shifted value, does
/// not fit in 64 bits.
///
/// The values are checked in the loop that computes, one pass over them: checking first
/// made two more passes, and took as long as the arithmetic.
fn combine(
    left: &Side,
    right: &Side,
    f: impl Fn(i64, i64) -> i128 + Copy,
) -> Option<Decimal128Array> {
    use Values::{Narrow, Wide};
    let values = match (left, right) {
        (Side::Array(l, _, ls), Side::Array(r, _, rs)) if l.len() == r.len() => match (l, r) {
            (Wide(l), Wide(r)) => shifted_pair(l, ls, r, rs, f),
            (Wide(l), Narrow(r)) => shifted_pair(l, ls, r, rs, f),
            (Narrow(l), Wide(r)) => shifted_pair(l, ls, r, rs, f),
            (Narrow(l), Narrow(r)) => shifted_pair(l, ls, r, rs, f),
        },
        (Side::Array(l, _, shift), Side::Scalar(b)) => match l {
            Wide(l) => shifted_one(l, shift, |a| f(a, *b)),
            Narrow(l) => shifted_one(l, shift, |a| f(a, *b)),
        },
        (Side::Scalar(a), Side::Array(r, _, shift)) => match r {
            Wide(r) => shifted_one(r, shift, |b| f(*a, b)),
            Narrow(r) => shifted_one(r, shift, |b| f(*a, b)),
        },
        _ => return None,
    }?;
    let nulls = |side: &Side<'_>| match side {
        Side::Array(_, nulls, _) => nulls.cloned(),
        Side::Scalar(_) => None,
    };
    let nulls = NullBuffer::union(nulls(left).as_ref(), nulls(right).as_ref());
    Some(Decimal128Array::new(values.into(), nulls))
}

/// [`both`] with each side read as its shift says.
fn shifted_pair<L: Value, R: Value>(
    l: &[L],
    ls: &Option<Shifted>,
    r: &[R],
    rs: &Option<Shifted>,
    f: impl Fn(i64, i64) -> i128,
) -> Option<Vec<i128>> {
    match (ls, rs) {
        (None, None) => both(l, Plain, r, Plain, f),
        (None, Some(rs)) => both(l, Plain, r, *rs, f),
        (Some(ls), None) => both(l, *ls, r, Plain, f),
        (Some(ls), Some(rs)) => both(l, *ls, r, *rs, f),
    }
}

/// [`one`] with the values read as `shift` says.
fn shifted_one<V: Value>(
    values: &[V],
    shift: &Option<Shifted>,
    f: impl Fn(i64) -> i128,
) -> Option<Vec<i128>> {
    match shift {
        None => one(values, Plain, f),
        Some(shift) => one(values, *shift, f),
    }
}

/// `f` of two arrays' values, read by `lr` and `rr`; `None` if one did not fit.
fn both<L: Value, R: Value>(
    l: &[L],
    lr: impl Read,
    r: &[R],
    rr: impl Read,
    f: impl Fn(i64, i64) -> i128,
) -> Option<Vec<i128>> {
    let mut wide = 0i64;
    let values = l
        .iter()
        .zip(r.iter())
        .map(|(&a, &b)| {
            let (a, b) = (lr.read(a, &mut wide), rr.read(b, &mut wide));
            f(a, b)
        })
        .collect();
    (wide == 0).then_some(values)
}

/// `f` of one array's values, read by `read`; `None` if one did not fit.
fn one<V: Value>(values: &[V], read: impl Read, f: impl Fn(i64) -> i128) -> Option<Vec<i128>> {
    let mut wide = 0i64;
    let values = values.iter().map(|&v| f(read.read(v, &mut wide))).collect();
    (wide == 0).then_some(values)
}

impl DecimalArithmetic {
    /// The result on the unchecked path, if both sides allow it.
    fn unchecked(&self, left: &Operand, right: &Operand) -> Option<ArrayRef> {
        let (l, r) = (Side::of(left)?, Side::of(right)?);
        let (lm, rm) = self.scale_up;
        // Inputs under 2^63 and multipliers at most 10^18 < 2^60: no step can overflow.
        let result = match self.op {
            Operator::Multiply => combine(&l, &r, widening_mul)?,
            Operator::Plus => combine(&l, &r, |a, b| widening_mul(a, lm) + widening_mul(b, rm))?,
            Operator::Minus => combine(&l, &r, |a, b| widening_mul(a, lm) - widening_mul(b, rm))?,
            _ => return None,
        };
        Some(Arc::new(result.with_data_type(self.data_type.clone())))
    }

    /// The operation over its two sides: unchecked if it can be, else as DataFusion's
    /// `BinaryExpr` computes decimals. A shifted side is then computed on its own (its values
    /// or the shift did not fit): rare enough to evaluate it again.
    fn finish(&self, left: Operand, right: Operand, batch: &RecordBatch) -> Result<ColumnarValue> {
        if let Some(result) = self.unchecked(&left, &right) {
            return Ok(ColumnarValue::Array(result));
        }
        // DataFusion's kernels take 128-bit decimals only: a side read narrow is widened.
        let value = |operand: Operand, expr: &Arc<dyn PhysicalExpr>| match operand {
            Operand::Value(ColumnarValue::Array(array))
                if crate::narrow_decimals::is_narrow(array.as_ref()) =>
            {
                Ok(ColumnarValue::Array(crate::narrow_decimals::widened(
                    &array,
                )?))
            }
            Operand::Value(value) => Ok(value),
            Operand::Shifted(..) => expr.evaluate(batch),
        };
        let (left, right) = (value(left, &self.left)?, value(right, &self.right)?);
        self.checked(&left, &right)
    }

    /// What DataFusion's `BinaryExpr` does for decimals.
    fn checked(&self, left: &ColumnarValue, right: &ColumnarValue) -> Result<ColumnarValue> {
        use arrow::compute::kernels::numeric::{add_wrapping, mul_wrapping, sub_wrapping};
        match self.op {
            Operator::Multiply => apply(left, right, mul_wrapping),
            Operator::Plus => apply(left, right, add_wrapping),
            _ => apply(left, right, sub_wrapping),
        }
    }
}

impl PhysicalExpr for DecimalArithmetic {
    fn data_type(&self, _input_schema: &Schema) -> Result<DataType> {
        Ok(self.data_type.clone())
    }

    fn nullable(&self, input_schema: &Schema) -> Result<bool> {
        Ok(self.left.nullable(input_schema)? || self.right.nullable(input_schema)?)
    }

    fn evaluate(&self, batch: &RecordBatch) -> Result<ColumnarValue> {
        let left = Operand::of(&self.left, batch)?;
        let right = Operand::of(&self.right, batch)?;
        self.finish(left, right, batch)
    }

    fn children(&self) -> Vec<&Arc<dyn PhysicalExpr>> {
        vec![&self.left, &self.right]
    }

    fn with_new_children(
        self: Arc<Self>,
        children: Vec<Arc<dyn PhysicalExpr>>,
    ) -> Result<Arc<dyn PhysicalExpr>> {
        Ok(Arc::new(DecimalArithmetic {
            op: self.op,
            left: Arc::clone(&children[0]),
            right: Arc::clone(&children[1]),
            data_type: self.data_type.clone(),
            scale_up: self.scale_up,
        }))
    }

    fn fmt_sql(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{self}")
    }
}

/// The physical optimizer rule that puts [`DecimalArithmetic`] in a SQL plan: in the
/// expressions of projections and in the arguments of aggregates (where DataFusion leaves
/// `sum(l_extendedprice * (1 - l_discount))` and its kin). Only for plans that run in this
/// process: the expression has no protobuf form, so plans cut into stages of tasks keep
/// DataFusion's.
#[derive(Debug, Default)]
pub struct FasterDecimalArithmetic;

impl datafusion::physical_optimizer::PhysicalOptimizerRule for FasterDecimalArithmetic {
    fn optimize(
        &self,
        plan: Arc<dyn datafusion::physical_plan::ExecutionPlan>,
        _config: &datafusion::common::config::ConfigOptions,
    ) -> Result<Arc<dyn datafusion::physical_plan::ExecutionPlan>> {
        use datafusion::physical_plan::ExecutionPlan;
        use datafusion::physical_plan::aggregates::AggregateExec;
        use datafusion::physical_plan::projection::{ProjectionExec, ProjectionExpr};
        plan.transform_up(|node| {
            if let Some(projection) = node.downcast_ref::<ProjectionExec>() {
                let input = projection.input();
                let old: Vec<_> = projection
                    .expr()
                    .iter()
                    .map(|e| Arc::clone(&e.expr))
                    .collect();
                if let Some(new) = rewritten(&old, &input.schema())? {
                    let exprs =
                        new.into_iter()
                            .zip(projection.expr())
                            .map(|(expr, e)| ProjectionExpr {
                                expr,
                                alias: e.alias.clone(),
                            });
                    let projection = ProjectionExec::try_new(exprs, Arc::clone(input))?;
                    if projection.schema() == node.schema() {
                        return Ok(Transformed::yes(
                            Arc::new(projection) as Arc<dyn ExecutionPlan>
                        ));
                    }
                }
            }
            if let Some(aggregate) = node.downcast_ref::<AggregateExec>() {
                let schema = aggregate.input_schema();
                let mut changed = false;
                let mut functions = Vec::with_capacity(aggregate.aggr_expr().len());
                for function in aggregate.aggr_expr() {
                    let order_by = || function.order_bys().iter().map(|s| Arc::clone(&s.expr));
                    let faster = rewritten(&function.expressions(), &schema)?
                        .and_then(|args| function.with_new_expressions(args, order_by().collect()));
                    match faster {
                        Some(faster) => {
                            changed = true;
                            functions.push(Arc::new(faster));
                        }
                        None => functions.push(Arc::clone(function)),
                    }
                }
                if changed {
                    return Ok(Transformed::yes(
                        Arc::new(aggregate.with_new_aggr_exprs(functions))
                            as Arc<dyn ExecutionPlan>,
                    ));
                }
            }
            Ok(Transformed::no(node))
        })
        .map(|t| t.data)
    }

    fn name(&self) -> &str {
        "FasterDecimalArithmetic"
    }

    fn schema_check(&self) -> bool {
        true
    }
}

/// `exprs` with their decimal arithmetic made faster; `None` if none of them changed, so a
/// plan without any keeps its nodes.
fn rewritten(
    exprs: &[Arc<dyn PhysicalExpr>],
    schema: &Schema,
) -> Result<Option<Vec<Arc<dyn PhysicalExpr>>>> {
    let new = exprs
        .iter()
        .map(|e| faster_decimal_arithmetic(Arc::clone(e), schema))
        .collect::<Result<Vec<_>>>()?;
    let changed = new.iter().zip(exprs).any(|(n, o)| !Arc::ptr_eq(n, o));
    Ok(changed.then_some(new))
}

#[cfg(test)]
mod tests {
    use arrow::datatypes::Field;
    use datafusion::physical_expr::expressions::{col, lit};
    use datafusion::scalar::ScalarValue;
    use rand::{Rng, SeedableRng};

    use super::*;

    fn decimals(values: Vec<Option<i128>>, precision: u8, scale: i8) -> ArrayRef {
        Arc::new(
            Decimal128Array::from(values)
                .with_precision_and_scale(precision, scale)
                .unwrap(),
        )
    }

    /// `spread` is zero exactly for the values that fit in 64 bits: at the edges of 64 bits
    /// and at random, of any width.
    #[test]
    fn spread_is_zero_exactly_for_values_that_fit() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(3);
        let edges = [
            0,
            -1,
            i128::from(i64::MIN),
            i128::from(i64::MAX),
            i128::from(i64::MIN) - 1,
            i128::from(i64::MAX) + 1,
            i128::MIN,
            i128::MAX,
            1 << 64,
            -(1 << 64),
        ];
        let random = (0..4000).map(|i| {
            let bits = i % 128;
            rng.random_range(i128::MIN..=i128::MAX) >> bits
        });
        for value in edges.into_iter().chain(random) {
            let fits = i64::try_from(value).is_ok();
            assert_eq!(spread(value) == 0, fits, "{value}");
            assert_eq!(narrow(value), fits, "{value}");
        }
    }

    /// Random sums, differences and products, with nulls, values past 64 bits, overflowing
    /// ones, scalar sides of other scales and sides that are a column shifted by a scalar
    /// (computed in the parent's loop), equal to DataFusion's own `BinaryExpr` (values, type
    /// and errors).
    #[test]
    fn results_equal_datafusions() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(11);
        for round in 0..1200 {
            let rows = rng.random_range(0..300);
            let wide = round % 4 == 0;
            let huge = round % 13 == 0;
            let value = |rng: &mut rand::rngs::StdRng| -> Option<i128> {
                if rng.random_bool(0.1) {
                    return None;
                }
                Some(match (huge, wide) {
                    (true, _) => rng.random_range(-(1i128 << 126)..(1i128 << 126)),
                    (_, true) => rng.random_range(-(1i128 << 70)..(1i128 << 70)),
                    _ => i128::from(rng.random_range(i64::MIN..=i64::MAX)),
                })
            };
            let mut a: Vec<_> = (0..rows).map(|_| value(&mut rng)).collect();
            let b: Vec<_> = (0..rows).map(|_| value(&mut rng)).collect();
            // One value past 64 bits among narrow ones, anywhere.
            if round % 4 == 1 && rows > 0 {
                a[rng.random_range(0..rows)] = Some(i128::from(i64::MAX) + 1);
            }
            let op = [Operator::Multiply, Operator::Plus, Operator::Minus][round % 3];
            let schema = Arc::new(Schema::new(vec![
                Field::new("a", DataType::Decimal128(38, 2), true),
                Field::new("b", DataType::Decimal128(38, 3), true),
            ]));
            let batch = RecordBatch::try_new(
                Arc::clone(&schema),
                vec![decimals(a, 38, 2), decimals(b, 38, 3)],
            )
            .unwrap();
            let right = if round % 5 == 0 {
                let scale = rng.random_range(0..=20);
                lit(ScalarValue::Decimal128(
                    Some(rng.random_range(-999..999)),
                    38,
                    scale,
                ))
            } else {
                col("b", &schema).unwrap()
            };
            let left = col("a", &schema).unwrap();
            // A side that is a column shifted by a scalar (`1 - b`, `a + 0.5`), which the
            // parent computes in its own loop: on the right, the left, or both.
            let shift = |side: Arc<dyn PhysicalExpr>, rng: &mut rand::rngs::StdRng| {
                let scalar = lit(ScalarValue::Decimal128(
                    Some(rng.random_range(-999..999)),
                    38,
                    rng.random_range(0..=4),
                ));
                let op = [Operator::Plus, Operator::Minus][rng.random_range(0..2)];
                let shifted: Arc<dyn PhysicalExpr> = match rng.random_bool(0.5) {
                    true => Arc::new(BinaryExpr::new(scalar, op, side)),
                    false => Arc::new(BinaryExpr::new(side, op, scalar)),
                };
                shifted
            };
            let (left, right) = match round % 7 {
                0 => (right, left),
                2 | 4 => (left, shift(right, &mut rng)),
                3 => (shift(left, &mut rng), right),
                6 => (shift(left, &mut rng), shift(right, &mut rng)),
                _ => (left, right),
            };
            let theirs: Arc<dyn PhysicalExpr> = Arc::new(BinaryExpr::new(left, op, right));
            let ours = faster_decimal_arithmetic(Arc::clone(&theirs), &schema).unwrap();
            assert_eq!(
                ours.data_type(&schema).unwrap(),
                theirs.data_type(&schema).unwrap()
            );
            match (theirs.evaluate(&batch), ours.evaluate(&batch)) {
                (Ok(t), Ok(o)) => {
                    let t = t.into_array(rows).unwrap();
                    let o = o.into_array(rows).unwrap();
                    assert_eq!(t.as_ref(), o.as_ref(), "round {round}");
                }
                (Err(t), Err(o)) => assert_eq!(t.to_string(), o.to_string()),
                (t, o) => panic!("round {round}: DataFusion {t:?}, ours {o:?}"),
            }
            // The same columns read narrow (64-bit, as from Parquet's `INT64`), either or
            // both, when their values fit: the same answer as from the wide ones.
            let fits = |c: &ArrayRef| {
                c.as_primitive::<Decimal128Type>()
                    .iter()
                    .all(|v| v.is_none_or(narrow))
            };
            if batch.columns().iter().all(fits) {
                let narrowed = |c: &ArrayRef, scale: i8| -> ArrayRef {
                    Arc::new(
                        c.as_primitive::<Decimal128Type>()
                            .unary::<_, Decimal64Type>(|v| v as i64)
                            .with_precision_and_scale(18, scale)
                            .unwrap(),
                    )
                };
                let (narrow_a, narrow_b) = [(true, false), (false, true), (true, true)][round % 3];
                let a = match narrow_a {
                    true => narrowed(batch.column(0), 2),
                    false => Arc::clone(batch.column(0)),
                };
                let b = match narrow_b {
                    true => narrowed(batch.column(1), 3),
                    false => Arc::clone(batch.column(1)),
                };
                let narrow_batch = RecordBatch::try_from_iter([("a", a), ("b", b)]).unwrap();
                let wide = ours.evaluate(&batch).map(|v| v.into_array(rows).unwrap());
                let from_narrow = ours
                    .evaluate(&narrow_batch)
                    .map(|v| v.into_array(rows).unwrap());
                match (wide, from_narrow) {
                    (Ok(w), Ok(n)) => assert_eq!(w.as_ref(), n.as_ref(), "round {round}"),
                    (Err(w), Err(n)) => assert_eq!(w.to_string(), n.to_string()),
                    (w, n) => panic!("round {round}: wide {w:?}, narrow {n:?}"),
                }
            }
        }
    }

    /// Through SQL: a session with [`FasterDecimalArithmetic`] answers decimal arithmetic in
    /// projections and aggregate arguments as plain DataFusion does, over random decimals
    /// (nulls, negative and wide values, small batches), and its plan does use the rule.
    #[test]
    fn sql_with_the_rule_answers_as_datafusion() {
        use datafusion::datasource::MemTable;
        use datafusion::execution::SessionStateBuilder;
        use datafusion::physical_optimizer::optimizer::PhysicalOptimizer;
        use datafusion::physical_plan::aggregates::AggregateExec;
        use datafusion::prelude::SessionContext;

        let mut rng = rand::rngs::StdRng::seed_from_u64(5);
        let schema = Arc::new(Schema::new(vec![
            Field::new("k", DataType::Int64, false),
            Field::new("price", DataType::Decimal128(15, 2), true),
            Field::new("disc", DataType::Decimal128(15, 2), true),
            Field::new("wide", DataType::Decimal128(38, 4), true),
        ]));
        let batches: Vec<RecordBatch> = (0..6)
            .map(|_| {
                let rows = rng.random_range(0..200);
                let small = |rng: &mut rand::rngs::StdRng| {
                    (!rng.random_bool(0.1)).then(|| rng.random_range(-10_000_000i128..10_000_000))
                };
                let keys: Vec<i64> = (0..rows).map(|_| rng.random_range(0..4)).collect();
                let price: Vec<_> = (0..rows).map(|_| small(&mut rng)).collect();
                let disc: Vec<_> = (0..rows).map(|_| small(&mut rng)).collect();
                let wide: Vec<_> = (0..rows)
                    .map(|_| {
                        (!rng.random_bool(0.1))
                            .then(|| rng.random_range(-(1i128 << 90)..(1i128 << 90)))
                    })
                    .collect();
                RecordBatch::try_new(
                    Arc::clone(&schema),
                    vec![
                        Arc::new(arrow::array::Int64Array::from(keys)),
                        decimals(price, 15, 2),
                        decimals(disc, 15, 2),
                        decimals(wide, 38, 4),
                    ],
                )
                .unwrap()
            })
            .collect();
        let sql = "SELECT k, sum(price * (1 - disc)), sum(price * (1 - disc) * (1 + disc)), \
                   sum(wide * 2 - price), min(price + disc * 3) \
                   FROM t GROUP BY k ORDER BY k";
        let answer = |with_rule: bool| {
            let mut rules = PhysicalOptimizer::new().rules;
            if with_rule {
                rules.push(Arc::new(FasterDecimalArithmetic));
            }
            let state = SessionStateBuilder::new()
                .with_default_features()
                .with_physical_optimizer_rules(rules)
                .build();
            let ctx = SessionContext::new_with_state(state);
            let table = MemTable::try_new(Arc::clone(&schema), vec![batches.clone()]).unwrap();
            ctx.register_table("t", Arc::new(table)).unwrap();
            crate::thread_runtime::block_on(async {
                let plan = ctx.sql(sql).await?.create_physical_plan().await?;
                let mut ours = 0;
                plan.apply(|node| {
                    if let Some(aggregate) = node.downcast_ref::<AggregateExec>() {
                        for function in aggregate.aggr_expr() {
                            for arg in function.expressions() {
                                arg.apply(|e| {
                                    ours += usize::from(
                                        e.downcast_ref::<DecimalArithmetic>().is_some(),
                                    );
                                    Ok(datafusion::common::tree_node::TreeNodeRecursion::Continue)
                                })?;
                            }
                        }
                    }
                    Ok(datafusion::common::tree_node::TreeNodeRecursion::Continue)
                })?;
                let rows = datafusion::physical_plan::collect(plan, ctx.task_ctx()).await?;
                Ok::<_, datafusion::error::DataFusionError>((ours, rows))
            })
            .unwrap()
        };
        let (none, theirs) = answer(false);
        let (some, ours) = answer(true);
        assert_eq!(none, 0);
        assert!(some >= 4, "the rule replaced {some} operations");
        assert_eq!(
            arrow::compute::concat_batches(&theirs[0].schema(), &theirs).unwrap(),
            arrow::compute::concat_batches(&ours[0].schema(), &ours).unwrap()
        );
    }
}
