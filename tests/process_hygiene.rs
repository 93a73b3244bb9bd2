//! Process hygiene: no hang behind a forked grandchild, a stopped job or a fork; no
//! zombie; a stack overflow named as one.
#![allow(clippy::unwrap_used)] // tests: a failed unwrap is a failed test

mod common;

use std::path::{Path, PathBuf};
use std::time::Duration;

use multiproc::ErrorKind;
use multiproc::prelude::*;

/// Forks a child that sleeps `s` seconds, holding everything the worker had open (its
/// socket included); returns the child's pid.
#[parallel]
fn fork_child(s: u64) -> i32 {
    // SAFETY: the child only sleeps and leaves with `_exit`, both async-signal-safe.
    let pid = unsafe { libc::fork() };
    if pid == 0 {
        // SAFETY: as above.
        unsafe {
            libc::sleep(s as u32);
            libc::_exit(0)
        }
    }
    pid
}

#[parallel]
fn abort_task(_x: u64) -> u64 {
    std::process::abort()
}

#[parallel]
fn pid_of_worker(_x: u64) -> u32 {
    std::process::id()
}

/// Deadlines of this file: only to detect a hang.
const MINUTE: Duration = Duration::from_secs(60);

/// True once `pid` is gone from `/proc` altogether: exited and reaped (a zombie is not).
fn reaped(pid: u32) -> bool {
    !Path::new(&format!("/proc/{pid}")).exists()
}

#[test]
fn a_worker_that_dies_while_a_task_forked_child_holds_its_socket_is_noticed_at_once() {
    // The worker dies; its forked child lives on with the socket for ten minutes. The
    // death must be seen from the worker process, not from the end of the socket.
    let (e, replaced, grandchild) = common::within(Duration::from_secs(60), || {
        let pool = Pool::new(1).unwrap();
        let grandchild = pool.apply(fork_child, 600).unwrap();
        let e = pool.apply(abort_task, 0).unwrap_err();
        (e, pool.apply(pid_of_worker, 0), grandchild)
    });
    // SAFETY: SIGKILL to the grandchild this test made.
    unsafe { libc::kill(grandchild, libc::SIGKILL) };
    assert_eq!(e.kind(), ErrorKind::WorkerDied, "{e}");
    assert!(e.to_string().contains("SIGABRT"), "{e}");
    assert!(e.to_string().contains("item 0"), "{e}");
    assert!(replaced.is_ok(), "{replaced:?}");
}

#[test]
fn a_worker_killed_while_the_pool_is_idle_is_reaped_and_replaced_without_a_call() {
    let pool = Pool::new(1).unwrap();
    let pid = pool.apply(pid_of_worker, 0).unwrap();
    // SAFETY: SIGKILL to this pool's worker.
    assert_eq!(unsafe { libc::kill(pid as i32, libc::SIGKILL) }, 0);
    // No call is made meanwhile: the driver notices by itself.
    common::eventually("the killed idle worker is reaped", MINUTE, || reaped(pid));
    let replacement = pool.apply(pid_of_worker, 0).unwrap();
    assert_ne!(replacement, pid);
}

/// Children of this process that are zombies: exited, never reaped.
fn zombie_children() -> Vec<u32> {
    let me = std::process::id();
    std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
                return false;
            };
            let Some((_, rest)) = stat.rsplit_once(')') else {
                return false;
            };
            let mut fields = rest.split_whitespace();
            let state = fields.next();
            let ppid = fields.next().and_then(|p| p.parse::<u32>().ok());
            state == Some("Z") && ppid == Some(me)
        })
        .collect()
}

#[test]
#[ignore = "run as a child process by the fd-exhaustion test"]
fn few_descriptors_child() {
    if !common::is_child() {
        return;
    }
    let limit = libc::rlimit {
        rlim_cur: 16,
        rlim_max: 16 << 10,
    };
    // SAFETY: setrlimit reads the struct we pass.
    assert_eq!(unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &limit) }, 0);
    let mut kinds = Vec::new();
    for _ in 0..20 {
        match Pool::new(4) {
            Ok(pool) => drop(pool),
            Err(e) => kinds.push(e.kind()),
        }
    }
    let raised = libc::rlimit {
        rlim_cur: 1024,
        rlim_max: 16 << 10,
    };
    // SAFETY: as above.
    assert_eq!(unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &raised) }, 0);
    assert!(
        !kinds.is_empty(),
        "16 descriptors were enough for 4 workers"
    );
    assert!(
        kinds
            .iter()
            .all(|k| matches!(k, ErrorKind::Spawn | ErrorKind::Io)),
        "{kinds:?}"
    );
    println!("zombies: {:?}", zombie_children());
}

