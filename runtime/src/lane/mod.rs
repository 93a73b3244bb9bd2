//! The direct lane of a blocking `apply`: the caller hands its task to an idle worker
//! through shared memory, and the worker hands the answer back the same way. While both
//! sides watch the lane, a call makes no system call and wakes no thread. The usual path
//! (the pool's queue, the worker's driver thread, its socket) costs two kernel wake-ups
//! per call, the worker's and then the driver's: more than all the rest of a small
//! `apply` together.
//!
//! Each worker has one lane, in the control segment its driver sends it at start-up,
//! after the progress word. A worker with nothing to do keeps its lane open for a short
//! while ([`OPEN_FOR`], renewed by each call) before it blocks on its socket, if a caller
//! has invited it (a caller that finds no lane open invites them all, and goes through
//! the queue); a caller that finds an open lane claims it, writes its `Run` frame there
//! and waits for the `Done` frame in the same place. A lane open a whole window for
//! nothing drops its invitation, so that workers do not take the cores from a parent
//! busy with anything but `apply`s. Every other call takes the usual path: no lane
//! open, a frame too large for the lane or carrying shared-memory handles, a worker
//! holding segments (their release travels with its driver's next frame), or a pool
//! with a time limit or a quota per worker (its driver enforces those, and it does not
//! see lane calls).
//!
//! A driver about to write to its worker's socket kicks the worker (which then leaves
//! the lane for its socket) and closes an open lane itself, so that no call claims the
//! worker between the driver's taking a job and its write; if a call has claimed the
//! lane already, the driver puts its jobs back in the queue, for another worker.
//!
//! The state word says whose turn it is; each arrow is a compare-and-swap by one side:
//!
//! ```text
//!  CLOSED --worker--> OPEN --caller--> CLAIMED --caller--> POSTED --worker--> RUNNING
//!         <--worker-- (or the driver)
//!                          <--caller-- (too large: not posted)                    |
//!                          <--caller-- (answer read) <-- ANSWERED <--worker------'
//!
//!  an answer larger than the buffer goes in parts:
//!  RUNNING --worker--> PART --caller--> TAKEN --worker--> PART ... --worker--> ANSWERED
//!
//!  GONE, for good, set by the driver: when it loses the worker (from any state but
//!  ANSWERED, whose answer is read first; a call lost while still POSTED never ran, and
//!  goes through the queue), or when the pool shuts down (from CLOSED or OPEN, once any
//!  call has been answered and read)
//! ```
//!
//! The buffer belongs to whoever's turn it is: the caller from CLAIMED to POSTED and in
//! PART and ANSWERED, the worker in POSTED, RUNNING and TAKEN. Waiting looks at the
//! state for a short while (yielding the core now and then), then sleeps on it as a
//! futex; a side that changes the state wakes the other only if it sleeps.

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use crate::error::{Error, Result};
use crate::shm::{Pages, Segment, ShmBackend};

mod serve;

#[cfg(test)]
use serve::Idle;
pub(crate) use serve::WorkerLane;

/// The size of a worker's control segment: the progress word, the lane's header, and
/// the lane's buffer from [`BUFFER_AT`] on.
pub(crate) const CONTROL_BYTES: usize = 64 << 10;
/// Where the lane's header starts in the control segment (the progress word is first).
const HEADER_AT: usize = 64;
/// Where the lane's buffer starts in the control segment.
const BUFFER_AT: usize = 4096;
/// The largest frame a caller may post, and the largest part of an answer.
pub(crate) const CAPACITY: usize = CONTROL_BYTES - BUFFER_AT;

/// How long an idle worker keeps its lane open before it blocks on its socket: long
/// enough for a caller to decode one answer and post its next call.
pub(crate) const OPEN_FOR: Duration = Duration::from_micros(50);
/// How long a side waiting for its turn looks before it sleeps.
const LOOK_FOR: Duration = Duration::from_micros(100);
/// Looks between two yields of the core: on a machine with more runnable threads than
/// cores, the side we wait for may need ours.
const LOOKS_PER_YIELD: u32 = 32;
/// How long a caller sleeps at a time before it asks the driver to check its worker.
const SLEEP_SLICE: Duration = Duration::from_millis(10);

