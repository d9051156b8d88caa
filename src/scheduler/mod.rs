//! Backend selection for one listener: the pure, I/O-free part of scheduling.
//!
//! A [`Selector`] is built (off the hot path) from the listener's backends in
//! configuration order, each with its weight and health, every time config,
//! weights or health change; it is immutable afterwards, so the data path can
//! share it behind an `Arc`/`ArcSwap` and call [`Selector::pick`] per
//! connection without locks or allocation.
//!
//! Eligible backends are those with weight > 0 that are not unhealthy. When
//! none is eligible but some have weight > 0 the selector *fails open*: it
//! schedules over every weight > 0 backend (a listener that refuses all
//! traffic because its health checks misfire is worse than one that tries),
//! and says so through [`Selector::is_fail_open`]. Weight 0 is never picked.

mod live;
mod load_tree;
mod maglev;
#[cfg(test)]
mod tests_hash;
#[cfg(test)]
mod tests_wlc;
mod wlc;
mod wrr;

pub use live::LiveCount;
pub use maglev::table_size;

use crate::config::Scheduler;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

/// One configured backend of the listener, in configuration order.
#[derive(Debug, Clone)]
pub struct Candidate {
    pub server_id: Arc<str>,
    /// 0..=100; 0 drains the backend.
    pub weight: u32,
    /// `false` only when health checks say unhealthy; unknown counts as healthy.
    pub healthy: bool,
    /// Live connections of this backend on this listener. Owned by the caller
    /// so that the count survives selector rebuilds.
    pub active: Arc<LiveCount>,
}

impl Candidate {
    /// A candidate with a fresh (zero) connection counter.
    pub fn new(server_id: impl Into<Arc<str>>, weight: u32, healthy: bool) -> Self {
        Candidate {
            server_id: server_id.into(),
            weight,
            healthy,
            active: Arc::new(LiveCount::new()),
        }
    }
}

/// The addresses of one accepted connection, as the hash schedulers see it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct FlowKey {
    pub client: SocketAddr,
    pub local: SocketAddr,
}

/// An immutable scheduling decision structure for one listener.
pub struct Selector {
    algorithm: Scheduler,
    candidates: Vec<Candidate>,
    fail_open: bool,
    strategy: Strategy,
}

enum Strategy {
    /// No backend with weight > 0: nothing can be picked.
    Empty,
    Rr(RoundRobin),
    Wrr(wrr::SmoothWrr),
    Wlc(wlc::LeastConn),
    Hash(maglev::ConsistentHash),
}

impl Selector {
    /// Builds the selector. `hash_seed` only matters for `Sch`/`Tch`: nodes
    /// that share the seed, the backends and their health agree on every flow.
    ///
    /// Building is not quite pure: a wlc selector over a large pool links the
    /// candidates' counts to its tree, so the newest selector built over them is
    /// the one whose picks stay exact.
    pub fn build(algorithm: Scheduler, candidates: Vec<Candidate>, hash_seed: &str) -> Selector {
        // The previous selector's tree stops hearing of changes; wlc relinks.
        for c in &candidates {
            c.active.unlink();
        }
        let (pool, fail_open) = scheduling_pool(&candidates);
        let strategy = if pool.is_empty() {
            Strategy::Empty
        } else {
            match algorithm {
                Scheduler::Rr => Strategy::Rr(RoundRobin::new(&pool)),
                Scheduler::Wrr => Strategy::Wrr(wrr::SmoothWrr::new(&candidates, &pool)),
                Scheduler::Wlc => Strategy::Wlc(wlc::LeastConn::new(&candidates, &pool)),
                Scheduler::Sch | Scheduler::Tch => Strategy::Hash(maglev::ConsistentHash::new(
                    &candidates,
                    &pool,
                    hash_seed,
                    algorithm == Scheduler::Tch,
                )),
            }
        };
        Selector {
            algorithm,
            candidates,
            fail_open,
            strategy,
        }
    }

    /// Picks a backend for `flow`, never one listed in `exclude` (the indices
    /// already tried for this connection). Returns an index into
    /// [`Selector::candidates`], or `None` when no candidate is left.
    #[inline]
    pub fn pick(&self, flow: &FlowKey, exclude: &[usize]) -> Option<usize> {
        match &self.strategy {
            Strategy::Empty => None,
            Strategy::Rr(s) => s.pick(exclude),
            Strategy::Wrr(s) => s.pick(exclude),
            Strategy::Wlc(s) => s.pick(exclude),
            Strategy::Hash(s) => s.pick(flow, exclude),
        }
    }

