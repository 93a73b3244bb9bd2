//! Starting a worker: re-execute this binary with the marker and one end of a socketpair
//! as its standard input, then shake hands.
//!
//! Nothing runs between fork and exec, so the standard library starts the child with
//! `posix_spawn` (a `vfork`-style clone): the cost does not grow with the parent's memory,
//! where a `fork` copies its page tables (30–60 ms for a parent holding 1 GiB here). The
//! child sets its own parent-death signal, first thing in its constructor.

use std::os::fd::OwnedFd;
use std::os::unix::net::UnixStream;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

pub(crate) use crate::sys::process::describe_exit;

use crate::error::{Error, ErrorKind, Result};
use crate::wire::ShmConfig;
use crate::wire::hello::{MARKER, parent_handshake};

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

/// What a worker is told at start-up, in its marker, besides who its parent is.
#[derive(Debug, Clone, Default)]
pub(crate) struct Launch {
    /// Its private resident memory may not go over this many bytes.
    pub max_memory: Option<u64>,
    /// The name of the thread that runs its tasks (`Process::builder().name(…)`).
    pub name: Option<String>,
}

impl Launch {
    /// The marker's fields after the token and the parent: `,mem=BYTES` and
    /// `,name=NAME`, the name last (it may hold commas).
    fn marker_tail(&self) -> String {
        let mut tail = String::new();
        if let Some(bytes) = self.max_memory {
            tail.push_str(&format!(",mem={bytes}"));
        }
        if let Some(name) = &self.name {
            tail.push_str(&format!(",name={name}"));
        }
        tail
    }
}

/// Starts one worker and shakes hands with it. Must be called from a thread that lives
/// as long as the worker: the worker's parent-death signal fires when that thread exits.
pub(crate) fn spawn_worker(
    program: &Path,
    shm: ShmConfig,
    launch: &Launch,
) -> Result<WorkerProcess> {
    handshake_with(start_worker(program, launch)?, shm)
}

/// Starts one worker process without waiting for it; [`handshake_with`] completes the
/// start. Same threading rule as [`spawn_worker`].
pub(crate) fn start_worker(program: &Path, launch: &Launch) -> Result<WorkerProcess> {
    let (parent_end, child_end) = UnixStream::pair()
        .map_err(|e| Error::io(ErrorKind::Spawn, "cannot create a socketpair", e))?;
    let mut cmd = Command::new(program);
    if let Some(arg0) = std::env::args_os().next() {
        cmd.arg0(arg0);
    }
    let token = crate::sys::random::random_u64("the worker's token")
        .map_err(|e| Error::new(ErrorKind::Spawn, e.message()))?;
    // The child's end becomes its standard input, the only descriptor it inherits besides
    // stdout and stderr (both ends are close-on-exec here, so no other child ever holds
    // it); the worker moves it elsewhere and reopens stdin on /dev/null.
    cmd.env(
        MARKER,
        format!(
            "token={token:016x},parent={}{}",
            std::process::id(),
            launch.marker_tail()
        ),
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
pub(crate) fn handshake_with(worker: WorkerProcess, shm: ShmConfig) -> Result<WorkerProcess> {
    handshake_or_reap(worker, shm, || {}).map_err(|(e, _)| e)
}

/// As [`handshake_with`], with how the worker ended when it failed (`None`: it could
/// not be reaped); `before_reap` runs right before the pid may be reaped (and so
/// recycled).
pub(crate) fn handshake_or_reap(
    mut worker: WorkerProcess,
    shm: ShmConfig,
    before_reap: impl FnOnce(),
) -> std::result::Result<WorkerProcess, (Error, Option<ExitStatus>)> {
    let pid = worker.pid;
    match parent_handshake(&mut worker.stream, shm, worker.token) {
        Ok(()) => Ok(worker),
        Err(e) => {
            before_reap();
            let status = reap(&mut worker.child, Duration::from_millis(500));
            let e = match status {
                Some(status) if e.kind() == ErrorKind::Io => Error::new(
                    ErrorKind::Spawn,
                    format!("{}; the worker {}", e.message(), describe_exit(status)),
                ),
                _ => e,
            };
            Err((e.with_pid(pid), status))
        }
    }
}

/// Waits up to `grace` for `child` to exit, then kills it and waits for good. Returns its
/// status, or `None` if even that failed (it is then reaped by nobody we know of).
///
/// The wait sleeps on a pidfd, which wakes the moment the child exits (a worker told to
/// go usually takes a few hundred microseconds); without one (no descriptor left), it
/// looks again every millisecond.
pub(crate) fn reap(child: &mut Child, grace: Duration) -> Option<ExitStatus> {
    let deadline = Instant::now() + grace;
    let mut exit_watch = None;
    loop {
        match child.try_wait() {
            Ok(Some(status)) => return Some(status),
            Ok(None) => {
                let left = deadline.saturating_duration_since(Instant::now());
                if left.is_zero() {
                    let _ = child.kill();
                    return child.wait().ok();
                }
                // The child is not reaped yet, so its pid is still its own.
                if exit_watch.is_none() {
                    exit_watch = Some(crate::sys::process::pidfd(child.id()));
                }
                match exit_watch.as_ref().and_then(Option::as_ref) {
                    // Readable once it has exited; an error falls back to the nap.
                    Some(pidfd) if crate::sys::process::exited_within(pidfd, left).is_some() => {}
                    _ => std::thread::sleep(left.min(Duration::from_millis(1))),
                }
            }
            Err(_) => return None,
        }
    }
}
