//! The 22 TPC-H queries through `Context::sql`, at scale 0.1, against the answer files in
//! `tests/data/tpch/` (copied from the project's shared TPC-H kit; computed by an independent
//! engine, DuckDB, over data from the same generator): numbers within 1e-6 relative or 1e-2
//! absolute, everything else exactly, rows in order. `lineitem` is a registered pipeline
//! (scanned by running it with the query's projection and filters), `orders` a registered plain
//! Parquet dataset, the other tables DataFusion's own Parquet tables.

use crate::common;

use std::sync::Arc;

use common::tpch::{self, cells};

#[test]
fn all_22_tpch_queries_answer_right_at_scale_0_1() {
    let ctx = manta::init_with(manta::Config::default()).unwrap();
    for (table, path) in tpch::tables() {
        match table {
            // A pipeline: scanned by running it, with the query's projection and filters.
            "lineitem" => tpch::register_lineitem_pipeline(&ctx, &path),
            // A plain Parquet read: registered as DataFusion's own Parquet table.
            "orders" => ctx
                .register(table, &ctx.read_parquet(&path).unwrap())
                .unwrap(),
            _ => ctx.register_parquet(table, &path).unwrap(),
        }
    }
    let wrong = tpch::wrong_answers(&ctx);
    assert!(wrong.is_empty(), "wrong answers:\n{}", wrong.join("\n"));
}

/// With `sql_tasks` on, a query's plan is cut into stages of tasks (here in the embedded
/// pool): all 22 answers stay right, with every table a file scan, and again with `lineitem` a
/// registered pipeline whose blocks the stages read. `MANTA_PRINT_PLANS=1` prints the plans.
#[test]
fn all_22_tpch_queries_answer_right_in_stages_of_tasks() {
    for lineitem_pipeline in [false, true] {
        let ctx = manta::init_with(manta::Config {
            sql_tasks: Some(true),
            ..Default::default()
        })
        .unwrap();
        for (table, path) in tpch::tables() {
            match table {
                "lineitem" if lineitem_pipeline => tpch::register_lineitem_pipeline(&ctx, &path),
                _ => ctx.register_parquet(table, &path).unwrap(),
            }
        }
        let explain = |n: usize| tpch::physical_plan(&ctx, n);
        if std::env::var_os("MANTA_PRINT_PLANS").is_some() {
            for n in 1..=22 {
                eprintln!("q{n}:\n{}", explain(n));
            }
        }
        // q1: the scan and partial aggregate hash-partitioned by one stage, the final
        // aggregate and sort by partition in another, the merge here.
        let physical = explain(1);
        let lines: Vec<&str> = physical.lines().collect();
        let scan = if lineitem_pipeline {
            "DatasetBlocksExec"
        } else {
            "DataSourceExec"
        };
        assert!(
            lines.len() > 2
                && lines[0].contains("SortPreservingMergeExec")
                && lines[1].contains("StageExec")
                && lines[1].contains("read=partitions")
                && physical.contains("read=hash")
                && lines.last().unwrap().contains(scan),
            "q1 runs as two stages below the merge:\n{physical}"
        );
        // q21's EXISTS, a left semi join of a small side: lineitem, the other side, is first
        // cut down to the lines of the orders it asks about, before it is exchanged (when
        // lineitem is a file scan: a pipeline has no statistics to call its side small).
        let physical = explain(21);
        assert!(
            lineitem_pipeline || physical.contains("mode=CollectLeft, join_type=RightSemi"),
            "q21 reduces its semi join's other side:\n{physical}"
        );
        let wrong = tpch::wrong_answers(&ctx);
        assert!(
            wrong.is_empty(),
            "wrong answers (lineitem a pipeline: {lineitem_pipeline}):\n{}",
            wrong.join("\n")
        );
    }
}

