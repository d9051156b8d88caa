//! The live-connection count of one backend on one listener, and the wlc tree
//! that has to hear of every change to it.
//!
//! The count is the truth (status pages, tests and the wlc scan read it); the
//! [`LoadTree`] of a large wlc pool keeps a copy per backend so that a pick reads
//! one root instead of scanning every backend. A count outlives selectors (a
//! health change or reload builds a new one while connections stay open), so a
//! close must reach the tree of the *newest* selector, not the one its connection
//! was placed by: each count holds a link to its current leaf, which building a
//! selector replaces (or clears, for pools the scan serves).

use super::load_tree::LoadTree;
use arc_swap::ArcSwapOption;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

/// Live connections of one backend on one listener. Reads and writes mirror
/// `AtomicU64` (`load`, `store`); connections move it with [`LiveCount::increment`]
/// and [`LiveCount::decrement`], usually through a guard.
#[derive(Default)]
pub struct LiveCount {
    count: AtomicU64,
    link: ArcSwapOption<Link>,
}

/// Where this count sits in the tree of the current wlc selector.
struct Link {
    tree: Arc<LoadTree>,
    leaf: u32,
}

impl LiveCount {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn load(&self, order: Ordering) -> u64 {
        self.count.load(order)
    }

    /// Sets the count (tests and benchmarks seed loads with it).
    pub fn store(&self, value: u64, order: Ordering) {
        self.count.store(value, order);
        self.changed();
    }

    /// One more live connection.
    pub fn increment(&self) {
        // SeqCst: the tree's copy argument (load_tree.rs) needs one order of
        // count changes and link swaps; on x86 every RMW is a full fence anyway.
        self.count.fetch_add(1, Ordering::SeqCst);
        self.changed();
    }

    /// One live connection fewer.
    pub fn decrement(&self) {
        self.count.fetch_sub(1, Ordering::SeqCst);
        self.changed();
    }

    /// Stops telling any tree of changes (the pool is scanned, or the backend
    /// is not in it).
    pub(super) fn unlink(&self) {
        self.link.store(None);
    }

    /// Points each count at its leaf of a newly built `tree` (leaf `i` is
    /// `counts[i]`), then has the tree copy them again: any change that still
    /// went to the old tree happened before this copy.
    pub(super) fn link_all(tree: &Arc<LoadTree>, counts: &[&LiveCount]) {
        for (leaf, count) in counts.iter().enumerate() {
            count.link.store(Some(Arc::new(Link {
                tree: Arc::clone(tree),
                leaf: leaf as u32,
            })));
        }
        tree.resync(counts.iter().map(|c| &c.count));
    }

    /// Tells the linked tree, if any, that the count moved. Changing the count
    /// before reading the link is what makes relinking safe: a change that saw
    /// the old link happened before the new tree copied every count.
    fn changed(&self) {
        if let Some(link) = &*self.link.load() {
            link.tree.update(link.leaf as usize, &self.count);
        }
    }
}

impl std::fmt::Debug for LiveCount {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("LiveCount")
            .field(&self.count.load(Ordering::Relaxed))
            .finish()
    }
}