#[test]
fn a_pool_that_fails_to_start_for_want_of_descriptors_leaves_no_zombie() {
    let stdout = common::child_stdout("few_descriptors_child", &[]);
    assert!(stdout.contains("zombies: []"), "{stdout}");
}

#[parallel]
fn times_two(x: u64) -> u64 {
    x * 2
}

#[test]
#[ignore = "run as a child process by the fork test"]
fn fork_after_the_pool_child() {
    if !common::is_child() {
        return;
    }
    let data: Vec<u64> = (0..100).collect();
    assert_eq!(data.par_map(times_two).unwrap()[99], 198);
    let pool = Pool::new(1).unwrap();
    assert_eq!(pool.apply(times_two, 2).unwrap(), 4);
    // SAFETY: the child runs Rust code after fork in a process with other threads: the
    // test keeps it to what cannot deadlock here (no lock is held by those threads
    // while they wait for work), and leaves with `_exit`.
    let pid = unsafe { libc::fork() };
    if pid == 0 {
        // The global pool is the parent's: the child gets one of its own.
        let ok = data.par_map(times_two).is_ok_and(|v| v[99] == 198);
        // An explicit pool of the parent's is refused, not a hang.
        let refused = pool
            .apply(times_two, 3)
            .is_err_and(|e| e.kind() == ErrorKind::Closed && e.to_string().contains("fork"));
        drop(pool);
        let code = if ok && refused { 0 } else { 1 + i32::from(ok) };
        // SAFETY: leaving the forked child without running the parent's exit handlers.
        unsafe { libc::_exit(code) }
    }
    let mut status = 0;
    // SAFETY: waits for the child just forked.
    assert_eq!(unsafe { libc::waitpid(pid, &mut status, 0) }, pid);
    assert!(libc::WIFEXITED(status), "{status:#x}");
    println!("forked child exited with {}", libc::WEXITSTATUS(status));
    // The parent's pools still work.
    assert_eq!(pool.apply(times_two, 5).unwrap(), 10);
    assert_eq!(data.par_map(times_two).unwrap()[1], 2);
}

#[test]
fn par_map_in_a_forked_child_gets_a_pool_of_its_own() {
    let stdout = common::within(Duration::from_secs(120), || {
        common::child_stdout("fork_after_the_pool_child", &[])
    });
    assert!(stdout.contains("forked child exited with 0"), "{stdout}");
}

/// Marks that it started, then sleeps `ms` (wall time, which a stop also uses up).
#[parallel]
fn marked_nap(dir: String, ms: u64) -> u64 {
    std::fs::write(PathBuf::from(dir).join("napping"), b"").unwrap();
    std::thread::sleep(Duration::from_millis(ms));
    ms
}

#[test]
#[ignore = "run as a child process by the stop test"]
fn stopped_job_child() {
    if !common::is_child() {
        return;
    }
    let dir = std::env::var("STOP_DIR").unwrap();
    let pool = Pool::builder()
        .workers(1)
        .task_timeout(Duration::from_secs(3))
        .build()
        .unwrap();
    let r = pool.apply(marked_nap, (dir, 1500));
    println!("result: {r:?}");
}

