//! How a parent and a worker talk: length-prefixed frames (`frame`), the handshake that
//! starts a connection (`hello`), frame bodies and the segments they carry (`body`),
//! and the transport under them (`link`, the seam; `socket`, its first implementation).
//!
//! Everything above this layer (the pool's drivers, a worker's serving loop, `Process`)
//! moves frames through a [`Link`] only; see `link` for what a second transport must
//! provide.

mod body;
pub(crate) mod frame;
pub(crate) mod hello;
mod link;
mod socket;

pub(crate) use body::{
    Answer, Body, DEFAULT_SHM_THRESHOLD, Expect, ShmConfig, append_frame, append_frame_of_segment,
    read_answer, seal_frame, spare_buffer,
};
pub(crate) use link::{Link, Ready};
pub(crate) use socket::SocketLink;
