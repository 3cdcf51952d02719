//! Actors in embedded mode: calls run in order on one state, refs as arguments, named actors,
//! kill, and failures; each answer checked against the same calls on a plain local value.

use crate::common;

use common::embedded;
use common::gate::Gate;
use manta::ActorOptions;
use manta::tasks::Error;

/// A running total and a log of what it was given.
pub struct Tally {
    total: i64,
    log: Vec<i64>,
}

#[manta::actor]
impl Tally {
    pub fn new(start: i64) -> Self {
        Tally {
            total: start,
            log: Vec::new(),
        }
    }

    pub fn add(&mut self, x: i64) -> i64 {
        self.total += x;
        self.log.push(x);
        self.total
    }

    pub fn log(&self) -> Vec<i64> {
        self.log.clone()
    }

    pub fn divide(&mut self, by: i64) -> Result<i64, String> {
        if by == 0 {
            return Err(format!("cannot divide {} by zero", self.total));
        }
        self.total /= by;
        Ok(self.total)
    }

    pub fn explode(&self) -> i64 {
        panic!("tally exploded at {}", self.total)
    }
}

/// An actor whose constructor can fail.
pub struct Picky;

#[manta::actor]
impl Picky {
    pub fn new(ok: bool) -> Result<Self, String> {
        if ok {
            Ok(Picky)
        } else {
            Err("picky refused to start".into())
        }
    }

    pub fn hello(&self) -> String {
        "hello".into()
    }
}

#[manta::remote]
fn add(a: i64, b: i64) -> i64 {
    a + b
}

/// The gate of `a_call_waiting_for_a_ref_holds_back_the_calls_after_it`.
static GATE: Gate = Gate::new();

/// Returns `value` once the test opens the gate.
#[manta::remote]
fn gated(value: i64) -> i64 {
    GATE.pass();
    value
}

#[test]
fn calls_run_in_order_on_one_state() {
    let ctx = embedded();
    let tally = Tally::remote(&ctx, 10).unwrap();
    let inputs: Vec<i64> = (0..500).map(|i| (i * 7919) % 101 - 50).collect();
    let totals: Vec<_> = inputs.iter().map(|&x| tally.add(x)).collect();
    // The same calls on a local value.
    let mut local = Tally::new(10);
    let expected: Vec<i64> = inputs.iter().map(|&x| local.add(x)).collect();
    assert_eq!(ctx.get_all(&totals).unwrap(), expected);
    assert_eq!(ctx.get(&tally.log()).unwrap(), inputs);

    // Two actors of one class have separate states.
    let other = Tally::remote(&ctx, 0).unwrap();
    assert_eq!(ctx.get(&other.add(1)).unwrap(), 1);
    assert_eq!(ctx.get(&tally.add(0)).unwrap(), *expected.last().unwrap());
}

#[test]
fn a_call_waiting_for_a_ref_holds_back_the_calls_after_it() {
    let ctx = embedded();
    let tally = Tally::remote(&ctx, 0).unwrap();
    let slow = gated.remote(&ctx, 5);
    let first = tally.add(&slow); // waits for the gate
    let second = tally.add(1); // must not overtake it
    let third = tally.add(&add.remote(&ctx, 2, 3));
    assert!(!first.is_ready() && !second.is_ready());
    GATE.open();
    assert_eq!(ctx.get_all(&[first, second, third]).unwrap(), [5, 6, 11]);
    assert_eq!(ctx.get(&tally.log()).unwrap(), [5, 1, 5]);
}

#[test]
fn named_actors_are_found_by_name_and_class() {
    let ctx = embedded();
    let options = ActorOptions {
        name: Some("scores".into()),
        ..Default::default()
    };
    let tally = Tally::remote_with(&ctx, &options, 1).unwrap();
    assert_eq!(ctx.get(&tally.add(1)).unwrap(), 2);
    let found = ctx.get_actor::<Tally>("scores").unwrap();
    assert_eq!(found.id(), tally.id());
    assert_eq!(ctx.get(&found.add(3)).unwrap(), 5);

    let taken = Tally::remote_with(&ctx, &options, 0)
        .unwrap_err()
        .to_string();
    assert!(
        taken.contains("scores") && taken.contains("already"),
        "{taken}"
    );
    let wrong = ctx.get_actor::<Picky>("scores").unwrap_err().to_string();
    assert!(wrong.contains("Tally"), "{wrong}");
    assert!(ctx.get_actor::<Tally>("nobody").is_err());

    // Killed: calls fail naming the method, and the name is free again.
    tally.kill();
    let error = ctx.get(&found.add(1)).unwrap_err();
    assert!(
        matches!(&error, manta::Error::Task(Error::Task { source, .. })
            if matches!(**source, manta::scheduler::Error::ActorDied { .. })),
        "{error:?}"
    );
    assert!(error.to_string().contains("add") && error.to_string().contains("killed"));
    assert!(ctx.get_actor::<Tally>("scores").is_err());
    let again = Tally::remote_with(&ctx, &options, 7).unwrap();
    assert_eq!(ctx.get(&again.add(0)).unwrap(), 7);
}

#[test]
fn failures_name_the_method_and_the_actor_lives_on() {
    let ctx = embedded();
    let tally = Tally::remote(&ctx, 12).unwrap();
    let error = ctx.get(&tally.divide(0)).unwrap_err().to_string();
    assert!(
        error.contains("divide") && error.contains("cannot divide 12 by zero"),
        "{error}"
    );
    let error = ctx.get(&tally.explode()).unwrap_err().to_string();
    assert!(
        error.contains("explode") && error.contains("tally exploded at 12"),
        "{error}"
    );
    assert_eq!(ctx.get(&tally.divide(4)).unwrap(), 3);

    // A constructor that fails: every call says so.
    let picky = Picky::remote(&ctx, false).unwrap();
    let error = ctx.get(&picky.hello()).unwrap_err().to_string();
    assert!(
        error.contains("picky refused to start") && error.contains("hello"),
        "{error}"
    );
    let fine = Picky::remote(&ctx, true).unwrap();
    assert_eq!(ctx.get(&fine.hello()).unwrap(), "hello");

    // A failed ref argument fails the call, and the calls after it still run.
    let bad = tally.add(&tally.divide(0));
    let after = tally.add(1);
    let error = ctx.get(&bad).unwrap_err().to_string();
    assert!(error.contains("argument 0"), "{error}");
    assert_eq!(ctx.get(&after).unwrap(), 4);
}
