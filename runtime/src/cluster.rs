//! Running over the ranks of an MPI job (feature `mpi`): the same binary on every rank;
//! rank 0 runs `main`, every other rank serves tasks from its constructor and never
//! reaches `main`. A cluster pool is an ordinary pool whose queue is also fed to the
//! other ranks, each of which runs the chunks in local worker processes of its own.
//!
//! Without the feature, or in a process no launcher started, nothing here runs: the
//! global pool is the local one, and `Pool::builder().cluster()` is an error that says
//! why.

#[cfg(feature = "mpi")]
mod endpoint;
#[cfg(feature = "mpi")]
pub(crate) mod launch;
#[cfg(feature = "mpi")]
mod msg;
#[cfg(feature = "mpi")]
mod rank;
#[cfg(feature = "mpi")]
mod root;
#[cfg(feature = "mpi")]
mod window;

use std::sync::Arc;

use crate::engine::{PoolConfig, PoolCore};
use crate::error::Result;

/// The pool `par_map` uses outside any `with_pool!`: in a program an MPI launcher
/// started (with the `mpi` feature), one over every rank; else the local global pool.
pub(crate) fn global() -> Result<Arc<PoolCore>> {
    #[cfg(feature = "mpi")]
    if mpi_side::is_root() {
        return mpi_side::global();
    }
    crate::engine::global()
}

/// Starts a pool over every rank: `config.workers` is ignored; each rank (rank 0
/// included) runs `workers_per_rank` workers, or its share of its host's cores.
pub(crate) fn start_pool(config: PoolConfig, workers_per_rank: Option<usize>) -> Result<PoolCore> {
    if let Some(hook) = config.initializer.as_ref().or(config.on_exit.as_ref()) {
        return Err(crate::error::Error::new(
            crate::error::ErrorKind::InvalidConfig,
            format!(
                "a cluster pool does not run an {} yet: the other ranks start their \
                 workers without it; use a local Pool (Pool::builder().workers(n))",
                hook.role()
            ),
        ));
    }
    #[cfg(feature = "mpi")]
    {
        mpi_side::start_pool(config, workers_per_rank)
    }
    #[cfg(not(feature = "mpi"))]
    {
        let _ = (config, workers_per_rank);
        Err(crate::error::Error::new(
            crate::error::ErrorKind::InvalidConfig,
            "Pool::builder().cluster() needs multiproc built with its `mpi` feature \
             (multiproc = { version = \"…\", features = [\"mpi\"] }), and a program started \
             by an MPI launcher",
        ))
    }
}

#[cfg(feature = "mpi")]
use mpi_side::{BEAT, Hosted, start_mpi};

#[cfg(feature = "mpi")]
mod mpi_side {
    use std::sync::{Arc, Mutex, OnceLock};
    use std::time::Duration;

    use super::launch::{self, Launch};
    use super::root::{Ranks, Root};
    use crate::engine::{PoolConfig, PoolCore};
    use crate::error::{Error, ErrorKind, Result};
    use crate::sys::lock::lock;

    /// How often each side says it is alive.
    pub(crate) const BEAT: Duration = Duration::from_millis(500);
    /// Gives up on a rank silent for this long (seconds); default 10.
    const RANK_TIMEOUT_VAR: &str = "MULTIPROC_RANK_TIMEOUT";
    const DEFAULT_RANK_TIMEOUT: Duration = Duration::from_secs(10);

    /// This process's launch, when it is rank 0 of an MPI job.
    static ROOT_LAUNCH: OnceLock<Launch> = OnceLock::new();
    static ROOT: OnceLock<std::result::Result<Arc<Root>, String>> = OnceLock::new();
    static GLOBAL: Mutex<Option<Arc<PoolCore>>> = Mutex::new(None);

    // SAFETY (for `unsafe` in the attribute): runs before `main`, single threaded. In a
    // worker, or without a launcher, it returns at once. On a serving rank it serves and
    // exits; on rank 0 it records the launch, marks the environment (so programs that
    // a task starts are not taken for ranks) and registers the shutdown at exit.
    #[ctor::ctor(unsafe)]
    fn cluster_entry() {
        if std::env::var_os(crate::wire::hello::MARKER).is_some() {
            return;
        }
        let Some(found) = launch::from_env() else {
            return;
        };
        // SAFETY: constructors run before `main`, while the process has one thread, so
        // nothing reads the environment concurrently.
        unsafe { std::env::set_var(launch::RANK_PID_VAR, std::process::id().to_string()) };
        if found.rank == 0 {
            let _ = ROOT_LAUNCH.set(found);
            crate::sys::process::at_exit(finish);
        } else {
            let timeout = rank_timeout().unwrap_or(DEFAULT_RANK_TIMEOUT);
            super::rank::serve(found, (timeout * 3).max(Duration::from_secs(30)));
        }
    }

    pub(super) fn is_root() -> bool {
        ROOT_LAUNCH.get().is_some()
    }

