//! Chunks on the caller's side: sizing them, encoding arguments into `Run` frames, and
//! decoding the values and failures of `Done` frames. Shared by `map`, `imap` and `apply`.

use std::sync::atomic::{AtomicU64, Ordering};

use std::borrow::Borrow;

use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::api::gather::Writer;
use crate::codec::{Codec, Reader};

pub(crate) use crate::engine::Encoded;
use crate::engine::Reply;
use crate::error::{Error, ErrorKind, Result};
use crate::task::{Failure, FailureKind, decode_failures};
use crate::wire::frame;

/// Chunk ids, unique in this process, so a driver can check each answer is for the chunk
/// it expects.
static NEXT_CHUNK: AtomicU64 = AtomicU64::new(1);

/// Encodes up to `max` items from `items` (at least one, if there is one) into a `Run`
/// frame for `task`; `first_index` is the position of the first one, for errors.
/// `bytes_per_item` is a running estimate used to size the buffer, updated here. With
/// `spill_at` given, a value's copy of at least that many bytes takes the chunk's body
/// into a one-shot segment, written as the chunk is encoded (see [`crate::codec::spilling`]).
pub(crate) fn encode_chunk<T: Serialize>(
    task: &'static str,
    codec: Codec<T>,
    items: &mut impl Iterator<Item = impl Borrow<T>>,
    max: usize,
    first_index: usize,
    bytes_per_item: &mut usize,
    spill_at: Option<usize>,
) -> Result<Option<Encoded>> {
    let chunk = NEXT_CHUNK.fetch_add(1, Ordering::Relaxed);
    let max = max.clamp(1, u32::MAX as usize);
    let mut frame = Vec::with_capacity(64 + max * *bytes_per_item);
    // The count is patched in below, once known.
    frame::begin_run(&mut frame, chunk, 0, task);
    let body_at = frame.len();
    let mut count = 0usize;
    let ((encoded, attachments, leases), spilled) =
        crate::codec::spilling(&mut frame, body_at, spill_at, |frame| {
            crate::shm::collect(|| {
                for item in items.take(max) {
                    codec.put(item.borrow(), frame).map_err(|e| {
                        let why = crate::codec::ser_failure(item.borrow(), &e);
                        Error::new(
                            ErrorKind::Serialization,
                            format!("the argument could not be serialized: {why}"),
                        )
                        .with_task(task)
                        .with_index(first_index + count)
                    })?;
                    count += 1;
                }
                Ok::<(), Error>(())
            })
        });
    encoded?;
    let spilled = spilled.map_err(|e| e.with_task(task).with_index(first_index))?;
    if count == 0 {
        return Ok(None);
    }
    let body_len = match &spilled {
        Some(segment) => segment.len(),
        None => frame.len() - body_at,
    };
    *bytes_per_item = body_len.div_ceil(count).max(1);
    frame::set_run_count(&mut frame, count as u32);
    Ok(Some(Encoded {
        chunk,
        frame,
        body_at,
        count: count as u32,
        attachments,
        leases,
        spilled,
    }))
}

/// Like [`encode_chunk`] over the front of a slice; a raw layout copies the items' bytes
/// into the frame at once instead of encoding them one by one.
pub(crate) fn encode_slice<T: Serialize>(
    task: &'static str,
    codec: Codec<T>,
    items: &[T],
    max: usize,
    first_index: usize,
    bytes_per_item: &mut usize,
    spill_at: Option<usize>,
) -> Result<Option<Encoded>> {
    let items = &items[..max.clamp(1, u32::MAX as usize).min(items.len())];
    let Some(bytes) = codec.slice_bytes(items) else {
        let mut iter = items.iter();
        return encode_chunk(
            task,
            codec,
            &mut iter,
            max,
            first_index,
            bytes_per_item,
            spill_at,
        );
    };
    if items.is_empty() {
        return Ok(None);
    }
    let chunk = NEXT_CHUNK.fetch_add(1, Ordering::Relaxed);
    let mut frame = Vec::with_capacity(64 + bytes.len());
    frame::begin_run(&mut frame, chunk, items.len() as u32, task);
    let body_at = frame.len();
    frame.extend_from_slice(bytes);
    Ok(Some(Encoded {
        chunk,
        frame,
        body_at,
        count: items.len() as u32,
        attachments: Vec::new(),
        leases: Vec::new(),
        spilled: None,
    }))
}

