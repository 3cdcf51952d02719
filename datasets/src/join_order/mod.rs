//! Inner joins put in the order that joins the fewest rows (the `JoinOrder` logical rule).
//!
//! DataFusion joins tables in the order a query names them, and only swaps the two sides of
//! each join. TPC-H q07 names `supplier, lineitem, orders, customer, nation n1, nation n2`:
//! all 1.8 M line items of two years meet every supplier, order and customer before the two
//! nations of the query drop nine in ten of them. Joining the nation with the suppliers
//! first, then the line items, keeps 150 K.
//!
//! [`JoinOrder`] takes each group of inner joins (joins on equal keys, with column-only
//! projections between them) as a set of plans and the conditions between them, estimates
//! each plan's rows ([`estimate`]), and searches the cheapest order ([`search`]). Columns
//! equal to a third are equal to each other, so q05's `c_nationkey = s_nationkey AND
//! s_nationkey = n_nationkey` also lets `customer` join `nation` first. It rebuilds
//! the group in that order when it is estimated at least a fifth cheaper than the written
//! one: each condition on the lowest join that holds all its columns, each join's output
//! pruned to the columns used above it, and the group's columns in their written order on
//! top. A group with a plan it cannot estimate (no Parquet footers to read, an operator it does
//! not know), fewer than three or more than [`search::MOST_PLANS`] plans, or plans not all
//! connected by equal keys stays as written.
//!
//! It runs in each optimizer pass before DataFusion's projection pruning; a group in its
//! chosen order is left alone, so later passes keep it.

mod estimate;
mod search;
mod table_stats;

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use datafusion::common::tree_node::{Transformed, TreeNode};
use datafusion::common::{Column, DFSchemaRef, NullEquality, Result, internal_datafusion_err};
use datafusion::logical_expr::utils::{conjunction, split_conjunction};
use datafusion::logical_expr::{
    Expr, Filter, Join, JoinConstraint, JoinType, LogicalPlan, Projection,
};
use datafusion::optimizer::{ApplyOrder, OptimizerConfig, OptimizerRule};

use estimate::{Estimate, equi_selectivity, estimate, selectivity};
use search::{JoinGraph, Shape};

/// How much cheaper a found order must be estimated than the written one to replace it.
const WORTH_IT: f64 = 0.8;

/// Share of rows a condition over several plans keeps, other than equal keys.
const MANY_PLAN_CONDITION: f64 = 0.5;

/// The logical optimizer rule: see the module documentation.
#[derive(Debug, Default)]
pub struct JoinOrder;

impl OptimizerRule for JoinOrder {
    fn name(&self) -> &str {
        "JoinOrder"
    }

    fn apply_order(&self) -> Option<ApplyOrder> {
        None
    }

    fn rewrite(
        &self,
        plan: LogicalPlan,
        _config: &dyn OptimizerConfig,
    ) -> Result<Transformed<LogicalPlan>> {
        reorder(plan)
    }
}

/// `plan` with each of its groups of inner joins in their best order.
fn reorder(plan: LogicalPlan) -> Result<Transformed<LogicalPlan>> {
    if !is_inner_join(&plan) {
        return plan.map_children(reorder);
    }
    let mut group = Group::default();
    let written = group.flatten(&plan);
    let mut plans_changed = false;
    let plans = std::mem::take(&mut group.plans);
    for member in plans {
        let member = reorder(member)?;
        plans_changed |= member.transformed;
        group.plans.push(member.data);
    }
    let schema = plan.schema();
    if let Some(better) = group.better_than(&written)
        && let Ok(rebuilt) = group.build(&better, schema)
    {
        return Ok(Transformed::yes(rebuilt));
    }
    match plans_changed {
        true => {
            let mut plans = group.plans.into_iter();
            Ok(Transformed::yes(with_plans(&plan, &mut plans)?))
        }
        false => Ok(Transformed::no(plan)),
    }
}

