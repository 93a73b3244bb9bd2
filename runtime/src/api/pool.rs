//! The public pool: [`Pool`], [`PoolBuilder`], and the scoping that `with_pool!` uses.

use std::sync::Arc;
use std::time::Duration;

use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::api::apply::{self, AsyncResult};
use crate::api::imap::IMap;
use crate::api::map;
use crate::engine::{self, MapSettings, PoolConfig, PoolCore, PoolStats, current};
use crate::error::{Error, ErrorKind, Result};
use crate::shm::ShmBackend;
use crate::task::Task;
use crate::wire::ShmConfig;

/// A pool of worker processes, like Python's `multiprocessing.Pool`.
///
/// ```no_run
/// use multiproc::prelude::*;
///
/// #[parallel]
/// fn t1(x: u64) -> u64 {
///     x * 10
/// }
///
/// fn main() -> multiproc::Result<()> {
///     let pool = Pool::new(3)?;
///     let r = pool.apply_async(t1, 5);
///     assert_eq!(pool.map(t1, &[1, 2, 3])?, [10, 20, 30]);
///     assert_eq!(r.get()?, 50);
///     pool.close();
///     pool.join();
///     Ok(())
/// }
/// ```
///
/// Dropping a pool closes it and waits for everything submitted to it, callbacks
/// included; [`terminate`](Self::terminate) stops it at once instead.
pub struct Pool {
    core: Arc<PoolCore>,
    settings: MapSettings,
}

/// Builds a [`Pool`]: `Pool::builder().workers(3).chunk_size(64).build()?`.
#[derive(Debug, Clone, Default)]
#[must_use]
pub struct PoolBuilder {
    workers: Option<usize>,
    chunk_size: Option<usize>,
    max_tasks_per_worker: Option<u64>,
    task_timeout: Option<Duration>,
    progress: bool,
    shm_threshold: Option<usize>,
    shm_backend: Option<ShmBackend>,
    retries: u32,
    program: Option<std::path::PathBuf>,
    cluster: bool,
    max_memory: Option<u64>,
    interrupt: Interrupt,
    initializer: Option<PendingHook>,
    on_exit: Option<PendingHook>,
}

/// What Ctrl-C (SIGINT) does to a pool: [`PoolBuilder::interrupt`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum Interrupt {
    /// The parent's own disposition decides (the default). The workers ignore SIGINT,
    /// so a terminal's Ctrl-C, which reaches the whole foreground process group, never
    /// kills one: a parent that keeps the default action dies, and its workers with
    /// it; a parent with a handler (the `ctrlc` crate, say) may call
    /// [`Pool::terminate`] or let the work go on, and no worker is counted as died.
    #[default]
    Parent,
    /// Ctrl-C stops the pool: every running `map`, `imap` and `apply` (and pending
    /// `apply_async`) returns [`ErrorKind::Interrupted`], the workers are killed and
    /// reaped, and the pool takes no more work (later calls are `Interrupted` too;
    /// build a new pool to go on). A second Ctrl-C, or one while no such pool runs,
    /// ends the program as SIGINT does by default. Installs a SIGINT handler for the
    /// process, which only wakes a thread of multiproc's.
    Cancel,
}

/// A hook's chunk, encoded when the builder method was called; an argument that did not
/// serialize fails `build`.
#[derive(Debug, Clone)]
struct PendingHook(std::result::Result<engine::Hook, Arc<Error>>);

impl PendingHook {
    fn new<A: Serialize, F>(role: &'static str, task: Task<A, (), F>, arg: &A) -> Self {
        // A hook's frame is kept whole and sent to every worker: never spilled.
        let encoded = apply::one_item(task.name(), task.arg_codec(), arg, None);
        PendingHook(
            encoded
                .and_then(|enc| engine::Hook::new(role, task.name(), enc))
                .map_err(Arc::new),
        )
    }

    fn ready(hook: Option<PendingHook>) -> Result<Option<engine::Hook>> {
        hook.map(|h| h.0.map_err(|e| e.duplicate())).transpose()
    }
}

