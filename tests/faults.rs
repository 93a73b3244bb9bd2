//! Broken workers, broken frames and workers that are not ours: every one is an `Err`
//! (or a worker that exits non-zero saying why), never a panic or a hang.
#![allow(clippy::unwrap_used)] // tests: a failed unwrap is a failed test

mod common;

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};

use multiproc::ErrorKind;
use multiproc::Pool;
use multiproc::prelude::*;

#[parallel]
fn identity(x: u64) -> u64 {
    x
}

#[parallel]
fn exit_on_5(x: u64) -> u64 {
    if x == 5 {
        std::process::exit(3);
    }
    x
}

#[parallel]
fn abort_on_5(x: u64) -> u64 {
    if x == 5 {
        std::process::abort();
    }
    x
}

/// The fds of this process that are sockets, other than stdio.
fn own_sockets() -> Vec<i32> {
    std::fs::read_dir("/proc/self/fd")
        .expect("/proc/self/fd")
        .filter_map(|e| {
            let e = e.ok()?;
            let fd: i32 = e.file_name().to_str()?.parse().ok()?;
            let target = std::fs::read_link(e.path()).ok()?;
            (fd > 2 && target.to_string_lossy().starts_with("socket:")).then_some(fd)
        })
        .collect()
}

/// Writes `bytes` to the worker's socket behind the runtime's back, then waits to be
/// killed for it.
fn write_to_parent(bytes: &[u8]) {
    for fd in own_sockets() {
        // SAFETY: writing a byte buffer we own to an fd of this process.
        unsafe { libc::write(fd, bytes.as_ptr().cast(), bytes.len()) };
    }
    std::thread::sleep(std::time::Duration::from_secs(60));
}

#[parallel]
fn send_bad_tag(x: u64) -> u64 {
    if x == 3 {
        // A well-formed length prefix around an unknown tag.
        write_to_parent(&[1, 0, 0, 0, 99]);
    }
    x
}

#[parallel]
fn send_huge_length(x: u64) -> u64 {
    if x == 3 {
        // A length prefix claiming 4 GiB.
        write_to_parent(&[0xff, 0xff, 0xff, 0xff, 2]);
    }
    x
}

fn assert_pool_still_works() {
    let data: Vec<u64> = (0..500).collect();
    assert_eq!(data.par_map(identity).unwrap(), data);
}

#[test]
fn a_worker_that_exits_is_an_error_naming_the_exit_code_and_the_pool_heals() {
    let data: Vec<u64> = (0..10).collect();
    let err = data.par_map(exit_on_5).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::WorkerDied, "{err}");
    assert!(err.to_string().contains("exited with code 3"), "{err}");
    assert!(err.worker_pid().is_some(), "{err}");
    assert_eq!(err.task_index(), Some(5), "{err}");
    assert!(err.to_string().contains("item 5"), "{err}");
    assert_pool_still_works();
}

#[parallel]
fn sigkill_self_on_7(x: u64) -> u64 {
    if x == 7 {
        // SAFETY: sending SIGKILL to this very process.
        unsafe { libc::kill(libc::getpid(), libc::SIGKILL) };
    }
    x
}

#[parallel]
fn segfault_on_7(x: u64) -> u64 {
    if x == 7 {
        // SAFETY: not safe at all: this writes through a null pointer on purpose, to
        // crash the worker with SIGSEGV as a buggy C library would.
        unsafe { std::ptr::null_mut::<u64>().write_volatile(x) };
    }
    x
}

#[parallel]
fn out_of_memory_on_7(x: u64) -> u64 {
    if x == 7 {
        let limit = libc::rlimit {
            rlim_cur: 256 << 20,
            rlim_max: 256 << 20,
        };
        // SAFETY: lowering this worker's own address-space limit, to simulate an OOM.
        unsafe { libc::setrlimit(libc::RLIMIT_AS, &limit) };
        let mut hog: Vec<Vec<u8>> = Vec::new();
        loop {
            hog.push(vec![1u8; 64 << 20]);
        }
    }
    x
}

