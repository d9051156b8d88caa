//! Test harness: the real listener on 127.0.0.1:0 and small loopback backends.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

mod client;
pub mod daemon;
mod http;
pub mod process;

// Each test binary uses some of the helpers.
#[allow(unused_imports)]
pub use client::*;
#[allow(unused_imports)]
pub use http::*;

use edgelb::config::Config;
use edgelb::listener::Binder;
use edgelb::process::{AdminBind, Options, Process};
use edgelb::server::Server;
use edgelb::workers::Workers;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};

/// A running edgelb with its listeners bound to ephemeral ports.
pub struct Lb {
    pub server: Arc<Server>,
}

impl Lb {
    /// The address the listener of `(lb, port)` really listens on.
    pub fn addr(&self, load_balancer_id: &str, port: u16) -> SocketAddr {
        let addrs = self.server.local_addrs();
        *addrs
            .get(&edgelb::config::ListenerKey::new(load_balancer_id, port))
            .unwrap_or_else(|| {
                panic!("listener {load_balancer_id}:{port} not accepting: {addrs:?}")
            })
    }
}

/// Binds the configured address on port 0, with the production socket options.
pub fn ephemeral_binder() -> Binder {
    Arc::new(|addr: SocketAddr| edgelb::listener::bind(SocketAddr::new(addr.ip(), 0)))
}

pub fn parse(text: &str) -> Config {
    Config::parse(text, None).unwrap_or_else(|e| panic!("invalid test config: {e:?}\n{text}"))
}

/// Starts edgelb with `text` (listener ports are names; sockets bind port 0).
pub fn start_lb(text: &str) -> Lb {
    let config = parse(text);
    let server = Server::start(&config, ephemeral_binder(), Workers::current()).expect("start");
    Lb {
        server: Arc::new(server),
    }
}

/// A listener file: one load balancer `lb` on 127.0.0.1 with the given backends
/// (server_id, address, weight) and one listener on port 80 with `extra` lines.
pub fn config_text(backends: &[(&str, SocketAddr, u32)], global: &str, extra: &str) -> String {
    let mut text = format!("[global]\n{global}\n[admin]\naddress = \"\"\n[[load_balancers]]\nid = \"lb\"\naddress = \"127.0.0.1\"\n");
    for (id, addr, weight) in backends {
        text.push_str(&format!(
            "[[load_balancers.backend_servers]]\nserver_id = \"{id}\"\nip = \"{}\"\nport = {}\nweight = {weight}\n",
            addr.ip(),
            addr.port()
        ));
    }
    text.push_str(&format!(
        "[[listeners]]\nload_balancer_id = \"lb\"\nlistener_port = 80\n{extra}\n"
    ));
    text
}

/// A backend that counts its connections.
pub struct Backend {
    pub addr: SocketAddr,
    pub accepted: Arc<AtomicUsize>,
}

impl Backend {
    pub fn accepted(&self) -> usize {
        self.accepted.load(Ordering::SeqCst)
    }
}

/// The echo backend's connection: every byte back, then a FIN once the client's
/// has come and everything is echoed.
pub async fn echo(mut stream: TcpStream) {
    let (mut r, mut w) = stream.split();
    let _ = tokio::io::copy(&mut r, &mut w).await;
    let _ = w.shutdown().await;
}

/// Writes `name` (so the client knows which backend it reached), then echoes.
pub async fn named_echo(name: &'static str, mut stream: TcpStream) {
    let _ = stream.write_all(name.as_bytes()).await;
    echo(stream).await;
}

/// Echoes every connection on a fresh loopback port.
pub async fn echo_backend() -> Backend {
    serve(echo).await
}

/// The echo backend, on a runtime of its own that serves it while a plain
/// `#[test]` driving the binary blocks; it stops when the runtime drops.
pub fn background_echo() -> (tokio::runtime::Runtime, SocketAddr) {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let addr = rt.block_on(echo_backend()).addr;
    (rt, addr)
}

/// Writes `name` on every connection, then echoes.
pub async fn named_backend(name: &'static str) -> Backend {
    serve(move |stream| named_echo(name, stream)).await
}

/// A listener on a fresh loopback port with a backlog of 4096. `TcpListener::bind`
/// listens with 128, like std: a burst of a few hundred connects from the
/// balancer's workers overflows it, and the kernel then drops SYNs (a 1 s
/// retransmission) and resets connections it could not queue, failing tests for
/// want of a backend that keeps up.
pub fn loopback_listener() -> TcpListener {
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_reuseaddr(true).unwrap();
    socket.bind("127.0.0.1:0".parse().unwrap()).unwrap();
    socket.listen(4096).unwrap()
}

/// Runs `handler` for every connection to a fresh loopback port.
pub async fn serve<F, Fut>(handler: F) -> Backend
where
    F: Fn(TcpStream) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    serve_on(loopback_listener(), handler)
}

/// Runs `handler` for every connection `listener` accepts.
pub fn serve_on<F, Fut>(listener: TcpListener, handler: F) -> Backend
where
    F: Fn(TcpStream) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let addr = listener.local_addr().unwrap();
    let accepted = Arc::new(AtomicUsize::new(0));
    let count = accepted.clone();
    let handler = Arc::new(handler);
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            count.fetch_add(1, Ordering::SeqCst);
            tokio::spawn(handler(stream));
        }
    });
    Backend { addr, accepted }
}

