//! A driver's worker: starting it (with its control segment), recycling it after its
//! quota, and losing it (a death, a time limit, a protocol error): what happens to the
//! jobs it held, and what replaces it.

use super::*;

/// A worker process started, before its handshake, with what its driver needs to
/// finish starting it (see [`Driver::launch_worker`]).
pub(super) struct Launched {
    process: spawn::WorkerProcess,
    /// The second descriptor of `process.stream`, for the link's reads.
    reader: std::os::unix::net::UnixStream,
    /// Its control segment, made but not sent yet.
    direct: Arc<ParentEnd>,
}

impl Driver<'_> {
    /// Starts a worker if the slot has none. After failures, waits a little longer before
    /// each new attempt (up to a second), so a broken environment is not hammered.
    pub(super) fn ensure_worker(&mut self) -> Result<()> {
        if self.worker.is_some() {
            return Ok(());
        }
        let launched = self.launch_worker()?;
        self.finish_worker(launched)
    }

    /// The first half of a start ([`ensure_worker`](Self::ensure_worker) does both): the
    /// worker process, with every descriptor and segment its driver will need, so that
    /// a lack of them fails here, before anything waits for the worker. Pool start
    /// waits for this half in every slot.
    pub(super) fn launch_worker(&mut self) -> Result<Launched> {
        if self.shared.is_terminated() {
            return Err(self.shared.stop_error());
        }
        if self.spawn_failures > 0 {
            let backoff = Duration::from_millis(10u64 << self.spawn_failures.min(7));
            std::thread::sleep(backoff.min(Duration::from_secs(1)));
        }
        let config = &self.shared.config;
        let launch = spawn::Launch {
            max_memory: config.max_memory,
            name: None,
        };
        let launched = spawn::start_worker(&config.program, &launch).and_then(|mut process| {
            let parts = process
                .stream
                .try_clone()
                .map_err(|e| Error::io(ErrorKind::Spawn, "cannot duplicate a socket", e))
                .and_then(|reader| Ok((reader, ParentEnd::create(process.pid)?)));
            match parts {
                Ok((reader, direct)) => {
                    // It counts among the pool's workers from now on (a stats snapshot
                    // right after the pool starts shows every process it started).
                    let direct = Arc::new(direct);
                    self.shared.tally().started(self.slot, &direct);
                    Ok(Launched {
                        process,
                        reader,
                        direct,
                    })
                }
                // Started, but unusable (no descriptors left, say): never a zombie.
                Err(e) => Err(discard(&mut process.child, process.pid, e)),
            }
        });
        if launched.is_err() {
            self.spawn_failures = self.spawn_failures.saturating_add(1);
        }
        launched
    }

    /// The second half of a start: the handshake, the control segment, the pool's
    /// initializer; then the worker is the slot's.
    pub(super) fn finish_worker(&mut self, launched: Launched) -> Result<()> {
        let Launched {
            process,
            reader,
            direct,
        } = launched;
        let started = spawn::handshake_with(process, self.shared.config.shm).and_then(|process| {
            let spawn::WorkerProcess {
                mut child,
                stream,
                pid,
                ..
            } = process;
            let mut link: Box<dyn Link> = Box::new(wire::SocketLink::with_reader(stream, reader));
            match send_control(&mut *link, &direct) {
                Ok(()) => Ok(Live {
                    child,
                    pid,
                    link,
                    items: 0,
                    segments: HashMap::new(),
                    direct,
                }),
                Err(e) => Err(discard(&mut child, pid, e)),
            }
        });
        self.initializer_failed = false;
        let started = started.and_then(|live| self.initialize(live));
        match started {
            Ok(live) => {
                self.shared.set_pid(self.slot, Some(live.pid));
                self.shared.set_direct(self.slot, Some(&live.direct));
                self.worker = Some(live);
                Ok(())
            }
            Err(e) => {
                self.shared.tally().left(self.slot, Left::NeverReady);
                self.spawn_failures = self.spawn_failures.saturating_add(1);
                Err(e)
            }
        }
    }

    /// Runs the pool's initializer, if it has one, on a worker just started. A worker
    /// whose initializer fails is killed and reaped; the error says why, and the slot's
    /// next attempt waits a little longer (see `ensure_worker`).
    fn initialize(&mut self, mut live: Live) -> Result<Live> {
        let Some(hook) = self.shared.config.initializer.clone() else {
            return Ok(live);
        };
        // `terminate` kills it while the initializer runs.
        self.shared.set_pid(self.slot, Some(live.pid));
        let ran = self.run_hook(&mut live, &hook);
        let Err(failure) = ran else {
            return Ok(live);
        };
        self.shared.set_pid(self.slot, None);
        let pid = live.pid;
        if !matches!(failure, hooks::HookFailure::Lost(Loss::Died)) {
            let _ = live.child.kill();
        }
        let exit = close_and_reap(live);
        if self.shared.is_terminated() {
            return Err(self.shared.stop_error());
        }
        self.initializer_failed = true;
        Err(hooks::initializer_error(&hook, &failure, &exit).with_pid(pid))
    }

    /// Ends the current worker cleanly (it holds nothing): it exits on end-of-stream and
    /// gives its memory back to the system; the next job starts a fresh one.
    pub(super) fn recycle_worker(&mut self, how: Left) {
        self.drop_writes();
        let Some(live) = self.worker.take() else {
            return;
        };
        self.shared.set_direct(self.slot, None);
        // A call in the direct path finishes first, as queued jobs do; unless the pool is
        // terminated, or the worker is gone.
        let shared = self.shared;
        let link = &*live.link;
        let idle = live.direct.close_when_idle(|| {
            !shared.is_terminated() && !hung_up(link, Duration::from_millis(10))
        });
        let mut live = live;
        if idle && !self.shared.is_terminated() {
            self.run_exit_hook(&mut live);
        }
        self.shared.set_pid(self.slot, None);
        self.shared.tally().left(self.slot, how);
        let (pid, direct) = (live.pid, Arc::clone(&live.direct));
        let exit = close_and_reap(live);
        if !idle {
            let lost = self
                .shared
                .unless_stopped(|| loss_error(&Loss::Died, &exit, DIRECT_CALL, ""));
            direct.lose(lost.with_pid(pid));
        }
    }

    /// Runs the pool's exit task, if it has one, on a worker about to leave normally. A
    /// failure cannot fail any job (they are all answered): it is reported on stderr.
    fn run_exit_hook(&self, live: &mut Live) {
        let Some(hook) = &self.shared.config.on_exit else {
            return;
        };
        if let Err(failure) = self.run_hook(live, hook) {
            let why = match failure {
                hooks::HookFailure::Failed(_, message) => message,
                hooks::HookFailure::Lost(loss) => loss_error(&loss, "ended", "it", "").to_string(),
            };
            eprintln!(
                "multiproc: the on_worker_exit task `{}` failed in worker {}: {why}",
                hook.task(),
                live.pid
            );
        }
    }

    /// A caller waiting in this worker's direct path asks whether the worker still lives,
    /// or the driver looks by itself while idle (every `IDLE_CHECK`). With nothing in
    /// flight, anything to read is the end of the stream (or a `Fatal` frame): the worker
    /// is lost (its direct call with it), reaped, and replaced at once, so that the pool
    /// keeps its size and no zombie waits for the next call.
    pub(super) fn check_worker(&mut self) {
        let Some(live) = self.worker.as_ref() else {
            return;
        };
        // Its pidfd first: a process it forked may hold its socket open.
        if live.direct.worker_has_exited() {
            self.lose_exited_worker(&mut Vec::new());
            let _ = self.ensure_worker();
            return;
        }
        if !hung_up(&*live.link, Duration::ZERO) {
            return;
        }
        self.read_from_worker(&mut Vec::new());
        if self.worker.is_none() {
            let _ = self.ensure_worker();
        }
    }

    /// The worker is gone or unusable: reap it, find the chunk it was running (blame),
    /// put the chunks it never started back in the queue (requeue), run the one it was
    /// running again or fail it (retry, fail), and start a replacement (respawn).
    pub(super) fn lose_worker(&mut self, loss: Loss) {
        let Some(ended) = self.reap_lost(&loss) else {
            return;
        };
        let (pos, item) = self.blame(&ended, &loss);
        let held_any = !self.inflight.is_empty();
        let before: Vec<Job> = self.inflight.drain(..pos).collect();
        if !before.is_empty() {
            self.shared.requeue_front(before.into_iter());
        }
        let Some(running) = self.inflight.pop_front() else {
            if held_any {
                // All of it went back to the queue: the driver holds nothing now, and
                // the pool keeps its size.
                self.note_if_idle();
                self.respawn();
            }
            return;
        };
        match self.retry(running, &loss) {
            Some(running) => self.fail_running(running, item, &loss, &ended),
            // Retried elsewhere, or here once the replacement is up: the pool keeps its
            // size either way.
            None => self.respawn(),
        }
    }

    /// Takes the lost worker out of its slot, kills it unless it died by itself, reaps
    /// it, and fails a call in its direct path. `None` if the slot had no worker.
    fn reap_lost(&mut self, loss: &Loss) -> Option<Ended> {
        self.drop_writes();
        let mut live = self.worker.take()?;
        self.shared.set_direct(self.slot, None);
        self.shared.set_pid(self.slot, None);
        let how = if self.shared.is_terminated() {
            Left::Closed
        } else {
            Left::Died
        };
        self.shared.tally().left(self.slot, how);
        let pid = live.pid;
        if !matches!(loss, Loss::Died) {
            let _ = live.child.kill();
        }
        let record = live.direct.progress_record();
        // What the worker noted about its death, if anything: written before it died,
        // which is how it got here (or it was just killed, and noted nothing).
        let note = live.direct.death_note();
        let live_memory = live.direct.memory_reached();
        let direct = Arc::clone(&live.direct);
        let exit = close_and_reap(live);
        let exit = match note {
            crate::direct::STACK_OVERFLOW => format!("overflowed its stack and {exit}"),
            crate::direct::SOCKET_TAKEN => {
                format!("lost its socket (the task closed it) and {exit}")
            }
            crate::direct::MEMORY_LIMIT => {
                let human = crate::sys::mem::human_bytes;
                format!(
                    "went over its memory limit of {} (its resident memory reached {}) \
                     and {exit}",
                    human(self.shared.config.max_memory.unwrap_or(0)),
                    human(live_memory),
                )
            }
            _ => exit,
        };
        // A call in the direct path (the worker's only one, if it held it) fails the same
        // way.
        let lost = self
            .shared
            .unless_stopped(|| loss_error(loss, &exit, DIRECT_CALL, ""));
        direct.lose(lost.with_pid(pid));
        Some(Ended {
            pid,
            record,
            note,
            exit,
        })
    }

    /// Which held job was running when the worker ended (its position; the length of
    /// `inflight` if none was), and the item it was at, as a position in the caller's
    /// input, if the record says. When none was running, every held job counts one
    /// more bounce.
    fn blame(&mut self, ended: &Ended, loss: &Loss) -> (usize, Option<usize>) {
        let (pos, item) = if ended.note == crate::direct::SOCKET_TAKEN {
            // A task closed the worker's socket: the chunk that ran last did it, which
            // the worker had finished (its answer could not be sent).
            blame_last_finished(
                ended.record,
                self.inflight.iter().map(|j| (j.chunk, j.count)),
            )
        } else {
            blame(
                ended.record,
                self.inflight.iter().map(|j| (j.chunk, j.count, j.bounced)),
                matches!(loss, Loss::Died),
            )
        };
        let item = item.and_then(|i| Some(self.inflight.get(pos)?.first_index + i as usize));
        if pos == self.inflight.len() {
            for job in &mut self.inflight {
                job.bounced += 1;
            }
        }
        (pos, item)
    }

    /// A chunk whose worker died runs again on a fresh worker while the pool's retries
    /// allow (pure functions: that is safe), at the front of the queue with the chunks
    /// held behind it. Returns the chunk if it is not retried.
    fn retry(&mut self, mut running: Job, loss: &Loss) -> Option<Job> {
        let retried = matches!(loss, Loss::Died)
            && !self.shared.is_terminated()
            && running.attempts <= self.shared.config.retries;
        if !retried {
            return Some(running);
        }
        running.attempts += 1;
        self.shared
            .requeue_front(std::iter::once(running).chain(self.inflight.drain(..)));
        self.note_if_idle();
        None
    }

    /// Fails the chunk that was running (at `item`, if known) with what became of its
    /// worker, sends the chunks held behind it back to the queue (or fails them, in a
    /// terminated pool), and replaces the worker.
    fn fail_running(&mut self, running: Job, item: Option<usize>, loss: &Loss, ended: &Ended) {
        let what = match item {
            Some(i) => format!("item {i}"),
            None => format!(
                "items {}..{}",
                running.first_index,
                running.first_index + running.count as usize
            ),
        };
        let error = if self.shared.is_terminated() {
            self.shared.stop_error()
        } else {
            let attempts = if self.shared.config.retries > 0 {
                format!(" (after {} attempts)", running.attempts)
            } else {
                String::new()
            };
            loss_error(loss, &ended.exit, &what, &attempts)
        };
        let index = item.unwrap_or(running.first_index);
        if !self.shared.is_terminated() {
            self.shared.tally().lost(u64::from(running.count));
        }
        running.fail_at(error.with_pid(ended.pid), index);
        if self.shared.is_terminated() {
            for job in self.inflight.drain(..) {
                job.fail(self.shared.stop_error());
            }
        } else {
            self.shared.requeue_front(self.inflight.drain(..));
        }
        self.note_if_idle();
        self.respawn();
    }

    /// Replaces the worker now, not when the next job comes: the pool keeps its size.
    /// (A failure is remembered; the next job tries again, after a pause.)
    fn respawn(&mut self) {
        let _ = self.ensure_worker();
    }

    /// The pool is closed and drained (or never started): close the socket so the worker
    /// exits, and reap it.
    pub(super) fn retire(&mut self) {
        self.deliver_answered();
        self.recycle_worker(Left::Closed);
        let shut = || {
            self.shared
                .unless_stopped(|| Error::new(ErrorKind::Closed, "the pool shut down"))
        };
        if let Some(job) = self.held.take() {
            job.fail(shut());
        }
        for job in std::mem::take(&mut self.inflight) {
            job.fail(shut());
        }
    }
}

