//! No data race reachable from safe code through `SharedSliceMut`, whatever path a
//! range takes; a worker token that is never guessable.
#![allow(clippy::unwrap_used)] // tests: a failed unwrap is a failed test

mod common;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use multiproc::prelude::*;
use multiproc::{ErrorKind, SharedChunkMut, SharedSliceMut};
use serde::{Deserialize, Serialize};

/// A fresh directory for this test's mark files.
fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("multiproc-sound-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// Waits (a minute at most: only to detect a hang) until `path` exists.
fn wait_for(path: &Path) {
    let what = format!("{} appears", path.display());
    common::eventually(&what, Duration::from_secs(60), || path.exists());
}

/// Says it started (a mark file named after its range, holding its pid), waits for the
/// gate file, then writes 7 over its range.
#[parallel]
fn fill_at_gate(mut c: SharedChunkMut<u64>, dir: String) -> u64 {
    let dir = PathBuf::from(dir);
    let mark = dir.join(format!("started-{}", c.offset()));
    std::fs::write(&mark, std::process::id().to_string()).unwrap();
    wait_for(&dir.join("gate"));
    for x in c.iter_mut() {
        *x = 7;
    }
    c.len() as u64
}

fn dir_arg(dir: &Path) -> String {
    dir.to_str().unwrap().to_owned()
}

/// Polls `as_slice` until it stops refusing (a minute at most).
fn wait_readable(out: &SharedSliceMut<u64>) -> &[u64] {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        match out.as_slice() {
            Ok(s) => return s,
            Err(e) => {
                assert_eq!(e.kind(), ErrorKind::InvalidConfig, "{e}");
                assert!(Instant::now() < deadline, "the range was never given back");
                std::thread::sleep(Duration::from_millis(2));
            }
        }
    }
}

#[test]
fn a_range_lent_to_apply_async_stays_unreadable_until_the_task_answered() {
    let dir = scratch("async");
    let pool = Pool::new(1).unwrap();
    let mut out = SharedSliceMut::<u64>::zeroed(1024).unwrap();
    let part = out.chunks_mut(1024).unwrap().into_iter().next().unwrap();
    // The handle to the result is dropped at once: the task runs anyway, and its lease
    // must outlive the handle and the range handle, both gone here.
    drop(pool.apply_async(fill_at_gate, (part, dir_arg(&dir))));
    wait_for(&dir.join("started-0"));
    let e = out.as_slice().unwrap_err();
    assert_eq!(e.kind(), ErrorKind::InvalidConfig, "{e}");
    assert!(out.as_mut_slice().is_err());
    assert!(out.chunks_mut(8).is_err(), "new ranges while one is lent");
    std::fs::write(dir.join("gate"), b"").unwrap();
    // Readable only once the task has answered: then every element is written.
    let values = wait_readable(&out);
    assert!(
        values.iter().all(|&v| v == 7),
        "read before the task was done"
    );
    drop(pool);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_range_sent_through_process_is_lent_until_the_child_is_reaped() {
    let dir = scratch("process");
    let mut out = SharedSliceMut::<u64>::zeroed(64).unwrap();
    let part = out.chunks_mut(64).unwrap().into_iter().next().unwrap();
    let p = Process::spawn(fill_at_gate, (part, dir_arg(&dir))).unwrap();
    wait_for(&dir.join("started-0"));
    assert_eq!(out.as_slice().unwrap_err().kind(), ErrorKind::InvalidConfig);
    std::fs::write(dir.join("gate"), b"").unwrap();
    assert_eq!(p.join().unwrap(), 64);
    assert!(out.as_slice().unwrap().iter().all(|&v| v == 7));
    let _ = std::fs::remove_dir_all(&dir);
}

/// The directory of `fill_gated`'s marks for the test process `parent`.
fn gated_dir(parent: u32) -> PathBuf {
    std::env::temp_dir().join(format!("multiproc-sound-{parent}-twice"))
}

/// `fill_at_gate` with its directory found from the parent's pid: a task of one
/// argument, so that `map` can borrow the range handles.
#[parallel]
fn fill_gated(c: SharedChunkMut<u64>) -> u64 {
    let dir = gated_dir(std::os::unix::process::parent_id());
    fill_at_gate(c, dir_arg(&dir))
}

#[test]
fn a_range_is_in_one_task_at_a_time_and_its_handle_gives_no_access_meanwhile() {
    let dir = gated_dir(std::process::id());
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let pool = Pool::new(2).unwrap();
    let mut out = SharedSliceMut::<u64>::zeroed(1000).unwrap();
    let parts = out.chunks_mut(500).unwrap();
    std::thread::scope(|s| {
        // `map` takes `&[A]`: both threads borrow the same range handles.
        let first = s.spawn(|| pool.map(fill_gated, &parts));
        wait_for(&dir.join("started-0"));
        // A second map over the same ranges, from another thread, while they are lent.
        let e = pool.map(fill_gated, &parts).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::Serialization, "{e}");
        assert!(e.to_string().contains("elements 0..500"), "{e}");
        assert!(e.to_string().contains("already lent"), "{e}");
        // Nor can this process read or write a lent range through its handle.
        let read = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| parts[0][0]));
        assert!(read.is_err(), "a lent range was read through its handle");
        std::fs::write(dir.join("gate"), b"").unwrap();
        assert_eq!(first.join().unwrap().unwrap(), vec![500, 500]);
    });
    // Answered: the ranges can go to a task again.
    assert_eq!(pool.map(fill, &parts).unwrap(), vec![500, 500]);
    drop(parts);
    assert!(out.as_slice().unwrap().iter().all(|&v| v == 3));
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_range_read_in_the_parent_through_its_handle_is_never_sent() {
    let pool = Pool::new(1).unwrap();
    let mut out = SharedSliceMut::<u64>::zeroed(16).unwrap();
    let mut parts = out.chunks_mut(8).unwrap();
    // Through `&mut`: allowed, and the range can still be sent after.
    parts[1][0] = 5;
    // Through `&`: the borrow may outlive any check, so the range is pinned here.
    let first: &[u64] = &parts[0];
    assert_eq!(first.len(), 8);
    let e = pool.map(fill, &parts).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Serialization, "{e}");
    assert!(e.to_string().contains("elements 0..8"), "{e}");
    assert!(e.to_string().contains("Deref"), "{e}");
    assert_eq!(pool.map(fill, &parts[1..]).unwrap(), vec![8]);
    drop(parts);
    let values = out.as_slice().unwrap();
    assert!(values[..8].iter().all(|&v| v == 0), "{values:?}");
    assert!(values[8..].iter().all(|&v| v == 3), "{values:?}");
}

