//! Reload: SIGHUP (and `Server::apply`) change listeners without dropping a
//! connection.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream as StdStream};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;
use support::process::{Edgelb, Options};
use support::*;
use tokio::net::TcpStream;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_long_lived_connection_survives_a_change_of_scheduler_and_timeout() {
    let backend = echo_backend().await;
    let lb = start_lb(&config_text(
        &[("b1", backend.addr, 100)],
        "",
        "scheduler = \"rr\"\nestablished_timeout = 900",
    ));
    let addr = lb.addr("lb", 80);
    let mut open = TcpStream::connect(addr).await.unwrap();
    round_trip(&mut open, b"before").await;
    let changed = parse(&config_text(
        &[("b1", backend.addr, 50)],
        "",
        "scheduler = \"wlc\"\nestablished_timeout = 10",
    ));
    lb.server.apply(&changed).unwrap();
    assert_eq!(lb.addr("lb", 80), addr, "the listener kept its socket");
    round_trip(&mut open, b"after").await;
    let view = lb.server.listeners()[0].view.load_full();
    assert_eq!(view.listener.spec.scheduler, edgelb::config::Scheduler::Wlc);
    assert_eq!(view.listener.established_timeout, Duration::from_secs(10));
    let mut fresh = TcpStream::connect(addr).await.unwrap();
    round_trip(&mut fresh, b"new").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_removed_listeners_open_connection_keeps_flowing() {
    let backend = echo_backend().await;
    let text = config_text(&[("b1", backend.addr, 100)], "", "");
    let lb = start_lb(&text);
    let addr = lb.addr("lb", 80);
    let mut open = TcpStream::connect(addr).await.unwrap();
    round_trip(&mut open, b"x").await;
    let without: String = text.split("[[listeners]]").next().unwrap().to_string();
    lb.server.apply(&parse(&without)).unwrap();
    assert!(lb.server.local_addrs().is_empty());
    wait_until("the socket to close", || {
        std::net::TcpStream::connect(addr).is_err()
    })
    .await;
    round_trip(&mut open, b"still flowing").await;
    // And a stopped listener likewise.
    lb.server.apply(&parse(&text)).unwrap();
    let addr = lb.addr("lb", 80);
    let mut second = TcpStream::connect(addr).await.unwrap();
    round_trip(&mut second, b"y").await;
    lb.server
        .apply(&parse(&format!("{text}status = \"stopped\"\n")))
        .unwrap();
    wait_until("the socket to close", || {
        std::net::TcpStream::connect(addr).is_err()
    })
    .await;
    round_trip(&mut second, b"still flowing").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn persistence_entries_and_backend_state_survive_a_reload() {
    let b1 = named_backend("b1").await;
    let b2 = named_backend("b2").await;
    let list = [("b1", b1.addr, 100), ("b2", b2.addr, 100)];
    let lb = start_lb(&config_text(
        &list,
        "",
        "scheduler = \"rr\"\npersistence_timeout = 600",
    ));
    let addr = lb.addr("lb", 80);
    let mut c = TcpStream::connect(addr).await.unwrap();
    let first = read_n(&mut c, 2).await;
    drop(c);
    let states_before = lb.server.listeners()[0].backend_states();
    lb.server
        .apply(&parse(&config_text(
            &list,
            "",
            "scheduler = \"wrr\"\npersistence_timeout = 600",
        )))
        .unwrap();
    let states_after = lb.server.listeners()[0].backend_states();
    for (a, b) in states_before.iter().zip(&states_after) {
        assert!(
            Arc::ptr_eq(a, b),
            "backend state of {} was replaced",
            a.server_id
        );
    }
    for _ in 0..4 {
        let mut c = TcpStream::connect(addr).await.unwrap();
        assert_eq!(read_n(&mut c, 2).await, first, "the client moved backend");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_that_cannot_bind_changes_nothing() {
    let backend = echo_backend().await;
    let text = config_text(&[("b1", backend.addr, 100)], "", "");
    let lb = start_lb(&text);
    let addr = lb.addr("lb", 80);
    // A second listener whose address cannot be bound here.
    let bad = format!("{text}\n[[load_balancers]]\nid = \"lb2\"\naddress = \"192.0.2.1\"\n[[listeners]]\nload_balancer_id = \"lb2\"\nlistener_port = 81\n");
    assert!(lb.server.apply(&parse(&bad)).is_err());
    assert_eq!(lb.server.local_addrs().len(), 1);
    let mut c = TcpStream::connect(addr).await.unwrap();
    round_trip(&mut c, b"ok").await;
}

// ---- the binary, driven by SIGHUP ----

/// How long the binary may take to notice a SIGHUP and reload.
const RELOAD_WITHIN: Duration = Duration::from_secs(20);

/// The value of `edgelb_config_reloads_total{result=...}` (blocking: a condition
/// for [`wait_within`]).
fn reloads(admin: SocketAddr, result: &str) -> u64 {
    let (_, _, metrics) = http_get_blocking(admin, "/metrics");
    let needle = format!("edgelb_config_reloads_total{{result=\"{result}\"}} ");
    metrics
        .lines()
        .find_map(|l| l.strip_prefix(&needle))
        .map_or(0, |v| v.trim().parse::<f64>().unwrap() as u64)
}

fn file_with(
    backends: &[(&str, SocketAddr, u32)],
    port: u16,
    admin: SocketAddr,
    extra: &str,
) -> String {
    config_text(backends, "", extra)
        .replace("listener_port = 80", &format!("listener_port = {port}"))
        .replace("address = \"\"", &format!("address = \"{admin}\""))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn twenty_sighup_reloads_under_traffic_refuse_or_reset_nothing() {
    let b1 = echo_backend().await;
    let b2 = echo_backend().await;
    let port = free_port();
    let admin: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let variants = [
        file_with(
            &[("b1", b1.addr, 100), ("b2", b2.addr, 100)],
            port,
            admin,
            "scheduler = \"rr\"",
        ),
        file_with(
            &[("b1", b1.addr, 30), ("b2", b2.addr, 100)],
            port,
            admin,
            "scheduler = \"wlc\"\nestablished_timeout = 60",
        ),
        file_with(
            &[("b2", b2.addr, 100)],
            port,
            admin,
            "scheduler = \"sch\"\npersistence_timeout = 30",
        ),
    ];
    let mut proc = Edgelb::start(&variants[0], Options::default());
    let lb: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    proc.wait_listening(lb);
    proc.wait_listening(admin);

    // A client opening connections back to back for the whole test.
    let stop = Arc::new(AtomicBool::new(false));
    let (ok, failed) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let client = {
        let (stop, ok, failed) = (stop.clone(), ok.clone(), failed.clone());
        std::thread::spawn(move || {
            let mut errors = Vec::new();
            while !stop.load(Ordering::SeqCst) {
                let result = (|| -> std::io::Result<()> {
                    let mut s = StdStream::connect(lb)?;
                    s.set_read_timeout(Some(Duration::from_secs(10)))?;
                    s.write_all(b"ping")?;
                    let mut got = [0u8; 4];
                    s.read_exact(&mut got)?;
                    if &got != b"ping" {
                        return Err(std::io::Error::other("corrupted"));
                    }
                    Ok(())
                })();
                match result {
                    Ok(()) => ok.fetch_add(1, Ordering::SeqCst),
                    Err(e) => {
                        errors.push(e.to_string());
                        failed.fetch_add(1, Ordering::SeqCst)
                    }
                };
            }
            errors
        })
    };
    for i in 1..=20u64 {
        std::fs::write(&proc.config, &variants[i as usize % variants.len()]).unwrap();
        let before = ok.load(Ordering::SeqCst);
        proc.signal(libc::SIGHUP);
        wait_within("the reload", RELOAD_WITHIN, || {
            reloads(admin, "success") == i
        })
        .await;
        wait_within("traffic after the reload", RELOAD_WITHIN, || {
            ok.load(Ordering::SeqCst) > before + 5
        })
        .await;
    }
    stop.store(true, Ordering::SeqCst);
    let errors = client.join().unwrap();
    assert_eq!(
        failed.load(Ordering::SeqCst),
        0,
        "failed connections: {errors:?}"
    );
    assert!(ok.load(Ordering::SeqCst) > 100);
    assert_eq!(reloads(admin, "failure"), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_invalid_reload_changes_nothing_and_is_counted() {
    let backend = echo_backend().await;
    let port = free_port();
    let admin: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let good = file_with(&[("b1", backend.addr, 100)], port, admin, "");
    let mut proc = Edgelb::start(&good, Options::default());
    let lb: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    proc.wait_listening(lb);
    proc.wait_listening(admin);
    let mut open = StdStream::connect(lb).unwrap();
    open.set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    std::fs::write(
        &proc.config,
        good.replace("listener_port", "listener_prt")
            .replace("weight = 100", "weight = 101"),
    )
    .unwrap();
    proc.signal(libc::SIGHUP);
    wait_within("the failed reload", RELOAD_WITHIN, || {
        reloads(admin, "failure") == 1
    })
    .await;
    // Everything still serves: the open connection and new ones.
    open.write_all(b"abc").unwrap();
    let mut got = [0u8; 3];
    open.read_exact(&mut got).unwrap();
    assert_eq!(&got, b"abc");
    let mut fresh = StdStream::connect(lb).unwrap();
    fresh
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    fresh.write_all(b"d").unwrap();
    let mut one = [0u8; 1];
    fresh.read_exact(&mut one).unwrap();
    assert_eq!(reloads(admin, "success"), 0);
    // Every error was logged with its location and code (the whole log once it
    // has exited).
    proc.signal(libc::SIGTERM);
    drop((open, fresh));
    proc.wait_exit(Duration::from_secs(20));
    let log = proc.log_text();
    let name = proc.config.display().to_string();
    assert!(
        log.contains(&format!("{name}:")) && log.contains("InvalidParameter.listener_prt"),
        "{log}"
    );
    assert!(
        log.contains("InvalidWeight") && log.contains("MissingListenerPort"),
        "{log}"
    );
}
