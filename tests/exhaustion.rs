//! Running out of file descriptors, with the real binary under `RLIMIT_NOFILE = 64`
//! and a connection cap far above what 64 descriptors allow: clients past the limit
//! are closed or wait in the backlog (never a crash), the accept loop backs off
//! instead of spinning on EMFILE (its CPU time stays low), and the balancer serves
//! again as soon as descriptors are free.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::time::{Duration, Instant};
use support::process::{cpu_time, fd_count, Edgelb};
use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const NOFILE: u64 = 64;
/// How long the process is kept out of descriptors while its CPU time is measured.
const EXHAUSTED_FOR: Duration = Duration::from_secs(2);

/// What became of a client that sent one byte.
enum Fate {
    /// Echoed: a proxied connection holding two descriptors.
    Served,
    /// Closed or reset: accepted, but no descriptor was left to reach the backend.
    Closed,
    /// No answer: waiting in the listen backlog (accept fails with EMFILE).
    Waiting,
}

async fn try_client(addr: std::net::SocketAddr) -> (TcpStream, Fate) {
    let mut c = TcpStream::connect(addr).await.unwrap();
    c.write_all(b"x").await.unwrap();
    let fate = fate_within(&mut c, Duration::from_millis(500)).await;
    (c, fate)
}

/// What became of a client that sent its byte, given `wait` for an answer.
async fn fate_within(c: &mut TcpStream, wait: Duration) -> Fate {
    let mut buf = [0u8; 1];
    match tokio::time::timeout(wait, c.read(&mut buf)).await {
        Ok(Ok(1)) => Fate::Served,
        Ok(_) => Fate::Closed,
        Err(_) => Fate::Waiting,
    }
}

/// The binary under `RLIMIT_NOFILE = NOFILE`, a connection cap far above what that
/// allows, one listener to `backend` with `checks`, and an admin server; returned
/// once the backend is checked healthy (a TCP probe's socket, kept between probes,
/// is open by then). Also returns the listener's and the admin server's addresses.
async fn start_limited(
    backend: std::net::SocketAddr,
    checks: &str,
) -> (Edgelb, std::net::SocketAddr, u16) {
    let text = config_text(&[("b1", backend, 100)], "max_connections = 100000", checks);
    let (lb, addr, admin) = Edgelb::start_on_free_ports(&text, Some(""), Some(NOFILE));
    let admin_port = admin.expect("an admin server").port();
    wait_until("the backend checked healthy", || {
        lb.log_text().contains("to=healthy")
    })
    .await;
    (lb, addr, admin_port)
}

/// What [`exhaust`] holds to keep edgelb out of descriptors.
struct Exhausted {
    /// Proxied connections, two descriptors each.
    served: Vec<TcpStream>,
    /// The client that found no descriptor: it waits in the backlog.
    waiting: Vec<TcpStream>,
    /// Clients accepted and closed because their backend connect found none.
    closed: usize,
    /// Idle admin connections, each holding the one descriptor left over.
    admin_holds: Vec<TcpStream>,
}

