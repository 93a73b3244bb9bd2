//! One driver thread per worker slot: it starts the worker (so the worker's parent-death
//! signal is tied to a thread that lives as long as the pool), feeds it up to two chunks
//! at a time, routes results back to callers, and replaces the worker when it dies.

use std::collections::VecDeque;
use std::io::Write;
use std::sync::mpsc;
use std::time::Duration;

use super::{Job, PoolShared, Reply};
use crate::error::{Error, ErrorKind, Result};
use crate::protocol::{self, Frame};
use crate::spawn::{self, WorkerProcess};

/// Chunks a worker holds at once: one running, one queued behind it to hide latency.
const WINDOW: usize = 2;

/// How long a worker that closed its socket gets to finish exiting before it is killed.
const EXIT_GRACE: Duration = Duration::from_secs(1);

pub(super) fn run(slot: usize, shared: &PoolShared, started: mpsc::Sender<Result<()>>) {
    let mut driver = Driver {
        slot,
        shared,
        worker: None,
        inflight: VecDeque::with_capacity(WINDOW),
        spawn_failures: 0,
    };
    let first = driver.ensure_worker();
    let ok = first.is_ok();
    let _ = started.send(first);
    drop(started);
    if ok {
        driver.serve();
    }
    driver.retire();
}

struct Driver<'a> {
    slot: usize,
    shared: &'a PoolShared,
    worker: Option<WorkerProcess>,
    /// Jobs written to the worker, oldest first; the worker answers in this order.
    inflight: VecDeque<Job>,
    spawn_failures: u32,
}

/// Why a worker is being given up.
enum Loss {
    /// The connection broke (end of stream, reset, write error).
    Died,
    /// It sent something that is not a valid frame, or a frame out of turn.
    Protocol(String),
    /// It sent a `Fatal` frame.
    GaveUp(String),
}

impl Driver<'_> {
    fn serve(&mut self) {
        let mut rbuf = Vec::new();
        loop {
            if !self.fill_window() {
                return;
            }
            if self.inflight.is_empty() {
                continue;
            }
            let Some(worker) = self.worker.as_mut() else {
                continue;
            };
            match protocol::read_frame(&mut worker.stream, &mut rbuf) {
                Ok(true) => self.on_frame(&mut rbuf),
                Ok(false) => self.lose_worker(Loss::Died),
                Err(e) if e.kind() == std::io::ErrorKind::InvalidData => {
                    self.lose_worker(Loss::Protocol(e.to_string()))
                }
                Err(_) => self.lose_worker(Loss::Died),
            }
        }
    }

    /// Writes jobs until the worker holds `WINDOW` of them. Blocks for a job only when
    /// the worker holds none. Returns false when the pool is closed and drained.
    fn fill_window(&mut self) -> bool {
        while self.inflight.len() < WINDOW {
            let job = if self.inflight.is_empty() {
                match self.shared.next_job() {
                    Some(job) => job,
                    None => return false,
                }
            } else {
                match self.shared.try_next_job() {
                    Some(job) => job,
                    None => return true,
                }
            };
            if let Err(e) = self.ensure_worker() {
                job.fail(e);
                continue;
            }
            let Some(worker) = self.worker.as_mut() else {
                continue;
            };
            let written = worker.stream.write_all(&job.frame);
            self.inflight.push_back(job);
            if written.is_err() {
                // Reading tells whether it sent anything (a Fatal, results) before dying.
                return true;
            }
        }
        true
    }

    fn on_frame(&mut self, rbuf: &mut Vec<u8>) {
        let loss = match protocol::parse(rbuf) {
            Ok(Frame::Done {
                chunk,
                count,
                nanos,
                values,
                failures,
            }) if self
                .inflight
                .front()
                .is_some_and(|j| j.chunk == chunk && count <= j.count) =>
            {
                let values_end = rbuf.len() - failures.len();
                let values = values_end - values.len()..values_end;
                let (Some(job), Some(worker)) = (self.inflight.pop_front(), &self.worker) else {
                    return;
                };
                let pid = worker.pid;
                let first_index = job.first_index;
                let expected = job.count;
                job.reply(Reply::Done {
                    first_index,
                    expected,
                    pid,
                    nanos,
                    count,
                    payload: std::mem::take(rbuf),
                    values,
                });
                self.spawn_failures = 0;
                return;
            }
            Ok(Frame::Fatal(why)) => Loss::GaveUp(why.to_owned()),
            Ok(other) => Loss::Protocol(format!("unexpected frame {other:?}")),
            Err(e) => Loss::Protocol(e.to_string()),
        };
        self.lose_worker(loss);
    }

    /// Starts a worker if the slot has none. After failures, waits a little longer before
    /// each new attempt (up to a second), so a broken environment is not hammered.
    fn ensure_worker(&mut self) -> Result<()> {
        if self.worker.is_some() {
            return Ok(());
        }
        if self.spawn_failures > 0 {
            let backoff = Duration::from_millis(10u64 << self.spawn_failures.min(7));
            std::thread::sleep(backoff.min(Duration::from_secs(1)));
        }
        match spawn::spawn_worker(&self.shared.program) {
            Ok(worker) => {
                self.shared.set_pid(self.slot, Some(worker.pid));
                self.worker = Some(worker);
                Ok(())
            }
            Err(e) => {
                self.spawn_failures = self.spawn_failures.saturating_add(1);
                Err(e)
            }
        }
    }

    /// The worker is gone or unusable: reap it, fail the chunk it was running, and put
    /// the chunks it never started back in the queue for another worker.
    fn lose_worker(&mut self, loss: Loss) {
        let Some(mut worker) = self.worker.take() else {
            return;
        };
        self.shared.set_pid(self.slot, None);
        let pid = worker.pid;
        if !matches!(loss, Loss::Died) {
            let _ = worker.child.kill();
        }
        drop(worker.stream);
        let exit = spawn::reap(&mut worker.child, EXIT_GRACE)
            .map(spawn::describe_exit)
            .unwrap_or_else(|| "could not be reaped".to_owned());
        let Some(running) = self.inflight.pop_front() else {
            return;
        };
        let range = format!(
            "items {}..{}",
            running.first_index,
            running.first_index + running.count as usize
        );
        let error = match loss {
            Loss::Died => Error::new(
                ErrorKind::WorkerDied,
                format!("the worker {exit} while running {range}"),
            ),
            Loss::Protocol(why) => Error::new(
                ErrorKind::Protocol,
                format!(
                    "the worker sent an invalid frame while running {range} ({why}); it was killed"
                ),
            ),
            Loss::GaveUp(why) => Error::new(
                ErrorKind::Protocol,
                format!("the worker gave up while running {range}: {why}"),
            ),
        };
        running.fail(error.with_pid(pid));
        self.shared.requeue_front(self.inflight.drain(..));
    }

    /// The pool is closed and drained (or never started): close the socket so the worker
    /// exits, and reap it.
    fn retire(&mut self) {
        self.shared.set_pid(self.slot, None);
        if let Some(mut worker) = self.worker.take() {
            drop(worker.stream);
            let _ = spawn::reap(&mut worker.child, EXIT_GRACE);
        }
        // Nothing can be in flight here: the loop only ends with an empty window.
        for job in self.inflight.drain(..) {
            job.fail(Error::new(ErrorKind::Closed, "the pool shut down"));
        }
    }
}
