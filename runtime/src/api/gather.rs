//! A map's results, written in place by the threads that decode them: each chunk's
//! writer owns its range of the output, so results are decoded straight into the
//! `Vec` the caller gets, with no per-chunk buffer and no copy on the caller's thread.

use std::cell::UnsafeCell;
use std::collections::BTreeMap;
use std::mem::{ManuallyDrop, MaybeUninit};
use std::sync::{Arc, Mutex};

use crate::sys::lock::lock;

/// The output of a map of `len` items, filled range by range.
pub(crate) struct Gather<R> {
    slots: Box<[UnsafeCell<MaybeUninit<R>>]>,
    /// Every range handed to a writer, by start: its length, and how many of its first
    /// slots hold a value (set when the writer is done).
    ranges: Mutex<BTreeMap<usize, Claimed>>,
}

#[derive(Clone, Copy)]
struct Claimed {
    len: usize,
    written: usize,
}

// SAFETY: a `Gather` moves values of `R` between threads (writers fill slots on other
// threads, the caller takes them), which `R: Send` allows. Slots are reached only
// through a `Writer`, whose range no other writer overlaps (`claim` checks that under
// the lock), or once every writer is gone (`into_vec`, `Drop`), so no slot is reached
// from two threads at once.
unsafe impl<R: Send> Send for Gather<R> {}
// SAFETY: as above: shared references only claim ranges (under the lock).
unsafe impl<R: Send> Sync for Gather<R> {}

impl<R> Gather<R> {
    pub(crate) fn new(len: usize) -> Arc<Gather<R>> {
        Arc::new(Gather {
            slots: (0..len)
                .map(|_| UnsafeCell::new(MaybeUninit::uninit()))
                .collect(),
            ranges: Mutex::new(BTreeMap::new()),
        })
    }

    /// The writer of slots `start..start + len`; `None` if they reach past the end or
    /// overlap a range already claimed.
    pub(crate) fn claim(self: &Arc<Self>, start: usize, len: usize) -> Option<Writer<R>> {
        let end = start.checked_add(len)?;
        if end > self.slots.len() {
            return None;
        }
        let mut ranges = lock(&self.ranges);
        let before_overlaps = ranges
            .range(..=start)
            .next_back()
            .is_some_and(|(&s, c)| s + c.len > start);
        let after_overlaps = ranges.range(start..end).next().is_some();
        if before_overlaps || after_overlaps {
            return None;
        }
        ranges.insert(start, Claimed { len, written: 0 });
        Some(Writer {
            gather: Arc::clone(self),
            start,
            len,
            written: 0,
        })
    }

    /// The values, once every slot holds one and no writer is left; else the gather
    /// back (the values it holds are dropped with it).
    pub(crate) fn into_vec(this: Arc<Self>) -> Result<Vec<R>, Arc<Self>> {
        let gather = Arc::try_unwrap(this)?;
        let full = {
            let ranges = lock(&gather.ranges);
            ranges.values().all(|c| c.written == c.len)
                && ranges.values().map(|c| c.len).sum::<usize>() == gather.slots.len()
        };
        if !full {
            return Err(Arc::new(gather));
        }
        let gather = ManuallyDrop::new(gather);
        // SAFETY: `gather` is never used or dropped again after these reads, so the
        // slots and the lock are moved out of it exactly once.
        let (slots, ranges) = unsafe {
            (
                std::ptr::read(&gather.slots),
                std::ptr::read(&gather.ranges),
            )
        };
        drop(ranges);
        let len = slots.len();
        let ptr = Box::into_raw(slots).cast::<R>();
        // SAFETY: `UnsafeCell<MaybeUninit<R>>` has the layout of `R` (both wrappers are
        // `repr(transparent)`), so the box's allocation is one of `len` `R`s; the claimed
        // ranges are disjoint, lie within `0..len`, sum to `len` and are all written,
        // so every slot holds a value.
        let values = unsafe { Box::from_raw(std::ptr::slice_from_raw_parts_mut(ptr, len)) };
        Ok(values.into_vec())
    }
}

impl<R> std::fmt::Debug for Gather<R> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Gather")
            .field("len", &self.slots.len())
            .finish_non_exhaustive()
    }
}

