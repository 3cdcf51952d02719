//! A random pipeline, as plain data: the steps, what they mean in the Dataset API, in SQL and
//! as Rust source (for the reproducer).
//!
//! Steps are generated from `(kind, seed)` choices *interpreted against the schema flowing
//! at that point*: a choice names no column itself, so dropping a step or changing a seed (as
//! proptest does when it shrinks a failing case) still gives a valid pipeline.

use arrow::array::RecordBatch;
use datafusion::prelude::{Expr, col, lit};
use manta::{Aggregate, JoinKind, SortKey, WriteFormat, WriteMode};
use rand::rngs::StdRng;
use rand::seq::{IndexedRandom, SliceRandom};
use rand::{Rng, SeedableRng};

use super::data::{schema_a, schema_b};

/// A column's type, as far as the generator cares.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Ty {
    Int,
    Float,
    Str,
}

#[derive(Clone, Debug, PartialEq)]
pub struct Column {
    pub name: String,
    pub ty: Ty,
}

fn columns_of(schema: &arrow::datatypes::Schema) -> Vec<Column> {
    schema
        .fields()
        .iter()
        .map(|f| Column {
            name: f.name().clone(),
            ty: match f.data_type() {
                arrow::datatypes::DataType::Int64 => Ty::Int,
                arrow::datatypes::DataType::Float64 => Ty::Float,
                _ => Ty::Str,
            },
        })
        .collect()
}

/// A SQL identifier.
fn q(name: &str) -> String {
    format!("\"{name}\"")
}

/// A SQL string literal.
fn sql_str(s: &str) -> String {
    format!("'{}'", s.replace('\'', "''"))
}

/// A filter predicate.
#[derive(Clone, Debug)]
pub enum Pred {
    /// `column op value` on a number.
    Cmp(String, &'static str, i64),
    /// `column = value` on a string.
    StrEq(String, String),
    IsNull(String),
    NotNull(String),
    And(Box<Pred>, Box<Pred>),
    Or(Box<Pred>, Box<Pred>),
    Not(Box<Pred>),
}

impl Pred {
    fn generate(rng: &mut StdRng, columns: &[Column], depth: u32) -> Pred {
        let column = columns.choose(rng).expect("a column").clone();
        match rng.random_range(0..if depth > 0 { 7 } else { 4 }) {
            0 | 1 => match column.ty {
                Ty::Str => {
                    let s = ["", "x", "ü", "🦀", "O'Neil", "zz"]
                        .choose(rng)
                        .expect("one");
                    Pred::StrEq(column.name, s.to_string())
                }
                _ => {
                    let op = ["<", "<=", ">", ">=", "=", "<>"].choose(rng).expect("one");
                    Pred::Cmp(column.name, op, rng.random_range(-10..10))
                }
            },
            2 => Pred::IsNull(column.name),
            3 => Pred::NotNull(column.name),
            4 => Pred::And(
                Box::new(Pred::generate(rng, columns, depth - 1)),
                Box::new(Pred::generate(rng, columns, depth - 1)),
            ),
            5 => Pred::Or(
                Box::new(Pred::generate(rng, columns, depth - 1)),
                Box::new(Pred::generate(rng, columns, depth - 1)),
            ),
            _ => Pred::Not(Box::new(Pred::generate(rng, columns, depth - 1))),
        }
    }

    pub fn expr(&self) -> Expr {
        match self {
            Pred::Cmp(c, op, v) => {
                let (c, v) = (col(c.as_str()), lit(*v));
                match *op {
                    "<" => c.lt(v),
                    "<=" => c.lt_eq(v),
                    ">" => c.gt(v),
                    ">=" => c.gt_eq(v),
                    "=" => c.eq(v),
                    _ => c.not_eq(v),
                }
            }
            Pred::StrEq(c, s) => col(c.as_str()).eq(lit(s.as_str())),
            Pred::IsNull(c) => col(c.as_str()).is_null(),
            Pred::NotNull(c) => col(c.as_str()).is_not_null(),
            Pred::And(a, b) => a.expr().and(b.expr()),
            Pred::Or(a, b) => a.expr().or(b.expr()),
            Pred::Not(a) => !a.expr(),
        }
    }

    pub fn sql(&self) -> String {
        match self {
            Pred::Cmp(c, op, v) => format!("({} {op} {v})", q(c)),
            Pred::StrEq(c, s) => format!("({} = {})", q(c), sql_str(s)),
            Pred::IsNull(c) => format!("({} IS NULL)", q(c)),
            Pred::NotNull(c) => format!("({} IS NOT NULL)", q(c)),
            Pred::And(a, b) => format!("({} AND {})", a.sql(), b.sql()),
            Pred::Or(a, b) => format!("({} OR {})", a.sql(), b.sql()),
            Pred::Not(a) => format!("(NOT {})", a.sql()),
        }
    }

