//! End-to-end tests on a real loopback cluster: a head and two node daemons as separate
//! processes on 127.0.0.1, worker processes started from this test binary, blocks moving
//! between nodes over Arrow Flight.
//!
//! `harness = false`: worker processes are this very executable, so `main` must first let a
//! worker become one (`manta::run_worker_if_requested`), which libtest's `main` would not.

mod common;

use std::sync::Arc;

use arrow::array::{Array, BooleanArray, RecordBatch, UInt32Array};
use arrow::datatypes::{DataType, Field, Schema};
use manta::{Config, MapBatchesOptions, ReadOptions};

use common::tpch::{self, cells};
use common::*;

/// A driver of the cluster answers all 22 TPC-H queries right, their plans cut into stages
/// of tasks on the nodes (on the cluster by default), with `lineitem` a registered pipeline
/// whose blocks the stages read where they are: q18's aggregates hash-partition into the
/// store and its small join sides are broadcast, so only the final merge runs in the driver.
fn tpch_queries_run_as_stages_of_tasks_on_the_nodes(cluster: &Cluster) {
    let ctx = cluster.connect();
    for (table, path) in tpch::tables() {
        match table {
            // A pipeline: its blocks, made on the nodes, are what the stages read.
            "lineitem" => tpch::register_lineitem_pipeline(&ctx, &path),
            _ => ctx.register_parquet(table, &path).unwrap(),
        }
    }
    let physical = tpch::physical_plan(&ctx, 18);
    assert!(
        physical.matches("read=hash").count() >= 2
            && physical.contains("read=broadcast")
            && physical.contains("DatasetBlocksExec")
            && physical.lines().nth(1).unwrap_or("").contains("StageExec"),
        "q18 runs as stages below the final merge:\n{physical}"
    );
    // q21's EXISTS is a left semi join whose build side is small: collected whole, it would
    // need every probe partition in one place (the driver); partitioned by key, it runs in
    // tasks like the rest.
    let physical = tpch::physical_plan(&ctx, 21);
    assert!(
        physical.contains("mode=Partitioned, join_type=LeftSemi")
            && physical.lines().nth(1).unwrap_or("").contains("StageExec"),
        "q21 runs as stages below the final merge:\n{physical}"
    );
    // q22's customers are filtered by a scalar subquery (the average balance): its value
    // travels to the tasks as a literal, so the filter and the anti join above it run there.
    let physical = tpch::physical_plan(&ctx, 22);
    assert!(
        under_a_stage(&physical, "scalar_subquery"),
        "q22's filter by its scalar subquery runs in tasks:\n{physical}"
    );
    a_view_read_twice_runs_once(&ctx);
    explain_analyze_shows_the_tasks_under_the_cut(&ctx);
    let wrong = tpch::wrong_answers(&ctx);
    assert!(wrong.is_empty(), "wrong answers:\n{}", wrong.join("\n"));
}

/// A view a query reads twice (as TPC-H q15 does) runs once: both reads are of one stage, and
/// the answer is plain DataFusion's over the same files.
fn a_view_read_twice_runs_once(ctx: &manta::Context) {
    let query = "WITH r AS (SELECT o_custkey, sum(o_totalprice) AS total \
                 FROM orders GROUP BY o_custkey) \
                 SELECT o_custkey, total FROM r \
                 WHERE total >= (SELECT max(total) FROM r) / 2 ORDER BY o_custkey";
    let physical = tpch::physical_plan_of(ctx, query);
    let hash_reads: Vec<&str> = physical
        .lines()
        .filter(|line| line.contains("StageExec") && line.contains("read=hash"))
        .map(str::trim)
        .collect();
    assert!(
        hash_reads.len() == 2 && hash_reads[0] == hash_reads[1],
        "both reads of the view are of one stage:\n{physical}"
    );
    let df = datafusion::prelude::SessionContext::new();
    let (_, orders) = tpch::tables()
        .into_iter()
        .find(|(table, _)| *table == "orders")
        .unwrap();
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(df.register_parquet("orders", &orders, Default::default()))
        .unwrap();
    let theirs = rows(&sql(&df, query));
    assert!(!theirs.is_empty());
    assert_eq!(rows(&ctx.sql(query).unwrap().to_arrow().unwrap()), theirs);
}

