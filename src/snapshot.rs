//! What the data path reads: one immutable [`ListenerView`] per listener behind an
//! `ArcSwap`, rebuilt off the hot path whenever config, weights or health change.
//!
//! Each listener has its own snapshot: a connection only ever uses its own listener,
//! so swapping listeners one by one is not observable, and a health change rebuilds
//! only the listener it belongs to. Within a listener, backends, selector and health
//! are in the one snapshot, so a pick never sees a selector built for other backends.

use crate::config::{self, Global};
use crate::metrics::{BackendMetrics, ListenerMetrics};
use crate::scheduler::{Algorithm, Candidate, Selector};
use arc_swap::ArcSwap;
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, AtomicU8, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

/// Health of one backend of one listener, as the probes last decided.
pub const HEALTH_UNKNOWN: u8 = 0;
pub const HEALTH_HEALTHY: u8 = 1;
pub const HEALTH_UNHEALTHY: u8 = 2;

/// One backend of one listener; survives rebuilds while the backend stays configured.
pub struct BackendRuntime {
    pub server_id: Arc<str>,
    /// Connections open to this backend on this listener (wlc reads it).
    pub active: Arc<AtomicU64>,
    pub health: AtomicU8,
    pub metrics: BackendMetrics,
    /// Probe results so far, readable (tests, status) without the metrics recorder.
    pub checks: crate::health::CheckCounts,
}

impl BackendRuntime {
    pub fn is_eligible_health(&self) -> bool {
        self.health.load(Ordering::Relaxed) != HEALTH_UNHEALTHY
    }
}

/// Everything a connection needs, immutable.
pub struct ListenerView {
    pub listener: config::Listener,
    pub connect_timeout: Duration,
    pub connect_retries: u32,
    pub selector: Selector,
    /// Aligned with `listener.backends` and the selector's candidates.
    pub backends: Vec<Arc<BackendRuntime>>,
}

/// A listener's lasting state: its current view, metrics and backend states.
pub struct ListenerRuntime {
    pub load_balancer_id: String,
    pub listener_port: u16,
    pub view: ArcSwap<ListenerView>,
    /// Serialises rebuilds (a reload and a health change may race: the later one must
    /// not publish a view built from the older config) and keeps the global settings
    /// of the last update, which a health rebuild reuses.
    rebuild_lock: Mutex<Global>,
    pub metrics: ListenerMetrics,
    /// Client connections open on this listener.
    pub active: AtomicU64,
    /// Backend states by server id (control plane only, never on the hot path).
    backends: Mutex<HashMap<Arc<str>, Arc<BackendRuntime>>>,
}

fn algorithm(s: config::Scheduler) -> Algorithm {
    match s {
        config::Scheduler::Wrr => Algorithm::Wrr,
        config::Scheduler::Wlc => Algorithm::Wlc,
        config::Scheduler::Rr => Algorithm::Rr,
        config::Scheduler::Sch => Algorithm::Sch,
        config::Scheduler::Tch => Algorithm::Tch,
    }
}

impl ListenerRuntime {
    pub fn new(listener: config::Listener, global: &Global) -> Arc<ListenerRuntime> {
        let (id, port) = (
            listener.spec.load_balancer_id.clone(),
            listener.spec.listener_port,
        );
        let metrics = ListenerMetrics::new(&id, port);
        let backends = Mutex::new(HashMap::new());
        let rt = ListenerRuntime {
            view: ArcSwap::from_pointee(Self::build(&id, port, &backends, listener, global)),
            rebuild_lock: Mutex::new(global.clone()),
            load_balancer_id: id,
            listener_port: port,
            metrics,
            active: AtomicU64::new(0),
            backends,
        };
        rt.metrics
            .fail_open
            .set(f64::from(u8::from(rt.view.load().selector.is_fail_open())));
        Arc::new(rt)
    }

    /// Applies a new configuration of this listener (a reload): backends that remain
    /// keep their state; new connections use the new view.
    pub fn update(&self, listener: config::Listener, global: &Global) {
        let mut last = self
            .rebuild_lock
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        last.clone_from(global);
        let view = Self::build(
            &self.load_balancer_id,
            self.listener_port,
            &self.backends,
            listener,
            global,
        );
        self.publish(view);
    }

    /// Rebuilds the view from the current one and the global settings of the last
    /// update (after a health change).
    pub fn rebuild(&self) {
        let global = self
            .rebuild_lock
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let listener = self.view.load().listener.clone();
        let view = Self::build(
            &self.load_balancer_id,
            self.listener_port,
            &self.backends,
            listener,
            &global,
        );
        self.publish(view);
    }

    fn publish(&self, view: ListenerView) {
        self.metrics
            .fail_open
            .set(f64::from(u8::from(view.selector.is_fail_open())));
        self.view.store(Arc::new(view));
    }

    fn build(
        id: &str,
        port: u16,
        states: &Mutex<HashMap<Arc<str>, Arc<BackendRuntime>>>,
        listener: config::Listener,
        global: &Global,
    ) -> ListenerView {
        let mut states = states.lock().unwrap_or_else(PoisonError::into_inner);
        states.retain(|server_id, _| listener.backends.iter().any(|b| &b.server_id == server_id));
        let backends: Vec<Arc<BackendRuntime>> = listener
            .backends
            .iter()
            .map(|b| {
                states
                    .entry(b.server_id.clone())
                    .or_insert_with(|| {
                        let metrics = BackendMetrics::new(id, port, &b.server_id);
                        metrics.healthy.set(1.0);
                        Arc::new(BackendRuntime {
                            server_id: b.server_id.clone(),
                            active: Arc::new(AtomicU64::new(0)),
                            health: AtomicU8::new(HEALTH_UNKNOWN),
                            metrics,
                            checks: Default::default(),
                        })
                    })
                    .clone()
            })
            .collect();
        let candidates = listener
            .backends
            .iter()
            .zip(&backends)
            .map(|(b, rt)| Candidate {
                server_id: b.server_id.clone(),
                weight: b.weight,
                healthy: rt.is_eligible_health(),
                active: rt.active.clone(),
            })
            .collect();
        let selector = Selector::build(
            algorithm(listener.spec.scheduler),
            candidates,
            &global.hash_seed,
        );
        ListenerView {
            listener,
            connect_timeout: global.backend_connect_timeout,
            connect_retries: global.connect_retries,
            selector,
            backends,
        }
    }

    /// The backend states, in the current view's order.
    pub fn backend_states(&self) -> Vec<Arc<BackendRuntime>> {
        self.view.load().backends.clone()
    }
}
