//! Appending encodings: the same bytes as postcard, at every length.
use super::*;

#[test]
fn append_matches_postcard_for_every_short_length() {
    // Covers each branch of the small-copy path (0, 1–3, 4–7, 8–16 bytes) and the long one,
    // appended after other bytes so that unaligned destinations are exercised too.
    let mut buf = vec![0xAA];
    let mut expected = vec![0xAA];
    for len in 0..40usize {
        let value: String = (0..len as u8).map(|b| char::from(b'a' + b % 26)).collect();
        encode_into(&mut buf, &value).unwrap();
        expected.extend(postcard::to_stdvec(&value).unwrap());
        for x in [
            0u64,
            127,
            128,
            16_383,
            16_384,
            u64::from(u32::MAX),
            u64::MAX,
        ] {
            encode_into(&mut buf, &x).unwrap();
            expected.extend(postcard::to_stdvec(&x).unwrap());
        }
    }
    assert_eq!(buf, expected);
}

#[test]
fn append_matches_postcard_for_copies_that_get_huge_pages() {
    // Byte runs from just under to well over `HUGE_COPY`, after an odd number of bytes
    // (so the room asked for in huge pages starts unaligned), each one whole.
    let mut buf = vec![0x55; 3];
    let mut expected = buf.clone();
    struct Bytes(Vec<u8>);
    impl Serialize for Bytes {
        fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
            s.serialize_bytes(&self.0)
        }
    }
    for len in [HUGE_COPY - 1, HUGE_COPY, 3 * HUGE_COPY + 12_345] {
        let value = Bytes((0..len).map(|i| (i % 253) as u8).collect());
        encode_into(&mut buf, &value).unwrap();
        expected.extend(postcard::to_stdvec(&value).unwrap());
    }
    assert_eq!(buf.len(), expected.len());
    assert!(buf == expected);
}
