//! One driver thread per worker slot: it starts the worker (so the worker's parent-death
//! signal is tied to a thread that lives as long as the pool), keeps it fed, routes
//! results back, enforces the time limit, recycles the worker after its quota of items,
//! and replaces it when it dies.

use std::collections::{HashMap, VecDeque};
use std::process::Child;
use std::sync::{Arc, Weak, mpsc};
use std::time::{Duration, Instant};

use super::spawn;
use super::stats::Left;
use super::{Job, Next, Pace, PoolShared, Reply};
use crate::direct::ParentEnd;
use crate::error::{Error, ErrorKind, Result};
use crate::shm::Entry;
use crate::sys::segment::Segment;
use crate::wire::{self, Answer, Expect, Link, Ready, frame};

mod hooks;
mod lifecycle;

/// Chunks a worker holds at once: one running, one queued behind it to hide latency.
const WINDOW: usize = 2;
/// Small jobs (single `apply`s) are held up to this many at a time, and written with
/// one system call, so that a stream of tiny tasks is not one round trip each.
const SMALL_WINDOW: usize = 128;
/// How much work, by the measured run time of recent small jobs, a worker may hold
/// queued: enough to hide the round trip between tiny tasks, little enough that long
/// tasks are not split between the workers up front (a worker slowed down by the
/// machine would then still hold its share while the others sit idle).
const SMALL_BACKLOG_NANOS: u64 = 1_000_000;
/// How long a worker that closed its socket gets to finish exiting before it is killed.
const EXIT_GRACE: Duration = Duration::from_secs(1);
/// Under a time limit, the longest a driver sleeps in `poll` at a time (see `wait`).
const LIMIT_TICK: Duration = Duration::from_millis(100);
/// How late a `poll` may return before the lateness counts as time this process was
/// stopped rather than a busy machine.
const STALL_SLACK: Duration = Duration::from_millis(100);

/// What a driver reports while its first worker starts: first that the process and
/// everything the driver needs for it exist ([`Driver::launch_worker`]), then that it
/// passed its handshake and is ready for work ([`Driver::finish_worker`]). A failed
/// launch is the driver's last report.
pub(super) enum Startup {
    Launched(Result<()>),
    Ready(Result<()>),
}

pub(super) fn run(slot: usize, shared: &PoolShared, started: mpsc::Sender<Startup>) {
    let mut driver = Driver {
        slot,
        shared,
        worker: None,
        inflight: VecDeque::with_capacity(SMALL_WINDOW),
        held: None,
        answered: Vec::new(),
        front_started: Instant::now(),
        small_nanos: Pace::default(),
        spawn_failures: 0,
        initializer_failed: false,
    };
    match driver.launch_worker() {
        Err(e) => {
            let _ = started.send(Startup::Launched(Err(e)));
        }
        Ok(launched) => {
            let _ = started.send(Startup::Launched(Ok(())));
            // A first worker whose initializer failed is not a failed start: the items
            // it would have run fail instead (`Spawn`), each after a longer pause.
            let ready = match driver.finish_worker(launched) {
                Err(_) if driver.initializer_failed => Ok(()),
                other => other,
            };
            let _ = started.send(Startup::Ready(ready));
            drop(started);
            // Without a worker (its start failed, and the pool started without it, or
            // is closing), the slot starts one for its next job, as after a death.
            driver.serve();
        }
    }
    driver.retire();
}

/// A worker and the driver's view of it.
struct Live {
    child: Child,
    pid: u32,
    /// The connection to the worker: every frame goes through it.
    link: Box<dyn Link>,
    /// Items sent to this worker so far, for `max_tasks_per_worker`.
    items: u64,
    /// Segments this worker holds, to send each once and release it when the parent
    /// drops its last handle.
    segments: HashMap<u64, Weak<Entry>>,
    /// The worker's control segment: where it records the item it runs, and its direct path
    /// for direct calls.
    direct: Arc<ParentEnd>,
}

