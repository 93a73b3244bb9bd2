//! Futexes on words in shared memory (not private: other processes wait on and wake
//! them). Used by the queue's ring and by the direct lane of `apply`.
//!
//! Both count their sleepers beside the word ([`sleep_counted`]), so that a change only
//! makes a system call when someone sleeps ([`if_sleeping`]).

use std::sync::atomic::{AtomicU32, Ordering, fence};
use std::time::Duration;

/// Sleeps on `word` for at most `timeout`, counted in `sleepers`. Once counted,
/// `still_waiting` says what `word` holds while the change waited for has not happened
/// (`None`: it has, and there is no sleep).
pub(crate) fn sleep_counted(
    word: &AtomicU32,
    sleepers: &AtomicU32,
    timeout: Duration,
    still_waiting: impl FnOnce() -> Option<u32>,
) {
    sleepers.fetch_add(1, Ordering::SeqCst);
    // Pairs with the fence in `if_sleeping`: either the sleeper sees the change before it
    // sleeps, or the waker sees it counted.
    fence(Ordering::SeqCst);
    if let Some(seen) = still_waiting() {
        wait(word, seen, timeout);
    }
    sleepers.fetch_sub(1, Ordering::SeqCst);
}

/// After a change that a sleeper in [`sleep_counted`] may wait for: runs `wake` if
/// anyone is counted in `sleepers`.
pub(crate) fn if_sleeping(sleepers: &AtomicU32, wake: impl FnOnce()) {
    fence(Ordering::SeqCst);
    if sleepers.load(Ordering::Relaxed) > 0 {
        wake();
    }
}

/// Sleeps while `word` holds `seen`, for at most `timeout`. Returns at once if the word
/// no longer holds `seen`; may also return early (a wake-up, a signal).
pub(crate) fn wait(word: &AtomicU32, seen: u32, timeout: Duration) {
    let ts = libc::timespec {
        tv_sec: timeout.as_secs().min(i64::MAX as u64) as libc::time_t,
        tv_nsec: libc::c_long::from(timeout.subsec_nanos() as i32),
    };
    // SAFETY: FUTEX_WAIT on a 4-byte aligned word in a shared mapping (not private: other
    // processes wake it); returns at once if the word no longer holds `seen`.
    unsafe {
        libc::syscall(
            libc::SYS_futex,
            word.as_ptr(),
            libc::FUTEX_WAIT,
            seen,
            &ts as *const libc::timespec,
            std::ptr::null::<u32>(),
            0,
        );
    }
}

/// Wakes every thread, in any process, sleeping on `word`.
pub(crate) fn wake_all(word: &AtomicU32) {
    // SAFETY: FUTEX_WAKE on a word in a shared mapping.
    unsafe {
        libc::syscall(
            libc::SYS_futex,
            word.as_ptr(),
            libc::FUTEX_WAKE,
            i32::MAX,
            std::ptr::null::<libc::timespec>(),
            std::ptr::null::<u32>(),
            0,
        );
    }
}
