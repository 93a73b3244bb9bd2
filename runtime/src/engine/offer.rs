//! Offering calls to the direct paths of the pool's workers (see [`crate::direct`]): a
//! blocking `apply` that finds an idle worker watching its direct path hands the call
//! to it, past the queue and the worker's driver. This is the pool's side: which worker,
//! and keeping the drivers informed; the call itself is `direct::call`.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use super::{Encoded, PoolCore, Reply, Wake};
use crate::direct::{self, Outcome, ParentEnd};
use crate::error::{Error, ErrorKind};
use crate::sys::lock::lock;
use crate::wire::{Answer, Expect};

/// How many of its sleeps (of 10 ms) a caller in a direct path lets pass before it asks the
/// worker's driver to check the worker even though the worker's pidfd says it runs.
/// Each check wakes every idle driver.
const FULL_CHECK_EVERY: u32 = 100;

/// What became of a call offered to the direct paths.
pub(crate) enum Offered {
    /// It ran, or failed for good: its reply.
    Replied(Reply),
    /// It did not run: queue it.
    NotRun,
    /// Its worker died while running it, and the pool's retries allow another attempt:
    /// queue it as the second.
    Retry,
}

impl PoolCore {
    /// Runs the one-item chunk `enc` of `task` through the direct path of an idle worker,
    /// if one is open and the call fits.
    pub(crate) fn call_direct(&self, task: &'static str, enc: &Encoded) -> Offered {
        let shm = self.shared.config.shm;
        let (header, body) = enc.frame.split_at(enc.body_at);
        // A fork()ed child must not reach the original's workers through the direct paths
        // it inherited: its call goes to `submit`, which refuses it.
        if self.foreign()
            || !enc.attachments.is_empty()
            || !enc.leases.is_empty()
            || enc.spilled.is_some()
            || !direct::fits(header, body, shm)
        {
            return Offered::NotRun;
        }
        let shared = &self.shared;
        // Counted before the claim: a job queued from now on wakes every driver.
        shared.direct_calls.fetch_add(1, Ordering::SeqCst);
        let Some((slot, end)) = self.claim_direct() else {
            shared.direct_calls.fetch_sub(1, Ordering::SeqCst);
            return Offered::NotRun;
        };
        // While the caller sleeps, someone must notice if the worker dies: its driver,
        // which does not watch an idle worker's socket. The caller asks it to look when
        // the worker's pidfd says it has exited, and in any case every
        // `FULL_CHECK_EVERY` sleeps (a worker alive but giving up, say).
        let mut sleeps = 0u32;
        let check = || {
            sleeps = sleeps.wrapping_add(1);
            if sleeps.is_multiple_of(FULL_CHECK_EVERY) || end.worker_may_have_exited() {
                shared.request_check(slot);
            }
        };
        let expect = Expect {
            chunk: enc.chunk,
            count: enc.count,
        };
        let call = direct::call(&end, header, body, expect, shm, check);
        shared.direct_calls.fetch_sub(1, Ordering::SeqCst);
        // Jobs queued meanwhile were left alone by this worker's driver.
        if !lock(&shared.queue).jobs.is_empty() {
            shared.wake_drivers(Wake::All);
        }
        let fail = |error: Error| {
            Offered::Replied(Reply::Failed {
                first_index: 0,
                count: enc.count,
                error: error.with_task(task).with_index(0),
            })
        };
        match call {
            Ok(Outcome::Answered(Answer::Done {
                count,
                nanos,
                values_len,
                body,
            })) => Offered::Replied(Reply::Done {
                first_index: 0,
                pid: end.pid(),
                nanos,
                expected: enc.count,
                count,
                body,
                values_len,
            }),
            Ok(Outcome::Answered(Answer::Fatal(why))) => fail(
                Error::new(
                    ErrorKind::Protocol,
                    format!("the worker gave up while running item 0: {why}"),
                )
                .with_pid(end.pid()),
            ),
            Err(e) => fail(e),
            Ok(Outcome::NotRun) => Offered::NotRun,
            Ok(Outcome::Lost(_)) if shared.is_terminated() => {
                fail(Error::new(ErrorKind::Closed, "the pool was terminated"))
            }
            Ok(Outcome::Lost(why)) => {
                let why = why.unwrap_or_else(|| {
                    Error::new(
                        ErrorKind::WorkerDied,
                        "the worker was lost while running item 0",
                    )
                    .with_pid(end.pid())
                });
                // Pure functions: running the call again on another worker is safe.
                if why.kind() == ErrorKind::WorkerDied && shared.config.retries > 0 {
                    Offered::Retry
                } else {
                    fail(why)
                }
            }
        }
    }

    /// Claims the direct path of an idle worker, if one is open and the pool takes calls.
    fn claim_direct(&self) -> Option<(usize, Arc<ParentEnd>)> {
        if lock(&self.shared.queue).closed {
            return None;
        }
        let ends = lock(&self.shared.directs);
        let claimed = ends.iter().enumerate().find_map(|(slot, end)| {
            let end = end.as_ref()?;
            end.try_claim().then(|| (slot, Arc::clone(end)))
        });
        if claimed.is_none() {
            // The next call may find one: the worker that answers this one through the
            // queue keeps its direct path open afterwards.
            for end in ends.iter().flatten() {
                end.invite();
            }
        }
        claimed
    }
}