    fn rank_timeout() -> Result<Duration> {
        let Ok(text) = std::env::var(RANK_TIMEOUT_VAR) else {
            return Ok(DEFAULT_RANK_TIMEOUT);
        };
        match text.trim().parse::<f64>() {
            Ok(s) if s.is_finite() && s > 0.0 => Ok(Duration::from_secs_f64(s)),
            _ => Err(Error::new(
                ErrorKind::InvalidConfig,
                format!("{RANK_TIMEOUT_VAR}={text:?} is not a positive number of seconds"),
            )),
        }
    }

    /// Rank 0's cluster thread, started on first use.
    fn root() -> Result<Arc<Root>> {
        if !is_root() {
            return Err(Error::new(ErrorKind::InvalidConfig, launch::not_launched()));
        }
        let started = ROOT.get_or_init(|| {
            rank_timeout()
                .and_then(Root::start)
                .map(Arc::new)
                .map_err(|e| e.to_string())
        });
        match started {
            Ok(root) => Ok(Arc::clone(root)),
            Err(why) => Err(Error::new(
                ErrorKind::Spawn,
                format!("the cluster could not start: {why}"),
            )),
        }
    }

    pub(super) fn start_pool(
        mut config: PoolConfig,
        workers_per_rank: Option<usize>,
    ) -> Result<PoolCore> {
        let root = root()?;
        config.workers = workers_per_rank.unwrap_or(root.info.share);
        let core = PoolCore::start(config)?;
        let (pool, workers) = root.open(core.tap(), workers_per_rank)?;
        core.attach_remote(Arc::new(Ranks {
            root,
            pool,
            workers,
        }));
        Ok(core)
    }

    pub(super) fn global() -> Result<Arc<PoolCore>> {
        let mut slot = lock(&GLOBAL);
        if let Some(pool) = &*slot {
            return Ok(Arc::clone(pool));
        }
        let config = crate::engine::global_config()?;
        let per_rank = std::env::var_os(crate::engine::WORKERS_VAR).map(|_| config.workers);
        let pool = Arc::new(start_pool(config, per_rank)?);
        *slot = Some(Arc::clone(&pool));
        Ok(pool)
    }

    /// At exit on rank 0: the global cluster pool finishes, every rank is told to stop,
    /// and MPI is finalised (MPI requires it of every rank, even one that never used
    /// the cluster: the others wait for it in `MPI_Init` until then).
    extern "C" fn finish() {
        let pool = match GLOBAL.try_lock() {
            Ok(mut slot) => slot.take(),
            Err(_) => None,
        };
        if let Some(pool) = pool {
            pool.shutdown_within(Duration::from_secs(2));
        }
        if let Ok(root) = root() {
            root.shutdown();
        }
    }

    /// What a rank knows of its host once MPI is up.
    pub(crate) struct Hosted {
        pub host: String,
        /// This rank's share of its host's cores: its workers when a pool does not say.
        pub share: usize,
    }

    /// Initialises MPI on this thread (`Threading::Funneled`: every MPI call of this
    /// process comes from it), and works out this rank's share of its host.
    pub(crate) fn start_mpi() -> Result<(mpi::environment::Universe, Hosted)> {
        use mpi::traits::Communicator;
        let (universe, threading) = mpi::initialize_with_threading(mpi::Threading::Funneled)
            .ok_or_else(|| Error::new(ErrorKind::Spawn, "MPI was initialised already"))?;
        if threading < mpi::Threading::Funneled {
            return Err(Error::new(
                ErrorKind::Spawn,
                "the MPI library cannot be used from a thread other than the main one \
                 (it offers only MPI_THREAD_SINGLE)",
            ));
        }
        let world = universe.world();
        let node = world.split_shared(world.rank());
        let cores = std::thread::available_parallelism().map_or(1, usize::from);
        let share = share_of(
            cores,
            usize::try_from(node.size()).unwrap_or(1),
            usize::try_from(node.rank()).unwrap_or(0),
        );
        let host = mpi::environment::processor_name().unwrap_or_else(|_| "?".into());
        Ok((universe, Hosted { host, share }))
    }

    /// The workers of local rank `local` of `ranks` on a host of `cores` cores: an equal
    /// share, the remainder to the first ranks, and at least one.
    pub(super) fn share_of(cores: usize, ranks: usize, local: usize) -> usize {
        let ranks = ranks.max(1);
        (cores / ranks + usize::from(local < cores % ranks)).max(1)
    }

    #[cfg(test)]
    mod tests {
        use super::share_of;

        #[test]
        fn cores_are_shared_between_the_ranks_of_a_host() {
            assert_eq!(share_of(16, 1, 0), 16);
            let shares: Vec<usize> = (0..3).map(|l| share_of(16, 3, l)).collect();
            assert_eq!(shares, [6, 5, 5]);
            assert_eq!(shares.iter().sum::<usize>(), 16);
            assert_eq!(share_of(2, 3, 2), 1);
        }
    }
}
