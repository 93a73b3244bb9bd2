//! Awaited results: 10,000 `apply_async` awaited at once on a tokio `current_thread`
//! runtime, beside the same calls collected with `get` and beside Python's asyncio
//! awaiting a `ProcessPoolExecutor` (`benches/peers/async_ops.py`), all with 2 workers.
//!
//! Run: `cargo bench --bench async_results`.

#[path = "common/mod.rs"]
mod common;

use std::time::Instant;

use common::median;
use multiproc::prelude::*;

#[parallel]
fn t1(x: u64) -> u64 {
    x * 10
}

const CALLS: u64 = 10_000;

/// Calls per second, median of 5 rounds of `CALLS`.
fn rate(mut round: impl FnMut()) -> f64 {
    median(
        (0..5)
            .map(|_| {
                let t = Instant::now();
                round();
                CALLS as f64 / t.elapsed().as_secs_f64()
            })
            .collect(),
    )
}

fn main() {
    let pool = Pool::new(2).expect("a pool");
    for i in 0..1000 {
        pool.apply(t1, i).expect("warm-up");
    }
    let awaited = common::awaited_per_s(&pool, t1);
    let got = rate(|| {
        let handles: Vec<_> = (0..CALLS).map(|i| pool.apply_async(t1, i)).collect();
        for h in handles {
            h.get().expect("get");
        }
    });
    println!("# awaited results: {CALLS} apply_async at once, 2 workers; medians of 5");
    println!(
        "{:<44} {:>12.0}/s",
        "multiproc, awaited (tokio current_thread)", awaited
    );
    println!("{:<44} {:>12.0}/s", "multiproc, get() on each", got);
    match common::python("async_ops.py", &["2".into(), CALLS.to_string()]) {
        Ok(out) => match common::field(&out, "awaited_per_s=") {
            Some(py) => println!(
                "{:<44} {:>12.0}/s  (multiproc awaited: {:.1}x)",
                "Python asyncio + ProcessPoolExecutor",
                py,
                awaited / py
            ),
            None => println!("Python: no figure in {out:?}"),
        },
        Err(why) => println!("Python: {why}"),
    }
}
