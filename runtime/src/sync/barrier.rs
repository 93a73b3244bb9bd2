//! [`Barrier`]: a rendezvous of `n` parties across processes that a dead party breaks
//! instead of hanging.
//!
//! The state lives under a small robust lock: the parties that arrived in this round
//! (their thread identities, see [`crate::sys::robust`]) and those that arrived in the
//! last one. A party that arrived last round is due in this one; a waiter looks, every
//! `CHECK` while it sleeps, whether a due party that has not arrived is dead, and if so
//! breaks the barrier: every waiter, now and later, gets `WorkerDied`. The last party to
//! arrive ends the round with one store of the round number, after the rest is written;
//! a last party killed before that store leaves `arrived == parties`, which the next
//! holder of the lock finishes for it.

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::error::{Error, ErrorKind, Result};
use crate::shm::Entry;
use crate::sys::robust;

/// Marks a segment as a barrier's.
const MAGIC: u32 = 0x4261_7272; // "Barr"
/// The most parties a barrier may have.
const MAX_PARTIES: usize = 256;
/// How long a waiter spins before it sleeps.
const SPIN: Duration = Duration::from_micros(50);
/// How often a sleeping waiter looks for due parties that died.
const CHECK: Duration = Duration::from_millis(10);

#[repr(C, align(64))]
struct Header {
    magic: AtomicU32,
    parties: AtomicU32,
    /// The round, bumped when the last party arrives, or when the barrier breaks;
    /// waiters sleep on it.
    round: AtomicU32,
    /// Threads, in any process, asleep on `round`.
    sleepers: AtomicU32,
    /// Guards the rest.
    lock: AtomicU64,
    /// Parties arrived in this round.
    arrived: AtomicU32,
    /// Nonzero once a due party died: the thread id of the one found dead.
    broken: AtomicU32,
}

#[repr(C)]
struct Layout {
    header: Header,
    /// The identities of the parties arrived in this round, then of the last round's.
    now: [AtomicU64; MAX_PARTIES],
    last: [AtomicU64; MAX_PARTIES],
}

const BYTES: usize = size_of::<Layout>();

/// What [`Barrier::wait`] returns: whether this party is the round's leader.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BarrierWaitResult {
    leader: bool,
}

impl BarrierWaitResult {
    /// True for exactly one party per round: the last to arrive.
    pub fn is_leader(&self) -> bool {
        self.leader
    }
}

/// A rendezvous of `n` parties, in any processes, like Python's
/// `multiprocessing.Barrier`: each [`wait`](Self::wait) returns once `n` have waited,
/// and one of them is the round's leader. Unlike Python's, a party that dies does not
/// hang the others: if a party that took part in the last round dies before it arrives
/// in this one, every waiter gets [`ErrorKind::WorkerDied`], and so does every later
/// `wait` (the barrier is broken for good, as Python's `BrokenBarrierError`). A party
/// that dies before its first round cannot be known as one: bound that wait with
/// [`wait_timeout`](Self::wait_timeout).
///
/// ```no_run
/// use multiproc::prelude::*;
/// use multiproc::sync::Barrier;
///
/// #[parallel]
/// fn step(barrier: Barrier, rounds: u32) -> Result<u32, String> {
///     let mut led = 0;
///     for _ in 0..rounds {
///         if barrier.wait().map_err(|e| e.to_string())?.is_leader() {
///             led += 1;
///         }
///     }
///     Ok(led)
/// }
///
/// fn main() -> multiproc::Result<()> {
///     let barrier = Barrier::new(2)?;
///     let a = Process::spawn(step, (barrier.clone(), 100))?;
///     let b = Process::spawn(step, (barrier.clone(), 100))?;
///     let led = a.join()?.unwrap_or(0) + b.join()?.unwrap_or(0);
///     assert_eq!(led, 100); // one leader per round
///     Ok(())
/// }
/// ```
pub struct Barrier {
    entry: Arc<Entry>,
    layout: *const Layout,
}