    /// The backends in configuration order; `pick` indexes into this.
    pub fn candidates(&self) -> &[Candidate] {
        &self.candidates
    }

    /// True when no backend is eligible and the selector schedules over every
    /// weight > 0 backend instead.
    pub fn is_fail_open(&self) -> bool {
        self.fail_open
    }

    pub fn algorithm(&self) -> Scheduler {
        self.algorithm
    }
}

impl std::fmt::Debug for Selector {
    // The tables can be hundreds of KiB: show only what helps a log reader.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Selector")
            .field("algorithm", &self.algorithm)
            .field("candidates", &self.candidates.len())
            .field("fail_open", &self.fail_open)
            .finish_non_exhaustive()
    }
}

/// The indices to schedule over, in configuration order, and whether that is
/// the fail-open set.
fn scheduling_pool(candidates: &[Candidate]) -> (Vec<usize>, bool) {
    let with_weight = || candidates.iter().enumerate().filter(|(_, c)| c.weight > 0);
    let eligible: Vec<usize> = with_weight()
        .filter(|(_, c)| c.healthy)
        .map(|(i, _)| i)
        .collect();
    if !eligible.is_empty() {
        return (eligible, false);
    }
    let all: Vec<usize> = with_weight().map(|(i, _)| i).collect();
    let fail_open = !all.is_empty();
    (all, fail_open)
}

/// True when every member of `pool` is in `exclude`. Cheap in the common case
/// (exclude shorter than pool), so callers use it to bound their walks.
fn all_excluded(pool: &[u32], exclude: &[usize]) -> bool {
    pool.len() <= exclude.len() && pool.iter().all(|&i| exclude.contains(&(i as usize)))
}

/// The cursor position a pick starts from. A new connection (nothing excluded)
/// takes the next turn; a retry walks on from the current one without using it
/// up, so a dead backend still costs the rotation one turn per connection, not one
/// per attempt (with two backends and one black-holed, every connection would
/// otherwise try the dead one first).
#[inline]
fn turn(next: &AtomicUsize, exclude: &[usize]) -> usize {
    if exclude.is_empty() {
        next.fetch_add(1, Ordering::Relaxed)
    } else {
        next.load(Ordering::Relaxed)
    }
}

/// Strict rotation in configuration order over the pool.
struct RoundRobin {
    pool: Vec<u32>,
    next: AtomicUsize,
}

impl RoundRobin {
    fn new(pool: &[usize]) -> Self {
        RoundRobin {
            pool: pool.iter().map(|&i| i as u32).collect(),
            next: AtomicUsize::new(0),
        }
    }

    #[inline]
    fn pick(&self, exclude: &[usize]) -> Option<usize> {
        let n = self.pool.len();
        let start = turn(&self.next, exclude) % n;
        // Retries take the next backends in rotation order after the turn.
        (0..n)
            .map(|k| self.pool[(start + k) % n] as usize)
            .find(|i| !exclude.contains(i))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(super) fn flow() -> FlowKey {
        FlowKey {
            client: "192.0.2.7:40000".parse().unwrap(),
            local: "198.51.100.1:80".parse().unwrap(),
        }
    }

    /// One open connection on a candidate, counted until dropped: what
    /// `metrics::LiveGuard` does on the data path.
    pub(super) struct Conn<'a>(&'a LiveCount);

    impl<'a> Conn<'a> {
        pub(super) fn open(s: &'a Selector, index: usize) -> Self {
            let count = &*s.candidates()[index].active;
            count.increment();
            Conn(count)
        }

        /// The backend's live count (this connection included).
        pub(super) fn count(&self) -> u64 {
            self.0.load(Ordering::Relaxed)
        }
    }

