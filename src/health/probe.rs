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

use super::{HttpCheck, Probe, Target};
use crate::config::HttpCodes;
use http_body_util::Empty;
use hyper::body::Bytes;
use hyper::header::{CONNECTION, HOST};
use hyper::Request;
use hyper_util::rt::TokioIo;
use std::io;
use std::net::SocketAddr;
use std::time::Duration;
use tokio::io::unix::AsyncFd;
use tokio::io::{AsyncWriteExt, Interest};
use tokio::net::TcpStream;

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
        match begin_handshake(&socket, &addr.into()) {
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
                    let socket = wait_handshake(socket, &target.addr.into())
                        .await
                        .map_err(connect_error)?;
                    self.keep(socket, target.addr);
                    Ok(())
                }
                (Pending::Http, Probe::Http(check)) => http(target.addr, check).await,
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

/// A TCP probe's socket: non-blocking, reset when closed, and half-open (see
/// [`defer_final_ack`]).
pub fn tcp_socket(addr: SocketAddr) -> io::Result<socket2::Socket> {
    use socket2::{Domain, Protocol, Socket, Type};
    let socket = Socket::new(
        Domain::for_address(addr),
        Type::STREAM.nonblocking(),
        Some(Protocol::TCP),
    )?;
    linger_zero((&socket).into(), addr);
    defer_final_ack(&socket, addr);
    Ok(socket)
}

/// Makes the probe half-open: SYN, SYN-ACK, then the reset, with no final ACK, the
/// sequence Alibaba documents for its TCP checks. On a connecting socket Linux reads
/// TCP_DEFER_ACCEPT as "hold the handshake's last ACK to carry it on the first data"
/// (for up to 200 ms); `connect` still reports the connection established as soon as
/// the SYN-ACK arrives, and the disconnect that follows at once sends the reset
/// instead. The backend's kernel drops its half-open request: no socket is made, its
/// application never accepts the probe (no log line, no "reset by peer" error), and
/// the probe costs both hosts one packet and one socket less. The option survives
/// the disconnect, so it is set once per kept socket. Where it cannot be set the
/// probe is a full handshake, which is as valid a check.
fn defer_final_ack(socket: &socket2::Socket, addr: SocketAddr) {
    #[cfg(target_os = "linux")]
    {
        use std::os::fd::AsRawFd;
        let on: libc::c_int = 1;
        // SAFETY: the descriptor is owned by `socket`; the option value is a c_int
        // that outlives the call, passed with its size.
        let rc = unsafe {
            libc::setsockopt(
                socket.as_raw_fd(),
                libc::IPPROTO_TCP,
                libc::TCP_DEFER_ACCEPT,
                (&raw const on).cast(),
                std::mem::size_of::<libc::c_int>() as libc::socklen_t,
            )
        };
        if rc != 0 {
            let error = io::Error::last_os_error();
            tracing::debug!(backend = %addr, %error, "health probe: cannot defer the final ACK; probing with a full handshake");
        }
    }
    #[cfg(not(target_os = "linux"))]
    let _ = (socket, addr);
}

/// Starts the handshake: `true` once it is done, `false` while under way. A
/// handshake with a near backend (loopback, the same host or rack) has often
/// completed by the time `connect` returns `EINPROGRESS`; Linux answers a second
/// `connect` with the outcome (0 or `EISCONN` once established, the error once
/// failed, `EALREADY` while under way), so that is asked before any waiting.
fn begin_handshake(socket: &socket2::Socket, addr: &socket2::SockAddr) -> io::Result<bool> {
    match socket.connect(addr) {
        Ok(()) => return Ok(true),
        Err(e) if e.raw_os_error() == Some(libc::EINPROGRESS) => {}
        Err(e) => return Err(e),
    }
    match connect_outcome(socket, addr) {
        Ok(()) => Ok(true),
        Err(e) if e.kind() == io::ErrorKind::WouldBlock => Ok(false),
        Err(e) => Err(e),
    }
}

