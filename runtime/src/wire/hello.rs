//! The first words between a parent and a new worker: the environment marker that
//! makes a process a worker, and the handshake that checks both run the same build.

use std::io::{self, Write};
use std::os::unix::net::UnixStream;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::ShmConfig;
use super::frame::{self, Frame};
use crate::error::{Error, ErrorKind, Result};
use crate::sys::segment::ShmBackend;

/// The environment variable that marks a process as a worker. Its value holds the token
/// the parent will send over the socket the worker inherits as its standard input, and
/// the parent's pid: `token=<hex>,parent=<pid>`. It is removed before any user code runs.
pub(crate) const MARKER: &str = "MULTIPROC_WORKER";

/// How long a new worker has to answer the handshake. Generous: a large test binary on a
/// loaded machine can take a while to be mapped.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(30);

/// What each side says first: who it is and what build it runs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Hello {
    /// `multiproc-runtime`'s version, for messages.
    pub version: String,
    /// [`crate::task::build_identity`] of the sender.
    pub identity: u64,
    /// How many tasks the sender's binary registers, for messages.
    pub tasks: u32,
    /// The sender's process id.
    pub pid: u32,
    /// From the parent: frame bodies above this many bytes go through shared memory.
    pub shm_threshold: u64,
    /// From the parent: create named POSIX segments rather than memfds.
    pub shm_posix: bool,
    /// From the parent: the random token it put in the worker's environment marker.
    pub token: u64,
}

impl Hello {
    pub(crate) fn of_this_process() -> Self {
        Hello {
            version: env!("CARGO_PKG_VERSION").to_owned(),
            identity: crate::task::build_identity(),
            tasks: u32::try_from(crate::task::task_count()).unwrap_or(u32::MAX),
            pid: std::process::id(),
            shm_threshold: super::DEFAULT_SHM_THRESHOLD as u64,
            shm_posix: false,
            token: 0,
        }
    }

    /// The parent's hello, carrying the shared-memory settings its workers use.
    pub(crate) fn from_parent(shm: ShmConfig, token: u64) -> Self {
        Hello {
            token,
            shm_threshold: shm.threshold as u64,
            shm_posix: shm.backend == ShmBackend::Posix,
            ..Hello::of_this_process()
        }
    }

    /// The shared-memory settings a parent's hello carries.
    pub(crate) fn shm(&self) -> ShmConfig {
        ShmConfig {
            threshold: usize::try_from(self.shm_threshold).unwrap_or(usize::MAX),
            backend: if self.shm_posix {
                ShmBackend::Posix
            } else {
                ShmBackend::Memfd
            },
        }
    }

    /// `None` when `peer` runs the same build as `self`, else a sentence saying what
    /// differs.
    pub(crate) fn mismatch(&self, peer: &Hello) -> Option<String> {
        if self.version != peer.version {
            return Some(format!(
                "multiproc version {} here, {} in the other process",
                self.version, peer.version
            ));
        }
        if self.identity != peer.identity {
            return Some(format!(
                "not the same build: this binary registers {} #[parallel] functions \
                 (identity {:016x}), the other {} (identity {:016x}); workers must run the \
                 parent's own executable",
                self.tasks, self.identity, peer.tasks, peer.identity
            ));
        }
        None
    }
}

/// The parent's side of the handshake with a new worker: sends its hello (with `token`
/// and the shared-memory settings), and checks that the worker's answer is a hello of
/// the same build.
pub(crate) fn parent_handshake(stream: &mut UnixStream, shm: ShmConfig, token: u64) -> Result<()> {
    let me = Hello::from_parent(shm, token);
    let mut buf = Vec::new();
    frame::hello_frame(&mut buf, &me).map_err(|e| Error::new(ErrorKind::Spawn, e.to_string()))?;
    let io_err = |what: &str, e: io::Error| Error::io(ErrorKind::Io, what, e);
    stream
        .set_read_timeout(Some(HANDSHAKE_TIMEOUT))
        .map_err(|e| io_err("cannot set the handshake timeout", e))?;
    // A worker that dies before reading our hello makes this write fail with EPIPE;
    // reading its answer below then says more, so the write error itself is not final.
    let write_result = stream.write_all(&buf);
    match frame::read_frame(stream, &mut buf) {
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
    match frame::parse(&buf) {
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

/// Checks the parent's hello, answers it, and returns the shared-memory settings the
/// parent chose.
pub(crate) fn worker_handshake(
    stream: &mut UnixStream,
    buf: &mut Vec<u8>,
    token: u64,
) -> std::result::Result<ShmConfig, String> {
    let me = Hello::of_this_process();
    match frame::read_frame(stream, buf) {
        Ok(true) => {}
        Ok(false) => return Err("the parent closed the socket before the handshake".into()),
        Err(e) => return Err(format!("protocol error in the handshake: {e}")),
    }
    let mut shm = ShmConfig::default();
    let reply = match frame::parse(buf) {
        // Only the process that started us knows the token: the environment marker
        // alone (inherited by accident, or set by hand) does not make a worker.
        Ok(Frame::Hello(parent)) if parent.token != token => {
            Some("the handshake token does not match the one this worker was started with".into())
        }
        Ok(Frame::Hello(parent)) => {
            shm = parent.shm();
            me.mismatch(&parent)
        }
        Ok(other) => Some(format!("expected a handshake, got {other:?}")),
        Err(e) => Some(format!("protocol error in the handshake: {e}")),
    };
    let mut out = Vec::new();
    let encoded = match &reply {
        None => frame::hello_frame(&mut out, &me),
        Some(why) => frame::fatal_frame(&mut out, why),
    };
    encoded.map_err(|e| e.to_string())?;
    stream
        .write_all(&out)
        .map_err(|e| format!("cannot answer the handshake: {e}"))?;
    match reply {
        None => Ok(shm),
        Some(why) => Err(why),
    }
}
