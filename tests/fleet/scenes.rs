//! The fleet's scenes in order: spread, `sch` agreement over a port-hashing router,
//! a drain with `drain_delay`, edgelb killed, a node crashed (BFD), each node back,
//! the watcher stopped.

use crate::checks::*;
use crate::daemons::{Node, Router};
use crate::net::{self, NODES};
use crate::traffic::{self, Load, Record, RouteWatch};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::runtime::Handle;

/// After edgelb is killed alone, its watcher withdraws the route: new connections
/// fail (the node's kernel refuses them) for at most this long.
const WATCHER_FAILOVER: Duration = Duration::from_millis(1500);
/// After a whole node vanishes, BFD (3 x 100 ms) drops it: new connections are
/// delayed (their SYN to the dead node is retried) for at most this long.
const BFD_FAILOVER: Duration = Duration::from_millis(1500);

pub async fn run(client: &Handle, routes: &RouteWatch, nodes: &mut [Node], router: &Router) {
    let started = Instant::now();
    wait_route(routes, nodes, router, &[1, 2, 3], Duration::from_secs(30)).await;
    println!(
        "fleet: all 3 nodes announced {:?} after start",
        started.elapsed()
    );
    let mut all = Vec::new();

    // Routers hashing on addresses only: one client, one node.
    let by_address = traffic::rounds(client, 3).await;
    assert_all_served(&by_address, "fib_multipath_hash_policy = 0");
    let per_node = spread(&by_address);
    let per_client = nodes_per_client(&by_address);
    println!("fleet: policy 0: connections per node {per_node:?}");
    if per_client.values().any(|n| n.len() > 1) {
        let logs: Vec<String> = nodes.iter().map(Node::logs).collect();
        panic!(
            "with fib_multipath_hash_policy = 0 each client reaches one node: {per_client:?}\nroute changes: {:?}\n{}",
            routes.history(started),
            logs.join("\n")
        );
    }
    all.extend(by_address);

    // 1 and 2: hashing on ports too.
    net::sysctl(net::ROUTER, "net.ipv4.fib_multipath_hash_policy", "1");
    let by_port = traffic::rounds(client, 6).await;
    assert_all_served(&by_port, "fib_multipath_hash_policy = 1");
    let spread = spread(&by_port);
    println!(
        "fleet: policy 1: connections per node {spread:?} of {}",
        by_port.len()
    );
    for n in 1..=NODES {
        let share = spread.get(&n).copied().unwrap_or(0) as f64 / by_port.len() as f64;
        assert!(
            share >= 0.10,
            "node {n} served {share:.3} of the connections: {spread:?}"
        );
    }
    let several = nodes_per_client(&by_port)
        .values()
        .filter(|n| n.len() >= 2)
        .count();
    println!(
        "fleet: policy 1: {several} of {} clients reached 2 or more nodes",
        net::CLIENTS
    );
    assert!(
        several > net::CLIENTS / 2,
        "only {several} clients reached several nodes"
    );
    all.extend(by_port);
    assert_sch_agrees(&all);

    all.extend(drain(client, routes, &mut nodes[0]).await);
    all.extend(back(client, routes, nodes, router, 1).await);
    all.extend(kill_edgelb(client, routes, &mut nodes[1]).await);
    all.extend(back(client, routes, nodes, router, 2).await);
    all.extend(crash(client, routes, &mut nodes[2]).await);
    all.extend(back(client, routes, nodes, router, 3).await);
    assert_sch_agrees(&all);
    watcher_stops(routes, &mut nodes[0]).await;
    println!(
        "fleet: {} connections in all, {:?}",
        all.len(),
        started.elapsed()
    );
    println!("fleet: route changes {:?}", routes.history(started));
}