/// Joins that must see every probe row before they know a build row's fate (left, full, semi,
/// anti and mark, `NOT IN`) give on the cluster, where each runs in tasks over hash partitions
/// of both sides (a semi, anti or mark join's probe side first cut down to its rows matching
/// a build row), what plain DataFusion gives over the same files; so do filters by scalar
/// subqueries, which run in tasks too: random tables (seeded; the
/// seed is in the failure) with null and repeated keys, unicode, and an empty file.
fn outer_semi_and_anti_joins_match_datafusion_across_nodes(cluster: &Cluster) {
    use rand::{Rng, SeedableRng};
    let seed: u64 = std::env::var("MANTA_JOIN_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(rand::random);
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let tmp = tempfile::tempdir().unwrap();
    // "small" is the side DataFusion collects (and once would have joined in the driver).
    for (table, files, rows) in [("small", 2, 150), ("big", 3, 4000)] {
        let dir = tmp.path().join(table);
        std::fs::create_dir(&dir).unwrap();
        for file in 0..=files {
            // The last file is empty: a partition with no rows.
            let n = if file == files { 0 } else { rows };
            let keys: Vec<Option<i64>> = (0..n)
                .map(|_| (rng.random_range(0..10) > 0).then(|| rng.random_range(0..300)))
                .collect();
            let tags: Vec<Option<String>> = (0..n)
                .map(|i| (i % 7 != 0).then(|| format!("t{}é✓", rng.random_range(0..5))))
                .collect();
            let batch = RecordBatch::try_from_iter([
                ("k", Arc::new(arrow::array::Int64Array::from(keys)) as _),
                ("tag", Arc::new(arrow::array::StringArray::from(tags)) as _),
            ])
            .unwrap();
            let path = dir.join(format!("part-{file}.parquet"));
            let out = std::fs::File::create(path).unwrap();
            let mut writer =
                parquet::arrow::ArrowWriter::try_new(out, batch.schema(), None).unwrap();
            writer.write(&batch).unwrap();
            writer.close().unwrap();
        }
    }
    let ctx = cluster.connect();
    let df = datafusion::prelude::SessionContext::new();
    let rt = tokio::runtime::Runtime::new().unwrap();
    for table in ["small", "big"] {
        let path = tmp.path().join(table);
        let path = path.to_str().unwrap();
        ctx.register_parquet(table, path).unwrap();
        rt.block_on(df.register_parquet(table, path, Default::default()))
            .unwrap();
    }
    let queries = [
        "SELECT s.k, s.tag, b.tag FROM small s LEFT JOIN big b ON s.k = b.k",
        "SELECT s.k, s.tag, b.k FROM small s FULL JOIN big b ON s.k = b.k AND s.tag <> b.tag",
        "SELECT k, tag FROM small s WHERE EXISTS \
         (SELECT 1 FROM big b WHERE b.k = s.k AND b.tag <> s.tag)",
        "SELECT k, tag FROM small s WHERE NOT EXISTS (SELECT 1 FROM big b WHERE b.k = s.k)",
        "SELECT k, tag FROM small WHERE k NOT IN (SELECT k FROM big WHERE tag = 't1é✓')",
        "SELECT tag, count(*) FROM small s WHERE k IN (SELECT k FROM big) GROUP BY tag",
        "SELECT k, tag FROM small s WHERE EXISTS (SELECT 1 FROM big b WHERE b.k = s.k) \
         OR s.tag IS NULL",
    ];
    // Scalar subqueries, whose values the stages that filter by them are given as literals
    // when they run: TPC-H q22's shape, a unicode string, a NULL (no row), and one read by the
    // map side of an aggregate's exchange.
    let scalar_subqueries = [
        "SELECT k, tag FROM small s WHERE k > (SELECT avg(k) FROM big) \
         AND NOT EXISTS (SELECT 1 FROM big b WHERE b.k = s.k)",
        "SELECT k, tag FROM big WHERE tag = (SELECT min(tag) FROM small)",
        "SELECT k FROM small WHERE k < (SELECT max(k) FROM big WHERE tag = 'none')",
        "SELECT tag, count(*) FROM big WHERE k * 2 > (SELECT min(k) FROM small) GROUP BY tag",
    ];
    for query in scalar_subqueries {
        let ours = sorted(rows(&ctx.sql(query).unwrap().to_arrow().unwrap()));
        let theirs = sorted(rows(&sql(&df, query)));
        assert_eq!(ours, theirs, "seed {seed}: {query}");
        let physical = tpch::physical_plan_of(&ctx, query);
        assert!(
            under_a_stage(&physical, "scalar_subquery"),
            "the filter by a scalar subquery runs in tasks:\n{physical}"
        );
    }
    let (mut partitioned, mut reduced) = (0, 0);
    for query in queries {
        let ours = sorted(rows(&ctx.sql(query).unwrap().to_arrow().unwrap()));
        let theirs = sorted(rows(&sql(&df, query)));
        assert_eq!(ours, theirs, "seed {seed}: {query}");
        let plan = rows(
            &ctx.sql(&format!("EXPLAIN {query}"))
                .unwrap()
                .to_arrow()
                .unwrap(),
        );
        if plan.iter().any(|line| line.contains("mode=Partitioned")) {
            partitioned += 1;
        }
        // A semi, anti or mark join's probe side cut down to the rows matching a build row.
        if plan
            .iter()
            .any(|line| line.contains("mode=CollectLeft, join_type=RightSemi"))
        {
            reduced += 1;
        }
    }
    // All but `NOT IN` (null-aware: one NULL anywhere in the subquery empties the answer).
    assert!(
        partitioned >= 6,
        "only {partitioned} joins ran partitioned in tasks"
    );
    // EXISTS, NOT EXISTS, IN and the mark join of EXISTS ... OR.
    assert!(reduced >= 4, "only {reduced} probe sides were reduced");
}

/// Whether the first line of `plan` (an `EXPLAIN`'s indented tree) that holds `needle` is
/// below a `StageExec`: part of a stage's fragment, which runs in tasks.
fn under_a_stage(plan: &str, needle: &str) -> bool {
    let indent = |line: &str| line.len() - line.trim_start().len();
    let lines: Vec<&str> = plan.lines().collect();
    let Some(at) = lines.iter().position(|line| line.contains(needle)) else {
        return false;
    };
    // Up the tree: each line less indented than all below it is an ancestor.
    let mut depth = indent(lines[at]);
    for line in lines[..at].iter().rev() {
        if indent(line) < depth {
            if line.contains("StageExec") {
                return true;
            }
            depth = indent(line);
        }
    }
    false
}

/// `EXPLAIN ANALYZE` of a scan that runs as tasks shows, on its `StageExec`, what the
/// tasks did: as many tasks as it has partitions, the rows they made (DataFusion's own count
/// of the same rows, computed apart over the same files; few enough to print exactly), and
/// their CPU time.
fn explain_analyze_shows_the_tasks_under_the_cut(ctx: &manta::Context) {
    let filter = "l_quantity = 50 AND l_discount = 0.05 AND l_tax = 0.02";
    let lineitem = tpch::tables()
        .into_iter()
        .find(|(table, _)| *table == "lineitem")
        .unwrap()
        .1;
    let expected: u64 = tokio::runtime::Runtime::new().unwrap().block_on(async {
        let df = datafusion::prelude::SessionContext::new();
        df.register_parquet("lineitem", &lineitem, Default::default())
            .await
            .unwrap();
        let rows = df
            .sql(&format!("SELECT l_orderkey FROM lineitem WHERE {filter}"))
            .await
            .unwrap()
            .count()
            .await
            .unwrap();
        rows as u64
    });
    assert!(
        expected > 0 && expected < 1000,
        "{expected} rows: pick another filter"
    );
    let analyzed = cells(
        &ctx.sql(&format!(
            "EXPLAIN ANALYZE SELECT l_orderkey FROM lineitem WHERE {filter}"
        ))
        .unwrap()
        .to_arrow()
        .unwrap(),
    );
    let text: String = analyzed.iter().map(|row| row[1].clone() + "\n").collect();
    let scan = text
        .lines()
        .find(|l| l.contains("StageExec"))
        .unwrap_or_else(|| panic!("no StageExec:\n{text}"));
    let numbers_after = |name: &str| -> Vec<u64> {
        scan.split(&format!("{name}="))
            .skip(1)
            .filter_map(|rest| {
                let digits: String = rest.chars().take_while(char::is_ascii_digit).collect();
                digits.parse().ok()
            })
            .collect()
    };
    // `tasks=` twice: the partitions it was planned with, and the tasks that ran.
    let tasks = numbers_after("tasks");
    assert!(
        tasks.len() == 2 && tasks[0] == tasks[1] && tasks[0] > 0,
        "{scan}"
    );
    assert_eq!(numbers_after("output_rows"), vec![expected], "{scan}");
    assert!(
        scan.contains("task_cpu=") && scan.contains("task_wall="),
        "{scan}"
    );
}

/// The TPC-H queries asked of the head's Flight SQL endpoint.
const FLIGHT_SQL_QUERIES: [usize; 5] = [1, 3, 5, 9, 18];

/// `manta start --head --flight-sql-port 0 --table ...` serves the tables: a Flight SQL client
/// gets the right answers to the same queries.
fn the_heads_flight_sql_endpoint_answers_tpch(cluster: &Cluster) {
    use futures::TryStreamExt;
    let address = cluster
        .head
        .flight_sql
        .clone()
        .expect("the head serves Flight SQL");
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let wrong: Vec<String> = runtime.block_on(async {
        let channel = tonic::transport::Endpoint::from_shared(format!("http://{address}"))
            .unwrap()
            .connect()
            .await
            .unwrap();
        let mut client = arrow_flight::sql::client::FlightSqlServiceClient::new(channel);
        // The endpoint takes the cluster's token, whose file it wrote for its own port too.
        let token = manta::scheduler::cluster_token::resolve(None, &address).unwrap();
        client.set_token(token.secret().to_string());
        let mut wrong = Vec::new();
        for n in FLIGHT_SQL_QUERIES {
            let info = client.execute(tpch::query(n), None).await.unwrap();
            let mut batches = Vec::new();
            for endpoint in info.endpoint {
                let stream = client.do_get(endpoint.ticket.unwrap()).await.unwrap();
                batches.extend(stream.try_collect::<Vec<_>>().await.unwrap());
            }
            wrong.extend(tpch::check(n, &cells(&batches)));
        }
        wrong
    });
    assert!(wrong.is_empty(), "wrong answers:\n{}", wrong.join("\n"));

    // `manta sql --flight-sql` is a client of the same endpoint: its CSV answer against rows
    // counted with the parquet crate.
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_manta"))
        .args(["sql", "--flight-sql", &address, "--format", "csv"])
        .arg("SELECT count(*) AS n FROM orders")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let orders = tpch::tables()
        .into_iter()
        .find(|(name, _)| *name == "orders")
        .unwrap()
        .1;
    let expected: i64 = std::fs::read_dir(&orders)
        .unwrap()
        .map(|file| {
            parquet::file::reader::SerializedFileReader::new(
                std::fs::File::open(file.unwrap().path()).unwrap(),
            )
            .map(|r| {
                parquet::file::reader::FileReader::metadata(&r)
                    .file_metadata()
                    .num_rows()
            })
            .unwrap()
        })
        .sum();
    assert_eq!(
        String::from_utf8(out.stdout).unwrap(),
        format!("n\n{expected}\n")
    );
}

/// The env variable that makes this binary a driver that puts a block and waits to be killed
/// (see `objects_a_killed_driver_put_are_freed`).
const PUT_THEN_WAIT: &str = "MANTA_TEST_PUT_THEN_WAIT";

/// Rows of the block the killed driver puts (32 MiB of `i64`s).
const PUT_ROWS: usize = 1 << 22;

fn put_then_wait(head: String) -> ! {
    let ctx = manta::init_with(Config {
        address: Some(head),
        ..Default::default()
    })
    .unwrap();
    let stored = ctx
        .put_batch(common::batch_tasks::numbers(PUT_ROWS as i64))
        .unwrap();
    println!("put");
    loop {
        std::thread::park();
        let _ = &stored;
    }
}

/// The bytes held in the nodes' object stores, as the head last heard.
fn resident_bytes(cluster: &Cluster) -> u64 {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let (channel, _) =
            manta::scheduler::cluster_token::connect_head(&cluster.head.address, None)
                .await
                .unwrap();
        let nodes = manta::scheduler::proto::head_client::HeadClient::new(channel)
            .list_nodes(manta::scheduler::proto::ListNodesRequest {})
            .await
            .unwrap()
            .into_inner()
            .nodes;
        nodes
            .iter()
            .map(|n| n.store.map_or(0, |s| s.resident_bytes))
            .sum()
    })
}

