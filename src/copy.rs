//! Moving bytes both ways between a client and its backend: half-close passed on,
//! the idle timeout (`established_timeout`), the drain's cut, batched byte counts,
//! and on Linux zero-copy `splice(2)` for bulk transfers.

use crate::access_log::End;
use crate::metrics::Total;
use crate::state::{BackendState, ListenerState};
use std::future::Future;
use std::io;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicU8, Ordering};
use std::task::{Poll, Waker};
use tokio::net::TcpStream;
use tokio::time::{sleep_until, Instant};
use tokio_util::sync::CancellationToken;

/// The copy buffer (one per worker thread; see `SCRATCH`).
pub const BUFFER_SIZE: usize = 16 * 1024;
/// Bytes are added to the counters in batches of at least this much (and at close).
const BYTES_BATCH: u64 = 256 * 1024;

/// How a proxied connection ended, and the bytes it moved: exactly what the byte
/// counters got from it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Copied {
    /// `ClientClosed`, `BackendClosed`, `IdleTimeout`, `ClientError`,
    /// `BackendError` or `Drain`.
    pub end: End,
    pub bytes_in: u64,
    pub bytes_out: u64,
}

/// What cuts open connections at the drain deadline: one per worker thread.
#[derive(Default)]
pub struct Cut {
    /// Set before the token is cancelled: what a connection looks at when woken.
    cut: AtomicBool,
    token: CancellationToken,
}

impl Cut {
    /// Ends every connection waiting on [`Cut::cancelled`].
    pub fn cancel(&self) {
        self.cut.store(true, Ordering::Release);
        self.token.cancel();
    }

    /// Completes once [`Cut::cancel`] is called. A `select!` polls this each time
    /// any of its branches is woken (each time bytes move): the token, whose every
    /// look takes its lock, is polled only on the first poll (to register the
    /// task's waker) and when the waker changes; otherwise it is one atomic load.
    pub fn cancelled(&self) -> impl Future<Output = ()> + '_ {
        let wait = self.token.cancelled();
        async move {
            tokio::pin!(wait);
            let mut registered: Option<Waker> = None;
            std::future::poll_fn(|cx| {
                if self.cut.load(Ordering::Acquire) {
                    return Poll::Ready(());
                }
                if registered.as_ref().is_some_and(|w| w.will_wake(cx.waker())) {
                    return Poll::Pending;
                }
                let poll = wait.as_mut().poll(cx);
                if poll.is_pending() {
                    registered = Some(cx.waker().clone());
                }
                poll
            })
            .await;
        }
    }
}

/// One direction of a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Way {
    /// Client to backend.
    In,
    /// Backend to client.
    Out,
}

impl Way {
    /// A failure reading the source (`reading`) or writing the destination.
    fn failed(self, reading: bool) -> End {
        if (self == Way::In) == reading {
            End::ClientError
        } else {
            End::BackendError
        }
    }
}

/// The time of the last byte moved, as milliseconds since the connection started:
/// one relaxed store per read, read back only when the idle timer fires, so no timer
/// is re-armed per read.
struct Activity {
    base: Instant,
    last_ms: AtomicU64,
    /// Set when the first direction has seen its FIN.
    one_way_done: AtomicBool,
    /// Which side's FIN came first: 0 none yet, 1 the client's, 2 the backend's.
    first_fin: AtomicU8,
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
    /// Everything counted, for the access log.
    total: u64,
}

