//! The pool engine: a queue of encoded chunks, one driver thread per worker process, and
//! the global pool. It moves bytes only; typed encoding and decoding happen in the
//! caller's thread (see `map.rs`).

mod driver;
mod global;

use std::collections::VecDeque;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError, mpsc};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::error::{Error, ErrorKind, Result};

pub(crate) use global::global;

/// One encoded chunk waiting for, or held by, a worker.
pub(crate) struct Job {
    /// Unique id of the chunk, echoed by the worker in its `Done` frame.
    pub chunk: u64,
    /// The `#[parallel]` function's registered name.
    pub task: &'static str,
    /// Position in the caller's input of the chunk's first item.
    pub first_index: usize,
    /// Number of items in the chunk.
    pub count: u32,
    /// The whole `Run` frame, length prefix included.
    pub frame: Vec<u8>,
    /// Set by the caller when it no longer wants the result (it returned early).
    pub cancel: Arc<AtomicBool>,
    /// Where the one reply goes; `None` once sent.
    reply: Option<mpsc::Sender<Reply>>,
}

/// What happened to a job: exactly one reply per job, even if the pool goes away.
pub(crate) enum Reply {
    Done {
        first_index: usize,
        /// The worker that ran it.
        pid: u32,
        /// Time the worker spent running the chunk.
        nanos: u64,
        /// Items in the chunk.
        expected: u32,
        /// Items that ran (fewer than expected only if an argument did not decode).
        count: u32,
        /// The `Done` frame's payload: the values are `payload[values]`, the failures
        /// `payload[values.end..]`.
        payload: Vec<u8>,
        values: std::ops::Range<usize>,
    },
    Failed {
        error: Error,
    },
}

impl Job {
    pub(crate) fn new(
        chunk: u64,
        task: &'static str,
        first_index: usize,
        count: u32,
        frame: Vec<u8>,
        cancel: Arc<AtomicBool>,
        reply: mpsc::Sender<Reply>,
    ) -> Self {
        Job {
            chunk,
            task,
            first_index,
            count,
            frame,
            cancel,
            reply: Some(reply),
        }
    }

    fn is_cancelled(&self) -> bool {
        self.cancel.load(Ordering::Relaxed)
    }

    /// Sends the job's reply. A caller that went away is not an error.
    pub(crate) fn reply(mut self, reply: Reply) {
        if let Some(tx) = self.reply.take() {
            let _ = tx.send(reply);
        }
    }

    pub(crate) fn fail(self, error: Error) {
        let error = error.with_task(self.task).with_index(self.first_index);
        self.reply(Reply::Failed { error });
    }
}

impl Drop for Job {
    fn drop(&mut self) {
        if let Some(tx) = self.reply.take() {
            let _ = tx.send(Reply::Failed {
                error: Error::new(ErrorKind::Closed, "the pool shut down before the item ran")
                    .with_task(self.task)
                    .with_index(self.first_index),
            });
        }
    }
}

/// How a pool is built.
#[derive(Debug, Clone)]
pub(crate) struct PoolConfig {
    pub workers: usize,
    pub program: PathBuf,
}

struct Queue {
    jobs: VecDeque<Job>,
    closed: bool,
}

