//! How one task's arguments and results are laid out in a chunk body.
//!
//! Any serde type travels as postcard, one encoding after another. Plain numbers (`u64`,
//! `f64`, `[u8; 32]`, ...) travel as their raw bytes instead: a slice of them is one
//! copy into the frame, and a chunk of results is one copy out of it, where postcard
//! costs a varint encode and decode per item. A `Vec` of plain numbers travels as its
//! length and then its elements' bytes, one copy each way, where postcard encodes and
//! decodes element by element (a 50 MB `Vec<u8>` took 6.6 ns a byte). `#[parallel]`
//! picks the raw layouts when it sees such a type in the signature; both processes run
//! the same binary, so they agree.

use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::protocol::encode_into;

mod why;

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
    size: usize,
    as_bytes: fn(&[T]) -> &[u8],
    put: fn(&T, &mut Vec<u8>) -> postcard::Result<()>,
    take: fn(&mut Reader<'_>) -> postcard::Result<T>,
    extend: fn(&[u8], &mut Vec<T>),
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
            size: size_of::<T>(),
            as_bytes: bytemuck::cast_slice::<T, u8>,
            put: put_raw::<T>,
            take: take_raw::<T>,
            extend: extend_raw::<T>,
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
fn put_raw<T: RawItem>(value: &T, out: &mut Vec<u8>) -> postcard::Result<()> {
    out.extend_from_slice(bytemuck::bytes_of(value));
    Ok(())
}

/// Reads the bytes of the next value.
#[inline(always)]
fn take_raw<T: RawItem>(reader: &mut Reader<'_>) -> postcard::Result<T> {
    match reader.rest.split_at_checked(size_of::<T>()) {
        Some((value, rest)) => {
            reader.rest = rest;
            Ok(bytemuck::pod_read_unaligned(value))
        }
        None => Err(postcard::Error::DeserializeUnexpectedEnd),
    }
}

/// Reads the postcard encoding of the next value.
#[inline(always)]
fn take_postcard<T: DeserializeOwned>(reader: &mut Reader<'_>) -> postcard::Result<T> {
    let (value, rest) = postcard::take_from_bytes(reader.rest)?;
    reader.rest = rest;
    Ok(value)
}

/// Appends the values held in `bytes` (a whole number of them) to `out`, with one copy.
fn extend_raw<T: RawItem>(bytes: &[u8], out: &mut Vec<T>) {
    let start = out.len();
    out.resize(start + bytes.len() / size_of::<T>(), T::zeroed());
    bytemuck::cast_slice_mut::<T, u8>(&mut out[start..]).copy_from_slice(bytes);
}

/// The raw layout of a `Vec` of plain numbers: its length (a `u64`), then its
/// elements' bytes. Made only for `Vec<E>` with `E` a [`RawItem`].
pub struct RawVec<T> {
    put: fn(&T, &mut Vec<u8>) -> postcard::Result<()>,
    take: fn(&mut Reader<'_>) -> postcard::Result<T>,
}

impl<T> Clone for RawVec<T> {
    fn clone(&self) -> Self {
        *self
    }
}

impl<T> Copy for RawVec<T> {}

impl<E: RawItem> RawVec<Vec<E>> {
    /// The raw layout of `Vec<E>`.
    pub const fn new() -> Self {
        RawVec {
            put: put_raw_vec::<E>,
            take: take_raw_vec::<E>,
        }
    }
}

impl<E: RawItem> Default for RawVec<Vec<E>> {
    fn default() -> Self {
        Self::new()
    }
}

/// Appends the length of `values`, then their bytes, to `out`.
// `&Vec<E>`: the signature of a `put` for values of type `Vec<E>`.
#[allow(clippy::ptr_arg)]
#[inline(always)]
fn put_raw_vec<E: RawItem>(values: &Vec<E>, out: &mut Vec<u8>) -> postcard::Result<()> {
    out.extend_from_slice(&(values.len() as u64).to_le_bytes());
    crate::protocol::extend_frame(out, bytemuck::cast_slice(values));
    Ok(())
}

/// Reads a length, then that many values, in one copy.
#[inline(always)]
fn take_raw_vec<E: RawItem>(reader: &mut Reader<'_>) -> postcard::Result<Vec<E>> {
    let (len, rest) = reader
        .rest
        .split_first_chunk::<8>()
        .ok_or(postcard::Error::DeserializeUnexpectedEnd)?;
    // A length the rest of the body cannot hold is refused before anything is allocated.
    let bytes = usize::try_from(u64::from_le_bytes(*len))
        .ok()
        .and_then(|n| n.checked_mul(size_of::<E>()))
        .filter(|&n| n <= rest.len())
        .ok_or(postcard::Error::DeserializeUnexpectedEnd)?;
    let (values, rest) = rest.split_at(bytes);
    reader.rest = rest;
    // One copy into memory allocated for it; zeroing it first would cost a second pass
    // where the bytes do not sit aligned for `E`.
    Ok(match bytemuck::try_cast_slice::<u8, E>(values) {
        Ok(aligned) => aligned.to_vec(),
        Err(_) => {
            let mut out = vec![E::zeroed(); bytes / size_of::<E>().max(1)];
            bytemuck::cast_slice_mut::<E, u8>(&mut out).copy_from_slice(values);
            out
        }
    })
}

/// A task's layout for one side (its argument or its result): raw, a raw `Vec`, or
/// postcard.
pub struct Codec<T> {
    raw: Option<Raw<T>>,
    raw_vec: Option<RawVec<T>>,
}

impl<T> Clone for Codec<T> {
    fn clone(&self) -> Self {
        *self
    }
}

impl<T> Copy for Codec<T> {}

impl<T> Codec<T> {
    /// Postcard, for any serde type.
    pub const POSTCARD: Self = Codec {
        raw: None,
        raw_vec: None,
    };

    /// Raw bytes, for plain numbers.
    pub const fn raw(raw: Raw<T>) -> Self {
        Codec {
            raw: Some(raw),
            raw_vec: None,
        }
    }

    /// A length and raw bytes, for a `Vec` of plain numbers.
    pub const fn raw_vec(raw_vec: RawVec<T>) -> Self {
        Codec {
            raw: None,
            raw_vec: Some(raw_vec),
        }
    }

    /// The bytes of a whole slice, when the layout is raw.
    pub(crate) fn slice_bytes<'a>(&self, items: &'a [T]) -> Option<&'a [u8]> {
        self.raw.map(|raw| (raw.as_bytes)(items))
    }

    /// Appends all `count` values held in `bytes` to `out`, when the layout is raw;
    /// `Some(false)`, adding nothing, if `bytes` is not exactly that many values.
    pub(crate) fn extend_raw(&self, bytes: &[u8], count: u32, out: &mut Vec<T>) -> Option<bool> {
        let raw = self.raw?;
        if bytes.len() != raw.size * count as usize {
            return Some(false);
        }
        (raw.extend)(bytes, out);
        Some(true)
    }
}

