//! The access log on the real listener (loopback): every `end` a connection can
//! have in one process, each line checked against the connection's real client,
//! backend and bytes (and the byte counters), in text and JSON; a reload that
//! changes the target and format. The drain and SIGUSR1 are in
//! `access_log_binary.rs`.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use edgelb::access_log::rfc3339_millis;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// A fresh directory and the log file in it.
fn log_path() -> PathBuf {
    temp_dir("access").join("access.log")
}

fn global(path: &Path, format: &str, extra: &str) -> String {
    format!(
        "access_log = \"{}\"\naccess_log_format = \"{format}\"\n{extra}",
        path.display()
    )
}

/// Waits (in real time, also on a paused clock) until `path` holds `n` lines.
async fn lines(path: &Path, n: usize) -> Vec<String> {
    for _ in 0..2000 {
        let text = std::fs::read_to_string(path).unwrap_or_default();
        let got: Vec<String> = text.lines().map(str::to_string).collect();
        if got.len() >= n {
            assert_eq!(got.len(), n, "more lines than connections: {got:?}");
            assert!(text.ends_with('\n'));
            return got;
        }
        // A real sleep that does not let a paused clock run ahead.
        tokio::task::spawn_blocking(|| std::thread::sleep(Duration::from_millis(5)))
            .await
            .unwrap();
    }
    panic!("{} never held {n} lines", path.display());
}

fn now() -> String {
    let ms = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis();
    let mut out = Vec::new();
    rfc3339_millis(ms as u64, &mut out);
    String::from_utf8(out).unwrap()
}

/// The ten text fields, with `time` within `[before, after]` (fixed-width RFC 3339
/// compares as text).
fn text_fields(line: &str, before: &str, after: &str) -> Vec<String> {
    let fields: Vec<String> = line.split(' ').map(str::to_string).collect();
    assert_eq!(fields.len(), 10, "{line}");
    assert!(fields[0].len() == 24 && fields[0].ends_with('Z'), "{line}");
    assert!(
        before <= fields[0].as_str() && fields[0].as_str() <= after,
        "{line}"
    );
    fields
}

/// A backend that writes `hello` and closes its side at once, then waits for
/// the client's FIN: its FIN comes first.
async fn closing_backend() -> Backend {
    serve(|mut s: TcpStream| async move {
        s.write_all(b"hello").await.unwrap();
        s.shutdown().await.unwrap();
        let _ = read_to_end(&mut s).await;
    })
    .await
}

#[tokio::test]
async fn text_lines_carry_the_client_backend_timings_and_the_counted_bytes() {
    let path = log_path();
    let (named, closing) = (named_backend("b1").await, closing_backend().await);
    let lb = start_lb(&config_text(
        &[("b1", named.addr, 100)],
        &global(&path, "text", ""),
        &health_sink().await,
    ));
    let addr = lb.addr("lb", 80);
    let before = now();
    let started = std::time::Instant::now();
    let payload = random_bytes(100_000, 7);
    let mut client = TcpStream::connect(addr).await.unwrap();
    let client_addr = client.local_addr().unwrap();
    let (mut r, mut w) = client.split();
    let send = async {
        w.write_all(&payload).await.unwrap();
        w.shutdown().await.unwrap();
    };
    let mut echoed = Vec::new();
    let ((), n) = tokio::join!(send, r.read_to_end(&mut echoed));
    n.unwrap();
    assert_eq!(echoed.len(), 2 + payload.len());
    let got = lines(&path, 1).await;
    let wall = started.elapsed().as_millis() as u64;
    let f = text_fields(&got[0], &before, &now());
    let expected = [
        client_addr.to_string(),
        "lb:80".into(),
        "b1".into(),
        named.addr.to_string(),
    ];
    assert_eq!(f[1..5], expected, "{}", got[0]);
    let (connect_ms, duration_ms): (u64, u64) = (f[5].parse().unwrap(), f[6].parse().unwrap());
    assert!(
        connect_ms <= duration_ms && duration_ms <= wall,
        "{}",
        got[0]
    );
    assert_eq!(f[7..], ["100000", "100002", "client_closed"], "{}", got[0]);
    // The bytes are what the counters got from this, the only connection.
    let listener = &lb.server.listeners()[0];
    assert_eq!(listener.metrics.bytes_in.get(), 100_000);
    assert_eq!(listener.metrics.bytes_out.get(), 100_002);

    // The backend closes first: backend_closed, on the same log after a reload
    // that points the listener at it.
    lb.server
        .apply(&parse(&config_text(
            &[("b2", closing.addr, 100)],
            &global(&path, "text", ""),
            &health_sink().await,
        )))
        .unwrap();
    let mut client = TcpStream::connect(addr).await.unwrap();
    client.write_all(b"ping").await.unwrap();
    assert_eq!(read_to_end(&mut client).await, b"hello");
    drop(client);
    let got = lines(&path, 2).await;
    let f = text_fields(&got[1], &before, &now());
    assert_eq!(f[3..5], ["b2".to_string(), closing.addr.to_string()]);
    assert_eq!(f[7..], ["4", "5", "backend_closed"], "{}", got[1]);
}

