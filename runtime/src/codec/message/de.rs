//! [`Reread`]: postcard's format read again, by a deserializer whose error keeps the
//! message a `Deserialize` impl gives it.

use serde::de::{self, DeserializeSeed, IntoDeserializer, Visitor};

use super::Why;

/// Reads postcard's format (as postcard 1 writes it) from a byte slice. Used only to
/// find the words of a failure that postcard itself reported without them.
pub(crate) struct Reread<'de> {
    rest: &'de [u8],
}

impl<'de> Reread<'de> {
    pub(crate) fn new(bytes: &'de [u8]) -> Self {
        Reread { rest: bytes }
    }

    fn take(&mut self, n: usize) -> Result<&'de [u8], Why> {
        let (taken, rest) = self
            .rest
            .split_at_checked(n)
            .ok_or_else(|| Why("the bytes end early".into()))?;
        self.rest = rest;
        Ok(taken)
    }

    fn byte(&mut self) -> Result<u8, Why> {
        Ok(self.take(1)?[0])
    }

    /// A varint of at most `max_bytes` bytes (LEB128, as postcard writes unsigned
    /// integers), which must fit in `T`.
    fn varint<T: TryFrom<u128>>(&mut self, max_bytes: usize) -> Result<T, Why> {
        let mut value = 0u128;
        for i in 0..max_bytes {
            let byte = self.byte()?;
            value |= u128::from(byte & 0x7f) << (7 * i);
            if byte & 0x80 == 0 {
                return T::try_from(value).map_err(|_| Why("a varint out of range".into()));
            }
        }
        Err(Why("a varint too long".into()))
    }

    fn len(&mut self) -> Result<usize, Why> {
        self.varint(10)
    }

    fn fixed<const N: usize>(&mut self) -> Result<[u8; N], Why> {
        let mut out = [0; N];
        out.copy_from_slice(self.take(N)?);
        Ok(out)
    }

    fn str(&mut self) -> Result<&'de str, Why> {
        let n = self.len()?;
        std::str::from_utf8(self.take(n)?).map_err(|_| Why("a string that is not UTF-8".into()))
    }
}

/// Zigzag-decodes `n` (as postcard writes signed integers) into `i128`.
fn unzigzag(n: u128) -> i128 {
    ((n >> 1) as i128) ^ -((n & 1) as i128)
}

/// The methods for signed integers: a zigzag varint of at most so many bytes.
macro_rules! signed {
    ($($method:ident $visit:ident $t:ty, $max:expr;)*) => {$(
        fn $method<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Why> {
            let n = unzigzag(self.varint::<u128>($max)?);
            visitor.$visit(<$t>::try_from(n).map_err(|_| Why("a varint out of range".into()))?)
        }
    )*};
}

/// The methods for unsigned integers: a varint of at most so many bytes.
macro_rules! unsigned {
    ($($method:ident $visit:ident $t:ty, $max:expr;)*) => {$(
        fn $method<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Why> {
            visitor.$visit(self.varint::<$t>($max)?)
        }
    )*};
}