fn assert_died_on_item_7(task: Task<u64, u64>, what: &str) {
    let pool = Pool::builder().workers(2).build().unwrap();
    let data: Vec<u64> = (0..16).collect();
    let err = pool.map(task, &data).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::WorkerDied, "{err}");
    assert_eq!(err.task_index(), Some(7), "{err}");
    assert!(err.to_string().contains(what), "{err}");
    // The worker was replaced: the pool still has two that work.
    assert_eq!(pool.map(identity, &data).unwrap(), data);
    // imap yields an error for the lost item and carries on with the rest. (A chunk lost
    // with its worker fails all its items; with one item per chunk, only the culprit.)
    let pool = Pool::builder().workers(2).chunk_size(1).build().unwrap();
    let out: Vec<_> = pool.imap(task, 0u64..16).collect();
    assert_eq!(out.len(), 16);
    assert!(out[7].is_err());
    assert!(
        out.iter()
            .enumerate()
            .filter(|(i, _)| *i != 7)
            .all(|(i, r)| *r.as_ref().unwrap() == i as u64)
    );
}

#[test]
fn a_sigkilled_worker_is_reported_and_replaced() {
    assert_died_on_item_7(sigkill_self_on_7, "SIGKILL");
}

#[test]
fn a_segfault_is_reported_and_replaced() {
    assert_died_on_item_7(segfault_on_7, "SIGSEGV");
}

#[test]
fn an_out_of_memory_worker_is_reported_and_replaced() {
    // Rust aborts when an allocation fails: the worker dies with SIGABRT.
    assert_died_on_item_7(out_of_memory_on_7, "SIGABRT");
}

#[parallel]
fn die_twice_then_work(dir: String) -> u32 {
    // Each attempt leaves a mark; the first two die.
    let marks = std::fs::read_dir(&dir).unwrap().count();
    std::fs::write(format!("{dir}/{}", std::process::id()), b"").unwrap();
    if marks < 2 {
        std::process::abort();
    }
    marks as u32
}

#[test]
fn retries_rerun_items_lost_to_dead_workers() {
    let dir = std::env::temp_dir().join(format!("multiproc-retries-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let arg = dir.to_string_lossy().into_owned();
    let pool = Pool::builder().workers(1).retries(2).build().unwrap();
    assert_eq!(pool.apply(die_twice_then_work, arg.clone()).unwrap(), 2);
    // Not enough retries: the error says how many attempts were made.
    std::fs::remove_dir_all(&dir).unwrap();
    std::fs::create_dir_all(&dir).unwrap();
    let pool = Pool::builder().workers(1).retries(1).build().unwrap();
    let err = pool.apply(die_twice_then_work, arg).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::WorkerDied, "{err}");
    assert!(err.to_string().contains("after 2 attempts"), "{err}");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn retries_do_not_rerun_panics() {
    let pool = Pool::builder().workers(1).retries(3).build().unwrap();
    let err = pool.apply(panics_always, 1).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Panicked);
    assert!(!err.to_string().contains("attempts"), "{err}");
}

#[parallel]
fn panics_always(_x: u64) -> u64 {
    panic!("always")
}

/// A value whose serialization always fails.
#[derive(Debug)]
struct Unserializable;

impl serde::Serialize for Unserializable {
    fn serialize<S: serde::Serializer>(&self, _: S) -> Result<S::Ok, S::Error> {
        Err(serde::ser::Error::custom(
            "this value refuses to be serialized",
        ))
    }
}

impl<'de> serde::Deserialize<'de> for Unserializable {
    fn deserialize<D: serde::Deserializer<'de>>(_: D) -> Result<Self, D::Error> {
        Ok(Unserializable)
    }
}

/// Serializes fine, but refuses to be deserialized (in the parent).
#[derive(Debug, serde::Serialize)]
struct Undeserializable(u8);

impl<'de> serde::Deserialize<'de> for Undeserializable {
    fn deserialize<D: serde::Deserializer<'de>>(_: D) -> Result<Self, D::Error> {
        Err(serde::de::Error::custom(
            "this value refuses to be deserialized",
        ))
    }
}

#[parallel]
fn make_unserializable(x: u64) -> Option<Unserializable> {
    (x == 4).then_some(Unserializable)
}

#[parallel]
fn make_undeserializable(x: u64) -> Undeserializable {
    Undeserializable(x as u8)
}

