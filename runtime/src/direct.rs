//! The direct path of a blocking `apply`: the caller hands its task to an idle worker
//! through shared memory, and the worker hands the answer back the same way. While both
//! sides watch the direct path, a call makes no system call and wakes no thread. The
//! usual path (the pool's queue, the worker's driver thread, its socket) costs two kernel
//! wake-ups per call, the worker's and then the driver's: more than all the rest of a
//! small `apply` together.
//!
//! Each worker has one direct path, in the control segment its driver sends it at
//! start-up, after the progress word and the death note. The parent's end is a
//! [`ParentEnd`], shared by the worker's driver and the callers that find it open; the
//! worker's is a [`WorkerEnd`]. A worker with nothing to do keeps its direct path open
//! for a short while ([`OPEN_FOR`], renewed by each call) before it blocks on its socket,
//! if a caller has invited it (a caller that finds no direct path open invites them all,
//! and goes through the queue); a caller that finds an open direct path claims it, writes
//! its `Run` frame there and waits for the `Done` frame in the same place. A direct path
//! open a whole window for nothing drops its invitation, so that workers do not take the
//! cores from a parent busy with anything but `apply`s. Every other call takes the usual
//! path: no direct path open, a frame too large for the direct path or carrying
//! shared-memory handles, a worker holding segments (their release travels with its
//! driver's next frame), or a pool with a time limit or a quota per worker (its driver
//! enforces those, and it does not see direct calls).
//!
//! A driver about to write to its worker's socket kicks the worker (which then leaves the
//! direct path for its socket) and closes an open direct path itself, so that no call
//! claims the worker between the driver's taking a job and its write; if a call has
//! claimed the direct path already, the driver puts its jobs back in the queue, for
//! another worker.
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

use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use crate::error::{Error, Result};
use crate::sys::lock::lock;
use crate::sys::segment::{Pages, Segment, ShmBackend};

mod call;
mod worker;

pub(crate) use call::{Outcome, call, fits};
#[cfg(test)]
use worker::Idle;
pub(crate) use worker::WorkerEnd;

/// The note a worker leaves in its control segment when a task overflowed its stack.
pub(crate) const STACK_OVERFLOW: u64 = 1;
/// The note a worker leaves when a task closed (or replaced) the worker's socket: the
/// chunk that ran last did it, though the worker only finds out when it answers.
pub(crate) const SOCKET_TAKEN: u64 = 2;
/// The note a worker leaves when its private resident memory went over the pool's limit
/// (it then kills itself); how much it reached is in the memory word.
pub(crate) const MEMORY_LIMIT: u64 = 3;
/// Where, in the control segment, the worker records its progress (see `task::note`).
pub(crate) const PROGRESS_AT: usize = 0;
/// Where, in the control segment, a dying worker leaves its note.
pub(crate) const DEATH_NOTE_AT: usize = 8;
/// Where a worker over its memory limit records the bytes it reached.
const MEMORY_AT: usize = 16;
/// Where a worker counts the items it ran, ...
const ITEMS_AT: usize = 24;
/// ... those of them that failed (a panic, a value that did not serialize), ...
const FAILED_AT: usize = 32;
/// ... and the nanoseconds it spent running them.
const BUSY_AT: usize = 40;
const _: () = assert!(BUSY_AT + 8 <= HEADER_AT);

/// The size of a worker's control segment: the progress word, the direct path's header, and
/// the direct path's buffer from [`BUFFER_AT`] on.
pub(crate) const CONTROL_BYTES: usize = 64 << 10;
/// Where the direct path's header starts in the control segment (the progress word is
/// first).
const HEADER_AT: usize = 64;
/// Where the direct path's buffer starts in the control segment.
const BUFFER_AT: usize = 4096;
/// The largest frame a caller may post, and the largest part of an answer.
pub(crate) const CAPACITY: usize = CONTROL_BYTES - BUFFER_AT;

/// How long an idle worker keeps its direct path open before it blocks on its socket: long
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

