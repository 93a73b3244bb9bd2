//! The worker side: a constructor that turns a re-executed binary into a worker before
//! `main` (and before any test harness) runs; its start-up, and its control segment. The
//! loop that serves chunks is in `serve`.

use std::cell::{Cell, RefCell};
use std::io::Write;
use std::os::fd::{FromRawFd, RawFd};
use std::os::unix::net::UnixStream;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::Once;
use std::sync::atomic::{AtomicBool, AtomicPtr, AtomicU64, Ordering};
use std::time::Duration;

use crate::protocol::{self, Frame, Hello};
use crate::transport::ShmConfig;

mod overflow;
mod serve;

pub(crate) use overflow::{SOCKET_TAKEN, STACK_OVERFLOW};

use serve::work;

/// The environment variable that marks a process as a worker. Its value holds the token
/// the parent will send over the socket the worker inherits as its standard input, and
/// the parent's pid: `token=<hex>,parent=<pid>`. It is removed before any user code runs.
pub(crate) const MARKER: &str = "MULTIPROC_WORKER";

/// The exit code of a worker that gives up (bad start, protocol error).
const EXIT_FAILURE: i32 = 2;

static IN_WORKER: AtomicBool = AtomicBool::new(false);

/// True in a worker process. `par_map` uses it to run inline instead of starting a pool
/// inside a worker.
pub fn in_worker() -> bool {
    IN_WORKER.load(Ordering::Relaxed)
}

// SAFETY (for `unsafe` in the attribute): the constructor runs before `main`, single
// threaded. It only reads and removes one environment variable and, in a worker, serves
// and exits; in any other process it returns at once.
#[ctor::ctor(unsafe)]
fn worker_entry() {
    let Some(value) = std::env::var_os(MARKER) else {
        return;
    };
    // The string as the kernel laid it out, which `/proc/<pid>/environ` shows: removing
    // the variable only takes it out of the `environ` array.
    let original = original_marker();
    // SAFETY: constructors run before `main`, while the process has a single thread, so
    // nothing can read the environment concurrently.
    unsafe { std::env::remove_var(MARKER) };
    if let Some((ptr, len)) = original {
        // SAFETY: `ptr..ptr + len` is the marker's string in the initial environment
        // block (writable memory of this process); nothing refers to it any more, since
        // the variable was just removed (and its value copied into `value`).
        unsafe { std::ptr::write_bytes(ptr, b'x', len) };
    }
    IN_WORKER.store(true, Ordering::Relaxed);
    let code = match serve(&value.to_string_lossy()) {
        Ok(()) => 0,
        Err(message) => {
            eprintln!("multiproc worker {}: {message}", std::process::id());
            EXIT_FAILURE
        }
    };
    let _ = std::io::stdout().flush();
    std::process::exit(code);
}

