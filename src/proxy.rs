//! One client connection: pick a backend, connect (with timeout and retries), then
//! copy both ways with half-close and the idle timeout.

use crate::listener::Permit;
use crate::metrics::{LiveGuard, Total};
use crate::persistence::{PersistenceTable, Placement};
use crate::proxy_protocol;
use crate::scheduler::FlowKey;
use crate::snapshot::{BackendRuntime, ListenerRuntime, ListenerView};
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio::time::{sleep_until, timeout, Instant};
use tokio_util::sync::CancellationToken;

/// Copy buffer per direction, held only while bytes are moving (idle connections hold none).
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

/// Serves one accepted client until it is done. `local` is the address it reached,
/// when the listener already knows it (a listener bound to a specific address).
pub async fn handle(
    client: TcpStream,
    peer: SocketAddr,
    local: Option<SocketAddr>,
    runtime: Arc<ListenerRuntime>,
    _permit: Permit,
    hard_stop: CancellationToken,
) {
    let started = Instant::now();
    let metrics = &runtime.metrics;
    let _active = LiveGuard::new(&metrics.active, &runtime.active);
    let view = runtime.view.load_full();
    set_nodelay_or_warn(&client, "client");
    let Some(local) = local.or_else(|| client.local_addr().ok()) else {
        return; // the client is already gone
    };
    let flow = FlowKey {
        client: peer,
        local,
    };
    let (mut pinned, preferred) = Pinned::lookup(&runtime.persistence, &view, peer.ip());
    let (mut backend, index) = match connect(&view, &flow, preferred).await {
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
    pinned.place(&view, index);
    if view.listener.spec.eip_transmit {
        if let Err(e) = send_proxy_header(&client, &mut backend, peer, local).await {
            tracing::debug!(client = %peer, error = %e, "PROXY header not sent");
            return;
        }
    }
    let state = &view.backends[index];
    // One count for wlc and /status, one gauge for Prometheus.
    let _backend_active = LiveGuard::new(&state.metrics.active, &*state.active);
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

/// A client's persistence entry for the life of its connection (when
/// `persistence_timeout > 0`): looked up before connecting, (re)written with the
/// backend that was reached, released when the connection ends.
struct Pinned<'a> {
    table: &'a PersistenceTable,
    client: IpAddr,
    enabled: bool,
    placement: Option<Placement>,
}

fn now() -> std::time::Instant {
    // tokio's clock, so the paused clock of tests moves persistence time too.
    Instant::now().into_std()
}

impl<'a> Pinned<'a> {
    /// The entry of `client`, and its backend when that may still be used.
    fn lookup(
        table: &'a PersistenceTable,
        view: &ListenerView,
        client: IpAddr,
    ) -> (Self, Option<usize>) {
        let enabled = view.listener.persistence_timeout.is_some();
        let placement = if enabled {
            table.lookup(client, now())
        } else {
            None
        };
        let preferred = placement
            .as_ref()
            .and_then(|p| view.index.get(p.server_id()).copied())
            .filter(|&i| view.is_eligible(i));
        (
            Pinned {
                table,
                client,
                enabled,
                placement,
            },
            preferred,
        )
    }

    /// The connection went to backend `index`: point the entry at it.
    fn place(&mut self, view: &ListenerView, index: usize) {
        if !self.enabled {
            return;
        }
        let server_id = view.listener.backends[index].server_id.clone();
        self.placement = Some(match self.placement.take() {
            Some(p) if *p.server_id() == server_id => p,
            Some(p) => self.table.repin(p, server_id, now()),
            None => self.table.insert(self.client, server_id, now()),
        });
    }
}

impl Drop for Pinned<'_> {
    fn drop(&mut self) {
        if let Some(p) = self.placement.take() {
            self.table.release(p, now());
        }
    }
}

