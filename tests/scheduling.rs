//! Schedulers and persistence end to end: clients on distinct 127.0.0.x source
//! addresses through the real listener to named loopback backends.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use edgelb::config::Scheduler;
use edgelb::scheduler::{Candidate, FlowKey, Selector};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::Duration;
use support::*;
use tokio::net::TcpStream;

/// Connects from `source` (port chosen by the kernel); returns the stream and the
/// name the backend announced.
async fn reach_from(lb: SocketAddr, source: Ipv4Addr) -> (TcpStream, String) {
    let mut stream = connect_from(IpAddr::V4(source), lb).await;
    let name = read_n(&mut stream, 2).await;
    (stream, String::from_utf8(name).unwrap())
}

async fn three_backends() -> Vec<Backend> {
    vec![
        named_backend("b1").await,
        named_backend("b2").await,
        named_backend("b3").await,
    ]
}

fn file(backends: &[Backend], weights: &[u32], extra: &str) -> String {
    let names = ["b1", "b2", "b3"];
    let list: Vec<(&str, SocketAddr, u32)> = backends
        .iter()
        .zip(weights)
        .enumerate()
        .map(|(i, (b, w))| (names[i], b.addr, *w))
        .collect();
    config_text(&list, "", extra)
}

fn source(i: u8) -> Ipv4Addr {
    Ipv4Addr::new(127, 0, 0, 10 + i)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrr_gives_the_smooth_sequence() {
    let backends = three_backends().await;
    let lb = start_lb(&file(&backends, &[5, 1, 1], "scheduler = \"wrr\""));
    let addr = lb.addr("lb", 80);
    let mut seen = Vec::new();
    for _ in 0..14 {
        seen.push(reach_from(addr, source(0)).await.1);
    }
    let cycle = ["b1", "b1", "b2", "b1", "b3", "b1", "b1"];
    let want: Vec<&str> = cycle.iter().chain(cycle.iter()).copied().collect();
    assert_eq!(seen, want);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rr_rotates_in_configuration_order_and_weight_0_is_never_picked() {
    let backends = three_backends().await;
    let lb = start_lb(&file(&backends, &[100, 0, 1], "scheduler = \"rr\""));
    let addr = lb.addr("lb", 80);
    let mut seen = Vec::new();
    for _ in 0..6 {
        seen.push(reach_from(addr, source(0)).await.1);
    }
    assert_eq!(seen, ["b1", "b3", "b1", "b3", "b1", "b3"]);
    assert_eq!(backends[1].accepted(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wlc_sends_new_connections_to_the_least_loaded() {
    let backends = three_backends().await;
    let lb = start_lb(&file(&backends[..2], &[100, 100], "scheduler = \"wlc\""));
    let addr = lb.addr("lb", 80);
    // Hold connections open: they alternate, as loads stay equal or one behind.
    let mut held = Vec::new();
    for _ in 0..4 {
        held.push(reach_from(addr, source(0)).await);
    }
    let mut names: Vec<&str> = held.iter().map(|(_, n)| n.as_str()).collect();
    names.sort_unstable();
    assert_eq!(names, ["b1", "b1", "b2", "b2"]);
    // Close both on b1: the next two go to b1, which now has fewer.
    held.retain(|(_, n)| n != "b1");
    let runtime = lb.server.listeners()[0].clone();
    wait_until("b1's connections to close", || {
        runtime.view.load().backends[0]
            .active
            .load(std::sync::atomic::Ordering::SeqCst)
            == 0
    })
    .await;
    for _ in 0..2 {
        let (s, name) = reach_from(addr, source(0)).await;
        assert_eq!(name, "b1");
        held.push((s, name));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sch_keeps_each_client_ip_on_one_backend_and_matches_the_pure_map() {
    let backends = three_backends().await;
    let lb = start_lb(&file(&backends, &[100, 100, 100], "scheduler = \"sch\""));
    let addr = lb.addr("lb", 80);
    // Another node with the same config (backends listed in another order) computes
    // the same map.
    let candidates = vec![
        Candidate::new("b3", 100, true),
        Candidate::new("b1", 100, true),
        Candidate::new("b2", 100, true),
    ];
    let other_node = Selector::build(Scheduler::Sch, candidates, "edgelb");
    let mut used = std::collections::HashSet::new();
    for i in 0..30 {
        let (s, first) = reach_from(addr, source(i)).await;
        drop(s);
        for _ in 0..3 {
            assert_eq!(
                reach_from(addr, source(i)).await.1,
                first,
                "client {}",
                source(i)
            );
        }
        let flow = FlowKey {
            client: SocketAddr::new(IpAddr::V4(source(i)), 1),
            local: addr,
        };
        let predicted = other_node
            .pick(&flow, &[])
            .map(|k| other_node.candidates()[k].server_id.to_string());
        assert_eq!(
            predicted.as_deref(),
            Some(first.as_str()),
            "client {}",
            source(i)
        );
        used.insert(first);
    }
    assert!(used.len() >= 2, "30 clients all on one backend: {used:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tch_hashes_the_four_tuple() {
    let backends = three_backends().await;
    let lb = start_lb(&file(&backends, &[100, 100, 100], "scheduler = \"tch\""));
    let addr = lb.addr("lb", 80);
    let candidates = vec![
        Candidate::new("b1", 100, true),
        Candidate::new("b2", 100, true),
        Candidate::new("b3", 100, true),
    ];
    let other_node = Selector::build(Scheduler::Tch, candidates, "edgelb");
    let mut used = std::collections::HashSet::new();
    for _ in 0..30 {
        let (s, name) = reach_from(addr, source(0)).await;
        let flow = FlowKey {
            client: s.local_addr().unwrap(),
            local: addr,
        };
        let predicted = other_node
            .pick(&flow, &[])
            .map(|k| other_node.candidates()[k].server_id.to_string());
        assert_eq!(predicted.as_deref(), Some(name.as_str()));
        used.insert(name);
    }
    assert!(
        used.len() >= 2,
        "one client's ports all on one backend: {used:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn persistence_pins_a_client_ip_over_rr() {
    let backends = three_backends().await;
    let lb = start_lb(&file(
        &backends,
        &[100, 100, 100],
        "scheduler = \"rr\"\npersistence_timeout = 60",
    ));
    let addr = lb.addr("lb", 80);
    let mut firsts = Vec::new();
    for i in 0..3 {
        let first = reach_from(addr, source(i)).await.1;
        for _ in 0..4 {
            assert_eq!(reach_from(addr, source(i)).await.1, first);
        }
        firsts.push(first);
    }
    // Without persistence rr would have rotated; three new clients took b1, b2, b3.
    assert_eq!(firsts, ["b1", "b2", "b3"]);
    let runtime = lb.server.listeners()[0].clone();
    assert_eq!(runtime.persistence.len(), 3);
}

/// Expiry on tokio's paused clock: an entry lives while a connection it placed is
/// open, then `persistence_timeout` after the last close.
#[tokio::test(start_paused = true)]
async fn persistence_entries_expire_after_the_last_use_on_the_paused_clock() {
    let backends = three_backends().await;
    let lb = start_lb(&file(
        &backends,
        &[100, 100, 100],
        "scheduler = \"rr\"\npersistence_timeout = 30\nestablished_timeout = 900",
    ));
    let addr = lb.addr("lb", 80);
    let runtime = lb.server.listeners()[0].clone();
    let (held, first) = reach_from(addr, source(0)).await;
    assert_eq!(first, "b1");
    // Open for longer than the timeout: the entry stays.
    tokio::time::sleep(Duration::from_secs(100)).await;
    assert_eq!(reach_from(addr, source(0)).await.1, "b1");
    assert_eq!(runtime.persistence.len(), 1);
    drop(held);
    // 20 s after the last close: still pinned.
    tokio::time::sleep(Duration::from_secs(20)).await;
    assert_eq!(reach_from(addr, source(0)).await.1, "b1");
    // 31 s after that last use: expired and purged; rr moves on.
    tokio::time::sleep(Duration::from_secs(31)).await;
    wait_until("the purge", || runtime.persistence.is_empty()).await;
    assert_eq!(reach_from(addr, source(0)).await.1, "b2");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn persistence_moves_a_client_when_its_backend_is_refused() {
    let backends = three_backends().await;
    let dead = refused_addr();
    let list = [("b1", backends[0].addr, 100), ("dead", dead, 100)];
    let text = config_text(
        &list,
        "connect_retries = 1",
        "scheduler = \"rr\"\npersistence_timeout = 60",
    );
    let lb = start_lb(&text);
    let addr = lb.addr("lb", 80);
    // Every client ends on b1, also those the scheduler first sent to "dead".
    for i in 0..4 {
        for _ in 0..2 {
            assert_eq!(reach_from(addr, source(i)).await.1, "b1");
        }
    }
}
