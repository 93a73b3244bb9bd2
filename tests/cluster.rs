//! The cluster backend (feature `mpi`) under a real launcher: this test binary runs
//! itself under `mpirun`; rank 0 runs one of the `inner_*` tests below (ignored in a
//! plain run), and ranks 1 and 2 serve tasks from their constructor.
#![cfg(feature = "mpi")]
#![allow(clippy::unwrap_used)] // tests: a failed unwrap is a failed test

mod common;

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::process::{Command, Output, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use multiproc::prelude::*;
use multiproc::{ErrorKind, SharedSliceMut};

/// An `mpirun` that never hangs the suite: killed after this long.
const HANG: Duration = Duration::from_secs(300);

/// This process's rank under the launcher, or `None`.
fn rank() -> Option<u32> {
    std::env::var("OMPI_COMM_WORLD_RANK").ok()?.parse().ok()
}

/// One `mpirun` at a time: Open MPI's daemons crash now and then when several jobs
/// start on one host at once (in hwloc's shared topology).
static ONE_JOB: Mutex<()> = Mutex::new(());

/// Runs `program args` under `mpirun` with `options`, as root if need be, stopping it
/// if it hangs; returns its output. A job whose Open MPI daemon crashed while starting
/// (in hwloc, before any rank ran: an Open MPI 4.1 fault seen now and then here) is
/// started again, up to twice, saying so.
fn mpirun(
    options: &[&str],
    program: &std::path::Path,
    args: &[&str],
    envs: &[(&str, &str)],
) -> Output {
    let _one = ONE_JOB
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    let mut attempt = 1;
    loop {
        let out = mpirun_once(options, program, args, envs);
        let stderr = String::from_utf8_lossy(&out.stderr);
        let daemon_crashed = !out.status.success()
            && stderr.contains("ORTE was unable to reliably start one or more daemons");
        if !daemon_crashed || attempt == 3 {
            return out;
        }
        eprintln!("mpirun's daemon crashed while starting (attempt {attempt}); again:\n{stderr}");
        attempt += 1;
    }
}

fn mpirun_once(
    options: &[&str],
    program: &std::path::Path,
    args: &[&str],
    envs: &[(&str, &str)],
) -> Output {
    let mut cmd = Command::new("mpirun");
    cmd.args(["--oversubscribe"])
        .args(options)
        .arg(program)
        .args(args)
        .env("OMPI_ALLOW_RUN_AS_ROOT", "1")
        .env("OMPI_ALLOW_RUN_AS_ROOT_CONFIRM", "1")
        .env_remove("MULTIPROC_WORKERS")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    for (k, v) in envs {
        cmd.env(k, v);
    }
    let child = cmd
        .spawn()
        .expect("mpirun (Open MPI) must be installed to test the `mpi` feature");
    let pid = child.id();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(child.wait_with_output());
    });
    match rx.recv_timeout(HANG) {
        Ok(out) => out.expect("waiting for mpirun"),
        Err(_) => {
            // SIGTERM first: mpirun passes it on to the ranks, and what they wrote
            // comes back for the report.
            // SAFETY: signalling our own child, which has not been reaped yet.
            unsafe { libc::kill(pid as libc::pid_t, libc::SIGTERM) };
            let out = rx
                .recv_timeout(Duration::from_secs(20))
                .ok()
                .and_then(Result::ok);
            if out.is_none() {
                // SAFETY: as above; it ignored SIGTERM, so it is still ours to kill.
                unsafe { libc::kill(pid as libc::pid_t, libc::SIGKILL) };
            }
            let (stdout, stderr) = out.map_or_else(Default::default, |o| {
                (
                    String::from_utf8_lossy(&o.stdout).into_owned(),
                    String::from_utf8_lossy(&o.stderr).into_owned(),
                )
            });
            panic!("mpirun hung: no end within {HANG:?}\n{stdout}\n{stderr}");
        }
    }
}

/// Runs the inner test `name` of this binary as rank 0 under `mpirun before… THIS
/// name… after…`; fails unless it passed and printed `CLUSTER-OK`. Returns what the
/// ranks wrote to stderr.
fn on_ranks(before: &[&str], name: &str, after: &[&str], envs: &[(&str, &str)]) -> String {
    let exe = std::env::current_exe().unwrap();
    let mut args = vec![
        name,
        "--exact",
        "--ignored",
        "--nocapture",
        "--test-threads=1",
    ];
    args.extend_from_slice(after);
    let out = mpirun(before, &exe, &args, envs);
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(
        out.status.success() && stdout.contains("1 passed") && stdout.contains("CLUSTER-OK"),
        "{name} failed ({}):\n{stdout}\n{stderr}",
        out.status
    );
    stderr
}

