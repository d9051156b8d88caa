//! What the data path reads: one immutable [`ListenerView`] per listener behind an
//! `ArcSwap`, rebuilt off the hot path whenever config, weights or health change.
//!
//! Each listener has its own snapshot: a connection only ever uses its own listener,
//! so swapping listeners one by one is not observable, and a health change rebuilds
//! only the listener it belongs to. Within a listener, backends, selector and health
//! are in the one snapshot, so a pick never sees a selector built for other backends.

use crate::config::{self, Global, ListenerKey};
use crate::metrics::{BackendMetrics, ListenerMetrics};
use crate::persistence::PersistenceTable;
use crate::scheduler::{Algorithm, Candidate, LiveCount, Selector};
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
    pub active: Arc<LiveCount>,
    pub health: AtomicU8,
    /// When `health` last changed (or the backend appeared), as [`unix_millis`].
    pub last_change: AtomicU64,
    pub metrics: BackendMetrics,
    /// Probe results so far, readable (tests, status) without the metrics recorder.
    pub checks: crate::health::CheckCounts,
}

/// Milliseconds since the Unix epoch (0 if the clock is before it).
pub fn unix_millis() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
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
    /// Index of each backend by server id (persistence entries name their backend).
    pub index: HashMap<Arc<str>, usize>,
}

impl ListenerView {
    /// Whether a persistence entry may send a connection to backend `i`: configured,
    /// weight > 0, not unhealthy.
    pub fn is_eligible(&self, i: usize) -> bool {
        self.listener.backends[i].weight > 0 && self.backends[i].is_eligible_health()
    }
}

/// How often expired persistence entries are purged.
const PURGE_EVERY: Duration = Duration::from_secs(1);

/// A listener's lasting state: its current view, metrics and backend states.
pub struct ListenerRuntime {
    pub key: ListenerKey,
    pub view: ArcSwap<ListenerView>,
    /// Serialises rebuilds (a reload and a health change may race: the later one must
    /// not publish a view built from the older config) and keeps the global settings
    /// of the last update, which a health rebuild reuses.
    rebuild_lock: Mutex<Global>,
    pub metrics: ListenerMetrics,
    /// Client connections open on this listener.
    pub active: AtomicU64,
    /// Client-IP affinity, used while `persistence_timeout > 0`. Its bound is the
    /// `persistence_max_entries` in force when the listener was created.
    pub persistence: PersistenceTable,
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
        let key = listener.key();
        let metrics = ListenerMetrics::new(&key.load_balancer_id, key.listener_port);
        let backends = Mutex::new(HashMap::new());
        let rt = ListenerRuntime {
            view: ArcSwap::from_pointee(Self::build(&key, &backends, listener, global)),
            rebuild_lock: Mutex::new(global.clone()),
            key,
            metrics,
            active: AtomicU64::new(0),
            persistence: PersistenceTable::new(Duration::ZERO, global.persistence_max_entries),
            backends,
        };
        rt.sync_persistence(&rt.view.load());
        rt.metrics
            .fail_open
            .set(f64::from(u8::from(rt.view.load().selector.is_fail_open())));
        let rt = Arc::new(rt);
        tokio::spawn(purge_persistence(Arc::downgrade(&rt)));
        rt
    }

    /// Keeps the persistence table in step with a view: its timeout, and no entry
    /// pointing at a backend that is removed, has weight 0 or is unhealthy.
    fn sync_persistence(&self, view: &ListenerView) {
        let timeout = view.listener.persistence_timeout.unwrap_or(Duration::ZERO);
        self.persistence.set_timeout(timeout);
        if view.listener.persistence_timeout.is_none() {
            self.persistence.retain_backends(|_| false);
        } else {
            self.persistence
                .retain_backends(|id| view.index.get(id).is_some_and(|&i| view.is_eligible(i)));
        }
        self.metrics
            .persistence_entries
            .set(self.persistence.len() as u64);
    }

    /// Applies a new configuration of this listener (a reload): backends that remain
    /// keep their state; new connections use the new view.
    pub fn update(&self, listener: config::Listener, global: &Global) {
        let mut last = self
            .rebuild_lock
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        last.clone_from(global);
        let view = Self::build(&self.key, &self.backends, listener, global);
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
        let view = Self::build(&self.key, &self.backends, listener, &global);
        self.publish(view);
    }

    fn publish(&self, view: ListenerView) {
        self.sync_persistence(&view);
        self.metrics
            .fail_open
            .set(f64::from(u8::from(view.selector.is_fail_open())));
        self.view.store(Arc::new(view));
    }

    fn build(
        key: &ListenerKey,
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
                        let metrics = BackendMetrics::new(
                            &key.load_balancer_id,
                            key.listener_port,
                            &b.server_id,
                        );
                        metrics.healthy.set(1.0);
                        Arc::new(BackendRuntime {
                            server_id: b.server_id.clone(),
                            active: Arc::new(LiveCount::new()),
                            health: AtomicU8::new(HEALTH_UNKNOWN),
                            last_change: AtomicU64::new(unix_millis()),
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
        let index = listener
            .backends
            .iter()
            .enumerate()
            .map(|(i, b)| (b.server_id.clone(), i))
            .collect();
        ListenerView {
            index,
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

/// One task per listener frees expired persistence entries (no timer per entry) and
/// refreshes the entries gauge; it ends when the listener is gone.
async fn purge_persistence(runtime: std::sync::Weak<ListenerRuntime>) {
    let mut tick = tokio::time::interval(PURGE_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let Some(rt) = runtime.upgrade() else {
            return;
        };
        if !rt.persistence.is_empty() {
            rt.persistence
                .purge_expired(tokio::time::Instant::now().into_std());
        }
        rt.metrics
            .persistence_entries
            .set(rt.persistence.len() as u64);
    }
}
