//! `Pool::apply` and `Pool::apply_async`: one call, synchronously or as an
//! [`AsyncResult`] whose callbacks run in the parent process.

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Condvar, Mutex, mpsc};
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::api::chunk;
use crate::codec::Codec;
use crate::engine::{Job, Offered, PoolCore, Reply, ReplyTo};
use crate::error::{Error, ErrorKind, Result};
use crate::sys::lock::lock;
use crate::task::Task;

type SuccessCallback<R> = Box<dyn FnOnce(&R) + Send>;
type ErrorCallback = Box<dyn FnOnce(&Error) + Send>;

/// The pending result of [`Pool::apply_async`](crate::Pool::apply_async).
///
/// The task runs whether or not the handle is kept. Callbacks registered with
/// [`on_success`](Self::on_success) and [`on_error`](Self::on_error) run in the parent
/// process, exactly once, on the pool's result thread in the order the tasks complete (or
/// at once, in the calling thread, if the task had already completed), also when the
/// handle was dropped, and always before [`get`](Self::get) returns. A callback that
/// panics is reported on stderr; it does not stop the pool's result handling.
///
/// It is also a [`Future`] whose output is the task's result, for async code: `.await`
/// it in any executor (tokio, async-std, smol). It needs no runtime and no thread of
/// its own: the pool's result thread wakes the task that awaits it. Dropping it
/// unpolled, or cancelling the `.await` (`tokio::time::timeout`, `select!`), lets the
/// task run to the end all the same, as dropping the handle does.
///
/// ```no_run
/// use multiproc::prelude::*;
///
/// #[parallel]
/// fn square(x: u64) -> u64 {
///     x * x
/// }
///
/// async fn squares(pool: &Pool) -> multiproc::Result<u64> {
///     let a = pool.apply_async(square, 3);
///     let b = pool.apply_async(square, 4);
///     Ok(a.await? + b.await?)
/// }
/// ```
pub struct AsyncResult<R> {
    slot: Arc<Slot<R>>,
}

pub(super) struct Slot<R> {
    state: Mutex<State<R>>,
    done: Condvar,
}

struct State<R> {
    /// `Some` once the task completed and its callbacks ran.
    result: Option<Result<R>>,
    /// The result was taken by a future that resolved.
    taken: bool,
    on_success: Vec<SuccessCallback<R>>,
    on_error: Vec<ErrorCallback>,
    /// The task of the last poll that found no result.
    waker: Option<Waker>,
}

fn run_callback(f: impl FnOnce()) {
    if std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)).is_err() {
        eprintln!("multiproc: an apply_async callback panicked; the pool carries on");
    }
}

impl<R> Slot<R> {
    pub(super) fn new() -> Arc<Self> {
        Arc::new(Slot {
            state: Mutex::new(State {
                result: None,
                taken: false,
                on_success: Vec::new(),
                on_error: Vec::new(),
                waker: None,
            }),
            done: Condvar::new(),
        })
    }

    /// Runs the registered callbacks, then publishes the result and wakes whoever
    /// waits: threads in `get`, and the task awaiting the future. The lock is held
    /// until the result is out, so a callback registered concurrently runs exactly
    /// once: here, or (after this) at registration.
    pub(super) fn complete(&self, result: Result<R>) {
        let mut state = lock(&self.state);
        match &result {
            Ok(value) => {
                for f in std::mem::take(&mut state.on_success) {
                    run_callback(|| f(value));
                }
            }
            Err(e) => {
                for f in std::mem::take(&mut state.on_error) {
                    run_callback(|| f(e));
                }
            }
        }
        state.on_success.clear();
        state.on_error.clear();
        state.result = Some(result);
        let waker = state.waker.take();
        drop(state);
        self.done.notify_all();
        if let Some(waker) = waker {
            waker.wake();
        }
    }

    /// Whether the result is in (or was taken by the future).
    pub(super) fn is_complete(&self) -> bool {
        let state = lock(&self.state);
        state.result.is_some() || state.taken
    }
}

/// The error for a result asked for again after the future resolved with it.
fn already_taken() -> Error {
    Error::new(
        ErrorKind::Closed,
        "the result was already taken: the future resolved with it",
    )
}

impl<R> Future for AsyncResult<R> {
    type Output = Result<R>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<R>> {
        let mut state = lock(&self.slot.state);
        if let Some(result) = state.result.take() {
            state.taken = true;
            return Poll::Ready(result);
        }
        if state.taken {
            return Poll::Ready(Err(already_taken()));
        }
        match &mut state.waker {
            Some(waker) if waker.will_wake(cx.waker()) => {}
            slot => *slot = Some(cx.waker().clone()),
        }
        Poll::Pending
    }
}

impl<R> AsyncResult<R> {
    pub(super) fn failed(error: Error) -> Self {
        let slot = Slot::new();
        slot.complete(Err(error));
        AsyncResult { slot }
    }

    pub(super) fn from_slot(slot: Arc<Slot<R>>) -> Self {
        AsyncResult { slot }
    }

    /// Waits for the task and returns its result.
    pub fn get(self) -> Result<R> {
        let mut state = lock(&self.slot.state);
        loop {
            if let Some(result) = state.result.take() {
                return result;
            }
            if state.taken {
                return Err(already_taken());
            }
            state = self
                .slot
                .done
                .wait(state)
                .unwrap_or_else(std::sync::PoisonError::into_inner);
        }
    }

    /// True once the task has completed (and its callbacks have run).
    pub fn ready(&self) -> bool {
        self.slot.is_complete()
    }

