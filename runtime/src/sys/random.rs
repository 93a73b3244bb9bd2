//! Randomness from the kernel.

use crate::error::{Error, ErrorKind, Result};

/// 64 random bits from the kernel (`getrandom(2)`, waiting until its pool is ready).
/// There is no fallback: a worker's token is what makes a process a worker, so a
/// guessable one is worse than none. `what` names the use, for the error.
pub(crate) fn random_u64(what: &str) -> Result<u64> {
    let mut bytes = [0u8; 8];
    let mut filled = 0;
    while filled < bytes.len() {
        match rustix::rand::getrandom(&mut bytes[filled..], rustix::rand::GetRandomFlags::empty()) {
            Ok(n) => filled += n,
            Err(rustix::io::Errno::INTR) => {}
            Err(e) => {
                return Err(Error::io(
                    ErrorKind::Io,
                    format_args!("the operating system gave no randomness for {what}"),
                    e.into(),
                ));
            }
        }
    }
    Ok(u64::from_le_bytes(bytes))
}