    fn rust(&self) -> String {
        match self {
            Pred::Cmp(c, op, v) => {
                let method = match *op {
                    "<" => "lt",
                    "<=" => "lt_eq",
                    ">" => "gt",
                    ">=" => "gt_eq",
                    "=" => "eq",
                    _ => "not_eq",
                };
                format!("col({c:?}).{method}(lit({v}i64))")
            }
            Pred::StrEq(c, s) => format!("col({c:?}).eq(lit({s:?}))"),
            Pred::IsNull(c) => format!("col({c:?}).is_null()"),
            Pred::NotNull(c) => format!("col({c:?}).is_not_null()"),
            Pred::And(a, b) => format!("{}.and({})", a.rust(), b.rust()),
            Pred::Or(a, b) => format!("{}.or({})", a.rust(), b.rust()),
            Pred::Not(a) => format!("!({})", a.rust()),
        }
    }
}

/// A computed column's value.
#[derive(Clone, Debug)]
pub enum Value {
    /// `column + n` (integers).
    AddLit(String, i64),
    /// `column * n` (integers or floats).
    MulLit(String, i64),
    /// `a + b` (integers).
    AddColumns(String, String),
    /// `upper(column)` (strings).
    Upper(String),
    /// `coalesce(column, n)` (integers).
    Coalesce(String, i64),
    /// A constant.
    Const(i64),
}

impl Value {
    fn generate(rng: &mut StdRng, columns: &[Column]) -> (Value, Ty) {
        let ints: Vec<&Column> = columns.iter().filter(|c| c.ty == Ty::Int).collect();
        let floats: Vec<&Column> = columns.iter().filter(|c| c.ty == Ty::Float).collect();
        let strings: Vec<&Column> = columns.iter().filter(|c| c.ty == Ty::Str).collect();
        for _ in 0..8 {
            match rng.random_range(0..6) {
                0 if !ints.is_empty() => {
                    let c = ints.choose(rng).expect("one");
                    return (
                        Value::AddLit(c.name.clone(), rng.random_range(-5..5)),
                        Ty::Int,
                    );
                }
                1 if !ints.is_empty() || !floats.is_empty() => {
                    let pool = if !floats.is_empty() && (ints.is_empty() || rng.random()) {
                        &floats
                    } else {
                        &ints
                    };
                    let c = pool.choose(rng).expect("one");
                    return (Value::MulLit(c.name.clone(), rng.random_range(-3..4)), c.ty);
                }
                2 if ints.len() >= 2 || !ints.is_empty() => {
                    let a = ints.choose(rng).expect("one");
                    let b = ints.choose(rng).expect("one");
                    return (Value::AddColumns(a.name.clone(), b.name.clone()), Ty::Int);
                }
                3 if !strings.is_empty() => {
                    let c = strings.choose(rng).expect("one");
                    return (Value::Upper(c.name.clone()), Ty::Str);
                }
                4 if !ints.is_empty() => {
                    let c = ints.choose(rng).expect("one");
                    return (
                        Value::Coalesce(c.name.clone(), rng.random_range(-3..3)),
                        Ty::Int,
                    );
                }
                5 => return (Value::Const(rng.random_range(-3..3)), Ty::Int),
                _ => {}
            }
        }
        (Value::Const(7), Ty::Int)
    }

    fn expr(&self) -> Expr {
        use datafusion::functions::expr_fn::{coalesce, upper};
        match self {
            Value::AddLit(c, n) => col(c.as_str()) + lit(*n),
            Value::MulLit(c, n) => col(c.as_str()) * lit(*n),
            Value::AddColumns(a, b) => col(a.as_str()) + col(b.as_str()),
            Value::Upper(c) => upper(col(c.as_str())),
            Value::Coalesce(c, n) => coalesce(vec![col(c.as_str()), lit(*n)]),
            Value::Const(n) => lit(*n),
        }
    }

    fn sql(&self) -> String {
        match self {
            Value::AddLit(c, n) => format!("({} + {n})", q(c)),
            Value::MulLit(c, n) => format!("({} * {n})", q(c)),
            Value::AddColumns(a, b) => format!("({} + {})", q(a), q(b)),
            Value::Upper(c) => format!("upper({})", q(c)),
            Value::Coalesce(c, n) => format!("coalesce({}, {n})", q(c)),
            Value::Const(n) => format!("CAST({n} AS BIGINT)"),
        }
    }

    fn rust(&self) -> String {
        match self {
            Value::AddLit(c, n) => format!("col({c:?}) + lit({n}i64)"),
            Value::MulLit(c, n) => format!("col({c:?}) * lit({n}i64)"),
            Value::AddColumns(a, b) => format!("col({a:?}) + col({b:?})"),
            Value::Upper(c) => format!("upper(col({c:?}))"),
            Value::Coalesce(c, n) => format!("coalesce(vec![col({c:?}), lit({n}i64)])"),
            Value::Const(n) => format!("lit({n}i64)"),
        }
    }
}

/// An aggregate of a groupby.
#[derive(Clone, Debug)]
pub struct Agg {
    /// `count`, `count_non_null`, `sum`, `min`, `max`, `mean`, `std`, `count_distinct`.
    pub function: &'static str,
    pub column: Option<String>,
    pub alias: String,
}

impl Agg {
    fn manta(&self) -> Aggregate {
        let c = self.column.as_deref().unwrap_or_default();
        let aggregate = match self.function {
            "count" => Aggregate::count(),
            "count_non_null" => Aggregate::count_non_null(c),
            "sum" => Aggregate::sum(c),
            "min" => Aggregate::min(c),
            "max" => Aggregate::max(c),
            "mean" => Aggregate::mean(c),
            "std" => Aggregate::std(c),
            _ => Aggregate::count_distinct(c),
        };
        aggregate.alias(&self.alias)
    }