impl<'de> de::Deserializer<'de> for &mut Reread<'de> {
    type Error = Why;

    fn deserialize_any<V: Visitor<'de>>(self, _: V) -> Result<V::Value, Why> {
        Err(Why("the format does not describe itself".into()))
    }

    fn deserialize_bool<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Why> {
        match self.byte()? {
            0 => visitor.visit_bool(false),
            1 => visitor.visit_bool(true),
            _ => Err(Why("a bool that is neither 0 nor 1".into())),
        }
    }

    fn deserialize_i8<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Why> {
        visitor.visit_i8(self.byte()? as i8)
    }

    fn deserialize_u8<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Why> {
        visitor.visit_u8(self.byte()?)
    }

    signed! {
        deserialize_i16 visit_i16 i16, 3;
        deserialize_i32 visit_i32 i32, 5;
        deserialize_i64 visit_i64 i64, 10;
        deserialize_i128 visit_i128 i128, 19;
    }

    unsigned! {
        deserialize_u16 visit_u16 u16, 3;
        deserialize_u32 visit_u32 u32, 5;
        deserialize_u64 visit_u64 u64, 10;
        deserialize_u128 visit_u128 u128, 19;
    }

    fn deserialize_f32<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Why> {
        visitor.visit_f32(f32::from_le_bytes(self.fixed()?))
    }

    fn deserialize_f64<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Why> {
        visitor.visit_f64(f64::from_le_bytes(self.fixed()?))
    }

    fn deserialize_char<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Why> {
        let mut chars = self.str()?.chars();
        match (chars.next(), chars.next()) {
            (Some(c), None) => visitor.visit_char(c),
            _ => Err(Why("a char that is not one character".into())),
        }
    }

    fn deserialize_str<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Why> {
        visitor.visit_borrowed_str(self.str()?)
    }

    fn deserialize_string<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Why> {
        visitor.visit_str(self.str()?)
    }

    fn deserialize_bytes<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Why> {
        let n = self.len()?;
        visitor.visit_borrowed_bytes(self.take(n)?)
    }

    fn deserialize_byte_buf<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Why> {
        let n = self.len()?;
        visitor.visit_bytes(self.take(n)?)
    }

    fn deserialize_option<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Why> {
        match self.byte()? {
            0 => visitor.visit_none(),
            1 => visitor.visit_some(self),
            _ => Err(Why("an option tag that is neither 0 nor 1".into())),
        }
    }

    fn deserialize_unit<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Why> {
        visitor.visit_unit()
    }

    fn deserialize_unit_struct<V: Visitor<'de>>(
        self,
        _: &'static str,
        visitor: V,
    ) -> Result<V::Value, Why> {
        visitor.visit_unit()
    }

    fn deserialize_newtype_struct<V: Visitor<'de>>(
        self,
        _: &'static str,
        visitor: V,
    ) -> Result<V::Value, Why> {
        visitor.visit_newtype_struct(self)
    }

    fn deserialize_seq<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Why> {
        let left = self.len()?;
        visitor.visit_seq(Items { de: self, left })
    }

    fn deserialize_tuple<V: Visitor<'de>>(self, left: usize, visitor: V) -> Result<V::Value, Why> {
        visitor.visit_seq(Items { de: self, left })
    }

    fn deserialize_tuple_struct<V: Visitor<'de>>(
        self,
        _: &'static str,
        left: usize,
        visitor: V,
    ) -> Result<V::Value, Why> {
        visitor.visit_seq(Items { de: self, left })
    }

    fn deserialize_map<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Why> {
        let left = self.len()?;
        visitor.visit_map(Items { de: self, left })
    }

    fn deserialize_struct<V: Visitor<'de>>(
        self,
        _: &'static str,
        fields: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, Why> {
        self.deserialize_tuple(fields.len(), visitor)
    }

    fn deserialize_enum<V: Visitor<'de>>(
        self,
        _: &'static str,
        _: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, Why> {
        visitor.visit_enum(self)
    }

    fn deserialize_identifier<V: Visitor<'de>>(self, _: V) -> Result<V::Value, Why> {
        Err(Why("the format has no identifiers".into()))
    }

    fn deserialize_ignored_any<V: Visitor<'de>>(self, _: V) -> Result<V::Value, Why> {
        Err(Why("the format cannot skip a value it does not know".into()))
    }

    fn is_human_readable(&self) -> bool {
        false
    }
}

/// The elements of a sequence, or the entries of a map: `left` more of them.
struct Items<'a, 'de> {
    de: &'a mut Reread<'de>,
    left: usize,
}

impl<'de> de::SeqAccess<'de> for Items<'_, 'de> {
    type Error = Why;

    fn next_element_seed<T: DeserializeSeed<'de>>(
        &mut self,
        seed: T,
    ) -> Result<Option<T::Value>, Why> {
        if self.left == 0 {
            return Ok(None);
        }
        self.left -= 1;
        seed.deserialize(&mut *self.de).map(Some)
    }

    fn size_hint(&self) -> Option<usize> {
        Some(self.left)
    }
}

impl<'de> de::MapAccess<'de> for Items<'_, 'de> {
    type Error = Why;

    fn next_key_seed<K: DeserializeSeed<'de>>(&mut self, seed: K) -> Result<Option<K::Value>, Why> {
        if self.left == 0 {
            return Ok(None);
        }
        self.left -= 1;
        seed.deserialize(&mut *self.de).map(Some)
    }

    fn next_value_seed<V: DeserializeSeed<'de>>(&mut self, seed: V) -> Result<V::Value, Why> {
        seed.deserialize(&mut *self.de)
    }

    fn size_hint(&self) -> Option<usize> {
        Some(self.left)
    }
}

impl<'de> de::EnumAccess<'de> for &mut Reread<'de> {
    type Error = Why;
    type Variant = Self;

    fn variant_seed<V: DeserializeSeed<'de>>(self, seed: V) -> Result<(V::Value, Self), Why> {
        let index: u32 = self.varint(5)?;
        let value = seed.deserialize(index.into_deserializer())?;
        Ok((value, self))
    }
}