#[test]
fn results_that_fail_to_serialize_or_deserialize_are_errors_naming_the_item() {
    let data: Vec<u64> = (0..8).collect();
    let err = data.par_map(make_unserializable).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Serialization, "{err}");
    assert_eq!(err.task_index(), Some(4), "{err}");
    let text = err.to_string();
    assert!(
        text.contains("make_unserializable") && text.contains("could not be serialized"),
        "{text}"
    );
    // The impl's own words, which postcard alone would drop.
    assert!(
        text.contains("this value refuses to be serialized"),
        "{text}"
    );

    let err = data.par_map(make_undeserializable).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Serialization, "{err}");
    // Every result fails; the error names whichever item was decoded first.
    assert!(err.task_index().is_some_and(|i| i < 8), "{err}");
    assert!(
        err.to_string().contains("could not be deserialized")
            && err
                .to_string()
                .contains("this value refuses to be deserialized"),
        "{err}"
    );
    assert_pool_still_works();
}

/// Decodes as a `String`, but panics (in the parent, where results are decoded) on
/// "boom".
#[derive(Debug, serde::Serialize)]
struct PanicsWhenDecoded(String);

impl<'de> serde::Deserialize<'de> for PanicsWhenDecoded {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        assert!(s != "boom", "decoding a result panicked");
        Ok(PanicsWhenDecoded(s))
    }
}

#[parallel]
fn name_or_boom(x: u64) -> PanicsWhenDecoded {
    PanicsWhenDecoded(if x == 3_000 {
        "boom".into()
    } else {
        format!("item {x}")
    })
}

#[test]
fn a_result_whose_deserialize_panics_fails_the_map_and_the_pool_goes_on() {
    // Many chunks, so that others were decoded (and dropped) around the one that panics.
    let data: Vec<u64> = (0..20_000).collect();
    for _ in 0..3 {
        let err = data.par_map(name_or_boom).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Serialization, "{err}");
        assert!(
            err.to_string().contains("decoding a result panicked"),
            "{err}"
        );
        assert!(err.to_string().contains("name_or_boom"), "{err}");
    }
    // Every driver is still there: a map that needs all of them completes.
    let ok: Vec<u64> = (0..2_999).collect();
    let names = ok.par_map(name_or_boom).unwrap();
    assert_eq!(names.len(), 2_999);
    assert_eq!(names[1_234].0, "item 1234");
    assert_pool_still_works();
}

#[parallel]
fn takes_unserializable(_u: Unserializable) -> u8 {
    0
}

#[test]
fn arguments_that_fail_to_serialize_are_errors_naming_the_item() {
    let items = [Unserializable, Unserializable];
    let err = items.par_map(takes_unserializable).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Serialization, "{err}");
    assert_eq!(err.task_index(), Some(0), "{err}");
    assert!(err.to_string().contains("argument"), "{err}");
    assert!(
        err.to_string()
            .contains("this value refuses to be serialized"),
        "{err}"
    );
    let err = Pool::new(1)
        .unwrap()
        .apply(takes_unserializable, Unserializable)
        .unwrap_err();
    assert!(
        err.to_string()
            .contains("this value refuses to be serialized"),
        "{err}"
    );
}

#[test]
fn a_worker_that_aborts_is_an_error_naming_the_signal() {
    let data: Vec<u64> = (0..10).collect();
    let err = data.par_map(abort_on_5).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::WorkerDied, "{err}");
    assert!(err.to_string().contains("SIGABRT"), "{err}");
    assert_pool_still_works();
}

#[test]
fn garbage_from_a_worker_is_a_protocol_error_and_the_pool_heals() {
    let data: Vec<u64> = (0..8).collect();
    let err = data.par_map(send_bad_tag).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Protocol, "{err}");
    assert!(err.to_string().contains("unknown frame tag 99"), "{err}");
    assert_pool_still_works();
}

#[test]
fn an_oversized_frame_from_a_worker_is_rejected() {
    let data: Vec<u64> = (0..8).collect();
    let err = data.par_map(send_huge_length).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Protocol, "{err}");
    assert!(err.to_string().contains("more than the limit"), "{err}");
    assert_pool_still_works();
}

/// The marker a worker started by this process carries.
fn marker(token: &str) -> String {
    format!("token={token},parent={}", std::process::id())
}

