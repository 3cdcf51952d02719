//! Five remote calls in parallel, their results fetched at once; prints `[0, 2, 6, 12, 20]`.
//!
//! ```sh
//! cargo run --release --example multiply
//! ```

#[manta::remote]
fn multiply(a: i64, b: i64) -> i64 {
    a * b
}

fn main() -> Result<(), manta::Report> {
    let ctx = manta::init()?;
    let products: Vec<_> = (0..5).map(|i| multiply.remote(&ctx, i, i + 1)).collect();
    println!("{:?}", ctx.get_all(&products)?);
    Ok(())
}
