//! Shared-memory segments: a sealed `memfd` on Linux (no name, freed when the last fd
//! and mapping close), or a named POSIX segment (through the `shared_memory` crate:
//! `shm_open` with `O_EXCL` and mode 0600, an unguessable name of at most 31
//! characters, unlinked by its creator and swept at start-up if a killed run left it).

use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::sync::atomic::{AtomicU64, Ordering};

use serde::{Deserialize, Serialize};

use crate::error::{Error, ErrorKind, Result};

mod growing;
pub(crate) use growing::Growing;

/// Which kind of segment to create.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum ShmBackend {
    /// A sealed `memfd`, passed to workers over the socket (`SCM_RIGHTS`). The default on
    /// Linux.
    Memfd,
    /// A named POSIX segment in `/dev/shm` (mode 0600, random name), opened by name.
    Posix,
}

/// This process's choice: `MULTIPROC_SHM=posix` selects named segments, anything else
/// (or nothing) memfds. Read once.
impl Default for ShmBackend {
    fn default() -> ShmBackend {
        default_backend()
    }
}

/// Chooses the backend for this process: `MULTIPROC_SHM=posix` selects named segments.
pub(crate) fn default_backend() -> ShmBackend {
    static CHOSEN: std::sync::OnceLock<ShmBackend> = std::sync::OnceLock::new();
    *CHOSEN.get_or_init(|| match std::env::var("MULTIPROC_SHM").as_deref() {
        Ok("posix") => ShmBackend::Posix,
        _ => ShmBackend::Memfd,
    })
}

/// How a receiver finds a segment: what travels in a frame.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct SegmentDesc {
    /// Unique per creating process and segment: `(creator pid << 32) | counter` mixed
    /// with randomness, so a forged or stale id is not found rather than misread.
    pub id: u64,
    pub len: u64,
    /// `None` for a memfd (its fd travels beside the frame), the name for POSIX.
    pub name: Option<String>,
    /// Receivers map it writable (a `SharedSliceMut`), else read-only.
    pub writable: bool,
}

/// Prefix of every POSIX segment name multiproc makes: `mproc<creator pid, hex>-<id>`
/// for a segment, `mprocq<queue>…` for a queue's (see `queue::life`). With the leading
/// slash, names stay within the 31 characters macOS allows.
pub(crate) const NAME_PREFIX: &str = "mproc";

/// A mapped segment. Dropping the last reference unmaps it, closes its fd and, for the
/// creator of a named segment, unlinks it.
pub(crate) struct Segment {
    desc: SegmentDesc,
    ptr: *mut u8,
    /// How the mapping is held: a memfd we mapped ourselves, or a named segment the
    /// `shared_memory` crate mapped (and unlinks on drop while it owns the name).
    backing: Backing,
    writable: bool,
}

enum Backing {
    /// A memfd and our mapping of it (`len` bytes; none for an empty segment). The
    /// descriptor is kept to pass the segment on, unless dropped with
    /// [`Segment::close_descriptor`].
    Memfd(Option<OwnedFd>),
    /// A named POSIX segment, mapped whole (at least one byte: the crate refuses empty
    /// ones, so an empty segment is one byte long, of which none is used).
    /// Boxed: the crate's handle is large, and segments travel inside replies.
    Named(Box<shared_memory::Shmem>),
}

// SAFETY: the mapping is plain shared memory owned by this value; concurrent reads are
// fine, and writes only happen through the disjoint, checked ranges `SharedSliceMut`
// hands out, or through atomics (a queue's ring, a worker's control segment). The
// crate's `Shmem` is only a pointer, a length and a name, and is only dropped here.
unsafe impl Send for Segment {}
// SAFETY: see `Send`; `&Segment` only allows reads of the mapping.
unsafe impl Sync for Segment {}

fn os_err(context: &str, e: rustix::io::Errno) -> Error {
    Error::io(ErrorKind::Io, context, e.into())
}

