//! Shared-memory segments: a sealed `memfd` on Linux (no name, freed when the last fd
//! and mapping close), or a named POSIX segment (`shm_open`, mode 0600, an unguessable
//! name, unlinked by its creator and swept at start-up if a killed run left it).

use std::ffi::CString;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::sync::atomic::{AtomicU64, Ordering};

use serde::{Deserialize, Serialize};

use crate::error::{Error, ErrorKind, Result};

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

/// Prefix of every POSIX segment name, followed by the creator's pid.
const NAME_PREFIX: &str = "multiproc-";

/// A mapped segment. Dropping the last reference unmaps it, closes its fd and, for the
/// creator of a named segment, unlinks it.
pub(crate) struct Segment {
    desc: SegmentDesc,
    ptr: *mut u8,
    /// The fd (memfd, or nothing for a POSIX segment once mapped).
    fd: Option<OwnedFd>,
    /// The creator of a named segment unlinks it when the segment is dropped.
    unlink_on_drop: bool,
    writable: bool,
}

// SAFETY: the mapping is plain shared memory owned by this value; concurrent reads are
// fine, and writes only happen through `write_with` while the segment is not yet shared
// (or through disjoint ranges handed out by `SharedSliceMut`, which checks them).
unsafe impl Send for Segment {}
// SAFETY: see `Send`; `&Segment` only allows reads of the mapping.
unsafe impl Sync for Segment {}

fn os_err(context: &str) -> Error {
    Error::io(ErrorKind::Io, context, std::io::Error::last_os_error())
}

/// 64 random bits from the kernel (`getrandom(2)`, waiting until its pool is ready).
/// There is no fallback: a worker's token is what makes a process a worker, so a
/// guessable one is worse than none. `what` names the use, for the error.
pub(crate) fn random_u64(what: &str) -> Result<u64> {
    let mut bytes = [0u8; 8];
    let mut filled = 0;
    while filled < bytes.len() {
        match rustix::rand::getrandom(&mut bytes[filled..], rustix::rand::GetRandomFlags::empty()) {
            Ok(n) => filled += n,
            Err(rustix::io::Errno::INTR) => {}
            Err(e) => {
                return Err(Error::io(
                    ErrorKind::Io,
                    format_args!("the operating system gave no randomness for {what}"),
                    e.into(),
                ));
            }
        }
    }
    Ok(u64::from_le_bytes(bytes))
}

fn fresh_id() -> Result<u64> {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let salt = random_u64("a shared-memory segment's id")?;
    Ok((u64::from(std::process::id()) << 40 ^ n).wrapping_add(salt.rotate_left(17)) ^ salt)
}

/// How a mapping sets up its pages: all at once, in one pass (`MAP_POPULATE`: several
/// times faster than one fault per page for a segment that will be read or written
/// whole), or as they are touched (for the creator of a sealed segment, which mostly
/// sends it on and rarely reads it back; for a worker's control segment, most of which
/// only an `apply` through its lane ever touches).
#[derive(Clone, Copy)]
pub(crate) enum Pages {
    Now,
    OnTouch,
}

fn map(fd: RawFd, len: usize, writable: bool, pages: Pages) -> Result<*mut u8> {
    if len == 0 {
        return Ok(std::ptr::NonNull::<u8>::dangling().as_ptr());
    }
    let prot = if writable {
        libc::PROT_READ | libc::PROT_WRITE
    } else {
        libc::PROT_READ
    };
    let flags = match pages {
        Pages::Now => libc::MAP_SHARED | libc::MAP_POPULATE,
        Pages::OnTouch => libc::MAP_SHARED,
    };
    // SAFETY: mapping `len` bytes of an fd we hold; the result is checked for MAP_FAILED.
    let p = unsafe { libc::mmap(std::ptr::null_mut(), len, prot, flags, fd, 0) };
    if p == libc::MAP_FAILED {
        return Err(os_err("mapping a shared-memory segment"));
    }
    Ok(p.cast())
}

fn unmap(ptr: *mut u8, len: usize) {
    if len > 0 {
        // SAFETY: `ptr` came from `map` with this `len` and is unmapped once.
        unsafe { libc::munmap(ptr.cast(), len) };
    }
}

