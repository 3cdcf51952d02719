//! Ray Core's first example: a remote function, called once; prints 15.
//!
//! ```sh
//! cargo run --release --example add
//! MANTA_ADDRESS=127.0.0.1:6379 cargo run --release --example add   # on a cluster
//! ```

#[manta::remote]
fn add(a: i64, b: i64) -> i64 {
    a + b
}

fn main() -> Result<(), manta::Report> {
    let ctx = manta::init()?;
    let sum = add.remote(&ctx, 5, 10); // an ObjectRef<i64>, at once
    println!("{}", ctx.get(&sum)?);
    Ok(())
}
