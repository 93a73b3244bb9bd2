//! Starting a worker: re-execute this binary with the marker and one end of a socketpair
//! as its standard input, then shake hands.
//!
//! Nothing runs between fork and exec, so the standard library starts the child with
//! `posix_spawn` (a `vfork`-style clone): the cost does not grow with the parent's memory,
//! where a `fork` copies its page tables (30–60 ms for a parent holding 1 GiB here). The
//! child sets its own parent-death signal, first thing in its constructor.

use std::io::{self, Write};
use std::os::fd::OwnedFd;
use std::os::unix::net::UnixStream;
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use crate::error::{Error, ErrorKind, Result};
use crate::protocol::{self, Frame, Hello};
use crate::transport::ShmConfig;
use crate::worker::MARKER;

/// How long a new worker has to answer the handshake. Generous: a large test binary on a
/// loaded machine can take a while to be mapped.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(30);

/// The program a worker runs. `/proc/self/exe` names the running binary's inode, so it
/// still works when the file was rebuilt or removed since the parent started.
pub(crate) fn default_program() -> PathBuf {
    PathBuf::from("/proc/self/exe")
}

/// A started worker that passed the handshake.
pub(crate) struct WorkerProcess {
    pub child: Child,
    pub stream: UnixStream,
    pub pid: u32,
    /// The random token in the worker's marker, which only the handshake reveals to it.
    pub token: u64,
}

/// Starts one worker and shakes hands with it. Must be called from a thread that lives
/// as long as the worker: the worker's parent-death signal fires when that thread exits.
pub(crate) fn spawn_worker(program: &Path, shm: ShmConfig) -> Result<WorkerProcess> {
    handshake_with(start_worker(program)?, shm)
}

/// Starts one worker process without waiting for it; [`handshake_with`] completes the
/// start. Same threading rule as [`spawn_worker`].
pub(crate) fn start_worker(program: &Path) -> Result<WorkerProcess> {
    let (parent_end, child_end) = UnixStream::pair()
        .map_err(|e| Error::io(ErrorKind::Spawn, "cannot create a socketpair", e))?;
    let mut cmd = Command::new(program);
    if let Some(arg0) = std::env::args_os().next() {
        cmd.arg0(arg0);
    }
    let token = crate::shm::segment::random_u64("the worker's token")
        .map_err(|e| Error::new(ErrorKind::Spawn, e.message()))?;
    // The child's end becomes its standard input, the only descriptor it inherits besides
    // stdout and stderr (both ends are close-on-exec here, so no other child ever holds
    // it); the worker moves it elsewhere and reopens stdin on /dev/null.
    cmd.env(
        MARKER,
        format!("token={token:016x},parent={}", std::process::id()),
    )
    .stdin(Stdio::from(OwnedFd::from(child_end)))
    .stdout(Stdio::inherit())
    .stderr(Stdio::inherit());
    let child = cmd.spawn().map_err(|e| {
        Error::io(
            ErrorKind::Spawn,
            format_args!("cannot start a worker from {}", program.display()),
            e,
        )
    })?;
    let pid = child.id();
    Ok(WorkerProcess {
        child,
        stream: parent_end,
        pid,
        token,
    })
}

/// Checks that a started worker runs the same build; reaps it and says why if not.
pub(crate) fn handshake_with(mut worker: WorkerProcess, shm: ShmConfig) -> Result<WorkerProcess> {
    let pid = worker.pid;
    match handshake(&mut worker.stream, shm, worker.token) {
        Ok(()) => Ok(worker),
        Err(e) => {
            let status = reap(&mut worker.child, Duration::from_millis(500));
            let e = match status {
                Some(status) if e.kind() == ErrorKind::Io => Error::new(
                    ErrorKind::Spawn,
                    format!("{}; the worker {}", e.message(), describe_exit(status)),
                ),
                _ => e,
            };
            Err(e.with_pid(pid))
        }
    }
}

