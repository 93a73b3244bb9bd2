//! Noticing that this process is a `fork()`ed copy of the one that started a pool. The
//! copy has the pool's memory but none of its threads, and the workers are the
//! original's: using the pool there would wait for drivers that do not exist (a hang),
//! and the control segments it inherited lead to the original's workers.

use std::sync::Once;
use std::sync::atomic::{AtomicU64, Ordering};

/// Bumped in the child of every `fork()`, by a handler registered before the first pool
/// starts. `posix_spawn` (how workers start) runs no fork handlers, and needs none.
static GENERATION: AtomicU64 = AtomicU64::new(0);

extern "C" fn in_child() {
    GENERATION.fetch_add(1, Ordering::Relaxed);
}

/// This process's fork generation: a pool started in another generation is not ours.
/// One relaxed load after the first call, so it can sit on every submit.
pub(crate) fn generation() -> u64 {
    static REGISTER: Once = Once::new();
    REGISTER.call_once(|| {
        // SAFETY: registers a plain `extern "C" fn()` that only touches an atomic, which
        // is async-signal-safe as a fork child handler must be. A failure (ENOMEM) only
        // means a fork goes unnoticed, as before.
        unsafe { libc::pthread_atfork(None, None, Some(in_child)) };
    });
    GENERATION.load(Ordering::Relaxed)
}