impl<T: Serialize> Codec<T> {
    /// Appends one value to `out`.
    #[inline]
    pub(crate) fn put(&self, value: &T, out: &mut Vec<u8>) -> postcard::Result<()> {
        match (self.raw, self.raw_vec) {
            (Some(raw), _) => (raw.put)(value, out),
            (None, Some(raw_vec)) => (raw_vec.put)(value, out),
            (None, None) => encode_into(out, value),
        }
    }
}

/// A layout as a type: what `#[parallel]` names for each side of a task, so that the
/// parent's [`Codec`] and the worker's per-item loop (inlined, no indirect calls) come
/// from one choice.
///
/// The serde bounds sit on the methods, not on the impls: a type that is not
/// serializable is reported as such, not again as a type without a `Layout`.
pub trait Layout<T> {
    /// The layout as a value, for the parent's side.
    const CODEC: Codec<T>;
    /// Appends one value to `out`.
    fn put(value: &T, out: &mut Vec<u8>) -> postcard::Result<()>
    where
        T: Serialize;
    /// Reads the next value; leaves `reader` where it was if that fails.
    fn take(reader: &mut Reader<'_>) -> postcard::Result<T>
    where
        T: DeserializeOwned;
}

/// The raw bytes of plain numbers.
#[derive(Debug, Clone, Copy)]
pub struct RawLayout;

/// A `Vec` of plain numbers: its length, then its elements' bytes.
#[derive(Debug, Clone, Copy)]
pub struct RawVecLayout;

/// Postcard, for any serde type.
#[derive(Debug, Clone, Copy)]
pub struct PostcardLayout;

impl<T: RawItem> Layout<T> for RawLayout {
    const CODEC: Codec<T> = Codec::raw(Raw::new());

