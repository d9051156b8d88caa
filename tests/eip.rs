//! `eip_transmit`: PROXY protocol v2 to backends, checked byte for byte and with real
//! consumers of the protocol (nginx, HAProxy).
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use edgelb::proxy_protocol::{decode_v2, Command, SIGNATURE};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::process::{Command as Process, Stdio};
use std::time::Duration;
use support::daemon::Daemon;
use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::mpsc;

/// A backend that reports the first `n` bytes of every connection.
async fn recording_backend(n: usize) -> (Backend, mpsc::UnboundedReceiver<Vec<u8>>) {
    let (tx, rx) = mpsc::unbounded_channel();
    let backend = serve(move |mut s| {
        let tx = tx.clone();
        async move {
            let mut got = vec![0u8; n];
            if s.read_exact(&mut got).await.is_ok() {
                let _ = tx.send(got);
            }
        }
    })
    .await;
    (backend, rx)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn off_sends_nothing_before_the_clients_bytes() {
    let (backend, mut rx) = recording_backend(5).await;
    let lb = start_lb(&config_text(
        &[("b1", backend.addr, 100)],
        "",
        "eip_transmit = \"off\"",
    ));
    let mut c = TcpStream::connect(lb.addr("lb", 80)).await.unwrap();
    c.write_all(b"hello").await.unwrap();
    let got = tokio::time::timeout(Duration::from_secs(20), rx.recv())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(got, b"hello");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_sends_a_v2_header_with_the_client_and_the_address_it_reached() {
    // 16 + 12 bytes of header for IPv4, then the client's bytes.
    let (backend, mut rx) = recording_backend(28 + 5).await;
    let lb = start_lb(&config_text(
        &[("b1", backend.addr, 100)],
        "",
        "eip_transmit = \"on\"",
    ));
    let lb_addr = lb.addr("lb", 80);
    let mut c = connect_from(IpAddr::V4(Ipv4Addr::new(127, 0, 0, 7)), lb_addr).await;
    let client = c.local_addr().unwrap();
    c.write_all(b"hello").await.unwrap();
    let got = tokio::time::timeout(Duration::from_secs(20), rx.recv())
        .await
        .unwrap()
        .unwrap();
    let mut want = SIGNATURE.to_vec();
    want.extend_from_slice(&[0x21, 0x11, 0, 12]);
    want.extend_from_slice(&[127, 0, 0, 7]);
    want.extend_from_slice(&[127, 0, 0, 1]);
    want.extend_from_slice(&client.port().to_be_bytes());
    want.extend_from_slice(&lb_addr.port().to_be_bytes());
    want.extend_from_slice(b"hello");
    assert_eq!(got, want);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_sends_the_header_at_once_to_a_backend_that_speaks_first() {
    let (backend, mut rx) = recording_backend(28).await;
    let lb = start_lb(&config_text(
        &[("b1", backend.addr, 100)],
        "",
        "eip_transmit = \"on\"",
    ));
    let _c = TcpStream::connect(lb.addr("lb", 80)).await.unwrap();
    let got = tokio::time::timeout(Duration::from_secs(20), rx.recv())
        .await
        .unwrap()
        .unwrap();
    let decoded = decode_v2(&got).unwrap().unwrap();
    assert_eq!(decoded.0, Command::Proxy);
    assert_eq!(decoded.2, 28);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_over_ipv6_carries_ipv6_addresses() {
    let Ok(probe) = std::net::TcpListener::bind("[::1]:0") else {
        eprintln!("no IPv6 loopback here");
        return;
    };
    drop(probe);
    let (backend, mut rx) = recording_backend(16 + 36 + 2).await;
    let text = config_text(&[("b1", backend.addr, 100)], "", "eip_transmit = \"on\"")
        .replace("address = \"127.0.0.1\"", "address = \"::1\"");
    let lb = start_lb(&text);
    let lb_addr = lb.addr("lb", 80);
    let mut c = TcpStream::connect(lb_addr).await.unwrap();
    let client = c.local_addr().unwrap();
    c.write_all(b"v6").await.unwrap();
    let got = tokio::time::timeout(Duration::from_secs(20), rx.recv())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(&got[12..16], &[0x21, 0x21, 0, 36]);
    let (_, addrs, len) = decode_v2(&got).unwrap().unwrap();
    assert_eq!(addrs, Some((client, lb_addr)));
    assert_eq!(&got[len..], b"v6");
}

/// A program the CI installs; missing here is a failure unless explicitly skipped.
fn require(program: &str, skip_var: &str) -> bool {
    if std::path::Path::new(program).exists() {
        return true;
    }
    assert!(
        std::env::var_os(skip_var).is_some(),
        "{program} is missing: run `bash scripts/test.sh` (it installs it) or set {skip_var}=1"
    );
    false
}

/// Stops `daemon` as its drop would, then checks that nothing of it is left
/// (issue 20): no process of its group, no orphan naming its directory, its port
/// free again.
fn stop_leaving_nothing(daemon: Daemon, port: u16) {
    daemon.stop_leaving_nothing();
    if let Err(e) = std::net::TcpListener::bind(("127.0.0.1", port)) {
        panic!("port {port} still held after the daemon stopped: {e}");
    }
}

async fn wait_port(addr: SocketAddr) {
    for _ in 0..2000 {
        if TcpStream::connect(addr).await.is_ok() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("{addr} never listened");
}

/// GET / through edgelb from `source`; returns the body (trimmed) and the client's
/// port.
async fn get_through(lb: SocketAddr, source: Ipv4Addr) -> (String, u16) {
    let mut c = connect_from(IpAddr::V4(source), lb).await;
    let port = c.local_addr().unwrap().port();
    let (_, _, body) = exchange(&mut c, "GET /", &[], b"").await;
    (body.trim().to_string(), port)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nginx_with_proxy_protocol_sees_the_client_address() {
    if !require("/usr/sbin/nginx", "EDGELB_SKIP_NGINX") {
        return;
    }
    let port = free_port();
    let dir = temp_dir("nginx");
    std::fs::create_dir_all(dir.join("logs")).unwrap();
    let conf = format!(
        "worker_processes 1;\nerror_log {d}/logs/error.log;\npid {d}/nginx.pid;\nevents {{ worker_connections 64; }}\n\
         http {{\n  access_log off;\n  client_body_temp_path {d}/body;\n  proxy_temp_path {d}/proxy;\n  fastcgi_temp_path {d}/fcgi;\n  uwsgi_temp_path {d}/uwsgi;\n  scgi_temp_path {d}/scgi;\n\
         \x20 server {{\n    listen 127.0.0.1:{port} proxy_protocol;\n    location / {{ return 200 \"$proxy_protocol_addr:$proxy_protocol_port $proxy_protocol_server_addr:$proxy_protocol_server_port\\n\"; }}\n  }}\n}}\n",
        d = dir.display()
    );
    std::fs::write(dir.join("nginx.conf"), conf).unwrap();
    let nginx = Daemon::spawn_in(
        dir.clone(),
        Process::new("/usr/sbin/nginx")
            .args([
                "-p",
                dir.to_str().unwrap(),
                "-c",
                dir.join("nginx.conf").to_str().unwrap(),
                "-g",
                "daemon off;",
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null()),
    );
    let backend: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    wait_port(backend).await;
    let lb = start_lb(&config_text(
        &[("nginx", backend, 100)],
        "",
        "eip_transmit = \"on\"",
    ));
    let lb_addr = lb.addr("lb", 80);
    let (body, client_port) = get_through(lb_addr, Ipv4Addr::new(127, 0, 0, 9)).await;
    assert_eq!(
        body,
        format!("127.0.0.9:{client_port} 127.0.0.1:{}", lb_addr.port())
    );
    stop_leaving_nothing(nginx, port);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn haproxy_accept_proxy_sees_the_client_address() {
    if !require("/usr/sbin/haproxy", "EDGELB_SKIP_HAPROXY") {
        return;
    }
    let port = free_port();
    let dir = temp_dir("haproxy");
    let conf = format!(
        "global\n  maxconn 64\ndefaults\n  mode http\n  timeout client 10s\n  timeout server 10s\n  timeout connect 5s\n\
         frontend f\n  bind 127.0.0.1:{port} accept-proxy\n  http-request return status 200 content-type text/plain lf-string \"%[src]:%[src_port] %[dst]:%[dst_port]\"\n"
    );
    std::fs::write(dir.join("haproxy.cfg"), conf).unwrap();
    let haproxy = Daemon::spawn_in(
        dir.clone(),
        Process::new("/usr/sbin/haproxy")
            .args(["-db", "-f", dir.join("haproxy.cfg").to_str().unwrap()])
            .stdout(Stdio::null())
            .stderr(Stdio::null()),
    );
    let backend: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    wait_port(backend).await;
    let lb = start_lb(&config_text(
        &[("haproxy", backend, 100)],
        "",
        "eip_transmit = \"on\"",
    ));
    let lb_addr = lb.addr("lb", 80);
    let (body, client_port) = get_through(lb_addr, Ipv4Addr::new(127, 0, 0, 11)).await;
    assert_eq!(
        body,
        format!("127.0.0.11:{client_port} 127.0.0.1:{}", lb_addr.port())
    );
    stop_leaving_nothing(haproxy, port);
}
