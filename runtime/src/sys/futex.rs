//! Futexes on words in shared memory (not private: other processes wait on and wake
//! them). Used by the queue's ring and by the direct path of `apply`.
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
    let ts = rustix::thread::futex::Timespec {
        tv_sec: timeout.as_secs().min(i64::MAX as u64) as i64,
        tv_nsec: i64::from(timeout.subsec_nanos()),
    };
    // Not private: other processes wake it. A wrong value, a timeout or a signal all
    // just return; the caller looks at the word again.
    let _ =
        rustix::thread::futex::wait(word, rustix::thread::futex::Flags::empty(), seen, Some(&ts));
}

/// Wakes every thread, in any process, sleeping on `word`.
pub(crate) fn wake_all(word: &AtomicU32) {
    let _ =
        rustix::thread::futex::wake(word, rustix::thread::futex::Flags::empty(), i32::MAX as u32);
}
