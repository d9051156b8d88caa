//! Health checks end to end: probes against loopback backends, the hysteresis, what
//! the data path does with the verdict, reloads.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use edgelb::proxy_protocol::{encode_v2_local, SIGNATURE};
use edgelb::state::{BackendState, Health};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};
use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

const GENEROUS: Duration = Duration::from_secs(10);
/// Fast checks: a probe a second, flips after two results.
const FAST: &str = "health_check_interval = 1\nhealth_check_connect_timeout = 1\nhealthy_threshold = 2\nunhealthy_threshold = 2";

/// The state of backend `i` (configuration order) of the only listener.
fn backend(lb: &Lb, i: usize) -> Arc<BackendState> {
    lb.server.listeners()[0].backend_states()[i].clone()
}

fn health(lb: &Lb, i: usize) -> Health {
    backend(lb, i).health()
}

/// Whether the current selector may pick backend `i`.
fn selectable(lb: &Lb, i: usize) -> bool {
    lb.server.listeners()[0].view.load().selector.candidates()[i].healthy
}

async fn wait_health(lb: &Lb, i: usize, want: Health) {
    wait_until(&format!("backend {i} health {want}"), || {
        health(lb, i) == want
    })
    .await;
}

/// Writes `name`, then echoes: a backend that can stop and start listening on its port.
async fn accept_named(listener: TcpListener, name: &'static str) {
    while let Ok((stream, _)) = listener.accept().await {
        tokio::spawn(named_echo(name, stream));
    }
}

fn listen_named(listener: TcpListener, name: &'static str) -> JoinHandle<()> {
    tokio::spawn(accept_named(listener, name))
}

