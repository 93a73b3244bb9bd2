//! How one task's arguments and results are laid out in a chunk body.
//!
//! Any serde type travels as postcard, one encoding after another. Plain numbers (`u64`,
//! `f64`, `[u8; 32]`, ...) travel as their raw bytes instead: a slice of them is one
//! copy into the frame, and a chunk of results is one copy out of it, where postcard
//! costs a varint encode and decode per item. A `Vec` of plain numbers travels as its
//! length and then its elements' bytes, one copy each way, where postcard encodes and
//! decodes element by element (a 50 MB `Vec<u8>` took 6.6 ns a byte); a tuple of plain
//! numbers (the arguments of a task that takes several) as its fields' bytes, one after
//! another. `#[parallel]` picks the raw layouts when it sees such types in the
//! signature; both processes run the same binary, so they agree.

use serde::Serialize;
use serde::de::DeserializeOwned;

mod append;
mod message;
mod raw;
mod spill;

pub(crate) use append::{HUGE_COPY, encode_into, extend_frame};
pub(crate) use spill::spilling;

pub use raw::{Parts, Raw, RawItem, RawTuple};
use raw::{put_raw, put_raw_vec, take_raw, take_raw_vec};

/// Reads the postcard encoding of the next value.
#[inline(always)]
fn take_postcard<T: DeserializeOwned>(reader: &mut Reader<'_>) -> postcard::Result<T> {
    let (value, rest) = postcard::take_from_bytes(reader.rest)?;
    reader.rest = rest;
    Ok(value)
}

/// A task's layout for one side (its argument or its result): raw, in raw parts (a
/// `Vec` or a tuple of plain numbers), or postcard.
pub struct Codec<T> {
    raw: Option<Raw<T>>,
    parts: Option<Parts<T>>,
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
        parts: None,
    };

    /// Raw bytes, for plain numbers.
    pub const fn raw(raw: Raw<T>) -> Self {
        Codec {
            raw: Some(raw),
            parts: None,
        }
    }

    /// Raw parts, for a `Vec` or a tuple of plain numbers.
    pub const fn parts(parts: Parts<T>) -> Self {
        Codec {
            raw: None,
            parts: Some(parts),
        }
    }

    /// Whether the layout is raw (plain numbers: one copy each way).
    pub(crate) fn is_raw(&self) -> bool {
        self.raw.is_some()
    }

    /// The bytes of a whole slice, when the layout is raw.
    pub(crate) fn slice_bytes<'a>(&self, items: &'a [T]) -> Option<&'a [u8]> {
        self.raw.map(|raw| (raw.as_bytes)(items))
    }

    /// Writes the values held in `bytes` into `out`, when the layout is raw;
    /// `Some(false)`, writing nothing, if `bytes` is not exactly `out.len()` values.
    pub(crate) fn fill_raw(
        &self,
        bytes: &[u8],
        out: &mut [std::mem::MaybeUninit<T>],
    ) -> Option<bool> {
        self.raw.map(|raw| (raw.fill)(bytes, out))
    }
}