    fn sql(&self) -> String {
        let c = self.column.as_deref().map(q).unwrap_or_default();
        let call = match self.function {
            "count" => "count(*)".to_string(),
            "count_non_null" => format!("count({c})"),
            "mean" => format!("avg({c})"),
            "std" => format!("stddev({c})"),
            "count_distinct" => format!("count(DISTINCT {c})"),
            f => format!("{f}({c})"),
        };
        format!("{call} AS {}", q(&self.alias))
    }

    fn rust(&self) -> String {
        match &self.column {
            None => format!("Aggregate::{}().alias({:?})", self.function, self.alias),
            Some(c) => format!(
                "Aggregate::{}({c:?}).alias({:?})",
                self.function, self.alias
            ),
        }
    }

    fn ty(&self, input: &[Column]) -> Ty {
        let column_ty = || {
            let name = self.column.as_deref().expect("a column");
            input.iter().find(|c| c.name == name).expect("known").ty
        };
        match self.function {
            "count" | "count_non_null" | "count_distinct" => Ty::Int,
            "mean" | "std" => Ty::Float,
            _ => column_ty(),
        }
    }
}

/// The right side of a join: a table, maybe filtered.
#[derive(Clone, Debug)]
pub struct Right {
    /// `a` or `b`.
    pub table: &'static str,
    pub filter: Option<Pred>,
}

impl Right {
    fn columns(&self) -> Vec<Column> {
        match self.table {
            "a" => columns_of(&schema_a()),
            _ => columns_of(&schema_b()),
        }
    }

    fn sql(&self) -> String {
        match &self.filter {
            None => format!("SELECT * FROM {}", self.table),
            Some(p) => format!("SELECT * FROM {} WHERE {}", self.table, p.sql()),
        }
    }

    fn rust(&self) -> String {
        match &self.filter {
            None => self.table.to_string(),
            Some(p) => format!("{}.filter({})", self.table, p.rust()),
        }
    }
}

/// How data is written and read back.
#[derive(Clone, Copy, Debug)]
pub enum Format {
    Parquet,
    Ipc,
}

/// One step of a pipeline.
#[derive(Clone, Debug)]
pub enum Step {
    Filter(Pred),
    WithColumn(String, Value),
    Select(Vec<String>),
    Drop(Vec<String>),
    Rename(Vec<(String, String)>),
    Sort(Vec<(String, bool)>),
    Aggregate {
        keys: Vec<String>,
        aggs: Vec<Agg>,
    },
    MapGroups(Vec<String>),
    Join {
        right: Right,
        on: Vec<(String, String)>,
        how: JoinKind,
    },
    /// With itself, filtered.
    Union(Pred),
    Shuffle(u64),
    Repartition(usize, bool),
    WriteRead(Format),
    /// `count_values`, with rows per call and a cap on concurrent tasks (a stage of its own).
    MapBatches {
        batch_size: Option<usize>,
        concurrency: Option<usize>,
    },
}

/// What the pipeline's answer is.
#[derive(Clone, Debug)]
pub enum End {
    /// Every row.
    All,
    /// The first `n` rows.
    Limit(u64),
    /// The distinct values of a column.
    Unique(String),
    /// How many rows.
    Count,
}

/// A whole pipeline over the tables `a` and `b`.
#[derive(Clone, Debug)]
pub struct Pipeline {
    pub steps: Vec<Step>,
    /// The columns flowing into each step.
    pub inputs: Vec<Vec<Column>>,
    pub end: End,
    /// The output columns.
    pub columns: Vec<Column>,
    /// The sort keys whose order the output keeps, if any: `(column index, descending)`.
    pub order: Option<Vec<(usize, bool)>>,
}

/// The generator's view of the pipeline so far.
struct State {
    columns: Vec<Column>,
    order: Option<Vec<(String, bool)>>,
    fresh: usize,
    /// After a `map_groups`, the data may have no rows and no known schema (the function,
    /// called once per group, was never called): later steps that would need it (an outer
    /// join keeping the other side, a global aggregate, a write read back) are not made.
    schema_may_vanish: bool,
}

impl State {
    fn fresh(&mut self) -> String {
        self.fresh += 1;
        format!("c{}", self.fresh)
    }

