//! Weighted least connections, and the guard that keeps the counts honest.
//!
//! The counts are per-backend `Arc<AtomicU64>` owned by the caller so they
//! survive selector rebuilds; the selector only reads them. They are read
//! with `Relaxed` loads: a racing connect may see a count one off, which
//! only shifts one decision and costs no fence on the hot path.

use super::Candidate;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;

/// Counts one live connection on a backend: increments on creation,
/// decrements on drop, so every exit path (error, panic, early return) gives
/// the count back.
#[derive(Debug)]
pub struct ActiveGuard {
    counter: Arc<AtomicU64>,
}

impl ActiveGuard {
    pub fn new(counter: Arc<AtomicU64>) -> Self {
        counter.fetch_add(1, Ordering::Relaxed);
        ActiveGuard { counter }
    }

    /// The backend's current live count (this connection included).
    pub fn count(&self) -> u64 {
        self.counter.load(Ordering::Relaxed)
    }
}

impl Drop for ActiveGuard {
    fn drop(&mut self) {
        self.counter.fetch_sub(1, Ordering::Relaxed);
    }
}

struct Entry {
    active: Arc<AtomicU64>,
    weight: u64,
    index: u32,
}

pub(super) struct LeastConn {
    /// The pool in configuration order, laid out flat for the scan.
    entries: Vec<Entry>,
    /// Rotating scan start, so that equal loads take turns.
    next: AtomicUsize,
}

impl LeastConn {
    /// `pool` must be non-empty and hold only weight > 0 candidates.
    pub(super) fn new(candidates: &[Candidate], pool: &[usize]) -> Self {
        let entries = pool
            .iter()
            .map(|&i| Entry {
                active: Arc::clone(&candidates[i].active),
                weight: u64::from(candidates[i].weight),
                index: i as u32,
            })
            .collect();
        LeastConn {
            entries,
            next: AtomicUsize::new(0),
        }
    }

    /// The first minimum of `active / weight` found from a rotating start,
    /// compared as `a_i * w_best < a_best * w_i` (no division, no rounding).
    /// Counts are clamped to u32 so the products fit u64: no listener holds
    /// four billion connections, and u64 keeps the scan at a few ns a backend.
    #[inline]
    pub(super) fn pick(&self, exclude: &[usize]) -> Option<usize> {
        let start = self.next.fetch_add(1, Ordering::Relaxed) % self.entries.len();
        let (head, tail) = self.entries.split_at(start);
        // Sentinel best 2^32 / 1 loses to every real (clamped) ratio, so the
        // loop needs no Option; products stay below 2^32 * (2^32 - 1).
        let mut best_index = usize::MAX;
        let (mut best_a, mut best_w) = (1u64 << 32, 1u64);
        for e in tail.iter().chain(head) {
            let a = e.active.load(Ordering::Relaxed).min(u64::from(u32::MAX));
            // Exclusion is checked only for would-be winners: skipping a loser
            // changes nothing, and the list is usually empty anyway.
            if a * best_w < best_a * e.weight && !exclude.contains(&(e.index as usize)) {
                best_index = e.index as usize;
                (best_a, best_w) = (a, e.weight);
            }
        }
        (best_index != usize::MAX).then_some(best_index)
    }
}

#[cfg(test)]
mod tests {
    use super::super::tests::flow;
    use super::super::{Algorithm, Selector};
    use super::*;

    fn selector(weights: &[u32], active: &[u64]) -> Selector {
        let c = weights
            .iter()
            .zip(active)
            .enumerate()
            .map(|(i, (&w, &a))| {
                let c = Candidate::new(format!("s{i}"), w, true);
                c.active.store(a, Ordering::Relaxed);
                c
            })
            .collect();
        Selector::build(Algorithm::Wlc, c, "")
    }

    fn pick(s: &Selector) -> usize {
        s.pick(&flow(), &[]).unwrap()
    }

    #[test]
    fn picks_least_loaded() {
        let s = selector(&[10, 10, 10], &[3, 1, 2]);
        for _ in 0..5 {
            assert_eq!(pick(&s), 1);
        }
        // a holds 3 open, b and c none: the idle ones take turns.
        let s = selector(&[1, 1, 1], &[3, 0, 0]);
        let got: Vec<usize> = (0..4).map(|_| pick(&s)).collect();
        assert!(got.iter().all(|&i| i != 0), "{got:?}");
    }

    #[test]
    fn compares_load_per_weight() {
        // 10/100 < 6/50: the heavier backend takes more despite more conns.
        let s = selector(&[100, 50], &[10, 6]);
        assert_eq!(pick(&s), 0);
        // 12/100 > 5/50.
        let s = selector(&[100, 50], &[12, 5]);
        assert_eq!(pick(&s), 1);
    }

    #[test]
    fn ties_rotate() {
        let s = selector(&[1, 1], &[4, 4]);
        let got: Vec<usize> = (0..6).map(|_| pick(&s)).collect();
        assert_eq!(got, vec![0, 1, 0, 1, 0, 1]);
        // Equal ratios with unequal weights are ties too: 2/100 == 1/50.
        let s = selector(&[100, 50], &[2, 1]);
        let got: Vec<usize> = (0..4).map(|_| pick(&s)).collect();
        assert_eq!(got, vec![0, 1, 0, 1]);
    }

    #[test]
    fn guards_drive_the_choice_and_give_counts_back() {
        let s = selector(&[1, 1], &[0, 0]);
        let mut held = Vec::new();
        for _ in 0..10 {
            let i = pick(&s);
            held.push(s.guard(i).unwrap());
        }
        // Ten connections with guards held spread evenly.
        let counts: Vec<u64> = s
            .candidates()
            .iter()
            .map(|c| c.active.load(Ordering::Relaxed))
            .collect();
        assert_eq!(counts, vec![5, 5]);
        assert_eq!(held[0].count(), 5);
        drop(held);
        assert!(s
            .candidates()
            .iter()
            .all(|c| c.active.load(Ordering::Relaxed) == 0));
    }

    #[test]
    fn active_guard_decrements_on_drop_even_on_panic() {
        let counter = Arc::new(AtomicU64::new(7));
        let g = ActiveGuard::new(Arc::clone(&counter));
        assert_eq!(counter.load(Ordering::Relaxed), 8);
        drop(g);
        assert_eq!(counter.load(Ordering::Relaxed), 7);
        let c2 = Arc::clone(&counter);
        let r = std::thread::spawn(move || {
            let _g = ActiveGuard::new(c2);
            panic!("connection task failed");
        })
        .join();
        assert!(r.is_err());
        assert_eq!(counter.load(Ordering::Relaxed), 7);
    }

    #[test]
    fn exclude_skips_the_least_loaded() {
        let s = selector(&[1, 1, 1], &[0, 5, 3]);
        assert_eq!(s.pick(&flow(), &[0]), Some(2));
        assert_eq!(s.pick(&flow(), &[0, 2]), Some(1));
        assert_eq!(s.pick(&flow(), &[0, 1, 2]), None);
    }
}
