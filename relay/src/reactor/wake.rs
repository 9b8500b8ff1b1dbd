//! The wake-up of a shard's reactor: an eventfd (Linux) that other shards write after they
//! queued a batch for it ([`crate::xshard`]), and that the reactor waits on with its sockets
//! (registered with `mio`, or polled by an io_uring `POLL_ADD`).

#![allow(unsafe_code)]

use std::fs::File;
use std::io::{self, Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, RawFd};

use crate::xshard::Wake;

/// A non-blocking eventfd.
#[derive(Debug)]
pub struct EventFd {
    file: File,
}

impl EventFd {
    /// A fresh eventfd (counter 0, non-blocking, close-on-exec).
    pub fn new() -> io::Result<Self> {
        // SAFETY: eventfd takes no pointers; it returns a new descriptor or -1.
        let fd = unsafe { libc::eventfd(0, libc::EFD_NONBLOCK | libc::EFD_CLOEXEC) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: `fd` is a valid descriptor that nothing else owns; the File closes it.
        let file = unsafe { File::from_raw_fd(fd) };
        Ok(EventFd { file })
    }

    /// Resets the counter; whether it had been woken.
    pub fn drain(&self) -> bool {
        let mut b = [0u8; 8];
        matches!((&self.file).read(&mut b), Ok(8))
    }
}

impl AsRawFd for EventFd {
    fn as_raw_fd(&self) -> RawFd {
        self.file.as_raw_fd()
    }
}

impl Wake for EventFd {
    fn wake(&self) {
        // Only fails when the counter would overflow (it is readable then anyway).
        let _ = (&self.file).write(&1u64.to_ne_bytes());
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    #[test]
    fn wake_then_drain() {
        let e = EventFd::new().unwrap();
        assert!(!e.drain(), "fresh eventfd is not readable");
        e.wake();
        e.wake();
        assert!(e.drain());
        assert!(!e.drain(), "drain resets the counter");
    }
}