    /// Forgets the order if a step changes one of its keys.
    fn touch(&mut self, name: &str) {
        if self
            .order
            .as_ref()
            .is_some_and(|keys| keys.iter().any(|(k, _)| k == name))
        {
            self.order = None;
        }
    }
}

/// Kinds of step; the generator picks one per choice.
pub const STEP_KINDS: u8 = 14;

impl Pipeline {
    /// The pipeline made of these choices (see the module's doc).
    pub fn generate(choices: &[(u8, u64)], end: (u8, u64)) -> Pipeline {
        let mut state = State {
            columns: columns_of(&schema_a()),
            order: None,
            fresh: 0,
            schema_may_vanish: false,
        };
        let mut steps = Vec::new();
        let mut inputs = Vec::new();
        for &(kind, seed) in choices {
            let mut rng = StdRng::seed_from_u64(seed);
            let before = state.columns.clone();
            if let Some(step) = Self::step(&mut state, kind % STEP_KINDS, &mut rng) {
                steps.push(step);
                inputs.push(before);
            }
        }
        let mut rng = StdRng::seed_from_u64(end.1);
        let end = match end.0 % 6 {
            0 => End::Limit(rng.random_range(0..30)),
            1 => End::Unique(
                state
                    .columns
                    .choose(&mut rng)
                    .expect("a column")
                    .name
                    .clone(),
            ),
            2 => End::Count,
            _ => End::All,
        };
        let order = state.order.as_ref().map(|keys| {
            keys.iter()
                .map(|(k, descending)| {
                    let index = state
                        .columns
                        .iter()
                        .position(|c| &c.name == k)
                        .expect("kept");
                    (index, *descending)
                })
                .collect()
        });
        Pipeline {
            steps,
            inputs,
            end,
            columns: state.columns,
            order,
        }
    }

