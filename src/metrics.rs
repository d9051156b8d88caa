//! Every metric edgelb exports: names as constants, described once at start-up, and
//! handles registered once per listener and backend so the data path never looks a
//! metric up by name.

use crate::scheduler::LiveCount;
use metrics::{counter, describe_counter, describe_gauge, describe_histogram, gauge, histogram};
use metrics::{Counter, Gauge, Histogram, Unit};
use std::sync::atomic::{AtomicU64, Ordering};

pub const CONNECTIONS_TOTAL: &str = "edgelb_connections_total";
pub const ACTIVE_CONNECTIONS: &str = "edgelb_active_connections";
pub const REJECTED_CONNECTIONS_TOTAL: &str = "edgelb_rejected_connections_total";
pub const BACKEND_CONNECTIONS_TOTAL: &str = "edgelb_backend_connections_total";
pub const BACKEND_ACTIVE_CONNECTIONS: &str = "edgelb_backend_active_connections";
pub const BACKEND_CONNECT_FAILURES_TOTAL: &str = "edgelb_backend_connect_failures_total";
pub const BACKEND_HEALTHY: &str = "edgelb_backend_healthy";
pub const HEALTH_TRANSITIONS_TOTAL: &str = "edgelb_health_transitions_total";
pub const FAIL_OPEN: &str = "edgelb_fail_open";
pub const HEALTH_CHECKS_TOTAL: &str = "edgelb_health_checks_total";
pub const BYTES_TOTAL: &str = "edgelb_bytes_total";
pub const IDLE_TIMEOUTS_TOTAL: &str = "edgelb_idle_timeouts_total";
pub const PERSISTENCE_ENTRIES: &str = "edgelb_persistence_entries";
pub const CONNECTION_DURATION_SECONDS: &str = "edgelb_connection_duration_seconds";
pub const BACKEND_CONNECT_SECONDS: &str = "edgelb_backend_connect_seconds";
pub const CONFIG_RELOADS_TOTAL: &str = "edgelb_config_reloads_total";
pub const UPGRADES_TOTAL: &str = "edgelb_upgrades_total";
pub const ADMIN_REJECTED_CONNECTIONS_TOTAL: &str = "edgelb_admin_rejected_connections_total";
pub const ADMIN_EVICTED_CONNECTIONS_TOTAL: &str = "edgelb_admin_evicted_connections_total";
pub const ACCESS_LOG_DROPPED_TOTAL: &str = "edgelb_access_log_dropped_total";

/// Every metric name above, for tests and tools (the Grafana dashboard test).
pub const ALL: &[&str] = &[
    CONNECTIONS_TOTAL,
    ACTIVE_CONNECTIONS,
    REJECTED_CONNECTIONS_TOTAL,
    BACKEND_CONNECTIONS_TOTAL,
    BACKEND_ACTIVE_CONNECTIONS,
    BACKEND_CONNECT_FAILURES_TOTAL,
    BACKEND_HEALTHY,
    HEALTH_TRANSITIONS_TOTAL,
    FAIL_OPEN,
    HEALTH_CHECKS_TOTAL,
    BYTES_TOTAL,
    IDLE_TIMEOUTS_TOTAL,
    PERSISTENCE_ENTRIES,
    CONNECTION_DURATION_SECONDS,
    BACKEND_CONNECT_SECONDS,
    CONFIG_RELOADS_TOTAL,
    UPGRADES_TOTAL,
    ADMIN_REJECTED_CONNECTIONS_TOTAL,
    ADMIN_EVICTED_CONNECTIONS_TOTAL,
    ACCESS_LOG_DROPPED_TOTAL,
];

/// Histogram buckets of connection lifetimes, in seconds.
pub const DURATION_BUCKETS: &[f64] = &[
    0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 10.0, 30.0, 60.0, 300.0, 900.0, 3600.0,
];
/// Histogram buckets of backend connect times, in seconds.
pub const CONNECT_BUCKETS: &[f64] = &[
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 3.0,
];

