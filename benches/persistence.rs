//! Persistence table hot path at 1,000,000 entries (64 shards).
//! The insert bench adds new clients: it grows the table to its bound
//! (1.25M) and then evicts the LRU idle entry on every insert.
//! Setup happens outside `b.iter`; keys are visited in a scattered order so
//! the numbers include cache misses, as real client IPs would.

use criterion::{criterion_group, criterion_main, Criterion};
use edgelb::persistence::PersistenceTable;
use std::hint::black_box;
use std::net::{IpAddr, Ipv4Addr};
use std::sync::Arc;
use std::time::{Duration, Instant};

const N: u32 = 1_000_000;

fn ip(n: u32) -> IpAddr {
    IpAddr::V4(Ipv4Addr::from(0x0A00_0000 + n))
}

/// Scattered walk over 0..N (odd stride coprime with N).
fn scatter(i: u64) -> u32 {
    (i.wrapping_mul(7_919) % u64::from(N)) as u32
}

fn full_table(now: Instant) -> PersistenceTable {
    // Headroom: capacity is split evenly over the shards, so a skewed shard
    // would start evicting slightly before N entries.
    let table = PersistenceTable::new(Duration::from_secs(300), N as usize * 5 / 4);
    let servers: Vec<Arc<str>> = (0..8).map(|i| Arc::from(format!("rs-{i}"))).collect();
    for n in 0..N {
        let p = table.insert(ip(n), Arc::clone(&servers[n as usize % 8]), now);
        table.release(p, now);
    }
    table
}

fn bench(c: &mut Criterion) {
    let now = Instant::now();
    let table = full_table(now);
    assert_eq!(table.len(), N as usize);

    let mut i = 0u64;
    c.bench_function("persistence/lookup_hit_1M", |b| {
        b.iter(|| {
            i += 1;
            // The placement is dropped: open counts grow, which does not
            // change the cost of a lookup.
            black_box(table.lookup(black_box(ip(scatter(i))), now))
        })
    });

    let mut i = 0u64;
    c.bench_function("persistence/lookup_hit_then_release_1M", |b| {
        b.iter(|| {
            i += 1;
            if let Some(p) = table.lookup(black_box(ip(scatter(i))), now) {
                table.release(p, now);
            }
        })
    });

    // Same table, but only 10,000 active clients: what the table itself
    // costs when its working set stays in cache.
    let mut i = 0u64;
    c.bench_function("persistence/lookup_hit_then_release_hot10k", |b| {
        b.iter(|| {
            i += 1;
            if let Some(p) = table.lookup(black_box(ip(scatter(i) % 10_000)), now) {
                table.release(p, now);
            }
        })
    });

    let server: Arc<str> = Arc::from("rs-new");
    let mut next = N;
    c.bench_function("persistence/insert_new_evicting_1M", |b| {
        b.iter(|| {
            next = next.wrapping_add(1);
            let p = table.insert(black_box(ip(next)), Arc::clone(&server), now);
            table.release(p, now);
        })
    });
    assert!(table.len() <= N as usize * 5 / 4);
}

criterion_group!(benches, bench);
criterion_main!(benches);