impl PoolBuilder {
    /// The number of worker processes (default: one per core).
    pub fn workers(mut self, n: usize) -> Self {
        self.workers = Some(n);
        self
    }

    /// Items per chunk for `map` and `imap` (default: adaptive, from the input length and
    /// the measured time per item).
    pub fn chunk_size(mut self, n: usize) -> Self {
        self.chunk_size = Some(n);
        self
    }

    /// Replaces a worker with a fresh process after it ran `n` items, returning whatever
    /// memory its tasks leaked to the system. Chunks are capped at `n` items.
    pub fn max_tasks_per_worker(mut self, n: u64) -> Self {
        self.max_tasks_per_worker = Some(n);
        self
    }

    /// Kills and replaces a worker whose item runs longer than `limit`; that item fails
    /// with [`ErrorKind::Timeout`]. Items are then sent one per chunk, each with its own
    /// deadline. Time this process spends stopped (the job suspended with Ctrl-Z, then
    /// continued) is not counted. Without a limit, an item whose worker is stopped
    /// (SIGSTOP) waits until it is continued: a stopped worker is not a dead one.
    pub fn task_timeout(mut self, limit: Duration) -> Self {
        self.task_timeout = Some(limit);
        self
    }

    /// Draws a progress bar on stderr for `map` and `imap` (done/total, rate, ETA), when
    /// stderr is a terminal (`MULTIPROC_PROGRESS=force` draws it anywhere).
    pub fn progress(mut self, on: bool) -> Self {
        self.progress = on;
        self
    }

    /// Runs items lost to a worker that died (a signal, `abort`, `exit`; not a panic, a
    /// time-out or an error) again, on a fresh worker, up to `n` more times. Safe because
    /// `#[parallel]` functions are pure. The final error says how many attempts were made.
    pub fn retries(mut self, n: u32) -> Self {
        self.retries = n;
        self
    }

    /// Arguments and results whose encoded chunk is larger than `bytes` travel through a
    /// one-shot shared-memory segment instead of the socket (default: 512 KiB, chosen by
    /// measurement; see BENCHMARKS.md).
    pub fn shm_threshold(mut self, bytes: usize) -> Self {
        self.shm_threshold = Some(bytes);
        self
    }

    /// The kind of shared-memory segment to use for large messages (default: a sealed
    /// memfd; `MULTIPROC_SHM=posix` changes the default).
    pub fn shm_backend(mut self, backend: ShmBackend) -> Self {
        self.shm_backend = Some(backend);
        self
    }

    /// Kills and replaces a worker whose private resident memory goes over `bytes`; the
    /// item it was running fails with [`ErrorKind::WorkerDied`], whose message names the
    /// limit and the memory reached, and the other items go on (a worker killed for its
    /// memory counts as died for [`retries`](Self::retries)). The default is
    /// `MULTIPROC_MAX_MEMORY` (`512M`, `2G`, or bytes), else no limit.
    ///
    /// What is counted is the worker's own resident memory: its heap and stacks, not
    /// its code and not the shared memory it maps (a large
    /// [`SharedSlice`](crate::SharedSlice) costs the worker nothing). Each worker
    /// watches it from a thread of its own, every few milliseconds, and kills itself
    /// the moment it is over, so a task that allocates and fills 10 GiB in one go is
    /// stopped a little past the limit, long before the machine runs out and its
    /// out-of-memory killer picks a victim. `RLIMIT_AS` is not used because it counts
    /// every mapping (shared segments, reserved but untouched address space), nor
    /// `RLIMIT_DATA`, which counts reserved rather than resident memory and makes the
    /// allocation fail, which Rust turns into an abort that cannot be told from any
    /// other; cgroups would be exact, but need privileges most users lack.
    pub fn max_memory_per_worker(mut self, bytes: u64) -> Self {
        self.max_memory = Some(bytes);
        self
    }

