//! Ray Core's tasks and objects in embedded mode: remote functions, refs as arguments, `put`,
//! `get_all`, `wait`, failures and retries; each answer checked against a plain Rust call.

use crate::common;

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use arrow::array::{ArrayRef, Int64Array, RecordBatch};
use common::batch_tasks::{numbers, scale_x, scaled};
use common::embedded;
use common::gate::Gate;
use manta::Context;
use manta::tasks::TaskOptions;

#[manta::remote]
fn add(a: i64, b: i64) -> i64 {
    a + b
}

#[manta::remote]
fn sum_all(values: Vec<i64>) -> i64 {
    values.iter().sum()
}

#[manta::remote]
fn describe(name: String, scores: Vec<f64>, weight: Option<f64>) -> (String, f64) {
    let total: f64 = scores.iter().sum::<f64>() * weight.unwrap_or(1.0);
    (name.to_uppercase(), total)
}

#[manta::remote]
fn checked_div(a: i64, b: i64) -> Result<i64, String> {
    if b == 0 {
        Err(format!("cannot divide {a} by zero"))
    } else {
        Ok(a / b)
    }
}

#[manta::remote]
fn explode(at: i64) -> i64 {
    panic!("exploded at {at}")
}

#[test]
fn a_remote_call_returns_what_a_plain_call_does() {
    let ctx = embedded();
    let sum = add.remote(&ctx, 5, 10);
    assert_eq!(ctx.get(&sum).unwrap(), add::call(5, 10));
    let described = describe.remote(&ctx, "iris".to_string(), vec![1.5, 2.5], Some(2.0));
    assert_eq!(
        ctx.get(&described).unwrap(),
        describe::call("iris".into(), vec![1.5, 2.5], Some(2.0))
    );
    // A one-argument function is a row function and a task function at once.
    let total = sum_all.remote(&ctx, vec![1, 2, 3]);
    assert_eq!(ctx.get(&total).unwrap(), 6);
}

#[test]
fn refs_passed_as_arguments_are_resolved_first() {
    let ctx = embedded();
    // A binary tree of additions over 0..256, each level taking the refs of the one below.
    let mut level: Vec<_> = (0..256i64).map(|i| ctx.put(&i).unwrap()).collect();
    while level.len() > 1 {
        level = level
            .chunks(2)
            .map(|pair| add.remote(&ctx, &pair[0], &pair[1]))
            .collect();
    }
    assert_eq!(ctx.get(&level[0]).unwrap(), (0..256i64).sum::<i64>());
    // Values and refs mix.
    let five = ctx.put(&5i64).unwrap();
    assert_eq!(ctx.get(&add.remote(&ctx, &five, 1)).unwrap(), 6);
}

#[test]
fn get_all_returns_every_value_in_order() {
    let ctx = embedded();
    let refs: Vec<_> = (0..2000i64).map(|i| add.remote(&ctx, i, i * i)).collect();
    let expected: Vec<i64> = (0..2000i64).map(|i| add::call(i, i * i)).collect();
    assert_eq!(ctx.get_all(&refs).unwrap(), expected);
}

#[test]
fn a_failing_task_names_its_function_and_its_error_reaches_dependents() {
    let ctx = embedded();
    let error = ctx.get(&explode.remote(&ctx, 7)).unwrap_err().to_string();
    assert!(
        error.contains("explode") && error.contains("exploded at 7"),
        "{error}"
    );
    let error = ctx
        .get(&checked_div.remote(&ctx, 3, 0))
        .unwrap_err()
        .to_string();
    assert!(
        error.contains("checked_div") && error.contains("cannot divide 3 by zero"),
        "{error}"
    );
    assert_eq!(ctx.get(&checked_div.remote(&ctx, 12, 4)).unwrap(), 3);
    // A task whose argument failed does not run; its error says which argument.
    let failed = explode.remote(&ctx, 1);
    let error = ctx
        .get(&add.remote(&ctx, 1, &failed))
        .unwrap_err()
        .to_string();
    assert!(
        error.contains("argument 1") && error.contains("exploded at 1"),
        "{error}"
    );
}

static FLAKY_CALLS: AtomicU32 = AtomicU32::new(0);

#[manta::remote]
fn flaky(fail_times: u32) -> u32 {
    let call = FLAKY_CALLS.fetch_add(1, Ordering::SeqCst);
    if call < fail_times {
        panic!("failure {call}");
    }
    call
}

#[test]
fn retry_exceptions_runs_a_failing_task_again() {
    let ctx = embedded();
    let options = TaskOptions {
        max_retries: 3,
        retry_exceptions: true,
        ..TaskOptions::default()
    };
    // Fails twice, then answers: the third call's number.
    assert_eq!(ctx.get(&flaky.remote_with(&ctx, &options, 2)).unwrap(), 2);
    // Without retry_exceptions the first failure is the answer.
    let error = ctx.get(&flaky.remote(&ctx, 10)).unwrap_err().to_string();
    assert!(error.contains("failure 3"), "{error}");
}

/// The gate of `wait_returns_when_enough_are_done_or_the_timeout_expires`.
static GATE: Gate = Gate::new();

#[manta::remote]
fn behind_gate(value: i64) -> i64 {
    GATE.pass();
    value
}

