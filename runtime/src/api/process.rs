//! [`Process`]: one task in its own worker process, like Python's
//! `multiprocessing.Process`.

use std::sync::{Arc, Condvar, Mutex, Once, mpsc};
use std::time::Duration;

use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::api::chunk;
use crate::codec::Codec;
use crate::engine::Reply;
use crate::engine::spawn;
use crate::error::{Error, ErrorKind, Result};
use crate::sys::lock::lock;
use crate::sys::segment::Segment;
use crate::task::Task;
use crate::wire::{self, Answer, Body, Expect, Link, ShmConfig, SocketLink};

/// A task running in a child process of its own.
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
///     let p = Process::spawn(t1, 5)?;
///     println!("started {}", p.pid());
///     assert_eq!(p.join()?, 50);
///     Ok(())
/// }
/// ```
///
/// As in Python: dropping the handle neither kills the child nor waits for it; a program
/// that returns from `main` (or calls `std::process::exit`) first waits for its
/// non-daemon children; daemon children are killed when the program exits; and no child
/// outlives a parent that was killed.
pub struct Process<R> {
    shared: Arc<Supervised>,
    codec: Codec<R>,
}

/// Builds a [`Process`]: `Process::builder().daemon(true).spawn(t1, 5)?`.
#[derive(Debug, Clone, Default)]
#[must_use]
pub struct ProcessBuilder {
    daemon: bool,
    name: Option<String>,
}

struct Supervised {
    pid: u32,
    daemon: bool,
    task: &'static str,
    name: Option<String>,
    state: Mutex<State>,
    finished: Condvar,
}

#[derive(Default)]
struct State {
    /// The task's result, from the supervisor thread once the child is reaped; taken by
    /// `join`.
    outcome: Option<Reply>,
    /// Set (with `outcome`) once the child is reaped, on every path of the supervisor.
    finished: bool,
    /// Set by the supervisor thread right before it reaps: from then on the pid may be
    /// recycled, so `kill` must not signal it.
    reaping: bool,
    /// The signal `kill` or `terminate` sent: a death before the handshake is that
    /// signal, not a failed start.
    signalled: Option<&'static str>,
    /// How the child ended, once reaped.
    status: Option<std::process::ExitStatus>,
}

/// Publishes the supervisor's outcome when dropped, so that `join` and the exit handler
/// never wait forever, whatever path (or panic) ends the supervisor thread.
struct Publish<'a> {
    shared: &'a Supervised,
    outcome: Option<Reply>,
}

impl Drop for Publish<'_> {
    fn drop(&mut self) {
        let outcome = self.outcome.take().unwrap_or_else(|| Reply::Failed {
            first_index: 0,
            count: 1,
            error: Error::new(
                ErrorKind::Protocol,
                "the supervisor thread ended unexpectedly",
            )
            .with_task(self.shared.task)
            .with_pid(self.shared.pid),
        });
        let mut state = lock(&self.shared.state);
        state.outcome = Some(outcome);
        state.finished = true;
        state.reaping = true;
        drop(state);
        self.shared.finished.notify_all();
    }
}

/// Every child started by `Process`, for the exit handler.
static CHILDREN: Mutex<Vec<Arc<Supervised>>> = Mutex::new(Vec::new());

impl ProcessBuilder {
    /// A daemon child is killed when the parent exits, instead of being waited for.
    pub fn daemon(mut self, daemon: bool) -> Self {
        self.daemon = daemon;
        self
    }

    /// Names the child, like Python's `Process(name=…)`: the child's task runs on a
    /// thread of that name (`std::thread::current().name()`), and errors about the
    /// child say "the process `loader` …". A name may not hold a NUL byte.
    pub fn name(mut self, name: impl Into<String>) -> Self {
        self.name = Some(name.into());
        self
    }

    /// Starts `task(arg)` in a new worker process and returns once it is running.
    pub fn spawn<A, R, F>(self, task: Task<A, R, F>, arg: A) -> Result<Process<R>>
    where
        A: Serialize,
        R: DeserializeOwned,
    {
        let name = task.name();
        if self.name.as_ref().is_some_and(|n| n.contains('\0')) {
            return Err(Error::new(
                ErrorKind::InvalidConfig,
                "a process name may not hold a NUL byte",
            )
            .with_task(name));
        }
        let mut bytes_per_item = 16;
        let enc = chunk::encode_chunk(
            name,
            task.arg_codec(),
            &mut std::iter::once(&arg),
            1,
            0,
            &mut bytes_per_item,
            // The frame is sealed below, body and all.
            None,
        )?
        .ok_or_else(|| Error::new(ErrorKind::Protocol, "an empty chunk").with_task(name))?;
        let (daemon, label) = (self.daemon, self.name);
        let (started_tx, started_rx) = mpsc::channel::<Result<Arc<Supervised>>>();
        // The supervisor thread spawns the child, so the child's parent-death signal is
        // tied to a thread that lives exactly as long as the child.
        std::thread::Builder::new()
            .name("multiproc-process".into())
            .spawn(move || supervise(name, label, daemon, enc, started_tx))
            .map_err(|e| Error::io(ErrorKind::Spawn, "cannot start a supervisor thread", e))?;
        let shared = started_rx.recv().map_err(|_| {
            Error::new(ErrorKind::Spawn, "the supervisor thread died").with_task(name)
        })??;
        register_exit_handler();
        let mut children = lock(&CHILDREN);
        children.retain(|c| !lock(&c.state).finished);
        children.push(Arc::clone(&shared));
        drop(children);
        Ok(Process {
            shared,
            codec: task.ret_codec(),
        })
    }
}