/// `plan`, a group's joins as written, over `plans` in place of the plans
/// [`Group::flatten`] found in it (in the order it found them).
fn with_plans(
    plan: &LogicalPlan,
    plans: &mut impl Iterator<Item = LogicalPlan>,
) -> Result<LogicalPlan> {
    let member = match plan {
        LogicalPlan::Join(_) => is_inner_join(plan),
        LogicalPlan::Projection(_) => is_group_member_join(plan),
        _ => false,
    };
    if !member {
        return plans
            .next()
            .ok_or_else(|| internal_datafusion_err!("a join group has fewer plans than joins"));
    }
    let inputs = plan
        .inputs()
        .into_iter()
        .map(|input| with_plans(input, plans))
        .collect::<Result<Vec<_>>>()?;
    plan.with_new_exprs(plan.expressions(), inputs)
}

/// Whether `plan` is a join this rule may reorder: inner, on equal keys, nulls joining
/// nothing.
fn is_inner_join(plan: &LogicalPlan) -> bool {
    matches!(plan, LogicalPlan::Join(join)
        if join.join_type == JoinType::Inner
            && join.join_constraint == JoinConstraint::On
            && join.null_equality == NullEquality::NullEqualsNothing
            && !join.null_aware)
}

/// Whether `plan` is an inner join, under column-only projections.
fn is_group_member_join(plan: &LogicalPlan) -> bool {
    match plan {
        LogicalPlan::Projection(projection) => {
            projection.expr.iter().all(|e| matches!(e, Expr::Column(_)))
                && is_group_member_join(&projection.input)
        }
        _ => is_inner_join(plan),
    }
}

/// A condition of a group of joins.
#[derive(Debug, Clone)]
enum Condition {
    /// Equal keys: an expression of one side and one of the other.
    Equal(Expr, Expr),
    /// Any other condition.
    Other(Expr),
}

impl Condition {
    fn columns(&self) -> Vec<&Column> {
        let mut columns: Vec<&Column> = match self {
            Condition::Equal(left, right) => {
                let mut columns: Vec<&Column> = left.column_refs().into_iter().collect();
                columns.extend(right.column_refs());
                columns
            }
            Condition::Other(expr) => expr.column_refs().into_iter().collect(),
        };
        columns.sort();
        columns
    }
}

/// A group of inner joins taken apart: the plans it joins and the conditions between them.
#[derive(Debug, Default)]
struct Group {
    plans: Vec<LogicalPlan>,
    conditions: Vec<Condition>,
}

/// A group's classes of equal columns (see [`Group::equal_columns`]).
struct EqualColumns {
    /// Each class's columns, with the plan each comes from.
    classes: Vec<Vec<(usize, Column)>>,
    /// Per condition, the class it makes equal, if any.
    of_condition: Vec<Option<usize>>,
}

/// Where a group's conditions reach: the plans each one's columns come from, as bits.
struct Reach {
    /// Per condition: the plans of all its columns, and for equal keys each side's.
    conditions: Vec<(u32, Option<(u32, u32)>)>,
}

impl Group {
    /// Takes the joins of `plan` apart into `self`; the written shape.
    fn flatten(&mut self, plan: &LogicalPlan) -> Shape {
        match plan {
            LogicalPlan::Join(join) if is_inner_join(plan) => {
                let left = self.flatten(&join.left);
                let right = self.flatten(&join.right);
                for (l, r) in &join.on {
                    self.conditions.push(Condition::Equal(l.clone(), r.clone()));
                }
                if let Some(filter) = &join.filter {
                    for condition in split_conjunction(filter) {
                        self.conditions.push(Condition::Other(condition.clone()));
                    }
                }
                Shape::Join(Box::new(left), Box::new(right))
            }
            LogicalPlan::Projection(projection) if is_group_member_join(plan) => {
                self.flatten(&projection.input)
            }
            _ => {
                self.plans.push(plan.clone());
                Shape::Plan(self.plans.len() - 1)
            }
        }
    }

