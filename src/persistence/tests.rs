//! Persistence table tests: entry lifetime, LRU eviction, the open-count protocol.

use super::*;
use std::collections::HashMap as Map;
use std::net::Ipv4Addr;

const T: Duration = Duration::from_secs(10);

fn ip(n: u32) -> IpAddr {
    IpAddr::V4(Ipv4Addr::from(0x0A00_0000 + n))
}

fn id(s: &str) -> Arc<str> {
    Arc::from(s)
}

impl PersistenceTable {
    /// Checks list/map consistency of every shard and the length gauge;
    /// returns (client, generation, open) per entry.
    fn audit(&self) -> Vec<(IpAddr, u64, u32)> {
        let out: Vec<_> = self.shards.iter().flat_map(|s| lock(s).audit()).collect();
        assert_eq!(out.len(), self.len());
        out
    }

    fn open_of(&self, client: IpAddr) -> Option<u32> {
        self.audit()
            .into_iter()
            .find(|e| e.0 == client)
            .map(|e| e.2)
    }
}

#[test]
fn hit_and_miss() {
    let t = PersistenceTable::new(T, 100);
    let now = Instant::now();
    assert!(t.lookup(ip(1), now).is_none());
    let p = t.insert(ip(1), id("a"), now);
    assert_eq!(&**p.server_id(), "a");
    let q = t.lookup(ip(1), now).unwrap();
    assert_eq!(&**q.server_id(), "a");
    assert!(t.lookup(ip(2), now).is_none());
    assert_eq!(t.open_of(ip(1)), Some(2));
    assert_eq!(t.len(), 1);
    assert!(!t.is_empty());
    t.release(p, now);
    t.release(q, now);
    assert_eq!(t.open_of(ip(1)), Some(0));
}

#[test]
fn v4_mapped_client_is_the_same_client() {
    let t = PersistenceTable::new(T, 100);
    let now = Instant::now();
    t.release(t.insert(ip(1), id("a"), now), now);
    let mapped: IpAddr = "::ffff:10.0.0.1".parse().unwrap();
    assert_eq!(&**t.lookup(mapped, now).unwrap().server_id(), "a");
}

#[test]
fn expires_exactly_timeout_after_last_use() {
    let t = PersistenceTable::new(T, 100);
    let t0 = Instant::now();
    t.release(t.insert(ip(1), id("a"), t0), t0);
    let before = t0 + T - Duration::from_nanos(1);
    assert_eq!(t.purge_expired(before), 0);
    let p = t
        .lookup(ip(1), before)
        .expect("live just before the timeout");
    t.release(p, before);
    assert_eq!(t.len(), 1);
    // Last use moved to `before`: dead exactly at before + T, and dropped.
    assert!(t.lookup(ip(1), before + T).is_none());
    assert_eq!(t.len(), 0);
}

#[test]
fn never_expires_while_open_then_timeout_after_last_close() {
    let t = PersistenceTable::new(T, 100);
    let t0 = Instant::now();
    let p1 = t.insert(ip(1), id("a"), t0);
    let p2 = t.lookup(ip(1), t0).unwrap();
    let late = t0 + T * 100;
    assert_eq!(t.purge_expired(late), 0);
    t.release(p1, late);
    assert_eq!(
        t.purge_expired(late + T * 2),
        0,
        "one connection still open"
    );
    let close = late + T * 3;
    t.release(p2, close);
    assert_eq!(t.purge_expired(close + T - Duration::from_millis(1)), 0);
    assert_eq!(t.purge_expired(close + T), 1);
    assert!(t.is_empty());
}

#[test]
fn lru_eviction_prefers_least_recently_used() {
    let t = PersistenceTable::new(T, 3);
    let now = Instant::now();
    for n in 1..=3 {
        t.release(t.insert(ip(n), id("a"), now), now);
    }
    // Touch 1: now 2 is the LRU.
    t.release(t.lookup(ip(1), now).unwrap(), now);
    t.release(t.insert(ip(4), id("a"), now), now);
    // One entry evicted, and it was 2.
    assert_eq!(t.len(), 3);
    assert!(t.lookup(ip(2), now).is_none());
    for n in [1, 3, 4] {
        assert!(t.lookup(ip(n), now).is_some(), "{n} kept");
    }
}