    impl Drop for Conn<'_> {
        fn drop(&mut self) {
            self.0.decrement();
        }
    }

    fn picks(s: &Selector, n: usize) -> Vec<usize> {
        (0..n).map(|_| s.pick(&flow(), &[]).unwrap()).collect()
    }

    const ALL: [Scheduler; 5] = [
        Scheduler::Wrr,
        Scheduler::Wlc,
        Scheduler::Rr,
        Scheduler::Sch,
        Scheduler::Tch,
    ];

    #[test]
    fn selector_is_send_sync() {
        fn assert_send_sync<T: Send + Sync>() {}
        assert_send_sync::<Selector>();
    }

    #[test]
    fn rr_rotates_in_config_order_skipping_weight0_and_unhealthy() {
        let c = vec![
            Candidate::new("a", 10, true),
            Candidate::new("b", 0, true),
            Candidate::new("c", 1, false),
            Candidate::new("d", 100, true),
            Candidate::new("e", 1, true),
        ];
        let s = Selector::build(Scheduler::Rr, c, "");
        assert!(!s.is_fail_open());
        assert_eq!(picks(&s, 7), vec![0, 3, 4, 0, 3, 4, 0]);
    }

    #[test]
    fn fail_open_when_all_unhealthy() {
        for alg in ALL {
            let c = vec![
                Candidate::new("a", 0, false),
                Candidate::new("b", 5, false),
                Candidate::new("c", 5, false),
            ];
            let s = Selector::build(alg, c, "seed");
            assert!(s.is_fail_open(), "{alg:?}");
            let got = picks(&s, 50);
            assert!(got.iter().all(|&i| i == 1 || i == 2), "{alg:?}: {got:?}");
        }
    }

    #[test]
    fn all_weight_zero_picks_nothing() {
        for alg in ALL {
            let c = vec![Candidate::new("a", 0, true), Candidate::new("b", 0, false)];
            let s = Selector::build(alg, c, "seed");
            assert!(!s.is_fail_open());
            assert_eq!(s.pick(&flow(), &[]), None, "{alg:?}");
        }
        let s = Selector::build(Scheduler::Rr, Vec::new(), "");
        assert_eq!(s.pick(&flow(), &[]), None);
    }

    #[test]
    fn weight_zero_never_picked_while_another_is_eligible() {
        for alg in ALL {
            let c = vec![
                Candidate::new("a", 0, true),
                Candidate::new("b", 1, true),
                Candidate::new("c", 0, true),
            ];
            let s = Selector::build(alg, c, "seed");
            assert!(!s.is_fail_open());
            assert!(picks(&s, 50).iter().all(|&i| i == 1), "{alg:?}");
        }
    }

    #[test]
    fn a_retry_does_not_use_up_a_turn() {
        for alg in [Scheduler::Rr, Scheduler::Wrr] {
            let c = vec![Candidate::new("a", 1, true), Candidate::new("b", 1, true)];
            let s = Selector::build(alg, c, "seed");
            // a is dead: each connection that meets it retries on b; the next
            // connection still gets the turn after it.
            assert_eq!(s.pick(&flow(), &[]), Some(0), "{alg:?}");
            assert_eq!(s.pick(&flow(), &[0]), Some(1), "{alg:?}");
            assert_eq!(s.pick(&flow(), &[]), Some(1), "{alg:?}");
            assert_eq!(s.pick(&flow(), &[]), Some(0), "{alg:?}");
            assert_eq!(s.pick(&flow(), &[0]), Some(1), "{alg:?}");
            assert_eq!(s.pick(&flow(), &[]), Some(1), "{alg:?}");
        }
    }

    #[test]
    fn exclude_gives_another_backend_then_none() {
        for alg in ALL {
            let c = vec![
                Candidate::new("a", 3, true),
                Candidate::new("b", 1, true),
                Candidate::new("c", 0, true),
                Candidate::new("d", 2, true),
            ];
            let s = Selector::build(alg, c, "seed");
            for _ in 0..20 {
                let first = s.pick(&flow(), &[]).unwrap();
                let second = s.pick(&flow(), &[first]).unwrap();
                assert_ne!(first, second, "{alg:?}");
                let third = s.pick(&flow(), &[first, second]).unwrap();
                assert!(![first, second, 2].contains(&third), "{alg:?}");
                assert_eq!(s.pick(&flow(), &[first, second, third]), None, "{alg:?}");
            }
            assert_eq!(s.pick(&flow(), &[0, 1, 2, 3]), None, "{alg:?}");
        }
    }

    #[test]
    fn a_connection_counts_on_its_candidate() {
        let s = Selector::build(Scheduler::Wlc, vec![Candidate::new("a", 1, true)], "");
        let g = Conn::open(&s, 0);
        assert_eq!(s.candidates()[0].active.load(Ordering::Relaxed), 1);
        drop(g);
        assert_eq!(s.candidates()[0].active.load(Ordering::Relaxed), 0);
        assert_eq!(s.candidates().len(), 1);
        assert_eq!(s.algorithm(), Scheduler::Wlc);
    }
}
