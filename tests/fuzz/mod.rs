//! The differential fuzzer's parts: the input tables ([`data`]), random pipelines and their
//! meaning in SQL ([`pipeline`]), comparing answers ([`compare`]), and here the runner that
//! checks one case in both of Manta's modes against DataFusion SQL.

pub mod compare;
pub mod data;
pub mod pipeline;

use std::sync::Arc;

use arrow::array::{Array, ArrayRef, Int64Array, RecordBatch};
use arrow::datatypes::{DataType, Field, Schema};
use datafusion::execution::SessionStateBuilder;
use datafusion::prelude::SessionContext;

use compare::Answer;
use data::{DataSpec, Tables};
use pipeline::{End, Pipeline};

/// One group's summary, for `map_groups`: its rows, each column's non-null values, and each
/// integer column's smallest value. SQL computes the same with `GROUP BY`, so a group split in
/// two, seen twice or made up shows.
#[manta::remote]
pub fn group_summary(group: RecordBatch) -> manta::Result<RecordBatch> {
    let mut fields = vec![Field::new("rows", DataType::Int64, false)];
    let mut columns: Vec<ArrayRef> =
        vec![Arc::new(Int64Array::from(vec![group.num_rows() as i64]))];
    for (field, column) in group.schema().fields().iter().zip(group.columns()) {
        let non_null = (column.len() - column.null_count()) as i64;
        fields.push(Field::new(
            format!("nn_{}", field.name()),
            DataType::Int64,
            false,
        ));
        columns.push(Arc::new(Int64Array::from(vec![non_null])));
        if field.data_type() == &DataType::Int64 {
            let values = column.as_any().downcast_ref::<Int64Array>().expect("Int64");
            fields.push(Field::new(
                format!("min_{}", field.name()),
                DataType::Int64,
                true,
            ));
            columns.push(Arc::new(Int64Array::from(vec![arrow::compute::min(
                values,
            )])));
        }
    }
    Ok(RecordBatch::try_new(
        Arc::new(Schema::new(fields)),
        columns,
    )?)
}

/// A row-wise batch function, for `map_batches`: appends a column `m<n>` (`n` the columns it is
/// given) counting each row's non-null values, which SQL computes with `CASE`s. It reads strings
/// as views, as every batch function may.
#[manta::remote]
pub fn count_values(batch: RecordBatch) -> manta::Result<RecordBatch> {
    let mut counts = vec![0i64; batch.num_rows()];
    for column in batch.columns() {
        if matches!(column.data_type(), DataType::Utf8 | DataType::LargeUtf8) {
            return Err(manta::Error::InvalidArgument(
                "a batch function was given strings that are not views".into(),
            ));
        }
        for (row, count) in counts.iter_mut().enumerate() {
            *count += i64::from(column.is_valid(row));
        }
    }
    let mut fields: Vec<Field> = batch
        .schema()
        .fields()
        .iter()
        .map(|f| f.as_ref().clone())
        .collect();
    fields.push(Field::new(
        format!("m{}", batch.num_columns()),
        DataType::Int64,
        false,
    ));
    let mut columns = batch.columns().to_vec();
    columns.push(Arc::new(Int64Array::from(counts)));
    Ok(RecordBatch::try_new(
        Arc::new(Schema::new(fields)),
        columns,
    )?)
}

/// One generated case: its data and its pipeline's choices.
#[derive(Clone, Debug)]
pub struct Case {
    pub data: DataSpec,
    pub choices: Vec<(u8, u64)>,
    pub end: (u8, u64),
}

/// A way of running pipelines: a context and how it reads.
pub struct Mode {
    pub name: &'static str,
    pub ctx: manta::Context,
    pub read: manta::ReadOptions,
}

