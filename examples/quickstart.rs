//! The headline example: a `#[parallel]` function mapped over a range in worker processes.
//!
//! Run it with `cargo run --release --example quickstart`.

use std::collections::BTreeSet;

use multiproc::prelude::*;

/// Runs in a worker process: returns the result and the pid that computed it.
#[parallel]
fn t1(x: u64) -> (u64, u32) {
    (x * 10, std::process::id())
}

fn main() -> multiproc::Result<()> {
    println!("parent pid {}", std::process::id());
    let data: Vec<u64> = (0..20).collect();
    let out = data.par_map(t1)?;

    let results: Vec<u64> = out.iter().map(|&(r, _)| r).collect();
    let pids: BTreeSet<u32> = out.iter().map(|&(_, pid)| pid).collect();
    println!("worker pids: {pids:?}");
    println!("results in input order: {results:?}");
    // Still an ordinary function in this process:
    println!("t1(5) here = {:?}", t1(5).0);
    Ok(())
}
