//! Admin connections: the cap on how many are open, and the time limits that keep a
//! silent or slow client from holding one (issue 19).

use super::{dispatch, AdminState};
use crate::accept::{self, AcceptBackoff};
use crate::config::{self, defaults};
use crate::limit::{ConnectionLimit, Permit};
use crate::metrics as m;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;

/// The `[admin]` limits the server runs with (read at start; a reload keeps them,
/// as it keeps the admin address).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AdminLimits {
    /// From the connection (or the end of the previous response) to the end of the
    /// request head. hyper starts this timer as soon as a keep-alive connection is
    /// idle, so it is also the bound on the wait between requests.
    pub request_header_timeout: Duration,
    /// Reading a control-API call's body.
    pub request_body_timeout: Duration,
    /// Admin connections open at once.
    pub max_connections: usize,
}

impl Default for AdminLimits {
    fn default() -> Self {
        let secs = |s: i64| Duration::from_secs(s.unsigned_abs());
        AdminLimits {
            request_header_timeout: secs(defaults::ADMIN_REQUEST_HEADER_TIMEOUT),
            request_body_timeout: secs(defaults::ADMIN_REQUEST_BODY_TIMEOUT),
            max_connections: usize::try_from(defaults::ADMIN_MAX_CONNECTIONS).unwrap_or(256),
        }
    }
}

impl From<&config::Admin> for AdminLimits {
    fn from(admin: &config::Admin) -> Self {
        AdminLimits {
            request_header_timeout: admin.request_header_timeout,
            request_body_timeout: admin.request_body_timeout,
            max_connections: admin.max_connections,
        }
    }
}

/// Serves the admin endpoints on `listener` until `stop` is cancelled, with at most
/// `limits.max_connections` connections open: past that a new connection is closed
/// as soon as it is taken (counted, and a warning at most every 5 s), so the admin
/// server never holds more descriptors than its own budget.
pub async fn serve(
    listener: TcpListener,
    state: Arc<AdminState>,
    limits: AdminLimits,
    stop: CancellationToken,
) {
    // Its own budget, apart from the data path's `max_connections`.
    let cap = ConnectionLimit::new(limits.max_connections);
    // Its connections' buffers go back to the system once a crowd of them has gone.
    crate::memory::spawn_trimmer_after(cap.clone(), (limits.max_connections / 2).max(1));
    let mut backoff = AcceptBackoff::default();
    let stopped = stop.cancelled();
    tokio::pin!(stopped);
    while let Some((stream, peer)) = accept::next(
        &listener,
        &mut backoff,
        stopped.as_mut(),
        accept::Owner::Admin,
    )
    .await
    {
        let Some(permit) = cap.try_acquire() else {
            drop(stream);
            m::admin_connection_rejected();
            if cap.warning.due() {
                tracing::warn!(
                    max_connections = cap.max(),
                    client = %peer,
                    "admin connection limit reached; closing new admin connections"
                );
            }
            continue;
        };
        tokio::spawn(connection(stream, state.clone(), limits, permit));
    }
}

/// One admin connection, served by hyper until it ends or a time limit cuts it.
async fn connection(
    stream: TcpStream,
    state: Arc<AdminState>,
    limits: AdminLimits,
    permit: Permit,
) {
    let _permit = permit;
    let body_timeout = limits.request_body_timeout;
    let service = hyper::service::service_fn(move |req| {
        let state = state.clone();
        async move { Ok::<_, std::convert::Infallible>(dispatch(req, &state, body_timeout).await) }
    });
    let io = hyper_util::rt::TokioIo::new(stream);
    if let Err(e) = hyper::server::conn::http1::Builder::new()
        .timer(hyper_util::rt::TokioTimer::new())
        .header_read_timeout(limits.request_header_timeout)
        .serve_connection(io, service)
        .await
    {
        tracing::debug!(error = %e, "admin connection ended with an error");
    }
}
