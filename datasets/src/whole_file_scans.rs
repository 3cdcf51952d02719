//! File scans split by whole files where whole files balance, not by byte ranges.
//!
//! DataFusion spreads a scan of files over its partitions by cutting the files' bytes into
//! equal ranges (`FileGroupPartitioner`), and a Parquet range reads the row groups that *start*
//! in it. Two files of one row group each, one a few bytes larger than the other, come out as
//! `[first file, the first 1,558 bytes of the second]` and `[the rest of the second]`: the
//! first range holds the second file's only row group, so one partition reads both files and the
//! other nothing. TPC-H's `customer` written as two files of 75k rows did exactly that.
//!
//! In one process DataFusion makes up for it at run time: an idle partition steals files from
//! its siblings. A cluster's task runs one partition alone (`sql_tasks` turns the stealing
//! off, as each task must read only its own files), so there the imbalance stays: on the
//! two-node cluster q10's customer scan took 30 ms in one task while the other idled.
//!
//! [`WholeFileScans`] runs after DataFusion's rules. For each file scan whose files DataFusion
//! cut into ranges that cover each file exactly, it deals the whole files instead (largest
//! first, each to the partition with the fewest bytes so far) into the same number of
//! partitions, and keeps that when no partition gets more than an eighth above an even share:
//! then every row group is read by the partition its file went to. Otherwise (one big file, or
//! files too uneven to deal evenly) the byte ranges stay. Scans with a declared order are left
//! alone, as are scans whose files carry ranges of their own.

use std::collections::HashMap;
use std::sync::Arc;

use datafusion::common::Result;
use datafusion::common::config::ConfigOptions;
use datafusion::common::tree_node::{Transformed, TreeNode};
use datafusion::datasource::listing::PartitionedFile;
use datafusion::datasource::physical_plan::{FileGroup, FileScanConfig};
use datafusion::datasource::source::DataSourceExec;
use datafusion::physical_optimizer::PhysicalOptimizerRule;
use datafusion::physical_plan::ExecutionPlan;

/// The physical optimizer rule: see the module documentation.
#[derive(Debug, Default)]
pub struct WholeFileScans;

impl PhysicalOptimizerRule for WholeFileScans {
    fn optimize(
        &self,
        plan: Arc<dyn ExecutionPlan>,
        _config: &ConfigOptions,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        plan.transform_up(|node| {
            let Some(scan) = node
                .downcast_ref::<DataSourceExec>()
                .and_then(|exec| exec.data_source().downcast_ref::<FileScanConfig>())
            else {
                return Ok(Transformed::no(node));
            };
            if !scan.output_ordering.is_empty() {
                return Ok(Transformed::no(node));
            }
            let Some(groups) = whole_file_groups(&scan.file_groups) else {
                return Ok(Transformed::no(node));
            };
            let mut dealt = scan.clone();
            dealt.file_groups = groups;
            Ok(Transformed::yes(
                DataSourceExec::from_data_source(dealt) as Arc<dyn ExecutionPlan>
            ))
        })
        .map(|t| t.data)
    }

    fn name(&self) -> &str {
        "WholeFileScans"
    }

    fn schema_check(&self) -> bool {
        true
    }
}

/// How far above an even share of the bytes a partition of whole files may go, as a fraction.
const SLACK: f64 = 1.0 / 8.0;