#[parallel]
fn fill(mut c: SharedChunkMut<u64>) -> u64 {
    for x in c.iter_mut() {
        *x = 3;
    }
    c.len() as u64
}

/// Hides a range handle in a struct: the macro cannot see it in the result type.
#[derive(Serialize, Deserialize)]
struct Smuggled {
    range: SharedChunkMut<u64>,
}

#[parallel]
fn smuggle_back(c: SharedChunkMut<u64>) -> Smuggled {
    Smuggled { range: c }
}

#[test]
fn a_range_never_comes_back_out_of_a_worker_as_a_writer() {
    let pool = Pool::new(1).unwrap();
    let mut out = SharedSliceMut::<u64>::zeroed(1000).unwrap();
    let parts = out.chunks_mut(1000).unwrap();
    // The worker refuses to serialize a range it received.
    let e = pool.map(smuggle_back, &parts).err().unwrap();
    assert_eq!(e.kind(), ErrorKind::Serialization, "{e}");
    assert!(e.to_string().contains("cannot leave it"), "{e}");
    // (That the parent refuses to decode one, as a hostile worker could send it, is a
    // unit test of the runtime: only it can make the bytes of a live handle.)
    drop(parts);
    let mut parts = out.chunks_mut(500).unwrap();
    let q: Queue<SharedChunkMut<u64>> = Queue::new().unwrap();
    let e = q.put(parts.pop().unwrap()).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Serialization, "{e}");
    assert!(e.to_string().contains("travels only as an argument"), "{e}");
    drop(parts);
    assert!(out.as_slice().is_ok());
}

#[parallel]
fn ping(n: u64) -> u64 {
    n
}

/// Keeps its range past its return, in a thread that writes it later.
#[parallel]
fn keep_range(mut c: SharedChunkMut<u64>) -> u64 {
    std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(200));
        for x in c.iter_mut() {
            *x = 9;
        }
    });
    0
}