    fn step(state: &mut State, kind: u8, rng: &mut StdRng) -> Option<Step> {
        let names: Vec<String> = state.columns.iter().map(|c| c.name.clone()).collect();
        match kind {
            0 | 1 => Some(Step::Filter(Pred::generate(rng, &state.columns, 2))),
            2 => {
                let (value, ty) = Value::generate(rng, &state.columns);
                let name = if rng.random_range(0..4) == 0 {
                    names.choose(rng).expect("a column").clone()
                } else {
                    state.fresh()
                };
                state.touch(&name);
                match state.columns.iter_mut().find(|c| c.name == name) {
                    Some(column) => column.ty = ty,
                    None => state.columns.push(Column {
                        name: name.clone(),
                        ty,
                    }),
                }
                Some(Step::WithColumn(name, value))
            }
            3 => {
                let mut picked = names.clone();
                picked.shuffle(rng);
                picked.truncate(rng.random_range(1..=names.len()));
                for name in names.iter().filter(|n| !picked.contains(n)) {
                    state.touch(name);
                }
                state.columns = picked
                    .iter()
                    .map(|n| {
                        state
                            .columns
                            .iter()
                            .find(|c| &c.name == n)
                            .expect("known")
                            .clone()
                    })
                    .collect();
                Some(Step::Select(picked))
            }
            4 if names.len() > 1 => {
                let mut dropped = names.clone();
                dropped.shuffle(rng);
                dropped.truncate(rng.random_range(1..names.len()));
                for name in &dropped {
                    state.touch(name);
                }
                state.columns.retain(|c| !dropped.contains(&c.name));
                Some(Step::Drop(dropped))
            }
            5 => {
                let mut pairs = Vec::new();
                if names.len() >= 2 && rng.random() {
                    // A swap: both at once.
                    let mut two = names.clone();
                    two.shuffle(rng);
                    pairs.push((two[0].clone(), two[1].clone()));
                    pairs.push((two[1].clone(), two[0].clone()));
                } else {
                    let old = names.choose(rng).expect("a column").clone();
                    pairs.push((old, state.fresh()));
                }
                for (old, new) in &pairs {
                    state.touch(old);
                    state.touch(new);
                }
                for column in &mut state.columns {
                    if let Some((_, new)) = pairs.iter().find(|(old, _)| *old == column.name) {
                        column.name = new.clone();
                    }
                }
                Some(Step::Rename(pairs))
            }
            6 => {
                let mut keys: Vec<(String, bool)> = Vec::new();
                for _ in 0..rng.random_range(1..=2) {
                    let name = names.choose(rng).expect("a column").clone();
                    if !keys.iter().any(|(k, _)| *k == name) {
                        keys.push((name, rng.random()));
                    }
                }
                state.order = Some(keys.clone());
                Some(Step::Sort(keys))
            }
            7 => {
                let groupable: Vec<&Column> =
                    state.columns.iter().filter(|c| c.ty != Ty::Float).collect();
                let mut keys: Vec<String> = Vec::new();
                for _ in 0..rng.random_range(0..=2) {
                    if let Some(c) = groupable.choose(rng)
                        && !keys.contains(&c.name)
                    {
                        keys.push(c.name.clone());
                    }
                }
                if keys.is_empty() && state.schema_may_vanish {
                    return None;
                }
                let mut aggs = Vec::new();
                for _ in 0..rng.random_range(1..=3) {
                    let column = state.columns.choose(rng).expect("a column").clone();
                    let numeric = column.ty != Ty::Str;
                    let function = *[
                        "count",
                        "count_non_null",
                        "sum",
                        "min",
                        "max",
                        "mean",
                        "std",
                        "count_distinct",
                    ]
                    .choose(rng)
                    .expect("one");
                    let function = match function {
                        "sum" | "mean" | "std" if !numeric => "count_non_null",
                        f => f,
                    };
                    aggs.push(Agg {
                        function,
                        column: (function != "count").then_some(column.name),
                        alias: state.fresh(),
                    });
                }
                let mut columns: Vec<Column> = keys
                    .iter()
                    .map(|k| {
                        state
                            .columns
                            .iter()
                            .find(|c| &c.name == k)
                            .expect("known")
                            .clone()
                    })
                    .collect();
                columns.extend(aggs.iter().map(|a| Column {
                    name: a.alias.clone(),
                    ty: a.ty(&state.columns),
                }));
                state.columns = columns;
                state.order = None;
                Some(Step::Aggregate { keys, aggs })
            }
            8 => {
                let groupable: Vec<&Column> =
                    state.columns.iter().filter(|c| c.ty != Ty::Float).collect();
                let mut keys: Vec<String> = Vec::new();
                for _ in 0..rng.random_range(1..=2) {
                    if let Some(c) = groupable.choose(rng)
                        && !keys.contains(&c.name)
                    {
                        keys.push(c.name.clone());
                    }
                }
                if keys.is_empty() {
                    return None;
                }
                let mut columns = vec![Column {
                    name: "rows".into(),
                    ty: Ty::Int,
                }];
                for c in &state.columns {
                    columns.push(Column {
                        name: format!("nn_{}", c.name),
                        ty: Ty::Int,
                    });
                    if c.ty == Ty::Int {
                        columns.push(Column {
                            name: format!("min_{}", c.name),
                            ty: Ty::Int,
                        });
                    }
                }
                state.columns = columns;
                state.order = None;
                state.schema_may_vanish = true;
                Some(Step::MapGroups(keys))
            }
            9 => {
                let right = Right {
                    table: if rng.random_range(0..3) == 0 {
                        "a"
                    } else {
                        "b"
                    },
                    filter: None,
                };
                let right_columns = right.columns();
                let right = Right {
                    filter: rng
                        .random::<bool>()
                        .then(|| Pred::generate(rng, &right_columns, 1)),
                    ..right
                };
                // Key pairs of one type: the left column any of that type, the right one
                // picked among the right table's.
                let mut on: Vec<(String, String)> = Vec::new();
                for _ in 0..rng.random_range(1..=2) {
                    let left = state
                        .columns
                        .iter()
                        .filter(|c| c.ty != Ty::Float)
                        .collect::<Vec<_>>();
                    let Some(l) = left.choose(rng) else { break };
                    let candidates: Vec<&Column> =
                        right_columns.iter().filter(|c| c.ty == l.ty).collect();
                    let Some(r) = candidates.choose(rng) else {
                        continue;
                    };
                    if !on.iter().any(|(a, b)| *a == l.name || *b == r.name) {
                        on.push((l.name.clone(), r.name.clone()));
                    }
                }
                if on.is_empty() {
                    return None;
                }
                let kinds = [
                    JoinKind::Inner,
                    JoinKind::Left,
                    JoinKind::Right,
                    JoinKind::Full,
                    JoinKind::Semi,
                    JoinKind::Anti,
                ];
                let how = *kinds.choose(rng).expect("one");
                let keeps_other_side =
                    matches!(how, JoinKind::Left | JoinKind::Right | JoinKind::Full);
                if keeps_other_side && state.schema_may_vanish {
                    return None;
                }
                let columns = join_columns(&state.columns, &right_columns, &on, how)?;
                state.columns = columns.into_iter().map(|(c, _)| c).collect();
                state.order = None;
                Some(Step::Join { right, on, how })
            }
            10 => Some(Step::Union(Pred::generate(rng, &state.columns, 1))).inspect(|_| {
                state.order = None;
            }),
            11 => {
                state.order = None;
                if rng.random() {
                    Some(Step::Shuffle(rng.random()))
                } else {
                    let shuffle = rng.random();
                    Some(Step::Repartition(rng.random_range(1..6), shuffle))
                }
            }
            // Written with no rows and no known schema, it would read back with no columns.
            12 if !state.schema_may_vanish => {
                state.order = None;
                let format = if rng.random() {
                    Format::Parquet
                } else {
                    Format::Ipc
                };
                Some(Step::WriteRead(format))
            }
            13 => {
                let name = format!("m{}", state.columns.len());
                if state.columns.iter().any(|c| c.name == name) {
                    return None;
                }
                state.columns.push(Column { name, ty: Ty::Int });
                Some(Step::MapBatches {
                    batch_size: [None, Some(1), Some(3), Some(7)][rng.random_range(0..4)],
                    concurrency: [None, None, Some(1)][rng.random_range(0..3)],
                })
            }
            _ => None,
        }
    }

