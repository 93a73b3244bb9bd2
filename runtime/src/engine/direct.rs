//! Calls through a worker's lane (see [`crate::lane`]): a blocking `apply` that finds
//! an idle worker watching its lane hands the call to it directly, past the queue and
//! the worker's driver.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use super::{Body, PoolCore, Reply, Wake, lock};
use crate::chunk::Encoded;
use crate::error::{Error, ErrorKind};
use crate::lane::{CAPACITY, Call, Lane};
use crate::protocol::{self, Frame};

/// How many of its sleeps (of 10 ms) a caller in a lane lets pass before it asks the
/// worker's driver to check the worker even though the worker's pidfd says it runs.
/// Each check wakes every idle driver.
const FULL_CHECK_EVERY: u32 = 100;

/// What became of a call offered to the lanes.
pub(crate) enum Direct {
    /// It ran, or failed for good: its reply.
    Replied(Reply),
    /// It did not run: queue it.
    NotRun,
    /// Its worker died while running it, and the pool's retries allow another attempt:
    /// queue it as the second.
    Retry,
}

impl PoolCore {
    /// Runs the one-item chunk `enc` of `task` through the lane of an idle worker, if
    /// one is open and the call fits.
    pub(crate) fn call_direct(&self, task: &'static str, enc: &Encoded) -> Direct {
        let shm = self.shared.config.shm;
        let (header, body) = enc.frame.split_at(enc.body_at);
        // A fork()ed child must not reach the original's workers through the lanes it
        // inherited: its call goes to `submit`, which refuses it.
        if self.foreign()
            || !enc.attachments.is_empty()
            || !enc.leases.is_empty()
            || body.len() > shm.threshold
            || enc.frame.len() > CAPACITY
        {
            return Direct::NotRun;
        }
        let shared = &self.shared;
        // Counted before the claim: a job queued from now on wakes every driver.
        shared.lane_calls.fetch_add(1, Ordering::SeqCst);
        let Some((slot, lane)) = self.claim_lane() else {
            shared.lane_calls.fetch_sub(1, Ordering::SeqCst);
            return Direct::NotRun;
        };
        // The lane's copy of the frame is made only with a lane in hand: a call that
        // finds none goes through the queue with the job's own.
        let mut frame = Vec::with_capacity(enc.frame.len() + 16);
        let mut answer = Vec::new();
        // While the caller sleeps, someone must notice if the worker dies: its driver,
        // which does not watch an idle worker's socket. The caller asks it to look when
        // the worker's pidfd says it has exited, and in any case every
        // `FULL_CHECK_EVERY` sleeps (a worker alive but giving up, say).
        let mut sleeps = 0u32;
        let check = || {
            sleeps = sleeps.wrapping_add(1);
            if sleeps.is_multiple_of(FULL_CHECK_EVERY) || lane.worker_may_have_exited() {
                shared.request_check(slot);
            }
        };
        let call = match crate::transport::append_frame(&mut frame, header, body, &[], shm) {
            // A frame too large for the lane gives the lane back, not run.
            Ok(_) => lane.call(&frame[4..], &mut answer, check),
            Err(_) => lane.unclaim(),
        };
        shared.lane_calls.fetch_sub(1, Ordering::SeqCst);
        // Jobs queued meanwhile were left alone by this worker's driver.
        if !lock(&shared.queue).jobs.is_empty() {
            shared.wake_drivers(Wake::All);
        }
        let fail = |error: Error| {
            Direct::Replied(Reply::Failed {
                first_index: 0,
                count: enc.count,
                error: error.with_task(task).with_index(0),
            })
        };
        match call {
            Call::Answered => match reply_of(answer, lane.pid(), enc) {
                Ok(reply) => Direct::Replied(reply),
                Err(e) => fail(e),
            },
            Call::NotRun => Direct::NotRun,
            Call::Lost(_) if shared.is_terminated() => {
                fail(Error::new(ErrorKind::Closed, "the pool was terminated"))
            }
            Call::Lost(why) => {
                let why = why.unwrap_or_else(|| {
                    Error::new(
                        ErrorKind::WorkerDied,
                        "the worker was lost while running item 0",
                    )
                    .with_pid(lane.pid())
                });
                // Pure functions: running the call again on another worker is safe.
                if why.kind() == ErrorKind::WorkerDied && shared.config.retries > 0 {
                    Direct::Retry
                } else {
                    fail(why)
                }
            }
        }
    }

    /// Claims the lane of an idle worker, if one is open and the pool takes calls.
    fn claim_lane(&self) -> Option<(usize, Arc<Lane>)> {
        if lock(&self.shared.queue).closed {
            return None;
        }
        let lanes = lock(&self.shared.lanes);
        let claimed = lanes.iter().enumerate().find_map(|(slot, lane)| {
            let lane = lane.as_ref()?;
            lane.try_claim().then(|| (slot, Arc::clone(lane)))
        });
        if claimed.is_none() {
            // The next call may find one: the worker that answers this one through the
            // queue keeps its lane open afterwards.
            for lane in lanes.iter().flatten() {
                lane.invite();
            }
        }
        claimed
    }
}

/// The reply in `answer`, a frame's payload from the worker `pid`: the `Done` frame of
/// `enc`, or a `Fatal` frame.
fn reply_of(answer: Vec<u8>, pid: u32, enc: &Encoded) -> Result<Reply, Error> {
    let invalid = |why: String| {
        Error::new(
            ErrorKind::Protocol,
            format!("the worker sent an invalid frame while running item 0 ({why})"),
        )
        .with_pid(pid)
    };
    let (count, nanos, values_len, range) = match protocol::parse(&answer) {
        Ok(Frame::Done {
            chunk,
            count,
            nanos,
            values_len,
            trailer,
        }) if chunk == enc.chunk
            && count <= enc.count
            && trailer.segments.is_empty()
            && !trailer.out_of_line =>
        {
            let start = trailer.body.as_ptr() as usize - answer.as_ptr() as usize;
            (count, nanos, values_len, start..start + trailer.body.len())
        }
        Ok(Frame::Fatal(why)) => {
            return Err(Error::new(
                ErrorKind::Protocol,
                format!("the worker gave up while running item 0: {why}"),
            )
            .with_pid(pid));
        }
        Ok(other) => return Err(invalid(format!("unexpected frame {other:?}"))),
        Err(e) => return Err(invalid(e.to_string())),
    };
    Ok(Reply::Done {
        first_index: 0,
        pid,
        nanos,
        expected: enc.count,
        count,
        body: Body::Inline {
            frame: answer,
            range,
        },
        values_len: values_len as usize,
    })
}
