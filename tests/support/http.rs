//! The tests' one HTTP/1.1 client: a request on a fresh connection (or one the test
//! opened), the reply read to EOF as (status, content type, body).

use super::client::REPLY_WITHIN;
use std::net::SocketAddr;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// A reply: its status (0 without a status line), its `content-type` in lower case
/// ("" without one) and its body.
pub type Reply = (u16, String, String);

/// `GET path` on a new connection to `addr`.
pub async fn http_get(addr: SocketAddr, path: &str) -> Reply {
    http(addr, &format!("GET {path}"), &[], b"").await
}

/// [`http_get`] for a caller that blocks: run on a thread and a runtime of its own,
/// so it works from a plain `#[test]` and from a thread of the test's runtime alike
/// (a runtime cannot be entered from inside another).
pub fn http_get_blocking(addr: SocketAddr, path: &str) -> Reply {
    std::thread::scope(|s| {
        s.spawn(|| {
            tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap()
                .block_on(http_get(addr, path))
        })
        .join()
        .unwrap()
    })
}

/// `head` (method and target, "POST /?Action=X") with `headers` and `body` on a new
/// connection to `addr`.
pub async fn http(
    addr: SocketAddr,
    head: &str,
    headers: &[(String, String)],
    body: &[u8],
) -> Reply {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    exchange(&mut stream, head, headers, body).await
}

/// One request on `stream` with `connection: close`, `host` its peer unless
/// `headers` name one; the reply read until the server closes, within
/// [`REPLY_WITHIN`]. Tolerates a server that stops reading and replies early: a
/// body too large may be refused before it is all sent.
pub async fn exchange(
    stream: &mut TcpStream,
    head: &str,
    headers: &[(String, String)],
    body: &[u8],
) -> Reply {
    let mut req = format!("{head} HTTP/1.1\r\n");
    if !headers.iter().any(|(n, _)| n == "host") {
        req.push_str(&format!("host: {}\r\n", stream.peer_addr().unwrap()));
    }
    for (n, v) in headers {
        req.push_str(&format!("{n}: {v}\r\n"));
    }
    req.push_str(&format!(
        "content-length: {}\r\nconnection: close\r\n\r\n",
        body.len()
    ));
    let mut out = Vec::new();
    let sent = async {
        stream.write_all(req.as_bytes()).await.unwrap();
        let _ = stream.write_all(body).await;
        let _ = stream.read_to_end(&mut out).await;
    };
    tokio::time::timeout(REPLY_WITHIN, sent)
        .await
        .unwrap_or_else(|_| panic!("no reply to {head} within {REPLY_WITHIN:?}"));
    parse(&String::from_utf8_lossy(&out))
}

fn parse(text: &str) -> Reply {
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((text, ""));
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let content_type = head
        .lines()
        .find_map(|l| {
            l.to_ascii_lowercase()
                .strip_prefix("content-type: ")
                .map(str::to_string)
        })
        .unwrap_or_default();
    (status, content_type, body.to_string())
}