    /// The pipeline as SQL over the tables `a` and `b`, giving every row of the answer (the end
    /// is applied by [`Pipeline::end_sql`]).
    pub fn sql(&self) -> String {
        let mut query = "SELECT * FROM a".to_string();
        for (i, step) in self.steps.iter().enumerate() {
            let columns = &self.inputs[i];
            let t = format!("t{i}");
            let list = |cols: &[String]| cols.join(", ");
            let quoted = |names: &[String]| names.iter().map(|n| q(n)).collect::<Vec<_>>();
            query = match step {
                Step::Filter(p) => format!("SELECT * FROM ({query}) AS {t} WHERE {}", p.sql()),
                Step::WithColumn(name, value) => {
                    let mut select: Vec<String> = columns
                        .iter()
                        .map(|c| match c.name == *name {
                            true => format!("{} AS {}", value.sql(), q(name)),
                            false => q(&c.name),
                        })
                        .collect();
                    if !columns.iter().any(|c| c.name == *name) {
                        select.push(format!("{} AS {}", value.sql(), q(name)));
                    }
                    format!("SELECT {} FROM ({query}) AS {t}", list(&select))
                }
                Step::Select(picked) => {
                    format!("SELECT {} FROM ({query}) AS {t}", list(&quoted(picked)))
                }
                Step::Drop(dropped) => {
                    let kept: Vec<String> = columns
                        .iter()
                        .filter(|c| !dropped.contains(&c.name))
                        .map(|c| q(&c.name))
                        .collect();
                    format!("SELECT {} FROM ({query}) AS {t}", list(&kept))
                }
                Step::Rename(pairs) => {
                    let select: Vec<String> = columns
                        .iter()
                        .map(|c| match pairs.iter().find(|(old, _)| *old == c.name) {
                            Some((old, new)) => format!("{} AS {}", q(old), q(new)),
                            None => q(&c.name),
                        })
                        .collect();
                    format!("SELECT {} FROM ({query}) AS {t}", list(&select))
                }
                // Order is checked on the answer itself; SQL needs it only under a limit.
                Step::Sort(_) | Step::Shuffle(_) | Step::Repartition(..) | Step::WriteRead(_) => {
                    query
                }
                Step::Aggregate { keys, aggs } => {
                    let mut select = quoted(keys);
                    select.extend(aggs.iter().map(Agg::sql));
                    let group = match keys.is_empty() {
                        true => String::new(),
                        false => format!(" GROUP BY {}", list(&quoted(keys))),
                    };
                    format!("SELECT {} FROM ({query}) AS {t}{group}", list(&select))
                }
                Step::MapGroups(keys) => {
                    let mut select = vec![format!("count(*) AS {}", q("rows"))];
                    for c in columns {
                        select.push(format!(
                            "count({}) AS {}",
                            q(&c.name),
                            q(&format!("nn_{}", c.name))
                        ));
                        if c.ty == Ty::Int {
                            select.push(format!(
                                "min({}) AS {}",
                                q(&c.name),
                                q(&format!("min_{}", c.name))
                            ));
                        }
                    }
                    format!(
                        "SELECT {} FROM ({query}) AS {t} GROUP BY {}",
                        list(&select),
                        list(&quoted(keys))
                    )
                }
                Step::Join { right, on, how } => {
                    let output = join_columns(columns, &right.columns(), on, *how)
                        .expect("checked when generated");
                    let select: Vec<String> = output
                        .iter()
                        .map(|(c, source)| format!("{source} AS {}", q(&c.name)))
                        .collect();
                    let condition: Vec<String> = on
                        .iter()
                        .map(|(l, r)| format!("l.{} = r.{}", q(l), q(r)))
                        .collect();
                    let kind = match how {
                        JoinKind::Inner => "INNER JOIN",
                        JoinKind::Left => "LEFT JOIN",
                        JoinKind::Right => "RIGHT JOIN",
                        JoinKind::Full => "FULL JOIN",
                        JoinKind::Semi => "LEFT SEMI JOIN",
                        JoinKind::Anti => "LEFT ANTI JOIN",
                    };
                    format!(
                        "SELECT {} FROM ({query}) AS l {kind} ({}) AS r ON {}",
                        list(&select),
                        right.sql(),
                        condition.join(" AND ")
                    )
                }
                Step::Union(p) => format!(
                    "SELECT * FROM ({query}) AS {t}a UNION ALL SELECT * FROM ({query}) AS {t}b WHERE {}",
                    p.sql()
                ),
                Step::MapBatches { .. } => {
                    let count: Vec<String> = columns
                        .iter()
                        .map(|c| format!("CASE WHEN {} IS NULL THEN 0 ELSE 1 END", q(&c.name)))
                        .collect();
                    let count = match count.is_empty() {
                        true => "0".to_string(),
                        false => count.join(" + "),
                    };
                    format!(
                        "SELECT *, CAST({count} AS BIGINT) AS {} FROM ({query}) AS {t}",
                        q(&format!("m{}", columns.len()))
                    )
                }
            };
        }
        query
    }