/// Where the marker's `NAME=value` string lies in the initial environment, and its
/// length without the NUL. Read before anything could have changed the environment.
fn original_marker() -> Option<(*mut u8, usize)> {
    unsafe extern "C" {
        static environ: *const *mut libc::c_char;
    }
    let prefix = format!("{MARKER}=");
    // SAFETY: `environ` is the C library's NUL-terminated array of NUL-terminated
    // strings; the constructor runs single threaded, before anything can change it.
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

/// The marker's contents: the parent's token and pid.
#[derive(Debug, PartialEq, Eq)]
struct Marker {
    token: u64,
    parent: u32,
}

const NOT_STARTED_BY_PARENT: &str = "a worker is started by a multiproc parent process, with \
                                     the socket it inherits; it cannot be started by hand";

fn parse_marker(value: &str) -> Result<Marker, String> {
    let malformed = || format!("{MARKER}={value:?} is malformed; {NOT_STARTED_BY_PARENT}");
    let (token, parent) = value.split_once(',').ok_or_else(malformed)?;
    let token = token
        .strip_prefix("token=")
        .and_then(|t| u64::from_str_radix(t, 16).ok())
        .ok_or_else(malformed)?;
    let parent = parent
        .strip_prefix("parent=")
        .and_then(|p| p.parse().ok())
        .ok_or_else(malformed)?;
    Ok(Marker { token, parent })
}

/// Dies with the thread that started us: the parent-death signal, set here because
/// nothing runs between fork and exec in the parent. A parent that is already gone ends
/// us now, quietly. A marker that names a live process that is not our parent was set
/// by hand: that is an error, which the caller reports.
fn die_with_parent(parent: u32) -> Result<(), String> {
    // SAFETY: prctl with PR_SET_PDEATHSIG takes a signal number and no pointers.
    let set = unsafe {
        libc::prctl(
            libc::PR_SET_PDEATHSIG,
            libc::SIGKILL as libc::c_ulong,
            0,
            0,
            0,
        )
    };
    // SAFETY: getppid has no preconditions.
    let actual = unsafe { libc::getppid() } as u32;
    if set != 0 {
        exit_on_parent_gone();
    }
    if actual != parent {
        // Our parent died before we looked (we were handed to another process), or the
        // marker names some other process.
        let named_lives = i32::try_from(parent).is_ok_and(crate::shm::segment::process_exists);
        if !named_lives || actual == 1 {
            exit_on_parent_gone();
        }
        return Err(format!(
            "{MARKER} names process {parent} as the parent, but the parent is {actual}; \
             {NOT_STARTED_BY_PARENT}"
        ));
    }
    Ok(())
}

/// Takes the socket the parent passed as standard input: moves it to a close-on-exec
/// descriptor of its own (a task's child processes must not inherit it, or the parent
/// would not see this worker's end of stream when it dies) and reopens stdin on
/// /dev/null, which is what tasks read.
fn inherited_socket() -> Result<RawFd, String> {
    let not_started_by_parent = NOT_STARTED_BY_PARENT;
    // SAFETY: fstat only writes into the zeroed struct we pass; an fd that is not open
    // makes it fail with EBADF, which is handled.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: see above; `st` is a valid, writable `stat`.
    if unsafe { libc::fstat(0, &mut st) } != 0 {
        return Err(format!(
            "standard input is not open ({}); {not_started_by_parent}",
            std::io::Error::last_os_error()
        ));
    }
    if st.st_mode & libc::S_IFMT != libc::S_IFSOCK {
        return Err(format!(
            "standard input is not a socket; {not_started_by_parent}"
        ));
    }
    // SAFETY: F_DUPFD_CLOEXEC on the open fd 0 returns a new descriptor >= 3.
    let fd = unsafe { libc::fcntl(0, libc::F_DUPFD_CLOEXEC, 3) };
    if fd < 0 {
        return Err(format!(
            "cannot move the socket: {}",
            std::io::Error::last_os_error()
        ));
    }
    // SAFETY: open on a NUL-terminated literal path.
    let null = unsafe { libc::open(c"/dev/null".as_ptr(), libc::O_RDONLY | libc::O_CLOEXEC) };
    // SAFETY: dup2 of the fd just opened onto fd 0 (clearing close-on-exec there), then
    // closing our extra copy of it.
    let replaced = null >= 0 && unsafe { libc::dup2(null, 0) } == 0;
    let why = std::io::Error::last_os_error();
    if null > 0 {
        // SAFETY: `null` is ours and no longer needed once duplicated.
        unsafe { libc::close(null) };
    }
    if !replaced {
        return Err(format!("cannot reopen standard input on /dev/null: {why}"));
    }
    Ok(fd)
}

fn serve(marker: &str) -> Result<(), String> {
    let marker = parse_marker(marker)?;
    die_with_parent(marker.parent)?;
    let fd = inherited_socket()?;
    // SAFETY: `fd` is an open socket (checked above) that this process inherited for
    // exactly this purpose; nothing else in the process owns or closes it.
    let mut reader = unsafe { UnixStream::from_raw_fd(fd) };
    // Rust's runtime has not started yet, so SIGPIPE is still at its default (terminate).
    // A parent that goes away must give us EPIPE, not kill us mid-write.
    // SAFETY: setting a signal disposition to SIG_IGN has no preconditions.
    unsafe { libc::signal(libc::SIGPIPE, libc::SIG_IGN) };

    let mut buf = Vec::new();
    let shm = handshake(&mut reader, &mut buf, marker.token)?;
    let watcher = reader
        .try_clone()
        .map_err(|e| format!("cannot duplicate the socket: {e}"))?;

    // One thread reads the frames, runs them and writes the answers: no hand-off between
    // threads on the way (a wake-up each, the largest part of a round trip). The
    // parent's driver never blocks on a write, so a worker that blocks writing an answer
    // while frames are still coming cannot deadlock with it. The main thread (this one)
    // only watches for the parent hanging up, so that ends the worker at once, even in
    // the middle of a task.
    std::thread::Builder::new()
        .name("multiproc-worker".into())
        .stack_size(main_stack_size())
        .spawn(move || {
            overflow::watch_this_thread();
            let Err(why) = work(reader, shm);
            eprintln!("multiproc worker {}: {why}", std::process::id());
            let _ = std::io::stdout().flush();
            std::process::exit(EXIT_FAILURE);
        })
        .map_err(|e| format!("cannot start the worker thread: {e}"))?;
    watch_for_hang_up(&watcher)
}

/// Returns only by ending the process, when the parent closes its end of the socket.
fn watch_for_hang_up(socket: &UnixStream) -> ! {
    loop {
        let mut pfd = libc::pollfd {
            fd: std::os::fd::AsRawFd::as_raw_fd(socket),
            events: libc::POLLRDHUP,
            revents: 0,
        };
        // SAFETY: `pfd` is one valid pollfd and we pass a count of 1. Data waiting to be
        // read does not wake it: only a hang-up (or an error) does.
        let n = unsafe { libc::poll(&mut pfd, 1, -1) };
        let gone = libc::POLLRDHUP | libc::POLLHUP | libc::POLLERR | libc::POLLNVAL;
        if n > 0 && pfd.revents & gone != 0 {
            exit_on_parent_gone();
        }
        if n < 0 && std::io::Error::last_os_error().kind() != std::io::ErrorKind::Interrupted {
            // Out of resources for a moment: ask again shortly rather than spin.
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

/// Set while the worker thread runs a chunk.
static BUSY: AtomicBool = AtomicBool::new(false);

/// The chunk the worker thread runs, for progress records.
static CURRENT_CHUNK: AtomicU64 = AtomicU64::new(0);

/// Where this worker records the item it is running (a word in a memfd the parent also
/// maps), or null before the parent's `Setup` frame.
static PROGRESS: AtomicPtr<AtomicU64> = AtomicPtr::new(std::ptr::null_mut());

/// Maps the parent's control segment (the progress word, then the direct lane) and
/// keeps it for the life of the process.
fn install_control(mut fds: Vec<std::os::fd::OwnedFd>) -> Result<(), String> {
    let fd = fds
        .pop()
        .ok_or("protocol error: a Setup frame without its memfd")?;
    // SAFETY: `stat` is plain old data, for which all zeroes is a valid value.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: fstat writes into the valid `st` we pass; failure is checked.
    if unsafe { libc::fstat(std::os::fd::AsRawFd::as_raw_fd(&fd), &mut st) } != 0
        || usize::try_from(st.st_size).ok() != Some(crate::lane::CONTROL_BYTES)
    {
        return Err("protocol error: the control segment has the wrong size".into());
    }
    // SAFETY: mapping the whole memfd the parent sent (its size checked above); checked
    // for MAP_FAILED.
    let p = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            crate::lane::CONTROL_BYTES,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_SHARED,
            std::os::fd::AsRawFd::as_raw_fd(&fd),
            0,
        )
    };
    if p == libc::MAP_FAILED {
        return Err(format!(
            "cannot map the control segment: {}",
            std::io::Error::last_os_error()
        ));
    }
    PROGRESS.store(p.cast(), Ordering::Release);
    // SAFETY: the second word of the mapping (see `Lane::death_note`): in bounds and
    // aligned for an `AtomicU64`.
    let note = unsafe { p.cast::<AtomicU64>().add(1) };
    overflow::DEATH_NOTE.store(note, Ordering::Release);
    Ok(())
}

/// The worker's lane, once the parent's control segment is mapped.
fn lane() -> Option<crate::lane::WorkerLane> {
    let p = PROGRESS.load(Ordering::Acquire);
    // SAFETY: a non-null `p` is the start of the control segment, a page-aligned
    // writable shared mapping of `CONTROL_BYTES` that is never unmapped.
    (!p.is_null()).then(|| unsafe { crate::lane::WorkerLane::new(p.cast()) })
}

/// Where a worker records which item of its chunk is running: read once per chunk, so
/// that recording an item is one relaxed store.
pub(crate) struct ProgressNote {
    slot: Option<&'static AtomicU64>,
    chunk: u64,
}

impl ProgressNote {
    /// The progress word of this worker (first in its control segment; none outside a
    /// worker) and the current chunk.
    pub(crate) fn current() -> Self {
        let p = PROGRESS.load(Ordering::Acquire);
        // SAFETY: a non-null `p` points at the start of a live, page-aligned shared mapping
        // that is never unmapped, so it is a valid, aligned `AtomicU64` for 'static.
        let slot = unsafe { p.as_ref() };
        let chunk = CURRENT_CHUNK.load(Ordering::Relaxed) & 0xffff_ffff;
        ProgressNote { slot, chunk }
    }

    /// Records that item `index` of the chunk starts (or, as the chunk's count, that
    /// the chunk is finished): the low 32 bits of the chunk id, then the index. Read by
    /// the parent only after a death.
    #[inline(always)]
    pub(crate) fn note(&self, index: u32) {
        if let Some(slot) = self.slot {
            slot.store(self.chunk << 32 | u64::from(index), Ordering::Relaxed);
        }
    }
}

/// Decodes a progress record: the item index, if it is about chunk `chunk`.
pub(crate) fn progress_item(record: u64, chunk: u64) -> Option<u32> {
    (record >> 32 == chunk & 0xffff_ffff).then_some(record as u32)
}

/// The parent closed the socket: it is done with us or gone. Leave at once; finish
/// writing buffered output only if no task is in the middle of printing.
fn exit_on_parent_gone() -> ! {
    // The serving thread and the hang-up watcher may both get here: the first one
    // leaves, the other waits for it, so that nothing is cut short half-way.
    static LEAVING: std::sync::Mutex<()> = std::sync::Mutex::new(());
    let _leaving = LEAVING.lock();
    if !BUSY.load(Ordering::SeqCst) {
        let _ = std::io::stdout().flush();
        // Let go of the segments the parent sent, as a release frame would have: the
        // last process to let go of a queue removes its large messages (`queue::life`).
        // Only Arcs are dropped: a handle still in use keeps its own.
        crate::shm::release_all();
    }
    // SAFETY: `_exit` ends the process without running destructors or atexit handlers,
    // which is what we want while another thread may be inside user code.
    unsafe { libc::_exit(0) }
}

/// Checks the parent's hello, answers it, and returns the shared-memory settings the
/// parent chose.
fn handshake(stream: &mut UnixStream, buf: &mut Vec<u8>, token: u64) -> Result<ShmConfig, String> {
    let me = Hello::of_this_process();
    match protocol::read_frame(stream, buf) {
        Ok(true) => {}
        Ok(false) => return Err("the parent closed the socket before the handshake".into()),
        Err(e) => return Err(format!("protocol error in the handshake: {e}")),
    }
    let mut shm = ShmConfig::default();
    let reply = match protocol::parse(buf) {
        // Only the process that started us knows the token: the environment marker
        // alone (inherited by accident, or set by hand) does not make a worker.
        Ok(Frame::Hello(parent)) if parent.token != token => {
            Some("the handshake token does not match the one this worker was started with".into())
        }
        Ok(Frame::Hello(parent)) => {
            shm = parent.shm();
            me.mismatch(&parent)
        }
        Ok(other) => Some(format!("expected a handshake, got {other:?}")),
        Err(e) => Some(format!("protocol error in the handshake: {e}")),
    };
    let mut out = Vec::new();
    let encoded = match &reply {
        None => protocol::hello_frame(&mut out, &me),
        Some(why) => protocol::fatal_frame(&mut out, why),
    };
    encoded.map_err(|e| e.to_string())?;
    stream
        .write_all(&out)
        .map_err(|e| format!("cannot answer the handshake: {e}"))?;
    match reply {
        None => Ok(shm),
        Some(why) => Err(why),
    }
}

/// The stack `main` would get: `RLIMIT_STACK`, or 8 MiB when it is unlimited or tiny.
fn main_stack_size() -> usize {
    const DEFAULT: usize = 8 << 20;
    // SAFETY: getrlimit only writes into the struct we pass.
    let mut lim: libc::rlimit = unsafe { std::mem::zeroed() };
    // SAFETY: `lim` is a valid, writable rlimit.
    if unsafe { libc::getrlimit(libc::RLIMIT_STACK, &mut lim) } != 0 {
        return DEFAULT;
    }
    match usize::try_from(lim.rlim_cur) {
        Ok(n) if lim.rlim_cur != libc::RLIM_INFINITY && n >= (1 << 20) => n,
        _ => DEFAULT,
    }
}

thread_local! {
    /// Set while a task runs under [`guarded`]: its panics are reported to the parent,
    /// not printed here.
    static IN_TASK: Cell<bool> = const { Cell::new(false) };
    static LAST_PANIC: RefCell<Option<String>> = const { RefCell::new(None) };
}

fn install_panic_hook() {
    static HOOK: Once = Once::new();
    HOOK.call_once(|| {
        let default = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            if IN_TASK.with(Cell::get) {
                let message = payload_message(info.payload());
                let text = match info.location() {
                    Some(loc) => format!("{message} (at {}:{})", loc.file(), loc.line()),
                    None => message,
                };
                LAST_PANIC.with(|p| *p.borrow_mut() = Some(text));
            } else {
                default(info);
            }
        }));
    });
}

