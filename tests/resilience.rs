//! Failures of the peers, in process: a backend that resets mid-stream, one that
//! never completes the handshake, a client that resets or goes silent. Each test
//! checks the other side is closed promptly and nothing leaks: the listener's and
//! backend's active counts, the connection cap's count and this process's file
//! descriptors all come back to where they were.
//!
//! The tests count `/proc/self/fd`, which every test of this binary changes, so
//! they take turns ([`serial`]).
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::sync::atomic::Ordering;
use std::time::Duration;
use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// A guard against a hang, not a performance assertion.
const GENEROUS: Duration = Duration::from_secs(20);

static TURN: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// One test at a time: they count the process's descriptors.
async fn serial() -> tokio::sync::MutexGuard<'static, ()> {
    TURN.lock().await
}

fn open_fds() -> usize {
    std::fs::read_dir("/proc/self/fd").unwrap().count()
}

/// Open connections by every count the balancer keeps: the listener's, each
/// backend's (wlc reads it) and the process-wide cap's.
fn counts(lb: &Lb) -> (u64, u64, usize) {
    let rt = &lb.server.listeners()[0];
    let backends: u64 = rt
        .view
        .load()
        .backends
        .iter()
        .map(|b| b.active.load(Ordering::SeqCst))
        .sum();
    (
        rt.active.load(Ordering::SeqCst),
        backends,
        lb.server.open_connections(),
    )
}

async fn wait_for_no_leak(lb: &Lb, baseline_fds: usize) {
    wait_until("active counts back to zero", || counts(lb) == (0, 0, 0)).await;
    wait_until("descriptors back to the baseline", || {
        open_fds() <= baseline_fds
    })
    .await;
}

/// Whether the peer closed `stream`: EOF or a reset, as opposed to data or a hang.
async fn closed(stream: &mut TcpStream) -> bool {
    let mut buf = [0u8; 4096];
    loop {
        match tokio::time::timeout(GENEROUS, stream.read(&mut buf)).await {
            Err(_) => return false,
            Ok(Ok(0) | Err(_)) => return true,
            Ok(Ok(_)) => continue,
        }
    }
}

