//! Listening sockets and the accept loop that hands each connection to
//! [`crate::proxy`].

use crate::accept::{self, AcceptBackoff};
use crate::access_log::AccessLog;
use crate::limit::ConnectionLimit;
use crate::proxy::{self, PerWorker};
use crate::state::ListenerState;
use socket2::{Domain, Protocol, Socket, Type};
use std::collections::HashMap;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// Listen backlog (the kernel caps it at net.core.somaxconn).
pub const BACKLOG: i32 = 4096;

/// Binds `addr` as a listener: SO_REUSEADDR (restart while old connections linger in
/// TIME_WAIT), SO_REUSEPORT (several accept loops or a new process can share the
/// port), IPV6_V6ONLY for IPv6 (so `::` and `0.0.0.0` are separate listeners).
pub fn bind(addr: SocketAddr) -> io::Result<std::net::TcpListener> {
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    socket.set_reuse_address(true)?;
    #[cfg(unix)]
    socket.set_reuse_port(true)?;
    if addr.is_ipv6() {
        socket.set_only_v6(true)?;
    }
    socket.set_nonblocking(true)?;
    // Accepted sockets inherit TCP_NODELAY from the listener on Linux: one
    // setsockopt here instead of one per connection.
    socket.set_tcp_nodelay(true)?;
    socket.bind(&addr.into())?;
    socket.listen(BACKLOG)?;
    Ok(socket.into())
}

/// How listeners get their socket: [`bind`] in production; tests substitute one that
/// binds port 0.
pub type Binder = Arc<dyn Fn(SocketAddr) -> io::Result<std::net::TcpListener> + Send + Sync>;

pub fn default_binder() -> Binder {
    Arc::new(bind)
}

/// Listening sockets handed over by the process this one replaces (binary
/// upgrade), by the address they were configured with: the listeners and the admin
/// server take theirs instead of binding, so the very same sockets (and their
/// accept queues) go on serving.
#[derive(Debug, Default)]
pub struct Inherited {
    sockets: HashMap<SocketAddr, Vec<std::net::TcpListener>>,
}

impl Inherited {
    pub fn add(&mut self, configured: SocketAddr, socket: std::net::TcpListener) {
        self.sockets.entry(configured).or_default().push(socket);
    }

    /// The sockets of `configured`, taken out (a later reload binds afresh).
    pub fn take(&mut self, configured: SocketAddr) -> Option<Vec<std::net::TcpListener>> {
        self.sockets.remove(&configured).filter(|s| !s.is_empty())
    }

    /// Sockets nobody took, by address (closed when this drops).
    pub fn left(&self) -> Vec<(SocketAddr, usize)> {
        self.sockets.iter().map(|(a, s)| (*a, s.len())).collect()
    }
}

/// What every accept loop shares.
pub struct Shared {
    pub limit: Arc<ConnectionLimit>,
    /// Connection tasks, so a drain can wait for them.
    pub tracker: TaskTracker,
    pub access_log: Arc<AccessLog>,
    /// One per worker thread, in the workers' order: what its connections share,
    /// with the token the drain deadline cancels.
    pub workers: Vec<Arc<PerWorker>>,
}

/// Accepts until `stop` is cancelled; the socket closes when this returns.
/// Connections run on this (`worker`'s) thread.
pub async fn accept_loop(
    listener: TcpListener,
    state: Arc<ListenerState>,
    shared: Arc<Shared>,
    stop: CancellationToken,
    worker: Arc<PerWorker>,
) {
    let mut backoff = AcceptBackoff::default();
    let socket = proxy::ListeningSocket {
        local: listener
            .local_addr()
            .ok()
            .filter(|a| !a.ip().is_unspecified()),
        nodelay: cfg!(target_os = "linux")
            && socket2::SockRef::from(&listener)
                .tcp_nodelay()
                .unwrap_or(false),
    };
    let owner = accept::Owner::Listener(state.key.listener_port);
    // Registered with the token once, not once per connection.
    let stopped = stop.cancelled();
    tokio::pin!(stopped);
    while let Some((stream, peer)) =
        accept::next(&listener, &mut backoff, stopped.as_mut(), owner).await
    {
        state.metrics.connections.increment(1);
        let Some(permit) = shared.limit.try_acquire() else {
            state.metrics.rejected_max_connections.increment(1);
            if shared.limit.warning.due() {
                tracing::warn!(
                    load_balancer_id = %state.key.load_balancer_id,
                    listener = state.key.listener_port,
                    max_connections = shared.limit.max(),
                    "max_connections reached: refusing new connections"
                );
            }
            drop(stream);
            if shared.access_log.is_on() {
                proxy::log_refused(&shared.access_log, &state, peer);
            }
            continue;
        };
        let task = proxy::handle(stream, peer, socket, state.clone(), permit, worker.clone());
        shared.tracker.spawn(task);
    }
}
