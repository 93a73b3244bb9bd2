//! Why a value did not serialize or deserialize, in the words of the impl that failed.
//!
//! Postcard keeps no message for an error that a `Serialize` or `Deserialize` impl makes
//! with `custom` (or `invalid_value`, ...): its text is just "Serde Serialization Error".
//! So after such a failure, and only then, the value is walked again by a serializer
//! ([`ser::Probe`]) or the bytes read again by a deserializer of postcard's format
//! ([`de::Reread`]) whose error keeps the message.

use std::fmt;

pub(crate) mod de;
pub(crate) mod ser;

/// An error that keeps its message.
#[derive(Debug)]
pub(crate) struct Why(pub String);

impl fmt::Display for Why {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Why {}

impl serde::ser::Error for Why {
    fn custom<T: fmt::Display>(msg: T) -> Self {
        Why(msg.to_string())
    }
}

impl serde::de::Error for Why {
    fn custom<T: fmt::Display>(msg: T) -> Self {
        Why(msg.to_string())
    }
}
