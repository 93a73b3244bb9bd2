//! The pool engine: a queue of encoded chunks, one driver thread per worker process
//! (which starts, feeds, times and replaces its worker), a completion thread for
//! asynchronous results, offers to the workers' direct paths, and the global and
//! current pools. It moves bytes only; typed encoding and decoding happen in the
//! callers (`api`).

pub(crate) mod current;
mod driver;
mod global;
mod hook;
mod interrupt;
mod job;
mod offer;
mod shared;
pub(crate) mod spawn;
mod stats;

use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, mpsc};
use std::thread::{JoinHandle, ThreadId};
use std::time::{Duration, Instant};

use crate::error::{Error, ErrorKind, Result};
use crate::sys::fork;
use crate::sys::lock::lock;

pub(crate) use current::MapSettings;
#[cfg(feature = "mpi")]
pub(crate) use global::{WORKERS_VAR, global_config};
pub(crate) use global::{global, max_memory_from_env};
pub(crate) use hook::Hook;
pub(crate) use job::{Completion, Encoded, Job, OnReply, Reply, ReplyTo};
pub(crate) use offer::Offered;
pub(crate) use shared::PoolShared;
use shared::{Next, Wake};
pub use stats::{PoolStats, WorkerStats};

/// The run time of the recent single-item jobs of one worker (or one rank): a moving
/// average, once one has come back. It decides how many such jobs to queue there.
#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct Pace(Option<u64>);

impl Pace {
    /// Counts in a job that ran for `nanos`.
    pub(crate) fn record(&mut self, nanos: u64) {
        self.0 = Some(match self.0 {
            Some(avg) => avg.saturating_mul(3).saturating_add(nanos) / 4,
            None => nanos,
        });
    }

    /// The average, once a job has come back.
    pub(crate) fn nanos(self) -> Option<u64> {
        self.0
    }
}

/// How a pool is built.
#[derive(Debug, Clone)]
pub(crate) struct PoolConfig {
    pub workers: usize,
    pub program: PathBuf,
    /// Recycle a worker after it ran this many items.
    pub max_tasks_per_worker: Option<u64>,
    /// Kill and replace a worker whose item runs longer than this.
    pub task_timeout: Option<Duration>,
    /// How large frame bodies travel.
    pub shm: crate::wire::ShmConfig,
    /// How many times a chunk lost to a dead worker runs again on a fresh one.
    pub retries: u32,
    /// Kill and replace a worker whose private resident memory goes over this many
    /// bytes.
    pub max_memory: Option<u64>,
    /// Ctrl-C stops the pool, and its calls return `Interrupted`.
    pub cancel_on_interrupt: bool,
    /// Runs in every worker before its first task.
    pub initializer: Option<Hook>,
    /// Runs in a worker that leaves normally (recycled, or the pool closed).
    pub on_exit: Option<Hook>,
}

/// Workers of a pool that live elsewhere (the other ranks of a cluster). They take jobs
/// from the pool's queue through a [`Tap`], and answer each exactly once.
// Used by the cluster (feature `mpi`) only.
#[cfg_attr(not(feature = "mpi"), allow(dead_code))]
pub(crate) trait Remote: Send + Sync {
    /// How many items they run at once.
    fn workers(&self) -> usize;
    /// Waits until every job they took has been answered and they stopped (the queue is
    /// closed and drained when this is called).
    fn join(&self);
    /// Stops them now: the jobs they hold fail with `Closed`.
    fn terminate(&self);
}

/// A handle on a pool's queue for workers that are not driven by driver threads (see
/// [`Remote`]): it never blocks.
// Used by the cluster (feature `mpi`) only.
#[cfg_attr(not(feature = "mpi"), allow(dead_code))]
#[derive(Clone)]
pub(crate) struct Tap(Arc<PoolShared>);

/// What [`Tap::take`] found.
// Used by the cluster (feature `mpi`) only.
#[cfg_attr(not(feature = "mpi"), allow(dead_code))]
// Returned by value once per job, never stored (see `Next`).
#[allow(clippy::large_enum_variant)]
pub(crate) enum Taken {
    Job(Job),
    /// Nothing queued now.
    Empty,
    /// The pool is closed and drained.
    Closed,
}