/// Connects to a backend: `preferred` (the persistence entry's) or the scheduler's
/// pick, then up to `connect_retries` others.
async fn connect(
    view: &ListenerView,
    flow: &FlowKey,
    preferred: Option<usize>,
) -> Result<(TcpStream, usize), Reject> {
    let mut tried = [usize::MAX; MAX_ATTEMPTS];
    let attempts = (view.connect_retries as usize + 1).min(MAX_ATTEMPTS);
    let mut n = 0;
    while n < attempts {
        let choice = match preferred {
            Some(i) if n == 0 => Some(i),
            _ => view.selector.pick(flow, &tried[..n]),
        };
        let Some(index) = choice else {
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

/// Room for client bytes sent in the same write as the PROXY header.
const FIRST_CHUNK: usize = 4096;

/// `eip_transmit = "on"`: a PROXY v2 header with the client's address as source and
/// the address it reached as destination, before any client byte. Client bytes
/// already waiting go in the same write; a server-speaks-first backend still gets
/// the header at once.
async fn send_proxy_header(
    client: &TcpStream,
    backend: &mut TcpStream,
    peer: SocketAddr,
    local: SocketAddr,
) -> io::Result<()> {
    let mut buf = vec![0u8; proxy_protocol::MAX_V2_LEN + FIRST_CHUNK];
    let mut header = [0u8; proxy_protocol::MAX_V2_LEN];
    let len = proxy_protocol::encode_v2(peer, local, &mut header);
    buf[..len].copy_from_slice(&header[..len]);
    let early = match client.try_read(&mut buf[len..]) {
        Ok(n) => n,
        Err(e) if e.kind() == io::ErrorKind::WouldBlock => 0,
        Err(e) => return Err(e),
    };
    backend.write_all(&buf[..len + early]).await
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
    client: TcpStream,
    backend: TcpStream,
    idle: std::time::Duration,
    hard_stop: &CancellationToken,
    runtime: &ListenerRuntime,
    state: &BackendRuntime,
) -> Close {
    let activity = Activity {
        base: Instant::now(),
        last_ms: AtomicU64::new(0),
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
        () = hard_stop.cancelled() => Close::Drain,
    }
}

/// Copies one way until EOF, then passes the FIN on (half-close) and returns.
async fn pump(
    from: &TcpStream,
    to: &TcpStream,
    activity: &Activity,
    tally: &mut Tally<'_>,
) -> io::Result<()> {
    // Readiness may be spurious (a fresh socket's first poll) and a connection may
    // idle for long after a burst: the buffer is taken for a burst and given back
    // once the socket is drained, so an idle connection holds none.
    let mut buf: Option<Vec<u8>> = None;
    loop {
        from.readable().await?;
        let chunk = buf.get_or_insert_with(|| Vec::with_capacity(BUFFER_SIZE));
        let read = read_burst(from, chunk);
        match read {
            Read::Eof => {
                socket2::SockRef::from(to).shutdown(std::net::Shutdown::Write)?;
                return Ok(());
            }
            Read::Data { drained } => {
                activity.touch();
                write_all(to, chunk).await?;
                activity.touch();
                tally.add(chunk.len());
                if drained {
                    buf = None;
                }
            }
            Read::Nothing => buf = None,
            Read::Failed(e) => return Err(e),
        }
    }
}

enum Read {
    Eof,
    /// Bytes are in the buffer; `drained` when the socket very likely has no more.
    Data {
        drained: bool,
    },
    /// Spurious readiness.
    Nothing,
    Failed(io::Error),
}

/// One read into `chunk` (cleared first). A read shorter than the buffer means the
/// socket is very likely drained: it is reported to tokio as `WouldBlock` (the bytes
/// kept) so the readiness is cleared and the next read waits for the next edge
/// instead of costing a syscall that returns `EAGAIN`. A FIN already seen stays
/// flagged by tokio (closed readiness is never cleared), so no EOF is missed.
fn read_burst(from: &TcpStream, chunk: &mut Vec<u8>) -> Read {
    chunk.clear();
    let mut got = 0;
    let result = from.try_io(tokio::io::Interest::READABLE, || {
        let spare = chunk.spare_capacity_mut();
        let n = socket2::SockRef::from(from).recv(spare)?;
        got = n;
        if n > 0 && n < spare.len() {
            return Err(io::ErrorKind::WouldBlock.into());
        }
        Ok(n)
    });
    // SAFETY: recv initialised the first `got` bytes of the spare capacity.
    unsafe { chunk.set_len(got) };
    match result {
        Ok(0) => Read::Eof,
        Ok(_) => Read::Data { drained: false },
        Err(e) if e.kind() == io::ErrorKind::WouldBlock && got > 0 => Read::Data { drained: true },
        Err(e) if e.kind() == io::ErrorKind::WouldBlock => Read::Nothing,
        Err(e) => Read::Failed(e),
    }
}

/// Writes all of `bytes`, waiting for the socket only when its buffer is full.
async fn write_all(to: &TcpStream, mut bytes: &[u8]) -> io::Result<()> {
    while !bytes.is_empty() {
        match to.try_write(bytes) {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(n) => bytes = &bytes[n..],
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => to.writable().await?,
            Err(e) => return Err(e),
        }
    }
    Ok(())
}