#[test]
fn a_job_stopped_with_ctrl_z_and_continued_gets_no_false_timeout() {
    let dir = std::env::temp_dir().join(format!("multiproc-stop-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let exe = std::env::current_exe().unwrap();
    let mut cmd = std::process::Command::new(exe);
    cmd.args([
        "stopped_job_child",
        "--exact",
        "--include-ignored",
        "--nocapture",
    ])
    .env("MULTIPROC_TEST_CHILD", "1")
    .env("STOP_DIR", &dir)
    .stdout(std::process::Stdio::piped());
    // A job of its own, as a shell makes one: Ctrl-Z stops the whole process group.
    std::os::unix::process::CommandExt::process_group(&mut cmd, 0);
    let child = cmd.spawn().unwrap();
    let pgid = child.id() as i32;
    common::eventually("the task starts", MINUTE, || dir.join("napping").exists());
    // SAFETY: signals to the process group of the child this test started.
    unsafe { libc::kill(-pgid, libc::SIGSTOP) };
    // Stopped for longer than the time limit (this wait is the point of the test).
    std::thread::sleep(Duration::from_secs(4));
    // SAFETY: as above.
    unsafe { libc::kill(-pgid, libc::SIGCONT) };
    let out = common::within(Duration::from_secs(60), move || {
        child.wait_with_output().unwrap()
    });
    let stdout = String::from_utf8_lossy(&out.stdout);
    let _ = std::fs::remove_dir_all(&dir);
    assert!(stdout.contains("result: Ok(1500)"), "{stdout}");
}

#[parallel]
fn recurse(depth: u64) -> u64 {
    // Each frame keeps a buffer alive across the call, so the recursion cannot be turned
    // into a loop.
    let buf = std::hint::black_box([depth as u8; 1024]);
    if depth == u64::MAX {
        return 0;
    }
    recurse(depth + 1) + u64::from(buf[0])
}

#[test]
fn a_stack_overflow_in_a_task_is_named_as_one() {
    let pool = Pool::new(1).unwrap();
    let e = pool.apply(recurse, 0).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::WorkerDied, "{e}");
    assert!(e.to_string().contains("overflowed its stack"), "{e}");
    assert!(e.to_string().contains("SIGSEGV"), "{e}");
    assert_eq!(pool.apply(times_two, 4).unwrap(), 8);
}

/// Whether this worker's environment, as `/proc` shows it, still holds the marker.
#[parallel]
fn marker_visible(_x: u64) -> (bool, bool) {
    let environ = std::fs::read("/proc/self/environ").unwrap();
    let text = String::from_utf8_lossy(&environ);
    (
        text.contains("MULTIPROC_WORKER=token="),
        std::env::var_os("MULTIPROC_WORKER").is_some(),
    )
}

#[test]
fn the_marker_is_gone_from_a_workers_environment_and_its_proc_entry() {
    let pool = Pool::new(1).unwrap();
    assert_eq!(pool.apply(marker_visible, 0).unwrap(), (false, false));
}

/// On item 7, closes every socket descriptor of its worker (the worker's own among
/// them), as a task that closes "all the descriptors it inherited" would.
#[parallel]
fn close_sockets_on_7(x: u64) -> u64 {
    if x == 7 {
        for fd in std::fs::read_dir("/proc/self/fd").unwrap().flatten() {
            let target = std::fs::read_link(fd.path()).unwrap_or_default();
            if target.to_string_lossy().starts_with("socket:") {
                let n: i32 = fd.file_name().to_str().unwrap().parse().unwrap();
                // SAFETY: closing a descriptor of this process; that is the fault.
                unsafe { libc::close(n) };
            }
        }
    }
    x
}

#[test]
fn a_task_that_closes_its_workers_socket_is_named_as_the_item_that_did() {
    let data: Vec<u64> = (0..20).collect();
    // One item per chunk: the exact item.
    let pool = Pool::builder().workers(1).chunk_size(1).build().unwrap();
    let e = pool.map(close_sockets_on_7, &data).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::WorkerDied, "{e}");
    assert_eq!(e.task_index(), Some(7), "{e}");
    assert!(e.to_string().contains("item 7"), "{e}");
    assert!(e.to_string().contains("the task closed it"), "{e}");
    assert_eq!(pool.apply(times_two, 1).unwrap(), 2, "the pool was healed");
    // Five items per chunk: the chunk that held it, no other.
    let pool = Pool::builder().workers(1).chunk_size(5).build().unwrap();
    let e = pool.map(close_sockets_on_7, &data).unwrap_err();
    assert!(e.to_string().contains("items 5..10"), "{e}");
}

/// Whether every thread of `pid` is stopped (state `T` in `/proc/PID/task/TID/stat`).
fn every_thread_stopped(pid: u32) -> bool {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return false;
    };
    tasks.flatten().all(|task| {
        let stat = std::fs::read_to_string(task.path().join("stat")).unwrap_or_default();
        // The state follows the command name, which is in parentheses.
        stat.rsplit_once(") ")
            .is_some_and(|(_, rest)| rest.starts_with('T'))
    })
}

#[test]
fn a_stopped_worker_without_a_time_limit_holds_its_call_until_it_is_continued() {
    let pool = Pool::new(1).unwrap();
    let pid = pool.apply(pid_of_worker, 0).unwrap();
    // SAFETY: SIGSTOP to this pool's worker.
    assert_eq!(unsafe { libc::kill(pid as i32, libc::SIGSTOP) }, 0);
    // `kill` returns once the signal is queued; each of the worker's threads stops when
    // it next enters the kernel, and one spinning on the direct path could still take
    // the call below. Wait until every thread shows as stopped.
    common::eventually("the worker stops", MINUTE, || every_thread_stopped(pid));
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::scope(|s| {
        s.spawn(|| {
            let _ = tx.send(pool.apply(times_two, 21));
        });
        // A stopped process cannot answer: the call waits (documented), it does not fail.
        if let Ok(early) = rx.recv_timeout(Duration::from_millis(500)) {
            panic!("answered while its worker {pid} was stopped: {early:?}");
        }
        // SAFETY: SIGCONT to the worker stopped above.
        assert_eq!(unsafe { libc::kill(pid as i32, libc::SIGCONT) }, 0);
        let answer = rx
            .recv_timeout(Duration::from_secs(60))
            .expect("answered once continued");
        assert_eq!(answer.unwrap(), 42);
    });
}
