//! Tests of the consistent-hash schedulers (`sch`, `tch`) through the public
//! API: shares, determinism, disruption on change, health, retries.

use super::{Candidate, FlowKey, Selector};
use crate::config::Scheduler;
use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;

const KEYS: u32 = 20_000;

fn v4_flow(i: u32, port: u16) -> FlowKey {
    let ip = Ipv4Addr::from(0x0a00_0000 + i.wrapping_mul(2_654_435_761) % 0x00ff_ffff);
    FlowKey {
        client: SocketAddr::new(IpAddr::V4(ip), port),
        local: "198.51.100.1:443".parse().unwrap(),
    }
}

fn v6_flow(i: u32, port: u16) -> FlowKey {
    let ip = Ipv6Addr::new(0x2001, 0xdb8, 0, (i >> 16) as u16, 0, 0, 7, i as u16);
    FlowKey {
        client: SocketAddr::new(IpAddr::V6(ip), port),
        local: "[2001:db8::1]:443".parse().unwrap(),
    }
}

fn flows() -> Vec<FlowKey> {
    (0..KEYS / 2)
        .map(|i| v4_flow(i, 5000))
        .chain((0..KEYS / 2).map(|i| v6_flow(i, 5000)))
        .collect()
}

fn backends(spec: &[(&str, u32, bool)]) -> Vec<Candidate> {
    spec.iter()
        .map(|&(id, w, h)| Candidate::new(id, w, h))
        .collect()
}

/// The server_id each flow goes to.
fn map(alg: Scheduler, c: Vec<Candidate>, seed: &str, flows: &[FlowKey]) -> Vec<Arc<str>> {
    let s = Selector::build(alg, c, seed);
    flows
        .iter()
        .map(|f| Arc::clone(&s.candidates()[s.pick(f, &[]).unwrap()].server_id))
        .collect()
}

fn shares(m: &[Arc<str>]) -> HashMap<String, f64> {
    let mut counts: HashMap<String, f64> = HashMap::new();
    for id in m {
        *counts.entry(id.to_string()).or_default() += 1.0;
    }
    counts.values_mut().for_each(|v| *v /= m.len() as f64);
    counts
}

fn ten(healthy_except: Option<&str>) -> Vec<Candidate> {
    (0..10)
        .map(|i| {
            let id = format!("srv-{i:02}");
            let healthy = healthy_except != Some(id.as_str());
            Candidate::new(id, 100, healthy)
        })
        .collect()
}

fn moved(a: &[Arc<str>], b: &[Arc<str>]) -> usize {
    a.iter().zip(b).filter(|(x, y)| x != y).count()
}

#[test]
fn shares_follow_weights_v4_and_v6() {
    for alg in [Scheduler::Sch, Scheduler::Tch] {
        let c = backends(&[("a", 100, true), ("b", 50, true), ("c", 50, true)]);
        let f = flows();
        let m = map(alg, c, "seed", &f);
        for (half, name) in [(&m[..f.len() / 2], "v4"), (&m[f.len() / 2..], "v6")] {
            let s = shares(half);
            for (id, want) in [("a", 0.5), ("b", 0.25), ("c", 0.25)] {
                let got = s.get(id).copied().unwrap_or(0.0);
                assert!((got - want).abs() < 0.03, "{alg:?} {name} {id}: {got}");
            }
        }
    }
}

#[test]
fn map_ignores_config_order() {
    let spec = [
        ("x", 30, true),
        ("a", 100, true),
        ("m", 1, true),
        ("b", 60, false),
    ];
    let mut rev = spec;
    rev.reverse();
    let f = flows();
    for alg in [Scheduler::Sch, Scheduler::Tch] {
        assert_eq!(
            map(alg, backends(&spec), "s", &f),
            map(alg, backends(&rev), "s", &f),
            "{alg:?}"
        );
    }
}

#[test]
fn seed_changes_the_map() {
    let f = flows();
    let a = map(Scheduler::Sch, ten(None), "node-seed-1", &f);
    let b = map(Scheduler::Sch, ten(None), "node-seed-2", &f);
    assert!(moved(&a, &b) > f.len() / 2, "{}", moved(&a, &b));
    assert_eq!(a, map(Scheduler::Sch, ten(None), "node-seed-1", &f));
}

#[test]
fn removing_one_of_ten_moves_about_a_tenth() {
    let f = flows();
    let before = map(Scheduler::Sch, ten(None), "s", &f);
    let mut nine = ten(None);
    nine.remove(3);
    let after = map(Scheduler::Sch, nine, "s", &f);
    let n = f.len();
    let total = moved(&before, &after);
    let of_removed = before.iter().filter(|id| &***id == "srv-03").count();
    assert!(total * 10 < n * 15 / 10, "moved {total} of {n}");
    // All of the removed backend's keys move, and few others do.
    assert!(total >= of_removed);
    assert!(
        (total - of_removed) * 100 < n * 3,
        "extra {}",
        total - of_removed
    );
}