/// Runs the inner test `name` of this binary on 3 ranks, as [`on_ranks`] does.
fn on_three_ranks(options: &[&str], name: &str, envs: &[(&str, &str)]) -> String {
    let mut before = vec!["-n", "3"];
    before.extend_from_slice(options);
    on_ranks(&before, name, &[], envs)
}

#[parallel]
fn square(x: u64) -> u64 {
    x * x
}

/// Where a task ran: its rank and its network namespace.
#[parallel]
fn place(x: u64) -> (u32, String) {
    let _ = x;
    std::thread::sleep(Duration::from_millis(2));
    let ns = std::fs::read_link("/proc/self/ns/net")
        .map(|p| p.display().to_string())
        .unwrap_or_default();
    (rank().unwrap_or(99), ns)
}

/// Reads the shared table on whatever rank it runs, and says which.
#[parallel]
fn weigh(table: Shared<Vec<u64>>, from: usize) -> (u32, u64) {
    std::thread::sleep(Duration::from_millis(2));
    (rank().unwrap_or(99), table[from..].iter().sum())
}

#[parallel]
fn fill(mut part: SharedChunkMut<u64>) {
    part.iter_mut().for_each(|x| *x = 1);
}

/// Kills its own worker the first time it runs on rank 2 (a mark file says so).
#[parallel]
fn dies_once_on_rank_2(args: (u64, PathBuf)) -> u64 {
    let (x, mark) = args;
    std::thread::sleep(Duration::from_millis(2));
    if rank() == Some(2) && std::fs::create_dir(&mark).is_ok() {
        std::process::abort();
    }
    x + 1
}

/// Kills rank 2 itself (its serving process, this worker's parent) outright.
#[parallel]
fn kills_rank_2(x: u64) -> u64 {
    std::thread::sleep(Duration::from_millis(2));
    if rank() == Some(2) {
        // SAFETY: signalling our parent, the rank that started this worker.
        unsafe { libc::kill(libc::getppid(), libc::SIGKILL) };
        std::thread::sleep(Duration::from_secs(60));
    }
    x
}

fn ranks_seen(places: &[(u32, String)]) -> BTreeSet<u32> {
    places.iter().map(|(r, _)| *r).collect()
}

#[test]
#[ignore = "rank 0 of an mpirun that every_api_works_across_three_ranks starts"]
fn inner_every_api() {
    assert_eq!(rank(), Some(0));
    let xs: Vec<u64> = (0..20_000).collect();
    // The global pool spans the ranks.
    assert_eq!(
        xs.par_map(square).unwrap(),
        xs.iter().map(|x| x * x).collect::<Vec<_>>()
    );
    let items: Vec<u64> = (0..600).collect();
    let seen = ranks_seen(&items.par_map(place).unwrap());
    assert_eq!(
        seen,
        BTreeSet::from([0, 1, 2]),
        "the global pool runs on every rank"
    );

    let pool = Pool::builder().cluster().workers(1).build().unwrap();
    assert_eq!(pool.workers(), 3, "one worker on each of 3 ranks");
    assert_eq!(pool.apply(square, 12).unwrap(), 144);
    let got = Arc::new(Mutex::new(Vec::new()));
    let handles: Vec<_> = (0..200u64)
        .map(|x| {
            let got = Arc::clone(&got);
            pool.apply_async(square, x)
                .on_success(move |v| got.lock().unwrap().push(*v))
        })
        .collect();
    let direct: Vec<u64> = handles.into_iter().map(|h| h.get().unwrap()).collect();
    assert_eq!(direct, (0..200u64).map(|x| x * x).collect::<Vec<_>>());
    let ordered: Vec<u64> = pool.imap(square, 0..500u64).map(Result::unwrap).collect();
    assert_eq!(ordered, (0..500u64).map(|x| x * x).collect::<Vec<_>>());
    let mut unordered: Vec<u64> = pool
        .imap_unordered(square, 0..500u64)
        .map(Result::unwrap)
        .collect();
    unordered.sort_unstable();
    assert_eq!(unordered, ordered);

    // A Shared<T> reaches every rank (once), and each reads it right.
    let table = Shared::new((0..100_000u64).collect::<Vec<_>>()).unwrap();
    let jobs: Vec<(Shared<Vec<u64>>, usize)> = (0..300).map(|i| (table.clone(), i)).collect();
    let weights = pool.map(weigh, &jobs).unwrap();
    for (i, (_, w)) in weights.iter().enumerate() {
        assert_eq!(*w, (i as u64..100_000).sum::<u64>());
    }
    let readers: BTreeSet<u32> = weights.iter().map(|(r, _)| *r).collect();
    assert_eq!(
        readers,
        BTreeSet::from([0, 1, 2]),
        "every rank used the Shared<T>"
    );

    // Writes to this host's memory cannot come back from other hosts: refused.
    let mut out = SharedSliceMut::<u64>::zeroed(1000).unwrap();
    let e = pool.map(fill, &out.chunks_mut(100).unwrap()).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::InvalidConfig);
    assert!(e.to_string().contains("SharedSliceMut"), "{e}");
    pool.join();
    drop(pool);
    // Callbacks ran, each once.
    let mut got = got.lock().unwrap().clone();
    got.sort_unstable();
    assert_eq!(got, (0..200u64).map(|x| x * x).collect::<Vec<_>>());
    println!("CLUSTER-OK");
}