const CLOSED: u32 = 0;
const OPEN: u32 = 1;
const CLAIMED: u32 = 2;
const POSTED: u32 = 3;
const PART: u32 = 4;
const TAKEN: u32 = 5;
const ANSWERED: u32 = 6;
const GONE: u32 = 7;
const RUNNING: u32 = 8;

/// The lane's header in shared memory; each line is written by as few sides as can be.
#[repr(C)]
struct Header {
    turn: Turn,
    kick: Kick,
    sleep: Sleep,
}

/// The state and the length of what the buffer holds (written before the state).
#[repr(C, align(64))]
struct Turn {
    state: AtomicU32,
    len: AtomicU32,
}

/// Written by the parent, read by the worker.
#[repr(C, align(64))]
struct Kick {
    /// Bumped by the driver before each write to the worker's socket: a worker that
    /// watches its lane then goes to read its socket.
    count: AtomicU32,
    /// Set by a caller that found no lane open; cleared by the worker when its lane was
    /// open a whole window for nothing. A worker keeps its lane open only while invited,
    /// so that its looking costs the machine nothing while no `apply` wants it (in a
    /// `map`, say, where the parent needs every core to feed the workers).
    invite: AtomicU32,
}

/// Sleepers on the state word, counted so that a change only makes a system call when
/// someone sleeps.
#[repr(C, align(64))]
struct Sleep {
    caller: AtomicU32,
    worker: AtomicU32,
}

const _: () = assert!(HEADER_AT + size_of::<Header>() <= BUFFER_AT);
const _: () = assert!(HEADER_AT.is_multiple_of(align_of::<Header>()));

/// The header of the lane in the control segment mapped at `base`.
///
/// # Safety
/// `base` must be the start of a live, page-aligned, writable shared mapping of at least
/// [`CONTROL_BYTES`] that outlives `'a`, and only ever accessed through atomics (header)
/// or by the side whose turn it is (buffer).
unsafe fn header<'a>(base: *mut u8) -> &'a Header {
    // SAFETY: per the contract above, `base + HEADER_AT` is inside the mapping and
    // aligned for `Header` (page-aligned base, asserted offset); a zeroed header is a
    // valid `Header` (all atomics) in the CLOSED state.
    unsafe { &*base.add(HEADER_AT).cast::<Header>() }
}

/// Wakes whoever sleeps on `state`, if anyone does (counted in `sleepers`).
fn wake_if_waiting(state: &AtomicU32, sleepers: &AtomicU32) {
    crate::futex::if_sleeping(sleepers, || crate::futex::wake_all(state));
}

/// Waits while `state` holds a value for which `waiting` is true, and returns the
/// first other value: looks for [`LOOK_FOR`], then sleeps in slices of `slice`,
/// counted in `sleepers`, calling `between` after each slice.
fn await_turn(
    state: &AtomicU32,
    waiting: impl Fn(u32) -> bool,
    sleepers: &AtomicU32,
    slice: Duration,
    mut between: impl FnMut(),
) -> u32 {
    let start = Instant::now();
    let mut looks = 0u32;
    loop {
        let s = state.load(Ordering::Acquire);
        if !waiting(s) {
            return s;
        }
        looks = looks.wrapping_add(1);
        if !looks.is_multiple_of(LOOKS_PER_YIELD) {
            std::hint::spin_loop();
            continue;
        }
        if start.elapsed() < LOOK_FOR {
            std::thread::yield_now();
            continue;
        }
        crate::futex::sleep_counted(state, sleepers, slice, || {
            let s = state.load(Ordering::SeqCst);
            waiting(s).then_some(s)
        });
        between();
    }
}

/// What became of a call through a lane.
pub(crate) enum Call {
    /// The worker answered; the answer (a frame's payload) is in the caller's buffer.
    Answered,
    /// The lane was given up, or the worker lost, before the worker took the call: it
    /// never ran.
    NotRun,
    /// The worker is gone after it took the call; why, as the driver described it.
    Lost(Option<Error>),
}

/// Why a lane is gone, as its driver said.
struct Lost {
    why: Error,
    /// Whether the worker had taken the call in the lane (a call still POSTED had not
    /// started).
    taken: bool,
}