    #[inline(always)]
    fn put(value: &T, out: &mut Vec<u8>) -> postcard::Result<()> {
        put_raw(value, out)
    }

    #[inline(always)]
    fn take(reader: &mut Reader<'_>) -> postcard::Result<T> {
        take_raw(reader)
    }
}

impl<E: RawItem> Layout<Vec<E>> for RawVecLayout {
    const CODEC: Codec<Vec<E>> = Codec::raw_vec(RawVec::new());

    #[inline(always)]
    fn put(value: &Vec<E>, out: &mut Vec<u8>) -> postcard::Result<()> {
        put_raw_vec(value, out)
    }

    #[inline(always)]
    fn take(reader: &mut Reader<'_>) -> postcard::Result<Vec<E>> {
        take_raw_vec(reader)
    }
}

impl<T> Layout<T> for PostcardLayout {
    const CODEC: Codec<T> = Codec::POSTCARD;

    #[inline(always)]
    fn put(value: &T, out: &mut Vec<u8>) -> postcard::Result<()>
    where
        T: Serialize,
    {
        encode_into(out, value)
    }

    #[inline(always)]
    fn take(reader: &mut Reader<'_>) -> postcard::Result<T>
    where
        T: DeserializeOwned,
    {
        take_postcard(reader)
    }
}

/// Why `value` did not serialize (with `error`), in words. Postcard drops the message of
/// an error that a `Serialize` impl makes with `custom` (its own text is just "Serde
/// Serialization Error"); for those, the value is walked again by a serializer that
/// keeps it ([`why::Probe`]). Runs only after a failure.
pub(crate) fn ser_failure<T: Serialize + ?Sized>(value: &T, error: &postcard::Error) -> String {
    if *error != postcard::Error::SerdeSerCustom {
        return error.to_string();
    }
    match value.serialize(why::Probe) {
        Err(why) => why.0,
        Ok(()) => error.to_string(),
    }
}

/// Why `bytes` did not deserialize as a `T` (with `error`), in words: where postcard
/// drops the message that the type's own `Deserialize` impl gave `custom` (or
/// `invalid_value`, ...), the bytes are read again through a deserializer that keeps
/// it. Only a message that the type's own impl raises itself survives this way (a
/// `#[serde(try_from = ...)]` conversion that fails, say): one raised inside a visitor,
/// or by a value nested inside, passes through postcard again on its way out, which
/// drops it.
pub(crate) fn de_failure<T: DeserializeOwned>(bytes: &[u8], error: &postcard::Error) -> String {
    if *error != postcard::Error::SerdeDeCustom {
        return error.to_string();
    }
    let mut deserializer = postcard::Deserializer::from_bytes(bytes);
    let mut erased = <dyn erased_serde::Deserializer>::erase(&mut deserializer);
    match erased_serde::deserialize::<T>(&mut erased) {
        Err(why) => why.to_string(),
        Ok(_) => error.to_string(),
    }
}

/// Reads values one after another from a chunk body.
pub struct Reader<'a> {
    rest: &'a [u8],
}

impl<'a> Reader<'a> {
    pub(crate) fn new(bytes: &'a [u8]) -> Self {
        Reader { rest: bytes }
    }