    /// What Ctrl-C does to this pool: [`Interrupt::Parent`] (the default; the workers
    /// ignore it) or [`Interrupt::Cancel`] (the pool's calls return
    /// [`ErrorKind::Interrupted`]).
    ///
    /// ```no_run
    /// use multiproc::prelude::*;
    /// use multiproc::{ErrorKind, Interrupt};
    ///
    /// #[parallel]
    /// fn slow(x: u64) -> u64 {
    ///     std::thread::sleep(std::time::Duration::from_secs(1));
    ///     x
    /// }
    ///
    /// fn main() -> multiproc::Result<()> {
    ///     let pool = Pool::builder().interrupt(Interrupt::Cancel).build()?;
    ///     match pool.map(slow, &(0..100).collect::<Vec<u64>>()) {
    ///         Err(e) if e.kind() == ErrorKind::Interrupted => eprintln!("cancelled"),
    ///         other => println!("{:?}", other?.len()),
    ///     }
    ///     Ok(())
    /// }
    /// ```
    pub fn interrupt(mut self, interrupt: Interrupt) -> Self {
        self.interrupt = interrupt;
        self
    }

    /// Runs `task(arg)` once in every worker process before that worker's first task:
    /// the workers started with the pool, and every replacement (after a worker was
    /// killed, timed out, recycled by
    /// [`max_tasks_per_worker`](Self::max_tasks_per_worker), or lost and its item
    /// retried). Like Python's `Pool(initializer=…)` and mpire's `worker_init`.
    ///
    /// A worker runs its tasks on the thread that ran its initializer, so what the
    /// initializer leaves in a `thread_local!` or a `static OnceLock` is there for every
    /// task of that worker:
    ///
    /// ```no_run
    /// use multiproc::prelude::*;
    /// use std::cell::RefCell;
    /// use std::sync::OnceLock;
    ///
    /// thread_local! {
    ///     static WORDS: RefCell<Vec<String>> = const { RefCell::new(Vec::new()) };
    /// }
    /// static OFFSET: OnceLock<u64> = OnceLock::new();
    ///
    /// #[parallel]
    /// fn load(words: String) {
    ///     WORDS.with(|w| *w.borrow_mut() = words.split(' ').map(String::from).collect());
    ///     let _ = OFFSET.set(100);
    /// }
    ///
    /// #[parallel]
    /// fn word(i: usize) -> String {
    ///     let offset = OFFSET.get().copied().unwrap_or(0);
    ///     WORDS.with(|w| format!("{}{offset}", w.borrow()[i % w.borrow().len()]))
    /// }
    ///
    /// fn main() -> multiproc::Result<()> {
    ///     let pool = Pool::builder()
    ///         .workers(2)
    ///         .initializer(load, "alpha beta".to_string())
    ///         .build()?;
    ///     assert_eq!(pool.map(word, &[0, 1])?, ["alpha100", "beta100"]);
    ///     Ok(())
    /// }
    /// ```
    ///
    /// An initializer that panics, or kills its worker, does not make the pool start
    /// workers in a tight loop: the items that worker would have run fail with
    /// [`ErrorKind::Spawn`], whose message carries the initializer's panic message, and
    /// the slot's next attempt waits a little longer each time (up to a second). It
    /// runs under the pool's [`task_timeout`](Self::task_timeout), if any. Its argument
    /// is encoded once, here; one that does not serialize fails [`build`](Self::build).
    pub fn initializer<A, F>(mut self, task: Task<A, (), F>, arg: A) -> Self
    where
        A: Clone + Serialize,
    {
        self.initializer = Some(PendingHook::new("initializer", task, &arg));
        self
    }

    /// Runs `task(arg)` once in a worker that leaves normally: recycled by
    /// [`max_tasks_per_worker`](Self::max_tasks_per_worker), or when the pool is
    /// closed and joined (or dropped). For flushing buffers and closing connections that
    /// an [`initializer`](Self::initializer) opened. It does not run in a worker that is
    /// killed: one that crashed, timed out, or went over its memory limit, nor on
    /// [`Pool::terminate`]. A failure is reported on stderr; it cannot fail a task.
    pub fn on_worker_exit<A, F>(mut self, task: Task<A, (), F>, arg: A) -> Self
    where
        A: Clone + Serialize,
    {
        self.on_exit = Some(PendingHook::new("on_worker_exit", task, &arg));
        self
    }

