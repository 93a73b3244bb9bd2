//! Stack overflows in tasks, named as such.
//!
//! A worker serves before `main`, so the standard library never installed the handler
//! that turns a fault in a thread's guard page into "thread '…' has overflowed its
//! stack". Without one, a task that recurses too deep dies of a bare SIGSEGV. This
//! module does what the standard library does for `main`'s threads: the task thread
//! gets an alternate signal stack and records where its guard page is, and a SIGSEGV or
//! SIGBUS handler compares the faulting address with it. In the guard page: the
//! message goes to stderr and a note to the control segment, which the parent reads
//! once the worker is dead ("the worker overflowed its stack"). Either way the default
//! disposition is restored and the fault happens again, so the worker dies of the signal
//! as it would have.

use std::cell::Cell;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Once, OnceLock};

/// The word where a dying worker leaves its note for the parent (its control
/// segment's), once the worker has one, and the note that says "stack overflow".
static DEATH_NOTE: OnceLock<&'static AtomicU64> = OnceLock::new();
static OVERFLOW_NOTE: AtomicU64 = AtomicU64::new(0);

/// From now on, notes go to `word` (mapped for the rest of the process's life), and a
/// stack overflow leaves `overflow`. Only the first call counts.
pub(crate) fn leave_notes_in(word: &'static AtomicU64, overflow: u64) {
    OVERFLOW_NOTE.store(overflow, Ordering::Relaxed);
    let _ = DEATH_NOTE.set(word);
}

/// Leaves `note` for the parent, which reads it once this process is dead. Nothing
/// happens before [`leave_notes_in`], or in a process without a control segment.
/// Async-signal-safe: one atomic load and one atomic store.
pub(crate) fn leave_note(note: u64) {
    if let Some(word) = DEATH_NOTE.get() {
        word.store(note, Ordering::Release);
    }
}

thread_local! {
    /// This thread's guard page: `[start, end)`, or empty.
    static GUARD: Cell<(usize, usize)> = const { Cell::new((0, 0)) };
}

/// Size of each task thread's alternate signal stack.
const ALT_STACK: usize = 64 << 10;

/// Sets up the calling thread (the one that runs tasks) so that an overflow of its
/// stack is reported as one. Failures leave the plain SIGSEGV, as before.
pub(crate) fn watch_this_thread() {
    GUARD.with(|g| g.set(guard_page().unwrap_or((0, 0))));
    // SAFETY: an anonymous private mapping of ALT_STACK bytes, checked for MAP_FAILED;
    // it is never unmapped: the thread serves until the process exits.
    let alt = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            ALT_STACK,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
            -1,
            0,
        )
    };
    if alt == libc::MAP_FAILED {
        return;
    }
    let stack = libc::stack_t {
        ss_sp: alt,
        ss_flags: 0,
        ss_size: ALT_STACK,
    };
    // SAFETY: `stack` describes the live mapping above, which outlives the thread.
    if unsafe { libc::sigaltstack(&stack, std::ptr::null_mut()) } != 0 {
        return;
    }
    static HANDLER: Once = Once::new();
    HANDLER.call_once(|| {
        for signal in [libc::SIGSEGV, libc::SIGBUS] {
            // SAFETY: a zeroed sigaction is valid; it is filled in before use.
            let mut action: libc::sigaction = unsafe { std::mem::zeroed() };
            action.sa_sigaction = on_fault as *const () as libc::sighandler_t;
            action.sa_flags = libc::SA_SIGINFO | libc::SA_ONSTACK;
            // SAFETY: installs a handler that only does async-signal-safe things (see
            // `on_fault`), for signals whose default only kills.
            unsafe { libc::sigaction(signal, &action, std::ptr::null_mut()) };
        }
    });
}

/// The calling thread's guard page, from its pthread attributes: glibc puts the guard
/// right below the lowest address of the usable stack.
fn guard_page() -> Option<(usize, usize)> {
    // SAFETY: pthread_getattr_np fills the zeroed attribute object, which is destroyed
    // below; the out-parameters are valid locals.
    unsafe {
        let mut attr: libc::pthread_attr_t = std::mem::zeroed();
        if libc::pthread_getattr_np(libc::pthread_self(), &mut attr) != 0 {
            return None;
        }
        let mut addr: *mut libc::c_void = std::ptr::null_mut();
        let mut size = 0usize;
        let mut guard = 0usize;
        let ok = libc::pthread_attr_getstack(&attr, &mut addr, &mut size) == 0
            && libc::pthread_attr_getguardsize(&attr, &mut guard) == 0;
        libc::pthread_attr_destroy(&mut attr);
        let low = addr as usize;
        // At least one page, even where the attribute says no guard.
        let guard = guard.max(4096);
        (ok && low > guard).then(|| (low - guard, low))
    }
}

/// The SIGSEGV / SIGBUS handler. Async-signal-safe: a thread-local read (const
/// initialised, no allocation), `write(2)`, an atomic store and `sigaction`.
extern "C" fn on_fault(signal: libc::c_int, info: *mut libc::siginfo_t, _: *mut libc::c_void) {
    // SAFETY: the kernel passes a valid siginfo for a signal installed with SA_SIGINFO.
    let addr = unsafe { (*info).si_addr() } as usize;
    let (start, end) = GUARD.with(Cell::get);
    if start <= addr && addr < end {
        let message = b"\nthread 'multiproc-worker' has overflowed its stack\n\
                        fatal runtime error: stack overflow in a task\n";
        // SAFETY: write(2) of a static buffer to stderr.
        unsafe { libc::write(2, message.as_ptr().cast(), message.len()) };
        leave_note(OVERFLOW_NOTE.load(Ordering::Relaxed));
    }
    // SAFETY: restoring the default disposition; returning re-runs the faulting access,
    // which now kills the process with this signal.
    unsafe {
        let mut action: libc::sigaction = std::mem::zeroed();
        action.sa_sigaction = libc::SIG_DFL;
        libc::sigaction(signal, &action, std::ptr::null_mut());
    }
}
