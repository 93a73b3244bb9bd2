//! Locking this process's own mutexes.

use std::sync::{Mutex, MutexGuard, PoisonError};

/// Locks `m`. A panic while holding the runtime's mutexes leaves their data consistent
/// (every critical section is a single push, pop or store), so poisoning is not an
/// error here.
pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}
