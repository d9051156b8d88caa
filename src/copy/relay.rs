//! One read from a socket and its write to the other: through the worker's
//! buffer, or for bulk transfers through a pipe with `splice(2)`.

use super::{pass_fin, Activity, Tally, Way, BUFFER_SIZE};
use crate::access_log::End;
use std::io;
use tokio::net::TcpStream;

thread_local! {
    /// The copy buffer of this worker thread. A read and the write that follows it
    /// run without an await in between, so one buffer per thread serves every
    /// connection: only bytes the destination cannot take at once are copied into a
    /// buffer of the connection's own, until they are written. Idle connections, and
    /// busy ones whose peers keep up, hold none. Zeroed once per thread, so a read
    /// fills initialised bytes (no `unsafe`, no cost per read).
    pub(super) static SCRATCH: std::cell::RefCell<Vec<u8>> = std::cell::RefCell::new(vec![0; BUFFER_SIZE]);
}

pub(super) enum Relay {
    Eof,
    /// Spurious readiness.
    Nothing,
    /// `n` bytes read; `rest` is what the destination could not take yet;
    /// `drained` when the source very likely has no more.
    Moved {
        n: usize,
        drained: bool,
        rest: Option<Vec<u8>>,
    },
    /// Reading the source failed (`reading`), or writing the destination.
    Failed {
        reading: bool,
    },
}

/// One read from `from` and as much of it written to `to` as it takes now.
pub(super) fn relay(from: &TcpStream, to: &TcpStream, scratch: &mut [u8]) -> Relay {
    use std::io::Read as _;
    let socket = socket2::SockRef::from(from);
    let max = scratch.len();
    let (n, drained) = match read_burst(from, max, || (&*socket).read(scratch)) {
        Read::Eof => return Relay::Eof,
        Read::Nothing => return Relay::Nothing,
        Read::Failed => return Relay::Failed { reading: true },
        Read::Data { n, drained } => (n, drained),
    };
    let mut written = 0;
    while written < n {
        match to.try_write(&scratch[written..n]) {
            Ok(0) => return Relay::Failed { reading: false },
            Ok(m) => written += m,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
            Err(_) => return Relay::Failed { reading: false },
        }
    }
    let rest = (written < n).then(|| scratch[written..n].to_vec());
    Relay::Moved { n, drained, rest }
}

/// The rest of a bulk direction, through a pipe with `splice(2)`.
#[cfg(target_os = "linux")]
pub(super) async fn splice_pump(
    from: &TcpStream,
    to: &TcpStream,
    way: Way,
    pipe: &crate::splice::Pipe,
    activity: &Activity,
    tally: &mut Tally<'_>,
) -> Result<(), End> {
    use crate::splice::CHUNK;
    loop {
        std::future::poll_fn(|cx| from.poll_read_ready(cx))
            .await
            .map_err(|_| way.failed(true))?;
        match read_burst(from, CHUNK, || pipe.fill_from(from)) {
            Read::Eof => {
                return pass_fin(to, way, activity);
            }
            Read::Data { n, .. } => {
                activity.touch();
                // All of it, so the pipe is empty for the next fill.
                write_all(to, n, |left| {
                    to.try_io(tokio::io::Interest::WRITABLE, || pipe.drain_into(to, left))
                })
                .await
                .map_err(|_| way.failed(false))?;
                activity.touch();
                tally.add(n);
            }
            Read::Nothing => {}
            Read::Failed => return Err(way.failed(true)),
        }
    }
}

/// What one read from a socket gave.
enum Read {
    Eof,
    /// `n` bytes were read; `drained` when the socket very likely has no more.
    Data {
        n: usize,
        drained: bool,
    },
    /// Spurious readiness.
    Nothing,
    Failed,
}

/// One read from `from` by `read` (`recv` into a buffer, `splice` into a pipe),
/// which asks for `max` bytes. A read shorter than that means the socket is very
/// likely drained: it is reported to tokio as `WouldBlock` (the bytes kept) so the
/// readiness is cleared and the next read waits for the next edge instead of
/// costing a syscall that returns `EAGAIN`. A FIN already seen stays flagged by
/// tokio (closed readiness is never cleared), so no EOF is missed.
fn read_burst(from: &TcpStream, max: usize, mut read: impl FnMut() -> io::Result<usize>) -> Read {
    let mut got = 0;
    let result = from.try_io(tokio::io::Interest::READABLE, || {
        let n = read()?;
        got = n;
        if n > 0 && n < max {
            return Err(io::ErrorKind::WouldBlock.into());
        }
        Ok(n)
    });
    match result {
        Ok(0) => Read::Eof,
        Ok(n) => Read::Data { n, drained: false },
        Err(e) if e.kind() == io::ErrorKind::WouldBlock && got > 0 => Read::Data {
            n: got,
            drained: true,
        },
        Err(e) if e.kind() == io::ErrorKind::WouldBlock => Read::Nothing,
        Err(_) => Read::Failed,
    }
}

/// Writes `len` bytes to `to` with `try_write` (`send` from a buffer, `splice` from
/// a pipe), given how many are left each time; waits for `to` only when that
/// returns `WouldBlock`, its buffer full.
pub(super) async fn write_all(
    to: &TcpStream,
    mut len: usize,
    mut try_write: impl FnMut(usize) -> io::Result<usize>,
) -> io::Result<()> {
    while len > 0 {
        match try_write(len) {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(n) => len -= n.min(len),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                std::future::poll_fn(|cx| to.poll_write_ready(cx)).await?;
            }
            Err(e) => return Err(e),
        }
    }
    Ok(())
}