/// Describes every metric to the installed recorder (help text and unit).
pub fn describe() {
    describe_counter!(
        CONNECTIONS_TOTAL,
        "Client connections accepted, per listener"
    );
    describe_gauge!(ACTIVE_CONNECTIONS, "Client connections open, per listener");
    describe_counter!(
        REJECTED_CONNECTIONS_TOTAL,
        "Client connections closed without a backend, by reason"
    );
    describe_counter!(
        BACKEND_CONNECTIONS_TOTAL,
        "Connections proxied to a backend"
    );
    describe_gauge!(BACKEND_ACTIVE_CONNECTIONS, "Connections open to a backend");
    describe_counter!(
        BACKEND_CONNECT_FAILURES_TOTAL,
        "Failed connects to a backend"
    );
    describe_gauge!(
        BACKEND_HEALTHY,
        "1 when the backend is eligible (healthy or unknown), else 0"
    );
    describe_counter!(
        HEALTH_TRANSITIONS_TOTAL,
        "Health state changes, by new state"
    );
    describe_gauge!(
        FAIL_OPEN,
        "1 while a listener schedules over unhealthy backends"
    );
    describe_counter!(HEALTH_CHECKS_TOTAL, "Health probes, by result");
    describe_counter!(
        BYTES_TOTAL,
        Unit::Bytes,
        "Bytes proxied: in = client to backend, out = backend to client"
    );
    describe_counter!(
        IDLE_TIMEOUTS_TOTAL,
        "Connections closed by established_timeout"
    );
    describe_gauge!(PERSISTENCE_ENTRIES, "Entries in the persistence table");
    describe_histogram!(
        CONNECTION_DURATION_SECONDS,
        Unit::Seconds,
        "Client connection lifetimes"
    );
    describe_histogram!(
        BACKEND_CONNECT_SECONDS,
        Unit::Seconds,
        "Time to connect to a backend"
    );
    describe_counter!(CONFIG_RELOADS_TOTAL, "Listener file reloads, by result");
    describe_counter!(
        UPGRADES_TOTAL,
        "Binary upgrades (SIGUSR2): success counted by the new process, failure by the old one, which goes on serving"
    );
    describe_counter!(
        ADMIN_REJECTED_CONNECTIONS_TOTAL,
        "Admin connections closed at once because [admin] max_connections were open, all answering a request"
    );
    describe_counter!(
        ADMIN_EVICTED_CONNECTIONS_TOTAL,
        "Idle admin connections closed, oldest first, to make room for a new one at [admin] max_connections"
    );
    describe_counter!(
        ACCESS_LOG_DROPPED_TOTAL,
        "Access log lines dropped: the writer could not keep up (queue full) or a write failed"
    );
    // Process-wide series exist from the start, so a dashboard shows 0, not "no data".
    for result in ["success", "failure"] {
        counter!(CONFIG_RELOADS_TOTAL, "result" => result).absolute(0);
        counter!(UPGRADES_TOTAL, "result" => result).absolute(0);
    }
    counter!(ADMIN_REJECTED_CONNECTIONS_TOTAL).absolute(0);
    counter!(ADMIN_EVICTED_CONNECTIONS_TOTAL).absolute(0);
    counter!(ACCESS_LOG_DROPPED_TOTAL).absolute(0);
}

/// A Prometheus counter with a total the process can read back (the status page),
/// so nothing ever reads the recorder.
pub struct Total {
    counter: Counter,
    value: AtomicU64,
}

impl Total {
    pub fn new(counter: Counter) -> Self {
        Total {
            counter,
            value: AtomicU64::new(0),
        }
    }

    pub fn increment(&self, n: u64) {
        self.counter.increment(n);
        self.value.fetch_add(n, Ordering::Relaxed);
    }