/// How many workers in a row may die before a job they were given starts, before the
/// next death is blamed on the job.
const MAX_BOUNCES: u32 = 3;

/// Which of the jobs a lost worker held (`jobs`, oldest first, as their chunk id, item
/// count and [`Job::bounced`]) was running when it was lost, going by its last progress
/// record: the position of that job and the item it was at, if the record says;
/// `jobs.len()` if none was.
///
/// The jobs before the one running had run, but their results were still held back in
/// the worker (it batches quick results): they go back to the queue, as the jobs after
/// it do, which never started. A worker that `died` (killed from outside, say) with no
/// job started, its last chunk finished or its direct call running, fails none of them,
/// unless the oldest that had not started has already seen [`MAX_BOUNCES`] workers die:
/// then it is blamed, so that a job that kills workers before their progress record
/// shows it cannot go round for ever. A worker that gave up or broke the protocol did so
/// over the oldest job it had not finished.
fn blame(
    record: u64,
    jobs: impl ExactSizeIterator<Item = (u64, u32, u32)>,
    died: bool,
) -> (usize, Option<u32>) {
    let held = jobs.len();
    let mut unstarted = None;
    for (pos, (chunk, count, bounced)) in jobs.enumerate() {
        if unstarted.is_none() {
            unstarted = Some((pos, bounced));
        }
        match crate::task::note::progress_item(record, chunk) {
            Some(i) if i < count => return (pos, Some(i)),
            // Finished: the oldest not started comes after it.
            Some(_) => unstarted = None,
            None => {}
        }
    }
    match unstarted {
        Some((_, bounced)) if died && bounced < MAX_BOUNCES => (held, None),
        Some((pos, _)) => (pos, None),
        None => (held, None),
    }
}

