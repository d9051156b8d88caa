//! Many concurrent idle connections through the real binary: held, then closed, twice,
//! with edgelb's resident memory measured at start, while held and after close.
//! Prints the memory per connection; asserts: < 64 KiB per connection, every
//! descriptor given back, RSS back near the start after close (edgelb trims the
//! heap once many connections have gone, see `src/memory.rs`), and no growth from
//! one round to the next.
//!
//! Descriptors: edgelb holds two per connection, this test one (the clients), and the
//! backend, a separate python3 asyncio process, one. CI runs 2,000 connections;
//! `scripts/idle.sh` runs 9,000 (`EDGELB_IDLE_CONNECTIONS`), which needs
//! `RLIMIT_NOFILE` above 18,200 for edgelb.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::Duration;
use support::daemon::Daemon;
use support::process::{fd_count, raise_nofile, rss_kib, Edgelb};
use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const DEFAULT_CONNECTIONS: usize = 2000;

/// An echo server in its own process, so its descriptors count against its own limit.
const PY_ECHO: &str = r#"
import asyncio, resource, sys
soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
async def echo(r, w):
    try:
        while True:
            data = await r.read(65536)
            if not data:
                break
            w.write(data)
            await w.drain()
    except Exception:
        pass
    finally:
        w.close()
async def main():
    server = await asyncio.start_server(echo, "127.0.0.1", 0, backlog=4096)
    print(server.sockets[0].getsockname()[1], flush=True)
    await asyncio.sleep(3600)
asyncio.run(main())
"#;

fn python_echo() -> (Daemon, u16) {
    let mut python = Daemon::spawn(
        Command::new("python3")
            .arg("-c")
            .arg(PY_ECHO)
            .stdin(Stdio::null())
            .stdout(Stdio::piped()),
    );
    let mut line = String::new();
    BufReader::new(python.take_stdout())
        .read_line(&mut line)
        .unwrap();
    (python, line.trim().parse().unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_connections_are_held_and_their_memory_given_back() {
    let n: usize = std::env::var("EDGELB_IDLE_CONNECTIONS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(DEFAULT_CONNECTIONS);
    let limit = raise_nofile();
    assert!(
        limit >= n as u64 * 2 + 200,
        "RLIMIT_NOFILE {limit} is too low for {n} connections"
    );
    let (_python, backend_port) = python_echo();
    let backend: std::net::SocketAddr = format!("127.0.0.1:{backend_port}").parse().unwrap();
    let text = config_text(
        &[("b1", backend, 100)],
        "max_connections = 100000",
        "health_check_interval = 50",
    );
    let (mut lb, addr, _) = Edgelb::start_on_free_ports(&text, None, Some(limit));
    let pid = lb.pid();
    // Warm up: one connection through, so lazily built state is in the baseline.
    {
        let mut c = TcpStream::connect(addr).await.unwrap();
        c.write_all(b"w").await.unwrap();
        assert_eq!(read_n(&mut c, 1).await, b"w");
    }
    // Its two descriptors close right after; a sleep is enough for a baseline that
    // is only compared with generous bounds.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let base_fds = fd_count(pid);
    let base_rss = rss_kib(pid);

    let mut rounds = Vec::new();
    for round in 1..=ROUNDS {
        let r = hold_and_close(n, addr, pid, (base_fds, base_rss)).await;
        println!(
            "idle connections, round {round}: n={n} opened in {:?}; edgelb RSS {base_rss} KiB at start, {} KiB held ({:.1} KiB/conn over the start), {} KiB after close; fds {base_fds} -> {} -> {}",
            r.opened_in,
            r.held_rss,
            r.held_rss.saturating_sub(base_rss) as f64 / n as f64,
            r.after_rss,
            r.held_fds,
            fd_count(pid)
        );
        rounds.push(r);
    }
    let first = &rounds[0];
    let per_conn = first.held_rss.saturating_sub(base_rss) as f64 / n as f64;
    assert!(per_conn < 64.0, "{per_conn:.1} KiB per idle connection");
    let last = &rounds[rounds.len() - 1];
    assert!(
        (last.held_rss as f64) < first.held_rss as f64 * 1.1,
        "memory grows from round to round: {} KiB held then {} KiB",
        first.held_rss,
        last.held_rss
    );
    for (i, r) in rounds.iter().enumerate() {
        // "Near the baseline": at most a quarter of what the connections took.
        let near = base_rss + first.held_rss.saturating_sub(base_rss) / 4;
        assert!(
            r.after_rss <= near,
            "round {i}: RSS {} KiB after close, start {base_rss} KiB, held {} KiB",
            r.after_rss,
            r.held_rss
        );
    }
    assert!(lb.is_running());
}

/// Rounds of open-hold-close: memory held by a round is reused by the next.
const ROUNDS: usize = 2;

struct Round {
    opened_in: Duration,
    held_rss: u64,
    held_fds: usize,
    after_rss: u64,
}

/// Opens `n` clients (each proven proxied by one echoed byte, 200 at a time), holds
/// them while edgelb's memory is read, closes them and waits for edgelb to let go.
async fn hold_and_close(
    n: usize,
    addr: std::net::SocketAddr,
    pid: u32,
    (base_fds, base_rss): (usize, u64),
) -> Round {
    let started = std::time::Instant::now();
    let mut clients = Vec::with_capacity(n);
    while clients.len() < n {
        let batch = (n - clients.len()).min(200);
        clients.extend(open_batch(batch, addr).await);
    }
    let opened_in = started.elapsed();
    wait_within(
        "edgelb to hold every connection",
        Duration::from_secs(30),
        || fd_count(pid) >= base_fds + 2 * n,
    )
    .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let held_rss = rss_kib(pid);
    let held_fds = fd_count(pid);
    drop(clients);
    wait_within(
        "edgelb's descriptors back to the baseline",
        Duration::from_secs(60),
        || fd_count(pid) <= base_fds,
    )
    .await;
    // The trimmer looks every 2 s; give it a few looks to return the heap.
    let goal = base_rss + held_rss.saturating_sub(base_rss) / 4;
    for _ in 0..200 {
        if rss_kib(pid) <= goal {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Round {
        opened_in,
        held_rss,
        held_fds,
        after_rss: rss_kib(pid),
    }
}

/// Opens `count` clients concurrently; each sends a byte and waits for its echo.
async fn open_batch(count: usize, addr: std::net::SocketAddr) -> Vec<TcpStream> {
    let tasks: Vec<_> = (0..count)
        .map(|_| {
            tokio::spawn(async move {
                let mut c = TcpStream::connect(addr).await.unwrap();
                c.write_all(b"i").await.unwrap();
                let mut b = [0u8; 1];
                c.read_exact(&mut b).await.unwrap();
                c
            })
        })
        .collect();
    let mut out = Vec::with_capacity(count);
    for t in tasks {
        out.push(
            tokio::time::timeout(Duration::from_secs(30), t)
                .await
                .unwrap()
                .unwrap(),
        );
    }
    out
}