    pub fn get(&self) -> u64 {
        self.value.load(Ordering::Relaxed)
    }
}

/// A Prometheus gauge of a count the process can read back.
pub struct Level {
    gauge: Gauge,
    value: AtomicU64,
}

impl Level {
    fn new(gauge: Gauge) -> Self {
        Level {
            gauge,
            value: AtomicU64::new(0),
        }
    }

    pub fn set(&self, n: u64) {
        self.gauge.set(n as f64);
        self.value.store(n, Ordering::Relaxed);
    }

    pub fn get(&self) -> u64 {
        self.value.load(Ordering::Relaxed)
    }
}

/// The handles of one listener.
pub struct ListenerMetrics {
    pub connections: Total,
    pub active: Gauge,
    pub rejected_no_backend: Counter,
    pub rejected_connect_failed: Counter,
    pub rejected_max_connections: Counter,
    pub fail_open: Gauge,
    pub bytes_in: Total,
    pub bytes_out: Total,
    pub idle_timeouts: Counter,
    /// Entries in the persistence table: the persistence code sets it.
    pub persistence_entries: Level,
    pub duration: Histogram,
}

impl ListenerMetrics {
    pub fn new(load_balancer_id: &str, listener_port: u16) -> Self {
        let lb = ("load_balancer_id", load_balancer_id.to_string());
        let port = ("listener_port", listener_port.to_string());
        let l = [lb.clone(), port.clone()];
        let with =
            |k: &'static str, v: &'static str| [lb.clone(), port.clone(), (k, v.to_string())];
        ListenerMetrics {
            connections: Total::new(counter!(CONNECTIONS_TOTAL, &l)),
            active: gauge!(ACTIVE_CONNECTIONS, &l),
            rejected_no_backend: counter!(
                REJECTED_CONNECTIONS_TOTAL,
                &with("reason", "no_backend")
            ),
            rejected_connect_failed: counter!(
                REJECTED_CONNECTIONS_TOTAL,
                &with("reason", "connect_failed")
            ),
            rejected_max_connections: counter!(
                REJECTED_CONNECTIONS_TOTAL,
                &with("reason", "max_connections")
            ),
            fail_open: gauge!(FAIL_OPEN, &l),
            bytes_in: Total::new(counter!(BYTES_TOTAL, &with("direction", "in"))),
            bytes_out: Total::new(counter!(BYTES_TOTAL, &with("direction", "out"))),
            idle_timeouts: counter!(IDLE_TIMEOUTS_TOTAL, &l),
            persistence_entries: Level::new(gauge!(PERSISTENCE_ENTRIES, &l)),
            duration: histogram!(CONNECTION_DURATION_SECONDS, &l),
        }
    }
}

/// The handles of one backend of one listener.
pub struct BackendMetrics {
    pub connections: Total,
    pub active: Gauge,
    pub connect_failures: Total,
    pub healthy: Gauge,
    pub to_healthy: Counter,
    pub to_unhealthy: Counter,
    pub checks_success: Counter,
    pub checks_failure: Counter,
    pub connect_seconds: Histogram,
    /// Bytes proxied through this backend (status page only: Prometheus has them
    /// per listener), added with the listener's batches.
    pub bytes_in: AtomicU64,
    pub bytes_out: AtomicU64,
}

