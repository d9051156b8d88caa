//! One client connection: pick a backend, connect (with timeout and retries), then
//! copy both ways with half-close and the idle timeout.

use crate::listener::Permit;
use crate::metrics::{LiveGuard, Total};
use crate::scheduler::FlowKey;
use crate::snapshot::{BackendRuntime, ListenerRuntime, ListenerView};
use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use tokio::io::AsyncWriteExt;
use tokio::net::tcp::{ReadHalf, WriteHalf};
use tokio::net::TcpStream;
use tokio::time::{sleep_until, timeout, Instant};
use tokio_util::sync::CancellationToken;

/// Copy buffer per direction, allocated on the first byte (idle connections hold none).
pub const BUFFER_SIZE: usize = 16 * 1024;
/// Bytes are added to the counters in batches of at least this much (and at close).
const BYTES_BATCH: u64 = 256 * 1024;
/// The most connect attempts: the first plus `connect_retries` (at most 16).
const MAX_ATTEMPTS: usize = 17;

/// Why a proxied connection ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Close {
    /// Both sides finished (FIN both ways).
    Done,
    /// No byte either way for `established_timeout`.
    IdleTimeout,
    /// A read or write failed (a reset, usually).
    Error,
    /// The drain time ran out.
    Drain,
}

/// Serves one accepted client until it is done.
pub async fn handle(
    client: TcpStream,
    peer: SocketAddr,
    runtime: Arc<ListenerRuntime>,
    _permit: Permit,
    hard_stop: CancellationToken,
) {
    let started = Instant::now();
    let metrics = &runtime.metrics;
    let _active = LiveGuard::new(&metrics.active, &runtime.active);
    let view = runtime.view.load_full();
    set_nodelay_or_warn(&client, "client");
    let Ok(local) = client.local_addr() else {
        return; // the client is already gone
    };
    let flow = FlowKey {
        client: peer,
        local,
    };
    let (backend, index) = match connect(&view, &flow).await {
        Ok(connected) => connected,
        Err(Reject::NoBackend) => {
            metrics.rejected_no_backend.increment(1);
            tracing::debug!(client = %peer, listener = runtime.listener_port, "no backend with weight > 0");
            return;
        }
        Err(Reject::ConnectFailed) => {
            metrics.rejected_connect_failed.increment(1);
            tracing::debug!(client = %peer, listener = runtime.listener_port, "no backend could be reached");
            return;
        }
    };
    let state = &view.backends[index];
    // One count for wlc and /status, one gauge for Prometheus.
    let _backend_active = LiveGuard::new(&state.metrics.active, &state.active);
    state.metrics.connections.increment(1);
    tracing::debug!(client = %peer, backend = %view.listener.backends[index].addr, listener = runtime.listener_port, "proxying");
    let idle = view.listener.established_timeout;
    let close = copy_both_ways(client, backend, idle, &hard_stop, &runtime, state).await;
    if close == Close::IdleTimeout {
        metrics.idle_timeouts.increment(1);
    }
    metrics.duration.record(started.elapsed().as_secs_f64());
    tracing::debug!(client = %peer, listener = runtime.listener_port, ?close, "closed");
}

enum Reject {
    /// No backend with weight > 0.
    NoBackend,
    /// Every attempt failed.
    ConnectFailed,
}

/// Connects to a backend: the scheduler's pick, then up to `connect_retries` others.
async fn connect(view: &ListenerView, flow: &FlowKey) -> Result<(TcpStream, usize), Reject> {
    let mut tried = [usize::MAX; MAX_ATTEMPTS];
    let attempts = (view.connect_retries as usize + 1).min(MAX_ATTEMPTS);
    let mut n = 0;
    while n < attempts {
        let Some(index) = view.selector.pick(flow, &tried[..n]) else {
            break;
        };
        tried[n] = index;
        n += 1;
        let addr = view.listener.backends[index].addr;
        let state = &view.backends[index];
        let started = Instant::now();
        match timeout(view.connect_timeout, TcpStream::connect(addr)).await {
            Ok(Ok(stream)) => {
                state
                    .metrics
                    .connect_seconds
                    .record(started.elapsed().as_secs_f64());
                set_nodelay_or_warn(&stream, "backend");
                return Ok((stream, index));
            }
            Ok(Err(e)) => {
                tracing::debug!(client = %flow.client, backend = %addr, error = %e, "connect failed");
            }
            Err(_) => {
                tracing::debug!(client = %flow.client, backend = %addr, "connect timed out");
            }
        }
        state.metrics.connect_failures.increment(1);
    }
    Err(if n == 0 {
        Reject::NoBackend
    } else {
        Reject::ConnectFailed
    })
}

/// A failed socket option is worth a warning, not a failed connection.
fn set_nodelay_or_warn(stream: &TcpStream, side: &'static str) {
    if let Err(e) = stream.set_nodelay(true) {
        tracing::warn!(side, error = %e, "could not set TCP_NODELAY");
    }
}

/// The time of the last byte moved, as milliseconds since the connection started:
/// one relaxed store per read, read back only when the idle timer fires, so no timer
/// is re-armed per read.
struct Activity {
    base: Instant,
    last_ms: AtomicU64,
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

/// Copies both ways until both sides are done, a side fails, nothing moves for
/// `idle`, or the drain time runs out.
async fn copy_both_ways(
    mut client: TcpStream,
    mut backend: TcpStream,
    idle: std::time::Duration,
    hard_stop: &CancellationToken,
    runtime: &ListenerRuntime,
    state: &BackendRuntime,
) -> Close {
    let activity = Activity {
        base: Instant::now(),
        last_ms: AtomicU64::new(0),
    };
    let (client_read, client_write) = client.split();
    let (backend_read, backend_write) = backend.split();
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
    let upstream = pump(client_read, backend_write, &activity, &mut tally_in);
    let downstream = pump(backend_read, client_write, &activity, &mut tally_out);
    tokio::select! {
        result = async { tokio::try_join!(upstream, downstream) } => match result {
            Ok(_) => Close::Done,
            Err(_) => Close::Error,
        },
        () = idle_timer(&activity, idle) => Close::IdleTimeout,
        () = hard_stop.cancelled() => Close::Drain,
    }
}

/// Copies one way until EOF, then passes the FIN on (half-close) and returns.
async fn pump(
    from: ReadHalf<'_>,
    mut to: WriteHalf<'_>,
    activity: &Activity,
    tally: &mut Tally<'_>,
) -> io::Result<()> {
    let mut buf: Option<Box<[u8]>> = None;
    loop {
        from.readable().await?;
        let buf = buf.get_or_insert_with(|| vec![0u8; BUFFER_SIZE].into_boxed_slice());
        match from.try_read(buf) {
            Ok(0) => {
                to.shutdown().await?;
                return Ok(());
            }
            Ok(n) => {
                activity.touch();
                to.write_all(&buf[..n]).await?;
                activity.touch();
                tally.add(n);
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
            Err(e) => return Err(e),
        }
    }
}
