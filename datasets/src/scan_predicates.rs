//! A filter right above a file scan handed to the scan as its predicate, for pruning.
//!
//! DataFusion gives a Parquet scan its predicate in the physical `FilterPushdown` pass; the scan
//! then skips row groups and pages whose statistics rule the predicate out (and checks bloom
//! filters). Manta's sessions leave that pass out, because in DataFusion 55 it drops a filter it
//! moves above a join whose sides were swapped (see [`crate::sql::physical_rules`]), so their
//! scans read every row group: `WHERE id < 100` over files sorted by `id` read all of them.
//!
//! [`ScanPredicates`] does only the part of that pass that cannot move a filter: for each
//! `FilterExec` whose input is a file scan, it offers the filter's predicate to the scan's
//! source (`FileSource::try_pushdown_filters`, rewritten through the scan's projection into the
//! table's columns; never a volatile one), keeps the `FilterExec` as it is, and replaces the scan with the source's answer. A
//! Parquet source takes it as its pruning predicate (and, only if the session asks for
//! `pushdown_filters`, as a row filter too); other formats decline, and the plan is unchanged.
//! Pruning only skips data that cannot pass the filter, and the filter still runs on what is
//! read, so the answer cannot change.

use std::sync::Arc;

use datafusion::common::Result;
use datafusion::common::config::ConfigOptions;
use datafusion::common::tree_node::{Transformed, TreeNode};
use datafusion::datasource::physical_plan::FileScanConfig;
use datafusion::datasource::source::DataSourceExec;
use datafusion::physical_expr_common::physical_expr::is_volatile;
use datafusion::physical_optimizer::PhysicalOptimizerRule;
use datafusion::physical_plan::filter::FilterExec;
use datafusion::physical_plan::{ExecutionPlan, replace_children_if_necessary};

/// The physical optimizer rule: see the module documentation.
#[derive(Debug, Default)]
pub struct ScanPredicates;

impl PhysicalOptimizerRule for ScanPredicates {
    fn optimize(
        &self,
        plan: Arc<dyn ExecutionPlan>,
        config: &ConfigOptions,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        plan.transform_up(|node| {
            let Some(filter) = node.downcast_ref::<FilterExec>() else {
                return Ok(Transformed::no(node));
            };
            let Some(scan) = with_predicate(filter, config)? else {
                return Ok(Transformed::no(node));
            };
            Ok(Transformed::yes(replace_children_if_necessary(
                Arc::clone(&node),
                vec![scan],
            )?))
        })
        .map(|t| t.data)
    }

    fn name(&self) -> &str {
        "ScanPredicates"
    }

    fn schema_check(&self) -> bool {
        true
    }
}

