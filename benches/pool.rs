//! `Pool` against Python's `multiprocessing.Pool` and procspawn's `Pool`, in one run, on 2
//! workers: pool start to first result, one `apply` round trip on a warm pool, and 50k
//! `apply_async` then `get`.
//!
//! Run: `cargo bench --bench pool` (`MULTIPROC_WORKERS` changes the worker count).
//! Python's figures are skipped, with a note, if `python3` is not installed.

#[path = "common/mod.rs"]
mod common;

use std::time::{Duration, Instant};

use common::median;
use multiproc::prelude::*;

#[parallel]
fn t1(x: u64) -> u64 {
    x * 10
}

fn procspawn_t1(x: u64) -> u64 {
    x * 10
}

fn secs(d: Duration) -> f64 {
    d.as_secs_f64()
}

struct Figures {
    start_ms: f64,
    apply_us: f64,
    async_us: Result<f64, String>,
}

fn multiproc_figures(workers: usize) -> multiproc::Result<Figures> {
    let mut starts = Vec::new();
    for _ in 0..10 {
        let t = Instant::now();
        let pool = Pool::new(workers)?;
        assert_eq!(pool.apply(t1, 1)?, 10);
        starts.push(secs(t.elapsed()));
    }
    let pool = Pool::new(workers)?;
    for i in 0..200 {
        pool.apply(t1, i)?;
    }
    let mut trips = Vec::new();
    for i in 0..2000 {
        let t = Instant::now();
        pool.apply(t1, i)?;
        trips.push(secs(t.elapsed()));
    }
    let mut asyncs = Vec::new();
    for _ in 0..3 {
        let t = Instant::now();
        let handles: Vec<_> = (0..50_000).map(|i| pool.apply_async(t1, i)).collect();
        for h in handles {
            h.get()?;
        }
        asyncs.push(secs(t.elapsed()) / 50_000.0);
    }
    Ok(Figures {
        start_ms: median(starts) * 1e3,
        apply_us: median(trips) * 1e6,
        async_us: Ok(median(asyncs) * 1e6),
    })
}

fn procspawn_figures(workers: usize) -> Result<Figures, String> {
    let mut starts = Vec::new();
    for _ in 0..10 {
        let t = Instant::now();
        let pool = procspawn::Pool::new(workers).map_err(|e| e.to_string())?;
        let r = pool
            .spawn(1, procspawn_t1)
            .join()
            .map_err(|e| e.to_string())?;
        assert_eq!(r, 10);
        starts.push(secs(t.elapsed()));
        pool.shutdown();
    }
    let pool = procspawn::Pool::new(workers).map_err(|e| e.to_string())?;
    for i in 0..200 {
        pool.spawn(i, procspawn_t1)
            .join()
            .map_err(|e| e.to_string())?;
    }
    let mut trips = Vec::new();
    for i in 0..2000 {
        let t = Instant::now();
        pool.spawn(i, procspawn_t1)
            .join()
            .map_err(|e| e.to_string())?;
        trips.push(secs(t.elapsed()));
    }
    // procspawn keeps channels open per task in flight; at 50k it runs out of file
    // descriptors and panics inside `spawn`, which is caught and reported here.
    let t = Instant::now();
    let run = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        let handles: Vec<_> = (0..50_000).map(|i| pool.spawn(i, procspawn_t1)).collect();
        let mut failure = None;
        for h in handles {
            if let Err(e) = h.join() {
                failure.get_or_insert_with(|| e.to_string());
            }
        }
        failure
    }));
    let async_us = match run {
        Ok(None) => Ok(secs(t.elapsed()) / 50_000.0 * 1e6),
        Ok(Some(e)) => Err(format!("fails: {e}")),
        Err(panic) => {
            let text = panic
                .downcast_ref::<String>()
                .map_or("panicked", |s| s.as_str());
            if text.contains("Too many open files") {
                Err("fails: EMFILE".to_owned())
            } else {
                Err(format!("fails: {text}"))
            }
        }
    };
    pool.shutdown();
    Ok(Figures {
        start_ms: median(starts) * 1e3,
        apply_us: median(trips) * 1e6,
        async_us,
    })
}

