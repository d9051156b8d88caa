//! Zero-copy forwarding on Linux: `splice(2)` from one socket into a pipe and from
//! the pipe into the other socket, so bulk bytes never cross into user space.
//!
//! A pipe is taken only for a direction that has shown itself to be a bulk transfer
//! (see [`crate::copy`]); request/response traffic keeps the plain copy, where the
//! pipe's set-up would cost more than the copy it saves.

use std::io;
use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd, RawFd};

/// Whether bulk transfers use splice: yes, unless `EDGELB_NO_SPLICE` is set in the
/// environment (to compare, or to work around a kernel that misbehaves).
pub fn enabled() -> bool {
    static ENABLED: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *ENABLED.get_or_init(|| std::env::var_os("EDGELB_NO_SPLICE").is_none())
}

/// Bytes asked for per splice into the pipe (the default pipe capacity).
pub const CHUNK: usize = 64 * 1024;

/// A pipe pair that holds bytes between the two splices; empty between bursts.
pub struct Pipe {
    read: OwnedFd,
    write: OwnedFd,
}

impl Pipe {
    /// A non-blocking pipe; `None` when the process is out of descriptors (the
    /// caller keeps copying).
    pub fn new() -> Option<Pipe> {
        let mut fds = [0 as RawFd; 2];
        // SAFETY: pipe2 writes two descriptors into the array we pass.
        let rc = unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_NONBLOCK | libc::O_CLOEXEC) };
        if rc != 0 {
            return None;
        }
        // SAFETY: both descriptors were just created and are owned by nobody else.
        let (read, write) = unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
        Some(Pipe { read, write })
    }

    /// One splice of what `from` has, up to [`CHUNK`], into the pipe (empty: the
    /// copy drains it before filling it again). The readiness around it is the
    /// copy's (`copy::read_burst`).
    pub fn fill_from(&self, from: &impl AsFd) -> io::Result<usize> {
        splice(from.as_fd().as_raw_fd(), self.write.as_raw_fd(), CHUNK)
    }

    /// One splice of up to `len` bytes of the pipe into `to` (its readiness is the
    /// copy's, `copy::write_all`).
    pub fn drain_into(&self, to: &impl AsFd, len: usize) -> io::Result<usize> {
        splice(self.read.as_raw_fd(), to.as_fd().as_raw_fd(), len)
    }
}

fn splice(from: RawFd, to: RawFd, len: usize) -> io::Result<usize> {
    let flags = libc::SPLICE_F_MOVE | libc::SPLICE_F_NONBLOCK;
    // SAFETY: plain descriptors and null offsets (sockets and pipes have none).
    let n = unsafe {
        libc::splice(
            from,
            std::ptr::null_mut(),
            to,
            std::ptr::null_mut(),
            len,
            flags,
        )
    };
    usize::try_from(n).map_err(|_| io::Error::last_os_error())
}
