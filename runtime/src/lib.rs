//! The runtime of [multiproc](https://docs.rs/multiproc): task registry, worker entry,
//! wire protocol, worker pools and errors.
//!
//! Depend on the `multiproc` crate instead; it re-exports everything that is public here
//! under stable names. This crate's version is pinned exactly by `multiproc`.

mod apply;
mod chunk;
mod codec;
mod engine;
mod error;
mod futex;
mod imap;
mod lane;
mod map;
mod pipeline;
mod pool;
mod process;
mod progress;
mod protocol;
mod queue;
mod shm;
mod spawn;
mod task;
mod transport;
mod worker;

pub use apply::AsyncResult;
pub use error::{Error, ErrorKind, Result};
pub use imap::IMap;
pub use map::ParMap;
pub use pipeline::{OkOnly, Pipeline, Source, Stage, pipeline};
pub use pool::{IntoPool, Pool, PoolBuilder};
pub use process::{Process, ProcessBuilder};
pub use queue::{Queue, QueueIter, Rejected};
pub use shm::{Shared, SharedChunkMut, SharedSlice, SharedSliceMut, ShmBackend, segments_held};
pub use task::Task;
pub use worker::in_worker;

/// Items used by code that `#[parallel]` generates. Not a public API: names and
/// signatures here change without notice.
#[doc(hidden)]
pub mod __private {
    pub use crate::codec::{
        Codec, Layout, PostcardLayout, RawItem, RawLayout, RawTupleLayout, RawVecLayout,
    };
    pub use crate::engine::current::CurrentGuard;
    pub use crate::pool::__with_pool_start as with_pool_start;
    pub use crate::task::{Failure, RunChunk, TASKS, Task, TaskEntry, run_chunk};
    pub use linkme;
    pub use serde;
    pub use std::vec::Vec;

    /// Starts one worker from `program`, checks its handshake and stops it again;
    /// returns its pid. Lets tests show what happens when a worker is not the same build.
    pub fn probe_worker(program: &std::path::Path) -> crate::Result<u32> {
        let mut worker =
            crate::spawn::spawn_worker(program, crate::transport::ShmConfig::default())?;
        drop(worker.stream);
        let _ = crate::spawn::reap(&mut worker.child, std::time::Duration::from_secs(5));
        Ok(worker.pid)
    }

    /// The handshake frame a parent sends a worker, with `token`. Lets tests play a
    /// parent that does, or does not, know a worker's token.
    pub fn parent_hello_frame(token: u64) -> Vec<u8> {
        let mut buf = Vec::new();
        let hello =
            crate::protocol::Hello::from_parent(crate::transport::ShmConfig::default(), token);
        // Encoding a hello into a Vec cannot fail.
        let _ = crate::protocol::hello_frame(&mut buf, &hello);
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
