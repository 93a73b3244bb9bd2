//! How long a queue's large messages live: as long as any process holds the queue.
//!
//! A message too large for the ring travels in a named segment of its own
//! (`/dev/shm/mprocq<queue><n>`: the queue's id and 32 random bits, in hex, within the 31
//! characters macOS allows a name); the ring holds its name. Named segments outlive the
//! processes that made them, so who removes one, and when, is decided here, by a lock
//! file per queue (`/dev/shm/mprocq<queue>`):
//!
//! - Every process that holds the queue holds a shared `flock` on the lock file, from
//!   the first handle it makes or decodes until the last is gone (the lock lives with
//!   the process's entry for the queue's segment, which jobs in flight hold too, so a
//!   handle on its way to a worker keeps the queue alive).
//! - The kernel drops a process's lock when it dies, however it dies.
//! - Whoever can take the lock exclusively knows that no process holds the queue: no
//!   message can be read any more, so every segment of the queue is removed, then the
//!   lock file. That is the last process to let go of the queue, or the start-up sweep
//!   of any later process, for a queue whose last holders were killed.
//!
//! ```text
//!   create: lock file under a temporary name, LOCK_SH, link to its name, unlink the temporary one
//!   decode in another process: open by name, LOCK_SH
//!   last handle here gone: LOCK_EX | LOCK_NB ── granted ──▶ remove the queue's segments, then the lock file
//!                                            └─ refused ──▶ another process still holds the queue
//! ```
//!
//! So a message is never removed while a handle to its queue exists anywhere, and
//! nothing is left once none does, crashes included, as soon as any multiproc process
//! starts a queue again (the sweep).

use std::fs::File;
use std::path::PathBuf;

use rustix::fs::{FlockOperation, flock};

use crate::error::{Error, ErrorKind, Result};

/// Where POSIX shared memory lives on Linux: `shm_open("/x")` is `/dev/shm/x`.
const SHM_DIR: &str = "/dev/shm";

/// The lock file's name for the queue whose ring segment has id `queue`.
fn lock_name(queue: u64) -> String {
    format!("{PREFIX}{queue:016x}")
}

/// What the names of a queue's lock file and messages start with.
const PREFIX: &str = "mprocq";

/// The name of a large message's segment: the queue's, and 32 random bits.
pub(crate) fn message_name(queue: u64, n: u32) -> String {
    format!("{}{n:08x}", lock_name(queue))
}

fn path(name: &str) -> PathBuf {
    PathBuf::from(SHM_DIR).join(name)
}

/// This process's hold on a queue: a shared lock on its lock file.
pub(crate) struct Life {
    file: File,
    queue: u64,
}

impl Life {
    /// Creates the lock file of a new queue, held. It appears under its name only once
    /// it is locked, so that no sweep can find it unheld.
    pub(crate) fn create(queue: u64) -> Result<Life> {
        use std::os::unix::fs::OpenOptionsExt;
        let io = |what: &str, e: std::io::Error| {
            Error::io(ErrorKind::Io, format_args!("{what} a queue's lock file"), e)
        };
        // A temporary name that the start-up sweep removes if this process dies now.
        let temp = path(&format!(
            "{}{:x}-{queue:016x}.lock",
            crate::sys::segment::NAME_PREFIX,
            std::process::id()
        ));
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&temp)
            .map_err(|e| io("creating", e))?;
        let linked = flock(&file, FlockOperation::LockShared)
            .map_err(|e| io("locking", e.into()))
            .and_then(|()| {
                std::fs::hard_link(&temp, path(&lock_name(queue))).map_err(|e| io("naming", e))
            });
        let _ = std::fs::remove_file(&temp);
        linked?;
        Ok(Life { file, queue })
    }

    /// Joins a queue that another process created (and holds, or its handle could not
    /// be here).
    pub(crate) fn join(queue: u64) -> Result<Life> {
        let file = File::open(path(&lock_name(queue))).map_err(|e| {
            Error::io(
                ErrorKind::Io,
                format_args!("opening the lock file of a queue ({})", lock_name(queue)),
                e,
            )
        })?;
        flock(&file, FlockOperation::LockShared)
            .map_err(|e| Error::io(ErrorKind::Io, "locking a queue's lock file", e.into()))?;
        Ok(Life { file, queue })
    }
}