#[test]
fn eviction_prefers_idle_entries_then_busy_lru() {
    let t = PersistenceTable::new(T, 2);
    let now = Instant::now();
    let busy = t.insert(ip(1), id("a"), now); // oldest but open
    t.release(t.insert(ip(2), id("a"), now), now);
    let _b3 = t.insert(ip(3), id("a"), now);
    assert!(t.lookup(ip(2), now).is_none(), "idle entry evicted first");
    assert_eq!(t.open_of(ip(1)), Some(1));
    // All busy now: the LRU busy entry (1) goes; its placement is stale.
    let _b4 = t.insert(ip(4), id("a"), now);
    assert_eq!(t.open_of(ip(1)), None);
    t.release(busy, now); // no-op, no drift
                          // Two evicted (2, then 1): only the two newest remain.
    assert_eq!(t.len(), 2);
    assert_eq!((t.open_of(ip(3)), t.open_of(ip(4))), (Some(1), Some(1)));
}

#[test]
fn retain_backends_drops_only_the_rejected_backends() {
    let t = PersistenceTable::new(T, 1000);
    let now = Instant::now();
    let mut held = Vec::new();
    for n in 0..30 {
        let p = t.insert(ip(n), id(["a", "b", "c"][n as usize % 3]), now);
        if n % 2 == 0 {
            held.push(p);
        } else {
            t.release(p, now);
        }
    }
    assert_eq!(t.retain_backends(|s| s != "b"), 10);
    assert_eq!(t.len(), 20);
    assert_eq!(t.retain_backends(|s| s == "a"), 10);
    for n in 0..30 {
        assert_eq!(t.lookup(ip(n), now).is_some(), n % 3 == 0);
    }
    for p in held {
        t.release(p, now);
    }
    t.audit();
}

#[test]
fn repin_moves_the_connection_and_keeps_counts() {
    let t = PersistenceTable::new(T, 100);
    let now = Instant::now();
    let old = t.insert(ip(1), id("a"), now); // connection to a, still open
    let p = t.lookup(ip(1), now).unwrap(); // a is now ineligible
    let p = t.repin(p, id("b"), now);
    assert_eq!(&**p.server_id(), "b");
    assert_eq!(t.open_of(ip(1)), Some(2));
    // Overwrite by insert (e.g. a later miss-like path) adds one.
    let q = t.insert(ip(1), id("c"), now);
    assert_eq!(t.open_of(ip(1)), Some(3));
    assert_eq!(&**t.lookup(ip(1), now).unwrap().server_id(), "c");
    assert_eq!(t.open_of(ip(1)), Some(4));
    t.release(old, now);
    t.release(p, now);
    t.release(q, now);
    assert_eq!(t.open_of(ip(1)), Some(1));
    // Stale placement: repin inserts afresh and counts once.
    let r = t.lookup(ip(1), now).unwrap();
    t.retain_backends(|s| s != "c");
    let r = t.repin(r, id("d"), now);
    assert_eq!(t.open_of(ip(1)), Some(1));
    t.release(r, now);
    assert_eq!(t.open_of(ip(1)), Some(0));
}

#[test]
fn purge_removes_expired_only() {
    let t = PersistenceTable::with_shards(T, 1000, 8);
    let t0 = Instant::now();
    let at = |n: u32| t0 + Duration::from_millis(100 * u64::from(n));
    let mut held = Vec::new();
    for n in 0..100 {
        let p = t.insert(ip(n), id("a"), at(n));
        if n % 5 == 0 {
            held.push(p);
        } else {
            t.release(p, at(n));
        }
    }
    // Dead: released and last used at or before t0 + 5s.
    let dead = |n: u32| n % 5 != 0 && n <= 50;
    let removed = t.purge_expired(at(50) + T);
    let expected = (0..100).filter(|&n| dead(n)).count();
    assert_eq!(removed, expected);
    assert_eq!(t.len(), 100 - expected);
    for (client, _, _) in t.audit() {
        let IpAddr::V4(a) = client else { panic!() };
        assert!(!dead(u32::from(a) - 0x0A00_0000));
    }
    for p in held {
        t.release(p, at(100));
    }
}