fn supervise(
    task: &'static str,
    name: Option<String>,
    daemon: bool,
    mut enc: chunk::Encoded,
    started: mpsc::Sender<Result<Arc<Supervised>>>,
) {
    let shm = ShmConfig::default();
    let launch = spawn::Launch {
        max_memory: None,
        name: name.clone(),
    };
    // Like Python's `start()`, `spawn` returns once the process exists; the handshake
    // happens here, and a failed one is the result `join` returns.
    let worker = match spawn::start_worker(&spawn::default_program(), &launch) {
        Ok(w) => w,
        Err(e) => {
            let _ = started.send(Err(e.with_task(task)));
            return;
        }
    };
    let pid = worker.pid;
    let shared = Arc::new(Supervised {
        pid,
        daemon,
        task,
        name,
        state: Mutex::new(State::default()),
        finished: Condvar::new(),
    });
    let _ = started.send(Ok(Arc::clone(&shared)));
    let mut publish = Publish {
        shared: &shared,
        outcome: None,
    };
    // From the reap on, the pid may be recycled: `kill` must not signal it.
    let before_reap = || lock(&shared.state).reaping = true;
    let mut worker = match spawn::handshake_or_reap(worker, shm, before_reap) {
        Ok(w) => w,
        Err((e, status)) => {
            let signalled = {
                let mut state = lock(&shared.state);
                state.status = status;
                state.signalled
            };
            let e = match signalled {
                Some(signal) => Error::new(
                    ErrorKind::WorkerDied,
                    format!(
                        "{} was sent {signal} before it started the task",
                        shared.called()
                    ),
                )
                .with_pid(pid),
                None => e,
            };
            publish.outcome = Some(Reply::Failed {
                first_index: 0,
                count: 1,
                error: e.with_task(task),
            });
            return;
        }
    };
    // The ranges the argument lends go back once the child is reaped, not before: a
    // child that dies without answering may have been writing them to the end.
    let leases = std::mem::take(&mut enc.leases);
    let answer = run_one(worker.stream, enc, shm);
    lock(&shared.state).reaping = true;
    let status = spawn::reap(&mut worker.child, Duration::from_secs(1));
    lock(&shared.state).status = status;
    drop(leases);
    let outcome = match answer {
        Some((count, nanos, body, values_len)) => Reply::Done {
            first_index: 0,
            pid: worker.pid,
            nanos,
            expected: 1,
            count,
            body,
            values_len,
        },
        None => {
            let how = status.map_or_else(|| "could not be reaped".to_owned(), spawn::describe_exit);
            Reply::Failed {
                first_index: 0,
                count: 1,
                error: Error::new(
                    ErrorKind::WorkerDied,
                    format!("{} {how} before returning a result", shared.called()),
                )
                .with_task(task)
                .with_pid(worker.pid),
            }
        }
    };
    publish.outcome = Some(outcome);
}

/// Sends the one chunk and reads its result: `(count, nanos, body, values_len)`, or
/// `None` if the child died (or broke the protocol) first.
fn run_one(
    stream: std::os::unix::net::UnixStream,
    mut enc: chunk::Encoded,
    shm: ShmConfig,
) -> Option<(u32, u64, Body, usize)> {
    let mut link = SocketLink::new(stream).ok()?;
    let attach: Vec<&Segment> = enc.attachments.iter().map(|e| &e.segment).collect();
    let oneshot = wire::seal_frame(&mut enc.frame, 0, enc.body_at, &attach, shm).ok()?;
    let carried: Vec<&Segment> = attach.iter().copied().chain(oneshot.as_ref()).collect();
    link.send(&enc.frame, &carried).ok()?;
    let mut buf = Vec::new();
    if !link.recv(&mut buf).ok()? {
        return None;
    }
    let expect = Expect {
        chunk: enc.chunk,
        count: 1,
    };
    match wire::read_answer(&mut buf, Some(expect), Some(&mut link)) {
        Ok(Answer::Done {
            count,
            nanos,
            values_len,
            body,
        }) => Some((count, nanos, body, values_len)),
        Ok(Answer::Fatal(_)) | Err(_) => None,
    }
}

impl Process<()> {
    /// A builder, for daemon children.
    pub fn builder() -> ProcessBuilder {
        ProcessBuilder::default()
    }
}