fn fresh_id() -> Result<u64> {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let salt = crate::sys::random::random_u64("a shared-memory segment's id")?;
    Ok((u64::from(std::process::id()) << 40 ^ n).wrapping_add(salt.rotate_left(17)) ^ salt)
}

/// How a mapping sets up its pages: all at once, in one pass (`MAP_POPULATE`: several
/// times faster than one fault per page for a segment that will be read or written
/// whole), or as they are touched (for the creator of a sealed segment, which mostly
/// sends it on and rarely reads it back). A worker's control segment is made with its
/// pages at once, by the parent while the worker is still starting: the worker maps it
/// whole, and allocating its pages there would lengthen every pool's start.
#[derive(Clone, Copy)]
pub(crate) enum Pages {
    Now,
    OnTouch,
}

fn map(fd: &OwnedFd, len: usize, writable: bool, pages: Pages) -> Result<*mut u8> {
    use rustix::mm::{MapFlags, ProtFlags};
    if len == 0 {
        return Ok(std::ptr::NonNull::<u8>::dangling().as_ptr());
    }
    let prot = if writable {
        ProtFlags::READ | ProtFlags::WRITE
    } else {
        ProtFlags::READ
    };
    let flags = match pages {
        Pages::Now => MapFlags::SHARED | MapFlags::POPULATE,
        Pages::OnTouch => MapFlags::SHARED,
    };
    // SAFETY: a new mapping chosen by the kernel (no address given), so no existing
    // memory is replaced; `len` bytes of an fd we hold, which the segment keeps (with
    // the mapping) until it unmaps it in `drop`.
    let p = unsafe { rustix::mm::mmap(std::ptr::null_mut(), len, prot, flags, fd, 0) }
        .map_err(|e| os_err("mapping a shared-memory segment", e))?;
    Ok(p.cast())
}

impl Segment {
    /// Creates a sealed, read-only segment holding `bytes` (memfd), or a named one.
    /// The bytes are written with `pwrite`: the kernel allocates each page as it copies
    /// into it, so nothing is zeroed first and none of our page tables are set up for a
    /// mapping we would only write through once; and running out of memory is an error
    /// of the write, not a signal. The creator's own read-only view is mapped lazily: it
    /// mostly sends the segment on.
    pub(crate) fn create(backend: ShmBackend, bytes: &[u8]) -> Result<Segment> {
        let id = fresh_id()?;
        match backend {
            ShmBackend::Memfd => {
                let fd = create_memfd(bytes.len(), Reserve::OnWrite)?;
                write_all_at(&fd, bytes, 0)?;
                add_write_seals(&fd)?;
                Segment::memfd(id, fd, bytes.len(), false, Pages::OnTouch)
            }
            ShmBackend::Posix => Segment::named(
                id,
                fresh_name(id),
                bytes.len(),
                Reserve::OnWrite,
                Some(bytes),
                false,
            )?
            .ok_or_else(|| taken(id)),
        }
    }

    /// Like [`create`](Self::create), as a named segment called `name` (which must
    /// start with the prefix of multiproc's names): for a queue's large messages, whose
    /// names say which queue they belong to. `None` if the name is taken.
    pub(crate) fn create_named(name: String, bytes: &[u8]) -> Result<Option<Segment>> {
        let id = fresh_id()?;
        debug_assert!(name.starts_with(NAME_PREFIX));
        Segment::named(id, name, bytes.len(), Reserve::OnWrite, Some(bytes), false)
    }

    /// Creates a writable segment of `len` zero bytes (for `SharedSliceMut`, a queue's
    /// ring, a worker's control segment). With `Pages::Now` its memory is reserved and
    /// mapped at once (running out of memory is an error here, not a fault later); with
    /// `Pages::OnTouch` each page is allocated when first touched.
    pub(crate) fn create_writable(
        backend: ShmBackend,
        len: usize,
        pages: Pages,
    ) -> Result<Segment> {
        let id = fresh_id()?;
        let reserve = match pages {
            Pages::Now => Reserve::Now,
            Pages::OnTouch => Reserve::OnWrite,
        };
        match backend {
            ShmBackend::Memfd => {
                let fd = create_memfd(len, reserve)?;
                Segment::memfd(id, fd, len, true, pages)
            }
            ShmBackend::Posix => Segment::named(id, fresh_name(id), len, reserve, None, true)?
                .ok_or_else(|| taken(id)),
        }
    }