    /// The SQL of the answer's end: `None` for every row.
    pub fn end_sql(&self, query: &str) -> Option<String> {
        match &self.end {
            End::All | End::Limit(_) => None,
            End::Unique(column) => {
                Some(format!("SELECT DISTINCT {} FROM ({query}) AS u", q(column)))
            }
            End::Count => Some(format!("SELECT count(*) AS n FROM ({query}) AS u")),
        }
    }

    /// The SQL of the first `n` rows in the pipeline's order (a limit after a sort).
    pub fn ordered_sql(&self, query: &str, n: u64) -> String {
        format!("{} LIMIT {n}", self.all_ordered_sql(query))
    }

    /// The SQL of every row in the pipeline's order.
    pub fn all_ordered_sql(&self, query: &str) -> String {
        let order: Vec<String> = self
            .order
            .iter()
            .flatten()
            .map(|&(i, descending)| {
                let direction = match descending {
                    true => "DESC NULLS FIRST",
                    false => "ASC NULLS LAST",
                };
                format!("{} {direction}", q(&self.columns[i].name))
            })
            .collect();
        format!("SELECT * FROM ({query}) AS o ORDER BY {}", order.join(", "))
    }

    /// Builds the pipeline on `ctx` (running it up to each write it holds), with `read` for the
    /// table reads and `scratch` for the writes.
    pub fn build(
        &self,
        ctx: &manta::Context,
        tables: &super::data::Tables,
        read: &manta::ReadOptions,
        scratch: &std::path::Path,
    ) -> manta::Result<manta::Dataset> {
        let open = |table: &str| {
            let path = match table {
                "a" => &tables.a,
                _ => &tables.b,
            };
            ctx.read_parquet_with(path.to_str().expect("a UTF-8 path"), read.clone())
        };
        let mut ds = open("a")?;
        for (i, step) in self.steps.iter().enumerate() {
            ds = match step {
                Step::Filter(p) => ds.filter(p.expr()),
                Step::WithColumn(name, value) => ds.with_column(name, value.expr()),
                Step::Select(columns) => {
                    ds.select_columns(&columns.iter().map(String::as_str).collect::<Vec<_>>())
                }
                Step::Drop(columns) => {
                    ds.drop_columns(&columns.iter().map(String::as_str).collect::<Vec<_>>())
                }
                Step::Rename(pairs) => ds.rename_columns(
                    &pairs
                        .iter()
                        .map(|(a, b)| (a.as_str(), b.as_str()))
                        .collect::<Vec<_>>(),
                ),
                Step::Sort(keys) => {
                    ds.sort_by(keys.iter().map(|(k, descending)| match descending {
                        true => SortKey::desc(k),
                        false => SortKey::asc(k),
                    }))
                }
                Step::Aggregate { keys, aggs } => ds
                    .groupby(&keys.iter().map(String::as_str).collect::<Vec<_>>())
                    .aggregate(aggs.iter().map(Agg::manta).collect()),
                Step::MapGroups(keys) => ds
                    .groupby(&keys.iter().map(String::as_str).collect::<Vec<_>>())
                    .map_groups(super::group_summary),
                Step::Join { right, on, how } => {
                    let mut other = open(right.table)?;
                    if let Some(p) = &right.filter {
                        other = other.filter(p.expr());
                    }
                    let left: Vec<&str> = on.iter().map(|(l, _)| l.as_str()).collect();
                    let right: Vec<&str> = on.iter().map(|(_, r)| r.as_str()).collect();
                    ds.join_on(&other, &left, &right, *how)
                }
                Step::Union(p) => ds.union(&[&ds.filter(p.expr())]),
                Step::Shuffle(seed) => ds.random_shuffle(Some(*seed)),
                Step::Repartition(n, false) => ds.repartition(*n),
                Step::Repartition(n, true) => ds.repartition_shuffled(*n),
                Step::MapBatches {
                    batch_size,
                    concurrency,
                } => {
                    let mut options = manta::MapBatchesOptions::default();
                    if let Some(rows) = batch_size {
                        options = options.batch_size(*rows);
                    }
                    if let Some(tasks) = concurrency {
                        options = options.concurrency(*tasks);
                    }
                    ds.map_batches_with(super::count_values, options)
                }
                Step::WriteRead(format) => {
                    let dir = scratch.join(format!("step-{i}"));
                    let dir_str = dir.to_str().expect("a UTF-8 path").to_string();
                    match format {
                        Format::Parquet => {
                            ds.write_with(&dir, WriteFormat::Parquet, WriteMode::Overwrite)?;
                            ctx.read_parquet_with(&dir_str, read.clone())?
                        }
                        Format::Ipc => {
                            ds.write_with(&dir, WriteFormat::Ipc, WriteMode::Overwrite)?;
                            ctx.read_ipc(&dir_str)?
                        }
                    }
                }
            };
        }
        Ok(ds)
    }

