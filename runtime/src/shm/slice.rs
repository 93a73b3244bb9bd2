//! [`SharedSlice<T>`]: numbers in shared memory, read by workers without a copy, and
//! [`SharedSliceMut<T>`]: a result buffer that workers fill in disjoint, checked ranges.

use std::marker::PhantomData;
use std::ops::{Deref, DerefMut};
use std::sync::Arc;

use bytemuck::Pod;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use super::{Entry, Pages, Segment, ShmBackend, lock};
use crate::error::{Error, ErrorKind, Result};

/// A read-only slice of plain numbers (`bytemuck::Pod`) in shared memory.
///
/// ```ignore
/// let xs = SharedSlice::from_slice(&floats)?;      // one copy, into shared memory
/// let sums = xs.chunks(1 << 20)?.par_map(sum)?;     // views: a few bytes each
///
/// #[parallel]
/// fn sum(part: SharedSlice<f64>) -> f64 {
///     part.iter().sum()                             // reads the shared pages, no copy
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
        SharedSlice::from_slice_with(data, super::segment::default_backend())
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
    pub fn chunks(&self, n: usize) -> Result<Vec<SharedSlice<T>>> {
        Ok(chunk_ranges(self.len, n, "SharedSlice::chunks")?
            .map(|(start, len)| SharedSlice {
                entry: Arc::clone(&self.entry),
                offset: self.offset + start,
                len,
                _t: PhantomData,
            })
            .collect())
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
/// ```ignore
/// let mut out = SharedSliceMut::<f64>::zeroed(n)?;
/// let parts = out.chunks_mut(1 << 16)?;            // disjoint ranges, one per task
/// pool.map(fill, &parts)?;                         // each worker writes its own range
/// drop(parts);
/// let results: &[f64] = out.as_slice()?;           // no copy back through the socket
///
/// #[parallel]
/// fn fill(mut part: SharedChunkMut<f64>) {
///     let start = part.offset();
///     for (i, x) in part.iter_mut().enumerate() { *x = (start + i) as f64; }
/// }
/// ```
///
/// Safe code cannot create aliasing `&mut`: `chunks_mut` hands out disjoint ranges, the
/// handles are not `Clone`, a process refuses to deserialize a handle whose range
/// overlaps one that is live there, and the parent cannot read the slice while any
/// range handle exists.
pub struct SharedSliceMut<T> {
    entry: Arc<Entry>,
    len: usize,
    /// Held by every live range handle made by this slice.
    lease: Arc<()>,
    _t: PhantomData<fn() -> T>,
}

/// One disjoint range of a [`SharedSliceMut`], writable where it is deserialized.
pub struct SharedChunkMut<T> {
    entry: Arc<Entry>,
    offset: usize,
    len: usize,
    /// In the parent: keeps the slice unreadable while this range may be written.
    _lease: Option<Arc<()>>,
    /// In a worker: this range is claimed in the segment's entry until dropped.
    claimed: bool,
    _t: PhantomData<fn() -> T>,
}

impl<T: Pod> SharedSliceMut<T> {
    /// A new slice of `len` zeroed elements in shared memory.
    pub fn zeroed(len: usize) -> Result<SharedSliceMut<T>> {
        SharedSliceMut::zeroed_with(len, super::segment::default_backend())
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
    /// While any of them exists, [`as_slice`](Self::as_slice) is an error.
    pub fn chunks_mut(&mut self, n: usize) -> Result<Vec<SharedChunkMut<T>>> {
        let ranges = chunk_ranges(self.len, n, "SharedSliceMut::chunks_mut")?;
        if Arc::strong_count(&self.lease) > 1 {
            return Err(Error::new(
                ErrorKind::InvalidConfig,
                "SharedSliceMut::chunks_mut: ranges from an earlier call still exist",
            ));
        }
        Ok(ranges
            .map(|(start, len)| SharedChunkMut {
                entry: Arc::clone(&self.entry),
                offset: start,
                len,
                _lease: Some(Arc::clone(&self.lease)),
                claimed: false,
                _t: PhantomData,
            })
            .collect())
    }

    /// The contents, once no range handle exists any more.
    pub fn as_slice(&self) -> Result<&[T]> {
        if Arc::strong_count(&self.lease) > 1 {
            return Err(Error::new(
                ErrorKind::InvalidConfig,
                "SharedSliceMut::as_slice: range handles from chunks_mut still exist; drop them first",
            ));
        }
        let ptr = self
            .entry
            .segment
            .as_mut_ptr()
            .unwrap_or(std::ptr::null_mut());
        if self.len == 0 || ptr.is_null() {
            return Ok(&[]);
        }
        // SAFETY: the segment maps `len * size_of::<T>()` bytes, page-aligned (so
        // aligned for `T: Pod`); no range handle exists in this process (checked above)
        // and the workers that wrote through one are done with it, since its handle was
        // dropped after the map that used it returned.
        Ok(unsafe { std::slice::from_raw_parts(ptr.cast::<T>(), self.len) })
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

    fn byte_range(&self) -> (usize, usize) {
        let size = size_of::<T>();
        (self.offset * size, self.len * size)
    }
}

impl<T: Pod> Deref for SharedChunkMut<T> {
    type Target = [T];

    fn deref(&self) -> &[T] {
        let (start, len) = self.byte_range();
        match self.entry.segment.as_mut_ptr() {
            Some(ptr) if len > 0 => {
                // SAFETY: the range lies inside the writable mapping (checked when the
                // handle was made or deserialized); only this handle can write it.
                unsafe { std::slice::from_raw_parts(ptr.add(start).cast::<T>(), self.len) }
            }
            _ => &[],
        }
    }
}

impl<T: Pod> DerefMut for SharedChunkMut<T> {
    fn deref_mut(&mut self) -> &mut [T] {
        let (start, len) = self.byte_range();
        match self.entry.segment.as_mut_ptr() {
            Some(ptr) if len > 0 => {
                // SAFETY: as in `deref`; `&mut self` makes this the only live borrow, and
                // no other handle in this process covers any of these bytes (claims).
                unsafe { std::slice::from_raw_parts_mut(ptr.add(start).cast::<T>(), self.len) }
            }
            _ => &mut [],
        }
    }
}

impl<T> Drop for SharedChunkMut<T> {
    fn drop(&mut self) {
        if self.claimed {
            let start = self.offset * size_of::<T>();
            lock(&self.entry.claims).retain(|&(s, _)| s != start);
        }
    }
}

impl<T> Serialize for SharedChunkMut<T> {
    fn serialize<S: Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        Wire::write(&self.entry, self.offset, self.len, s)
    }
}

impl<'de, T: Pod> Deserialize<'de> for SharedChunkMut<T> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        let w = Wire::deserialize(d)?;
        let size = size_of::<T>();
        let (entry, offset, len) = resolve_range(&w, size)?;
        if entry.segment.as_mut_ptr().is_none() {
            return Err(<D::Error as serde::de::Error>::custom(
                "this segment is read-only: a SharedChunkMut comes from SharedSliceMut::chunks_mut",
            ));
        }
        let (start, bytes) = (offset * size, len * size);
        let mut claims = lock(&entry.claims);
        if claims
            .iter()
            .any(|&(s, l)| start < s + l && s < start + bytes)
        {
            return Err(<D::Error as serde::de::Error>::custom(format_args!(
                "elements {offset}..{} of this SharedSliceMut are already being written here",
                offset + len
            )));
        }
        claims.push((start, bytes));
        drop(claims);
        Ok(SharedChunkMut {
            entry,
            offset,
            len,
            _lease: None,
            claimed: true,
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