/// A driver puts a 32 MiB block on a node and is killed (SIGKILL: it frees nothing, ends
/// nothing): the head sees its job's connection close and ends the job, and the node frees
/// the block.
fn objects_a_killed_driver_put_are_freed(cluster: &Cluster) {
    use std::io::BufRead;
    let before = resident_bytes(cluster);
    let mut driver = std::process::Command::new(std::env::current_exe().unwrap())
        .env(PUT_THEN_WAIT, &cluster.head.address)
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    std::io::BufReader::new(driver.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    assert_eq!(line.trim(), "put");
    let size = (PUT_ROWS * 8) as u64;
    let mut with_block = 0;
    eventually("the nodes report the put block", || {
        with_block = resident_bytes(cluster);
        with_block >= before + size
    });
    driver.kill().unwrap();
    driver.wait().unwrap();
    eventually("the killed driver's block is freed", || {
        resident_bytes(cluster) + size <= with_block
    });
}

fn main() {
    manta::run_worker_if_requested();
    if let Ok(head) = std::env::var(PUT_THEN_WAIT) {
        put_then_wait(head);
    }
    type Test = common::Test<Cluster>;
    let tests: &[Test] = &[
        ("the_quickstart_runs_over_tls", the_quickstart_runs_over_tls),
        (
            "quickstart_runs_across_two_nodes_and_matches_embedded",
            quickstart_runs_across_two_nodes_and_matches_embedded,
        ),
        (
            "workers_read_blocks_zero_copy_from_shared_memory",
            workers_read_blocks_zero_copy_from_shared_memory,
        ),
        (
            "stats_show_the_peak_memory_of_each_stages_tasks",
            stats_show_the_peak_memory_of_each_stages_tasks,
        ),
        (
            "a_failing_task_on_a_node_names_the_function",
            a_failing_task_on_a_node_names_the_function,
        ),
        (
            "all_to_all_operations_match_sql_across_nodes",
            all_to_all_operations_match_sql_across_nodes,
        ),
        (
            "a_shuffle_over_spilled_map_outputs_matches_sql",
            a_shuffle_over_spilled_map_outputs_matches_sql,
        ),
        (
            "row_functions_callables_and_splits_run_on_the_nodes",
            row_functions_callables_and_splits_run_on_the_nodes,
        ),
        (
            "tpch_queries_run_as_stages_of_tasks_on_the_nodes",
            tpch_queries_run_as_stages_of_tasks_on_the_nodes,
        ),
        (
            "outer_semi_and_anti_joins_match_datafusion_across_nodes",
            outer_semi_and_anti_joins_match_datafusion_across_nodes,
        ),
        (
            "the_heads_flight_sql_endpoint_answers_tpch",
            the_heads_flight_sql_endpoint_answers_tpch,
        ),
        (
            "remote_tasks_and_objects_run_on_the_nodes",
            remote_tasks_and_objects_run_on_the_nodes,
        ),
        (
            "a_task_whose_worker_dies_is_retried",
            a_task_whose_worker_dies_is_retried,
        ),
        (
            "wait_and_get_time_out_on_a_task_that_is_not_done",
            wait_and_get_time_out_on_a_task_that_is_not_done,
        ),
        (
            "actors_run_in_their_own_worker_in_call_order",
            actors_run_in_their_own_worker_in_call_order,
        ),
        (
            "an_actor_whose_worker_dies_is_restarted_and_its_lost_calls_fail",
            an_actor_whose_worker_dies_is_restarted_and_its_lost_calls_fail,
        ),
        (
            "tune_runs_trials_as_tasks_and_actors_on_the_nodes",
            tune_runs_trials_as_tasks_and_actors_on_the_nodes,
        ),
        (
            "an_actor_whose_node_dies_is_restarted_on_another_node",
            an_actor_whose_node_dies_is_restarted_on_another_node,
        ),
        (
            "task_outputs_lost_with_their_node_are_rebuilt_from_lineage",
            task_outputs_lost_with_their_node_are_rebuilt_from_lineage,
        ),
        (
            "objects_a_killed_driver_put_are_freed",
            objects_a_killed_driver_put_are_freed,
        ),
        (
            "dataset_blocks_lost_with_their_node_are_made_again",
            dataset_blocks_lost_with_their_node_are_made_again,
        ),
        (
            "the_quickstart_survives_a_node_killed_mid_run",
            the_quickstart_survives_a_node_killed_mid_run,
        ),
        (
            "a_write_whose_node_is_killed_mid_run_lands_whole",
            a_write_whose_node_is_killed_mid_run_lands_whole,
        ),
        (
            "a_driver_cut_off_from_its_head_fails_naming_the_head",
            a_driver_cut_off_from_its_head_fails_naming_the_head,
        ),
        (
            "a_lost_head_fails_its_driver_and_its_nodes_rejoin_it_restarted",
            a_lost_head_fails_its_driver_and_its_nodes_rejoin_it_restarted,
        ),
        (
            "a_head_alone_is_a_node_and_answers_flight_sql",
            a_head_alone_is_a_node_and_answers_flight_sql,
        ),
        (
            "a_node_started_before_its_head_joins_it_when_it_comes_up",
            a_node_started_before_its_head_joins_it_when_it_comes_up,
        ),
        (
            "a_task_that_fits_no_node_waits_for_one",
            a_task_that_fits_no_node_waits_for_one,
        ),
    ];
    // The head serves the TPC-H tables to Flight SQL clients.
    let tables: Vec<String> = tpch::tables()
        .into_iter()
        .map(|(name, path)| format!("{name}={path}"))
        .collect();
    let mut head_args = vec!["--head", "--port", "0", "--flight-sql-port", "0"];
    for table in &tables {
        head_args.extend(["--table", table]);
    }
    let cluster = Cluster::start_with_head(&head_args, &["a=1", "b=1"]);
    common::run_tests("cluster", tests, cluster);
}

/// Reads run only on node "a", the batch function only on node "b": every block is produced on
/// one node and consumed on the other.
fn read_on_a_map_on_b() -> (ReadOptions, MapBatchesOptions) {
    let read = ReadOptions {
        resources: on("a"),
        ..small_tasks()
    };
    (read, MapBatchesOptions::default().resources(on("b")))
}

fn quickstart_runs_across_two_nodes_and_matches_embedded(cluster: &Cluster) {
    let tmp = tempfile::tempdir().unwrap();
    let input = small_lineitem(tmp.path());
    let (read, map) = read_on_a_map_on_b();

    let ctx = cluster.connect();
    let ds = etl(&ctx, &input, read.clone(), map.clone());
    let out = tmp.path().join("cluster-out");
    let written = ds.write_parquet(&out).unwrap();
    let stats = ds.stats();
    assert_eq!(stats.stages.len(), 2);
    let (produce, consume) = (&stats.stages[0], &stats.stages[1]);
    assert!(produce.tasks > 10);
    assert_eq!(
        consume.task.pulled_objects, produce.tasks,
        "every block crossed nodes: {stats}"
    );
    assert_eq!(consume.task.pulled_bytes, produce.bytes_out, "{stats}");

    let embedded = manta::init_with(Config {
        custom_resources: [("a".into(), 1.0), ("b".into(), 1.0)].into(),
        ..Default::default()
    })
    .unwrap();
    let local_out = tmp.path().join("embedded-out");
    let local = etl(&embedded, &input, read, map)
        .write_parquet(&local_out)
        .unwrap();
    assert_eq!(written.rows, local.rows);
    assert_eq!(
        checksum_of_parquet_dir(&out),
        checksum_of_parquet_dir(&local_out)
    );
    assert_eq!(checksum_of_parquet_dir(&out), expected_etl(&input));
}

/// The quickstart on a cluster serving TLS (certificates made now, by an authority made now):
/// the head's address is `https://`, blocks cross nodes over TLS, worker processes attach over
/// TLS, and the answer is the quickstart's. A client that does not speak TLS gets nothing. The
/// nodes bind 0.0.0.0 and advertise 127.0.0.1.
fn the_quickstart_runs_over_tls(_plain: &Cluster) {
    let tmp = tempfile::tempdir().unwrap();
    let ca = TestCa::new(tmp.path());
    let tls = ca.args();
    let tls: Vec<&str> = tls.iter().map(String::as_str).collect();
    let head_args = [&["--head", "--port", "0"], &tls[..]].concat();
    // The nodes listen on every interface and advertise 127.0.0.1, which their certificate names.
    let node_args = [&["--bind-address", "0.0.0.0"], &tls[..]].concat();
    let cluster = Cluster::start_with(&head_args, &["a=1", "b=1"], &node_args);
    assert!(
        cluster.head.address.starts_with("https://"),
        "{}",
        cluster.head.address
    );
    for node in &cluster.nodes {
        assert!(
            node.address.starts_with("https://127.0.0.1:"),
            "{}",
            node.address
        );
    }
    // This driver trusts the authority (what --tls-ca or MANTA_TLS_CA do); plain addresses of
    // the other tests' cluster are not affected.
    manta::flight::tls::trust_file(&ca.ca).unwrap();

    let input = small_lineitem(tmp.path());
    let (read, map) = read_on_a_map_on_b();
    let ctx = cluster.connect();
    let ds = etl(&ctx, &input, read, map);
    let out = tmp.path().join("tls-out");
    ds.write_parquet(&out).unwrap();
    let stats = ds.stats();
    assert_eq!(
        stats.stages[1].task.pulled_objects, stats.stages[0].tasks,
        "every block crossed nodes: {stats}"
    );
    assert_eq!(checksum_of_parquet_dir(&out), expected_etl(&input));

    // The same head over plain HTTP/2: no answer.
    let plain = cluster.head.address.replace("https://", "http://");
    let err = manta::init_with(Config {
        address: Some(plain.clone()),
        ..Default::default()
    })
    .err()
    .unwrap_or_else(|| panic!("a plain client joined the TLS head at {plain}"));
    let err = err.to_string();
    assert!(err.contains(&plain) && err.contains("TLS"), "{err}");
}

/// For each batch: the pid of the process running it, and whether its first column's values
/// live in a mapping of a file under /dev/shm (the node's object store), read from
/// /proc/self/maps.
#[manta::remote]
fn where_is_my_data(batch: RecordBatch) -> Result<RecordBatch, manta::engine::BoxError> {
    let values = batch.column(0).to_data().buffers()[0].as_ptr() as usize;
    let maps = std::fs::read_to_string("/proc/self/maps")?;
    let in_shm = maps.lines().any(|line| {
        let mut parts = line.split_whitespace();
        let range = parts.next().unwrap_or("");
        let path = parts.nth(4).unwrap_or("");
        let (start, end) = range.split_once('-').unwrap_or(("0", "0"));
        let (start, end) = (
            usize::from_str_radix(start, 16).unwrap_or(0),
            usize::from_str_radix(end, 16).unwrap_or(0),
        );
        (start..end).contains(&values) && path.starts_with("/dev/shm/manta-")
    });
    let n = batch.num_rows();
    let schema = Arc::new(Schema::new(vec![
        Field::new("pid", DataType::UInt32, false),
        Field::new("in_shm", DataType::Boolean, false),
    ]));
    Ok(RecordBatch::try_new(
        schema,
        vec![
            Arc::new(UInt32Array::from(vec![std::process::id(); n])),
            Arc::new(BooleanArray::from(vec![in_shm; n])),
        ],
    )?)
}

fn workers_read_blocks_zero_copy_from_shared_memory(cluster: &Cluster) {
    let tmp = tempfile::tempdir().unwrap();
    let input = small_lineitem(tmp.path());
    let ctx = cluster.connect();
    let ds = ctx
        .read_parquet_with(
            input.to_str().unwrap(),
            ReadOptions {
                resources: on("a"),
                ..small_tasks()
            },
        )
        .unwrap()
        .map_batches_with(
            where_is_my_data,
            MapBatchesOptions::default().resources(on("b")),
        );
    let batches = ds.take(usize::MAX).unwrap();
    assert!(!batches.is_empty());
    let node_pids = [
        cluster.nodes[0].pid(),
        cluster.nodes[1].pid(),
        std::process::id(),
    ];
    for batch in &batches {
        let pids = batch
            .column(0)
            .as_any()
            .downcast_ref::<UInt32Array>()
            .unwrap();
        let in_shm = batch
            .column(1)
            .as_any()
            .downcast_ref::<BooleanArray>()
            .unwrap();
        assert!(
            pids.iter().flatten().all(|pid| !node_pids.contains(&pid)),
            "ran in a worker process"
        );
        assert_eq!(
            in_shm.true_count(),
            in_shm.len(),
            "the block was mapped from shared memory, not copied"
        );
    }
}

/// Bytes [`hold_memory`] allocates and touches.
const HELD_BYTES: usize = 96 << 20;

#[manta::remote]
fn hold_memory(batch: RecordBatch) -> manta::Result<RecordBatch> {
    let held = vec![1u8; HELD_BYTES];
    let sum: u64 = std::hint::black_box(&held).iter().map(|&b| b as u64).sum();
    assert_eq!(sum, HELD_BYTES as u64);
    Ok(batch)
}

/// `ds.stats()` on the cluster shows each stage's peak memory, measured in the worker
/// processes: a stage whose function holds 96 MiB shows at least that; the stage before it,
/// which holds nothing of the sort (on the other node, in other workers), shows less.
fn stats_show_the_peak_memory_of_each_stages_tasks(cluster: &Cluster) {
    let tmp = tempfile::tempdir().unwrap();
    let input = small_lineitem(tmp.path());
    let (read, map) = read_on_a_map_on_b();
    let ctx = cluster.connect();
    let ds = ctx
        .read_parquet_with(input.to_str().unwrap(), read)
        .unwrap()
        .map_batches_with(hold_memory, map);
    assert!(!ds.take(usize::MAX).unwrap().is_empty());
    let stats = ds.stats();
    assert_eq!(stats.stages.len(), 2, "{stats}");
    let (read, held) = (&stats.stages[0].task, &stats.stages[1].task);
    assert!(
        held.peak_memory_bytes >= HELD_BYTES as u64,
        "the holding stage's peak: {stats}"
    );
    assert!(
        read.peak_memory_bytes < HELD_BYTES as u64,
        "the reading stage's peak: {stats}"
    );
    assert!(stats.to_string().contains("peak memory"), "{stats}");
}

#[manta::remote]
fn reject_everything(_batch: RecordBatch) -> manta::Result<RecordBatch> {
    Err(manta::Error::InvalidArgument(
        "this function rejects every batch".into(),
    ))
}

fn a_failing_task_on_a_node_names_the_function(cluster: &Cluster) {
    let tmp = tempfile::tempdir().unwrap();
    let input = small_lineitem(tmp.path());
    let out = tmp.path().join("out");
    let ctx = cluster.connect();
    let err = ctx
        .read_parquet(input.to_str().unwrap())
        .unwrap()
        .map_batches(reject_everything)
        .write_parquet(&out)
        .unwrap_err();
    match &err {
        manta::Error::Execution(manta::scheduler::Error::UserFunction {
            function,
            message,
            ..
        }) => {
            assert!(function.ends_with("reject_everything"), "{function}");
            assert!(message.contains("rejects every batch"), "{message}");
        }
        other => panic!("expected UserFunction, got {other:?}"),
    }
    assert!(!out.exists());
}

/// `lineitem` grouped by return flag (count, sum of quantity) equals the same in SQL over `df`.
fn groupby_matches_sql(lineitem: &manta::Dataset, df: &datafusion::prelude::SessionContext) {
    let grouped = lineitem
        .groupby(&["l_returnflag"])
        .aggregate(vec![
            manta::Aggregate::count(),
            manta::Aggregate::sum("l_quantity"),
        ])
        .to_arrow()
        .unwrap();
    let expected = sql(
        df,
        "SELECT l_returnflag, count(*), sum(l_quantity) FROM lineitem GROUP BY l_returnflag",
    );
    assert_eq!(sorted(rows(&grouped)), sorted(rows(&expected)));
}

fn all_to_all_operations_match_sql_across_nodes(cluster: &Cluster) {
    let tmp = tempfile::tempdir().unwrap();
    let input = small_lineitem(tmp.path());
    let df = lineitem_sql(&input);
    // One reduce task per partition, then (as a mid-sized exchange runs) one per CPU, each
    // over a range of partitions gathered from both nodes.
    let (maps, reduces) = all_to_all_operations_match_sql(&cluster.connect(), &input, &df);
    assert_eq!(reduces, maps, "one reduce task per partition");
    let ranges = cluster.connect_with(manta::Config {
        reduce_task_bytes: Some(u64::MAX),
        ..Default::default()
    });
    let (maps, reduces) = all_to_all_operations_match_sql(&ranges, &input, &df);
    assert!(
        reduces < maps,
        "{reduces} reduce tasks over {maps} partitions"
    );
}

/// Runs a shuffle and sort, a groupby and a join on `ctx`, each checked against SQL; returns
/// the shuffle's map and reduce tasks.
fn all_to_all_operations_match_sql(
    ctx: &manta::Context,
    input: &std::path::Path,
    df: &datafusion::prelude::SessionContext,
) -> (u64, u64) {
    use manta::{JoinKind, SortKey};
    let lineitem = ctx
        .read_parquet_with(input.to_str().unwrap(), small_tasks())
        .unwrap()
        .select_columns(&["l_orderkey", "l_linenumber", "l_returnflag", "l_quantity"]);

    // A shuffle then a sort: every row crosses the map/reduce boundary twice.
    let sorted_ds = lineitem.random_shuffle(Some(5)).sort_by(vec![
        SortKey::asc("l_orderkey"),
        SortKey::desc("l_linenumber"),
    ]);
    let ours = sorted_ds.to_arrow().unwrap();
    let expected = sql(
        df,
        "SELECT l_orderkey, l_linenumber, l_returnflag, l_quantity FROM lineitem \
         ORDER BY l_orderkey, l_linenumber DESC",
    );
    assert_eq!(rows(&ours), rows(&expected));
    let stats = sorted_ds.stats();
    assert!(
        stats.pulled_bytes() > 0,
        "reducers pulled partitions from the other node: {stats}"
    );
    let tasks = |stage: &str| {
        stats
            .stages
            .iter()
            .find(|s| s.name.ends_with(stage))
            .unwrap_or_else(|| panic!("a stage {stage}: {stats}"))
            .tasks
    };
    let shuffle_tasks = (tasks("RandomShuffleMap"), tasks("RandomShuffleReduce"));

    // Group and aggregate, with the reduce running DataFusion in worker processes.
    groupby_matches_sql(&lineitem, df);

    // A join with a small table shipped from the driver (from_arrow on a cluster).
    let flags = RecordBatch::try_from_iter([
        (
            "l_returnflag",
            Arc::new(arrow::array::StringViewArray::from(vec!["A", "R"])) as _,
        ),
        (
            "meaning",
            Arc::new(arrow::array::StringArray::from(vec![
                "accepted", "returned",
            ])) as _,
        ),
    ])
    .unwrap();
    let joined = lineitem
        .join(
            &ctx.from_arrow(vec![flags.clone()]).unwrap(),
            &["l_returnflag"],
            JoinKind::Inner,
        )
        .to_arrow()
        .unwrap();
    df.deregister_table("flags").unwrap();
    df.register_batch("flags", flags.clone()).unwrap();
    let expected = sql(
        df,
        "SELECT l.l_orderkey, l.l_linenumber, l.l_returnflag, l.l_quantity, f.meaning \
         FROM lineitem l JOIN flags f ON l.l_returnflag = f.l_returnflag",
    );
    assert_eq!(sorted(rows(&joined)), sorted(rows(&expected)));
    driver_batches_come_back_without_tasks(ctx, &flags);
    shuffle_tasks
}

/// The driver's own batches (`from_arrow` on a cluster, as a SQL answer is) come back to the
/// driver as they are, without a task; with an operator on them they run on the nodes, and
/// what that leaves in the stores is read back without a task too.
fn driver_batches_come_back_without_tasks(ctx: &manta::Context, flags: &RecordBatch) {
    let empty = flags.slice(0, 0);
    let input = vec![flags.clone(), empty, flags.slice(1, 1)];
    let ds = ctx.from_arrow(input.clone()).unwrap();
    assert_eq!(rows(&ds.to_arrow().unwrap()), rows(&input));
    assert!(ds.stats().stages.is_empty(), "no stage ran: {}", ds.stats());
    let iterated: Vec<RecordBatch> = ds.iter_batches().unwrap().map(Result::unwrap).collect();
    assert_eq!(rows(&iterated), rows(&input));
    assert_eq!(ds.count().unwrap(), rows(&input).len() as u64);
    assert_eq!(rows(&ds.take(2).unwrap()), rows(&input)[..2]);

    let meanings = ds.select_columns(&["meaning"]);
    let projected: Vec<RecordBatch> = input.iter().map(|b| b.project(&[1]).unwrap()).collect();
    assert_eq!(rows(&meanings.to_arrow().unwrap()), rows(&projected));
    assert!(
        !meanings.stats().stages.is_empty(),
        "a selection runs as a stage: {}",
        meanings.stats()
    );

    // Blocks kept in the stores are read as they are, with no stage copying them first.
    let stored = meanings.materialize().unwrap();
    assert_eq!(rows(&stored.to_arrow().unwrap()), rows(&projected));
    assert!(stored.stats().stages.is_empty(), "{}", stored.stats());
    let iterated: Vec<RecordBatch> = stored.iter_batches().unwrap().map(Result::unwrap).collect();
    assert_eq!(rows(&iterated), rows(&projected));
    assert_eq!(stored.count().unwrap(), rows(&projected).len() as u64);
}

/// Under stores far smaller than the data, the map outputs spill, and the reduce tasks read
/// their partitions of the spilled ones in place, from the spill files (a link each, made for
/// the task and removed after it), and of the other node's in one `DoGet` per node: the
/// answer is SQL's all the same, and no link is left behind.
fn a_shuffle_over_spilled_map_outputs_matches_sql(_shared: &Cluster) {
    use manta::SortKey;
    let tmp = tempfile::tempdir().unwrap();
    let spill = tmp.path().join("spill");
    let spill_dir = spill.to_str().unwrap();
    let cluster = Cluster::start_with(
        &["--head", "--port", "0"],
        &["a=1", "b=1"],
        &["--object-store-memory", "256KiB", "--spill-dir", spill_dir],
    );
    let input = small_lineitem(tmp.path());
    let df = lineitem_sql(&input);
    let ctx = cluster.connect();
    let shuffled = ctx
        .read_parquet_with(input.to_str().unwrap(), small_tasks())
        .unwrap()
        .select_columns(&["l_orderkey", "l_linenumber", "l_comment"])
        .random_shuffle(Some(3))
        .sort_by(vec![
            SortKey::asc("l_orderkey"),
            SortKey::asc("l_linenumber"),
        ]);
    let ours = shuffled.to_arrow().unwrap();
    let expected = sql(
        &df,
        "SELECT l_orderkey, l_linenumber, l_comment FROM lineitem \
         ORDER BY l_orderkey, l_linenumber",
    );
    assert_eq!(rows(&ours), rows(&expected));
    let stats = shuffled.stats();
    assert!(stats.spilled_bytes() > 0, "nothing spilled: {stats}");
    assert!(stats.pulled_bytes() > 0, "nothing crossed nodes: {stats}");
    let links: Vec<_> = walk(&spill)
        .into_iter()
        .filter(|path| {
            path.file_name()
                .unwrap()
                .to_string_lossy()
                .starts_with("reader-")
        })
        .collect();
    assert!(links.is_empty(), "links left behind: {links:?}");
}

/// Every file under `dir`.
fn walk(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let path = entry.path();
        if path.is_dir() {
            files.extend(walk(&path));
        } else {
            files.push(path);
        }
    }
    files
}

