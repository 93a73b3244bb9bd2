//! One driver thread per worker slot: it starts the worker (so the worker's parent-death
//! signal is tied to a thread that lives as long as the pool), keeps it fed, routes
//! results back, enforces the time limit, recycles the worker after its quota of items,
//! and replaces it when it dies.

use std::collections::{HashMap, VecDeque};
use std::io::BufReader;
use std::os::fd::RawFd;
use std::sync::{Arc, Weak, mpsc};
use std::time::{Duration, Instant};

use super::{Body, Job, PoolShared, Reply};
use crate::error::{Error, ErrorKind, Result};
use crate::protocol::{self, Frame};
use std::sync::atomic::{AtomicU64, Ordering};

use crate::shm::{Entry, Segment, ShmBackend};
use crate::spawn::{self, WorkerProcess};
use crate::transport::{self, FdReader};

/// Chunks a worker holds at once: one running, one queued behind it to hide latency.
const WINDOW: usize = 2;
/// Small jobs (single `apply`s) are held up to this many at a time, and written with
/// one system call, so that a stream of tiny tasks is not one round trip each.
const SMALL_WINDOW: usize = 128;
/// How long a worker that closed its socket gets to finish exiting before it is killed.
const EXIT_GRACE: Duration = Duration::from_secs(1);

