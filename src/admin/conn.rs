//! Admin connections: the cap on how many are open, and the time limits that keep a
//! silent or slow client from holding one (issue 19).

use super::evict::{Busy, Registered, Registry};
use super::{dispatch, AdminState};
use crate::accept::{self, AcceptBackoff};
use crate::config;
use crate::limit::{ConnectionLimit, Permit};
use crate::metrics as m;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;

/// How long the accept loop waits for a connection told to make room to let go of
/// its slot (it goes at its task's next poll; this only bounds a stalled runtime).
const MAKE_ROOM_WITHIN: Duration = Duration::from_millis(500);

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
/// `limits.max_connections` connections open, so the admin server never holds more
/// descriptors than its own budget. At the cap, the oldest connection not answering
/// a request is closed to make room for the new one (as nginx frees keep-alive
/// connections at `worker_connections`), so a fresh `/healthz` gets in while a flood
/// holds every slot; only when all are answering is the new one closed at once.
/// Either is counted, with a warning at most every 5 s.
pub async fn serve(
    listener: TcpListener,
    state: Arc<AdminState>,
    limits: AdminLimits,
    stop: CancellationToken,
) {
    // Its own budget, apart from the data path's `max_connections`.
    let cap = ConnectionLimit::new(limits.max_connections);
    let _ = state.connections.set(cap.clone());
    let registry = Arc::new(Registry::default());
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
        let permit = match cap.try_acquire() {
            Some(permit) => Some(permit),
            None => make_room(&cap, &registry).await,
        };
        let Some(permit) = permit else {
            drop(stream);
            m::admin_connection_rejected();
            if cap.warning.due() {
                tracing::warn!(
                    max_connections = cap.max(),
                    client = %peer,
                    "admin connection limit reached and every admin connection busy; closing new admin connections"
                );
            }
            continue;
        };
        tokio::spawn(connection(
            stream,
            state.clone(),
            limits,
            registry.register(permit),
        ));
    }
}

/// The cap is reached: closes the oldest idle admin connection and waits for its
/// slot. `None` when every connection is answering a request.
async fn make_room(cap: &Arc<ConnectionLimit>, registry: &Registry) -> Option<Permit> {
    let gone = registry.evict_oldest_idle()?;
    m::admin_connection_evicted();
    if cap.warning.due() {
        tracing::warn!(
            max_connections = cap.max(),
            "admin connection limit reached; closing the oldest idle admin connection"
        );
    }
    // Closed (its registration dropped, permit first) once the task has ended.
    let _ = tokio::time::timeout(MAKE_ROOM_WITHIN, gone).await;
    // Only this loop takes permits, so the freed slot is still free.
    cap.try_acquire()
}

/// One admin connection, served by hyper until it ends, a time limit cuts it, or it
/// is closed to make room (only while not answering a request).
async fn connection(
    stream: TcpStream,
    state: Arc<AdminState>,
    limits: AdminLimits,
    entry: Registered<Permit>,
) {
    let body_timeout = limits.request_body_timeout;
    let busy = entry.busy.clone();
    let service = hyper::service::service_fn(move |req| {
        let state = state.clone();
        // Busy from the request head until the answer is handed to hyper.
        let busy = Busy::new(&busy);
        async move {
            let response = dispatch(req, &state, body_timeout).await;
            drop(busy);
            Ok::<_, std::convert::Infallible>(response)
        }
    });
    let io = hyper_util::rt::TokioIo::new(stream);
    let serving = hyper::server::conn::http1::Builder::new()
        .timer(hyper_util::rt::TokioTimer::new())
        .header_read_timeout(limits.request_header_timeout)
        .serve_connection(io, service);
    tokio::select! {
        result = serving => {
            if let Err(e) = result {
                tracing::debug!(error = %e, "admin connection ended with an error");
            }
        }
        () = entry.evicted.cancelled() => {
            tracing::debug!("admin connection closed to make room for a new one");
        }
    }
}
