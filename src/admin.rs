//! The admin server (hyper): `/metrics`, `/healthz`, `/status` and the status page.

use crate::metrics as m;
use crate::server::Server;
use crate::snapshot::{HEALTH_HEALTHY, HEALTH_UNHEALTHY};
use http_body_util::Full;
use hyper::body::{Bytes, Incoming};
use hyper::{Method, Request, Response, StatusCode};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

/// How often histograms and other recorder state are tidied.
const UPKEEP_EVERY: Duration = Duration::from_secs(5);

/// Installs the Prometheus recorder for the whole process and describes every
/// metric. Call once, before any listener starts (metric handles bind to it).
pub fn install_recorder() -> anyhow::Result<PrometheusHandle> {
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
    Ok(handle)
}

/// What the admin handlers read.
pub struct AdminState {
    pub server: Arc<Server>,
    pub prometheus: Option<PrometheusHandle>,
    /// Set once every running listener is bound.
    pub ready: AtomicBool,
    /// The control API (`None`: calls get 404).
    pub control: Option<Arc<crate::api::Control>>,
}

/// Serves the admin endpoints on `listener` until `stop` is cancelled.
pub async fn serve(listener: TcpListener, state: Arc<AdminState>, stop: CancellationToken) {
    loop {
        let (stream, _) = tokio::select! {
            () = stop.cancelled() => return,
            accepted = listener.accept() => match accepted {
                Ok(ok) => ok,
                Err(e) => {
                    tracing::warn!(error = %e, "admin accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let state = state.clone();
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |req| {
                let state = state.clone();
                async move { Ok::<_, std::convert::Infallible>(dispatch(req, &state).await) }
            });
            let io = hyper_util::rt::TokioIo::new(stream);
            if let Err(e) = hyper::server::conn::http1::Builder::new()
                .serve_connection(io, service)
                .await
            {
                tracing::debug!(error = %e, "admin connection ended with an error");
            }
        });
    }
}

/// Control-API calls go to [`crate::api`]; the GET pages to [`route`].
async fn dispatch(req: Request<Incoming>, state: &AdminState) -> Response<Full<Bytes>> {
    match &state.control {
        Some(control) if crate::api::is_api_request(&req) => crate::api::handle(req, control).await,
        _ => route(req, state),
    }
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
            if state.ready.load(Ordering::Acquire) {
                text(StatusCode::OK, "ok\n")
            } else {
                text(StatusCode::SERVICE_UNAVAILABLE, "starting\n")
            }
        }
        "/status" => reply(
            StatusCode::OK,
            "application/json",
            status_json(&state.server).to_string(),
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

fn health_name(h: u8) -> &'static str {
    match h {
        HEALTH_HEALTHY => "healthy",
        HEALTH_UNHEALTHY => "unhealthy",
        _ => "unknown",
    }
}

/// `/status`: listeners, backends, health, weights, active connections.
pub fn status_json(server: &Server) -> serde_json::Value {
    let addrs = server.local_addrs();
    let listeners: Vec<serde_json::Value> = server
        .runtimes()
        .iter()
        .map(|rt| {
            let view = rt.view.load();
            let l = &view.listener;
            let key = (rt.load_balancer_id.clone(), rt.listener_port);
            let backends: Vec<serde_json::Value> = l
                .backends
                .iter()
                .zip(&view.backends)
                .map(|(b, state)| {
                    serde_json::json!({
                        "server_id": &*b.server_id,
                        "address": b.addr.to_string(),
                        "weight": b.weight,
                        "health": health_name(state.health.load(Ordering::Relaxed)),
                        "active_connections": state.active.load(Ordering::Relaxed),
                    })
                })
                .collect();
            serde_json::json!({
                "load_balancer_id": rt.load_balancer_id,
                "listener_port": rt.listener_port,
                "address": l.bind.to_string(),
                "bound_address": addrs.get(&key).map(ToString::to_string),
                "status": l.spec.status.as_str(),
                "scheduler": l.spec.scheduler.as_str(),
                "active_connections": rt.active.load(Ordering::Relaxed),
                "fail_open": view.selector.is_fail_open(),
                "backends": backends,
            })
        })
        .collect();
    serde_json::json!({ "listeners": listeners })
}
