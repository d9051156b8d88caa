//! wlc tests. Every property is checked on both ways of picking: the scan (small
//! pools) and the tree (large ones), forced here on small pools so the sequences
//! stay readable.

use super::tests::{flow, Conn};
use super::wlc::{LeastConn, SCAN_MAX};
use super::*;
use std::sync::atomic::AtomicU64;

/// Scan first, then tree.
const MODES: [usize; 2] = [usize::MAX, 0];

fn candidates(weights: &[u32], active: &[u64]) -> Vec<Candidate> {
    weights
        .iter()
        .zip(active)
        .enumerate()
        .map(|(i, (&w, &a))| {
            let c = Candidate::new(format!("s{i}"), w, true);
            c.active.store(a, Ordering::Relaxed);
            c
        })
        .collect()
}

/// A wlc selector over `candidates` that scans pools up to `scan_max`.
fn build(candidates: Vec<Candidate>, scan_max: usize) -> Selector {
    let mut s = Selector::build(Scheduler::Wlc, candidates, "");
    let (pool, _) = scheduling_pool(&s.candidates);
    s.strategy = Strategy::Wlc(LeastConn::with_scan_max(&s.candidates, &pool, scan_max));
    s
}

fn both(weights: &[u32], active: &[u64]) -> [Selector; 2] {
    MODES.map(|m| build(candidates(weights, active), m))
}

fn pick(s: &Selector) -> usize {
    s.pick(&flow(), &[]).unwrap()
}

fn picks(s: &Selector, n: usize) -> Vec<usize> {
    (0..n).map(|_| pick(s)).collect()
}

fn counts(s: &Selector) -> Vec<u64> {
    let c = s.candidates().iter();
    c.map(|c| c.active.load(Ordering::Relaxed)).collect()
}

#[test]
fn picks_least_loaded() {
    for s in both(&[10, 10, 10], &[3, 1, 2]) {
        assert_eq!(picks(&s, 5), [1; 5]);
    }
    // a holds 3 open, b and c none: the idle ones take turns.
    for s in both(&[1, 1, 1], &[3, 0, 0]) {
        assert!(picks(&s, 4).iter().all(|&i| i != 0));
    }
}

#[test]
fn compares_load_per_weight() {
    // 10/100 < 6/50: the heavier backend takes more despite more conns.
    for s in both(&[100, 50], &[10, 6]) {
        assert_eq!(pick(&s), 0);
    }
    // 12/100 > 5/50.
    for s in both(&[100, 50], &[12, 5]) {
        assert_eq!(pick(&s), 1);
    }
}

#[test]
fn ties_rotate() {
    for s in both(&[1, 1], &[4, 4]) {
        assert_eq!(picks(&s, 6), [0, 1, 0, 1, 0, 1]);
    }
    // Equal ratios with unequal weights are ties too: 2/100 == 1/50.
    for s in both(&[100, 50], &[2, 1]) {
        assert_eq!(picks(&s, 4), [0, 1, 0, 1]);
    }
}

#[test]
fn short_connections_take_turns_on_the_tree() {
    // Each connection closes before the next pick: loads are equal at every
    // pick, and the least recently picked goes next.
    let s = build(candidates(&[5, 5, 5, 0, 5], &[0; 5]), 0);
    let got: Vec<usize> = (0..8)
        .map(|_| pick(&s))
        .inspect(|&i| drop(Conn::open(&s, i)))
        .collect();
    assert_eq!(got, [0, 1, 2, 4, 0, 1, 2, 4]);
}

#[test]
fn guards_drive_the_choice_and_give_counts_back() {
    for s in both(&[1, 1], &[0, 0]) {
        let mut held = Vec::new();
        for _ in 0..10 {
            held.push(Conn::open(&s, pick(&s)));
        }
        // Ten connections with guards held spread evenly.
        assert_eq!(counts(&s), [5, 5]);
        assert_eq!(held[0].count(), 5);
        drop(held);
        assert_eq!(counts(&s), [0, 0]);
    }
}