/// A pipeline's result is queryable, a query's result continues as a pipeline, and bad queries
/// are clear errors.
#[test]
fn datasets_and_queries_compose_and_bad_queries_are_clear_errors() {
    use manta::prelude::*;
    let ctx = manta::init_with(manta::Config::default()).unwrap();
    let numbers = ctx
        .range(10_000)
        .with_column("y", col("id") * lit(3))
        .filter(col("id").gt_eq(lit(100)));
    ctx.register("numbers", &numbers).unwrap();
    let result = ctx
        .sql("SELECT id, y FROM numbers WHERE id % 7 = 0 ORDER BY id DESC LIMIT 50")
        .unwrap();
    let expected: Vec<Vec<String>> = (100..10_000i64)
        .rev()
        .filter(|id| id % 7 == 0)
        .take(50)
        .map(|id| vec![id.to_string(), (id * 3).to_string()])
        .collect();
    assert_eq!(cells(&result.to_arrow().unwrap()), expected);
    // The query's result is a dataset: a pipeline continues from it.
    let continued = result.filter(col("y").gt(lit(29_000))).count().unwrap();
    let plain = expected
        .iter()
        .filter(|row| row[1].parse::<i64>().unwrap() > 29_000)
        .count() as u64;
    assert_eq!(continued, plain);

    // No columns projected (count(*)): rows still counted.
    let counted = cells(
        &ctx.sql("SELECT count(*) FROM numbers")
            .unwrap()
            .to_arrow()
            .unwrap(),
    );
    assert_eq!(counted, vec![vec![(10_000 - 100).to_string()]]);

    // Plain CSV and JSON reads are scanned by DataFusion's own readers.
    let tmp = tempfile::tempdir().unwrap();
    let values: Vec<i64> = (0..500).map(|i| (i * 37) % 101).collect();
    let csv = tmp.path().join("values.csv");
    let text: String = std::iter::once("v\n".to_string())
        .chain(values.iter().map(|v| format!("{v}\n")))
        .collect();
    std::fs::write(&csv, text).unwrap();
    let json = tmp.path().join("values.jsonl");
    let text: String = values.iter().map(|v| format!("{{\"v\": {v}}}\n")).collect();
    std::fs::write(&json, text).unwrap();
    for (table, dataset, file_type) in [
        (
            "csv_values",
            ctx.read_csv(csv.to_str().unwrap()).unwrap(),
            "file_type=csv",
        ),
        (
            "json_values",
            ctx.read_json(json.to_str().unwrap()).unwrap(),
            "file_type=json",
        ),
    ] {
        ctx.register(table, &dataset).unwrap();
        let sql = format!("SELECT sum(v) FROM {table} WHERE v > 50");
        let plan = cells(
            &ctx.sql(&format!("EXPLAIN {sql}"))
                .unwrap()
                .to_arrow()
                .unwrap(),
        );
        assert!(
            plan.iter().any(|row| row[1].contains(file_type)),
            "{table} is DataFusion's own scan: {plan:?}"
        );
        let sum = cells(&ctx.sql(&sql).unwrap().to_arrow().unwrap());
        let plain: i64 = values.iter().filter(|v| **v > 50).sum();
        assert_eq!(sum, vec![vec![plain.to_string()]], "{table}");
    }

    let syntax = ctx.sql("SELEC id FROM numbers").unwrap_err().to_string();
    assert!(syntax.contains("SELEC"), "{syntax}");
    let table = ctx.sql("SELECT * FROM nowhere").unwrap_err().to_string();
    assert!(table.contains("nowhere"), "{table}");
    let column = ctx
        .sql("SELECT nothing FROM numbers")
        .unwrap_err()
        .to_string();
    assert!(column.contains("nothing"), "{column}");
}

