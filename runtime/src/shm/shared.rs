//! [`Shared<T>`]: one value, written once into shared memory, read by every worker.

use std::ops::Deref;
use std::sync::Arc;

use serde::de::DeserializeOwned;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use super::{Entry, Segment, ShmBackend};
use crate::error::{Error, ErrorKind, Result};

/// A value written once into shared memory; a cheap handle to it travels to workers.
///
/// ```no_run
/// use std::collections::HashMap;
///
/// use multiproc::prelude::*;
///
/// #[parallel]
/// fn lookup(table: Shared<HashMap<u64, String>>, key: u64) -> Option<String> {
///     table.get(&key).cloned() // derefs to the value
/// }
///
/// fn main() -> multiproc::Result<()> {
///     let big_lookup_table: HashMap<u64, String> =
///         (0..100_000).map(|k| (k, format!("value {k}"))).collect();
///     let table = Shared::new(big_lookup_table)?; // serialized once, into shared memory
///     let keys = [3u64, 30, 300_000];
///     let pool = Pool::new(2)?;
///     let args: Vec<_> = keys.iter().map(|k| (table.clone(), *k)).collect();
///     let out = pool.map(lookup, &args)?;
///     assert_eq!(out[0].as_deref(), Some("value 3"));
///     Ok(())
/// }
/// ```
///
/// The handle is `Clone`, serializes to a few bytes, and derefs to `T` in the parent and
/// in workers. Each worker process deserializes a given `Shared` at most once (the result
/// is cached by segment and type) and frees it once the parent holds no handle to it.
pub struct Shared<T> {
    entry: Arc<Entry>,
    value: Arc<T>,
}

impl<T> Clone for Shared<T> {
    fn clone(&self) -> Self {
        Shared {
            entry: Arc::clone(&self.entry),
            value: Arc::clone(&self.value),
        }
    }
}

impl<T: Serialize + DeserializeOwned + Send + Sync + 'static> Shared<T> {
    /// Serializes `value` once into a new, sealed shared-memory segment.
    pub fn new(value: T) -> Result<Shared<T>> {
        Shared::with_backend(value, crate::sys::segment::default_backend())
    }

    /// Like [`new`](Self::new), with the segment kind chosen explicitly.
    pub fn with_backend(value: T, backend: ShmBackend) -> Result<Shared<T>> {
        let bytes = postcard::to_stdvec(&value).map_err(|e| {
            let why = crate::codec::ser_failure(&value, &e);
            Error::new(
                ErrorKind::Serialization,
                format!("the value of a Shared could not be serialized: {why}"),
            )
        })?;
        let segment = Segment::create(backend, &bytes)?;
        let entry = Entry::new(segment);
        super::register_created(&entry);
        // The creator's own handles read the value it already has.
        let Ok(value) = entry.keep_with(|| Ok::<T, std::convert::Infallible>(value));
        Ok(Shared { entry, value })
    }
}

impl<T> Deref for Shared<T> {
    type Target = T;

    fn deref(&self) -> &T {
        &self.value
    }
}

impl<T: std::fmt::Debug> std::fmt::Debug for Shared<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("Shared").field(&*self.value).finish()
    }
}

impl<T> Serialize for Shared<T> {
    fn serialize<S: Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        super::note_outgoing(&self.entry);
        self.entry.segment.id().serialize(s)
    }
}

impl<'de, T> Deserialize<'de> for Shared<T>
where
    T: DeserializeOwned + Send + Sync + 'static,
{
    fn deserialize<D: Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        let id = u64::deserialize(d)?;
        let entry = super::resolve(id).ok_or_else(|| super::missing::<D::Error>(id))?;
        let value = entry.keep_with(|| {
            postcard::from_bytes::<T>(entry.segment.bytes()).map_err(|e| {
                <D::Error as serde::de::Error>::custom(format_args!(
                    "the value in shared-memory segment {id:016x} does not decode as this type: {e}"
                ))
            })
        })?;
        Ok(Shared { entry, value })
    }
}