#[tokio::test]
async fn json_lines_parse_with_typed_numbers_and_a_reload_changes_target_and_format() {
    let (path, moved) = (log_path(), log_path());
    let backend = named_backend("b1").await;
    let sink = health_sink().await;
    let lb = start_lb(&config_text(
        &[("b1", backend.addr, 100)],
        &global(&path, "json", ""),
        &sink,
    ));
    let addr = lb.addr("lb", 80);
    let echoed = echo_through(addr, b"json please").await;
    assert_eq!(echoed, b"b1json please");
    let got = lines(&path, 1).await;
    let v: serde_json::Value = serde_json::from_str(&got[0]).unwrap();
    assert_eq!(v["listener"], "lb:80");
    assert_eq!(v["server_id"], "b1");
    assert_eq!(v["backend"], backend.addr.to_string());
    assert!(v["client"].as_str().unwrap().starts_with("127.0.0.1:"));
    assert!(v["connect_ms"].is_u64() && v["duration_ms"].is_u64());
    assert_eq!(v["bytes_in"].as_u64(), Some(11));
    assert_eq!(v["bytes_out"].as_u64(), Some(13));
    assert_eq!(v["end"], "client_closed");

    // A reload to a file that cannot be opened is refused and changes nothing.
    let unopenable = temp_dir("access").join("dangling");
    std::os::unix::fs::symlink("/nonexistent-edgelb/access.log", &unopenable).unwrap();
    let bad = parse(&config_text(
        &[("b1", backend.addr, 100)],
        &global(&unopenable, "text", ""),
        &sink,
    ));
    let err = lb.server.apply(&bad).unwrap_err();
    assert!(
        err.to_string().contains("cannot open the access log"),
        "{err}"
    );
    echo_through(addr, b"x").await;
    assert_eq!(lines(&path, 2).await.len(), 2);

    // Another file, text: new lines go there only; off: none at all.
    let text = config_text(
        &[("b1", backend.addr, 100)],
        &global(&moved, "text", ""),
        &sink,
    );
    lb.server.apply(&parse(&text)).unwrap();
    echo_through(addr, b"xyz").await;
    let got = lines(&moved, 1).await;
    assert!(got[0].ends_with(" 3 5 client_closed"), "{}", got[0]);
    let off = config_text(&[("b1", backend.addr, 100)], "", &sink);
    lb.server.apply(&parse(&off)).unwrap();
    echo_through(addr, b"unlogged").await;
    lb.server.apply(&parse(&text)).unwrap();
    echo_through(addr, b"logged").await;
    let got = lines(&moved, 2).await;
    assert!(got[1].ends_with(" 6 8 client_closed"), "{}", got[1]);
    assert_eq!(lines(&path, 2).await.len(), 2);
}

/// Connects and waits for the end of what the balancer sends back.
async fn refused(addr: SocketAddr) {
    let mut client = TcpStream::connect(addr).await.unwrap();
    let mut buf = [0u8; 1];
    let n = tokio::time::timeout(REPLY_WITHIN, client.read(&mut buf)).await;
    assert!(matches!(n, Ok(Ok(0) | Err(_))), "{n:?}");
}

#[tokio::test]
async fn connections_that_reach_no_backend_are_logged_with_their_reason() {
    let path = log_path();
    let sink = health_sink().await;
    // No backend with weight > 0.
    let lb = start_lb(&config_text(
        &[("b1", refused_addr(), 0)],
        &global(&path, "text", ""),
        &sink,
    ));
    refused(lb.addr("lb", 80)).await;
    let got = lines(&path, 1).await;
    let f = text_fields(&got[0], "", "9");
    assert_eq!(
        f[3..],
        ["-", "-", "-", f[6].as_str(), "0", "0", "no_backend"]
    );

    // Every connect refused: the last backend tried, and the time the tries took.
    let (a, b) = (refused_addr(), refused_addr());
    let lb = start_lb(&config_text(
        &[("a", a, 100), ("b", b, 100)],
        &global(&path, "text", "connect_retries = 1"),
        &sink,
    ));
    refused(lb.addr("lb", 80)).await;
    let got = lines(&path, 2).await;
    let f = text_fields(&got[1], "", "9");
    let last = if f[3] == "a" { a } else { b };
    assert_eq!(f[4], last.to_string(), "{}", got[1]);
    assert!(f[5].parse::<u64>().is_ok(), "{}", got[1]);
    assert_eq!(f[7..], ["0", "0", "connect_failed"], "{}", got[1]);

    // max_connections = 1 and one open: the next is refused at accept.
    let backend = echo_backend().await;
    let lb = start_lb(&config_text(
        &[("b1", backend.addr, 100)],
        &global(&path, "text", "max_connections = 1"),
        &sink,
    ));
    let addr = lb.addr("lb", 80);
    let mut open = TcpStream::connect(addr).await.unwrap();
    round_trip(&mut open, b"hold").await;
    let mut second = TcpStream::connect(addr).await.unwrap();
    let second_addr = second.local_addr().unwrap();
    assert!(read_to_end(&mut second).await.is_empty());
    let got = lines(&path, 3).await;
    let f = text_fields(&got[2], "", "9");
    let expected = [
        second_addr.to_string(),
        "lb:80".into(),
        "-".into(),
        "-".into(),
    ];
    assert_eq!(f[1..5], expected);
    assert_eq!(f[5..], ["-", "0", "0", "0", "max_connections"]);
    drop(open);
    let got = lines(&path, 4).await;
    assert!(got[3].ends_with(" 4 4 client_closed"), "{}", got[3]);
}

