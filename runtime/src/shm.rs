//! Large data through shared memory: the per-process table of segments a process can
//! resolve handles against, and the handles users see ([`Shared`], [`SharedSlice`],
//! [`SharedSliceMut`]). The segments themselves are `sys::segment`'s.
//!
//! How a handle reaches a worker: serializing it (while a chunk is encoded) records its
//! segment as an attachment of the chunk; the driver sends each segment once per worker,
//! ahead of the first chunk that needs it (a memfd's fd over the socket, a named
//! segment's name), and tells the worker to release it once the parent holds no handle
//! to it any more. Deserializing a handle in the worker looks the segment up in the
//! worker's table; a handle whose segment is not there is an error, not a crash.

mod shared;
mod slice;

use std::any::{Any, TypeId};
use std::cell::RefCell;
use std::collections::HashMap;
use std::sync::{Arc, Mutex, Weak};

pub use crate::sys::segment::ShmBackend;
pub(crate) use crate::sys::segment::{Pages, Segment};
pub use shared::Shared;
pub(crate) use slice::Lease;
pub use slice::{SharedChunkMut, SharedSlice, SharedSliceMut};

use crate::sys::lock::lock;

/// A segment as a process holds it, with what was decoded from it.
pub(crate) struct Entry {
    pub segment: Segment,
    /// `Shared<T>` values decoded from this segment in this process, one per type.
    values: Mutex<HashMap<TypeId, Arc<dyn Any + Send + Sync>>>,
    /// Element ranges of a writable segment currently claimed by a live
    /// `SharedChunkMut` received in this process (claim id, byte offset, byte length).
    claims: Mutex<Vec<Claim>>,
}

/// A range of a writable segment that a received `SharedChunkMut` writes.
#[derive(Clone, Copy)]
pub(crate) struct Claim {
    pub id: u64,
    pub start: usize,
    pub len: usize,
}

impl Entry {
    pub(crate) fn new(segment: Segment) -> Arc<Entry> {
        Arc::new(Entry {
            segment,
            values: Mutex::new(HashMap::new()),
            claims: Mutex::new(Vec::new()),
        })
    }

