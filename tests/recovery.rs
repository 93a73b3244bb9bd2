//! Recovery and hygiene: workers that cannot be started, recycling that returns leaked
//! memory, no zombies, signals to the parent, and a bounded soak with killed workers.
#![allow(clippy::unwrap_used)] // tests: a failed unwrap is a failed test

mod common;

use std::time::Duration;

use multiproc::ErrorKind;
use multiproc::prelude::*;

#[parallel]
fn whoami(_x: u64) -> u32 {
    std::process::id()
}

#[parallel]
fn sleep_ms(ms: u64) -> u64 {
    std::thread::sleep(Duration::from_millis(ms));
    ms
}

#[test]
fn a_worker_that_cannot_be_started_is_a_spawn_error() {
    let e = Pool::builder()
        .workers(1)
        .__program("/nonexistent/worker")
        .build()
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Spawn, "{e}");
    assert!(e.to_string().contains("No such file"), "{e}");
}

#[test]
fn a_worker_that_cannot_be_replaced_fails_its_items_and_the_pool_says_why() {
    // Start from a copy of this binary, then remove the copy: replacements cannot start.
    let copy = std::env::temp_dir().join(format!("multiproc-copy-{}", std::process::id()));
    std::fs::copy(std::env::current_exe().unwrap(), &copy).unwrap();
    let pool = Pool::builder().workers(1).__program(&copy).build().unwrap();
    let pid = pool.apply(whoami, 0).unwrap();
    std::fs::remove_file(&copy).unwrap();
    // SAFETY: killing our own worker.
    unsafe { libc::kill(pid as libc::pid_t, libc::SIGKILL) };
    let mut spawn_errors = 0;
    for _ in 0..3 {
        match pool.apply(whoami, 0) {
            Err(e) if e.kind() == ErrorKind::Spawn => {
                assert!(e.to_string().contains("No such file"), "{e}");
                spawn_errors += 1;
            }
            Err(e) => assert_eq!(e.kind(), ErrorKind::WorkerDied, "{e}"),
            Ok(p) => panic!("a worker {p} started from a deleted binary"),
        }
    }
    assert!(spawn_errors >= 2, "{spawn_errors}");
}

/// Leaks 64 MiB on purpose and reports this worker's resident memory (kB).
#[parallel]
fn leak_64_mib(_x: u64) -> (u32, u64) {
    let leaked: &'static mut [u8] = Box::leak(vec![1u8; 64 << 20].into_boxed_slice());
    std::hint::black_box(leaked);
    (std::process::id(), rss_kb())
}

fn rss_kb() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap()
}

#[test]
fn recycled_workers_give_leaked_memory_back() {
    let pool = Pool::builder()
        .workers(1)
        .max_tasks_per_worker(1)
        .build()
        .unwrap();
    let out: Vec<(u32, u64)> = (0..4)
        .map(|i| pool.apply(leak_64_mib, i).unwrap())
        .collect();
    let pids: std::collections::BTreeSet<u32> = out.iter().map(|o| o.0).collect();
    assert_eq!(pids.len(), 4, "each task ran in a fresh worker");
    // Each fresh worker holds one leak, never four.
    assert!(out.iter().all(|o| o.1 < 2 * 64 * 1024), "{out:?}");
    for pid in pids {
        assert!(!common::process_exists(pid) || pid == out[3].0);
    }
}

fn children() -> Vec<u32> {
    std::fs::read_dir("/proc/self/task")
        .unwrap()
        .flat_map(|t| {
            std::fs::read_to_string(t.unwrap().path().join("children"))
                .unwrap_or_default()
                .split_whitespace()
                .filter_map(|p| p.parse().ok())
                .collect::<Vec<u32>>()
        })
        .collect()
}

fn is_zombie(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| {
            s.rsplit_once(')')
                .map(|(_, r)| r.trim_start().starts_with('Z'))
        })
        .unwrap_or(false)
}

#[parallel]
fn die(_x: u64) -> u64 {
    std::process::abort()
}

