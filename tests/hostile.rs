//! Hostile clients against the real binary under a low open-file limit (issue 19):
//! thousands of partial requests and idle connections on the admin address, then
//! silent clients on a listener. The data path keeps serving every client, the
//! admin server keeps answering, the header timeout closes what the attacker
//! holds, and descriptors and memory return to their baseline. Also: a control-API
//! body that stops coming is cut by the body timeout (in-process).
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::net::SocketAddr;
use std::time::{Duration, Instant};
use support::process::{fd_count, raise_nofile, rss_kib, Edgelb};
use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// edgelb's open-file limit in these tests.
const NOFILE: u64 = 1024;
/// Connections the attacker opens to the admin address.
const ATTACKERS: usize = 3000;
/// `[admin] request_header_timeout` in these tests, in seconds.
const HEADER_TIMEOUT: u64 = 2;
/// `[admin] max_connections` (the default).
const ADMIN_CAP: usize = 256;
/// New data-path connections tried during and after an attack.
const PROBES: usize = 100;
/// Resident memory above the baseline allowed once an attack is over.
const RSS_SLACK_KIB: u64 = 2048;
/// How long an admin answer may take.
const ANSWER_WITHIN: Duration = Duration::from_secs(1);
/// Rounds of fresh `/healthz` and `/metrics` while the attacker holds the admin cap.
const CHECK_ROUNDS: usize = 5;

