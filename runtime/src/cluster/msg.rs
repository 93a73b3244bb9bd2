//! What rank 0 and a serving rank say to each other. Every message is one header
//! (postcard) and, for those that carry bytes (a segment's contents, a chunk's frame, a
//! result's body), `payload` bytes right behind it, in pieces MPI can count.

use serde::{Deserialize, Serialize};

use crate::error::ErrorKind;

/// From rank 0 to a serving rank.
#[derive(Debug, Serialize, Deserialize)]
pub(super) enum ToRank {
    /// Start a local pool `pool` with these settings.
    Open {
        pool: u64,
        /// Workers on this rank; `None`: its share of its host's cores.
        workers: Option<u64>,
        max_tasks_per_worker: Option<u64>,
        task_timeout_nanos: Option<u64>,
        retries: u32,
        shm_threshold: u64,
        /// Each worker's memory limit, in bytes.
        max_memory: Option<u64>,
    },
    /// A segment's contents (`len` bytes of payload), to keep under `id`.
    Segment { id: u64, len: u64 },
    /// A segment of `len` bytes to read at address `at` of rank 0's window and keep
    /// under `id`; say `Read` once the read is over.
    Exposed { id: u64, len: u64, at: u64 },
    /// Rank 0 holds no handle to these segments any more.
    Release { ids: Vec<u64> },
    /// Run a chunk: its `Run` frame is the payload (`len` bytes).
    Run {
        pool: u64,
        chunk: u64,
        task: String,
        count: u32,
        body_at: u64,
        segments: Vec<u64>,
        len: u64,
    },
    /// Close pool `pool`, let its work finish, and say `Closed`.
    Close { pool: u64 },
    /// Kill pool `pool`'s workers now, and say `Closed`.
    Terminate { pool: u64 },
    /// Rank 0 is alive.
    Beat,
    /// The program is over: stop everything and leave MPI.
    Shutdown,
}

/// From a serving rank to rank 0.
#[derive(Debug, Serialize, Deserialize)]
pub(super) enum ToRoot {
    /// The first message: which build this rank runs, and where.
    Hello {
        identity: u64,
        tasks: u64,
        host: String,
        pid: u32,
        /// Whether this rank can read segments through rank 0's window.
        one_sided: bool,
    },
    /// This rank has finished reading segment `id` through the window.
    Read { id: u64 },
    /// Pool `pool` runs here with `workers` workers.
    Opened { pool: u64, workers: u64 },
    /// Pool `pool` could not start here.
    OpenFailed { pool: u64, message: String },
    /// A chunk's answer; its body is the payload (`len` bytes).
    Done {
        pool: u64,
        chunk: u64,
        pid: u32,
        nanos: u64,
        count: u32,
        values_len: u64,
        len: u64,
    },
    /// A chunk failed here as a whole (its worker died, it timed out, …).
    Failed {
        pool: u64,
        chunk: u64,
        kind: Kind,
        message: String,
        /// The item to blame, counted from the chunk's first.
        offset: Option<u64>,
        pid: Option<u32>,
    },
    /// Pool `pool` is closed here and its workers are gone.
    Closed { pool: u64 },
    /// This rank is alive.
    Beat,
}

/// An [`ErrorKind`] on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub(super) enum Kind {
    Panicked,
    WorkerDied,
    Timeout,
    Serialization,
    Spawn,
    Closed,
    InvalidConfig,
    Io,
    Protocol,
    Interrupted,
}

impl From<ErrorKind> for Kind {
    fn from(kind: ErrorKind) -> Kind {
        match kind {
            ErrorKind::Panicked => Kind::Panicked,
            ErrorKind::WorkerDied => Kind::WorkerDied,
            ErrorKind::Timeout => Kind::Timeout,
            ErrorKind::Serialization => Kind::Serialization,
            ErrorKind::Spawn => Kind::Spawn,
            ErrorKind::Closed => Kind::Closed,
            ErrorKind::InvalidConfig => Kind::InvalidConfig,
            ErrorKind::Io => Kind::Io,
            ErrorKind::Protocol => Kind::Protocol,
            ErrorKind::Interrupted => Kind::Interrupted,
        }
    }
}

impl From<Kind> for ErrorKind {
    fn from(kind: Kind) -> ErrorKind {
        match kind {
            Kind::Panicked => ErrorKind::Panicked,
            Kind::WorkerDied => ErrorKind::WorkerDied,
            Kind::Timeout => ErrorKind::Timeout,
            Kind::Serialization => ErrorKind::Serialization,
            Kind::Spawn => ErrorKind::Spawn,
            Kind::Closed => ErrorKind::Closed,
            Kind::InvalidConfig => ErrorKind::InvalidConfig,
            Kind::Io => ErrorKind::Io,
            Kind::Protocol => ErrorKind::Protocol,
            Kind::Interrupted => ErrorKind::Interrupted,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_kind_survives_the_trip() {
        for kind in [
            ErrorKind::Panicked,
            ErrorKind::WorkerDied,
            ErrorKind::Timeout,
            ErrorKind::Serialization,
            ErrorKind::Spawn,
            ErrorKind::Closed,
            ErrorKind::InvalidConfig,
            ErrorKind::Io,
            ErrorKind::Protocol,
            ErrorKind::Interrupted,
        ] {
            assert_eq!(ErrorKind::from(Kind::from(kind)), kind);
        }
    }

    #[test]
    fn headers_round_trip() {
        let run = ToRank::Run {
            pool: 1,
            chunk: 7,
            task: "app::t1".into(),
            count: 3,
            body_at: 40,
            segments: vec![9],
            len: 123,
        };
        let bytes = postcard::to_stdvec(&run).unwrap();
        let back: ToRank = postcard::from_bytes(&bytes).unwrap();
        assert!(
            matches!(back, ToRank::Run { chunk: 7, len: 123, ref segments, .. } if segments == &[9])
        );
    }
}
