//! Weighted least connections.
//!
//! The counts are per-backend [`LiveCount`]s owned by the caller so they survive
//! selector rebuilds. A small pool is scanned (a few ns a backend, nothing to
//! maintain); a larger one is served by a [`LoadTree`] the counts keep up to date
//! on every open and close, so a pick costs the same at 1,000 backends as at 40.
//! Retries (a non-empty `exclude`) always scan: they follow a failed connect,
//! which costs far more than any scan.

use super::live::LiveCount;
use super::load_tree::LoadTree;
use super::Candidate;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

/// Pools up to this size are scanned rather than kept in a tree: below it the
/// scan is as fast as the tree's pick, and opens and closes stay free.
pub(super) const SCAN_MAX: usize = 32;

struct Entry {
    active: Arc<LiveCount>,
    weight: u64,
    index: u32,
}

pub(super) struct LeastConn {
    /// The pool in configuration order, laid out flat for the scan.
    entries: Vec<Entry>,
    /// Rotating scan start, so that equal loads take turns.
    next: AtomicUsize,
    /// Leaf `i` is `entries[i]`; `None` for pools of up to [`SCAN_MAX`].
    tree: Option<Arc<LoadTree>>,
}

impl LeastConn {
    /// `pool` must be non-empty and hold only weight > 0 candidates. A tree is
    /// linked to the pool's counts, so build a selector only to use it: the
    /// newest one is the one kept up to date.
    pub(super) fn new(candidates: &[Candidate], pool: &[usize]) -> Self {
        Self::with_scan_max(candidates, pool, SCAN_MAX)
    }

    pub(super) fn with_scan_max(candidates: &[Candidate], pool: &[usize], scan_max: usize) -> Self {
        let entries: Vec<Entry> = pool
            .iter()
            .map(|&i| Entry {
                active: Arc::clone(&candidates[i].active),
                weight: u64::from(candidates[i].weight),
                index: i as u32,
            })
            .collect();
        let tree = (entries.len() > scan_max).then(|| {
            let tree = Arc::new(LoadTree::new(
                entries
                    .iter()
                    .map(|e| (e.weight as u32, e.active.load(Ordering::Relaxed))),
            ));
            let counts: Vec<&LiveCount> = entries.iter().map(|e| &*e.active).collect();
            LiveCount::link_all(&tree, &counts);
            tree
        });
        LeastConn {
            entries,
            next: AtomicUsize::new(0),
            tree,
        }
    }

    #[inline]
    pub(super) fn pick(&self, exclude: &[usize]) -> Option<usize> {
        match &self.tree {
            Some(tree) if exclude.is_empty() => Some(self.entries[tree.pick()].index as usize),
            _ => self.scan(exclude),
        }
    }

    /// The first minimum of `active / weight` found from a rotating start,
    /// compared as `a_i * w_best < a_best * w_i` (no division, no rounding).
    /// Counts are clamped to u32 so the products fit u64: no listener holds
    /// four billion connections, and u64 keeps the scan at a few ns a backend.
    fn scan(&self, exclude: &[usize]) -> Option<usize> {
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
