//! The client side of the tests: connecting from a chosen source address, echo
//! round trips through the balancer, reading what comes back.

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};

/// How long a reply may take before the test fails rather than hangs.
pub const REPLY_WITHIN: Duration = Duration::from_secs(20);

/// Connects to `addr` from `source` (port chosen by the kernel): 127.0.0.x sources
/// are distinct clients to the schedulers and to the PROXY protocol header.
pub async fn connect_from(source: IpAddr, addr: SocketAddr) -> TcpStream {
    let socket = if source.is_ipv4() {
        TcpSocket::new_v4()
    } else {
        TcpSocket::new_v6()
    }
    .unwrap();
    socket.bind(SocketAddr::new(source, 0)).unwrap();
    tokio::time::timeout(REPLY_WITHIN, socket.connect(addr))
        .await
        .unwrap_or_else(|_| panic!("no connection to {addr} from {source}"))
        .unwrap()
}

/// Writes `bytes` on `stream` and checks they come back.
pub async fn round_trip(stream: &mut TcpStream, bytes: &[u8]) {
    stream.write_all(bytes).await.unwrap();
    let got = tokio::time::timeout(REPLY_WITHIN, read_n(stream, bytes.len()))
        .await
        .unwrap();
    assert_eq!(got, bytes);
}

/// Sends `payload` on a new connection to `addr` and half-closes while reading what
/// comes back until EOF (both at once, so a payload larger than the socket buffers
/// cannot stall); returns it.
pub async fn echo_through(addr: SocketAddr, payload: &[u8]) -> Vec<u8> {
    let mut client = TcpStream::connect(addr).await.unwrap();
    let (mut r, mut w) = client.split();
    let send = async {
        w.write_all(payload).await.unwrap();
        w.shutdown().await.unwrap();
    };
    let mut echoed = Vec::with_capacity(payload.len());
    let ((), n) = tokio::join!(send, r.read_to_end(&mut echoed));
    n.unwrap();
    echoed
}

/// Reads until EOF.
pub async fn read_to_end(stream: &mut TcpStream) -> Vec<u8> {
    let mut out = Vec::new();
    stream.read_to_end(&mut out).await.unwrap();
    out
}

/// Reads exactly `n` bytes.
pub async fn read_n(stream: &mut TcpStream, n: usize) -> Vec<u8> {
    let mut out = vec![0; n];
    stream.read_exact(&mut out).await.unwrap();
    out
}
