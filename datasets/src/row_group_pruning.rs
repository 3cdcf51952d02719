//! Row groups a filter can keep no row of, skipped by their statistics before anything is read.
//!
//! A Parquet footer records, for each row group and column, the smallest and the largest value
//! and the number of nulls. DataFusion's [`PruningPredicate`] turns a filter into a test over
//! those (`l_orderkey < 60000` into `l_orderkey_min < 60000`), and [`prune_row_groups`] runs
//! it over the row groups of a read task's fragment: a row group the test rules out is not
//! decoded at all. This is the pruning DataFusion's own Parquet scan does for SQL over the same
//! files, so `filter` on a dataset and `WHERE` on its table skip the same row groups.
//!
//! The test is conservative: a part of the filter it cannot translate (a function it does not
//! know, a column without statistics) counts as "may keep rows", and any error on the way keeps
//! every row group. The filter still runs on every row that is read, so pruning can only save
//! work, never change an answer; but for one exception: where the statistics also prove that
//! the filter keeps *every* row of the row groups left (DataFusion inverts the filter and
//! prunes with that, nulls counted), and the filter is made of comparisons, `AND`/`OR`/`NOT`,
//! `IS NULL` and `IN` lists of columns and literals (so that evaluating it could not have
//! failed), the read skips the filter too.
//!
//! Within the row groups left, a file written with a page index (each page's smallest and
//! largest value, and where it starts) narrows the read further: DataFusion's
//! [`PagePruningAccessPlanFilter`] tests each single-column conjunct of the filter against
//! every page, and [`Pruned::pages`] selects only the rows of the pages no conjunct rules out,
//! so the reader skips the others without decompressing them.

use std::sync::Arc;

use datafusion::datasource::physical_plan::parquet::{
    PagePruningAccessPlanFilter, ParquetAccessPlan, ParquetFileMetrics, RowGroupAccessPlanFilter,
};
use datafusion::logical_expr::{Expr, Operator};
use datafusion::physical_expr::PhysicalExpr;
use datafusion::physical_optimizer::pruning::{PruningPredicate, PruningPredicateBuilder};
use datafusion::physical_plan::metrics::ExecutionPlanMetricsSet;
use parquet::arrow::arrow_reader::{ArrowReaderMetadata, RowSelection};

/// What the statistics say of a fragment's row groups under a filter.
#[derive(Debug, PartialEq, Eq)]
pub struct Pruned {
    /// The row groups that may hold a row the filter keeps, in the fragment's order.
    pub row_groups: Vec<usize>,
    /// Whether the statistics prove that the filter keeps every row of every one of them, and
    /// the filter is one whose evaluation cannot fail ([`cannot_fail`]): then it need not run.
    pub every_row_kept: bool,
    /// The rows of those row groups (all of them in order, as one run of rows) on pages the
    /// page index cannot rule out; `None` to read every row of them.
    pub pages: Option<RowSelection>,
}

/// Which of `row_groups` (indices into the file of `metadata`, in order) may hold a row that
/// `filter` keeps (all of them unless their statistics prove otherwise), and whether it keeps
/// every row of those.
pub fn prune_row_groups(
    metadata: &ArrowReaderMetadata,
    row_groups: &[usize],
    filter: &Expr,
) -> Pruned {
    let unpruned = || Pruned {
        row_groups: row_groups.to_vec(),
        every_row_kept: false,
        pages: None,
    };
    let in_file = metadata.metadata().num_row_groups();
    if row_groups.iter().any(|&i| i >= in_file) {
        // The file changed since it was planned: the reader names the problem.
        return unpruned();
    }
    match prune(metadata, row_groups, filter) {
        Ok(pruned) => pruned.unwrap_or_else(unpruned),
        Err(error) => {
            tracing::debug!(%filter, %error, "row groups not pruned");
            unpruned()
        }
    }
}