    /// A pool over every rank of the MPI job this program runs in (feature `mpi`):
    /// rank 0's workers and every other rank's, fed from one queue, each rank given
    /// chunks as fast as it returns them. [`workers`](Self::workers) then counts the
    /// workers of each rank (default: each rank's share of its host's cores). Every
    /// method works as on a local pool; a `SharedSliceMut` is refused, since the other
    /// ranks cannot write this host's memory. See the README's "Running on a cluster".
    ///
    /// Outside an MPI launcher, or without the `mpi` feature, `build` fails with
    /// [`ErrorKind::InvalidConfig`], saying which.
    ///
    /// ```no_run
    /// use multiproc::prelude::*;
    ///
    /// #[parallel]
    /// fn square(x: u64) -> u64 {
    ///     x * x
    /// }
    ///
    /// fn main() -> multiproc::Result<()> {
    ///     // mpirun -n 4 --hostfile hosts ./app
    ///     let pool = Pool::builder().cluster().retries(1).build()?;
    ///     let squares = pool.map(square, &(0..1000).collect::<Vec<u64>>())?;
    ///     assert_eq!(squares[9], 81);
    ///     Ok(())
    /// }
    /// ```
    pub fn cluster(mut self) -> Self {
        self.cluster = true;
        self
    }

    /// Starts workers from this executable instead of `/proc/self/exe`. It must be the
    /// same build (the handshake checks); tests use it to make spawning fail.
    #[doc(hidden)]
    pub fn __program(mut self, path: impl Into<std::path::PathBuf>) -> Self {
        self.program = Some(path.into());
        self
    }

    /// Starts the workers. It answers once every worker process is launched (a lack of
    /// processes, descriptors or memory fails here) and one of them has answered its
    /// handshake and run the [`initializer`](Self::initializer); the others join as they
    /// get ready, and work meanwhile goes to those that are. It fails when no worker
    /// passes its handshake (an executable that is not this build, say).
    pub fn build(self) -> Result<Pool> {
        let workers = match self.workers {
            Some(0) => {
                return Err(Error::new(
                    ErrorKind::InvalidConfig,
                    "a pool needs at least one worker, not 0",
                ));
            }
            Some(n) => n,
            None => std::thread::available_parallelism().map_or(1, usize::from),
        };
        if self.chunk_size == Some(0) {
            return Err(Error::new(
                ErrorKind::InvalidConfig,
                "chunk_size must be at least 1",
            ));
        }
        let mut shm = ShmConfig::default();
        if let Some(bytes) = self.shm_threshold {
            shm.threshold = bytes.min(crate::wire::frame::MAX_FRAME / 2);
        }
        if let Some(backend) = self.shm_backend {
            shm.backend = backend;
        }
        let max_memory = match self.max_memory {
            Some(0) => {
                return Err(Error::new(
                    ErrorKind::InvalidConfig,
                    "max_memory_per_worker must be more than 0 bytes",
                ));
            }
            Some(bytes) => Some(bytes),
            None => engine::max_memory_from_env()?,
        };
        let config = PoolConfig {
            workers,
            program: self.program.unwrap_or_else(engine::spawn::default_program),
            max_tasks_per_worker: self.max_tasks_per_worker,
            task_timeout: self.task_timeout,
            shm,
            retries: self.retries,
            max_memory,
            cancel_on_interrupt: self.interrupt == Interrupt::Cancel,
            initializer: PendingHook::ready(self.initializer)?,
            on_exit: PendingHook::ready(self.on_exit)?,
        };
        let core = if self.cluster {
            crate::cluster::start_pool(config, self.workers)?
        } else {
            PoolCore::start(config)?
        };
        Ok(Pool {
            core: Arc::new(core),
            settings: MapSettings {
                chunk_size: self.chunk_size,
                progress: self.progress,
            },
        })
    }
}