/// The modes: as a user runs it; fully partitioned (every exchange partitioned, one block per
/// row group, batches of three rows), so the distributed code paths run at test sizes; and
/// the same with each reduce task taking a range of partitions (as a mid-sized exchange does:
/// here two tasks, one per CPU, each with about half of the partitions).
pub fn modes() -> Vec<Mode> {
    let normal = manta::init_with(manta::Config {
        num_cpus: Some(2),
        ..Default::default()
    })
    .expect("an embedded context");
    let partitioned = manta::init_with(manta::Config {
        num_cpus: Some(2),
        small_exchange_bytes: Some(0),
        ..Default::default()
    })
    .expect("an embedded context");
    let merged = manta::init_with(manta::Config {
        num_cpus: Some(2),
        small_exchange_bytes: Some(0),
        reduce_task_bytes: Some(u64::MAX),
        ..Default::default()
    })
    .expect("an embedded context");
    let partitioned_reads = || manta::ReadOptions {
        rows_per_task: 1,
        batch_size: 3,
        ..Default::default()
    };
    vec![
        Mode {
            name: "as is",
            ctx: normal,
            read: manta::ReadOptions::default(),
        },
        Mode {
            name: "fully partitioned",
            ctx: partitioned,
            read: partitioned_reads(),
        },
        Mode {
            name: "partition ranges",
            ctx: merged,
            read: partitioned_reads(),
        },
    ]
}

/// Logical optimizer rules the cautious reference runs without (and the physical `FilterPushdown`
/// rules too). DataFusion 55 gets two cases wrong with them, both found by this fuzzer:
/// * a filter above a global aggregate that simplifies to `false` (`s = 7 AND s = 1`) ends up
///   below the aggregate, so `SELECT * FROM (SELECT sum(x) AS s FROM t) WHERE s = 7 AND s = 1`
///   answers a row of null;
/// * above a right join of two sides that both have a column `k`, a filter on the left's `k`
///   is pushed into the right side's scan as a filter on *its* `k` (the join's sides swapped
///   by `JoinSelection`), and removed from above the join: rows that fail it are kept.
const SKIPPED_RULES: [&str; 1] = ["push_down_filter"];

/// The answer DataFusion SQL gives to `query` over the tables.
fn sql(
    tables: &Tables,
    query: &str,
    columns: &[String],
    reference: Reference,
) -> Result<Answer, String> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a runtime");
    let batches = runtime.block_on(async {
        let rules = datafusion::optimizer::Optimizer::new()
            .rules
            .into_iter()
            .filter(|rule| {
                matches!(reference, Reference::Default) || !SKIPPED_RULES.contains(&rule.name())
            })
            .collect();
        let physical_rules = datafusion::physical_optimizer::optimizer::PhysicalOptimizer::new()
            .rules
            .into_iter()
            .filter(|rule| {
                matches!(reference, Reference::Default)
                    || !rule.name().starts_with("FilterPushdown")
            })
            .collect();
        let state = SessionStateBuilder::new()
            .with_default_features()
            .with_optimizer_rules(rules)
            .with_physical_optimizer_rules(physical_rules)
            .build();
        let ctx = SessionContext::new_with_state(state);
        ctx.register_parquet("a", tables.a.to_str().unwrap(), Default::default())
            .await?;
        ctx.register_parquet("b", tables.b.to_str().unwrap(), Default::default())
            .await?;
        ctx.sql(query).await?.collect().await
    });
    let batches = batches.map_err(|e| format!("the reference SQL failed: {e}\n{query}"))?;
    Ok(Answer::of(&batches, columns))
}

/// How DataFusion is asked for the reference answer.
#[derive(Clone, Copy, Debug)]
enum Reference {
    /// As a user would.
    Default,
    /// Without the logical optimizer rules of [`SKIPPED_RULES`].
    Cautious,
}

