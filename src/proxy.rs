//! One client connection: persistence, pick a backend, connect (with timeout and
//! retries), the PROXY header, then hand over to [`crate::copy`].

use crate::access_log::{AccessLog, End, Record};
use crate::copy::{copy_both_ways, Cut};
use crate::limit::Permit;
use crate::metrics::LiveGuard;
use crate::persistence::{PersistenceTable, Placement};
use crate::proxy_protocol;
use crate::scheduler::FlowKey;
use crate::state::{unix_millis, ListenerState, ListenerView};
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio::time::{timeout, Instant};

/// The most connect attempts: the first plus `connect_retries` (at most 16).
const MAX_ATTEMPTS: usize = 17;

/// The listening socket a connection came from: what every connection accepted on
/// it shares, known once per socket so no connection pays a syscall for it.
#[derive(Debug, Clone, Copy)]
pub struct ListeningSocket {
    /// The address clients reach, when the socket is bound to a specific address.
    pub local: Option<SocketAddr>,
    /// Accepted sockets already have TCP_NODELAY (inherited from the listener).
    pub nodelay: bool,
}

/// What the connections of one worker thread share. One per worker, so the
/// reference each connection takes is counted on a cache line no other core
/// writes, and waiting on `cut` registers with a lock only this worker takes.
pub struct PerWorker {
    pub access_log: Arc<AccessLog>,
    /// Cancelled at the drain deadline: open connections end, logged `drain`.
    pub cut: Cut,
}

/// How a connection ended, for the access log.
struct Outcome {
    end: End,
    /// The backend reached, or the last one tried.
    backend: Option<usize>,
    connect: Option<Duration>,
    bytes_in: u64,
    bytes_out: u64,
}

impl Outcome {
    fn before_backend(end: End) -> Outcome {
        Outcome {
            end,
            backend: None,
            connect: None,
            bytes_in: 0,
            bytes_out: 0,
        }
    }
}

/// Serves one accepted client until it is done, then logs it (when the access
/// log is on).
pub async fn handle(
    client: TcpStream,
    peer: SocketAddr,
    socket: ListeningSocket,
    state: Arc<ListenerState>,
    permit: Permit,
    worker: Arc<PerWorker>,
) {
    let started = Instant::now();
    let view = state.view.load_full();
    let outcome = {
        let _active = LiveGuard::new(&state.metrics.active, &state.active);
        let conn = Conn {
            peer,
            socket,
            started,
            cut: &worker.cut,
        };
        proxy(client, &conn, &state, &view).await
    };
    drop(permit);
    let log = &worker.access_log;
    if log.is_on() {
        let backend = outcome.backend.map(|i| &view.listener.backends[i]);
        log.log(Record {
            ended_unix_ms: unix_millis(),
            client: peer,
            listener: state.key.clone(),
            server_id: backend.map(|b| b.server_id.clone()),
            backend: backend.map(|b| b.addr),
            connect_ms: outcome.connect.map(millis),
            duration_ms: millis(started.elapsed()),
            bytes_in: outcome.bytes_in,
            bytes_out: outcome.bytes_out,
            end: outcome.end,
        });
    }
}

/// A refused connection (`max_connections`), logged without a task of its own.
pub fn log_refused(log: &AccessLog, state: &ListenerState, peer: SocketAddr) {
    log.log(Record {
        ended_unix_ms: unix_millis(),
        client: peer,
        listener: state.key.clone(),
        server_id: None,
        backend: None,
        connect_ms: None,
        duration_ms: 0,
        bytes_in: 0,
        bytes_out: 0,
        end: End::MaxConnections,
    });
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// What [`proxy`] knows of its connection besides the sockets.
struct Conn<'a> {
    peer: SocketAddr,
    socket: ListeningSocket,
    /// When it was accepted.
    started: Instant,
    cut: &'a Cut,
}