/// A listener line sending every backend's health probes to a sink that accepts
/// and closes, so the backends count only data connections (test backends all
/// share 127.0.0.1, so one port serves them all).
pub async fn health_sink() -> String {
    let sink = serve(|_| async {}).await;
    format!("health_check_connect_port = {}", sink.addr.port())
}

/// Listener lines that keep every probe in flight for the whole test (an HTTP check
/// to a backend that never answers, 50 s timeout): health stays unknown and no
/// transition is counted.
pub async fn health_frozen() -> String {
    let silent = serve(|s| async move {
        let _s = s;
        std::future::pending::<()>().await;
    })
    .await;
    format!(
        "health_check_type = \"http\"\nhealth_check_uri = \"/x\"\nhealth_check_interval = 50\nhealth_check_connect_port = {}",
        silent.addr.port()
    )
}

/// An address where nothing listens (connections are refused).
pub fn refused_addr() -> SocketAddr {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.local_addr().unwrap()
}

/// A listening socket with a backlog of 0 that never accepts: once a connect or two
/// fill its queue, the kernel drops further SYNs and a connect hangs.
pub fn blackhole() -> (
    std::net::SocketAddr,
    socket2::Socket,
    Vec<std::net::TcpStream>,
) {
    use socket2::{Domain, Socket, Type};
    let socket = Socket::new(Domain::IPV4, Type::STREAM, None).unwrap();
    socket
        .bind(
            &"127.0.0.1:0"
                .parse::<std::net::SocketAddr>()
                .unwrap()
                .into(),
        )
        .unwrap();
    socket.listen(0).unwrap();
    let addr = socket.local_addr().unwrap().as_socket().unwrap();
    let mut fillers = Vec::new();
    for _ in 0..8 {
        match std::net::TcpStream::connect_timeout(&addr, std::time::Duration::from_millis(100)) {
            Ok(s) => fillers.push(s),
            Err(_) => return (addr, socket, fillers),
        }
    }
    panic!("the backlog of {addr} never filled");
}

/// A free TCP port on 127.0.0.1 (for tests that run the binary).
pub fn free_port() -> u16 {
    refused_addr().port()
}

/// Deterministic pseudo-random bytes.
pub fn random_bytes(n: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    (0..n)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 24) as u8
        })
        .collect()
}

/// Polls `cond` until it holds (readiness, not a fixed sleep); panics after 10 s.
pub async fn wait_until(what: &str, cond: impl FnMut() -> bool) {
    wait_within(what, std::time::Duration::from_secs(10), cond).await;
}

/// Polls `cond` until it holds; panics after `limit`. It looks 1000 times, `limit /
/// 1000` apart (10 ms for the usual 10 s), so that a long wait on something slow to
/// read (the descriptors of a process holding thousands of connections) does not
/// spend the CPU the test is measuring.
pub async fn wait_within(what: &str, limit: std::time::Duration, mut cond: impl FnMut() -> bool) {
    for _ in 0..1000 {
        if cond() {
            return;
        }
        tokio::time::sleep(limit / 1000).await;
    }
    panic!("timed out waiting for {what}");
}

/// edgelb with its admin server and control API, running from a listener file in a
/// fresh temporary directory.
pub struct Api {
    pub lb: Lb,
    /// Where the admin server (and so the control API) listens.
    pub admin: SocketAddr,
    /// The listener file the API writes back.
    pub path: std::path::PathBuf,
    pub control: Arc<edgelb::api::Control>,
    /// Owns the admin server: it stops when the `Api` drops.
    pub process: Process,
}

/// A fresh, empty directory under the system's temporary directory.
pub fn temp_dir(tag: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!(
        "edgelb-{tag}-{}-{:08x}",
        std::process::id(),
        rand::random::<u32>()
    ));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// Writes `text` to `lb.toml` in a temporary directory and starts edgelb from it,
/// listeners on ephemeral ports, with the admin server on 127.0.0.1:0.
pub async fn start_api(text: &str) -> Api {
    start_api_with(text, ephemeral_binder()).await
}

/// As [`start_api`], with another way to bind listeners.
pub async fn start_api_with(text: &str, binder: Binder) -> Api {
    let process = start_process(text, binder, false).await;
    Api {
        lb: Lb {
            server: process.server.clone(),
        },
        admin: process.admin_addr.expect("the admin server runs"),
        path: process.control_path().to_path_buf(),
        control: process.control.clone(),
        process,
    }
}

/// Writes `text` to `lb.toml` in a temporary directory and starts the process as
/// the binary does, but on the test's runtime, listeners bound by `binder`, the
/// admin server on 127.0.0.1:0 and, with `metrics`, the Prometheus recorder.
pub async fn start_process(text: &str, binder: Binder, metrics: bool) -> Process {
    let path = temp_dir("api").join("lb.toml");
    std::fs::write(&path, text).unwrap();
    let config = Config::load(&path).unwrap_or_else(|e| panic!("invalid test config: {e}\n{text}"));
    let options = Options {
        binder,
        workers: None,
        admin: AdminBind::At("127.0.0.1:0".parse().unwrap()),
        metrics,
        handover: Default::default(),
    };
    Process::start(path, config, options).await.expect("start")
}
