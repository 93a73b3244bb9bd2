//! The raw layouts: values made of plain numbers travel as the numbers' bytes.

use super::Reader;

/// Types whose bytes are the whole of their value: no padding, every bit pattern valid,
/// and serde encodes them as just their number. Sealed.
pub trait RawItem: bytemuck::Pod + private::Sealed {}

mod private {
    pub trait Sealed {}
}

macro_rules! raw_items {
    ($($t:ty)*) => {$(
        impl private::Sealed for $t {}
        impl RawItem for $t {}
    )*};
}
raw_items!(u8 u16 u32 u64 u128 usize i8 i16 i32 i64 i128 isize f32 f64);

impl<T: RawItem, const N: usize> private::Sealed for [T; N] where [T; N]: bytemuck::Pod {}
impl<T: RawItem, const N: usize> RawItem for [T; N] where [T; N]: bytemuck::Pod {}

/// The raw layout of `T`: typed operations, made only for a [`RawItem`] type.
pub struct Raw<T> {
    pub(super) as_bytes: fn(&[T]) -> &[u8],
    pub(super) put: fn(&T, &mut Vec<u8>) -> postcard::Result<()>,
    pub(super) take: fn(&mut Reader<'_>) -> postcard::Result<T>,
    pub(super) fill: fn(&[u8], &mut [std::mem::MaybeUninit<T>]) -> bool,
}

impl<T> Clone for Raw<T> {
    fn clone(&self) -> Self {
        *self
    }
}

impl<T> Copy for Raw<T> {}

impl<T: RawItem> Raw<T> {
    /// The raw layout of `T`.
    pub const fn new() -> Self {
        Raw {
            as_bytes: bytemuck::cast_slice::<T, u8>,
            put: put_raw::<T>,
            take: take_raw::<T>,
            fill: fill_raw::<T>,
        }
    }
}

impl<T: RawItem> Default for Raw<T> {
    fn default() -> Self {
        Self::new()
    }
}

/// Appends the bytes of one value to `out`.
#[inline(always)]
pub(super) fn put_raw<T: RawItem>(value: &T, out: &mut Vec<u8>) -> postcard::Result<()> {
    out.extend_from_slice(bytemuck::bytes_of(value));
    Ok(())
}

/// Reads the bytes of the next value.
#[inline(always)]
pub(super) fn take_raw<T: RawItem>(reader: &mut Reader<'_>) -> postcard::Result<T> {
    match reader.rest.split_at_checked(size_of::<T>()) {
        Some((value, rest)) => {
            reader.rest = rest;
            Ok(bytemuck::pod_read_unaligned(value))
        }
        None => Err(postcard::Error::DeserializeUnexpectedEnd),
    }
}

/// Writes the values held in `bytes` into `out`, with one copy; `false`, writing
/// nothing, unless `bytes` is exactly `out.len()` values.
fn fill_raw<T: RawItem>(bytes: &[u8], out: &mut [std::mem::MaybeUninit<T>]) -> bool {
    if bytes.len() != size_of_val(out) {
        return false;
    }
    // SAFETY: `out` is `bytes.len()` writable bytes (checked above), which `bytes`, a
    // distinct borrow, does not overlap; every bit pattern is a valid `T` (`Pod`), so
    // each slot holds a value afterwards.
    unsafe {
        std::ptr::copy_nonoverlapping(bytes.as_ptr(), out.as_mut_ptr().cast::<u8>(), bytes.len());
    }
    true
}

/// A layout given by the functions that write and read one value: for values made of
/// plain numbers that are not one themselves (a `Vec` of them, a tuple of them).
pub struct Parts<T> {
    pub(super) put: fn(&T, &mut Vec<u8>) -> postcard::Result<()>,
    pub(super) take: fn(&mut Reader<'_>) -> postcard::Result<T>,
}

impl<T> Clone for Parts<T> {
    fn clone(&self) -> Self {
        *self
    }
}

impl<T> Copy for Parts<T> {}

impl<E: RawItem> Parts<Vec<E>> {
    /// A `Vec` of plain numbers: its length (a `u64`), then its elements' bytes.
    pub const fn raw_vec() -> Self {
        Parts {
            put: put_raw_vec::<E>,
            take: take_raw_vec::<E>,
        }
    }
}

impl<T: RawTuple> Parts<T> {
    /// A tuple of plain numbers: each field's bytes, in order, nothing between them.
    pub const fn raw_tuple() -> Self {
        Parts {
            put: T::put_fields,
            take: T::take_fields,
        }
    }
}

/// Appends the length of `values`, then their bytes, to `out`.
// `&Vec<E>`: the signature of a `put` for values of type `Vec<E>`.
#[allow(clippy::ptr_arg)]
#[inline(always)]
pub(super) fn put_raw_vec<E: RawItem>(values: &Vec<E>, out: &mut Vec<u8>) -> postcard::Result<()> {
    out.extend_from_slice(&(values.len() as u64).to_le_bytes());
    super::extend_frame(out, bytemuck::cast_slice(values));
    Ok(())
}

/// Reads a length, then that many values, in one copy.
#[inline(always)]
pub(super) fn take_raw_vec<E: RawItem>(reader: &mut Reader<'_>) -> postcard::Result<Vec<E>> {
    let (values, rest) = split_raw_vec(reader.rest, size_of::<E>())?;
    let bytes = values.len();
    reader.rest = rest;
    // One copy into memory allocated for it; zeroing it first would cost a second pass
    // where the bytes do not sit aligned for `E`. A large one lands in huge pages where
    // the system has them (the fresh memory's page faults cost more than the copy).
    Ok(match bytemuck::try_cast_slice::<u8, E>(values) {
        Ok(aligned) if bytes >= super::append::HUGE_COPY => {
            let mut out = Vec::with_capacity(aligned.len());
            crate::sys::mem::advise_huge_spare(&mut out);
            out.extend_from_slice(aligned);
            out
        }
        Ok(aligned) => aligned.to_vec(),
        Err(_) => {
            let mut out = vec![E::zeroed(); bytes / size_of::<E>().max(1)];
            bytemuck::cast_slice_mut::<E, u8>(&mut out).copy_from_slice(values);
            out
        }
    })
}

/// Splits the bytes of a raw `Vec` of `elem`-byte elements (its `u64` length, then the
/// elements) off the front of `body`: the elements' bytes, and what follows. A length
/// the body cannot hold is refused before anything is allocated.
pub(super) fn split_raw_vec(body: &[u8], elem: usize) -> postcard::Result<(&[u8], &[u8])> {
    let (len, rest) = body
        .split_first_chunk::<8>()
        .ok_or(postcard::Error::DeserializeUnexpectedEnd)?;
    let bytes = usize::try_from(u64::from_le_bytes(*len))
        .ok()
        .and_then(|n| n.checked_mul(elem))
        .filter(|&n| n <= rest.len())
        .ok_or(postcard::Error::DeserializeUnexpectedEnd)?;
    Ok(rest.split_at(bytes))
}

/// Tuples (of up to 12 fields) whose every field is a [`RawItem`]. Sealed.
pub trait RawTuple: Sized + private::Sealed {
    /// Appends each field's bytes to `out`.
    fn put_fields(value: &Self, out: &mut Vec<u8>) -> postcard::Result<()>;
    /// Reads each field's bytes; leaves `reader` where it was if they are not all there.
    fn take_fields(reader: &mut Reader<'_>) -> postcard::Result<Self>;
}

macro_rules! raw_tuples {
    ($(($($t:ident $i:tt),+))*) => {$(
        impl<$($t: RawItem),+> private::Sealed for ($($t,)+) {}

        impl<$($t: RawItem),+> RawTuple for ($($t,)+) {
            #[inline(always)]
            fn put_fields(value: &Self, out: &mut Vec<u8>) -> postcard::Result<()> {
                $(put_raw(&value.$i, out)?;)+
                Ok(())
            }

            #[inline(always)]
            fn take_fields(reader: &mut Reader<'_>) -> postcard::Result<Self> {
                let mut fields = Reader { rest: reader.rest };
                let value = ($(take_raw::<$t>(&mut fields)?,)+);
                reader.rest = fields.rest;
                Ok(value)
            }
        }
    )*};
}

raw_tuples! {
    (A 0)
    (A 0, B 1)
    (A 0, B 1, C 2)
    (A 0, B 1, C 2, D 3)
    (A 0, B 1, C 2, D 3, E 4)
    (A 0, B 1, C 2, D 3, E 4, F 5)
    (A 0, B 1, C 2, D 3, E 4, F 5, G 6)
    (A 0, B 1, C 2, D 3, E 4, F 5, G 6, H 7)
    (A 0, B 1, C 2, D 3, E 4, F 5, G 6, H 7, I 8)
    (A 0, B 1, C 2, D 3, E 4, F 5, G 6, H 7, I 8, J 9)
    (A 0, B 1, C 2, D 3, E 4, F 5, G 6, H 7, I 8, J 9, K 10)
    (A 0, B 1, C 2, D 3, E 4, F 5, G 6, H 7, I 8, J 9, K 10, L 11)
}
