//! End-to-end tests in embedded mode: the quickstart pipeline against DataFusion SQL, and bad
//! input getting clear errors with no partial output.

use crate::common;

use std::time::{Duration, Instant};

use manta::prelude::*;
use manta::{Config, Error, MapBatchesOptions};

use common::*;

#[test]
fn quickstart_pipeline_matches_datafusion_sql() {
    let tmp = tempfile::tempdir().unwrap();
    let input = small_lineitem(tmp.path());
    let ctx = embedded();
    let ds = etl(&ctx, &input, small_tasks(), MapBatchesOptions::default());
    let out = tmp.path().join("out");
    let written = ds.write_parquet(&out).unwrap();

    let expected = expected_etl(&input);
    assert!(
        expected.rows > 1000,
        "the filter keeps a good share of rows"
    );
    assert_eq!(written.rows, expected.rows);
    assert_eq!(checksum_of_parquet_dir(&out), expected);

    let stats = ds.stats();
    assert_eq!(
        stats.stages.len(),
        1,
        "read, filter, with_column, map_batches and write fuse into one stage"
    );
    assert!(
        stats.stages[0].tasks > 10,
        "one task per row group: {}",
        stats.stages[0].tasks
    );
    assert_eq!(
        stats.stages[0].rows_in,
        checksum_of_parquet_dir(&input).rows
    );
    assert_eq!(stats.pulled_bytes(), 0);

    // The same pipeline consumed three other ways.
    assert_eq!(ds.count().unwrap(), expected.rows);
    let mut iterated = manta::Checksum::default();
    for batch in ds.iter_batches().unwrap() {
        iterated.update(&batch.unwrap()).unwrap();
    }
    assert_eq!(iterated, expected);
    let first = ds.take(100).unwrap();
    assert_eq!(first.iter().map(|b| b.num_rows()).sum::<usize>(), 100);
    assert_eq!(
        first[0].schema().field(first[0].num_columns() - 1).name(),
        "l_shipmode_upper"
    );
}

#[test]
fn blocks_of_separate_stages_stream_through_the_store() {
    let tmp = tempfile::tempdir().unwrap();
    let input = small_lineitem(tmp.path());
    let mut config = Config {
        num_cpus: Some(2),
        ..Default::default()
    };
    config.custom_resources = [("b".to_string(), 1.0)].into();
    let ctx = manta::init_with(config).unwrap();
    // Asking map_batches for other resources makes it a second stage.
    let ds = etl(
        &ctx,
        &input,
        small_tasks(),
        MapBatchesOptions::default().resources(on("b")),
    );
    assert_eq!(ds.count().unwrap(), expected_etl(&input).rows);
    let stats = ds.stats();
    assert_eq!(stats.stages.len(), 2);
    assert_eq!(stats.stages[1].rows_in, stats.stages[0].rows_out);
    assert_eq!(stats.stages[0].tasks, stats.stages[1].tasks);
}

#[test]
fn missing_input_is_a_clear_error() {
    let ctx = embedded();
    match ctx.read_parquet("/no/such/dir/lineitem") {
        Err(Error::InputNotFound { path }) => assert_eq!(path, "/no/such/dir/lineitem"),
        other => panic!("expected InputNotFound, got {other:?}"),
    }
}

#[test]
fn a_file_that_is_not_parquet_is_named() {
    let tmp = tempfile::tempdir().unwrap();
    let bogus = tmp.path().join("notes.parquet");
    std::fs::write(&bogus, "this is not parquet").unwrap();
    let err = embedded()
        .read_parquet(tmp.path().to_str().unwrap())
        .unwrap_err();
    assert!(
        matches!(&err, Error::InvalidParquet { path, .. } if *path == bogus),
        "{err:?}"
    );
    assert!(err.to_string().contains("notes.parquet"));
}

