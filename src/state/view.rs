//! The snapshot a connection reads: one immutable [`ListenerView`] per listener,
//! built off the hot path from the config, the global settings and the backends'
//! health.

use super::backend::BackendState;
use crate::config::{self, Global, ListenerKey};
use crate::scheduler::{Candidate, Selector};
use std::collections::HashMap;
use std::sync::Arc;

/// Everything a connection needs, immutable.
pub struct ListenerView {
    pub listener: config::Listener,
    /// The global settings this view was built with (connect timeout and retries,
    /// the hash seed); shared by every view of one configuration.
    pub global: Arc<Global>,
    pub selector: Selector,
    /// Aligned with `listener.backends` and the selector's candidates.
    pub backends: Vec<Arc<BackendState>>,
    /// Index of each backend by server id (persistence entries name their backend).
    pub index: HashMap<Arc<str>, usize>,
}

impl ListenerView {
    /// Builds the view of `listener`, taking each backend's state from `states`
    /// (made for new backends, dropped for removed ones).
    pub(super) fn build(
        key: &ListenerKey,
        states: &mut HashMap<Arc<str>, Arc<BackendState>>,
        listener: config::Listener,
        global: Arc<Global>,
    ) -> ListenerView {
        states.retain(|server_id, _| listener.backends.iter().any(|b| &b.server_id == server_id));
        let backends: Vec<Arc<BackendState>> = listener
            .backends
            .iter()
            .map(|b| {
                states
                    .entry(b.server_id.clone())
                    .or_insert_with(|| Arc::new(BackendState::new(key, b.server_id.clone())))
                    .clone()
            })
            .collect();
        let candidates = listener
            .backends
            .iter()
            .zip(&backends)
            .map(|(b, state)| Candidate {
                server_id: b.server_id.clone(),
                weight: b.weight,
                healthy: state.is_eligible(),
                active: state.active.clone(),
            })
            .collect();
        let selector = Selector::build(listener.spec.scheduler, candidates, &global.hash_seed);
        let index = listener
            .backends
            .iter()
            .enumerate()
            .map(|(i, b)| (b.server_id.clone(), i))
            .collect();
        ListenerView {
            index,
            listener,
            global,
            selector,
            backends,
        }
    }

    /// Whether a persistence entry may send a connection to backend `i`: configured,
    /// weight > 0, not unhealthy.
    pub fn is_eligible(&self, i: usize) -> bool {
        self.listener.backends[i].weight > 0 && self.backends[i].is_eligible()
    }
}