// SAFETY: `layout` points into the segment `entry` keeps mapped for as long as the
// barrier lives, and is only ever accessed through atomics, from any thread.
unsafe impl Send for Barrier {}
// SAFETY: as for `Send`.
unsafe impl Sync for Barrier {}

impl Clone for Barrier {
    fn clone(&self) -> Self {
        Barrier {
            entry: Arc::clone(&self.entry),
            layout: self.layout,
        }
    }
}

impl Barrier {
    /// A barrier of `parties` parties (1 to 256; others are
    /// [`ErrorKind::InvalidConfig`]).
    pub fn new(parties: usize) -> Result<Barrier> {
        if parties == 0 || parties > MAX_PARTIES {
            return Err(Error::new(
                ErrorKind::InvalidConfig,
                format!("Barrier::new({parties}): a barrier has 1 to {MAX_PARTIES} parties"),
            ));
        }
        let entry = super::create_segment(BYTES)?;
        let barrier = Barrier::from_entry(entry, true)?;
        let h = barrier.header();
        h.parties.store(parties as u32, Ordering::Relaxed);
        h.magic.store(MAGIC, Ordering::Release);
        Ok(barrier)
    }

    fn from_entry(entry: Arc<Entry>, fresh: bool) -> Result<Barrier> {
        let not_mine = || {
            Error::new(
                ErrorKind::Serialization,
                "the handle is not a Barrier's segment",
            )
        };
        let base = super::mapped(&entry, BYTES).ok_or_else(not_mine)?;
        let barrier = Barrier {
            layout: base.cast::<Layout>().cast_const(),
            entry,
        };
        if !fresh && barrier.header().magic.load(Ordering::Acquire) != MAGIC {
            return Err(not_mine());
        }
        Ok(barrier)
    }

    fn layout(&self) -> &Layout {
        // SAFETY: `layout` starts a writable, page-aligned shared mapping of at least
        // `BYTES` (checked in `from_entry`), kept mapped by `entry` for as long as `self`
        // lives; `Layout` is all atomics, valid for any bytes another process wrote.
        unsafe { &*self.layout }
    }

    fn header(&self) -> &Header {
        &self.layout().header
    }

    /// The number of parties, clamped to what the layout holds (another process could
    /// have written anything there).
    fn parties(&self) -> usize {
        (self.header().parties.load(Ordering::Relaxed) as usize).clamp(1, MAX_PARTIES)
    }

    /// Waits until all parties have waited. `Err(WorkerDied)` if the barrier is broken
    /// (a due party died). Waits for as long as that takes otherwise.
    pub fn wait(&self) -> Result<BarrierWaitResult> {
        self.wait_until(None)
            .map(|r| r.unwrap_or(BarrierWaitResult { leader: false }))
    }

    /// Like [`wait`](Self::wait), at most `timeout`: `Ok(None)` if the round did not end
    /// in time. This party stays counted as arrived in that round.
    pub fn wait_timeout(&self, timeout: Duration) -> Result<Option<BarrierWaitResult>> {
        self.wait_until(Some(Instant::now() + timeout))
    }

    fn broken_error(tid: u32) -> Error {
        Error::new(
            ErrorKind::WorkerDied,
            format!(
                "the barrier is broken: a party that took part in the last round (thread \
                 {tid}) died before it arrived in this one"
            ),
        )
    }

    /// Ends the round whose parties have all arrived: this round's arrivals become the
    /// last round's, and the round number moves on (last, so that a holder killed
    /// before it leaves `arrived == parties` for the next one to finish).
    fn end_round(&self, round: u32) {
        let (h, l) = (self.header(), self.layout());
        let parties = self.parties();
        for i in 0..MAX_PARTIES {
            let id = if i < parties {
                l.now[i].load(Ordering::Relaxed)
            } else {
                0
            };
            l.last[i].store(id, Ordering::Relaxed);
        }
        h.arrived.store(0, Ordering::Relaxed);
        h.round.store(round.wrapping_add(1), Ordering::Release);
        crate::sys::futex::if_sleeping(&h.sleepers, || crate::sys::futex::wake_all(&h.round));
    }