/// The job a worker whose socket a task closed was blamed for: the one its progress
/// record says it finished last (its answer never left), and its item if it had only
/// one. `jobs.len()` if the record names none of them.
fn blame_last_finished(
    record: u64,
    jobs: impl ExactSizeIterator<Item = (u64, u32)>,
) -> (usize, Option<u32>) {
    let held = jobs.len();
    for (pos, (chunk, count)) in jobs.enumerate() {
        if crate::task::note::progress_item(record, chunk).is_some() {
            return (pos, (count == 1).then_some(0));
        }
    }
    (held, None)
}

/// How a lost worker ended, as its driver found out.
pub(super) struct Ended {
    pid: u32,
    /// Its last progress record.
    record: u64,
    /// The note it left before it died (see `direct::STACK_OVERFLOW`), or 0.
    note: u64,
    /// How it ended, in words ("was killed by signal 9 (SIGKILL)").
    exit: String,
}

/// What a direct call is, in errors: the one item of an `apply`.
const DIRECT_CALL: &str = "item 0";

/// The error for the jobs a lost worker held: `what` names them; `attempts` says how
/// often they ran, after a death.
fn loss_error(loss: &Loss, exit: &str, what: &str, attempts: &str) -> Error {
    match loss {
        Loss::Died => Error::new(
            ErrorKind::WorkerDied,
            format!("the worker {exit} while running {what}{attempts}"),
        ),
        Loss::Protocol(why) => Error::new(
            ErrorKind::Protocol,
            format!("the worker sent an invalid frame while running {what} ({why}); it was killed"),
        ),
        Loss::GaveUp(why) => Error::new(
            ErrorKind::Protocol,
            format!("the worker gave up while running {what}: {why}"),
        ),
        Loss::TimedOut(limit) => Error::new(
            ErrorKind::Timeout,
            format!("{what} ran longer than the time limit of {limit:?}; the worker was killed"),
        ),
    }
}

