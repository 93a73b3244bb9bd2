//! `par_map` of 1,000,000 `u64 -> x * 10` items on 2 workers, beside Python's
//! `multiprocessing.Pool(2).map` on the same list, in the same run.
//!
//! Run: `cargo bench --bench par_map` (set `BENCH_ITEMS`, `BENCH_RUNS` to change the size
//! of the run). Python's figure is skipped, with a note, if `python3` is not installed.

use std::process::Command;
use std::time::Instant;

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

fn median(mut xs: Vec<f64>) -> f64 {
    xs.sort_by(f64::total_cmp);
    xs[xs.len() / 2]
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

    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/benches/peers/pool_map.py");
    match Command::new("python3")
        .args([
            script,
            &n.to_string(),
            &runs.to_string(),
            &workers.to_string(),
        ])
        .output()
    {
        Ok(out) if out.status.success() => {
            let text = String::from_utf8_lossy(&out.stdout);
            let python: Option<f64> = text
                .split_whitespace()
                .find_map(|w| w.strip_prefix("ns_per_item="))
                .and_then(|v| v.parse().ok());
            match python {
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
            }
        }
        Ok(out) => println!(
            "python: skipped, the script failed: {}",
            String::from_utf8_lossy(&out.stderr)
        ),
        Err(e) => println!("python: skipped, python3 is not available ({e})"),
    }
    Ok(())
}