    /// A sealed, read-only segment of `len` bytes that keeps the id `id` it has in the
    /// process that made it on another host (a cluster rank re-creating a segment sent
    /// to it), written by `fill` through a writable view of its own first. No other
    /// process can see the segment before it is sealed.
    // Used by the cluster (feature `mpi`) only.
    #[cfg_attr(not(feature = "mpi"), allow(dead_code))]
    pub(crate) fn filled(
        backend: ShmBackend,
        id: u64,
        len: usize,
        fill: impl FnOnce(&mut [u8]) -> Result<()>,
    ) -> Result<Segment> {
        match backend {
            ShmBackend::Memfd => {
                let fd = create_memfd(len, Reserve::Now)?;
                let mut writable = Segment::memfd(id, fd, len, true, Pages::Now)?;
                fill(writable.fresh_bytes_mut())?;
                let fd = match &mut writable.backing {
                    Backing::Memfd(fd) => fd.take(),
                    Backing::Named(_) => None,
                };
                // Unmaps the writable view: a memfd cannot be sealed while one exists.
                drop(writable);
                let fd = fd.ok_or_else(|| {
                    Error::new(ErrorKind::Io, "a new memfd segment lost its descriptor")
                })?;
                add_write_seals(&fd)?;
                Segment::memfd(id, fd, len, false, Pages::OnTouch)
            }
            ShmBackend::Posix => {
                let mut seg = Segment::named(id, fresh_name(id), len, Reserve::Now, None, true)?
                    .ok_or_else(|| taken(id))?;
                fill(seg.fresh_bytes_mut())?;
                seg.writable = false;
                seg.desc.writable = false;
                Ok(seg)
            }
        }
    }

    /// The bytes of a segment this process just created and has not passed on.
    #[cfg_attr(not(feature = "mpi"), allow(dead_code))]
    fn fresh_bytes_mut(&mut self) -> &mut [u8] {
        // SAFETY: called only by `filled`, on a writable mapping of `len` bytes that it
        // has just created: no other process has its fd or name yet, and `&mut self`
        // is the only reference to it in this one, for as long as the slice lives.
        unsafe { std::slice::from_raw_parts_mut(self.ptr, self.len()) }
    }

    /// A segment of the new memfd `fd` (`len` bytes), mapped as `pages` says.
    fn memfd(id: u64, fd: OwnedFd, len: usize, writable: bool, pages: Pages) -> Result<Segment> {
        let ptr = map(&fd, len, writable, pages)?;
        Ok(Segment {
            desc: SegmentDesc {
                id,
                len: len as u64,
                name: None,
                writable,
            },
            ptr,
            backing: Backing::Memfd(Some(fd)),
            writable,
        })
    }

