//! Jobs (encoded chunks) and their replies: every job gets exactly one reply, also when
//! it is dropped unexecuted because the pool shut down.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;

use crate::error::{Error, ErrorKind};
use crate::shm::{Entry, Lease};
use crate::sys::segment::Segment;
pub(crate) use crate::wire::Body;

/// A `Run` frame (without its trailer) holding a chunk of up to `count` items, and what
/// its arguments take with them: ready to become a [`Job`].
pub(crate) struct Encoded {
    pub chunk: u64,
    pub frame: Vec<u8>,
    pub body_at: usize,
    pub count: u32,
    /// Segments the items' handles refer to.
    pub attachments: Vec<Arc<Entry>>,
    /// The `SharedChunkMut` ranges the items lend to the task: held until it has
    /// answered, or its worker is dead and reaped.
    pub leases: Vec<Lease>,
    /// The one-shot segment holding the whole body, written while the chunk was encoded
    /// (`frame` then ends at `body_at`).
    pub spilled: Option<Segment>,
}

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
    /// The `Run` frame without its trailer: header and body (the driver ends it, since
    /// which segments go with it depends on the worker it goes to).
    pub frame: Vec<u8>,
    /// Where the body starts in `frame`.
    pub body_at: usize,
    /// The segments the chunk's handles refer to; held until the job is done.
    pub attachments: Vec<Arc<Entry>>,
    /// The ranges the chunk lends to its task. Given back right before the reply, which
    /// is sent only once the task answered or its worker is dead and reaped (a job that
    /// goes back to the queue keeps them). Before, not after: a caller woken by the
    /// reply may read the slice at once.
    leases: Vec<Lease>,
    /// The one-shot segment holding the body, once the driver moved it out of line.
    pub oneshot: Option<Segment>,
    /// The one-shot segment holding the body, written while the chunk was encoded
    /// (`frame` then ends at `body_at`); sent to each worker the job goes to.
    pub spilled: Option<Segment>,
    /// How many workers were given this chunk (more than one after retries).
    pub attempts: u32,
    /// How many workers died holding this chunk before it started (it went back to the
    /// queue each time, unblamed).
    pub bounced: u32,
    /// Set by the caller when it no longer wants the result (it returned early).
    cancel: Option<Arc<AtomicBool>>,
    /// Where the one reply goes; `None` once sent.
    reply: Option<ReplyTo>,
}

/// What happened to a job.
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
        /// The results: the first `values_len` bytes are the values, the rest failures.
        body: Body,
        values_len: usize,
    },
    Failed {
        first_index: usize,
        count: u32,
        error: Error,
    },
}

/// A typed continuation run on the pool's completion thread.
pub(crate) type OnReply = Box<dyn FnOnce(Reply) + Send>;

/// A reply on its way to the completion thread, with what to do with it.
pub(crate) struct Completion {
    pub on_reply: OnReply,
    pub reply: Reply,
}

/// Where a job's reply goes.
pub(crate) enum ReplyTo {
    /// To a caller waiting on a channel (`map`, `imap`, `apply`).
    Channel(mpsc::Sender<Reply>),
    /// To the pool's completion thread, which runs `on_reply` (`apply_async`: decoding,
    /// callbacks, filling the `AsyncResult`) in completion order.
    Handler {
        completions: mpsc::Sender<Completion>,
        on_reply: OnReply,
    },
    /// Run `on_reply` on the thread that has the reply (a driver, as soon as the
    /// worker's answer is read): `map` decodes its results there, off the caller's
    /// thread, one driver per worker.
    Inline(OnReply),
}

impl Job {
    pub(crate) fn new(
        enc: Encoded,
        task: &'static str,
        first_index: usize,
        cancel: Option<Arc<AtomicBool>>,
        reply: ReplyTo,
    ) -> Self {
        Job {
            chunk: enc.chunk,
            task,
            first_index,
            count: enc.count,
            frame: enc.frame,
            body_at: enc.body_at,
            attachments: enc.attachments,
            leases: enc.leases,
            oneshot: None,
            spilled: enc.spilled,
            attempts: 1,
            bounced: 0,
            cancel,
            reply: Some(reply),
        }
    }

    /// Whether the job lends `SharedChunkMut` ranges, or carries any writable segment:
    /// only a worker on this host can write what this process reads back.
    pub(crate) fn writes_shared_memory(&self) -> bool {
        !self.leases.is_empty() || self.attachments.iter().any(|e| e.segment.desc().writable)
    }

    pub(crate) fn is_cancelled(&self) -> bool {
        self.cancel
            .as_ref()
            .is_some_and(|c| c.load(Ordering::Relaxed))
    }

    /// Sends the job's reply. A caller that went away is not an error.
    pub(crate) fn reply(mut self, reply: Reply) {
        self.leases.clear();
        if let Some(to) = self.reply.take() {
            deliver(to, reply);
        }
    }

    /// Replies with `error`, naming the job's task and first item.
    pub(crate) fn fail(self, error: Error) {
        let index = self.first_index;
        self.fail_at(error, index);
    }

    /// Replies with `error`, naming the job's task and the item `index` that failed.
    pub(crate) fn fail_at(self, error: Error, index: usize) {
        let error = error.with_task(self.task).with_index(index);
        let (first_index, count) = (self.first_index, self.count);
        self.reply(Reply::Failed {
            first_index,
            count,
            error,
        });
    }
}

fn deliver(to: ReplyTo, reply: Reply) {
    match to {
        ReplyTo::Channel(tx) => {
            let _ = tx.send(reply);
        }
        ReplyTo::Inline(on_reply) => on_reply(reply),
        ReplyTo::Handler {
            completions,
            on_reply,
        } => {
            if let Err(mpsc::SendError(c)) = completions.send(Completion { on_reply, reply }) {
                // The completion thread is gone (it only stops once every sender is
                // dropped, so this is a panic there): still complete exactly once.
                (c.on_reply)(c.reply);
            }
        }
    }
}

impl Drop for Job {
    fn drop(&mut self) {
        self.leases.clear();
        if let Some(to) = self.reply.take() {
            let error = Error::new(ErrorKind::Closed, "the pool shut down before the item ran")
                .with_task(self.task)
                .with_index(self.first_index);
            deliver(
                to,
                Reply::Failed {
                    first_index: self.first_index,
                    count: self.count,
                    error,
                },
            );
        }
    }
}