/// A semi or anti join that DataFusion partitions itself (here nothing is small enough for it
/// to collect) has its other side cut down, in that side's own stage, to the rows matching the
/// side it keeps, when that side is small: q04's and q21's `EXISTS`, planned so and run as
/// stages of tasks, still give the answer files' answers.
#[test]
fn partitioned_semi_and_anti_joins_reduce_their_other_side_and_stay_right() {
    use datafusion::physical_optimizer::PhysicalOptimizerRule;
    let ctx = manta::init_with(manta::Config::default()).unwrap();
    let df = partitioned_tpch_session(&ctx, false);
    let rule = manta::datasets::sql_tasks::StageTasks::new(ctx.client().clone());
    // The rule's own threshold for a small side: DataFusion's default.
    let options = datafusion::common::config::ConfigOptions::new();
    for n in [4, 21] {
        let plan = ctx
            .block_on(async { df.sql(&tpch::query(n)).await?.create_physical_plan().await })
            .unwrap();
        let staged = rule.optimize(plan, &options).unwrap();
        let shown = datafusion::physical_plan::displayable(staged.as_ref())
            .indent(false)
            .to_string();
        // Every join DataFusion planned is partitioned; a right semi join that collects its
        // build side is the rule's reduction.
        assert!(
            shown.contains("mode=CollectLeft, join_type=RightSemi"),
            "q{n} reduces the other side of its semi join:\n{shown}"
        );
        let batches = ctx
            .block_on(datafusion::physical_plan::collect(staged, df.task_ctx()))
            .unwrap();
        assert_eq!(tpch::check(n, &cells(&batches)), None, "q{n}");
    }
}

/// A partitioned join whose build side turns out small once its stage has run is run with that
/// side broadcast instead, and its probe side is not exchanged: with every join planned
/// partitioned, q18's 57-orders-at-scale-1 side is broadcast (its stage's metrics say how many
/// rows), and q3, q10 and q18 still give the answer files' answers.
#[test]
fn partitioned_joins_broadcast_a_build_side_that_turns_out_small_and_stay_right() {
    use datafusion::physical_optimizer::PhysicalOptimizerRule;
    let ctx = manta::init_with(manta::Config::default()).unwrap();
    let df = partitioned_tpch_session(&ctx, true);
    let rule = manta::datasets::sql_tasks::StageTasks::new(ctx.client().clone());
    // The rule's own threshold for a small side: DataFusion's default.
    let options = datafusion::common::config::ConfigOptions::new();
    for n in [3, 10, 18] {
        let plan = ctx
            .block_on(async { df.sql(&tpch::query(n)).await?.create_physical_plan().await })
            .unwrap();
        let staged = rule.optimize(plan, &options).unwrap();
        let batches = ctx
            .block_on(datafusion::physical_plan::collect(
                Arc::clone(&staged),
                df.task_ctx(),
            ))
            .unwrap();
        assert_eq!(tpch::check(n, &cells(&batches)), None, "q{n}");
        if n == 18 {
            let shown = datafusion::physical_plan::displayable(staged.as_ref())
                .indent(false)
                .to_string();
            let ran = datafusion::physical_plan::display::DisplayableExecutionPlan::with_metrics(
                staged.as_ref(),
            )
            .indent(false)
            .to_string();
            assert!(
                shown.contains("broadcast_build_if_rows<=")
                    && ran.contains("broadcast_build_rows="),
                "q18 broadcasts the orders it keeps once they are known:\n{ran}"
            );
        }
    }
}

/// A DataFusion session over the TPC-H tables in which every join is partitioned (nothing is
/// small enough to collect), on two partitions, with dynamic filters on or off.
fn partitioned_tpch_session(
    ctx: &manta::Context,
    dynamic_filters: bool,
) -> datafusion::prelude::SessionContext {
    let config = datafusion::prelude::SessionConfig::new()
        .with_target_partitions(2)
        .set_usize(
            "datafusion.optimizer.hash_join_single_partition_threshold_rows",
            0,
        )
        .set_usize(
            "datafusion.optimizer.hash_join_single_partition_threshold",
            0,
        )
        .set_bool(
            "datafusion.optimizer.enable_dynamic_filter_pushdown",
            dynamic_filters,
        );
    let df = datafusion::prelude::SessionContext::new_with_config(config);
    for (table, path) in tpch::tables() {
        ctx.block_on(df.register_parquet(table, &path, Default::default()))
            .unwrap();
    }
    df
}