#[test]
fn exclude_skips_the_least_loaded() {
    for s in both(&[1, 1, 1], &[0, 5, 3]) {
        assert_eq!(s.pick(&flow(), &[0]), Some(2));
        assert_eq!(s.pick(&flow(), &[0, 2]), Some(1));
        assert_eq!(s.pick(&flow(), &[0, 1, 2]), None);
    }
}

/// A small deterministic generator (tests need no seeds or crates).
fn lcg(state: &mut u64) -> u64 {
    *state = state
        .wrapping_mul(6364136223846793005)
        .wrapping_add(1442695040888963407);
    *state >> 33
}

#[test]
fn tree_picks_an_exact_minimum_at_any_size() {
    let mut r = 7;
    for n in [1, 2, 3, SCAN_MAX + 1, 100, 1000] {
        let weights: Vec<u32> = (0..n).map(|_| (lcg(&mut r) % 100) as u32 + 1).collect();
        let active: Vec<u64> = (0..n).map(|_| lcg(&mut r) % 50).collect();
        let s = Selector::build(Scheduler::Wlc, candidates(&weights, &active), "");
        let mut held = Vec::new();
        for _ in 0..3 * n {
            let i = pick(&s);
            // Nobody is less loaded: a_j * w_i >= a_i * w_j for every j.
            let load = |j: usize| (s.candidates()[j].active.load(Ordering::Relaxed), weights[j]);
            let (ai, wi) = load(i);
            assert!((0..n).all(|j| {
                let (aj, wj) = load(j);
                aj * u64::from(wi) >= ai * u64::from(wj)
            }));
            held.push(Conn::open(&s, i));
            // Some connections close, at random.
            if lcg(&mut r) % 3 == 0 {
                held.swap_remove(lcg(&mut r) as usize % held.len());
            }
        }
    }
}

#[test]
fn a_rebuilt_selector_hears_of_closes_placed_by_the_old_one() {
    let old = build(candidates(&[1, 1, 1], &[0, 0, 0]), 0);
    let mut held: Vec<(usize, Conn)> = (0..6)
        .map(|_| pick(&old))
        .map(|i| (i, Conn::open(&old, i)))
        .collect();
    assert_eq!(counts(&old), [2, 2, 2]);
    // A health change rebuilds; then b's connections close: only the counts'
    // link tells the new tree.
    let new = build(old.candidates().to_vec(), 0);
    held.retain(|(i, _)| *i != 1);
    assert_eq!(counts(&new), [2, 0, 2]);
    assert_eq!(picks(&new, 3), [1, 1, 1]);
}

#[test]
fn concurrent_use_keeps_counts_and_spreads_picks() {
    let s = Arc::new(build(candidates(&[1, 2, 3, 4, 5, 6, 7, 8], &[0; 8]), 0));
    let picked: Arc<Vec<AtomicU64>> = Arc::new((0..8).map(|_| AtomicU64::new(0)).collect());
    let threads: Vec<_> = (0..4)
        .map(|t| {
            let (s, picked) = (Arc::clone(&s), Arc::clone(&picked));
            std::thread::spawn(move || {
                let mut held = std::collections::VecDeque::new();
                for k in 0..20_000 {
                    let i = pick(&s);
                    picked[i].fetch_add(1, Ordering::Relaxed);
                    held.push_back(Conn::open(&s, i));
                    // Each thread keeps 10 to 40 open, closing oldest first.
                    if held.len() > 10 + (k + t * 7) % 30 {
                        held.pop_front();
                    }
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    assert_eq!(counts(&s), [0; 8]);
    // Heavier backends were picked more, and everyone was picked.
    let p: Vec<u64> = picked.iter().map(|p| p.load(Ordering::Relaxed)).collect();
    assert!(p.iter().all(|&n| n > 0), "{p:?}");
    assert!(p[7] > p[0], "{p:?}");
    // Quiet again, the tree is exact: equal (zero) loads take turns.
    let mut got = picks(&s, 8);
    got.sort_unstable();
    assert_eq!(got, [0, 1, 2, 3, 4, 5, 6, 7]);
    // And unequal loads are seen exactly: one connection on all but the last.
    let _held: Vec<Conn> = (0..7).map(|i| Conn::open(&s, i)).collect();
    assert_eq!(picks(&s, 3), [7, 7, 7]);
}