fn payload_message(payload: &(dyn std::any::Any + Send)) -> String {
    if let Some(s) = payload.downcast_ref::<&str>() {
        (*s).to_owned()
    } else if let Some(s) = payload.downcast_ref::<String>() {
        s.clone()
    } else {
        "a panic with a non-string payload".to_owned()
    }
}

/// Runs `f`, turning a panic into its message (with the panic's location).
pub(crate) fn guarded<T>(f: impl FnOnce() -> T) -> Result<T, String> {
    install_panic_hook();
    let was = IN_TASK.with(|t| t.replace(true));
    let result = catch_unwind(AssertUnwindSafe(f));
    IN_TASK.with(|t| t.set(was));
    result.map_err(|payload| {
        LAST_PANIC
            .with(|p| p.borrow_mut().take())
            .unwrap_or_else(|| payload_message(&*payload))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_marker_holds_a_token_and_the_parent() {
        assert_eq!(
            parse_marker("token=00ff,parent=42").unwrap(),
            Marker {
                token: 255,
                parent: 42
            }
        );
        for bad in [
            "token=ff",
            "fd=7,token=ff",
            "token=zz,parent=1",
            "token=ff,parent=x",
            "parent=1,token=ff",
            "",
        ] {
            let e = parse_marker(bad).unwrap_err();
            assert!(
                e.contains("malformed") && e.contains("cannot be started by hand"),
                "{e}"
            );
        }
    }
}