    /// The pipeline as Rust source, for a reproducer.
    pub fn rust(&self) -> String {
        let mut lines = vec!["let ds = a".to_string()];
        for (i, step) in self.steps.iter().enumerate() {
            let strs = |v: &[String]| {
                let quoted: Vec<String> = v.iter().map(|s| format!("{s:?}")).collect();
                format!("&[{}]", quoted.join(", "))
            };
            lines.push(match step {
                Step::Filter(p) => format!("    .filter({})", p.rust()),
                Step::WithColumn(name, value) => {
                    format!("    .with_column({name:?}, {})", value.rust())
                }
                Step::Select(c) => format!("    .select_columns({})", strs(c)),
                Step::Drop(c) => format!("    .drop_columns({})", strs(c)),
                Step::Rename(pairs) => {
                    let p: Vec<String> = pairs.iter().map(|(a, b)| format!("({a:?}, {b:?})")).collect();
                    format!("    .rename_columns(&[{}])", p.join(", "))
                }
                Step::Sort(keys) => {
                    let k: Vec<String> = keys
                        .iter()
                        .map(|(c, d)| format!("{}({c:?})", if *d { "desc" } else { "asc" }))
                        .collect();
                    format!("    .sort_by([{}])", k.join(", "))
                }
                Step::Aggregate { keys, aggs } => {
                    let a: Vec<String> = aggs.iter().map(Agg::rust).collect();
                    format!(
                        "    .groupby({}).aggregate(vec![{}])",
                        strs(keys),
                        a.join(", ")
                    )
                }
                Step::MapGroups(keys) => {
                    format!("    .groupby({}).map_groups(group_summary)", strs(keys))
                }
                Step::Join { right, on, how } => {
                    let l: Vec<String> = on.iter().map(|(l, _)| l.clone()).collect();
                    let r: Vec<String> = on.iter().map(|(_, r)| r.clone()).collect();
                    format!(
                        "    .join_on(&{}, {}, {}, JoinKind::{how:?})",
                        right.rust(),
                        strs(&l),
                        strs(&r)
                    )
                }
                Step::Union(p) => format!("    .union(&[&ds.filter({})]) // ds: the pipeline so far", p.rust()),
                Step::Shuffle(seed) => format!("    .random_shuffle(Some({seed}))"),
                Step::Repartition(n, false) => format!("    .repartition({n})"),
                Step::Repartition(n, true) => format!("    .repartition_shuffled({n})"),
                Step::MapBatches {
                    batch_size,
                    concurrency,
                } => format!(
                    "    .map_batches_with(count_values, MapBatchesOptions {{ batch_size: {batch_size:?}, concurrency: {concurrency:?}, ..Default::default() }})"
                ),
                Step::WriteRead(format) => format!(
                    "    ; ds.write_with(\"step-{i}\", WriteFormat::{format:?}, WriteMode::Overwrite)?; let ds = ctx.read_{}(\"step-{i}\")?",
                    match format {
                        Format::Parquet => "parquet",
                        Format::Ipc => "ipc",
                    }
                ),
            });
        }
        lines.push(match &self.end {
            End::All => "    .to_arrow()?;".into(),
            End::Limit(n) => format!("    .limit({n}).to_arrow()?;"),
            End::Unique(c) => format!("    .unique({c:?})?;"),
            End::Count => "    .count()?;".into(),
        });
        lines.join("\n")
    }
}

/// The output columns of a join, each with the SQL that gives it over `l` and `r`: the left
/// columns (a key of the same name on both sides once: the right one for a right join, the
/// one that is there for a full join), then the right ones not shared (a clashing name gets
/// `_right`). `None` if names would still clash.
fn join_columns(
    left: &[Column],
    right: &[Column],
    on: &[(String, String)],
    how: JoinKind,
) -> Option<Vec<(Column, String)>> {
    let shared = |name: &str| on.iter().any(|(a, b)| a == b && a == name);
    let mut out: Vec<(Column, String)> = Vec::new();
    for c in left {
        let source = if shared(&c.name) {
            match how {
                JoinKind::Right => format!("r.{}", q(&c.name)),
                JoinKind::Full => format!("coalesce(l.{0}, r.{0})", q(&c.name)),
                _ => format!("l.{}", q(&c.name)),
            }
        } else {
            format!("l.{}", q(&c.name))
        };
        out.push((c.clone(), source));
    }
    if !matches!(how, JoinKind::Semi | JoinKind::Anti) {
        for c in right {
            if shared(&c.name) {
                continue;
            }
            let name = match left.iter().any(|l| l.name == c.name) {
                true => format!("{}_right", c.name),
                false => c.name.clone(),
            };
            if out.iter().any(|(o, _)| o.name == name) {
                return None;
            }
            out.push((Column { name, ty: c.ty }, format!("r.{}", q(&c.name))));
        }
    }
    Some(out)
}

/// Rows of a RecordBatch list, for printing the tables in a reproducer.
pub fn pretty(batches: &[RecordBatch]) -> String {
    arrow::util::pretty::pretty_format_batches(batches)
        .map(|t| t.to_string())
        .unwrap_or_else(|e| format!("(unprintable: {e})"))
}
