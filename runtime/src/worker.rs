//! The worker side: a constructor that turns a re-executed binary into a worker before
//! `main` (and before any test harness) runs; its start-up, and its control segment. The
//! loop that serves chunks is in `serve`.

use std::io::Write;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicBool, Ordering};

use crate::direct::{self, WorkerEnd};
use crate::sys::segment::Segment;
use crate::wire::hello::{MARKER, worker_handshake};
use crate::wire::{Link, SocketLink};

mod serve;

use serve::work;

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
    // SAFETY: constructors run before `main`, while the process has a single thread.
    let Some(value) = (unsafe { crate::sys::process::take_env_var(MARKER) }) else {
        return;
    };
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

/// The marker's contents: the parent's token and pid, and what the worker is told
/// at start-up (`engine::spawn::Launch`).
#[derive(Debug, PartialEq, Eq, Default)]
struct Marker {
    token: u64,
    parent: u32,
    max_memory: Option<u64>,
    name: Option<String>,
}

const NOT_STARTED_BY_PARENT: &str = "a worker is started by a multiproc parent process, with \
                                     the socket it inherits; it cannot be started by hand";

fn parse_marker(value: &str) -> Result<Marker, String> {
    let malformed = || format!("{MARKER}={value:?} is malformed; {NOT_STARTED_BY_PARENT}");
    // The name comes last and may hold commas.
    let (value, name) = match value.split_once(",name=") {
        Some((head, name)) => (head, Some(name.to_owned())),
        None => (value, None),
    };
    let mut fields = value.split(',');
    let token = fields
        .next()
        .and_then(|t| t.strip_prefix("token="))
        .and_then(|t| u64::from_str_radix(t, 16).ok())
        .ok_or_else(malformed)?;
    let parent = fields
        .next()
        .and_then(|p| p.strip_prefix("parent="))
        .and_then(|p| p.parse().ok())
        .ok_or_else(malformed)?;
    let max_memory = match fields.next() {
        None => None,
        Some(mem) => Some(
            mem.strip_prefix("mem=")
                .and_then(|m| m.parse().ok())
                .ok_or_else(malformed)?,
        ),
    };
    if fields.next().is_some() {
        return Err(malformed());
    }
    Ok(Marker {
        token,
        parent,
        max_memory,
        name,
    })
}

/// Dies with the thread that started us: the parent-death signal, set here because
/// nothing runs between fork and exec in the parent. A parent that is already gone ends
/// us now, quietly. A marker that names a live process that is not our parent was set
/// by hand: that is an error, which the caller reports.
fn die_with_parent(parent: u32) -> Result<(), String> {
    let set = crate::sys::process::die_with_parent();
    let actual = crate::sys::process::parent();
    if set.is_err() {
        exit_on_parent_gone();
    }
    if actual != parent {
        // Our parent died before we looked (we were handed to another process), or the
        // marker names some other process.
        if !crate::sys::process::exists(parent) || actual == 1 {
            exit_on_parent_gone();
        }
        return Err(format!(
            "{MARKER} names process {parent} as the parent, but the parent is {actual}; \
             {NOT_STARTED_BY_PARENT}"
        ));
    }
    Ok(())
}

fn serve(marker: &str) -> Result<(), String> {
    let marker = parse_marker(marker)?;
    die_with_parent(marker.parent)?;
    // A task's child processes must not inherit the socket; stdin becomes /dev/null.
    let mut socket = crate::sys::socket::take_stdin_socket()
        .map_err(|why| format!("{why}; {NOT_STARTED_BY_PARENT}"))?;
    // Rust's runtime has not started yet, so SIGPIPE is still at its default (terminate).
    // A parent that goes away must give us EPIPE, not kill us mid-write.
    crate::sys::process::ignore_sigpipe();
    // Ctrl-C reaches the whole foreground process group: the parent decides.
    crate::sys::process::ignore_sigint();

    let mut buf = Vec::new();
    let shm = worker_handshake(&mut socket, &mut buf, marker.token)?;
    let watcher = socket
        .try_clone()
        .map_err(|e| format!("cannot duplicate the socket: {e}"))?;
    let link = SocketLink::new(socket).map_err(|e| format!("cannot duplicate the socket: {e}"))?;

    // One thread reads the frames, runs them and writes the answers: no hand-off between
    // threads on the way (a wake-up each, the largest part of a round trip). The
    // parent's driver never blocks on a write, so a worker that blocks writing an answer
    // while frames are still coming cannot deadlock with it. The main thread (this one)
    // only watches for the parent hanging up, so that ends the worker at once, even in
    // the middle of a task.
    std::thread::Builder::new()
        .name(marker.name.unwrap_or_else(|| "multiproc-worker".into()))
        .stack_size(crate::sys::process::main_stack_size())
        .spawn(move || {
            crate::sys::overflow::watch_this_thread();
            let mut link: Box<dyn Link> = Box::new(link);
            let Err(why) = work(&mut *link, shm);
            eprintln!("multiproc worker {}: {why}", std::process::id());
            let _ = std::io::stdout().flush();
            std::process::exit(EXIT_FAILURE);
        })
        .map_err(|e| format!("cannot start the worker thread: {e}"))?;
    // Returns only by ending the process, when the parent closes its end of the socket
    // (or, over its memory limit, by killing it).
    let watcher = std::os::fd::AsFd::as_fd(&watcher);
    match marker.max_memory {
        None => crate::sys::poll::until_hung_up(watcher),
        Some(limit) => {
            while !crate::sys::poll::hung_up_within(watcher, Some(MEMORY_TICK)) {
                if let Some(reached) = crate::sys::mem::private_resident()
                    && reached > limit
                {
                    over_memory_limit(reached);
                }
            }
        }
    }
    exit_on_parent_gone()
}