/// A backend that sends 64 KiB, then resets (SO_LINGER 0, close).
async fn resetting_backend() -> Backend {
    serve(|s| async move {
        let mut s = s;
        let _ = s.write_all(&random_bytes(64 * 1024, 3)).await;
        let _ = s.flush().await;
        socket2::SockRef::from(&s)
            .set_linger(Some(Duration::ZERO))
            .unwrap();
        drop(s);
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backend_reset_mid_stream_closes_the_client_and_leaks_nothing() {
    let _turn = serial().await;
    let backend = resetting_backend().await;
    let lb = start_lb(&config_text(
        &[("b1", backend.addr, 100)],
        "",
        &health_frozen().await,
    ));
    let addr = lb.addr("lb", 80);
    let cycle = || async {
        let mut client = TcpStream::connect(addr).await.unwrap();
        client.write_all(b"hello").await.unwrap();
        assert!(closed(&mut client).await, "the client was not closed");
    };
    // Warm up once (lazily opened runtime descriptors, the frozen probe), then the
    // baseline is whatever is open with no connection.
    cycle().await;
    wait_until("the warm-up connection to close", || {
        counts(&lb) == (0, 0, 0)
    })
    .await;
    tokio::time::sleep(Duration::from_millis(50)).await;
    let baseline = open_fds();
    for _ in 0..20 {
        cycle().await;
    }
    assert_eq!(backend.accepted(), 21);
    wait_for_no_leak(&lb, baseline).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backend_that_never_completes_the_handshake_times_out_and_the_retry_moves_on() {
    let _turn = serial().await;
    let (hole, _socket, _fillers) = blackhole();
    let good = named_backend("good").await;
    let text = config_text(
        &[("hole", hole, 100), ("good", good.addr, 100)],
        "backend_connect_timeout_ms = 200\nconnect_retries = 1",
        &format!("scheduler = \"rr\"\n{}", health_sink().await),
    );
    let lb = start_lb(&text);
    let addr = lb.addr("lb", 80);
    let mut slow = 0;
    for _ in 0..4 {
        let started = std::time::Instant::now();
        let mut client = TcpStream::connect(addr).await.unwrap();
        let got = tokio::time::timeout(GENEROUS, read_n(&mut client, 4))
            .await
            .unwrap();
        assert_eq!(got, b"good");
        let took = started.elapsed();
        assert!(took < Duration::from_secs(2), "took {took:?}");
        if took >= Duration::from_millis(190) {
            slow += 1;
        }
    }
    // rr puts the black hole first at least once (the retry also advances the
    // rotation, so it may be first every time); each of those timed out, then the
    // retry reached the good backend.
    assert!(slow >= 1, "no connection tried the black hole");
    assert_eq!(good.accepted(), 4);
    let hole_state = lb.server.listeners()[0].view.load().backends[0].clone();
    assert_eq!(hole_state.metrics.connect_failures.get(), slow);
}

/// One message per backend connection whose read side ended.
type Ended = tokio::sync::mpsc::UnboundedReceiver<()>;

/// A backend that reports when its read side ends (EOF or reset), echoing until then.
async fn watching_backend() -> (Backend, Ended) {
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    let backend = serve(move |mut s| {
        let tx = tx.clone();
        async move {
            let mut buf = [0u8; 1024];
            loop {
                match s.read(&mut buf).await {
                    Ok(0) | Err(_) => break,
                    Ok(n) => {
                        if s.write_all(&buf[..n]).await.is_err() {
                            break;
                        }
                    }
                }
            }
            let _ = tx.send(());
        }
    })
    .await;
    (backend, rx)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_reset_closes_the_backend_side_and_leaks_nothing() {
    let _turn = serial().await;
    let (backend, mut ended) = watching_backend().await;
    let lb = start_lb(&config_text(
        &[("b1", backend.addr, 100)],
        "",
        &health_frozen().await,
    ));
    let addr = lb.addr("lb", 80);
    async fn cycle(addr: std::net::SocketAddr, ended: &mut Ended) {
        let mut client = TcpStream::connect(addr).await.unwrap();
        client.write_all(b"ping").await.unwrap();
        assert_eq!(read_n(&mut client, 4).await, b"ping");
        socket2::SockRef::from(&client)
            .set_linger(Some(Duration::ZERO))
            .unwrap();
        drop(client);
        tokio::time::timeout(GENEROUS, ended.recv())
            .await
            .expect("the backend side was not closed")
            .unwrap();
    }
    cycle(addr, &mut ended).await;
    wait_until("the warm-up connection to close", || {
        counts(&lb) == (0, 0, 0)
    })
    .await;
    tokio::time::sleep(Duration::from_millis(50)).await;
    let baseline = open_fds();
    for _ in 0..20 {
        cycle(addr, &mut ended).await;
    }
    wait_for_no_leak(&lb, baseline).await;
}

/// On tokio's paused clock: a client that stops sending (without closing) for longer
/// than `established_timeout` has its backend side closed at that time.
#[tokio::test(start_paused = true)]
async fn a_silent_client_has_its_backend_side_closed_after_the_idle_timeout() {
    let _turn = serial().await;
    let (backend, mut ended) = watching_backend().await;
    let lb = start_lb(&config_text(
        &[("b1", backend.addr, 100)],
        "",
        &format!("established_timeout = 10\n{}", health_frozen().await),
    ));
    let mut client = TcpStream::connect(lb.addr("lb", 80)).await.unwrap();
    client.write_all(b"ping").await.unwrap();
    assert_eq!(read_n(&mut client, 4).await, b"ping");
    let silent_since = tokio::time::Instant::now();
    tokio::time::timeout(Duration::from_secs(60), ended.recv())
        .await
        .expect("the backend side was never closed")
        .unwrap();
    let after = silent_since.elapsed();
    assert!(
        after >= Duration::from_secs(10) && after < Duration::from_secs(11),
        "backend side closed after {after:?} of silence"
    );
    assert!(closed(&mut client).await, "the client side is closed too");
    wait_until("active counts back to zero", || counts(&lb) == (0, 0, 0)).await;
}

/// A panic in a connection task is caught by tokio (it only ends that task) as long
/// as the release profile keeps unwinding: `panic = "abort"` would turn it into a
/// process exit. No test-only hook in the data path can make a task panic, so this
/// guards the setting instead.
#[test]
fn panics_unwind_in_every_profile() {
    let manifest =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/Cargo.toml")).unwrap();
    let doc: toml_edit::DocumentMut = manifest.parse().unwrap();
    if let Some(profiles) = doc.get("profile").and_then(|p| p.as_table()) {
        for (name, profile) in profiles.iter() {
            let panic = profile.get("panic").and_then(|v| v.as_str());
            assert_ne!(panic, Some("abort"), "profile {name} aborts on panic");
        }
    }
}