    /// The plans each condition reaches; `None` if a column belongs to no plan or to two.
    fn reach(&self) -> Option<Reach> {
        let mut owner: HashMap<Column, u32> = HashMap::new();
        for (i, plan) in self.plans.iter().enumerate() {
            for column in plan.schema().columns() {
                if owner.insert(column, 1 << i).is_some() {
                    return None;
                }
            }
        }
        let plans_of = |expr: &Expr| -> Option<u32> {
            expr.column_refs()
                .into_iter()
                .try_fold(0, |bits, c| Some(bits | owner.get(c)?))
        };
        let conditions = self
            .conditions
            .iter()
            .map(|condition| match condition {
                Condition::Equal(left, right) => {
                    let (left, right) = (plans_of(left)?, plans_of(right)?);
                    Some((left | right, Some((left, right))))
                }
                Condition::Other(expr) => Some((plans_of(expr)?, None)),
            })
            .collect::<Option<Vec<_>>>()?;
        Some(Reach { conditions })
    }

    /// The group's columns made equal, in classes: conditions `x = y` on a column of one plan
    /// and a column of another, where no other condition joins those two plans (a key of
    /// several columns stays one edge of the graph, see [`equi_selectivity`]). Columns equal
    /// to a third are equal to each other (`c_nationkey = s_nationkey` and `s_nationkey =
    /// n_nationkey` join `customer` with `nation`), so a class joins any two of its plans.
    fn equal_columns(&self, reach: &Reach) -> EqualColumns {
        let single = |bits: u32| (bits.count_ones() == 1).then(|| bits.trailing_zeros() as usize);
        let mut per_pair: HashMap<(usize, usize), usize> = HashMap::new();
        for (_, sides) in &reach.conditions {
            if let Some((a, b)) = sides
                && let (Some(a), Some(b)) = (single(*a), single(*b))
                && a != b
            {
                *per_pair.entry((a.min(b), a.max(b))).or_default() += 1;
            }
        }
        // Union-find over the columns of single conditions.
        let mut columns: Vec<(usize, Column)> = Vec::new();
        let mut parent: Vec<usize> = Vec::new();
        let mut index =
            |plan: usize, column: &Column, columns: &mut Vec<(usize, Column)>| match columns
                .iter()
                .position(|(_, c)| c == column)
            {
                Some(i) => i,
                None => {
                    columns.push((plan, column.clone()));
                    parent.push(parent.len());
                    parent.len() - 1
                }
            };
        let mut joined: Vec<(usize, usize, usize)> = Vec::new();
        for (c, condition) in self.conditions.iter().enumerate() {
            if let (Condition::Equal(Expr::Column(l), Expr::Column(r)), Some((a, b))) =
                (condition, reach.conditions[c].1)
                && let (Some(a), Some(b)) = (single(a), single(b))
                && a != b
                && per_pair[&(a.min(b), a.max(b))] == 1
            {
                let (x, y) = (index(a, l, &mut columns), index(b, r, &mut columns));
                joined.push((c, x, y));
            }
        }
        fn root(parent: &mut [usize], mut x: usize) -> usize {
            while parent[x] != x {
                parent[x] = parent[parent[x]];
                x = parent[x];
            }
            x
        }
        for &(_, x, y) in &joined {
            let (x, y) = (root(&mut parent, x), root(&mut parent, y));
            parent[x] = y;
        }
        let mut class_of_root: HashMap<usize, usize> = HashMap::new();
        let mut classes: Vec<Vec<(usize, Column)>> = Vec::new();
        for (i, member) in columns.into_iter().enumerate() {
            let class = *class_of_root
                .entry(root(&mut parent, i))
                .or_insert_with(|| {
                    classes.push(Vec::new());
                    classes.len() - 1
                });
            classes[class].push(member);
        }
        let mut of_condition = vec![None; self.conditions.len()];
        for (c, x, _) in joined {
            of_condition[c] = Some(class_of_root[&root(&mut parent, x)]);
        }
        EqualColumns {
            classes,
            of_condition,
        }
    }

