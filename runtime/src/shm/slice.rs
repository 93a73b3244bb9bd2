//! [`SharedSlice<T>`]: numbers in shared memory, read by workers without a copy, and
//! [`SharedSliceMut<T>`]: a result buffer that workers fill in disjoint, checked ranges.

use std::marker::PhantomData;
use std::ops::{Deref, DerefMut};
use std::sync::Arc;
use std::sync::atomic::{AtomicU8, AtomicU64, Ordering};

use bytemuck::Pod;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use super::{Claim, Entry, Pages, Segment, ShmBackend, lock};
use crate::error::{Error, ErrorKind, Result};

/// A read-only slice of plain numbers (`bytemuck::Pod`) in shared memory.
///
/// ```no_run
/// use multiproc::prelude::*;
///
/// #[parallel]
/// fn sum(part: SharedSlice<f64>) -> f64 {
///     part.iter().sum() // reads the shared pages, no copy
/// }
///
/// fn main() -> multiproc::Result<()> {
///     let floats: Vec<f64> = (0..(4 << 20)).map(f64::from).collect();
///     let xs = SharedSlice::from_slice(&floats)?; // one copy, into shared memory
///     let sums = xs.views(1 << 20)?.par_map(sum)?; // views: a few bytes each
///     assert_eq!(sums.len(), 4);
///     Ok(())
/// }
/// ```
///
/// The handle is `Clone` and serializes to a few bytes (segment, offset, length); it derefs
/// to `[T]` in the parent and in workers, where the segment is mapped read-only: the
/// segment is sealed, so no process can write to it.
pub struct SharedSlice<T> {
    entry: Arc<Entry>,
    /// In elements.
    offset: usize,
    len: usize,
    _t: PhantomData<fn() -> T>,
}

impl<T> Clone for SharedSlice<T> {
    fn clone(&self) -> Self {
        SharedSlice {
            entry: Arc::clone(&self.entry),
            offset: self.offset,
            len: self.len,
            _t: PhantomData,
        }
    }
}

impl<T: Pod> SharedSlice<T> {
    /// Copies `data` once into a new, sealed shared-memory segment.
    pub fn from_slice(data: &[T]) -> Result<SharedSlice<T>> {
        SharedSlice::from_slice_with(data, crate::sys::segment::default_backend())
    }

    /// Like [`from_slice`](Self::from_slice), with the segment kind chosen explicitly.
    pub fn from_slice_with(data: &[T], backend: ShmBackend) -> Result<SharedSlice<T>> {
        let bytes: &[u8] = bytemuck::cast_slice(data);
        let segment = Segment::create(backend, bytes)?;
        let entry = Entry::new(segment);
        super::register_created(&entry);
        Ok(SharedSlice {
            entry,
            offset: 0,
            len: data.len(),
            _t: PhantomData,
        })
    }

    /// Views of at most `n` elements each, covering the slice in order. Each view
    /// serializes to a few bytes and shares this slice's memory. `n == 0` is
    /// [`ErrorKind::InvalidConfig`].
    pub fn views(&self, n: usize) -> Result<Vec<SharedSlice<T>>> {
        Ok(chunk_ranges(self.len, n, "SharedSlice::views")?
            .map(|(start, len)| SharedSlice {
                entry: Arc::clone(&self.entry),
                offset: self.offset + start,
                len,
                _t: PhantomData,
            })
            .collect())
    }

    /// The old name of [`views`](Self::views). It shadowed `<[T]>::chunks`, which a
    /// `SharedSlice` also has through `Deref`, with another signature.
    #[deprecated(since = "0.1.0", note = "use `views`; `chunks` is `<[T]>::chunks`")]
    pub fn chunks(&self, n: usize) -> Result<Vec<SharedSlice<T>>> {
        self.views(n)
    }

    /// The view's first element's position in the whole slice.
    pub fn offset(&self) -> usize {
        self.offset
    }
}

impl<T: Pod> Deref for SharedSlice<T> {
    type Target = [T];

    fn deref(&self) -> &[T] {
        if self.len == 0 {
            return &[];
        }
        let size = size_of::<T>();
        let bytes =
            &self.entry.segment.bytes()[self.offset * size..(self.offset + self.len) * size];
        bytemuck::cast_slice(bytes)
    }
}

impl<T: Pod + std::fmt::Debug> std::fmt::Debug for SharedSlice<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SharedSlice")
            .field("offset", &self.offset)
            .field("len", &self.len)
            .finish()
    }
}

