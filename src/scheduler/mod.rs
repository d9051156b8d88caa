//! Backend selection. (Interim: strict rotation for every algorithm; the full
//! schedulers replace this module with the same API.)

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Algorithm {
    Wrr,
    Wlc,
    Rr,
    Sch,
    Tch,
}

pub struct Candidate {
    pub server_id: Arc<str>,
    pub weight: u32,
    pub healthy: bool,
    pub active: Arc<AtomicU64>,
}

#[derive(Debug, Clone, Copy)]
pub struct FlowKey {
    pub client: SocketAddr,
    pub local: SocketAddr,
}

pub struct Selector {
    algorithm: Algorithm,
    candidates: Vec<Candidate>,
    order: Vec<usize>,
    fail_open: bool,
    next: AtomicUsize,
}

impl Selector {
    pub fn build(algorithm: Algorithm, candidates: Vec<Candidate>, _hash_seed: &str) -> Selector {
        let mut order: Vec<usize> = (0..candidates.len())
            .filter(|&i| candidates[i].weight > 0 && candidates[i].healthy)
            .collect();
        let fail_open = order.is_empty();
        if fail_open {
            order = (0..candidates.len())
                .filter(|&i| candidates[i].weight > 0)
                .collect();
        }
        let fail_open = fail_open && !order.is_empty();
        Selector {
            algorithm,
            candidates,
            order,
            fail_open,
            next: AtomicUsize::new(0),
        }
    }

    pub fn pick(&self, _flow: &FlowKey, exclude: &[usize]) -> Option<usize> {
        let n = self.order.len();
        let start = self.next.fetch_add(1, Ordering::Relaxed);
        (0..n)
            .map(|i| self.order[(start + i) % n])
            .find(|i| !exclude.contains(i))
    }

    pub fn candidates(&self) -> &[Candidate] {
        &self.candidates
    }

    pub fn is_fail_open(&self) -> bool {
        self.fail_open
    }

    pub fn algorithm(&self) -> Algorithm {
        self.algorithm
    }
}

pub struct ActiveGuard(Arc<AtomicU64>);

impl ActiveGuard {
    pub fn new(counter: Arc<AtomicU64>) -> Self {
        counter.fetch_add(1, Ordering::Relaxed);
        ActiveGuard(counter)
    }
}

impl Drop for ActiveGuard {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}
