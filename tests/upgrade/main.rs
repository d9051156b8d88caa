//! Binary upgrade (SIGUSR2, SPEC section 6) on the real binary, run from a copy in
//! a temporary directory that the tests replace: no connection refused or reset
//! and no byte lost across upgrades, long streams finishing on the old process,
//! health and persistence carried over, systemd told the new main pid, and failed
//! upgrades (invalid file, a binary that exits, crashes or never serves) changing
//! nothing.
#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "../support/mod.rs"]
mod support;

mod failures;
mod observe;
mod traffic;

use observe::*;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;
use support::process::{self, Edgelb};
use support::*;
use tokio::io::AsyncReadExt;
use traffic::{short_client, LongStream, Tally};

/// The balancer under test: two listeners in front of backends `A`, `B` (healthy)
/// and `S` (unhealthy: its health port is closed, its data port counts
/// connections, which must stay 0).
struct Setup {
    lb: Edgelb,
    /// `persistence_timeout = 600`.
    web: SocketAddr,
    /// No persistence: spread over the eligible backends.
    plain: SocketAddr,
    admin: SocketAddr,
    sick: Backend,
    _a: Backend,
    _b: Backend,
}

async fn setup(env: Vec<(String, String)>) -> Setup {
    process::become_subreaper();
    let a = named_backend("A").await;
    let b = named_backend("B").await;
    // On 127.0.0.2, where nothing listens on the health port.
    let sick = {
        let socket = tokio::net::TcpSocket::new_v4().unwrap();
        socket.bind("127.0.0.2:0".parse().unwrap()).unwrap();
        serve_on(socket.listen(1024).unwrap(), |s| named_echo("S", s))
    };
    let health = serve(|_| async {}).await;
    let (web, plain, admin) = (free_port(), free_port(), free_port());
    let mut text = format!(
        "[global]\ndrain_timeout = 60\n[admin]\naddress = \"127.0.0.1:{admin}\"\n\
         [[load_balancers]]\nid = \"lb\"\naddress = \"127.0.0.1\"\n"
    );
    for (id, backend) in [("A", &a), ("B", &b), ("S", &sick)] {
        text.push_str(&format!(
            "[[load_balancers.backend_servers]]\nserver_id = \"{id}\"\nip = \"{}\"\nport = {}\n",
            backend.addr.ip(),
            backend.addr.port()
        ));
    }
    for (port, persistence) in [(web, 600), (plain, 0)] {
        text.push_str(&format!(
            "[[listeners]]\nload_balancer_id = \"lb\"\nlistener_port = {port}\n\
             persistence_timeout = {persistence}\nhealth_check_interval = 1\n\
             health_check_connect_port = {}\n",
            health.addr.port()
        ));
    }
    let mut lb = Edgelb::start(
        &text,
        process::Options {
            copy_binary: true,
            env,
            ..process::Options::default()
        },
    );
    let (web, plain) = (
        SocketAddr::from(([127, 0, 0, 1], web)),
        SocketAddr::from(([127, 0, 0, 1], plain)),
    );
    lb.wait_listening(web);
    lb.wait_listening(plain);
    let admin = SocketAddr::from(([127, 0, 0, 1], admin));
    let setup = Setup {
        lb,
        web,
        plain,
        admin,
        sick,
        _a: a,
        _b: b,
    };
    // Every backend decided before any traffic: S never takes a connection.
    for _ in 0..500 {
        if healths(&status(admin).await) == expected_healths(web, plain) {
            return setup;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("backends never decided: {}", status(admin).await);
}

/// The backend a client from `ip` reaches through `addr`.
async fn backend_of(ip: IpAddr, addr: SocketAddr) -> u8 {
    let mut stream = connect_from(ip, addr).await;
    let mut name = [0u8; 1];
    stream.read_exact(&mut name).await.unwrap();
    name[0]
}

/// Short clients on both listeners until the returned flag is set.
fn clients(
    setup: &Setup,
    tally: &Arc<Tally>,
) -> (Arc<AtomicBool>, Vec<tokio::task::JoinHandle<()>>) {
    let stop = Arc::new(AtomicBool::new(false));
    let tasks = (0..4)
        .map(|i| {
            let addr = if i % 2 == 0 { setup.web } else { setup.plain };
            short_client(addr, i, stop.clone(), tally.clone())
        })
        .collect();
    (stop, tasks)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_upgrades_in_a_row_lose_nothing_and_carry_the_state_over() {
    let dir = temp_dir("notify");
    let notify_path = dir.join("notify.sock");
    let notify = tokio::net::UnixDatagram::bind(&notify_path).unwrap();
    let setup = setup(vec![(
        "NOTIFY_SOCKET".into(),
        notify_path.display().to_string(),
    )])
    .await;
    let (admin, web) = (setup.admin, setup.web);
    assert!(next_notification(&notify).await.starts_with("READY=1"));

    // Clients pinned by persistence, one per source address.
    let pinned: Vec<(IpAddr, u8)> = {
        let mut out = Vec::new();
        for n in 3..=5u8 {
            let ip = IpAddr::from([127, 0, 0, n]);
            out.push((ip, backend_of(ip, web).await));
        }
        out
    };
    let tally = Arc::new(Tally::default());
    let (stop, tasks) = clients(&setup, &tally);
    // Routers watching /healthz (back to back, so some ask while a new process
    // starts) never see the node down.
    let watchers: Vec<_> = (0..3)
        .map(|_| {
            let stop = stop.clone();
            tokio::spawn(async move {
                let (mut ok, mut other) = (0, Vec::new());
                while !stop.load(Ordering::SeqCst) {
                    match http_get(admin, "/healthz").await {
                        (200, _, _) => ok += 1,
                        reply => other.push(reply),
                    }
                }
                (ok, other)
            })
        })
        .collect();
    let ports = [web.port(), setup.plain.port(), admin.port()];
    let sockets = listening_inodes(&ports);
    // One per worker (two) on each listener, and the admin server's.
    assert_eq!(
        sockets.iter().map(|s| s.len()).collect::<Vec<_>>(),
        [2, 2, 1]
    );
    let changes = last_changes(&status(admin).await);
    let mut old = setup.lb.pid();
    for round in 0..10u64 {
        // Long streams accepted by the process about to be replaced.
        let mut streams = Vec::new();
        for s in 0..2 {
            let stream = LongStream::open(web, round * 10 + s).await;
            assert_ne!(stream.backend, b'S');
            stream.rounds(2).await;
            streams.push(stream);
        }
        // 127.0.0.1 (the clients and streams) and the three pinned clients, as
        // the old process's gauge (refreshed every second) shows them.
        let entries = 4;
        for _ in 0..300 {
            if persistence_entries(&status(admin).await, web.port()) == entries {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert_eq!(
            persistence_entries(&status(admin).await, web.port()),
            entries
        );
        // A kept-alive admin connection of the old process.
        let mut kept = tokio::net::TcpStream::connect(admin).await.unwrap();
        tokio::io::AsyncWriteExt::write_all(&mut kept, b"GET /healthz HTTP/1.1\r\nhost: x\r\n\r\n")
            .await
            .unwrap();
        let mut answer = Vec::new();
        while !answer.ends_with(b"ok\n") {
            let mut buf = [0u8; 512];
            let n = kept.read(&mut buf).await.unwrap();
            assert!(n > 0, "{}", String::from_utf8_lossy(&answer));
            answer.extend_from_slice(&buf[..n]);
        }
        signal(old, libc::SIGUSR2);
        let now = wait_switch(admin, old, &setup.lb).await;
        let new = u32::try_from(now["pid"].as_u64().unwrap()).unwrap();
        // The first answer of the new process: the same health everywhere (no
        // unknown, no probe needed: the time of the last change is the one the
        // first process saw) and the same persistence entries.
        assert_eq!(
            healths(&now),
            expected_healths(web, setup.plain),
            "round {round}"
        );
        assert_eq!(last_changes(&now), changes, "round {round}");
        assert_eq!(
            persistence_entries(&now, web.port()),
            entries,
            "round {round}"
        );
        assert_eq!(
            next_notification(&notify).await,
            format!("MAINPID={new}\nREADY=1\nSTATUS=serving (took over by binary upgrade)")
        );
        // Then the old process, which has just heard the new one is ready.
        assert_eq!(
            next_notification(&notify).await,
            format!("STATUS=handed over to pid {new}; draining")
        );
        // The old process heard so: the kept-alive connection's next answer is its last: the old process closes it after, so its
        // client comes back to the new one.
        tokio::io::AsyncWriteExt::write_all(&mut kept, b"GET /healthz HTTP/1.1\r\nhost: x\r\n\r\n")
            .await
            .unwrap();
        answer.clear();
        tokio::time::timeout(Duration::from_secs(5), kept.read_to_end(&mut answer))
            .await
            .expect("closed after the answer")
            .unwrap();
        let answer = String::from_utf8_lossy(&answer).to_lowercase();
        assert!(
            answer.starts_with("http/1.1 200") && answer.contains("connection: close"),
            "round {round}: {answer}"
        );
        // The streams go on, on the old process, which waits for them to end.
        for stream in &streams {
            stream.rounds(3).await;
        }
        assert!(
            process::alive(old),
            "round {round}: the old process left its streams"
        );
        for stream in streams {
            let (sent, received) = stream.finish().await;
            assert_eq!((sent, received), (5 * 16 * 1024, 5 * 16 * 1024));
        }
        let exit = if round == 0 {
            let mut status = None;
            for _ in 0..2000 {
                status = setup.lb.exit_status_leaving_group();
                if status.is_some() {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            status
        } else {
            tokio::task::spawn_blocking(move || process::reap(old, Duration::from_secs(20)))
                .await
                .unwrap()
        };
        let exit = exit.unwrap_or_else(|| panic!("round {round}: the old process did not exit"));
        assert!(
            exit.success(),
            "round {round}: the old process exited with {exit}"
        );
        for &(ip, backend) in &pinned {
            assert_eq!(
                backend_of(ip, web).await,
                backend,
                "{ip} moved in round {round}"
            );
        }
        old = new;
    }
    assert_eq!(
        listening_inodes(&ports),
        sockets,
        "not the same listening sockets after the upgrades"
    );
    stop.store(true, Ordering::SeqCst);
    for task in tasks {
        task.await.unwrap();
    }
    tally.assert_clean(100);
    for watcher in watchers {
        let (ok, other) = watcher.await.unwrap();
        assert!(
            other.is_empty() && ok > 50,
            "/healthz: {ok} times 200, and {other:?}"
        );
    }
    assert_eq!(
        setup.sick.accepted(),
        0,
        "the unhealthy backend got traffic"
    );
    // The serving process counted its own upgrade; counters start again in each.
    assert_eq!(
        counter(admin, "edgelb_upgrades_total{result=\"success\"}").await,
        1
    );
    let _ = std::fs::remove_dir_all(dir);
}

/// A new process with fewer workers than the old one had sockets per listener
/// serves them all: each socket has its own accept queue, and a queue nobody
/// accepts from would hold its connections forever.
#[tokio::test]
async fn inherited_sockets_beyond_the_workers_are_all_served() {
    let backend = echo_backend().await;
    let port = free_port();
    let text = config_text(&[("b", backend.addr, 100)], "", "")
        .replace("listener_port = 80", &format!("listener_port = {port}"));
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    // Three SO_REUSEPORT sockets, as an old process with three workers had.
    let mut handover = edgelb::server::Handover::default();
    for _ in 0..3 {
        handover
            .sockets
            .add(addr, edgelb::listener::bind(addr).unwrap());
    }
    let server = edgelb::server::Server::start_with(
        &parse(&text),
        ephemeral_binder(),
        edgelb::workers::Workers::current(),
        handover,
    )
    .unwrap();
    assert_eq!(server.local_addrs().values().next(), Some(&addr));
    // The kernel spreads connections over the three by their ports: with 60,
    // every queue gets some, and each must be answered.
    for n in 0..60u64 {
        let payload = random_bytes(64, n);
        let echoed = tokio::time::timeout(REPLY_WITHIN, echo_through(addr, &payload))
            .await
            .unwrap_or_else(|_| panic!("connection {n} sat in a queue nobody serves"));
        assert_eq!(echoed, payload);
    }
}