/// Child half of `no_zombies`.
#[test]
#[ignore = "run by its parent test in a fresh process"]
fn child_kills_and_times_out_workers() {
    if !common::is_child() {
        return;
    }
    let pool = Pool::builder()
        .workers(2)
        .task_timeout(Duration::from_millis(300))
        .build()
        .unwrap();
    for _ in 0..3 {
        assert!(pool.apply(die, 0).is_err());
        assert_eq!(
            pool.apply(sleep_ms, 10_000).unwrap_err().kind(),
            ErrorKind::Timeout
        );
    }
    let p = Process::spawn(die, 0).unwrap();
    assert!(p.join().is_err());
    let zombies: Vec<u32> = children().into_iter().filter(|&c| is_zombie(c)).collect();
    println!("\nZOMBIES_WHILE_RUNNING={zombies:?}");
    drop(pool);
    println!("CHILDREN_AFTER={:?}", children());
}

#[test]
fn no_zombies_after_kills_timeouts_and_shutdown() {
    let out = common::run_child_test("child_kills_and_times_out_workers", &[]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}");
    assert!(stdout.contains("ZOMBIES_WHILE_RUNNING=[]"), "{stdout}");
    assert!(stdout.contains("CHILDREN_AFTER=[]"), "{stdout}");
}

/// Child half of `sigterm_during_a_map`: a long map on a pool, with shared memory.
#[test]
#[ignore = "run by its parent test in a fresh process"]
fn child_maps_for_a_long_time() {
    if !common::is_child() {
        return;
    }
    let xs = SharedSlice::from_slice(&[1u64; 4096]).unwrap();
    let pool = Pool::new(2).unwrap();
    let pids = pool.map(whoami, &[0, 1, 2, 3]).unwrap();
    println!();
    for pid in pids {
        println!("PID={pid}");
    }
    println!("READY");
    let long: Vec<u64> = vec![60_000; 4];
    let _ = (pool.map(sleep_ms, &long), xs);
}

#[test]
fn sigterm_during_a_map_ends_the_parent_as_it_asks_and_the_workers_with_it() {
    let (pids, status) = common::signal_child_test_after(
        "child_maps_for_a_long_time",
        &[],
        &["PID="],
        "READY",
        libc::SIGTERM,
    );
    // The parent's own disposition is respected: it died of SIGTERM, nothing swallowed it.
    use std::os::unix::process::ExitStatusExt;
    assert_eq!(status.signal(), Some(libc::SIGTERM), "{status:?}");
    common::wait_until_gone(&pids);
}

#[parallel]
fn kill_self_if(x: u64, now: bool) -> u64 {
    if now {
        // SAFETY: killing this very worker.
        unsafe { libc::kill(libc::getpid(), libc::SIGKILL) };
    }
    x
}

/// Waits (to detect a hang: 30 s) until this process has `n` live children: a killed
/// worker's replacement may still be starting when a map returns its error.
fn wait_for_children(n: usize) {
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while children().iter().filter(|&&c| !is_zombie(c)).count() != n {
        assert!(std::time::Instant::now() < deadline, "{:?}", children());
        std::thread::sleep(Duration::from_millis(2));
    }
}

/// The fd count once two readings 20 ms apart agree (no worker mid-start).
fn settled_fd_count() -> usize {
    let mut last = fd_count();
    loop {
        std::thread::sleep(Duration::from_millis(20));
        let now = fd_count();
        if now == last {
            return now;
        }
        last = now;
    }
}

fn fd_count() -> usize {
    std::fs::read_dir("/proc/self/fd").unwrap().count()
}

