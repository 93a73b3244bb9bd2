//! How the figures of `cargo bench --bench peers` scale with the input size and with the
//! number of workers, and what a map costs in memory: ns/item for 1k → 10M tiny items
//! on 1, 2 and 4 workers; `apply` round trip and 50k `apply_async` on 1, 2 and 4
//! workers; `Queue` throughput with 1, 2 and 4 producers; speedup on 24 CPU-bound tasks
//! on 1, 2 and 4 workers, and on 24 uneven `apply_async` tasks; pool start by the
//! parent's resident memory (0, 256 MiB, 1 GiB); peak RSS of the parent and of each
//! worker for a 1M-item map.
//!
//! Run: `cargo bench --bench scaling`. On a machine with more cores, set
//! `SCALING_WORKERS=1,2,4,8,16`.

#[path = "common/mod.rs"]
mod common;

use std::time::Instant;

use common::{median, peak_kb, work};
use multiproc::prelude::*;

#[parallel]
fn t1(x: u64) -> u64 {
    x * 10
}

#[parallel]
fn burn(n: u64) -> u64 {
    work(n)
}

/// Peak RSS (kB) of this worker so far.
#[parallel]
fn worker_peak(_x: u8) -> (u32, u64) {
    (std::process::id(), peak_kb("self"))
}

fn main() -> multiproc::Result<()> {
    let workers: Vec<usize> = std::env::var("SCALING_WORKERS")
        .ok()
        .map(|v| v.split(',').filter_map(|w| w.trim().parse().ok()).collect())
        .unwrap_or_else(|| vec![1, 2, 4]);
    let sizes = [1_000usize, 10_000, 100_000, 1_000_000, 10_000_000];

    println!("## par_map of tiny items (u64 -> x * 10): ns/item, median of 5");
    print!("{:>12}", "items");
    for w in &workers {
        print!("{:>14}", format!("{w} worker(s)"));
    }
    println!("{:>14}", "sequential");
    let data: Vec<u64> = (0..*sizes.last().unwrap_or(&0) as u64).collect();
    let pools: Vec<Pool> = workers
        .iter()
        .map(|&w| Pool::new(w))
        .collect::<Result<_, _>>()?;
    for &n in &sizes {
        print!("{n:>12}");
        for pool in &pools {
            let items = &data[..n];
            pool.map(t1, &items[..n.min(1000)])?;
            let runs = (0..5)
                .map(|_| {
                    let t = Instant::now();
                    let out = pool.map(t1, items).expect("map");
                    assert_eq!(out.len(), n);
                    t.elapsed().as_secs_f64() * 1e9 / n as f64
                })
                .collect();
            print!("{:>14.1}", median(runs));
        }
        let items = &data[..n];
        let runs = (0..5)
            .map(|_| {
                let t = Instant::now();
                let out: Vec<u64> = std::hint::black_box(items)
                    .iter()
                    .map(|&x| x * 10)
                    .collect();
                assert_eq!(out.len(), n);
                t.elapsed().as_secs_f64() * 1e9 / n as f64
            })
            .collect();
        println!("{:>14.1}", median(runs));
    }

    small_tasks(&workers)?;
    queue(&workers)?;

    println!(
        "\n## 24 equal CPU-bound tasks: speedup vs one sequential loop \
         (median of 9 back-to-back pairs of runs)"
    );
    const ROUNDS: u64 = 20_000_000;
    let tasks = vec![ROUNDS; 24];
    for &w in &workers {
        let pool = Pool::builder().workers(w).chunk_size(1).build()?;
        let x = common::speedup(
            &mut || {
                std::hint::black_box(tasks.iter().map(|&n| work(n)).collect::<Vec<_>>());
            },
            &mut || {
                pool.map(burn, &tasks).expect("map");
            },
        );
        println!("{w:>3} worker(s): speedup {x:.2}x");
    }

    uneven_burst(&workers)?;

    println!("\n## peak RSS during a 1M-item map on 2 workers");
    let before = peak_kb("self");
    let pool = Pool::new(2)?;
    pool.map(t1, &data[..1_000_000])?;
    let parent = peak_kb("self");
    let mut seen = std::collections::BTreeMap::new();
    for (pid, kb) in pool.map(worker_peak, &[0u8; 64])? {
        seen.insert(pid, kb);
    }
    println!(
        "parent: {:.1} MiB peak ({:.1} MiB before the pool, the 10M-item input included)",
        parent as f64 / 1024.0,
        before as f64 / 1024.0
    );
    for (pid, kb) in seen {
        println!("worker {pid}: {:.1} MiB peak", kb as f64 / 1024.0);
    }
    drop(pool);
    // Last: its ballast would count in the peak above.
    start_by_parent_size()
}