impl<R: DeserializeOwned> Process<R> {
    /// Starts `task(arg)` in a new, non-daemon worker process.
    pub fn spawn<A: Serialize, F>(task: Task<A, R, F>, arg: A) -> Result<Process<R>> {
        ProcessBuilder::default().spawn(task, arg)
    }

    /// The child's process id.
    pub fn pid(&self) -> u32 {
        self.shared.pid
    }

    /// True until the child has exited and been reaped.
    pub fn is_alive(&self) -> bool {
        !lock(&self.shared.state).finished
    }

    /// The name given with [`ProcessBuilder::name`], if any.
    pub fn name(&self) -> Option<&str> {
        self.shared.name.as_deref()
    }

    /// Kills the child (SIGKILL). Killing a child that already exited does nothing.
    pub fn kill(&self) -> Result<()> {
        self.signal(crate::sys::process::Stop::Kill)
    }

    /// Asks the child to end (SIGTERM), like Python's `terminate()`. A task that does
    /// not handle SIGTERM ends at once; [`join`](Self::join) then returns
    /// [`ErrorKind::WorkerDied`] naming the signal. Terminating a child that already
    /// exited does nothing.
    pub fn terminate(&self) -> Result<()> {
        self.signal(crate::sys::process::Stop::Term)
    }

    fn signal(&self, how: crate::sys::process::Stop) -> Result<()> {
        let mut state = lock(&self.shared.state);
        if state.reaping {
            return Ok(());
        }
        state.signalled = Some(how.name());
        // The supervisor has not started reaping the child (we hold the lock it takes
        // first), so the pid cannot have been recycled.
        let sent = crate::sys::process::stop(self.shared.pid, how);
        drop(state);
        sent.map_err(|e| {
            Error::io(
                ErrorKind::Io,
                format_args!("cannot send {} to {}", how.name(), self.shared.called()),
                e,
            )
        })
    }

    /// Waits up to `timeout` for the child to end, like Python's `join(timeout)`; true
    /// if it has ended (and been reaped). The result stays for [`join`](Self::join).
    pub fn wait_timeout(&self, timeout: Duration) -> bool {
        let deadline = std::time::Instant::now() + timeout;
        let mut state = lock(&self.shared.state);
        while !state.finished {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            if left.is_zero() {
                return false;
            }
            state = self
                .shared
                .finished
                .wait_timeout(state, left)
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .0;
        }
        true
    }

    /// How the child ended, like Python's `exitcode`: `None` while it runs, else its
    /// exit status (`code()`, or `signal()` from `std::os::unix::process::ExitStatusExt`
    /// for a child killed by a signal).
    pub fn exit_status(&self) -> Option<std::process::ExitStatus> {
        let state = lock(&self.shared.state);
        if state.finished { state.status } else { None }
    }

    /// Waits for the child to finish and returns the task's result.
    pub fn join(self) -> Result<R> {
        let reply = self.shared.wait_take();
        let (_, mut items) = chunk::reply_items::<R>(self.shared.task, self.codec, reply);
        items.pop().unwrap_or_else(|| {
            Err(Error::new(ErrorKind::Protocol, "no result").with_task(self.shared.task))
        })
    }
}

impl Supervised {
    /// How errors name the child: "the process `loader`", or "the process 4242".
    fn called(&self) -> String {
        match &self.name {
            Some(name) => format!("the process `{name}`"),
            None => format!("the process {}", self.pid),
        }
    }

    fn wait(&self) -> std::sync::MutexGuard<'_, State> {
        let mut state = lock(&self.state);
        while !state.finished {
            state = self
                .finished
                .wait(state)
                .unwrap_or_else(std::sync::PoisonError::into_inner);
        }
        state
    }

    fn wait_take(&self) -> Reply {
        let mut state = self.wait();
        state.outcome.take().unwrap_or_else(|| Reply::Failed {
            first_index: 0,
            count: 1,
            error: Error::new(ErrorKind::Protocol, "the result was already taken"),
        })
    }
}

impl<R> std::fmt::Debug for Process<R> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Process")
            .field("pid", &self.shared.pid)
            .field("name", &self.shared.name)
            .field("daemon", &self.shared.daemon)
            .finish()
    }
}

fn register_exit_handler() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        // A failure only means children are not waited for at exit (daemons still die
        // with us, by their death signal).
        crate::sys::process::at_exit(at_exit);
    });
}

/// At exit, as in Python: kill daemon children, wait for the others.
extern "C" fn at_exit() {
    let children: Vec<Arc<Supervised>> = match CHILDREN.try_lock() {
        Ok(mut c) => std::mem::take(&mut *c),
        Err(_) => return,
    };
    for child in children.iter().filter(|c| c.daemon) {
        let state = lock(&child.state);
        if !state.reaping {
            // As in `Process::kill`: not yet being reaped, so still our child.
            let _ = crate::sys::process::kill(child.pid);
        }
    }
    for child in &children {
        drop(child.wait());
    }
}