/// Resets `stream` (SO_LINGER 0, then close).
fn reset(stream: TcpStream) {
    socket2::SockRef::from(&stream)
        .set_linger(Some(Duration::ZERO))
        .unwrap();
    drop(stream);
}

#[tokio::test]
async fn a_reset_is_an_error_of_the_side_that_sent_it() {
    let path = log_path();
    // This backend resets as soon as it has read 3 bytes.
    let resetting = serve(|mut s: TcpStream| async move {
        let mut three = [0u8; 3];
        s.read_exact(&mut three).await.unwrap();
        reset(s);
    })
    .await;
    let echo = echo_backend().await;
    let sink = health_sink().await;
    let lb = start_lb(&config_text(
        &[("b1", echo.addr, 100)],
        &global(&path, "text", ""),
        &sink,
    ));
    let addr = lb.addr("lb", 80);
    let mut client = TcpStream::connect(addr).await.unwrap();
    round_trip(&mut client, b"12345").await;
    reset(client);
    let got = lines(&path, 1).await;
    assert!(got[0].ends_with(" 5 5 client_error"), "{}", got[0]);

    lb.server
        .apply(&parse(&config_text(
            &[("b2", resetting.addr, 100)],
            &global(&path, "text", ""),
            &sink,
        )))
        .unwrap();
    let mut client = TcpStream::connect(addr).await.unwrap();
    client.write_all(b"abc").await.unwrap();
    let mut buf = [0u8; 1];
    let _ = tokio::time::timeout(REPLY_WITHIN, client.read(&mut buf)).await;
    let got = lines(&path, 2).await;
    assert!(got[1].contains(" b2 "), "{}", got[1]);
    assert!(got[1].ends_with(" 3 0 backend_error"), "{}", got[1]);
}

/// On tokio's paused clock: `established_timeout = 10` ends an idle connection.
#[tokio::test(start_paused = true)]
async fn an_idle_connection_is_logged_idle_timeout_after_its_duration() {
    let path = log_path();
    let backend = echo_backend().await;
    let lb = start_lb(&config_text(
        &[("b1", backend.addr, 100)],
        &global(&path, "json", ""),
        &format!("established_timeout = 10\n{}", health_frozen().await),
    ));
    let mut idle = TcpStream::connect(lb.addr("lb", 80)).await.unwrap();
    round_trip(&mut idle, b"once").await;
    assert!(read_to_end(&mut idle).await.is_empty());
    let got = lines(&path, 1).await;
    let v: serde_json::Value = serde_json::from_str(&got[0]).unwrap();
    assert_eq!(v["end"], "idle_timeout");
    let duration = v["duration_ms"].as_u64().unwrap();
    assert!((10_000..11_000).contains(&duration), "{duration}");
    assert_eq!(
        (v["bytes_in"].as_u64(), v["bytes_out"].as_u64()),
        (Some(4), Some(4))
    );
}

/// `connect_ms` counts every attempt: a first backend whose handshake never
/// completes (200 ms connect timeout), then the retry that reaches the other.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connect_ms_includes_the_retries() {
    let path = log_path();
    let (hole, _socket, _fillers) = blackhole();
    let good = named_backend("good").await;
    let lb = start_lb(&config_text(
        &[("hole", hole, 100), ("good", good.addr, 100)],
        &global(
            &path,
            "text",
            "backend_connect_timeout_ms = 200\nconnect_retries = 1",
        ),
        &format!("scheduler = \"rr\"\n{}", health_sink().await),
    ));
    let addr = lb.addr("lb", 80);
    // rr: one of two connections tries the hole first.
    for _ in 0..2 {
        assert_eq!(echo_through(addr, b"").await, b"good");
    }
    let got = lines(&path, 2).await;
    let connect_ms: Vec<u64> = got
        .iter()
        .map(|l| {
            let f = text_fields(l, "", "9");
            assert_eq!(f[3..5], ["good".to_string(), good.addr.to_string()], "{l}");
            f[5].parse().unwrap()
        })
        .collect();
    assert!(
        connect_ms.iter().any(|&ms| (200..2000).contains(&ms)),
        "{got:?}"
    );
}