#[test]
fn every_api_works_across_three_ranks() {
    on_three_ranks(&[], "inner_every_api", &[]);
}

/// Sums part `k` of `PARTS` of the slice, on whatever rank it runs, and says which.
#[parallel]
fn sum_part(data: SharedSlice<u64>, k: usize) -> (u32, u64) {
    std::thread::sleep(Duration::from_millis(2));
    let part = data.len() / PARTS;
    (
        rank().unwrap_or(99),
        data[k * part..(k + 1) * part].iter().sum(),
    )
}

/// Parts of the large slice, more than the ranks' workers, so that every rank gets some.
const PARTS: usize = 60;

#[test]
#[ignore = "rank 0 of an mpirun that segments_reach_every_rank_through_a_window starts"]
fn inner_large_segment() {
    // 80 MiB: more than one piece of a read from the window (64 MiB).
    let n = 10 << 20;
    let data = SharedSlice::from_slice(&(0..n as u64).collect::<Vec<_>>()).unwrap();
    let pool = Pool::builder().cluster().workers(1).build().unwrap();
    for round in 0..2 {
        let jobs: Vec<(SharedSlice<u64>, usize)> = (0..PARTS).map(|k| (data.clone(), k)).collect();
        let got = pool.map(sum_part, &jobs).unwrap();
        let part = (n / PARTS) as u64;
        for (k, (_, sum)) in got.iter().enumerate() {
            let first = k as u64 * part;
            assert_eq!(
                *sum,
                (first..first + part).sum::<u64>(),
                "part {k}, round {round}"
            );
        }
        let readers: BTreeSet<u32> = got.iter().map(|(r, _)| *r).collect();
        assert_eq!(readers, BTreeSet::from([0, 1, 2]), "round {round}");
    }
    println!("CLUSTER-OK");
}

#[test]
fn segments_reach_every_rank_through_a_window() {
    let log = [("MULTIPROC_CLUSTER_LOG", "1")];
    let stderr = on_three_ranks(&[], "inner_large_segment", &log);
    for rank in [1, 2] {
        let lines: Vec<&str> = stderr
            .lines()
            .filter(|l| l.contains(&format!("(83886080 bytes) to rank {rank}:")))
            .collect();
        // Once per rank, though two maps used it, and read one-sided.
        assert_eq!(lines.len(), 1, "rank {rank}:\n{stderr}");
        assert!(lines[0].ends_with("read through the window"), "{stderr}");
    }
    // Turned off, the same segment goes as a message to each rank, and reads the same.
    let off = [("MULTIPROC_CLUSTER_LOG", "1"), ("MULTIPROC_ONE_SIDED", "0")];
    let stderr = on_three_ranks(&[], "inner_large_segment", &off);
    assert_eq!(
        stderr.matches("(83886080 bytes) to rank").count(),
        2,
        "{stderr}"
    );
    assert_eq!(stderr.matches("sent as a message").count(), 2, "{stderr}");
}