/// Whether the worker has anything to read (with nothing in flight: its end), waiting
/// up to `timeout` for it. A failed wait says nothing about the worker.
fn hung_up(link: &dyn Link, timeout: Duration) -> bool {
    link.wait(None, Some(timeout)).is_ok_and(|r| r.readable)
}

/// Sends the worker its control segment (its progress word and its direct path).
fn send_control(link: &mut dyn Link, direct: &ParentEnd) -> Result<()> {
    let mut frame = Vec::new();
    frame::setup_frame(&mut frame, direct.segment().desc())
        .map_err(|e| Error::new(ErrorKind::Protocol, e.to_string()))?;
    link.send(&frame, &[direct.segment()])
        .map_err(|e| Error::io(ErrorKind::Spawn, "sending the control segment", e))
}

/// Kills and reaps a worker `child` (pid `pid`) whose start failed with `e`; returns `e`,
/// naming the pid.
fn discard(child: &mut Child, pid: u32, e: Error) -> Error {
    let _ = child.kill();
    let _ = spawn::reap(child, EXIT_GRACE);
    e.with_pid(pid)
}

/// Closes the connection to the worker and reaps it; describes how it ended.
fn close_and_reap(live: Live) -> String {
    let Live {
        mut child, link, ..
    } = live;
    drop(link);
    spawn::reap(&mut child, EXIT_GRACE)
        .map(spawn::describe_exit)
        .unwrap_or_else(|| "could not be reaped".to_owned())
}

