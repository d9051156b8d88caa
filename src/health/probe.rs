//! One probe, TCP or HTTP, bounded as a whole by the target's effective timeout.
//!
//! Every probe socket closes with a reset (SO_LINGER 0), as Alibaba's checks do:
//! thousands of targets probed every second would otherwise leave as many sockets
//! in TIME_WAIT on the balancer. The HTTP probe resets too, after the response head.

use super::{HttpCheck, Probe, Target};
use crate::config::HttpCodes;
use http_body_util::Empty;
use hyper::body::Bytes;
use hyper::header::{CONNECTION, HOST};
use hyper::Request;
use hyper_util::rt::TokioIo;
use std::io;
use std::net::SocketAddr;
use std::time::Duration;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

/// Why a probe failed (logged at debug, and with the transition it causes).
#[derive(Debug, thiserror::Error)]
pub enum ProbeError {
    #[error("no answer within {0:?}")]
    Timeout(Duration),
    #[error("connect: {0}")]
    Connect(io::Error),
    #[error("sending the PROXY header: {0}")]
    ProxyHeader(io::Error),
    #[error("cannot build the request: {0}")]
    Request(#[from] hyper::http::Error),
    #[error("http: {0}")]
    Http(#[from] hyper::Error),
    #[error("status {status} is not in {accepted}")]
    Status { status: u16, accepted: String },
}

/// Runs one probe of `target`: `Ok` when the backend passes.
pub async fn probe(target: &Target) -> Result<(), ProbeError> {
    match tokio::time::timeout(target.timeout, attempt(target)).await {
        Ok(result) => result,
        Err(_) => Err(ProbeError::Timeout(target.timeout)),
    }
}

async fn attempt(target: &Target) -> Result<(), ProbeError> {
    match &target.probe {
        // Success is the handshake; dropping the stream sends the reset.
        Probe::Tcp => connect(target.addr).await.map(drop),
        Probe::Http(check) => http(target.addr, check).await,
    }
}

async fn connect(addr: SocketAddr) -> Result<TcpStream, ProbeError> {
    let stream = TcpStream::connect(addr)
        .await
        .map_err(ProbeError::Connect)?;
    // A zero linger never blocks the thread on close (the reason tokio deprecates
    // SO_LINGER): close sends a RST at once. A failure only costs a TIME_WAIT.
    if let Err(error) = socket2::SockRef::from(&stream).set_linger(Some(Duration::ZERO)) {
        tracing::debug!(backend = %addr, %error, "health probe: cannot set SO_LINGER 0");
    }
    Ok(stream)
}

/// `HEAD {uri}` with `Host` and `Connection: close`; redirects are not followed
/// (a 3xx is judged by its class like any status).
async fn http(addr: SocketAddr, check: &HttpCheck) -> Result<(), ProbeError> {
    let request = Request::head(check.uri.as_str())
        .header(HOST, check.host.as_str())
        .header(CONNECTION, "close")
        .body(Empty::<Bytes>::new())?;
    let mut stream = connect(addr).await?;
    if check.proxy_header {
        stream
            .write_all(&crate::proxy_protocol::encode_v2_local())
            .await
            .map_err(ProbeError::ProxyHeader)?;
    }
    // `Host:` as the spec writes it: some health endpoints are picky about case.
    let (mut sender, conn) = hyper::client::conn::http1::Builder::new()
        .title_case_headers(true)
        .handshake(TokioIo::new(stream))
        .await?;
    // The connection is driven here rather than in a spawned task, so the
    // timeout around the probe drops it too.
    let response = sender.send_request(request);
    let mut response = std::pin::pin!(response);
    let status = tokio::select! {
        biased;
        r = &mut response => r?.status(),
        c = conn => {
            // It may end having delivered the response already: read that first.
            let done = response.await;
            c?;
            done?.status()
        }
    };
    classify(status.as_u16(), check.codes)
}

/// Success when the status class is accepted (`health_check_http_code`).
pub fn classify(status: u16, accepted: HttpCodes) -> Result<(), ProbeError> {
    if accepted.accepts(status) {
        Ok(())
    } else {
        Err(ProbeError::Status {
            status,
            accepted: accepted.to_api_string(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn codes(classes: &[u8]) -> HttpCodes {
        classes
            .iter()
            .fold(HttpCodes::EMPTY, |c, &class| c.with_class(class))
    }

    #[test]
    fn status_classes() {
        let only_2xx = HttpCodes::DEFAULT;
        assert!(classify(200, only_2xx).is_ok());
        assert!(classify(204, only_2xx).is_ok());
        assert!(classify(299, only_2xx).is_ok());
        assert!(classify(503, only_2xx).is_err());
        // A redirect is not followed: its class decides.
        assert!(classify(301, only_2xx).is_err());
        assert!(classify(301, codes(&[2, 3])).is_ok());
        let ok_or_5xx = codes(&[2, 5]);
        assert!(classify(503, ok_or_5xx).is_ok());
        assert!(classify(200, ok_or_5xx).is_ok());
        assert!(classify(404, ok_or_5xx).is_err());
        // No class outside 2xx..5xx is ever accepted.
        let all = codes(&[2, 3, 4, 5]);
        assert!(classify(101, all).is_err());
        assert!(classify(600, all).is_err());
    }

    #[test]
    fn failure_says_what_was_expected() {
        let e = classify(503, HttpCodes::DEFAULT)
            .err()
            .map(|e| e.to_string());
        assert_eq!(e.as_deref(), Some("status 503 is not in http_2xx"));
    }
}