/// `filter`'s input with the filter's predicate given to it, if the input is a file scan whose
/// source took the predicate.
fn with_predicate(
    filter: &FilterExec,
    config: &ConfigOptions,
) -> Result<Option<Arc<dyn ExecutionPlan>>> {
    let Some(scan) = filter
        .input()
        .downcast_ref::<DataSourceExec>()
        .and_then(|exec| exec.data_source().downcast_ref::<FileScanConfig>())
    else {
        return Ok(None);
    };
    // A predicate that gives another answer each time it runs (`random()`) is not offered: a
    // session with `pushdown_filters` would run it once in the scan and again in the filter.
    let predicate = Arc::clone(filter.predicate());
    if is_volatile(&predicate) {
        return Ok(None);
    }
    // The filter reads the scan's output; the source, its table's columns: the scan's
    // projection (which may rename or compute columns) undone, as DataFusion's pass does.
    let predicate = match scan.file_source.projection() {
        None => predicate,
        Some(projection) => match projection.unproject_expr(&predicate) {
            Ok(predicate) => predicate,
            Err(_) => return Ok(None),
        },
    };
    let offered = scan
        .file_source
        .try_pushdown_filters(vec![predicate], config)?;
    let Some(source) = offered.updated_node else {
        return Ok(None);
    };
    let mut narrowed = scan.clone();
    narrowed.file_source = source;
    Ok(Some(DataSourceExec::from_data_source(narrowed)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::array::{Int64Array, RecordBatch, StringArray};
    use datafusion::physical_plan::collect;
    use datafusion::prelude::SessionContext;
    use parquet::arrow::ArrowWriter;
    use parquet::file::properties::WriterProperties;

    /// One file of `rows` rows sorted by `id`, in row groups of 100, with a name column.
    fn sorted_file(dir: &std::path::Path, rows: i64) {
        let batch = RecordBatch::try_from_iter([
            ("id", Arc::new(Int64Array::from_iter_values(0..rows)) as _),
            (
                "name",
                Arc::new(StringArray::from_iter_values(
                    (0..rows).map(|i| format!("n{}", i % 13)),
                )) as _,
            ),
        ])
        .unwrap();
        let properties = WriterProperties::builder()
            .set_max_row_group_row_count(Some(100))
            .build();
        let file = std::fs::File::create(dir.join("sorted.parquet")).unwrap();
        let mut writer = ArrowWriter::try_new(file, batch.schema(), Some(properties)).unwrap();
        writer.write(&batch).unwrap();
        writer.close().unwrap();
    }

    /// The answer of `sql` over the file in `dir` as table `t` in `ctx`, as sorted lines.
    fn run(ctx: &SessionContext, dir: &str, sql: &str) -> Vec<String> {
        tokio::runtime::Runtime::new().unwrap().block_on(async {
            ctx.register_parquet("t", dir, Default::default())
                .await
                .unwrap();
            let batches = ctx.sql(sql).await.unwrap().collect().await.unwrap();
            let mut rows: Vec<String> = arrow::util::pretty::pretty_format_batches(&batches)
                .unwrap()
                .to_string()
                .lines()
                .filter(|l| l.starts_with("| "))
                .skip(1)
                .map(str::to_string)
                .collect();
            rows.sort();
            rows
        })
    }

    /// The rows the scans in `plan` read, from their metrics.
    fn rows_read(plan: &Arc<dyn ExecutionPlan>) -> usize {
        let mut rows = 0;
        let _ = plan.apply(|node| {
            if node.downcast_ref::<DataSourceExec>().is_some() {
                rows += node.metrics().and_then(|m| m.output_rows()).unwrap_or(0);
            }
            Ok(datafusion::common::tree_node::TreeNodeRecursion::Continue)
        });
        rows
    }

    #[test]
    fn a_filter_over_sorted_row_groups_skips_them_and_answers_as_datafusion() {
        let tmp = tempfile::tempdir().unwrap();
        sorted_file(tmp.path(), 1000);
        let dir = tmp.path().to_str().unwrap();
        let queries = [
            "SELECT id, name FROM t WHERE id < 150",
            "SELECT name, count(*) FROM t WHERE id >= 930 AND name <> 'n3' GROUP BY name",
            "SELECT id FROM t WHERE id % 7 = 0 AND id BETWEEN 480 AND 520",
            "SELECT count(*) FROM t WHERE name = 'n5' OR id IS NULL",
            // Columns renamed into each other's names above the scan.
            "SELECT b, id FROM (SELECT id AS b, name AS id FROM t) WHERE id = 'n3' AND b > 500",
            "SELECT count(*) FROM t WHERE random() < 2.0 AND id < 300",
        ];
        for sql in queries {
            let manta = crate::sql::session();
            let answer = run(&manta, dir, sql);
            let expected = run(&SessionContext::new(), dir, sql);
            assert_eq!(answer, expected, "{sql}");
        }
        // The first query reads 2 of the 10 row groups (all 10 without the rule).
        let manta = crate::sql::session();
        let plan = tokio::runtime::Runtime::new().unwrap().block_on(async {
            manta
                .register_parquet("t", dir, Default::default())
                .await
                .unwrap();
            let plan = manta
                .sql(queries[0])
                .await
                .unwrap()
                .create_physical_plan()
                .await
                .unwrap();
            collect(Arc::clone(&plan), manta.task_ctx()).await.unwrap();
            plan
        });
        assert_eq!(
            rows_read(&plan),
            200,
            "{}",
            datafusion::physical_plan::display::DisplayableExecutionPlan::with_metrics(
                plan.as_ref()
            )
            .indent(true)
        );
    }
}
