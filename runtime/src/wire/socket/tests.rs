//! The socket link keeps the contract of `Link`: frames in order, segments with the
//! frames that list them, descriptors of its own.

use std::os::unix::net::UnixStream;

use super::*;
use crate::sys::segment::ShmBackend;
use crate::wire::frame::{self, Frame};

fn pair() -> (SocketLink, SocketLink) {
    let (a, b) = UnixStream::pair().expect("a socketpair");
    (
        SocketLink::new(a).expect("a link"),
        SocketLink::new(b).expect("a link"),
    )
}

/// A `Run` frame of chunk `chunk` whose trailer lists `segments`.
fn run_frame(chunk: u64, segments: &[&Segment]) -> Vec<u8> {
    let mut buf = Vec::new();
    frame::begin_run(&mut buf, chunk, 1, "t");
    buf.push(0);
    let descs: Vec<_> = segments.iter().map(|s| s.desc().clone()).collect();
    frame::finish_with(&mut buf, 0, &descs, false).expect("a frame");
    buf
}

/// Receives the next frame on `link` and opens the segments it lists.
fn receive(link: &mut SocketLink) -> (u64, Vec<Vec<u8>>) {
    let mut buf = Vec::new();
    assert!(link.recv(&mut buf).expect("a frame"));
    let Ok(Frame::Run { chunk, trailer, .. }) = frame::parse(&buf) else {
        panic!("not a Run frame");
    };
    let opened = link.segments(&trailer).expect("its segments");
    (
        chunk,
        opened.attached.iter().map(|s| s.bytes().to_vec()).collect(),
    )
}

#[test]
fn staged_frames_keep_their_segments_even_once_the_senders_are_gone() {
    let (mut parent, mut worker) = pair();
    for chunk in 1..=3u64 {
        let seg = Segment::create(ShmBackend::Memfd, &[chunk as u8; 100]).expect("a segment");
        let frame = run_frame(chunk, &[&seg]);
        parent.outbox().extend_from_slice(&frame);
        parent.attach(&[&seg]).expect("attached");
        // The segment (and its descriptor) goes away before anything is sent: the
        // link's own duplicate travels.
        drop(seg);
    }
    assert!(parent.pending());
    parent.push().expect("sent");
    assert!(!parent.pending());
    for chunk in 1..=3u64 {
        assert_eq!(receive(&mut worker), (chunk, vec![vec![chunk as u8; 100]]));
    }
}

#[test]
fn wait_says_what_is_ready_and_when_the_peer_is_gone() {
    let (mut parent, mut worker) = pair();
    let quick = Some(Duration::from_millis(10));
    assert_eq!(worker.wait(None, quick).expect("a wait"), Ready::NOTHING);
    parent.send(&run_frame(9, &[]), &[]).expect("sent");
    assert!(worker.wait(None, quick).expect("a wait").readable);
    assert_eq!(receive(&mut worker), (9, vec![]));
    drop(parent);
    // The end of the stream reads as readable, and then as the end.
    assert!(worker.wait(None, quick).expect("a wait").readable);
    assert!(!worker.recv(&mut Vec::new()).expect("the end"));
    assert!(worker.intact());
}
