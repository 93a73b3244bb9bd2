//! The state a pool's handle shares with its driver threads: the queue of jobs, and
//! how drivers wait for a job, take one, and are woken.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, PoisonError};
use std::time::{Duration, Instant};

use super::{Job, PoolConfig, Remote, stats};
use crate::direct::ParentEnd;
use crate::error::{Error, ErrorKind};
use crate::sys::lock::lock;

/// The jobs waiting for a worker, and what the drivers need to know to share them.
pub(super) struct JobQueue {
    pub(super) jobs: VecDeque<Job>,
    pub(super) closed: bool,
    /// Drivers whose worker holds at least one job.
    pub(super) busy: usize,
    /// A driver is polling `changes` for its next job; it takes the first job queued
    /// before it stops, so that job needs no wake-up of a sleeping driver.
    pub(super) polling: bool,
    /// Drivers asleep on `ready` waiting for a job (not those whose worker is in a direct
    /// path call: they wait for the call to end).
    pub(super) idle_sleeping: usize,
    /// By slot: a caller waiting in the direct path of that slot's worker asks its driver
    /// to check that the worker still lives (an idle driver does not watch its socket).
    pub(super) check: Vec<bool>,
}

/// What an idle driver gets from the queue.
// Returned by value once per job, never stored: boxing the job would only add an
// allocation.
#[allow(clippy::large_enum_variant)]
pub(super) enum Next {
    Job(Job),
    /// Check the worker (see `JobQueue::check`).
    Check,
    /// The pool is closed and drained.
    Closed,
}

/// State shared by the pool handle and its driver threads.
pub(crate) struct PoolShared {
    pub(super) queue: Mutex<JobQueue>,
    pub(super) ready: Condvar,
    pub(super) config: PoolConfig,
    /// The pid of each slot's current worker, for `terminate` and kills at exit.
    pub(super) pids: Mutex<Vec<Option<u32>>>,
    pub(super) terminated: AtomicBool,
    /// Bumped by every change a waiting driver must see (a job queued, the pool
    /// closed), so that a driver can poll it without the queue's lock.
    pub(super) changes: AtomicU64,
    /// Each slot's worker's direct path, while it serves one; `None` throughout in a pool
    /// whose drivers enforce a time limit or a quota (see `direct_allowed`).
    pub(super) directs: Mutex<Vec<Option<Arc<ParentEnd>>>>,
    /// Callers claiming a direct path or in a direct call. While any are, a queued job
    /// wakes every driver: the one woken alone could be a driver whose worker is in a
    /// call.
    pub(super) direct_calls: AtomicUsize,
    /// Workers that are not this process's children (the other ranks of a cluster),
    /// taking jobs from the same queue through a [`Tap`](super::Tap).
    pub(super) remote: Mutex<Option<Arc<dyn Remote>>>,
    /// Set when Ctrl-C stopped the pool (`Interrupt::Cancel`): its calls fail with
    /// `Interrupted`, not `Closed`.
    pub(super) interrupted: AtomicBool,
    /// What the pool has done so far (see [`PoolStats`](super::PoolStats)).
    pub(super) tally: Mutex<stats::Tally>,
}

/// Whether calls may bypass the drivers: not when they enforce a time limit or count
/// items towards a quota, since they do not see direct calls.
pub(super) fn direct_allowed(config: &PoolConfig) -> bool {
    config.task_timeout.is_none() && config.max_tasks_per_worker.is_none()
}

/// Whom a change of the queue concerns: one job the polling driver takes, one job for
/// any driver, or every driver.
#[derive(Clone, Copy)]
pub(super) enum Wake {
    None,
    One,
    All,
}

/// How long an idle driver polls for a new job before it sleeps on the queue. One
/// driver at a time: a second spinner would take the core the work needs on a small
/// machine. It saves the caller's wake-up of a sleeping driver in a stream of
/// `apply`s.
pub(super) const DRIVER_POLL: Duration = Duration::from_micros(50);

/// How long a driver whose worker runs a direct call waits before it looks again (it is
/// also woken when a job is queued, and when a direct call ends with jobs queued).
pub(super) const DIRECT_NAP: Duration = Duration::from_millis(10);
/// How often an idle driver looks at its worker: one killed while the pool is idle is
/// reaped and replaced within this time, not left a zombie until the next call.
pub(super) const IDLE_CHECK: Duration = Duration::from_millis(250);