/// Takes every descriptor of the edgelb listening on `addr`, whose admin server is on
/// `admin_port`. Proxied connections take two each. When one is left over, a client
/// is accepted and closed at once (its backend connect fails with EMFILE), and that
/// one stays free: an idle admin connection takes it. A client counts as waiting only
/// if it still waits a probe interval later: a spare descriptor held by a probe in
/// flight at that moment frees when the probe ends, and then serves this client.
async fn exhaust(addr: std::net::SocketAddr, admin_port: u16) -> Exhausted {
    let mut held = Exhausted {
        served: Vec::new(),
        waiting: Vec::new(),
        closed: 0,
        admin_holds: Vec::new(),
    };
    for _ in 0..NOFILE * 2 {
        let (mut c, mut fate) = try_client(addr).await;
        if matches!(fate, Fate::Waiting) {
            fate = fate_within(&mut c, Duration::from_millis(1_500)).await;
        }
        match fate {
            Fate::Served => held.served.push(c),
            Fate::Closed => {
                held.closed += 1;
                held.admin_holds
                    .push(TcpStream::connect(("127.0.0.1", admin_port)).await.unwrap());
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Fate::Waiting => {
                held.waiting.push(c);
                return held;
            }
        }
    }
    panic!("edgelb never ran out of descriptors");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn out_of_descriptors_refuses_cleanly_does_not_spin_and_recovers() {
    let backend = echo_backend().await;
    // One probe at start, then none for the test's length.
    let (mut lb, addr, admin_port) =
        start_limited(backend.addr, "health_check_interval = 50").await;
    let baseline_fds = fd_count(lb.pid());

    let Exhausted {
        served,
        mut waiting,
        closed,
        admin_holds,
    } = exhaust(addr, admin_port).await;
    assert!(
        served.len() >= 10,
        "only {} connections were served",
        served.len()
    );
    // More clients than descriptors: they wait in the backlog.
    for _ in 0..16 {
        let mut c = TcpStream::connect(addr).await.unwrap();
        c.write_all(b"x").await.unwrap();
        waiting.push(c);
    }
    // The admin server cannot accept either: it backs off the same way.
    let admin_waiting = TcpStream::connect(("127.0.0.1", admin_port)).await.unwrap();
    // Exhausted: the accept loop must sleep between failures, not spin.
    let cpu_before = cpu_time(lb.pid());
    let wall = Instant::now();
    tokio::time::sleep(EXHAUSTED_FOR).await;
    let cpu = cpu_time(lb.pid()) - cpu_before;
    let share = cpu.as_secs_f64() / wall.elapsed().as_secs_f64();
    let log = lb.log_text();
    let pauses = log.matches("accept failed; pausing").count();
    println!(
        "fd exhaustion: {} served, {closed} closed, {} waiting; edgelb CPU {cpu:?} over {:?} ({:.1}% of a core); {pauses} accept-failure pauses logged",
        served.len(),
        waiting.len(),
        wall.elapsed(),
        share * 100.0
    );
    assert!(lb.is_running(), "edgelb died:\n{log}");
    assert!(
        share < 0.30,
        "edgelb used {:.0}% of a core while out of descriptors",
        share * 100.0
    );
    assert!(
        log.contains("Too many open files") && pauses >= 2,
        "the log does not show the EMFILE back-off:\n{log}"
    );
    // The back-off doubles from 5 ms to 1 s: about 9 pauses in 2 s, not thousands.
    assert!(pauses < 50, "{pauses} accept failures logged in ~2 s");
    let admin_pauses: Vec<u64> = log
        .lines()
        .filter(|l| l.contains("admin accept failed; pausing"))
        .filter_map(|l| {
            l.split("pause_ms=")
                .nth(1)?
                .split_whitespace()
                .next()?
                .parse()
                .ok()
        })
        .collect();
    assert!(
        admin_pauses.len() >= 2
            && admin_pauses
                .windows(2)
                .all(|w| w[1] == (w[0] * 2).min(1000)),
        "the admin server does not back off, doubling: {admin_pauses:?}\n{log}"
    );

    // Descriptors free up: every waiting client is served (its byte was sent).
    drop(served);
    drop(admin_holds);
    drop(admin_waiting);
    for mut c in waiting {
        let got = tokio::time::timeout(Duration::from_secs(10), read_n(&mut c, 1))
            .await
            .expect("a waiting client was not served after descriptors freed");
        assert_eq!(got, b"x");
    }
    let (fresh, fate) = try_client(addr).await;
    assert!(matches!(fate, Fate::Served), "a new client is served");
    drop(fresh);
    assert!(lb.is_running());
    let pid = lb.pid();
    wait_until("edgelb's descriptors back to the baseline", || {
        fd_count(pid) <= baseline_fds
    })
    .await;
}

/// Answers every request with `200 OK` and closes.
async fn http_ok_backend() -> Backend {
    serve(|mut stream| async move {
        let mut buf = [0u8; 1024];
        let _ = stream.read(&mut buf).await;
        let _ = stream
            .write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
            .await;
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn running_out_of_descriptors_does_not_fail_the_backends_health_checks() {
    let backend = echo_backend().await;
    let health = http_ok_backend().await;
    // An HTTP probe needs a new socket every second.
    let checks = format!(
        "health_check_type = \"http\"\nhealth_check_uri = \"/health\"\nhealth_check_interval = 1\nhealth_check_connect_timeout = 1\nunhealthy_threshold = 2\nhealth_check_connect_port = {}",
        health.addr.port()
    );
    let (mut lb, addr, admin_port) = start_limited(backend.addr, &checks).await;

    // Every descriptor taken: probes cannot get a socket.
    let held = exhaust(addr, admin_port).await;
    let probes_before = health.accepted();
    // Three intervals: two failed probes in a row would turn the backend unhealthy.
    tokio::time::sleep(Duration::from_millis(3_500)).await;
    let log = lb.log_text();
    assert_eq!(
        health.accepted(),
        probes_before,
        "a probe got a socket while edgelb had none:\n{log}"
    );
    assert!(
        log.contains("health probe not sent"),
        "no probe was refused a socket (probes: {probes_before} -> {}):\n{log}",
        health.accepted()
    );
    assert!(
        !log.contains("to=unhealthy"),
        "health failed the backend:\n{log}"
    );

    // Descriptors back: probes reach the backend again, which stayed healthy.
    drop(held);
    let reached = health.accepted();
    wait_until("a probe after the shortage", || health.accepted() > reached).await;
    let log = lb.log_text();
    assert!(
        !log.contains("to=unhealthy"),
        "health failed the backend:\n{log}"
    );
    assert!(lb.is_running());
}