fn python_figures(workers: usize) -> Result<Figures, String> {
    let text = common::python("pool_ops.py", &[workers.to_string()])?;
    let get = |key: &str| -> Result<f64, String> {
        common::field(&text, key).ok_or_else(|| format!("unexpected output: {text}"))
    };
    Ok(Figures {
        start_ms: get("start_ms=")?,
        apply_us: get("apply_us=")?,
        async_us: Ok(get("async_us=")?),
    })
}

/// Peak resident memory of this process so far, in MiB (`VmHWM`).
fn peak_rss_mib() -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmHWM:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        })
        .map_or(f64::NAN, |kb| kb / 1024.0)
}

/// `imap` over 10M items: time, and how much the parent's peak memory grew (a lazy map
/// holds a few chunks, not the input or the output).
fn imap_10m(workers: usize) -> multiproc::Result<(f64, f64, f64)> {
    let pool = Pool::new(workers)?;
    // Warm: threads, buffers and the chunk-size estimate exist before the baseline.
    for r in pool.imap(t1, 0..100_000u64) {
        r?;
    }
    let before = peak_rss_mib();
    let t = Instant::now();
    let mut sum = 0u64;
    let mut at_1m = 0.0;
    for (i, r) in pool.imap(t1, 0..10_000_000u64).enumerate() {
        sum = sum.wrapping_add(r?);
        if i == 1_000_000 {
            at_1m = peak_rss_mib() - before;
        }
    }
    assert_eq!(sum, (0..10_000_000u64).map(|x| x * 10).sum::<u64>());
    Ok((secs(t.elapsed()), at_1m, peak_rss_mib() - before))
}

/// Picks one figure of a peer (or says why it has none).
type Pick = dyn Fn(&Figures) -> Result<f64, String>;

fn ratio(theirs: f64, ours: f64) -> String {
    format!("{:.1}x", theirs / ours)
}

fn main() -> multiproc::Result<()> {
    procspawn::init();
    // procspawn's EMFILE panic is expected and reported in the table; keep its message
    // off the terminal.
    let default_hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        if !info.to_string().contains("Too many open files") {
            default_hook(info);
        }
    }));
    let workers: usize = std::env::var("MULTIPROC_WORKERS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(2);
    // First, while the process is small, so that the peak-memory figure is its own.
    let (imap_secs, imap_at_1m, imap_growth) = imap_10m(workers)?;
    let ours = multiproc_figures(workers)?;
    let spawn = procspawn_figures(workers);
    let python = python_figures(workers);
    println!("workers: {workers}; medians; ratio = peer / multiproc (higher: multiproc faster)");
    println!(
        "{:<34} {:>12} {:>18} {:>18}",
        "figure", "multiproc", "python Pool", "procspawn Pool"
    );
    let cell =
        |peer: &Result<Figures, String>, f: &dyn Fn(&Figures) -> Result<f64, String>, ours: f64| {
            match peer.as_ref().map_err(Clone::clone).and_then(f) {
                Ok(v) => format!("{v:.2} ({})", ratio(v, ours)),
                Err(e) => e.chars().take(40).collect(),
            }
        };
    let rows: [(&str, f64, &Pick); 3] = [
        ("pool start to first result (ms)", ours.start_ms, &|f| {
            Ok(f.start_ms)
        }),
        ("apply round trip, warm (us)", ours.apply_us, &|f| {
            Ok(f.apply_us)
        }),
        (
            "50k apply_async + get (us/task)",
            ours.async_us.clone().unwrap_or(f64::NAN),
            &|f| f.async_us.clone(),
        ),
    ];
    for (name, value, pick) in rows {
        println!(
            "{name:<34} {value:>12.2} {:>18} {:>18}",
            cell(&python, pick, value),
            cell(&spawn, pick, value)
        );
    }
    println!(
        "imap over 10M items: {imap_secs:.2} s ({:.0} ns/item); parent peak RSS grew \
         {imap_at_1m:.1} MiB by item 1M, {imap_growth:.1} MiB by item 10M",
        imap_secs / 1e7 * 1e9
    );
    if let Err(e) = &spawn {
        println!("procspawn: {e}");
    }
    if let Err(e) = &python {
        println!("python: {e}");
    }
    Ok(())
}