impl<R> Drop for Gather<R> {
    fn drop(&mut self) {
        let ranges = match self.ranges.get_mut() {
            Ok(ranges) => std::mem::take(ranges),
            Err(poisoned) => std::mem::take(poisoned.into_inner()),
        };
        for (start, claimed) in ranges {
            for slot in &mut self.slots[start..start + claimed.written] {
                // SAFETY: the first `written` slots of a range were written by its
                // writer (it counts each one), and are dropped only here, once.
                unsafe { slot.get_mut().assume_init_drop() };
            }
        }
    }
}

/// The one writer of a range of a [`Gather`]: it fills the range from its start.
pub(crate) struct Writer<R> {
    gather: Arc<Gather<R>>,
    start: usize,
    len: usize,
    written: usize,
}

impl<R> Writer<R> {
    /// The slots not written yet.
    fn rest(&mut self) -> &mut [MaybeUninit<R>] {
        let slots = &self.gather.slots[self.start + self.written..self.start + self.len];
        // SAFETY: these slots are in this writer's range, which no other writer overlaps
        // and which nothing else reaches while a writer lives (see `Gather`); `&mut self`
        // makes this the only reference to them. `UnsafeCell<MaybeUninit<R>>` has the
        // layout of `MaybeUninit<R>`.
        unsafe { std::slice::from_raw_parts_mut(UnsafeCell::raw_get(slots.as_ptr()), slots.len()) }
    }

    /// Writes the next value; gives it back if the range is full.
    pub(crate) fn push(&mut self, value: R) -> Result<(), R> {
        let Some(slot) = self.rest().first_mut() else {
            return Err(value);
        };
        slot.write(value);
        self.written += 1;
        Ok(())
    }

    /// Fills the rest of the range at once with `fill`, which says whether it wrote every
    /// slot it was given.
    ///
    /// # Safety
    ///
    /// `fill` must initialise every slot it is given when it returns `true`.
    pub(crate) unsafe fn fill(&mut self, fill: impl FnOnce(&mut [MaybeUninit<R>]) -> bool) -> bool {
        let rest = self.rest();
        let n = rest.len();
        if !fill(rest) {
            return false;
        }
        self.written += n;
        true
    }

    /// How many values it has written.
    pub(crate) fn written(&self) -> usize {
        self.written
    }
}

impl<R> Drop for Writer<R> {
    fn drop(&mut self) {
        if let Some(claimed) = lock(&self.gather.ranges).get_mut(&self.start) {
            claimed.written = self.written;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::Gather;
    use std::sync::Arc;

    #[test]
    fn ranges_are_written_once_each_and_come_out_in_order() {
        let gather = Gather::<String>::new(5);
        assert!(gather.claim(3, 3).is_none(), "past the end");
        let mut b = gather.claim(2, 3).unwrap();
        assert!(gather.claim(0, 3).is_none(), "overlaps 2..5");
        assert!(gather.claim(4, 1).is_none(), "inside 2..5");
        let mut a = gather.claim(0, 2).unwrap();
        for s in ["c", "d", "e"] {
            b.push(s.to_owned()).unwrap();
        }
        assert_eq!(b.push("f".to_owned()), Err("f".to_owned()), "full");
        drop(b);
        a.push("a".to_owned()).unwrap();
        // Not done while a writer lives, nor while a slot is empty.
        let gather = Gather::into_vec(gather).unwrap_err();
        a.push("b".to_owned()).unwrap();
        drop(a);
        assert_eq!(Gather::into_vec(gather).unwrap(), ["a", "b", "c", "d", "e"]);
    }

    #[test]
    fn values_of_an_unfinished_gather_are_dropped_once() {
        let counted = Arc::new(());
        let gather = Gather::<Arc<()>>::new(4);
        let mut w = gather.claim(1, 3).unwrap();
        w.push(Arc::clone(&counted)).unwrap();
        w.push(Arc::clone(&counted)).unwrap();
        drop(w);
        assert_eq!(Arc::strong_count(&counted), 3);
        let gather = Gather::into_vec(gather).unwrap_err();
        drop(gather);
        assert_eq!(Arc::strong_count(&counted), 1);
    }
}