/// The parent's side of a worker's lane, kept by the worker's driver and shared with
/// the callers that find it open.
pub(crate) struct Lane {
    control: Segment,
    base: *mut u8,
    pid: u32,
    /// A pidfd of the worker, readable once it has exited: callers asleep in the lane
    /// look at it, and wake the driver only when the worker is gone. `None` where the
    /// kernel has no pidfds.
    exit_watch: Option<OwnedFd>,
    /// Why the worker was lost, set by the driver while it marks the lane GONE.
    lost: Mutex<Option<Lost>>,
    /// How many shared-memory segments the worker holds, as its driver last wrote to it.
    /// Calls skip the lane of a worker that holds any: the driver tells the worker which
    /// ones it may release in front of the next frame it writes, so calls must keep
    /// going through it, or the worker would keep segments the parent dropped.
    segments_held: AtomicUsize,
}

// SAFETY: `base` points into `control`, a shared mapping that lives as long as the lane;
// the header is only touched through atomics, and the buffer only by the side whose
// turn the state word says it is.
unsafe impl Send for Lane {}
// SAFETY: see `Send`.
unsafe impl Sync for Lane {}

impl Lane {
    /// Creates the control segment for the worker `pid` (to be sent to it).
    pub(crate) fn create(pid: u32) -> Result<Lane> {
        let control = Segment::create_writable(ShmBackend::Memfd, CONTROL_BYTES, Pages::OnTouch)?;
        let base = control.as_mut_ptr().ok_or_else(|| {
            Error::new(
                crate::error::ErrorKind::Protocol,
                "the control segment is not writable",
            )
        })?;
        Ok(Lane {
            control,
            base,
            pid,
            exit_watch: pidfd_of(pid),
            lost: Mutex::new(None),
            segments_held: AtomicUsize::new(0),
        })
    }

    fn header(&self) -> &Header {
        // SAFETY: `base` is the start of `control`, a page-aligned writable shared
        // mapping of `CONTROL_BYTES` that lives as long as `self`.
        unsafe { header(self.base) }
    }

    /// The segment to send to the worker.
    pub(crate) fn segment(&self) -> &Segment {
        &self.control
    }

    /// The worker this lane leads to.
    pub(crate) fn pid(&self) -> u32 {
        self.pid
    }

    /// The worker's last progress record (the first word of the control segment).
    pub(crate) fn progress_record(&self) -> u64 {
        // SAFETY: the control segment is a live, page-aligned mapping whose first 8 bytes
        // the worker only ever stores to atomically.
        unsafe { (*self.base.cast::<AtomicU64>()).load(Ordering::Acquire) }
    }

    /// What the worker noted about its own death (the second word of the control
    /// segment): 0, or [`crate::worker::STACK_OVERFLOW`].
    pub(crate) fn death_note(&self) -> u64 {
        // SAFETY: as in `progress_record`; the second word is within the progress word's
        // 64-byte line, before the lane's header, and only stored to atomically.
        unsafe { (*self.base.cast::<AtomicU64>().add(1)).load(Ordering::Acquire) }
    }

    /// Tells a worker watching its lane that frames are coming on its socket.
    pub(crate) fn kick(&self) {
        self.header().kick.count.fetch_add(1, Ordering::Release);
    }

    /// Whether a call is in the lane (claimed, posted, running or being answered): the
    /// worker is busy with it.
    pub(crate) fn in_call(&self) -> bool {
        matches!(
            self.header().turn.state.load(Ordering::Acquire),
            CLAIMED | POSTED | RUNNING | PART | TAKEN
        )
    }

    /// Puts the lane in a call's hands, as a caller's claim does (for tests of the parent's
    /// side, which have no worker to open the lane).
    #[cfg(test)]
    pub(crate) fn claim_for_test(&self) {
        self.header().turn.state.store(CLAIMED, Ordering::SeqCst);
    }

    /// Whether the worker's pidfd says it has exited; `unknown` without a pidfd, or if
    /// asking it fails.
    fn pidfd_says_exited(&self, unknown: bool) -> bool {
        self.exit_watch.as_ref().map_or(unknown, |fd| {
            crate::transport::readable_within(fd.as_raw_fd(), Duration::ZERO).unwrap_or(unknown)
        })
    }

