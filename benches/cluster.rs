//! The cluster transport (feature `mpi`) beside the local one, in one run: `apply`
//! round trip, 50k `apply_async`, a 1M-item map, the speedup over 24 equal CPU-bound
//! tasks, a 200 MB `SharedSlice` sent to every rank; and a map with one rank slowed
//! down four times, to show that chunks follow the ranks' speed.
//!
//! Each row has 3 workers: a local pool of 3; 3 ranks of one worker each on this
//! machine; and 3 ranks across two network namespaces (over TCP; root only, skipped
//! otherwise).
//!
//! Run: `cargo bench --features mpi --bench cluster`.

#[path = "common/mod.rs"]
mod common;

use std::collections::BTreeMap;
use std::process::Command;
use std::time::Instant;

use common::{async_50k_us, median, median_secs, round_trip_us, speedup, work};
use multiproc::prelude::*;

/// Work of one CPU-bound task: ~20 ms here.
const BURN: u64 = 27_000_000;

#[parallel]
fn t1(x: u64) -> u64 {
    x * 10
}

#[parallel]
fn burn(n: u64) -> u64 {
    work(n)
}

fn rank() -> u32 {
    std::env::var("OMPI_COMM_WORLD_RANK")
        .ok()
        .and_then(|r| r.parse().ok())
        .unwrap_or(0)
}

/// `n` units of work, `slow` times as many on rank 2; says where it ran.
#[parallel]
fn burn_on(n: u64, slow: u64) -> u32 {
    let r = rank();
    work(if r == 2 { n * slow } else { n });
    r
}

/// Reads one byte of every page of its view; says where it ran.
#[parallel]
fn touch(part: SharedSlice<u8>) -> (u32, u64) {
    (
        rank(),
        part.iter().step_by(4096).map(|&b| u64::from(b)).sum(),
    )
}

/// Rank 0's worker waits here (with `held` made) until `release` exists; on another
/// rank it returns at once. Says where it ran.
#[parallel]
fn hold(dir: std::path::PathBuf) -> u32 {
    let r = rank();
    if r == 0 {
        let _ = std::fs::create_dir(dir.join("held"));
        while !dir.join("release").exists() {
            std::thread::sleep(std::time::Duration::from_millis(1));
        }
    }
    r
}

/// Says where it ran.
#[parallel]
fn where_run(x: u64) -> u64 {
    let _ = x;
    u64::from(rank())
}

