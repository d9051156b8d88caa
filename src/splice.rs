//! Zero-copy forwarding on Linux: `splice(2)` from one socket into a pipe and from
//! the pipe into the other socket, so bulk bytes never cross into user space.
//!
//! A pipe is taken only for a direction that has shown itself to be a bulk transfer
//! (see [`crate::copy`]); request/response traffic keeps the plain copy, where the
//! pipe's set-up would cost more than the copy it saves.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use tokio::io::Interest;
use tokio::net::TcpStream;

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

/// What one splice into the pipe gave.
pub enum Filled {
    Eof,
    /// `n` bytes are in the pipe; `drained` when the socket very likely has no more.
    Bytes {
        n: usize,
        drained: bool,
    },
    /// Spurious readiness.
    Nothing,
}

/// Splices what `from` has (up to [`CHUNK`]) into the empty `pipe`. A short splice
/// clears tokio's readiness (as the copy path does), saving an `EAGAIN` round.
pub fn fill(from: &TcpStream, pipe: &Pipe) -> io::Result<Filled> {
    let mut got = 0;
    let result = from.try_io(Interest::READABLE, || {
        let n = splice(from.as_raw_fd(), pipe.write.as_raw_fd(), CHUNK)?;
        got = n;
        if n > 0 && n < CHUNK {
            return Err(io::ErrorKind::WouldBlock.into());
        }
        Ok(n)
    });
    match result {
        Ok(0) => Ok(Filled::Eof),
        Ok(n) => Ok(Filled::Bytes { n, drained: false }),
        Err(e) if e.kind() == io::ErrorKind::WouldBlock && got > 0 => Ok(Filled::Bytes {
            n: got,
            drained: true,
        }),
        Err(e) if e.kind() == io::ErrorKind::WouldBlock => Ok(Filled::Nothing),
        Err(e) => Err(e),
    }
}

/// Splices all `n` bytes of the pipe into `to`, waiting when its buffer is full.
pub async fn drain(pipe: &Pipe, to: &TcpStream, mut n: usize) -> io::Result<()> {
    while n > 0 {
        match to.try_io(Interest::WRITABLE, || {
            splice(pipe.read.as_raw_fd(), to.as_raw_fd(), n)
        }) {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(m) => n -= m.min(n),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                std::future::poll_fn(|cx| to.poll_write_ready(cx)).await?;
            }
            Err(e) => return Err(e),
        }
    }
    Ok(())
}