impl<'de> de::VariantAccess<'de> for &mut Reread<'de> {
    type Error = Why;

    fn unit_variant(self) -> Result<(), Why> {
        Ok(())
    }

    fn newtype_variant_seed<T: DeserializeSeed<'de>>(self, seed: T) -> Result<T::Value, Why> {
        seed.deserialize(self)
    }

    fn tuple_variant<V: Visitor<'de>>(self, len: usize, visitor: V) -> Result<V::Value, Why> {
        de::Deserializer::deserialize_tuple(self, len, visitor)
    }

    fn struct_variant<V: Visitor<'de>>(
        self,
        fields: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, Why> {
        de::Deserializer::deserialize_tuple(self, fields.len(), visitor)
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use serde::{Deserialize, Serialize};

    use super::*;

    #[derive(Debug, PartialEq, Serialize, Deserialize)]
    enum Shape {
        Dot,
        Circle(f32),
        Line(i16, i16),
        Named { name: String, tags: Vec<char> },
    }

    #[derive(Debug, PartialEq, Serialize, Deserialize)]
    struct Everything {
        flags: (bool, bool),
        small: (i8, u8, i16, u16),
        wide: (i32, u32, i64, u64, i128, u128),
        floats: (f32, f64),
        text: String,
        letter: char,
        #[serde(with = "serde_bytes")]
        bytes: Vec<u8>,
        maybe: Option<Option<u64>>,
        unit: (),
        shapes: Vec<Shape>,
        map: BTreeMap<String, Vec<i64>>,
    }

    fn reread<T: de::DeserializeOwned>(bytes: &[u8]) -> Result<T, Why> {
        T::deserialize(&mut Reread::new(bytes))
    }

    #[test]
    fn it_reads_what_postcard_writes() {
        let mut map = BTreeMap::new();
        map.insert("k".to_owned(), vec![i64::MIN, -1, 0, 1, i64::MAX]);
        let value = Everything {
            flags: (true, false),
            small: (-128, 255, i16::MIN, u16::MAX),
            wide: (i32::MIN, u32::MAX, -5, u64::MAX, i128::MIN, u128::MAX),
            floats: (-0.0, f64::MIN_POSITIVE),
            text: "héllo".to_owned(),
            letter: '🦀',
            bytes: vec![0, 255, 7],
            maybe: Some(None),
            unit: (),
            shapes: vec![
                Shape::Dot,
                Shape::Circle(1.5),
                Shape::Line(-3, 300),
                Shape::Named {
                    name: "n".into(),
                    tags: vec!['a', 'ß'],
                },
            ],
            map,
        };
        let bytes = postcard::to_stdvec(&value).unwrap();
        assert_eq!(reread::<Everything>(&bytes).unwrap(), value);
        assert!(reread::<Everything>(&bytes[..bytes.len() - 1]).is_err());
    }

    /// A number that must be even, checked inside a visitor as `NonZero` types are.
    #[derive(Debug)]
    struct Even;

    impl<'de> Deserialize<'de> for Even {
        fn deserialize<D: de::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
            struct V;
            impl Visitor<'_> for V {
                type Value = Even;
                fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                    f.write_str("an even number")
                }
                fn visit_u32<E: de::Error>(self, n: u32) -> Result<Even, E> {
                    if n.is_multiple_of(2) {
                        Ok(Even)
                    } else {
                        Err(E::invalid_value(de::Unexpected::Unsigned(n.into()), &self))
                    }
                }
            }
            d.deserialize_u32(V)
        }
    }

    #[test]
    fn a_message_raised_deep_inside_is_kept() {
        let bytes = postcard::to_stdvec(&(1u8, vec![Some(2u32), Some(3)])).unwrap();
        let e = postcard::from_bytes::<(u8, Vec<Option<Even>>)>(&bytes).unwrap_err();
        assert_eq!(e, postcard::Error::SerdeDeCustom);
        let why = reread::<(u8, Vec<Option<Even>>)>(&bytes).unwrap_err().0;
        assert_eq!(why, "invalid value: integer `3`, expected an even number");
        let bytes = postcard::to_stdvec(&0u32).unwrap();
        let why = reread::<std::num::NonZeroU32>(&bytes).unwrap_err().0;
        assert!(why.contains("nonzero"), "{why}");
    }
}
