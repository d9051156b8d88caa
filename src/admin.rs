//! The admin server (hyper): `/metrics`, `/healthz`, `/status` and the status page.

mod conn;
mod evict;
mod page;
mod status;

pub use conn::{serve, AdminLimits};
pub use page::status_page;
pub use status::{mark_started, status_json};

use crate::metrics as m;
use crate::server::Server;
use http_body_util::Full;
use hyper::body::{Bytes, Incoming};
use hyper::{Method, Request, Response, StatusCode};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock, PoisonError};
use std::time::Duration;

/// How often histograms and other recorder state are tidied.
const UPKEEP_EVERY: Duration = Duration::from_secs(5);

/// The process's Prometheus recorder: installed, with every metric described, on
/// the first call; later calls return the same handle. Call before any listener
/// starts (metric handles bind to the recorder installed when they are made).
pub fn recorder() -> anyhow::Result<PrometheusHandle> {
    static HANDLE: Mutex<Option<PrometheusHandle>> = Mutex::new(None);
    let mut installed = HANDLE.lock().unwrap_or_else(PoisonError::into_inner);
    if let Some(handle) = installed.as_ref() {
        return Ok(handle.clone());
    }
    let handle = PrometheusBuilder::new()
        .set_buckets_for_metric(
            Matcher::Full(m::CONNECTION_DURATION_SECONDS.into()),
            m::DURATION_BUCKETS,
        )?
        .set_buckets_for_metric(
            Matcher::Full(m::BACKEND_CONNECT_SECONDS.into()),
            m::CONNECT_BUCKETS,
        )?
        .install_recorder()?;
    m::describe();
    let upkeep = handle.clone();
    tokio::spawn(async move {
        loop {
            tokio::time::sleep(UPKEEP_EVERY).await;
            upkeep.run_upkeep();
        }
    });
    *installed = Some(handle.clone());
    Ok(handle)
}

/// What the admin handlers read. The admin server starts before the listeners bind,
/// so `/healthz` can say 503 until they are.
pub struct AdminState {
    server: OnceLock<Arc<Server>>,
    pub prometheus: Option<PrometheusHandle>,
    /// Set once the server has started (every running listener bound); cleared when
    /// it drains.
    pub ready: AtomicBool,
    /// The control API, set once the server has started (until then, and without
    /// it, API calls are not routed).
    control: OnceLock<Arc<crate::api::Control>>,
    /// Set when a binary upgrade's new process has taken every socket over: the
    /// node serves, so a request this process still answers (one it accepted just
    /// before) says ready, and a router watching `/healthz` keeps the node in.
    pub handed_over: AtomicBool,
    /// The admin server's own connection count, once it serves.
    connections: OnceLock<Arc<crate::limit::ConnectionLimit>>,
}

impl AdminState {
    /// A state without listeners yet: `/healthz` says 503.
    pub fn new(prometheus: Option<PrometheusHandle>) -> Self {
        AdminState {
            server: OnceLock::new(),
            prometheus,
            ready: AtomicBool::new(false),
            control: OnceLock::new(),
            handed_over: AtomicBool::new(false),
            connections: OnceLock::new(),
        }
    }

    /// The control API (once only; a second call is ignored).
    pub fn set_control(&self, control: Arc<crate::api::Control>) {
        let _ = self.control.set(control);
    }

    /// The started server (once only; a second call is ignored). Does not set `ready`.
    pub fn set_server(&self, server: Arc<Server>) {
        let _ = self.server.set(server);
    }

    /// Admin connections open now (0 without an admin server).
    pub fn open_connections(&self) -> usize {
        self.connections.get().map_or(0, |c| c.open())
    }

    pub fn server(&self) -> Option<&Arc<Server>> {
        self.server.get()
    }

    /// `/healthz`: started, not draining, and every running listener accepting (or
    /// handed over to a new process that serves them).
    pub fn is_ready(&self) -> bool {
        if self.handed_over.load(Ordering::Acquire) {
            return true;
        }
        if !self.ready.load(Ordering::Acquire) {
            return false;
        }
        let Some(server) = self.server() else {
            return false;
        };
        let bound = server.local_addrs();
        server
            .listeners()
            .iter()
            .all(|rt| !rt.view.load().listener.is_running() || bound.contains_key(&rt.key))
    }
}

/// Control-API calls go to [`crate::api`]; the GET pages to [`route`].
async fn dispatch(
    req: Request<Incoming>,
    state: &AdminState,
    body_timeout: Duration,
) -> Response<Full<Bytes>> {
    let mut response = match state.control.get() {
        Some(control) if crate::api::is_api_request(&req) => {
            crate::api::handle(req, control, body_timeout).await
        }
        _ => route(req, state),
    };
    // Handed over: this answer is the connection's last, so a kept-alive client
    // (a Prometheus scraper) comes back to the process that now serves.
    if state.handed_over.load(Ordering::Acquire) {
        response.headers_mut().insert(
            hyper::header::CONNECTION,
            hyper::header::HeaderValue::from_static("close"),
        );
    }
    response
}

fn route(req: Request<Incoming>, state: &AdminState) -> Response<Full<Bytes>> {
    if req.method() != Method::GET && req.method() != Method::HEAD {
        return text(StatusCode::METHOD_NOT_ALLOWED, "only GET here\n");
    }
    match req.uri().path() {
        "/metrics" => match &state.prometheus {
            Some(handle) => reply(StatusCode::OK, "text/plain; version=0.0.4", handle.render()),
            None => text(
                StatusCode::SERVICE_UNAVAILABLE,
                "metrics recorder not installed\n",
            ),
        },
        "/healthz" => {
            if state.is_ready() {
                text(StatusCode::OK, "ok\n")
            } else {
                text(StatusCode::SERVICE_UNAVAILABLE, "not ready\n")
            }
        }
        "/status" => reply(
            StatusCode::OK,
            "application/json",
            status_json(state.server().map(|s| &**s), state.is_ready()).to_string(),
        ),
        "/" => reply(
            StatusCode::OK,
            "text/html; charset=utf-8",
            status_page(state.server().map(|s| &**s), state.is_ready()),
        ),
        _ => text(StatusCode::NOT_FOUND, "not found\n"),
    }
}

fn text(status: StatusCode, body: &'static str) -> Response<Full<Bytes>> {
    reply(status, "text/plain; charset=utf-8", body.to_string())
}

fn reply(status: StatusCode, content_type: &str, body: String) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    if let Ok(value) = hyper::header::HeaderValue::from_str(content_type) {
        response
            .headers_mut()
            .insert(hyper::header::CONTENT_TYPE, value);
    }
    response
}
