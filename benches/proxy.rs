//! The proxy path over loopback through an in-process listener: bytes per second
//! of a 1 MiB echo, and new connections per second (connect, one byte each way,
//! close).

#![allow(clippy::expect_used)] // a bench that cannot set up should stop loudly
use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use edgelb::config::Config;
use edgelb::server::Server;
use std::net::SocketAddr;
use std::sync::Arc;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::runtime::Runtime;

const MIB: usize = 1 << 20;

async fn echo_backend() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind backend");
    let addr = listener.local_addr().expect("backend address");
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            tokio::spawn(async move {
                let (mut r, mut w) = s.split();
                let _ = tokio::io::copy(&mut r, &mut w).await;
            });
        }
    });
    addr
}

/// Starts edgelb in `rt` in front of an echo backend; returns the listener address.
fn start(rt: &Runtime) -> (Arc<Server>, SocketAddr) {
    rt.block_on(async {
        let backend = echo_backend().await;
        let text = format!(
            "[admin]\naddress = \"\"\n[[load_balancers]]\nid = \"lb\"\naddress = \"127.0.0.1\"\n\
             [[load_balancers.backend_servers]]\nserver_id = \"b\"\nip = \"127.0.0.1\"\nport = {}\n\
             [[listeners]]\nload_balancer_id = \"lb\"\nlistener_port = 80\nscheduler = \"rr\"\n",
            backend.port()
        );
        let config = Config::parse(&text, None).expect("bench config");
        let binder: edgelb::listener::Binder =
            Arc::new(|a: SocketAddr| edgelb::listener::bind(SocketAddr::new(a.ip(), 0)));
        let server = Arc::new(
            Server::start(&config, binder, edgelb::workers::Workers::current()).expect("start"),
        );
        let addr = server
            .local_addrs()
            .into_values()
            .next()
            .expect("listening");
        (server, addr)
    })
}

fn bench_proxy(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let (_server, addr) = start(&rt);
    let payload = vec![0x5au8; MIB];

    let mut group = c.benchmark_group("proxy");
    group.throughput(Throughput::Bytes(MIB as u64));
    group.bench_function("echo_1MiB", |b| {
        b.to_async(&rt).iter(|| async {
            let mut s = TcpStream::connect(addr).await.expect("connect");
            let (mut r, mut w) = s.split();
            let send = async {
                w.write_all(&payload).await.expect("write");
                w.shutdown().await.expect("shutdown");
            };
            let mut got = Vec::with_capacity(MIB);
            let recv = r.read_to_end(&mut got);
            let ((), n) = tokio::join!(send, recv);
            assert_eq!(n.expect("read"), MIB);
        })
    });
    group.throughput(Throughput::Elements(1));
    group.bench_function("connection", |b| {
        b.to_async(&rt).iter(|| async {
            let mut s = TcpStream::connect(addr).await.expect("connect");
            s.write_all(b"x").await.expect("write");
            let mut one = [0u8; 1];
            s.read_exact(&mut one).await.expect("read");
        })
    });
    group.finish();
}

criterion_group!(benches, bench_proxy);
criterion_main!(benches);