/// The direct path's header in shared memory; each line is written by as few sides as can
/// be.
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
    /// watches its direct path then goes to read its socket.
    count: AtomicU32,
    /// Set by a caller that found no direct path open; cleared by the worker when its
    /// direct path was open a whole window for nothing. A worker keeps its direct path
    /// open only while invited, so that its looking costs the machine nothing while no
    /// `apply` wants it (in a `map`, say, where the parent needs every core to feed the
    /// workers).
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

/// The header of the direct path in the control segment mapped at `base`.
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
    crate::sys::futex::if_sleeping(sleepers, || crate::sys::futex::wake_all(state));
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
        crate::sys::futex::sleep_counted(state, sleepers, slice, || {
            let s = state.load(Ordering::SeqCst);
            waiting(s).then_some(s)
        });
        between();
    }
}

/// The words at the start of a worker's control segment, for the worker's side.
#[derive(Clone, Copy)]
pub(crate) struct Words {
    /// Where it records which item it runs (see `task::note`).
    pub progress: &'static AtomicU64,
    /// Where, dying, it leaves a note ([`STACK_OVERFLOW`], [`SOCKET_TAKEN`],
    /// [`MEMORY_LIMIT`]).
    pub death_note: &'static AtomicU64,
    /// The bytes it reached, over its memory limit.
    pub memory: &'static AtomicU64,
    /// Its counters: items run, items failed, nanoseconds busy (only it writes them).
    pub items: &'static AtomicU64,
    pub failed: &'static AtomicU64,
    pub busy: &'static AtomicU64,
}

/// The words of `control`, a control segment mapped for the rest of the process's life;
/// `None` if it is not a writable segment of [`CONTROL_BYTES`].
pub(crate) fn words(control: &'static Segment) -> Option<Words> {
    let base = control_base(control)?;
    // SAFETY: `base` starts a live, page-aligned, writable shared mapping of
    // `CONTROL_BYTES` that lives for `'static` (checked by `control_base`); every word
    // is inside it (before the header, asserted), 8-aligned, and only ever accessed
    // atomically, by either side.
    let word = |at: usize| unsafe { &*base.add(at).cast::<AtomicU64>() };
    Some(Words {
        progress: word(PROGRESS_AT),
        death_note: word(DEATH_NOTE_AT),
        memory: word(MEMORY_AT),
        items: word(ITEMS_AT),
        failed: word(FAILED_AT),
        busy: word(BUSY_AT),
    })
}

/// What a worker counted of its own work, as its control segment says.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Counters {
    pub items: u64,
    pub failed: u64,
    pub busy_nanos: u64,
}

/// The start of `control`'s mapping, if it is a writable segment of [`CONTROL_BYTES`]
/// (segments are mapped page-aligned).
fn control_base(control: &Segment) -> Option<*mut u8> {
    (control.len() == CONTROL_BYTES)
        .then(|| control.as_mut_ptr())
        .flatten()
}

/// What became of a call through a direct path.
pub(crate) enum Call {
    /// The worker answered; the answer (a frame's payload) is in the caller's buffer.
    Answered,
    /// The direct path was given up, or the worker lost, before the worker took the call:
    /// it never ran.
    NotRun,
    /// The worker is gone after it took the call; why, as the driver described it.
    Lost(Option<Error>),
}

/// Why a direct path is gone, as its driver said.
struct Lost {
    why: Error,
    /// Whether the worker had taken the call in the direct path (a call still POSTED had
    /// not started).
    taken: bool,
}

/// The parent's side of a worker's direct path, kept by the worker's driver and shared with
/// the callers that find it open.
pub(crate) struct ParentEnd {
    control: Segment,
    base: *mut u8,
    pid: u32,
    /// A pidfd of the worker, readable once it has exited: callers asleep in the direct
    /// path look at it, and wake the driver only when the worker is gone. `None` where
    /// the kernel has no pidfds.
    exit_watch: Option<OwnedFd>,
    /// Why the worker was lost, set by the driver while it marks the direct path GONE.
    lost: Mutex<Option<Lost>>,
    /// How many shared-memory segments the worker holds, as its driver last wrote to it.
    /// Calls skip the direct path of a worker that holds any: the driver tells the worker
    /// which ones it may release in front of the next frame it writes, so calls must keep
    /// going through it, or the worker would keep segments the parent dropped.
    segments_held: AtomicUsize,
}

