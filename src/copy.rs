//! Moving bytes both ways between a client and its backend: half-close passed on,
//! the idle timeout (`established_timeout`), batched byte counts, and on Linux
//! zero-copy `splice(2)` for bulk transfers.

use crate::metrics::Total;
use crate::state::{BackendState, ListenerState};
use std::io;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use tokio::net::TcpStream;
use tokio::time::{sleep_until, Instant};

/// The copy buffer (one per worker thread; see `SCRATCH`).
pub const BUFFER_SIZE: usize = 16 * 1024;
/// Bytes are added to the counters in batches of at least this much (and at close).
const BYTES_BATCH: u64 = 256 * 1024;

/// Why a proxied connection ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Close {
    /// Both sides finished (FIN both ways).
    Done,
    /// No byte either way for `established_timeout`.
    IdleTimeout,
    /// A read or write failed (a reset, usually).
    Error,
}

/// The time of the last byte moved, as milliseconds since the connection started:
/// one relaxed store per read, read back only when the idle timer fires, so no timer
/// is re-armed per read.
struct Activity {
    base: Instant,
    last_ms: AtomicU64,
    /// Set when the first direction has seen its FIN.
    one_way_done: AtomicBool,
}

impl Activity {
    fn touch(&self) {
        let ms = u64::try_from(self.base.elapsed().as_millis()).unwrap_or(u64::MAX);
        self.last_ms.store(ms, Ordering::Relaxed);
    }

    fn last(&self) -> Instant {
        self.base + std::time::Duration::from_millis(self.last_ms.load(Ordering::Relaxed))
    }
}

/// Sleeps until nothing has moved for `idle`.
async fn idle_timer(activity: &Activity, idle: std::time::Duration) {
    loop {
        let deadline = activity.last() + idle;
        if deadline <= Instant::now() {
            return;
        }
        sleep_until(deadline).await;
    }
}

/// Bytes moved one way, added to the listener's and the backend's counts in batches.
struct Tally<'a> {
    counter: &'a Total,
    backend: &'a AtomicU64,
    pending: u64,
}

impl Tally<'_> {
    fn add(&mut self, n: usize) {
        self.pending += n as u64;
        if self.pending >= BYTES_BATCH {
            self.flush();
        }
    }

    fn flush(&mut self) {
        if self.pending > 0 {
            self.counter.increment(self.pending);
            self.backend.fetch_add(self.pending, Ordering::Relaxed);
            self.pending = 0;
        }
    }
}

impl Drop for Tally<'_> {
    fn drop(&mut self) {
        self.flush();
    }
}

/// Copies both ways until both sides are done, a side fails, or nothing moves for
/// `idle`. Nothing else ends a connection: a drain leaves open ones to the process's
/// exit (README, "Drain and open connections").
pub async fn copy_both_ways(
    client: TcpStream,
    backend: TcpStream,
    idle: std::time::Duration,
    runtime: &ListenerState,
    state: &BackendState,
) -> Close {
    let activity = Activity {
        base: Instant::now(),
        last_ms: AtomicU64::new(0),
        one_way_done: AtomicBool::new(false),
    };
    let mut tally_in = Tally {
        counter: &runtime.metrics.bytes_in,
        backend: &state.metrics.bytes_in,
        pending: 0,
    };
    let mut tally_out = Tally {
        counter: &runtime.metrics.bytes_out,
        backend: &state.metrics.bytes_out,
        pending: 0,
    };
    let upstream = pump(&client, &backend, &activity, &mut tally_in);
    let downstream = pump(&backend, &client, &activity, &mut tally_out);
    tokio::select! {
        result = async { tokio::try_join!(upstream, downstream) } => match result {
            Ok(_) => Close::Done,
            Err(_) => Close::Error,
        },
        () = idle_timer(&activity, idle) => Close::IdleTimeout,
    }
}

/// A FIN came from the other side of `to`: pass it on (half-close). When the other
/// way is finished already, closing both sockets (next) sends the FIN: no shutdown.
fn pass_fin(to: &TcpStream, activity: &Activity) -> io::Result<()> {
    if activity.one_way_done.swap(true, Ordering::Relaxed) {
        return Ok(());
    }
    socket2::SockRef::from(to).shutdown(std::net::Shutdown::Write)
}

/// Full buffers in a row after which a direction counts as a bulk transfer and
/// moves to `splice(2)`.
const SPLICE_AFTER_FULL_READS: u32 = 4;