    /// Whether the worker has exited, as its pidfd says (false without a pidfd).
    pub(crate) fn worker_has_exited(&self) -> bool {
        self.pidfd_says_exited(false)
    }

    /// The worker's pidfd (readable once it has exited), if the kernel has pidfds.
    pub(crate) fn exit_fd(&self) -> Option<std::os::fd::RawFd> {
        self.exit_watch.as_ref().map(AsRawFd::as_raw_fd)
    }

    /// Whether the worker may have exited: its pidfd says so, or there is none to ask.
    pub(crate) fn worker_may_have_exited(&self) -> bool {
        self.pidfd_says_exited(true)
    }

    /// Before its driver writes to the worker's socket (after [`kick`](Self::kick), which
    /// keeps the worker from opening the lane again): takes an open lane from callers,
    /// so that no call can claim it and keep the frames waiting. False if a call holds
    /// the lane already: frames written now would wait for it.
    pub(crate) fn close_for_write(&self) -> bool {
        let state = &self.header().turn.state;
        loop {
            match state.load(Ordering::Acquire) {
                OPEN => {
                    if state
                        .compare_exchange(OPEN, CLOSED, Ordering::AcqRel, Ordering::Relaxed)
                        .is_ok()
                    {
                        return true;
                    }
                }
                // Its caller is reading the answer, and opens the lane again at once;
                // closing it under the caller would let the next call overwrite the
                // answer being read.
                ANSWERED => std::thread::yield_now(),
                CLAIMED | POSTED | RUNNING | PART | TAKEN => return false,
                // Closed (the worker is not watching it), or gone.
                _ => return true,
            }
        }
    }

    /// Asks the worker to keep its lane open when it is next idle.
    pub(crate) fn invite(&self) {
        let invite = &self.header().kick.invite;
        if invite.load(Ordering::Relaxed) == 0 {
            invite.store(1, Ordering::Relaxed);
        }
    }

    /// Records how many segments the worker holds (see `segments_held`).
    pub(crate) fn set_segments_held(&self, n: usize) {
        self.segments_held.store(n, Ordering::Relaxed);
    }

    /// Claims the lane for one call if the worker keeps it open now (and holds no
    /// segments).
    pub(crate) fn try_claim(&self) -> bool {
        let state = &self.header().turn.state;
        self.segments_held.load(Ordering::Relaxed) == 0
            && state.load(Ordering::Relaxed) == OPEN
            && state
                .compare_exchange(OPEN, CLAIMED, Ordering::Acquire, Ordering::Relaxed)
                .is_ok()
    }

    /// After a successful [`try_claim`](Self::try_claim): posts `payload` (a `Run`
    /// frame's payload, at most [`CAPACITY`] bytes) and waits for the answer, which
    /// replaces the contents of `answer`. `check` runs now and then while the caller
    /// sleeps, to have the worker's death noticed.
    pub(crate) fn call(&self, payload: &[u8], answer: &mut Vec<u8>, check: impl FnMut()) -> Call {
        let h = self.header();
        if payload.len() > CAPACITY {
            return self.unclaim();
        }
        let len = payload.len() as u32; // at most CAPACITY
        // SAFETY: the lane is claimed, so the buffer is ours until we post; `payload`
        // fits in it (checked), and it cannot overlap the caller's own memory.
        unsafe {
            std::ptr::copy_nonoverlapping(payload.as_ptr(), self.buffer(), payload.len());
        }
        h.turn.len.store(len, Ordering::Relaxed);
        if h.turn
            .state
            .compare_exchange(CLAIMED, POSTED, Ordering::Release, Ordering::Relaxed)
            .is_err()
        {
            // Marked GONE meanwhile: the worker never saw the call.
            return Call::NotRun;
        }
        answer.clear();
        let mut check = check;
        loop {
            let s = await_turn(
                &h.turn.state,
                |s| s == POSTED || s == RUNNING || s == TAKEN,
                &h.sleep.caller,
                SLEEP_SLICE,
                &mut check,
            );
            if s != PART && s != ANSWERED {
                return self.lost_call();
            }
            let n = (h.turn.len.load(Ordering::Relaxed) as usize).min(CAPACITY);
            // SAFETY: in PART and ANSWERED the buffer is ours, and holds `n` bytes that
            // the worker wrote before its release store of the state.
            answer.extend_from_slice(unsafe { std::slice::from_raw_parts(self.buffer(), n) });
            if s == ANSWERED {
                // Open again for the next call: the worker still watches the lane (it
                // does not leave while an answer is being read), so the caller's next
                // call finds it open. Unless the driver has marked it GONE.
                let _ = h.turn.state.compare_exchange(
                    ANSWERED,
                    OPEN,
                    Ordering::Release,
                    Ordering::Relaxed,
                );
                return Call::Answered;
            }
            if h.turn
                .state
                .compare_exchange(PART, TAKEN, Ordering::AcqRel, Ordering::Relaxed)
                .is_err()
            {
                return self.lost_call();
            }
            wake_if_waiting(&h.turn.state, &h.sleep.worker);
        }
    }

