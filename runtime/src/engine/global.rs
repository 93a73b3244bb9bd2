//! The global pool: started on first use, sized by `MULTIPROC_WORKERS` or the number of
//! cores, shared by every later call, and shut down when the process exits.

use std::sync::{Arc, Mutex, Once};
use std::time::Duration;

use super::{PoolConfig, PoolCore, lock};
use crate::error::{Error, ErrorKind, Result};

/// Overrides the global pool's worker count.
pub(crate) const WORKERS_VAR: &str = "MULTIPROC_WORKERS";
/// The memory limit per worker of every pool that sets none itself.
pub(crate) const MAX_MEMORY_VAR: &str = "MULTIPROC_MAX_MEMORY";

static GLOBAL: Mutex<Option<Arc<PoolCore>>> = Mutex::new(None);

/// The global pool, started now if this is the first use. A start that fails is returned
/// as the error and retried on the next call.
pub(crate) fn global() -> Result<Arc<PoolCore>> {
    let mut slot = lock(&GLOBAL);
    if let Some(pool) = &*slot {
        if !pool.foreign() {
            return Ok(Arc::clone(pool));
        }
        // This process is a fork()ed copy of the one that started the pool: it gets a
        // fresh pool of its own. The inherited one is forgotten, not dropped: dropping
        // it would wait for drivers that exist only in the original.
        if let Some(inherited) = slot.take() {
            std::mem::forget(inherited);
        }
    }
    let pool = Arc::new(PoolCore::start(global_config()?)?);
    static AT_EXIT: Once = Once::new();
    AT_EXIT.call_once(|| {
        // A failure (no slot left) only means workers exit on end-of-stream instead.
        crate::sys::process::at_exit(shutdown_global);
    });
    *slot = Some(Arc::clone(&pool));
    Ok(pool)
}

/// The global pool's configuration: its worker count from the environment, every other
/// setting at its default.
pub(crate) fn global_config() -> Result<PoolConfig> {
    Ok(PoolConfig {
        workers: workers_from_env(std::env::var(WORKERS_VAR).ok().as_deref())?,
        program: super::spawn::default_program(),
        max_tasks_per_worker: None,
        task_timeout: None,
        shm: crate::wire::ShmConfig::default(),
        retries: 0,
        max_memory: max_memory_from_env()?,
        cancel_on_interrupt: false,
        initializer: None,
        on_exit: None,
    })
}

/// The worker count for the global pool: `MULTIPROC_WORKERS` if set, else one per core.
fn workers_from_env(var: Option<&str>) -> Result<usize> {
    match var {
        None => Ok(std::thread::available_parallelism().map_or(1, usize::from)),
        Some(text) => match text.trim().parse::<usize>() {
            Ok(n) if n > 0 => Ok(n),
            _ => Err(Error::new(
                ErrorKind::InvalidConfig,
                format!("{WORKERS_VAR}={text:?} is not a positive whole number of workers"),
            )),
        },
    }
}

/// The memory limit per worker that `MULTIPROC_MAX_MEMORY` sets, if any.
pub(crate) fn max_memory_from_env() -> Result<Option<u64>> {
    std::env::var(MAX_MEMORY_VAR)
        .ok()
        .map(|text| {
            parse_bytes(&text).ok_or_else(|| {
                Error::new(
                    ErrorKind::InvalidConfig,
                    format!(
                        "{MAX_MEMORY_VAR}={text:?} is not a size in bytes above zero \
                         (a whole number, optionally with K, M, G or T, binary: 512M)"
                    ),
                )
            })
        })
        .transpose()
}

/// A size: a whole number of bytes, optionally followed by `K`, `M`, `G` or `T` (with or
/// without `iB` or `B`; binary multiples either way). Zero is not a size.
fn parse_bytes(text: &str) -> Option<u64> {
    let text = text.trim();
    let digits = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(digits);
    let number: u64 = number.parse().ok()?;
    let shift = match unit.trim().to_ascii_uppercase().as_str() {
        "" | "B" => 0,
        "K" | "KB" | "KIB" => 10,
        "M" | "MB" | "MIB" => 20,
        "G" | "GB" | "GIB" => 30,
        "T" | "TB" | "TIB" => 40,
        _ => return None,
    };
    number.checked_mul(1 << shift).filter(|&bytes| bytes > 0)
}

/// At exit: let queued work finish for a moment, close every worker's socket, reap them.
extern "C" fn shutdown_global() {
    // `try_lock`: exit can be called while another thread is starting the pool; then
    // the workers still exit on their own, on end-of-stream or the parent-death signal.
    let pool = match GLOBAL.try_lock() {
        Ok(mut slot) => slot.take(),
        Err(_) => None,
    };
    match pool {
        // An inherited pool (this is a fork()ed copy) is not ours to shut down.
        Some(pool) if pool.foreign() => std::mem::forget(pool),
        Some(pool) => pool.shutdown_within(Duration::from_secs(2)),
        None => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn worker_count_comes_from_the_environment() {
        assert_eq!(workers_from_env(Some("3")).unwrap(), 3);
        assert_eq!(workers_from_env(Some(" 4 ")).unwrap(), 4);
        assert!(workers_from_env(None).unwrap() >= 1);
        for bad in ["0", "-1", "two", ""] {
            let e = workers_from_env(Some(bad)).unwrap_err();
            assert_eq!(e.kind(), ErrorKind::InvalidConfig);
            assert!(e.to_string().contains(WORKERS_VAR), "{e}");
        }
    }

    #[test]
    fn sizes_are_bytes_or_binary_multiples() {
        assert_eq!(parse_bytes("4096"), Some(4096));
        assert_eq!(parse_bytes("512M"), Some(512 << 20));
        assert_eq!(parse_bytes(" 2 GiB "), Some(2 << 30));
        assert_eq!(parse_bytes("3kb"), Some(3 << 10));
        for bad in ["", "0", "0M", "M", "-1", "1.5G", "12Q", "99999999999T"] {
            assert_eq!(parse_bytes(bad), None, "{bad:?}");
        }
    }
}