/// `groups` dealt as whole files into as many groups, if some file is cut into ranges that
/// cover it exactly, there are at least as many files as groups, and whole files balance to
/// within [`SLACK`]; otherwise `None`.
fn whole_file_groups(groups: &[FileGroup]) -> Option<Vec<FileGroup>> {
    let mut files: Vec<PartitionedFile> = Vec::new();
    let mut covered: HashMap<String, (usize, u64)> = HashMap::new();
    let mut any_cut = false;
    for file in groups.iter().flat_map(FileGroup::iter) {
        let path = file.object_meta.location.to_string();
        let length = match &file.range {
            None => file.object_meta.size,
            Some(range) => {
                any_cut = true;
                u64::try_from(range.end - range.start).ok()?
            }
        };
        match covered.get_mut(&path) {
            Some((_, bytes)) => *bytes += length,
            None => {
                covered.insert(path, (files.len(), length));
                let mut whole = file.clone();
                whole.range = None;
                files.push(whole);
            }
        }
    }
    let partitions = groups.len();
    let exact = covered
        .values()
        .all(|&(index, bytes)| bytes == files[index].object_meta.size);
    if !any_cut || !exact || files.len() < partitions || partitions < 2 {
        return None;
    }
    files.sort_by_key(|file| std::cmp::Reverse(file.object_meta.size));
    let mut dealt: Vec<(u64, Vec<PartitionedFile>)> = vec![(0, Vec::new()); partitions];
    for file in files {
        let smallest = dealt.iter_mut().min_by_key(|(bytes, _)| *bytes)?;
        smallest.0 += file.object_meta.size;
        smallest.1.push(file);
    }
    let total: u64 = dealt.iter().map(|(bytes, _)| bytes).sum();
    let largest = dealt.iter().map(|(bytes, _)| *bytes).max()?;
    let even = total as f64 / partitions as f64;
    if largest as f64 > even * (1.0 + SLACK) {
        return None;
    }
    Some(
        dealt
            .into_iter()
            .map(|(_, files)| FileGroup::new(files))
            .collect(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::array::{Array, Int64Array, RecordBatch};
    use datafusion::physical_plan::collect_partitioned;
    use datafusion::prelude::SessionContext;
    use proptest::prelude::*;

    /// Writes `files` Parquet files of one row group each under `dir`: file `f` holds
    /// `rows[f]` rows `(f, i, value)`, with a null value every seventh row.
    fn write_files(dir: &std::path::Path, rows: &[usize]) {
        for (f, &n) in rows.iter().enumerate() {
            let batch = RecordBatch::try_from_iter([
                ("f", Arc::new(Int64Array::from(vec![f as i64; n])) as _),
                (
                    "i",
                    Arc::new(Int64Array::from_iter_values(0..n as i64)) as _,
                ),
                (
                    "v",
                    Arc::new(Int64Array::from_iter(
                        (0..n as i64).map(|i| (i % 7 != 0).then_some(i * 31 % 101)),
                    )) as _,
                ),
            ])
            .unwrap();
            let file = std::fs::File::create(dir.join(format!("part-{f}.parquet"))).unwrap();
            let mut writer =
                parquet::arrow::ArrowWriter::try_new(file, batch.schema(), None).unwrap();
            writer.write(&batch).unwrap();
            writer.close().unwrap();
        }
    }

    /// A filtered scan of the files in `dir` planned by plain DataFusion over `partitions`
    /// (files of any size cut into byte ranges), [`WholeFileScans`] applied if `dealt`, run
    /// partition by partition as a cluster's tasks run them (no sibling stealing a file): each
    /// partition's `(f, i, v)` rows.
    fn partitions(dir: &str, partitions: usize, dealt: bool) -> Vec<Vec<(i64, i64, Option<i64>)>> {
        let ctx = SessionContext::new();
        let runtime = tokio::runtime::Runtime::new().unwrap();
        runtime.block_on(async {
            for set in [
                "SET datafusion.optimizer.repartition_file_min_size = 0".to_string(),
                "SET datafusion.execution.enable_file_stream_work_stealing = false".to_string(),
                format!("SET datafusion.execution.target_partitions = {partitions}"),
            ] {
                ctx.sql(&set).await.unwrap();
            }
            ctx.register_parquet("t", dir, Default::default())
                .await
                .unwrap();
            let query = ctx.sql("SELECT f, i, v FROM t WHERE i >= 0").await.unwrap();
            let mut plan = query.create_physical_plan().await.unwrap();
            if dealt {
                plan = WholeFileScans
                    .optimize(plan, &ConfigOptions::default())
                    .unwrap();
            }
            let batches = collect_partitioned(plan, ctx.task_ctx()).await.unwrap();
            batches
                .iter()
                .map(|partition| {
                    partition
                        .iter()
                        .flat_map(|batch| {
                            let column = |name: &str| {
                                batch
                                    .column_by_name(name)
                                    .unwrap()
                                    .as_any()
                                    .downcast_ref::<Int64Array>()
                                    .unwrap()
                                    .clone()
                            };
                            let (f, i, v) = (column("f"), column("i"), column("v"));
                            (0..batch.num_rows()).map(move |r| {
                                (f.value(r), i.value(r), v.is_valid(r).then(|| v.value(r)))
                            })
                        })
                        .collect()
                })
                .collect()
        })
    }

    /// The files each partition read rows of.
    fn files_read(partitions: &[Vec<(i64, i64, Option<i64>)>]) -> Vec<Vec<i64>> {
        partitions
            .iter()
            .map(|rows| {
                let mut files: Vec<i64> = rows.iter().map(|r| r.0).collect();
                files.dedup();
                files
            })
            .collect()
    }

    /// Two files of one row group each, the second a little larger: DataFusion's byte ranges
    /// give the first partition both row groups; dealt whole, each partition reads one file.
    #[test]
    fn each_partition_reads_one_of_two_single_row_group_files() {
        let tmp = tempfile::tempdir().unwrap();
        write_files(tmp.path(), &[1000, 1003]);
        let dir = tmp.path().to_str().unwrap();
        let cut = files_read(&partitions(dir, 2, false));
        assert!(
            cut.iter().any(Vec::is_empty),
            "DataFusion's byte ranges leave a partition idle (else this test shows nothing): {cut:?}"
        );
        let dealt = partitions(dir, 2, true);
        let files = files_read(&dealt);
        assert!(
            files.iter().all(|f| f.len() == 1) && files[0] != files[1],
            "each partition reads one whole file: {files:?}"
        );
        assert_eq!(dealt.iter().map(Vec::len).sum::<usize>(), 2003);
    }

    #[test]
    fn sessions_run_the_rule() {
        let state = crate::sql::session().state();
        assert!(
            state
                .physical_optimizers()
                .iter()
                .any(|r| r.name() == "WholeFileScans")
        );
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(24))]

        /// Whatever the files and partitions, the rows read are DataFusion's, each once.
        #[test]
        fn reads_the_rows_datafusion_reads(
            rows in prop::collection::vec(0usize..400, 1..6),
            count in 2usize..5,
        ) {
            let tmp = tempfile::tempdir().unwrap();
            write_files(tmp.path(), &rows);
            let dir = tmp.path().to_str().unwrap();
            let mut dealt: Vec<_> = partitions(dir, count, true).concat();
            let mut plain: Vec<_> = partitions(dir, count, false).concat();
            dealt.sort();
            plain.sort();
            prop_assert_eq!(dealt.len(), rows.iter().sum::<usize>());
            prop_assert_eq!(dealt, plain);
        }
    }

    /// Each group's files as `name:size` (a range shown as `name[start..end]`).
    fn shown(groups: &[FileGroup]) -> Vec<Vec<String>> {
        groups
            .iter()
            .map(|group| {
                group
                    .iter()
                    .map(|f| match &f.range {
                        None => format!("{}:{}", f.object_meta.location, f.object_meta.size),
                        Some(r) => format!("{}[{}..{}]", f.object_meta.location, r.start, r.end),
                    })
                    .collect()
            })
            .collect()
    }

    fn file(name: &str, size: u64) -> PartitionedFile {
        PartitionedFile::new(name, size)
    }

    fn cut(name: &str, size: u64, start: u64, end: u64) -> PartitionedFile {
        file(name, size).with_range(start as i64, end as i64)
    }

    #[test]
    fn two_files_cut_a_few_bytes_into_the_second_go_one_to_each_partition() {
        let groups = vec![
            FileGroup::new(vec![cut("a", 1000, 0, 1000), cut("b", 1010, 0, 5)]),
            FileGroup::new(vec![cut("b", 1010, 5, 1010)]),
        ];
        let dealt = whole_file_groups(&groups).expect("dealt");
        assert_eq!(shown(&dealt), vec![vec!["b:1010"], vec!["a:1000"]]);
    }

    #[test]
    fn byte_ranges_stay_where_whole_files_cannot_balance() {
        // One file: nothing to deal.
        let one = vec![
            FileGroup::new(vec![cut("a", 1000, 0, 500)]),
            FileGroup::new(vec![cut("a", 1000, 500, 1000)]),
        ];
        assert!(whole_file_groups(&one).is_none());
        // A large file and a small one: whole, one partition would get five sixths.
        let uneven = vec![
            FileGroup::new(vec![cut("a", 1000, 0, 600)]),
            FileGroup::new(vec![cut("a", 1000, 600, 1000), cut("b", 200, 0, 200)]),
        ];
        assert!(whole_file_groups(&uneven).is_none());
    }

    #[test]
    fn groups_of_whole_files_or_ranges_not_covering_a_file_are_left_alone() {
        let whole = vec![
            FileGroup::new(vec![file("a", 10), file("b", 10)]),
            FileGroup::new(vec![file("c", 10)]),
        ];
        assert!(
            whole_file_groups(&whole).is_none(),
            "DataFusion cut nothing"
        );
        let partial = vec![
            FileGroup::new(vec![cut("a", 1000, 0, 400)]),
            FileGroup::new(vec![cut("b", 1000, 0, 400)]),
        ];
        assert!(
            whole_file_groups(&partial).is_none(),
            "ranges of the files' own stay ranges"
        );
    }

    #[test]
    fn many_files_deal_largest_first_within_an_eighth_of_even() {
        // Sizes 9, 8, ..., 1 cut over 3 partitions (45 bytes, 15 each).
        let sizes: Vec<u64> = (1..=9).rev().collect();
        let mut pieces: Vec<PartitionedFile> = Vec::new();
        for (i, size) in sizes.iter().enumerate() {
            pieces.push(cut(&format!("f{i}"), *size, 0, *size));
        }
        let groups = vec![
            FileGroup::new(pieces[..3].to_vec()),
            FileGroup::new(pieces[3..6].to_vec()),
            FileGroup::new(pieces[6..].to_vec()),
        ];
        let dealt = whole_file_groups(&groups).expect("dealt");
        let mut bytes: Vec<u64> = dealt
            .iter()
            .map(|g| g.iter().map(|f| f.object_meta.size).sum())
            .collect();
        bytes.sort();
        assert_eq!(bytes.iter().sum::<u64>(), 45);
        assert!(*bytes.last().unwrap() as f64 <= 15.0 * (1.0 + SLACK));
        let mut names: Vec<String> = dealt
            .iter()
            .flat_map(|g| g.iter().map(|f| f.object_meta.location.to_string()))
            .collect();
        names.sort();
        names.dedup();
        assert_eq!(names.len(), 9, "each file in exactly one partition");
    }
}