impl Pool {
    /// A pool of `workers` worker processes. `0` is [`ErrorKind::InvalidConfig`].
    pub fn new(workers: usize) -> Result<Pool> {
        Pool::builder().workers(workers).build()
    }

    /// A builder for a pool with more options.
    pub fn builder() -> PoolBuilder {
        PoolBuilder::default()
    }

    /// The number of worker processes.
    pub fn workers(&self) -> usize {
        self.core.workers()
    }

    /// Runs `task` on every item and returns the results in input order; the first item
    /// that fails makes the call an `Err` naming it.
    pub fn map<A, R, F>(&self, task: Task<A, R, F>, items: &[A]) -> Result<Vec<R>>
    where
        A: Serialize,
        R: DeserializeOwned + Send + 'static,
    {
        self.check_open(task.name())?;
        map::map_on(&self.core, items, &task, &self.settings)
    }

    /// A lazy, ordered map: results come back in input order, one `Result` per item,
    /// while the input is consumed only a few chunks ahead of the workers. Works on
    /// endless iterators: `pool.imap(f, 0..).take(10)`.
    pub fn imap<A, R, F, I>(&self, task: Task<A, R, F>, items: I) -> IMap<I::IntoIter, R>
    where
        I: IntoIterator<Item = A>,
        A: Serialize,
        R: DeserializeOwned,
    {
        IMap::new(
            Arc::clone(&self.core),
            task.name(),
            (task.arg_codec(), task.ret_codec()),
            items.into_iter(),
            true,
            &self.settings,
        )
    }

    /// Like [`imap`](Self::imap), but yields results as they complete.
    pub fn imap_unordered<A, R, F, I>(&self, task: Task<A, R, F>, items: I) -> IMap<I::IntoIter, R>
    where
        I: IntoIterator<Item = A>,
        A: Serialize,
        R: DeserializeOwned,
    {
        IMap::new(
            Arc::clone(&self.core),
            task.name(),
            (task.arg_codec(), task.ret_codec()),
            items.into_iter(),
            false,
            &self.settings,
        )
    }

    /// Runs `task(arg)` in a worker and waits for the result.
    ///
    /// On a warm pool, a call usually goes straight to an idle worker through shared
    /// memory, with no system call on the way (a few microseconds); a worker stays
    /// ready for the next call for a short while after each one, so a stream of calls
    /// from one thread is served by the same worker. The call takes the pool's queue
    /// instead when no worker is idle, when its argument is large (over ~60 KiB) or
    /// holds shared-memory handles ([`Shared`](crate::Shared),
    /// [`SharedSlice`](crate::SharedSlice)), while the workers hold segments from earlier
    /// calls, and in a pool with a
    /// [`task_timeout`](PoolBuilder::task_timeout) or a
    /// [`max_tasks_per_worker`](PoolBuilder::max_tasks_per_worker). Either way it fails
    /// the same: a panic, a dead worker (retried as
    /// [`retries`](PoolBuilder::retries) allows), a closed or terminated pool.
    pub fn apply<A, R, F>(&self, task: Task<A, R, F>, arg: A) -> Result<R>
    where
        A: Serialize,
        R: DeserializeOwned,
    {
        apply::apply(&self.core, &task, &arg)
    }

    /// Submits `task(arg)` and returns at once. The task runs even if the handle is
    /// dropped; see [`AsyncResult`] for its callbacks.
    pub fn apply_async<A, R, F>(&self, task: Task<A, R, F>, arg: A) -> AsyncResult<R>
    where
        A: Serialize,
        R: DeserializeOwned + Send + 'static,
    {
        apply::apply_async(&self.core, &task, &arg)
    }