#[test]
fn adding_one_to_ten_moves_about_an_eleventh() {
    let f = flows();
    let before = map(Scheduler::Sch, ten(None), "s", &f);
    let mut eleven = ten(None);
    eleven.push(Candidate::new("srv-new", 100, true));
    let after = map(Scheduler::Sch, eleven, "s", &f);
    let n = f.len();
    let total = moved(&before, &after);
    let to_new = after.iter().filter(|id| &***id == "srv-new").count();
    assert!(total * 11 < n * 15 / 10, "moved {total} of {n}");
    assert!((total - to_new) * 100 < n, "extra {}", total - to_new);
}

#[test]
fn unhealthy_moves_only_its_keys_and_they_come_back() {
    let f = flows();
    for alg in [Scheduler::Sch, Scheduler::Tch] {
        let before = map(alg, ten(None), "s", &f);
        let during = map(alg, ten(Some("srv-04")), "s", &f);
        let mut spread: HashMap<&str, usize> = HashMap::new();
        for (b, d) in before.iter().zip(&during) {
            if &**b == "srv-04" {
                assert_ne!(&**d, "srv-04");
                *spread.entry(d).or_default() += 1;
            } else {
                assert_eq!(b, d, "{alg:?}: a healthy backend's key moved");
            }
        }
        // ~2000 keys over 9 backends: ~222 each, spread by weight.
        let moved_keys: usize = spread.values().sum();
        assert_eq!(spread.len(), 9, "{alg:?}");
        for (id, &k) in &spread {
            let share = k as f64 / moved_keys as f64;
            assert!((share - 1.0 / 9.0).abs() < 0.05, "{alg:?} {id}: {share}");
        }
        assert_eq!(before, map(alg, ten(None), "s", &f), "{alg:?}");
    }
}

#[test]
fn unhealthy_keys_spread_by_weight() {
    let f = flows();
    let spec = |d_healthy| {
        backends(&[
            ("a", 100, true),
            ("b", 50, true),
            ("c", 50, true),
            ("d", 100, d_healthy),
        ])
    };
    let before = map(Scheduler::Sch, spec(true), "s", &f);
    let during = map(Scheduler::Sch, spec(false), "s", &f);
    let moved: Vec<Arc<str>> = before
        .iter()
        .zip(&during)
        .filter(|(b, _)| &***b == "d")
        .map(|(_, d)| Arc::clone(d))
        .collect();
    assert_eq!(moved.len(), self::moved(&before, &during));
    let s = shares(&moved);
    for (id, want) in [("a", 0.5), ("b", 0.25), ("c", 0.25)] {
        let got = s.get(id).copied().unwrap_or(0.0);
        assert!((got - want).abs() < 0.04, "{id}: {got}");
    }
}

#[test]
fn tch_distinguishes_client_ports_sch_does_not() {
    let ports: Vec<FlowKey> = (0..200).map(|p| v4_flow(42, 10_000 + p)).collect();
    let distinct = |alg| {
        let m = map(alg, ten(None), "s", &ports);
        let mut ids: Vec<_> = m.into_iter().collect();
        ids.sort();
        ids.dedup();
        ids.len()
    };
    assert_eq!(distinct(Scheduler::Sch), 1);
    assert!(distinct(Scheduler::Tch) >= 8);
}

#[test]
fn v4_mapped_v6_hashes_as_v4() {
    let s = Selector::build(Scheduler::Sch, ten(None), "s");
    for i in 0..100 {
        let f = v4_flow(i, 1);
        let IpAddr::V4(v4) = f.client.ip() else {
            unreachable!()
        };
        let mapped = FlowKey {
            client: SocketAddr::new(IpAddr::V6(v4.to_ipv6_mapped()), 1),
            local: f.local,
        };
        assert_eq!(s.pick(&f, &[]), s.pick(&mapped, &[]));
    }
}

#[test]
fn retries_are_deterministic_and_avoid_tried() {
    let f = flows();
    for alg in [Scheduler::Sch, Scheduler::Tch] {
        for healthy_except in [None, Some("srv-01")] {
            let a = Selector::build(alg, ten(healthy_except), "s");
            let mut rev = ten(healthy_except);
            rev.reverse();
            let b = Selector::build(alg, rev, "s");
            for flow in &f[..500] {
                let mut tried = Vec::new();
                let mut ids = Vec::new();
                while let Some(i) = a.pick(flow, &tried) {
                    assert!(!tried.contains(&i));
                    tried.push(i);
                    ids.push(Arc::clone(&a.candidates()[i].server_id));
                }
                assert_eq!(tried.len(), if healthy_except.is_some() { 9 } else { 10 });
                // Another node (other config order) retries in the same order.
                let mut tried_b = Vec::new();
                for id in &ids {
                    let i = b.pick(flow, &tried_b).unwrap();
                    assert_eq!(&b.candidates()[i].server_id, id);
                    tried_b.push(i);
                }
            }
        }
    }
}

#[test]
fn table_size_gives_100_slots_per_backend() {
    assert_eq!(super::table_size(1), 65_537);
    assert_eq!(super::table_size(655), 65_537);
    assert_eq!(super::table_size(1000), 131_071);
    assert!(super::table_size(1_000_000) >= 8_000_000);
}
