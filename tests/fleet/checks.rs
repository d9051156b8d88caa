//! What the fleet's scenes check and wait for: who served what, failures after an
//! event, the router's route, log lines.

use crate::daemons::{self, Node, Router};
use crate::traffic::{Load, Record, RouteWatch};
use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

/// A connection slower than this counts as hit by a failover.
pub const SLOW: Duration = Duration::from_millis(500);

/// Connections that failed (or, with `slow`, took longer than [`SLOW`]) among
/// those started after `since`, by start.
pub fn hit_after(records: &[Record], since: Instant, slow: bool) -> Vec<Record> {
    let mut hit: Vec<Record> = records
        .iter()
        .filter(|r| r.start >= since && (r.outcome.is_err() || (slow && r.took > SLOW)))
        .cloned()
        .collect();
    hit.sort_by_key(|r| r.start);
    hit
}

pub fn assert_within(hit: &[Record], since: Instant, bound: Duration, what: &str) {
    let late: Vec<_> = hit.iter().filter(|r| r.start - since > bound).collect();
    assert!(
        late.is_empty(),
        "new connections still failing {bound:?} {what}: {late:#?}"
    );
}

pub fn served_by(r: &Record) -> Option<usize> {
    r.outcome.as_ref().ok().map(|s| s.node)
}

pub fn spread(records: &[Record]) -> BTreeMap<usize, usize> {
    let mut spread = BTreeMap::new();
    for n in records.iter().filter_map(served_by) {
        *spread.entry(n).or_insert(0) += 1;
    }
    spread
}

pub fn nodes_per_client(records: &[Record]) -> BTreeMap<usize, BTreeSet<usize>> {
    let mut map: BTreeMap<usize, BTreeSet<usize>> = BTreeMap::new();
    for r in records {
        if let Some(n) = served_by(r) {
            map.entry(r.client).or_default().insert(n);
        }
    }
    map
}

pub fn assert_all_served(records: &[Record], what: &str) {
    let failed: Vec<_> = records.iter().filter(|r| r.outcome.is_err()).collect();
    assert!(failed.is_empty(), "{what}: connections failed: {failed:#?}");
}

/// `sch`: every client address reached one backend, whichever node served it.
pub fn assert_sch_agrees(records: &[Record]) {
    let mut backends: BTreeMap<usize, BTreeSet<&str>> = BTreeMap::new();
    for r in records {
        if let Ok(s) = &r.outcome {
            backends.entry(r.client).or_default().insert(&s.backend);
        }
    }
    let split: Vec<_> = backends.iter().filter(|(_, b)| b.len() > 1).collect();
    let served = records.iter().filter(|r| r.outcome.is_ok()).count();
    println!(
        "fleet: sch: {} clients, {served} connections, {} clients reached more than one backend",
        backends.len(),
        split.len()
    );
    assert!(
        split.is_empty(),
        "sch sent a client to several backends: {split:?}"
    );
}

pub async fn wait_count(load: &Load, n: usize) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while load.count() < n {
        assert!(
            Instant::now() < deadline,
            "the clients made only {} connections",
            load.count()
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

pub async fn wait_route(
    routes: &RouteWatch,
    nodes: &[Node],
    router: &Router,
    want: &[usize],
    within: Duration,
) {
    if !routes.wait_for(want, within).await {
        let logs: Vec<String> = nodes.iter().map(Node::logs).collect();
        panic!(
            "the router's route never became {want:?} (it is {:?})\n--- router bird:\n{}\n{}",
            routes.now(),
            daemons::read(&router.dir.join("bird.log")),
            logs.join("\n")
        );
    }
}

pub async fn wait_gone(routes: &RouteWatch, n: usize, since: Instant, node: &Node) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while routes.first_after(since, |s| !s.contains(&n)).is_none() {
        assert!(
            Instant::now() < deadline,
            "the route kept node {n}:\n{}",
            node.logs()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The first line of node's edgelb log containing `text`, waiting for it.
pub async fn wait_log(node: &Node, text: &str, within: Duration) -> String {
    let deadline = Instant::now() + within;
    loop {
        let log = node
            .edgelb
            .as_ref()
            .map(|e| e.log_text())
            .unwrap_or_default();
        if let Some(line) = log.lines().find(|l| l.contains(text)) {
            return line.to_string();
        }
        assert!(
            Instant::now() < deadline,
            "no {text:?} in the log:\n{}",
            node.logs()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