/// `(start, len)` of consecutive ranges of at most `n` of `len` elements; `n == 0` is
/// [`ErrorKind::InvalidConfig`], named after the calling method `what`.
fn chunk_ranges(len: usize, n: usize, what: &str) -> Result<impl Iterator<Item = (usize, usize)>> {
    if n == 0 {
        return Err(Error::new(
            ErrorKind::InvalidConfig,
            format!("{what}(0): a chunk needs at least one element"),
        ));
    }
    Ok((0..len)
        .step_by(n)
        .map(move |start| (start, n.min(len - start))))
}

/// What a slice handle is on the wire.
#[derive(Serialize, Deserialize)]
struct Wire {
    id: u64,
    offset: u64,
    len: u64,
}

impl Wire {
    /// Writes the handle of `len` items from `offset` in `entry`'s segment, and notes
    /// that the segment leaves with the message being encoded.
    fn write<S: Serializer>(
        entry: &Arc<Entry>,
        offset: usize,
        len: usize,
        s: S,
    ) -> std::result::Result<S::Ok, S::Error> {
        super::note_outgoing(entry);
        Wire {
            id: entry.segment.id(),
            offset: offset as u64,
            len: len as u64,
        }
        .serialize(s)
    }
}

impl<T> Serialize for SharedSlice<T> {
    fn serialize<S: Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        Wire::write(&self.entry, self.offset, self.len, s)
    }
}

/// Looks up a handle's segment and checks that its range lies inside it.
fn resolve_range<E: serde::de::Error>(
    w: &Wire,
    elem: usize,
) -> std::result::Result<(Arc<Entry>, usize, usize), E> {
    let entry = super::resolve(w.id).ok_or_else(|| super::missing::<E>(w.id))?;
    let offset = usize::try_from(w.offset).map_err(|_| E::custom("offset out of range"))?;
    let len = usize::try_from(w.len).map_err(|_| E::custom("length out of range"))?;
    let end_bytes = offset
        .checked_add(len)
        .and_then(|end| end.checked_mul(elem))
        .filter(|&end| end <= entry.segment.len());
    if end_bytes.is_none() {
        return Err(E::custom(format_args!(
            "a shared slice handle claims elements {offset}..{} of a segment of {} bytes",
            offset.saturating_add(len),
            entry.segment.len()
        )));
    }
    Ok((entry, offset, len))
}

impl<'de, T: Pod> Deserialize<'de> for SharedSlice<T> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        let w = Wire::deserialize(d)?;
        let (entry, offset, len) = resolve_range(&w, size_of::<T>())?;
        Ok(SharedSlice {
            entry,
            offset,
            len,
            _t: PhantomData,
        })
    }
}

/// A writable slice of plain numbers in shared memory, filled by workers.
///
/// ```no_run
/// use multiproc::prelude::*;
/// use multiproc::{SharedChunkMut, SharedSliceMut};
///
/// #[parallel]
/// fn fill(mut part: SharedChunkMut<f64>) {
///     let start = part.offset();
///     for (i, x) in part.iter_mut().enumerate() {
///         *x = (start + i) as f64;
///     }
/// }
///
/// # fn main() -> multiproc::Result<()> {
/// let pool = Pool::new(2)?;
/// let mut out = SharedSliceMut::<f64>::zeroed(1 << 20)?;
/// let parts = out.chunks_mut(1 << 16)?;            // disjoint ranges, one per task
/// pool.map(fill, &parts)?;                         // each worker writes its own range
/// drop(parts);
/// let results: &[f64] = out.as_slice()?;           // no copy back through the socket
/// assert_eq!(results[70_000], 70_000.0);
/// # Ok(())
/// # }
/// ```
///
/// # Why no range is ever written by two processes, or read while it is written
///
/// - **One handle per range.** [`chunks_mut`](Self::chunks_mut) takes `&mut self` and
///   refuses while handles from an earlier call exist; range handles are not `Clone`.
/// - **One task per range.** Sending a range to a task marks it lent, with an atomic
///   swap: a second send while it is lent (another thread's `map` over the same ranges)
///   is a serialization error naming the range. The lease travels with the task and is
///   given back only once the task has answered, failed before it started, or its
///   worker is dead and reaped: also for an `apply_async` whose handle was dropped, a
///   `map` that returned early with an error, `imap`, `Process` and pipelines.
/// - **Nothing reads a lent range in the parent.** [`as_slice`](Self::as_slice) and
///   [`as_mut_slice`](Self::as_mut_slice) refuse with [`ErrorKind::InvalidConfig`]
///   (they do not wait) while any range handle or lease exists. Reading or writing a
///   lent range through its handle's `Deref` panics. A range read in the parent through
///   `Deref` (`&self`: the borrow may outlive any check) is pinned and can no longer be
///   sent; `DerefMut` (`&mut self`) pins nothing.
/// - **A received range stays in its task.** A handle decodes as a writer only while a
///   worker decodes a task's argument: in a result, a queue message or a [`Shared`]
///   value it is a deserialization error. A received handle refuses to be serialized
///   (returned, queued, passed on). A worker whose task kept one past its return (moved
///   into a thread, a static, `mem::forget`) does not answer: it gives up and is killed
///   and reaped before the lease is given back. Within a worker, overlapping claims are
///   refused too.
///
/// [`Shared`]: crate::Shared
pub struct SharedSliceMut<T> {
    entry: Arc<Entry>,
    len: usize,
    /// Held by every range handle made by this slice, and by every lease of one.
    lease: Arc<()>,
    _t: PhantomData<fn() -> T>,
}