    /// The next value. A value that does not decode leaves the reader where it was.
    #[inline]
    pub(crate) fn take<T: DeserializeOwned>(&mut self, codec: &Codec<T>) -> postcard::Result<T> {
        match (codec.raw, codec.raw_vec) {
            (Some(raw), _) => (raw.take)(self),
            (None, Some(raw_vec)) => (raw_vec.take)(self),
            (None, None) => take_postcard(self),
        }
    }

    /// The bytes not read yet.
    pub(crate) fn rest(&self) -> &'a [u8] {
        self.rest
    }

    /// Whether every byte has been read.
    pub(crate) fn is_empty(&self) -> bool {
        self.rest.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn raw_values_round_trip_one_by_one_and_in_bulk() {
        let codec = Codec::raw(Raw::<u64>::new());
        let items = [0u64, 1, u64::MAX, 1 << 40];
        let mut body = Vec::new();
        for x in &items {
            codec.put(x, &mut body).unwrap();
        }
        assert_eq!(codec.slice_bytes(&items), Some(&body[..]));
        let mut reader = Reader::new(&body);
        for x in items {
            assert_eq!(reader.take(&codec).unwrap(), x);
        }
        assert!(reader.is_empty());
        assert!(matches!(
            reader.take(&codec),
            Err(postcard::Error::DeserializeUnexpectedEnd)
        ));
        let mut out = vec![7u64];
        assert_eq!(codec.extend_raw(&body, 4, &mut out), Some(true));
        assert_eq!(out, [7, 0, 1, u64::MAX, 1 << 40]);
        // A body that is not exactly `count` values is refused, and nothing is added.
        assert_eq!(codec.extend_raw(&body[1..], 4, &mut out), Some(false));
        assert_eq!(codec.extend_raw(&body, 3, &mut out), Some(false));
        assert_eq!(out.len(), 5);
    }

    #[test]
    fn vecs_of_plain_numbers_round_trip_as_their_bytes() {
        let codec = Codec::raw_vec(RawVec::<Vec<u16>>::new());
        let mut body = Vec::new();
        codec.put(&vec![1, 0xffff, 3], &mut body).unwrap();
        codec.put(&Vec::new(), &mut body).unwrap();
        assert_eq!(body.len(), 8 + 6 + 8);
        assert_eq!(body[..8], 3u64.to_le_bytes());
        let mut reader = Reader::new(&body);
        assert_eq!(reader.take(&codec).unwrap(), [1, 0xffff, 3]);
        assert_eq!(reader.take(&codec).unwrap(), []);
        assert!(reader.is_empty());
        // Nothing of the chunk-wide raw paths applies to a `Vec`.
        assert_eq!(codec.slice_bytes(&[vec![1]]), None);
        assert_eq!(codec.extend_raw(&body, 1, &mut Vec::new()), None);

        let codec = Codec::raw_vec(RawVec::<Vec<[f32; 2]>>::new());
        let mut body = Vec::new();
        codec
            .put(&vec![[1.5, -2.0], [f32::INFINITY, 0.25]], &mut body)
            .unwrap();
        assert_eq!(body.len(), 8 + 16);
        let v = Reader::new(&body).take(&codec).unwrap();
        assert_eq!(v, [[1.5, -2.0], [f32::INFINITY, 0.25]]);

        // Elements that do not sit aligned in the body are copied all the same.
        let codec = Codec::raw_vec(RawVec::<Vec<u64>>::new());
        let mut body = vec![0xaa];
        codec.put(&vec![u64::MAX, 1, 1 << 63], &mut body).unwrap();
        let mut reader = Reader::new(&body[1..]);
        assert_eq!(reader.take(&codec).unwrap(), [u64::MAX, 1, 1 << 63]);
        assert!(reader.is_empty());
    }

    #[test]
    fn a_vec_longer_than_its_body_is_refused_before_allocating() {
        let codec = Codec::raw_vec(RawVec::<Vec<u64>>::new());
        for (len, tail) in [(2u64, 15usize), (1 << 60, 8), (u64::MAX, 8), (1, 0)] {
            let mut body = len.to_le_bytes().to_vec();
            body.resize(8 + tail, 0);
            assert!(
                matches!(
                    Reader::new(&body).take(&codec),
                    Err(postcard::Error::DeserializeUnexpectedEnd)
                ),
                "{len} {tail}"
            );
        }
        assert!(Reader::new(&[1, 0, 0]).take(&codec).is_err());
    }

    /// A number that must be even, checked by a `try_from` conversion.
    #[derive(Debug, serde::Deserialize)]
    #[serde(try_from = "u32")]
    struct Even(#[allow(dead_code)] u32);

    impl TryFrom<u32> for Even {
        type Error = String;
        fn try_from(n: u32) -> Result<Self, String> {
            if n.is_multiple_of(2) {
                Ok(Even(n))
            } else {
                Err(format!("{n} is odd"))
            }
        }
    }

    #[test]
    fn failures_keep_the_words_of_the_impl_that_failed() {
        let codec = Codec::<Even>::POSTCARD;
        let three = postcard::to_stdvec(&3u32).unwrap();
        let mut reader = Reader::new(&three);
        let e = reader.take(&codec).unwrap_err();
        assert_eq!(e, postcard::Error::SerdeDeCustom);
        // A failed read leaves the reader on the value.
        assert_eq!(reader.rest(), &three[..]);
        assert_eq!(de_failure::<Even>(reader.rest(), &e), "3 is odd");
        // Postcard's own errors are its own words.
        let e = Reader::new(&[]).take(&codec).unwrap_err();
        assert_eq!(de_failure::<Even>(&[], &e), e.to_string());
        // Raised by a value nested inside another (or inside a visitor), the message
        // is postcard's again, as documented on `de_failure`.
        let nested = postcard::to_stdvec(&(1u8, 3u32)).unwrap();
        let codec = Codec::<(u8, Even)>::POSTCARD;
        let e = Reader::new(&nested).take(&codec).unwrap_err();
        assert_eq!(de_failure::<(u8, Even)>(&nested, &e), e.to_string());

        // Serialization keeps the message however deep it was raised.
        let cell = std::cell::RefCell::new(1u8);
        let _held = cell.borrow_mut();
        let value = (2u8, vec![Some(&cell)]);
        let e = Codec::POSTCARD.put(&value, &mut Vec::new()).unwrap_err();
        let why = ser_failure(&value, &e);
        assert!(why.contains("borrowed"), "{why}");
    }

    #[test]
    fn arrays_and_floats_are_raw_and_postcard_is_postcard() {
        let codec = Codec::raw(Raw::<[f32; 3]>::new());
        let mut body = Vec::new();
        codec.put(&[1.5, -0.0, f32::NAN], &mut body).unwrap();
        assert_eq!(body.len(), 12);
        let v = Reader::new(&body).take(&codec).unwrap();
        assert_eq!(v[0], 1.5);
        assert!(v[1].is_sign_negative() && v[2].is_nan());

        let codec = Codec::<u64>::POSTCARD;
        let mut body = Vec::new();
        codec.put(&300, &mut body).unwrap();
        assert_eq!(body, postcard::to_stdvec(&300u64).unwrap());
        assert_eq!(codec.slice_bytes(&[1, 2]), None);
        assert_eq!(codec.extend_raw(&body, 1, &mut Vec::new()), None);
        assert_eq!(Reader::new(&body).take(&codec).unwrap(), 300);
    }
}