impl PoolShared {
    /// The state of a pool of `config.workers` slots, none started yet.
    pub(super) fn new(config: PoolConfig) -> PoolShared {
        let workers = config.workers;
        PoolShared {
            queue: Mutex::new(JobQueue {
                jobs: VecDeque::new(),
                closed: false,
                busy: 0,
                polling: false,
                idle_sleeping: 0,
                check: vec![false; workers],
            }),
            ready: Condvar::new(),
            config,
            pids: Mutex::new(vec![None; workers]),
            terminated: AtomicBool::new(false),
            changes: AtomicU64::new(0),
            directs: Mutex::new(vec![None; workers]),
            direct_calls: AtomicUsize::new(0),
            remote: Mutex::new(None),
            interrupted: AtomicBool::new(false),
            tally: Mutex::new(stats::Tally::new(workers)),
        }
    }

    /// The first job for the idle worker of `slot`, waiting for one; the driver counts
    /// as busy once it has it. Or a request to check the worker; or `Closed` once the
    /// pool is closed and drained.
    ///
    /// While a call runs in the worker's direct path (`direct path`), the worker is busy
    /// though its driver holds nothing: the driver takes no job then (it would wait
    /// behind the call while another worker may be free), and looks again when woken or
    /// after [`DIRECT_NAP`]. Woken while jobs are queued and other drivers sleep, it
    /// wakes them: the wake-up was meant for a driver that can take a job.
    pub(super) fn next_job(&self, slot: usize, direct: Option<&ParentEnd>) -> Next {
        let mut q = lock(&self.queue);
        let mut polled = false;
        loop {
            if let Some(check) = q.check.get_mut(slot)
                && std::mem::take(check)
            {
                return Next::Check;
            }
            if direct.is_some_and(ParentEnd::in_call) {
                if q.closed && q.jobs.is_empty() {
                    return Next::Closed;
                }
                if !q.jobs.is_empty() && q.idle_sleeping > 0 {
                    // The wake-up meant for a job went to this driver (its worker was
                    // claimed since): pass it on to one that can take the job.
                    self.ready.notify_all();
                }
                q = self
                    .ready
                    .wait_timeout(q, DIRECT_NAP)
                    .unwrap_or_else(PoisonError::into_inner)
                    .0;
                continue;
            }
            while let Some(job) = q.jobs.pop_front() {
                if !job.is_cancelled() {
                    q.busy += 1;
                    return Next::Job(job);
                }
            }
            if q.closed {
                return Next::Closed;
            }
            if !polled && !q.polling {
                // One driver at a time polls; it clears the flag under the lock, then
                // looks at the queue again, so a job queued meanwhile is its own.
                polled = true;
                q.polling = true;
                let seen = self.changes.load(Ordering::Acquire);
                drop(q);
                self.poll_for_change(seen);
                q = lock(&self.queue);
                q.polling = false;
                continue;
            }
            q.idle_sleeping += 1;
            let (guard, waited) = self
                .ready
                .wait_timeout(q, IDLE_CHECK)
                .unwrap_or_else(PoisonError::into_inner);
            q = guard;
            q.idle_sleeping -= 1;
            if waited.timed_out() {
                // Nothing to do for a while: look at the worker (is it still alive?).
                return Next::Check;
            }
        }
    }

    /// Tells waiting drivers that the queue changed: a sleeping one through the condition
    /// variable, the polling one through `changes`. `Wake::None`: the polling driver
    /// takes the one job queued, so no sleeping driver is woken in vain.
    pub(super) fn wake_drivers(&self, wake: Wake) {
        self.changes.fetch_add(1, Ordering::Release);
        match wake {
            Wake::None => {}
            Wake::One => self.ready.notify_one(),
            Wake::All => self.ready.notify_all(),
        }
    }

    /// Spins for up to `DRIVER_POLL` until `changes` moves on from `seen`.
    pub(super) fn poll_for_change(&self, seen: u64) {
        let start = Instant::now();
        while self.changes.load(Ordering::Acquire) == seen && start.elapsed() < DRIVER_POLL {
            std::hint::spin_loop();
        }
    }

    /// A driver's worker finished everything it held.
    pub(super) fn mark_idle(&self) {
        let mut q = lock(&self.queue);
        q.busy = q.busy.saturating_sub(1);
    }