/// One disjoint range of a [`SharedSliceMut`], written by the task it is sent to.
///
/// In the process that made it, the handle is a ticket: send it to a task (as an
/// argument of `map`, `apply`, `Process`, ...). In the worker, the task receives a
/// handle that derefs to the range, writable. See [`SharedSliceMut`] for the rules.
pub struct SharedChunkMut<T> {
    entry: Arc<Entry>,
    offset: usize,
    len: usize,
    side: Side,
    _t: PhantomData<fn() -> T>,
}

/// Where a range handle lives.
enum Side {
    /// In the process whose `SharedSliceMut` made it.
    Lent(Arc<RangeSlot>),
    /// Received as a task's argument in a worker: the range's one writer, until dropped
    /// (the claim's id in the segment's entry).
    Claimed(u64),
}

/// A range's state in the process that made it:
///
/// ```text
///   IDLE ──serialize into a chunk for a worker──▶ LENT ──task answered / worker reaped──▶ IDLE
///     │                                            (Lease dropped)
///     └──Deref (&self)──▶ PINNED  (never sent again: a borrow may still live)
/// ```
///
/// `LENT` makes `Deref`, `DerefMut` and another send fail; `PINNED` makes a send fail.
struct RangeSlot {
    state: AtomicU8,
    /// The slice's lease: the slice is unreadable while this slot lives.
    _lease: Arc<()>,
}

const IDLE: u8 = 0;
const LENT: u8 = 1;
const PINNED: u8 = 2;

/// A range lent to a task: held by the task's job until it has answered, or its worker
/// is dead and reaped. Dropping it makes the range usable again in the parent.
pub(crate) struct Lease(Arc<RangeSlot>);

impl Drop for Lease {
    fn drop(&mut self) {
        self.0.state.store(IDLE, Ordering::Release);
    }
}

impl<T: Pod> SharedSliceMut<T> {
    /// A new slice of `len` zeroed elements in shared memory.
    pub fn zeroed(len: usize) -> Result<SharedSliceMut<T>> {
        SharedSliceMut::zeroed_with(len, crate::sys::segment::default_backend())
    }

    /// Like [`zeroed`](Self::zeroed), with the segment kind chosen explicitly.
    pub fn zeroed_with(len: usize, backend: ShmBackend) -> Result<SharedSliceMut<T>> {
        let bytes = len.checked_mul(size_of::<T>()).ok_or_else(|| {
            Error::new(
                ErrorKind::InvalidConfig,
                format!("{len} elements do not fit in memory"),
            )
        })?;
        let entry = Entry::new(Segment::create_writable(backend, bytes, Pages::Now)?);
        super::register_created(&entry);
        Ok(SharedSliceMut {
            entry,
            len,
            lease: Arc::new(()),
            _t: PhantomData,
        })
    }

    /// Disjoint ranges of at most `n` elements covering the slice, to hand to tasks.
    /// While any of them exists, or a task still holds one, [`as_slice`](Self::as_slice)
    /// is an error.
    pub fn chunks_mut(&mut self, n: usize) -> Result<Vec<SharedChunkMut<T>>> {
        let ranges = chunk_ranges(self.len, n, "SharedSliceMut::chunks_mut")?;
        self.check_idle("chunks_mut", "ranges from an earlier call")?;
        Ok(ranges
            .map(|(start, len)| SharedChunkMut {
                entry: Arc::clone(&self.entry),
                offset: start,
                len,
                side: Side::Lent(Arc::new(RangeSlot {
                    state: AtomicU8::new(IDLE),
                    _lease: Arc::clone(&self.lease),
                })),
                _t: PhantomData,
            })
            .collect())
    }

