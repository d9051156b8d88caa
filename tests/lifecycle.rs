//! The binary's lifecycle: start failures, SIGTERM drain.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};
use support::process::{Edgelb, Options};
use support::*;

fn lb_file(backend: SocketAddr, port: u16, global: &str) -> String {
    config_text(&[("b1", backend, 100)], global, "")
        .replace("listener_port = 80", &format!("listener_port = {port}"))
}

fn echo_once(stream: &mut TcpStream, bytes: &[u8]) {
    stream.write_all(bytes).unwrap();
    let mut got = vec![0; bytes.len()];
    stream.read_exact(&mut got).unwrap();
    assert_eq!(got, bytes);
}

#[test]
fn sigterm_drains_open_connections_and_refuses_new_ones() {
    let (_rt, backend) = background_echo();
    let port = free_port();
    let mut proc = Edgelb::start(
        &lb_file(backend, port, "drain_timeout = 30"),
        Options::default(),
    );
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    proc.wait_listening(addr);
    let mut open = TcpStream::connect(addr).unwrap();
    open.set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    echo_once(&mut open, b"before");
    proc.signal(libc::SIGTERM);
    // New connections are refused once the listening socket is closed...
    let deadline = Instant::now() + Duration::from_secs(20);
    while TcpStream::connect(addr).is_ok() {
        assert!(Instant::now() < deadline, "still accepting after SIGTERM");
        std::thread::sleep(Duration::from_millis(10));
    }
    // ...while the open one keeps flowing.
    echo_once(&mut open, b"during the drain");
    assert!(proc.is_running(), "exited with a connection open");
    drop(open);
    let status = proc.wait_exit(Duration::from_secs(20));
    assert_eq!(status.code(), Some(0));
}

#[test]
fn drain_timeout_closes_what_is_left_and_exits_0() {
    let (_rt, backend) = background_echo();
    let port = free_port();
    let mut proc = Edgelb::start(
        &lb_file(backend, port, "drain_timeout = 1"),
        Options::default(),
    );
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    proc.wait_listening(addr);
    let mut open = TcpStream::connect(addr).unwrap();
    open.set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    echo_once(&mut open, b"x");
    proc.signal(libc::SIGINT);
    let status = proc.wait_exit(Duration::from_secs(20));
    assert_eq!(status.code(), Some(0));
    let mut buf = [0u8; 1];
    assert!(
        matches!(open.read(&mut buf), Ok(0) | Err(_)),
        "the connection was cut"
    );
    let log = proc.log_text();
    assert!(log.contains("drain timeout reached"), "{log}");
    assert!(
        !log.contains('\x1b'),
        "colour codes in a log that is not a terminal: {log}"
    );
}

#[test]
fn a_port_in_use_exits_1_with_a_one_line_reason_naming_the_listener() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port();
    let mut proc = Edgelb::start(&lb_file(refused_addr(), port, ""), Options::default());
    let status = proc.wait_exit(Duration::from_secs(20));
    assert_eq!(status.code(), Some(1));
    let log = proc.log_text();
    let reason: Vec<&str> = log.lines().filter(|l| l.starts_with("edgelb:")).collect();
    assert_eq!(reason.len(), 1, "{log}");
    assert!(
        reason[0].contains(&format!("listener lb:{port} cannot bind 127.0.0.1:{port}")),
        "{log}"
    );
}

#[test]
fn run_with_an_invalid_file_exits_2_and_binds_nothing() {
    let port = free_port();
    let text =
        lb_file(refused_addr(), port, "").replace("[global]", "[global]\nconnect_retries = 99");
    let mut proc = Edgelb::start(&text, Options::default());
    let status = proc.wait_exit(Duration::from_secs(20));
    assert_eq!(status.code(), Some(2));
    assert!(proc.log_text().contains("InvalidConnectRetries"));
    assert!(TcpStream::connect(("127.0.0.1", port)).is_err());
}