/// State shared by the pool handle and its driver threads.
pub(crate) struct PoolShared {
    queue: Mutex<Queue>,
    ready: Condvar,
    program: PathBuf,
    /// The pid of each slot's current worker, for kills at exit.
    pids: Mutex<Vec<Option<u32>>>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic while holding these locks leaves the data consistent (every critical
    // section is a single push, pop or flag store), so poisoning is not an error here.
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl PoolShared {
    /// The next job, waiting for one; `None` once the pool is closed and drained.
    fn next_job(&self) -> Option<Job> {
        let mut q = lock(&self.queue);
        loop {
            while let Some(job) = q.jobs.pop_front() {
                if !job.is_cancelled() {
                    return Some(job);
                }
            }
            if q.closed {
                return None;
            }
            q = self.ready.wait(q).unwrap_or_else(PoisonError::into_inner);
        }
    }

    /// The next job if one is queued now.
    fn try_next_job(&self) -> Option<Job> {
        let mut q = lock(&self.queue);
        while let Some(job) = q.jobs.pop_front() {
            if !job.is_cancelled() {
                return Some(job);
            }
        }
        None
    }

    /// Puts back jobs a dead worker held but never started, ahead of everything else.
    fn requeue_front(&self, jobs: impl DoubleEndedIterator<Item = Job>) {
        let mut q = lock(&self.queue);
        for job in jobs.rev() {
            q.jobs.push_front(job);
        }
        drop(q);
        self.ready.notify_all();
    }

    fn set_pid(&self, slot: usize, pid: Option<u32>) {
        if let Some(p) = lock(&self.pids).get_mut(slot) {
            *p = pid;
        }
    }
}

/// A running pool of worker processes.
pub(crate) struct PoolCore {
    shared: Arc<PoolShared>,
    drivers: Mutex<Vec<JoinHandle<()>>>,
    workers: usize,
}

impl PoolCore {
    /// Starts `config.workers` workers and waits until every one has passed its handshake.
    pub(crate) fn start(config: PoolConfig) -> Result<PoolCore> {
        if config.workers == 0 {
            return Err(Error::new(
                ErrorKind::InvalidConfig,
                "a pool needs at least one worker",
            ));
        }
        let shared = Arc::new(PoolShared {
            queue: Mutex::new(Queue {
                jobs: VecDeque::new(),
                closed: false,
            }),
            ready: Condvar::new(),
            program: config.program,
            pids: Mutex::new(vec![None; config.workers]),
        });
        let pool = PoolCore {
            shared: Arc::clone(&shared),
            drivers: Mutex::new(Vec::with_capacity(config.workers)),
            workers: config.workers,
        };
        let (started_tx, started_rx) = mpsc::channel();
        for slot in 0..config.workers {
            let shared = Arc::clone(&shared);
            let started = started_tx.clone();
            let handle = std::thread::Builder::new()
                .name(format!("multiproc-driver-{slot}"))
                .spawn(move || driver::run(slot, &shared, started))
                .map_err(|e| Error::io(ErrorKind::Spawn, "cannot start a driver thread", e))?;
            lock(&pool.drivers).push(handle);
        }
        drop(started_tx);
        // Every driver reports once; the first failure fails the start (dropping `pool`
        // closes it and reaps the workers that did start).
        for started in started_rx {
            started?;
        }
        Ok(pool)
    }

    /// The number of worker processes.
    pub(crate) fn workers(&self) -> usize {
        self.workers
    }

    /// Queues a job. On a closed pool the job is dropped, which replies `Closed`.
    pub(crate) fn submit(&self, job: Job) -> Result<()> {
        let mut q = lock(&self.shared.queue);
        if q.closed {
            drop(q);
            drop(job);
            return Err(Error::new(ErrorKind::Closed, "the pool is closed"));
        }
        q.jobs.push_back(job);
        drop(q);
        self.shared.ready.notify_one();
        Ok(())
    }

    /// Stops taking work; queued jobs still run.
    pub(crate) fn close(&self) {
        lock(&self.shared.queue).closed = true;
        self.shared.ready.notify_all();
    }

    /// Waits for the drivers to finish the queued work and reap their workers.
    pub(crate) fn join(&self) {
        let drivers = std::mem::take(&mut *lock(&self.drivers));
        for d in drivers {
            let _ = d.join();
        }
    }

    /// Closes, waits up to `grace` for the queued work, then kills what is left.
    /// Used at process exit, where waiting forever is not an option.
    pub(crate) fn shutdown_within(&self, grace: Duration) {
        self.close();
        let deadline = Instant::now() + grace;
        let all_done = || lock(&self.drivers).iter().all(JoinHandle::is_finished);
        while !all_done() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(1));
        }
        if all_done() {
            self.join();
            return;
        }
        for pid in lock(&self.shared.pids).iter().flatten() {
            // SAFETY: kill(2) with a pid we spawned and have not reaped (the driver
            // clears the slot before reaping), so it cannot name a recycled process.
            unsafe { libc::kill(*pid as libc::pid_t, libc::SIGKILL) };
        }
    }
}

impl Drop for PoolCore {
    fn drop(&mut self) {
        self.close();
        self.join();
    }
}