impl<T: Serialize> Codec<T> {
    /// Appends one value to `out`.
    #[inline]
    pub(crate) fn put(&self, value: &T, out: &mut Vec<u8>) -> postcard::Result<()> {
        match (self.raw, self.parts) {
            (Some(raw), _) => (raw.put)(value, out),
            (None, Some(parts)) => (parts.put)(value, out),
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

/// A tuple of plain numbers (a task's arguments, say): each field's bytes, in order.
#[derive(Debug, Clone, Copy)]
pub struct RawTupleLayout;

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
    const CODEC: Codec<Vec<E>> = Codec::parts(Parts::raw_vec());

    #[inline(always)]
    fn put(value: &Vec<E>, out: &mut Vec<u8>) -> postcard::Result<()> {
        put_raw_vec(value, out)
    }

    #[inline(always)]
    fn take(reader: &mut Reader<'_>) -> postcard::Result<Vec<E>> {
        take_raw_vec(reader)
    }
}

impl<T: RawTuple> Layout<T> for RawTupleLayout {
    const CODEC: Codec<T> = Codec::parts(Parts::raw_tuple());

    #[inline(always)]
    fn put(value: &T, out: &mut Vec<u8>) -> postcard::Result<()> {
        T::put_fields(value, out)
    }

    #[inline(always)]
    fn take(reader: &mut Reader<'_>) -> postcard::Result<T> {
        T::take_fields(reader)
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
/// keeps it ([`message::ser::Probe`]). Runs only after a failure.
pub(crate) fn ser_failure<T: Serialize + ?Sized>(value: &T, error: &postcard::Error) -> String {
    if *error != postcard::Error::SerdeSerCustom {
        return error.to_string();
    }
    match value.serialize(message::ser::Probe) {
        Err(why) => why.0,
        Ok(()) => error.to_string(),
    }
}

/// Why `bytes` did not deserialize as a `T` (with `error`), in words: where postcard
/// drops the message that a `Deserialize` impl gave `custom` (or `invalid_value`, ...),
/// the bytes are read again by a deserializer of postcard's format that keeps it
/// ([`message::de::Reread`]), however deep the value that raised it. Runs only after a
/// failure.
pub(crate) fn de_failure<T: DeserializeOwned>(bytes: &[u8], error: &postcard::Error) -> String {
    if *error != postcard::Error::SerdeDeCustom {
        return error.to_string();
    }
    match T::deserialize(&mut message::de::Reread::new(bytes)) {
        Err(why) => why.0,
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
        match (codec.raw, codec.parts) {
            (Some(raw), _) => (raw.take)(self),
            (None, Some(parts)) => (parts.take)(self),
            (None, None) => take_postcard(self),
        }
    }

    /// The next `String`'s text (postcard: a varint length, then UTF-8), borrowed from
    /// the body. A value that does not decode leaves the reader where it was.
    pub(crate) fn take_borrowed_str(&mut self) -> postcard::Result<&'a str> {
        let (text, rest) = postcard::take_from_bytes::<&'a str>(self.rest)?;
        self.rest = rest;
        Ok(text)
    }

    /// The next `Vec<u8>`'s bytes (raw: a `u64` length, then the bytes), borrowed from
    /// the body. A value that does not decode leaves the reader where it was.
    pub(crate) fn take_borrowed_bytes(&mut self) -> postcard::Result<&'a [u8]> {
        let (bytes, rest) = raw::split_raw_vec(self.rest, 1)?;
        self.rest = rest;
        Ok(bytes)
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
        let mut out = [std::mem::MaybeUninit::new(7u64); 4];
        assert_eq!(codec.fill_raw(&body, &mut out), Some(true));
        // SAFETY: `fill_raw` wrote every slot; all were initialised before anyway.
        assert_eq!(out.map(|v| unsafe { v.assume_init() }), items);
        // A body that is not exactly as many values as slots is refused.
        assert_eq!(codec.fill_raw(&body[1..], &mut out), Some(false));
        assert_eq!(codec.fill_raw(&body, &mut out[..3]), Some(false));
    }

    #[test]
    fn vecs_of_plain_numbers_round_trip_as_their_bytes() {
        let codec = Codec::parts(Parts::<Vec<u16>>::raw_vec());
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
        assert_eq!(
            codec.fill_raw(&body, &mut [std::mem::MaybeUninit::uninit()]),
            None
        );

        let codec = Codec::parts(Parts::<Vec<[f32; 2]>>::raw_vec());
        let mut body = Vec::new();
        codec
            .put(&vec![[1.5, -2.0], [f32::INFINITY, 0.25]], &mut body)
            .unwrap();
        assert_eq!(body.len(), 8 + 16);
        let v = Reader::new(&body).take(&codec).unwrap();
        assert_eq!(v, [[1.5, -2.0], [f32::INFINITY, 0.25]]);

        // Elements that do not sit aligned in the body are copied all the same.
        let codec = Codec::parts(Parts::<Vec<u64>>::raw_vec());
        let mut body = vec![0xaa];
        codec.put(&vec![u64::MAX, 1, 1 << 63], &mut body).unwrap();
        let mut reader = Reader::new(&body[1..]);
        assert_eq!(reader.take(&codec).unwrap(), [u64::MAX, 1, 1 << 63]);
        assert!(reader.is_empty());
    }

    #[test]
    fn tuples_of_plain_numbers_are_their_fields_bytes() {
        let codec = Codec::parts(Parts::<(u8, f64, [i16; 2])>::raw_tuple());
        let mut body = Vec::new();
        codec.put(&(7, -0.5, [-1, 300]), &mut body).unwrap();
        codec.put(&(0, f64::INFINITY, [0, 0]), &mut body).unwrap();
        assert_eq!(body.len(), 2 * (1 + 8 + 4));
        assert_eq!(body[0], 7);
        assert_eq!(body[1..9], (-0.5f64).to_le_bytes());
        let mut reader = Reader::new(&body);
        assert_eq!(reader.take(&codec).unwrap(), (7, -0.5, [-1, 300]));
        assert_eq!(reader.take(&codec).unwrap(), (0, f64::INFINITY, [0, 0]));
        assert!(reader.is_empty());
        // A tuple cut short fails without moving the reader past its first fields.
        let mut reader = Reader::new(&body[..12]);
        assert!(matches!(
            reader.take(&codec),
            Err(postcard::Error::DeserializeUnexpectedEnd)
        ));
        assert_eq!(reader.rest().len(), 12);
    }

    #[test]
    fn a_vec_longer_than_its_body_is_refused_before_allocating() {
        let codec = Codec::parts(Parts::<Vec<u64>>::raw_vec());
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
        // However deep the value that raised it.
        let nested = postcard::to_stdvec(&(1u8, vec![2u32, 3])).unwrap();
        let codec = Codec::<(u8, Vec<Even>)>::POSTCARD;
        let e = Reader::new(&nested).take(&codec).unwrap_err();
        assert_eq!(de_failure::<(u8, Vec<Even>)>(&nested, &e), "3 is odd");

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
        assert_eq!(
            codec.fill_raw(&body, &mut [std::mem::MaybeUninit::uninit()]),
            None
        );
        assert_eq!(Reader::new(&body).take(&codec).unwrap(), 300);
    }
}
