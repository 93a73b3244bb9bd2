//! The runtime of [multiproc](https://docs.rs/multiproc): task registry, worker entry,
//! wire protocol, worker pools and errors.
//!
//! Depend on the `multiproc` crate instead; it re-exports everything that is public here
//! under stable names. This crate's version is pinned exactly by `multiproc`.

mod error;
mod map;
mod pool;
mod protocol;
mod spawn;
mod task;
mod worker;

pub use error::{Error, ErrorKind, Result};
pub use map::ParMap;
pub use task::Task;
pub use worker::in_worker;

/// Items used by code that `#[parallel]` generates. Not a public API: names and
/// signatures here change without notice.
#[doc(hidden)]
pub mod __private {
    pub use crate::task::{RunChunk, TASKS, Task, TaskEntry, run_chunk};
    pub use linkme;
    pub use serde;
    pub use std::vec::Vec;

    /// Compile-time check that an argument type can travel to a worker. Generated code
    /// names it with the argument type's span, so the error points at that type.
    pub const fn assert_argument<T: serde::Serialize + serde::de::DeserializeOwned>() {}

    /// Compile-time check that a return type can travel back from a worker.
    pub const fn assert_result<T: serde::Serialize + serde::de::DeserializeOwned>() {}
}
