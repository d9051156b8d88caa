//! Observability end to end: `/metrics` (strictly parsed), `/healthz`, `/status`, the
//! status page in a real browser, JSON logs of the binary, the Grafana dashboard.
//!
//! Its own test binary because the `metrics` recorder is process-global and can be
//! installed once: `edgelb::admin::recorder` does it, and each test uses its own load balancer id
//! so tests running in parallel do not share series.
#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "../support/mod.rs"]
mod support;

mod dashboard;
mod exposition;
mod logs;
mod page;

use edgelb::admin::{self, AdminState};
use edgelb::process::Process;
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use support::*;

/// `config_text` with the load balancer named `id`.
pub fn config_for(id: &str, backends: &[(&str, SocketAddr, u32)], extra: &str) -> String {
    config_text(backends, "", extra).replace("\"lb\"", &format!("\"{id}\""))
}

/// Starts the admin server for `state` on an ephemeral port.
pub async fn start_admin(state: Arc<AdminState>) -> SocketAddr {
    let socket = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = socket.local_addr().unwrap();
    tokio::spawn(admin::serve(
        socket,
        state,
        // The defaults, as a file without `[admin]` limits has them.
        admin::AdminLimits::from(&parse("").admin),
        tokio_util::sync::CancellationToken::new(),
    ));
    addr
}

/// A running process with its admin server (ready, recorder installed), as the
/// binary starts it; the admin server stops when the `Process` drops.
pub async fn lb_with_admin(text: &str) -> (Lb, SocketAddr, Process) {
    let process = start_process(text, ephemeral_binder(), true).await;
    let lb = Lb {
        server: process.server.clone(),
    };
    let admin = process.admin_addr.expect("the admin server runs");
    (lb, admin, process)
}