/// Starts this test binary as a worker by hand, with a socketpair end as its standard
/// input, and returns the process and our end of the socket.
fn raw_worker() -> (std::process::Child, UnixStream) {
    let (ours, theirs) = UnixStream::pair().unwrap();
    let child = Command::new(std::env::current_exe().unwrap())
        .env("MULTIPROC_WORKER", marker("0123456789abcdef"))
        .stdin(Stdio::from(std::os::fd::OwnedFd::from(theirs)))
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    (child, ours)
}

fn finish(child: std::process::Child) -> (i32, String) {
    let out = child.wait_with_output().unwrap();
    let code = out.status.code().expect("exited, not killed");
    (code, String::from_utf8_lossy(&out.stderr).into_owned())
}

#[test]
fn a_worker_sent_garbage_exits_non_zero_with_one_line() {
    let (child, mut sock) = raw_worker();
    sock.write_all(&[3, 0, 0, 0, 0xde, 0xad, 0xbe]).unwrap();
    // It answers with a Fatal frame saying why, then exits.
    let mut reply = Vec::new();
    let _ = sock.read_to_end(&mut reply);
    let (code, stderr) = finish(child);
    assert_ne!(code, 0);
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(stderr.contains("multiproc worker"), "{stderr}");
    assert!(stderr.contains("unknown frame tag 222"), "{stderr}");
    assert!(
        String::from_utf8_lossy(&reply).contains("unknown frame tag"),
        "{reply:?}"
    );
}

#[test]
fn a_worker_only_accepts_the_token_it_was_started_with() {
    // The marker says 0123456789abcdef; a parent that sends another token is refused.
    let (child, mut sock) = raw_worker();
    sock.write_all(&multiproc::__private::parent_hello_frame(42))
        .unwrap();
    let mut reply = Vec::new();
    let _ = sock.read_to_end(&mut reply);
    let (code, stderr) = finish(child);
    assert_ne!(code, 0);
    assert!(stderr.contains("token does not match"), "{stderr}");
    // The right token: the worker answers the handshake and serves until end of stream.
    let (child, mut sock) = raw_worker();
    sock.write_all(&multiproc::__private::parent_hello_frame(
        0x0123_4567_89ab_cdef,
    ))
    .unwrap();
    let mut len = [0u8; 4];
    sock.read_exact(&mut len).unwrap();
    drop(sock);
    let (code, stderr) = finish(child);
    assert_eq!(code, 0, "{stderr}");
}

#[test]
fn a_worker_sent_a_huge_length_exits_without_allocating_it() {
    let (child, mut sock) = raw_worker();
    sock.write_all(&[0xff, 0xff, 0xff, 0xff, 1, 2, 3]).unwrap();
    let (code, stderr) = finish(child);
    assert_ne!(code, 0);
    assert!(stderr.contains("more than the limit"), "{stderr}");
}

#[test]
fn a_worker_sent_a_truncated_frame_exits_non_zero() {
    let (child, mut sock) = raw_worker();
    sock.write_all(&[100, 0, 0, 0, 1, 2]).unwrap();
    drop(sock);
    let (code, stderr) = finish(child);
    assert_ne!(code, 0);
    assert!(stderr.contains("truncated frame"), "{stderr}");
}

#[test]
fn the_marker_without_a_socket_is_refused() {
    let exe = std::env::current_exe().unwrap();
    let refused = |value: &str, stdin: Stdio, expect: &str| {
        let out = Command::new(&exe)
            .env("MULTIPROC_WORKER", value)
            .stdin(stdin)
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{value}: {stderr}");
        assert!(stderr.contains(expect), "{value}: {stderr}");
        assert!(stderr.contains("cannot be started by hand"), "{stderr}");
        // It never reached the test harness.
        assert!(out.stdout.is_empty(), "{value}");
    };
    for value in ["fd=7,token=1", "token=1", "nonsense"] {
        refused(value, Stdio::null(), "malformed");
    }
    // A well-formed marker, but standard input is not a socket: /dev/null, then a file.
    refused(&marker("1"), Stdio::null(), "not a socket");
    let file = std::fs::File::open(&exe).unwrap();
    refused(&marker("1"), Stdio::from(file), "not a socket");
    // Standard input closed.
    let mut cmd = Command::new(&exe);
    cmd.env("MULTIPROC_WORKER", marker("1"));
    // SAFETY: only close (async-signal-safe) between fork and exec.
    unsafe {
        cmd.pre_exec(|| {
            libc::close(0);
            Ok(())
        });
    }
    let out = cmd.output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("not open"));
}

