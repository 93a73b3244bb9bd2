//! CPU-bound speedup on 24 equal tasks, 2 workers: multiproc, Python's `Pool` (against
//! Python run sequentially), procspawn's `Pool` and rayon with 2 threads (against the
//! same Rust loop run sequentially). Speedup = sequential time / parallel time.
//!
//! Run: `cargo bench --bench cpu_bound`.

#[path = "common/mod.rs"]
mod common;

use std::time::Instant;

use common::median;
use multiproc::prelude::*;
use rayon::prelude::*;

/// About 20 ms of integer work per task here.
const ROUNDS: u64 = 40_000_000;

fn work(n: u64) -> u64 {
    (0..n).fold(0u64, |h, i| {
        std::hint::black_box(h.wrapping_mul(31).wrapping_add(i))
    })
}

#[parallel]
fn burn(n: u64) -> u64 {
    work(n)
}

fn procspawn_burn(n: u64) -> u64 {
    work(n)
}

fn secs(runs: usize, mut f: impl FnMut()) -> f64 {
    median(
        (0..runs)
            .map(|_| {
                let t = Instant::now();
                f();
                t.elapsed().as_secs_f64()
            })
            .collect(),
    )
}

fn main() -> multiproc::Result<()> {
    procspawn::init();
    let tasks = vec![ROUNDS; 24];
    let expect: Vec<u64> = tasks.iter().map(|&n| work(n)).collect();
    let seq = secs(3, || {
        let out: Vec<u64> = tasks.iter().map(|&n| work(n)).collect();
        assert_eq!(out, expect);
    });
    let pool = Pool::builder().workers(2).chunk_size(1).build()?;
    pool.map(burn, &[10, 10])?;
    let ours = secs(3, || {
        assert_eq!(pool.map(burn, &tasks).expect("map"), expect);
    });
    let rayon_pool = rayon::ThreadPoolBuilder::new()
        .num_threads(2)
        .build()
        .expect("rayon pool");
    let with_rayon = secs(3, || {
        let out: Vec<u64> = rayon_pool.install(|| tasks.par_iter().map(|&n| work(n)).collect());
        assert_eq!(out, expect);
    });
    let spawn_pool = procspawn::Pool::new(2).expect("procspawn pool");
    let with_procspawn = secs(3, || {
        let handles: Vec<_> = tasks
            .iter()
            .map(|&n| spawn_pool.spawn(n, procspawn_burn))
            .collect();
        let out: Vec<u64> = handles
            .into_iter()
            .map(|h| h.join().expect("join"))
            .collect();
        assert_eq!(out, expect);
    });
    spawn_pool.shutdown();
    let python = common::python("cpu_bound.py", &[]).ok();
    let field = |key: &str| common::field(python.as_deref()?, key);
    println!("## 24 equal CPU-bound tasks on 2 workers (median of 3; speedup vs sequential)");
    println!("sequential Rust loop                {:>8.3} s", seq);
    println!(
        "multiproc Pool(2)                   {:>8.3} s  speedup {:.2}x",
        ours,
        seq / ours
    );
    println!(
        "procspawn Pool(2)                   {:>8.3} s  speedup {:.2}x",
        with_procspawn,
        seq / with_procspawn
    );
    println!(
        "rayon, 2 threads                    {:>8.3} s  speedup {:.2}x",
        with_rayon,
        seq / with_rayon
    );
    match (field("seq_s="), field("pool_s=")) {
        (Some(s), Some(p)) => println!(
            "python Pool(2) (vs python sequential) {p:>6.3} s  speedup {:.2}x",
            s / p
        ),
        _ => println!("python: skipped (python3 or the script is not available)"),
    }
    Ok(())
}