    /// A value kept with this entry in this process (one per type), made by `make` the
    /// first time: it lives exactly as long as the entry does here.
    pub(crate) fn keep_with<V: Any + Send + Sync, E>(
        &self,
        make: impl FnOnce() -> Result<V, E>,
    ) -> Result<Arc<V>, E> {
        let mut values = lock(&self.values);
        if let Some(v) = values.get(&TypeId::of::<V>())
            && let Ok(v) = Arc::clone(v).downcast::<V>()
        {
            return Ok(v);
        }
        let v = Arc::new(make()?);
        values.insert(
            TypeId::of::<V>(),
            Arc::clone(&v) as Arc<dyn Any + Send + Sync>,
        );
        Ok(v)
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

/// Forgets, in `sent` (the segments one receiver was sent, by id), those whose last
/// handle this process dropped, and returns their ids: the receiver is to release them.
pub(crate) fn take_dead(sent: &mut HashMap<u64, Weak<Entry>>) -> Vec<u64> {
    let mut dead = Vec::new();
    sent.retain(|id, entry| {
        let alive = entry.strong_count() > 0;
        if !alive {
            dead.push(*id);
        }
        alive
    });
    dead
}

/// Drops this process's hold on every segment it received (a worker about to exit).
pub(crate) fn release_all() {
    let held: Vec<Held> = lock(table()).drain().map(|(_, held)| held).collect();
    // Dropped outside the table's lock: an entry's values may do I/O when they go.
    drop(held);
}

/// Whether this process received segment `id` from its parent (rather than made it).
pub(crate) fn is_received(id: u64) -> bool {
    matches!(lock(table()).get(&id), Some(Held::Strong(_)))
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

/// What the handles serialized into one chunk take with them.
#[derive(Default)]
struct Outgoing {
    /// The segments they refer to.
    segments: Vec<Arc<Entry>>,
    /// The `SharedChunkMut` ranges they lend to the task, held until it has answered.
    leases: Vec<Lease>,
}

thread_local! {
    /// Set while a chunk is encoded for a worker (see [`collect`]).
    static OUTGOING: RefCell<Option<Outgoing>> = const { RefCell::new(None) };
    /// Set while a worker runs a chunk that came from its parent (see [`receiving`]).
    static RECEIVING: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
    /// Every claim received on this thread since [`ranges_kept`] last looked.
    static RECEIVED: RefCell<Vec<(Weak<Entry>, Claim)>> = const { RefCell::new(Vec::new()) };
}

/// Runs `encode`, returning with its result the segments its handles referred to and
/// the leases of the ranges they lend.
pub(crate) fn collect<R>(encode: impl FnOnce() -> R) -> (R, Vec<Arc<Entry>>, Vec<Lease>) {
    let outer = OUTGOING.with(|o| o.borrow_mut().replace(Outgoing::default()));
    let result = encode();
    let mine = OUTGOING
        .with(|o| std::mem::replace(&mut *o.borrow_mut(), outer))
        .unwrap_or_default();
    let Outgoing {
        segments: mut mine,
        leases,
    } = mine;
    mine.sort_by_key(|e| e.segment.id());
    mine.dedup_by_key(|e| e.segment.id());
    (result, mine, leases)
}

/// Called by a handle's `Serialize`: the chunk being encoded needs this segment.
pub(crate) fn note_outgoing(entry: &Arc<Entry>) {
    OUTGOING.with(|o| {
        if let Some(out) = o.borrow_mut().as_mut() {
            out.segments.push(Arc::clone(entry));
        }
    });
}

/// Called by a `SharedChunkMut`'s `Serialize`: hands its lease to the chunk being
/// encoded, or gives it back if no chunk for a worker is being encoded.
pub(crate) fn lend(lease: Lease) -> Result<(), Lease> {
    OUTGOING.with(|o| match o.borrow_mut().as_mut() {
        Some(out) => {
            out.leases.push(lease);
            Ok(())
        }
        None => Err(lease),
    })
}

/// Runs `run` (a worker running a chunk its parent sent), during which `SharedChunkMut`
/// handles may be received as writers; their claims are remembered for
/// [`ranges_kept`]. Per chunk, not per item: one flag, so a chunk of tiny items pays
/// nothing. Results of a nested pool decoded inside such a task are in scope too, which
/// is still sound: the worker refuses a claim that overlaps a live one, and a claim
/// still alive when the chunk ends stops the worker from answering.
pub(crate) fn receiving<R>(run: impl FnOnce() -> R) -> R {
    /// Restores the outer state also when `run` panics.
    struct Restore(bool);
    impl Drop for Restore {
        fn drop(&mut self) {
            RECEIVING.with(|r| r.set(self.0));
        }
    }
    let _restore = Restore(RECEIVING.with(|r| r.replace(true)));
    run()
}

/// Called by a `SharedChunkMut`'s `Deserialize`: whether a worker is decoding a chunk
/// from its parent here, and if so, notes the claim.
pub(crate) fn note_received(entry: &Arc<Entry>, claim: Claim) -> bool {
    let receiving = RECEIVING.with(std::cell::Cell::get);
    if receiving {
        RECEIVED.with(|all| all.borrow_mut().push((Arc::downgrade(entry), claim)));
    }
    receiving
}

/// After a chunk ran in a worker: the ranges it received that a handle still claims
/// (a task moved one into a thread, a static or `mem::forget`), described; `None` if
/// every one was dropped. Forgets the chunk's claims either way.
pub(crate) fn ranges_kept() -> Option<String> {
    let received = RECEIVED.with(|all| std::mem::take(&mut *all.borrow_mut()));
    let kept: Vec<String> = received
        .iter()
        .filter_map(|(entry, claim)| {
            let entry = entry.upgrade()?;
            let live = lock(&entry.claims).iter().any(|c| c.id == claim.id);
            live.then(|| format!("bytes {}..{}", claim.start, claim.start + claim.len))
        })
        .collect();
    (!kept.is_empty()).then(|| {
        format!(
            "a task kept a SharedChunkMut past its return (moved into a thread, a static \
             or mem::forget), so its range ({}) could still be written after the parent \
             reads it; the worker exits instead of answering",
            kept.join(", ")
        )
    })
}

/// The error a handle gives when its segment is not available in this process.
pub(crate) fn missing<E: serde::de::Error>(id: u64) -> E {
    E::custom(format_args!(
        "shared-memory segment {id:016x} is not available in this process: the handle was \
         forged, or made by a process that is not this one's parent, or its segment is gone"
    ))
}

/// Serializes a handle to `entry`'s segment (a queue's, an event's, a mutex's): its id,
/// with the segment noted to travel with the message.
pub(crate) fn serialize_entry<S: serde::Serializer>(
    entry: &Arc<Entry>,
    s: S,
) -> Result<S::Ok, S::Error> {
    note_outgoing(entry);
    serde::Serialize::serialize(&entry.segment.id(), s)
}

/// The segment of a handle that [`serialize_entry`] wrote, if this process has it.
pub(crate) fn deserialize_entry<'de, D: serde::Deserializer<'de>>(
    d: D,
) -> Result<Arc<Entry>, D::Error> {
    let id = <u64 as serde::Deserialize>::deserialize(d)?;
    resolve(id).ok_or_else(|| missing::<D::Error>(id))
}