    /// Under the lock: finishes a round a killed leader left, and says whether it is
    /// broken.
    fn repair(&self) -> Result<()> {
        let h = self.header();
        let broken = h.broken.load(Ordering::Acquire);
        if broken != 0 {
            return Err(Barrier::broken_error(broken));
        }
        if h.arrived.load(Ordering::Acquire) as usize >= self.parties() {
            self.end_round(h.round.load(Ordering::Acquire));
        }
        Ok(())
    }

    fn wait_until(&self, deadline: Option<Instant>) -> Result<Option<BarrierWaitResult>> {
        let (h, l) = (self.header(), self.layout());
        let me = robust::me();
        let round = {
            let _lock = robust::lock(&h.lock);
            self.repair()?;
            let round = h.round.load(Ordering::Acquire);
            let at = h.arrived.load(Ordering::Acquire) as usize;
            l.now[at.min(MAX_PARTIES - 1)].store(me, Ordering::Relaxed);
            h.arrived.store(at as u32 + 1, Ordering::Release);
            if at + 1 >= self.parties() {
                self.end_round(round);
                return Ok(Some(BarrierWaitResult { leader: true }));
            }
            round
        };
        let started = Instant::now();
        let mut next_check = started + CHECK;
        loop {
            if h.round.load(Ordering::Acquire) != round {
                let broken = h.broken.load(Ordering::Acquire);
                if broken != 0 {
                    return Err(Barrier::broken_error(broken));
                }
                return Ok(Some(BarrierWaitResult { leader: false }));
            }
            let now = Instant::now();
            if deadline.is_some_and(|at| now >= at) {
                return Ok(None);
            }
            if now.duration_since(started) < SPIN {
                std::hint::spin_loop();
                continue;
            }
            if now >= next_check {
                next_check = now + CHECK;
                self.look_for_the_dead(round);
                continue;
            }
            let mut slice = next_check.saturating_duration_since(now);
            if let Some(at) = deadline {
                slice = slice.min(at.saturating_duration_since(now));
            }
            crate::sys::futex::sleep_counted(&h.round, &h.sleepers, slice, || {
                (h.round.load(Ordering::Acquire) == round).then_some(round)
            });
        }
    }

    /// Breaks the barrier if a party due in `round` (one that arrived in the last round)
    /// has not arrived and is dead.
    fn look_for_the_dead(&self, round: u32) {
        let (h, l) = (self.header(), self.layout());
        let _lock = robust::lock(&h.lock);
        if h.round.load(Ordering::Acquire) != round || h.broken.load(Ordering::Acquire) != 0 {
            return;
        }
        let parties = self.parties();
        let arrived = (h.arrived.load(Ordering::Acquire) as usize).min(parties);
        let here: Vec<u64> = (0..arrived)
            .map(|i| l.now[i].load(Ordering::Relaxed))
            .collect();
        for i in 0..parties {
            let due = l.last[i].load(Ordering::Relaxed);
            if due != 0 && !here.contains(&due) && !robust::holder_alive(due) {
                let tid = ((due >> 32) as u32).max(1);
                h.broken.store(tid, Ordering::Release);
                h.round.store(round.wrapping_add(1), Ordering::Release);
                crate::sys::futex::wake_all(&h.round);
                return;
            }
        }
    }
}

impl std::fmt::Debug for Barrier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Barrier")
            .field("parties", &self.parties())
            .field(
                "broken",
                &(self.header().broken.load(Ordering::Relaxed) != 0),
            )
            .finish()
    }
}

impl Serialize for Barrier {
    fn serialize<S: Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        crate::shm::serialize_entry(&self.entry, s)
    }
}

impl<'de> Deserialize<'de> for Barrier {
    fn deserialize<D: Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        let entry = crate::shm::deserialize_entry(d)?;
        Barrier::from_entry(entry, false).map_err(<D::Error as serde::de::Error>::custom)
    }
}
