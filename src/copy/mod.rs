//! Moving bytes both ways between a client and its backend: half-close passed on,
//! the idle timeout (`established_timeout`), the drain's cut, batched byte counts,
//! and on Linux zero-copy `splice(2)` for bulk transfers.
//!
//! - [`cut`]: what ends open connections at the drain deadline.
//! - [`relay`]: one read and its write, with the per-thread buffer or a pipe.

use crate::access_log::End;
use crate::metrics::Total;
use crate::state::{BackendState, ListenerState};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicU8, Ordering};
use tokio::net::TcpStream;
use tokio::time::{sleep_until, Instant};

mod cut;
mod relay;

pub use cut::Cut;
use relay::{relay, write_all, Relay, SCRATCH};

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
    // The pumps are made inside the block: made outside and moved in, each would
    // take its room twice in every connection's task (the block's captured copy
    // and the join's), about 460 bytes per connection.
    let both_ways = async {
        tokio::try_join!(
            pump(&client, &backend, Way::In, &activity, &mut tally_in),
            pump(&backend, &client, Way::Out, &activity, &mut tally_out),
        )
    };
    let end = tokio::select! {
        result = both_ways => match result {
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
                return Box::pin(relay::splice_pump(from, to, way, &pipe, activity, tally)).await;
            }
            full_reads = 0; // out of descriptors: keep copying
        }
    }
}
