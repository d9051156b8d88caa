//! The access log of the real binary: connections cut by the drain are logged
//! `drain` before the process exits, SIGUSR1 under load moves the log to a new
//! file without losing or repeating a line, `stderr` as the target, and a file
//! that cannot be opened is a start failure.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::collections::HashSet;
use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use support::process::{Edgelb, Options};
use support::*;

fn lines_of(path: &Path) -> Vec<String> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .map(str::to_string)
        .collect()
}

/// Waits (up to 20 s) until `cond` holds.
fn wait_for(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// One connection that sends `n` bytes, half-closes and reads the echo to EOF.
fn echo_n(addr: SocketAddr, n: usize) {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(REPLY_WITHIN)).unwrap();
    s.write_all(&vec![b'x'; n]).unwrap();
    s.shutdown(Shutdown::Write).unwrap();
    let mut back = Vec::new();
    s.read_to_end(&mut back).unwrap();
    assert_eq!(back.len(), n);
}

/// A connection left open after "hello" went through and came back.
fn open_with_hello(addr: SocketAddr) -> TcpStream {
    let mut open = TcpStream::connect(addr).unwrap();
    open.set_read_timeout(Some(REPLY_WITHIN)).unwrap();
    open.write_all(b"hello").unwrap();
    let mut back = [0u8; 5];
    open.read_exact(&mut back).unwrap();
    open
}

#[test]
fn connections_cut_by_the_drain_are_logged_before_the_exit() {
    let (_rt, backend) = background_echo();
    let dir = temp_dir("access-drain");
    let path = dir.join("access.log");
    let global = format!("drain_timeout = 1\naccess_log = \"{}\"", path.display());
    let text = config_text(&[("b1", backend, 100)], &global, "");
    let (mut proc, addr, _) = Edgelb::start_on_free_ports(&text, None, None);
    echo_n(addr, 3);
    let open = open_with_hello(addr);
    proc.signal(libc::SIGTERM);
    assert_eq!(proc.wait_exit(Duration::from_secs(20)).code(), Some(0));
    let lines = lines_of(&path);
    // wait_listening's probe connection, the echo, the one cut.
    assert_eq!(lines.len(), 3, "{lines:?}");
    assert!(
        lines.iter().any(|l| l.ends_with(" 3 3 client_closed")),
        "{lines:?}"
    );
    let cut = lines.last().unwrap();
    assert!(
        cut.contains(&format!(" {} ", open.local_addr().unwrap())),
        "{cut}"
    );
    assert!(cut.ends_with(" 5 5 drain"), "{cut}");
    let duration: u64 = cut.split(' ').nth(6).unwrap().parse().unwrap();
    assert!(duration >= 1000, "cut at the 1 s deadline: {cut}");
}

#[test]
fn sigusr1_under_load_moves_the_log_to_a_new_file_and_loses_no_line() {
    let (_rt, backend) = background_echo();
    let dir = temp_dir("access-rotate");
    let (path, rotated) = (dir.join("access.log"), dir.join("access.log.1"));
    let global = format!("access_log = \"{}\"", path.display());
    let text = config_text(&[("b1", backend, 100)], &global, "");
    let (mut proc, addr, _) = Edgelb::start_on_free_ports(&text, None, None);
    // Connection k sends k bytes: bytes_in names the connection in the log
    // (wait_listening's probe sent none).
    let next = Arc::new(AtomicUsize::new(1));
    let stop = Arc::new(AtomicBool::new(false));
    let clients: Vec<_> = (0..4)
        .map(|_| {
            let (next, stop) = (next.clone(), stop.clone());
            std::thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    echo_n(addr, next.fetch_add(1, Ordering::Relaxed));
                }
            })
        })
        .collect();
    wait_for("lines before the rotation", || lines_of(&path).len() >= 300);
    std::fs::rename(&path, &rotated).unwrap();
    proc.signal(libc::SIGUSR1);
    wait_for("the new file", || path.exists());
    // Connections that start from here end after the reopen.
    let first_after = next.load(Ordering::Relaxed);
    wait_for("lines after the rotation", || lines_of(&path).len() >= 300);
    stop.store(true, Ordering::Relaxed);
    for client in clients {
        client.join().unwrap();
    }
    let total = next.load(Ordering::Relaxed) - 1;
    wait_for("one line per connection", || {
        lines_of(&rotated).len() + lines_of(&path).len() > total
    });
    let bytes_in = |line: &String| -> usize {
        assert!(line.ends_with(" client_closed"), "{line}");
        line.split(' ').nth(7).unwrap().parse().unwrap()
    };
    let old: Vec<usize> = lines_of(&rotated).iter().map(bytes_in).collect();
    let new: Vec<usize> = lines_of(&path).iter().map(bytes_in).collect();
    assert_eq!(
        old.iter().filter(|&&k| k == 0).count(),
        1,
        "the probe's line"
    );
    let old: Vec<usize> = old.into_iter().filter(|&k| k > 0).collect();
    let all: HashSet<usize> = old.iter().chain(&new).copied().collect();
    assert_eq!(old.len() + new.len(), total, "a line lost or repeated");
    assert_eq!(all, (1..=total).collect::<HashSet<_>>());
    assert!(
        old.iter().all(|&k| k < first_after),
        "a connection begun after the new file appeared was written to the old one"
    );
    assert!(proc.log_text().contains("access log reopened"));
    proc.signal(libc::SIGTERM);
    assert_eq!(proc.wait_exit(Duration::from_secs(20)).code(), Some(0));
}