/// Connects through the balancer and returns the stream and the backend's name.
async fn connect_named(lb: SocketAddr) -> (TcpStream, String) {
    let mut c = TcpStream::connect(lb).await.unwrap();
    let name = tokio::time::timeout(GENEROUS, read_n(&mut c, 2))
        .await
        .unwrap();
    (c, String::from_utf8(name).unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backend_that_stops_listening_flips_after_exactly_the_thresholds() {
    let b1_listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let b1_addr = b1_listener.local_addr().unwrap();
    let b1 = listen_named(b1_listener, "b1");
    let b2 = named_backend("b2").await;
    let text = config_text(
        &[("b1", b1_addr, 100), ("b2", b2.addr, 100)],
        "",
        &format!("scheduler = \"rr\"\n{FAST}"),
    );
    let lb = start_lb(&text);
    let addr = lb.addr("lb", 80);
    wait_health(&lb, 0, Health::Healthy).await;
    wait_health(&lb, 1, Health::Healthy).await;

    // A connection to b1 that stays open across its fall.
    let mut open = loop {
        let (c, name) = connect_named(addr).await;
        if name == "b1" {
            break c;
        }
    };

    // b1 stops listening.
    b1.abort();
    let refused = || async { TcpStream::connect(b1_addr).await.is_err() };
    while !refused().await {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let b1_state = backend(&lb, 0);
    assert_eq!(b1_state.checks.failures(), 0);
    wait_until("a first failed probe", || b1_state.checks.failures() >= 1).await;
    assert_eq!(health(&lb, 0), Health::Healthy, "one failure must not flip");
    wait_health(&lb, 0, Health::Unhealthy).await;
    assert_eq!(b1_state.checks.failures(), 2, "flips at exactly 2 failures");
    wait_until("the selector to drop b1", || !selectable(&lb, 0)).await;

    // New connections avoid b1; the open one keeps flowing.
    for _ in 0..4 {
        assert_eq!(connect_named(addr).await.1, "b2");
    }
    open.write_all(b"ping").await.unwrap();
    assert_eq!(read_n(&mut open, 4).await, b"ping");

    // b1 listens again on the same port: healthy after exactly 2 successes.
    let successes = b1_state.checks.successes();
    let b1 = listen_named(TcpListener::bind(b1_addr).await.unwrap(), "b1");
    wait_health(&lb, 0, Health::Healthy).await;
    assert_eq!(b1_state.checks.successes() - successes, 2);
    wait_until("the selector to take b1 back", || selectable(&lb, 0)).await;
    let names: Vec<String> = {
        let mut v = Vec::new();
        for _ in 0..2 {
            v.push(connect_named(addr).await.1);
        }
        v
    };
    assert!(names.contains(&"b1".to_string()), "{names:?}");
    b1.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tcp_probes_are_half_open_and_never_reach_the_backends_application() {
    // SYN, SYN-ACK, reset: the backend's kernel answers every probe, and its
    // application has nothing to accept.
    let b1 = echo_backend().await;
    let text = config_text(&[("b1", b1.addr, 100)], "", FAST);
    let lb = start_lb(&text);
    wait_health(&lb, 0, Health::Healthy).await;
    let checks = &backend(&lb, 0).checks;
    wait_until("three passed probes", || checks.successes() >= 3).await;
    assert_eq!(b1.accepted(), 0, "a TCP probe completed its handshake");
    // The count is live: a proxied connection is accepted.
    let mut c = TcpStream::connect(lb.addr("lb", 80)).await.unwrap();
    c.write_all(b"x").await.unwrap();
    assert_eq!(read_n(&mut c, 1).await, b"x");
    assert_eq!(b1.accepted(), 1);
}

/// Reads a request head (up to the blank line), after a PROXY v2 LOCAL header if
/// one comes first (its signature holds a blank line too).
async fn read_head(s: &mut TcpStream) -> Vec<u8> {
    let complete = |head: &[u8]| {
        let skip = if head.starts_with(&SIGNATURE) { 16 } else { 0 };
        head.len() > skip && head[skip..].windows(4).any(|w| w == b"\r\n\r\n")
    };
    let mut head = Vec::new();
    let mut buf = [0u8; 1024];
    while !complete(&head) && head.len() < 65536 {
        match s.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => head.extend_from_slice(&buf[..n]),
        }
    }
    head
}

/// An HTTP backend: sends each request (all bytes up to the blank line) to the
/// channel and answers `reply`.
async fn http_backend(reply: String) -> (Backend, mpsc::UnboundedReceiver<Vec<u8>>) {
    let (tx, rx) = mpsc::unbounded_channel();
    let backend = serve(move |mut s| {
        let (tx, reply) = (tx.clone(), reply.clone());
        async move {
            let _ = tx.send(read_head(&mut s).await);
            let _ = s.write_all(reply.as_bytes()).await;
        }
    })
    .await;
    (backend, rx)
}

fn status(code: u16) -> String {
    format!("HTTP/1.1 {code} X\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
}

fn http_check(extra: &str) -> String {
    format!("health_check_type = \"http\"\nhealth_check_uri = \"/checkpreload.htm\"\n{extra}")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_status_classes_decide() {
    let (ok, _r1) = http_backend(status(200)).await;
    let (busy, _r2) = http_backend(status(503)).await;
    let sink = serve(|_| async {}).await;
    let moved = format!(
        "HTTP/1.1 302 Found\r\nLocation: http://{}/\r\nContent-Length: 0\r\n\r\n",
        sink.addr
    );
    let (redirect, _r3) = http_backend(moved).await;
    let (garbage, _r4) = http_backend("garbage\r\n\r\n".to_string()).await;
    let list = [
        ("ok", ok.addr, 100),
        ("busy", busy.addr, 100),
        ("redirect", redirect.addr, 100),
        ("garbage", garbage.addr, 100),
    ];
    for (codes, want) in [
        ("http_2xx", [true, false, false, false]),
        ("http_2xx,http_5xx", [true, true, false, false]),
        ("http_3xx", [false, false, true, false]),
    ] {
        let extra = http_check(&format!("health_check_http_code = \"{codes}\""));
        let lb = start_lb(&config_text(&list, "", &extra));
        for (i, healthy) in want.into_iter().enumerate() {
            let state = if healthy {
                Health::Healthy
            } else {
                Health::Unhealthy
            };
            wait_health(&lb, i, state).await;
        }
    }
    assert_eq!(sink.accepted(), 0, "redirects are not followed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_probe_sends_head_with_the_uri_and_host() {
    let (named, mut with_domain) = http_backend(status(200)).await;
    let extra = http_check("health_check_domain = \"www.example.com\"");
    let _lb = start_lb(&config_text(&[("b1", named.addr, 100)], "", &extra));
    let head = tokio::time::timeout(GENEROUS, with_domain.recv())
        .await
        .unwrap()
        .unwrap();
    let head = String::from_utf8(head).unwrap();
    assert!(
        head.starts_with("HEAD /checkpreload.htm HTTP/1.1\r\n"),
        "{head}"
    );
    assert!(head.contains("\r\nHost: www.example.com\r\n"), "{head}");
    assert!(head.contains("\r\nConnection: close\r\n"), "{head}");

    let (plain, mut default_host) = http_backend(status(200)).await;
    let _lb = start_lb(&config_text(
        &[("b1", plain.addr, 100)],
        "",
        &http_check(""),
    ));
    let head = tokio::time::timeout(GENEROUS, default_host.recv())
        .await
        .unwrap()
        .unwrap();
    let head = String::from_utf8(head).unwrap();
    assert!(head.contains("\r\nHost: 127.0.0.1\r\n"), "{head}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_backend_fails_at_the_effective_timeout() {
    // Accepts, reads, never answers.
    let silent = serve(|mut s| async move {
        let _ = read_head(&mut s).await;
        std::future::pending::<()>().await;
    })
    .await;
    // connect timeout 1 s < interval 2 s: the effective timeout is 2 s.
    let extra = http_check("health_check_connect_timeout = 1\nhealth_check_interval = 2");
    let started = Instant::now();
    let lb = start_lb(&config_text(&[("b1", silent.addr, 100)], "", &extra));
    wait_health(&lb, 0, Health::Unhealthy).await;
    let elapsed = started.elapsed();
    assert!(
        elapsed >= Duration::from_secs(2),
        "failed after {elapsed:?}"
    );
    assert!(
        elapsed < Duration::from_millis(3500),
        "failed after {elapsed:?}"
    );
    assert_eq!(backend(&lb, 0).checks.failures(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn eip_transmit_http_probe_starts_with_a_v2_local_header() {
    let (b, mut rx) = http_backend(status(200)).await;
    let extra = http_check("eip_transmit = \"on\"");
    let lb = start_lb(&config_text(&[("b1", b.addr, 100)], "", &extra));
    let got = tokio::time::timeout(GENEROUS, rx.recv())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(got[..16], encode_v2_local());
    assert!(
        got[16..].starts_with(b"HEAD /checkpreload.htm HTTP/1.1\r\n"),
        "{:?}",
        String::from_utf8_lossy(&got)
    );
    wait_health(&lb, 0, Health::Healthy).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reload_keeps_health_and_weight_0_is_not_probed() {
    let dead = refused_addr();
    let up = echo_backend().await;
    let drained = echo_backend().await;
    let list = [
        ("dead", dead, 100),
        ("up", up.addr, 100),
        ("w0", drained.addr, 0),
    ];
    let lb = start_lb(&config_text(&list, "", FAST));
    wait_health(&lb, 0, Health::Unhealthy).await;
    wait_health(&lb, 1, Health::Healthy).await;
    // Two probes of "up" mean a full interval passed: "w0" would have had one.
    wait_until("a second probe", || backend(&lb, 1).checks.successes() >= 2).await;
    assert_eq!(drained.accepted(), 0);
    assert_eq!(health(&lb, 2), Health::Unknown);

    // New thresholds and interval: no one goes back to unknown, no flap.
    let changed = FAST.replace("healthy_threshold = 2", "healthy_threshold = 5");
    lb.server
        .apply(&parse(&config_text(&list, "", &changed)))
        .unwrap();
    assert_eq!(health(&lb, 0), Health::Unhealthy);
    assert_eq!(health(&lb, 1), Health::Healthy);
    assert!(!selectable(&lb, 0));

    // Weight up: probed at once.
    let list = [
        ("dead", dead, 100),
        ("up", up.addr, 100),
        ("w0", drained.addr, 100),
    ];
    lb.server
        .apply(&parse(&config_text(&list, "", &changed)))
        .unwrap();
    wait_health(&lb, 2, Health::Healthy).await;
    assert_eq!(health(&lb, 0), Health::Unhealthy);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_probe_in_flight_ends_when_its_backend_stops_being_checked() {
    // Reads the request, then waits for the balancer to close: it never answers.
    let (closed_tx, mut closed) = mpsc::unbounded_channel();
    let (asked_tx, mut asked) = mpsc::unbounded_channel();
    let silent = serve(move |mut s| {
        let (closed_tx, asked_tx) = (closed_tx.clone(), asked_tx.clone());
        async move {
            let _ = read_head(&mut s).await;
            let _ = asked_tx.send(());
            let mut rest = Vec::new();
            let _ = s.read_to_end(&mut rest).await;
            let _ = closed_tx.send(());
        }
    })
    .await;
    let up = echo_backend().await;
    // A probe in flight for up to 20 s.
    let extra = http_check("health_check_connect_timeout = 20\nhealth_check_interval = 20");
    let list = [("silent", silent.addr, 100), ("up", up.addr, 100)];
    let lb = start_lb(&config_text(&list, "", &extra));
    tokio::time::timeout(GENEROUS, asked.recv())
        .await
        .expect("the probe reached the backend");

    // Weight 0: no longer checked. The probe is dropped with it, at once.
    let list = [("silent", silent.addr, 0), ("up", up.addr, 100)];
    lb.server
        .apply(&parse(&config_text(&list, "", &extra)))
        .unwrap();
    tokio::time::timeout(Duration::from_secs(5), closed.recv())
        .await
        .expect("the probe in flight was left running");
    assert_eq!(health(&lb, 0), Health::Unknown);
    assert_eq!(backend(&lb, 0).checks.failures(), 0, "no verdict recorded");
}

/// When each of backend 0's probes ran, observed every 10 ms of (paused) time
/// until `count` more have run. A TCP probe of a loopback backend completes as it
/// starts, so this is when they started, to within a step.
async fn probe_times(lb: &Lb, count: u64) -> Vec<tokio::time::Instant> {
    let checks = &backend(lb, 0).checks;
    let mut seen = checks.successes();
    let until = seen + count;
    let mut times = Vec::new();
    while seen < until {
        tokio::time::sleep(Duration::from_millis(10)).await;
        let now = checks.successes();
        if now > seen {
            assert_eq!(now, seen + 1, "two probes within 10 ms");
            times.push(tokio::time::Instant::now());
            seen = now;
        }
    }
    times
}

fn gaps(times: &[tokio::time::Instant]) -> Vec<Duration> {
    times.windows(2).map(|w| w[1] - w[0]).collect()
}

fn assert_every(gaps: &[Duration], interval: Duration) {
    for gap in gaps {
        let off = gap.abs_diff(interval);
        assert!(
            off <= Duration::from_millis(20),
            "gap {gap:?}, not {interval:?}: {gaps:?}"
        );
    }
}

/// Cadence on tokio's paused clock: the first probe at once, the second half an
/// interval to an interval and a half later, then one per interval; a reload with a
/// new interval applies it from the last probe on.
#[tokio::test(start_paused = true)]
async fn probes_keep_their_cadence_and_a_reload_changes_it_from_the_last_probe() {
    let b1 = echo_backend().await;
    let checks = |interval: u64| {
        format!("health_check_interval = {interval}\nhealth_check_connect_timeout = 1")
    };
    let list = [("b1", b1.addr, 100)];
    let started = tokio::time::Instant::now();
    let lb = start_lb(&config_text(&list, "", &checks(2)));
    let times = probe_times(&lb, 5).await;
    assert!(
        times[0] - started < Duration::from_millis(20),
        "first probe after {:?}",
        times[0] - started
    );
    let second = times[1] - times[0];
    assert!(
        second >= Duration::from_secs(1) && second < Duration::from_secs(3),
        "second probe {second:?} after the first"
    );
    assert_every(&gaps(&times[1..]), Duration::from_secs(2));

    // Mid-interval: the next probe is 5 s after the last one, not after the reload.
    let last = *times.last().unwrap();
    tokio::time::sleep_until(last + Duration::from_secs(1)).await;
    lb.server
        .apply(&parse(&config_text(&list, "", &checks(5))))
        .unwrap();
    let after = probe_times(&lb, 3).await;
    assert_every(
        &gaps(&[&[last][..], &after[..]].concat()),
        Duration::from_secs(5),
    );
}
