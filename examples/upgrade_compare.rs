//! Failed connections per binary replacement, three ways, on the release binary:
//! four clients make short connections (64 bytes there and back) through one
//! listener to an echo backend while the edgelb process is replaced ROUNDS times
//! (default 5) by
//! - `stop/start`: SIGTERM (drain_delay 0), wait for the exit, start the new one
//!   (what `systemctl restart` does);
//! - `start-then-stop`: start the new one (it joins the port with SO_REUSEPORT),
//!   wait until it runs, then SIGTERM the old one;
//! - `SIGUSR2`: edgelb's binary upgrade.
//!
//! A failure is a refused connect, a reset, or bytes that did not all come back.
//! Prints a Markdown table (README, "Upgrade").
//!
//! Run: `cargo build --release && cargo run --release --example upgrade_compare [ROUNDS]`
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::ErrorKind;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

#[derive(Default)]
struct Counts {
    ok: AtomicUsize,
    refused: AtomicUsize,
    reset: AtomicUsize,
    lost: AtomicUsize,
}

#[derive(Clone, Copy, PartialEq)]
enum Method {
    StopStart,
    StartThenStop,
    Usr2,
}

impl Method {
    fn name(self) -> &'static str {
        match self {
            Method::StopStart => "stop, then start",
            Method::StartThenStop => "start the new one (SO_REUSEPORT), then stop the old",
            Method::Usr2 => "SIGUSR2 (binary upgrade)",
        }
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn signal(pid: u32, sig: i32) {
    // SAFETY: kill sends a signal to a process this program started.
    unsafe { libc::kill(pid as i32, sig) };
}

fn alive(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .map(|s| !s.rsplit_once(") ").is_some_and(|(_, r)| r.starts_with('Z')))
        .unwrap_or(false)
}

/// Reaps whatever of ours has exited (children, and orphans: we are a subreaper).
fn reap() {
    let mut status = 0;
    // SAFETY: waitpid writes the status into our integer.
    while unsafe { libc::waitpid(-1, &mut status, libc::WNOHANG) } > 0 {}
}

/// Starts edgelb; returns its pid (reaped by [`reap`], as the processes an
/// upgrade starts are).
fn start(binary: &Path, config: &Path, log: &Path) -> u32 {
    Command::new(binary)
        .args(["run", "--config"])
        .arg(config)
        .env("RUST_LOG", "info")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(log).unwrap())
        .spawn()
        .unwrap()
        .id()
}