pub(super) fn run(slot: usize, shared: &PoolShared, started: mpsc::Sender<Result<()>>) {
    let mut driver = Driver {
        slot,
        shared,
        worker: None,
        inflight: VecDeque::with_capacity(SMALL_WINDOW),
        held: None,
        front_started: Instant::now(),
        spawn_failures: 0,
        wbuf: Vec::new(),
        written: 0,
        wfds: Vec::new(),
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

/// A worker and the driver's view of it.
struct Live {
    process: WorkerProcess,
    reader: BufReader<FdReader>,
    /// Items sent to this worker so far, for `max_tasks_per_worker`.
    items: u64,
    /// Segments this worker holds, to send each once and release it when the parent
    /// drops its last handle.
    segments: HashMap<u64, Weak<Entry>>,
    /// The page where the worker records the item it runs.
    progress: Option<Segment>,
}

impl Live {
    /// The worker's last progress record: the chunk and item it started last.
    fn progress_record(&self) -> Option<u64> {
        let ptr = self.progress.as_ref()?.as_mut_ptr()?;
        // SAFETY: the progress page is a live, page-aligned mapping of at least 8 bytes
        // that the worker only ever stores to atomically.
        Some(unsafe { (*ptr.cast::<AtomicU64>()).load(Ordering::Acquire) })
    }
}

/// Creates a worker's progress page and sends it to the worker.
fn send_progress_page(process: &WorkerProcess) -> Result<Segment> {
    let page = Segment::create_writable(ShmBackend::Memfd, crate::worker::PROGRESS_BYTES)?;
    let mut frame = Vec::new();
    protocol::setup_frame(&mut frame)
        .map_err(|e| Error::new(ErrorKind::Protocol, e.to_string()))?;
    let fds: Vec<_> = page.raw_fd().into_iter().collect();
    transport::send(&process.stream, &frame, &fds)
        .map_err(|e| Error::io(ErrorKind::Spawn, "sending the progress page", e))?;
    Ok(page)
}

struct Driver<'a> {
    slot: usize,
    shared: &'a PoolShared,
    worker: Option<Live>,
    /// Jobs written to the worker, oldest first; the worker answers in this order.
    inflight: VecDeque<Job>,
    /// A job taken from the queue that must wait for the worker to be recycled.
    held: Option<Job>,
    /// When the oldest in-flight job started running, for the time limit.
    front_started: Instant,
    spawn_failures: u32,
    /// Frames being written to the worker: the bytes, how many went out, and the
    /// descriptors still to attach to the next byte. Writes never block: a driver
    /// that waited for a busy worker to read could not read that worker's answers
    /// meanwhile, nor enforce a time limit.
    wbuf: Vec<u8>,
    written: usize,
    wfds: Vec<RawFd>,
}

/// What a worker's socket is ready for.
struct Ready {
    readable: bool,
    writable: bool,
}

/// Why a worker is being given up.
enum Loss {
    /// The connection broke (end of stream, reset, write error).
    Died,
    /// It sent something that is not a valid frame, or a frame out of turn.
    Protocol(String),
    /// It sent a `Fatal` frame.
    GaveUp(String),
    /// Its item ran past the pool's time limit.
    TimedOut(Duration),
}

impl Driver<'_> {
    fn serve(&mut self) {
        let mut rbuf = Vec::new();
        loop {
            // Answers already received are handled first, all of them, so that the jobs
            // that replace them go out together in one write, not one write per answer.
            let answers_waiting = !self.inflight.is_empty()
                && self
                    .worker
                    .as_ref()
                    .is_some_and(|live| !live.reader.buffer().is_empty());
            if !answers_waiting && !self.write_pending() && !self.fill_window() {
                return;
            }
            if self.inflight.is_empty() {
                continue;
            }
            let limit = self.shared.config.task_timeout;
            if limit.is_some() || self.write_pending() {
                let ready = self.wait(limit.map(|l| self.front_started + l));
                if ready.writable {
                    self.push_writes();
                }
                if !ready.readable {
                    if let Some(limit) = limit
                        && !ready.writable
                    {
                        self.lose_worker(Loss::TimedOut(limit));
                    }
                    continue;
                }
            }
            let Some(live) = self.worker.as_mut() else {
                continue;
            };
            match protocol::read_frame(&mut live.reader, &mut rbuf) {
                Ok(true) => self.on_frame(&mut rbuf),
                Ok(false) => self.lose_worker(Loss::Died),
                Err(e) if e.kind() == std::io::ErrorKind::InvalidData => {
                    self.lose_worker(Loss::Protocol(e.to_string()))
                }
                Err(_) => self.lose_worker(Loss::Died),
            }
        }
    }

    /// Takes jobs until the worker holds a full window, and writes them with one system
    /// call. Blocks for a job only when the worker holds none. Returns false when the
    /// pool is closed and drained.
    fn fill_window(&mut self) -> bool {
        let mut batch: Vec<Job> = Vec::new();
        loop {
            let held = self.inflight.len() + batch.len();
            let small = self.inflight.iter().chain(&batch).all(|j| j.count == 1);
            if held >= SMALL_WINDOW || (held >= WINDOW && !small) {
                break;
            }
            let job = match self.held.take() {
                Some(job) => job,
                None if held == 0 => match self.shared.next_job() {
                    Some(job) => job,
                    None => return false,
                },
                None => match self.shared.try_next_job(held) {
                    Some(job) => job,
                    None => break,
                },
            };
            if !self.fits_quota(&job, batch.iter().map(|j| u64::from(j.count)).sum()) {
                if held > 0 {
                    // Let the worker finish what it holds, then recycle it.
                    self.held = Some(job);
                    break;
                }
                self.recycle_worker();
            }
            if let Err(e) = self.ensure_worker() {
                job.fail(e);
                if batch.is_empty() {
                    self.note_if_idle();
                }
                continue;
            }
            batch.push(job);
        }
        if !batch.is_empty() {
            self.write_batch(batch);
        }
        true
    }

    /// Whether `job` may still go to the current worker under `max_tasks_per_worker`,
    /// given `pending` items about to be written to it.
    fn fits_quota(&self, job: &Job, pending: u64) -> bool {
        match (self.shared.config.max_tasks_per_worker, &self.worker) {
            (Some(max), Some(live)) => {
                let used = live.items + pending + self.inflight_items();
                used == 0 || used + u64::from(job.count) <= max
            }
            _ => true,
        }
    }

    fn inflight_items(&self) -> u64 {
        self.inflight.iter().map(|j| u64::from(j.count)).sum()
    }

    fn write_batch(&mut self, mut batch: Vec<Job>) {
        let shm = self.shared.config.shm;
        let Some(live) = self.worker.as_mut() else {
            for job in batch {
                job.fail(Error::new(ErrorKind::Spawn, "no worker"));
            }
            return;
        };
        self.wbuf.clear();
        release_dead_segments(live, &mut self.wbuf);
        let mut fds = Vec::new();
        let mut failed = Vec::new();
        for (i, job) in batch.iter_mut().enumerate() {
            // Each segment goes to a worker once, with the first chunk that needs it.
            let new: Vec<&Arc<Entry>> = job
                .attachments
                .iter()
                .filter(|e| !live.segments.contains_key(&e.segment.id()))
                .collect();
            // The job's own frame stays as it is: a chunk may be sent again, to another
            // worker, if this one dies first.
            let (header, body) = job.frame.split_at(job.body_at);
            match transport::append_frame(&mut self.wbuf, header, body, &new, shm) {
                Ok((job_fds, oneshot)) => {
                    for e in &new {
                        live.segments.insert(e.segment.id(), Arc::downgrade(e));
                    }
                    fds.extend(job_fds);
                    job.oneshot = oneshot;
                }
                Err(e) => failed.push((i, e)),
            }
        }
        for (i, e) in failed.into_iter().rev() {
            batch.remove(i).fail(e);
        }
        if self.inflight.is_empty() {
            self.front_started = Instant::now();
        }
        live.items += batch.iter().map(|j| u64::from(j.count)).sum::<u64>();
        self.inflight.extend(batch);
        self.written = 0;
        self.wfds = fds;
        self.push_writes();
        self.note_if_idle();
    }

    fn write_pending(&self) -> bool {
        self.written < self.wbuf.len()
    }

    /// Writes what the worker's socket takes now of the pending frames. The descriptors
    /// still to send are valid: they belong to segments that jobs in flight hold.
    fn push_writes(&mut self) {
        let Some(live) = self.worker.as_ref() else {
            return self.drop_writes();
        };
        while self.write_pending() {
            match transport::send_now(&live.process.stream, &self.wbuf[self.written..], &self.wfds)
            {
                Ok(n) => {
                    self.written += n;
                    self.wfds.clear();
                }
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return,
                // Reading next tells what happened (a Fatal frame, or end of stream).
                Err(_) => break,
            }
        }
        self.drop_writes();
    }

    /// Forgets pending writes (all written, or the worker is gone).
    fn drop_writes(&mut self) {
        self.wbuf.clear();
        self.written = 0;
        self.wfds.clear();
        if self.wbuf.capacity() > 16 << 20 {
            self.wbuf = Vec::new();
        }
    }

    /// Waits until the worker has something to read, or (while frames are pending) room
    /// to write, or `deadline` passes. The end of the connection counts as readable:
    /// reading reports it.
    fn wait(&self, deadline: Option<Instant>) -> Ready {
        let readable = Ready {
            readable: true,
            writable: false,
        };
        let Some(live) = &self.worker else {
            return readable;
        };
        if !live.reader.buffer().is_empty() {
            return readable;
        }
        let fd = live.reader.get_ref().raw_fd();
        let events = if self.write_pending() {
            libc::POLLIN | libc::POLLOUT
        } else {
            libc::POLLIN
        };
        loop {
            let ms = match deadline {
                None => -1,
                Some(d) => {
                    let left = d.saturating_duration_since(Instant::now());
                    if left.is_zero() {
                        return Ready {
                            readable: false,
                            writable: false,
                        };
                    }
                    libc::c_int::try_from(left.as_millis().max(1)).unwrap_or(libc::c_int::MAX)
                }
            };
            let mut pfd = libc::pollfd {
                fd,
                events,
                revents: 0,
            };
            // SAFETY: `pfd` is one valid pollfd and we pass a count of 1.
            let n = unsafe { libc::poll(&mut pfd, 1, ms) };
            if n > 0 {
                return Ready {
                    readable: pfd.revents & !libc::POLLOUT != 0,
                    writable: pfd.revents & libc::POLLOUT != 0,
                };
            }
            if n < 0 && std::io::Error::last_os_error().kind() != std::io::ErrorKind::Interrupted {
                return readable; // reading will report the error
            }
        }
    }

    fn on_frame(&mut self, rbuf: &mut Vec<u8>) {
        let loss = match protocol::parse(rbuf) {
            Ok(Frame::Done {
                chunk,
                count,
                nanos,
                values_len,
                ..
            }) if self
                .inflight
                .front()
                .is_some_and(|j| j.chunk == chunk && count <= j.count) =>
            {
                let Some(live) = self.worker.as_mut() else {
                    return;
                };
                let body = match Body::of_done(live.reader.get_mut(), rbuf, values_len) {
                    Ok(body) => body,
                    Err(e) => {
                        self.lose_worker(Loss::Protocol(e.message().to_owned()));
                        return;
                    }
                };
                let pid = live.process.pid;
                let Some(job) = self.inflight.pop_front() else {
                    return;
                };
                let reply = Reply::Done {
                    first_index: job.first_index,
                    pid,
                    nanos,
                    expected: job.count,
                    count,
                    body,
                    values_len: values_len as usize,
                };
                job.reply(reply);
                self.front_started = Instant::now();
                self.spawn_failures = 0;
                self.note_if_idle();
                return;
            }
            Ok(Frame::Fatal(why)) => Loss::GaveUp(why.to_owned()),
            Ok(other) => Loss::Protocol(format!("unexpected frame {other:?}")),
            Err(e) => Loss::Protocol(e.to_string()),
        };
        self.lose_worker(loss);
    }

    /// Tells the queue this worker holds nothing any more (it may get the next job).
    fn note_if_idle(&mut self) {
        if self.inflight.is_empty() && self.held.is_none() {
            self.shared.mark_idle();
        }
    }

    /// Starts a worker if the slot has none. After failures, waits a little longer before
    /// each new attempt (up to a second), so a broken environment is not hammered.
    fn ensure_worker(&mut self) -> Result<()> {
        if self.worker.is_some() {
            return Ok(());
        }
        if self.shared.is_terminated() {
            return Err(Error::new(ErrorKind::Closed, "the pool was terminated"));
        }
        if self.spawn_failures > 0 {
            let backoff = Duration::from_millis(10u64 << self.spawn_failures.min(7));
            std::thread::sleep(backoff.min(Duration::from_secs(1)));
        }
        let config = &self.shared.config;
        let started = spawn::spawn_worker(&config.program, config.shm).and_then(|process| {
            let reader = process
                .stream
                .try_clone()
                .map_err(|e| Error::io(ErrorKind::Spawn, "cannot duplicate a socket", e))?;
            let progress = Some(send_progress_page(&process)?);
            Ok(Live {
                process,
                reader: BufReader::with_capacity(256 << 10, FdReader::new(reader)),
                items: 0,
                segments: HashMap::new(),
                progress,
            })
        });
        match started {
            Ok(live) => {
                self.shared.set_pid(self.slot, Some(live.process.pid));
                self.worker = Some(live);
                Ok(())
            }
            Err(e) => {
                self.spawn_failures = self.spawn_failures.saturating_add(1);
                Err(e)
            }
        }
    }

    /// Ends the current worker cleanly (it holds nothing): it exits on end-of-stream and
    /// gives its memory back to the system; the next job starts a fresh one.
    fn recycle_worker(&mut self) {
        self.drop_writes();
        if let Some(live) = self.worker.take() {
            self.shared.set_pid(self.slot, None);
            close_and_reap(live);
        }
    }

    /// The worker is gone or unusable: reap it, fail the chunk it was running, and put
    /// the chunks it never started back in the queue for another worker.
    fn lose_worker(&mut self, loss: Loss) {
        self.drop_writes();
        let Some(mut live) = self.worker.take() else {
            return;
        };
        self.shared.set_pid(self.slot, None);
        let pid = live.process.pid;
        if !matches!(loss, Loss::Died) {
            let _ = live.process.child.kill();
        }
        // Which job was running: the one the worker's last progress record names. The
        // ones before it ran, but their results were still held back in the worker (it
        // batches quick results), so they run again elsewhere; the ones after never
        // started. Without a record, the oldest is the one.
        let record = live.progress_record();
        let found = record.and_then(|r| {
            self.inflight
                .iter()
                .enumerate()
                .find_map(|(pos, job)| crate::worker::progress_item(r, job.chunk).map(|i| (pos, i)))
        });
        let (pos, item) = match found {
            Some((pos, i)) => (
                pos,
                self.inflight.get(pos).map(|j| j.first_index + i as usize),
            ),
            None => (0, None),
        };
        let exit = close_and_reap(live);
        let before: Vec<Job> = self.inflight.drain(..pos).collect();
        if !before.is_empty() {
            self.shared.requeue_front(before.into_iter());
        }
        let Some(mut running) = self.inflight.pop_front() else {
            return;
        };
        let what = match item {
            Some(i) => format!("item {i}"),
            None => format!(
                "items {}..{}",
                running.first_index,
                running.first_index + running.count as usize
            ),
        };
        let retries = self.shared.config.retries;
        let error = if self.shared.is_terminated() {
            Error::new(ErrorKind::Closed, "the pool was terminated")
        } else {
            match loss {
                Loss::Died if running.attempts <= retries => {
                    // Pure functions: running the chunk again on a fresh worker is safe.
                    running.attempts += 1;
                    self.shared
                        .requeue_front(std::iter::once(running).chain(self.inflight.drain(..)));
                    self.note_if_idle();
                    return;
                }
                Loss::Died => {
                    let attempts = if retries > 0 {
                        format!(" (after {} attempts)", running.attempts)
                    } else {
                        String::new()
                    };
                    Error::new(
                        ErrorKind::WorkerDied,
                        format!("the worker {exit} while running {what}{attempts}"),
                    )
                }
                Loss::Protocol(why) => Error::new(
                    ErrorKind::Protocol,
                    format!(
                        "the worker sent an invalid frame while running {what} ({why}); it was killed"
                    ),
                ),
                Loss::GaveUp(why) => Error::new(
                    ErrorKind::Protocol,
                    format!("the worker gave up while running {what}: {why}"),
                ),
                Loss::TimedOut(limit) => Error::new(
                    ErrorKind::Timeout,
                    format!(
                        "{what} ran longer than the time limit of {limit:?}; the worker was killed"
                    ),
                ),
            }
        };
        let index = item.unwrap_or(running.first_index);
        running.fail_at(error.with_pid(pid), index);
        if self.shared.is_terminated() {
            for job in self.inflight.drain(..) {
                job.fail(Error::new(ErrorKind::Closed, "the pool was terminated"));
            }
        } else {
            self.shared.requeue_front(self.inflight.drain(..));
        }
        self.note_if_idle();
        // Replace the worker now, not when the next job comes: the pool keeps its size.
        // (A failure is remembered; the next job tries again, after a pause.)
        let _ = self.ensure_worker();
    }

    /// The pool is closed and drained (or never started): close the socket so the worker
    /// exits, and reap it.
    fn retire(&mut self) {
        self.recycle_worker();
        if let Some(job) = self.held.take() {
            job.fail(Error::new(ErrorKind::Closed, "the pool shut down"));
        }
        for job in self.inflight.drain(..) {
            job.fail(Error::new(ErrorKind::Closed, "the pool shut down"));
        }
    }
}

/// Closes the worker's socket and reaps it; describes how it ended.
fn close_and_reap(live: Live) -> String {
    let Live {
        mut process,
        reader,
        ..
    } = live;
    drop(reader);
    drop(process.stream);
    spawn::reap(&mut process.child, EXIT_GRACE)
        .map(spawn::describe_exit)
        .unwrap_or_else(|| "could not be reaped".to_owned())
}

/// Tells the worker (in front of the next frames) to drop the segments the parent no
/// longer holds a handle to.
fn release_dead_segments(live: &mut Live, wbuf: &mut Vec<u8>) {
    let dead: Vec<u64> = live
        .segments
        .iter()
        .filter(|(_, w)| w.strong_count() == 0)
        .map(|(id, _)| *id)
        .collect();
    if dead.is_empty() {
        return;
    }
    for id in &dead {
        live.segments.remove(id);
    }
    let mut frame = Vec::new();
    if protocol::release_frame(&mut frame, &dead).is_ok() {
        wbuf.extend_from_slice(&frame);
    }
}
