//! Whether this process was started by an MPI launcher, and as which rank: read from
//! the launcher's environment before `main`.

/// The variables launchers set to a process's rank, in the order they are trusted:
/// Open MPI, MPICH's Hydra, PMIx launchers, Slurm's `srun`.
pub(crate) const RANK_VARS: [&str; 4] = [
    "OMPI_COMM_WORLD_RANK",
    "PMI_RANK",
    "PMIX_RANK",
    "SLURM_PROCID",
];

/// Set by a rank for its own pid: a process that inherits the launcher's variables from
/// a rank (a program a task starts) is not a rank itself.
pub(crate) const RANK_PID_VAR: &str = "MULTIPROC_RANK_PID";

/// How this process was launched.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Launch {
    /// The rank the launcher gave this process.
    pub rank: usize,
    /// The variable it was read from.
    pub via: &'static str,
}

/// The launch this environment describes (`get` reads a variable), for the process
/// `pid`; `None` without a launcher, or in a descendant of a rank.
pub(crate) fn detect(get: impl Fn(&str) -> Option<String>, pid: u32) -> Option<Launch> {
    if get(RANK_PID_VAR).is_some_and(|owner| owner.trim() != pid.to_string()) {
        return None;
    }
    RANK_VARS.iter().find_map(|&var| {
        let rank = get(var)?.trim().parse().ok()?;
        Some(Launch { rank, via: var })
    })
}

/// The launch of this process, from its environment.
pub(crate) fn from_env() -> Option<Launch> {
    detect(|var| std::env::var(var).ok(), std::process::id())
}

/// Why a cluster pool cannot start in a process no launcher started.
pub(crate) fn not_launched() -> String {
    format!(
        "Pool::builder().cluster() needs a program started by an MPI launcher (mpirun, \
         srun): none of {} is set in this process",
        RANK_VARS.join(", ")
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn env(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let map: HashMap<String, String> = pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        move |k| map.get(k).cloned()
    }

    #[test]
    fn every_launcher_is_recognised() {
        for var in RANK_VARS {
            let found = detect(env(&[(var, "3")]), 10);
            assert_eq!(found, Some(Launch { rank: 3, via: var }));
        }
        assert_eq!(detect(env(&[]), 10), None);
    }

    #[test]
    fn open_mpi_wins_over_slurm_and_junk_is_ignored() {
        let both = env(&[("SLURM_PROCID", "0"), ("OMPI_COMM_WORLD_RANK", "2")]);
        assert_eq!(detect(both, 1).map(|l| l.rank), Some(2));
        let junk = env(&[("OMPI_COMM_WORLD_RANK", "two"), ("PMI_RANK", "1")]);
        assert_eq!(detect(junk, 1).map(|l| l.via), Some("PMI_RANK"));
    }

    #[test]
    fn a_rank_s_descendants_are_not_ranks() {
        let own = env(&[("OMPI_COMM_WORLD_RANK", "1"), (RANK_PID_VAR, "42")]);
        assert_eq!(detect(own, 42).map(|l| l.rank), Some(1));
        let child = env(&[("OMPI_COMM_WORLD_RANK", "1"), (RANK_PID_VAR, "42")]);
        assert_eq!(detect(child, 43), None);
    }
}
