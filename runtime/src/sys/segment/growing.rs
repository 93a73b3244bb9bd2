//! A memfd segment written piece by piece, its length unknown until the last piece: a
//! chunk's body whose large values are copied straight into shared memory while it is
//! encoded, instead of into the frame first and from there into a segment.

use std::os::fd::OwnedFd;

use super::{Pages, Reserve, Segment, add_write_seals, check_available, create_memfd};
use super::{fresh_id, write_all_at};
use crate::error::Result;

/// A memfd that only this process has seen, written in order, sealed by [`seal`].
///
/// [`seal`]: Growing::seal
pub(crate) struct Growing {
    fd: OwnedFd,
    len: u64,
}

impl Growing {
    /// An empty one.
    pub(crate) fn new() -> Result<Growing> {
        Ok(Growing {
            fd: create_memfd(0, Reserve::OnWrite)?,
            len: 0,
        })
    }

    /// Writes `bytes` after what is there (`pwrite`: each page allocated as it is copied
    /// into, nothing zeroed first). More than the system's available memory is refused,
    /// as for any segment, before anything is written.
    pub(crate) fn append(&mut self, bytes: &[u8]) -> Result<()> {
        check_available(bytes.len())?;
        write_all_at(&self.fd, bytes, self.len)?;
        self.len += bytes.len() as u64;
        Ok(())
    }

    /// How many bytes it holds.
    pub(crate) fn len(&self) -> u64 {
        self.len
    }

    /// Seals it against writes and resizing and makes it a read-only segment, like one
    /// from [`Segment::create`]: from here on, no process can change it.
    pub(crate) fn seal(self) -> Result<Segment> {
        add_write_seals(&self.fd)?;
        let len = usize::try_from(self.len).unwrap_or(usize::MAX);
        Segment::memfd(fresh_id()?, self.fd, len, false, Pages::OnTouch)
    }
}