impl Drop for Life {
    fn drop(&mut self) {
        // Not atomic: the shared lock may be given up before the exclusive one is
        // refused. Either way this process is done with the queue.
        if flock(&self.file, FlockOperation::NonBlockingLockExclusive).is_ok() {
            remove_queue(self.queue);
        }
    }
}

/// Removes every segment of a queue that no process holds, then its lock file.
fn remove_queue(queue: u64) {
    let prefix = lock_name(queue);
    if let Ok(dir) = std::fs::read_dir(SHM_DIR) {
        for entry in dir.flatten() {
            if entry
                .file_name()
                .to_str()
                .is_some_and(|n| n.starts_with(&prefix) && n.len() == prefix.len() + 8)
            {
                let _ = std::fs::remove_file(entry.path());
            }
        }
    }
    let _ = std::fs::remove_file(path(&lock_name(queue)));
}

/// The queue a `/dev/shm` name belongs to, and whether it is the lock file itself.
fn parse(name: &str) -> Option<(u64, bool)> {
    let rest = name.strip_prefix(PREFIX)?;
    let (queue, n) = (rest.get(..16)?, rest.get(16..)?);
    let message = match n.len() {
        0 => false,
        8 if u32::from_str_radix(n, 16).is_ok() => true,
        _ => return None,
    };
    let queue = u64::from_str_radix(queue, 16).ok()?;
    Some((queue, !message))
}

/// Removes the segments and lock files of queues that no process holds any more (their
/// last holders were killed). Runs once per process, when it creates its first queue.
pub(crate) fn sweep_once() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(sweep);
}

fn sweep() {
    let Ok(dir) = std::fs::read_dir(SHM_DIR) else {
        return;
    };
    let mut queues: Vec<u64> = dir
        .flatten()
        .filter_map(|e| parse(e.file_name().to_str()?))
        .map(|(queue, _)| queue)
        .collect();
    queues.sort_unstable();
    queues.dedup();
    for queue in queues {
        match File::open(path(&lock_name(queue))) {
            // Taken exclusively: nobody holds the queue. Dropped: unlocked again.
            Ok(file) => {
                if flock(&file, FlockOperation::NonBlockingLockExclusive).is_ok() {
                    remove_queue(queue);
                }
            }
            // Segments without a lock file: a queue's last holder died while removing
            // them.
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => remove_queue(queue),
            Err(_) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_parse_back_to_their_queue() {
        let q = 0x0123_4567_89ab_cdef;
        assert_eq!(parse(&lock_name(q)), Some((q, true)));
        assert_eq!(parse(&message_name(q, 7)), Some((q, false)));
        assert_eq!(parse("mprocq12"), None);
        assert_eq!(parse("mproc1234-abcd"), None);
        // With its leading slash, a name fits in the 31 characters macOS allows.
        assert!(message_name(u64::MAX, u32::MAX).len() < 31);
    }

    #[test]
    fn the_last_holder_removes_the_queues_segments_and_nobody_before() {
        let q = crate::sys::random::random_u64("a test queue").expect("randomness");
        let first = Life::create(q).expect("create");
        let second = Life::join(q).expect("join");
        let message = path(&message_name(q, 1));
        std::fs::write(&message, b"a large message").expect("a message");
        drop(first);
        assert!(message.exists(), "removed while a holder remains");
        // A sweep leaves a held queue alone.
        sweep();
        assert!(message.exists(), "swept while a holder remains");
        drop(second);
        assert!(!message.exists() && !path(&lock_name(q)).exists());
    }
}
