//! The worker's side of its direct path: keeping it open while idle, and running the calls
//! posted there.

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use crate::sys::segment::Segment;

use super::{
    ANSWERED, BUFFER_AT, CAPACITY, CLAIMED, CLOSED, GONE, Header, LOOKS_PER_YIELD, OPEN, PART,
    POSTED, RUNNING, TAKEN, await_turn, header, wake_if_waiting,
};

/// Runs a call's `Run` frame payload, appending the whole answer frame (length prefix
/// first) to the buffer it gets; returns where that frame starts.
pub(crate) type RunCall<'a> = dyn FnMut(&[u8], &mut Vec<u8>) -> Result<usize, String> + 'a;

/// Why a worker stopped watching its direct path.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Idle {
    /// Its driver is writing to its socket.
    Kicked,
    /// No call came for the whole window.
    Expired,
    /// No caller has asked for the direct path since it last expired: it stayed closed.
    Uninvited,
    /// The driver gave the direct path up (the pool shuts down).
    Gone,
}

/// The worker's view of its direct path, in the control segment it mapped.
pub(crate) struct WorkerEnd {
    base: *mut u8,
    /// The driver's kick count when the worker last looked.
    seen_kick: u32,
}

// SAFETY: `base` points into a shared mapping that lives as long as the process (`new`
// takes a `'static` segment); the header is only touched through atomics, the buffer
// only in our turn.
unsafe impl Send for WorkerEnd {}

impl WorkerEnd {
    /// The direct path in `control`, the worker's control segment, mapped for the rest of
    /// its life; `None` if it is not a writable segment of the control segment's size.
    pub(crate) fn new(control: &'static Segment) -> Option<WorkerEnd> {
        let base = super::control_base(control)?;
        Some(WorkerEnd { base, seen_kick: 0 })
    }

    /// A direct path at `base`, for tests that play both sides in one process.
    ///
    /// # Safety
    /// `base` must be the start of a live, page-aligned, writable shared mapping of at
    /// least [`CONTROL_BYTES`](super::CONTROL_BYTES) that outlives the `WorkerEnd`.
    #[cfg(test)]
    pub(crate) unsafe fn at(base: *mut u8) -> WorkerEnd {
        WorkerEnd { base, seen_kick: 0 }
    }

    fn header(&self) -> &Header {
        // SAFETY: `new`'s contract.
        unsafe { header(self.base) }
    }

    fn buffer(&self) -> *mut u8 {
        // SAFETY: `BUFFER_AT` is inside the mapping (`new`'s contract).
        unsafe { self.base.add(BUFFER_AT) }
    }

    /// Whether the driver kicked since the worker last looked.
    fn kicked(&mut self) -> bool {
        let k = self.header().kick.count.load(Ordering::Acquire);
        let kicked = k != self.seen_kick;
        self.seen_kick = k;
        kicked
    }

