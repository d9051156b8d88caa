//! A listener's lasting state written out and read back, for a binary upgrade: each
//! backend's health, streak and time of change, and the persistence entries.

use super::{Health, ListenerState};
use crate::persistence::SavedEntry;
use serde::{Deserialize, Serialize};
use std::time::Instant;

/// What one listener hands to the process that replaces this one.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SavedListener {
    pub load_balancer_id: String,
    pub listener_port: u16,
    pub backends: Vec<SavedBackend>,
    pub persistence: Vec<SavedEntry>,
}

/// One backend of one listener.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SavedBackend {
    pub server_id: String,
    /// [`Health::as_str`].
    pub health: String,
    /// Consecutive probe results against `health`.
    pub streak: u8,
    pub last_change_unix_ms: u64,
}

impl ListenerState {
    /// This listener's health view and persistence entries, as of now.
    pub fn save(&self) -> SavedListener {
        let backends = self
            .backend_states()
            .iter()
            .map(|b| SavedBackend {
                server_id: b.server_id.to_string(),
                health: b.health().as_str().to_string(),
                streak: b.streak(),
                last_change_unix_ms: b.last_change_unix_ms(),
            })
            .collect();
        SavedListener {
            load_balancer_id: self.key.load_balancer_id.clone(),
            listener_port: self.key.listener_port,
            backends,
            persistence: self.persistence.save(Instant::now()),
        }
    }

    /// Takes over `saved` (from the process this one replaces), before the listener
    /// accepts and before its checks start: backends still configured get their
    /// health and streak (the view is rebuilt, so an unhealthy one gets no
    /// connection), then the persistence entries of eligible backends come back
    /// with their remaining time. Returns how many entries were restored.
    pub fn restore(&self, saved: SavedListener) -> usize {
        {
            let states = self.backends();
            for b in &saved.backends {
                let (Some(state), Some(health)) = (
                    states.get(b.server_id.as_str()),
                    Health::from_name(&b.health),
                ) else {
                    continue;
                };
                state.restore(health, b.streak, b.last_change_unix_ms);
            }
        }
        self.rebuild();
        let view = self.view.load();
        let restored = self
            .persistence
            .restore(saved.persistence, Instant::now(), |id| {
                let &i = view.index.get(id)?;
                view.is_eligible(i)
                    .then(|| view.listener.backends[i].server_id.clone())
            });
        self.metrics
            .persistence_entries
            .set(self.persistence.len() as u64);
        restored
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;
    use crate::config::Config;
    use std::sync::Arc;

    fn listener(backends: &[&str], persistence_timeout: u32) -> Arc<ListenerState> {
        let mut text = String::from("[[load_balancers]]\nid = \"lb\"\naddress = \"127.0.0.1\"\n");
        for (i, id) in backends.iter().enumerate() {
            text.push_str(&format!(
                "[[load_balancers.backend_servers]]\nserver_id = \"{id}\"\nip = \"10.0.0.{}\"\nport = 80\n",
                i + 1
            ));
        }
        text.push_str(&format!(
            "[[listeners]]\nload_balancer_id = \"lb\"\nlistener_port = 80\npersistence_timeout = {persistence_timeout}\n"
        ));
        let config = Config::parse(&text, None).unwrap();
        let global = Arc::new(config.global.clone());
        ListenerState::new(config.listeners[0].clone(), &global)
    }

    #[tokio::test]
    async fn health_streak_and_entries_carry_over() {
        let old = listener(&["a", "b", "c"], 60);
        let states = old.backend_states();
        states[0].restore(Health::Healthy, 1, 111);
        states[1].restore(Health::Unhealthy, 2, 222);
        let now = Instant::now();
        for (n, id) in [(1u8, "a"), (2, "c")] {
            let client = std::net::IpAddr::from([192, 0, 2, n]);
            old.persistence
                .release(old.persistence.insert(client, Arc::from(id), now), now);
        }
        let saved = old.save();
        assert_eq!(saved.backends[1].health, "unhealthy");
        assert_eq!(saved.persistence.len(), 2);
        // Through the wire format and back.
        let saved: SavedListener =
            serde_json::from_str(&serde_json::to_string(&saved).unwrap()).unwrap();

        // The new process has "a" and "b", not "c".
        let new = listener(&["a", "b"], 60);
        assert_eq!(new.restore(saved), 1);
        let got: Vec<_> = new
            .backend_states()
            .iter()
            .map(|b| (b.health(), b.streak(), b.last_change_unix_ms()))
            .collect();
        assert_eq!(
            got,
            [(Health::Healthy, 1, 111), (Health::Unhealthy, 2, 222)]
        );
        let view = new.view.load();
        assert!(!view.is_eligible(1), "the view knows b is unhealthy");
        assert_eq!(new.persistence.len(), 1);
    }
}
