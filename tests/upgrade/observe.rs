//! What the upgrade tests look at from outside: `/status` and `/metrics` of
//! whichever process answers, the kernel's listening sockets, sd_notify datagrams.

use crate::support::process::Edgelb;
use crate::support::*;
use std::net::SocketAddr;
use std::time::Duration;

/// `/status` of whichever process answers.
pub async fn status(admin: SocketAddr) -> serde_json::Value {
    serde_json::from_str(&http_get(admin, "/status").await.2).unwrap()
}

/// (listener port, server id, health) of every backend.
pub fn healths(status: &serde_json::Value) -> Vec<(u64, String, String)> {
    let mut out = Vec::new();
    for l in status["listeners"].as_array().into_iter().flatten() {
        for b in l["backends"].as_array().into_iter().flatten() {
            out.push((
                l["listener_port"].as_u64().unwrap(),
                b["server_id"].as_str().unwrap().to_string(),
                b["health"].as_str().unwrap().to_string(),
            ));
        }
    }
    out.sort();
    out
}

/// When each backend's health last changed, in listener and backend order.
pub fn last_changes(status: &serde_json::Value) -> Vec<u64> {
    let mut out = Vec::new();
    for l in status["listeners"].as_array().into_iter().flatten() {
        for b in l["backends"].as_array().into_iter().flatten() {
            out.push(b["last_change_unix_ms"].as_u64().unwrap());
        }
    }
    out
}

pub fn expected_healths(web: SocketAddr, plain: SocketAddr) -> Vec<(u64, String, String)> {
    let mut out = Vec::new();
    for port in [web.port(), plain.port()] {
        for (id, health) in [("A", "healthy"), ("B", "healthy"), ("S", "unhealthy")] {
            out.push((u64::from(port), id.to_string(), health.to_string()));
        }
    }
    out.sort();
    out
}

pub fn persistence_entries(status: &serde_json::Value, port: u16) -> u64 {
    status["listeners"]
        .as_array()
        .unwrap()
        .iter()
        .find(|l| l["listener_port"] == port)
        .unwrap()["persistence_entries"]
        .as_u64()
        .unwrap()
}

/// The value of a counter sample (`name{labels}`) in `/metrics`.
pub async fn counter(admin: SocketAddr, sample: &str) -> u64 {
    let text = http_get(admin, "/metrics").await.2;
    text.lines()
        .find_map(|l| l.strip_prefix(sample)?.trim().parse().ok())
        .unwrap_or_else(|| panic!("no {sample} in:\n{text}"))
}

pub fn signal(pid: u32, sig: i32) {
    // SAFETY: kill sends a signal; the pid is an edgelb process of this test that
    // /status just named (alive).
    let rc = unsafe { libc::kill(pid as i32, sig) };
    assert_eq!(
        rc,
        0,
        "kill({pid}, {sig}): {}",
        std::io::Error::last_os_error()
    );
}

/// The first `/status` answered by another process than `old`.
pub async fn wait_switch(admin: SocketAddr, old: u32, lb: &Edgelb) -> serde_json::Value {
    for _ in 0..1000 {
        let status = status(admin).await;
        if status["pid"] != old {
            return status;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("no new process after SIGUSR2:\n{}", lb.log_text());
}

/// The kernel's ids (inodes) of the sockets listening on 127.0.0.1 at each of
/// `ports`, from `/proc/net/tcp`: the same sets before and after upgrades mean the
/// very same sockets, never closed or bound again (a new socket gets a new inode).
/// One read: the file lists every TIME_WAIT socket of the machine too, and reading
/// it can take a second.
pub fn listening_inodes(ports: &[u16]) -> Vec<std::collections::BTreeSet<u64>> {
    let table = std::fs::read_to_string("/proc/net/tcp").unwrap();
    let locals: Vec<String> = ports.iter().map(|p| format!("0100007F:{p:04X}")).collect();
    let mut out = vec![std::collections::BTreeSet::new(); ports.len()];
    for line in table.lines().skip(1) {
        let mut fields = line.split_whitespace();
        let Some(local) = fields.nth(1) else { continue };
        let Some(i) = locals.iter().position(|l| l == local) else {
            continue;
        };
        // rem_address, st (0A: LISTEN), then inode at the 10th field.
        if fields.nth(1) == Some("0A") {
            out[i].insert(fields.nth(5).unwrap().parse().unwrap());
        }
    }
    out
}

/// The next sd_notify datagram.
pub async fn next_notification(notify: &tokio::net::UnixDatagram) -> String {
    let mut buf = vec![0u8; 1024];
    let n = tokio::time::timeout(REPLY_WITHIN, notify.recv(&mut buf))
        .await
        .expect("a notification")
        .unwrap();
    String::from_utf8_lossy(&buf[..n]).into_owned()
}