/// 3: SIGTERM with drain_delay = 5 under load; the route loses the node before
/// its listeners close; no new connection fails; long-lived ones finish normally.
async fn drain(client: &Handle, routes: &RouteWatch, node: &mut Node) -> Vec<Record> {
    let long = long_lived(client, node.n, 4).await;
    let load = Load::start(client, Duration::from_millis(5));
    wait_count(&load, 50).await;
    let term = Instant::now();
    node.edgelb().signal(libc::SIGTERM);
    let closed = wait_log(node, "stopped listening", Duration::from_secs(10)).await;
    let closed_at = crate::log_time(&closed);
    let withdrawn = routes
        .first_after(term, |s| !s.contains(&node.n))
        .unwrap_or_else(|| {
            panic!(
                "the route kept node {} until it closed:\n{}",
                node.n,
                node.logs()
            )
        });
    // The end of the look that saw the route change: the latest it can have been.
    let margin = closed_at
        .duration_since(withdrawn.seen_wall)
        .unwrap_or_else(|_| {
            panic!(
                "node {} closed its listeners before the router dropped it",
                node.n
            )
        });
    println!(
        "fleet: drain: route withdrawn {:?} after SIGTERM, {margin:?} before the listeners closed",
        withdrawn.asked.saturating_duration_since(term)
    );
    // Traffic after the close too, then the long-lived connections end.
    let count = load.count();
    wait_count(&load, count + 50).await;
    long.finish.store(true, Ordering::Relaxed);
    for task in long.tasks {
        let pings = task.await.unwrap().unwrap_or_else(|e| {
            panic!(
                "a long-lived connection to the draining node failed: {e}\n{}",
                node.logs()
            )
        });
        assert!(pings >= 10, "only {pings} round trips");
    }
    let status = node.edgelb().wait_exit(Duration::from_secs(10));
    assert!(
        status.success(),
        "drain ended with {status}:\n{}",
        node.logs()
    );
    let records = load.stop().await;
    let failed: Vec<_> = records.iter().filter(|r| r.outcome.is_err()).collect();
    let late = records
        .iter()
        .filter(|r| r.start > term && served_by(r) == Some(node.n))
        .count();
    println!(
        "fleet: drain: {} new connections, {} failed, {late} served by the draining node after SIGTERM; 4 long-lived finished",
        records.len(),
        failed.len()
    );
    assert!(
        failed.is_empty(),
        "connections failed during the drain: {failed:#?}"
    );
    node.edgelb = None;
    records
}

/// 4a: edgelb alone SIGKILLed: its watcher sees the refusal and withdraws.
async fn kill_edgelb(client: &Handle, routes: &RouteWatch, node: &mut Node) -> Vec<Record> {
    let load = Load::start(client, Duration::from_millis(5));
    wait_count(&load, 50).await;
    let kill = Instant::now();
    node.edgelb().signal(libc::SIGKILL);
    let n = node.n;
    wait_gone(routes, n, kill, node).await;
    let withdrawn = routes.first_after(kill, |s| !s.contains(&n)).unwrap();
    let count = load.count();
    wait_count(&load, count + 100).await;
    let records = load.stop().await;
    node.edgelb = None;
    let hit = hit_after(&records, kill, false);
    println!(
        "fleet: edgelb killed on node {n}: route withdrawn after {:?}; of {} new connections {} failed, the last started {:?} after the kill",
        withdrawn.asked.saturating_duration_since(kill),
        records.iter().filter(|r| r.start >= kill).count(),
        hit.len(),
        hit.last().map(|r| r.start - kill)
    );
    assert_within(&hit, kill, WATCHER_FAILOVER, "after edgelb was killed");
    records
}