#[cfg(test)]
mod tests {
    use super::{MAX_BOUNCES, blame};

    /// A progress record: item `index` of chunk `chunk` started (or, as the chunk's
    /// count, the chunk finished).
    fn record(chunk: u64, index: u32) -> u64 {
        chunk << 32 | u64::from(index)
    }

    /// Chunks 10, 11 and 12 of 4 items each, none bounced yet.
    fn held() -> [(u64, u32, u32); 3] {
        [(10, 4, 0), (11, 4, 0), (12, 4, 0)]
    }

    #[test]
    fn the_chunk_the_record_names_was_running_at_its_item() {
        for died in [true, false] {
            assert_eq!(blame(record(11, 2), held().into_iter(), died), (1, Some(2)));
        }
    }

    #[test]
    fn a_worker_that_died_between_chunks_fails_none() {
        // Its last record is of a chunk already answered, or of its last chunk finished.
        for last in [record(9, 4), record(10, 4), record(12, 4), 0] {
            assert_eq!(blame(last, held().into_iter(), true), (3, None), "{last:x}");
        }
    }

    #[test]
    fn a_worker_that_gave_up_between_chunks_fails_the_next_one() {
        assert_eq!(blame(record(9, 4), held().into_iter(), false), (0, None));
        assert_eq!(blame(record(10, 4), held().into_iter(), false), (1, None));
        assert_eq!(blame(record(12, 4), held().into_iter(), false), (3, None));
    }

    #[test]
    fn a_chunk_whose_workers_keep_dying_before_it_starts_is_blamed_in_the_end() {
        let mut jobs = held();
        jobs[1].2 = MAX_BOUNCES - 1;
        assert_eq!(blame(record(10, 4), jobs.into_iter(), true), (3, None));
        jobs[1].2 = MAX_BOUNCES;
        assert_eq!(blame(record(10, 4), jobs.into_iter(), true), (1, None));
        // Only the oldest chunk not started counts.
        assert_eq!(blame(record(11, 4), jobs.into_iter(), true), (3, None));
    }
}