/// What a task reads from its standard input.
#[parallel]
fn read_stdin(_x: u8) -> usize {
    let mut all = Vec::new();
    std::io::stdin()
        .read_to_end(&mut all)
        .map_or(usize::MAX, |_| all.len())
}

/// What the descriptors of a shell started by a task point at.
#[parallel]
fn child_descriptors(_x: u8) -> String {
    let out = Command::new("/bin/sh")
        .arg("-c")
        .arg("for f in /proc/$$/fd/*; do readlink \"$f\"; done")
        .output()
        .expect("run /bin/sh");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn the_socket_a_worker_inherits_is_neither_its_stdin_nor_its_childrens() {
    // The socket arrives as the worker's standard input; tasks must read /dev/null there
    // (not the parent's frames), and processes they start must not hold the socket, or
    // the parent would not see the worker's end of stream when it dies.
    let pool = Pool::new(2).unwrap();
    assert_eq!(pool.map(read_stdin, &[0u8, 1, 2, 3]).unwrap(), [0; 4]);
    let fds = pool.apply(child_descriptors, 0).unwrap();
    assert!(fds.contains("/dev/null"), "{fds}");
    assert!(!fds.contains("socket:"), "{fds}");
    assert_eq!(pool.map(read_stdin, &[0u8, 1]).unwrap(), [0; 2]);
}

#[test]
fn a_marker_naming_another_live_process_as_the_parent_is_refused_on_stderr() {
    // Process 1 lives, and is not the parent: the marker was set by hand.
    let (ours, theirs) = UnixStream::pair().unwrap();
    let out = Command::new(std::env::current_exe().unwrap())
        .env("MULTIPROC_WORKER", "token=1,parent=1")
        .stdin(Stdio::from(std::os::fd::OwnedFd::from(theirs)))
        .output()
        .unwrap();
    drop(ours);
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("names process 1 as the parent"), "{stderr}");
    assert!(stderr.contains("cannot be started by hand"), "{stderr}");
}

#[test]
fn a_marker_naming_a_parent_that_is_gone_ends_the_worker_quietly() {
    // As if the parent had died before the worker started: nothing to say, nobody to
    // say it to.
    let mut gone = Command::new("true").spawn().unwrap();
    let pid = gone.id();
    gone.wait().unwrap();
    let (ours, theirs) = UnixStream::pair().unwrap();
    let out = Command::new(std::env::current_exe().unwrap())
        .env("MULTIPROC_WORKER", format!("token=1,parent={pid}"))
        .stdin(Stdio::from(std::os::fd::OwnedFd::from(theirs)))
        .output()
        .unwrap();
    drop(ours);
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    assert!(out.stdout.is_empty() && out.stderr.is_empty(), "{out:?}");
}

#[test]
fn a_worker_of_another_build_fails_the_handshake() {
    let other = common::example_binary("quickstart");
    let err = multiproc::__private::probe_worker(&other).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Spawn, "{err}");
    assert!(err.to_string().contains("not the same build"), "{err}");
    // The same binary passes.
    let pid = multiproc::__private::probe_worker(&std::env::current_exe().unwrap()).unwrap();
    assert_ne!(pid, std::process::id());
}

#[test]
fn a_program_that_is_not_a_worker_is_a_spawn_error() {
    let err = multiproc::__private::probe_worker("/bin/true".as_ref()).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Spawn, "{err}");
    assert!(err.to_string().contains("exited with code 0"), "{err}");
    let err = multiproc::__private::probe_worker("/nonexistent/binary".as_ref()).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Spawn, "{err}");
    assert!(err.to_string().contains("No such file"), "{err}");
}

/// A result whose destructor panics in a worker (after the value was encoded and sent).
#[derive(Debug, serde::Serialize, serde::Deserialize)]
struct DropBomb(u64);

impl Drop for DropBomb {
    fn drop(&mut self) {
        if self.0 == 5 && std::env::var_os("MULTIPROC_WORKER").is_some() {
            panic!("the destructor of 5 panics");
        }
    }
}

