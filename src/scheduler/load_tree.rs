//! A tournament tree over a wlc pool: every internal node names the winning leaf
//! of its subtree, so the root is the least loaded backend and a pick is a read of
//! the root plus a walk up its path, whatever the pool size.
//!
//! A leaf holds a copy of its backend's live count, its weight and when it was last
//! picked. "Wins" means: smaller `active / weight`, compared cross-multiplied (no
//! division, no rounding); on equal loads the one picked longer ago, so equal loads
//! take turns, also when short connections bring them back to equal between picks.
//!
//! Concurrency, lock-free: connections open and close on many threads while others
//! pick. The live counts themselves are exact atomics elsewhere ([`LiveCount`]); the
//! tree is a cache of them, and a race may only make it name a momentarily
//! non-optimal winner. Once updates stop it is exact again:
//! - a leaf copy is stored, then the count re-read; whoever stored last saw the
//!   final count (a change after its re-read would have a later copy of its own);
//! - a node is refreshed by reading its children and compare-and-swapping a new
//!   value stamped with a version (so an old value never reappears, no ABA); when
//!   the swap fails it is refreshed once more, which then starts after the
//!   competing write and reads the children we changed (Jayanti's f-array).
//!
//! [`LiveCount`]: super::live::LiveCount

use std::sync::atomic::{AtomicU32, AtomicU64, Ordering::*};

/// "No leaf here": padding up to a power of two.
const EMPTY: u32 = u32::MAX;
const WINNER: u64 = 0xffff_ffff;
const VERSION_ONE: u64 = 1 << 32;

struct Leaf {
    /// The backend's live count, clamped to u32 so products with weights fit u64.
    active: AtomicU32,
    weight: u32,
    /// Value of [`LoadTree::picks`] when last picked (0: never).
    last_pick: AtomicU64,
}

pub(super) struct LoadTree {
    leaves: Box<[Leaf]>,
    /// Heap order: the root is 1, the children of `n` are `2n` and `2n + 1`, and
    /// positions from `width` on are leaves (`width + i` is leaf `i`), not stored.
    /// Each node holds `version << 32 | winning leaf`.
    nodes: Box<[AtomicU64]>,
    width: usize,
    picks: AtomicU64,
}

impl LoadTree {
    /// A tree over leaves with these weights (all > 0, at least one) and counts.
    pub(super) fn new(weights_and_counts: impl ExactSizeIterator<Item = (u32, u64)>) -> Self {
        let leaves: Box<[Leaf]> = weights_and_counts
            .map(|(weight, count)| Leaf {
                active: AtomicU32::new(clamp(count)),
                weight,
                last_pick: AtomicU64::new(0),
            })
            .collect();
        let width = leaves.len().next_power_of_two().max(2);
        let tree = LoadTree {
            leaves,
            nodes: (0..width).map(|_| AtomicU64::new(0)).collect(),
            width,
            picks: AtomicU64::new(0),
        };
        for n in (1..width).rev() {
            tree.refresh(n);
        }
        tree
    }

    /// The least loaded leaf, now marked as picked so that the next pick among
    /// equals goes elsewhere.
    #[inline]
    pub(super) fn pick(&self) -> usize {
        let leaf = (self.nodes[1].load(Acquire) & WINNER) as usize;
        // A plain increment, not fetch_add: two racing picks that draw the same
        // number only leave their tie to pool order, and this saves a locked
        // instruction on every pick.
        let seq = self.picks.load(Relaxed) + 1;
        self.picks.store(seq, Relaxed);
        self.leaves[leaf].last_pick.store(seq, Relaxed);
        // Only ties can change, so a node is written only when its winner moves.
        // Every node of the path is read before any child or leaf is: a swap then
        // fails if an update wrote the node since, so a pick never puts back a
        // value an update replaced; it stops there, costing a tie its turn.
        let mut olds = [0u64; usize::BITS as usize];
        let (mut n, mut levels) = ((self.width + leaf) / 2, 0);
        while n > 0 {
            olds[levels] = self.nodes[n].load(SeqCst);
            (n, levels) = (n / 2, levels + 1);
        }
        let (mut best, mut pos) = (leaf as u32, self.width + leaf);
        for &old in &olds[..levels] {
            let sibling = self.child(pos ^ 1);
            best = if pos & 1 == 0 {
                self.better(best, sibling)
            } else {
                self.better(sibling, best)
            };
            pos /= 2;
            if u64::from(best) != old & WINNER {
                let new = stamp(old, best);
                if self.nodes[pos]
                    .compare_exchange(old, new, SeqCst, SeqCst)
                    .is_err()
                {
                    break;
                }
            }
        }
        leaf
    }