    /// A new named segment of `len` bytes called `name`, holding `bytes` if given
    /// (written through a second descriptor, as `create` does for a memfd), its memory
    /// reserved at once for `Reserve::Now`. `None` if the name is taken.
    fn named(
        id: u64,
        name: String,
        len: usize,
        reserve: Reserve,
        bytes: Option<&[u8]>,
        writable: bool,
    ) -> Result<Option<Segment>> {
        check_available(len)?;
        let shmem = match shared_memory::ShmemConf::new()
            .os_id(format!("/{name}"))
            .size(len.max(1))
            .create()
        {
            Ok(shmem) => shmem,
            Err(shared_memory::ShmemError::MappingIdExists) => return Ok(None),
            Err(e) => {
                return Err(Error::new(
                    ErrorKind::Io,
                    format!("creating a named shared-memory segment {name}: {e}"),
                ));
            }
        };
        // From here on, dropping `shmem` (its owner) unlinks the name again.
        if bytes.is_some_and(|b| !b.is_empty()) || matches!(reserve, Reserve::Now) {
            let fd = rustix::shm::open(
                format!("/{name}").as_str(),
                rustix::shm::OFlags::RDWR,
                rustix::fs::Mode::empty(),
            )
            .map_err(|e| os_err("opening a new named shared-memory segment", e))?;
            if matches!(reserve, Reserve::Now) && len > 0 {
                rustix::fs::fallocate(&fd, rustix::fs::FallocateFlags::empty(), 0, len as u64)
                    .map_err(|e| os_err(&format!("reserving {len} bytes of shared memory"), e))?;
            }
            if let Some(bytes) = bytes {
                write_all_at(&fd, bytes, 0)?;
            }
        }
        Ok(Some(Segment {
            desc: SegmentDesc {
                id,
                len: len as u64,
                name: Some(name),
                writable,
            },
            ptr: shmem.as_ptr(),
            backing: Backing::Named(Box::new(shmem)),
            writable,
        }))
    }

    /// Opens a segment another process created: by fd (memfd) or by name (POSIX).
    /// A named segment is mapped writable whatever `desc` says: the `shared_memory`
    /// crate maps no other way (the README's trust model says so).
    pub(crate) fn open(desc: SegmentDesc, fd: Option<OwnedFd>) -> Result<Segment> {
        let writable = desc.writable;
        let len = usize::try_from(desc.len)
            .map_err(|_| Error::new(ErrorKind::Protocol, "segment length out of range"))?;
        let (ptr, backing) = match (&desc.name, fd) {
            (Some(name), _) => {
                let shmem = open_posix(name)?;
                check_size(Some(shmem.len() as u64), len.max(1))?;
                (shmem.as_ptr(), Backing::Named(Box::new(shmem)))
            }
            (None, Some(fd)) => {
                let size = rustix::fs::fstat(&fd)
                    .map_err(|e| os_err("inspecting a shared-memory segment", e))?
                    .st_size;
                check_size(u64::try_from(size).ok(), len)?;
                (
                    map(&fd, len, writable, Pages::Now)?,
                    Backing::Memfd(Some(fd)),
                )
            }
            (None, None) => {
                return Err(Error::new(
                    ErrorKind::Protocol,
                    "a memfd segment arrived without its file descriptor",
                ));
            }
        };
        Ok(Segment {
            desc,
            ptr,
            backing,
            writable,
        })
    }

    pub(crate) fn desc(&self) -> &SegmentDesc {
        &self.desc
    }

    pub(crate) fn id(&self) -> u64 {
        self.desc.id
    }

    pub(crate) fn len(&self) -> usize {
        self.desc.len as usize
    }

    /// The descriptor to pass to another process, for a memfd.
    pub(crate) fn fd(&self) -> Option<BorrowedFd<'_>> {
        match &self.backing {
            Backing::Memfd(fd) => fd.as_ref().map(AsFd::as_fd),
            Backing::Named(_) => None,
        }
    }

    pub(crate) fn bytes(&self) -> &[u8] {
        // SAFETY: `ptr` maps at least `len` readable bytes for as long as `self` lives
        // (or is a dangling, well-aligned pointer for an empty segment).
        unsafe { std::slice::from_raw_parts(self.ptr, self.len()) }
    }

    /// A raw pointer to the start of the mapping, for `SharedSliceMut`'s checked ranges.
    pub(crate) fn as_mut_ptr(&self) -> Option<*mut u8> {
        self.writable.then_some(self.ptr)
    }

    /// Closes a memfd's descriptor, keeping the mapping: for a segment this process
    /// will never pass on, which a task then cannot find among its descriptors.
    pub(crate) fn close_descriptor(&mut self) {
        if let Backing::Memfd(fd) = &mut self.backing {
            *fd = None;
        }
    }

    /// A creator that hands a named segment to one receiver leaves the unlinking to it
    /// (the start-up sweep removes it if both die first).
    pub(crate) fn leave_name_to_receiver(&mut self) {
        if let Backing::Named(shmem) = &mut self.backing {
            shmem.set_owner(false);
        }
    }

    /// The receiver of a one-shot named segment removes its name once mapped; the
    /// memory lives on while mapped.
    pub(crate) fn unlink_now(&mut self) {
        if let Backing::Named(shmem) = &mut self.backing {
            shmem.set_owner(false);
        }
        if let Some(name) = &self.desc.name {
            unlink(name);
        }
    }
}

