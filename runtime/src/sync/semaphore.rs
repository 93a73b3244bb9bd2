//! [`Semaphore`]: permits shared between processes, which a process that dies gives back.
//!
//! No count of free permits is kept. Each process that holds permits has a slot: its
//! identity (pid and start time, see [`crate::sys::robust`]) and how many it holds. The
//! free permits are the total less what the live slots hold; a slot whose process is
//! gone is emptied by the next process that finds the permits used up. The slots change
//! only under a small robust lock, one store at a time, so a process killed anywhere
//! leaves them consistent: its permits are held by a dead slot, and go back.

use std::marker::PhantomData;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::error::{Error, ErrorKind, Result};
use crate::shm::Entry;
use crate::sys::robust;

/// Marks a segment as a semaphore's.
const MAGIC: u32 = 0x5365_6d61; // "Sema"
/// Processes that may hold permits at once (more wait for a slot).
const SLOTS: usize = 128;
/// How long a waiter spins before it sleeps.
const SPIN: Duration = Duration::from_micros(20);
/// How often a sleeping waiter looks again (for permits of processes that died).
const CHECK: Duration = Duration::from_millis(10);

#[repr(C, align(64))]
struct Header {
    magic: AtomicU32,
    /// The total number of permits.
    permits: AtomicU32,
    /// Bumped by every release; waiters sleep on it.
    released: AtomicU32,
    /// Threads, in any process, asleep on `released`.
    sleepers: AtomicU32,
    /// Guards the slots (a thread's identity, or 0).
    lock: AtomicU64,
}

#[repr(C)]
struct Slot {
    /// The holding process's identity, or 0.
    holder: AtomicU64,
    /// How many permits it holds.
    held: AtomicU64,
}

#[repr(C)]
struct Layout {
    header: Header,
    slots: [Slot; SLOTS],
}

const BYTES: usize = size_of::<Layout>();

/// A counting semaphore shared between processes, like Python's
/// `multiprocessing.Semaphore`; unlike it, the permits of a process that dies while it
/// holds them go back to the semaphore (the next process that finds them used up takes
/// them back), so a crash never leaks one. Up to 128 processes may hold permits at once;
/// more wait as if no permit were free.
///
/// Made in the parent and handed to workers of any pool or to `Process` children as an
/// argument (it is `Clone + Serialize`). A permit is held by a process, not a thread: its
/// guard may move between the process's threads.
///
/// ```no_run
/// use multiproc::prelude::*;
/// use multiproc::sync::Semaphore;
///
/// #[parallel]
/// fn fetch(licences: Semaphore, x: u64) -> Result<u64, String> {
///     let _permit = licences.acquire().map_err(|e| e.to_string())?; // at most 2 at a time
///     Ok(x * 2)
/// }
///
/// fn main() -> multiproc::Result<()> {
///     let licences = Semaphore::new(2)?;
///     let pool = Pool::new(4)?;
///     let items: Vec<(Semaphore, u64)> = (0..8).map(|x| (licences.clone(), x)).collect();
///     for r in pool.map(fetch, &items)? {
///         println!("{r:?}");
///     }
///     Ok(())
/// }
/// ```
pub struct Semaphore {
    entry: Arc<Entry>,
    layout: *const Layout,
}

// SAFETY: `layout` points into the segment `entry` keeps mapped for as long as the
// semaphore lives, and is only ever accessed through atomics, from any thread.
unsafe impl Send for Semaphore {}
// SAFETY: as for `Send`.
unsafe impl Sync for Semaphore {}

impl Clone for Semaphore {
    fn clone(&self) -> Self {
        Semaphore {
            entry: Arc::clone(&self.entry),
            layout: self.layout,
        }
    }
}

impl Semaphore {
    /// A semaphore of `permits` permits, all free. `0` is [`ErrorKind::InvalidConfig`].
    pub fn new(permits: u32) -> Result<Semaphore> {
        if permits == 0 {
            return Err(Error::new(
                ErrorKind::InvalidConfig,
                "Semaphore::new(0): a semaphore needs at least one permit",
            ));
        }
        let entry = super::create_segment(BYTES)?;
        let sem = Semaphore::from_entry(entry, true)?;
        let h = sem.header();
        h.permits.store(permits, Ordering::Relaxed);
        h.magic.store(MAGIC, Ordering::Release);
        Ok(sem)
    }

    fn from_entry(entry: Arc<Entry>, fresh: bool) -> Result<Semaphore> {
        let not_mine = || {
            Error::new(
                ErrorKind::Serialization,
                "the handle is not a Semaphore's segment",
            )
        };
        let base = super::mapped(&entry, BYTES).ok_or_else(not_mine)?;
        let sem = Semaphore {
            layout: base.cast::<Layout>().cast_const(),
            entry,
        };
        if !fresh && sem.header().magic.load(Ordering::Acquire) != MAGIC {
            return Err(not_mine());
        }
        Ok(sem)
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

    /// Waits for a permit, for as long as that takes (permits of processes that died
    /// come back). Use [`acquire_timeout`](Self::acquire_timeout) to bound the wait.
    pub fn acquire(&self) -> Result<SemaphoreGuard<'_>> {
        loop {
            if let Some(guard) = self.acquire_until(None) {
                return Ok(guard);
            }
        }
    }