/// [`prune_row_groups`], with errors; `None` where the statistics cannot judge the filter.
fn prune(
    metadata: &ArrowReaderMetadata,
    row_groups: &[usize],
    filter: &Expr,
) -> datafusion::error::Result<Option<Pruned>> {
    let schema = Arc::clone(metadata.schema());
    let physical = crate::ops::plan_expr(filter, &schema)?;
    let predicate: PruningPredicate = PruningPredicateBuilder::new()
        .with_file_schema(Arc::clone(&schema))
        .try_build(Arc::clone(&physical))?;
    if predicate.always_true() {
        return Ok(None);
    }
    let groups = metadata.metadata().row_groups();
    let mut plan = ParquetAccessPlan::new_none(groups.len());
    for &i in row_groups {
        plan.scan(i);
    }
    let mut plan = RowGroupAccessPlanFilter::new(plan);
    // The filter wants metrics to count into; nobody reads these.
    let metrics = ParquetFileMetrics::new(0, "", &ExecutionPlanMetricsSet::new());
    plan.prune_by_statistics(
        &schema,
        metadata.parquet_schema(),
        groups,
        &predicate,
        &metrics,
    );
    let fully_matched = plan.is_fully_matched().clone();
    let plan = plan.build();
    let kept = |plan: &ParquetAccessPlan| -> Vec<usize> {
        row_groups
            .iter()
            .copied()
            .filter(|&i| plan.should_scan(i))
            .collect()
    };
    let row_groups_kept = kept(&plan);
    let every_row_kept = !row_groups_kept.is_empty()
        && row_groups_kept.iter().all(|&i| fully_matched[i])
        && cannot_fail(&physical);
    // The selection runs over the row groups in the file's order: only for a fragment in it.
    let in_order = row_groups.windows(2).all(|w| w[0] < w[1]);
    if every_row_kept || !in_order {
        return Ok(Some(Pruned {
            row_groups: row_groups_kept,
            every_row_kept,
            pages: None,
        }));
    }
    let plan = PagePruningAccessPlanFilter::new(&physical, Arc::clone(&schema))
        .prune_plan_with_page_index(
            plan,
            &schema,
            metadata.parquet_schema(),
            metadata.metadata(),
            &metrics,
        );
    Ok(Some(Pruned {
        row_groups: kept(&plan),
        every_row_kept,
        pages: plan.into_overall_row_selection(groups)?,
    }))
}