/// Waits for a handshake under way. The socket is registered with the reactor
/// for this wait alone: tokio keeps a hang-up as a final state, and the
/// disconnected socket signals one, so a registration kept across probes would
/// report it ready forever.
async fn wait_handshake(
    socket: socket2::Socket,
    addr: &socket2::SockAddr,
) -> io::Result<socket2::Socket> {
    // SAFETY: the socket owns its descriptor, open and the same for as long as the
    // `AsyncFd` holds it.
    let socket = unsafe { AsyncFd::register_with_interest(socket, Interest::WRITABLE) }?;
    loop {
        let mut ready = socket.writable().await?;
        if let Ok(outcome) = ready.try_io(|s| connect_outcome(s.get_ref(), addr)) {
            outcome?;
            break;
        }
    }
    Ok(socket.into_inner())
}

fn connect_outcome(socket: &socket2::Socket, addr: &socket2::SockAddr) -> io::Result<()> {
    match socket.connect(addr) {
        Ok(()) => Ok(()),
        Err(e) => match e.raw_os_error() {
            Some(libc::EISCONN) => Ok(()),
            Some(libc::EALREADY) => Err(io::ErrorKind::WouldBlock.into()),
            _ => Err(e),
        },
    }
}

/// `connect(AF_UNSPEC)`: Linux's `tcp_disconnect`, which resets an established
/// connection (as close with SO_LINGER 0 would) and leaves the socket unconnected
/// and ready to connect again, its ephemeral port released.
pub fn disconnect(socket: &socket2::Socket) -> io::Result<()> {
    use std::os::fd::AsRawFd;
    let unspec = libc::sockaddr {
        sa_family: libc::AF_UNSPEC as libc::sa_family_t,
        sa_data: [0; 14],
    };
    let len = std::mem::size_of::<libc::sockaddr>() as libc::socklen_t;
    // SAFETY: `unspec` is a valid sockaddr of `len` bytes for the call's duration,
    // and the descriptor is owned by `socket`.
    let rc = unsafe { libc::connect(socket.as_raw_fd(), &raw const unspec, len) };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
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

impl ProbeError {
    /// Whether the probe could not be sent for want of local resources.
    pub fn is_local(&self) -> bool {
        matches!(self, ProbeError::Local(_))
    }
}

/// A zero linger never blocks the thread on close (the reason tokio deprecates
/// SO_LINGER): close sends a RST at once. A failure only costs a TIME_WAIT.
fn linger_zero(socket: socket2::SockRef<'_>, addr: SocketAddr) {
    if let Err(error) = socket.set_linger(Some(Duration::ZERO)) {
        tracing::debug!(backend = %addr, %error, "health probe: cannot set SO_LINGER 0");
    }
}

async fn connect(addr: SocketAddr) -> Result<TcpStream, ProbeError> {
    let stream = TcpStream::connect(addr).await.map_err(connect_error)?;
    linger_zero((&stream).into(), addr);
    Ok(stream)
}

/// `HEAD {uri}` with `Host` and `Connection: close`; redirects are not followed
/// (a 3xx is judged by its class like any status).
async fn http(addr: SocketAddr, check: &HttpCheck) -> Result<(), ProbeError> {
    let request = Request::head(check.uri.as_str())
        .header(HOST, check.host.as_str())
        .header(CONNECTION, "close")
        .body(Empty::<Bytes>::new())?;
    let mut stream = connect(addr).await?;
    if check.proxy_header {
        stream
            .write_all(&crate::proxy_protocol::encode_v2_local())
            .await
            .map_err(ProbeError::ProxyHeader)?;
    }
    // `Host:` as the spec writes it: some health endpoints are picky about case.
    let (mut sender, conn) = hyper::client::conn::http1::Builder::new()
        .title_case_headers(true)
        .handshake(TokioIo::new(stream))
        .await?;
    // The connection is driven here rather than in a spawned task, so the
    // timeout around the probe drops it too.
    let response = sender.send_request(request);
    let mut response = std::pin::pin!(response);
    let status = tokio::select! {
        biased;
        r = &mut response => r?.status(),
        c = conn => {
            // It may end having delivered the response already: read that first.
            let done = response.await;
            c?;
            done?.status()
        }
    };
    classify(status.as_u16(), check.codes)
}

/// Success when the status class is accepted (`health_check_http_code`).
pub fn classify(status: u16, accepted: HttpCodes) -> Result<(), ProbeError> {
    if accepted.accepts(status) {
        Ok(())
    } else {
        Err(ProbeError::Status {
            status,
            accepted: accepted.to_api_string(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Arc;

    fn codes(classes: &[u8]) -> HttpCodes {
        classes
            .iter()
            .fold(HttpCodes::EMPTY, |c, &class| c.with_class(class))
    }

    #[test]
    fn status_classes() {
        let only_2xx = HttpCodes::DEFAULT;
        assert!(classify(200, only_2xx).is_ok());
        assert!(classify(204, only_2xx).is_ok());
        assert!(classify(299, only_2xx).is_ok());
        assert!(classify(503, only_2xx).is_err());
        // A redirect is not followed: its class decides.
        assert!(classify(301, only_2xx).is_err());
        assert!(classify(301, codes(&[2, 3])).is_ok());
        let ok_or_5xx = codes(&[2, 5]);
        assert!(classify(503, ok_or_5xx).is_ok());
        assert!(classify(200, ok_or_5xx).is_ok());
        assert!(classify(404, ok_or_5xx).is_err());
        // No class outside 2xx..5xx is ever accepted.
        let all = codes(&[2, 3, 4, 5]);
        assert!(classify(101, all).is_err());
        assert!(classify(600, all).is_err());
    }

    #[test]
    fn failure_says_what_was_expected() {
        let e = classify(503, HttpCodes::DEFAULT)
            .err()
            .map(|e| e.to_string());
        assert_eq!(e.as_deref(), Some("status 503 is not in http_2xx"));
    }

    fn tcp_target(addr: SocketAddr, timeout: Duration) -> Target {
        Target {
            addr,
            probe: Probe::Tcp,
            interval: timeout,
            timeout,
            healthy_threshold: 1,
            unhealthy_threshold: 1,
        }
    }

    /// A loopback listener that never accepts, its queue full (backlog 0 holds
    /// one): a further handshake waits for a SYN retransmission, about 1 s.
    fn full_listener() -> (socket2::Socket, SocketAddr, Vec<socket2::Socket>) {
        use socket2::{Domain, Socket, Type};
        let l = Socket::new(Domain::IPV4, Type::STREAM, None).unwrap();
        l.bind(&"127.0.0.1:0".parse::<SocketAddr>().unwrap().into())
            .unwrap();
        l.listen(0).unwrap();
        let addr = l.local_addr().unwrap().as_socket().unwrap();
        let fill: Vec<Socket> = (0..2)
            .map(|_| {
                let s = Socket::new(Domain::IPV4, Type::STREAM.nonblocking(), None).unwrap();
                let _ = s.connect(&addr.into());
                s
            })
            .collect();
        // Loopback handshakes run inside connect: the queue is full already.
        (l, addr, fill)
    }

    /// Handshakes the kernel of the listener on `port` holds half-open: a SYN it
    /// answered whose SYN-ACK was neither acknowledged nor reset (SYN_RECV in
    /// /proc/net/tcp, or tcp6). Such a request lingers about a minute while the
    /// SYN-ACK is sent again.
    fn half_open_requests(port: u16) -> usize {
        const SYN_RECV: &str = "03";
        ["/proc/net/tcp", "/proc/net/tcp6"]
            .iter()
            .filter_map(|f| std::fs::read_to_string(f).ok())
            .map(|text| {
                text.lines()
                    .skip(1)
                    .filter(|line| {
                        let fields: Vec<&str> = line.split_whitespace().collect();
                        fields.len() > 3
                            && fields[1].ends_with(&format!(":{port:04X}"))
                            && fields[3] == SYN_RECV
                    })
                    .count()
            })
            .sum()
    }

    /// Every probe `l` received was half-open and reset: nothing to accept (the
    /// handshake's last ACK never came), and no request left half-open (the reset
    /// arrived; a probe that went silent would leave one for a minute).
    async fn assert_half_open_and_reset(l: &std::net::TcpListener) {
        l.set_nonblocking(true).unwrap();
        let nothing_to_accept = || {
            let accepted = l.accept();
            assert!(
                matches!(&accepted, Err(e) if e.kind() == io::ErrorKind::WouldBlock),
                "a probe completed the handshake: {accepted:?}"
            );
        };
        nothing_to_accept();
        let port = l.local_addr().unwrap().port();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(1);
        while half_open_requests(port) > 0 {
            assert!(
                tokio::time::Instant::now() < deadline,
                "a probe's handshake was left half-open, not reset"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        // Past the 200 ms an unreset probe's held-back ACK would take.
        tokio::time::sleep(Duration::from_millis(300)).await;
        nothing_to_accept();
    }

    #[tokio::test]
    async fn tcp_probe_passes_on_the_syn_ack_and_resets_without_completing() {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let target = tcp_target(l.local_addr().unwrap(), Duration::from_secs(5));
        Prober::default().probe(&target).await.unwrap();
        assert_half_open_and_reset(&l).await;
    }

    #[tokio::test]
    async fn a_silent_half_open_handshake_is_seen_by_the_check_above() {
        // The control for `assert_half_open_and_reset`: a client that stops after
        // the SYN-ACK, sending neither the ACK nor a reset, leaves the request
        // half-open on the listener. (Its ACK is only held back for 200 ms: a
        // test thread descheduled that long tries again.)
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        let seen = (0..5).any(|_| {
            let quiet = tcp_socket(addr).unwrap();
            let _ = quiet.connect(&addr.into());
            half_open_requests(addr.port()) > 0
        });
        assert!(seen, "a silent half-open handshake was not seen");
    }

    #[tokio::test]
    async fn tcp_probe_to_a_closed_port_fails() {
        let addr = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap();
        let got = Prober::default()
            .probe(&tcp_target(addr, Duration::from_secs(5)))
            .await;
        assert!(matches!(got, Err(ProbeError::Connect(_))), "{got:?}");
    }

    #[tokio::test]
    async fn tcp_probe_still_in_progress_waits_then_times_out() {
        let (_l, addr, _fill) = full_listener();
        let got = Prober::default()
            .probe(&tcp_target(addr, Duration::from_millis(200)))
            .await;
        assert!(matches!(got, Err(ProbeError::Timeout(_))), "{got:?}");
    }

    #[tokio::test]
    async fn tcp_probe_still_in_progress_passes_when_the_handshake_ends() {
        let (l, addr, _fill) = full_listener();
        l.set_nonblocking(true).unwrap();
        let done = Arc::new(AtomicBool::new(false));
        let accepting = std::thread::spawn({
            let done = Arc::clone(&done);
            move || {
                // Late enough for the probe's first SYN to be dropped (it starts
                // at once); then room in the queue for its retransmission. How
                // many handshakes complete on our side varies (an ACK dropped on
                // overflow leaves the client connected and us not): accept
                // whatever comes until the probe is done.
                std::thread::sleep(Duration::from_millis(100));
                while !done.load(Ordering::Relaxed) {
                    if l.accept().is_err() {
                        std::thread::sleep(Duration::from_millis(10));
                    }
                }
            }
        });
        let got = Prober::default()
            .probe(&tcp_target(addr, Duration::from_secs(10)))
            .await;
        done.store(true, Ordering::Relaxed);
        accepting.join().unwrap();
        got.unwrap();
    }

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
