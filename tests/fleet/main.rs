//! A fleet of three edgelb nodes behind one router's ECMP route, each announcing the
//! load-balancer address over BGP (BIRD) only while its `/healthz` answers 200
//! (issue 16, SPEC section 8, README "Fleet"). Built on network namespaces: needs
//! root (CI is root), bird2 and nftables (scripts/test.sh installs them).
//!
//! The test's own threads enter the client and backend namespaces (setns), so
//! clients and backends are tokio tasks here, not processes: a socket belongs to the
//! namespace it was created in.
#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "../support/mod.rs"]
mod support;

mod checks;
mod daemons;
mod net;
mod scenes;
mod traffic;

use daemons::{require, Node, Router};
use std::net::Ipv4Addr;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use traffic::RouteWatch;

/// Stops with a reason when the test cannot run here: never a silent skip.
pub fn preflight() {
    // SAFETY: geteuid has no preconditions.
    let root = unsafe { libc::geteuid() } == 0;
    assert!(
        root,
        "the fleet test builds network namespaces and needs root (CI runs as root)"
    );
    require("ip", "iproute2");
    require("bird", "bird2");
    require("nft", "nftables");
    require("python3", "python3");
}

#[test]
fn fleet_of_three_nodes_behind_ecmp() {
    preflight();
    let _lock = net::Lock::take("fleet");
    let spaces = net::build();
    let backend_rt = net::runtime_in(net::BACKEND, 1);
    backend_rt
        .block_on(backend_rt.spawn(traffic::serve_backends()))
        .unwrap();
    let client_rt = net::runtime_in(net::CLIENT, 2);
    let router = Router::start();
    let routes = RouteWatch::start();
    let mut nodes: Vec<Node> = (1..=net::NODES).map(Node::start).collect();
    let main = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    main.block_on(scenes::run(
        client_rt.handle(),
        &routes,
        &mut nodes,
        &router,
    ));
    // The route watch's `ip -n` runs inside the router's namespace while it looks.
    drop(routes);
    drop(nodes);
    drop(router);
    spaces.assert_empty();
}

/// An unreachable router, a BIRD that is not there and a namespace left over from a
/// killed run each get a clear message.
#[test]
fn bad_set_ups_are_reported_clearly() {
    preflight();
    let main = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    main.block_on(bad_set_ups());
}

/// Bad set-ups: a namespace left over, no BIRD where the watcher looks, a router
/// that cannot be reached.
async fn bad_set_ups() {
    let _lock = net::Lock::take("lone");
    let name = "elbf-lone".to_string();
    net::remove_leftover(&name);
    // A killed run's leftover: the namespace with a process still in it.
    net::run(std::process::Command::new("ip").args(["netns", "add", &name]));
    let mut orphan = std::process::Command::new("ip")
        .args(["netns", "exec", &name, "sleep", "600"])
        .spawn()
        .unwrap();
    while net::run(std::process::Command::new("ip").args(["netns", "pids", &name]))
        .trim()
        .is_empty()
    {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let message = net::remove_leftover(&name).expect("the leftover is found");
    assert!(message.contains(&orphan.id().to_string()), "{message}");
    assert!(!orphan.wait().unwrap().success());

    let spaces = net::Namespaces::create(std::slice::from_ref(&name));
    let mut node = Node::lone(&name);
    let said = |node: &Node, text: &str| daemons::read(&node.watch_log()).contains(text);
    wait_for(
        || said(&node, "cannot reach BIRD at"),
        "the watcher to say BIRD is missing",
        &node,
    )
    .await;
    assert!(said(&node, "is bird running? Debian's package is bird2"));
    node.start_bird_towards(Ipv4Addr::new(10, 88, 250, 1), Ipv4Addr::new(10, 88, 250, 2));
    wait_for(
        || said(&node, "BIRD answers again"),
        "the watcher to find BIRD",
        &node,
    )
    .await;
    wait_for(
        || {
            said(&node, "BGP session not established")
                && said(&node, "router1 to 10.88.250.1 is Idle")
        },
        "the watcher to report the unreachable router",
        &node,
    )
    .await;
    println!(
        "fleet: bad set-ups:\n{message}\n{}",
        daemons::read(&node.watch_log())
    );
    drop(node);
    spaces.assert_empty();
}

async fn wait_for(mut cond: impl FnMut() -> bool, what: &str, node: &Node) {
    let deadline = Instant::now() + Duration::from_secs(15);
    while !cond() {
        assert!(
            Instant::now() < deadline,
            "timed out waiting for {what}:\n{}",
            node.logs()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The time of an edgelb log line (text format: an RFC 3339 UTC timestamp first).
pub fn log_time(line: &str) -> SystemTime {
    let stamp = line.split_whitespace().next().unwrap_or_default();
    let parse = |range: std::ops::Range<usize>| -> i64 {
        stamp
            .get(range)
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| panic!("no timestamp in {line:?}"))
    };
    let (y, m, d) = (parse(0..4), parse(5..7), parse(8..10));
    let (hh, mm) = (parse(11..13), parse(14..16));
    let seconds: f64 = stamp[17..stamp.len() - 1].parse().unwrap();
    // Days since 1970-01-01 of a proleptic Gregorian date (Howard Hinnant's
    // days_from_civil).
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let doy = (153 * ((m + 9) % 12) + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    let whole = days * 86_400 + hh * 3600 + mm * 60;
    UNIX_EPOCH + Duration::from_secs(whole as u64) + Duration::from_secs_f64(seconds)
}

#[test]
fn log_time_reads_edgelb_timestamps() {
    let t = log_time("2026-11-30T15:19:00.250000Z  INFO edgelb::server: stopped listening");
    let since = t.duration_since(UNIX_EPOCH).unwrap();
    // date -u -d 2026-11-30T15:19:00Z +%s
    assert_eq!(since, Duration::from_millis(1_796_051_940_250));
}
