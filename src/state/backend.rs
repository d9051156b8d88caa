//! One backend of one listener as the process knows it: its health, probe counts,
//! live connections and metric handles, kept across reloads and view rebuilds.

use crate::config::ListenerKey;
use crate::metrics::BackendMetrics;
use crate::scheduler::LiveCount;
use std::sync::atomic::{AtomicU64, AtomicU8, Ordering};
use std::sync::Arc;

/// What the health checks last decided about a backend.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Health {
    /// No probe has completed yet (or the backend is not checked); eligible.
    Unknown = 0,
    /// Eligible.
    Healthy = 1,
    /// Not eligible for new connections.
    Unhealthy = 2,
}

impl Health {
    /// Whether the scheduler may pick this backend for a new connection.
    pub fn is_eligible(self) -> bool {
        matches!(self, Health::Unknown | Health::Healthy)
    }

    /// Stable lower-case name for logs, metrics labels and the admin API.
    pub fn as_str(self) -> &'static str {
        match self {
            Health::Unknown => "unknown",
            Health::Healthy => "healthy",
            Health::Unhealthy => "unhealthy",
        }
    }

    /// The health named by [`Health::as_str`].
    pub fn from_name(name: &str) -> Option<Health> {
        [Health::Unknown, Health::Healthy, Health::Unhealthy]
            .into_iter()
            .find(|h| h.as_str() == name)
    }

    fn from_u8(v: u8) -> Health {
        match v {
            1 => Health::Healthy,
            2 => Health::Unhealthy,
            _ => Health::Unknown,
        }
    }
}

impl std::fmt::Display for Health {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Probe results of one backend of one listener, readable without the metrics
/// recorder (integration tests count them; the status page may show them).
#[derive(Debug, Default)]
pub struct CheckCounts {
    success: AtomicU64,
    failure: AtomicU64,
}

impl CheckCounts {
    pub fn record(&self, ok: bool) {
        let counter = if ok { &self.success } else { &self.failure };
        counter.fetch_add(1, Ordering::Relaxed);
    }

    pub fn successes(&self) -> u64 {
        self.success.load(Ordering::Relaxed)
    }

    pub fn failures(&self) -> u64 {
        self.failure.load(Ordering::Relaxed)
    }
}

/// One backend of one listener; survives rebuilds while the backend stays configured.
pub struct BackendState {
    pub server_id: Arc<str>,
    /// Connections open to this backend on this listener (wlc reads it).
    pub active: Arc<LiveCount>,
    /// A [`Health`], stored as its `u8`.
    health: AtomicU8,
    /// When `health` last changed (or the backend appeared), as [`unix_millis`].
    last_change: AtomicU64,
    /// Consecutive probe results against `health` so far (the hysteresis's count,
    /// mirrored by the checks so a binary upgrade can hand it over).
    streak: AtomicU8,
    pub metrics: BackendMetrics,
    /// Probe results so far.
    pub checks: CheckCounts,
}

impl BackendState {
    /// A backend that just appeared on listener `key`: unknown, no connections.
    pub fn new(key: &ListenerKey, server_id: Arc<str>) -> BackendState {
        let metrics = BackendMetrics::new(&key.load_balancer_id, key.listener_port, &server_id);
        metrics.healthy.set(1.0);
        BackendState {
            server_id,
            active: Arc::new(LiveCount::new()),
            health: AtomicU8::new(Health::Unknown as u8),
            last_change: AtomicU64::new(unix_millis()),
            streak: AtomicU8::new(0),
            metrics,
            checks: CheckCounts::default(),
        }
    }

    pub fn health(&self) -> Health {
        Health::from_u8(self.health.load(Ordering::Relaxed))
    }

    /// Records a new health: the time of the change and the `healthy` gauge follow,
    /// and the streak starts again. (Rebuilding the listener's view, when
    /// eligibility changed, is the caller's.)
    pub fn set_health(&self, health: Health) {
        self.restore(health, 0, unix_millis());
    }

    /// Takes on a health, streak and time of change handed over by the process
    /// this one replaces (binary upgrade); [`set_health`](Self::set_health) with
    /// the time and streak given.
    pub fn restore(&self, health: Health, streak: u8, last_change_unix_ms: u64) {
        self.health.store(health as u8, Ordering::Relaxed);
        self.streak.store(streak, Ordering::Relaxed);
        self.last_change
            .store(last_change_unix_ms, Ordering::Relaxed);
        let up = if health.is_eligible() { 1.0 } else { 0.0 };
        self.metrics.healthy.set(up);
    }

    /// Consecutive probe results against the current health.
    pub fn streak(&self) -> u8 {
        self.streak.load(Ordering::Relaxed)
    }

    /// The checks record the hysteresis's count after each probe.
    pub fn set_streak(&self, streak: u8) {
        self.streak.store(streak, Ordering::Relaxed);
    }

    /// When the health last changed (or the backend appeared), Unix milliseconds.
    pub fn last_change_unix_ms(&self) -> u64 {
        self.last_change.load(Ordering::Relaxed)
    }

    pub fn is_eligible(&self) -> bool {
        self.health().is_eligible()
    }
}

/// Milliseconds since the Unix epoch (0 if the clock is before it).
pub fn unix_millis() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn health_round_trips_and_names() {
        for h in [Health::Unknown, Health::Healthy, Health::Unhealthy] {
            assert_eq!(Health::from_u8(h as u8), h);
        }
        assert!(Health::Unknown.is_eligible());
        assert!(Health::Healthy.is_eligible());
        assert!(!Health::Unhealthy.is_eligible());
        assert_eq!(Health::Unknown.as_str(), "unknown");
        assert_eq!(Health::Healthy.as_str(), "healthy");
        assert_eq!(Health::Unhealthy.to_string(), "unhealthy");
        for h in [Health::Unknown, Health::Healthy, Health::Unhealthy] {
            assert_eq!(Health::from_name(h.as_str()), Some(h));
        }
        assert_eq!(Health::from_name("up"), None);
    }

    #[test]
    fn a_new_backend_is_unknown_and_set_health_stores_it() {
        let b = BackendState::new(&ListenerKey::new("lb", 80), Arc::from("b1"));
        assert_eq!(b.health(), Health::Unknown);
        assert!(b.is_eligible());
        b.set_health(Health::Unhealthy);
        assert_eq!(b.health(), Health::Unhealthy);
        assert!(!b.is_eligible());
        assert!(b.last_change_unix_ms() > 0);
        b.restore(Health::Healthy, 2, 1_234);
        assert_eq!(
            (b.health(), b.streak(), b.last_change_unix_ms()),
            (Health::Healthy, 2, 1_234)
        );
        b.set_health(Health::Unhealthy);
        assert_eq!(b.streak(), 0, "a transition starts the count again");
    }
}