/// Child half of `soak`: `MULTIPROC_SOAK` maps, a worker killed in every third.
#[test]
#[ignore = "run by its parent test in a fresh process"]
fn child_soaks() {
    if !common::is_child() {
        return;
    }
    let rounds: usize = std::env::var("MULTIPROC_SOAK").unwrap().parse().unwrap();
    let pool = Pool::builder().workers(2).build().unwrap();
    let shared = SharedSlice::from_slice(&[3u64; 1 << 16]).unwrap();
    let (mut fds_at_50, mut rss_at_50) = (0, 0);
    let mut seed = 0x2545_f491_4f6c_dd1du64;
    for round in 0..rounds {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        let victim = (round % 3 == 0).then_some(seed % 200);
        let items: Vec<(u64, bool)> = (0..200).map(|i| (i, victim == Some(i))).collect();
        let result = pool.map(kill_self_if, &items);
        match victim {
            Some(v) => {
                let e = result.unwrap_err();
                assert_eq!(
                    (e.kind(), e.task_index()),
                    (ErrorKind::WorkerDied, Some(v as usize))
                );
            }
            None => assert_eq!(result.unwrap().len(), 200),
        }
        // Shared memory in flight too.
        let views = shared.views(1 << 12).unwrap();
        drop(views);
        if round == 49 {
            wait_for_children(2);
            fds_at_50 = settled_fd_count();
            rss_at_50 = rss_kb();
        }
    }
    wait_for_children(2);
    // A replacement worker may still be starting (its socketpair and exec pipe are open
    // for a moment): give the count time to settle back, and report what it settles at.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while fd_count() != fds_at_50 && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(5));
    }
    println!("\nFDS at50={fds_at_50} end={}", fd_count());
    println!("RSS at50={rss_at_50} end={}", rss_kb());
    println!("CHILDREN={}", children().len());
    drop(pool);
    drop(shared);
    println!("HELD={}", multiproc::testing::segments_held());
}

#[test]
fn soak_with_killed_workers_leaks_nothing() {
    // Short here; CI runs the long version (MULTIPROC_SOAK=500).
    let rounds = std::env::var("MULTIPROC_SOAK").unwrap_or_else(|_| "60".to_owned());
    let out = common::run_child_test("child_soaks", &[("MULTIPROC_SOAK", &rounds)]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let pair = |key: &str| -> (u64, u64) {
        let line = stdout.lines().find(|l| l.starts_with(key)).unwrap();
        let n: Vec<u64> = line
            .split_whitespace()
            .filter_map(|w| w.split('=').nth(1)?.parse().ok())
            .collect();
        (n[0], n[1])
    };
    let (fds50, fds_end) = pair("FDS");
    assert_eq!(fds50, fds_end, "file descriptors leaked");
    let (rss50, rss_end) = pair("RSS");
    assert!(
        rss_end * 10 <= rss50 * 11,
        "resident memory grew: {rss50} kB -> {rss_end} kB"
    );
    assert!(stdout.contains("CHILDREN=2"), "{stdout}");
    assert!(stdout.contains("HELD=0"), "{stdout}");
}

/// Child half of `too_many_processes_is_a_spawn_error`.
#[test]
#[ignore = "run by its parent test in a fresh process"]
fn child_with_no_processes_left() {
    if !common::is_child() {
        return;
    }
    // RLIMIT_NPROC does not bind root: become an ordinary user first, if we are root.
    // SAFETY: plain credential and limit calls on this process; results are checked.
    unsafe {
        if libc::geteuid() == 0 {
            assert_eq!(libc::setgid(65534), 0, "setgid");
            assert_eq!(libc::setuid(65534), 0, "setuid");
        }
    }
    let threads: u64 = std::fs::read_to_string("/proc/self/status")
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix("Threads:"))
        .and_then(|v| v.trim().parse().ok())
        .unwrap();
    // Room for the pool's two threads (results, one driver), none for a worker process.
    let limit = libc::rlimit {
        rlim_cur: threads + 2,
        rlim_max: threads + 2,
    };
    // SAFETY: lowering this process's own limit.
    assert_eq!(unsafe { libc::setrlimit(libc::RLIMIT_NPROC, &limit) }, 0);
    match Pool::new(1) {
        Ok(_) => println!("\nSTARTED"),
        Err(e) => println!("\nERROR={:?}: {e}", e.kind()),
    }
}

#[test]
fn too_many_processes_is_a_spawn_error() {
    let stdout = common::child_stdout("child_with_no_processes_left", &[]);
    assert!(stdout.contains("ERROR=Spawn"), "{stdout}");
    assert!(
        stdout.contains("Resource temporarily unavailable"),
        "{stdout}"
    );
}