impl BackendMetrics {
    pub fn new(load_balancer_id: &str, listener_port: u16, server_id: &str) -> Self {
        let l = [
            ("load_balancer_id", load_balancer_id.to_string()),
            ("listener_port", listener_port.to_string()),
            ("server_id", server_id.to_string()),
        ];
        let with = |k: &'static str, v: &'static str| {
            let mut labels = l.to_vec();
            labels.push((k, v.to_string()));
            labels
        };
        BackendMetrics {
            connections: Total::new(counter!(BACKEND_CONNECTIONS_TOTAL, &l)),
            active: gauge!(BACKEND_ACTIVE_CONNECTIONS, &l),
            connect_failures: Total::new(counter!(BACKEND_CONNECT_FAILURES_TOTAL, &l)),
            healthy: gauge!(BACKEND_HEALTHY, &l),
            to_healthy: counter!(HEALTH_TRANSITIONS_TOTAL, &with("to", "healthy")),
            to_unhealthy: counter!(HEALTH_TRANSITIONS_TOTAL, &with("to", "unhealthy")),
            checks_success: counter!(HEALTH_CHECKS_TOTAL, &with("result", "success")),
            checks_failure: counter!(HEALTH_CHECKS_TOTAL, &with("result", "failure")),
            connect_seconds: histogram!(BACKEND_CONNECT_SECONDS, &l),
            bytes_in: AtomicU64::new(0),
            bytes_out: AtomicU64::new(0),
        }
    }
}

/// Counts a reload.
pub fn config_reload(success: bool) {
    let result = if success { "success" } else { "failure" };
    counter!(CONFIG_RELOADS_TOTAL, "result" => result).increment(1);
}

/// A binary upgrade ended: `success` in the new process once it serves,
/// `failure` in the old one, which goes on serving.
pub fn upgrade(success: bool) {
    let result = if success { "success" } else { "failure" };
    counter!(UPGRADES_TOTAL, "result" => result).increment(1);
}

/// An admin connection closed at once: the admin cap was reached, every admin
/// connection answering a request.
pub fn admin_connection_rejected() {
    counter!(ADMIN_REJECTED_CONNECTIONS_TOTAL).increment(1);
}

/// The handle of `edgelb_access_log_dropped_total` (registered once per access log).
pub fn access_log_dropped() -> Counter {
    counter!(ACCESS_LOG_DROPPED_TOTAL)
}

/// An idle admin connection closed to make room for a new one at the admin cap.
pub fn admin_connection_evicted() {
    counter!(ADMIN_EVICTED_CONNECTIONS_TOTAL).increment(1);
}

/// A gauge and a readable count raised for as long as this value lives (active
/// connections), so every exit path gives the count back.
pub struct LiveGuard<'a, C: LiveCounter = AtomicU64>(&'a Gauge, &'a C);

/// A count a [`LiveGuard`] raises and lowers: a plain atomic, or a backend's
/// [`LiveCount`], which also keeps the wlc tree up to date.
pub trait LiveCounter {
    fn up(&self);
    fn down(&self);
}

impl LiveCounter for AtomicU64 {
    fn up(&self) {
        self.fetch_add(1, Ordering::Relaxed);
    }
    fn down(&self) {
        self.fetch_sub(1, Ordering::Relaxed);
    }
}

impl LiveCounter for LiveCount {
    fn up(&self) {
        self.increment();
    }
    fn down(&self) {
        self.decrement();
    }
}

impl<'a, C: LiveCounter> LiveGuard<'a, C> {
    pub fn new(gauge: &'a Gauge, count: &'a C) -> Self {
        gauge.increment(1.0);
        count.up();
        LiveGuard(gauge, count)
    }
}

impl<C: LiveCounter> Drop for LiveGuard<'_, C> {
    fn drop(&mut self) {
        self.0.decrement(1.0);
        self.1.down();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn live_guard_decrements_on_drop_even_on_panic() {
        let gauge = Gauge::noop();
        let count = LiveCount::new();
        count.store(7, Ordering::Relaxed);
        let g = LiveGuard::new(&gauge, &count);
        assert_eq!(count.load(Ordering::Relaxed), 8);
        drop(g);
        assert_eq!(count.load(Ordering::Relaxed), 7);
        let r = std::thread::scope(|s| {
            s.spawn(|| {
                let _g = LiveGuard::new(&gauge, &count);
                panic!("connection task failed");
            })
            .join()
        });
        assert!(r.is_err());
        assert_eq!(count.load(Ordering::Relaxed), 7);
    }
}
