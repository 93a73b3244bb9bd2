//! Initializers and exit tasks: what runs in every worker before its first task and when
//! it leaves, with real worker processes killed, timed out and recycled.
#![allow(clippy::unwrap_used)] // tests: a failed unwrap is a failed test

mod common;

use std::cell::Cell;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use multiproc::ErrorKind;
use multiproc::prelude::*;

thread_local! {
    /// Set by `init` on the thread that runs it: the tasks read it back.
    static STATE: Cell<Option<u64>> = const { Cell::new(None) };
}
/// Set once per worker process by `init`.
static DIR: OnceLock<PathBuf> = OnceLock::new();

/// A fresh directory for one test's mark files.
fn mark_dir(test: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("multiproc-init-{test}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// The pids named by the mark files `prefix-PID` in `dir`, sorted.
fn marked(dir: &Path, prefix: &str) -> Vec<u32> {
    let mut pids: Vec<u32> = std::fs::read_dir(dir)
        .unwrap()
        .flatten()
        .filter_map(|e| {
            let name = e.file_name().into_string().ok()?;
            name.strip_prefix(&format!("{prefix}-"))?.parse().ok()
        })
        .collect();
    pids.sort_unstable();
    pids
}

/// Leaves `init-PID` (one per run: a second run in one process would add to the file),
/// and the state the tasks read.
#[parallel]
fn init(dir: String) {
    use std::io::Write;
    let pid = std::process::id();
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(Path::new(&dir).join(format!("init-{pid}")))
        .unwrap();
    f.write_all(b"ran\n").unwrap();
    STATE.with(|s| s.set(Some(u64::from(pid) * 10)));
    let _ = DIR.set(PathBuf::from(dir));
}

/// Leaves `exit-PID`.
#[parallel]
fn leave(dir: String) {
    std::fs::write(
        Path::new(&dir).join(format!("exit-{}", std::process::id())),
        "",
    )
    .unwrap();
}

/// What a task sees of its worker's initializer: its pid, the thread-local state, and
/// whether the `OnceLock` was set.
#[parallel]
fn seen(x: u64) -> (u32, Option<u64>, bool) {
    let _ = x;
    (
        std::process::id(),
        STATE.with(Cell::get),
        DIR.get().is_some(),
    )
}

/// As `seen`, but item 3 kills its worker the first time (it leaves a mark), and item 5
/// outruns any time limit.
#[parallel]
fn seen_or_die(x: u64) -> (u32, Option<u64>, bool) {
    let dir = DIR.get().unwrap();
    if x == 3 && std::fs::create_dir(dir.join("died")).is_ok() {
        // SAFETY: SIGKILL to this worker process itself: the fault under test.
        unsafe { libc::kill(libc::getpid(), libc::SIGKILL) };
    }
    if x == 5 && std::fs::create_dir(dir.join("slept")).is_ok() {
        std::thread::sleep(Duration::from_secs(60));
    }
    seen(x)
}

/// Every answer shows that its worker ran `init` once, on the task's thread, and each
/// pid that answered left exactly one `init` mark.
fn assert_initialized(dir: &Path, answers: &[(u32, Option<u64>, bool)]) {
    for &(pid, state, once) in answers {
        assert_eq!(
            state,
            Some(u64::from(pid) * 10),
            "worker {pid}: thread_local"
        );
        assert!(once, "worker {pid}: OnceLock");
        let runs = std::fs::read_to_string(dir.join(format!("init-{pid}"))).unwrap();
        assert_eq!(runs, "ran\n", "worker {pid} ran its initializer once");
    }
}

#[test]
fn every_worker_runs_its_initializer_once_before_its_first_task() {
    let dir = mark_dir("every");
    let pool = Pool::builder()
        .workers(3)
        .initializer(init, dir.display().to_string())
        .build()
        .unwrap();
    let items: Vec<u64> = (0..200).collect();
    let answers = pool.map(seen, &items).unwrap();
    assert_initialized(&dir, &answers);
    // apply (the direct path) and apply_async see the same state.
    assert_initialized(&dir, &[pool.apply(seen, 1).unwrap()]);
    assert_initialized(&dir, &[pool.apply_async(seen, 2).get().unwrap()]);
    drop(pool);
    // The three workers of the pool, each once.
    assert_eq!(marked(&dir, "init").len(), 3);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_replacement_after_a_kill_a_retry_or_a_time_out_runs_it_too() {
    let dir = mark_dir("replaced");
    // A worker killed by its task; item 3 retried on a fresh worker (the only one).
    let pool = Pool::builder()
        .workers(1)
        .chunk_size(1)
        .retries(1)
        .initializer(init, dir.display().to_string())
        .build()
        .unwrap();
    let answers = pool.map(seen_or_die, &[0, 1, 2, 3, 4]).unwrap();
    assert_initialized(&dir, &answers);
    drop(pool);
    assert!(dir.join("died").exists(), "item 3 killed a worker");
    // The killed worker and its replacement, which ran item 3 (and any item whose
    // answer the killed one still held back).
    let inits = marked(&dir, "init");
    assert_eq!(
        inits.len(),
        2,
        "one at the start, one replacement: {inits:?}"
    );
    assert!(inits.contains(&answers[3].0), "{inits:?} {answers:?}");
    // A worker killed for its time limit.
    let pool = Pool::builder()
        .workers(1)
        .task_timeout(Duration::from_secs(2))
        .initializer(init, dir.display().to_string())
        .build()
        .unwrap();
    let e = pool.apply(seen_or_die, 5).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Timeout, "{e}");
    let after = pool.apply(seen_or_die, 6).unwrap();
    assert_initialized(&dir, &[after]);
    drop(pool);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn recycled_workers_run_the_initializer_and_the_exit_task_once_each() {
    let dir = mark_dir("recycled");
    let arg = dir.display().to_string();
    let pool = Pool::builder()
        .workers(1)
        .max_tasks_per_worker(2)
        .initializer(init, arg.clone())
        .on_worker_exit(leave, arg)
        .build()
        .unwrap();
    let answers = pool.map(seen, &[0, 1, 2, 3, 4, 5]).unwrap();
    assert_initialized(&dir, &answers);
    let mut pids: Vec<u32> = answers.iter().map(|a| a.0).collect();
    pids.dedup();
    assert_eq!(pids.len(), 3, "two items per worker: {pids:?}");
    drop(pool); // the last worker leaves as the pool closes
    pids.sort_unstable();
    assert_eq!(marked(&dir, "init"), pids);
    assert_eq!(marked(&dir, "exit"), pids);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn the_exit_task_does_not_run_in_a_killed_worker_nor_on_terminate() {
    let dir = mark_dir("killed");
    let arg = dir.display().to_string();
    let pool = Pool::builder()
        .workers(1)
        .initializer(init, arg.clone())
        .on_worker_exit(leave, arg)
        .build()
        .unwrap();
    let first = pool.apply(seen, 0).unwrap().0;
    let e = pool.apply(seen_or_die, 3).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::WorkerDied, "{e}");
    let second = pool.apply(seen, 0).unwrap().0;
    assert_ne!(first, second);
    pool.terminate();
    assert_eq!(marked(&dir, "init").len(), 2);
    assert!(
        marked(&dir, "exit").is_empty(),
        "{:?}",
        marked(&dir, "exit")
    );
    let _ = std::fs::remove_dir_all(&dir);
}

/// Leaves a mark for each attempt, then panics.
#[parallel]
fn failing_init(dir: String) {
    let n = std::fs::read_dir(&dir).unwrap().count();
    std::fs::write(Path::new(&dir).join(format!("attempt-{n}")), "").unwrap();
    panic!("the model file is missing");
}

/// Kills its own worker.
#[parallel]
fn fatal_init(unit: ()) {
    let () = unit;
    std::process::abort();
}

#[test]
fn a_panicking_initializer_fails_the_items_with_its_message_and_pauses_between_tries() {
    let dir = mark_dir("panics");
    let pool = Pool::builder()
        .workers(1)
        .initializer(failing_init, dir.display().to_string())
        .build()
        .unwrap();
    let started = Instant::now();
    for i in 0..5u64 {
        let e = pool.apply(seen, i).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::Spawn, "{e}");
        let text = e.to_string();
        assert!(text.contains("the model file is missing"), "{text}");
        assert!(text.contains("initializer"), "{text}");
        assert!(text.contains("failing_init"), "{text}");
        assert!(e.task_index() == Some(0), "{text}");
    }
    // One attempt at the start and one per call, each after a longer pause than the
    // last (20, 40, 80, 160, 320 ms): not a tight loop.
    assert!(
        started.elapsed() >= Duration::from_millis(600),
        "{:?}",
        started.elapsed()
    );
    let attempts = std::fs::read_dir(&dir).unwrap().count();
    assert_eq!(attempts, 6);
    // A map fails the same way, naming the item.
    let e = pool.map(seen, &[7, 8]).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Spawn, "{e}");
    drop(pool);
    let _ = std::fs::remove_dir_all(&dir);

    let pool = Pool::builder()
        .workers(1)
        .initializer(fatal_init, ())
        .build()
        .unwrap();
    let e = pool.apply(seen, 0).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Spawn, "{e}");
    assert!(e.to_string().contains("SIGABRT"), "{e}");
    assert!(e.to_string().contains("fatal_init"), "{e}");
}

