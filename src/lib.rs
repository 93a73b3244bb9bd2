//! # multiproc
//!
//! Python's `multiprocessing` for Rust. Mark a pure function `#[parallel]`, then
//! `data.par_map(f)` runs it in worker processes, which are re-executions of the current
//! binary: a task that crashes, leaks or is not thread-safe hurts one worker, not your
//! program.
//!
//! ```no_run
//! use multiproc::prelude::*;
//!
//! #[parallel]
//! fn t1(x: u64) -> u64 {
//!     x * 10
//! }
//!
//! fn main() -> multiproc::Result<()> {
//!     assert_eq!(t1(5), 50); // still an ordinary function
//!     let data: Vec<u64> = (0..10).collect();
//!     let out = data.par_map(t1)?; // runs in worker processes, results in input order
//!     assert_eq!(out, [0, 10, 20, 30, 40, 50, 60, 70, 80, 90]);
//!     Ok(())
//! }
//! ```
//!
//! ## How it works
//!
//! - `#[parallel]` keeps the function and turns its name into a [`Task`] constant that
//!   derefs to the function, so `t1(5)` still works, `iter.map(*t1)` too, and handing a
//!   function that is not `#[parallel]` to `par_map` is a compile error. It also registers
//!   the function, at link time, under `module::path::name`.
//! - A worker is this same executable, started again (with `posix_spawn`, so the cost
//!   does not grow with the parent's memory) with a marker in its environment and a
//!   socket as its standard input, which it swaps for `/dev/null` at once. A constructor
//!   sees the marker before `main` (and before the
//!   test harness, so `cargo test` needs no setup), serves tasks, and exits. Workers
//!   write to the parent's stdout and stderr, so `println!` in a task shows up.
//! - Arguments and results travel as postcard frames over a Unix socketpair; the first
//!   frames are a handshake that checks both sides are the same build.
//! - The global pool starts on first use with one worker per core
//!   ([`std::thread::available_parallelism`]); the `MULTIPROC_WORKERS` environment
//!   variable overrides the count. It is reused by every later call and shut down when
//!   the program exits. A `par_map` called inside a worker runs inline in that worker.
//! - A worker dies with its parent (`PR_SET_PDEATHSIG`, and it exits when its socket
//!   closes).
//!
//! ## Pools, callbacks and processes
//!
//! Beyond `par_map`, the names are Python's: [`Pool`] (`map`, `imap`,
//! `imap_unordered`, `apply`, `apply_async`, `close`, `join`, `terminate`), built with
//! [`Pool::builder`] (`workers`, `chunk_size`, `max_tasks_per_worker`, `task_timeout`,
//! `progress`); [`AsyncResult`] with `on_success` / `on_error` callbacks that run in the
//! parent; [`with_pool!`] to scope a pool to a block, like `with Pool(3) as pool:`; and
//! [`Process`] for one task in a child process of its own.
//!
//! ```no_run
//! use multiproc::prelude::*;
//!
//! #[parallel]
//! fn t1(x: u64) -> u64 {
//!     x * 10
//! }
//!
//! fn main() -> multiproc::Result<()> {
//!     let data: Vec<u64> = (0..100).collect();
//!     let total: u64 = with_pool!(3, |pool| {
//!         let r = pool.apply_async(t1, 5).on_success(|v| println!("callback in the parent: {v}"));
//!         let all = data.par_map(t1)?; // runs on this block's pool
//!         r.get()? + all.iter().sum::<u64>()
//!     });
//!     let p = Process::spawn(t1, 7)?;
//!     assert_eq!(p.join()?, 70);
//!     println!("{total}");
//!     Ok(())
//! }
//! ```
//!
//! ## Large data
//!
//! An argument chunk or result larger than 512 KiB travels through a shared-memory
//! segment instead of the socket, by itself. For data many tasks read, [`Shared`] holds
//! one value and [`SharedSlice`] a slice of plain numbers in shared memory; their handles
//! cost a few bytes per task and read without a copy in workers. [`SharedSliceMut`] lets
//! workers write disjoint ranges of a result in place. On Linux segments are sealed
//! memfds passed over the socket; `MULTIPROC_SHM=posix` selects named POSIX segments.
//!
//! ## Queues and pipelines
//!
//! [`Queue`] is a cross-process queue in shared memory that the parent, any pool's
//! workers and [`Process`] children share; it is an ordinary argument of a `#[parallel]`
//! function. [`pipeline()`] chains stages, each with its own workers:
//! `pipeline(items).stage(parse, 2).stage(score, 4).collect()`.
//!
//! ## Rules for `#[parallel]` functions
//!
//! Put the work in one free function whose arguments and result are owned and implement
//! serde's `Serialize` and `DeserializeOwned`. A function of several arguments takes a
//! tuple from `par_map` (`pairs.par_map(add)` with `pairs: Vec<(u64, u64)>`); one of no
//! arguments takes `()`. `async`, generic, `unsafe` and `extern` functions, `self`,
//! borrowed and `impl Trait` arguments, and destructuring patterns are rejected at compile
//! time with a message saying what to write instead.
//!
//! ## Errors
//!
//! Every fallible call returns [`Result`], whose [`Error`] has a [`kind`](Error::kind)
//! ([`ErrorKind::Panicked`], [`ErrorKind::WorkerDied`], …), the failed item's
//! [`task_index`](Error::task_index) and the [`worker_pid`](Error::worker_pid). A function
//! that returns its own `Result<T, E>` gives `Vec<Result<T, E>>`: its errors are values.
//!
//! ## How it is built
//!
//! The runtime is a stack of layers, each using only those below it: `sys` (OS
//! primitives), `codec` (values to bytes), `task` (the registry of `#[parallel]`
//! functions), `wire` (frames, the handshake, and the transport seam a cluster backend
//! plugs into), `shm` (shared-memory handles), `direct` (the shared-memory call path to a
//! local worker), `worker` (a worker process's entry and loop), `engine` (queue, driver
//! threads, global pool) and `api` (what this crate re-exports), with `queue` beside
//! `api`. The README has one line per layer, and where to start for a change.
//!
//! ## Platform
//!
//! Linux. Workers are re-executed through `/proc/self/exe`.