#[derive(serde::Serialize, serde::Deserialize, Debug, PartialEq)]
struct Id {
    id: i64,
}

#[derive(serde::Serialize, serde::Deserialize, Debug, PartialEq)]
struct Described {
    id: i64,
    text: String,
}

#[manta::remote]
fn describe(row: Id) -> Described {
    Described {
        id: row.id,
        text: format!(
            "row {} of {}",
            row.id,
            if row.id % 2 == 0 { "even" } else { "odd" }
        ),
    }
}

/// Adds an offset read from a file at construction, and tags each row with the instance (a
/// random number drawn once per construction) that scored it.
struct Offset {
    offset: i64,
    instance: u64,
}

#[manta::callable]
impl manta::Callable for Offset {
    type Args = String;

    fn new(path: String) -> Result<Self, manta::BoxError> {
        Ok(Self {
            offset: std::fs::read_to_string(path)?.trim().parse()?,
            instance: rand::random(),
        })
    }

    fn call(&mut self, batch: RecordBatch) -> Result<RecordBatch, manta::BoxError> {
        use arrow::array::{AsArray, Int64Array, UInt64Array};
        let ids = batch
            .column(0)
            .as_primitive::<arrow::datatypes::Int64Type>();
        let shifted: Int64Array = ids.iter().map(|v| v.map(|v| v + self.offset)).collect();
        let instance = UInt64Array::from(vec![self.instance; batch.num_rows()]);
        Ok(RecordBatch::try_from_iter([
            ("id", Arc::new(shifted) as _),
            ("instance", Arc::new(instance) as _),
        ])?)
    }
}

