//! The data path end to end: real loopback backends, the real listener.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::time::Duration;
use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// A guard against a hang, not a performance assertion.
const GENEROUS: Duration = Duration::from_secs(20);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_mebibyte_each_way_arrives_intact() {
    let backend = echo_backend().await;
    let lb = start_lb(&config_text(&[("b1", backend.addr, 100)], "", ""));
    let mut client = TcpStream::connect(lb.addr("lb", 80)).await.unwrap();
    let payload = random_bytes(1 << 20, 7);
    let (mut r, mut w) = client.split();
    let send = async {
        w.write_all(&payload).await.unwrap();
        w.shutdown().await.unwrap();
    };
    let mut echoed = Vec::new();
    let recv = r.read_to_end(&mut echoed);
    let ((), n) = tokio::time::timeout(GENEROUS, async { tokio::join!(send, recv) })
        .await
        .unwrap();
    assert_eq!(n.unwrap(), payload.len());
    assert!(echoed == payload, "echoed bytes differ");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_half_close_reaches_the_backend_and_its_reply_still_flows() {
    // The backend reads to EOF, then answers with what it got, then closes.
    let backend = serve(|mut s| async move {
        let mut got = Vec::new();
        s.read_to_end(&mut got).await.unwrap();
        s.write_all(format!("got {} bytes", got.len()).as_bytes())
            .await
            .unwrap();
        s.shutdown().await.unwrap();
    })
    .await;
    let lb = start_lb(&config_text(&[("b1", backend.addr, 100)], "", ""));
    let mut client = TcpStream::connect(lb.addr("lb", 80)).await.unwrap();
    client.write_all(b"hello").await.unwrap();
    client.shutdown().await.unwrap();
    let reply = tokio::time::timeout(GENEROUS, read_to_end(&mut client))
        .await
        .unwrap();
    assert_eq!(reply, b"got 5 bytes");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backend_half_close_reaches_the_client_which_can_still_send() {
    // The backend says bye and shuts its write side, then reads what follows.
    let (tx, rx) = tokio::sync::oneshot::channel::<Vec<u8>>();
    let tx = std::sync::Mutex::new(Some(tx));
    let backend = serve(move |mut s| {
        let tx = tx.lock().unwrap().take();
        async move {
            s.write_all(b"bye").await.unwrap();
            s.shutdown().await.unwrap();
            let mut rest = Vec::new();
            s.read_to_end(&mut rest).await.unwrap();
            if let Some(tx) = tx {
                tx.send(rest).unwrap();
            }
        }
    })
    .await;
    // Probes go elsewhere: this backend's handler takes the first connection.
    let sink = health_sink().await;
    let lb = start_lb(&config_text(&[("b1", backend.addr, 100)], "", &sink));
    let mut client = TcpStream::connect(lb.addr("lb", 80)).await.unwrap();
    let got = tokio::time::timeout(GENEROUS, read_to_end(&mut client))
        .await
        .unwrap();
    assert_eq!(got, b"bye");
    client.write_all(b"still here").await.unwrap();
    client.shutdown().await.unwrap();
    let rest = tokio::time::timeout(GENEROUS, rx).await.unwrap().unwrap();
    assert_eq!(rest, b"still here");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_backend_is_skipped_by_the_retry() {
    let good = named_backend("good").await;
    let dead = refused_addr();
    // Probes go elsewhere: "dead" stays eligible, so the retry is what skips it.
    let text = config_text(
        &[("dead", dead, 100), ("good", good.addr, 100)],
        "connect_retries = 1",
        &format!("scheduler = \"rr\"\n{}", health_sink().await),
    );
    let lb = start_lb(&text);
    for _ in 0..6 {
        let mut client = TcpStream::connect(lb.addr("lb", 80)).await.unwrap();
        let got = tokio::time::timeout(GENEROUS, read_n(&mut client, 4))
            .await
            .unwrap();
        assert_eq!(got, b"good");
    }
    assert_eq!(good.accepted(), 6);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn all_backends_down_closes_the_client_promptly() {
    let text = config_text(
        &[("d1", refused_addr(), 100), ("d2", refused_addr(), 100)],
        "",
        "",
    );
    let lb = start_lb(&text);
    let mut client = TcpStream::connect(lb.addr("lb", 80)).await.unwrap();
    let mut buf = [0u8; 16];
    let read = tokio::time::timeout(GENEROUS, client.read(&mut buf))
        .await
        .unwrap();
    assert!(
        matches!(read, Ok(0) | Err(_)),
        "expected the client to be closed: {read:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_backend_with_weight_closes_the_client_at_once() {
    let backend = echo_backend().await;
    let lb = start_lb(&config_text(&[("b1", backend.addr, 0)], "", ""));
    let mut client = TcpStream::connect(lb.addr("lb", 80)).await.unwrap();
    let mut buf = [0u8; 16];
    let read = tokio::time::timeout(GENEROUS, client.read(&mut buf))
        .await
        .unwrap();
    assert!(matches!(read, Ok(0) | Err(_)), "{read:?}");
    assert_eq!(backend.accepted(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_concurrent_connections_are_proxied_correctly() {
    let backend = echo_backend().await;
    let lb = start_lb(&config_text(
        &[("b1", backend.addr, 100)],
        "",
        &health_sink().await,
    ));
    let addr = lb.addr("lb", 80);
    let mut clients = Vec::new();
    for i in 0..1000u64 {
        clients.push(TcpStream::connect(addr).await.unwrap());
        let _ = i;
    }
    let tasks: Vec<_> = clients
        .into_iter()
        .enumerate()
        .map(|(i, mut c)| {
            tokio::spawn(async move {
                let payload = random_bytes(4096, i as u64 + 1);
                c.write_all(&payload).await.unwrap();
                c.shutdown().await.unwrap();
                let echoed = read_to_end(&mut c).await;
                assert!(echoed == payload, "connection {i} got other bytes");
            })
        })
        .collect();
    for t in tasks {
        tokio::time::timeout(GENEROUS, t).await.unwrap().unwrap();
    }
    assert_eq!(backend.accepted(), 1000);
    wait_until("connections to close", || lb.server.open_connections() == 0).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_connections_refuses_past_the_cap_and_recovers() {
    let backend = echo_backend().await;
    let lb = start_lb(&config_text(
        &[("b1", backend.addr, 100)],
        "max_connections = 2",
        "",
    ));
    let addr = lb.addr("lb", 80);
    let mut held = Vec::new();
    for _ in 0..2 {
        let mut c = TcpStream::connect(addr).await.unwrap();
        c.write_all(b"x").await.unwrap();
        assert_eq!(read_n(&mut c, 1).await, b"x");
        held.push(c);
    }
    let mut third = TcpStream::connect(addr).await.unwrap();
    let mut buf = [0u8; 1];
    let read = tokio::time::timeout(GENEROUS, third.read(&mut buf))
        .await
        .unwrap();
    assert!(matches!(read, Ok(0) | Err(_)), "{read:?}");
    drop(held.pop());
    wait_until("a slot to free", || lb.server.open_connections() < 2).await;
    let mut fourth = TcpStream::connect(addr).await.unwrap();
    fourth.write_all(b"y").await.unwrap();
    assert_eq!(read_n(&mut fourth, 1).await, b"y");
}

/// An echoed connection through `addr`, or `None` when the balancer closed it.
async fn try_echo(addr: std::net::SocketAddr) -> Option<TcpStream> {
    let mut c = TcpStream::connect(addr).await.unwrap();
    c.write_all(b"x").await.ok()?;
    let mut buf = [0u8; 1];
    match tokio::time::timeout(GENEROUS, c.read(&mut buf))
        .await
        .unwrap()
    {
        Ok(1) => Some(c),
        _ => None,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_changes_max_connections() {
    let backend = echo_backend().await;
    let text = |max: u32| {
        config_text(
            &[("b1", backend.addr, 100)],
            &format!("max_connections = {max}"),
            "",
        )
    };
    let lb = start_lb(&text(2));
    let addr = lb.addr("lb", 80);
    let mut held = Vec::new();
    for _ in 0..2 {
        held.push(try_echo(addr).await.expect("under the cap"));
    }
    assert!(
        try_echo(addr).await.is_none(),
        "a third past max_connections = 2"
    );

    lb.server.apply(&parse(&text(3))).unwrap();
    held.push(try_echo(addr).await.expect("the raised cap admits a third"));

    // Lowered below what is open: those stay, new ones wait for room.
    lb.server.apply(&parse(&text(1))).unwrap();
    assert!(try_echo(addr).await.is_none(), "past max_connections = 1");
    let mut kept = held.pop().unwrap();
    kept.write_all(b"y").await.unwrap();
    assert_eq!(read_n(&mut kept, 1).await, b"y", "open connections run on");
    drop(held);
    wait_until("one open", || lb.server.open_connections() == 1).await;
    assert!(try_echo(addr).await.is_none(), "still at the cap of 1");
    drop(kept);
    wait_until("none open", || lb.server.open_connections() == 0).await;
    assert!(try_echo(addr).await.is_some(), "room under the cap of 1");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ipv6_listeners_and_backends_work() {
    let Ok(listener) = tokio::net::TcpListener::bind("[::1]:0").await else {
        eprintln!("no IPv6 loopback on this machine");
        return;
    };
    let addr = serve_on(listener, echo).addr;
    let text = config_text(&[("b6", addr, 100)], "", "")
        .replace("address = \"127.0.0.1\"", "address = \"::1\"");
    let lb = start_lb(&text);
    let lb_addr = lb.addr("lb", 80);
    assert!(lb_addr.is_ipv6());
    let mut c = TcpStream::connect(lb_addr).await.unwrap();
    c.write_all(b"six").await.unwrap();
    assert_eq!(read_n(&mut c, 3).await, b"six");
}

/// Idle timeout, on tokio's paused clock: `established_timeout = 10` closes an idle
/// connection after 10 virtual seconds and spares one that keeps moving bytes.
#[tokio::test(start_paused = true)]
async fn idle_timeout_closes_an_idle_connection_and_spares_a_busy_one() {
    let backend = echo_backend().await;
    let lb = start_lb(&config_text(
        &[("b1", backend.addr, 100)],
        "",
        "established_timeout = 10",
    ));
    let addr = lb.addr("lb", 80);

    let mut idle = TcpStream::connect(addr).await.unwrap();
    let mut busy = TcpStream::connect(addr).await.unwrap();
    let start = tokio::time::Instant::now();
    // The busy one sends a byte every 4 s for 30 s: never 10 s without traffic.
    let busy_task = tokio::spawn(async move {
        for _ in 0..8 {
            busy.write_all(b"b").await.unwrap();
            assert_eq!(read_n(&mut busy, 1).await, b"b");
            tokio::time::sleep(Duration::from_secs(4)).await;
        }
        let alive_until = tokio::time::Instant::now();
        let mut buf = [0u8; 1];
        let read = tokio::time::timeout(Duration::from_secs(60), busy.read(&mut buf)).await;
        let n = read
            .expect("the busy connection was never closed")
            .unwrap_or(0);
        (alive_until, tokio::time::Instant::now(), n)
    });
    let mut buf = [0u8; 1];
    let read = tokio::time::timeout(Duration::from_secs(60), idle.read(&mut buf)).await;
    let n = read
        .expect("the idle connection was not closed")
        .unwrap_or(0);
    let idle_closed = start.elapsed();
    assert_eq!(n, 0, "the idle connection is closed");
    assert!(
        idle_closed >= Duration::from_secs(10) && idle_closed < Duration::from_secs(11),
        "closed after {idle_closed:?}"
    );
    let (alive_until, closed_at, n) = busy_task.await.unwrap();
    assert_eq!(n, 0);
    assert!(
        alive_until - start >= Duration::from_secs(30),
        "busy connection lived {:?}",
        alive_until - start
    );
    let quiet = closed_at - alive_until;
    assert!(
        quiet >= Duration::from_secs(5) && quiet <= Duration::from_secs(10),
        "closed {quiet:?} after its last byte (4 s of which already idle)"
    );
}

/// Bulk transfers move to splice(2) on Linux after a few full buffers: 8 MiB one
/// way, the FIN passed on at the end, and the reply still flowing back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bulk_transfer_arrives_intact_and_its_fin_is_passed_on() {
    let backend = serve(|mut s| async move {
        let mut got = Vec::new();
        s.read_to_end(&mut got).await.unwrap();
        let sum = got
            .iter()
            .fold(0u64, |h, &b| h.wrapping_mul(31).wrapping_add(u64::from(b)));
        s.write_all(format!("{} {sum}", got.len()).as_bytes())
            .await
            .unwrap();
        s.shutdown().await.unwrap();
    })
    .await;
    let lb = start_lb(&config_text(&[("b1", backend.addr, 100)], "", ""));
    let mut client = TcpStream::connect(lb.addr("lb", 80)).await.unwrap();
    let payload = random_bytes(8 << 20, 11);
    let sum = payload
        .iter()
        .fold(0u64, |h, &b| h.wrapping_mul(31).wrapping_add(u64::from(b)));
    client.write_all(&payload).await.unwrap();
    client.shutdown().await.unwrap();
    let reply = tokio::time::timeout(GENEROUS, read_to_end(&mut client))
        .await
        .unwrap();
    assert_eq!(
        String::from_utf8(reply).unwrap(),
        format!("{} {sum}", payload.len())
    );
}

/// The data path relies on accepted sockets inheriting TCP_NODELAY from the
/// listening socket (one setsockopt per listener, not per connection).
#[test]
fn accepted_sockets_inherit_tcp_nodelay_from_the_listener() {
    let listener = edgelb::listener::bind("127.0.0.1:0".parse().unwrap()).unwrap();
    listener.set_nonblocking(false).unwrap();
    let addr = listener.local_addr().unwrap();
    let _client = std::net::TcpStream::connect(addr).unwrap();
    let (accepted, _) = listener.accept().unwrap();
    assert!(accepted.nodelay().unwrap());
}