thread_local! {
    static TABLE_SUM: Cell<u64> = const { Cell::new(0) };
}

#[parallel]
fn init_with_table(table: Shared<Vec<u64>>) {
    TABLE_SUM.with(|s| s.set(table.iter().sum()));
}

#[parallel]
fn table_sum(x: u64) -> u64 {
    TABLE_SUM.with(Cell::get) + x
}

#[test]
fn an_initializer_argument_may_hold_shared_memory() {
    let table = Shared::new((0..100_000u64).collect::<Vec<_>>()).unwrap();
    let sum: u64 = (0..100_000u64).sum();
    let pool = Pool::builder()
        .workers(2)
        .max_tasks_per_worker(3)
        .initializer(init_with_table, table)
        .build()
        .unwrap();
    let items: Vec<u64> = (0..10).collect();
    let expected: Vec<u64> = items.iter().map(|x| sum + x).collect();
    assert_eq!(pool.map(table_sum, &items).unwrap(), expected);
}

/// The first worker to run it passes; any other waits (60 s at most, then fails) for
/// `go` in `dir`.
#[parallel]
fn init_gated(dir: String) {
    let dir = Path::new(&dir);
    if std::fs::create_dir(dir.join("first")).is_ok() {
        return;
    }
    common::eventually("the test's go", Duration::from_secs(60), || {
        dir.join("go").exists()
    });
}

