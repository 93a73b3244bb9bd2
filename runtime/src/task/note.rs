//! Where a worker records which item of which chunk it runs: one word in its control
//! segment, which the parent reads after the worker died to name the item that killed
//! it. Outside a worker (and before the parent's `Setup` frame) nothing is recorded.

use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering};

/// The progress word, once the worker mapped its control segment.
static PROGRESS: OnceLock<&'static AtomicU64> = OnceLock::new();

/// The chunk the worker thread runs.
static CURRENT_CHUNK: AtomicU64 = AtomicU64::new(0);

/// From now on, progress is recorded in `word` (the first word of the control segment,
/// which the worker keeps mapped for the rest of its life). Only the first call counts.
pub(crate) fn record_in(word: &'static AtomicU64) {
    let _ = PROGRESS.set(word);
}

/// Chunk `chunk` starts running in this worker.
pub(crate) fn set_chunk(chunk: u64) {
    CURRENT_CHUNK.store(chunk, Ordering::Relaxed);
}

/// Where a worker records which item of its chunk is running: read once per chunk, so
/// that recording an item is one relaxed store.
pub(crate) struct ProgressNote {
    slot: Option<&'static AtomicU64>,
    chunk: u64,
}

impl ProgressNote {
    /// The progress word of this worker (none outside a worker) and the current chunk.
    pub(crate) fn current() -> Self {
        ProgressNote {
            slot: PROGRESS.get().copied(),
            chunk: CURRENT_CHUNK.load(Ordering::Relaxed) & 0xffff_ffff,
        }
    }

    /// Records that item `index` of the chunk starts (or, as the chunk's count, that
    /// the chunk is finished): the low 32 bits of the chunk id, then the index. Read by
    /// the parent only after a death.
    #[inline(always)]
    pub(crate) fn note(&self, index: u32) {
        if let Some(slot) = self.slot {
            slot.store(self.chunk << 32 | u64::from(index), Ordering::Relaxed);
        }
    }
}

/// Decodes a progress record: the item index, if it is about chunk `chunk`.
pub(crate) fn progress_item(record: u64, chunk: u64) -> Option<u32> {
    (record >> 32 == chunk & 0xffff_ffff).then_some(record as u32)
}
