//! `edgelb demo`: three HTTP backends on loopback and a listener file that balances
//! them, so a first-time user sees the rotation with a few `curl`s.

use http_body_util::Full;
use hyper::body::Bytes;
use hyper::{Response, StatusCode};
use std::net::{Ipv4Addr, SocketAddr};
use tokio::net::TcpListener;

/// Where the demo listener and admin server would like to be; the next free port
/// above is taken when these are busy.
pub const LISTENER_PORT: u16 = 8080;
pub const ADMIN_PORT: u16 = 9900;
const PORT_SEARCH: u16 = 100;

/// Starts the three named backends; returns their addresses.
pub async fn start_backends() -> std::io::Result<Vec<(String, SocketAddr)>> {
    let mut out = Vec::new();
    for i in 1..=3 {
        let name = format!("backend-{i}");
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).await?;
        out.push((name.clone(), listener.local_addr()?));
        tokio::spawn(serve_backend(listener, name));
    }
    Ok(out)
}

async fn serve_backend(listener: TcpListener, name: String) {
    let body = Bytes::from(format!("hello from {name}\n"));
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        let (body, name) = (body.clone(), name.clone());
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |_req| {
                let mut response = Response::new(Full::new(body.clone()));
                *response.status_mut() = StatusCode::OK;
                if let Ok(v) = hyper::header::HeaderValue::from_str(&name) {
                    response.headers_mut().insert("x-backend", v);
                }
                async move { Ok::<_, std::convert::Infallible>(response) }
            });
            let io = hyper_util::rt::TokioIo::new(stream);
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(io, service)
                .await;
        });
    }
}

/// The first port from `start` that can be bound on loopback now.
pub fn free_port(start: u16) -> Option<u16> {
    (start..start.saturating_add(PORT_SEARCH))
        .find(|&p| std::net::TcpListener::bind((Ipv4Addr::LOCALHOST, p)).is_ok())
}

/// The demo's listener file.
pub fn config_text(backends: &[(String, SocketAddr)], port: u16, admin_port: u16) -> String {
    let mut text = format!(
        "# Written by `edgelb demo`.\n[admin]\naddress = \"127.0.0.1:{admin_port}\"\n\n\
         [[load_balancers]]\nid = \"lb-demo\"\naddress = \"127.0.0.1\"\n"
    );
    for (name, addr) in backends {
        text.push_str(&format!(
            "\n  [[load_balancers.backend_servers]]\n  server_id = \"{name}\"\n  ip = \"{}\"\n  port = {}\n",
            addr.ip(),
            addr.port()
        ));
    }
    text.push_str(&format!(
        "\n[[listeners]]\nload_balancer_id = \"lb-demo\"\nlistener_port = {port}\n\
         description = \"demo\"\nscheduler = \"rr\"\nhealth_check_type = \"http\"\n\
         health_check_uri = \"/health\"\nhealth_check_interval = 2\n"
    ));
    text
}

/// What to tell the user.
pub fn banner(port: u16, admin_port: u16, config: &std::path::Path) -> String {
    format!(
        "edgelb demo: three backends behind 127.0.0.1:{port} (scheduler rr)\n\n\
         \x20 for i in 1 2 3 4; do curl -s http://127.0.0.1:{port}/; done   # backend-1, -2, -3, -1\n\
         \x20 curl -s http://127.0.0.1:{admin_port}/status                 # listeners, backends, health\n\
         \x20 curl -s http://127.0.0.1:{admin_port}/metrics                # Prometheus\n\n\
         listener file: {}   (edit it and send SIGHUP to reload)\n\
         Ctrl-C stops.\n",
        config.display()
    )
}