// SAFETY: `base` points into `control`, a shared mapping that lives as long as the direct
// path; the header is only touched through atomics, and the buffer only by the side whose
// turn the state word says it is.
unsafe impl Send for ParentEnd {}
// SAFETY: see `Send`.
unsafe impl Sync for ParentEnd {}

impl ParentEnd {
    /// Creates the control segment for the worker `pid` (to be sent to it).
    pub(crate) fn create(pid: u32) -> Result<ParentEnd> {
        let control = Segment::create_writable(ShmBackend::Memfd, CONTROL_BYTES, Pages::Now)?;
        let base = control.as_mut_ptr().ok_or_else(|| {
            Error::new(
                crate::error::ErrorKind::Protocol,
                "the control segment is not writable",
            )
        })?;
        Ok(ParentEnd {
            control,
            base,
            pid,
            exit_watch: crate::sys::process::pidfd(pid),
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

    /// The worker this direct path leads to.
    pub(crate) fn pid(&self) -> u32 {
        self.pid
    }

    /// The worker's last progress record (the first word of the control segment).
    pub(crate) fn progress_record(&self) -> u64 {
        // SAFETY: the control segment is a live, page-aligned mapping whose first 8 bytes
        // the worker only ever stores to atomically.
        unsafe { (*self.base.add(PROGRESS_AT).cast::<AtomicU64>()).load(Ordering::Acquire) }
    }

    /// What the worker noted about its own death (the second word of the control
    /// segment): 0, [`STACK_OVERFLOW`], [`SOCKET_TAKEN`] or [`MEMORY_LIMIT`].
    pub(crate) fn death_note(&self) -> u64 {
        self.word(DEATH_NOTE_AT)
    }

    /// The bytes a worker that went over its memory limit reached (0 if it did not).
    pub(crate) fn memory_reached(&self) -> u64 {
        self.word(MEMORY_AT)
    }

    /// What the worker counted of its own work so far.
    pub(crate) fn counters(&self) -> Counters {
        Counters {
            items: self.word(ITEMS_AT),
            failed: self.word(FAILED_AT),
            busy_nanos: self.word(BUSY_AT),
        }
    }

    /// The word at `at`, one of the worker's words before the direct path's header.
    fn word(&self, at: usize) -> u64 {
        debug_assert!(at.is_multiple_of(8) && at + 8 <= HEADER_AT);
        // SAFETY: the control segment is a live, page-aligned mapping of `CONTROL_BYTES`
        // that lives as long as `self`; every caller passes one of the constant offsets
        // above, 8-aligned and before the header (asserted at compile time for the last
        // one), and those words are only ever accessed atomically.
        unsafe { (*self.base.add(at).cast::<AtomicU64>()).load(Ordering::Acquire) }
    }

    /// Tells a worker watching its direct path that frames are coming on its socket.
    pub(crate) fn kick(&self) {
        self.header().kick.count.fetch_add(1, Ordering::Release);
    }

    /// Whether a call is in the direct path (claimed, posted, running or being answered):
    /// the worker is busy with it.
    pub(crate) fn in_call(&self) -> bool {
        matches!(
            self.header().turn.state.load(Ordering::Acquire),
            CLAIMED | POSTED | RUNNING | PART | TAKEN
        )
    }

    /// Puts the direct path in a call's hands, as a caller's claim does (for tests of the
    /// parent's side, which have no worker to open the direct path).
    #[cfg(test)]
    pub(crate) fn claim_for_test(&self) {
        self.header().turn.state.store(CLAIMED, Ordering::SeqCst);
    }

    /// Whether the worker's pidfd says it has exited; `unknown` without a pidfd, or if
    /// asking it fails.
    fn pidfd_says_exited(&self, unknown: bool) -> bool {
        self.exit_watch.as_ref().map_or(unknown, |fd| {
            crate::sys::process::has_exited(fd).unwrap_or(unknown)
        })
    }

    /// Whether the worker has exited, as its pidfd says (false without a pidfd).
    pub(crate) fn worker_has_exited(&self) -> bool {
        self.pidfd_says_exited(false)
    }

    /// The worker's pidfd (readable once it has exited), if the kernel has pidfds.
    pub(crate) fn exit_fd(&self) -> Option<BorrowedFd<'_>> {
        self.exit_watch.as_ref().map(AsFd::as_fd)
    }

    /// Whether the worker may have exited: its pidfd says so, or there is none to ask.
    pub(crate) fn worker_may_have_exited(&self) -> bool {
        self.pidfd_says_exited(true)
    }

    /// Before its driver writes to the worker's socket (after [`kick`](Self::kick), which
    /// keeps the worker from opening the direct path again): takes an open direct path
    /// from callers, so that no call can claim it and keep the frames waiting. False if a
    /// call holds the direct path already: frames written now would wait for it.
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
                // Its caller is reading the answer, and opens the direct path again at
                // once; closing it under the caller would let the next call overwrite the
                // answer being read.
                ANSWERED => std::thread::yield_now(),
                CLAIMED | POSTED | RUNNING | PART | TAKEN => return false,
                // Closed (the worker is not watching it), or gone.
                _ => return true,
            }
        }
    }

    /// Asks the worker to keep its direct path open when it is next idle.
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

    /// Claims the direct path for one call if the worker keeps it open now (and holds no
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
        // SAFETY: the direct path is claimed, so the buffer is ours until we post;
        // `payload` fits in it (checked), and it cannot overlap the caller's own memory.
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
                // Open again for the next call: the worker still watches the direct path
                // (it does not leave while an answer is being read), so the caller's next
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

    /// Gives a claimed direct path back to the worker without a call.
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

    /// What became of the call in a direct path found GONE: not run if the worker had not
    /// taken it, else lost, with the driver's reason.
    fn lost_call(&self) -> Call {
        // The driver holds the lock while it marks the direct path GONE, so taking it here
        // waits for what it says.
        match &*lock(&self.lost) {
            Some(Lost { taken: false, .. }) => Call::NotRun,
            Some(Lost { why, .. }) => Call::Lost(Some(why.duplicate())),
            None => Call::Lost(None),
        }
    }

    /// The worker is gone: marks the direct path GONE, with why (for a call it had
    /// taken), and wakes its caller. An answer already given is left for its caller to
    /// read; a call posted but not taken was not run.
    pub(crate) fn lose(&self, why: Error) {
        let mut lost = lock(&self.lost);
        let state = &self.header().turn.state;
        let before = state.fetch_update(Ordering::AcqRel, Ordering::Acquire, |s| {
            (s != ANSWERED).then_some(GONE)
        });
        *lost = Some(Lost {
            why,
            taken: before != Ok(POSTED),
        });
        drop(lost);
        crate::sys::futex::wake_all(state);
    }

    /// The pool shuts down: waits until the direct path holds no call (a call being
    /// answered finishes first, and its caller reads the answer), then marks it GONE.
    /// `alive` waits a little and says whether the worker still serves; if it does not,
    /// returns false with the direct path as it is (the driver then [`lose`](Self::lose)s
    /// it, knowing how the worker ended).
    pub(crate) fn close_when_idle(&self, mut alive: impl FnMut() -> bool) -> bool {
        let state = &self.header().turn.state;
        loop {
            let s = state.load(Ordering::Acquire);
            match s {
                GONE => return true,
                // The caller is reading its answer; it opens the direct path again at once.
                ANSWERED => std::thread::yield_now(),
                CLOSED | OPEN
                    if state
                        .compare_exchange(s, GONE, Ordering::AcqRel, Ordering::Relaxed)
                        .is_ok() =>
                {
                    crate::sys::futex::wake_all(state);
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

#[cfg(test)]
mod tests;