/// Connections to proxy and bytes each way per connection: more than one byte batch
/// (256 KiB) so both the batch flush and the flush at close are counted.
const N: usize = 4;
const B: usize = 300_000;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_count_connections_and_bytes_exactly_and_parse_strictly() {
    let backend = echo_backend().await;
    let (lb, admin, _process) =
        lb_with_admin(&config_for("lb-count", &[("b1", backend.addr, 100)], "")).await;
    let payload = random_bytes(B, 3);
    for _ in 0..N {
        let echoed = echo_through(lb.addr("lb-count", 80), &payload).await;
        assert_eq!(echoed.len(), payload.len());
    }
    let rt = lb.server.listeners()[0].clone();
    // Counts are final when the connection task ends (the last batch is added then).
    wait_until("connections closed", || {
        rt.active.load(Ordering::Relaxed) == 0
    })
    .await;

    let (status, content_type, text) = http_get(admin, "/metrics").await;
    assert_eq!(status, 200);
    assert!(
        content_type.starts_with("text/plain; version=0.0.4"),
        "{content_type}"
    );
    let m = exposition::parse(&text).unwrap_or_else(|e| panic!("{e}\n{text}"));
    let l = [("load_balancer_id", "lb-count"), ("listener_port", "80")];
    let b = [l[0], l[1], ("server_id", "b1")];
    let with = |k, v| [l[0], l[1], (k, v)];
    let (n, bytes) = (N as f64, (N * B) as f64);
    assert_eq!(m.value("edgelb_connections_total", &l), n);
    assert_eq!(m.value("edgelb_backend_connections_total", &b), n);
    assert_eq!(
        m.value("edgelb_bytes_total", &with("direction", "in")),
        bytes
    );
    assert_eq!(
        m.value("edgelb_bytes_total", &with("direction", "out")),
        bytes
    );
    assert_eq!(m.value("edgelb_active_connections", &l), 0.0);
    assert_eq!(m.value("edgelb_backend_active_connections", &b), 0.0);
    assert_eq!(m.value("edgelb_connection_duration_seconds_count", &l), n);
    assert_eq!(m.value("edgelb_backend_connect_seconds_count", &b), n);
    assert_eq!(m.value("edgelb_backend_connect_failures_total", &b), 0.0);

    // /status reads the same counts from the runtimes.
    let (_, _, json) = http_get(admin, "/status").await;
    let json: serde_json::Value = serde_json::from_str(&json).unwrap();
    let listener = &json["listeners"][0];
    assert_eq!(listener["connections_total"], N);
    assert_eq!(listener["bytes_in"], N * B);
    assert_eq!(listener["bytes_out"], N * B);
    assert_eq!(listener["backends"][0]["connections_total"], N);
    assert_eq!(listener["backends"][0]["bytes_in"], N * B);
    assert_eq!(listener["backends"][0]["bytes_out"], N * B);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_spec_metric_is_exported_from_the_start_with_its_labels() {
    let backend = echo_backend().await;
    let (_lb, admin, _process) = lb_with_admin(&config_for(
        "lb-fresh",
        &[("b1", backend.addr, 100)],
        &health_frozen().await,
    ))
    .await;
    let (_, _, text) = http_get(admin, "/metrics").await;
    let m = exposition::parse(&text).unwrap_or_else(|e| panic!("{e}\n{text}"));
    let l = [("load_balancer_id", "lb-fresh"), ("listener_port", "80")];
    let b = [l[0], l[1], ("server_id", "b1")];
    let with = |k, v| [l[0], l[1], (k, v)];
    let bwith = |k, v| [l[0], l[1], ("server_id", "b1"), (k, v)];
    for name in [
        "edgelb_connections_total",
        "edgelb_active_connections",
        "edgelb_fail_open",
        "edgelb_idle_timeouts_total",
        "edgelb_persistence_entries",
        "edgelb_connection_duration_seconds_count",
    ] {
        assert_eq!(m.value(name, &l), 0.0, "{name}");
    }
    for reason in ["no_backend", "connect_failed", "max_connections"] {
        assert_eq!(
            m.value("edgelb_rejected_connections_total", &with("reason", reason)),
            0.0
        );
    }
    for direction in ["in", "out"] {
        assert_eq!(
            m.value("edgelb_bytes_total", &with("direction", direction)),
            0.0
        );
    }
    for name in [
        "edgelb_backend_connections_total",
        "edgelb_backend_active_connections",
        "edgelb_backend_connect_failures_total",
        "edgelb_backend_connect_seconds_count",
    ] {
        assert_eq!(m.value(name, &b), 0.0, "{name}");
    }
    assert_eq!(m.value("edgelb_backend_healthy", &b), 1.0);
    for to in ["healthy", "unhealthy"] {
        assert_eq!(
            m.value("edgelb_health_transitions_total", &bwith("to", to)),
            0.0
        );
    }
    for result in ["success", "failure"] {
        assert_eq!(
            m.value("edgelb_health_checks_total", &bwith("result", result)),
            0.0
        );
        // Other tests never reload, so these stay 0.
        assert_eq!(
            m.value("edgelb_config_reloads_total", &[("result", result)]),
            0.0
        );
    }
    // Every name of src/metrics.rs is there, with a HELP line and its TYPE.
    for name in edgelb::metrics::ALL {
        let family = m
            .families
            .get(*name)
            .unwrap_or_else(|| panic!("{name} missing"));
        assert!(family.help.is_some(), "{name} has no HELP");
        let want = if name.ends_with("_seconds") {
            "histogram"
        } else if name.ends_with("_total") {
            "counter"
        } else {
            "gauge"
        };
        assert_eq!(family.kind, want, "{name}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn healthz_is_503_until_every_running_listener_is_bound() {
    let state = Arc::new(AdminState::new(None));
    let admin = start_admin(state.clone()).await;
    assert_eq!(http_get(admin, "/healthz").await.0, 503);
    let (status, _, page) = http_get(admin, "/").await;
    assert_eq!(status, 200);
    assert!(page.contains("not ready"), "{page}");
    let status: serde_json::Value =
        serde_json::from_str(&http_get(admin, "/status").await.2).unwrap();
    assert_eq!(status["listeners"], serde_json::json!([]));
    assert_eq!(status["ready"], false);
    // Which process answers, and since when (SPEC section 5).
    assert_eq!(status["pid"], std::process::id());
    let started = status["started_unix_ms"].as_u64().unwrap();
    assert!(started > 1_600_000_000_000 && started <= edgelb::state::unix_millis());
    assert_eq!(
        http_get(admin, "/metrics").await.0,
        503,
        "no recorder given"
    );

    // A running and a stopped listener: ready once the running one is bound.
    let backend = echo_backend().await;
    let text = config_for("lb-ready", &[("b1", backend.addr, 100)], "")
        + "[[listeners]]\nload_balancer_id = \"lb-ready\"\nlistener_port = 81\nstatus = \"stopped\"\n";
    let lb = start_lb(&text);
    state.set_server(lb.server.clone());
    assert_eq!(
        http_get(admin, "/healthz").await.0,
        503,
        "server set, not yet started"
    );
    state.ready.store(true, Ordering::Release);
    let (status, _, body) = http_get(admin, "/healthz").await;
    assert_eq!((status, body.as_str()), (200, "ok\n"));
    // A drain clears the flag.
    state.ready.store(false, Ordering::Release);
    assert_eq!(http_get(admin, "/healthz").await.0, 503);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_json_has_listeners_backends_health_and_counts() {
    let (b1, b2) = (echo_backend().await, echo_backend().await);
    let text = config_for(
        "lb-status",
        &[("b1", b1.addr, 100), ("b2", b2.addr, 0)],
        &format!(
            "description = \"web\"\nscheduler = \"wlc\"\npersistence_timeout = 600\n{}",
            health_frozen().await
        ),
    );
    let (lb, admin, _process) = lb_with_admin(&text).await;
    let rt = lb.server.listeners()[0].clone();
    // Seven pinned clients; the purge task refreshes the count every second.
    let now = std::time::Instant::now();
    let _pinned: Vec<_> = (1..=7u8)
        .map(|i| {
            rt.persistence
                .insert([10, 0, 0, i].into(), "b1".into(), now)
        })
        .collect();
    wait_until("the persistence gauge", || {
        rt.metrics.persistence_entries.get() == 7
    })
    .await;
    let (status, content_type, body) = http_get(admin, "/status").await;
    assert_eq!((status, content_type.as_str()), (200, "application/json"));
    let json: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(json["ready"], true);
    let listeners = json["listeners"].as_array().unwrap();
    assert_eq!(listeners.len(), 1);
    let l = &listeners[0];
    let bound = lb.addr("lb-status", 80).to_string();
    let expect = serde_json::json!({
        "load_balancer_id": "lb-status", "listener_port": 80, "description": "web",
        "address": "127.0.0.1:80", "bound_address": bound, "status": "running",
        "scheduler": "wlc", "active_connections": 0, "connections_total": 0,
        "bytes_in": 0, "bytes_out": 0, "fail_open": false, "persistence_entries": 7,
    });
    for (key, want) in expect.as_object().unwrap() {
        assert_eq!(&l[key], want, "listener.{key}");
    }
    let backends = l["backends"].as_array().unwrap();
    let ids: Vec<&str> = backends
        .iter()
        .map(|b| b["server_id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, ["b1", "b2"]);
    assert_eq!(backends[0]["address"], b1.addr.to_string());
    assert_eq!(backends[0]["weight"], 100);
    assert_eq!(backends[1]["weight"], 0);
    for b in backends {
        assert_eq!(b["health"], "unknown");
        assert!(b["last_change_unix_ms"].as_u64().unwrap() > 1_600_000_000_000);
        for key in [
            "active_connections",
            "connections_total",
            "connect_failures",
            "bytes_in",
            "bytes_out",
        ] {
            assert_eq!(b[key], 0, "backend.{key}");
        }
    }
    rt.backend_states()[1].set_health(edgelb::state::Health::Unhealthy);
    let json: serde_json::Value =
        serde_json::from_str(&http_get(admin, "/status").await.2).unwrap();
    assert_eq!(json["listeners"][0]["backends"][1]["health"], "unhealthy");
}