/// Runs `case` in every mode and compares each answer with SQL's; the error says how they
/// differ, in which mode. An answer that differs from DataFusion's usual one is compared again
/// with the one it gives without [`SKIPPED_RULES`] (whose bug is there to stay in 55).
pub fn check(case: &Case, modes: &[Mode]) -> Result<(), String> {
    let mut tmp = tempfile::tempdir().map_err(|e| e.to_string())?;
    if std::env::var_os("MANTA_FUZZ_KEEP").is_some() {
        // Keeps the tables, to look at a case by hand.
        tmp.disable_cleanup(true);
        eprintln!("the case's files are in {}", tmp.path().display());
    }
    let tables = case.data.write(tmp.path());
    let pipeline = Pipeline::generate(&case.choices, case.end);
    let mut answers = Vec::new();
    for (i, mode) in modes.iter().enumerate() {
        let scratch = tmp.path().join(format!("scratch-{i}"));
        let got = manta_answer(&pipeline, mode, &tables, &scratch)
            .map_err(|e| format!("run {}: Manta failed: {e}", mode.name))?;
        answers.push((mode.name, got));
    }
    let staged = staged_sql_answer(&pipeline, &tables)
        .map_err(|e| format!("run {STAGED}: Manta failed: {e}\n{}", pipeline.sql()))?;
    answers.push((STAGED, staged));
    for (name, got) in &answers {
        let first = compare(&pipeline, got, &tables, Reference::Default);
        if let Err(difference) = first {
            compare(&pipeline, got, &tables, Reference::Cautious)
                .map_err(|_| format!("run {name}: {difference}"))?;
        }
    }
    Ok(())
}

/// The name of the run that asks Manta's SQL, cut into stages of tasks, for the pipeline's SQL.
const STAGED: &str = "SQL in stages of tasks";

/// What Manta's SQL answers to the pipeline's SQL over the same files, with the plan cut into
/// stages of tasks (`sql_tasks`, as on a cluster; here in the embedded pool): hash exchanges,
/// broadcast join sides and partitioned joins over uneven files.
fn staged_sql_answer(pipeline: &Pipeline, tables: &Tables) -> manta::Result<Got> {
    static CONTEXT: std::sync::OnceLock<manta::Context> = std::sync::OnceLock::new();
    let ctx = CONTEXT.get_or_init(|| {
        manta::init_with(manta::Config {
            num_cpus: Some(2),
            sql_tasks: Some(true),
            ..Default::default()
        })
        .expect("an embedded context")
    });
    // A plain read registers as DataFusion's own Parquet table (replacing the last case's).
    for (name, path) in [("a", &tables.a), ("b", &tables.b)] {
        ctx.register(
            name,
            &ctx.read_parquet(path.to_str().expect("a UTF-8 path"))?,
        )?;
    }
    let names: Vec<String> = pipeline.columns.iter().map(|c| c.name.clone()).collect();
    let query = pipeline.sql();
    let run = |query: &str| ctx.sql(query)?.to_arrow();
    Ok(match &pipeline.end {
        End::All => {
            let ordered = match &pipeline.order {
                Some(_) => pipeline.all_ordered_sql(&query),
                None => query,
            };
            Got::Rows(Answer::of(&run(&ordered)?, &names))
        }
        End::Limit(n) => {
            let limited = match &pipeline.order {
                Some(_) => pipeline.ordered_sql(&query, *n),
                None => format!("SELECT * FROM ({query}) LIMIT {n}"),
            };
            Got::Rows(Answer::of(&run(&limited)?, &names))
        }
        End::Unique(column) => Got::Rows(Answer::of(
            &run(&pipeline.end_sql(&query).expect("an end"))?,
            std::slice::from_ref(column),
        )),
        End::Count => {
            let counted = run(&pipeline.end_sql(&query).expect("an end"))?;
            let n = counted
                .first()
                .and_then(|batch| batch.column(0).as_any().downcast_ref::<Int64Array>())
                .filter(|n| n.len() == 1)
                .map(|n| n.value(0) as u64);
            Got::Count(n.ok_or_else(|| {
                manta::Error::InvalidArgument(format!("a count answered {counted:?}"))
            })?)
        }
    })
}