// Used by the cluster (feature `mpi`) only.
#[cfg_attr(not(feature = "mpi"), allow(dead_code))]
impl Tap {
    /// The next job, if one is queued.
    pub(crate) fn take(&self) -> Taken {
        let mut q = lock(&self.0.queue);
        while let Some(job) = q.jobs.pop_front() {
            if !job.is_cancelled() {
                return Taken::Job(job);
            }
        }
        if q.closed {
            Taken::Closed
        } else {
            Taken::Empty
        }
    }

    /// Puts back jobs whose workers were lost before they answered, ahead of the rest.
    pub(crate) fn requeue(&self, jobs: Vec<Job>) {
        if !jobs.is_empty() {
            self.0.requeue_front(jobs.into_iter());
        }
    }

    /// The pool's configuration.
    pub(crate) fn config(&self) -> &PoolConfig {
        &self.0.config
    }
}

/// A running pool of worker processes.
pub(crate) struct PoolCore {
    shared: Arc<PoolShared>,
    drivers: Mutex<Vec<JoinHandle<()>>>,
    /// Feeds the completion thread; dropped by `join` so the thread can finish.
    completions: Mutex<Option<mpsc::Sender<Completion>>>,
    completion_thread: Mutex<Option<JoinHandle<()>>>,
    completion_thread_id: ThreadId,
    /// The fork generation of the process that started the pool (see [`fork`]).
    generation: u64,
}

impl PoolCore {
    /// True in a `fork()`ed copy of the process that started the pool: none of its
    /// threads or workers are this process's, so nothing may be sent, joined or killed.
    pub(crate) fn foreign(&self) -> bool {
        fork::generation() != self.generation
    }

    /// The error for using a pool in a `fork()`ed child.
    fn foreign_error() -> Error {
        Error::new(
            ErrorKind::Closed,
            "this pool belongs to the process this one was fork()ed from: its workers and \
             threads are not here; start a new Pool in this process (par_map outside a \
             pool starts a fresh global pool by itself)",
        )
    }

    /// Starts `config.workers` workers and waits until every one has passed its handshake.
    pub(crate) fn start(config: PoolConfig) -> Result<PoolCore> {
        if config.workers == 0 {
            return Err(Error::new(
                ErrorKind::InvalidConfig,
                "a pool needs at least one worker",
            ));
        }
        if config.max_tasks_per_worker == Some(0) {
            return Err(Error::new(
                ErrorKind::InvalidConfig,
                "max_tasks_per_worker must be at least 1",
            ));
        }
        if config.task_timeout == Some(Duration::ZERO) {
            return Err(Error::new(
                ErrorKind::InvalidConfig,
                "task_timeout must be longer than zero",
            ));
        }
        let workers = config.workers;
        let generation = fork::generation();
        let cancel_on_interrupt = config.cancel_on_interrupt;
        let shared = Arc::new(PoolShared::new(config));
        if cancel_on_interrupt {
            interrupt::cancel_on_interrupt(&shared)?;
        }
        let (completions, completed) = mpsc::channel::<Completion>();
        let completion_thread = std::thread::Builder::new()
            .name("multiproc-results".into())
            .spawn(move || {
                for c in completed {
                    // `on_reply` reports a panicking user callback itself; this only
                    // guards the thread against a bug in it.
                    let run = std::panic::AssertUnwindSafe(move || (c.on_reply)(c.reply));
                    if std::panic::catch_unwind(run).is_err() {
                        eprintln!("multiproc: a result handler panicked; carrying on");
                    }
                }
            })
            .map_err(|e| Error::io(ErrorKind::Spawn, "cannot start the results thread", e))?;
        let pool = PoolCore {
            shared: Arc::clone(&shared),
            drivers: Mutex::new(Vec::with_capacity(workers)),
            completion_thread_id: completion_thread.thread().id(),
            completions: Mutex::new(Some(completions)),
            completion_thread: Mutex::new(Some(completion_thread)),
            generation,
        };
        let (started_tx, started_rx) = mpsc::channel();
        for slot in 0..workers {
            let shared = Arc::clone(&shared);
            let started = started_tx.clone();
            let handle = std::thread::Builder::new()
                .name(format!("multiproc-driver-{slot}"))
                .spawn(move || driver::run(slot, &shared, started))
                .map_err(|e| Error::io(ErrorKind::Spawn, "cannot start a driver thread", e))?;
            lock(&pool.drivers).push(handle);
        }
        drop(started_tx);
        // The pool answers once every worker is launched (a process with its
        // descriptors and control segment: a lack of them fails the start) and one of
        // them is ready; the others finish their handshakes meanwhile. It fails if a
        // launch fails, or if every handshake does. Dropping `pool` closes it and reaps
        // the workers that did start.
        let (mut launched, mut ready, mut failed) = (0, false, None);
        let mut failures = 0;
        for report in started_rx {
            match report {
                driver::Startup::Launched(result) => {
                    result?;
                    launched += 1;
                }
                driver::Startup::Ready(Ok(())) => ready = true,
                driver::Startup::Ready(Err(e)) => {
                    failures += 1;
                    failed.get_or_insert(e);
                }
            }
            if launched == workers && ready {
                return Ok(pool);
            }
            if failures == workers {
                break;
            }
        }
        Err(failed.unwrap_or_else(|| {
            Error::new(
                ErrorKind::Spawn,
                "a driver thread ended before its worker started",
            )
        }))
    }

