//! Ctrl-C for the pools built with `Interrupt::Cancel`: one thread per process waits
//! for SIGINT (the handler only wakes it) and stops every such pool that still runs, so
//! that their calls return `Interrupted`. A SIGINT that finds none, the second Ctrl-C
//! among them, gets the default action: the process ends, killed by SIGINT, and its
//! workers with it.

use std::sync::{Arc, Mutex, Weak};

use signal_hook::consts::SIGINT;

use super::PoolShared;
use crate::error::{Error, ErrorKind, Result};
use crate::sys::lock::lock;

/// The pools that Ctrl-C stops.
static CANCELLABLE: Mutex<Vec<Weak<PoolShared>>> = Mutex::new(Vec::new());

/// Makes Ctrl-C stop `pool` (from now on, until it is dropped).
pub(super) fn cancel_on_interrupt(pool: &Arc<PoolShared>) -> Result<()> {
    watch()?;
    let mut pools = lock(&CANCELLABLE);
    pools.retain(|p| p.strong_count() > 0);
    pools.push(Arc::downgrade(pool));
    Ok(())
}

/// Starts the thread that waits for SIGINT, once per process: a `fork()`ed copy, which
/// has none of its parent's threads, starts its own (and forgets the parent's pools).
fn watch() -> Result<()> {
    /// The fork generation whose thread is started.
    static WATCHING: Mutex<Option<u64>> = Mutex::new(None);
    let generation = crate::sys::fork::generation();
    let mut watching = lock(&WATCHING);
    if *watching == Some(generation) {
        return Ok(());
    }
    lock(&CANCELLABLE).clear();
    let failed = |why: String| Error::new(ErrorKind::Io, why);
    let mut signals = signal_hook::iterator::Signals::new([SIGINT])
        .map_err(|e| failed(format!("cannot watch for Ctrl-C (SIGINT): {e}")))?;
    std::thread::Builder::new()
        .name("multiproc-interrupt".into())
        .spawn(move || {
            for _ in signals.forever() {
                on_interrupt();
            }
        })
        .map_err(|e| failed(format!("cannot start the Ctrl-C thread: {e}")))?;
    *watching = Some(generation);
    Ok(())
}

/// A SIGINT came: stop the cancellable pools that still run, or, if there are none,
/// end the process as SIGINT would have without us.
fn on_interrupt() {
    let running: Vec<Arc<PoolShared>> = {
        let mut pools = lock(&CANCELLABLE);
        pools.retain(|p| p.strong_count() > 0);
        pools
            .iter()
            .filter_map(Weak::upgrade)
            .filter(|p| !p.is_terminated())
            .collect()
    };
    if running.is_empty() {
        // Restores the default action and raises the signal again: the process ends,
        // killed by SIGINT, as the shell expects.
        let _ = signal_hook::low_level::emulate_default_handler(SIGINT);
        return;
    }
    for pool in running {
        pool.stop_now(true);
    }
}
