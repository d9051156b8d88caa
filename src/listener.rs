//! Listening sockets and the accept loop.

use crate::proxy;
use crate::snapshot::ListenerRuntime;
use crate::warn_every::WarnEvery;
use socket2::{Domain, Protocol, Socket, Type};
use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// Listen backlog (the kernel caps it at net.core.somaxconn).
pub const BACKLOG: i32 = 4096;
/// First and longest pause after an accept error such as EMFILE.
const ACCEPT_BACKOFF_MIN: Duration = Duration::from_millis(5);
const ACCEPT_BACKOFF_MAX: Duration = Duration::from_secs(1);

/// The pause after an accept error that is not the connection's own (EMFILE,
/// ENFILE, ENOBUFS, ENOMEM): the pending connection stays in the backlog, so the
/// loop waits instead of spinning on the same error, 5 ms doubling to 1 s; a
/// success starts over.
pub struct AcceptBackoff(Duration);

impl Default for AcceptBackoff {
    fn default() -> Self {
        AcceptBackoff(ACCEPT_BACKOFF_MIN)
    }
}

impl AcceptBackoff {
    pub fn reset(&mut self) {
        self.0 = ACCEPT_BACKOFF_MIN;
    }

    /// The pause to take now; the next one is twice as long.
    pub fn next_pause(&mut self) -> Duration {
        let pause = self.0;
        self.0 = (self.0 * 2).min(ACCEPT_BACKOFF_MAX);
        pause
    }
}

/// At most one "limit reached" warning per this many seconds.
const WARN_EVERY_SECS: u64 = 5;

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

/// The process-wide cap on open client connections (`max_connections`); a reload
/// may change it.
pub struct ConnectionLimit {
    max: AtomicUsize,
    open: AtomicUsize,
    /// The most open at once since [`ConnectionLimit::take_peak`] last looked.
    peak: AtomicUsize,
    warning: WarnEvery,
}

/// One admitted connection; gives its slot back when dropped.
pub struct Permit(Arc<ConnectionLimit>);

impl Drop for Permit {
    fn drop(&mut self) {
        self.0.open.fetch_sub(1, Ordering::AcqRel);
    }
}

impl ConnectionLimit {
    pub fn new(max: usize) -> Arc<Self> {
        Arc::new(ConnectionLimit {
            max: AtomicUsize::new(max),
            open: AtomicUsize::new(0),
            peak: AtomicUsize::new(0),
            warning: WarnEvery::new(WARN_EVERY_SECS),
        })
    }

    pub fn max(&self) -> usize {
        self.max.load(Ordering::Relaxed)
    }

    /// A new cap: connections open past it stay; new ones wait for room below it.
    pub fn set_max(&self, max: usize) {
        self.max.store(max, Ordering::Relaxed);
    }

    pub fn open(&self) -> usize {
        self.open.load(Ordering::Acquire)
    }

    pub fn try_acquire(self: &Arc<Self>) -> Option<Permit> {
        let max = self.max();
        let before = self
            .open
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < max).then_some(n + 1)
            })
            .ok()?;
        self.peak.fetch_max(before + 1, Ordering::Relaxed);
        Some(Permit(self.clone()))
    }

    /// The most connections open at once since the last call.
    pub fn take_peak(&self) -> usize {
        self.peak.swap(self.open(), Ordering::Relaxed)
    }
}

/// `max_connections = 0`: two descriptors per proxied connection, from what is left
/// once `kept` descriptors (TCP probe sockets, one per checked target) and some for
/// the admin server, HTTP probes and logs are set aside.
pub fn derived_max_connections(kept: usize) -> usize {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit only writes the struct we pass.
    let ok = unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } == 0;
    max_connections_for(if ok { limit.rlim_cur } else { 1024 }, kept)
}

fn max_connections_for(fds: u64, kept: usize) -> usize {
    const RESERVED_FDS: u64 = 128;
    let kept = u64::try_from(kept).unwrap_or(u64::MAX);
    usize::try_from(fds.saturating_sub(RESERVED_FDS).saturating_sub(kept) / 2)
        .unwrap_or(usize::MAX)
        .max(1)
}

/// What every accept loop shares.
pub struct Shared {
    pub limit: Arc<ConnectionLimit>,
    /// Connection tasks, so a drain can wait for them. (Connections still open at the
    /// drain deadline close when the runtime ends with the process: no per-connection
    /// cancellation future is needed for that.)
    pub tracker: TaskTracker,
}

/// Accepts until `stop` is cancelled; the socket closes when this returns.
pub async fn accept_loop(
    listener: TcpListener,
    runtime: Arc<ListenerRuntime>,
    shared: Arc<Shared>,
    stop: CancellationToken,
) {
    let mut backoff = AcceptBackoff::default();
    let accepted_info = proxy::Accepted {
        local: listener
            .local_addr()
            .ok()
            .filter(|a| !a.ip().is_unspecified()),
        nodelay: cfg!(target_os = "linux")
            && socket2::SockRef::from(&listener)
                .tcp_nodelay()
                .unwrap_or(false),
    };
    // Registered with the token once, not once per connection.
    let stopped = stop.cancelled();
    tokio::pin!(stopped);
    loop {
        let accepted = tokio::select! {
            biased;
            () = &mut stopped => break,
            accepted = listener.accept() => accepted,
        };
        let (stream, peer) = match accepted {
            Ok(ok) => {
                backoff.reset();
                ok
            }
            Err(e) if is_per_connection_error(&e) => continue,
            Err(e) => {
                let pause = backoff.next_pause();
                tracing::warn!(listener = %runtime.key.listener_port, error = %e, pause_ms = pause.as_millis() as u64, "accept failed; pausing");
                tokio::select! {
                    () = &mut stopped => break,
                    () = tokio::time::sleep(pause) => {}
                }
                continue;
            }
        };
        runtime.metrics.connections.increment(1);
        let Some(permit) = shared.limit.try_acquire() else {
            runtime.metrics.rejected_max_connections.increment(1);
            if shared.limit.warning.due() {
                tracing::warn!(
                    load_balancer_id = %runtime.key.load_balancer_id,
                    listener = runtime.key.listener_port,
                    max_connections = shared.limit.max(),
                    "max_connections reached: refusing new connections"
                );
            }
            drop(stream);
            continue;
        };
        let task = proxy::handle(stream, peer, accepted_info, runtime.clone(), permit);
        shared.tracker.spawn(task);
    }
}

/// Errors that concern one incoming connection only (it was reset before we took it).
pub fn is_per_connection_error(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::ConnectionAborted
            | io::ErrorKind::ConnectionReset
            | io::ErrorKind::Interrupted
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn derived_limit_leaves_room_for_kept_probe_sockets() {
        assert_eq!(max_connections_for(1024, 0), 448);
        assert_eq!(max_connections_for(1024, 200), 348);
        assert_eq!(max_connections_for(1_048_576, 2_000), 523_224);
        // Never zero, whatever is set aside.
        assert_eq!(max_connections_for(1024, 5_000), 1);
        assert_eq!(max_connections_for(0, 0), 1);
    }

    #[test]
    fn accept_backoff_doubles_to_a_second_and_starts_over_after_a_success() {
        let mut b = AcceptBackoff::default();
        let ms: Vec<u128> = (0..10).map(|_| b.next_pause().as_millis()).collect();
        assert_eq!(ms, [5, 10, 20, 40, 80, 160, 320, 640, 1000, 1000]);
        b.reset();
        assert_eq!(b.next_pause(), Duration::from_millis(5));
    }
}
