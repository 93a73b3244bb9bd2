//! Large data: the automatic shared-memory threshold, a 200 MB argument to each of 2
//! workers (beside Python's `Pool`), and summing a 512 MiB `SharedSlice<f64>` in 64
//! chunks on 2 workers beside one local thread and rayon with 2 threads, with the
//! proportional set size (PSS) of parent and workers during the map.
//!
//! Run: `cargo bench --bench shm`.

#[path = "common/mod.rs"]
mod common;

use std::time::Instant;

use common::median;
use multiproc::prelude::*;
use rayon::prelude::*;
use serde_bytes::ByteBuf;

#[parallel]
fn byte_len(data: ByteBuf) -> usize {
    data.len()
}

#[parallel]
fn vec_len(data: Vec<u8>) -> usize {
    data.len()
}

#[parallel]
fn slice_len(data: SharedSlice<u8>) -> usize {
    data.len()
}

#[parallel]
fn sum_view(part: SharedSlice<f64>) -> (f64, u32) {
    (part.iter().sum(), std::process::id())
}

fn pss_kb(pid: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/smaps_rollup"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("Pss:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        })
        .unwrap_or(0)
}

fn time_ms(runs: usize, mut f: impl FnMut()) -> f64 {
    f();
    median(
        (0..runs)
            .map(|_| {
                let t = Instant::now();
                f();
                t.elapsed().as_secs_f64() * 1e3
            })
            .collect(),
    )
}

fn threshold_table() -> multiproc::Result<()> {
    println!(
        "## one apply of a ByteBuf argument: through the socket vs through shared memory (ms)"
    );
    println!("{:>10} {:>12} {:>12}", "bytes", "socket", "shm");
    let socket = Pool::builder()
        .workers(1)
        .shm_threshold(usize::MAX)
        .build()?;
    let shm = Pool::builder().workers(1).shm_threshold(0).build()?;
    for kib in [16usize, 64, 256, 1024, 4096, 16384] {
        let arg = ByteBuf::from(vec![1u8; kib << 10]);
        let a = time_ms(21, || {
            socket.apply(byte_len, arg.clone()).expect("socket apply");
        });
        let b = time_ms(21, || {
            shm.apply(byte_len, arg.clone()).expect("shm apply");
        });
        println!("{:>10} {a:>12.3} {b:>12.3}", kib << 10);
    }
    Ok(())
}

fn big_argument() -> multiproc::Result<()> {
    const MB: usize = 200;
    let data = vec![b'x'; MB * 1000 * 1000];
    let pool = Pool::new(2)?;
    let bytes = [ByteBuf::from(data.clone()), ByteBuf::from(data.clone())];
    let as_bytes = time_ms(5, || {
        assert_eq!(pool.map(byte_len, &bytes).expect("map"), [data.len(); 2]);
    });
    let vecs = [data.clone(), data.clone()];
    let as_vec = time_ms(5, || {
        assert_eq!(pool.map(vec_len, &vecs).expect("map"), [data.len(); 2]);
    });
    let shared = SharedSlice::from_slice(&data)?;
    let handles = [shared.clone(), shared.clone()];
    let as_shared = time_ms(5, || {
        assert_eq!(pool.map(slice_len, &handles).expect("map"), [data.len(); 2]);
    });
    let make_shared = time_ms(5, || {
        drop(SharedSlice::from_slice(&data).expect("segment"));
    });
    let python = common::python("pool_big.py", &[MB.to_string()])
        .ok()
        .and_then(|out| common::field(&out, "big_ms="));
    println!("\n## a {MB} MB argument to each of 2 workers (ms, median of 5)");
    let py = python.unwrap_or(f64::NAN);
    println!("python Pool.map(len, [data, data])          {py:>9.1}");
    println!(
        "multiproc, ByteBuf (automatic shm)          {as_bytes:>9.1}  ({:.1}x faster)",
        py / as_bytes
    );
    println!(
        "multiproc, Vec<u8> (serde per byte)         {as_vec:>9.1}  ({:.1}x faster)",
        py / as_vec
    );
    println!(
        "multiproc, SharedSlice<u8> handle           {as_shared:>9.1}  ({:.1}x faster; making the slice: {make_shared:.1} ms once)",
        py / as_shared
    );
    if python.is_none() {
        println!("python: skipped (python3 or the script is not available)");
    }
    Ok(())
}

fn slice_sum() -> multiproc::Result<()> {
    const N: usize = 512 << 20 >> 3; // 512 MiB of f64
    let data: Vec<f64> = (0..N).map(|i| (i % 1000) as f64).collect();
    let expect: f64 = data.iter().sum();
    let xs = SharedSlice::from_slice(&data)?;
    drop(data); // the parent keeps only the shared copy
    let views = xs.chunks(N / 64)?;
    let pool = Pool::new(2)?;
    let mut workers = std::collections::BTreeSet::new();
    let multiproc = time_ms(5, || {
        let out = pool.map(sum_view, &views).expect("map");
        let total: f64 = out.iter().map(|r| r.0).sum();
        assert!((total - expect).abs() < 1e-3 * expect.abs().max(1.0));
        workers.extend(out.iter().map(|r| r.1));
    });
    // Read while the workers still map the segment (the views are alive): parent and
    // workers together.
    let pss = pss_kb("self")
        + workers
            .iter()
            .map(|pid| pss_kb(&pid.to_string()))
            .sum::<u64>();
    let local = time_ms(5, || {
        let s: f64 = xs.iter().sum();
        assert!((s - expect).abs() < 1e-3 * expect.abs().max(1.0));
    });
    let rayon_pool = rayon::ThreadPoolBuilder::new()
        .num_threads(2)
        .build()
        .expect("rayon pool");
    let with_rayon = time_ms(5, || {
        let s: f64 =
            rayon_pool.install(|| xs.par_chunks(N / 64).map(|c| c.iter().sum::<f64>()).sum());
        assert!((s - expect).abs() < 1e-3 * expect.abs().max(1.0));
    });
    println!("\n## sum of a 512 MiB SharedSlice<f64> in 64 chunks (ms, median of 5)");
    println!("one local thread                            {local:>9.1}");
    println!("rayon, 2 threads                            {with_rayon:>9.1}");
    println!(
        "multiproc, 2 workers                        {multiproc:>9.1}  ({:.2}x rayon's time)",
        multiproc / with_rayon
    );
    println!(
        "PSS of parent + workers during the map: {:.0} MiB for 512 MiB of data ({:.2}x)",
        pss as f64 / 1024.0,
        pss as f64 / 1024.0 / 512.0
    );
    Ok(())
}

fn main() -> multiproc::Result<()> {
    threshold_table()?;
    big_argument()?;
    slice_sum()?;
    Ok(())
}
