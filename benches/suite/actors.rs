//! `actors`: 100,000 method calls on one actor, then on 2 actors from 2 caller threads
//! (calls/s), embedded or on the cluster at `--address`.

use crate::{Args, timed};

const CALLS: usize = 100_000;

/// A counter: each call is one small state change and a small result.
pub struct Counter {
    value: u64,
}

#[manta::actor]
impl Counter {
    pub fn new() -> Self {
        Counter { value: 0 }
    }

    pub fn increment(&mut self) -> u64 {
        self.value += 1;
        self.value
    }
}

pub fn run(args: &Args) -> anyhow::Result<()> {
    let mut config = manta::Config::from_env()?;
    config.address = args.address.clone();
    let ctx = manta::init_with(config)?;
    let calls = args.count.unwrap_or(CALLS);
    let counters = [Counter::remote(&ctx)?, Counter::remote(&ctx)?];
    // Warm up: the actors are built, their workers started.
    for counter in &counters {
        ctx.get(&counter.increment())?;
    }
    for run in 1..=args.runs {
        let before = ctx.get(&counters[0].increment())?;
        let (seconds, last) = timed(|| {
            let refs: Vec<_> = (0..calls).map(|_| counters[0].increment()).collect();
            ctx.get(refs.last().expect("calls > 0"))
        });
        anyhow::ensure!(last? == before + calls as u64, "every call ran, in order");
        println!(
            "RESULT workload=actors mode={} case=one_actor run={run} seconds={seconds:.3} calls={calls} calls_per_s={:.0} peak_rss_mib={}",
            args.mode(),
            calls as f64 / seconds,
            crate::peak_rss_mib()
        );
        let (seconds, answers) = timed(|| {
            std::thread::scope(|scope| {
                let callers: Vec<_> = counters
                    .iter()
                    .map(|counter| {
                        let ctx = &ctx;
                        scope.spawn(move || {
                            let refs: Vec<_> =
                                (0..calls / 2).map(|_| counter.increment()).collect();
                            ctx.get(refs.last().expect("calls > 0"))
                        })
                    })
                    .collect();
                callers
                    .into_iter()
                    .map(|caller| caller.join().expect("caller thread"))
                    .collect::<Result<Vec<_>, _>>()
            })
        });
        anyhow::ensure!(answers?.len() == 2, "both callers finished");
        println!(
            "RESULT workload=actors mode={} case=two_actors_two_callers run={run} seconds={seconds:.3} calls={} calls_per_s={:.0} peak_rss_mib={}",
            args.mode(),
            calls / 2 * 2,
            (calls / 2 * 2) as f64 / seconds,
            crate::peak_rss_mib()
        );
    }
    Ok(())
}