#[test]
fn concurrent_use_keeps_bounds_and_exact_counts() {
    let t = Arc::new(PersistenceTable::with_shards(T, 256, 4));
    let t0 = Instant::now();
    let handles: Vec<_> = (0..4u64)
        .map(|tid| {
            let t = Arc::clone(&t);
            std::thread::spawn(move || {
                let mut x = tid.wrapping_mul(0x9E37_79B9) + 1;
                let mut held = Vec::new();
                for i in 0..40_000u64 {
                    x = x
                        .wrapping_mul(6364136223846793005)
                        .wrapping_add(1442695040888963407);
                    let r = x >> 33;
                    let now = t0 + Duration::from_millis(i);
                    let client = ip((r % 1024) as u32);
                    match r % 8 {
                        0..=2 => {
                            let p = match t.lookup(client, now) {
                                Some(p) => p,
                                None => t.insert(client, id("a"), now),
                            };
                            held.push(p);
                        }
                        3 if !held.is_empty() => {
                            let p = held.swap_remove((r as usize / 8) % held.len());
                            held.push(t.repin(p, id("b"), now));
                        }
                        4 => {
                            let gone = ["a", "b"][(r % 2) as usize];
                            t.retain_backends(|s| s != gone);
                        }
                        _ if !held.is_empty() => {
                            let p = held.swap_remove((r as usize / 8) % held.len());
                            t.release(p, now);
                        }
                        _ => {}
                    }
                    assert!(t.len() <= 256);
                }
                held
            })
        })
        .collect();
    let held: Vec<Placement> = handles
        .into_iter()
        .flat_map(|h| h.join().unwrap())
        .collect();
    let mut outstanding: Map<(IpAddr, u64), u32> = Map::new();
    for p in &held {
        *outstanding.entry((p.client, p.generation)).or_default() += 1;
    }
    for (client, generation, open) in t.audit() {
        assert_eq!(
            outstanding.get(&(client, generation)).copied().unwrap_or(0),
            open
        );
    }
    for p in held {
        t.release(p, t0);
    }
    assert!(t.audit().iter().all(|e| e.2 == 0));
    assert!(t.len() <= 256);
}

#[test]
fn saved_entries_come_back_with_their_remaining_time() {
    let old = PersistenceTable::new(T, 100);
    let t0 = Instant::now();
    old.release(old.insert(ip(1), id("a"), t0), t0);
    old.release(old.insert(ip(4), id("a"), t0), t0);
    old.release(old.insert(ip(2), id("b"), t0), t0 + Duration::from_secs(4));
    // Open on the old side: saved with the whole timeout.
    let _busy = old.insert(ip(3), id("a"), t0);
    let now = t0 + Duration::from_secs(6);
    let mut saved = old.save(now);
    saved.sort_by_key(|e| e.client);
    let got: Vec<_> = saved
        .iter()
        .map(|e| (e.client, e.server_id.as_str(), e.remaining_ms))
        .collect();
    assert_eq!(
        got,
        [
            (ip(1), "a", 4_000),
            (ip(2), "b", 8_000),
            (ip(3), "a", 10_000),
            (ip(4), "a", 4_000)
        ]
    );

    // The new process's table: unknown backends are dropped, the rest live exactly
    // their remaining time from the hand-over.
    let new = PersistenceTable::new(T, 100);
    let later = Instant::now();
    assert_eq!(new.restore(saved.clone(), later, |s| Some(id(s))), 4);
    assert_eq!(new.purge_expired(later + Duration::from_millis(3_999)), 0);
    assert_eq!(new.purge_expired(later + Duration::from_millis(4_000)), 2);
    assert_eq!(new.purge_expired(later + Duration::from_millis(7_999)), 0);
    assert_eq!(&**new.lookup(ip(2), later).unwrap().server_id(), "b");
    new.audit();

    let only_a = PersistenceTable::new(T, 100);
    assert_eq!(
        only_a.restore(saved, later, |s| (s == "a").then(|| id(s))),
        3
    );
    assert!(only_a.lookup(ip(2), later).is_none());
}

#[test]
fn restore_keeps_existing_clients_and_the_bound() {
    let t = PersistenceTable::new(T, 2);
    let now = Instant::now();
    t.release(t.insert(ip(1), id("x"), now), now);
    let saved = (1..=3)
        .map(|n| SavedEntry {
            client: ip(n),
            server_id: "a".into(),
            remaining_ms: 1_000 * u64::from(n),
        })
        .collect();
    // ip(1) keeps "x"; ip(2) then ip(3) come in, and the bound of 2 evicts the LRU.
    assert_eq!(t.restore(saved, now, |s| Some(id(s))), 2);
    assert_eq!(t.len(), 2);
    assert_eq!(t.audit().len(), 2);
    assert_eq!(&**t.lookup(ip(3), now).unwrap().server_id(), "a");
}