#[test]
fn wait_returns_when_enough_are_done_or_the_timeout_expires() {
    let ctx = embedded();
    let quick: Vec<_> = (0..3i64).map(|i| add.remote(&ctx, i, 0)).collect();
    let gated = behind_gate.remote(&ctx, 42);
    let mut all = quick.clone();
    all.push(gated.clone());

    // Three are done; asking for four expires with the gated one not done.
    assert_eq!(ctx.get_all(&quick).unwrap(), vec![0, 1, 2]);
    let (done, rest) = ctx.wait(&all, 4, Some(Duration::from_millis(200)));
    assert_eq!((done.len(), rest.len()), (3, 1));
    assert!(!rest[0].is_ready());
    let error = ctx
        .get_timeout(&gated, Duration::from_millis(10))
        .unwrap_err();
    assert!(error.to_string().contains("not ready"), "{error}");

    // At most num_returns come back as done.
    let (done, rest) = ctx.wait(&all, 2, None);
    assert_eq!((done.len(), rest.len()), (2, 2));

    GATE.open();
    let (done, rest) = ctx.wait(&all, 4, None);
    assert_eq!((done.len(), rest.len()), (4, 0));
    assert_eq!(ctx.get(&gated).unwrap(), 42);
}

/// The gate of `get_all_answers_a_failure_while_calls_before_it_run`.
static FAILURE_GATE: Gate = Gate::new();

#[manta::remote]
fn behind_failure_gate(value: i64) -> i64 {
    FAILURE_GATE.pass();
    value
}

/// The error `get_all` of `refs` answers, asked on a thread of its own and waited for at most a
/// minute, so that a `get_all` waiting for a gated call fails the test rather than hanging it.
fn get_all_error_within_a_minute(ctx: &Context, refs: Vec<manta::ObjectRef<i64>>) -> String {
    let (answer, answered) = std::sync::mpsc::channel();
    let getter = {
        let ctx = ctx.clone();
        std::thread::spawn(move || answer.send(ctx.get_all(&refs).map_err(|e| e.to_string())))
    };
    let error = answered
        .recv_timeout(Duration::from_secs(60))
        .expect("get_all answers the failure without waiting for the gated call")
        .unwrap_err();
    getter.join().unwrap().unwrap();
    error
}

#[test]
fn get_all_answers_a_failure_while_calls_before_it_run() {
    let ctx = embedded();
    let gated = behind_failure_gate.remote(&ctx, 7);
    let failed = explode.remote(&ctx, 3);
    let error = get_all_error_within_a_minute(&ctx, vec![gated.clone(), failed]);
    assert!(error.contains("exploded at 3"), "{error}");
    assert!(!gated.is_ready());

    // The failure in hand before get_all starts (what a busy machine makes of the above, now
    // and then): get_all answers it at once too, rather than waiting for the gated call.
    let failed = explode.remote(&ctx, 4);
    let (done, _) = ctx.wait(std::slice::from_ref(&failed), 1, None);
    assert_eq!(done.len(), 1);
    let error = get_all_error_within_a_minute(&ctx, vec![gated.clone(), failed]);
    assert!(error.contains("exploded at 4"), "{error}");
    assert!(!gated.is_ready());

    FAILURE_GATE.open();
    assert_eq!(ctx.get(&gated).unwrap(), 7);
}

#[test]
fn objects_are_freed_when_the_last_ref_drops() {
    let ctx = embedded();
    let before = ctx.client().local_store_usage().unwrap().objects;
    let data = ctx.put(&vec![7u8; 1 << 20]).unwrap();
    let sum = sum_bytes.remote(&ctx, &data);
    assert_eq!(ctx.get(&sum).unwrap(), 7 << 20);
    assert_eq!(
        ctx.client().local_store_usage().unwrap().objects,
        before + 2
    );
    drop(data);
    assert_eq!(
        ctx.client().local_store_usage().unwrap().objects,
        before + 1
    );
    drop(sum);
    assert_eq!(ctx.client().local_store_usage().unwrap().objects, before);
}

#[manta::remote]
fn sum_bytes(bytes: Vec<u8>) -> u64 {
    bytes.iter().map(|&b| b as u64).sum()
}

/// Where the batch's first buffer lives.
#[manta::remote]
fn buffer_address(batch: RecordBatch) -> u64 {
    batch.column(0).to_data().buffers()[0].as_ptr() as u64
}

#[test]
fn record_batches_are_arguments_and_results_zero_copy_in_process() {
    let ctx = embedded();
    let batch = numbers(10_000);
    // A batch value, a put batch, and a task's batch result as arguments.
    let by_value = scale_x.remote(&ctx, batch.clone(), 2);
    let stored = ctx.put_batch(batch.clone()).unwrap();
    let by_ref = scale_x.remote(&ctx, &stored, 3);
    let chained = scale_x.remote(&ctx, &by_ref, 5);
    for (object, factor) in [(&by_value, 2), (&by_ref, 3), (&chained, 15)] {
        let out = ctx.get_batch(object).unwrap();
        assert_eq!(out, scaled(&batch, factor));
    }
    // The task reads the very buffer the driver holds: nothing was copied.
    let address = batch.column(0).to_data().buffers()[0].as_ptr() as u64;
    assert_eq!(
        ctx.get(&buffer_address.remote(&ctx, &stored)).unwrap(),
        address
    );
    assert_eq!(
        ctx.get(&buffer_address.remote(&ctx, batch.clone()))
            .unwrap(),
        address
    );
    let missing =
        RecordBatch::try_from_iter([("y", Arc::new(Int64Array::from(vec![1])) as ArrayRef)])
            .unwrap();
    let error = ctx
        .get_batch(&scale_x.remote(&ctx, missing, 2))
        .unwrap_err()
        .to_string();
    assert!(
        error.contains("scale_x") && error.contains("no column x"),
        "{error}"
    );
}