#[test]
fn demo_shows_the_rotation_over_three_backends() {
    use std::io::BufRead;
    let mut proc = Edgelb::demo(Options::default());
    let stdout = proc.take_stdout();
    let mut lines = std::io::BufReader::new(stdout).lines();
    let first = lines.next().unwrap().unwrap();
    // "edgelb demo: three backends behind 127.0.0.1:PORT (scheduler rr)"
    let addr: SocketAddr = first
        .split_whitespace()
        .find(|w| w.starts_with("127.0.0.1:"))
        .unwrap()
        .parse()
        .unwrap();
    let mut seen = Vec::new();
    for _ in 0..3 {
        let (_, _, reply) = http_get_blocking(addr, "/");
        let body = reply.lines().last().unwrap_or("").to_string();
        seen.push(body);
    }
    seen.sort();
    assert_eq!(
        seen,
        [
            "hello from backend-1",
            "hello from backend-2",
            "hello from backend-3"
        ]
    );
    proc.signal(libc::SIGTERM);
    assert_eq!(proc.wait_exit(Duration::from_secs(20)).code(), Some(0));
}

/// The binary with `drain_delay` (and an admin server), after SIGTERM: `/healthz`
/// says 503 while the listener still proxies. Returns the process, the listener
/// and the admin server, and when SIGTERM was sent.
fn sigterm_with_delay(backend: SocketAddr, delay: u64) -> (Edgelb, SocketAddr, Instant) {
    let text = config_text(
        &[("b1", backend, 100)],
        &format!("drain_delay = {delay}\ndrain_timeout = 30"),
        "",
    );
    let (proc, addr, admin) = Edgelb::start_on_free_ports(&text, Some(""), None);
    let admin = admin.unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while http_get_blocking(admin, "/healthz").0 != 200 {
        assert!(Instant::now() < deadline, "never ready");
        std::thread::sleep(Duration::from_millis(20));
    }
    proc.signal(libc::SIGTERM);
    let sent = Instant::now();
    // 503 first...
    let deadline = Instant::now() + Duration::from_secs(5);
    while http_get_blocking(admin, "/healthz").0 != 503 {
        assert!(
            Instant::now() < deadline,
            "/healthz still 200 after SIGTERM"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    // ...while new connections are still accepted and proxied.
    let mut during = TcpStream::connect(addr).expect("accepting in the drain delay");
    during
        .set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    echo_once(&mut during, b"in the delay");
    (proc, addr, sent)
}

/// Waits until `addr` refuses; returns when that was.
fn refused_at(addr: SocketAddr, within: Duration) -> Instant {
    let deadline = Instant::now() + within;
    while TcpStream::connect(addr).is_ok() {
        assert!(Instant::now() < deadline, "still accepting");
        std::thread::sleep(Duration::from_millis(10));
    }
    Instant::now()
}

#[test]
fn sigterm_with_drain_delay_is_503_first_accepts_through_the_delay_then_refuses() {
    let (_rt, backend) = background_echo();
    let (mut proc, addr, sent) = sigterm_with_delay(backend, 2);
    let refused = refused_at(addr, Duration::from_secs(20));
    assert!(
        refused - sent >= Duration::from_millis(1_900),
        "refused {:?} after SIGTERM, inside the 2 s delay",
        refused - sent
    );
    assert_eq!(proc.wait_exit(Duration::from_secs(20)).code(), Some(0));
    let log = proc.log_text();
    assert!(
        log.contains("listeners accept until the delay ends"),
        "{log}"
    );
}

#[test]
fn a_second_sigterm_ends_the_drain_delay_early() {
    let (_rt, backend) = background_echo();
    let (mut proc, addr, _) = sigterm_with_delay(backend, 300);
    // A SIGTERM during the delay does not start another drain; it ends the delay.
    proc.signal(libc::SIGTERM);
    refused_at(addr, Duration::from_secs(10));
    assert_eq!(proc.wait_exit(Duration::from_secs(20)).code(), Some(0));
    assert!(proc.log_text().contains("drain delay ended early"));
}
