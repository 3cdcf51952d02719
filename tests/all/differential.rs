//! A differential fuzzer of the Dataset API: random pipelines over uneven Parquet files (nulls,
//! empty strings, unicode, one-row and all-null groups, files with no rows) run through Manta,
//! as is, fully partitioned and with reduce tasks over partition ranges, and through DataFusion
//! SQL over the same files; the answers must agree (numbers within 1e-9, nulls as nulls, order
//! where the pipeline promises one).
//!
//! `cargo test --release --test all differential::` runs a fixed set of cases (seeded, so
//! every run is the same). `MANTA_FUZZ_CASES=5000` runs more, `MANTA_FUZZ_SEED=<n>` other ones.
//! A failing case is shrunk (fewer steps, fewer rows) and printed as a reproducer: the pipeline
//! in Rust and in SQL, the tables' rows, and the case itself, which
//! `MANTA_FUZZ_CASE='Case { ... }'` reruns (`MANTA_FUZZ_KEEP=1` keeps its files).

use std::time::Instant;

use crate::fuzz;

use proptest::collection::vec;
use proptest::prelude::*;
use proptest::test_runner::{Config, RngAlgorithm, TestError, TestRng, TestRunner};

use fuzz::data::DataSpec;
use fuzz::pipeline::STEP_KINDS;
use fuzz::{Case, check, modes, reproducer};

/// Cases run by a plain `cargo test`.
const DEFAULT_CASES: u32 = 40;

fn env_number(name: &str) -> Option<u64> {
    let text = std::env::var(name).ok()?;
    Some(
        text.trim()
            .parse()
            .unwrap_or_else(|_| panic!("{name}={text:?} is not a whole number")),
    )
}

fn case_strategy() -> impl Strategy<Value = Case> {
    (
        any::<u64>(),
        0..120usize,
        vec((0..STEP_KINDS, any::<u64>()), 0..7),
        (0u8..6, any::<u64>()),
    )
        .prop_map(|(seed, max_rows, choices, end)| Case {
            data: DataSpec { seed, max_rows },
            choices,
            end,
        })
}

/// The case printed by a failure (`Case { data: DataSpec { seed: .., max_rows: .. }, choices:
/// [..], end: (..) }`), read back from its numbers.
fn parse_case(text: &str) -> Case {
    let numbers: Vec<u64> = text
        .split(|c: char| !c.is_ascii_digit())
        .filter(|t| !t.is_empty())
        .map(|t| t.parse().expect("a number"))
        .collect();
    assert!(
        numbers.len() >= 4 && numbers.len().is_multiple_of(2),
        "not a case: {text}"
    );
    let choices = numbers[2..numbers.len() - 2]
        .chunks(2)
        .map(|pair| (pair[0] as u8, pair[1]))
        .collect();
    Case {
        data: DataSpec {
            seed: numbers[0],
            max_rows: numbers[1] as usize,
        },
        choices,
        end: (numbers[numbers.len() - 2] as u8, numbers[numbers.len() - 1]),
    }
}

#[test]
fn random_pipelines_give_what_datafusion_sql_gives() {
    if let Ok(text) = std::env::var("MANTA_FUZZ_CASE") {
        // One case, as a failure printed it.
        let case = parse_case(&text);
        if let Err(reason) = check(&case, &modes()) {
            panic!("{}", reproducer(&case, &reason));
        }
        return;
    }
    let cases = env_number("MANTA_FUZZ_CASES").map_or(DEFAULT_CASES, |n| n as u32);
    let seed = env_number("MANTA_FUZZ_SEED").unwrap_or(16);
    let mut seed_bytes = [0u8; 32];
    seed_bytes[..8].copy_from_slice(&seed.to_le_bytes());
    let config = Config {
        cases,
        max_shrink_iters: 300,
        failure_persistence: None,
        ..Config::default()
    };
    let mut runner = TestRunner::new_with_rng(
        config,
        TestRng::from_seed(RngAlgorithm::ChaCha, &seed_bytes),
    );
    let modes = modes();
    let started = Instant::now();
    let result = runner.run(&case_strategy(), |case| {
        check(&case, &modes).map_err(TestCaseError::fail)
    });
    let seconds = started.elapsed().as_secs_f64();
    match result {
        Ok(()) => eprintln!(
            "{cases} random pipelines (seed {seed}) agree with SQL, in both modes: {:.1} cases/s",
            f64::from(cases) / seconds
        ),
        Err(TestError::Fail(reason, case)) => panic!(
            "a pipeline disagrees with SQL (MANTA_FUZZ_SEED={seed}); the smallest case found:\n{}",
            reproducer(&case, &reason.to_string())
        ),
        Err(TestError::Abort(reason)) => panic!("the fuzzer gave up: {reason}"),
    }
}