#[test]
fn a_task_that_keeps_its_range_costs_its_worker_and_the_range_is_given_back_after() {
    let pool = Pool::new(1).unwrap();
    let mut out = SharedSliceMut::<u64>::zeroed(64).unwrap();
    let parts = out.chunks_mut(64).unwrap();
    let e = pool.map(keep_range, &parts).unwrap_err();
    assert!(e.to_string().contains("kept a SharedChunkMut"), "{e}");
    assert_eq!(e.task_index(), Some(0), "{e}");
    drop(parts);
    // The worker was killed and reaped before the range came back: nothing writes it.
    let before: Vec<u64> = out.as_slice().unwrap().to_vec();
    assert_eq!(
        pool.apply(ping, 1).unwrap(),
        1,
        "the pool replaced the worker"
    );
    assert_eq!(out.as_slice().unwrap(), &before[..]);
}

#[test]
fn a_range_whose_worker_is_killed_is_given_back_once_it_is_reaped() {
    let dir = scratch("killed");
    let pool = Pool::new(1).unwrap();
    let mut out = SharedSliceMut::<u64>::zeroed(256).unwrap();
    let parts = out.chunks_mut(256).unwrap();
    let r = pool.apply_async(
        fill_at_gate,
        (parts.into_iter().next().unwrap(), dir_arg(&dir)),
    );
    let mark = dir.join("started-0");
    wait_for(&mark);
    let pid: i32 = std::fs::read_to_string(&mark).unwrap().parse().unwrap();
    assert_eq!(out.as_slice().unwrap_err().kind(), ErrorKind::InvalidConfig);
    // SAFETY: SIGKILL to the worker that wrote its pid in the mark file.
    assert_eq!(unsafe { libc::kill(pid, libc::SIGKILL) }, 0);
    let e = r.get().unwrap_err();
    assert_eq!(e.kind(), ErrorKind::WorkerDied, "{e}");
    // The reply comes after the reap, and the lease is given back before the reply.
    assert!(out.as_slice().unwrap().iter().all(|&v| v == 0));
    assert!(!common::process_exists(pid as u32));
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn ranges_through_imap_are_given_back_as_their_tasks_answer() {
    let pool = Pool::new(2).unwrap();
    let mut out = SharedSliceMut::<u64>::zeroed(10_000).unwrap();
    let parts = out.chunks_mut(1000).unwrap();
    let done: Vec<u64> = pool
        .imap(fill, parts)
        .collect::<multiproc::Result<_>>()
        .unwrap();
    assert_eq!(done.iter().sum::<u64>(), 10_000);
    assert!(out.as_slice().unwrap().iter().all(|&v| v == 3));
}

/// Makes every `getrandom(2)` of this process fail with EPERM, as a seccomp policy that
/// forbids it would (x86_64 only: the filter names its system call number). The
/// standard library falls back to `/dev/urandom` then; multiproc must not.
#[cfg(target_arch = "x86_64")]
fn forbid_getrandom() {
    const BPF_LD_W_ABS: u16 = 0x20;
    const BPF_JMP_JEQ_K: u16 = 0x15;
    const BPF_RET_K: u16 = 0x06;
    const SECCOMP_RET_ERRNO: u32 = 0x0005_0000;
    const SECCOMP_RET_ALLOW: u32 = 0x7fff_0000;
    let stmt = |code, k| libc::sock_filter {
        code,
        jt: 0,
        jf: 0,
        k,
    };
    let filter = [
        // The system call number is the first field of `struct seccomp_data`.
        stmt(BPF_LD_W_ABS, 0),
        libc::sock_filter {
            code: BPF_JMP_JEQ_K,
            jt: 0,
            jf: 1,
            k: libc::SYS_getrandom as u32,
        },
        stmt(BPF_RET_K, SECCOMP_RET_ERRNO | libc::EPERM as u32),
        stmt(BPF_RET_K, SECCOMP_RET_ALLOW),
    ];
    let prog = libc::sock_fprog {
        len: filter.len() as u16,
        filter: filter.as_ptr().cast_mut(),
    };
    // SAFETY: PR_SET_NO_NEW_PRIVS takes plain integers.
    let rc = unsafe { libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) };
    assert_eq!(rc, 0);
    // SAFETY: a valid filter program that outlives the call; TSYNC applies it to every
    // thread of this (child test) process.
    let rc = unsafe { libc::syscall(libc::SYS_seccomp, 1, 1, &raw const prog) };
    assert_eq!(rc, 0, "seccomp: {}", std::io::Error::last_os_error());
}

