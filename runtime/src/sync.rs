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