    /// A shape estimated cheaper enough than `written` (see the module doc), if there is one.
    fn better_than(&self, written: &Shape) -> Option<Shape> {
        let n = self.plans.len();
        if !(3..=search::MOST_PLANS).contains(&n) {
            return None;
        }
        let reach = self.reach()?;
        let estimates: Vec<Estimate> = self.plans.iter().map(estimate).collect::<Option<_>>()?;
        let mut graph = JoinGraph {
            rows: estimates.iter().map(|e| e.rows).collect(),
            ..Default::default()
        };
        let EqualColumns {
            classes,
            of_condition,
        } = self.equal_columns(&reach);
        for class in &classes {
            let members = class
                .iter()
                .map(|(plan, column)| {
                    let (distinct, table) =
                        estimates[*plan].distinct(&Expr::Column(column.clone()));
                    (*plan, distinct, table)
                })
                .collect();
            graph.classes.push(members);
        }
        // Other equal keys between two plans, gathered per pair (a key of several columns is
        // one edge).
        let mut pairs: HashMap<(usize, usize), Vec<(&Expr, &Expr)>> = HashMap::new();
        for (c, (condition, (plans, sides))) in
            self.conditions.iter().zip(&reach.conditions).enumerate()
        {
            if of_condition[c].is_some() {
                continue;
            }
            match (condition, sides) {
                (Condition::Equal(l, r), Some((a, b)))
                    if a.count_ones() == 1 && b.count_ones() == 1 && a != b =>
                {
                    let (a, b) = (a.trailing_zeros() as usize, b.trailing_zeros() as usize);
                    match a < b {
                        true => pairs.entry((a, b)).or_default().push((l, r)),
                        false => pairs.entry((b, a)).or_default().push((r, l)),
                    }
                }
                (Condition::Other(expr), _) if plans.count_ones() == 1 => {
                    let i = plans.trailing_zeros() as usize;
                    graph.rows[i] *= selectivity(expr, &estimates[i]);
                }
                _ if plans.count_ones() >= 2 => graph.others.push((*plans, MANY_PLAN_CONDITION)),
                _ => {}
            }
        }
        let mut pairs: Vec<_> = pairs.into_iter().collect();
        pairs.sort_by_key(|(pair, _)| *pair);
        for ((a, b), keys) in pairs {
            let share = equi_selectivity(&estimates[a], &estimates[b], &keys);
            graph.edges.push((a, b, share));
        }
        let best = graph.best()?;
        (best != *written && graph.cost(&best) < WORTH_IT * graph.cost(written)).then_some(best)
    }

    /// The group joined in the order `shape`, with the columns of `schema` in their order.
    fn build(&self, shape: &Shape, schema: &DFSchemaRef) -> Result<LogicalPlan> {
        let Some(reach) = self.reach() else {
            return datafusion::common::plan_err!("a join group's columns are ambiguous");
        };
        let wanted: Vec<Column> = schema.columns();
        let needed: HashSet<&Column> = wanted.iter().collect();
        let mut placed = vec![false; self.conditions.len()];
        let mut plan = self.build_shape(shape, &reach, &needed, &mut placed)?;
        let unplaced: Vec<Expr> = self
            .conditions
            .iter()
            .zip(&placed)
            .filter(|(_, placed)| !**placed)
            .map(|(condition, _)| as_expr(condition))
            .collect();
        if let Some(predicate) = conjunction(unplaced) {
            plan = LogicalPlan::Filter(Filter::try_new(predicate, Arc::new(plan))?);
        }
        let columns = wanted.iter().cloned().map(Expr::Column).collect();
        Ok(LogicalPlan::Projection(Projection::try_new(
            columns,
            Arc::new(plan),
        )?))
    }