/// The most items of `bytes_per_item` bytes that keep a chunk's body well under the
/// default shared-memory threshold. A bigger body would travel through a fresh segment,
/// whose page faults cost more than the socket's two copies at these sizes; more,
/// smaller chunks cost nothing while every worker's window is full.
pub(crate) fn max_items_inline(bytes_per_item: usize) -> usize {
    (crate::wire::DEFAULT_SHM_THRESHOLD / 2 / bytes_per_item.max(1)).max(1)
}

/// A chunk's answer once decoded into its range of the output: how many values and
/// how long the worker took, or the error that ends the call.
pub(crate) enum Decoded {
    Written { count: u32, nanos: u64 },
    Failed(Error),
}

/// Decodes a chunk's reply into `writer`'s range (which it fills), or gives the error of
/// its first failed item. A `Deserialize` impl that panics fails the chunk, with its
/// message.
pub(crate) fn decode_reply<R: DeserializeOwned>(
    task: &'static str,
    codec: Codec<R>,
    reply: Reply,
    writer: &mut Writer<R>,
) -> Decoded {
    let (first_index, pid, nanos, expected, count, body, values_len) = match reply {
        Reply::Done {
            first_index,
            pid,
            nanos,
            expected,
            count,
            body,
            values_len,
        } => (first_index, pid, nanos, expected, count, body, values_len),
        Reply::Failed { error, .. } => return Decoded::Failed(error),
    };
    let origin = ChunkOrigin {
        task,
        first_index,
        pid,
    };
    let (values, failures) = body.bytes().split_at(values_len);
    if !failures.is_empty() || count != expected {
        return Decoded::Failed(origin.first_failure(failures, count, expected));
    }
    match crate::sys::unwind::guarded(|| origin.decode_into(codec, values, count, writer)) {
        Ok(Ok(())) => Decoded::Written { count, nanos },
        Ok(Err(e)) => Decoded::Failed(e),
        Err(panic) => Decoded::Failed(origin.error(
            ErrorKind::Serialization,
            writer.written(),
            format!("the result could not be deserialized: its Deserialize panicked: {panic}"),
        )),
    }
}

/// Where a chunk's results came from, for error messages.
pub(crate) struct ChunkOrigin {
    pub task: &'static str,
    pub first_index: usize,
    pub pid: u32,
}

impl ChunkOrigin {
    fn error(&self, kind: ErrorKind, offset: usize, message: String) -> Error {
        Error::new(kind, message)
            .with_task(self.task)
            .with_index(self.first_index + offset)
            .with_pid(self.pid)
    }

    /// Writes the chunk's `count` values into `writer`, which must have room for
    /// exactly that many (a chunk without failures).
    pub(crate) fn decode_into<R: DeserializeOwned>(
        &self,
        codec: Codec<R>,
        bytes: &[u8],
        count: u32,
        writer: &mut Writer<R>,
    ) -> Result<()> {
        if codec.is_raw() {
            // SAFETY: `fill_raw` writes every slot it is given when it says it did.
            let filled = unsafe { writer.fill(|slots| codec.fill_raw(bytes, slots) == Some(true)) };
            if filled {
                return Ok(());
            }
            return Err(self.error(
                ErrorKind::Protocol,
                0,
                format!(
                    "the worker sent {} result bytes for {count} results",
                    bytes.len()
                ),
            ));
        }
        let mut reader = Reader::new(bytes);
        for k in 0..count as usize {
            let value = reader
                .take(&codec)
                .map_err(|e| self.result_error::<R>(k, reader.rest(), &e))?;
            if writer.push(value).is_err() {
                return Err(self.error(
                    ErrorKind::Protocol,
                    k,
                    "the worker sent more results than the chunk had items".to_owned(),
                ));
            }
        }
        self.check_end(&reader)
    }

    /// The error for result `k`, which did not decode from `at` (its bytes, and the
    /// rest's) with `e`.
    fn result_error<R: DeserializeOwned>(&self, k: usize, at: &[u8], e: &postcard::Error) -> Error {
        let why = crate::codec::de_failure::<R>(at, e);
        self.error(
            ErrorKind::Serialization,
            k,
            format!("the result could not be deserialized: {why}"),
        )
    }