/// The binary under `RLIMIT_NOFILE = NOFILE` with `global`, one listener to
/// `backend` and an admin server with a short header timeout; returned once
/// `/healthz` says ready. Also returns the listener's and the admin's addresses.
async fn start(backend: SocketAddr, global: &str) -> (Edgelb, SocketAddr, SocketAddr) {
    raise_nofile();
    let text = config_text(&[("b1", backend, 100)], global, "");
    let header_timeout = format!("request_header_timeout = {HEADER_TIMEOUT}");
    let (lb, addr, admin) = Edgelb::start_on_free_ports(&text, Some(&header_timeout), Some(NOFILE));
    let admin = admin.expect("an admin server");
    let deadline = Instant::now() + Duration::from_secs(10);
    while http_get(admin, "/healthz").await.0 != 200 {
        assert!(Instant::now() < deadline, "never ready:\n{}", lb.log_text());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    (lb, addr, admin)
}

/// One `GET` on a kept-alive connection: the status and body.
async fn keepalive_get(s: &mut TcpStream, path: &str) -> (u16, String) {
    let request = format!("GET {path} HTTP/1.1\r\nHost: edgelb\r\n\r\n");
    s.write_all(request.as_bytes()).await.unwrap();
    let mut raw = Vec::new();
    let mut buf = [0u8; 8192];
    let head_end = loop {
        let n = s.read(&mut buf).await.unwrap();
        assert!(n > 0, "the admin server closed a kept-alive connection");
        raw.extend_from_slice(&buf[..n]);
        if let Some(i) = raw.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
    };
    let head = String::from_utf8_lossy(&raw[..head_end]).to_string();
    let length: usize = head
        .lines()
        .find_map(|l| {
            l.to_ascii_lowercase()
                .strip_prefix("content-length: ")?
                .trim()
                .parse()
                .ok()
        })
        .expect("a content-length");
    while raw.len() < head_end + length {
        let n = s.read(&mut buf).await.unwrap();
        assert!(n > 0, "the admin server closed mid-body");
        raw.extend_from_slice(&buf[..n]);
    }
    let body = String::from_utf8_lossy(&raw[head_end..head_end + length]).to_string();
    (head[9..12].parse().unwrap(), body)
}

/// `/healthz` and `/metrics` on `s`, each within [`ANSWER_WITHIN`]; the metrics.
async fn admin_answers(s: &mut TcpStream) -> String {
    for path in ["/healthz", "/metrics"] {
        let t = Instant::now();
        let (status, body) = tokio::time::timeout(ANSWER_WITHIN, keepalive_get(s, path))
            .await
            .unwrap_or_else(|_| panic!("{path} took more than {ANSWER_WITHIN:?}"));
        assert_eq!(status, 200, "{path}: {body}");
        assert!(t.elapsed() < ANSWER_WITHIN);
        if path == "/metrics" {
            return body;
        }
    }
    unreachable!()
}

/// `/healthz` and `/metrics`, each on a new connection, each within [`ANSWER_WITHIN`];
/// the longer of the two waits.
async fn fresh_answers(admin: SocketAddr) -> Duration {
    let mut slowest = Duration::ZERO;
    for path in ["/healthz", "/metrics"] {
        let t = Instant::now();
        let got = tokio::time::timeout(ANSWER_WITHIN, http_get(admin, path)).await;
        let status = got.ok().map(|(s, _, _)| s);
        assert_eq!(status, Some(200), "{path} after {:?}", t.elapsed());
        slowest = slowest.max(t.elapsed());
    }
    slowest
}

/// `PROBES` new connections through the listener, each echoing a byte; how many did.
async fn data_path_successes(addr: SocketAddr) -> usize {
    let mut ok = 0;
    for i in 0..PROBES {
        let Ok(mut c) = TcpStream::connect(addr).await else {
            continue;
        };
        let byte = [b'a' + (i % 26) as u8];
        let echoed = async {
            c.write_all(&byte).await?;
            let mut got = [0u8; 1];
            c.read_exact(&mut got).await?;
            Ok::<_, std::io::Error>(got == byte)
        };
        if let Ok(Ok(true)) = tokio::time::timeout(Duration::from_secs(2), echoed).await {
            ok += 1;
        }
    }
    ok
}

/// A metric's value in a Prometheus text body (the first series of that name).
fn metric(body: &str, name: &str) -> f64 {
    body.lines()
        .find(|l| l.starts_with(name) && !l.starts_with('#'))
        .and_then(|l| l.rsplit(' ').next()?.parse().ok())
        .unwrap_or_else(|| panic!("{name} missing from:\n{body}"))
}

/// Waits until `s`, opened at `opened`, is closed by the peer (EOF or reset):
/// when it opened and when it closed; `None` if it is still open after `within`.
async fn closed_after(
    mut s: TcpStream,
    opened: Instant,
    within: Duration,
) -> Option<(Instant, Instant)> {
    let mut buf = [0u8; 1024];
    let deadline = tokio::time::Instant::now() + within;
    loop {
        match tokio::time::timeout_at(deadline, s.read(&mut buf)).await {
            Err(_) => return None,
            Ok(Ok(0) | Err(_)) => return Some((opened, Instant::now())),
            Ok(Ok(_)) => {}
        }
    }
}

/// The most of `spans` open at once.
fn most_at_once(spans: &[(Instant, Instant)]) -> usize {
    let mut edges: Vec<(Instant, i32)> = spans
        .iter()
        .flat_map(|&(open, close)| [(open, 1), (close, -1)])
        .collect();
    // A close before an open at the same instant.
    edges.sort();
    let mut open = 0i32;
    let mut most = 0;
    for (_, step) in edges {
        open += step;
        most = most.max(open);
    }
    usize::try_from(most).unwrap_or(0)
}

/// Steady state of edgelb: descriptors and resident memory.
fn usage(lb: &Edgelb) -> (usize, u64) {
    (fd_count(lb.pid()), rss_kib(lb.pid()))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn partial_requests_and_idle_connections_on_the_admin_address_starve_nothing() {
    let backend = echo_backend().await;
    // max_connections = 0: the data path's share is what the admin cap, the probe
    // socket and the reserve leave.
    let (mut lb, addr, admin) = start(backend.addr, "max_connections = 0").await;
    // Warm up both paths, so lazily built state is in the baseline.
    assert_eq!(data_path_successes(addr).await, PROBES);
    let mut monitor = TcpStream::connect(admin).await.unwrap();
    admin_answers(&mut monitor).await;
    let (base_fds, base_rss) = usage(&lb);

    // The attack: every other connection sends half a request head, the rest
    // nothing; then silence. Once the admin cap is surely taken, while the attack
    // goes on: the data path serves every new client, and a fresh admin connection
    // per check gets `/healthz` and `/metrics` within a second, several times (the
    // oldest idle admin connection, the attacker's or the idle monitor's, makes
    // room for it).
    let start = Instant::now();
    let mut attack = Vec::with_capacity(ATTACKERS);
    let mut during = None;
    let mut peak_fds = base_fds;
    for i in 0..ATTACKERS {
        if i == ADMIN_CAP + 16 {
            during = Some(tokio::spawn(async move {
                let (mut served, mut checks) = (0, Vec::new());
                for round in 0..CHECK_ROUNDS {
                    checks.push((fresh_answers(admin).await, Instant::now()));
                    if round == 0 {
                        served = data_path_successes(addr).await;
                    }
                }
                (served, checks)
            }));
        }
        if i % 50 == 0 {
            peak_fds = peak_fds.max(fd_count(lb.pid()));
        }
        let Ok(mut s) = TcpStream::connect(admin).await else {
            continue;
        };
        if i % 2 == 0 {
            let _ = s.write_all(b"GET / HTTP/1.1\r\n").await;
        }
        // Watched from now on: how long edgelb kept it open.
        let within = Duration::from_secs(HEADER_TIMEOUT + 8);
        attack.push(tokio::spawn(closed_after(s, Instant::now(), within)));
    }
    let opened_in = start.elapsed();
    peak_fds = peak_fds.max(fd_count(lb.pid()));
    let (during, checks) = during.unwrap().await.unwrap();
    let during_took = start.elapsed();
    assert_eq!(during, PROBES, "data path during the attack");
    // Every check ran while the attacker still held the cap: the last attacker
    // connections are only freed by the header timeout, HEADER_TIMEOUT s after
    // they opened.
    let attack_held_until = start + opened_in + Duration::from_secs(HEADER_TIMEOUT);
    for &(_, done) in &checks {
        assert!(done < attack_held_until, "a check ran after the attack");
    }
    let slowest_check = checks.iter().map(|&(took, _)| took).max().unwrap();

    // Every attacker connection is closed: the oldest idle ones at once to make
    // room for newer ones, the last held by the header timeout; never more than
    // the cap held at once.
    let mut held = Vec::new();
    // Closed before the header timeout could have: made room for newer ones.
    let mut evicted_seen = 0;
    for close in attack {
        let (opened, closed) = close
            .await
            .unwrap()
            .expect("an attacker connection was never closed");
        if closed - opened >= Duration::from_millis(HEADER_TIMEOUT * 1000 / 2) {
            held.push((opened, closed));
        }
        if closed - opened < Duration::from_millis(HEADER_TIMEOUT * 1000 - 100) {
            evicted_seen += 1;
        }
    }
    let at_once = most_at_once(&held);
    let longest = held.iter().map(|&(o, c)| c - o).max().unwrap_or_default();
    let shortest = held.iter().map(|&(o, c)| c - o).min().unwrap_or_default();
    // edgelb's side: never more descriptors than the admin cap above the baseline
    // (a few more for the data-path and admin checks running meanwhile). The
    // client's side sees about as many, later than edgelb closes them under load.
    assert!(
        peak_fds <= base_fds + ADMIN_CAP + 8,
        "edgelb held {peak_fds} descriptors (baseline {base_fds}, admin cap {ADMIN_CAP})"
    );
    assert!(at_once > 0, "no attacker connection was held");
    assert!(
        longest <= Duration::from_secs(HEADER_TIMEOUT + 2),
        "an attacker connection was held for {longest:?}"
    );

    // After: fresh connections everywhere, answers within a second.
    let after = data_path_successes(addr).await;
    assert_eq!(after, PROBES, "data path after the attack");
    let t = Instant::now();
    let (status, _, body) = http_get(admin, "/metrics").await;
    assert!(status == 200 && t.elapsed() < ANSWER_WITHIN);
    // No attacker connection ever answers a request, so none is refused: each new
    // one closes the oldest idle one, which the attacker sees closed early.
    let rejected = metric(&body, "edgelb_admin_rejected_connections_total");
    let evicted = metric(&body, "edgelb_admin_evicted_connections_total");
    assert_eq!(
        rejected, 0.0,
        "admin connections refused with idle ones open"
    );
    assert!(
        evicted >= (ATTACKERS - 2 * ADMIN_CAP) as f64
            && evicted >= evicted_seen as f64
            && evicted_seen >= ATTACKERS / 2,
        "{evicted} admin connections evicted, the attacker saw {evicted_seen} closed early"
    );
    fresh_answers(admin).await;
    let log = lb.log_text();
    assert!(!log.contains("Too many open files"), "{log}");
    // At most one warning per 5 s (whole seconds: one more at a boundary).
    let warnings = log.matches("admin connection limit reached").count() as u64;
    let limit = start.elapsed().as_secs() / 5 + 2;
    assert!(
        (1..=limit).contains(&warnings),
        "{warnings} cap warnings in {:?}:\n{log}",
        start.elapsed()
    );
    let pid = lb.pid();
    wait_until("edgelb's descriptors back to the baseline", || {
        fd_count(pid) <= base_fds
    })
    .await;
    // A kept-alive connection idle after its answer is closed by the same bound:
    // the header timeout also bounds the wait for the next request.
    drop(monitor);
    let mut idle = TcpStream::connect(admin).await.unwrap();
    admin_answers(&mut idle).await;
    let idle_since = Instant::now();
    let within = Duration::from_secs(HEADER_TIMEOUT + 3);
    let (_, idle_closed) = closed_after(idle, idle_since, within)
        .await
        .expect("an idle keep-alive connection was never closed");
    let idle_for = idle_closed - idle_since;
    assert!(
        idle_for >= Duration::from_millis(HEADER_TIMEOUT * 1000 - 100)
            && idle_for <= Duration::from_secs(HEADER_TIMEOUT + 1),
        "an idle keep-alive connection closed after {idle_for:?}"
    );
    // Memory: the admin connections' buffers go back to the system (the admin
    // server trims the heap once half its cap has closed; it looks every 2 s).
    wait_until("edgelb's memory back near the baseline", || {
        rss_kib(pid) <= base_rss + RSS_SLACK_KIB
    })
    .await;
    let rss_after = rss_kib(pid);
    println!(
        "admin flood: {ATTACKERS} connections (half partial heads) opened in {opened_in:?}; held by edgelb: {} in all, {at_once} at once as the attacker saw it (cap {ADMIN_CAP}); edgelb's descriptors at most {peak_fds} (baseline {base_fds}), evicted: {evicted} ({evicted_seen} seen closed before the header timeout), refused: {rejected}; data path {during}/{PROBES} during, {after}/{PROBES} after; {CHECK_ROUNDS} rounds of fresh /healthz and /metrics during the attack, slowest {slowest_check:?} (checks done {during_took:?} in); held connections closed {shortest:?}..{longest:?} after they opened (header timeout {HEADER_TIMEOUT} s); fds {base_fds} -> {}; RSS {base_rss} -> {rss_after} KiB; an idle keep-alive connection closed after {idle_for:?}",
        held.len(),
        fd_count(pid),
    );
    assert!(lb.is_running());
}

/// The derived data-path cap edgelb logged at start.
fn logged_cap(lb: &Edgelb) -> usize {
    let log = lb.log_text();
    log.lines()
        .filter(|l| l.contains("connection limit"))
        .find_map(|l| {
            l.split("max_connections=")
                .nth(1)?
                .split_whitespace()
                .next()?
                .parse()
                .ok()
        })
        .unwrap_or_else(|| panic!("no connection limit logged:\n{log}"))
}

/// Opens `n` connections to `addr` that send nothing; each watched for a close.
async fn silent_clients(
    addr: SocketAddr,
    n: usize,
) -> Vec<tokio::task::JoinHandle<Option<(Instant, Instant)>>> {
    let mut out = Vec::with_capacity(n);
    for _ in 0..n {
        let s = TcpStream::connect(addr).await.unwrap();
        out.push(tokio::spawn(closed_after(
            s,
            Instant::now(),
            Duration::from_secs(3),
        )));
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silent_clients_on_a_listener_are_proxied_or_refused_as_max_connections_says() {
    let backend = echo_backend().await;
    let (mut lb, addr, admin) = start(backend.addr, "max_connections = 0").await;
    let cap = logged_cap(&lb);
    // NOFILE less the reserve (128), the admin cap and the one TCP probe socket.
    assert_eq!(cap, (NOFILE as usize - 128 - ADMIN_CAP - 1) / 2);
    assert_eq!(data_path_successes(addr).await, PROBES);
    fresh_answers(admin).await;
    let (base_fds, _) = usage(&lb);

    // Fewer silent clients than the cap: all proxied, and other clients through.
    let below = cap - 20;
    let accepted = backend.accepted();
    let quiet = silent_clients(addr, below).await;
    wait_until("the silent clients proxied", || {
        backend.accepted() >= accepted + below
    })
    .await;
    assert_eq!(data_path_successes(addr).await, PROBES, "other clients");
    fresh_answers(admin).await;

    // Past the cap: the rest are closed at once; the admin server, whose
    // descriptors were set aside, still answers fresh connections within a second.
    let more = silent_clients(addr, 2 * cap).await;
    let t = Instant::now();
    let (status, _, body) = http_get(admin, "/metrics").await;
    assert!(status == 200 && t.elapsed() < ANSWER_WITHIN, "{status}");
    fresh_answers(admin).await;
    let mut proxied = 0;
    let mut refused = 0;
    for close in quiet.into_iter().chain(more) {
        match close.await.unwrap() {
            None => proxied += 1,
            Some(_) => refused += 1,
        }
    }
    assert_eq!(proxied, cap, "silent clients held open");
    assert_eq!(refused, below + 2 * cap - cap, "silent clients refused");
    let rejected: f64 = body
        .lines()
        .filter(|l| {
            l.starts_with("edgelb_rejected_connections_total") && l.contains("max_connections")
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum();
    assert!(
        rejected > 0.0,
        "no max_connections rejection counted:\n{body}"
    );
    let log = lb.log_text();
    assert!(!log.contains("Too many open files"), "{log}");

    // The silent clients gone (their watchers dropped them): everyone served again.
    wait_until("the proxied connections closed", || {
        fd_count(lb.pid()) <= base_fds
    })
    .await;
    assert_eq!(data_path_successes(addr).await, PROBES, "after");
    fresh_answers(admin).await;
    println!(
        "silent listener clients: derived max_connections {cap} (RLIMIT_NOFILE {NOFILE}); {proxied} proxied, {refused} refused at once; other clients {PROBES}/{PROBES}; admin answered within {ANSWER_WITHIN:?}"
    );
    assert!(lb.is_running());
}

#[tokio::test]
async fn a_control_api_body_that_stops_coming_is_cut_by_the_body_timeout() {
    let backend = echo_backend().await;
    let text = config_text(&[("b1", backend.addr, 100)], "", "").replace(
        "address = \"\"",
        "address = \"127.0.0.1:0\"\nrequest_body_timeout = 1",
    );
    let api = start_api(&text).await;
    let mut s = TcpStream::connect(api.admin).await.unwrap();
    // A call announcing 100 bytes of body, sending 11, then silence.
    s.write_all(
        b"POST / HTTP/1.1\r\nHost: edgelb\r\nContent-Type: application/x-www-form-urlencoded\r\nContent-Length: 100\r\n\r\nAction=Desc",
    )
    .await
    .unwrap();
    let sent = Instant::now();
    let reply = tokio::time::timeout(Duration::from_secs(5), read_to_end(&mut s))
        .await
        .expect("the connection was not closed");
    let took = sent.elapsed();
    let reply = String::from_utf8_lossy(&reply);
    assert!(reply.starts_with("HTTP/1.1 408"), "{reply}");
    assert!(reply.contains("RequestTimeout"), "{reply}");
    assert!(
        took >= Duration::from_millis(900) && took < Duration::from_secs(3),
        "answered and closed after {took:?}"
    );
}