    /// Keeps the direct path open, if a caller invited it, and runs the calls posted there,
    /// until `window` passes without one, the driver kicks, or the direct path is gone.
    /// `socket_ready` says whether the worker's socket has something to read already
    /// (then it returns at once). `run` runs a `Run` frame's payload and appends a whole
    /// frame (length prefix first) to the buffer it gets, returning where that frame
    /// starts. An error is the worker's reason to give up.
    pub(crate) fn serve(
        &mut self,
        window: Duration,
        socket_ready: &dyn Fn() -> bool,
        out: &mut Vec<u8>,
        run: &mut RunCall<'_>,
    ) -> Result<Idle, String> {
        // SAFETY: `new`'s contract; the header is not borrowed from `self`, which the
        // loop updates.
        let h: &Header = unsafe { header(self.base) };
        let state = &h.turn.state;
        // Gone is final, invited or not: a worker whose invitation lapsed (after a window
        // without calls) and that only looked at that would never learn it. The direct
        // path's test server spun on exactly that, now and then, once the direct path was
        // closed.
        if state.load(Ordering::Acquire) == GONE {
            return Ok(Idle::Gone);
        }
        if h.kick.invite.load(Ordering::Relaxed) == 0 {
            return Ok(Idle::Uninvited);
        }
        // Kicks until now are for frames that are in the socket now (or in the moment
        // between a kick and its write: then the window ends first), so the socket
        // says. Later kicks are for frames to come.
        self.kicked();
        let mut kicked = socket_ready();
        let mut since = Some(Instant::now());
        let mut looks = 0u32;
        loop {
            let s = state.load(Ordering::Acquire);
            match s {
                CLOSED => {
                    // Closed by the driver (after a kick) or by the worker itself: a
                    // kick seen now says which, so that a direct path the driver closed is
                    // not opened again under its write.
                    kicked |= self.kicked();
                    if kicked {
                        return Ok(Idle::Kicked);
                    }
                    let _ =
                        state.compare_exchange(CLOSED, OPEN, Ordering::AcqRel, Ordering::Relaxed);
                    continue;
                }
                POSTED => {
                    // Taken: from now on, a death of this process fails the call (until
                    // now, its driver would have sent it through the queue instead).
                    if state
                        .compare_exchange(POSTED, RUNNING, Ordering::AcqRel, Ordering::Relaxed)
                        .is_err()
                    {
                        return Ok(Idle::Gone);
                    }
                    let n = h.turn.len.load(Ordering::Relaxed) as usize;
                    if n > CAPACITY {
                        return Err(format!(
                            "protocol error: a call of {n} bytes in the direct path"
                        ));
                    }
                    // SAFETY: in RUNNING the buffer is ours and holds the `n` bytes the
                    // caller wrote before its release store of POSTED; nothing writes
                    // it until we answer, after the last use of `payload`.
                    let payload = unsafe { std::slice::from_raw_parts(self.buffer(), n) };
                    out.clear();
                    let start = run(payload, out)?;
                    let frame = out
                        .get(start + 4..)
                        .ok_or("the answer to a direct call is not a frame")?;
                    if !self.answer(frame)? {
                        return Ok(Idle::Gone);
                    }
                    since = None;
                    continue;
                }
                GONE => return Ok(Idle::Gone),
                // The window runs from when the caller has read its answer.
                ANSWERED => since = None,
                OPEN | CLAIMED => {}
                other => {
                    return Err(format!(
                        "protocol error: the direct path is in state {other} while idle"
                    ));
                }
            }
            kicked |= self.kicked();
            looks = looks.wrapping_add(1);
            if !looks.is_multiple_of(LOOKS_PER_YIELD) {
                std::hint::spin_loop();
                continue;
            }
            std::thread::yield_now();
            // Only an open direct path is left: a claimed one is served whatever the time
            // (its caller is writing the call), and a caller reading its answer opens the
            // direct path again when done.
            let open_since = *since.get_or_insert_with(Instant::now);
            let leave = kicked || open_since.elapsed() >= window;
            if s == OPEN
                && leave
                && state
                    .compare_exchange(OPEN, CLOSED, Ordering::AcqRel, Ordering::Relaxed)
                    .is_ok()
            {
                if kicked {
                    return Ok(Idle::Kicked);
                }
                // A whole window without a call: no caller wants the direct path for now.
                h.kick.invite.store(0, Ordering::Relaxed);
                return Ok(Idle::Expired);
            }
        }
    }

    /// Hands `payload` (a `Done` frame's payload) to the caller, in parts if it is
    /// larger than the buffer. False if the direct path was given up meanwhile.
    fn answer(&self, mut payload: &[u8]) -> Result<bool, String> {
        let h = self.header();
        let mut from = RUNNING;
        loop {
            let n = payload.len().min(CAPACITY);
            // SAFETY: in RUNNING and TAKEN the buffer is ours; `n` bytes fit in it.
            unsafe { std::ptr::copy_nonoverlapping(payload.as_ptr(), self.buffer(), n) };
            h.turn.len.store(n as u32, Ordering::Relaxed);
            let last = n == payload.len();
            let to = if last { ANSWERED } else { PART };
            if h.turn
                .state
                .compare_exchange(from, to, Ordering::AcqRel, Ordering::Relaxed)
                .is_err()
            {
                return Ok(false);
            }
            wake_if_waiting(&h.turn.state, &h.sleep.caller);
            if last {
                return Ok(true);
            }
            payload = &payload[n..];
            // The caller is in the parent: if the parent dies, this process ends, so
            // waiting without a deadline cannot outlive it.
            match await_turn(
                &h.turn.state,
                |s| s == PART,
                &h.sleep.worker,
                Duration::from_millis(100),
                || {},
            ) {
                TAKEN => from = TAKEN,
                GONE => return Ok(false),
                other => {
                    return Err(format!(
                        "protocol error: the direct path is in state {other} after part of an answer"
                    ));
                }
            }
        }
    }
}
