//! Ray Core's actor example: a counter whose state lives in one worker, called in order.
//!
//! ```sh
//! cargo run --release --example counter_actor
//! MANTA_ADDRESS=127.0.0.1:6379 cargo run --release --example counter_actor   # on a cluster
//! ```

pub struct Counter {
    value: i64,
}

#[manta::actor]
impl Counter {
    pub fn new(start: i64) -> Self {
        Counter { value: start }
    }

    pub fn increment(&mut self) -> i64 {
        self.value += 1;
        self.value
    }

    pub fn value(&self) -> i64 {
        self.value
    }
}

fn main() -> Result<(), manta::Report> {
    let ctx = manta::init()?;
    let counter = Counter::remote(&ctx, 0)?;
    // Five calls queued at once; they run one at a time, in this order.
    let counts: Vec<_> = (0..5).map(|_| counter.increment()).collect();
    println!("{:?}", ctx.get_all(&counts)?); // [1, 2, 3, 4, 5]
    println!("{}", ctx.get(&counter.value())?); // 5
    Ok(())
}
