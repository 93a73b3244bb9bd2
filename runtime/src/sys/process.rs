//! Processes: signalling and watching them, the parent-death signal, how one ended, and
//! what runs at exit.

use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::process::ExitStatusExt;
use std::process::ExitStatus;

use rustix::process::{Pid, Signal};

/// Sends SIGKILL to `pid`. The caller must know the pid is still its unreaped child (or
/// a process it otherwise owns): a reaped pid may name an unrelated process.
pub(crate) fn kill(pid: u32) -> std::io::Result<()> {
    let pid = to_pid(pid).ok_or_else(|| std::io::Error::from_raw_os_error(libc::ESRCH))?;
    rustix::process::kill_process(pid, Signal::KILL).map_err(Into::into)
}

/// How [`stop`] asks a process to end.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Stop {
    /// SIGTERM: it may handle it.
    Term,
    /// SIGKILL: it cannot.
    Kill,
}

impl Stop {
    pub(crate) fn name(self) -> &'static str {
        match self {
            Stop::Term => "SIGTERM",
            Stop::Kill => "SIGKILL",
        }
    }
}

/// Sends `pid` the signal `how` names; the same rule as [`kill`] on which pid.
pub(crate) fn stop(pid: u32, how: Stop) -> std::io::Result<()> {
    let pid = to_pid(pid).ok_or_else(|| std::io::Error::from_raw_os_error(libc::ESRCH))?;
    let signal = match how {
        Stop::Term => Signal::TERM,
        Stop::Kill => Signal::KILL,
    };
    rustix::process::kill_process(pid, signal).map_err(Into::into)
}

fn to_pid(pid: u32) -> Option<Pid> {
    Pid::from_raw(i32::try_from(pid).ok()?)
}

/// Whether a process `pid` exists (one of another user's counts: EPERM).
pub(crate) fn exists(pid: u32) -> bool {
    let Some(pid) = to_pid(pid) else {
        return false;
    };
    match rustix::process::test_kill_process(pid) {
        Ok(()) => true,
        Err(e) => e == rustix::io::Errno::PERM,
    }
}

/// A pidfd of the process `pid` (a child not yet reaped, so the pid is still its own):
/// readable once it has exited. `None` where the kernel refuses.
pub(crate) fn pidfd(pid: u32) -> Option<OwnedFd> {
    rustix::process::pidfd_open(to_pid(pid)?, rustix::process::PidfdFlags::empty()).ok()
}

/// Whether the process behind `pidfd` has exited (`None`: asking failed).
pub(crate) fn has_exited(pidfd: &impl AsFd) -> Option<bool> {
    exited_within(pidfd, std::time::Duration::ZERO)
}

/// Whether the process behind `pidfd` exits within `timeout` (`None`: asking failed).
pub(crate) fn exited_within(pidfd: &impl AsFd, timeout: std::time::Duration) -> Option<bool> {
    crate::sys::poll::readable_within(pidfd.as_fd(), timeout).ok()
}

/// Asks the kernel to SIGKILL this process when the thread that started it exits.
pub(crate) fn die_with_parent() -> std::io::Result<()> {
    rustix::process::set_parent_process_death_signal(Some(Signal::KILL)).map_err(Into::into)
}

/// This process's parent (0 if it has none: it was handed to no process).
pub(crate) fn parent() -> u32 {
    rustix::process::getppid().map_or(0, |p| p.as_raw_nonzero().get() as u32)
}

/// Makes a write to a socket whose peer is gone fail with EPIPE instead of killing the
/// process. Needed before `main`, where the standard library has not done it yet.
pub(crate) fn ignore_sigpipe() {
    // SAFETY: setting a signal disposition to SIG_IGN has no preconditions, and no
    // handler of ours is replaced (none was installed for SIGPIPE).
    unsafe { libc::signal(libc::SIGPIPE, libc::SIG_IGN) };
}

/// Makes a terminal's Ctrl-C (SIGINT to the foreground process group) leave this
/// process alone: a worker's parent decides what Ctrl-C does.
pub(crate) fn ignore_sigint() {
    // SAFETY: as in `ignore_sigpipe`; called in a worker before `main`, where nothing
    // installed a SIGINT handler.
    unsafe { libc::signal(libc::SIGINT, libc::SIG_IGN) };
}

/// Ends this process at once with SIGKILL, as its parent would.
pub(crate) fn kill_self() -> ! {
    let _ = rustix::process::kill_process(rustix::process::getpid(), Signal::KILL);
    // SIGKILL cannot be caught; should the call itself fail, leave anyway.
    exit_now(137)
}