#[test]
fn an_unknown_column_fails_before_any_task_and_writes_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let input = small_lineitem(tmp.path());
    let ds = embedded()
        .read_parquet(input.to_str().unwrap())
        .unwrap()
        .filter(col("l_no_such_column").gt(lit(1)));
    let out = tmp.path().join("out");
    let err = ds.write_parquet(&out).unwrap_err();
    assert!(matches!(err, Error::Plan { .. }), "{err:?}");
    let message = err.to_string();
    assert!(
        message.contains("l_no_such_column") && message.contains("l_discount"),
        "{message}"
    );
    assert_only_input_left(tmp.path());
}

#[manta::remote]
fn explode_on_late_rows(batch: RecordBatch) -> manta::Result<RecordBatch> {
    let keys = batch.column_by_name("l_orderkey").unwrap();
    let keys = keys
        .as_any()
        .downcast_ref::<arrow::array::Int64Array>()
        .unwrap();
    if keys.iter().flatten().any(|k| k > 50_000) {
        panic!("order key beyond 50000");
    }
    Ok(batch)
}

#[test]
fn a_panicking_function_fails_the_job_naming_it_and_leaves_no_output() {
    let tmp = tempfile::tempdir().unwrap();
    let input = small_lineitem(tmp.path());
    let out = tmp.path().join("out");
    let ds = embedded()
        .read_parquet_with(input.to_str().unwrap(), small_tasks())
        .unwrap()
        .map_batches(explode_on_late_rows);
    let err = ds.write_parquet(&out).unwrap_err();
    match &err {
        Error::Execution(manta::scheduler::Error::UserPanic {
            function,
            input,
            message,
        }) => {
            assert!(function.ends_with("explode_on_late_rows"), "{function}");
            assert!(input.contains("block"), "{input}");
            assert!(message.contains("order key beyond 50000"), "{message}");
        }
        other => panic!("expected a UserPanic, got {other:?}"),
    }
    assert_only_input_left(tmp.path());
}

#[test]
fn an_existing_output_is_replaced_whole() {
    let tmp = tempfile::tempdir().unwrap();
    let input = small_lineitem(tmp.path());
    let out = tmp.path().join("out");
    std::fs::create_dir(&out).unwrap();
    std::fs::write(out.join("stale.parquet"), "old").unwrap();
    let ds = embedded().read_parquet(input.to_str().unwrap()).unwrap();
    // Not by default: a directory that holds something is left alone.
    let err = ds.write_parquet(&out).unwrap_err();
    assert!(matches!(err, Error::OutputExists { .. }), "{err:?}");
    assert!(out.join("stale.parquet").exists());
    let written = ds
        .write_with(&out, WriteFormat::Parquet, WriteMode::Overwrite)
        .unwrap();
    assert!(!out.join("stale.parquet").exists());
    let whole_input = checksum_of_parquet_dir(&input);
    assert_eq!(written.rows, whole_input.rows);
    assert_eq!(checksum_of_parquet_dir(&out), whole_input);
}

#[test]
fn a_head_address_where_nothing_listens_is_answered_within_seconds() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    // The bound is generous: what is tested is that the driver does not hang.
    let started = Instant::now();
    let err = manta::init_with(Config {
        address: Some(format!("127.0.0.1:{port}")),
        ..Default::default()
    })
    .unwrap_err();
    assert!(started.elapsed() < Duration::from_secs(10));
    match &err {
        Error::Execution(manta::scheduler::Error::HeadUnreachable { address, .. }) => {
            assert!(address.contains(&port.to_string()))
        }
        other => panic!("expected HeadUnreachable, got {other:?}"),
    }
    assert!(err.to_string().contains("manta start --head"));
}

/// Only the generated input directory may remain: no output, no temporary directory.
fn assert_only_input_left(root: &std::path::Path) {
    let names: Vec<String> = std::fs::read_dir(root)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(
        names,
        vec!["sf0.01-rg4096".to_string()],
        "left behind: {names:?}"
    );
}