/// Persistence, connect, the PROXY header, then the copy; says how it ended.
async fn proxy(
    client: TcpStream,
    // By reference: the caller keeps it, so it does not take room twice in every
    // connection's task (a by-value argument keeps its slot beside the locals).
    conn: &Conn<'_>,
    state: &ListenerState,
    view: &ListenerView,
) -> Outcome {
    let Conn {
        peer,
        socket,
        started,
        cut,
    } = conn;
    let metrics = &state.metrics;
    if !socket.nodelay {
        set_nodelay_or_warn(&client, "client");
    }
    let Some(local) = socket.local.or_else(|| client.local_addr().ok()) else {
        return Outcome::before_backend(End::ClientError); // the client is already gone
    };
    let flow = FlowKey {
        client: *peer,
        local,
    };
    let (mut pinned, preferred) = Pinned::lookup(&state.persistence, view, peer.ip());
    let connecting = Instant::now();
    let connected = tokio::select! {
        connected = connect(view, &flow, preferred) => connected,
        () = cut.cancelled() => return Outcome::before_backend(End::Drain),
    };
    let connect = Some(connecting.elapsed());
    let (mut backend, index) = match connected {
        Ok(connected) => connected,
        Err(Reject::NoBackend) => {
            metrics.rejected_no_backend.increment(1);
            tracing::debug!(client = %peer, listener = state.key.listener_port, "no backend with weight > 0");
            return Outcome::before_backend(End::NoBackend);
        }
        Err(Reject::ConnectFailed { last }) => {
            metrics.rejected_connect_failed.increment(1);
            tracing::debug!(client = %peer, listener = state.key.listener_port, "no backend could be reached");
            return Outcome {
                backend: Some(last),
                connect,
                ..Outcome::before_backend(End::ConnectFailed)
            };
        }
    };
    pinned.place(view, index);
    let mut early = 0;
    if view.listener.spec.eip_transmit {
        match send_proxy_header(&client, &mut backend, *peer, local).await {
            Ok(n) => early = n,
            Err(end) => {
                tracing::debug!(client = %peer, ?end, "PROXY header not sent");
                return Outcome {
                    backend: Some(index),
                    connect,
                    ..Outcome::before_backend(end)
                };
            }
        }
    }
    let backend_state = &view.backends[index];
    // One count for wlc and /status, one gauge for Prometheus.
    let _backend_active = LiveGuard::new(&backend_state.metrics.active, &*backend_state.active);
    backend_state.metrics.connections.increment(1);
    tracing::debug!(client = %peer, backend = %view.listener.backends[index].addr, listener = state.key.listener_port, "proxying");
    let idle = view.listener.established_timeout;
    let copied = copy_both_ways(client, backend, idle, state, backend_state, cut, early).await;
    if copied.end == End::IdleTimeout {
        metrics.idle_timeouts.increment(1);
    }
    metrics.duration.record(started.elapsed().as_secs_f64());
    tracing::debug!(client = %peer, listener = state.key.listener_port, end = copied.end.as_str(), "closed");
    Outcome {
        end: copied.end,
        backend: Some(index),
        connect,
        bytes_in: copied.bytes_in,
        bytes_out: copied.bytes_out,
    }
}

enum Reject {
    /// No backend with weight > 0.
    NoBackend,
    /// Every attempt failed; `last` was tried last.
    ConnectFailed { last: usize },
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
    let attempts = (view.global.connect_retries as usize + 1).min(MAX_ATTEMPTS);
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
        match timeout(
            view.global.backend_connect_timeout,
            TcpStream::connect(addr),
        )
        .await
        {
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
    Err(match n {
        0 => Reject::NoBackend,
        _ => Reject::ConnectFailed { last: tried[n - 1] },
    })
}

/// Room for client bytes sent in the same write as the PROXY header.
const FIRST_CHUNK: usize = 4096;

/// `eip_transmit = "on"`: a PROXY v2 header with the client's address as source and
/// the address it reached as destination, before any client byte. Client bytes
/// already waiting go in the same write (their count is returned); a
/// server-speaks-first backend still gets the header at once.
async fn send_proxy_header(
    client: &TcpStream,
    backend: &mut TcpStream,
    peer: SocketAddr,
    local: SocketAddr,
) -> Result<usize, End> {
    let mut buf = vec![0u8; proxy_protocol::MAX_V2_LEN + FIRST_CHUNK];
    let mut header = [0u8; proxy_protocol::MAX_V2_LEN];
    let len = proxy_protocol::encode_v2(peer, local, &mut header);
    buf[..len].copy_from_slice(&header[..len]);
    let early = match client.try_read(&mut buf[len..]) {
        Ok(n) => n,
        Err(e) if e.kind() == io::ErrorKind::WouldBlock => 0,
        Err(_) => return Err(End::ClientError),
    };
    match backend.write_all(&buf[..len + early]).await {
        Ok(()) => Ok(early),
        Err(_) => Err(End::BackendError),
    }
}

/// A failed socket option is worth a warning, not a failed connection.
fn set_nodelay_or_warn(stream: &TcpStream, side: &'static str) {
    if let Err(e) = stream.set_nodelay(true) {
        tracing::warn!(side, error = %e, "could not set TCP_NODELAY");
    }
}