pub use multiproc_macros::{parallel, with_pool};
pub use multiproc_runtime::{
    AsyncResult, Error, ErrorKind, IMap, Interrupt, IntoPool, ParMap, Pipeline, Pool, PoolBuilder,
    PoolStats, Process, ProcessBuilder, Queue, QueueIter, Rejected, Result, Shared, SharedChunkMut,
    SharedSlice, SharedSliceMut, ShmBackend, Task, WorkerStats, in_worker, pipeline,
};

/// Synchronisation between processes that no dead process can wedge: [`sync::Event`],
/// [`sync::Barrier`], [`sync::Semaphore`], [`sync::Mutex`].
pub mod sync {
    pub use multiproc_runtime::{
        Barrier, BarrierWaitResult, Event, Mutex, MutexGuard, Semaphore, SemaphoreGuard,
    };
}

/// The iterator adapters a [`pipeline`](fn@pipeline) is made of. The function that
/// starts one is [`multiproc::pipeline`](fn@crate::pipeline).
pub mod pipeline {
    pub use multiproc_runtime::{OkOnly, Pipeline, Source, Stage};
}

/// Helpers for tests and leak checks.
pub mod testing {
    /// The number of shared-memory segments this process holds: handles it made that
    /// are still alive, and segments it received from its parent that it was not told
    /// to release yet. A leak check compares it before and after.
    pub use multiproc_runtime::segments_held;
}

/// Moved to [`pipeline::Source`].
#[deprecated(since = "0.1.0", note = "moved to `multiproc::pipeline::Source`")]
pub type Source<I> = pipeline::Source<I>;
/// Moved to [`pipeline::Stage`].
#[deprecated(since = "0.1.0", note = "moved to `multiproc::pipeline::Stage`")]
pub type Stage<S, T, R> = pipeline::Stage<S, T, R>;
/// Moved to [`pipeline::OkOnly`].
#[deprecated(since = "0.1.0", note = "moved to `multiproc::pipeline::OkOnly`")]
pub type OkOnly<S, T> = pipeline::OkOnly<S, T>;

/// Moved to [`testing::segments_held`].
#[deprecated(since = "0.1.0", note = "moved to `multiproc::testing::segments_held`")]
pub fn segments_held() -> usize {
    testing::segments_held()
}

/// The everyday names: `use multiproc::prelude::*;`.
pub mod prelude {
    pub use crate::{
        AsyncResult, ParMap, Pool, Process, Queue, Shared, SharedChunkMut, SharedSlice,
        SharedSliceMut, Task, parallel, with_pool,
    };
}

#[doc(hidden)]
pub use multiproc_runtime::__private;