/// Whether evaluating `expr` can never fail, so that skipping it where its answer is known
/// hides no error: columns and literals joined by comparisons, `AND`, `OR`, `NOT`, `IS NULL`,
/// `IN` lists. Arithmetic (which overflows), casts (which reject values) and functions are
/// not.
fn cannot_fail(expr: &Arc<dyn PhysicalExpr>) -> bool {
    use datafusion::physical_expr::expressions::{
        BinaryExpr, Column, InListExpr, IsNotNullExpr, IsNullExpr, Literal, NotExpr,
    };
    let allowed = match expr.downcast_ref::<BinaryExpr>() {
        Some(binary) => matches!(
            binary.op(),
            Operator::Eq
                | Operator::NotEq
                | Operator::Lt
                | Operator::LtEq
                | Operator::Gt
                | Operator::GtEq
                | Operator::And
                | Operator::Or
                | Operator::IsDistinctFrom
                | Operator::IsNotDistinctFrom
        ),
        None => {
            expr.downcast_ref::<Column>().is_some()
                || expr.downcast_ref::<Literal>().is_some()
                || expr.downcast_ref::<NotExpr>().is_some()
                || expr.downcast_ref::<IsNullExpr>().is_some()
                || expr.downcast_ref::<IsNotNullExpr>().is_some()
                || expr.downcast_ref::<InListExpr>().is_some()
        }
    };
    allowed && expr.children().into_iter().all(cannot_fail)
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use arrow::array::{Array, BooleanArray, Int64Array, RecordBatch, StringArray};
    use arrow::datatypes::{DataType, Field, Schema};
    use datafusion::prelude::{col, lit};
    use parquet::arrow::ArrowWriter;
    use parquet::file::properties::WriterProperties;
    use proptest::prelude::*;

    use super::*;
    use crate::storage::StorageFile;

    /// The rows of `values`: `n`, and `s` its text.
    fn batch(values: &[Option<i64>]) -> RecordBatch {
        let schema = Arc::new(Schema::new(vec![
            Field::new("n", DataType::Int64, true),
            Field::new("s", DataType::Utf8, true),
        ]));
        let text: Vec<Option<String>> = values
            .iter()
            .map(|v| v.map(|v| format!("ü{v:05}")))
            .collect();
        RecordBatch::try_new(
            schema,
            vec![
                Arc::new(Int64Array::from(values.to_vec())),
                Arc::new(StringArray::from(text)),
            ],
        )
        .unwrap()
    }

    /// A file of [`batch`]`(values)`, `group_rows` rows per row group and pages of at most
    /// `page_rows`, and its metadata with the page index.
    fn file(
        dir: &std::path::Path,
        values: &[Option<i64>],
        group_rows: usize,
        page_rows: usize,
    ) -> ArrowReaderMetadata {
        let batch = batch(values);
        let schema = batch.schema();
        let path = dir.join("f.parquet");
        let properties = WriterProperties::builder()
            .set_max_row_group_row_count(Some(group_rows))
            .set_data_page_row_count_limit(page_rows)
            .set_write_batch_size(page_rows)
            .build();
        let mut writer = ArrowWriter::try_new(
            std::fs::File::create(&path).unwrap(),
            schema,
            Some(properties),
        )
        .unwrap();
        writer.write(&batch).unwrap();
        writer.close().unwrap();
        let options = parquet::arrow::arrow_reader::ArrowReaderOptions::new()
            .with_page_index_policy(parquet::file::metadata::PageIndexPolicy::Required);
        ArrowReaderMetadata::load(&StorageFile::open(&path).unwrap(), options).unwrap()
    }

    /// Whether each row of `row_groups` (in order) is read under `pages`, and the first row of
    /// each page of column `n` there.
    fn selected_rows(
        metadata: &ArrowReaderMetadata,
        row_groups: &[usize],
        pages: &Option<RowSelection>,
    ) -> (Vec<bool>, Vec<usize>) {
        let groups = metadata.metadata().row_groups();
        let rows: usize = row_groups
            .iter()
            .map(|&i| groups[i].num_rows() as usize)
            .sum();
        let selected = match pages {
            None => vec![true; rows],
            Some(pages) => pages
                .iter()
                .flat_map(|run| std::iter::repeat_n(!run.skip, run.row_count))
                .collect(),
        };
        let offsets = metadata.metadata().offset_index().expect("a page index");
        let mut starts = Vec::new();
        let mut first_row = 0;
        for &i in row_groups {
            let locations = offsets[i][0].page_locations();
            starts.extend(
                locations
                    .iter()
                    .map(|p| first_row + p.first_row_index as usize),
            );
            first_row += groups[i].num_rows() as usize;
        }
        (selected, starts)
    }

    /// Whether `filter` keeps some row, and whether it keeps every row, of each row group:
    /// evaluated on the rows themselves.
    fn rows_kept_by_group(
        values: &[Option<i64>],
        group_rows: usize,
        filter: &Expr,
    ) -> Vec<(bool, bool)> {
        values
            .chunks(group_rows)
            .map(|chunk| {
                let batch = batch(chunk);
                let mask = crate::ops::plan_expr(filter, &batch.schema())
                    .unwrap()
                    .evaluate(&batch)
                    .unwrap()
                    .into_array(batch.num_rows())
                    .unwrap();
                let mask = mask.as_any().downcast_ref::<BooleanArray>().unwrap();
                (mask.true_count() > 0, mask.true_count() == mask.len())
            })
            .collect()
    }

    /// A random filter over `n` or `s`: comparisons, ranges, `IS NULL`, negations.
    fn filter() -> impl Strategy<Value = Expr> {
        let number = -50i64..1050;
        prop_oneof![
            number.clone().prop_map(|v| col("n").lt(lit(v))),
            number.clone().prop_map(|v| col("n").gt_eq(lit(v))),
            number.clone().prop_map(|v| col("n").eq(lit(v))),
            (number.clone(), 0i64..200)
                .prop_map(|(v, w)| col("n").gt(lit(v)).and(col("n").lt(lit(v + w)))),
            number.clone().prop_map(|v| col("n").not_eq(lit(v))),
            Just(col("n").is_null()),
            Just(col("n").is_not_null()),
            number
                .clone()
                .prop_map(|v| col("s").lt_eq(lit(format!("ü{v:05}")))),
            (number.clone(), number)
                .prop_map(|(a, b)| !col("n").lt(lit(a)).or(col("n").gt(lit(b)))),
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]

        /// No row group holding a kept row is ever skipped, and no filter is called needless
        /// where it drops a row, over sorted, shuffled and partly null values, any fragment of
        /// the file's row groups; and on sorted values without nulls every row group without a
        /// kept row is skipped.
        #[test]
        fn pruning_never_skips_a_kept_row(
            rows in 1usize..400,
            group_rows in 1usize..60,
            page_rows in 1usize..20,
            sorted in any::<bool>(),
            nulls in any::<bool>(),
            seed in any::<u64>(),
            filter in filter(),
            skip_first in any::<bool>(),
        ) {
            let values: Vec<Option<i64>> = (0..rows as i64)
                .map(|i| {
                    let v = if sorted { i * 1000 / rows as i64 } else {
                        ((i as u64).wrapping_mul(seed | 1).rotate_left(17) % 1000) as i64
                    };
                    (!nulls || v % 7 != 3).then_some(v)
                })
                .collect();
            let tmp = tempfile::tempdir().unwrap();
            let metadata = file(tmp.path(), &values, group_rows, page_rows);
            let groups = metadata.metadata().num_row_groups();
            let fragment: Vec<usize> = (usize::from(skip_first && groups > 1)..groups).collect();
            let pruned = prune_row_groups(&metadata, &fragment, &filter);
            let kept = &pruned.row_groups;
            let all_kept = rows_kept_by_group(&values, group_rows, &filter);
            let truth: Vec<bool> = all_kept.iter().map(|&(some, _)| some).collect();
            prop_assert!(kept.windows(2).all(|w| w[0] < w[1]), "{kept:?} out of order");
            prop_assert!(kept.iter().all(|i| fragment.contains(i)));
            for &i in &fragment {
                if truth[i] {
                    prop_assert!(kept.contains(&i), "{filter}: row group {i} skipped");
                }
            }
            if pruned.every_row_kept {
                for &i in kept {
                    prop_assert!(all_kept[i].1, "{filter}: row group {i} drops a row");
                }
            }
            // `n < v` and `n >= v`: the statistics answer those exactly for sorted values.
            let exact = matches!(&filter, Expr::BinaryExpr(b)
                if matches!(b.op, Operator::Lt | Operator::GtEq)
                    && matches!(&*b.left, Expr::Column(c) if c.name == "n"));
            if sorted && !nulls && exact {
                for &i in &fragment {
                    prop_assert_eq!(kept.contains(&i), truth[i], "{} row group {}", filter, i);
                }
            }

            // Within the row groups kept, the pages: a selection of exactly their rows that
            // reads every kept row, and (for the exact filters above) no page without one.
            let (selected, page_starts) = selected_rows(&metadata, kept, &pruned.pages);
            let kept_values: Vec<Option<i64>> = kept
                .iter()
                .flat_map(|&i| values.iter().skip(i * group_rows).take(group_rows).copied())
                .collect();
            prop_assert_eq!(selected.len(), kept_values.len(), "{} selects other rows", filter);
            let keeps: Vec<bool> = kept_values
                .iter()
                .map(|v| rows_kept_by_group(&[*v], 1, &filter)[0].0)
                .collect();
            for (row, (&keep, &read)) in keeps.iter().zip(&selected).enumerate() {
                prop_assert!(!keep || read, "{}: kept row {} on a skipped page", filter, row);
            }
            if sorted && !nulls && exact {
                let ends = page_starts.iter().skip(1).copied().chain([keeps.len()]);
                for (start, end) in page_starts.iter().copied().zip(ends) {
                    let holds = keeps[start..end].iter().any(|&k| k);
                    prop_assert_eq!(selected[start], holds, "{} page at row {}", filter, start);
                }
            }
        }
    }

    #[test]
    fn a_filter_statistics_cannot_judge_keeps_every_row_group() {
        let tmp = tempfile::tempdir().unwrap();
        let values: Vec<Option<i64>> = (0..100).map(Some).collect();
        let metadata = file(tmp.path(), &values, 10, 10);
        let all: Vec<usize> = (0..10).collect();
        // Unknown to pruning (a function of the column), and wrong (no such column).
        let opaque = (col("n") % lit(7)).eq(lit(3));
        let unpruned = |row_groups: &[usize]| Pruned {
            row_groups: row_groups.to_vec(),
            every_row_kept: false,
            pages: None,
        };
        assert_eq!(prune_row_groups(&metadata, &all, &opaque), unpruned(&all));
        let missing = col("nope").lt(lit(3));
        assert_eq!(prune_row_groups(&metadata, &all, &missing), unpruned(&all));
        // Row groups the file does not have: left for the reader to report.
        let beyond = prune_row_groups(&metadata, &[3, 42], &col("n").lt(lit(0)));
        assert_eq!(beyond, unpruned(&[3, 42]));
        // And one it can: only the first row group holds n < 10, and all of it.
        let first = prune_row_groups(&metadata, &all, &col("n").lt(lit(10)));
        assert_eq!(
            first,
            Pruned {
                row_groups: vec![0],
                every_row_kept: true,
                pages: None,
            }
        );
        // Every row of the last two, but through arithmetic that could overflow: it must run.
        let sum = (col("n") + lit(1)).gt(lit(80));
        assert!(!prune_row_groups(&metadata, &all, &sum).every_row_kept);
        let plain = col("n")
            .gt(lit(79))
            .or(col("n").in_list(vec![lit(-5)], false));
        let last = prune_row_groups(&metadata, &all, &plain);
        assert_eq!(
            last,
            Pruned {
                row_groups: vec![8, 9],
                every_row_kept: true,
                pages: None,
            }
        );
    }
}
