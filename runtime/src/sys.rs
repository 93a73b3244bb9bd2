//! Operating-system primitives, and nothing else: what the layers above need from the
//! kernel, behind safe functions. Everything that still calls `libc` directly lives
//! here (signal handlers, `atexit`, `pthread_atfork`, the initial environment); the
//! rest goes through `rustix`.
//!
//! Nothing here knows about tasks, frames or pools: each module is one mechanism.

pub(crate) mod fork;
pub(crate) mod futex;
pub(crate) mod lock;
pub(crate) mod mem;
pub(crate) mod overflow;
pub(crate) mod poll;
pub(crate) mod process;
pub(crate) mod random;
pub(crate) mod robust;
pub(crate) mod segment;
pub(crate) mod socket;
pub(crate) mod unwind;
