//! The producer/consumer program again, as one pipeline expression: each stage has its
//! own workers, a fast stage waits for a slow one, and the results come out in order.
//!
//! Run it with `cargo run --release --example pipeline`.

use std::time::Duration;

use multiproc::pipeline;
use multiproc::prelude::*;

/// The first, faster stage.
#[parallel]
fn produce(num: u64) -> u64 {
    std::thread::sleep(Duration::from_millis(100));
    println!("{} produced {num}", std::process::id());
    num
}

/// The second, slower stage.
#[parallel]
fn consume(num: u64) -> u64 {
    let res = num * 10;
    std::thread::sleep(Duration::from_millis(300));
    println!("{} took {num} and made {res}", std::process::id());
    res
}

fn main() -> multiproc::Result<()> {
    let results = pipeline([1u64, 2, 3, 4, 5, 6])
        .stage(produce, 2) // two producer processes
        .stage(consume, 2) // two consumer processes
        .collect()?;
    println!("main ({}): {results:?}", std::process::id());
    Ok(())
}
