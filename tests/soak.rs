//! Soak: mixed traffic through the real binary while backends flap and the file is
//! reloaded, then a report. CI runs it for `EDGELB_SOAK_SECS` (default 20 s);
//! `scripts/soak.sh --minutes N` runs the release build for N minutes (default 10).
//!
//! - Backends: `a` is always up; `b` and `c` stop and start listening every few
//!   seconds, so their health checks flip (interval 1 s, thresholds 2). A connect
//!   refused by one of them is retried on another backend (`connect_retries = 2`), and
//!   `a` is always there: no client may see a failure, with one exception that is
//!   the backend's doing: a connection that completed its handshake into a flapping
//!   backend's accept queue in the microseconds between its last accept and the
//!   close of its listener is reset by the kernel (a real backend going down does
//!   the same). edgelb has forwarded the client's bytes by then and cannot replay
//!   them elsewhere, so the client sees its connection closed (or reset, when it was
//!   still sending) with nothing echoed.
//!   Those are counted apart (`reset by a backend going down`) and must number no
//!   more than the times a backend went down; every other failure fails the run.
//! - Traffic: short connections (1..16 KiB echoed, half-close) and long bulk
//!   transfers (4 MiB each way, paced over a few seconds so they span reloads and
//!   flaps), every byte compared with what was sent.
//! - SIGHUP every 3 s with the next scheduler (wrr, wlc, rr, sch, tch) and new
//!   weights for `b` and `c` (0..=100; `a` keeps 100).
//! - Report: connections, bytes each way, failures by kind, reloads, health
//!   transitions, edgelb's RSS and descriptors at start and end (quiet, after a warm-up).
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use support::process::{fd_count, rss_kib, Edgelb, Options};
use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// How many times a flapping backend closed its listener.
static DOWNS: AtomicU64 = AtomicU64::new(0);

/// The CI run's length.
const DEFAULT_SECS: u64 = 20;
const SCHEDULERS: [&str; 5] = ["wrr", "wlc", "rr", "sch", "tch"];
const SHORT_WORKERS: usize = 8;
const BULK_WORKERS: usize = 2;
const BULK_BYTES: usize = 4 << 20;
const BULK_CHUNK: usize = 64 << 10;
const RELOAD_EVERY: Duration = Duration::from_secs(3);

#[derive(Default)]
struct Tally {
    short: AtomicU64,
    bulk: AtomicU64,
    bytes_sent: AtomicU64,
    bytes_received: AtomicU64,
    connect_errors: AtomicU64,
    early_close: AtomicU64,
    /// Closed with nothing echoed: reset in a closing backend's accept queue.
    reset_by_going_down: AtomicU64,
    /// Bytes of those connections (sent, never echoed).
    reset_bytes: AtomicU64,
    io_errors: AtomicU64,
    corrupted: AtomicU64,
}

impl Tally {
    fn failures(&self) -> u64 {
        self.connect_errors.load(Ordering::Relaxed)
            + self.early_close.load(Ordering::Relaxed)
            + self.io_errors.load(Ordering::Relaxed)
            + self.corrupted.load(Ordering::Relaxed)
    }
}

/// An echo backend on a fixed port that can stop and start listening. Connections
/// it accepted keep running while it is down.
struct Flapper {
    addr: SocketAddr,
}

fn listen(addr: SocketAddr) -> std::net::TcpListener {
    use socket2::{Domain, Socket, Type};
    let s = Socket::new(Domain::IPV4, Type::STREAM, None).unwrap();
    s.set_reuse_address(true).unwrap();
    s.set_reuse_port(true).unwrap();
    s.bind(&addr.into()).unwrap();
    s.listen(1024).unwrap();
    s.set_nonblocking(true).unwrap();
    s.into()
}