    /// `shape` built, its output pruned to `needed`; marks the conditions it places.
    fn build_shape(
        &self,
        shape: &Shape,
        reach: &Reach,
        needed: &HashSet<&Column>,
        placed: &mut [bool],
    ) -> Result<LogicalPlan> {
        let (left, right) = match shape {
            Shape::Plan(i) => {
                let mut plan = self.plans[*i].clone();
                let own: Vec<Expr> = (0..self.conditions.len())
                    .filter(|&c| reach.conditions[c].0 == 1 << i)
                    .map(|c| {
                        placed[c] = true;
                        as_expr(&self.conditions[c])
                    })
                    .collect();
                if let Some(predicate) = conjunction(own) {
                    plan = LogicalPlan::Filter(Filter::try_new(predicate, Arc::new(plan))?);
                }
                return Ok(plan);
            }
            Shape::Join(left, right) => (left, right),
        };
        let (left_plans, right_plans) = (left.plans(), right.plans());
        let both = left_plans | right_plans;
        // The conditions whose columns this join is the first to hold.
        let here: Vec<usize> = (0..self.conditions.len())
            .filter(|&c| {
                let plans = reach.conditions[c].0;
                plans & both == plans && plans & left_plans != plans && plans & right_plans != plans
            })
            .collect();
        let mut inner_needed = needed.clone();
        for &c in &here {
            inner_needed.extend(self.conditions[c].columns());
        }
        let left = self.build_shape(left, reach, &inner_needed, placed)?;
        let right = self.build_shape(right, reach, &inner_needed, placed)?;
        let mut on = Vec::new();
        let mut filters = Vec::new();
        // A class of equal columns with columns on both sides and no condition of its own
        // here joins the sides on one column of each.
        let EqualColumns {
            classes,
            of_condition,
        } = self.equal_columns(reach);
        for (class, members) in classes.iter().enumerate() {
            if here.iter().any(|&c| of_condition[c] == Some(class)) {
                continue;
            }
            let on_side = |plans: u32| members.iter().find(|(plan, _)| plans & (1 << plan) != 0);
            if let (Some((_, l)), Some((_, r))) = (on_side(left_plans), on_side(right_plans)) {
                on.push((Expr::Column(l.clone()), Expr::Column(r.clone())));
            }
        }
        for c in here {
            placed[c] = true;
            match (&self.conditions[c], reach.conditions[c].1) {
                (Condition::Equal(l, r), Some((lp, rp))) => {
                    if lp & left_plans == lp && rp & right_plans == rp {
                        on.push((l.clone(), r.clone()));
                    } else if lp & right_plans == lp && rp & left_plans == rp {
                        on.push((r.clone(), l.clone()));
                    } else {
                        filters.push(l.clone().eq(r.clone()));
                    }
                }
                (condition, _) => filters.push(as_expr(condition)),
            }
        }
        let join = LogicalPlan::Join(Join::try_new(
            Arc::new(left),
            Arc::new(right),
            on,
            conjunction(filters),
            JoinType::Inner,
            JoinConstraint::On,
            NullEquality::NullEqualsNothing,
            false,
        )?);
        let columns = join.schema().columns();
        let kept: Vec<Expr> = columns
            .iter()
            .filter(|c| needed.contains(c))
            .cloned()
            .map(Expr::Column)
            .collect();
        if kept.is_empty() || kept.len() == columns.len() {
            return Ok(join);
        }
        Ok(LogicalPlan::Projection(Projection::try_new(
            kept,
            Arc::new(join),
        )?))
    }
}

/// A condition as one expression.
fn as_expr(condition: &Condition) -> Expr {
    match condition {
        Condition::Equal(left, right) => left.clone().eq(right.clone()),
        Condition::Other(expr) => expr.clone(),
    }
}

#[cfg(test)]
mod tests;
