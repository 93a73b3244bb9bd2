//! One call through a worker's direct path, on the caller's side: the `Run` frame goes
//! into the buffer, the answer comes back from it and is read like any other.

use super::{CAPACITY, Call, ParentEnd};
use crate::error::{Error, ErrorKind};
use crate::wire::{self, Answer, Expect, ShmConfig};

/// What became of a call through a direct path.
pub(crate) enum Outcome {
    /// The worker answered, or gave up over the call (a `Fatal` answer).
    Answered(Answer),
    /// It did not run: the caller sends it the usual way.
    NotRun,
    /// The worker was lost after it took the call; why, as its driver said.
    Lost(Option<Error>),
}

/// Whether a `Run` frame made of `header` and `body` fits the direct path.
pub(crate) fn fits(header: &[u8], body: &[u8], shm: ShmConfig) -> bool {
    body.len() <= shm.threshold && header.len() + body.len() <= CAPACITY
}

/// Runs the one-item chunk `chunk` (its `Run` frame's `header` and `body`) through
/// `direct path`, which the caller has claimed; `check` runs between the caller's sleeps
/// (see [`ParentEnd::call`]). An answer that is not a valid frame is an error naming
/// the worker.
pub(crate) fn call(
    direct: &ParentEnd,
    header: &[u8],
    body: &[u8],
    expect: Expect,
    shm: ShmConfig,
    check: impl FnMut(),
) -> Result<Outcome, Error> {
    // The copy of the frame is made only with a direct path in hand: a call that finds
    // none goes through the queue with the job's own.
    let mut frame = Vec::with_capacity(header.len() + body.len() + 16);
    let mut answer = Vec::new();
    let call = match wire::append_frame(&mut frame, header, body, &[], shm) {
        // A frame too large for the direct path gives the direct path back, not run.
        Ok(_) => direct.call(&frame[4..], &mut answer, check),
        Err(_) => direct.unclaim(),
    };
    match call {
        Call::Answered => wire::read_answer(&mut answer, Some(expect), None)
            .map(Outcome::Answered)
            .map_err(|why| {
                Error::new(
                    ErrorKind::Protocol,
                    format!("the worker sent an invalid frame while running item 0 ({why})"),
                )
                .with_pid(direct.pid())
            }),
        Call::NotRun => Ok(Outcome::NotRun),
        Call::Lost(why) => Ok(Outcome::Lost(why)),
    }
}
