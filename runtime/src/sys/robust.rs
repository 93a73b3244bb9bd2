//! Locks in shared memory that survive their holder (the queue ring's two locks): one
//! word each, holding the identity of the thread that holds it, so that a lock whose
//! holder was killed can be taken over.
//!
//! A thread id alone cannot tell a dead holder from a live one: the kernel hands a freed
//! id to the next thread it creates, in any process, and that thread would look like the
//! holder forever. So the word holds the id and the thread's start time (in clock ticks
//! since boot, from `/proc/<tid>/stat`). A holder is alive only if a thread of that id
//! exists, has not exited (a zombie, or a thread of a zombie, holds nothing) and started
//! at that time. Two threads with one id and one start time would need the kernel to
//! run through every thread id within one clock tick (10 ms).
//!
//! ```text
//!   0 ──lock (CAS 0 → me)──▶ me ──unlock (store 0)──▶ 0
//!                            │
//!                 holder killed: the word stays `me`
//!                            │
//!   waiter, every 256 spins: holder_alive(word)? no ──CAS word → waiter──▶ waiter
//! ```

use std::sync::atomic::{AtomicU64, Ordering};

/// A lock word's value: the thread id in the high half, the low 32 bits of the thread's
/// start time in the low half; `0` is free. A start time that could not be read is `0`.
fn pack(tid: u32, start: u64) -> u64 {
    u64::from(tid) << 32 | (start & 0xffff_ffff)
}

/// This thread's identity, asked of the kernel once per thread.
pub(crate) fn me() -> u64 {
    thread_local! {
        static ME: u64 = {
            let tid = rustix::thread::gettid().as_raw_nonzero().get() as u32;
            let start = thread_state(tid).map_or(0, |(_, start)| start);
            pack(tid, start)
        };
    }
    ME.with(|m| *m)
}

/// This process's identity, in the same form as a thread's: its pid (its main thread's
/// id) and its start time. For what a process holds as a whole (a semaphore's permits,
/// which any of its threads may release). Asked of the kernel once per process (and
/// again in a `fork()`ed copy, whose pid differs).
pub(crate) fn this_process() -> u64 {
    static CACHE: std::sync::Mutex<Option<(u32, u64)>> = std::sync::Mutex::new(None);
    let pid = rustix::process::getpid().as_raw_nonzero().get() as u32;
    let mut cache = CACHE
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    match *cache {
        Some((cached, id)) if cached == pid => id,
        _ => {
            let start = thread_state(pid).map_or(0, |(_, start)| start);
            let id = pack(pid, start);
            *cache = Some((pid, id));
            id
        }
    }
}

/// The state letter and start time of thread `tid`, if it exists.
fn thread_state(tid: u32) -> Option<(u8, u64)> {
    let stat = std::fs::read_to_string(format!("/proc/{tid}/stat")).ok()?;
    parse_stat(&stat)
}

/// The state (field 3) and start time (field 22) of a `/proc/<pid>/stat` line. The
/// command name (field 2) is in parentheses and may hold spaces and parentheses itself,
/// so the fields are counted from the last `)`.
fn parse_stat(stat: &str) -> Option<(u8, u64)> {
    let rest = &stat[stat.rfind(')')? + 1..];
    let mut fields = rest.split_ascii_whitespace();
    let state = *fields.next()?.as_bytes().first()?;
    // Fields 4..=21 lie between the state and the start time.
    let start = fields.nth(18)?.parse().ok()?;
    Some((state, start))
}

/// Whether the holder recorded in a lock word still lives.
pub(crate) fn holder_alive(word: u64) -> bool {
    let tid = (word >> 32) as u32;
    let start = word & 0xffff_ffff;
    match thread_state(tid) {
        // Zombie or dead: it holds nothing any more.
        Some((b'Z' | b'X' | b'x', _)) => false,
        Some((_, now)) if start != 0 => now & 0xffff_ffff == start,
        // The holder's start time was unknown (no /proc when it locked): a thread of
        // that id existing is all that can be known.
        Some(_) => true,
        None => false,
    }
}

/// A held lock; dropping it frees the word.
pub(crate) struct Guard<'a>(&'a AtomicU64);

impl Drop for Guard<'_> {
    fn drop(&mut self) {
        self.0.store(0, Ordering::Release);
    }
}

/// Takes the lock in `word`, taking it over from a holder that died. Spins, then
/// yields: the lock is only held while bytes are copied.
pub(crate) fn lock(word: &AtomicU64) -> Guard<'_> {
    let me = me();
    let mut spins = 0u32;
    loop {
        if let Some(g) = try_lock_once(word, me, &mut spins) {
            return g;
        }
    }
}

/// One attempt to take the lock: `spins` counts the attempts, and every 256th one asks
/// whether the holder still lives.
fn try_lock_once<'a>(word: &'a AtomicU64, me: u64, spins: &mut u32) -> Option<Guard<'a>> {
    match word.compare_exchange_weak(0, me, Ordering::Acquire, Ordering::Relaxed) {
        Ok(_) => return Some(Guard(word)),
        Err(0) => return None,
        Err(holder) => {
            *spins = spins.wrapping_add(1);
            if spins.is_multiple_of(256)
                && !holder_alive(holder)
                // The holder died inside a put or get: every change is committed by one
                // final store, so the ring is consistent; take over.
                && word
                    .compare_exchange(holder, me, Ordering::Acquire, Ordering::Relaxed)
                    .is_ok()
            {
                return Some(Guard(word));
            }
        }
    }
    if *spins < 64 {
        std::hint::spin_loop();
    } else {
        std::thread::yield_now();
    }
    None
}

/// Tries to take the lock for at most `attempts` attempts (tests).
#[cfg(test)]
pub(crate) fn try_lock_for(word: &AtomicU64, attempts: u32) -> Option<Guard<'_>> {
    let me = me();
    let mut spins = 0u32;
    (0..attempts).find_map(|_| try_lock_once(word, me, &mut spins))
}

/// The identity a lock word would record for thread `tid` of a live process (tests).
#[cfg(test)]
pub(crate) fn identity_of(tid: u32) -> Option<u64> {
    thread_state(tid).map(|(_, start)| pack(tid, start))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_lines_parse_past_odd_command_names() {
        let line = "1234 (a b) c)) S 1 1234 1234 0 -1 4194560 100 0 0 0 5 3 0 0 20 0 1 0 \
                    987654 1000 200";
        assert_eq!(parse_stat(line), Some((b'S', 987_654)));
        assert_eq!(parse_stat("garbage"), None);
    }

    #[test]
    fn this_thread_is_alive_and_a_reused_id_is_not() {
        let word = me();
        assert!(holder_alive(word));
        // The same id with another start time: a thread that reused a dead holder's id.
        assert!(!holder_alive(word ^ 1));
        // No such thread.
        assert!(!holder_alive(pack(u32::MAX - 1, 5)));
    }
}
