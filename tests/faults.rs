//! Broken workers, broken frames and workers that are not ours: every one is an `Err`
//! (or a worker that exits non-zero saying why), never a panic or a hang.
#![allow(clippy::unwrap_used)] // tests: a failed unwrap is a failed test

mod common;

use std::io::{Read, Write};
use std::os::fd::AsRawFd;
use std::os::unix::net::UnixStream;
use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};

use multiproc::ErrorKind;
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
    let index = err.task_index().expect("an index");
    assert!(index <= 5, "{err}");
    assert_pool_still_works();
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

/// Starts this test binary as a worker by hand, with a socketpair end on fd `child_fd`,
/// and returns the process and our end of the socket.
fn raw_worker() -> (std::process::Child, UnixStream) {
    let (ours, theirs) = UnixStream::pair().unwrap();
    let fd = theirs.as_raw_fd();
    let mut cmd = Command::new(std::env::current_exe().unwrap());
    cmd.env("MULTIPROC_WORKER", format!("fd={fd}"))
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    // SAFETY: only fcntl (async-signal-safe) between fork and exec.
    unsafe {
        cmd.pre_exec(move || {
            if libc::fcntl(fd, libc::F_SETFD, 0) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let child = cmd.spawn().unwrap();
    drop(theirs);
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
    for (value, expect) in [
        ("fd=77", "not open"),
        ("fd=0", "malformed"),
        ("nonsense", "malformed"),
    ] {
        let out = Command::new(&exe)
            .env("MULTIPROC_WORKER", value)
            .stdin(Stdio::null())
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{value}: {stderr}");
        assert!(stderr.contains(expect), "{value}: {stderr}");
        assert!(stderr.contains("cannot be started by hand"), "{stderr}");
        // It never reached the test harness.
        assert!(out.stdout.is_empty(), "{value}");
    }
    // An open fd that is not a socket.
    let file = std::fs::File::open(&exe).unwrap();
    let fd = file.as_raw_fd();
    let mut cmd = Command::new(&exe);
    cmd.env("MULTIPROC_WORKER", format!("fd={fd}"));
    // SAFETY: only fcntl (async-signal-safe) between fork and exec.
    unsafe {
        cmd.pre_exec(move || {
            libc::fcntl(fd, libc::F_SETFD, 0);
            Ok(())
        });
    }
    let out = cmd.output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("not a socket"));
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