fn row_functions_callables_and_splits_run_on_the_nodes(cluster: &Cluster) {
    use arrow::array::AsArray;
    let ctx = cluster.connect();
    let ids = ctx
        .read(
            manta::datasets::source::Source::Range { n: 20_000 },
            ReadOptions {
                rows_per_task: 1_000,
                ..Default::default()
            },
        )
        .unwrap();

    let mut described: Vec<Described> = ids
        .map(describe)
        .iter_rows()
        .unwrap()
        .collect::<manta::Result<_>>()
        .unwrap();
    described.sort_by_key(|d| d.id);
    let expected: Vec<Described> = (0..20_000).map(|id| describe::call(Id { id })).collect();
    assert_eq!(described, expected);

    let tmp = tempfile::tempdir().unwrap();
    let model = tmp.path().join("offset.txt");
    std::fs::write(&model, "7").unwrap();
    let scored = ids
        .map_batches_callable::<Offset>(
            model.to_string_lossy().into_owned(),
            MapBatchesOptions::default().concurrency(2),
        )
        .unwrap()
        .to_arrow()
        .unwrap();
    let mut shifted: Vec<i64> = Vec::new();
    let mut instances: std::collections::BTreeSet<u64> = std::collections::BTreeSet::new();
    for batch in &scored {
        shifted.extend(
            batch
                .column(0)
                .as_primitive::<arrow::datatypes::Int64Type>()
                .values(),
        );
        instances.extend(
            batch
                .column(1)
                .as_primitive::<arrow::datatypes::UInt64Type>()
                .values(),
        );
    }
    assert_eq!(shifted, (7..20_007).collect::<Vec<i64>>());
    assert!(
        instances.len() < 20,
        "each worker built its scorer once and reused it for its next blocks: {} instances for 20 blocks",
        instances.len()
    );

    let splits = ids.streaming_split(2).unwrap();
    let shares: Vec<Vec<i64>> = std::thread::scope(|scope| {
        let handles: Vec<_> = splits
            .into_iter()
            .map(|split| {
                scope.spawn(move || {
                    let mut ids = Vec::new();
                    for batch in split {
                        let batch = batch.unwrap();
                        ids.extend(
                            batch
                                .column(0)
                                .as_primitive::<arrow::datatypes::Int64Type>()
                                .values(),
                        );
                    }
                    ids
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let mut all: Vec<i64> = shares.concat();
    all.sort_unstable();
    assert_eq!(
        all,
        (0..20_000).collect::<Vec<i64>>(),
        "disjoint shares, every row once"
    );
}

#[manta::remote]
fn add(a: i64, b: i64) -> i64 {
    a + b
}

#[manta::remote]
fn count_up(n: u64) -> Vec<u64> {
    (0..n).collect()
}

#[manta::remote]
fn where_am_i() -> u32 {
    std::process::id()
}

#[manta::remote]
fn explode(at: i64) -> i64 {
    panic!("exploded at {at}")
}

/// Remote calls on the cluster: results match plain calls, refs travel as arguments between
/// nodes, `put` values are stored on a node, failures name the function.
fn remote_tasks_and_objects_run_on_the_nodes(cluster: &Cluster) {
    let ctx = cluster.connect();
    assert_eq!(ctx.get(&add.remote(&ctx, 5, 10)).unwrap(), 15);
    // More calls than the head runs at once (`MAX_IN_FLIGHT`): the rest wait in the driver's
    // queue and the stream's flow control, and every one still answers.
    let calls = 3 * manta::scheduler::task_stream::MAX_IN_FLIGHT as i64;
    let products: Vec<_> = (0..calls).map(|i| add.remote(&ctx, i, i * i)).collect();
    let expected: Vec<i64> = (0..calls).map(|i| add::call(i, i * i)).collect();
    assert_eq!(ctx.get_all(&products).unwrap(), expected);

    // Small results come back inline, large ones stay in a node's store: one `get_all` reads
    // the first in place and fetches the others, and keeps the order.
    let sizes: Vec<u64> = (0..12)
        .map(|i| if i % 3 == 0 { 100_000 } else { i })
        .collect();
    let mixed: Vec<_> = sizes.iter().map(|&n| count_up.remote(&ctx, n)).collect();
    let expected: Vec<Vec<u64>> = sizes.iter().map(|&n| count_up::call(n)).collect();
    assert_eq!(ctx.get_all(&mixed).unwrap(), expected);

    // A tree of additions over put values: each level takes the refs of the one below.
    let mut level: Vec<_> = (0..64i64).map(|i| ctx.put(&i).unwrap()).collect();
    while level.len() > 1 {
        level = level
            .chunks(2)
            .map(|pair| add.remote(&ctx, &pair[0], &pair[1]))
            .collect();
    }
    assert_eq!(ctx.get(&level[0]).unwrap(), (0..64i64).sum::<i64>());

    // Tasks run in worker processes, not in the driver.
    let pids: Vec<_> = (0..8).map(|_| where_am_i.remote(&ctx)).collect();
    let pids = ctx.get_all(&pids).unwrap();
    assert!(pids.iter().all(|&p| p != std::process::id()), "{pids:?}");

    let error = ctx.get(&explode.remote(&ctx, 7)).unwrap_err().to_string();
    assert!(
        error.contains("explode") && error.contains("exploded at 7"),
        "{error}"
    );

    // Record batches as arguments and results: by value, put on a node, chained between tasks.
    use common::batch_tasks::{numbers, scale_x, scaled};
    // A small batch value travels inside the task, a large one (8 MiB, past gRPC's 4 MiB
    // message limit) through a node's store.
    for rows in [50_000, 1 << 20] {
        let batch = numbers(rows);
        let stored = ctx.put_batch(batch.clone()).unwrap();
        let by_value = scale_x.remote(&ctx, batch.clone(), 2);
        let chained = scale_x.remote(&ctx, &scale_x.remote(&ctx, &stored, 3), 5);
        assert_eq!(ctx.get_batch(&by_value).unwrap(), scaled(&batch, 2));
        assert_eq!(ctx.get_batch(&chained).unwrap(), scaled(&batch, 15));
        assert_eq!(ctx.get_batch(&stored).unwrap(), batch);
    }
    // A put larger than a gRPC message is pushed to a node over Flight.
    let big: Vec<u64> = (0..1_000_000).collect();
    let stored = ctx.put(&big).unwrap();
    assert_eq!(ctx.get(&stored).unwrap(), big);
    assert_eq!(
        ctx.get(&sum_all.remote(&ctx, &stored)).unwrap(),
        big.iter().sum::<u64>()
    );
}

#[manta::remote]
fn sum_all(values: Vec<u64>) -> u64 {
    values.iter().sum()
}

/// Aborts its worker process the first time (marked by a file), answers the second.
#[manta::remote]
fn die_once(marker: String, answer: i64) -> i64 {
    if std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(&marker)
        .is_ok()
    {
        std::process::abort();
    }
    answer
}

fn a_task_whose_worker_dies_is_retried(cluster: &Cluster) {
    let ctx = cluster.connect();
    let tmp = tempfile::tempdir().unwrap();
    let marker = tmp.path().join("died").to_str().unwrap().to_string();
    assert_eq!(
        ctx.get(&die_once.remote(&ctx, marker.clone(), 42)).unwrap(),
        42
    );
    assert!(
        std::path::Path::new(&marker).exists(),
        "the first attempt ran"
    );
    // With no retries, the death is the answer.
    let options = manta::tasks::TaskOptions {
        max_retries: 0,
        ..Default::default()
    };
    let marker = tmp.path().join("died-again").to_str().unwrap().to_string();
    let error = ctx
        .get(&die_once.remote_with(&ctx, &options, marker, 42))
        .unwrap_err()
        .to_string();
    assert!(error.contains("die_once"), "{error}");
}

#[manta::remote]
fn shout(text: String) -> String {
    text.to_uppercase()
}

/// Reads a line from a named pipe: blocks until the test writes it.
#[manta::remote]
fn read_pipe(path: String) -> String {
    std::fs::read_to_string(path).unwrap()
}

fn wait_and_get_time_out_on_a_task_that_is_not_done(cluster: &Cluster) {
    let ctx = cluster.connect();
    let tmp = tempfile::tempdir().unwrap();
    let pipe = tmp.path().join("pipe");
    let c_path = std::ffi::CString::new(pipe.to_str().unwrap()).unwrap();
    // SAFETY: mkfifo with a valid C string.
    assert_eq!(unsafe { libc::mkfifo(c_path.as_ptr(), 0o600) }, 0);
    let blocked = read_pipe.remote(&ctx, pipe.to_str().unwrap().to_string());
    let quick = shout.remote(&ctx, "quick".to_string());
    let all = vec![quick.clone(), blocked.clone()];
    assert_eq!(ctx.get(&quick).unwrap(), "QUICK");

    let timeout = std::time::Duration::from_millis(300);
    let (done, rest) = ctx.wait(&all, 2, Some(timeout));
    assert_eq!((done.len(), rest.len()), (1, 1));
    assert!(!blocked.is_ready());
    let error = ctx.get_timeout(&blocked, timeout).unwrap_err().to_string();
    assert!(error.contains("not ready"), "{error}");

    // Opening the pipe for writing lets the task go on.
    std::fs::write(&pipe, "hello from the test").unwrap();
    assert_eq!(ctx.get(&blocked).unwrap(), "hello from the test");
    let (done, rest) = ctx.wait(&all, 2, None);
    assert_eq!((done.len(), rest.len()), (2, 0));
}

/// A running total, where it runs, and a call that blocks on a named pipe.
pub struct Tally {
    total: i64,
}

#[manta::actor]
impl Tally {
    pub fn new(start: i64) -> Self {
        Tally { total: start }
    }

    pub fn add(&mut self, x: i64) -> i64 {
        self.total += x;
        self.total
    }

    pub fn pid(&self) -> u32 {
        std::process::id()
    }

    pub fn read_pipe(&mut self, path: String) -> String {
        std::fs::read_to_string(path).unwrap()
    }

    /// The address of the node whose worker runs this actor.
    pub fn node(&self) -> String {
        this_node()
    }
}

fn make_pipe(dir: &std::path::Path) -> String {
    let pipe = dir.join("pipe");
    let c_path = std::ffi::CString::new(pipe.to_str().unwrap()).unwrap();
    // SAFETY: mkfifo with a valid C string.
    assert_eq!(unsafe { libc::mkfifo(c_path.as_ptr(), 0o600) }, 0);
    pipe.to_str().unwrap().to_string()
}

/// Calls on a cluster actor run in order in one worker process, refs from tasks on either node
/// are arguments, named actors are found, a killed actor answers with errors.
fn actors_run_in_their_own_worker_in_call_order(cluster: &Cluster) {
    let ctx = cluster.connect();
    let options = manta::ActorOptions {
        name: Some("tally".into()),
        resources: manta::Resources {
            cpus: 1.0,
            ..Default::default()
        },
        ..Default::default()
    };
    let tally = Tally::remote_with(&ctx, &options, 1000).unwrap();
    let inputs: Vec<i64> = (0..300).map(|i| (i * 31) % 17 - 8).collect();
    let totals: Vec<_> = inputs.iter().map(|&x| tally.add(x)).collect();
    let mut local = Tally::new(1000);
    let expected: Vec<i64> = inputs.iter().map(|&x| local.add(x)).collect();
    assert_eq!(ctx.get_all(&totals).unwrap(), expected);

    let pids: Vec<_> = (0..4).map(|_| tally.pid()).collect();
    let pids = ctx.get_all(&pids).unwrap();
    assert!(
        pids.iter()
            .all(|&p| p == pids[0] && p != std::process::id()),
        "{pids:?}"
    );

    // Task results (from any node) as arguments; the actor holds one of the two CPUs, so the
    // tasks run on the other node meanwhile.
    let sums: Vec<_> = (0..10i64).map(|i| add.remote(&ctx, i, 1)).collect();
    let after: Vec<_> = sums.iter().map(|s| tally.add(s)).collect();
    let base = *expected.last().unwrap();
    let expected: Vec<i64> = (1..=10i64)
        .scan(base, |t, x| {
            *t += x;
            Some(*t)
        })
        .collect();
    assert_eq!(ctx.get_all(&after).unwrap(), expected);

    let found = ctx.get_actor::<Tally>("tally").unwrap();
    assert_eq!(ctx.get(&found.add(0)).unwrap(), *expected.last().unwrap());
    tally.kill();
    let error = ctx.get(&found.add(1)).unwrap_err().to_string();
    assert!(error.contains("add") && error.contains("killed"), "{error}");
    // Its CPU is free again: a task asking for a whole node's CPU on each node runs.
    let full = manta::tasks::TaskOptions::default();
    let both: Vec<_> = (0..2).map(|i| add.remote_with(&ctx, &full, i, 0)).collect();
    assert_eq!(ctx.get_all(&both).unwrap(), [0, 1]);
}

/// Killing an actor's worker process: the calls it had fail naming themselves, the actor starts
/// again with its constructor's state, and once its restarts are spent it stays dead.
fn an_actor_whose_worker_dies_is_restarted_and_its_lost_calls_fail(cluster: &Cluster) {
    let ctx = cluster.connect();
    let tmp = tempfile::tempdir().unwrap();
    let pipe = make_pipe(tmp.path());
    let options = manta::ActorOptions {
        max_restarts: 1,
        ..Default::default()
    };
    let tally = Tally::remote_with(&ctx, &options, 100).unwrap();
    assert_eq!(ctx.get(&tally.add(5)).unwrap(), 105);
    let pid = ctx.get(&tally.pid()).unwrap();
    let blocked = tally.read_pipe(pipe.clone());
    let queued = tally.add(1);
    // SAFETY: kill(2) of the actor's worker process.
    assert_eq!(unsafe { libc::kill(pid as i32, libc::SIGKILL) }, 0);
    let errors = [
        (ctx.get(&blocked).unwrap_err().to_string(), "read_pipe"),
        (ctx.get(&queued).unwrap_err().to_string(), "add"),
    ];
    for (error, method) in errors {
        assert!(error.contains(method) && error.contains("died"), "{error}");
    }
    // The new incarnation starts from the constructor's state.
    assert_eq!(ctx.get(&tally.add(1)).unwrap(), 101);
    let new_pid = ctx.get(&tally.pid()).unwrap();
    assert_ne!(new_pid, pid);

    // SAFETY: as above.
    assert_eq!(unsafe { libc::kill(new_pid as i32, libc::SIGKILL) }, 0);
    let lost = ctx.get(&tally.add(1)).unwrap_err().to_string();
    assert!(lost.contains("add"), "{lost}");
    let dead = ctx.get(&tally.add(1)).unwrap_err().to_string();
    assert!(dead.contains("no restarts left"), "{dead}");
}

/// A grid search with trials as tasks, and an ASHA search with trials as actors, on the nodes.
fn tune_runs_trials_as_tasks_and_actors_on_the_nodes(cluster: &Cluster) {
    use common::trainables::{Climber, grid, objective, quadratic};
    use manta::tune::{Asha, Mode, SearchSpace, TuneConfig, Tuner, grid_search};

    let ctx = cluster.connect();
    let results = Tuner::new(&ctx, quadratic, grid())
        .with_config(TuneConfig::new("score", Mode::Max).progress(false))
        .fit()
        .unwrap();
    assert_eq!(results.trials().len(), 8);
    for trial in results.trials() {
        let (x, y): (f64, f64) = (
            trial.config.get("x").unwrap(),
            trial.config.get("y").unwrap(),
        );
        assert_eq!(trial.metrics["score"], objective(x, y));
        assert_ne!(trial.metrics["pid"], f64::from(std::process::id()));
    }
    let best = results.best().unwrap();
    assert_eq!(best.config.get::<f64>("x").unwrap(), 3.0);
    assert_eq!(best.config.get::<f64>("y").unwrap(), -1.0);

    let space = SearchSpace::new().with("rate", grid_search([4.0, 2.0, 1.0, 0.5, 0.2, 0.1]));
    let asha = Asha {
        grace_period: 1,
        reduction_factor: 2.0,
        max_t: 8,
    };
    let results = Tuner::with_class::<Climber>(&ctx, space)
        .with_config(
            TuneConfig::new("height", Mode::Max)
                .scheduler(asha)
                .max_iterations(8)
                .progress(false),
        )
        .fit()
        .unwrap();
    assert_eq!(results.errors().count(), 0);
    let best = results.best().unwrap();
    assert_eq!(best.config.get::<f64>("rate").unwrap(), 4.0);
    assert_eq!(best.metrics["height"], 32.0);
    assert!(results.trials().iter().any(|t| t.stopped_early));
}

/// SQL over `lineitem` (a dataset some of whose blocks died with their node) gives the answers
/// DataFusion gives: semi and anti joins of a small file against it (the lineitem side,
/// reduced in its tasks to the lines matching the file's keys), and filters by scalar
/// subqueries over it, which run in tasks given the subquery's value as a literal. The first
/// query's stage over lineitem, one given such a value, reads the lost blocks made again.
fn sql_over_lost_blocks_matches_datafusion(
    ctx: &manta::Context,
    lineitem: &manta::Dataset,
    df: &datafusion::prelude::SessionContext,
    dir: &std::path::Path,
) {
    let keys: Vec<Option<i64>> = (0..400)
        .map(|i| (i % 13 != 0).then_some(i * 37 % 20_000))
        .collect();
    let batch =
        RecordBatch::try_from_iter([("k", Arc::new(arrow::array::Int64Array::from(keys)) as _)])
            .unwrap();
    let path = dir.join("keys.parquet");
    let mut writer = parquet::arrow::ArrowWriter::try_new(
        std::fs::File::create(&path).unwrap(),
        batch.schema(),
        None,
    )
    .unwrap();
    writer.write(&batch).unwrap();
    writer.close().unwrap();
    let path = path.to_str().unwrap();
    ctx.register_parquet("keys", path).unwrap();
    ctx.register("lineitem", lineitem).unwrap();
    tokio::runtime::Runtime::new()
        .unwrap()
        .block_on(df.register_parquet("keys", path, Default::default()))
        .unwrap();
    for query in [
        // The first to read lineitem: its aggregate's map side, filtered by the value of a
        // subquery over the file, reads the lost blocks.
        "SELECT l_returnflag, count(*), sum(l_quantity) FROM lineitem \
         WHERE l_orderkey > (SELECT avg(k) FROM keys) GROUP BY l_returnflag",
        "SELECT k FROM keys WHERE k > (SELECT min(l_orderkey) FROM lineitem \
         WHERE l_returnflag = 'R') AND NOT EXISTS (SELECT 1 FROM lineitem WHERE l_orderkey = k)",
    ] {
        let physical = tpch::physical_plan_of(ctx, query);
        assert!(
            under_a_stage(&physical, "scalar_subquery"),
            "the filter by a scalar subquery runs in tasks:\n{physical}"
        );
        let ours = sorted(rows(&ctx.sql(query).unwrap().to_arrow().unwrap()));
        assert_eq!(ours, sorted(rows(&sql(df, query))), "{query}");
    }
    for query in [
        "SELECT k FROM keys WHERE EXISTS (SELECT 1 FROM lineitem \
         WHERE l_orderkey = k AND l_returnflag = 'R')",
        "SELECT k FROM keys WHERE NOT EXISTS (SELECT 1 FROM lineitem WHERE l_orderkey = k)",
    ] {
        let plan = rows(
            &ctx.sql(&format!("EXPLAIN {query}"))
                .unwrap()
                .to_arrow()
                .unwrap(),
        );
        assert!(
            plan.iter()
                .any(|line| line.contains("mode=CollectLeft, join_type=RightSemi")),
            "lineitem's side is reduced: {plan:?}"
        );
        let ours = sorted(rows(&ctx.sql(query).unwrap().to_arrow().unwrap()));
        assert_eq!(ours, sorted(rows(&sql(df, query))), "{query}");
    }
}

/// SIGKILLs the node daemon at `address`, one of `cluster`'s.
fn kill_node_at(cluster: &mut Cluster, address: &str) {
    let index = cluster
        .nodes
        .iter()
        .position(|n| n.address.trim_end_matches('/') == address.trim_end_matches('/'))
        .unwrap_or_else(|| panic!("{address} is one of the cluster's nodes"));
    let node = cluster.nodes.remove(index);
    // SAFETY: kill(2) of a node daemon the test started.
    assert_eq!(unsafe { libc::kill(node.pid() as i32, libc::SIGKILL) }, 0);
}

/// Killing the node an actor runs on: the head notices the missed heartbeats and starts the
/// actor again on the other node. A cluster of its own, since a node dies.
fn an_actor_whose_node_dies_is_restarted_on_another_node(_shared: &Cluster) {
    let mut cluster = Cluster::start(&["a=1", "b=1"]);
    let ctx = cluster.connect();
    let options = manta::ActorOptions {
        max_restarts: 1,
        ..Default::default()
    };
    let tally = Tally::remote_with(&ctx, &options, 7).unwrap();
    assert_eq!(ctx.get(&tally.add(3)).unwrap(), 10);
    let first_node = ctx.get(&tally.node()).unwrap();
    kill_node_at(&mut cluster, &first_node);
    // Calls made after the death reach the new incarnation, which starts from scratch.
    let mut answer = ctx.get(&tally.add(1));
    if answer.is_err() {
        // The first call may have been sent to the dead node before the driver noticed.
        answer = ctx.get(&tally.add(1));
    }
    assert_eq!(answer.unwrap(), 8);
    let second_node = ctx.get(&tally.node()).unwrap();
    assert_ne!(second_node, first_node);
}

/// The address of the node whose worker runs the task.
fn this_node() -> String {
    std::env::var("MANTA_WORKER_NODE_ADDRESS").unwrap_or_default()
}

#[manta::remote]
fn numbers_on_node(count: u64) -> (String, Vec<u64>) {
    (this_node(), (0..count).collect())
}

#[manta::remote]
fn concat_on_node(a: (String, Vec<u64>), b: (String, Vec<u64>)) -> (String, Vec<u64>) {
    (this_node(), a.1.into_iter().chain(b.1).collect())
}

/// Killing the node that holds task outputs: each is made again by running its task on the
/// other node, its lost inputs first, whether the driver still holds them or not. (Outputs are
/// large enough to live in the node's store: small results come back inline and are never
/// lost.) A cluster of its own, since a node dies.
fn task_outputs_lost_with_their_node_are_rebuilt_from_lineage(_shared: &Cluster) {
    let mut cluster = Cluster::start(&["a=1", "b=1"]);
    let ctx = cluster.connect();
    let expected = |counts: &[u64]| -> Vec<u64> { counts.iter().flat_map(|&n| 0..n).collect() };
    let numbers = numbers_on_node.remote(&ctx, 200_000);
    let empty = numbers_on_node.remote(&ctx, 0);
    // Placed with its largest input, on the same node as `numbers`; the middle call's ref is
    // dropped at once, so only its lineage is left.
    let joined = concat_on_node.remote(&ctx, &numbers, &numbers_on_node.remote(&ctx, 100_000));
    let (doomed, values) = ctx.get(&joined).unwrap();
    assert_eq!(values, expected(&[200_000, 100_000]));
    assert_eq!(ctx.get(&numbers).unwrap().0, doomed, "placed by locality");

    kill_node_at(&mut cluster, &doomed);

    // A new task whose input was on the dead node: the node asked to run it cannot pull the
    // input, so the driver makes the input again and submits the task again.
    let later = concat_on_node.remote(&ctx, &numbers, &empty);
    let (later_node, values) = ctx.get(&later).unwrap();
    assert_eq!(values, expected(&[200_000]));
    assert_ne!(later_node, doomed);
    // A lost output fetched by the driver: made again, and its dropped input with it.
    let (rebuilt_node, values) = ctx.get(&joined).unwrap();
    assert_eq!(values, expected(&[200_000, 100_000]));
    assert_ne!(rebuilt_node, doomed);
    let (numbers_node, values) = ctx.get(&numbers).unwrap();
    assert_eq!(values, expected(&[200_000]));
    assert_ne!(numbers_node, doomed);
}

/// Killing a node that holds a materialized dataset's blocks: SQL filters by scalar subqueries
/// and semi and anti joins, a shuffle and sort, a groupby and a plain read of the dataset
/// afterwards all give the answers DataFusion gives over the same file, the lost blocks made
/// again from their read tasks (map tasks that find an input gone, and the driver reading a
/// lost block, both remake it). A cluster of its own, since a node dies.
fn dataset_blocks_lost_with_their_node_are_made_again(_shared: &Cluster) {
    use manta::SortKey;
    let dashboard = free_port().to_string();
    let mut cluster = Cluster::start_with_head(
        &["--head", "--port", "0", "--dashboard-port", &dashboard],
        &["a=1", "b=1"],
    );
    let tmp = tempfile::tempdir().unwrap();
    let input = small_lineitem(tmp.path());
    let df = lineitem_sql(&input);
    let ctx = cluster.connect();
    let lineitem = ctx
        .read_parquet_with(input.to_str().unwrap(), small_tasks())
        .unwrap()
        .select_columns(&["l_orderkey", "l_linenumber", "l_returnflag", "l_quantity"])
        .materialize()
        .unwrap();
    let tasks = lineitem.num_blocks().unwrap();
    assert!(tasks > 4, "blocks on both nodes");

    // Both nodes hold blocks: each has one CPU, and the first two reads start at once.
    let before = manta::scheduler::lineage::remade();
    let doomed = cluster.nodes[0].address.clone();
    kill_node_at(&mut cluster, &doomed);

    sql_over_lost_blocks_matches_datafusion(&ctx, &lineitem, &df, tmp.path());
    let sorted_rows = lineitem
        .random_shuffle(Some(5))
        .sort_by(vec![
            SortKey::asc("l_orderkey"),
            SortKey::desc("l_linenumber"),
        ])
        .to_arrow()
        .unwrap();
    let expected = sql(
        &df,
        "SELECT l_orderkey, l_linenumber, l_returnflag, l_quantity FROM lineitem \
         ORDER BY l_orderkey, l_linenumber DESC",
    );
    let (ours, expected) = (rows(&sorted_rows), rows(&expected));
    assert!(
        ours == expected,
        "sorted: {} rows, {} expected",
        ours.len(),
        expected.len()
    );

    groupby_matches_sql(&lineitem, &df);

    let all = lineitem.to_arrow().unwrap();
    let expected = sql(
        &df,
        "SELECT l_orderkey, l_linenumber, l_returnflag, l_quantity FROM lineitem",
    );
    let (ours, expected) = (sorted(rows(&all)), sorted(rows(&expected)));
    assert!(
        ours == expected,
        "{} rows read back, {} expected",
        ours.len(),
        expected.len()
    );
    let remade = manta::scheduler::lineage::remade();
    assert!(
        remade.objects > before.objects && remade.rows > before.rows,
        "the dead node's blocks were made again: {remade:?}"
    );
    // The head's cluster events say so too, beside the node's loss.
    let port: u16 = cluster
        .head
        .address
        .rsplit(':')
        .next()
        .unwrap()
        .parse()
        .unwrap();
    let token = std::fs::read_to_string(manta::scheduler::cluster_token::token_file(port)).unwrap();
    let api = format!("127.0.0.1:{dashboard}");
    eventually(
        "the head lists the reconstructions and the lost node",
        || {
            let (code, events) = http(&api, "GET", "/api/events", Some(token.trim()), "");
            assert_eq!(code, 200, "{events}");
            let kinds: Vec<String> = serde_json::from_str::<serde_json::Value>(&events)
                .unwrap()
                .as_array()
                .unwrap()
                .iter()
                .map(|e| e["kind"].as_str().unwrap().to_string())
                .collect();
            kinds.iter().any(|k| k == "lineage_reconstruction")
                && kinds.iter().any(|k| k == "node_lost")
        },
    );
}

/// The quickstart (read → filter, columns and a batch function), consumed as a stream: a node
/// is killed once the first batch has arrived, while blocks are being read, mapped and waiting
/// on both nodes. The rows that come out are exactly DataFusion's answer over the same file:
/// tasks that ran on the dead node ran again elsewhere, and blocks it held were made again.
/// A cluster of its own, since a node dies.
fn the_quickstart_survives_a_node_killed_mid_run(_shared: &Cluster) {
    let mut cluster = Cluster::start(&["a=1", "b=1"]);
    let tmp = tempfile::tempdir().unwrap();
    let input = small_lineitem(tmp.path());
    let ctx = cluster.connect();
    let ds = etl(&ctx, &input, small_tasks(), MapBatchesOptions::default());
    let mut batches = ds.iter_batches().unwrap();
    let mut checksum = manta::Checksum::default();
    checksum.update(&batches.next().unwrap().unwrap()).unwrap();

    let doomed = cluster.nodes[0].address.clone();
    kill_node_at(&mut cluster, &doomed);

    for batch in batches {
        checksum.update(&batch.unwrap()).unwrap();
    }
    assert_eq!(checksum, expected_etl(&input));
}

/// A driver reaches its head through a relay, and the relay's link is cut (a partition: bytes
/// stop, nothing closes). A call made after the cut does not hang: keepalive gives the
/// connection up within seconds and the call fails naming the head's address as the driver
/// knows it. A cluster of its own, so that its head's tasks are not disturbed.
fn a_driver_cut_off_from_its_head_fails_naming_the_head(_shared: &Cluster) {
    let cluster = Cluster::start(&["a=1"]);
    let head_port = cluster
        .head
        .address
        .rsplit(':')
        .next()
        .unwrap()
        .trim_end_matches('/');
    let relay = common::Relay::start(&format!("127.0.0.1:{head_port}"));
    let token = manta::scheduler::cluster_token::resolve(None, &cluster.head.address).unwrap();
    let ctx = manta::init_with(Config {
        address: Some(format!("http://{}", relay.address)),
        token: Some(token),
        ..Default::default()
    })
    .unwrap();
    assert_eq!(ctx.get(&add.remote(&ctx, 1, 2)).unwrap(), 3);

    relay.cut();
    let cut_at = std::time::Instant::now();
    let (answer, answered) = std::sync::mpsc::channel();
    let driver = ctx.clone();
    std::thread::spawn(move || {
        let result = driver.get(&add.remote(&driver, 2, 3));
        let _ = answer.send(result.map_err(|e| e.to_string()));
    });
    let error = answered
        .recv_timeout(std::time::Duration::from_secs(120))
        .expect("a call on a cut link is still waiting after two minutes")
        .unwrap_err();
    println!(
        "after {:.1} s on a cut link: {error}",
        cut_at.elapsed().as_secs_f64()
    );
    assert!(error.contains(&relay.address), "{error}");
    assert!(error.contains("head"), "{error}");
}

/// Live and dead nodes in the head's table, as a driver sees them.
fn node_table(ctx: &manta::Context) -> (usize, usize) {
    let manta::scheduler::Client::Cluster(cluster) = ctx.client() else {
        panic!("a cluster driver")
    };
    let nodes = ctx.block_on(cluster.nodes()).unwrap();
    (nodes.iter().filter(|n| n.alive).count(), nodes.len())
}

/// The head is SIGKILLed under a running driver: the driver's next call fails naming the head;
/// the node stops the job's worker processes but keeps running, and rejoins a head restarted
/// on the same address with the same token, which then runs a new driver's tasks on it. Before
/// that, a node that dies is listed as dead and then forgotten. A cluster of its own.
fn a_lost_head_fails_its_driver_and_its_nodes_rejoin_it_restarted(_shared: &Cluster) {
    let port = free_port().to_string();
    let token = manta::Token::generate();
    let head_args = [
        "--head",
        "--port",
        &port,
        "--token",
        token.secret(),
        "--forget-dead-nodes-after",
        "1",
        "--num-cpus",
        "0",
    ];
    let mut head = Process::start(&head_args);
    let node_args = |head: &Process| {
        [
            "--address".to_string(),
            head.address.clone(),
            "--num-cpus".into(),
            "1".into(),
            "--object-store-memory".into(),
            "256MiB".into(),
            "--token".into(),
            token.secret().to_string(),
        ]
    };
    let start_node = |head: &Process| {
        let args = node_args(head);
        Process::start(&args.iter().map(String::as_str).collect::<Vec<_>>())
    };
    let node = start_node(&head);
    let doomed = start_node(&head);
    let connect = |head: &Process| {
        manta::init_with(Config {
            address: Some(head.address.clone()),
            token: Some(token.clone()),
            ..Default::default()
        })
        .unwrap()
    };
    let ctx = connect(&head);
    assert_eq!(ctx.get(&add.remote(&ctx, 1, 2)).unwrap(), 3);
    assert_eq!(node_table(&ctx), (2, 2));

    // SAFETY: kill(2) of a node daemon the test started.
    assert_eq!(unsafe { libc::kill(doomed.pid() as i32, libc::SIGKILL) }, 0);
    eventually("the dead node is listed dead", || {
        node_table(&ctx) == (1, 2)
    });
    eventually("the dead node is forgotten", || node_table(&ctx) == (1, 1));

    // The node left is the only one: this task's worker runs there.
    assert_eq!(ctx.get(&add.remote(&ctx, 3, 4)).unwrap(), 7);
    assert!(
        !children_of(node.pid()).is_empty(),
        "the job has a worker on the node"
    );
    // SAFETY: kill(2) of the head the test started.
    assert_eq!(unsafe { libc::kill(head.pid() as i32, libc::SIGKILL) }, 0);
    let error = ctx.get(&add.remote(&ctx, 2, 3)).unwrap_err().to_string();
    assert!(
        error.contains(&format!("127.0.0.1:{port}")) && error.contains("head"),
        "{error}"
    );
    eventually("the node stopped the lost job's workers", || {
        children_of(node.pid()).is_empty()
    });

    head = Process::start(&head_args);
    let again = connect(&head);
    eventually("the node rejoined the restarted head", || {
        node_table(&again) == (1, 1)
    });
    assert_eq!(again.get(&add.remote(&again, 20, 22)).unwrap(), 42);
    drop((node, doomed, head));
}

/// The quickstart written to Parquet, a node killed once the first part file is in the write's
/// temporary directory (blocks and write tasks in flight on both nodes): the output directory
/// holds exactly DataFusion's answer, each part once, and no temporary directory is left.
/// A cluster of its own, since a node dies.
fn a_write_whose_node_is_killed_mid_run_lands_whole(_shared: &Cluster) {
    let mut cluster = Cluster::start(&["a=1", "b=1"]);
    let tmp = tempfile::tempdir().unwrap();
    let input = small_lineitem(tmp.path());
    let out = tmp.path().join("out");
    let ctx = cluster.connect();
    let writing = {
        let (ctx, input, out) = (ctx.clone(), input.clone(), out.clone());
        std::thread::spawn(move || {
            etl(&ctx, &input, small_tasks(), MapBatchesOptions::default()).write_parquet(&out)
        })
    };
    let parts_in_progress = || {
        std::fs::read_dir(tmp.path())
            .unwrap()
            .flatten()
            .filter(|e| e.file_name().to_string_lossy().contains("manta-tmp"))
            .flat_map(|dir| std::fs::read_dir(dir.path()).into_iter().flatten())
            .count()
    };
    eventually("a part file is written, or the write is done", || {
        parts_in_progress() > 0 || writing.is_finished()
    });
    let doomed = cluster.nodes[0].address.clone();
    kill_node_at(&mut cluster, &doomed);

    let written = writing.join().unwrap().unwrap();
    assert_eq!(checksum_of_parquet_dir(&out), expected_etl(&input));
    assert_eq!(written.rows, expected_etl(&input).rows);
    let leftovers: Vec<_> = std::fs::read_dir(tmp.path())
        .unwrap()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().contains("manta-tmp"))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
}

/// `manta start --head --flight-sql-port P --table ...` and nothing else: the head is a node
/// too, so a query whose scan runs as tasks is answered (DataFusion's answer over the files).
fn a_head_alone_is_a_node_and_answers_flight_sql(_shared: &Cluster) {
    let orders = tpch::tables()
        .into_iter()
        .find(|(name, _)| *name == "orders")
        .unwrap()
        .1;
    let table = format!("orders={orders}");
    let head = Process::start(&[
        "--head",
        "--port",
        "0",
        "--num-cpus",
        "1",
        "--object-store-memory",
        "256MiB",
        "--flight-sql-port",
        "0",
        "--table",
        &table,
    ]);
    let query = "SELECT o_orderpriority, count(*) AS n, sum(o_totalprice) > 0 AS priced \
                 FROM orders WHERE o_orderstatus <> 'X' GROUP BY o_orderpriority \
                 ORDER BY o_orderpriority";
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_manta"))
        .args(["sql", "--flight-sql", head.flight_sql.as_ref().unwrap()])
        .args(["--format", "csv", query])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let df = datafusion::prelude::SessionContext::new();
    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime
        .block_on(df.register_parquet("orders", &orders, Default::default()))
        .unwrap();
    let expected = rows(&sql(&df, query));
    assert!(!expected.is_empty());
    let ours: Vec<String> = String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .skip(1)
        .map(|line| line.replace(',', "|"))
        .collect();
    assert_eq!(ours, expected);
}

/// A node started before its head keeps trying to join, and joins the head once it is up: a
/// driver's tasks then run on it (the head itself offers no CPUs).
fn a_node_started_before_its_head_joins_it_when_it_comes_up(_shared: &Cluster) {
    let port = free_port().to_string();
    let token = manta::Token::generate();
    let secret = token.secret().to_string();
    let head_address = format!("127.0.0.1:{port}");
    use std::io::BufRead;
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_manta"))
        .args(["start", "--address", &head_address, "--token", &secret])
        .args([
            "--num-cpus",
            "1",
            "--object-store-memory",
            "256MiB",
            "--block",
        ])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // Once the node says it is waiting for its head, the head starts.
    let mut stderr = std::io::BufReader::new(child.stderr.take().unwrap());
    let mut said = String::new();
    while !said.contains("waiting for the head at") {
        said.clear();
        assert!(stderr.read_line(&mut said).unwrap() > 0, "the node exited");
    }
    std::thread::spawn(move || std::io::copy(&mut stderr, &mut std::io::sink()));
    let _head = Process::start(&[
        "--head",
        "--port",
        &port,
        "--token",
        &secret,
        "--num-cpus",
        "0",
    ]);
    let mut ready = String::new();
    let mut stdout = std::io::BufReader::new(child.stdout.take().unwrap());
    stdout.read_line(&mut ready).unwrap();
    // Keep draining: worker processes inherit this pipe.
    std::thread::spawn(move || std::io::copy(&mut stdout, &mut std::io::sink()));
    assert!(ready.starts_with("MANTA_READY "), "{ready:?}");
    let _node = Process {
        child,
        address: ready.trim().to_string(),
        flight_sql: None,
    };
    let ctx = manta::init_with(Config {
        address: Some(head_address),
        token: Some(token),
        ..Default::default()
    })
    .unwrap();
    assert_eq!(ctx.get(&add.remote(&ctx, 20, 22)).unwrap(), 42);
    assert_eq!(node_table(&ctx), (1, 1));
}

/// A task that fits no live node waits for one: on a head with no nodes `manta status` shows
/// it pending, and it runs once a node joins; with `--pending-timeout 1` it fails after that second, naming what it asked for and
/// that there are no live nodes.
fn a_task_that_fits_no_node_waits_for_one(_shared: &Cluster) {
    let driver = |head: &Process| {
        manta::init_with(Config {
            address: Some(head.address.clone()),
            ..Default::default()
        })
        .unwrap()
    };
    let head = Process::start(&["--head", "--port", "0", "--num-cpus", "0"]);
    let ctx = driver(&head);
    let answer = add.remote(&ctx, 20, 22);
    // `manta status` shows it waiting, and why.
    eventually("manta status shows the waiting task", || {
        let status = std::process::Command::new(env!("CARGO_BIN_EXE_manta"))
            .args(["status", "--address", &head.address])
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&status.stdout);
        text.contains("Pending demand:")
            && text.contains("1 waiting for 1 CPU")
            && text.contains("no live node offers it")
    });
    let _node = Process::start(&["--address", &head.address, "--num-cpus", "1"]);
    assert_eq!(ctx.get(&answer).unwrap(), 42);

    let impatient = Process::start(&[
        "--head",
        "--port",
        "0",
        "--num-cpus",
        "0",
        "--pending-timeout",
        "1",
    ]);
    let ctx = driver(&impatient);
    let error = ctx.get(&add.remote(&ctx, 1, 2)).unwrap_err().to_string();
    assert!(
        error.contains("no node offers") && error.contains("no live nodes"),
        "{error}"
    );
}