    /// The number of worker processes, remote ones included.
    pub(crate) fn workers(&self) -> usize {
        self.shared.config.workers + self.remote().map_or(0, |r| r.workers())
    }

    fn remote(&self) -> Option<Arc<dyn Remote>> {
        lock(&self.shared.remote).clone()
    }

    /// The smallest copy of a value that goes straight into its chunk's one-shot segment
    /// while the chunk is encoded ([`crate::codec::spilling`]): bodies that large travel
    /// out of line anyway. Only for a pool of local workers with memfd segments (a
    /// memfd can grow as it is written; a cluster sends bodies as messages).
    pub(crate) fn spill_at(&self) -> Option<usize> {
        let shm = self.shared.config.shm;
        let spills = shm.backend == crate::sys::segment::ShmBackend::Memfd && !self.spans_ranks();
        spills.then(|| shm.threshold.saturating_add(1).max(crate::codec::HUGE_COPY))
    }

    /// Whether other ranks run this pool's jobs too (a cluster pool).
    pub(crate) fn spans_ranks(&self) -> bool {
        lock(&self.shared.remote).is_some()
    }

    /// The pool's queue, for workers that live elsewhere.
    #[cfg_attr(not(feature = "mpi"), allow(dead_code))]
    pub(crate) fn tap(&self) -> Tap {
        Tap(Arc::clone(&self.shared))
    }

    /// Adds workers that live elsewhere (see [`Remote`]); from now on they count among
    /// the pool's workers, and `join` and `terminate` wait for them and stop them.
    #[cfg_attr(not(feature = "mpi"), allow(dead_code))]
    pub(crate) fn attach_remote(&self, remote: Arc<dyn Remote>) {
        *lock(&self.shared.remote) = Some(remote);
        self.shared.wake_drivers(Wake::All);
    }

    /// What the pool has done so far.
    pub(crate) fn stats(&self) -> PoolStats {
        self.shared.tally().snapshot()
    }

    /// A `map` of `items` items completed in `elapsed` (for [`PoolStats`]).
    pub(crate) fn map_done(&self, elapsed: Duration, items: usize) {
        self.shared.tally().map_done(elapsed, items);
    }

    pub(crate) fn task_timeout(&self) -> Option<Duration> {
        self.shared.config.task_timeout
    }

    pub(crate) fn max_tasks_per_worker(&self) -> Option<u64> {
        self.shared.config.max_tasks_per_worker
    }

    /// A sender to the completion thread, or `Closed` once the pool was joined.
    pub(crate) fn completions(&self) -> Result<mpsc::Sender<Completion>> {
        lock(&self.completions)
            .clone()
            .ok_or_else(|| Error::new(ErrorKind::Closed, "the pool was joined"))
    }

