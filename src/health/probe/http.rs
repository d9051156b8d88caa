//! The HTTP probe: `HEAD` on a fresh connection, judged by its status class.

use super::{connect_error, tcp::linger_zero, ProbeError};
use crate::config::HttpCodes;
use crate::health::HttpCheck;
use http_body_util::Empty;
use hyper::body::Bytes;
use hyper::header::{CONNECTION, HOST};
use hyper::Request;
use hyper_util::rt::TokioIo;
use std::net::SocketAddr;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

async fn connect(addr: SocketAddr) -> Result<TcpStream, ProbeError> {
    let stream = TcpStream::connect(addr).await.map_err(connect_error)?;
    linger_zero((&stream).into(), addr);
    Ok(stream)
}

/// `HEAD {uri}` with `Host` and `Connection: close`; redirects are not followed
/// (a 3xx is judged by its class like any status).
pub(super) async fn head(addr: SocketAddr, check: &HttpCheck) -> Result<(), ProbeError> {
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
