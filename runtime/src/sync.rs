//! `multiproc::sync`: synchronisation between processes that no dead process can wedge.
//! Each primitive lives in a shared-memory segment of its own, travels to workers and
//! `Process` children as an ordinary argument (`Clone + Serialize + Deserialize`, like
//! [`Queue`](crate::Queue)), and waits on futexes in that segment after a short spin.
//! Beside `queue`, on `shm` and `sys`.

mod barrier;
mod event;
mod mutex;
mod semaphore;

pub use barrier::{Barrier, BarrierWaitResult};
pub use event::Event;
pub use mutex::{Mutex, MutexGuard};
pub use semaphore::{Semaphore, SemaphoreGuard};

use std::sync::Arc;

use crate::error::Result;
use crate::shm::{Entry, Pages, Segment, ShmBackend};

/// A new primitive's segment: `bytes` of zeroed, writable shared memory, registered so
/// that its handles can travel.
fn create_segment(bytes: usize) -> Result<Arc<Entry>> {
    let segment = Segment::create_writable(ShmBackend::Memfd, bytes, Pages::Now)?;
    let entry = Entry::new(segment);
    crate::shm::register_created(&entry);
    Ok(entry)
}

/// The start of `entry`'s mapping, if it is writable and holds at least `bytes`.
fn mapped(entry: &Entry, bytes: usize) -> Option<*mut u8> {
    if entry.segment.len() < bytes {
        return None;
    }
    entry.segment.as_mut_ptr()
}
