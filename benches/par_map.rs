//! `par_map` of 1,000,000 `u64 -> x * 10` items on 2 workers, beside Python's
//! `multiprocessing.Pool(2).map` on the same list, in the same run.
//!
//! Run: `cargo bench --bench par_map` (set `BENCH_ITEMS`, `BENCH_RUNS` to change the size
//! of the run). Python's figure is skipped, with a note, if `python3` is not installed.

#[path = "common/mod.rs"]
mod common;

use std::time::Instant;

use common::median;
use multiproc::prelude::*;

#[parallel]
fn t1(x: u64) -> u64 {
    x * 10
}

fn env_or(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn main() -> multiproc::Result<()> {
    if std::env::var_os("MULTIPROC_WORKERS").is_none() {
        // SAFETY: nothing else runs yet (no pool, no thread), so nobody reads the
        // environment concurrently.
        unsafe { std::env::set_var("MULTIPROC_WORKERS", "2") };
    }
    let workers = env_or("MULTIPROC_WORKERS", 2);
    let n = env_or("BENCH_ITEMS", 1_000_000);
    let runs = env_or("BENCH_RUNS", 5);
    let data: Vec<u64> = (0..n as u64).collect();

    // Sequential baseline, for scale.
    let seq = median(
        (0..runs)
            .map(|_| {
                let start = Instant::now();
                let out: Vec<u64> = std::hint::black_box(&data).iter().map(|&x| t1(x)).collect();
                std::hint::black_box(out);
                start.elapsed().as_secs_f64()
            })
            .collect(),
    );

    // Warm: start the global pool.
    data[..1000].par_map(t1)?;
    let mut times = Vec::with_capacity(runs);
    for _ in 0..runs {
        let start = Instant::now();
        let out = data.par_map(t1)?;
        times.push(start.elapsed().as_secs_f64());
        assert_eq!(out[n - 1], (n as u64 - 1) * 10);
    }
    let ours = median(times.clone()) / n as f64 * 1e9;
    println!("items: {n}, workers: {workers}, runs: {runs} (median)");
    println!(
        "runs (ms): {:?}",
        times
            .iter()
            .map(|t| (t * 1e4).round() / 10.0)
            .collect::<Vec<_>>()
    );
    println!(
        "{:<34} {:>10.2} ns/item",
        "sequential loop (1 thread)",
        seq / n as f64 * 1e9
    );
    println!("{:<34} {:>10.2} ns/item", "multiproc par_map", ours);

    let args = [n.to_string(), runs.to_string(), workers.to_string()];
    match common::python("pool_map.py", &args) {
        Ok(text) => match common::field(&text, "ns_per_item=") {
            Some(py) => {
                println!(
                    "{:<34} {:>10.2} ns/item",
                    "python multiprocessing.Pool.map", py
                );
                println!(
                    "ratio: multiproc is {:.1}x faster than Python's Pool.map",
                    py / ours
                );
            }
            None => println!("python: unexpected output: {text}"),
        },
        Err(why) => println!("python: {why}"),
    }
    Ok(())
}
