//! One probe, TCP or HTTP, bounded as a whole by the target's effective timeout.
//!
//! Every probe socket closes with a reset (SO_LINGER 0), as Alibaba's checks do:
//! thousands of targets probed every second would otherwise leave as many sockets
//! in TIME_WAIT on the balancer. The HTTP probe resets too, after the response head.
//!
//! A TCP probe is half-open: SYN, SYN-ACK, reset (see [`tcp_socket`]). It is
//! nearly all kernel time, so it makes as few system calls as it can: its socket is
//! kept from one probe to the next (see [`Prober`]), and a probe is `connect`,
//! usually a second `connect` that reports the outcome, and a disconnect that sends
//! the reset.

mod http;
mod tcp;

pub use http::classify;
pub use tcp::{disconnect, tcp_socket};

use crate::health::{Probe, Target};
use std::io;
use std::net::SocketAddr;
use std::time::Duration;

/// Why a probe failed (logged at debug, and with the transition it causes).
#[derive(Debug, thiserror::Error)]
pub enum ProbeError {
    #[error("no answer within {0:?}")]
    Timeout(Duration),
    #[error("connect: {0}")]
    Connect(io::Error),
    /// This host, not the backend, lacked what a probe needs (descriptors, buffers,
    /// a local port): the probe was not sent and says nothing about the backend.
    #[error("not sent: {0}")]
    Local(io::Error),
    #[error("sending the PROXY header: {0}")]
    ProxyHeader(io::Error),
    #[error("cannot build the request: {0}")]
    Request(#[from] hyper::http::Error),
    #[error("http: {0}")]
    Http(#[from] hyper::Error),
    #[error("status {status} is not in {accepted}")]
    Status { status: u16, accepted: String },
}

impl ProbeError {
    /// Whether the probe could not be sent for want of local resources.
    pub fn is_local(&self) -> bool {
        matches!(self, ProbeError::Local(_))
    }
}

/// A failure to connect, told apart from a shortage on this host: out of
/// descriptors (process or system), socket buffers, memory, or local ports.
fn connect_error(e: io::Error) -> ProbeError {
    match e.raw_os_error() {
        Some(libc::EMFILE | libc::ENFILE | libc::ENOBUFS | libc::ENOMEM | libc::EADDRNOTAVAIL) => {
            ProbeError::Local(e)
        }
        _ => ProbeError::Connect(e),
    }
}

/// Probes one target, keeping its TCP probe socket between probes.
///
/// A passing TCP probe leaves the socket disconnected (`connect(AF_UNSPEC)`, which
/// resets an established connection) rather than closed, and the next probe
/// connects it again: no socket, file or epoll registration is made or torn down
/// per probe. A failed or timed-out probe drops its socket (a reset if it got that
/// far) and the next one starts afresh. A healthy TCP-checked backend therefore
/// holds one descriptor between probes.
///
/// A probe is [`Prober::start`]ed without waiting: a near backend's handshake has
/// usually completed by then, and the probe is done with no timer, task or wake-up.
/// The rest (an HTTP probe, a handshake still under way) is [`Prober::finish`]ed.
#[derive(Default)]
pub struct Prober {
    /// The kept socket, and whether it is IPv6.
    tcp: Option<(socket2::Socket, bool)>,
}

/// What [`Prober::start`] came to.
#[derive(Debug)]
pub enum Started {
    /// The outcome is known already.
    Done(Result<(), ProbeError>),
    /// The probe goes on: [`Prober::finish`] waits for its outcome.
    Waiting(Pending),
}

/// A probe [`Prober::start`] left going.
#[derive(Debug)]
pub enum Pending {
    /// A TCP handshake under way, on this socket.
    Handshake(socket2::Socket),
    /// An HTTP probe, not begun: it is all waiting.
    Http,
}

impl Prober {
    /// Starts a probe of `target` without waiting. A TCP probe whose outcome is
    /// known at once (an established handshake, a refused connect) is done;
    /// anything else is left waiting for [`Prober::finish`].
    pub fn start(&mut self, target: &Target) -> Started {
        let Probe::Tcp = target.probe else {
            return Started::Waiting(Pending::Http);
        };
        let addr = target.addr;
        let socket = match self.take_socket(addr) {
            Ok(socket) => socket,
            Err(e) => return Started::Done(Err(connect_error(e))),
        };
        match tcp::begin_handshake(&socket, &addr.into()) {
            Ok(true) => {
                self.keep(socket, addr);
                Started::Done(Ok(()))
            }
            Ok(false) => Started::Waiting(Pending::Handshake(socket)),
            Err(e) => Started::Done(Err(connect_error(e))),
        }
    }

    /// Waits for the outcome of what [`Prober::start`] left `pending`, bounded by
    /// the target's effective timeout.
    pub async fn finish(&mut self, target: &Target, pending: Pending) -> Result<(), ProbeError> {
        let attempt = async {
            match (pending, &target.probe) {
                (Pending::Handshake(socket), _) => {
                    // The socket moves into the wait, so a timeout drops (closes)
                    // it; it is kept only once disconnected.
                    let socket = tcp::wait_handshake(socket, &target.addr.into())
                        .await
                        .map_err(connect_error)?;
                    self.keep(socket, target.addr);
                    Ok(())
                }
                (Pending::Http, Probe::Http(check)) => http::head(target.addr, check).await,
                // `start` makes `Pending::Http` only for an HTTP target.
                (Pending::Http, Probe::Tcp) => Err(ProbeError::Connect(io::Error::other(
                    "no TCP probe was started",
                ))),
            }
        };
        match tokio::time::timeout(target.timeout, attempt).await {
            Ok(result) => result,
            Err(_) => Err(ProbeError::Timeout(target.timeout)),
        }
    }

    /// Runs one whole probe of `target`: `Ok` when the backend passes.
    pub async fn probe(&mut self, target: &Target) -> Result<(), ProbeError> {
        match self.start(target) {
            Started::Done(result) => result,
            Started::Waiting(pending) => self.finish(target, pending).await,
        }
    }

    /// The kept socket if it fits `addr`'s family, else a new one.
    fn take_socket(&mut self, addr: SocketAddr) -> io::Result<socket2::Socket> {
        match self.tcp.take() {
            Some((s, v6)) if v6 == addr.is_ipv6() => Ok(s),
            _ => tcp_socket(addr),
        }
    }

    /// Resets a passed probe's connection and keeps the socket for the next one.
    fn keep(&mut self, socket: socket2::Socket, addr: SocketAddr) {
        if disconnect(&socket).is_ok() {
            self.tcp = Some((socket, addr.is_ipv6()));
        }
    }

    /// The descriptor of the kept TCP socket, if any (for tests).
    #[cfg(test)]
    fn kept_fd(&self) -> Option<i32> {
        use std::os::fd::AsRawFd;
        self.tcp.as_ref().map(|(s, _)| s.as_raw_fd())
    }
}

#[cfg(test)]
mod tests {
    use super::tcp::tests::{assert_half_open_and_reset, tcp_target};
    use super::*;

    #[tokio::test]
    async fn tcp_probe_socket_is_kept_and_reset_each_time() {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let target = tcp_target(l.local_addr().unwrap(), Duration::from_secs(5));
        let mut prober = Prober::default();
        prober.probe(&target).await.unwrap();
        let fd = prober.kept_fd().expect("socket kept after a pass");
        let port = |p: &Prober| {
            let (kept, _) = p.tcp.as_ref().unwrap();
            kept.local_addr().unwrap().as_socket().unwrap().port()
        };
        let first_port = port(&prober);
        prober.probe(&target).await.unwrap();
        assert_eq!(prober.kept_fd(), Some(fd), "the same socket probes again");
        assert_ne!(
            port(&prober),
            first_port,
            "a fresh ephemeral port per probe"
        );
        assert_half_open_and_reset(&l).await;
    }

    #[tokio::test]
    async fn tcp_probe_socket_is_dropped_on_failure_and_made_again() {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        let target = tcp_target(addr, Duration::from_secs(5));
        let mut prober = Prober::default();
        prober.probe(&target).await.unwrap();
        assert!(prober.kept_fd().is_some());
        drop(l);
        let got = prober.probe(&target).await;
        assert!(matches!(got, Err(ProbeError::Connect(_))), "{got:?}");
        assert_eq!(prober.kept_fd(), None, "a failed probe keeps nothing");
        let _l = std::net::TcpListener::bind(addr).unwrap();
        prober.probe(&target).await.unwrap();
        assert!(prober.kept_fd().is_some());
    }

    #[tokio::test]
    async fn tcp_probe_follows_a_change_of_address_family() {
        let v4 = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let v6 = std::net::TcpListener::bind("[::1]:0").unwrap();
        let mut prober = Prober::default();
        let timeout = Duration::from_secs(5);
        prober
            .probe(&tcp_target(v4.local_addr().unwrap(), timeout))
            .await
            .unwrap();
        prober
            .probe(&tcp_target(v6.local_addr().unwrap(), timeout))
            .await
            .unwrap();
        prober
            .probe(&tcp_target(v4.local_addr().unwrap(), timeout))
            .await
            .unwrap();
        assert_half_open_and_reset(&v4).await;
        assert_half_open_and_reset(&v6).await;
    }
}
