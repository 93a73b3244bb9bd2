//! Waiting on descriptors: the one `poll` helper every loop that waits goes through
//! (a driver on its worker's socket and pidfd, a worker's hang-up watch, the checks
//! with no wait at all).

use std::os::fd::BorrowedFd;
use std::time::Duration;

pub(crate) use rustix::event::PollFlags;

/// One descriptor to wait on, with what to wait for; after [`wait`], `revents()` says
/// what happened.
pub(crate) type Watch<'fd> = rustix::event::PollFd<'fd>;

/// Waits up to `timeout` (`None`: without a limit) until something in their events
/// happens on one of `watches`. Returns whether anything did; an interruption by a
/// signal is a return with nothing found, so that a caller that keeps time sees it.
pub(crate) fn wait(watches: &mut [Watch<'_>], timeout: Option<Duration>) -> std::io::Result<bool> {
    let ts = timeout.map(|t| rustix::event::Timespec {
        tv_sec: t.as_secs().min(i64::MAX as u64) as i64,
        tv_nsec: i64::from(t.subsec_nanos()),
    });
    match rustix::event::poll(watches, ts.as_ref()) {
        Ok(n) => Ok(n > 0),
        Err(rustix::io::Errno::INTR) => Ok(false),
        Err(e) => Err(e.into()),
    }
}

/// Whether `fd` has something to read, or its peer is gone (reading then reports the
/// end), waiting up to `timeout` for it.
pub(crate) fn readable_within(fd: BorrowedFd<'_>, timeout: Duration) -> std::io::Result<bool> {
    let mut w = [Watch::from_borrowed_fd(
        fd,
        PollFlags::IN | PollFlags::RDHUP,
    )];
    wait(&mut w, Some(timeout))
}

/// Waits until the peer of socket `fd` hangs up (data waiting to be read does not
/// count), retrying after interruptions and, briefly paused, after errors.
pub(crate) fn until_hung_up(fd: BorrowedFd<'_>) {
    while !hung_up_within(fd, None) {}
}

/// Whether the peer of the socket `fd` hangs up within `timeout` (`None`: no limit; a
/// spurious wake-up may still return false early).
pub(crate) fn hung_up_within(fd: BorrowedFd<'_>, timeout: Option<Duration>) -> bool {
    let gone = PollFlags::RDHUP | PollFlags::HUP | PollFlags::ERR | PollFlags::NVAL;
    let mut w = [Watch::from_borrowed_fd(fd, PollFlags::RDHUP)];
    match wait(&mut w, timeout) {
        Ok(true) => w[0].revents().intersects(gone),
        Ok(false) => false,
        // Out of resources for a moment: ask again shortly rather than spin.
        Err(_) => {
            std::thread::sleep(timeout.unwrap_or(Duration::from_millis(10)));
            false
        }
    }
}
