//! Unit tests of the frames.
use super::*;
use crate::task::{FailureKind, decode_failures};

fn payload(frame: &[u8]) -> &[u8] {
    let len = u32::from_le_bytes([frame[0], frame[1], frame[2], frame[3]]) as usize;
    assert_eq!(len, frame.len() - 4);
    &frame[4..]
}

#[test]
fn run_frame_round_trips() {
    let mut buf = Vec::new();
    begin_run(&mut buf, 9, 2, "app::t1");
    encode_into(&mut buf, &5u64).unwrap();
    encode_into(&mut buf, &300u64).unwrap();
    finish_with(&mut buf, 0, &[], false).unwrap();
    let Frame::Run {
        chunk,
        count,
        task,
        trailer,
    } = parse(payload(&buf)).unwrap()
    else {
        panic!("not a run frame")
    };
    assert_eq!((chunk, count, task), (9, 2, "app::t1"));
    assert!(trailer.segments.is_empty() && !trailer.out_of_line);
    let (a, rest) = postcard::take_from_bytes::<u64>(trailer.body).unwrap();
    let (b, rest) = postcard::take_from_bytes::<u64>(rest).unwrap();
    assert_eq!((a, b, rest.len()), (5, 300, 0));
}

#[test]
fn done_frame_round_trips() {
    let mut buf = vec![9, 9]; // another frame's tail before it
    let start = begin_done(&mut buf, 3);
    encode_into(&mut buf, &7u32).unwrap();
    let failure = Failure {
        index: 1,
        kind: FailureKind::Panicked,
        message: "boom".into(),
    };
    finish_done(&mut buf, start, 2, 1234, std::slice::from_ref(&failure)).unwrap();
    let segment = SegmentDesc {
        id: 42,
        len: 10,
        name: None,
        writable: false,
    };
    finish_with(&mut buf, start, std::slice::from_ref(&segment), false).unwrap();
    let buf = &buf[start..];
    let Frame::Done {
        chunk,
        count,
        nanos,
        values_len,
        trailer,
    } = parse(payload(buf)).unwrap()
    else {
        panic!("not a done frame")
    };
    assert_eq!((chunk, count, nanos), (3, 2, 1234));
    assert_eq!(trailer.segments, vec![segment]);
    let (values, failures) = trailer.body.split_at(values_len as usize);
    assert_eq!(postcard::from_bytes::<u32>(values).unwrap(), 7);
    assert_eq!(decode_failures(failures).unwrap(), vec![failure]);
}

#[test]
fn hello_round_trips_and_mismatch_is_explained() {
    let me = Hello::of_this_process();
    let mut buf = Vec::new();
    hello_frame(&mut buf, &me).unwrap();
    assert_eq!(parse(payload(&buf)).unwrap(), Frame::Hello(me.clone()));
    assert_eq!(me.mismatch(&me), None);
    let other = Hello {
        identity: me.identity ^ 1,
        ..me.clone()
    };
    assert!(me.mismatch(&other).unwrap().contains("not the same build"));
}

#[test]
fn garbage_is_rejected_with_a_reason() {
    assert!(parse(&[]).unwrap_err().0.contains("empty"));
    assert!(
        parse(&[99, 1, 2])
            .unwrap_err()
            .0
            .contains("unknown frame tag 99")
    );
    assert!(parse(&[TAG_RUN, 1, 2]).unwrap_err().0.contains("truncated"));
    let mut done = vec![TAG_DONE];
    done.extend_from_slice(&[0; 20]);
    done.extend_from_slice(&1000u32.to_le_bytes()); // claims 1000 bytes of values
    done.extend_from_slice(&[0, 1, 0, 0, 0, 0]); // an empty segment list
    assert!(parse(&done).unwrap_err().0.contains("values"));
    let mut flags = vec![TAG_RUN];
    flags.extend_from_slice(&[0; 14]);
    flags.extend_from_slice(&[0, 0, 0, 0, 0, 7]);
    assert!(parse(&flags).unwrap_err().0.contains("flags"));
    let mut wrong_magic = vec![TAG_HELLO];
    wrong_magic.extend_from_slice(b"NOTMAGIC");
    assert!(parse(&wrong_magic).unwrap_err().0.contains("magic"));
    let mut old = vec![TAG_HELLO];
    old.extend_from_slice(&MAGIC);
    old.extend_from_slice(&(PROTOCOL_VERSION + 1).to_le_bytes());
    assert!(parse(&old).unwrap_err().0.contains("protocol version"));
}

#[test]
fn oversized_length_is_rejected_without_allocating() {
    let mut stream: &[u8] = &[0xff, 0xff, 0xff, 0xff, 1, 2, 3];
    let mut buf = Vec::new();
    let err = read_frame(&mut stream, &mut buf).unwrap_err();
    assert_eq!(err.kind(), io::ErrorKind::InvalidData);
    assert_eq!(buf.capacity(), 0);
}

#[test]
fn truncated_streams_are_errors_and_clean_eof_is_not() {
    let mut buf = Vec::new();
    let mut empty: &[u8] = &[];
    assert!(!read_frame(&mut empty, &mut buf).unwrap());
    let mut half_len: &[u8] = &[5, 0];
    assert!(read_frame(&mut half_len, &mut buf).is_err());
    let mut short: &[u8] = &[5, 0, 0, 0, 1, 2];
    let err = read_frame(&mut short, &mut buf).unwrap_err();
    assert_eq!(err.kind(), io::ErrorKind::UnexpectedEof);
}

#[test]
fn a_setup_frame_carries_exactly_its_control_segment() {
    let control = SegmentDesc {
        id: 7,
        len: 64 << 10,
        name: None,
        writable: true,
    };
    let mut buf = Vec::new();
    setup_frame(&mut buf, &control).unwrap();
    match parse(payload(&buf)).unwrap() {
        Frame::Setup { trailer } => assert_eq!(trailer.segments, vec![control.clone()]),
        other => panic!("{other:?}"),
    }
    // No segment, or two: refused.
    for segments in [vec![], vec![control.clone(), control]] {
        let mut buf = Vec::new();
        begin(&mut buf, TAG_SETUP);
        finish_with(&mut buf, 0, &segments, false).unwrap();
        let e = parse(payload(&buf)).unwrap_err();
        assert!(e.0.contains("exactly one segment"), "{e}");
    }
}