    /// Waits until the task has completed.
    pub fn wait(&self) {
        let mut state = lock(&self.slot.state);
        while state.result.is_none() && !state.taken {
            state = self
                .slot
                .done
                .wait(state)
                .unwrap_or_else(std::sync::PoisonError::into_inner);
        }
    }

    /// Waits at most `timeout`; true if the task completed in time. The task itself is
    /// not affected (see `Pool::builder().task_timeout(..)` to limit it).
    pub fn wait_timeout(&self, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        let mut state = lock(&self.slot.state);
        while state.result.is_none() && !state.taken {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return false;
            }
            state = self
                .slot
                .done
                .wait_timeout(state, left)
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .0;
        }
        true
    }

    /// Runs `f` with the result in the parent process when the task succeeds.
    pub fn on_success(self, f: impl FnOnce(&R) + Send + 'static) -> Self {
        let mut state = lock(&self.slot.state);
        match &state.result {
            // Taken by the future: nothing to run it with.
            None if state.taken => {}
            None => state.on_success.push(Box::new(f)),
            Some(Ok(value)) => run_callback(|| f(value)),
            Some(Err(_)) => {}
        }
        drop(state);
        self
    }

    /// Runs `f` with the error in the parent process when the task fails (a panic, a
    /// dead worker, a time-out, …).
    pub fn on_error(self, f: impl FnOnce(&Error) + Send + 'static) -> Self {
        let mut state = lock(&self.slot.state);
        match &state.result {
            None if state.taken => {}
            None => state.on_error.push(Box::new(f)),
            Some(Err(e)) => run_callback(|| f(e)),
            Some(Ok(_)) => {}
        }
        drop(state);
        self
    }
}

impl<R> std::fmt::Debug for AsyncResult<R> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AsyncResult")
            .field("ready", &self.ready())
            .finish()
    }
}

/// Encodes one argument as a one-item chunk (`spill_at` as for
/// [`chunk::encode_chunk`]).
pub(crate) fn one_item<A: Serialize>(
    task: &'static str,
    codec: Codec<A>,
    arg: &A,
    spill_at: Option<usize>,
) -> Result<chunk::Encoded> {
    let mut bytes_per_item = 16;
    chunk::encode_chunk(
        task,
        codec,
        &mut std::iter::once(arg),
        1,
        0,
        &mut bytes_per_item,
        spill_at,
    )?
    .ok_or_else(|| Error::new(ErrorKind::Protocol, "an empty chunk").with_task(task))
}

fn single_result<R: DeserializeOwned>(
    task: &'static str,
    codec: Codec<R>,
    reply: Reply,
) -> Result<R> {
    let (_, mut items) = chunk::reply_items::<R>(task, codec, reply);
    items.pop().unwrap_or_else(|| {
        Err(Error::new(ErrorKind::Protocol, "the worker returned no result").with_task(task))
    })
}

/// How long a blocking `apply` polls for its answer before it sleeps. Only the caller
/// polls: the threads that carry the task wake as usual, so they never compete with a
/// spinner for a core they need.
const APPLY_SPIN: Duration = Duration::from_micros(100);

fn spin_then_recv<T>(rx: &mpsc::Receiver<T>) -> std::result::Result<T, mpsc::RecvError> {
    let start = Instant::now();
    loop {
        match rx.try_recv() {
            Ok(v) => return Ok(v),
            Err(mpsc::TryRecvError::Disconnected) => return Err(mpsc::RecvError),
            Err(mpsc::TryRecvError::Empty) if start.elapsed() < APPLY_SPIN => {
                std::hint::spin_loop();
            }
            Err(mpsc::TryRecvError::Empty) => return rx.recv(),
        }
    }
}

pub(crate) fn apply<A, R, F>(pool: &PoolCore, task: &Task<A, R, F>, arg: &A) -> Result<R>
where
    A: Serialize,
    R: DeserializeOwned,
{
    let name = task.name();
    let enc = one_item(name, task.arg_codec(), arg, pool.spill_at())?;
    // Straight to an idle worker, if one watches its direct path; through the queue
    // otherwise.
    let attempts = match pool.call_direct(name, &enc) {
        Offered::Replied(reply) => return single_result(name, task.ret_codec(), reply),
        Offered::NotRun => 1,
        Offered::Retry => 2,
    };
    let (tx, rx) = mpsc::channel();
    let mut job = Job::new(enc, name, 0, None, ReplyTo::Channel(tx));
    job.attempts = attempts;
    pool.submit(job).map_err(|e| e.with_task(name))?;
    let reply = spin_then_recv(&rx)
        .map_err(|_| Error::new(ErrorKind::Closed, "the pool went away").with_task(name))?;
    single_result(name, task.ret_codec(), reply)
}

pub(crate) fn apply_async<A, R, F>(pool: &PoolCore, task: &Task<A, R, F>, arg: &A) -> AsyncResult<R>
where
    A: Serialize,
    R: DeserializeOwned + Send + 'static,
{
    let name = task.name();
    let enc = match one_item(name, task.arg_codec(), arg, pool.spill_at()) {
        Ok(enc) => enc,
        Err(e) => return AsyncResult::failed(e),
    };
    let completions = match pool.completions() {
        Ok(c) => c,
        Err(e) => return AsyncResult::failed(e.with_task(name)),
    };
    let slot = Slot::new();
    let target = Arc::clone(&slot);
    let codec = task.ret_codec();
    let reply = ReplyTo::Handler {
        completions,
        on_reply: Box::new(move |reply| target.complete(single_result(name, codec, reply))),
    };
    let job = Job::new(enc, name, 0, None, reply);
    // On a closed pool the job is dropped, which completes the slot with `Closed`.
    let _ = pool.submit(job);
    AsyncResult { slot }
}