fn handshake(stream: &mut UnixStream, shm: ShmConfig, token: u64) -> Result<()> {
    let me = Hello::from_parent(shm, token);
    let mut buf = Vec::new();
    protocol::hello_frame(&mut buf, &me)
        .map_err(|e| Error::new(ErrorKind::Spawn, e.to_string()))?;
    let io_err = |what: &str, e: io::Error| Error::io(ErrorKind::Io, what, e);
    stream
        .set_read_timeout(Some(HANDSHAKE_TIMEOUT))
        .map_err(|e| io_err("cannot set the handshake timeout", e))?;
    // A worker that dies before reading our hello makes this write fail with EPIPE;
    // reading its answer below then says more, so the write error itself is not final.
    let write_result = stream.write_all(&buf);
    match protocol::read_frame(stream, &mut buf) {
        Ok(true) => {}
        Ok(false) => {
            return Err(match write_result {
                Err(e) => io_err("the worker exited before the handshake", e),
                Ok(()) => Error::new(ErrorKind::Io, "the worker exited before the handshake"),
            });
        }
        Err(e)
            if matches!(
                e.kind(),
                io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
            ) =>
        {
            return Err(Error::new(
                ErrorKind::Spawn,
                format!(
                    "the worker did not answer the handshake within {}s; is it a multiproc binary?",
                    HANDSHAKE_TIMEOUT.as_secs()
                ),
            ));
        }
        Err(e) => return Err(io_err("reading the worker's handshake", e)),
    }
    stream
        .set_read_timeout(None)
        .map_err(|e| io_err("cannot clear the handshake timeout", e))?;
    match protocol::parse(&buf) {
        Ok(Frame::Hello(worker)) => match me.mismatch(&worker) {
            None => Ok(()),
            Some(why) => Err(Error::new(ErrorKind::Spawn, why)),
        },
        Ok(Frame::Fatal(why)) => Err(Error::new(
            ErrorKind::Spawn,
            format!("the worker refused the handshake: {why}"),
        )),
        Ok(other) => Err(Error::new(
            ErrorKind::Protocol,
            format!("expected the worker's handshake, got {other:?}"),
        )),
        Err(e) => Err(Error::new(
            ErrorKind::Spawn,
            format!("the worker's handshake is invalid: {e}"),
        )),
    }
}

/// Waits up to `grace` for `child` to exit, then kills it and waits for good. Returns its
/// status, or `None` if even that failed (it is then reaped by nobody we know of).
pub(crate) fn reap(child: &mut Child, grace: Duration) -> Option<ExitStatus> {
    let deadline = Instant::now() + grace;
    loop {
        match child.try_wait() {
            Ok(Some(status)) => return Some(status),
            Ok(None) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(1)),
            Ok(None) => {
                let _ = child.kill();
                return child.wait().ok();
            }
            Err(_) => return None,
        }
    }
}

/// "was killed by signal 9 (SIGKILL)", "exited with code 3", …
pub(crate) fn describe_exit(status: ExitStatus) -> String {
    if let Some(sig) = status.signal() {
        format!("was killed by signal {sig} ({})", signal_name(sig))
    } else if let Some(code) = status.code() {
        format!("exited with code {code}")
    } else {
        format!("ended ({status})")
    }
}

fn signal_name(sig: i32) -> &'static str {
    match sig {
        libc::SIGHUP => "SIGHUP",
        libc::SIGINT => "SIGINT",
        libc::SIGQUIT => "SIGQUIT",
        libc::SIGILL => "SIGILL",
        libc::SIGTRAP => "SIGTRAP",
        libc::SIGABRT => "SIGABRT",
        libc::SIGBUS => "SIGBUS",
        libc::SIGFPE => "SIGFPE",
        libc::SIGKILL => "SIGKILL",
        libc::SIGSEGV => "SIGSEGV",
        libc::SIGPIPE => "SIGPIPE",
        libc::SIGALRM => "SIGALRM",
        libc::SIGTERM => "SIGTERM",
        libc::SIGXCPU => "SIGXCPU",
        libc::SIGXFSZ => "SIGXFSZ",
        _ => "signal",
    }
}
