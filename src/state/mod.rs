//! What the process knows of each listener: one [`ListenerState`] holding the
//! current [`ListenerView`] behind an `ArcSwap`, rebuilt off the hot path whenever
//! config, weights or health change, and the states of its backends.
//!
//! Each listener has its own snapshot: a connection only ever uses its own listener,
//! so swapping listeners one by one is not observable, and a health change rebuilds
//! only the listener it belongs to. Within a listener, backends, selector and health
//! are in the one snapshot, so a pick never sees a selector built for other backends.
//!
//! - [`backend`]: [`Health`] and the [`BackendState`] that stores it.
//! - [`view`]: the immutable [`ListenerView`].
//! - [`saved`]: what a listener hands over in a binary upgrade, and takes back.

mod backend;
mod saved;
mod view;

pub use backend::{unix_millis, BackendState, CheckCounts, Health};
pub use saved::{SavedBackend, SavedListener};
pub use view::ListenerView;

use crate::config::{self, Global, ListenerKey};
use crate::metrics::ListenerMetrics;
use crate::persistence::PersistenceTable;
use arc_swap::ArcSwap;
use std::collections::HashMap;
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

/// How often expired persistence entries are purged.
const PURGE_EVERY: Duration = Duration::from_secs(1);

/// A listener's lasting state: its current view, metrics and backend states.
pub struct ListenerState {
    pub key: Arc<ListenerKey>,
    pub view: ArcSwap<ListenerView>,
    pub metrics: ListenerMetrics,
    /// Client connections open on this listener.
    pub active: AtomicU64,
    /// Client-IP affinity, used while `persistence_timeout > 0`. Its bound is the
    /// `persistence_max_entries` in force when the listener was created.
    pub persistence: PersistenceTable,
    /// Backend states by server id (control plane only, never on the hot path).
    /// Its lock also serialises rebuilds: a reload and a health change may race,
    /// and the later one must not publish a view built from the older config.
    backends: Mutex<HashMap<Arc<str>, Arc<BackendState>>>,
}

impl ListenerState {
    pub fn new(listener: config::Listener, global: &Arc<Global>) -> Arc<ListenerState> {
        let key = Arc::new(listener.key());
        let metrics = ListenerMetrics::new(&key.load_balancer_id, key.listener_port);
        let mut backends = HashMap::new();
        let view = ListenerView::build(&key, &mut backends, listener, global.clone());
        let state = ListenerState {
            key,
            metrics,
            active: AtomicU64::new(0),
            persistence: PersistenceTable::new(Duration::ZERO, global.persistence_max_entries),
            backends: Mutex::new(backends),
            view: ArcSwap::from_pointee(view),
        };
        state.after_publish(&state.view.load());
        let state = Arc::new(state);
        tokio::spawn(purge_persistence(Arc::downgrade(&state)));
        state
    }

    fn backends(&self) -> MutexGuard<'_, HashMap<Arc<str>, Arc<BackendState>>> {
        self.backends.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Applies a new configuration of this listener (a reload): backends that remain
    /// keep their state; new connections use the new view.
    pub fn update(&self, listener: config::Listener, global: &Arc<Global>) {
        let mut states = self.backends();
        let view = ListenerView::build(&self.key, &mut states, listener, global.clone());
        self.publish(view);
    }

    /// Rebuilds the view from the current one (after a health change).
    pub fn rebuild(&self) {
        let mut states = self.backends();
        let current = self.view.load();
        let view = ListenerView::build(
            &self.key,
            &mut states,
            current.listener.clone(),
            current.global.clone(),
        );
        self.publish(view);
    }

    fn publish(&self, view: ListenerView) {
        self.after_publish(&view);
        self.view.store(Arc::new(view));
    }

    /// Keeps what follows a view in step with it: the fail-open gauge, and the
    /// persistence table's timeout with no entry pointing at a backend that is
    /// removed, has weight 0 or is unhealthy.
    fn after_publish(&self, view: &ListenerView) {
        self.metrics
            .fail_open
            .set(f64::from(u8::from(view.selector.is_fail_open())));
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

    /// The backend states, in the current view's order.
    pub fn backend_states(&self) -> Vec<Arc<BackendState>> {
        self.view.load().backends.clone()
    }
}

/// One task per listener frees expired persistence entries (no timer per entry) and
/// refreshes the entries gauge; it ends when the listener is gone.
async fn purge_persistence(state: std::sync::Weak<ListenerState>) {
    let mut tick = tokio::time::interval(PURGE_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let Some(state) = state.upgrade() else {
            return;
        };
        if !state.persistence.is_empty() {
            state
                .persistence
                .purge_expired(tokio::time::Instant::now().into_std());
        }
        state
            .metrics
            .persistence_entries
            .set(state.persistence.len() as u64);
    }
}