impl Flapper {
    /// Starts listening; when `flap` is set, alternates up and down periods of
    /// 2..6 s until `stop`.
    fn start(flap: Option<u64>, stop: Arc<AtomicBool>) -> Flapper {
        let first = listen("127.0.0.1:0".parse().unwrap());
        let addr = first.local_addr().unwrap();
        tokio::spawn(async move {
            let mut socket = Some(first);
            let mut seed = flap.unwrap_or(1);
            while !stop.load(Ordering::Relaxed) {
                let std_listener = socket.take().unwrap_or_else(|| listen(addr));
                let listener = tokio::net::TcpListener::from_std(std_listener).unwrap();
                let up_for = flap.map(|_| Duration::from_millis(2000 + next(&mut seed) % 4000));
                let until = up_for.map(|d| tokio::time::Instant::now() + d);
                loop {
                    let accept = listener.accept();
                    let deadline = async {
                        match until {
                            Some(t) => tokio::time::sleep_until(t).await,
                            None => std::future::pending().await,
                        }
                    };
                    tokio::select! {
                        a = accept => if let Ok((s, _)) = a { tokio::spawn(echo(s)); },
                        () = deadline => break,
                    }
                    if stop.load(Ordering::Relaxed) {
                        return;
                    }
                }
                // Going down: take what the kernel already queued (closing would
                // reset those), then close at once.
                let std_listener = listener.into_std().unwrap();
                while let Ok((s, _)) = std_listener.accept() {
                    s.set_nonblocking(true).unwrap();
                    tokio::spawn(echo(TcpStream::from_std(s).unwrap()));
                }
                drop(std_listener);
                DOWNS.fetch_add(1, Ordering::Relaxed);
                tokio::time::sleep(Duration::from_millis(2000 + next(&mut seed) % 4000)).await;
            }
        });
        Flapper { addr }
    }
}

fn next(x: &mut u64) -> u64 {
    *x ^= *x << 13;
    *x ^= *x >> 7;
    *x ^= *x << 17;
    *x
}

fn config(port: u16, backends: &[(&str, SocketAddr, u32)], scheduler: &str) -> String {
    config_text(
        backends,
        "connect_retries = 2\nbackend_connect_timeout_ms = 1000\nmax_connections = 100000",
        &format!(
            "scheduler = \"{scheduler}\"\nhealth_check_interval = 1\nhealth_check_connect_timeout = 1\nhealthy_threshold = 2\nunhealthy_threshold = 2"
        ),
    )
    .replace("listener_port = 80", &format!("listener_port = {port}"))
}

/// One short connection: send, half-close, read the echo to the end, compare.
async fn short_once(addr: SocketAddr, seed: u64, tally: &Tally) {
    let len = 1024 + (seed as usize * 7919) % (15 * 1024);
    let payload = random_bytes(len, seed);
    let Ok(mut c) = TcpStream::connect(addr).await else {
        tally.connect_errors.fetch_add(1, Ordering::Relaxed);
        return;
    };
    let (mut r, mut w) = c.split();
    let send = async {
        w.write_all(&payload).await?;
        w.shutdown().await
    };
    let mut got = Vec::with_capacity(len);
    let recv = r.read_to_end(&mut got);
    let outcome =
        tokio::time::timeout(Duration::from_secs(30), async { tokio::join!(send, recv) }).await;
    match outcome {
        Ok((Ok(()), Ok(_))) => classify(&payload, &got, tally),
        // Reset before anything was echoed: the client was still sending when the
        // backend's kernel reset the connection (see the module doc), so edgelb
        // closed it; the same signature as an empty echo.
        Ok((s, r))
            if got.is_empty() && (is_reset(s.as_ref().err()) || is_reset(r.as_ref().err())) =>
        {
            classify(&payload, &got, tally)
        }
        _ => {
            tally.io_errors.fetch_add(1, Ordering::Relaxed);
        }
    }
    tally.short.fetch_add(1, Ordering::Relaxed);
}

fn is_reset(error: Option<&std::io::Error>) -> bool {
    use std::io::ErrorKind::{BrokenPipe, ConnectionReset};
    error.is_some_and(|e| matches!(e.kind(), ConnectionReset | BrokenPipe))
}