    /// Refuses while a range handle, or a task holding one, exists.
    fn check_idle(&self, what: &str, which: &str) -> Result<()> {
        if Arc::strong_count(&self.lease) > 1 {
            return Err(Error::new(
                ErrorKind::InvalidConfig,
                format!(
                    "SharedSliceMut::{what}: {which} still exist, or a task they were sent \
                     to has not answered yet; drop them, and wait for the tasks first"
                ),
            ));
        }
        Ok(())
    }

    /// The start of the mapping, or `None` for an empty slice.
    fn base(&self) -> Option<*mut T> {
        let ptr = self.entry.segment.as_mut_ptr()?;
        (self.len > 0).then_some(ptr.cast::<T>())
    }

    /// The contents, once no range handle exists and no task holds a range. Refuses
    /// with [`ErrorKind::InvalidConfig`] before that; it does not wait.
    pub fn as_slice(&self) -> Result<&[T]> {
        self.check_idle("as_slice", "range handles from chunks_mut")?;
        let Some(ptr) = self.base() else {
            return Ok(&[]);
        };
        // SAFETY: the segment maps `len * size_of::<T>()` writable bytes, page-aligned
        // (so aligned for `T: Pod`), for as long as `self.entry` lives. No other process
        // writes them now: the lease count (checked above) is 1, so no range handle
        // exists here and no task holds a lease on one; a lease is given back only once
        // its task answered (after its worker checked that the task dropped the range)
        // or its worker was reaped. New ranges need `&mut self`, which this borrow
        // excludes for as long as the returned slice lives.
        Ok(unsafe { std::slice::from_raw_parts(ptr, self.len) })
    }

    /// The contents, writable, under the same rule as [`as_slice`](Self::as_slice).
    pub fn as_mut_slice(&mut self) -> Result<&mut [T]> {
        self.check_idle("as_mut_slice", "range handles from chunks_mut")?;
        let Some(ptr) = self.base() else {
            return Ok(&mut []);
        };
        // SAFETY: as in `as_slice`; `&mut self` makes this the only borrow of the slice
        // in this process.
        Ok(unsafe { std::slice::from_raw_parts_mut(ptr, self.len) })
    }

    /// The number of elements.
    pub fn len(&self) -> usize {
        self.len
    }

    /// True for a slice of no elements.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
}

impl<T: Pod> SharedChunkMut<T> {
    /// The range's first element's position in the whole slice.
    pub fn offset(&self) -> usize {
        self.offset
    }

    /// The range's start and length in bytes.
    fn byte_range(&self) -> (usize, usize) {
        let size = size_of::<T>();
        (self.offset * size, self.len * size)
    }

    /// The range's first element, or `None` for an empty range.
    fn start_ptr(&self) -> Option<*mut T> {
        let (start, len) = self.byte_range();
        let ptr = self.entry.segment.as_mut_ptr()?;
        // SAFETY: `start` lies inside the mapping: the range was checked against the
        // segment's length when the handle was made or deserialized.
        (len > 0).then(|| unsafe { ptr.add(start) }.cast::<T>())
    }

    /// The panic for a handle whose range a task holds.
    fn lent_panic(&self) -> ! {
        panic!(
            "elements {}..{} of a SharedSliceMut are lent to a task that has not answered: \
             their handle gives no access until it has",
            self.offset,
            self.offset + self.len
        )
    }
}

impl<T: Pod> Deref for SharedChunkMut<T> {
    type Target = [T];

    fn deref(&self) -> &[T] {
        if let Side::Lent(slot) = &self.side {
            match slot
                .state
                .compare_exchange(IDLE, PINNED, Ordering::AcqRel, Ordering::Acquire)
            {
                Ok(_) | Err(PINNED) => {}
                Err(_) => self.lent_panic(),
            }
        }
        let Some(ptr) = self.start_ptr() else {
            return &[];
        };
        // SAFETY: the range lies inside the writable mapping, which `self.entry` keeps.
        // Nothing writes it while this borrow lives. A received (`Claimed`) handle is
        // its range's only writer: its parent lends a range to one task at a time and
        // keeps no access while it is lent, and the worker refuses overlapping claims.
        // A parent's handle is pinned by this call (or was): it is not lent now and can
        // never be sent again, so no worker receives the range while the borrow lives.
        unsafe { std::slice::from_raw_parts(ptr, self.len) }
    }
}

