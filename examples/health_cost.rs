//! What health checks cost: 2,000 TCP targets (20 listeners x 100 backends) probed
//! every second against loopback listeners, and the CPU the balancer's threads
//! spend on it (utime + stime from /proc, as a share of one core).
//!
//! Run: `cargo run --release --example health_cost [SECONDS]` (Linux; default 15 s
//! measured after a 3 s warm-up). The backends accept on their own thread, which is
//! not counted; on loopback the kernel still runs their half of every handshake
//! inside the balancer's system calls. `scripts/health_cost.sh` also runs it with
//! the backends in another network namespace (`serve`, `--backends`), and counts
//! the kernel thread that receives the balancer's packets (`--count-thread`).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use edgelb::config::Config;
use edgelb::server::Server;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

const LISTENERS: u16 = 20;
const BACKENDS: usize = 100;
const BACKEND_PORTS: usize = 10;
const WORKER_NAME: &str = "lb-worker";
/// The balancer's threads: its runtime workers and the one the checks run on.
const MEASURED: [&str; 2] = [WORKER_NAME, "edgelb-health"];

/// Loopback listeners that accept and drop, on a thread of their own.
fn start_backends() -> Vec<SocketAddr> {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::Builder::new()
        .name("backends".into())
        .spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async move {
                let mut addrs = Vec::new();
                for _ in 0..BACKEND_PORTS {
                    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
                    addrs.push(l.local_addr().unwrap());
                    tokio::spawn(async move {
                        while let Ok((s, _)) = l.accept().await {
                            drop(s);
                        }
                    });
                }
                tx.send(addrs).unwrap();
                std::future::pending::<()>().await;
            });
        })
        .unwrap();
    rx.recv().unwrap()
}

fn config(backends: &[SocketAddr]) -> Config {
    let mut text = String::from(
        "[admin]\naddress = \"\"\n[[load_balancers]]\nid = \"lb\"\naddress = \"127.0.0.1\"\n",
    );
    for i in 0..BACKENDS {
        let addr = backends[i % backends.len()];
        text.push_str(&format!(
            "[[load_balancers.backend_servers]]\nserver_id = \"i-{i}\"\nip = \"{}\"\nport = {}\n",
            addr.ip(),
            addr.port()
        ));
    }
    for port in 1..=LISTENERS {
        text.push_str(&format!(
            "[[listeners]]\nload_balancer_id = \"lb\"\nlistener_port = {port}\nhealth_check_interval = 1\nhealth_check_connect_timeout = 1\n"
        ));
    }
    Config::parse(&text, None).unwrap()
}

/// (utime, stime) of the balancer's threads, in clock ticks.
fn worker_ticks() -> (u64, u64) {
    let mut total = (0, 0);
    for task in std::fs::read_dir("/proc/self/task").unwrap().flatten() {
        let Ok(stat) = std::fs::read_to_string(task.path().join("stat")) else {
            continue;
        };
        let (Some(open), Some(close)) = (stat.find('('), stat.rfind(')')) else {
            continue;
        };
        if !MEASURED.contains(&&stat[open + 1..close]) {
            continue;
        }
        // Fields after the name: state is field 3; utime and stime are 14 and 15.
        let fields: Vec<&str> = stat[close + 2..].split(' ').collect();
        total.0 += fields[11].parse::<u64>().unwrap();
        total.1 += fields[12].parse::<u64>().unwrap();
    }
    total
}

/// (probes, failed probes) so far, over every target.
fn checks(server: &Server) -> (u64, u64) {
    server
        .listeners()
        .iter()
        .flat_map(|r| r.backend_states())
        .fold((0, 0), |(n, f), b| {
            let failed = b.checks.failures();
            (n + b.checks.successes() + failed, f + failed)
        })
}

/// (utime, stime) of another thread or process, in clock ticks.
fn ticks_of(pid: u32) -> (u64, u64) {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).expect("thread to count");
    let close = stat.rfind(')').unwrap();
    let fields: Vec<&str> = stat[close + 2..].split(' ').collect();
    (fields[11].parse().unwrap(), fields[12].parse().unwrap())
}

/// `serve FIRST_PORT`: the backends alone, on all addresses, ports FIRST_PORT and
/// up (for a run with the backends in another network namespace).
fn serve(first_port: u16) -> ! {
    let listeners: Vec<_> = (0..BACKEND_PORTS as u16)
        .map(|i| std::net::TcpListener::bind(("0.0.0.0", first_port + i)).unwrap())
        .collect();
    let threads: Vec<_> = listeners
        .into_iter()
        .map(|l| {
            std::thread::spawn(move || loop {
                drop(l.accept());
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    std::process::exit(1)
}

fn main() {
    let mut args = std::env::args().skip(1);
    let mut seconds = 15;
    let mut external: Option<Vec<SocketAddr>> = None;
    let mut also: Vec<u32> = Vec::new();
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "serve" => serve(
                args.next()
                    .expect("FIRST_PORT")
                    .parse()
                    .expect("FIRST_PORT"),
            ),
            "--backends" => {
                let list = args.next().expect("--backends ADDR,...");
                external = Some(list.split(',').map(|a| a.parse().expect("ADDR")).collect());
            }
            "--count-thread" => also.push(args.next().expect("PID").parse().expect("PID")),
            s => seconds = s.parse().expect("SECONDS"),
        }
    }
    let backends = external.unwrap_or_else(start_backends);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name(WORKER_NAME)
        .enable_all()
        .build()
        .unwrap();
    let binder: edgelb::listener::Binder =
        Arc::new(|addr: SocketAddr| edgelb::listener::bind(SocketAddr::new(addr.ip(), 0)));
    let server = rt
        .block_on(async {
            Server::start(
                &config(&backends),
                binder,
                edgelb::workers::Workers::current(),
            )
        })
        .unwrap();
    std::thread::sleep(Duration::from_secs(3));
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    let other = || {
        also.iter()
            .map(|&p| ticks_of(p))
            .fold(0, |a, t| a + t.0 + t.1)
    };
    let (t0, c0, (p0, f0), o0) = (Instant::now(), worker_ticks(), checks(&server), other());
    std::thread::sleep(Duration::from_secs(seconds));
    let (t1, c1, (p1, f1), o1) = (Instant::now(), worker_ticks(), checks(&server), other());
    let wall = (t1 - t0).as_secs_f64();
    let (user, system) = ((c1.0 - c0.0) as f64 / hz, (c1.1 - c0.1) as f64 / hz);
    let cpu = user + system;
    print!(
        "targets: {}, probes/s: {:.0}, failed: {} (before: {f0}), cpu: {:.2} s (user {user:.2}, system {system:.2}) over {:.1} s = {:.1}% of one core",
        usize::from(LISTENERS) * BACKENDS,
        (p1 - p0) as f64 / wall,
        f1 - f0,
        cpu,
        wall,
        100.0 * cpu / wall
    );
    if also.is_empty() {
        println!();
    } else {
        let more = (o1 - o0) as f64 / hz;
        println!(
            "; with threads {also:?}: {:.2} s more = {:.1}%",
            more,
            100.0 * (cpu + more) / wall
        );
    }
    drop(server);
    rt.shutdown_timeout(Duration::from_secs(1));
}