    /// Copies `count` into `leaf` and refreshes the path to the root.
    pub(super) fn update(&self, leaf: usize, count: &AtomicU64) {
        self.copy(leaf, count);
        let mut n = (self.width + leaf) / 2;
        while n > 0 {
            if !self.refresh(n) {
                self.refresh(n);
            }
            n /= 2;
        }
    }

    /// Copies every count again and refreshes every node, bottom up: the counts
    /// may have moved between [`LoadTree::new`] and linking them to this tree.
    pub(super) fn resync<'a>(&self, counts: impl Iterator<Item = &'a AtomicU64>) {
        for (leaf, count) in counts.enumerate() {
            self.copy(leaf, count);
        }
        for n in (1..self.width).rev() {
            if !self.refresh(n) {
                self.refresh(n);
            }
        }
    }

    fn copy(&self, leaf: usize, count: &AtomicU64) {
        let copy = &self.leaves[leaf].active;
        loop {
            let c = count.load(SeqCst);
            copy.store(clamp(c), SeqCst);
            if count.load(SeqCst) == c {
                break;
            }
        }
    }

    /// Recomputes node `n` from its children; false when another write got there
    /// between our read and our swap.
    fn refresh(&self, n: usize) -> bool {
        let old = self.nodes[n].load(SeqCst);
        let winner = self.winner_of(n);
        self.nodes[n]
            .compare_exchange(old, stamp(old, winner), SeqCst, SeqCst)
            .is_ok()
    }

    /// The better of node `n`'s two children's winners.
    fn winner_of(&self, n: usize) -> u32 {
        self.better(self.child(2 * n), self.child(2 * n + 1))
    }

    fn child(&self, c: usize) -> u32 {
        if c < self.width {
            (self.nodes[c].load(SeqCst) & WINNER) as u32
        } else if c - self.width < self.leaves.len() {
            (c - self.width) as u32
        } else {
            EMPTY
        }
    }

    /// `a` unless `b` is less loaded, or as loaded and picked longer ago. `a` is
    /// always the left (lower) one, so never-picked equals go in pool order.
    fn better(&self, a: u32, b: u32) -> u32 {
        if a == EMPTY || b == EMPTY {
            return a.min(b);
        }
        let (x, y) = (&self.leaves[a as usize], &self.leaves[b as usize]);
        let ax = u64::from(x.active.load(SeqCst)) * u64::from(y.weight);
        let ay = u64::from(y.active.load(SeqCst)) * u64::from(x.weight);
        if ax != ay {
            return if ax < ay { a } else { b };
        }
        if x.last_pick.load(Relaxed) <= y.last_pick.load(Relaxed) {
            a
        } else {
            b
        }
    }
}

fn clamp(count: u64) -> u32 {
    u32::try_from(count).unwrap_or(u32::MAX)
}

/// `winner` with the next version of `old` (wrapping after 2^32 writes to one
/// node, far beyond any swap's window).
fn stamp(old: u64, winner: u32) -> u64 {
    ((old & !WINNER).wrapping_add(VERSION_ONE)) | u64::from(winner)
}
