//! What a worker runs for one chunk: decode each argument, call the task, encode its
//! result; and the failures it reports instead of a value.

use std::cell::Cell;

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::codec::{Layout, Reader};

/// Why an item failed in the worker.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[doc(hidden)]
pub enum FailureKind {
    /// The task panicked.
    Panicked,
    /// The argument did not decode or the result did not encode.
    Serialization,
}

/// An item that did not produce a value. Rare, so it is sent apart from the values and
/// costs nothing when every item succeeds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[doc(hidden)]
pub struct Failure {
    /// Position of the item in its chunk.
    pub index: u32,
    /// What went wrong.
    pub kind: FailureKind,
    /// The panic message or the serialization error.
    pub message: String,
}

/// Decodes the failures of a `Done` frame.
pub(crate) fn decode_failures(mut bytes: &[u8]) -> Result<Vec<Failure>, String> {
    let mut out = Vec::new();
    while !bytes.is_empty() {
        let (f, rest) = postcard::take_from_bytes::<Failure>(bytes)
            .map_err(|e| format!("malformed failure record: {e}"))?;
        out.push(f);
        bytes = rest;
    }
    Ok(out)
}

/// An argument a task may borrow from the chunk it arrives in (`&str`, `&[u8]`): read in
/// place in the worker, with no copy and no allocation. On the caller's side it is the
/// owned type (`String`, `Vec<u8>`), whose layout it shares.
#[doc(hidden)]
pub trait Borrowed {
    /// Reads the next value, borrowed from the chunk; leaves `reader` where it was if
    /// that fails.
    fn take<'a>(reader: &mut Reader<'a>) -> postcard::Result<&'a Self>;
}

impl Borrowed for str {
    fn take<'a>(reader: &mut Reader<'a>) -> postcard::Result<&'a str> {
        reader.take_borrowed_str()
    }
}

impl Borrowed for [u8] {
    fn take<'a>(reader: &mut Reader<'a>) -> postcard::Result<&'a [u8]> {
        reader.take_borrowed_bytes()
    }
}

/// The body of every generated chunk runner for a task that takes an owned argument:
/// see [`run_items`].
#[doc(hidden)]
pub fn run_chunk<A: DeserializeOwned, R: Serialize, LA: Layout<A>, LR: Layout<R>>(
    invoke: fn(A) -> R,
    input: &[u8],
    count: u32,
    out: &mut Vec<u8>,
    failures: &mut Vec<Failure>,
) -> u32 {
    run_items::<A, R, LR>(
        input,
        count,
        out,
        failures,
        |reader| LA::take(reader).map_err(|e| crate::codec::de_failure::<A>(reader.rest(), &e)),
        invoke,
    )
}

/// The chunk runner of a task whose one argument is borrowed (`&str`, `&[u8]`): each
/// argument is read in place, in the chunk.
#[doc(hidden)]
pub fn run_chunk_borrowed<B: Borrowed + ?Sized, R: Serialize, LR: Layout<R>>(
    invoke: fn(&B) -> R,
    input: &[u8],
    count: u32,
    out: &mut Vec<u8>,
    failures: &mut Vec<Failure>,
) -> u32 {
    run_items::<&B, R, LR>(
        input,
        count,
        out,
        failures,
        |reader| B::take(reader).map_err(|e| e.to_string()),
        invoke,
    )
}

/// Decode, call, encode, with panics caught: what every chunk runner does.
///
/// The values of the items that succeed are appended to `out`, back to back; an item that
/// panics, or whose result does not encode, becomes a [`Failure`] and the next item runs.
/// An argument that does not decode (or whose decoding panics) ends the chunk: the items
/// after it cannot be located. Returns the number of items that ran.
///
/// Items run in stretches under one `catch_unwind` each, not one per item: a stretch ends
/// only at a panic, so a chunk without panics pays for one.
fn run_items<'a, A, R: Serialize, LR: Layout<R>>(
    input: &'a [u8],
    count: u32,
    out: &mut Vec<u8>,
    failures: &mut Vec<Failure>,
    mut take: impl FnMut(&mut Reader<'a>) -> Result<A, String>,
    invoke: impl Fn(A) -> R,
) -> u32 {
    /// Where the current item was when a panic ended a stretch.
    #[derive(Clone, Copy, PartialEq)]
    enum Step {
        Decoding,
        Running,
        /// Its value is in `out`; only its destructor was left.
        Encoded,
    }
    let progress = super::note::ProgressNote::current();
    let mut reader = Reader::new(input);
    let mut index = 0;
    while index < count {
        // A `Cell`: the last step written before a panic is read after it.
        let step = Cell::new(Step::Decoding);
        let mut mark = out.len();
        let stretch = crate::sys::unwind::guarded(|| {
            while index < count {
                progress.note(index);
                step.set(Step::Decoding);
                mark = out.len();
                let value = take(&mut reader)?;
                step.set(Step::Running);
                let result = invoke(value);
                if let Err(e) = LR::put(&result, out) {
                    out.truncate(mark);
                    let why = crate::codec::ser_failure(&result, &e);
                    failures.push(Failure {
                        index,
                        kind: FailureKind::Serialization,
                        message: format!("the result could not be serialized in the worker: {why}"),
                    });
                }
                step.set(Step::Encoded);
                drop(result);
                index += 1;
            }
            Ok::<(), String>(())
        });
        match stretch {
            Ok(Ok(())) => {}
            Ok(Err(why)) => {
                failures.push(Failure {
                    index,
                    kind: FailureKind::Serialization,
                    message: format!("the argument could not be deserialized in the worker: {why}"),
                });
                return index + 1;
            }
            // A destructor that panics after its value was sent does not fail the item.
            Err(_) if step.get() == Step::Encoded => index += 1,
            Err(message) => {
                out.truncate(mark);
                failures.push(Failure {
                    index,
                    kind: FailureKind::Panicked,
                    message,
                });
                index += 1;
                if step.get() == Step::Decoding {
                    return index;
                }
            }
        }
    }
    count
}