impl Drop for Segment {
    fn drop(&mut self) {
        // A named segment is unmapped (and unlinked, while it owns its name) by the
        // crate's `Shmem`, dropped with `backing`.
        if let Backing::Memfd(_) = self.backing
            && self.len() > 0
        {
            // SAFETY: `ptr..ptr + len` is the mapping `map` made for this segment, which
            // nothing else unmaps; after this, nothing uses `ptr` (we are dropping).
            let _ = unsafe { rustix::mm::munmap(self.ptr.cast(), self.len()) };
        }
    }
}

impl std::fmt::Debug for Segment {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Segment")
            .field("id", &format_args!("{:016x}", self.desc.id))
            .field("len", &self.desc.len)
            .field("name", &self.desc.name)
            .finish()
    }
}

/// The name of a new named segment of this process: `mproc<pid, hex>-<id>`. Sweeps
/// what dead processes left, the first time.
fn fresh_name(id: u64) -> String {
    sweep_stale_once();
    format!("{NAME_PREFIX}{:x}-{id:016x}", std::process::id())
}

fn taken(id: u64) -> Error {
    Error::new(
        ErrorKind::Io,
        format!("the name of new shared-memory segment {id:016x} is taken"),
    )
}

/// When a new segment's memory is taken from the system: at once (`fallocate`), for a
/// segment that will be written through a mapping (where running out would be a
/// SIGBUS), or as it is written with `pwrite` (where running out is an error).
#[derive(Clone, Copy)]
enum Reserve {
    Now,
    OnWrite,
}

/// Writes all of `bytes` into `fd` at offset `at`.
fn write_all_at(fd: &impl AsFd, bytes: &[u8], at: u64) -> Result<()> {
    let mut done = 0;
    while done < bytes.len() {
        match rustix::io::pwrite(fd, &bytes[done..], at + done as u64) {
            Ok(0) => {
                return Err(Error::new(
                    ErrorKind::Io,
                    "writing into a shared-memory segment: no progress",
                ));
            }
            Ok(n) => done += n,
            Err(rustix::io::Errno::INTR) => {}
            Err(e) => {
                return Err(Error::io(
                    ErrorKind::Io,
                    format_args!("writing {} bytes into a shared-memory segment", bytes.len()),
                    e.into(),
                ));
            }
        }
    }
    Ok(())
}

/// Seals a memfd against writes and resizing, for every process that has it.
fn add_write_seals(fd: &OwnedFd) -> Result<()> {
    use rustix::fs::SealFlags;
    let seals = SealFlags::WRITE | SealFlags::GROW | SealFlags::SHRINK | SealFlags::SEAL;
    rustix::fs::fcntl_add_seals(fd, seals).map_err(|e| os_err("sealing a shared-memory segment", e))
}

fn create_memfd(len: usize, reserve: Reserve) -> Result<OwnedFd> {
    use rustix::fs::MemfdFlags;
    let fd = rustix::fs::memfd_create("multiproc", MemfdFlags::CLOEXEC | MemfdFlags::ALLOW_SEALING)
        .map_err(|e| os_err("creating a shared-memory segment (memfd_create)", e))?;
    check_available(len)?;
    rustix::fs::ftruncate(&fd, len as u64)
        .map_err(|e| os_err(&format!("sizing a shared-memory segment to {len} bytes"), e))?;
    // Reserve the memory now, so that running out of it is an error here rather than a
    // SIGBUS when the segment is written through a mapping.
    if len > 0 && matches!(reserve, Reserve::Now) {
        rustix::fs::fallocate(&fd, rustix::fs::FallocateFlags::empty(), 0, len as u64)
            .map_err(|e| os_err(&format!("reserving {len} bytes of shared memory"), e))?;
    }
    Ok(fd)
}