#[test]
#[ignore = "rank 0 of an mpirun that a_task_that_kills_its_worker_on_rank_2_fails_only_its_item starts"]
fn inner_worker_dies_on_rank_2() {
    let dir = std::env::temp_dir().join(format!("multiproc-cluster-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let items =
        |mark: &str| -> Vec<(u64, PathBuf)> { (0..400).map(|x| (x, dir.join(mark))).collect() };
    // Without retries, the item fails with WorkerDied, and names the rank.
    let pool = Pool::builder().cluster().workers(1).build().unwrap();
    let e = pool.map(dies_once_on_rank_2, &items("first")).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::WorkerDied, "{e}");
    assert!(e.to_string().contains("rank 2"), "{e}");
    // The rank replaced its worker, and the pool goes on, on every rank.
    let all: Vec<u64> = (0..600).collect();
    assert_eq!(
        ranks_seen(&pool.map(place, &all).unwrap()),
        BTreeSet::from([0, 1, 2])
    );
    drop(pool);
    // With a retry, the lost item runs again on a fresh worker and the map succeeds.
    let pool = Pool::builder()
        .cluster()
        .workers(1)
        .retries(1)
        .build()
        .unwrap();
    let got = pool.map(dies_once_on_rank_2, &items("second")).unwrap();
    assert_eq!(got, (1..=400).collect::<Vec<u64>>());
    assert!(
        dir.join("second").exists(),
        "the task did kill a worker on rank 2"
    );
    std::fs::remove_dir_all(&dir).unwrap();
    println!("CLUSTER-OK");
}

#[test]
fn a_task_that_kills_its_worker_on_rank_2_fails_only_its_item() {
    on_three_ranks(&[], "inner_worker_dies_on_rank_2", &[]);
}

#[test]
#[ignore = "rank 0 of an mpirun that a_rank_killed_outright_is_reported_and_the_job_goes_on starts"]
fn inner_rank_killed() {
    let started = Instant::now();
    let pool = Pool::builder().cluster().workers(1).build().unwrap();
    let items: Vec<u64> = (0..400).collect();
    let e = pool.map(kills_rank_2, &items).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::WorkerDied, "{e}");
    assert!(e.to_string().contains("rank 2"), "{e}");
    assert!(e.to_string().contains("stopped answering"), "{e}");
    // The other ranks go on.
    let seen = ranks_seen(&pool.map(place, &items).unwrap());
    assert_eq!(seen, BTreeSet::from([0, 1]));
    drop(pool);
    // And a pool opened afterwards, with a retry, runs on the ranks left.
    let pool = Pool::builder()
        .cluster()
        .workers(1)
        .retries(1)
        .build()
        .unwrap();
    assert_eq!(pool.workers(), 2);
    assert_eq!(pool.map(square, &items).unwrap()[19], 361);
    println!("CLUSTER-OK after {:?}", started.elapsed());
}

#[test]
fn a_rank_killed_outright_is_reported_and_the_job_goes_on() {
    // By default Open MPI ends the whole job when a rank dies; --enable-recovery lets
    // the others go on (see the README's "Running on a cluster").
    on_three_ranks(
        &["--enable-recovery"],
        "inner_rank_killed",
        &[("MULTIPROC_RANK_TIMEOUT", "4")],
    );
}

#[test]
fn the_example_prints_the_same_on_three_ranks_as_alone() {
    let example = common::example_binary("cluster");
    let alone = Command::new(&example).output().unwrap();
    assert!(alone.status.success());
    let ranks = mpirun(&["-n", "3"], &example, &[], &[]);
    let stderr = String::from_utf8_lossy(&ranks.stderr);
    assert!(ranks.status.success(), "{stderr}");
    assert_eq!(
        String::from_utf8_lossy(&ranks.stdout),
        String::from_utf8_lossy(&alone.stdout)
    );
    for r in ["rank 0", "rank 1", "rank 2"] {
        assert!(stderr.contains(r), "no task ran on {r}: {stderr}");
    }
}

#[test]
#[ignore = "rank 0 of an mpirun that a_rank_running_another_build_is_refused starts"]
fn inner_mismatched_build() {
    let e = Pool::builder().cluster().build().unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Spawn, "{e}");
    assert!(e.to_string().contains("rank 2"), "{e}");
    assert!(e.to_string().contains("different build"), "{e}");
    // The global pool cannot start either, with the same error.
    assert_eq!([1u64].par_map(square).unwrap_err().kind(), ErrorKind::Spawn);
    println!("CLUSTER-OK");
}

#[test]
fn a_rank_running_another_build_is_refused() {
    // Ranks 0 and 1 run this test binary, rank 2 the example: another build.
    let example = common::example_binary("cluster");
    on_ranks(
        &["-n", "2"],
        "inner_mismatched_build",
        &[":", "-n", "1", example.to_str().unwrap()],
        &[],
    );
}

#[test]
fn a_cluster_pool_outside_a_launcher_says_why() {
    let e = Pool::builder().cluster().build().unwrap_err();
    assert_eq!(e.kind(), ErrorKind::InvalidConfig);
    assert!(e.to_string().contains("MPI launcher"), "{e}");
    // And the global pool is the local one.
    assert_eq!([3u64].par_map(square).unwrap(), [9]);
}

#[path = "cluster/namespaces.rs"]
mod namespaces;