/// Runs `f` when the process exits normally (returning from `main`, or `exit`). A
/// failure (no slot left) is ignored: every user of this has a fallback.
pub(crate) fn at_exit(f: extern "C" fn()) {
    // SAFETY: registering a plain `extern "C" fn()` with atexit has no preconditions.
    unsafe { libc::atexit(f) };
}

/// The stack `main` would get: `RLIMIT_STACK`, or 8 MiB when it is unlimited or tiny.
pub(crate) fn main_stack_size() -> usize {
    const DEFAULT: usize = 8 << 20;
    let lim = rustix::process::getrlimit(rustix::process::Resource::Stack);
    match lim.current.map(usize::try_from) {
        Some(Ok(n)) if n >= (1 << 20) => n,
        _ => DEFAULT,
    }
}

/// "was killed by signal 9 (SIGKILL)", "exited with code 3", …
pub(crate) fn describe_exit(status: ExitStatus) -> String {
    if let Some(sig) = status.signal() {
        format!("was killed by signal {sig} ({})", signal_name(sig))
    } else if let Some(code) = status.code() {
        format!("exited with code {code}")
    } else {
        format!("ended ({status})")
    }
}

fn signal_name(sig: i32) -> &'static str {
    match sig {
        libc::SIGHUP => "SIGHUP",
        libc::SIGINT => "SIGINT",
        libc::SIGQUIT => "SIGQUIT",
        libc::SIGILL => "SIGILL",
        libc::SIGTRAP => "SIGTRAP",
        libc::SIGABRT => "SIGABRT",
        libc::SIGBUS => "SIGBUS",
        libc::SIGFPE => "SIGFPE",
        libc::SIGKILL => "SIGKILL",
        libc::SIGSEGV => "SIGSEGV",
        libc::SIGPIPE => "SIGPIPE",
        libc::SIGALRM => "SIGALRM",
        libc::SIGTERM => "SIGTERM",
        libc::SIGXCPU => "SIGXCPU",
        libc::SIGXFSZ => "SIGXFSZ",
        _ => "signal",
    }
}

/// Ends the process now with `code`, running no destructors and no exit handlers: for a
/// worker whose other thread may be inside user code.
pub(crate) fn exit_now(code: i32) -> ! {
    // SAFETY: `_exit` has no preconditions; it ends the process without running
    // destructors or atexit handlers, which is what the callers want.
    unsafe { libc::_exit(code) }
}

/// Takes the environment variable `name` out of this process for good: returns its
/// value, removes it, and overwrites the string the kernel laid out at start-up (which
/// `/proc/<pid>/environ` shows, since removing a variable only takes it out of the
/// `environ` array).
///
/// # Safety
/// Only while the process has a single thread (a constructor before `main`): nothing
/// may read or change the environment concurrently.
pub(crate) unsafe fn take_env_var(name: &str) -> Option<std::ffi::OsString> {
    let value = std::env::var_os(name)?;
    let original = original_env_string(name);
    // SAFETY: the caller guarantees a single thread, so nothing reads the environment
    // concurrently.
    unsafe { std::env::remove_var(name) };
    if let Some((ptr, len)) = original {
        // SAFETY: `ptr..ptr + len` is the variable's string in the initial environment
        // block (writable memory of this process); nothing refers to it any more, since
        // the variable was just removed (and its value copied into `value`).
        unsafe { std::ptr::write_bytes(ptr, b'x', len) };
    }
    Some(value)
}

/// Where the `NAME=value` string of `name` lies in the environment, and its length
/// without the NUL. Read before anything could have changed the environment.
fn original_env_string(name: &str) -> Option<(*mut u8, usize)> {
    unsafe extern "C" {
        static environ: *const *mut std::ffi::c_char;
    }
    let prefix = format!("{name}=");
    // SAFETY: `environ` is the C library's NUL-terminated array of NUL-terminated
    // strings; `take_env_var`'s caller runs single threaded, so nothing changes it.
    unsafe {
        let mut p = environ;
        while !p.is_null() && !(*p).is_null() {
            let entry = std::ffi::CStr::from_ptr(*p);
            if entry.to_bytes().starts_with(prefix.as_bytes()) {
                return Some(((*p).cast::<u8>(), entry.to_bytes().len()));
            }
            p = p.add(1);
        }
    }
    None
}
