//! One client connection: persistence, pick a backend, connect (with timeout and
//! retries), the PROXY header, then hand over to [`crate::copy`].

use crate::copy::{copy_both_ways, Close};
use crate::limit::Permit;
use crate::metrics::LiveGuard;
use crate::persistence::{PersistenceTable, Placement};
use crate::proxy_protocol;
use crate::scheduler::FlowKey;
use crate::state::{ListenerState, ListenerView};
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
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

/// Serves one accepted client until it is done.
pub async fn handle(
    client: TcpStream,
    peer: SocketAddr,
    socket: ListeningSocket,
    state: Arc<ListenerState>,
    _permit: Permit,
) {
    let started = Instant::now();
    let metrics = &state.metrics;
    let _active = LiveGuard::new(&metrics.active, &state.active);
    let view = state.view.load_full();
    if !socket.nodelay {
        set_nodelay_or_warn(&client, "client");
    }
    let Some(local) = socket.local.or_else(|| client.local_addr().ok()) else {
        return; // the client is already gone
    };
    let flow = FlowKey {
        client: peer,
        local,
    };
    let (mut pinned, preferred) = Pinned::lookup(&state.persistence, &view, peer.ip());
    let (mut backend, index) = match connect(&view, &flow, preferred).await {
        Ok(connected) => connected,
        Err(Reject::NoBackend) => {
            metrics.rejected_no_backend.increment(1);
            tracing::debug!(client = %peer, listener = state.key.listener_port, "no backend with weight > 0");
            return;
        }
        Err(Reject::ConnectFailed) => {
            metrics.rejected_connect_failed.increment(1);
            tracing::debug!(client = %peer, listener = state.key.listener_port, "no backend could be reached");
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
    let backend_state = &view.backends[index];
    // One count for wlc and /status, one gauge for Prometheus.
    let _backend_active = LiveGuard::new(&backend_state.metrics.active, &*backend_state.active);
    backend_state.metrics.connections.increment(1);
    tracing::debug!(client = %peer, backend = %view.listener.backends[index].addr, listener = state.key.listener_port, "proxying");
    let idle = view.listener.established_timeout;
    let close = copy_both_ways(client, backend, idle, &state, backend_state).await;
    if close == Close::IdleTimeout {
        metrics.idle_timeouts.increment(1);
    }
    metrics.duration.record(started.elapsed().as_secs_f64());
    tracing::debug!(client = %peer, listener = state.key.listener_port, ?close, "closed");
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
