//! Smooth weighted round robin (nginx's algorithm).
//!
//! nginx runs the algorithm step by step under a lock; with several threads
//! picking at once that either serialises the data path or breaks the
//! "exactly `weight` picks per cycle" guarantee. Instead the whole cycle is
//! computed once when the selector is built, and a pick is one atomic
//! `fetch_add` into it: any `k * cycle` picks, from any number of threads,
//! give every backend exactly `k * weight`.

use super::{all_excluded, Candidate};
use std::sync::atomic::AtomicUsize;

pub(super) struct SmoothWrr {
    /// One full cycle of candidate indices.
    seq: Vec<u32>,
    /// The pool, to answer "everything excluded" without walking `seq`.
    pool: Vec<u32>,
    next: AtomicUsize,
}

impl SmoothWrr {
    /// `pool` must be non-empty and hold only weight > 0 candidates.
    pub(super) fn new(candidates: &[Candidate], pool: &[usize]) -> Self {
        let weights: Vec<u32> = pool.iter().map(|&i| candidates[i].weight).collect();
        let seq = smooth_sequence(&weights)
            .into_iter()
            .map(|p| pool[p] as u32)
            .collect();
        SmoothWrr {
            seq,
            pool: pool.iter().map(|&i| i as u32).collect(),
            next: AtomicUsize::new(0),
        }
    }

    #[inline]
    pub(super) fn pick(&self, exclude: &[usize]) -> Option<usize> {
        let n = self.seq.len();
        let start = super::turn(&self.next, exclude) % n;
        let first = self.seq[start] as usize;
        if !exclude.contains(&first) {
            return Some(first);
        }
        if all_excluded(&self.pool, exclude) {
            return None;
        }
        // Walking on in the cycle keeps retries weighted among the rest; the
        // walk ends because some pool member is not excluded.
        (1..n)
            .map(|k| self.seq[(start + k) % n] as usize)
            .find(|i| !exclude.contains(i))
    }
}

/// One cycle of smooth WRR over `weights` (all > 0), as positions into
/// `weights`. Weights are first divided by their GCD: same proportions and
/// interleaving, shorter cycle.
///
/// Each step adds every weight to its running credit, picks the highest
/// credit (the first one on ties, like nginx) and takes the total off it.
/// O(cycle × n): at most 100 × n steps of n, off the hot path.
pub(super) fn smooth_sequence(weights: &[u32]) -> Vec<usize> {
    let g = weights.iter().fold(0u32, |g, &w| gcd(g, w)).max(1);
    let w: Vec<i64> = weights.iter().map(|&w| i64::from(w / g)).collect();
    let total: i64 = w.iter().sum();
    let mut credit = vec![0i64; w.len()];
    let mut seq = Vec::with_capacity(usize::try_from(total).unwrap_or(0));
    for _ in 0..total {
        let mut best = 0;
        let mut best_credit = i64::MIN;
        for (i, (c, &wi)) in credit.iter_mut().zip(&w).enumerate() {
            *c += wi;
            if *c > best_credit {
                best_credit = *c;
                best = i;
            }
        }
        credit[best] -= total;
        seq.push(best);
    }
    seq
}

fn gcd(mut a: u32, mut b: u32) -> u32 {
    while b != 0 {
        (a, b) = (b, a % b);
    }
    a
}

#[cfg(test)]
mod tests {
    use super::super::tests::flow;
    use super::super::{Candidate, Selector};
    use super::*;
    use crate::config::Scheduler;
    use std::sync::Arc;

    fn selector(weights: &[u32]) -> Selector {
        let c = weights
            .iter()
            .enumerate()
            .map(|(i, &w)| Candidate::new(format!("s{i}"), w, true))
            .collect();
        Selector::build(Scheduler::Wrr, c, "")
    }

    #[test]
    fn nginx_sequence_for_5_1_1() {
        assert_eq!(smooth_sequence(&[5, 1, 1]), vec![0, 0, 1, 0, 2, 0, 0]);
        let s = selector(&[5, 1, 1]);
        let got: Vec<usize> = (0..14).map(|_| s.pick(&flow(), &[]).unwrap()).collect();
        assert_eq!(got, vec![0, 0, 1, 0, 2, 0, 0, 0, 0, 1, 0, 2, 0, 0]);
    }

    #[test]
    fn gcd_reduction_keeps_interleaving() {
        assert_eq!(smooth_sequence(&[50, 10, 10]), smooth_sequence(&[5, 1, 1]));
        assert_eq!(smooth_sequence(&[100, 100]), vec![0, 1]);
        assert_eq!(gcd(0, 7), 7);
    }

    #[test]
    fn every_cycle_gives_exact_weights() {
        let weights = [7, 3, 0, 100, 1, 42];
        let s = selector(&weights);
        let total: u32 = weights.iter().sum();
        let mut counts = [0u32; 6];
        for _ in 0..3 * total {
            counts[s.pick(&flow(), &[]).unwrap()] += 1;
        }
        let expected: Vec<u32> = weights.iter().map(|w| 3 * w).collect();
        assert_eq!(counts.to_vec(), expected);
    }

    #[test]
    fn concurrent_picks_give_exact_weights() {
        let weights = [5u32, 1, 1, 3];
        let s = Arc::new(selector(&weights));
        let total: u32 = weights.iter().sum();
        let k = 1000u32;
        let threads = 4u32;
        let per_thread = k * total / threads;
        let handles: Vec<_> = (0..threads)
            .map(|_| {
                let s = Arc::clone(&s);
                std::thread::spawn(move || {
                    let mut counts = [0u32; 4];
                    for _ in 0..per_thread {
                        counts[s.pick(&flow(), &[]).unwrap()] += 1;
                    }
                    counts
                })
            })
            .collect();
        let mut counts = [0u32; 4];
        for h in handles {
            for (c, t) in counts.iter_mut().zip(h.join().unwrap()) {
                *c += t;
            }
        }
        assert_eq!(counts, [5 * k, k, k, 3 * k]);
    }

    #[test]
    fn exclude_walks_on_in_the_cycle() {
        let s = selector(&[5, 1, 1]);
        // The cycle starts at a (0); excluding it gives the next non-a: b.
        assert_eq!(s.pick(&flow(), &[0]), Some(1));
        assert_eq!(s.pick(&flow(), &[0, 1, 2]), None);
    }
}