fn classify(sent: &[u8], got: &[u8], tally: &Tally) {
    tally
        .bytes_sent
        .fetch_add(sent.len() as u64, Ordering::Relaxed);
    tally
        .bytes_received
        .fetch_add(got.len() as u64, Ordering::Relaxed);
    if got.is_empty() && !sent.is_empty() {
        tally.reset_by_going_down.fetch_add(1, Ordering::Relaxed);
        tally
            .reset_bytes
            .fetch_add(sent.len() as u64, Ordering::Relaxed);
    } else if got.len() < sent.len() && sent.starts_with(got) {
        tally.early_close.fetch_add(1, Ordering::Relaxed);
    } else if got != sent {
        tally.corrupted.fetch_add(1, Ordering::Relaxed);
    }
}

/// One bulk transfer: `BULK_BYTES` paced in chunks both ways, compared at the end.
async fn bulk_once(addr: SocketAddr, seed: u64, tally: &Tally, pace: Duration) {
    let payload = random_bytes(BULK_BYTES, seed);
    let Ok(mut c) = TcpStream::connect(addr).await else {
        tally.connect_errors.fetch_add(1, Ordering::Relaxed);
        return;
    };
    let (mut r, mut w) = c.split();
    let send = async {
        for chunk in payload.chunks(BULK_CHUNK) {
            w.write_all(chunk).await?;
            tokio::time::sleep(pace).await;
        }
        w.shutdown().await
    };
    let mut got = Vec::with_capacity(BULK_BYTES);
    let recv = r.read_to_end(&mut got);
    match tokio::time::timeout(Duration::from_secs(120), async { tokio::join!(send, recv) }).await {
        Ok((Ok(()), Ok(_))) => classify(&payload, &got, tally),
        _ => {
            tally.io_errors.fetch_add(1, Ordering::Relaxed);
        }
    }
    tally.bulk.fetch_add(1, Ordering::Relaxed);
}

/// Runs every kind of traffic once (the warm-up before the start sample).
async fn one_of_each(addr: SocketAddr, tally: &Tally) {
    short_once(addr, 1, tally).await;
    bulk_once(addr, 2, tally, Duration::ZERO).await;
}

