//! Ctrl-C for the pools built with `Interrupt::Cancel`: one thread per process waits
//! for SIGINT (the handler only wakes it) and stops every such pool that still runs, so
//! that their calls return `Interrupted`. A SIGINT that finds none, the second Ctrl-C
//! among them, gets the default action: the process ends, killed by SIGINT, and its
//! workers with it.

use std::sync::{Arc, Mutex, OnceLock, Weak};

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

/// Starts the thread that waits for SIGINT, once per process.
fn watch() -> Result<()> {
    static WATCHING: OnceLock<std::result::Result<(), String>> = OnceLock::new();
    let started = WATCHING.get_or_init(|| {
        let mut signals = signal_hook::iterator::Signals::new([SIGINT])
            .map_err(|e| format!("cannot watch for Ctrl-C (SIGINT): {e}"))?;
        std::thread::Builder::new()
            .name("multiproc-interrupt".into())
            .spawn(move || {
                for _ in signals.forever() {
                    on_interrupt();
                }
            })
            .map(drop)
            .map_err(|e| format!("cannot start the Ctrl-C thread: {e}"))
    });
    started
        .clone()
        .map_err(|why| Error::new(ErrorKind::Io, why))
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