/// Memory the system can still give (`MemAvailable`), if it says.
fn available_memory() -> Option<u64> {
    let info = std::fs::read_to_string("/proc/meminfo").ok()?;
    let kb: u64 = info
        .lines()
        .find_map(|l| l.strip_prefix("MemAvailable:"))?
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .ok()?;
    Some(kb * 1024)
}

/// Refuses a segment larger than the memory the system can give: its memory is reserved
/// or written at once, and asking for more would only wake the OOM killer. Small
/// segments (a worker's control segment at every start) skip the check: reading
/// /proc/meminfo costs more than they do.
fn check_available(len: usize) -> Result<()> {
    if i64::try_from(len).is_err() {
        return Err(Error::new(
            ErrorKind::InvalidConfig,
            format!("a segment of {len} bytes is too large"),
        ));
    }
    if len > 1 << 20
        && let Some(available) = available_memory()
        && len as u64 > available
    {
        return Err(Error::io(
            ErrorKind::Io,
            format_args!(
                "a shared-memory segment of {len} bytes is larger than the {available} bytes \
                 of memory available"
            ),
            std::io::Error::from(rustix::io::Errno::NOMEM),
        ));
    }
    Ok(())
}

fn open_posix(name: &str) -> Result<shared_memory::Shmem> {
    if !name.starts_with(NAME_PREFIX) || name.contains('/') {
        return Err(Error::new(
            ErrorKind::Protocol,
            format!("{name:?} is not a multiproc segment name"),
        ));
    }
    shared_memory::ShmemConf::new()
        .os_id(format!("/{name}"))
        .open()
        .map_err(|e| {
            Error::new(
                ErrorKind::Io,
                format!("shared-memory segment {name} is gone ({e})"),
            )
        })
}

fn check_size(actual: Option<u64>, len: usize) -> Result<()> {
    if actual != Some(len as u64) {
        return Err(Error::new(
            ErrorKind::Protocol,
            format!(
                "a shared-memory segment is {} bytes, its handle says {len}",
                actual.map_or_else(|| "?".to_owned(), |n| n.to_string())
            ),
        ));
    }
    Ok(())
}

/// Removes the name `name` (without its leading slash); already gone is fine.
pub(crate) fn unlink(name: &str) {
    let _ = rustix::shm::unlink(format!("/{name}").as_str());
}

/// Removes named segments left in `/dev/shm` by multiproc processes that no longer run
/// (killed before they could unlink). Runs once per process, before its first named
/// segment.
fn sweep_stale_once() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(sweep_stale);
}

/// The creator's pid in the name of one of our segments (`mproc<pid hex>-<id>`).
/// Anything after the id is allowed: a queue's lock file is made under such a name
/// first (`mproc<pid>-<queue>.lock`), so that it goes too if its creator dies then.
fn creator_of(name: &str) -> Option<u32> {
    let rest = name.strip_prefix(NAME_PREFIX)?;
    let (pid, id) = rest.split_once('-')?;
    u64::from_str_radix(id.get(..16)?, 16).ok()?;
    u32::from_str_radix(pid, 16).ok()
}

pub(crate) fn sweep_stale() {
    let Ok(dir) = std::fs::read_dir("/dev/shm") else {
        return;
    };
    for entry in dir.flatten() {
        let name = entry.file_name();
        let Some(name) = name.to_str() else { continue };
        if let Some(pid) = creator_of(name)
            && !crate::sys::process::exists(pid)
        {
            unlink(name);
        }
    }
}

#[cfg(test)]
mod tests;
