//! One-sided reads of rank 0's segments. Every rank makes one dynamic MPI window over
//! the world when MPI starts; rank 0 attaches a segment to it while ranks read it, and a
//! serving rank that needs the segment reads it (`MPI_Rget`) straight into the memory of
//! its own new segment, once. Ranks read at the same time, so a segment reaches every
//! rank in the time of the slowest read rather than of one send per rank in turn.
//!
//! rsmpi has no one-sided API yet, so this is the one place that calls MPI's C
//! functions for it, from the thread that makes every MPI call of the process.

use std::collections::{HashMap, HashSet};
use std::os::raw::{c_int, c_void};
use std::sync::Arc;
use std::time::{Duration, Instant};

use mpi::ffi;
use mpi::topology::SimpleCommunicator;
use mpi::traits::AsRaw;

use crate::error::{Error, ErrorKind, Result};
use crate::shm::Entry;

/// The largest read: MPI counts elements in an `int`, and smaller reads show progress.
const READ_BYTES: usize = 64 << 20;
/// How long a reader waits for the next piece of a read to complete: longer means rank
/// 0 stopped serving its memory.
const READ_PATIENCE: Duration = Duration::from_secs(60);

/// A segment attached to the window, and the ranks that have not finished reading it.
struct Exposed {
    entry: Arc<Entry>,
    readers: HashSet<i32>,
}

/// This rank's handle on the world's dynamic window.
pub(super) struct Window {
    win: ffi::MPI_Win,
    /// Rank 0: what is attached, by segment id.
    exposed: HashMap<u64, Exposed>,
    /// Rank 0: segments a rank was reading when it was given up. They stay attached and
    /// mapped for the rest of the program, since MPI may still serve that read.
    kept: Vec<Arc<Entry>>,
}

// SAFETY: an `MPI_Win` is a handle that any thread may hold; the endpoint that owns the
// window is used from the one thread that makes every MPI call (`Threading::Funneled`).
unsafe impl Send for Window {}

/// An MPI call's return code as a result.
fn check(code: c_int, what: &str) -> Result<()> {
    if code == ffi::MPI_SUCCESS as c_int {
        Ok(())
    } else {
        Err(Error::new(
            ErrorKind::Io,
            format!("{what} failed (MPI error {code})"),
        ))
    }
}

impl Window {
    /// Makes the window. Collective: every rank calls it once, right after MPI starts,
    /// from the thread that started it. `reader` ranks open an access epoch to rank 0
    /// for the rest of the program.
    pub(super) fn create(world: &SimpleCommunicator, reader: bool) -> Result<Window> {
        let mut win = std::mem::MaybeUninit::<ffi::MPI_Win>::uninit();
        // SAFETY: `world` is a valid communicator of an initialised MPI, used on the
        // thread that initialised it; `win` is written by the call before it is read,
        // and read only if the call succeeded.
        let win = unsafe {
            check(
                ffi::MPI_Win_create_dynamic(ffi::RSMPI_INFO_NULL, world.as_raw(), win.as_mut_ptr()),
                "MPI_Win_create_dynamic",
            )?;
            win.assume_init()
        };
        // SAFETY: `win` is the window just made; `MPI_ERRORS_RETURN` is predefined, so
        // a failed read comes back as a code rather than ending the job.
        unsafe {
            check(
                ffi::MPI_Win_set_errhandler(win, ffi::RSMPI_ERRORS_RETURN),
                "MPI_Win_set_errhandler",
            )?;
            if reader {
                check(
                    ffi::MPI_Win_lock_all(ffi::MPI_MODE_NOCHECK as c_int, win),
                    "MPI_Win_lock_all",
                )?;
            }
        }
        Ok(Window {
            win,
            exposed: HashMap::new(),
            kept: Vec::new(),
        })
    }

    /// Rank 0: attaches `entry`'s segment for `reader` to read, if it is not attached
    /// already, and returns its address. The window holds `entry` (so the memory stays
    /// mapped) until every reader said it is done, or for good if a reader was lost.
    pub(super) fn expose(&mut self, entry: &Arc<Entry>, reader: i32) -> Result<u64> {
        let id = entry.segment.id();
        let bytes = entry.segment.bytes();
        if bytes.is_empty() {
            return Err(Error::new(
                ErrorKind::Io,
                "an empty segment is not attached",
            ));
        }
        let at = address(bytes)?;
        if let Some(exposed) = self.exposed.get_mut(&id) {
            exposed.readers.insert(reader);
            return Ok(at);
        }
        let len = ffi::MPI_Aint::try_from(bytes.len())
            .map_err(|_| Error::new(ErrorKind::Io, "a segment too large to attach"))?;
        // SAFETY: `bytes` is the mapping of a segment that the window keeps an `Arc`
        // of from here until it detaches it (`done`) or for the rest of the program
        // (`lost`), so the memory outlives its attachment. Ranks only read it (`fetch`
        // issues gets, never puts), so MPI never writes through the `*mut` it asks for.
        unsafe {
            check(
                ffi::MPI_Win_attach(self.win, bytes.as_ptr().cast_mut().cast::<c_void>(), len),
                "MPI_Win_attach",
            )?;
        }
        self.exposed.insert(
            id,
            Exposed {
                entry: Arc::clone(entry),
                readers: HashSet::from([reader]),
            },
        );
        Ok(at)
    }