async fn wait_for(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

fn running(log: &Path) -> bool {
    std::fs::read_to_string(log).is_ok_and(|l| l.contains("edgelb running"))
}

async fn status_pid(admin: SocketAddr) -> Option<u32> {
    let mut s = TcpStream::connect(admin).await.ok()?;
    s.write_all(b"GET /status HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n")
        .await
        .ok()?;
    let mut out = String::new();
    s.read_to_string(&mut out).await.ok()?;
    let body = out.split_once("\r\n\r\n")?.1;
    let json: serde_json::Value = serde_json::from_str(body).ok()?;
    json["pid"].as_u64().map(|p| p as u32)
}

async fn client(addr: SocketAddr, stop: Arc<AtomicBool>, counts: Arc<Counts>) {
    let payload = [0x5au8; 64];
    while !stop.load(Ordering::Relaxed) {
        let result = async {
            let mut s = TcpStream::connect(addr).await?;
            s.write_all(&payload).await?;
            s.shutdown().await?;
            let mut back = Vec::new();
            s.read_to_end(&mut back).await?;
            Ok::<_, std::io::Error>(back)
        }
        .await;
        let counter = match result {
            Ok(back) if back == payload => &counts.ok,
            Ok(_) => &counts.lost,
            Err(e) if e.kind() == ErrorKind::ConnectionRefused => &counts.refused,
            Err(e) if e.kind() == ErrorKind::ConnectionReset => &counts.reset,
            Err(_) => &counts.lost,
        };
        counter.fetch_add(1, Ordering::Relaxed);
    }
}

/// Replaces the process `rounds` times by `method` under load; returns the counts.
async fn measure(binary: &Path, backend: SocketAddr, method: Method, rounds: usize) -> Counts {
    let dir = std::env::temp_dir().join(format!("edgelb-upgrade-compare-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let port = free_port();
    // start-then-stop cannot run two admin servers on one address.
    let admin = SocketAddr::from(([127, 0, 0, 1], free_port()));
    let admin_line = if method == Method::StartThenStop {
        String::new()
    } else {
        admin.to_string()
    };
    let config = dir.join("lb.toml");
    std::fs::write(
        &config,
        format!(
            "[admin]\naddress = \"{admin_line}\"\n[[load_balancers]]\nid = \"lb\"\naddress = \"127.0.0.1\"\n\
             [[load_balancers.backend_servers]]\nserver_id = \"echo\"\nip = \"127.0.0.1\"\nport = {}\n\
             [[listeners]]\nload_balancer_id = \"lb\"\nlistener_port = {port}\n",
            backend.port()
        ),
    )
    .unwrap();
    let log = |n: usize| dir.join(format!("edgelb-{n}.log"));
    let mut pid = start(binary, &config, &log(0));
    wait_for("the first process", || running(&log(0))).await;
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let counts = Arc::new(Counts::default());
    let stop = Arc::new(AtomicBool::new(false));
    let clients: Vec<_> = (0..4)
        .map(|_| tokio::spawn(client(addr, stop.clone(), counts.clone())))
        .collect();
    tokio::time::sleep(Duration::from_millis(500)).await;
    for n in 1..=rounds {
        match method {
            Method::StopStart => {
                signal(pid, libc::SIGTERM);
                wait_for("the old process to exit", || {
                    reap();
                    !alive(pid)
                })
                .await;
                pid = start(binary, &config, &log(n));
                wait_for("the new process", || running(&log(n))).await;
            }
            Method::StartThenStop => {
                let new = start(binary, &config, &log(n));
                wait_for("the new process", || running(&log(n))).await;
                signal(pid, libc::SIGTERM);
                wait_for("the old process to exit", || {
                    reap();
                    !alive(pid)
                })
                .await;
                pid = new;
            }
            Method::Usr2 => {
                signal(pid, libc::SIGUSR2);
                let old = pid;
                let deadline = Instant::now() + Duration::from_secs(30);
                loop {
                    if let Some(p) = status_pid(admin).await.filter(|&p| p != old) {
                        pid = p;
                        break;
                    }
                    assert!(Instant::now() < deadline, "no upgrade");
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
                wait_for("the old process to exit", || {
                    reap();
                    !alive(old)
                })
                .await;
            }
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    stop.store(true, Ordering::Relaxed);
    for c in clients {
        c.await.unwrap();
    }
    signal(pid, libc::SIGTERM);
    wait_for("the last process to exit", || {
        reap();
        !alive(pid)
    })
    .await;
    let _ = std::fs::remove_dir_all(&dir);
    Arc::try_unwrap(counts).unwrap_or_default()
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let rounds: usize = std::env::args()
        .nth(1)
        .map_or(5, |s| s.parse().expect("ROUNDS"));
    let binary = PathBuf::from(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/target/release/edgelb"
    ));
    assert!(binary.exists(), "build it first: cargo build --release");
    // Processes started by an upgrade outlive their parent: reap them here.
    // SAFETY: prctl with an integer argument.
    unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1) };
    let echo = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let backend = echo.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = echo.accept().await {
            tokio::spawn(async move {
                let (mut r, mut w) = s.split();
                let _ = tokio::io::copy(&mut r, &mut w).await;
                let _ = w.shutdown().await;
            });
        }
    });
    println!("| replacement ({rounds} times, 4 clients) | connections | refused | reset | lost | failed per replacement |");
    println!("|---|---:|---:|---:|---:|---:|");
    for method in [Method::StopStart, Method::StartThenStop, Method::Usr2] {
        let c = measure(&binary, backend, method, rounds).await;
        let (ok, refused, reset, lost) = (
            c.ok.into_inner(),
            c.refused.into_inner(),
            c.reset.into_inner(),
            c.lost.into_inner(),
        );
        let failed = refused + reset + lost;
        println!(
            "| {} | {} | {refused} | {reset} | {lost} | {:.1} |",
            method.name(),
            ok + failed,
            failed as f64 / rounds as f64
        );
    }
}