    /// Gives a claimed lane back to the worker without a call.
    pub(crate) fn unclaim(&self) -> Call {
        let _ = self.header().turn.state.compare_exchange(
            CLAIMED,
            OPEN,
            Ordering::Release,
            Ordering::Relaxed,
        );
        Call::NotRun
    }

    fn buffer(&self) -> *mut u8 {
        // SAFETY: `BUFFER_AT` is inside the mapping of `CONTROL_BYTES`.
        unsafe { self.base.add(BUFFER_AT) }
    }

    /// What became of the call in a lane found GONE: not run if the worker had not
    /// taken it, else lost, with the driver's reason.
    fn lost_call(&self) -> Call {
        // The driver holds the lock while it marks the lane GONE, so taking it here
        // waits for what it says.
        match &*crate::engine::lock(&self.lost) {
            Some(Lost { taken: false, .. }) => Call::NotRun,
            Some(Lost { why, .. }) => Call::Lost(Some(why.duplicate())),
            None => Call::Lost(None),
        }
    }

    /// The worker is gone: marks the lane GONE, with why (for a call it had taken), and
    /// wakes its caller. An answer already given is left for its caller to read; a call
    /// posted but not taken was not run.
    pub(crate) fn lose(&self, why: Error) {
        let mut lost = crate::engine::lock(&self.lost);
        let state = &self.header().turn.state;
        let before = state.fetch_update(Ordering::AcqRel, Ordering::Acquire, |s| {
            (s != ANSWERED).then_some(GONE)
        });
        *lost = Some(Lost {
            why,
            taken: before != Ok(POSTED),
        });
        drop(lost);
        crate::futex::wake_all(state);
    }

    /// The pool shuts down: waits until the lane holds no call (a call being answered
    /// finishes first, and its caller reads the answer), then marks it GONE. `alive`
    /// waits a little and says whether the worker still serves; if it does not, returns
    /// false with the lane as it is (the driver then [`lose`](Self::lose)s it, knowing
    /// how the worker ended).
    pub(crate) fn close_when_idle(&self, mut alive: impl FnMut() -> bool) -> bool {
        let state = &self.header().turn.state;
        loop {
            let s = state.load(Ordering::Acquire);
            match s {
                GONE => return true,
                // The caller is reading its answer; it opens the lane again at once.
                ANSWERED => std::thread::yield_now(),
                CLOSED | OPEN
                    if state
                        .compare_exchange(s, GONE, Ordering::AcqRel, Ordering::Relaxed)
                        .is_ok() =>
                {
                    crate::futex::wake_all(state);
                    return true;
                }
                // Lost the race (to a claim, or to the worker): look again.
                CLOSED | OPEN => {}
                _ if !alive() => return false,
                _ => {}
            }
        }
    }
}

/// A pidfd of the process `pid` (a child not yet reaped, so the pid is still its own),
/// or `None` where the kernel refuses.
fn pidfd_of(pid: u32) -> Option<OwnedFd> {
    let pid = libc::pid_t::try_from(pid).ok()?;
    // SAFETY: pidfd_open takes a pid and flags and returns a new descriptor or -1; it
    // touches no memory of ours.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
    let fd = libc::c_int::try_from(fd).ok().filter(|&fd| fd >= 0)?;
    // SAFETY: `fd` was just returned to us by the kernel, and nothing else owns it.
    Some(unsafe { OwnedFd::from_raw_fd(fd) })
}

#[cfg(test)]
mod tests;
