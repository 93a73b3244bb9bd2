//! The one-command comparison: every figure of the design's performance table, for
//! multiproc and its peers, measured in one run on this machine, printed as one table
//! with ratios, then the peak memory of the parent and of each worker.
//!
//! Run: `cargo bench --bench peers`. Peers: Python's `multiprocessing.Pool` (fork) through
//! the scripts in `benches/peers/` (skipped with a note if `python3` is missing),
//! procspawn's `Pool`, rayon with as many threads as workers (the floor: no processes,
//! no copies), and plain sequential code.
//!
//! The multiproc figures are compared with the last recorded ones in
//! `benches/peers-baseline.txt`; one worse by more than 20% prints a warning.
//! `BENCH_RECORD=1` records this run's figures as the new baseline.

#[path = "common/mod.rs"]
mod common;
#[path = "report/mod.rs"]
mod report;

use std::collections::BTreeMap;
use std::time::Instant;

use common::{median, median_secs, peak_kb, python, reset_peak, work};
use multiproc::prelude::*;
use rayon::prelude::*;
use report::{Cell, Row, compare_with_baseline, from_python, print_table};
use serde_bytes::ByteBuf;

const WORKERS: usize = 2;

#[parallel]
fn t1(x: u64) -> u64 {
    x * 10
}

fn procspawn_t1(x: u64) -> u64 {
    x * 10
}

fn procspawn_t1_chunk(xs: Vec<u64>) -> Vec<u64> {
    xs.into_iter().map(|x| x * 10).collect()
}

/// 40M multiply-adds: 30–60 ms of work per task here, depending on the load.
const ROUNDS: u64 = 40_000_000;

#[parallel]
fn burn(n: u64) -> u64 {
    work(n)
}

fn procspawn_burn(n: u64) -> u64 {
    work(n)
}

#[parallel]
fn byte_len(data: ByteBuf) -> usize {
    data.len()
}

fn procspawn_byte_len(data: ByteBuf) -> usize {
    data.len()
}

#[parallel]
fn slice_len(data: SharedSlice<u8>) -> usize {
    data.len()
}