#[parallel]
fn bomb_or_panic(x: u64) -> DropBomb {
    assert!(x % 3 != 1, "item {x} panics");
    DropBomb(x)
}

/// An argument whose decoding panics in the worker when it holds 3.
#[derive(Debug, serde::Serialize)]
struct PanicsOnDecode(u64);

impl<'de> serde::Deserialize<'de> for PanicsOnDecode {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let x = <u64 as serde::Deserialize>::deserialize(d)?;
        assert!(x != 3, "decoding 3 panics");
        Ok(PanicsOnDecode(x))
    }
}

#[parallel]
fn decoded(x: PanicsOnDecode) -> u64 {
    x.0
}

#[test]
fn panics_inside_one_chunk_fail_only_their_items() {
    // One worker and one chunk of 10, so every case below happens inside the same chunk.
    let pool = Pool::builder().workers(1).chunk_size(10).build().unwrap();
    let out: Vec<_> = pool.imap(bomb_or_panic, 0..10u64).collect();
    for (x, r) in (0..10u64).zip(out) {
        match r {
            // 5's destructor panicked in the worker after it was sent: not a failure.
            Ok(v) => assert!(x % 3 != 1 && v.0 == x, "{x}: {v:?}"),
            Err(e) => {
                assert!(x % 3 == 1, "{x}: {e}");
                assert_eq!(e.kind(), ErrorKind::Panicked, "{e}");
                assert_eq!(e.task_index(), Some(x as usize), "{e}");
                assert!(e.to_string().contains(&format!("item {x} panics")), "{e}");
            }
        }
    }

    // A panic while decoding an argument ends the chunk: the items after it cannot be
    // located, so they fail with the same error; the ones before it succeed.
    let out: Vec<_> = pool.imap(decoded, (0..6).map(PanicsOnDecode)).collect();
    for (x, r) in out.into_iter().enumerate() {
        if x < 3 {
            assert_eq!(r.unwrap(), x as u64);
        } else {
            let e = r.unwrap_err();
            assert_eq!(e.kind(), ErrorKind::Panicked, "{e}");
            assert_eq!(e.task_index(), Some(3), "{e}");
            assert!(e.to_string().contains("decoding 3 panics"), "{e}");
        }
    }
    assert_eq!(pool.apply(identity, 7).unwrap(), 7);
}

#[parallel]
fn takes_undeserializable(_u: Undeserializable) -> u8 {
    0
}

#[parallel]
fn takes_them_deep_inside(_tag: u8, _u: Vec<Option<Undeserializable>>) -> u8 {
    0
}

#[test]
fn arguments_that_fail_to_deserialize_in_the_worker_say_why() {
    let pool = Pool::new(1).unwrap();
    let err = pool
        .apply(takes_undeserializable, Undeserializable(1))
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Serialization, "{err}");
    let text = err.to_string();
    assert!(
        text.contains("deserialized in the worker")
            && text.contains("this value refuses to be deserialized"),
        "{text}"
    );
    // Through the queue's path too (a stream of calls ends in the lane; a map does not).
    let items = [Undeserializable(1), Undeserializable(2)];
    let err = pool.map(takes_undeserializable, &items).unwrap_err();
    assert!(
        err.to_string()
            .contains("this value refuses to be deserialized"),
        "{err}"
    );
    // However deep inside the argument the value that refuses is.
    let err = pool
        .apply(
            takes_them_deep_inside,
            (1, vec![None, Some(Undeserializable(2))]),
        )
        .unwrap_err();
    assert!(
        err.to_string()
            .contains("this value refuses to be deserialized"),
        "{err}"
    );
    assert_eq!(pool.apply(identity, 21).unwrap(), 21);
}

#[test]
fn queue_messages_that_fail_to_serialize_or_deserialize_say_why() {
    let q: Queue<Unserializable> = Queue::new().unwrap();
    let err = q.put(Unserializable).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Serialization, "{err}");
    assert!(
        err.to_string()
            .contains("this value refuses to be serialized"),
        "{err}"
    );
    let q: Queue<Undeserializable> = Queue::new().unwrap();
    q.put(Undeserializable(3)).unwrap();
    let err = q.get().unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Serialization, "{err}");
    assert!(
        err.to_string()
            .contains("this value refuses to be deserialized"),
        "{err}"
    );
}