/// 24 `apply_async` tasks of unequal length, the long ones first (6 of 60M rounds, then
/// 18 of 5M): a worker must not take a share of the queue up front, or the one that got
/// the long tasks finishes long after the others.
fn uneven_burst(workers: &[usize]) -> multiproc::Result<()> {
    println!(
        "\n## 24 uneven apply_async tasks, long ones first: speedup vs sequential \
         (median of 9 back-to-back pairs of runs)"
    );
    let tasks: Vec<u64> = (0..24)
        .map(|i| if i < 6 { 60_000_000 } else { 5_000_000 })
        .collect();
    for &w in workers {
        let pool = Pool::new(w)?;
        let x = common::speedup(
            &mut || {
                std::hint::black_box(tasks.iter().map(|&n| work(n)).collect::<Vec<_>>());
            },
            &mut || {
                let handles: Vec<_> = tasks.iter().map(|&n| pool.apply_async(burn, n)).collect();
                for h in handles {
                    h.get().expect("task");
                }
            },
        );
        println!("{w:>3} worker(s): speedup {x:.2}x");
    }
    Ok(())
}

/// Pool start to first result while the parent holds more and more memory: workers
/// start with `posix_spawn`, which does not copy the parent's page tables as `fork` does.
fn start_by_parent_size() -> multiproc::Result<()> {
    println!(
        "\n## pool start to first result (2 workers) by the parent's resident memory \
         (beyond the 80 MB input above)"
    );
    for mib in [0usize, 256, 1024] {
        let ballast = vec![1u8; mib << 20];
        let ms = median(
            (0..7)
                .map(|_| {
                    let t = Instant::now();
                    let pool = Pool::new(2).expect("pool");
                    assert_eq!(pool.apply(t1, 1).expect("apply"), 10);
                    t.elapsed().as_secs_f64() * 1e3
                })
                .collect(),
        );
        std::hint::black_box(&ballast);
        println!("parent holds {mib:>5} MiB more: {ms:>6.2} ms");
    }
    Ok(())
}

fn small_tasks(workers: &[usize]) -> multiproc::Result<()> {
    println!("\n## small tasks: apply round trip (us) and 50k apply_async + get (us/task)");
    for &w in workers {
        let pool = Pool::new(w)?;
        let trip = common::round_trip_us(&pool, t1);
        let per_task = common::async_50k_us(&pool, t1);
        println!("{w:>3} worker(s): round trip {trip:>7.1} us, async {per_task:>6.2} us/task");
    }
    Ok(())
}

#[parallel]
fn produce(q: Queue<u64>, n: u64) -> u64 {
    for i in 0..n {
        if q.put(i).is_err() {
            return i;
        }
    }
    n
}

fn queue(producers: &[usize]) -> multiproc::Result<()> {
    println!("\n## Queue: N producer workers -> parent, 2M u64 messages in all (msgs/s)");
    const TOTAL: u64 = 2_000_000;
    for &p in producers {
        let pool = Pool::new(p)?;
        let rate = common::queue_rate(&pool, produce, p, TOTAL / p as u64);
        println!("{p:>3} producer(s): {rate:>10.0} msgs/s");
    }
    Ok(())
}