/// Copies one way until EOF, then passes the FIN on (half-close) and returns.
async fn pump(
    from: &TcpStream,
    to: &TcpStream,
    activity: &Activity,
    tally: &mut Tally<'_>,
) -> io::Result<()> {
    let mut full_reads = 0;
    loop {
        // Poll-based readiness: it uses the socket's own waker slot, where
        // `readable()` would keep a waiter node in every connection's future.
        std::future::poll_fn(|cx| from.poll_read_ready(cx)).await?;
        let (moved, rest) = match SCRATCH.with_borrow_mut(|scratch| relay(from, to, scratch)) {
            Relay::Eof => {
                return pass_fin(to, activity);
            }
            Relay::Nothing => continue,
            Relay::Moved { n, drained, rest } => {
                full_reads = if drained { 0 } else { full_reads + 1 };
                (n, rest)
            }
            Relay::Failed(e) => return Err(e),
        };
        activity.touch();
        if let Some(rest) = rest {
            write_all(to, rest.len(), |left| {
                to.try_write(&rest[rest.len() - left..])
            })
            .await?;
            activity.touch();
        }
        tally.add(moved);
        #[cfg(target_os = "linux")]
        if full_reads >= SPLICE_AFTER_FULL_READS && crate::splice::enabled() {
            if let Some(pipe) = crate::splice::Pipe::new() {
                // Boxed: only bulk directions pay for its state, not every connection.
                return Box::pin(splice_pump(from, to, &pipe, activity, tally)).await;
            }
            full_reads = 0; // out of descriptors: keep copying
        }
    }
}

thread_local! {
    /// The copy buffer of this worker thread. A read and the write that follows it
    /// run without an await in between, so one buffer per thread serves every
    /// connection: only bytes the destination cannot take at once are copied into a
    /// buffer of the connection's own, until they are written. Idle connections, and
    /// busy ones whose peers keep up, hold none. Zeroed once per thread, so a read
    /// fills initialised bytes (no `unsafe`, no cost per read).
    static SCRATCH: std::cell::RefCell<Vec<u8>> = std::cell::RefCell::new(vec![0; BUFFER_SIZE]);
}

enum Relay {
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
    Failed(io::Error),
}

/// One read from `from` and as much of it written to `to` as it takes now.
fn relay(from: &TcpStream, to: &TcpStream, scratch: &mut [u8]) -> Relay {
    use std::io::Read as _;
    let socket = socket2::SockRef::from(from);
    let max = scratch.len();
    let (n, drained) = match read_burst(from, max, || (&*socket).read(scratch)) {
        Read::Eof => return Relay::Eof,
        Read::Nothing => return Relay::Nothing,
        Read::Failed(e) => return Relay::Failed(e),
        Read::Data { n, drained } => (n, drained),
    };
    let mut written = 0;
    while written < n {
        match to.try_write(&scratch[written..n]) {
            Ok(0) => return Relay::Failed(io::ErrorKind::WriteZero.into()),
            Ok(m) => written += m,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
            Err(e) => return Relay::Failed(e),
        }
    }
    let rest = (written < n).then(|| scratch[written..n].to_vec());
    Relay::Moved { n, drained, rest }
}

/// The rest of a bulk direction, through a pipe with `splice(2)`.
#[cfg(target_os = "linux")]
async fn splice_pump(
    from: &TcpStream,
    to: &TcpStream,
    pipe: &crate::splice::Pipe,
    activity: &Activity,
    tally: &mut Tally<'_>,
) -> io::Result<()> {
    use crate::splice::CHUNK;
    loop {
        std::future::poll_fn(|cx| from.poll_read_ready(cx)).await?;
        match read_burst(from, CHUNK, || pipe.fill_from(from)) {
            Read::Eof => {
                return pass_fin(to, activity);
            }
            Read::Data { n, .. } => {
                activity.touch();
                // All of it, so the pipe is empty for the next fill.
                write_all(to, n, |left| {
                    to.try_io(tokio::io::Interest::WRITABLE, || pipe.drain_into(to, left))
                })
                .await?;
                activity.touch();
                tally.add(n);
            }
            Read::Nothing => {}
            Read::Failed(e) => return Err(e),
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
    Failed(io::Error),
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
        Err(e) => Read::Failed(e),
    }
}

/// Writes `len` bytes to `to` with `try_write` (`send` from a buffer, `splice` from
/// a pipe), given how many are left each time; waits for `to` only when that
/// returns `WouldBlock`, its buffer full.
async fn write_all(
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