/// What Manta answered.
enum Got {
    Rows(Answer),
    Count(u64),
}

fn manta_answer(
    pipeline: &Pipeline,
    mode: &Mode,
    tables: &Tables,
    scratch: &std::path::Path,
) -> manta::Result<Got> {
    let ds = pipeline.build(&mode.ctx, tables, &mode.read, scratch)?;
    let names: Vec<String> = pipeline.columns.iter().map(|c| c.name.clone()).collect();
    Ok(match &pipeline.end {
        End::All => Got::Rows(Answer::of(&ds.to_arrow()?, &names)),
        End::Limit(n) => Got::Rows(Answer::of(&ds.limit(*n).to_arrow()?, &names)),
        End::Unique(column) => {
            let values: ArrayRef = ds.unique(column)?;
            Got::Rows(Answer::of_array(column, &values))
        }
        End::Count => Got::Count(ds.count()?),
    })
}

/// Compares Manta's answer with the reference's.
fn compare(
    pipeline: &Pipeline,
    got: &Got,
    tables: &Tables,
    reference: Reference,
) -> Result<(), String> {
    let names: Vec<String> = pipeline.columns.iter().map(|c| c.name.clone()).collect();
    let query = pipeline.sql();
    let sql = |query: &str, names: &[String]| sql(tables, query, names, reference);
    match (&pipeline.end, got) {
        (End::All, Got::Rows(got)) => {
            got.same_rows(&sql(&query, &names)?)?;
            if let Some(order) = &pipeline.order {
                got.ordered_by(order)?;
            }
        }
        (End::Limit(n), Got::Rows(got)) => {
            let full = sql(&query, &names)?;
            let rows = (*n as usize).min(full.rows.len());
            got.rows_within(&full, rows)?;
            if let Some(order) = &pipeline.order {
                let first = sql(&pipeline.ordered_sql(&query, *n), &names)?;
                let (ours, theirs) = (got.keys(order), first.keys(order));
                let same = ours.len() == theirs.len()
                    && ours
                        .iter()
                        .zip(&theirs)
                        .all(|(a, b)| compare::same_row(a, b));
                if !same {
                    return Err(format!(
                        "the first {n} rows' keys differ: got {ours:?}, expected {theirs:?}"
                    ));
                }
            }
        }
        (End::Unique(column), Got::Rows(got)) => {
            let expected = sql(
                &pipeline.end_sql(&query).expect("an end"),
                std::slice::from_ref(column),
            )?;
            got.same_rows(&expected)?;
        }
        (End::Count, Got::Count(n)) => {
            let expected = sql(&pipeline.end_sql(&query).expect("an end"), &["n".into()])?;
            let expected = match expected.rows.first().and_then(|r| r.first()) {
                Some(compare::Cell::Int(n)) => *n as u64,
                other => return Err(format!("the reference count is {other:?}")),
            };
            if *n != expected {
                return Err(format!("count {n}, expected {expected}"));
            }
        }
        _ => unreachable!("the answer fits the end"),
    }
    Ok(())
}

/// A failing case, written out so that it can be rerun by hand.
pub fn reproducer(case: &Case, reason: &str) -> String {
    let tmp = tempfile::tempdir().expect("a directory");
    let tables = case.data.write(tmp.path());
    let pipeline = Pipeline::generate(&case.choices, case.end);
    format!(
        "{reason}\n\n\
         == the pipeline (a and b read with ctx.read_parquet) ==\n{}\n\n\
         == the same in SQL ==\n{}\n\n\
         == table a ({:?}) ==\n{}\n== table b ==\n{}\n\n\
         rerun with MANTA_FUZZ_SEED set as printed above, or build this case by hand from:\n{case:?}",
        pipeline.rust(),
        pipeline.sql(),
        case.data,
        pipeline::pretty(&tables.a_rows),
        pipeline::pretty(&tables.b_rows),
    )
}
