//! Helpers shared by the benchmarks (each includes this file as a module).
#![allow(dead_code)] // each benchmark uses some of them

use std::process::Command;
use std::time::Instant;

use multiproc::{Pool, Queue, Task};

/// The median of `xs` (the upper one for an even count).
pub fn median(mut xs: Vec<f64>) -> f64 {
    xs.sort_by(f64::total_cmp);
    xs[xs.len() / 2]
}

/// Runs the peer script `benches/peers/<script>` with `python3` and returns what it
/// printed, or a note saying why it was skipped.
pub fn python(script: &str, args: &[String]) -> Result<String, String> {
    let path = format!("{}/benches/peers/{script}", env!("CARGO_MANIFEST_DIR"));
    let out = Command::new("python3")
        .arg(&path)
        .args(args)
        .output()
        .map_err(|e| format!("skipped, python3 is not available ({e})"))?;
    if !out.status.success() {
        return Err(format!(
            "skipped, the script failed: {}",
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// The number after `key` (e.g. `"big_ms="`) in a script's output.
pub fn field(text: &str, key: &str) -> Option<f64> {
    text.split_whitespace()
        .find_map(|w| w.strip_prefix(key))?
        .parse()
        .ok()
}

/// Peak resident set (`VmHWM`, kB) of process `pid` (`"self"` for this one).
pub fn peak_kb(pid: &str) -> u64 {
    status_kb(pid, "status", "VmHWM:")
}

/// Proportional set size (kB) of process `pid`: shared pages split between their users.
pub fn pss_kb(pid: &str) -> u64 {
    status_kb(pid, "smaps_rollup", "Pss:")
}

fn status_kb(pid: &str, file: &str, key: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/{file}"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix(key))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        })
        .unwrap_or(0)
}

/// Resets this process's peak resident set to its current size (Linux 4.0+), so that the
/// next `peak_kb` reading is about what happens from now on.
pub fn reset_peak() {
    let _ = std::fs::write("/proc/self/clear_refs", "5");
}

/// Median seconds of `runs` timed calls of `f`, after one untimed warm-up call.
pub fn median_secs(runs: usize, mut f: impl FnMut()) -> f64 {
    f();
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

/// A `u64 -> u64` task.
pub type U64Task = Task<u64, u64, fn(u64) -> u64>;

/// One call of `f` after 200 warm-up calls: median of 2,000, in µs. `f` gets the call's
/// number, to pass on as an argument.
pub fn trips_us(f: &mut dyn FnMut(u64)) -> f64 {
    (0..200).for_each(&mut *f);
    median(
        (0..2000u64)
            .map(|i| {
                let t = Instant::now();
                f(i);
                t.elapsed().as_secs_f64() * 1e6
            })
            .collect(),
    )
}

/// The floor under any round trip between two processes here: a forked child echoes
/// 8 bytes over a `socketpair`, with no library in between. Median of 2,000, in µs.
pub fn socket_floor_us() -> f64 {
    let mut fds = [0; 2];
    // SAFETY: socketpair writes two descriptors into `fds`.
    let rc = unsafe { libc::socketpair(libc::AF_UNIX, libc::SOCK_STREAM, 0, fds.as_mut_ptr()) };
    assert_eq!(rc, 0, "socketpair");
    // SAFETY: the child only calls read, write and _exit, which are safe after a fork
    // of a threaded process.
    let pid = unsafe { libc::fork() };
    assert!(pid >= 0, "fork");
    let mut buf = [0u8; 8];
    if pid == 0 {
        // SAFETY: echo on our end until the parent closes its end, then leave without
        // running any of the parent's exit handlers.
        unsafe {
            libc::close(fds[0]);
            while libc::read(fds[1], buf.as_mut_ptr().cast(), 8) == 8 {
                libc::write(fds[1], buf.as_ptr().cast(), 8);
            }
            libc::_exit(0);
        }
    }
    // SAFETY: our copy of the child's end.
    unsafe { libc::close(fds[1]) };
    let us = trips_us(&mut |i| {
        let sent = i.to_le_bytes();
        // SAFETY: 8-byte buffers on our socket end.
        let echoed = unsafe {
            libc::write(fds[0], sent.as_ptr().cast(), 8) == 8
                && libc::read(fds[0], buf.as_mut_ptr().cast(), 8) == 8
        };
        assert!(echoed && buf == sent, "echo");
    });
    // SAFETY: closing our end ends the child, which we reap.
    unsafe {
        libc::close(fds[0]);
        libc::waitpid(pid, std::ptr::null_mut(), 0);
    }
    us
}

/// One `apply` round trip on a warm `pool`: median of 2,000, in µs.
pub fn round_trip_us(pool: &Pool, task: U64Task) -> f64 {
    trips_us(&mut |i| {
        pool.apply(task, i).expect("apply");
    })
}

/// 50,000 `apply_async`, then each `get`: µs per task, median of 3.
pub fn async_50k_us(pool: &Pool, task: U64Task) -> f64 {
    median(
        (0..3)
            .map(|_| {
                let t = Instant::now();
                let handles: Vec<_> = (0..50_000).map(|i| pool.apply_async(task, i)).collect();
                for h in handles {
                    h.get().expect("get");
                }
                t.elapsed().as_secs_f64() * 1e6 / 50_000.0
            })
            .collect(),
    )
}

/// A producer task: puts `0..n` into the queue, returns how many it put.
pub type ProduceTask = Task<(Queue<u64>, u64), u64, fn(Queue<u64>, u64) -> u64>;

/// `producers` workers of `pool` each put `n` messages; the parent gets them all.
/// Messages per second, median of 3.
pub fn queue_rate(pool: &Pool, produce: ProduceTask, producers: usize, n: u64) -> f64 {
    median(
        (0..3)
            .map(|_| {
                let q: Queue<u64> = Queue::bounded(1 << 16).expect("queue");
                let t = Instant::now();
                let hs: Vec<_> = (0..producers)
                    .map(|_| pool.apply_async(produce, (q.clone(), n)))
                    .collect();
                let total = n * producers as u64;
                let mut sum = 0u64;
                for _ in 0..total {
                    sum = sum.wrapping_add(q.get().expect("get"));
                }
                let rate = total as f64 / t.elapsed().as_secs_f64();
                for h in hs {
                    assert_eq!(h.get().expect("producer"), n);
                }
                assert_eq!(sum, producers as u64 * (n * (n - 1) / 2));
                rate
            })
            .collect(),
    )
}

/// How many pairs of a sequential and a parallel run a speedup is the median of (the
/// Python script `peers/cpu_bound.py` runs as many).
pub const SPEEDUP_PAIRS: usize = 9;

/// Sequential time over parallel time: the median of the ratios of [`SPEEDUP_PAIRS`]
/// pairs of runs, each pair run back to back (after one untimed parallel run), so that a
/// slow minute of this shared machine hits both sides of a ratio alike.
pub fn speedup(seq: &mut dyn FnMut(), par: &mut dyn FnMut()) -> f64 {
    par();
    let timed = |f: &mut dyn FnMut()| {
        let t = Instant::now();
        f();
        t.elapsed().as_secs_f64()
    };
    median(
        (0..SPEEDUP_PAIRS)
            .map(|_| timed(seq) / timed(par))
            .collect(),
    )
}

/// Integer work that the optimiser cannot skip: `n` multiply-adds (~0.75 ns each here).
///
/// Never inlined, so that a sequential baseline and a worker run the very same machine
/// code: inlined copies of this loop ran 20–30% apart depending on where they landed.
#[inline(never)]
pub fn work(n: u64) -> u64 {
    (0..n).fold(0u64, |h, i| {
        std::hint::black_box(h.wrapping_mul(31).wrapping_add(i))
    })
}

/// 10,000 `apply_async` awaited at once on a tokio `current_thread` runtime: results per
/// second, median of 5 rounds.
pub fn awaited_per_s(pool: &Pool, task: U64Task) -> f64 {
    const CALLS: u64 = 10_000;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .build()
        .expect("a runtime");
    median(
        (0..5)
            .map(|_| {
                let t = Instant::now();
                let results = runtime.block_on(futures::future::join_all(
                    (0..CALLS).map(|i| pool.apply_async(task, i)),
                ));
                assert!(results.iter().all(Result::is_ok));
                CALLS as f64 / t.elapsed().as_secs_f64()
            })
            .collect(),
    )
}