/// How often a worker with a memory limit looks at its memory: often enough that a task
/// filling memory as fast as the machine can (a few GiB a second) goes only a little
/// past the limit; reading `/proc/self/statm` takes a few microseconds.
const MEMORY_TICK: std::time::Duration = std::time::Duration::from_millis(2);

/// This worker went over its memory limit: records how far, leaves the note that tells
/// its driver why it died, and kills itself (no destructor, no handler runs: the task
/// may be in the middle of anything).
fn over_memory_limit(reached: u64) -> ! {
    if let Some(words) = WORDS.get() {
        words.memory.store(reached, Ordering::Release);
    }
    crate::sys::overflow::leave_note(direct::MEMORY_LIMIT);
    crate::sys::process::kill_self()
}

/// Set while the worker thread runs a chunk.
static BUSY: AtomicBool = AtomicBool::new(false);

/// The worker's control segment, mapped for the rest of its life once the parent's
/// `Setup` frame brought it.
static CONTROL: OnceLock<&'static Segment> = OnceLock::new();
/// The words at its start, once it is mapped.
static WORDS: OnceLock<direct::Words> = OnceLock::new();

/// Counts a chunk in the worker's counters: `items` ran, `failed` of them failed, in
/// `nanos`. Only the worker thread writes them; the parent reads them for `Pool::stats`.
fn count_chunk(items: u32, failed: usize, nanos: u64) {
    if let Some(words) = WORDS.get() {
        words.items.fetch_add(u64::from(items), Ordering::Relaxed);
        if failed > 0 {
            words.failed.fetch_add(failed as u64, Ordering::Relaxed);
        }
        words.busy.fetch_add(nanos, Ordering::Relaxed);
    }
}

/// Maps the parent's control segment (the progress word, the death note, then the
/// direct path) and keeps it for the life of the process.
fn install_control(mut control: Segment) -> Result<(), String> {
    if control.len() != direct::CONTROL_BYTES {
        return Err("protocol error: the control segment has the wrong size".into());
    }
    // Writable, and never passed on: a task must not find its descriptor.
    control.close_descriptor();
    // Never unmapped: the progress word and the direct path are used until the process
    // ends.
    let control: &'static Segment = Box::leak(Box::new(control));
    let words =
        direct::words(control).ok_or("protocol error: the control segment is not writable")?;
    crate::task::note::record_in(words.progress);
    crate::sys::overflow::leave_notes_in(words.death_note, direct::STACK_OVERFLOW);
    let _ = WORDS.set(words);
    let _ = CONTROL.set(control);
    Ok(())
}

/// The worker's direct path, once the parent's control segment is mapped.
fn direct() -> Option<WorkerEnd> {
    CONTROL.get().and_then(|control| WorkerEnd::new(control))
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
    // No destructors, no atexit handlers: another thread may be inside user code.
    crate::sys::process::exit_now(0)
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
                parent: 42,
                ..Marker::default()
            }
        );
        assert_eq!(
            parse_marker("token=00ff,parent=42,mem=4096,name=a, b").unwrap(),
            Marker {
                token: 255,
                parent: 42,
                max_memory: Some(4096),
                name: Some("a, b".into()),
            }
        );
        assert_eq!(
            parse_marker("token=00ff,parent=42,name=x").unwrap().name,
            Some("x".into())
        );
        for bad in [
            "token=ff",
            "fd=7,token=ff",
            "token=zz,parent=1",
            "token=ff,parent=x",
            "token=ff,parent=1,mem=x",
            "token=ff,parent=1,mem=1,extra",
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