impl Segment {
    /// Creates a read-only segment holding a copy of `bytes` (sealed, for a memfd).
    ///
    /// The bytes are written with `pwrite`: the kernel allocates each page as it copies
    /// into it, so nothing is zeroed first and none of our page tables are set up for a
    /// mapping we would only write through once; and running out of memory is an error
    /// of the write, not a signal. The creator's own read-only view is mapped lazily: it
    /// mostly sends the segment on.
    pub(crate) fn create(backend: ShmBackend, bytes: &[u8]) -> Result<Segment> {
        let id = fresh_id()?;
        let (fd, name) = new_fd(backend, id, bytes.len(), Reserve::OnWrite)?;
        Segment::filled(id, fd, name, bytes)
    }

    /// Like [`create`](Self::create), as a named segment called `name` (which must
    /// start with the prefix of multiproc's names): for a queue's large messages, whose
    /// names say which queue they belong to.
    pub(crate) fn create_named(name: String, bytes: &[u8]) -> Result<Segment> {
        let id = fresh_id()?;
        debug_assert!(name.starts_with(NAME_PREFIX));
        let fd = create_posix(&name, bytes.len(), Reserve::OnWrite)?;
        Segment::filled(id, fd, Some(name), bytes)
    }

    /// Writes `bytes` into a new segment's fd, seals a memfd, and maps it read-only.
    fn filled(id: u64, fd: OwnedFd, name: Option<String>, bytes: &[u8]) -> Result<Segment> {
        let len = bytes.len();
        let undo = |e: Error| {
            if let Some(name) = &name {
                unlink(name);
            }
            e
        };
        write_all_at(fd.as_raw_fd(), bytes).map_err(undo)?;
        if name.is_none() {
            add_write_seals(fd.as_raw_fd()).map_err(undo)?;
        }
        let ptr = map(fd.as_raw_fd(), len, false, Pages::OnTouch).map_err(undo)?;
        let unlink_on_drop = name.is_some();
        Ok(Segment {
            desc: SegmentDesc {
                id,
                len: len as u64,
                name,
                writable: false,
            },
            ptr,
            fd: Some(fd),
            unlink_on_drop,
            writable: false,
        })
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
        let (fd, name) = new_fd(backend, id, len, reserve)?;
        let unlink_on_drop = name.is_some();
        let desc = SegmentDesc {
            id,
            len: len as u64,
            name,
            writable: true,
        };
        let ptr = match map(fd.as_raw_fd(), len, true, pages) {
            Ok(p) => p,
            Err(e) => {
                if let Some(name) = &desc.name {
                    unlink(name);
                }
                return Err(e);
            }
        };
        Ok(Segment {
            desc,
            ptr,
            fd: Some(fd),
            unlink_on_drop,
            writable: true,
        })
    }