async fn wait_quiet(pid: u32, fds: usize) {
    for _ in 0..200 {
        if fd_count(pid) <= fds {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn soak_mixed_traffic_with_flapping_backends_and_reloads() {
    let secs: u64 = std::env::var("EDGELB_SOAK_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(DEFAULT_SECS);
    let stop_backends = Arc::new(AtomicBool::new(false));
    let a = Flapper::start(None, stop_backends.clone());
    let b = Flapper::start(Some(0x9E37_79B9), stop_backends.clone());
    let c = Flapper::start(Some(0x85EB_CA6B), stop_backends.clone());
    let port = free_port();
    let backends = |wb: u32, wc: u32| [("a", a.addr, 100), ("b", b.addr, wb), ("c", c.addr, wc)];
    let mut lb = Edgelb::start(
        &config(port, &backends(100, 100), "wrr"),
        Options::default(),
    );
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    lb.wait_listening(addr);
    let pid = lb.pid();

    let tally = Arc::new(Tally::default());
    one_of_each(addr, &tally).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (rss_start, fds_start) = (rss_kib(pid), fd_count(pid));

    let started = Instant::now();
    let deadline = started + Duration::from_secs(secs);
    let mut workers = Vec::new();
    for w in 0..SHORT_WORKERS {
        let tally = tally.clone();
        workers.push(tokio::spawn(async move {
            let mut seed = w as u64 * 1_000_003 + 11;
            while Instant::now() < deadline {
                short_once(addr, seed, &tally).await;
                seed += 1;
            }
        }));
    }
    for w in 0..BULK_WORKERS {
        let tally = tally.clone();
        workers.push(tokio::spawn(async move {
            let mut seed = w as u64 * 7_000_001 + 5;
            while Instant::now() < deadline {
                // 64 chunks, 40 ms apart: ~2.5 s per transfer.
                bulk_once(addr, seed, &tally, Duration::from_millis(40)).await;
                seed += 1;
            }
        }));
    }
    // Reloads: the next scheduler, new weights for the flapping backends.
    let mut reloads = 0u64;
    let mut seed = 0x2545_F491u64;
    let mut rss_max = rss_start;
    // Memory is judged after a warm-up: the largest RSS of the first quarter (heap,
    // reactor slab and timer wheel at working size) against the largest of the last
    // half. A leak grows between them; a warm-up does not.
    let run = deadline.saturating_duration_since(Instant::now());
    let (warm_until, late_from) = (Instant::now() + run / 4, Instant::now() + run / 2);
    let (mut rss_warm, mut rss_late) = (rss_start, 0);
    while Instant::now() + RELOAD_EVERY < deadline {
        tokio::time::sleep(RELOAD_EVERY).await;
        reloads += 1;
        let scheduler = SCHEDULERS[reloads as usize % SCHEDULERS.len()];
        let (wb, wc) = (
            (next(&mut seed) % 101) as u32,
            (next(&mut seed) % 101) as u32,
        );
        let text = config(port, &backends(wb, wc), scheduler);
        let tmp = lb.config.with_extension("tmp");
        std::fs::write(&tmp, text).unwrap();
        std::fs::rename(&tmp, &lb.config).unwrap();
        lb.signal(libc::SIGHUP);
        let rss = rss_kib(pid);
        rss_max = rss_max.max(rss);
        if Instant::now() <= warm_until {
            rss_warm = rss_warm.max(rss);
        } else if Instant::now() >= late_from {
            rss_late = rss_late.max(rss);
        }
    }
    for w in workers {
        w.await.unwrap();
    }
    let ran = started.elapsed();
    wait_quiet(pid, fds_start).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (rss_end, fds_end) = (rss_kib(pid), fd_count(pid));
    stop_backends.store(true, Ordering::Relaxed);

    let log = lb.log_text();
    let reloaded = log.matches("reloaded").count();
    let refused = log.matches("reload refused").count();
    let transitions = log.matches("backend health changed").count();
    let t = &tally;
    let load = |x: &AtomicU64| x.load(Ordering::Relaxed);
    println!(
        "soak: {ran:.1?}; connections: {} short, {} bulk; bytes: {} sent, {} received (all compared); \
         failures: {} connect, {} early close, {} io/timeout, {} corrupted; \
         reloads: {reloads} sent, {reloaded} applied, {refused} refused; health transitions: {transitions}; \
         edgelb RSS {rss_start} KiB -> {rss_end} KiB (max {rss_max} KiB; first quarter max {rss_warm} KiB, last half max {rss_late} KiB); fds {fds_start} -> {fds_end}",
        load(&t.short),
        load(&t.bulk),
        load(&t.bytes_sent),
        load(&t.bytes_received),
        load(&t.connect_errors),
        load(&t.early_close),
        load(&t.io_errors),
        load(&t.corrupted),
    );
    assert!(lb.is_running(), "edgelb died:\n{log}");
    assert_eq!(t.failures(), 0, "client-visible failures");
    let (resets, downs) = (load(&t.reset_by_going_down), DOWNS.load(Ordering::Relaxed));
    println!("reset by a backend going down: {resets} connections, {} bytes not echoed; backends went down {downs} times", load(&t.reset_bytes));
    assert!(resets <= downs, "{resets} resets for {downs} backend downs");
    assert_eq!(
        load(&t.bytes_sent),
        load(&t.bytes_received) + load(&t.reset_bytes),
        "bytes lost on connections that were not reset by a backend"
    );
    assert_eq!(refused, 0, "a reload was refused:\n{log}");
    assert_eq!(reloaded as u64, reloads, "every SIGHUP reloaded");
    // Up to three probes (one per backend) may be in flight at the end sample.
    assert!(
        fds_end <= fds_start + 3,
        "descriptors {fds_start} -> {fds_end}"
    );
    // No growth after the warm-up (1 MiB of slack for allocator noise).
    let bound = rss_warm + rss_warm / 4 + 1024;
    assert!(
        rss_late <= bound && rss_end <= bound,
        "RSS grew after the warm-up: first quarter {rss_warm} KiB, last half {rss_late} KiB, end {rss_end} KiB"
    );
    if secs >= 10 {
        assert!(transitions >= 1, "no backend ever changed health");
    }
}