#[cfg(target_arch = "x86_64")]
#[test]
#[ignore = "run as a child process by the randomness test"]
fn without_randomness_child() {
    if !common::is_child() {
        return;
    }
    forbid_getrandom();
    for result in [
        Pool::new(1).and_then(|pool| pool.apply(ping, 1)).map(drop),
        Process::spawn(ping, 1).map(drop),
    ] {
        let e = result.unwrap_err();
        println!("refused: {:?}: {e}", e.kind());
    }
}

#[cfg(target_arch = "x86_64")]
#[test]
fn no_worker_starts_when_the_os_gives_no_randomness() {
    let stdout = common::child_stdout("without_randomness_child", &[]);
    let refusals: Vec<&str> = stdout
        .lines()
        .filter_map(|l| Some(&l[l.find("refused: ")?..]))
        .collect();
    assert_eq!(refusals.len(), 2, "{stdout}");
    for line in refusals {
        assert!(line.starts_with("refused: Spawn: "), "{line}");
        assert!(
            line.contains("gave no randomness for the worker's token"),
            "{line}"
        );
    }
}

/// Puts one large message (`n` bytes of 9) and returns.
#[parallel]
fn put_big(q: Queue<Vec<u8>>, n: u64) -> u64 {
    q.put(vec![9u8; n as usize]).unwrap();
    n
}

/// The id of every queue whose lock file this process holds open.
fn held_queues() -> Vec<String> {
    let mut held: Vec<String> = std::fs::read_dir("/proc/self/fd")
        .unwrap()
        .flatten()
        .filter_map(|fd| {
            let target = std::fs::read_link(fd.path()).ok()?;
            let name = target.strip_prefix("/dev/shm").ok()?.to_str()?.to_owned();
            // Its name, or the temporary name the creator opened it under (deleted).
            // `mprocq<id>`, or `mproc<pid>-<id>.lock`.
            let id = match name.strip_prefix("mprocq") {
                Some(id) => id,
                None => &name[name.strip_prefix("mproc")?.find('-')? + 6..],
            };
            id.get(..16).map(str::to_owned)
        })
        .collect();
    held.sort();
    held.dedup();
    held
}

/// The files in `/dev/shm` that belong to queue `id` (its lock file and messages).
fn files_of_queue(id: &str) -> Vec<String> {
    std::fs::read_dir("/dev/shm")
        .unwrap()
        .flatten()
        .filter_map(|e| e.file_name().into_string().ok())
        .filter(|n| n.starts_with(&format!("mprocq{id}")))
        .collect()
}

/// The id of `_queue`: the lock file this process opened while making it.
fn queue_id<T>(_queue: &Queue<T>) -> String {
    // The only queue this (child) process holds is the one just made.
    let held = held_queues();
    assert_eq!(held.len(), 1, "{held:?}");
    held[0].clone()
}

const BIG: u64 = 1 << 20;

