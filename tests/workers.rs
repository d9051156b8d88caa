//! Thread per core: one current-thread runtime and one SO_REUSEPORT socket per
//! worker, the connection served where it was accepted.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use edgelb::server::Server;
use edgelb::workers::Workers;
use std::net::SocketAddr;
use std::sync::Arc;
use support::process::{Edgelb, Options};
use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Listening sockets on `port` (IPv4), from /proc/net/tcp.
fn listening_sockets(port: u16) -> usize {
    let table = std::fs::read_to_string("/proc/net/tcp").unwrap();
    table
        .lines()
        .skip(1)
        .filter(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            let local_port = fields[1].rsplit(':').next().unwrap();
            u16::from_str_radix(local_port, 16).unwrap() == port && fields[3] == "0A"
        })
        .count()
}

fn start_on_workers(text: &str, n: usize) -> Arc<Server> {
    let workers = Workers::spawn(n).unwrap();
    Arc::new(Server::start(&parse(text), ephemeral_binder(), workers).unwrap())
}

fn addr(server: &Server) -> SocketAddr {
    server.local_addrs()[&edgelb::config::ListenerKey::new("lb", 80)]
}

async fn echo_round_trip(addr: SocketAddr, message: Vec<u8>) {
    assert_eq!(echo_through(addr, &message).await, message);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_worker_has_a_socket_and_every_connection_is_served() {
    let backend = echo_backend().await;
    let text = config_text(&[("b1", backend.addr, 100)], "", &health_sink().await);
    let server = start_on_workers(&text, 3);
    let addr = addr(&server);
    assert_eq!(listening_sockets(addr.port()), 3, "one socket per worker");
    let clients: Vec<_> = (0..300u32)
        .map(|i| tokio::spawn(echo_round_trip(addr, format!("hello {i}").into_bytes())))
        .collect();
    for c in clients {
        c.await.unwrap();
    }
    assert_eq!(backend.accepted(), 300);
    wait_until("every connection closed", || server.open_connections() == 0).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stopping_a_listener_closes_every_workers_socket_and_reload_binds_them_again() {
    let backend = echo_backend().await;
    let sink = health_sink().await;
    let text = config_text(&[("b1", backend.addr, 100)], "", &sink);
    let server = start_on_workers(&text, 2);
    let port = addr(&server).port();
    assert_eq!(listening_sockets(port), 2);
    let stopped = config_text(
        &[("b1", backend.addr, 100)],
        "",
        &format!("{sink}\nstatus = \"stopped\""),
    );
    server.apply(&parse(&stopped)).unwrap();
    wait_until("both sockets closed", || listening_sockets(port) == 0).await;
    server.apply(&parse(&text)).unwrap();
    let port = addr(&server).port();
    assert_eq!(listening_sockets(port), 2);
    echo_round_trip(addr(&server), b"again".to_vec()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drain_waits_for_a_connection_served_on_a_worker() {
    let backend = echo_backend().await;
    let text = config_text(
        &[("b1", backend.addr, 100)],
        "drain_timeout = 30",
        &health_sink().await,
    );
    let server = start_on_workers(&text, 2);
    let mut client = TcpStream::connect(addr(&server)).await.unwrap();
    client.write_all(b"held").await.unwrap();
    let mut buf = [0u8; 4];
    client.read_exact(&mut buf).await.unwrap();
    let draining = tokio::spawn({
        let server = server.clone();
        async move { server.drain().await }
    });
    // Still open and flowing while the drain waits.
    client.write_all(b"more").await.unwrap();
    client.read_exact(&mut buf).await.unwrap();
    assert_eq!(&buf, b"more");
    assert!(!draining.is_finished());
    drop(client);
    assert_eq!(draining.await.unwrap(), 0, "nothing cut at the deadline");
}

#[test]
fn the_binary_runs_one_thread_and_one_socket_per_worker() {
    let port = free_port();
    let text = format!(
        "[admin]\naddress = \"\"\n[[load_balancers]]\nid = \"lb\"\naddress = \"127.0.0.1\"\n[[load_balancers.backend_servers]]\nserver_id = \"b1\"\nip = \"127.0.0.1\"\nport = {}\n[[listeners]]\nload_balancer_id = \"lb\"\nlistener_port = {port}\n",
        refused_addr().port()
    );
    let mut lb = Edgelb::start(
        &text,
        Options {
            workers: Some(3),
            ..Options::default()
        },
    );
    lb.wait_listening(SocketAddr::from(([127, 0, 0, 1], port)));
    // A thread names itself once it first runs, which can come after the first
    // socket answers on a loaded machine: look until three are named (10 s bound).
    let worker_names = || {
        let mut names: Vec<String> = std::fs::read_dir(format!("/proc/{}/task", lb.pid()))
            .unwrap()
            .flatten()
            .filter_map(|t| std::fs::read_to_string(t.path().join("comm")).ok())
            .map(|n| n.trim().to_string())
            .filter(|n| n.starts_with("edgelb-worker"))
            .collect();
        names.sort();
        names
    };
    let mut names = worker_names();
    for _ in 0..1000 {
        if names.len() >= 3 {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(10));
        names = worker_names();
    }
    assert_eq!(
        names,
        ["edgelb-worker-0", "edgelb-worker-1", "edgelb-worker-2"]
    );
    assert_eq!(listening_sockets(port), 3);
    assert!(lb.log_text().contains("sockets=3"), "{}", lb.log_text());
}