    /// Another job for a worker that already holds `held`, if more jobs are queued than
    /// there are idle workers to take them, and no more than its fair share: queuing work
    /// behind a busy worker hides latency, but never at the cost of leaving another
    /// worker (or one still starting) without, or of piling a backlog onto one worker.
    pub(super) fn try_next_job(&self, held: usize) -> Option<Job> {
        let mut q = lock(&self.queue);
        let idle = self.config.workers.saturating_sub(q.busy);
        let fair = 1 + q.jobs.len() / self.config.workers.max(1);
        while q.jobs.len() > idle && held < fair {
            let job = q.jobs.pop_front()?;
            if !job.is_cancelled() {
                return Some(job);
            }
        }
        None
    }

    /// Puts back jobs a worker held but never started, ahead of everything else.
    pub(super) fn requeue_front(&self, jobs: impl DoubleEndedIterator<Item = Job>) {
        let mut q = lock(&self.queue);
        for job in jobs.rev() {
            q.jobs.push_front(job);
        }
        drop(q);
        self.wake_drivers(Wake::All);
    }

    /// Asks the driver of `slot` to check its worker (see `JobQueue::check`).
    pub(super) fn request_check(&self, slot: usize) {
        let mut q = lock(&self.queue);
        if let Some(check) = q.check.get_mut(slot) {
            *check = true;
        }
        drop(q);
        self.wake_drivers(Wake::All);
    }

    /// Publishes (or withdraws) the direct path of `slot`'s worker, where direct paths
    /// are allowed.
    pub(super) fn set_direct(&self, slot: usize, direct: Option<&Arc<ParentEnd>>) {
        if !direct_allowed(&self.config) {
            return;
        }
        if let Some(l) = lock(&self.directs).get_mut(slot) {
            *l = direct.map(Arc::clone);
        }
    }

    pub(super) fn set_pid(&self, slot: usize, pid: Option<u32>) {
        if let Some(p) = lock(&self.pids).get_mut(slot) {
            *p = pid;
        }
    }

    pub(super) fn tally(&self) -> std::sync::MutexGuard<'_, stats::Tally> {
        lock(&self.tally)
    }

    /// The error of the calls a stopped pool cuts short: `Interrupted` after Ctrl-C,
    /// `Closed` after `terminate`.
    pub(super) fn stop_error(&self) -> Error {
        if self.interrupted.load(Ordering::SeqCst) {
            Error::new(
                ErrorKind::Interrupted,
                "Ctrl-C (SIGINT) stopped the pool and killed its workers; a second Ctrl-C \
                 exits the program",
            )
        } else {
            Error::new(ErrorKind::Closed, "the pool was terminated")
        }
    }

    /// [`stop_error`](Self::stop_error) if the pool was stopped, else `error()`: what
    /// a worker's loss, or the pool's end, means for the jobs it cut short.
    pub(super) fn unless_stopped(&self, error: impl FnOnce() -> Error) -> Error {
        if self.is_terminated() {
            self.stop_error()
        } else {
            error()
        }
    }

    /// The error for work submitted to a closed pool.
    pub(super) fn closed_error(&self) -> Error {
        if self.interrupted.load(Ordering::SeqCst) {
            self.stop_error()
        } else {
            Error::new(ErrorKind::Closed, "the pool is closed")
        }
    }

    /// Stops the pool now: no more work, queued jobs fail with [`stop_error`]
    /// (`Interrupted` if `interrupted`), the workers elsewhere are stopped, and every
    /// worker is killed; the drivers then fail what their workers held and exit. Does
    /// not wait for them (`PoolCore::terminate` joins after this).
    ///
    /// [`stop_error`]: Self::stop_error
    pub(super) fn stop_now(&self, interrupted: bool) {
        if interrupted {
            self.interrupted.store(true, Ordering::SeqCst);
        }
        self.terminated.store(true, Ordering::SeqCst);
        let dropped: Vec<Job> = {
            let mut q = lock(&self.queue);
            q.closed = true;
            q.jobs.drain(..).collect()
        };
        self.wake_drivers(Wake::All);
        for job in dropped {
            job.fail(self.stop_error());
        }
        let remote = lock(&self.remote).clone();
        if let Some(remote) = remote {
            remote.terminate();
        }
        self.kill_workers();
    }

    pub(super) fn is_terminated(&self) -> bool {
        self.terminated.load(Ordering::SeqCst)
    }

    pub(super) fn kill_workers(&self) {
        // Pids we spawned and have not reaped: a driver clears its slot before it
        // reaps, so none can name a recycled process.
        for pid in lock(&self.pids).iter().flatten() {
            let _ = crate::sys::process::kill(*pid);
        }
    }
}