    fn check_end(&self, reader: &Reader<'_>) -> Result<()> {
        if reader.is_empty() {
            return Ok(());
        }
        Err(self.error(
            ErrorKind::Protocol,
            0,
            "the worker sent more result bytes than results".to_owned(),
        ))
    }

    fn failure_error(&self, f: Failure) -> Error {
        let kind = match f.kind {
            FailureKind::Panicked => ErrorKind::Panicked,
            FailureKind::Serialization => ErrorKind::Serialization,
        };
        self.error(kind, f.index as usize, f.message)
    }

    /// The error for a chunk in which some item failed: the first failed item.
    pub(crate) fn first_failure(&self, failures: &[u8], count: u32, expected: u32) -> Error {
        let failures = match decode_failures(failures) {
            Ok(f) => f,
            Err(e) => return self.error(ErrorKind::Protocol, 0, e),
        };
        match failures.into_iter().min_by_key(|f| f.index) {
            Some(f) => self.failure_error(f),
            None => self.missing(count, expected),
        }
    }

    fn missing(&self, count: u32, expected: u32) -> Error {
        self.error(
            ErrorKind::Protocol,
            count as usize,
            format!("the worker ran {count} of {expected} items and reported no failure"),
        )
    }

    /// One `Result` per item of the chunk, failures in place (for `imap` and `apply`).
    /// Items the worker never reached get the error of the item that stopped it.
    pub(crate) fn decode_items<R: DeserializeOwned>(
        &self,
        codec: Codec<R>,
        values: &[u8],
        failures: &[u8],
        count: u32,
        expected: u32,
        out: &mut Vec<Result<R>>,
    ) {
        let failures = match decode_failures(failures) {
            Ok(f) => f,
            Err(e) => {
                let e = self.error(ErrorKind::Protocol, 0, e);
                return fill_with(out, &e, expected as usize);
            }
        };
        let mut failures = failures.into_iter().peekable();
        let mut reader = Reader::new(values);
        let mut last_error = None;
        for k in 0..count {
            if failures.peek().is_some_and(|f| f.index == k) {
                if let Some(f) = failures.next() {
                    let e = self.failure_error(f);
                    last_error = Some(e.duplicate());
                    out.push(Err(e));
                }
                continue;
            }
            match reader.take(&codec) {
                Ok(v) => out.push(Ok(v)),
                Err(e) => {
                    // The values after a bad one cannot be located: fail the rest.
                    let e = self.result_error::<R>(k as usize, reader.rest(), &e);
                    return fill_with(out, &e, (expected - k) as usize);
                }
            }
        }
        if count < expected {
            let e = last_error.unwrap_or_else(|| self.missing(count, expected));
            fill_with(out, &e, (expected - count) as usize);
        }
    }
}

fn fill_with<R>(out: &mut Vec<Result<R>>, e: &Error, n: usize) {
    out.extend((0..n).map(|_| Err(e.duplicate())));
}

/// Splits a reply into one `Result` per item.
pub(crate) fn reply_items<R: DeserializeOwned>(
    task: &'static str,
    codec: Codec<R>,
    reply: Reply,
) -> (usize, Vec<Result<R>>) {
    match reply {
        Reply::Done {
            first_index,
            pid,
            expected,
            count,
            body,
            values_len,
            ..
        } => {
            let origin = ChunkOrigin {
                task,
                first_index,
                pid,
            };
            let mut out = Vec::with_capacity(expected as usize);
            let (values, failures) = body.bytes().split_at(values_len);
            origin.decode_items(codec, values, failures, count, expected, &mut out);
            (first_index, out)
        }
        Reply::Failed {
            first_index,
            count,
            error,
        } => {
            let mut out = Vec::with_capacity(count as usize);
            for k in 0..count as usize {
                let e = error.duplicate();
                out.push(Err(if count > 1 {
                    e.with_index(first_index + k)
                } else {
                    e
                }));
            }
            (first_index, out)
        }
    }
}

/// Chooses chunk sizes: a small probe first, then chunks that take about
/// `TARGET_CHUNK_NANOS` of worker time at the measured time per item, never more than
/// a quarter of each worker's share (so work stays balanced), never less than one item.
pub(crate) struct ChunkSizer {
    fixed: Option<usize>,
    cap: usize,
    nanos_per_item: Option<f64>,
}