#[parallel]
fn sum_view(part: SharedSlice<f64>) -> f64 {
    part.iter().sum()
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

/// Resets this worker's peak RSS, so the next figure is about what follows.
#[parallel]
fn worker_reset_peak(_x: u8) -> u32 {
    reset_peak();
    std::process::id()
}

/// This worker's pid and peak RSS (kB).
#[parallel]
fn worker_peak(_x: u8) -> (u32, u64) {
    (std::process::id(), peak_kb("self"))
}

fn start_and_apply() -> multiproc::Result<(Row, Row, Row)> {
    // Start to first result.
    let ours_start = median(
        (0..10)
            .map(|_| {
                let t = Instant::now();
                let pool = Pool::new(WORKERS).expect("pool");
                assert_eq!(pool.apply(t1, 1).expect("apply"), 10);
                t.elapsed().as_secs_f64() * 1e3
            })
            .collect(),
    );
    let spawn_start = median(
        (0..10)
            .map(|_| {
                let t = Instant::now();
                let pool = procspawn::Pool::new(WORKERS).expect("procspawn pool");
                assert_eq!(pool.spawn(1, procspawn_t1).join().expect("join"), 10);
                let ms = t.elapsed().as_secs_f64() * 1e3;
                pool.shutdown();
                ms
            })
            .collect(),
    );
    let rayon_start = median(
        (0..10)
            .map(|_| {
                let t = Instant::now();
                let pool = rayon::ThreadPoolBuilder::new()
                    .num_threads(WORKERS)
                    .build()
                    .expect("rayon pool");
                assert_eq!(pool.install(|| t1(1)), 10);
                t.elapsed().as_secs_f64() * 1e3
            })
            .collect(),
    );

    // Round trips on a warm pool.
    let pool = Pool::new(WORKERS)?;
    let ours_trip = common::round_trip_us(&pool, t1);
    let spawn_pool = procspawn::Pool::new(WORKERS).expect("procspawn pool");
    let spawn_trip = common::trips_us(&mut |i| {
        spawn_pool.spawn(i, procspawn_t1).join().expect("join");
    });
    let rayon_pool = rayon::ThreadPoolBuilder::new()
        .num_threads(WORKERS)
        .build()
        .expect("rayon pool");
    let rayon_trip = common::trips_us(&mut |i| {
        std::hint::black_box(rayon_pool.install(|| t1(i)));
    });

    // 50k apply_async, then get.
    let ours_async = common::async_50k_us(&pool, t1);
    let spawn_async = procspawn_50k(&spawn_pool);
    spawn_pool.shutdown();
    let rayon_async = {
        let t = Instant::now();
        let (tx, rx) = std::sync::mpsc::channel();
        for i in 0..50_000u64 {
            let tx = tx.clone();
            rayon_pool.spawn(move || {
                let _ = tx.send(t1(i));
            });
        }
        drop(tx);
        assert_eq!(rx.iter().count(), 50_000);
        t.elapsed().as_secs_f64() * 1e6 / 50_000.0
    };

    let py = python("pool_ops.py", &[WORKERS.to_string()]);
    Ok((
        Row {
            name: "pool start to first result",
            key: "start_ms",
            unit: "ms",
            lower_is_better: true,
            ours: ours_start,
            peers: [
                from_python(&py, "start_ms="),
                Cell::Value(spawn_start),
                Cell::Value(rayon_start),
                Cell::NotApplicable,
            ],
        },
        Row {
            name: "apply round trip, warm pool",
            key: "apply_us",
            unit: "us",
            lower_is_better: true,
            ours: ours_trip,
            peers: [
                from_python(&py, "apply_us="),
                Cell::Value(spawn_trip),
                Cell::Value(rayon_trip),
                Cell::NotApplicable,
            ],
        },
        Row {
            name: "50k apply_async, then get",
            key: "async_us",
            unit: "us/task",
            lower_is_better: true,
            ours: ours_async,
            peers: [
                from_python(&py, "async_us="),
                spawn_async,
                Cell::Value(rayon_async),
                Cell::NotApplicable,
            ],
        },
    ))
}

/// procspawn keeps a channel open per task in flight; at 50k it runs out of file
/// descriptors and panics inside `spawn`, which is caught and reported.
fn procspawn_50k(pool: &procspawn::Pool) -> Cell {
    let t = Instant::now();
    let run = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        let handles: Vec<_> = (0..50_000).map(|i| pool.spawn(i, procspawn_t1)).collect();
        handles.into_iter().find_map(|h| h.join().err())
    }));
    match run {
        Ok(None) => Cell::Value(t.elapsed().as_secs_f64() * 1e6 / 50_000.0),
        Ok(Some(e)) => Cell::Missing(format!("fails: {e}")),
        Err(panic) => {
            let text = panic
                .downcast_ref::<String>()
                .map_or("panicked", String::as_str);
            if text.contains("Too many open files") {
                Cell::Missing("fails: EMFILE".to_owned())
            } else {
                Cell::Missing(format!("fails: {text}"))
            }
        }
    }
}

