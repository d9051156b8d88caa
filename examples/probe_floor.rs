//! The floor under `health_cost`: the kernel's part of a TCP probe alone. One thread
//! probes a loopback listener 2,000 times a second with nothing but the system calls
//! edgelb's probe makes (`connect`, a second `connect` for the outcome, and
//! `connect(AF_UNSPEC)` to reset, on one socket kept throughout), no runtime, no
//! timers; prints that thread's CPU time (RUSAGE_THREAD) as a share of one core.
//! It runs twice: with the probe's own half-open socket (SYN, SYN-ACK, reset), then
//! with a plain one whose handshake completes before the reset.
//!
//! Run: `cargo run --release --example probe_floor [SECONDS]` (Linux; default 10).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use socket2::{Domain, SockAddr, Socket, Type};
use std::time::{Duration, Instant};

const PER_SECOND: u32 = 2_000;
const BATCHES_PER_SECOND: u32 = 100;

fn thread_cpu() -> Duration {
    // SAFETY: rusage is plain integers, for which all zeroes is a valid value.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: getrusage only writes the struct we pass.
    assert_eq!(
        unsafe { libc::getrusage(libc::RUSAGE_THREAD, &mut usage) },
        0
    );
    let tv = |t: libc::timeval| Duration::new(t.tv_sec as u64, t.tv_usec as u32 * 1_000);
    tv(usage.ru_utime) + tv(usage.ru_stime)
}

fn main() {
    let seconds: u64 = std::env::args()
        .nth(1)
        .map_or(10, |s| s.parse().expect("SECONDS"));
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let listener_addr = listener.local_addr().unwrap();
    let addr = SockAddr::from(listener_addr);
    std::thread::spawn(move || loop {
        drop(listener.accept());
    });
    let half_open = edgelb::health::probe::tcp_socket(listener_addr).unwrap();
    let full = Socket::new(Domain::IPV4, Type::STREAM.nonblocking(), None).unwrap();
    full.set_linger(Some(Duration::ZERO)).unwrap();
    for (name, socket) in [("half-open", half_open), ("full handshake", full)] {
        print!("{name}: ");
        probe_for(Duration::from_secs(seconds), &socket, &addr);
    }
}

/// Probes `addr` 2,000 times a second for `length` on `socket`; prints the CPU share.
fn probe_for(length: Duration, socket: &Socket, addr: &SockAddr) {
    let (start, cpu0) = (Instant::now(), thread_cpu());
    let mut probes = 0u64;
    let per_batch = PER_SECOND / BATCHES_PER_SECOND;
    let mut next = start;
    while start.elapsed() < length {
        for _ in 0..per_batch {
            if socket.connect(addr).is_err() {
                // In progress: ask again until the handshake is done (on loopback it
                // usually is by the second ask).
                while let Err(e) = socket.connect(addr) {
                    match e.raw_os_error() {
                        Some(libc::EISCONN) => break,
                        Some(libc::EALREADY) => std::hint::spin_loop(),
                        _ => panic!("probe failed: {e}"),
                    }
                }
            }
            edgelb::health::probe::disconnect(socket).unwrap();
            probes += 1;
        }
        next += Duration::from_secs(1) / BATCHES_PER_SECOND;
        std::thread::sleep(next.saturating_duration_since(Instant::now()));
    }
    let (wall, cpu) = (
        start.elapsed().as_secs_f64(),
        (thread_cpu() - cpu0).as_secs_f64(),
    );
    println!(
        "probes/s: {:.0}, cpu: {cpu:.2} s over {wall:.1} s = {:.1}% of one core",
        probes as f64 / wall,
        100.0 * cpu / wall
    );
}