    /// Opens a segment another process created: by fd (memfd) or by name (POSIX).
    pub(crate) fn open(desc: SegmentDesc, fd: Option<OwnedFd>) -> Result<Segment> {
        let writable = desc.writable;
        let len = usize::try_from(desc.len)
            .map_err(|_| Error::new(ErrorKind::Protocol, "segment length out of range"))?;
        let fd = match (&desc.name, fd) {
            (None, Some(fd)) => fd,
            (Some(name), _) => open_posix(name, writable)?,
            (None, None) => {
                return Err(Error::new(
                    ErrorKind::Protocol,
                    "a memfd segment arrived without its file descriptor",
                ));
            }
        };
        check_size(fd.as_raw_fd(), len)?;
        let ptr = map(fd.as_raw_fd(), len, writable, Pages::Now)?;
        // A named segment needs no fd once mapped.
        let fd = if desc.name.is_some() { None } else { Some(fd) };
        Ok(Segment {
            desc,
            ptr,
            fd,
            unlink_on_drop: false,
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

    /// The fd to pass to another process, for a memfd.
    pub(crate) fn raw_fd(&self) -> Option<RawFd> {
        self.fd.as_ref().map(AsRawFd::as_raw_fd)
    }

    pub(crate) fn bytes(&self) -> &[u8] {
        // SAFETY: `ptr` maps `len` readable bytes for as long as `self` lives (or is a
        // dangling, well-aligned pointer for an empty segment).
        unsafe { std::slice::from_raw_parts(self.ptr, self.len()) }
    }

    /// A raw pointer to the start of the mapping, for `SharedSliceMut`'s checked ranges.
    pub(crate) fn as_mut_ptr(&self) -> Option<*mut u8> {
        self.writable.then_some(self.ptr)
    }

    /// A creator that hands a named segment to one receiver leaves the unlinking to it
    /// (the start-up sweep removes it if both die first).
    pub(crate) fn leave_name_to_receiver(&mut self) {
        self.unlink_on_drop = false;
    }

    /// The receiver of a one-shot named segment removes its name once mapped; the
    /// memory lives on while mapped.
    pub(crate) fn unlink_now(&mut self) {
        if let Some(name) = &self.desc.name {
            unlink(name);
        }
        self.unlink_on_drop = false;
    }
}

impl Drop for Segment {
    fn drop(&mut self) {
        unmap(self.ptr, self.len());
        if self.unlink_on_drop
            && let Some(name) = &self.desc.name
        {
            unlink(name);
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

/// When a new segment's memory is taken from the system: at once (`fallocate`), for a
/// segment that will be written through a mapping (where running out would be a
/// SIGBUS), or as it is written with `pwrite` (where running out is an error).
#[derive(Clone, Copy)]
enum Reserve {
    Now,
    OnWrite,
}

/// A new segment's descriptor, and its name for the POSIX backend.
fn new_fd(
    backend: ShmBackend,
    id: u64,
    len: usize,
    reserve: Reserve,
) -> Result<(OwnedFd, Option<String>)> {
    Ok(match backend {
        ShmBackend::Memfd => (create_memfd(len, reserve)?, None),
        ShmBackend::Posix => {
            sweep_stale_once();
            let name = format!("{NAME_PREFIX}{}-{id:016x}", std::process::id());
            (create_posix(&name, len, reserve)?, Some(name))
        }
    })
}

/// Writes all of `bytes` at the start of `fd`.
fn write_all_at(fd: RawFd, bytes: &[u8]) -> Result<()> {
    let mut done = 0;
    while done < bytes.len() {
        let rest = &bytes[done..];
        // SAFETY: pwrite from a live slice into an fd we own, at an offset within it.
        let n = unsafe { libc::pwrite(fd, rest.as_ptr().cast(), rest.len(), done as libc::off_t) };
        if n < 0 {
            let e = std::io::Error::last_os_error();
            if e.kind() == std::io::ErrorKind::Interrupted {
                continue;
            }
            return Err(Error::io(
                ErrorKind::Io,
                format_args!("writing {} bytes into a shared-memory segment", bytes.len()),
                e,
            ));
        }
        if n == 0 {
            return Err(Error::new(
                ErrorKind::Io,
                "writing into a shared-memory segment: no progress",
            ));
        }
        done += n as usize;
    }
    Ok(())
}

/// Seals a memfd against writes and resizing, for every process that has it.
fn add_write_seals(fd: RawFd) -> Result<()> {
    let seals = libc::F_SEAL_WRITE | libc::F_SEAL_GROW | libc::F_SEAL_SHRINK | libc::F_SEAL_SEAL;
    // SAFETY: fcntl on our own memfd, which no writable mapping refers to.
    if unsafe { libc::fcntl(fd, libc::F_ADD_SEALS, seals) } != 0 {
        return Err(os_err("sealing a shared-memory segment"));
    }
    Ok(())
}

fn create_memfd(len: usize, reserve: Reserve) -> Result<OwnedFd> {
    let name = c"multiproc";
    // SAFETY: a valid NUL-terminated name and flags; the result is checked.
    let fd =
        unsafe { libc::memfd_create(name.as_ptr(), libc::MFD_CLOEXEC | libc::MFD_ALLOW_SEALING) };
    if fd < 0 {
        return Err(os_err("creating a shared-memory segment (memfd_create)"));
    }
    // SAFETY: `fd` was just created and is owned by nothing else.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    resize(fd.as_raw_fd(), len, reserve)?;
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

fn resize(fd: RawFd, len: usize, reserve: Reserve) -> Result<()> {
    let size = libc::off_t::try_from(len).map_err(|_| {
        Error::new(
            ErrorKind::InvalidConfig,
            format!("a segment of {len} bytes is too large"),
        )
    })?;
    // The memory is reserved below; asking for more than the system can give would
    // only wake the OOM killer, so it is refused here with an error. Small segments (a
    // worker's control segment at every start) skip the check: reading /proc/meminfo costs
    // more than they do.
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
            std::io::Error::from_raw_os_error(libc::ENOMEM),
        ));
    }
    // SAFETY: ftruncate on an fd we own.
    if unsafe { libc::ftruncate(fd, size) } != 0 {
        return Err(os_err(&format!(
            "sizing a shared-memory segment to {len} bytes"
        )));
    }
    // Reserve the memory now, so that running out of it is an error here rather than a
    // SIGBUS when the segment is written through a mapping.
    if len > 0 && matches!(reserve, Reserve::Now) {
        // SAFETY: fallocate on an fd we own, within the size just set.
        let rc = unsafe { libc::fallocate(fd, 0, 0, size) };
        if rc != 0 {
            return Err(os_err(&format!("reserving {len} bytes of shared memory")));
        }
    }
    Ok(())
}

fn cname(name: &str) -> Result<CString> {
    CString::new(format!("/{name}"))
        .map_err(|_| Error::new(ErrorKind::Protocol, "a segment name holds a NUL byte"))
}

fn create_posix(name: &str, len: usize, reserve: Reserve) -> Result<OwnedFd> {
    let c = cname(name)?;
    // SAFETY: a valid C string; O_EXCL makes the name ours alone; mode 0600.
    let fd = unsafe {
        libc::shm_open(
            c.as_ptr(),
            libc::O_RDWR | libc::O_CREAT | libc::O_EXCL | libc::O_CLOEXEC,
            0o600 as libc::mode_t,
        )
    };
    if fd < 0 {
        return Err(os_err("creating a named shared-memory segment (shm_open)"));
    }
    // SAFETY: `fd` was just created and is owned by nothing else.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    if let Err(e) = resize(fd.as_raw_fd(), len, reserve) {
        unlink(name);
        return Err(e);
    }
    Ok(fd)
}

fn open_posix(name: &str, writable: bool) -> Result<OwnedFd> {
    if !name.starts_with(NAME_PREFIX) || name.contains('/') {
        return Err(Error::new(
            ErrorKind::Protocol,
            format!("{name:?} is not a multiproc segment name"),
        ));
    }
    let c = cname(name)?;
    let flags = if writable {
        libc::O_RDWR
    } else {
        libc::O_RDONLY
    } | libc::O_CLOEXEC;
    // SAFETY: a valid C string; the result is checked.
    let fd = unsafe { libc::shm_open(c.as_ptr(), flags, 0) };
    if fd < 0 {
        return Err(Error::io(
            ErrorKind::Io,
            format_args!("shared-memory segment {name} is gone"),
            std::io::Error::last_os_error(),
        ));
    }
    // SAFETY: `fd` was just opened and is owned by nothing else.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

fn check_size(fd: RawFd, len: usize) -> Result<()> {
    // SAFETY: fstat writes into the zeroed struct we pass.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: `st` is a valid, writable stat; `fd` is open.
    if unsafe { libc::fstat(fd, &mut st) } != 0 {
        return Err(os_err("inspecting a shared-memory segment"));
    }
    if u64::try_from(st.st_size).ok() != Some(len as u64) {
        return Err(Error::new(
            ErrorKind::Protocol,
            format!(
                "a shared-memory segment is {} bytes, its handle says {len}",
                st.st_size
            ),
        ));
    }
    Ok(())
}

fn unlink(name: &str) {
    if let Ok(c) = cname(name) {
        // SAFETY: a valid C string; failure (already gone) is fine.
        unsafe { libc::shm_unlink(c.as_ptr()) };
    }
}

/// Removes named segments left in `/dev/shm` by multiproc processes that no longer run
/// (killed before they could unlink). Runs once per process, before its first named
/// segment.
fn sweep_stale_once() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(sweep_stale);
}

/// Whether a process `pid` exists (one of another user's counts: EPERM).
pub(crate) fn process_exists(pid: i32) -> bool {
    // SAFETY: kill with signal 0 only checks whether the process exists.
    let rc = unsafe { libc::kill(pid, 0) };
    rc == 0 || std::io::Error::last_os_error().raw_os_error() == Some(libc::EPERM)
}

pub(crate) fn sweep_stale() {
    let Ok(dir) = std::fs::read_dir("/dev/shm") else {
        return;
    };
    for entry in dir.flatten() {
        let name = entry.file_name();
        let Some(name) = name.to_str() else { continue };
        let Some(rest) = name.strip_prefix(NAME_PREFIX) else {
            continue;
        };
        let Some(pid) = rest.split('-').next().and_then(|p| p.parse::<i32>().ok()) else {
            continue;
        };
        if !process_exists(pid) {
            unlink(name);
        }
    }
}

#[cfg(test)]
mod tests;