fn bulk_map(memory: &mut Vec<String>) -> multiproc::Result<Row> {
    const N: usize = 1_000_000;
    let data: Vec<u64> = (0..N as u64).collect();
    let expect: Vec<u64> = data.iter().map(|&x| x * 10).collect();
    let ns = |s: f64| s * 1e9 / N as f64;
    // Each peer's output is compared in full once, untimed; the timed runs only check
    // its length and last item, so that comparing 8 MB is not part of the figure.
    let spot = |out: &[u64]| assert!(out.len() == N && out[N - 1] == expect[N - 1]);
    let seq_map = || -> Vec<u64> {
        std::hint::black_box(&data)
            .iter()
            .map(|&x| x * 10)
            .collect()
    };
    assert_eq!(seq_map(), expect);
    let seq = median_secs(5, || spot(&seq_map()));
    let pool = Pool::new(WORKERS)?;
    pool.map(t1, &data[..1000])?;
    // Peak memory of the map itself: parent and workers start from their current size.
    pool.map(worker_reset_peak, &[0u8; 64])?;
    reset_peak();
    let parent_before = peak_kb("self");
    assert_eq!(pool.map(t1, &data)?, expect);
    let ours = median_secs(5, || spot(&pool.map(t1, &data).expect("map")));
    memory.push(format!(
        "1M-item map: parent peak {:.1} MiB (it holds the 8 MB input and the 8 MB output; \
         {:.1} MiB before)",
        peak_kb("self") as f64 / 1024.0,
        parent_before as f64 / 1024.0
    ));
    memory.extend(worker_peaks(&pool)?);

    let rayon_pool = rayon::ThreadPoolBuilder::new()
        .num_threads(WORKERS)
        .build()
        .expect("rayon pool");
    let rayon_map =
        || -> Vec<u64> { rayon_pool.install(|| data.par_iter().map(|&x| x * 10).collect()) };
    assert_eq!(rayon_map(), expect);
    let with_rayon = median_secs(5, || spot(&rayon_map()));
    // procspawn has no map: split by hand into a few chunks per worker.
    let spawn_pool = procspawn::Pool::new(WORKERS).expect("procspawn pool");
    let procspawn_map = || -> Vec<u64> {
        let handles: Vec<_> = data
            .chunks(N / (WORKERS * 4))
            .map(|c| spawn_pool.spawn(c.to_vec(), procspawn_t1_chunk))
            .collect();
        handles
            .into_iter()
            .flat_map(|h| h.join().expect("join"))
            .collect()
    };
    assert_eq!(procspawn_map(), expect);
    let with_procspawn = median_secs(5, || spot(&procspawn_map()));
    spawn_pool.shutdown();
    let py = python(
        "pool_map.py",
        &[N.to_string(), "5".to_owned(), WORKERS.to_string()],
    );
    Ok(Row {
        name: "map of 1M tiny items",
        key: "map_ns",
        unit: "ns/item",
        lower_is_better: true,
        ours: ns(ours),
        peers: [
            from_python(&py, "ns_per_item="),
            Cell::Value(ns(with_procspawn)),
            Cell::Value(ns(with_rayon)),
            Cell::Value(ns(seq)),
        ],
    })
}

/// Peak RSS of each worker of `pool` since its last reset.
fn worker_peaks(pool: &Pool) -> multiproc::Result<Vec<String>> {
    let mut seen = BTreeMap::new();
    for (pid, kb) in pool.map(worker_peak, &[0u8; 64])? {
        seen.insert(pid, kb);
    }
    Ok(seen
        .into_iter()
        .map(|(pid, kb)| format!("  worker {pid}: peak {:.1} MiB", kb as f64 / 1024.0))
        .collect())
}

