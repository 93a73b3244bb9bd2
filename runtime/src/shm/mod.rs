//! Large data through shared memory: segments, the per-process table of segments a
//! process can resolve handles against, and the handles users see ([`Shared`],
//! [`SharedSlice`], [`SharedSliceMut`]).
//!
//! How a handle reaches a worker: serializing it (while a chunk is encoded) records its
//! segment as an attachment of the chunk; the driver sends each segment once per worker,
//! ahead of the first chunk that needs it (a memfd's fd over the socket, a named
//! segment's name), and tells the worker to release it once the parent holds no handle
//! to it any more. Deserializing a handle in the worker looks the segment up in the
//! worker's table; a handle whose segment is not there is an error, not a crash.

pub(crate) mod segment;
mod shared;
mod slice;

use std::any::{Any, TypeId};
use std::cell::RefCell;
use std::collections::HashMap;
use std::sync::{Arc, Mutex, Weak};

pub use segment::ShmBackend;
pub(crate) use segment::{Pages, Segment, SegmentDesc};
pub use shared::Shared;
pub use slice::{SharedChunkMut, SharedSlice, SharedSliceMut};

use crate::engine::lock;

/// A segment as a process holds it, with what was decoded from it.
pub(crate) struct Entry {
    pub segment: Segment,
    /// `Shared<T>` values decoded from this segment in this process, one per type.
    values: Mutex<HashMap<TypeId, Arc<dyn Any + Send + Sync>>>,
    /// Element ranges of a writable segment currently claimed by a live
    /// `SharedChunkMut` in this process (byte offset, byte length).
    claims: Mutex<Vec<(usize, usize)>>,
}

impl Entry {
    pub(crate) fn new(segment: Segment) -> Arc<Entry> {
        Arc::new(Entry {
            segment,
            values: Mutex::new(HashMap::new()),
            claims: Mutex::new(Vec::new()),
        })
    }
}

/// How this process holds a table entry: the creator weakly (the entry dies with its
/// last handle), a receiver strongly (until the creator releases it).
enum Held {
    Weak(Weak<Entry>),
    Strong(Arc<Entry>),
}

fn table() -> &'static Mutex<HashMap<u64, Held>> {
    static TABLE: std::sync::OnceLock<Mutex<HashMap<u64, Held>>> = std::sync::OnceLock::new();
    TABLE.get_or_init(|| Mutex::new(HashMap::new()))
}

/// Records a segment this process created, so handles to it resolve here too.
pub(crate) fn register_created(entry: &Arc<Entry>) {
    let mut t = lock(table());
    t.retain(|_, held| !matches!(held, Held::Weak(w) if w.strong_count() == 0));
    t.insert(entry.segment.id(), Held::Weak(Arc::downgrade(entry)));
}

/// Records a segment received from the parent; it stays until released.
pub(crate) fn register_received(entry: Arc<Entry>) {
    lock(table()).insert(entry.segment.id(), Held::Strong(entry));
}

/// Drops this process's hold on released segments.
pub(crate) fn release(ids: &[u64]) {
    let mut t = lock(table());
    for id in ids {
        if matches!(t.get(id), Some(Held::Strong(_))) {
            t.remove(id);
        }
    }
}

/// The entry for a segment id, if this process has it.
pub(crate) fn resolve(id: u64) -> Option<Arc<Entry>> {
    match lock(table()).get(&id)? {
        Held::Weak(w) => w.upgrade(),
        Held::Strong(a) => Some(Arc::clone(a)),
    }
}

/// The number of segments this process holds (for tests and leak checks).
pub fn segments_held() -> usize {
    lock(table())
        .values()
        .filter(|h| match h {
            Held::Weak(w) => w.strong_count() > 0,
            Held::Strong(_) => true,
        })
        .count()
}

thread_local! {
    /// Segments referenced by the handles serialized into the chunk being encoded.
    static OUTGOING: RefCell<Option<Vec<Arc<Entry>>>> = const { RefCell::new(None) };
}

/// Runs `encode`, returning with its result the segments its handles referred to.
pub(crate) fn collect<R>(encode: impl FnOnce() -> R) -> (R, Vec<Arc<Entry>>) {
    let outer = OUTGOING.with(|o| o.borrow_mut().replace(Vec::new()));
    let result = encode();
    let mut mine = OUTGOING
        .with(|o| std::mem::replace(&mut *o.borrow_mut(), outer))
        .unwrap_or_default();
    mine.sort_by_key(|e| e.segment.id());
    mine.dedup_by_key(|e| e.segment.id());
    (result, mine)
}

/// Called by a handle's `Serialize`: the chunk being encoded needs this segment.
pub(crate) fn note_outgoing(entry: &Arc<Entry>) {
    OUTGOING.with(|o| {
        if let Some(list) = o.borrow_mut().as_mut() {
            list.push(Arc::clone(entry));
        }
    });
}

/// The error a handle gives when its segment is not available in this process.
pub(crate) fn missing<E: serde::de::Error>(id: u64) -> E {
    E::custom(format_args!(
        "shared-memory segment {id:016x} is not available in this process: the handle was \
         forged, or made by a process that is not this one's parent, or its segment is gone"
    ))
}