    /// A permit if one is free now (or held by a process that died), else `None`.
    pub fn try_acquire(&self) -> Option<SemaphoreGuard<'_>> {
        self.acquire_until(Some(Instant::now()))
    }

    /// Waits at most `timeout` for a permit: `Ok(None)` if none came free.
    pub fn acquire_timeout(&self, timeout: Duration) -> Result<Option<SemaphoreGuard<'_>>> {
        Ok(self.acquire_until(Some(Instant::now() + timeout)))
    }

    /// The permits free now (those of processes that died included).
    pub fn available(&self) -> u32 {
        let _table = robust::lock(&self.header().lock);
        let (used, _, _) = self.scan(robust::this_process(), true);
        self.header()
            .permits
            .load(Ordering::Relaxed)
            .saturating_sub(used)
    }

    /// Under the table lock: the permits live processes hold, this process's slot, and a
    /// free slot. With `reclaim`, the slots of processes that died are emptied first.
    fn scan(&self, me: u64, reclaim: bool) -> (u32, Option<usize>, Option<usize>) {
        let (mut used, mut mine, mut free) = (0u64, None, None);
        for (i, slot) in self.layout().slots.iter().enumerate() {
            let holder = slot.holder.load(Ordering::Acquire);
            if holder != 0 && holder != me && reclaim && !robust::holder_alive(holder) {
                // Its process is gone: so is its hold. Count first, then free the slot.
                slot.held.store(0, Ordering::Release);
                slot.holder.store(0, Ordering::Release);
            }
            match slot.holder.load(Ordering::Acquire) {
                0 => {
                    free.get_or_insert(i);
                }
                holder => {
                    if holder == me {
                        mine = Some(i);
                    }
                    used = used.saturating_add(slot.held.load(Ordering::Acquire));
                }
            }
        }
        (u32::try_from(used).unwrap_or(u32::MAX), mine, free)
    }

    /// One attempt, under the table lock: a permit for this process, if one is free.
    fn try_take(&self, me: u64, reclaim: bool) -> Option<usize> {
        let permits = self.header().permits.load(Ordering::Relaxed);
        let _table = robust::lock(&self.header().lock);
        let (used, mine, free) = self.scan(me, reclaim);
        if used >= permits {
            return None;
        }
        let at = mine.or(free)?;
        let slot = &self.layout().slots[at];
        if mine.is_none() {
            // An empty slot: claimed holding nothing, then the permit (a process killed
            // in between leaves a slot of 0 permits, which the next reclaim empties).
            slot.held.store(0, Ordering::Release);
            slot.holder.store(me, Ordering::Release);
        }
        slot.held.fetch_add(1, Ordering::AcqRel);
        Some(at)
    }

    fn acquire_until(&self, deadline: Option<Instant>) -> Option<SemaphoreGuard<'_>> {
        let h = self.header();
        let me = robust::this_process();
        let started = Instant::now();
        loop {
            let seen = h.released.load(Ordering::SeqCst);
            if let Some(at) = self.try_take(me, false) {
                return Some(self.guard(at));
            }
            let now = Instant::now();
            let last = deadline.is_some_and(|at| now >= at);
            if now.duration_since(started) < SPIN && !last {
                std::hint::spin_loop();
                continue;
            }
            // Before each sleep and at the end: take back the permits of the dead.
            if let Some(at) = self.try_take(me, true) {
                return Some(self.guard(at));
            }
            let slice = match deadline {
                Some(_) if last => return None,
                Some(at) => at.saturating_duration_since(now).min(CHECK),
                None => CHECK,
            };
            crate::sys::futex::sleep_counted(&h.released, &h.sleepers, slice, || Some(seen));
        }
    }

    fn guard(&self, slot: usize) -> SemaphoreGuard<'_> {
        SemaphoreGuard {
            sem: self,
            slot,
            _held: PhantomData,
        }
    }
}

/// A permit of a [`Semaphore`], held by this process until the guard is dropped.
pub struct SemaphoreGuard<'a> {
    sem: &'a Semaphore,
    slot: usize,
    _held: PhantomData<&'a ()>,
}

impl Drop for SemaphoreGuard<'_> {
    fn drop(&mut self) {
        let h = self.sem.header();
        {
            let _table = robust::lock(&h.lock);
            let slot = &self.sem.layout().slots[self.slot];
            let left = slot.held.load(Ordering::Acquire).saturating_sub(1);
            slot.held.store(left, Ordering::Release);
            if left == 0 {
                slot.holder.store(0, Ordering::Release);
            }
        }
        // Always bumped: a waiter read it before it looked at the slots, so a release
        // after that look makes its sleep return at once. The system call only when
        // someone sleeps.
        h.released.fetch_add(1, Ordering::SeqCst);
        crate::sys::futex::if_sleeping(&h.sleepers, || crate::sys::futex::wake_all(&h.released));
    }
}

impl std::fmt::Debug for SemaphoreGuard<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SemaphoreGuard").finish_non_exhaustive()
    }
}

impl std::fmt::Debug for Semaphore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Semaphore")
            .field("permits", &self.header().permits.load(Ordering::Relaxed))
            .finish_non_exhaustive()
    }
}

impl Serialize for Semaphore {
    fn serialize<S: Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        crate::shm::serialize_entry(&self.entry, s)
    }
}

impl<'de> Deserialize<'de> for Semaphore {
    fn deserialize<D: Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        let entry = crate::shm::deserialize_entry(d)?;
        Semaphore::from_entry(entry, false).map_err(<D::Error as serde::de::Error>::custom)
    }
}
