//! The half-open TCP probe: SYN, SYN-ACK, reset, on a socket kept between probes.

use std::io;
use std::net::SocketAddr;
use std::time::Duration;
use tokio::io::unix::AsyncFd;
use tokio::io::Interest;

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
pub(super) fn begin_handshake(
    socket: &socket2::Socket,
    addr: &socket2::SockAddr,
) -> io::Result<bool> {
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
pub(super) async fn wait_handshake(
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

/// A zero linger never blocks the thread on close (the reason tokio deprecates
/// SO_LINGER): close sends a RST at once. A failure only costs a TIME_WAIT.
pub(super) fn linger_zero(socket: socket2::SockRef<'_>, addr: SocketAddr) {
    if let Err(error) = socket.set_linger(Some(Duration::ZERO)) {
        tracing::debug!(backend = %addr, %error, "health probe: cannot set SO_LINGER 0");
    }
}

/// What a TCP probe does on the wire; the helpers serve the `Prober` tests too.
#[cfg(test)]
pub(super) mod tests {
    use super::*;
    use crate::health::probe::{ProbeError, Prober};
    use crate::health::{Probe, Target};
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Arc;

    pub(in crate::health::probe) fn tcp_target(addr: SocketAddr, timeout: Duration) -> Target {
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
    pub(in crate::health::probe) async fn assert_half_open_and_reset(l: &std::net::TcpListener) {
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
}
