//! What `/status` and the status page show: one read of every listener's counts,
//! taken from the runtimes (never from the metrics recorder).

use crate::server::Server;
use crate::state::{unix_millis, ListenerState};
use serde::Serialize;
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::OnceLock;

/// One listener as `/status` shows it.
#[derive(Debug, Clone, Serialize)]
pub struct ListenerStatus {
    pub load_balancer_id: String,
    pub listener_port: u16,
    pub description: Option<String>,
    /// The configured bind address.
    pub address: String,
    /// Where it really listens (differs with port 0 in tests); `None` when not accepting.
    pub bound_address: Option<String>,
    /// `running` or `stopped`.
    pub status: &'static str,
    pub scheduler: &'static str,
    pub active_connections: u64,
    pub connections_total: u64,
    /// Bytes client to backend.
    pub bytes_in: u64,
    /// Bytes backend to client.
    pub bytes_out: u64,
    pub fail_open: bool,
    pub persistence_entries: u64,
    pub backends: Vec<BackendStatus>,
}

/// One backend of one listener.
#[derive(Debug, Clone, Serialize)]
pub struct BackendStatus {
    pub server_id: String,
    pub address: String,
    pub weight: u32,
    /// `healthy`, `unhealthy` or `unknown`.
    pub health: &'static str,
    /// When the health last changed (or the backend appeared), Unix milliseconds.
    pub last_change_unix_ms: u64,
    pub active_connections: u64,
    pub connections_total: u64,
    pub connect_failures: u64,
    pub bytes_in: u64,
    pub bytes_out: u64,
}

/// Every listener, sorted by (load balancer, port).
pub fn collect(server: &Server) -> Vec<ListenerStatus> {
    let bound = server.local_addrs();
    server
        .listeners()
        .iter()
        .map(|rt| listener_status(rt, bound.get(&rt.key).copied()))
        .collect()
}

fn listener_status(rt: &ListenerState, bound: Option<SocketAddr>) -> ListenerStatus {
    let view = rt.view.load();
    let l = &view.listener;
    let m = &rt.metrics;
    let backends = l
        .backends
        .iter()
        .zip(&view.backends)
        .map(|(b, state)| BackendStatus {
            server_id: b.server_id.to_string(),
            address: b.addr.to_string(),
            weight: b.weight,
            health: state.health().as_str(),
            last_change_unix_ms: state.last_change_unix_ms(),
            active_connections: state.active.load(Ordering::Relaxed),
            connections_total: state.metrics.connections.get(),
            connect_failures: state.metrics.connect_failures.get(),
            bytes_in: state.metrics.bytes_in.load(Ordering::Relaxed),
            bytes_out: state.metrics.bytes_out.load(Ordering::Relaxed),
        })
        .collect();
    ListenerStatus {
        load_balancer_id: rt.key.load_balancer_id.clone(),
        listener_port: rt.key.listener_port,
        description: l.spec.description.clone(),
        address: l.bind.to_string(),
        bound_address: bound.map(|a| a.to_string()),
        status: l.spec.status.as_str(),
        scheduler: l.spec.scheduler.as_str(),
        active_connections: rt.active.load(Ordering::Relaxed),
        connections_total: m.connections.get(),
        bytes_in: m.bytes_in.get(),
        bytes_out: m.bytes_out.get(),
        fail_open: view.selector.is_fail_open(),
        persistence_entries: m.persistence_entries.get(),
        backends,
    }
}

/// When this process started, Unix milliseconds: set by [`mark_started`].
static STARTED_UNIX_MS: OnceLock<u64> = OnceLock::new();

/// Records the process's start (the first call wins; `Process::start` calls it).
pub fn mark_started() {
    let _ = STARTED_UNIX_MS.get_or_init(unix_millis);
}

/// `/status`: `{"pid", "started_unix_ms", "ready", "listeners": [...]}` (no
/// listeners before start-up). `pid` and `started_unix_ms` tell which process
/// answers: after a binary upgrade, the new one.
pub fn status_json(server: Option<&Server>, ready: bool) -> serde_json::Value {
    let listeners = server.map(collect).unwrap_or_default();
    let started = *STARTED_UNIX_MS.get_or_init(unix_millis);
    serde_json::json!({
        "pid": std::process::id(),
        "started_unix_ms": started,
        "ready": ready,
        "listeners": listeners,
    })
}