    /// Submits `task` on every item and returns at once, like Python's `map_async` (and
    /// `starmap_async`, for a function of several arguments: the items are tuples). The
    /// result is the one `map` would return, values in input order or the first failure,
    /// as an [`AsyncResult`]: `get()` it, register callbacks, or `.await` it. The items
    /// are encoded now, in chunks; the chunks are decoded on the pool's result thread as
    /// they come back.
    ///
    /// ```no_run
    /// use multiproc::prelude::*;
    ///
    /// #[parallel]
    /// fn add(a: u64, b: u64) -> u64 {
    ///     a + b
    /// }
    ///
    /// fn main() -> multiproc::Result<()> {
    ///     let pool = Pool::new(2)?;
    ///     let sums = pool
    ///         .map_async(add, vec![(1, 2), (3, 4)])
    ///         .on_success(|v| println!("done: {v:?}"));
    ///     assert_eq!(sums.get()?, [3, 7]);
    ///     Ok(())
    /// }
    /// ```
    pub fn map_async<A, R, F>(&self, task: Task<A, R, F>, items: Vec<A>) -> AsyncResult<Vec<R>>
    where
        A: Serialize,
        R: DeserializeOwned + Send + 'static,
    {
        crate::api::map_async::map_async(&self.core, &task, &items, &self.settings)
    }

    /// What the pool has done so far, and what each live worker has done (pid, items,
    /// busy and idle time), like mpire's worker insights. Cheap: the workers count their
    /// own items as they go, and this reads the counts.
    ///
    /// ```no_run
    /// use multiproc::prelude::*;
    ///
    /// #[parallel]
    /// fn square(x: u64) -> u64 {
    ///     x * x
    /// }
    ///
    /// fn main() -> multiproc::Result<()> {
    ///     let pool = Pool::new(2)?;
    ///     pool.map(square, &(0..1000).collect::<Vec<u64>>())?;
    ///     let stats = pool.stats();
    ///     assert_eq!(stats.items_done, 1000);
    ///     for w in &stats.workers {
    ///         println!("worker {}: {} items, busy {:?}", w.pid, w.items, w.busy);
    ///     }
    ///     Ok(())
    /// }
    /// ```
    pub fn stats(&self) -> PoolStats {
        self.core.stats()
    }

    /// Stops accepting work. What was submitted still runs; new submissions are
    /// [`ErrorKind::Closed`].
    pub fn close(&self) {
        self.core.close();
    }

    /// Closes the pool if needed, then waits until every submitted task has completed
    /// (also those whose handle was dropped), their callbacks have run and the workers
    /// have exited.
    pub fn join(&self) {
        self.core.join();
    }

    /// Kills the workers now. Tasks not yet completed fail with [`ErrorKind::Closed`].
    pub fn terminate(&self) {
        self.core.terminate();
    }

    fn check_open(&self, task: &'static str) -> Result<()> {
        if self.core.is_closed() {
            return Err(self.core.closed_error().with_task(task));
        }
        Ok(())
    }

    /// Makes this pool the current pool of this thread (where `par_map` runs) until
    /// the guard is dropped. `with_pool!` uses it.
    #[doc(hidden)]
    pub fn __enter(&self) -> current::CurrentGuard {
        current::enter(Arc::clone(&self.core), self.settings)
    }
}

impl Drop for Pool {
    fn drop(&mut self) {
        self.core.join();
    }
}

impl std::fmt::Debug for Pool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pool")
            .field("workers", &self.workers())
            .field("closed", &self.core.is_closed())
            .finish()
    }
}

/// What `with_pool!` accepts as its configuration: a worker count or a [`PoolBuilder`].
pub trait IntoPool {
    /// Starts the pool.
    fn into_pool(self) -> Result<Pool>;
}

impl IntoPool for usize {
    fn into_pool(self) -> Result<Pool> {
        Pool::new(self)
    }
}

impl IntoPool for PoolBuilder {
    fn into_pool(self) -> Result<Pool> {
        self.build()
    }
}

impl IntoPool for Pool {
    fn into_pool(self) -> Result<Pool> {
        Ok(self)
    }
}

/// Starts the pool of a `with_pool!` block, or panics saying why it could not.
#[doc(hidden)]
#[track_caller]
pub fn __with_pool_start(config: impl IntoPool) -> Pool {
    match config.into_pool() {
        Ok(pool) => pool,
        Err(e) => panic!("with_pool!: the pool could not be started: {e}"),
    }
}