    /// Rank 0: `reader` finished reading segment `id`; once no rank reads it, it is
    /// detached and let go.
    pub(super) fn done(&mut self, id: u64, reader: i32) {
        let Some(exposed) = self.exposed.get_mut(&id) else {
            return;
        };
        exposed.readers.remove(&reader);
        if !exposed.readers.is_empty() {
            return;
        }
        let Some(exposed) = self.exposed.remove(&id) else {
            return;
        };
        // SAFETY: the base is the one attached in `expose`; no rank reads it any more,
        // since each reader said it is done only after its reads completed.
        let code =
            unsafe { ffi::MPI_Win_detach(self.win, exposed.entry.segment.bytes().as_ptr().cast()) };
        if code != ffi::MPI_SUCCESS as c_int {
            // Still attached: keep the memory mapped under it.
            self.kept.push(exposed.entry);
        }
    }

    /// Rank 0: `rank` was given up; what it was reading stays attached and mapped.
    pub(super) fn lost(&mut self, rank: i32) {
        let ids: Vec<u64> = self
            .exposed
            .iter()
            .filter(|(_, e)| e.readers.contains(&rank))
            .map(|(&id, _)| id)
            .collect();
        for id in ids {
            if let Some(exposed) = self.exposed.remove(&id) {
                self.kept.push(exposed.entry);
            }
        }
    }

    /// A serving rank: reads `into.len()` bytes at address `at` of rank 0 into `into`.
    /// Returns only once no read is in progress. If rank 0 stops serving its memory
    /// for [`READ_PATIENCE`], this process ends: MPI could still write into `into`
    /// after it was given back, and a rank that cannot reach rank 0 has nothing to do.
    pub(super) fn fetch(&mut self, at: u64, into: &mut [u8]) -> Result<()> {
        let mut pending: Vec<ffi::MPI_Request> = Vec::new();
        let mut failed = None;
        for (k, piece) in into.chunks_mut(READ_BYTES).enumerate() {
            let offset = (k * READ_BYTES) as u64;
            let (Ok(n), Ok(target)) = (
                c_int::try_from(piece.len()),
                ffi::MPI_Aint::try_from(at.saturating_add(offset)),
            ) else {
                failed = Some(Error::new(ErrorKind::Protocol, "a read out of range"));
                break;
            };
            let mut request = std::mem::MaybeUninit::<ffi::MPI_Request>::uninit();
            // SAFETY: `piece` is `n` writable bytes of `into`, which this function
            // borrows mutably until every request it started has completed (below),
            // or ends the process; `request` is read only if the call succeeded.
            let started = unsafe {
                check(
                    ffi::MPI_Rget(
                        piece.as_mut_ptr().cast::<c_void>(),
                        n,
                        ffi::RSMPI_UINT8_T,
                        0,
                        target,
                        n,
                        ffi::RSMPI_UINT8_T,
                        self.win,
                        request.as_mut_ptr(),
                    ),
                    "MPI_Rget",
                )
                .map(|()| request.assume_init())
            };
            match started {
                Ok(request) => pending.push(request),
                Err(e) => {
                    failed = Some(e);
                    break;
                }
            }
        }
        let mut deadline = Instant::now() + READ_PATIENCE;
        while !pending.is_empty() {
            let before = pending.len();
            let mut i = 0;
            while i < pending.len() {
                let mut flag: c_int = 0;
                // SAFETY: `pending[i]` is a request `MPI_Rget` started and that has not
                // completed; MPI sets it to `MPI_REQUEST_NULL` once it has.
                let code =
                    unsafe { ffi::MPI_Test(&mut pending[i], &mut flag, ffi::RSMPI_STATUS_IGNORE) };
                if code != ffi::MPI_SUCCESS as c_int {
                    // The request is in an unknown state: treat it as still reading.
                    failed.get_or_insert_with(|| {
                        Error::new(
                            ErrorKind::Io,
                            format!("a one-sided read failed (MPI error {code})"),
                        )
                    });
                    i += 1;
                } else if flag != 0 {
                    pending.swap_remove(i);
                } else {
                    i += 1;
                }
            }
            if pending.len() < before {
                deadline = Instant::now() + READ_PATIENCE;
            } else if Instant::now() > deadline {
                eprintln!(
                    "multiproc rank (process {}): a one-sided read from rank 0 made no \
                     progress for {READ_PATIENCE:?}; leaving, since MPI may still write \
                     into the memory it reads into",
                    std::process::id()
                );
                crate::sys::process::exit_now(1);
            } else {
                std::thread::yield_now();
            }
        }
        failed.map_or(Ok(()), Err)
    }
}

/// The address MPI gives `bytes` in a dynamic window.
fn address(bytes: &[u8]) -> Result<u64> {
    let mut at: ffi::MPI_Aint = 0;
    // SAFETY: `MPI_Get_address` only computes the address of the location it is given.
    unsafe {
        check(
            ffi::MPI_Get_address(bytes.as_ptr().cast::<c_void>(), &mut at),
            "MPI_Get_address",
        )?;
    }
    u64::try_from(at).map_err(|_| Error::new(ErrorKind::Io, "a negative MPI address"))
}