/// Leaves `met-PID` in `dir`, waits (60 s at most, then fails) until two workers have,
/// and returns its pid.
#[parallel]
fn meet(dir: String) -> u32 {
    let pid = std::process::id();
    let dir = Path::new(&dir);
    std::fs::write(dir.join(format!("met-{pid}")), "").unwrap();
    common::eventually("a second worker", Duration::from_secs(60), || {
        marked(dir, "met").len() >= 2
    });
    pid
}

#[test]
fn the_pool_answers_once_one_worker_is_ready() {
    let dir = mark_dir("gated");
    let arg = dir.display().to_string();
    let gate = arg.clone();
    // One worker is held in its initializer until `go`: the pool answers without it (a
    // start that waited for both would wait out the gate's 60 s, past this deadline).
    let pool = common::within(Duration::from_secs(30), move || {
        Pool::builder()
            .workers(2)
            .initializer(init_gated, gate)
            .build()
            .unwrap()
    });
    // Both processes are the pool's already.
    assert_eq!(pool.stats().workers.len(), 2);
    // It serves from the ready worker meanwhile, by the queue and by the direct path.
    let items: Vec<u64> = (0..20).collect();
    let pids = pool.map(seen, &items).unwrap();
    let first = pids[0].0;
    assert!(pids.iter().all(|p| p.0 == first), "{pids:?}");
    assert_eq!(pool.apply(seen, 1).unwrap().0, first);
    std::fs::write(dir.join("go"), "").unwrap();
    // The late worker takes its share of the work once ready.
    let met = pool.map(meet, &[arg.clone(), arg]).unwrap();
    assert!(
        met.contains(&first) && met.iter().any(|&p| p != first),
        "{met:?}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}
