//! Appending encodings to a buffer: postcard without an intermediate buffer, and large
//! copies in huge pages.

use serde::Serialize;

/// A copy this large into a frame gets its room in transparent huge pages, where the
/// system offers them.
pub(crate) const HUGE_COPY: usize = 4 << 20;

/// Makes room for `n` more bytes in `buf` and asks for that room in 2 MiB pages: one page
/// fault per 2 MiB instead of one per 4 KiB while the copy lands in fresh memory (a
/// 200 MB argument spends most of its encoding in those faults). Only advice: without
/// transparent huge pages nothing changes.
fn reserve_huge(buf: &mut Vec<u8>, n: usize) {
    buf.reserve(n);
    crate::sys::mem::advise_huge_spare(buf);
}

/// Appends `data` to the frame being built in `buf`: into a segment if `buf` is a
/// chunk's frame whose large copies go there (see [`super::spill`]), else in huge pages
/// if it is large (see [`reserve_huge`]).
#[inline]
pub(crate) fn extend_frame(buf: &mut Vec<u8>, data: &[u8]) {
    if data.len() >= HUGE_COPY {
        if super::spill::take(buf, data) {
            return;
        }
        reserve_huge(buf, data.len());
    }
    buf.extend_from_slice(data);
}

/// Appends postcard encodings to a `Vec` without an intermediate buffer.
struct Append<'a>(&'a mut Vec<u8>);

impl postcard::ser_flavors::Flavor for Append<'_> {
    type Output = ();

    #[inline(always)]
    fn try_push(&mut self, data: u8) -> postcard::Result<()> {
        self.0.push(data);
        Ok(())
    }

    #[inline(always)]
    fn try_extend(&mut self, data: &[u8]) -> postcard::Result<()> {
        // Most calls carry one varint (1–10 bytes). A loop or `extend_from_slice` compiles
        // to a `memcpy` call, which cost 40% of the caller's time in a map of 1M `u64`s;
        // two overlapping fixed-size copies cover every length up to 16 without one.
        let n = data.len();
        if n > 16 {
            extend_frame(self.0, data);
            return Ok(());
        }
        self.0.reserve(16);
        let len = self.0.len();
        let dst = self.0.spare_capacity_mut().as_mut_ptr().cast::<u8>();
        let src = data.as_ptr();
        // SAFETY: `reserve(16)` leaves at least 16 writable bytes at `dst`, and `n <= 16`.
        // Each branch reads only inside `data` (its two copies overlap when `n` is not a
        // power of two) and writes only inside `dst[..n]`, so every byte of `dst[..n]` is
        // written before `set_len` makes it part of the vector.
        unsafe {
            if n >= 8 {
                let a = src.cast::<u64>().read_unaligned();
                let b = src.add(n - 8).cast::<u64>().read_unaligned();
                dst.cast::<u64>().write_unaligned(a);
                dst.add(n - 8).cast::<u64>().write_unaligned(b);
            } else if n >= 4 {
                let a = src.cast::<u32>().read_unaligned();
                let b = src.add(n - 4).cast::<u32>().read_unaligned();
                dst.cast::<u32>().write_unaligned(a);
                dst.add(n - 4).cast::<u32>().write_unaligned(b);
            } else if n > 0 {
                // 1 to 3 bytes: the first, the middle and the last (some coincide).
                *dst = *src;
                *dst.add(n / 2) = *src.add(n / 2);
                *dst.add(n - 1) = *src.add(n - 1);
            }
            self.0.set_len(len + n);
        }
        Ok(())
    }

    fn finalize(self) -> postcard::Result<()> {
        Ok(())
    }
}

/// Appends the postcard encoding of `value` to `out`.
#[inline]
pub(crate) fn encode_into<T: Serialize + ?Sized>(
    out: &mut Vec<u8>,
    value: &T,
) -> postcard::Result<()> {
    postcard::serialize_with_flavor(value, Append(out))
}

#[cfg(test)]
mod tests;