/// The large-message cases, run in a child process of their own (so that the queues
/// this process holds are the test's only), under either shared-memory backend.
#[test]
#[ignore = "run as a child process by the queue tests"]
fn large_queue_messages_child() {
    if !common::is_child() {
        return;
    }
    // Lost: once its producer has exited, the message waits in the queue; any later
    // sweep (this process's first large put, another program's start) keeps it.
    let q = Queue::<Vec<u8>>::new().unwrap();
    let id = queue_id(&q);
    Process::spawn(put_big, (q.clone(), BIG))
        .unwrap()
        .join()
        .unwrap();
    q.put(vec![1u8; BIG as usize]).unwrap();
    common::child_stdout("sweeping_child", &[]);
    assert_eq!(
        q.get().unwrap(),
        vec![9u8; BIG as usize],
        "the producer's message"
    );
    assert_eq!(q.get().unwrap(), vec![1u8; BIG as usize]);
    assert_eq!(files_of_queue(&id), vec![format!("mprocq{id}")]);
    drop(q);
    assert!(files_of_queue(&id).is_empty(), "{:?}", files_of_queue(&id));

    // Leaked: a timed-out put, a put refused by a closed queue, a retry loop, a queue
    // dropped while it holds large messages.
    let q = Queue::<Vec<u8>>::bounded(1).unwrap();
    let id = queue_id(&q);
    q.put(vec![0]).unwrap();
    for _ in 0..5 {
        let e = q
            .put_timeout(vec![2u8; BIG as usize], Duration::from_millis(1))
            .unwrap_err();
        assert_eq!(e.kind(), ErrorKind::Timeout, "{e}");
    }
    assert_eq!(files_of_queue(&id).len(), 1, "{:?}", files_of_queue(&id));
    q.close();
    assert_eq!(
        q.put(vec![3u8; BIG as usize]).unwrap_err().kind(),
        ErrorKind::Closed
    );
    assert_eq!(files_of_queue(&id).len(), 1, "{:?}", files_of_queue(&id));
    drop(q);
    assert!(files_of_queue(&id).is_empty());

    let q = Queue::<Vec<u8>>::new().unwrap();
    let id = queue_id(&q);
    for k in 0..3 {
        q.put(vec![k; BIG as usize]).unwrap();
    }
    assert_eq!(
        files_of_queue(&id).len(),
        4,
        "three messages and the lock file"
    );
    drop(q);
    assert!(files_of_queue(&id).is_empty(), "{:?}", files_of_queue(&id));

    // A queue handed to a pool's workers: their hold keeps the messages after the
    // parent lets go of its own handle.
    let pool = Pool::new(2).unwrap();
    let q = Queue::<Vec<u8>>::new().unwrap();
    let id = queue_id(&q);
    let puts: Vec<(Queue<Vec<u8>>, u64)> = (0..4).map(|_| (q.clone(), BIG)).collect();
    assert_eq!(pool.map(put_big, &puts).unwrap(), vec![BIG; 4]);
    drop(puts);
    for _ in 0..4 {
        assert_eq!(q.get().unwrap().len(), BIG as usize);
    }
    drop(q);
    drop(pool);
    assert!(files_of_queue(&id).is_empty(), "{:?}", files_of_queue(&id));
    println!("large messages: ok");
}

/// Another multiproc program starting up, with its sweeps: a queue and a large message
/// of its own.
#[test]
#[ignore = "run as a child process by the queue tests"]
fn sweeping_child() {
    if !common::is_child() {
        return;
    }
    let q = Queue::<Vec<u8>>::new().unwrap();
    q.put(vec![5u8; BIG as usize]).unwrap();
    assert_eq!(q.get().unwrap().len(), BIG as usize);
}

fn large_messages_under(backend: &str) {
    let stdout = common::child_stdout("large_queue_messages_child", &[("MULTIPROC_SHM", backend)]);
    assert!(stdout.contains("large messages: ok"), "{stdout}");
}

#[test]
fn large_queue_messages_are_never_lost_or_leaked_memfd() {
    large_messages_under("memfd");
}

#[test]
fn large_queue_messages_are_never_lost_or_leaked_posix() {
    large_messages_under("posix");
}

/// Makes a queue, puts large messages in it, says its id, and waits to be killed.
#[test]
#[ignore = "run as a child process by the queue tests"]
fn killed_holder_child() {
    if !common::is_child() {
        return;
    }
    let q = Queue::<Vec<u8>>::new().unwrap();
    let id = queue_id(&q);
    q.put(vec![4u8; BIG as usize]).unwrap();
    q.put(vec![4u8; BIG as usize]).unwrap();
    println!("queue: {id}");
    println!("ready");
    std::thread::sleep(Duration::from_secs(600));
}

#[test]
fn a_killed_last_holders_large_messages_are_swept() {
    let exe = std::env::current_exe().unwrap();
    let mut child = std::process::Command::new(exe)
        .args([
            "killed_holder_child",
            "--exact",
            "--include-ignored",
            "--nocapture",
        ])
        .env("MULTIPROC_TEST_CHILD", "1")
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut id = String::new();
    let stdout = std::io::BufReader::new(child.stdout.take().unwrap());
    for line in std::io::BufRead::lines(stdout) {
        let line = line.unwrap();
        if let Some(rest) = line.split("queue: ").nth(1) {
            id = rest.trim().to_owned();
        }
        if line.contains("ready") {
            break;
        }
    }
    assert_eq!(
        files_of_queue(&id).len(),
        3,
        "{id}: {:?}",
        files_of_queue(&id)
    );
    child.kill().unwrap();
    child.wait().unwrap();
    // A later program's start-up sweep removes them: nobody holds the queue now.
    common::child_stdout("sweeping_child", &[]);
    assert!(files_of_queue(&id).is_empty(), "{:?}", files_of_queue(&id));
}
