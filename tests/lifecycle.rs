//! The binary's lifecycle: start failures, SIGTERM drain.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use support::*;

struct Proc {
    child: Child,
    config: std::path::PathBuf,
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_file(&self.config);
    }
}

fn spawn(text: &str, name: &str) -> Proc {
    let config =
        std::env::temp_dir().join(format!("edgelb-life-{}-{name}.toml", std::process::id()));
    std::fs::write(&config, text).unwrap();
    let child = Command::new(env!("CARGO_BIN_EXE_edgelb"))
        .args(["run", "--config", config.to_str().unwrap()])
        .env("RUST_LOG", "info")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    Proc { child, config }
}

fn signal(proc: &Proc, sig: i32) {
    let pid = i32::try_from(proc.child.id()).unwrap();
    // SAFETY: kill(2) on our own child.
    assert_eq!(unsafe { libc::kill(pid, sig) }, 0);
}

/// Polls until `addr` accepts connections (readiness, not a fixed sleep).
fn wait_listening(addr: SocketAddr) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while TcpStream::connect(addr).is_err() {
        assert!(Instant::now() < deadline, "{addr} never started listening");
        std::thread::sleep(Duration::from_millis(10));
    }
}

fn wait_exit(proc: &mut Proc, within: Duration) -> std::process::ExitStatus {
    let deadline = Instant::now() + within;
    loop {
        if let Some(status) = proc.child.try_wait().unwrap() {
            return status;
        }
        assert!(Instant::now() < deadline, "edgelb did not exit");
        std::thread::sleep(Duration::from_millis(10));
    }
}

fn stderr_of(proc: &mut Proc) -> String {
    let mut s = String::new();
    proc.child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut s)
        .unwrap();
    s
}

fn lb_file(backend: SocketAddr, port: u16, global: &str) -> String {
    config_text(&[("b1", backend, 100)], global, "")
        .replace("listener_port = 80", &format!("listener_port = {port}"))
}

fn echo_thread_backend() -> SocketAddr {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    std::thread::spawn(move || {
        for stream in listener.incoming().flatten() {
            std::thread::spawn(move || {
                let mut s = stream;
                let mut buf = [0u8; 4096];
                while let Ok(n) = s.read(&mut buf) {
                    if n == 0 || s.write_all(&buf[..n]).is_err() {
                        break;
                    }
                }
            });
        }
    });
    addr
}

fn echo_once(stream: &mut TcpStream, bytes: &[u8]) {
    stream.write_all(bytes).unwrap();
    let mut got = vec![0; bytes.len()];
    stream.read_exact(&mut got).unwrap();
    assert_eq!(got, bytes);
}

#[test]
fn sigterm_drains_open_connections_and_refuses_new_ones() {
    let backend = echo_thread_backend();
    let port = free_port();
    let mut proc = spawn(&lb_file(backend, port, "drain_timeout = 30"), "drain");
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    wait_listening(addr);
    let mut open = TcpStream::connect(addr).unwrap();
    open.set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    echo_once(&mut open, b"before");
    signal(&proc, libc::SIGTERM);
    // New connections are refused once the listening socket is closed...
    let deadline = Instant::now() + Duration::from_secs(20);
    while TcpStream::connect(addr).is_ok() {
        assert!(Instant::now() < deadline, "still accepting after SIGTERM");
        std::thread::sleep(Duration::from_millis(10));
    }
    // ...while the open one keeps flowing.
    echo_once(&mut open, b"during the drain");
    assert!(
        proc.child.try_wait().unwrap().is_none(),
        "exited with a connection open"
    );
    drop(open);
    let status = wait_exit(&mut proc, Duration::from_secs(20));
    assert_eq!(status.code(), Some(0));
}

#[test]
fn drain_timeout_closes_what_is_left_and_exits_0() {
    let backend = echo_thread_backend();
    let port = free_port();
    let mut proc = spawn(
        &lb_file(backend, port, "drain_timeout = 1"),
        "drain-timeout",
    );
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    wait_listening(addr);
    let mut open = TcpStream::connect(addr).unwrap();
    open.set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    echo_once(&mut open, b"x");
    signal(&proc, libc::SIGINT);
    let status = wait_exit(&mut proc, Duration::from_secs(20));
    assert_eq!(status.code(), Some(0));
    let mut buf = [0u8; 1];
    assert!(
        matches!(open.read(&mut buf), Ok(0) | Err(_)),
        "the connection was cut"
    );
    let log = stderr_of(&mut proc);
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
    let mut proc = spawn(&lb_file(refused_addr(), port, ""), "in-use");
    let status = wait_exit(&mut proc, Duration::from_secs(20));
    assert_eq!(status.code(), Some(1));
    let log = stderr_of(&mut proc);
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
    let mut proc = spawn(&text, "invalid");
    let status = wait_exit(&mut proc, Duration::from_secs(20));
    assert_eq!(status.code(), Some(2));
    assert!(stderr_of(&mut proc).contains("InvalidConnectRetries"));
    assert!(TcpStream::connect(("127.0.0.1", port)).is_err());
}

#[test]
fn demo_shows_the_rotation_over_three_backends() {
    use std::io::BufRead;
    let mut child = Command::new(env!("CARGO_BIN_EXE_edgelb"))
        .arg("demo")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let mut lines = std::io::BufReader::new(stdout).lines();
    let first = lines.next().unwrap().unwrap();
    // "edgelb demo: three backends behind 127.0.0.1:PORT (scheduler rr)"
    let addr: SocketAddr = first
        .split_whitespace()
        .find(|w| w.starts_with("127.0.0.1:"))
        .unwrap()
        .parse()
        .unwrap();
    let mut proc = Proc {
        child,
        config: std::env::temp_dir().join("edgelb-demo-none"),
    };
    let mut seen = Vec::new();
    for _ in 0..3 {
        let mut s = TcpStream::connect(addr).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
        s.write_all(b"GET / HTTP/1.1\r\nHost: demo\r\nConnection: close\r\n\r\n")
            .unwrap();
        let mut reply = String::new();
        s.read_to_string(&mut reply).unwrap();
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
    signal(&proc, libc::SIGTERM);
    assert_eq!(
        wait_exit(&mut proc, Duration::from_secs(20)).code(),
        Some(0)
    );
}