fn cpu_bound() -> multiproc::Result<Row> {
    let tasks = vec![ROUNDS; 24];
    let expect: Vec<u64> = tasks.iter().map(|&n| work(n)).collect();
    let mut seq = || {
        let out: Vec<u64> = tasks.iter().map(|&n| work(n)).collect();
        assert_eq!(out, expect);
    };
    let pool = Pool::builder().workers(WORKERS).chunk_size(1).build()?;
    let ours = common::speedup(&mut seq, &mut || {
        assert_eq!(pool.map(burn, &tasks).expect("map"), expect);
    });
    let rayon_pool = rayon::ThreadPoolBuilder::new()
        .num_threads(WORKERS)
        .build()
        .expect("rayon pool");
    let with_rayon = common::speedup(&mut seq, &mut || {
        let out: Vec<u64> = rayon_pool.install(|| tasks.par_iter().map(|&n| work(n)).collect());
        assert_eq!(out, expect);
    });
    let spawn_pool = procspawn::Pool::new(WORKERS).expect("procspawn pool");
    let with_procspawn = common::speedup(&mut seq, &mut || {
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
    let py = python("cpu_bound.py", &[]);
    let py_speedup = from_python(&py, "speedup=");
    Ok(Row {
        name: "CPU-bound speedup, 24 tasks",
        key: "cpu_speedup",
        unit: "x",
        lower_is_better: false,
        ours,
        peers: [
            py_speedup,
            Cell::Value(with_procspawn),
            Cell::Value(with_rayon),
            Cell::Value(1.0),
        ],
    })
}

fn big_argument() -> multiproc::Result<(Row, Row)> {
    const MB: usize = 200;
    let data = vec![b'x'; MB * 1000 * 1000];
    let pool = Pool::new(WORKERS)?;
    let bytes = [ByteBuf::from(data.clone()), ByteBuf::from(data.clone())];
    let automatic = median_secs(5, || {
        assert_eq!(pool.map(byte_len, &bytes).expect("map"), [data.len(); 2]);
    }) * 1e3;
    let shared = SharedSlice::from_slice(&data)?;
    let handles = [shared.clone(), shared.clone()];
    let handle = median_secs(5, || {
        assert_eq!(pool.map(slice_len, &handles).expect("map"), [data.len(); 2]);
    }) * 1e3;
    // procspawn takes its arguments by value: the copies are made before the clock starts.
    let spawn_pool = procspawn::Pool::new(WORKERS).expect("procspawn pool");
    let with_procspawn = median(
        (0..3)
            .map(|_| {
                let owned = bytes.clone();
                let t = Instant::now();
                let hs: Vec<_> = owned
                    .into_iter()
                    .map(|b| spawn_pool.spawn(b, procspawn_byte_len))
                    .collect();
                for h in hs {
                    assert_eq!(h.join().expect("join"), data.len());
                }
                t.elapsed().as_secs_f64() * 1e3
            })
            .collect(),
    );
    spawn_pool.shutdown();
    let py = python("pool_big.py", &[MB.to_string()]);
    let peers = || {
        [
            from_python(&py, "big_ms="),
            Cell::Value(with_procspawn),
            Cell::NotApplicable,
            Cell::NotApplicable,
        ]
    };
    Ok((
        Row {
            name: "200 MB argument to 2 workers",
            key: "big_ms",
            unit: "ms",
            lower_is_better: true,
            ours: automatic,
            peers: peers(),
        },
        Row {
            name: "  same, as a SharedSlice handle",
            key: "big_handle_ms",
            unit: "ms",
            lower_is_better: true,
            ours: handle,
            peers: peers(),
        },
    ))
}

fn slice_sum(memory: &mut Vec<String>) -> multiproc::Result<Row> {
    const N: usize = 512 << 20 >> 3; // 512 MiB of f64
    let xs = {
        let data: Vec<f64> = (0..N).map(|i| (i % 1000) as f64).collect();
        SharedSlice::from_slice(&data)?
    };
    let expect: f64 = xs.iter().sum();
    let close = |s: f64| (s - expect).abs() < 1e-3 * expect.abs().max(1.0);
    let views = xs.views(N / 64)?;
    let pool = Pool::new(WORKERS)?;
    pool.map(worker_reset_peak, &[0u8; 64])?;
    reset_peak();
    let ours = median_secs(5, || {
        let out = pool.map(sum_view, &views).expect("map");
        assert!(close(out.iter().sum()));
    }) * 1e3;
    memory.push(format!(
        "512 MiB SharedSlice sum: parent peak {:.1} MiB (it holds the slice: shared pages \
         count in every process that touches them; PSS below splits them)",
        peak_kb("self") as f64 / 1024.0
    ));
    memory.extend(worker_peaks(&pool)?);
    let pss: u64 = std::iter::once("self".to_owned())
        .chain(pool_pids(&pool)?.iter().map(u32::to_string))
        .map(|p| common::pss_kb(&p))
        .sum();
    memory.push(format!(
        "  PSS of parent + workers during the map: {:.0} MiB for 512 MiB of data",
        pss as f64 / 1024.0
    ));
    let seq = median_secs(5, || assert!(close(xs.iter().sum()))) * 1e3;
    let rayon_pool = rayon::ThreadPoolBuilder::new()
        .num_threads(WORKERS)
        .build()
        .expect("rayon pool");
    let with_rayon = median_secs(5, || {
        let s: f64 =
            rayon_pool.install(|| xs.par_chunks(N / 64).map(|c| c.iter().sum::<f64>()).sum());
        assert!(close(s));
    }) * 1e3;
    Ok(Row {
        name: "512 MiB SharedSlice<f64> sum",
        key: "sum_ms",
        unit: "ms",
        lower_is_better: true,
        ours,
        peers: [
            Cell::NotApplicable,
            Cell::NotApplicable,
            Cell::Value(with_rayon),
            Cell::Value(seq),
        ],
    })
}

fn pool_pids(pool: &Pool) -> multiproc::Result<Vec<u32>> {
    let mut pids: Vec<u32> = pool
        .map(worker_peak, &[0u8; 64])?
        .iter()
        .map(|p| p.0)
        .collect();
    pids.sort_unstable();
    pids.dedup();
    Ok(pids)
}

fn queue() -> multiproc::Result<Row> {
    const N: u64 = 1_000_000;
    let pool = Pool::new(WORKERS)?;
    let ours = common::queue_rate(&pool, produce, 2, N);
    // The floor: the same between threads of one process, through a bounded channel.
    let threads = median(
        (0..3)
            .map(|_| {
                let (tx, rx) = std::sync::mpsc::sync_channel::<u64>(1 << 16);
                let t = Instant::now();
                let producers: Vec<_> = (0..2)
                    .map(|_| {
                        let tx = tx.clone();
                        std::thread::spawn(move || {
                            for i in 0..N {
                                tx.send(i).expect("send");
                            }
                        })
                    })
                    .collect();
                drop(tx);
                assert_eq!(rx.iter().count() as u64, 2 * N);
                for p in producers {
                    p.join().expect("producer thread");
                }
                2.0 * N as f64 / t.elapsed().as_secs_f64()
            })
            .collect(),
    );
    let py = python("queue_ops.py", &[]);
    Ok(Row {
        name: "Queue, 2 producers -> parent",
        key: "queue_msgs",
        unit: "msgs/s",
        lower_is_better: false,
        ours,
        peers: [
            from_python(&py, "mp_queue="),
            Cell::NotApplicable,
            Cell::Value(threads),
            Cell::NotApplicable,
        ],
    })
}

fn main() -> multiproc::Result<()> {
    procspawn::init();
    // procspawn's EMFILE panic is expected and reported in the table.
    let default_hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        if !info.to_string().contains("Too many open files") {
            default_hook(info);
        }
    }));
    let cores = std::thread::available_parallelism().map_or(0, usize::from);
    println!("# multiproc and its peers: {WORKERS} workers/threads, {cores} cores; medians");
    let mut memory = Vec::new();
    let (start, apply, asyncs) = start_and_apply()?;
    let map = bulk_map(&mut memory)?;
    let cpu = cpu_bound()?;
    let (big, big_handle) = big_argument()?;
    let sum = slice_sum(&mut memory)?;
    let queue = queue()?;
    let rows = [start, apply, asyncs, map, cpu, big, big_handle, sum, queue];
    println!();
    print_table(&rows);
    println!(
        "\nfloor under any round trip here: two processes echoing 8 bytes over a socketpair, \
         no library: {:.1} us",
        common::socket_floor_us()
    );
    println!("\n# peak resident memory (VmHWM, reset before each workload)");
    for line in &memory {
        println!("{line}");
    }
    println!();
    compare_with_baseline(&rows, "peers-baseline.txt");
    Ok(())
}
