//! Why a value did not serialize, in its own words: [`Probe`], a serializer that writes
//! nothing and keeps the first message raised.

use serde::Serialize;
use serde::ser::{self, Serializer};

use super::Why;

/// Walks a value the way a serializer sees it, writing nothing: its only result is the
/// first error the value's impls raise, message and all. Not human-readable, as
/// postcard is not, so that impls take the same branch as they did for postcard.
pub(crate) struct Probe;

/// The methods for values with nothing inside: nothing to do.
macro_rules! leaves {
    ($($method:ident($($arg:ty),*);)*) => {$(
        fn $method(self, $(_: $arg),*) -> Result<(), Why> {
            Ok(())
        }
    )*};
}

/// The methods that open a compound value: the probe walks its parts itself.
macro_rules! openers {
    ($($method:ident($($arg:ty),*);)*) => {$(
        fn $method(self, $(_: $arg),*) -> Result<Probe, Why> {
            Ok(Probe)
        }
    )*};
}

impl Serializer for Probe {
    type Ok = ();
    type Error = Why;
    type SerializeSeq = Probe;
    type SerializeTuple = Probe;
    type SerializeTupleStruct = Probe;
    type SerializeTupleVariant = Probe;
    type SerializeMap = Probe;
    type SerializeStruct = Probe;
    type SerializeStructVariant = Probe;

    leaves! {
        serialize_bool(bool);
        serialize_i8(i8);
        serialize_i16(i16);
        serialize_i32(i32);
        serialize_i64(i64);
        serialize_i128(i128);
        serialize_u8(u8);
        serialize_u16(u16);
        serialize_u32(u32);
        serialize_u64(u64);
        serialize_u128(u128);
        serialize_f32(f32);
        serialize_f64(f64);
        serialize_char(char);
        serialize_str(&str);
        serialize_bytes(&[u8]);
        serialize_none();
        serialize_unit();
        serialize_unit_struct(&'static str);
        serialize_unit_variant(&'static str, u32, &'static str);
    }

    fn serialize_some<T: ?Sized + Serialize>(self, value: &T) -> Result<(), Why> {
        value.serialize(Probe)
    }

    fn serialize_newtype_struct<T: ?Sized + Serialize>(
        self,
        _: &'static str,
        value: &T,
    ) -> Result<(), Why> {
        value.serialize(Probe)
    }

    fn serialize_newtype_variant<T: ?Sized + Serialize>(
        self,
        _: &'static str,
        _: u32,
        _: &'static str,
        value: &T,
    ) -> Result<(), Why> {
        value.serialize(Probe)
    }

    openers! {
        serialize_seq(Option<usize>);
        serialize_tuple(usize);
        serialize_tuple_struct(&'static str, usize);
        serialize_tuple_variant(&'static str, u32, &'static str, usize);
        serialize_map(Option<usize>);
        serialize_struct(&'static str, usize);
        serialize_struct_variant(&'static str, u32, &'static str, usize);
    }

    fn is_human_readable(&self) -> bool {
        false
    }
}

/// The compound parts: each element, field, key or value is walked in turn.
macro_rules! compound {
    ($($trait:ident { $($method:ident($($name:ty),*);)* })*) => {$(
        impl ser::$trait for Probe {
            type Ok = ();
            type Error = Why;
            $(
                fn $method<T: ?Sized + Serialize>(
                    &mut self,
                    $(_: $name,)*
                    value: &T,
                ) -> Result<(), Why> {
                    value.serialize(Probe)
                }
            )*
            fn end(self) -> Result<(), Why> {
                Ok(())
            }
        }
    )*};
}

compound! {
    SerializeSeq { serialize_element(); }
    SerializeTuple { serialize_element(); }
    SerializeTupleStruct { serialize_field(); }
    SerializeTupleVariant { serialize_field(); }
    SerializeMap { serialize_key(); serialize_value(); }
    SerializeStruct { serialize_field(&'static str); }
    SerializeStructVariant { serialize_field(&'static str); }
}

#[cfg(test)]
mod tests {
    use std::cell::RefCell;
    use std::collections::BTreeMap;

    use super::*;

    /// Refuses to be serialized, with a message.
    struct Refuses(&'static str);

    impl Serialize for Refuses {
        fn serialize<S: Serializer>(&self, _: S) -> Result<S::Ok, S::Error> {
            Err(ser::Error::custom(self.0))
        }
    }

    /// Serializes as 1 where serializers are human-readable, refuses where not.
    struct ReadableOnly;

    impl Serialize for ReadableOnly {
        fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
            if s.is_human_readable() {
                s.serialize_u8(1)
            } else {
                Err(ser::Error::custom("compact forms are not supported"))
            }
        }
    }

    #[derive(Serialize)]
    enum Shape {
        Named { inner: Vec<Option<Refuses>> },
    }

    fn why<T: Serialize>(value: &T) -> Option<String> {
        value.serialize(Probe).err().map(|w| w.0)
    }

    #[test]
    fn the_first_message_is_found_however_deep() {
        assert_eq!(why(&Refuses("top")).as_deref(), Some("top"));
        let nested = (1u8, vec![None, Some(Refuses("deep"))], "x");
        assert_eq!(why(&nested).as_deref(), Some("deep"));
        let mut map = BTreeMap::new();
        map.insert(1, Refuses("a value"));
        assert_eq!(why(&map).as_deref(), Some("a value"));
        let shape = Shape::Named {
            inner: vec![Some(Refuses("in a variant")), Some(Refuses("later"))],
        };
        assert_eq!(why(&shape).as_deref(), Some("in a variant"));
        assert_eq!(
            why(&ReadableOnly).as_deref(),
            Some("compact forms are not supported")
        );
        assert_eq!(
            why(&(1u64, "fine", [1.5f32; 3], BTreeMap::<u8, u8>::new())),
            None
        );
    }

    #[test]
    fn a_refcell_borrowed_elsewhere_says_so() {
        let cell = RefCell::new(5);
        let _held = cell.borrow_mut();
        let why = why(&cell).unwrap();
        assert!(why.contains("borrowed"), "{why}");
    }
}
