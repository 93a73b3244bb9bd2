//! The runtime of [multiproc](https://docs.rs/multiproc): task registry, worker entry,
//! wire protocol, worker pools and errors.
//!
//! # How it is built
//!
//! Layers, bottom up; each uses only the ones below it:
//!
//! - `error`: [`Error`] and [`ErrorKind`].
//! - `sys`: OS primitives only (futexes, poll, locks, panics, segments, sockets,
//!   processes, randomness); the only place that calls `libc`.
//! - `codec`: values to bytes and back (postcard and raw layouts, serde error messages).
//! - `task`: [`Task`], the link-time registry, the build identity, running a chunk.
//! - `wire`: frames, the handshake, frame bodies in shared memory, and the transport
//!   seam (`Link`) with its socket implementation.
//! - `shm`: the user's shared-memory handles and the per-process segment table.
//! - `direct`: the shared-memory call path from a caller to an idle local worker.
//! - `worker`: the pre-`main` entry of a worker process and its serving loop.
//! - `engine`: the job queue, driver threads, starting, initializing and reaping
//!   workers, the pool's counters, Ctrl-C for cancellable pools, the global and current
//!   pools.
//! - `cluster`: the same program over the ranks of an MPI job (feature `mpi`): rank
//!   0's cluster thread, the serving ranks' loop, and the MPI transport.
//! - `api`: [`Pool`], maps, `apply`, [`Process`], pipelines, progress.
//! - `queue`: the cross-process [`Queue`] (beside `api`, on `shm` and `sys`).
//! - `sync`: [`Event`], [`Barrier`], [`Semaphore`] and [`Mutex`] between processes (beside `queue`, on `shm` and `sys`).
//!
//! Depend on the `multiproc` crate instead; it re-exports everything that is public here
//! under stable names. This crate's version is pinned exactly by `multiproc`.

// One module-file style: `name.rs` beside `name/`, never `name/mod.rs`.
#![deny(clippy::mod_module_files)]

// The layers: see "How it is built" above for their order, bottom up, which
// `tests/layers.rs` checks (each module uses only those below it).
mod api;
mod cluster;
mod codec;
mod direct;
mod engine;
mod error;
mod queue;
mod shm;
mod sync;
mod sys;
mod task;
mod wire;
mod worker;

pub use api::apply::AsyncResult;
pub use api::imap::IMap;
pub use api::map::ParMap;
pub use api::pipeline::{OkOnly, Pipeline, Source, Stage, pipeline};
pub use api::pool::{Interrupt, IntoPool, Pool, PoolBuilder};
pub use api::process::{Process, ProcessBuilder};
pub use engine::{PoolStats, WorkerStats};
pub use error::{Error, ErrorKind, Result};
pub use queue::{Queue, QueueIter, Rejected};
pub use shm::{Shared, SharedChunkMut, SharedSlice, SharedSliceMut, ShmBackend, segments_held};
pub use sync::{Barrier, BarrierWaitResult, Event, Mutex, MutexGuard, Semaphore, SemaphoreGuard};
pub use task::Task;
pub use worker::in_worker;

/// Items used by code that `#[parallel]` generates. Not a public API: names and
/// signatures here change without notice.
#[doc(hidden)]
pub mod __private {
    pub use crate::api::pool::__with_pool_start as with_pool_start;
    pub use crate::codec::{
        Codec, Layout, PostcardLayout, RawItem, RawLayout, RawTupleLayout, RawVecLayout,
    };
    pub use crate::engine::current::CurrentGuard;
    pub use crate::task::{
        Borrowed, Failure, RunChunk, TASKS, Task, TaskEntry, run_chunk, run_chunk_borrowed,
    };
    pub use linkme;
    pub use serde;
    pub use std::vec::Vec;

    /// Starts one worker from `program`, checks its handshake and stops it again;
    /// returns its pid. Lets tests show what happens when a worker is not the same build.
    pub fn probe_worker(program: &std::path::Path) -> crate::Result<u32> {
        use crate::engine::spawn;
        let mut worker = spawn::spawn_worker(
            program,
            crate::wire::ShmConfig::default(),
            &spawn::Launch::default(),
        )?;
        drop(worker.stream);
        let _ = spawn::reap(&mut worker.child, std::time::Duration::from_secs(5));
        Ok(worker.pid)
    }

    /// The handshake frame a parent sends a worker, with `token`. Lets tests play a
    /// parent that does, or does not, know a worker's token.
    pub fn parent_hello_frame(token: u64) -> Vec<u8> {
        let mut buf = Vec::new();
        let hello =
            crate::wire::hello::Hello::from_parent(crate::wire::ShmConfig::default(), token);
        // Encoding a hello into a Vec cannot fail.
        let _ = crate::wire::frame::hello_frame(&mut buf, &hello);
        buf
    }

    /// A type that can travel between processes. Only used to give the compile error
    /// for an argument or result type that cannot, with a clear message.
    #[diagnostic::on_unimplemented(
        message = "`{Self}` cannot travel between processes: it does not implement serde's `Serialize` and `DeserializeOwned`",
        label = "the arguments and the result of a #[parallel] function must be serializable",
        note = "derive them on your type: `#[derive(serde::Serialize, serde::Deserialize)]`"
    )]
    pub trait Portable {}
    impl<T: serde::Serialize + serde::de::DeserializeOwned> Portable for T {}

    /// Compile-time check that an argument type can travel to a worker. Generated code
    /// names it with the argument type's span, so the error points at that type.
    pub const fn assert_argument<T: Portable>() {}

    /// Compile-time check that a return type can travel back from a worker.
    pub const fn assert_result<T: Portable>() {}
}
