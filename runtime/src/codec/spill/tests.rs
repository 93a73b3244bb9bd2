//! Spilling: the segment holds exactly the body the frame would have held, and only
//! the frame being encoded spills.

use super::*;
use crate::codec::{HUGE_COPY, encode_into};

type Value = (u32, Vec<String>, serde_bytes::ByteBuf, String);

/// A value with a large copy between small ones.
fn value(seed: u8) -> Value {
    let big: Vec<u8> = (0..HUGE_COPY + 12_345)
        .map(|i| (i as u8).wrapping_add(seed))
        .collect();
    (
        7,
        vec!["a".into(), "bc".into()],
        serde_bytes::ByteBuf::from(big),
        "after".into(),
    )
}

const HEADER: &[u8] = b"header";

fn encode_all(frame: &mut Vec<u8>, values: &[Value]) {
    for v in values {
        encode_into(frame, v).expect("encode");
    }
}

fn expected(values: &[Value]) -> Vec<u8> {
    let mut body = Vec::new();
    encode_all(&mut body, values);
    body
}

#[test]
fn the_segment_holds_the_body_the_frame_would_have_held() {
    let values = [value(0), value(1)];
    let mut frame = HEADER.to_vec();
    let ((), spilled) = spilling(&mut frame, HEADER.len(), Some(HUGE_COPY), |f| {
        encode_all(f, &values)
    });
    let segment = spilled.expect("spilled").expect("a segment");
    assert_eq!(frame, HEADER, "the frame keeps its header only");
    assert_eq!(segment.bytes(), expected(&values));
}

#[test]
fn small_copies_and_no_threshold_leave_the_frame_alone() {
    let values = [value(2)];
    for at_least in [None, Some(HUGE_COPY * 4)] {
        let mut frame = HEADER.to_vec();
        let ((), spilled) = spilling(&mut frame, HEADER.len(), at_least, |f| {
            encode_all(f, &values)
        });
        assert!(spilled.expect("no failure").is_none());
        assert_eq!(frame, [HEADER, &expected(&values)].concat());
    }
}

#[test]
fn only_the_frame_being_encoded_spills_and_an_inner_call_has_its_own() {
    let values = [value(3)];
    let mut frame = HEADER.to_vec();
    let mut other = Vec::new();
    let mut inner = None;
    let ((), spilled) = spilling(&mut frame, HEADER.len(), Some(HUGE_COPY), |f| {
        // Another buffer written meanwhile (a `Serialize` impl encoding something of
        // its own) keeps its bytes.
        encode_all(&mut other, &values);
        // A nested call spills into its own segment, and puts the outer state back.
        let mut nested = Vec::new();
        inner = Some(spilling(&mut nested, 0, Some(HUGE_COPY), |n| encode_all(n, &values)).1);
        assert!(nested.is_empty());
        encode_all(f, &values);
    });
    assert_eq!(other, expected(&values));
    let inner = inner.expect("ran").expect("no failure").expect("a segment");
    assert_eq!(inner.bytes(), expected(&values));
    let outer = spilled.expect("no failure").expect("a segment");
    assert_eq!(outer.bytes(), expected(&values));
    assert!(SPILL.with(|s| s.borrow().is_none()));
}

#[test]
fn a_panic_while_encoding_leaves_no_state_behind() {
    let values = [value(4)];
    let caught = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        let mut frame = HEADER.to_vec();
        spilling(&mut frame, HEADER.len(), Some(HUGE_COPY), |f| {
            encode_all(f, &values);
            panic!("a Serialize impl panicked");
        })
    }));
    assert!(caught.is_err());
    assert!(SPILL.with(|s| s.borrow().is_none()));
    // The next encoding on this thread copies into its buffer as ever.
    let mut plain = Vec::new();
    encode_all(&mut plain, &values);
    assert_eq!(plain, expected(&values));
}
