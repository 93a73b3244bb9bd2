//! Property tests of the decoder: whatever bytes arrive, parsing and reading frames
//! returns a value or an error, never panics, and never allocates for bytes that did not
//! arrive. `PROPTEST_CASES` sets how many inputs each property tries (CI runs more).
use proptest::prelude::*;

use super::*;

proptest! {
    #[test]
    fn parse_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
        let _ = parse(&bytes);
    }

    #[test]
    fn parse_never_panics_on_frames_with_a_valid_tag(
        tag in 1u8..=6,
        rest in proptest::collection::vec(any::<u8>(), 0..256),
    ) {
        let mut bytes = vec![tag];
        bytes.extend(rest);
        let _ = parse(&bytes);
    }

    #[test]
    fn read_frame_allocates_only_what_arrives(
        claimed in any::<u32>(),
        data in proptest::collection::vec(any::<u8>(), 0..4096),
    ) {
        let mut stream = claimed.to_le_bytes().to_vec();
        stream.extend_from_slice(&data);
        let mut reader: &[u8] = &stream;
        let mut buf = Vec::new();
        match read_frame(&mut reader, &mut buf) {
            Ok(true) => prop_assert_eq!(buf.len(), claimed as usize),
            Ok(false) => prop_assert!(false, "a length prefix was present"),
            Err(_) => prop_assert!((claimed as usize) > data.len() || claimed as usize > MAX_FRAME),
        }
        // Never more than what arrived, or the 1 MiB read-ahead.
        prop_assert!(buf.capacity() <= data.len().max(1 << 20) * 2);
    }

    #[test]
    fn run_frames_round_trip(
        chunk in any::<u64>(),
        count in any::<u32>(),
        task in "[a-z_:]{1,40}",
        body in proptest::collection::vec(any::<u8>(), 0..256),
        ids in proptest::collection::vec(any::<u64>(), 0..4),
    ) {
        let segments: Vec<SegmentDesc> = ids
            .iter()
            .map(|&id| SegmentDesc { id, len: id % 1000, name: None, writable: id % 2 == 0 })
            .collect();
        let mut buf = Vec::new();
        begin_run(&mut buf, chunk, count, &task);
        buf.extend_from_slice(&body);
        finish_with(&mut buf, 0, &segments, false).unwrap();
        let Ok(Frame::Run { chunk: c, count: n, task: t, trailer }) = parse(&buf[4..]) else {
            return Err(TestCaseError::fail("not a run frame"));
        };
        prop_assert_eq!((c, n, t), (chunk, count, task.as_str()));
        prop_assert_eq!(trailer.body, &body[..]);
        prop_assert_eq!(trailer.segments, segments);
    }

    #[test]
    fn replayed_and_mixed_up_frames_are_rejected_or_parsed_whole(
        frames in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..64), 1..8),
    ) {
        // Concatenated garbage frames, each with a correct length prefix: the reader
        // splits them exactly, and each parses or fails on its own.
        let mut stream = Vec::new();
        for f in &frames {
            stream.extend_from_slice(&(f.len() as u32).to_le_bytes());
            stream.extend_from_slice(f);
        }
        let mut reader: &[u8] = &stream;
        let mut buf = Vec::new();
        for f in &frames {
            prop_assert!(read_frame(&mut reader, &mut buf).unwrap());
            prop_assert_eq!(&buf, f);
            let _ = parse(&buf);
        }
        prop_assert!(!read_frame(&mut reader, &mut buf).unwrap());
    }
}