    /// Queues a job. On a closed pool the job is dropped, which replies `Closed`.
    pub(crate) fn submit(&self, job: Job) -> Result<()> {
        if self.foreign() {
            // Dropped here: it replies `Closed` to anyone waiting.
            drop(job);
            return Err(PoolCore::foreign_error());
        }
        if job.writes_shared_memory() && self.remote().is_some() {
            let error = Error::new(
                ErrorKind::InvalidConfig,
                "a SharedSliceMut cannot be written from a cluster pool: its other ranks \
                 have no access to this host's memory, so their writes would be lost; run \
                 this map on a local Pool (Pool::new(n)), or return the values instead",
            )
            .with_task(job.task);
            job.fail(error.duplicate());
            return Err(error);
        }
        let mut q = lock(&self.shared.queue);
        if q.closed {
            drop(q);
            drop(job);
            return Err(self.shared.closed_error());
        }
        // The polling driver takes the first job queued; any further one needs a driver
        // of its own. While direct calls run, any driver may be one that takes nothing.
        q.jobs.push_back(job);
        let wake = if self.shared.direct_calls.load(Ordering::SeqCst) > 0 {
            Wake::All
        } else if q.polling && q.jobs.len() == 1 {
            Wake::None
        } else {
            Wake::One
        };
        drop(q);
        self.shared.wake_drivers(wake);
        Ok(())
    }

    /// The error for work submitted to this pool once closed: `Closed`, or
    /// `Interrupted` after Ctrl-C stopped it.
    pub(crate) fn closed_error(&self) -> Error {
        self.shared.closed_error()
    }

    pub(crate) fn is_closed(&self) -> bool {
        lock(&self.shared.queue).closed
    }

    /// Stops taking work; queued jobs still run.
    pub(crate) fn close(&self) {
        lock(&self.shared.queue).closed = true;
        self.shared.wake_drivers(Wake::All);
    }

    /// Closes the pool, waits for every queued job to finish and every worker to exit,
    /// then for the completion thread to run the last callbacks.
    pub(crate) fn join(&self) {
        if self.foreign() {
            // The drivers to wait for live in the original process only.
            return;
        }
        self.close();
        // The locks are held while joining: a second thread that joins (or terminates)
        // at the same time waits until the first has seen every worker reaped.
        let mut drivers = lock(&self.drivers);
        for d in drivers.drain(..) {
            let _ = d.join();
        }
        drop(drivers);
        if let Some(remote) = self.remote() {
            remote.join();
        }
        lock(&self.completions).take();
        // A callback may join its own pool; it cannot wait for itself.
        if std::thread::current().id() != self.completion_thread_id {
            let mut thread = lock(&self.completion_thread);
            if let Some(t) = thread.take() {
                let _ = t.join();
            }
        }
    }

    /// Kills every worker now; queued and running jobs fail with `Closed`.
    pub(crate) fn terminate(&self) {
        if self.foreign() {
            // The workers are the original process's: never kill them from here.
            return;
        }
        self.shared.stop_now(false);
        self.join();
    }

    /// Closes, waits up to `grace` for the queued work, then kills what is left.
    /// Used at process exit, where waiting forever is not an option.
    pub(crate) fn shutdown_within(&self, grace: Duration) {
        if self.foreign() {
            return;
        }
        self.close();
        let deadline = Instant::now() + grace;
        // Another thread joining holds the lock until its workers are reaped: not done.
        let all_done = || match self.drivers.try_lock() {
            Ok(drivers) => drivers.iter().all(JoinHandle::is_finished),
            Err(std::sync::TryLockError::Poisoned(p)) => {
                p.into_inner().iter().all(JoinHandle::is_finished)
            }
            Err(std::sync::TryLockError::WouldBlock) => false,
        };
        while !all_done() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(1));
        }
        if all_done() {
            self.join();
        } else {
            self.shared.kill_workers();
        }
    }
}

impl Drop for PoolCore {
    fn drop(&mut self) {
        if self.foreign() {
            // Handles to threads of the original process: not joined, not detached.
            std::mem::forget(std::mem::take(&mut *lock(&self.drivers)));
            std::mem::forget(lock(&self.completion_thread).take());
            return;
        }
        self.join();
    }
}

#[cfg(test)]
mod tests;