impl Tally<'_> {
    fn add(&mut self, n: usize) {
        self.pending += n as u64;
        self.total += n as u64;
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

/// Copies both ways until both sides are done, a side fails, nothing moves for
/// `idle`, or `cut` is cancelled (the drain deadline). `early_in` client bytes
/// already went to the backend with the PROXY header: they are counted here.
pub async fn copy_both_ways(
    client: TcpStream,
    backend: TcpStream,
    idle: std::time::Duration,
    runtime: &ListenerState,
    state: &BackendState,
    cut: &Cut,
    early_in: usize,
) -> Copied {
    let activity = Activity {
        base: Instant::now(),
        last_ms: AtomicU64::new(0),
        one_way_done: AtomicBool::new(false),
        first_fin: AtomicU8::new(0),
    };
    let mut tally_in = Tally {
        counter: &runtime.metrics.bytes_in,
        backend: &state.metrics.bytes_in,
        pending: 0,
        total: 0,
    };
    tally_in.add(early_in);
    let mut tally_out = Tally {
        counter: &runtime.metrics.bytes_out,
        backend: &state.metrics.bytes_out,
        pending: 0,
        total: 0,
    };
    let upstream = pump(&client, &backend, Way::In, &activity, &mut tally_in);
    let downstream = pump(&backend, &client, Way::Out, &activity, &mut tally_out);
    let end = tokio::select! {
        result = async { tokio::try_join!(upstream, downstream) } => match result {
            Ok(_) if activity.first_fin.load(Ordering::Relaxed) == 2 => End::BackendClosed,
            Ok(_) => End::ClientClosed,
            Err(end) => end,
        },
        () = idle_timer(&activity, idle) => End::IdleTimeout,
        () = cut.cancelled() => End::Drain,
    };
    Copied {
        end,
        bytes_in: tally_in.total,
        bytes_out: tally_out.total,
    }
}

/// A FIN came from the other side of `to`: pass it on (half-close). When the other
/// way is finished already, closing both sockets (next) sends the FIN: no shutdown.
fn pass_fin(to: &TcpStream, way: Way, activity: &Activity) -> Result<(), End> {
    if activity.one_way_done.swap(true, Ordering::Relaxed) {
        return Ok(());
    }
    let first = if way == Way::In { 1 } else { 2 };
    activity.first_fin.store(first, Ordering::Relaxed);
    socket2::SockRef::from(to)
        .shutdown(std::net::Shutdown::Write)
        .map_err(|_| way.failed(false))
}

/// Full buffers in a row after which a direction counts as a bulk transfer and
/// moves to `splice(2)`.
const SPLICE_AFTER_FULL_READS: u32 = 4;

/// Copies one way until EOF, then passes the FIN on (half-close) and returns.
/// Errors say which side failed (`way` tells the source from the destination).
async fn pump(
    from: &TcpStream,
    to: &TcpStream,
    way: Way,
    activity: &Activity,
    tally: &mut Tally<'_>,
) -> Result<(), End> {
    let mut full_reads = 0;
    loop {
        // Poll-based readiness: it uses the socket's own waker slot, where
        // `readable()` would keep a waiter node in every connection's future.
        std::future::poll_fn(|cx| from.poll_read_ready(cx))
            .await
            .map_err(|_| way.failed(true))?;
        let (moved, rest) = match SCRATCH.with_borrow_mut(|scratch| relay(from, to, scratch)) {
            Relay::Eof => {
                return pass_fin(to, way, activity);
            }
            Relay::Nothing => continue,
            Relay::Moved { n, drained, rest } => {
                full_reads = if drained { 0 } else { full_reads + 1 };
                (n, rest)
            }
            Relay::Failed { reading } => return Err(way.failed(reading)),
        };
        activity.touch();
        if let Some(rest) = rest {
            write_all(to, rest.len(), |left| {
                to.try_write(&rest[rest.len() - left..])
            })
            .await
            .map_err(|_| way.failed(false))?;
            activity.touch();
        }
        tally.add(moved);
        #[cfg(target_os = "linux")]
        if full_reads >= SPLICE_AFTER_FULL_READS && crate::splice::enabled() {
            if let Some(pipe) = crate::splice::Pipe::new() {
                // Boxed: only bulk directions pay for its state, not every connection.
                return Box::pin(splice_pump(from, to, way, &pipe, activity, tally)).await;
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
    /// Reading the source failed (`reading`), or writing the destination.
    Failed {
        reading: bool,
    },
}

/// One read from `from` and as much of it written to `to` as it takes now.
fn relay(from: &TcpStream, to: &TcpStream, scratch: &mut [u8]) -> Relay {
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
async fn splice_pump(
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

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_cut_ends_the_waits_already_registered_and_later_ones() {
        let cut = std::sync::Arc::new(Cut::default());
        let waiting = tokio::spawn({
            let cut = cut.clone();
            async move { cut.cancelled().await }
        });
        // Polled a few times (registered, then the cheap path), still waiting.
        for _ in 0..3 {
            tokio::task::yield_now().await;
        }
        assert!(!waiting.is_finished());
        cut.cancel();
        tokio::time::timeout(std::time::Duration::from_secs(5), waiting)
            .await
            .expect("the cut ends the wait")
            .unwrap();
        // After the cut, a new wait ends at once.
        tokio::time::timeout(std::time::Duration::from_secs(5), cut.cancelled())
            .await
            .expect("a wait after the cut ends at once");
    }
}