/// The `apply` round trip to another rank: rank 0's one worker is held busy first, so
/// that every call goes to a serving rank. Checks that each did.
fn remote_round_trip_us(pool: &Pool) -> multiproc::Result<f64> {
    let dir = std::env::temp_dir().join(format!("multiproc-bench-hold-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("a mark directory");
    let held = loop {
        let h = pool.apply_async(hold, dir.clone());
        while !h.ready() && !dir.join("held").exists() {
            std::thread::sleep(std::time::Duration::from_millis(1));
        }
        if dir.join("held").exists() {
            break h;
        }
        h.get()?;
    };
    let mut elsewhere = true;
    let us = common::trips_us(&mut |i| {
        elsewhere &= pool.apply(where_run, i).expect("apply") != 0;
    });
    std::fs::create_dir(dir.join("release")).expect("the release mark");
    held.get()?;
    std::fs::remove_dir_all(&dir).expect("removing the marks");
    assert!(elsewhere, "every call ran on another rank");
    Ok(us)
}

fn measure(label: &str, pool: &Pool) -> multiproc::Result<()> {
    let shm = shared_slice_ms(pool)?;
    if std::env::var_os("CLUSTER_BENCH_ONLY_SHM").is_some() {
        println!("| {label} | – | – | – | – | – | {shm} |");
        return Ok(());
    }
    let apply = round_trip_us(pool, t1);
    let remote = if label.starts_with("local") {
        "–".to_owned()
    } else {
        format!("{:.1} µs", remote_round_trip_us(pool)?)
    };
    let async50k = async_50k_us(pool, t1);
    let data: Vec<u64> = (0..1_000_000).collect();
    let map_ns = median_secs(5, || {
        pool.map(t1, &data).expect("map");
    }) * 1e9
        / 1e6;
    let tasks = vec![BURN; 24];
    let speed = speedup(
        &mut || {
            for &n in &tasks {
                std::hint::black_box(work(n));
            }
        },
        &mut || {
            pool.map(burn, &tasks).expect("map");
        },
    );
    println!(
        "| {label} | {apply:.1} µs | {remote} | {async50k:.2} µs | {map_ns:.1} ns | {speed:.2}x | {shm} |"
    );
    Ok(())
}

/// A 200 MB `SharedSlice` mapped by 30 tasks over the pool: the median ms of 3 runs,
/// each with a new slice, and how many ranks it reached.
fn shared_slice_ms(pool: &Pool) -> multiproc::Result<String> {
    let mut shm_ms = Vec::new();
    let mut reached = 0;
    for _ in 0..3 {
        let bytes = vec![1u8; 200 << 20];
        let slice = SharedSlice::from_slice(&bytes)?;
        let views: Vec<SharedSlice<u8>> = (0..30).map(|_| slice.clone()).collect();
        let t = Instant::now();
        let got = pool.map(touch, &views)?;
        shm_ms.push(t.elapsed().as_secs_f64() * 1e3);
        reached = got
            .iter()
            .map(|(r, _)| *r)
            .collect::<std::collections::BTreeSet<_>>()
            .len();
    }
    Ok(format!("{:.0} ms ({reached} rank(s))", median(shm_ms)))
}

/// 48 tasks of ~20 ms, one at a time per chunk, with rank 2 `slow` times slower.
fn slowed(pool: &Pool, slow: u64) -> multiproc::Result<(f64, BTreeMap<u32, usize>)> {
    let items: Vec<(u64, u64)> = (0..48).map(|_| (BURN, slow)).collect();
    let t = Instant::now();
    let ran = pool.map(burn_on, &items)?;
    let secs = t.elapsed().as_secs_f64();
    let mut per_rank = BTreeMap::new();
    for r in ran {
        *per_rank.entry(r).or_insert(0) += 1;
    }
    Ok((secs, per_rank))
}

fn main() -> multiproc::Result<()> {
    if let Ok(label) = std::env::var("CLUSTER_BENCH_LABEL") {
        // Rank 0 under mpirun.
        let pool = Pool::builder().cluster().workers(1).chunk_size(1).build()?;
        let auto = Pool::builder().cluster().workers(1).build()?;
        measure(&label, &auto)?;
        drop(auto);
        let (even, even_ranks) = slowed(&pool, 1)?;
        let (slow, slow_ranks) = slowed(&pool, 4)?;
        // Split evenly up front, rank 2's 16 tasks at 4x would take this long.
        let fixed = even / 16.0 * 16.0 * 4.0;
        println!(
            "|| {label}, 48 tasks of ~20 ms: all ranks equal {:.0} ms {even_ranks:?}; \
             rank 2 4x slower {:.0} ms {slow_ranks:?}; a fixed even split would take ~{:.0} ms",
            even * 1e3,
            slow * 1e3,
            fixed * 1e3
        );
        return Ok(());
    }
    println!(
        "| 3 workers | apply round trip | to another rank | 50k apply_async, per task | 1M-item map, per item | 24 CPU-bound tasks, speedup | 200 MB SharedSlice to every rank |"
    );
    println!("|---|---|---|---|---|---|---|");
    let local = Pool::new(3)?;
    measure("local pool", &local)?;
    drop(local);
    let me = std::env::current_exe().expect("the bench's path");
    let run = |label: &str, cmd: &mut Command| {
        let out = cmd
            .env("CLUSTER_BENCH_LABEL", label)
            .env("OMPI_ALLOW_RUN_AS_ROOT", "1")
            .env("OMPI_ALLOW_RUN_AS_ROOT_CONFIRM", "1")
            .output()
            .expect("mpirun (Open MPI) is needed");
        print!("{}", String::from_utf8_lossy(&out.stdout));
        if !out.status.success() {
            eprintln!(
                "{label}: {}\n{}",
                out.status,
                String::from_utf8_lossy(&out.stderr)
            );
        }
    };
    let one_machine = || {
        let mut cmd = Command::new("mpirun");
        cmd.args(["--oversubscribe", "-n", "3"]).arg(&me);
        cmd
    };
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/benches/cluster/netns.sh");
    // SAFETY: geteuid has no preconditions.
    let root = unsafe { libc::geteuid() } == 0;
    run("3 ranks, one machine", &mut one_machine());
    // The same segment figure with segments sent as messages, rank by rank.
    run(
        "3 ranks, one machine, segments as messages",
        one_machine()
            .env("CLUSTER_BENCH_ONLY_SHM", "1")
            .env("MULTIPROC_ONE_SIDED", "0"),
    );
    if root {
        run(
            "3 ranks, two namespaces (TCP)",
            Command::new(script).arg(&me),
        );
        run(
            "3 ranks, two namespaces (TCP), segments as messages",
            Command::new(script)
                .arg(&me)
                .env("CLUSTER_BENCH_ONLY_SHM", "1")
                .env("MULTIPROC_ONE_SIDED", "0"),
        );
    } else {
        println!("(the two-namespace row needs root)");
    }
    Ok(())
}