struct Driver<'a> {
    slot: usize,
    shared: &'a PoolShared,
    worker: Option<Live>,
    /// Jobs written to the worker, oldest first; the worker answers in this order.
    inflight: VecDeque<Job>,
    /// A job taken from the queue that must wait for the worker to be recycled.
    held: Option<Job>,
    /// Jobs answered, whose replies go out once the worker has its next jobs: a reply
    /// may take a while to handle (`map` decodes its results in it), and the worker
    /// must not wait for that.
    answered: Vec<(Job, Reply)>,
    /// When the oldest in-flight job started running, for the time limit.
    front_started: Instant,
    /// The run time of recent small jobs (a moving average), once one has come back.
    small_nanos: Pace,
    spawn_failures: u32,
    /// The last attempt to start a worker failed in the pool's initializer.
    initializer_failed: bool,
}

/// A driver that unwinds (a bug) must not give back the ranges its jobs lend
/// (`SharedChunkMut`) while their worker may still write them: the worker is killed and
/// reaped before the jobs are dropped. On every normal path `retire` took it already.
impl Drop for Driver<'_> {
    fn drop(&mut self) {
        if let Some(mut live) = self.worker.take() {
            let _ = live.child.kill();
            let _ = live.child.wait();
        }
    }
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
                    .is_some_and(|live| live.link.has_buffered());
            // With nothing left in flight, filling the window waits for the next job,
            // which may be the caller's answer to these replies: they go out first.
            if !answers_waiting && self.inflight.is_empty() {
                self.deliver_answered();
            }
            let more = answers_waiting || self.write_pending() || self.fill_window();
            if !answers_waiting {
                self.deliver_answered();
            }
            if !more {
                return;
            }
            if self.inflight.is_empty() {
                continue;
            }
            // Every read waits in `poll` first, on the socket and on the worker's pidfd:
            // a blocking read would never return for a worker that died while a process
            // it forked keeps its socket open.
            let limit = self.shared.config.task_timeout;
            let ready = self.wait(limit);
            if ready.exited {
                self.lose_exited_worker(&mut rbuf);
                continue;
            }
            if ready.writable {
                self.push_writes();
            }
            if !ready.readable {
                if let Some(limit) = limit
                    && !ready.writable
                    && Instant::now() >= self.front_started + limit
                {
                    self.lose_worker(Loss::TimedOut(limit));
                }
                continue;
            }
            self.read_from_worker(&mut rbuf);
        }
    }

    /// Reads and handles one frame from the worker; its end, or a broken frame, loses it.
    fn read_from_worker(&mut self, rbuf: &mut Vec<u8>) {
        let Some(live) = self.worker.as_mut() else {
            return;
        };
        if rbuf.capacity() == 0 {
            *rbuf = wire::spare_buffer();
        }
        match live.link.recv(rbuf) {
            Ok(true) => self.on_frame(rbuf),
            Ok(false) => self.lose_worker(Loss::Died),
            Err(e) if e.kind() == std::io::ErrorKind::InvalidData => {
                self.lose_worker(Loss::Protocol(e.to_string()))
            }
            Err(_) => self.lose_worker(Loss::Died),
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
            if held >= if small { self.small_window() } else { WINDOW } {
                break;
            }
            let job = match self.held.take() {
                Some(job) => job,
                None if held == 0 => match self
                    .shared
                    .next_job(self.slot, self.worker.as_ref().map(|w| &*w.direct))
                {
                    Next::Job(job) => job,
                    Next::Check => {
                        self.check_worker();
                        continue;
                    }
                    Next::Closed => return false,
                },
                // More work queued behind a worker busy with a direct call would wait for
                // the call (see `next_job`).
                None if self.worker.as_ref().is_some_and(|w| w.direct.in_call()) => break,
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
                self.recycle_worker(Left::Recycled);
            }
            if let Err(e) = self.ensure_worker() {
                if !matches!(e.kind(), ErrorKind::Closed | ErrorKind::Interrupted) {
                    self.shared.tally().lost(u64::from(job.count));
                }
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

    /// How many small jobs the worker may hold: as many as fit in
    /// `SMALL_BACKLOG_NANOS` of their recent run time, between `WINDOW` and
    /// `SMALL_WINDOW`; `WINDOW` until one has come back; only the running one when they
    /// take longer than that. A job queued behind a long one could have gone to the
    /// worker that frees up first, while what queuing saves (one round trip of idle
    /// worker per job) is nothing beside its run time.
    fn small_window(&self) -> usize {
        self.small_nanos.nanos().map_or(WINDOW, |nanos| {
            if nanos >= SMALL_BACKLOG_NANOS {
                return 1;
            }
            let fit = SMALL_BACKLOG_NANOS / nanos.max(1);
            usize::try_from(fit).map_or(SMALL_WINDOW, |n| n.clamp(WINDOW, SMALL_WINDOW))
        })
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
        // A worker watching its direct path goes to its socket (the kick also keeps it
        // from opening the direct path again). Frames written while a call holds the
        // direct path would wait behind it: the direct path is taken from callers first;
        // if a call holds it already (claimed since this driver took the jobs), the jobs
        // go back to the queue, for another worker.
        live.direct.kick();
        if !live.direct.close_for_write() {
            self.shared.requeue_front(batch.into_iter());
            self.note_if_idle();
            return;
        }
        release_dead_segments(live);
        let mut failed = Vec::new();
        for (i, job) in batch.iter_mut().enumerate() {
            // Each segment goes to a worker once, with the first chunk that needs it.
            let new: Vec<Arc<Entry>> = job
                .attachments
                .iter()
                .filter(|e| !live.segments.contains_key(&e.segment.id()))
                .cloned()
                .collect();
            let attach: Vec<&Segment> = new.iter().map(|e| &e.segment).collect();
            // The job's own frame stays as it is: a chunk may be sent again, to another
            // worker, if this one dies first.
            let (header, body) = job.frame.split_at(job.body_at);
            let outbox = live.link.outbox();
            let start = outbox.len();
            // A body written into its segment while it was encoded goes as it is, to
            // every worker the job is given to; any other is moved out of line here if
            // it is large.
            let sealed = match &job.spilled {
                Some(spilled) => {
                    wire::append_frame_of_segment(outbox, header, spilled, &attach).map(|()| None)
                }
                None => wire::append_frame(outbox, header, body, &attach, shm),
            };
            let oneshot = match sealed {
                Ok(oneshot) => oneshot,
                Err(e) => {
                    failed.push((i, e));
                    continue;
                }
            };
            // The frame's segments travel with it: its handles' segments, then the one
            // holding its body.
            let body_segment = oneshot.as_ref().or(job.spilled.as_ref());
            let carried: Vec<&Segment> = attach.iter().copied().chain(body_segment).collect();
            if let Err(e) = live.link.attach(&carried) {
                live.link.outbox().truncate(start);
                failed.push((i, Error::io(ErrorKind::Io, "writing to the worker", e)));
                continue;
            }
            for e in &new {
                live.segments.insert(e.segment.id(), Arc::downgrade(e));
            }
            job.oneshot = oneshot;
        }
        for (i, e) in failed.into_iter().rev() {
            let job = batch.remove(i);
            self.shared.tally().lost(u64::from(job.count));
            job.fail(e);
        }
        live.direct.set_segments_held(live.segments.len());
        if self.inflight.is_empty() {
            self.front_started = Instant::now();
        }
        live.items += batch.iter().map(|j| u64::from(j.count)).sum::<u64>();
        self.inflight.extend(batch);
        self.push_writes();
        self.note_if_idle();
    }

    fn write_pending(&self) -> bool {
        self.worker.as_ref().is_some_and(|w| w.link.pending())
    }

    /// Writes what the worker takes now of the pending frames. A failed write is not
    /// looked into here: reading next tells what happened (a `Fatal` frame, or the end).
    fn push_writes(&mut self) {
        if let Some(live) = self.worker.as_mut() {
            let _ = live.link.push();
        }
    }

    /// Forgets pending writes (the worker is gone).
    fn drop_writes(&mut self) {
        if let Some(live) = self.worker.as_mut() {
            live.link.discard_pending();
        }
    }

    /// Waits until the worker has something to read, or (while frames are pending) room
    /// to write, or it has exited, or the running job's time `limit` may have passed.
    /// The end of the connection counts as readable: reading reports it.
    ///
    /// With a limit, `poll` sleeps at most `LIMIT_TICK` at a time, and time that passed
    /// beyond a tick (plus `STALL_SLACK`) is not counted against the job: this process
    /// was not running, as when the job is stopped with Ctrl-Z (SIGTSTP) and continued.
    /// Without that, every worker busy when the job stopped would be killed for the
    /// time it spent stopped.
    fn wait(&mut self, limit: Option<Duration>) -> Ready {
        let Some(live) = &self.worker else {
            return Ready::READ;
        };
        loop {
            let tick = match limit {
                None => None,
                Some(limit) => {
                    let left =
                        (self.front_started + limit).saturating_duration_since(Instant::now());
                    if left.is_zero() {
                        return Ready::NOTHING;
                    }
                    Some(left.min(LIMIT_TICK))
                }
            };
            let before = Instant::now();
            let ready = live.link.wait(live.direct.exit_fd(), tick);
            if let Some(tick) = tick {
                let stalled = before.elapsed().saturating_sub(tick + STALL_SLACK);
                if !stalled.is_zero() {
                    self.front_started += stalled;
                }
            }
            match ready {
                Ok(ready) if ready != Ready::NOTHING => return ready,
                // Nothing yet (a tick passed, or a signal came): look at the time again.
                Ok(_) => {}
                Err(_) => return Ready::READ, // reading will report the error
            }
        }
    }

    /// The worker has exited: reads what it wrote before it did, without waiting for
    /// more (its socket may never end), then loses it.
    fn lose_exited_worker(&mut self, rbuf: &mut Vec<u8>) {
        let Some(live) = &self.worker else {
            return;
        };
        let pid = live.pid;
        // Reads from now on fail with `WouldBlock` rather than wait: that is the end.
        if let Some(live) = self.worker.as_mut() {
            let _ = live.link.stop_waiting();
        }
        // Until it is lost (a replacement may start in its slot then: not read here).
        while self.worker.as_ref().is_some_and(|w| w.pid == pid) {
            self.read_from_worker(rbuf);
        }
    }

    fn on_frame(&mut self, rbuf: &mut Vec<u8>) {
        let Some(live) = self.worker.as_mut() else {
            return;
        };
        let expect = self.inflight.front().map(|j| Expect {
            chunk: j.chunk,
            count: j.count,
        });
        let (count, nanos, values_len, body) =
            match wire::read_answer(rbuf, expect, Some(&mut *live.link)) {
                Ok(Answer::Done {
                    count,
                    nanos,
                    values_len,
                    body,
                }) => (count, nanos, values_len, body),
                Ok(Answer::Fatal(why)) => return self.lose_worker(Loss::GaveUp(why)),
                Err(why) => return self.lose_worker(Loss::Protocol(why)),
            };
        let pid = live.pid;
        let Some(job) = self.inflight.pop_front() else {
            return;
        };
        if job.count == 1 {
            self.small_nanos.record(nanos);
        }
        let reply = Reply::Done {
            first_index: job.first_index,
            pid,
            nanos,
            expected: job.count,
            count,
            body,
            values_len,
        };
        self.answered.push((job, reply));
        self.front_started = Instant::now();
        self.spawn_failures = 0;
        self.note_if_idle();
    }

    /// Sends the replies of the jobs answered so far.
    fn deliver_answered(&mut self) {
        for (job, reply) in self.answered.drain(..) {
            job.reply(reply);
        }
    }

    /// Tells the queue this worker holds nothing any more (it may get the next job).
    fn note_if_idle(&mut self) {
        if self.inflight.is_empty() && self.held.is_none() {
            self.shared.mark_idle();
        }
    }
}

/// Tells the worker (in front of the next frames) to drop the segments the parent no
/// longer holds a handle to.
fn release_dead_segments(live: &mut Live) {
    let dead = crate::shm::take_dead(&mut live.segments);
    if dead.is_empty() {
        return;
    }
    let mut frame = Vec::new();
    if frame::release_frame(&mut frame, &dead).is_ok() {
        live.link.outbox().extend_from_slice(&frame);
    }
}
