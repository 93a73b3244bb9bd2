//! Large values written straight into shared memory while a chunk is encoded.
//!
//! A chunk whose body is above the pool's shared-memory threshold reaches its worker
//! through a one-shot segment. Encoded into its frame first, a 200 MB value was copied
//! twice in the parent: into the frame (fresh memory, every page faulted in and zeroed),
//! then from the frame into the segment. Inside [`spilling`], every copy of at least
//! the given size into that chunk's frame goes into a segment instead, with what the
//! frame's body held before it, so the body ends up whole in the segment and each of its
//! bytes is copied once.
//!
//! The state lives in a thread-local because the copies arrive through serde (postcard's
//! flavor and the raw layouts only see a `&mut Vec<u8>`). It names the frame by the
//! address of its `Vec`, which cannot move while [`spilling`] holds it borrowed: a copy
//! into any other buffer (a `Serialize` impl that encodes something of its own) is left
//! alone.

use std::cell::RefCell;

use crate::error::{Error, ErrorKind, Result};
use crate::sys::segment::{Growing, Segment};

/// Where this thread's large copies go while a chunk is encoded.
struct Spill {
    /// The address of the frame's `Vec`.
    frame: usize,
    /// Where the body starts in the frame.
    body_at: usize,
    /// The smallest copy that goes to the segment.
    at_least: usize,
    /// The segment, once the first copy went there.
    body: Option<Growing>,
    /// The first failure; the chunk fails with it.
    failed: Option<Error>,
}

thread_local! {
    static SPILL: RefCell<Option<Spill>> = const { RefCell::new(None) };
}

/// Puts the state of an enclosing [`spilling`] back, also when encoding panics.
struct Restore(Option<Spill>);

impl Drop for Restore {
    fn drop(&mut self) {
        let outer = self.0.take();
        let _ = SPILL.try_with(|s| *s.borrow_mut() = outer);
    }
}

/// Runs `encode` over `frame`, whose body starts at `body_at`; with `at_least` given,
/// every copy of at least that many bytes into `frame` moves its body into a segment.
/// Returns what `encode` returned and the segment holding the whole body, if any copy
/// went there (the frame then ends at `body_at`). A failed write into the segment is the
/// error; the frame is then incomplete and must not be sent.
pub(crate) fn spilling<R>(
    frame: &mut Vec<u8>,
    body_at: usize,
    at_least: Option<usize>,
    encode: impl FnOnce(&mut Vec<u8>) -> R,
) -> (R, Result<Option<Segment>>) {
    let Some(at_least) = at_least else {
        return (encode(frame), Ok(None));
    };
    let mine = Spill {
        frame: address(frame),
        body_at,
        at_least,
        body: None,
        failed: None,
    };
    let outer = Restore(SPILL.with(|s| s.borrow_mut().replace(mine)));
    let value = encode(frame);
    let mine = SPILL.with(|s| s.borrow_mut().take());
    drop(outer);
    let Some(mine) = mine else {
        return (value, Ok(None));
    };
    if let Some(e) = mine.failed {
        return (value, Err(e));
    }
    let Some(mut body) = mine.body else {
        return (value, Ok(None));
    };
    let sealed = body
        .append(&frame[body_at..])
        .and_then(|()| body.seal())
        .map(Some);
    frame.truncate(body_at);
    (value, sealed)
}

/// Takes `data`, on its way into `frame`, into the segment of the enclosing
/// [`spilling`] if it is large enough and `frame` is that call's frame. `false` if the
/// caller must copy it into `frame` itself.
pub(super) fn take(frame: &mut Vec<u8>, data: &[u8]) -> bool {
    SPILL
        .try_with(|s| {
            let mut s = s.borrow_mut();
            let Some(spill) = s.as_mut() else {
                return false;
            };
            if spill.frame != address(frame)
                || data.len() < spill.at_least
                || spill.failed.is_some()
                || frame.len() < spill.body_at
            {
                return false;
            }
            match spill.write(frame, data) {
                Ok(()) => true,
                Err(e) => {
                    spill.failed = Some(e);
                    false
                }
            }
        })
        .unwrap_or(false)
}

impl Spill {
    /// Moves the body so far out of `frame`, then `data` after it.
    fn write(&mut self, frame: &mut Vec<u8>, data: &[u8]) -> Result<()> {
        let body = match &mut self.body {
            Some(body) => body,
            None => self.body.insert(Growing::new().map_err(into_segment)?),
        };
        body.append(&frame[self.body_at..]).map_err(into_segment)?;
        frame.truncate(self.body_at);
        body.append(data).map_err(into_segment)?;
        // The frame's room is no longer needed for the body: give it back rather than
        // keep a large allocation alive for a frame that will hold a header.
        if frame.capacity() > self.body_at + (1 << 20) {
            frame.shrink_to(self.body_at + 4096);
        }
        debug_assert!(body.len() > 0);
        Ok(())
    }
}

fn into_segment(e: Error) -> Error {
    Error::new(
        ErrorKind::Io,
        format!("writing a chunk's body into shared memory: {e}"),
    )
}

fn address(frame: &Vec<u8>) -> usize {
    std::ptr::from_ref(frame) as usize
}

#[cfg(test)]
mod tests;
