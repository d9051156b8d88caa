//! Scheduler benchmarks: the per-connection `pick` for every algorithm, and
//! `Selector::build` (off the hot path, but run on every health change).
//!
//! Run: `cargo bench --bench schedulers -- --quick`
//! Goals: pick < 50 ns at 1,000 backends,
//! a 1,000-backend consistent-hash table built in < 5 ms.

use criterion::{criterion_group, criterion_main, BatchSize, BenchmarkId, Criterion};
use edgelb::config::Scheduler;
use edgelb::scheduler::{Candidate, FlowKey, Selector};
use std::hint::black_box;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::atomic::Ordering;
use std::time::Duration;

const SIZES: [usize; 3] = [3, 100, 1000];
const ALGORITHMS: [(&str, Scheduler); 5] = [
    ("wrr", Scheduler::Wrr),
    ("wlc", Scheduler::Wlc),
    ("rr", Scheduler::Rr),
    ("sch", Scheduler::Sch),
    ("tch", Scheduler::Tch),
];
/// Distinct flows cycled through, so hash picks touch the table the way many
/// clients would rather than hitting one cached slot.
const FLOWS: usize = 4096;

/// `n` healthy backends with mixed weights 1..=100 and mixed live counts.
fn candidates(n: usize) -> Vec<Candidate> {
    (0..n)
        .map(|i| {
            let c = Candidate::new(
                format!("10.0.{}.{}:8080", i / 250, i % 250),
                (i % 100) as u32 + 1,
                true,
            );
            c.active.store((i * 7 % 13) as u64, Ordering::Relaxed);
            c
        })
        .collect()
}

fn flows() -> Vec<FlowKey> {
    let local: SocketAddr = "198.51.100.1:443"
        .parse()
        .unwrap_or_else(|_| unreachable!());
    (0..FLOWS as u32)
        .map(|i| FlowKey {
            client: SocketAddr::new(
                IpAddr::V4(Ipv4Addr::from(
                    0x0a00_0000u32.wrapping_add(i.wrapping_mul(2_654_435_761)),
                )),
                1024 + (i % 60_000) as u16,
            ),
            local,
        })
        .collect()
}

fn bench_pick(c: &mut Criterion) {
    let flows = flows();
    let mut group = c.benchmark_group("pick");
    for (name, alg) in ALGORITHMS {
        for n in SIZES {
            let sel = Selector::build(alg, candidates(n), "bench-seed");
            group.bench_with_input(BenchmarkId::new(name, n), &sel, |b, sel| {
                let mut i = 0usize;
                b.iter(|| {
                    i = (i + 1) & (FLOWS - 1);
                    sel.pick(black_box(&flows[i]), black_box(&[]))
                })
            });
        }
    }
    group.finish();
}

/// What wlc adds to every connection: its count goes up on open and down on
/// close, and a large pool's tree hears of both.
fn bench_open_close(c: &mut Criterion) {
    let mut group = c.benchmark_group("open_close");
    // The floor: a bare atomic count, as before wlc had a tree to tell.
    let count = std::sync::atomic::AtomicU64::new(0);
    group.bench_function("atomic", |b| {
        b.iter(|| {
            black_box(&count).fetch_add(1, Ordering::Relaxed);
            black_box(&count).fetch_sub(1, Ordering::Relaxed);
        })
    });
    for n in SIZES {
        let sel = Selector::build(Scheduler::Wlc, candidates(n), "bench-seed");
        group.bench_with_input(BenchmarkId::new("wlc", n), &sel, |b, sel| {
            let mut i = 0usize;
            b.iter(|| {
                i = (i + 1) % n;
                let count = &sel.candidates()[i].active;
                count.increment();
                count.decrement();
            })
        });
    }
    group.finish();
}

fn bench_build(c: &mut Criterion) {
    let mut group = c.benchmark_group("build");
    group.sample_size(20);
    for n in [10, 100, 1000] {
        let cands = candidates(n);
        group.bench_with_input(BenchmarkId::new("sch", n), &cands, |b, cands| {
            b.iter_batched(
                || cands.clone(),
                |cs| Selector::build(Scheduler::Sch, cs, "bench-seed"),
                BatchSize::LargeInput,
            )
        });
    }
    // One unhealthy backend: a primary and a fallback table.
    let mut cands = candidates(1000);
    cands[0].healthy = false;
    group.bench_function(BenchmarkId::new("sch_one_unhealthy", 1000), |b| {
        b.iter_batched(
            || cands.clone(),
            |cs| Selector::build(Scheduler::Sch, cs, "bench-seed"),
            BatchSize::LargeInput,
        )
    });
    // Smooth WRR's cycle at mixed weights 1..=100 is the longest one.
    let cands = candidates(1000);
    group.bench_function(BenchmarkId::new("wrr", 1000), |b| {
        b.iter_batched(
            || cands.clone(),
            |cs| Selector::build(Scheduler::Wrr, cs, "bench-seed"),
            BatchSize::LargeInput,
        )
    });
    group.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2));
    targets = bench_pick, bench_open_close, bench_build
}
criterion_main!(benches);
