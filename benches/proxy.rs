//! The proxy path over loopback through an in-process listener: bytes per second
//! of a 1 MiB echo, and new connections per second (connect, one byte each way,
//! close).

#![allow(clippy::expect_used)] // a bench that cannot set up should stop loudly

// The tests' harness: the same binder, config and echo backend as they use.
#[path = "../tests/support/mod.rs"]
mod support;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use edgelb::process::Process;
use support::{config_text, echo_backend, echo_through, ephemeral_binder, start_process, Lb};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::runtime::Runtime;

const MIB: usize = 1 << 20;

/// Starts edgelb in `rt` in front of an echo backend: the process as the binary
/// wires it (`edgelb::process`), with its listeners on the bench's runtime.
fn start(rt: &Runtime) -> (Process, Lb) {
    rt.block_on(async {
        let backend = echo_backend().await;
        let text = config_text(&[("b", backend.addr, 100)], "", "scheduler = \"rr\"");
        let process = start_process(&text, ephemeral_binder(), false).await;
        let lb = Lb {
            server: process.server.clone(),
        };
        (process, lb)
    })
}

fn bench_proxy(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let (_process, lb) = start(&rt);
    let addr = lb.addr("lb", 80);
    let payload = vec![0x5au8; MIB];

    let mut group = c.benchmark_group("proxy");
    group.throughput(Throughput::Bytes(MIB as u64));
    group.bench_function("echo_1MiB", |b| {
        b.to_async(&rt).iter(|| async {
            assert_eq!(echo_through(addr, &payload).await.len(), MIB);
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