/// Long enough that per-chunk costs (a wake-up on each side, ~60 µs here) stay a few
/// percent; short enough that a worker finishing early finds work left.
const TARGET_CHUNK_NANOS: f64 = 2_000_000.0;
/// Items in the first chunks, sent before anything has been measured.
const PROBE_ITEMS: usize = 16;
/// The cap for lazy maps (`imap`): memory in flight is a few chunks of this size,
/// whatever the input's length.
const LAZY_CAP: usize = 16_384;

impl ChunkSizer {
    /// `len` is the input length if known; `lazy` caps chunks for streaming maps;
    /// `fixed` is a chunk size the user chose.
    pub(crate) fn new(
        len: Option<usize>,
        workers: usize,
        lazy: bool,
        fixed: Option<usize>,
    ) -> Self {
        let share = len.map_or(usize::MAX, |len| len.div_ceil(workers.max(1) * 4));
        let cap = if lazy { share.min(LAZY_CAP) } else { share };
        ChunkSizer {
            fixed: fixed.map(|n| n.clamp(1, u32::MAX as usize)),
            cap: cap.clamp(1, u32::MAX as usize),
            nanos_per_item: None,
        }
    }

    pub(crate) fn next_size(&self) -> usize {
        if let Some(n) = self.fixed {
            return n;
        }
        match self.nanos_per_item {
            None => PROBE_ITEMS.min(self.cap),
            Some(t) => ((TARGET_CHUNK_NANOS / t.max(0.1)) as usize).clamp(1, self.cap),
        }
    }

    pub(crate) fn observe(&mut self, nanos: u64, count: u32) {
        if count == 0 {
            return;
        }
        let t = nanos as f64 / f64::from(count);
        self.nanos_per_item = Some(match self.nanos_per_item {
            None => t,
            Some(prev) => 0.7 * prev + 0.3 * t,
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunks_start_small_then_follow_the_measured_cost() {
        let mut s = ChunkSizer::new(Some(1_000_000), 2, false, None);
        assert_eq!(s.next_size(), PROBE_ITEMS);
        s.observe(16 * 5, 16); // 5 ns per item: capped at a quarter of each share
        assert_eq!(s.next_size(), 125_000);
        let mut slow = ChunkSizer::new(Some(1_000_000), 2, false, None);
        slow.observe(10_000_000, 1); // 10 ms per item: one at a time
        assert_eq!(slow.next_size(), 1);
    }

    #[test]
    fn small_inputs_unknown_lengths_and_fixed_sizes() {
        assert_eq!(ChunkSizer::new(Some(3), 2, false, None).next_size(), 1);
        assert_eq!(ChunkSizer::new(Some(24), 2, false, None).next_size(), 3);
        assert_eq!(
            ChunkSizer::new(Some(1000), 2, false, Some(64)).next_size(),
            64
        );
        assert_eq!(
            ChunkSizer::new(Some(1000), 2, false, Some(0)).next_size(),
            1
        );
        for len in [None, Some(10_000_000)] {
            let mut lazy = ChunkSizer::new(len, 2, true, None);
            lazy.observe(1, 1);
            assert_eq!(lazy.next_size(), LAZY_CAP);
        }
    }

    #[test]
    fn items_are_decoded_with_failures_in_place() {
        let origin = ChunkOrigin {
            task: "t",
            first_index: 10,
            pid: 1,
        };
        let mut values = Vec::new();
        crate::codec::encode_into(&mut values, &1u32).unwrap();
        crate::codec::encode_into(&mut values, &3u32).unwrap();
        let mut failures = Vec::new();
        let f = Failure {
            index: 1,
            kind: FailureKind::Panicked,
            message: "boom".into(),
        };
        crate::codec::encode_into(&mut failures, &f).unwrap();
        let mut out: Vec<Result<u32>> = Vec::new();
        origin.decode_items(Codec::POSTCARD, &values, &failures, 3, 3, &mut out);
        assert_eq!(out.len(), 3);
        assert_eq!(*out[0].as_ref().unwrap(), 1);
        let e = out[1].as_ref().unwrap_err();
        assert_eq!((e.kind(), e.task_index()), (ErrorKind::Panicked, Some(11)));
        assert_eq!(*out[2].as_ref().unwrap(), 3);
    }
}