/// 4b: the whole node gone at once (packets dropped, every daemon SIGKILLed):
/// the router's BFD notices.
async fn crash(client: &Handle, routes: &RouteWatch, node: &mut Node) -> Vec<Record> {
    let load = Load::start(client, Duration::from_millis(5));
    wait_count(&load, 50).await;
    let began = Instant::now();
    node.crash();
    // New connections are those opened once it is gone; before, they were open ones.
    let crash = Instant::now();
    let n = node.n;
    wait_gone(routes, n, began, node).await;
    let withdrawn = routes.first_after(began, |s| !s.contains(&n)).unwrap();
    let count = load.count();
    wait_count(&load, count + 100).await;
    let records = load.stop().await;
    let hit = hit_after(&records, crash, true);
    let failed = hit.iter().filter(|r| r.outcome.is_err()).count();
    println!(
        "fleet: node {n} crashed: route withdrawn after {:?} (BFD); of {} new connections {failed} failed and {} took over {SLOW:?} (at most {:?}: their SYN to the dead node was retried), the last started {:?} after the crash",
        withdrawn.asked.saturating_duration_since(began),
        records.iter().filter(|r| r.start >= crash).count(),
        hit.len() - failed,
        hit.iter().map(|r| r.took).max(),
        hit.last().map(|r| r.start - crash)
    );
    assert_within(&hit, crash, BFD_FAILOVER, "after the node crashed");
    records
}

/// The order `systemctl stop edgelb` follows: the watcher stops first, and on its
/// way out withdraws the route, before edgelb's drain begins.
async fn watcher_stops(routes: &RouteWatch, node: &mut Node) {
    let stop = Instant::now();
    node.watch
        .as_ref()
        .expect("the watcher runs")
        .signal(libc::SIGTERM);
    wait_gone(routes, node.n, stop, node).await;
    let withdrawn = routes.first_after(stop, |s| !s.contains(&node.n)).unwrap();
    let log = crate::daemons::read(&node.watch_log());
    assert!(
        log.contains("withdraw edgelb_vip: stopping (SIGTERM)"),
        "{log}"
    );
    println!(
        "fleet: watcher stopped on node {}: route withdrawn after {:?}",
        node.n,
        withdrawn.asked.saturating_duration_since(stop)
    );
}

/// 5: node `n` back (edgelb restarted, or the whole node after a crash): it
/// announces again and gets new connections again.
async fn back(
    client: &Handle,
    routes: &RouteWatch,
    nodes: &mut [Node],
    router: &Router,
    n: usize,
) -> Vec<Record> {
    let node = &mut nodes[n - 1];
    let start = Instant::now();
    if node.bird.is_none() {
        node.recover();
    } else {
        node.start_edgelb();
    }
    wait_route(routes, nodes, router, &[1, 2, 3], Duration::from_secs(20)).await;
    let announced = start.elapsed();
    let records = traffic::rounds(client, 2).await;
    assert_all_served(&records, "after a node came back");
    let spread = spread(&records);
    println!("fleet: node {n} back: announced {announced:?} after its start; connections per node {spread:?}");
    let share = spread.get(&n).copied().unwrap_or(0) as f64 / records.len() as f64;
    assert!(
        share >= 0.10,
        "node {n} got {share:.3} of the connections after coming back: {spread:?}"
    );
    records
}

/// Long-lived connections served by node `n`, each pinging every 100 ms until
/// told to finish; each task gives its number of round trips.
struct LongLived {
    finish: Arc<AtomicBool>,
    tasks: Vec<tokio::task::JoinHandle<Result<u32, String>>>,
}

async fn long_lived(client: &Handle, n: usize, count: usize) -> LongLived {
    let finish = Arc::new(AtomicBool::new(false));
    let mut tasks = Vec::new();
    for c in 0..net::CLIENTS * 4 {
        if tasks.len() == count {
            break;
        }
        let (stream, served) = client
            .spawn(traffic::open(c % net::CLIENTS))
            .await
            .unwrap()
            .unwrap();
        if served.node != n {
            continue;
        }
        let finish = finish.clone();
        tasks.push(client.spawn(async move {
            let mut stream = stream;
            let mut pings = 0;
            loop {
                let last = finish.load(Ordering::Relaxed);
                traffic::round_trip(&mut stream, b"long-lived ping\n").await?;
                pings += 1;
                if last {
                    traffic::finish(&mut stream).await?;
                    return Ok(pings);
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }));
    }
    assert_eq!(tasks.len(), count, "too few connections landed on node {n}");
    LongLived { finish, tasks }
}