impl<T: Pod> DerefMut for SharedChunkMut<T> {
    fn deref_mut(&mut self) -> &mut [T] {
        if let Side::Lent(slot) = &self.side
            && slot.state.load(Ordering::Acquire) == LENT
        {
            self.lent_panic();
        }
        let Some(ptr) = self.start_ptr() else {
            return &mut [];
        };
        // SAFETY: as in `deref`, for a received handle. For a parent's handle: it is
        // not lent (checked above), and `&mut self` keeps it from being sent (which
        // needs `&self`) while this borrow lives. `&mut self` makes this the only borrow
        // through this handle, and no other handle covers these bytes.
        unsafe { std::slice::from_raw_parts_mut(ptr, self.len) }
    }
}

impl<T> Drop for SharedChunkMut<T> {
    fn drop(&mut self) {
        if let Side::Claimed(id) = self.side {
            lock(&self.entry.claims).retain(|c| c.id != id);
        }
    }
}

impl<T> Serialize for SharedChunkMut<T> {
    fn serialize<S: Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        use serde::ser::Error as _;
        let range = format!("elements {}..{}", self.offset, self.offset + self.len);
        let slot = match &self.side {
            Side::Lent(slot) => slot,
            Side::Claimed(_) => {
                return Err(S::Error::custom(format_args!(
                    "{range} of a SharedSliceMut were received by this task, and the handle \
                     cannot leave it: write the range here, and return or send the data"
                )));
            }
        };
        if let Err(state) =
            slot.state
                .compare_exchange(IDLE, LENT, Ordering::AcqRel, Ordering::Acquire)
        {
            return Err(S::Error::custom(if state == LENT {
                format!(
                    "{range} of a SharedSliceMut are already lent to a task that has not \
                     answered: a range is in one task at a time"
                )
            } else {
                format!(
                    "{range} of a SharedSliceMut were read in this process through the \
                     handle (Deref), and that borrow may still live: the handle can no \
                     longer be sent"
                )
            }));
        }
        if super::lend(Lease(Arc::clone(slot))).is_err() {
            // The lease was dropped with the error: the range is idle again.
            return Err(S::Error::custom(format_args!(
                "{range} of a SharedSliceMut: a range handle travels only as an argument \
                 of a task run in a worker (map, imap, apply, Process, a pipeline stage), \
                 not in a queue message, a Shared value or a map that runs inline"
            )));
        }
        Wire::write(&self.entry, self.offset, self.len, s)
    }
}

/// Claim ids, unique in this process.
static NEXT_CLAIM: AtomicU64 = AtomicU64::new(1);

impl<'de, T: Pod> Deserialize<'de> for SharedChunkMut<T> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        use serde::de::Error as _;
        let w = Wire::deserialize(d)?;
        let size = size_of::<T>();
        let (entry, offset, len) = resolve_range(&w, size)?;
        let range = format!("elements {offset}..{}", offset + len);
        if entry.segment.as_mut_ptr().is_none() {
            return Err(D::Error::custom(
                "this segment is read-only: a SharedChunkMut comes from SharedSliceMut::chunks_mut",
            ));
        }
        // The process that made the slice never decodes a writer of it: its own handles
        // are the ones it lends, and one coming back (in a result, from any worker,
        // forged or not) would be a second.
        if !super::is_received(w.id) {
            return Err(D::Error::custom(format_args!(
                "{range} of a SharedSliceMut made in this process: a range handle never comes \
                 back to the process that lent it"
            )));
        }
        let claim = Claim {
            id: NEXT_CLAIM.fetch_add(1, Ordering::Relaxed),
            start: offset * size,
            len: len * size,
        };
        let mut claims = lock(&entry.claims);
        if claims
            .iter()
            .any(|c| claim.start < c.start + c.len && c.start < claim.start + claim.len)
        {
            return Err(D::Error::custom(format_args!(
                "{range} of this SharedSliceMut are already being written here"
            )));
        }
        if !super::note_received(&entry, claim) {
            return Err(D::Error::custom(format_args!(
                "{range} of a SharedSliceMut: a range handle is received only as a task's \
                 argument in a worker; it cannot come back in a result, a queue message or \
                 a Shared value"
            )));
        }
        claims.push(claim);
        drop(claims);
        Ok(SharedChunkMut {
            entry,
            offset,
            len,
            side: Side::Claimed(claim.id),
            _t: PhantomData,
        })
    }
}

impl<T> std::fmt::Debug for SharedSliceMut<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SharedSliceMut")
            .field("len", &self.len)
            .field("lent", &(Arc::strong_count(&self.lease) > 1))
            .finish()
    }
}

impl<T> std::fmt::Debug for SharedChunkMut<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SharedChunkMut")
            .field("offset", &self.offset)
            .field("len", &self.len)
            .finish()
    }
}

#[cfg(test)]
mod tests;
