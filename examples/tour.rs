//! The README's tour: one function, several arguments, and a function returning its own
//! `Result`, all mapped in worker processes.
//!
//! Run it with `cargo run --release --example tour`.

use multiproc::prelude::*;

#[parallel]
fn t1(x: u64) -> u64 {
    x * 10
}

/// 2+ arguments: `par_map` takes tuples.
#[parallel]
fn add(a: u64, b: u64) -> u64 {
    a + b
}

/// Your errors are values: `par_map` gives `Vec<Result<u32, String>>`.
#[parallel]
fn parse(line: String) -> Result<u32, String> {
    line.trim().parse().map_err(|e| format!("{line:?}: {e}"))
}

fn main() -> multiproc::Result<()> {
    assert_eq!(t1(5), 50); // still an ordinary function

    let data: Vec<u64> = (0..1_000_000).collect();
    let out = data.par_map(t1)?; // worker processes, input order kept
    assert_eq!(out[999_999], 9_999_990);
    println!(
        "mapped {} items; out[999_999] = {}",
        out.len(),
        out[999_999]
    );

    let sums = [(1u64, 2u64), (3, 4)].par_map(add)?;
    assert_eq!(sums, [3, 7]);
    println!("sums: {sums:?}");

    let parsed = ["1".to_string(), "x".into()].par_map(parse)?;
    assert!(parsed[0].is_ok() && parsed[1].is_err());
    println!("parsed: {parsed:?}");
    Ok(())
}