#[test]
fn sigusr1_during_the_drain_reopens_the_file() {
    let (_rt, backend) = background_echo();
    let dir = temp_dir("access-drain-rotate");
    let (path, rotated) = (dir.join("access.log"), dir.join("access.log.1"));
    let global = format!("drain_timeout = 60\naccess_log = \"{}\"", path.display());
    let text = config_text(&[("b1", backend, 100)], &global, "");
    let (mut proc, addr, _) = Edgelb::start_on_free_ports(&text, None, None);
    // wait_listening's probe, written before the rotation.
    wait_for("the probe's line", || lines_of(&path).len() == 1);
    let mut open = open_with_hello(addr);
    proc.signal(libc::SIGTERM);
    wait_for("the drain", || {
        proc.log_text().contains("stopped listening")
    });
    std::fs::rename(&path, &rotated).unwrap();
    proc.signal(libc::SIGUSR1);
    wait_for("the new file", || path.exists());
    let client = open.local_addr().unwrap();
    open.shutdown(Shutdown::Write).unwrap();
    let mut rest = Vec::new();
    open.read_to_end(&mut rest).unwrap();
    assert_eq!(proc.wait_exit(Duration::from_secs(20)).code(), Some(0));
    assert_eq!(lines_of(&rotated).len(), 1, "{:?}", lines_of(&rotated));
    let lines = lines_of(&path);
    assert_eq!(lines.len(), 1, "{lines:?}");
    assert!(lines[0].contains(&format!(" {client} ")), "{lines:?}");
    assert!(lines[0].ends_with(" 5 5 client_closed"), "{lines:?}");
}

#[test]
fn stderr_gets_the_lines_when_it_is_the_target() {
    let (_rt, backend) = background_echo();
    let global = "access_log = \"stderr\"\naccess_log_format = \"json\"";
    let text = config_text(&[("b1", backend, 100)], global, "");
    let (mut proc, addr, _) = Edgelb::start_on_free_ports(&text, None, None);
    echo_n(addr, 42);
    proc.signal(libc::SIGTERM);
    assert_eq!(proc.wait_exit(Duration::from_secs(20)).code(), Some(0));
    let log = proc.log_text();
    let line = log
        .lines()
        .find(|l| l.contains("\"bytes_in\":42"))
        .unwrap_or_else(|| panic!("no line for the connection: {log}"));
    let v: serde_json::Value = serde_json::from_str(line).unwrap();
    assert_eq!(
        (v["bytes_out"].as_u64(), v["end"].as_str()),
        (Some(42), Some("client_closed"))
    );
}

#[test]
fn a_file_that_cannot_be_opened_at_start_exits_1_with_a_one_line_reason() {
    let dir = temp_dir("access-start");
    let dangling = dir.join("access.log");
    std::os::unix::fs::symlink("/nonexistent-edgelb/access.log", &dangling).unwrap();
    let global = format!("access_log = \"{}\"", dangling.display());
    let text = config_text(&[("b1", refused_addr(), 100)], &global, "").replace(
        "listener_port = 80",
        &format!("listener_port = {}", free_port()),
    );
    let mut proc = Edgelb::start(&text, Options::default());
    assert_eq!(proc.wait_exit(Duration::from_secs(20)).code(), Some(1));
    let log = proc.log_text();
    let reason: Vec<&str> = log.lines().filter(|l| l.starts_with("edgelb:")).collect();
    assert_eq!(reason.len(), 1, "{log}");
    assert!(
        reason[0].contains(&format!(
            "cannot open the access log {}",
            dangling.display()
        )),
        "{log}"
    );
}

/// config/logrotate.conf, run by logrotate itself against the binary, with the
/// log path and the service's signal pointed at this test's process.
#[test]
fn the_shipped_logrotate_config_rotates_and_edgelb_reopens() {
    let (_rt, backend) = background_echo();
    let dir = temp_dir("access-logrotate");
    let path = dir.join("access.log");
    let global = format!("access_log = \"{}\"", path.display());
    let text = config_text(&[("b1", backend, 100)], &global, "");
    let (mut proc, addr, _) = Edgelb::start_on_free_ports(&text, None, None);
    echo_n(addr, 7);
    wait_for("two lines", || lines_of(&path).len() == 2);
    let shipped = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/config/logrotate.conf"
    ))
    .unwrap();
    let signal = "systemctl kill -s USR1 edgelb.service";
    assert!(shipped.contains(signal) && shipped.contains("/var/log/edgelb/access.log {"));
    let conf = dir.join("logrotate.conf");
    let rewritten = shipped
        .replace("/var/log/edgelb/access.log", path.to_str().unwrap())
        .replace(signal, &format!("kill -USR1 {}", proc.pid()));
    std::fs::write(&conf, rewritten).unwrap();
    let out = std::process::Command::new("/usr/sbin/logrotate")
        .arg("--force")
        .arg("--state")
        .arg(dir.join("logrotate.state"))
        .arg(&conf)
        .output()
        .expect("logrotate (scripts/test.sh installs it)");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let rotated = dir.join("access.log.1");
    assert_eq!(lines_of(&rotated).len(), 2, "delaycompress: kept as it is");
    wait_for("the reopened file", || path.exists());
    echo_n(addr, 9);
    wait_for("a line in the new file", || lines_of(&path).len() == 1);
    assert!(lines_of(&path)[0].ends_with(" 9 9 client_closed"));
    assert_eq!(lines_of(&rotated).len(), 2);
    proc.signal(libc::SIGTERM);
    assert_eq!(proc.wait_exit(Duration::from_secs(20)).code(), Some(0));
}
