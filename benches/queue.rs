//! `Queue` throughput (two producer workers → the parent, u64 messages) beside Python's
//! `multiprocessing.Queue` and `Manager().Queue()`, and a 2-stage `pipeline` beside the
//! same stages as two `par_map`s.
//!
//! Run: `cargo bench --bench queue`.

#[path = "common/mod.rs"]
mod common;

use std::time::Instant;

use common::median;
use multiproc::pipeline;
use multiproc::prelude::*;

#[parallel]
fn produce(q: Queue<u64>, n: u64) -> u64 {
    for i in 0..n {
        if q.put(i).is_err() {
            return i;
        }
    }
    n
}

/// Some work per item, so the stages are worth running in parallel.
#[parallel]
fn stage_a(x: u64) -> u64 {
    (0..200u64).fold(x, |h, i| {
        h.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(i)
    })
}

#[parallel]
fn stage_b(x: u64) -> u64 {
    (0..200u64).fold(x, |h, i| h.rotate_left(7) ^ i)
}

fn main() -> multiproc::Result<()> {
    const N: u64 = 1_000_000;
    let pool = Pool::new(2)?;
    let mut rates = Vec::new();
    for _ in 0..3 {
        let q: Queue<u64> = Queue::bounded(1 << 16)?;
        let t = Instant::now();
        let producers: Vec<_> = (0..2)
            .map(|_| pool.apply_async(produce, (q.clone(), N)))
            .collect();
        let mut sum = 0u64;
        for _ in 0..2 * N {
            sum = sum.wrapping_add(q.get()?);
        }
        let elapsed = t.elapsed().as_secs_f64();
        for p in producers {
            assert_eq!(p.get()?, N);
        }
        assert_eq!(sum, 2 * (N * (N - 1) / 2));
        rates.push(2.0 * N as f64 / elapsed);
    }
    let ours = median(rates);
    let python = common::python("queue_ops.py", &[]).ok();
    let field = |key: &str| common::field(python.as_deref()?, key);
    println!("## two producer workers -> parent, u64 messages (msgs/s, median of 3)");
    println!("multiproc Queue                  {:>14.0}", ours);
    match (field("mp_queue="), field("manager_queue=")) {
        (Some(mp), Some(managed)) => {
            println!(
                "python mp.Queue                  {mp:>14.0}  (multiproc {:.1}x)",
                ours / mp
            );
            println!(
                "python Manager().Queue()        {managed:>14.0}  (multiproc {:.1}x)",
                ours / managed
            );
        }
        _ => println!("python: skipped (python3 or the script is not available)"),
    }

    let items: Vec<u64> = (0..200_000).collect();
    let two_maps = median(
        (0..3)
            .map(|_| {
                let t = Instant::now();
                let a = pool.map(stage_a, &items).expect("map a");
                let b = pool.map(stage_b, &a).expect("map b");
                assert_eq!(b.len(), items.len());
                t.elapsed().as_secs_f64() * 1e3
            })
            .collect(),
    );
    let piped = median(
        (0..3)
            .map(|_| {
                let t = Instant::now();
                let out = pipeline(items.iter().copied())
                    .stage(stage_a, 1)
                    .stage(stage_b, 1)
                    .collect()
                    .expect("pipeline");
                assert_eq!(out.len(), items.len());
                t.elapsed().as_secs_f64() * 1e3
            })
            .collect(),
    );
    println!("\n## 200k items through two stages (ms, median of 3)");
    println!("two par_maps on a 2-worker pool   {two_maps:>9.1}");
    println!("pipeline, 1 worker per stage      {piped:>9.1}");
    Ok(())
}
