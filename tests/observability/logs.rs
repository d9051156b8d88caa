//! The binary's logs with `--log-format json`: one JSON object per line.

use crate::config_for;
use crate::support::daemon::Daemon;
use crate::support::*;
use std::io::{BufRead, BufReader, Read, Write};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

#[test]
fn json_logs_are_one_object_per_line_at_info_without_per_connection_events() {
    let backend = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let backend_addr = backend.local_addr().unwrap();
    std::thread::spawn(move || {
        for mut stream in backend.incoming().flatten() {
            let _ = stream.write_all(b"hi");
        }
    });
    let port = free_port();
    let text = config_for("lb-logs", &[("b1", backend_addr, 100)], "")
        .replace("listener_port = 80", &format!("listener_port = {port}"));
    let config = std::env::temp_dir().join(format!("edgelb-logs-{}.toml", std::process::id()));
    std::fs::write(&config, text).unwrap();
    let mut edgelb = Daemon::spawn(
        Command::new(env!("CARGO_BIN_EXE_edgelb"))
            .args([
                "--log-format",
                "json",
                "run",
                "--config",
                config.to_str().unwrap(),
            ])
            .env_remove("RUST_LOG")
            .stdout(Stdio::null())
            .stderr(Stdio::piped()),
    );
    let (tx, rx) = mpsc::channel();
    let stderr = edgelb.take_stderr();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let mut lines = Vec::new();
    let wait = |lines: &mut Vec<String>, what: &str| loop {
        let line = rx
            .recv_timeout(Duration::from_secs(20))
            .unwrap_or_else(|_| panic!("no {what:?} line; got {lines:#?}"));
        let done = line.contains(what);
        lines.push(line);
        if done {
            return;
        }
    };
    wait(&mut lines, "edgelb running");
    // One proxied connection: its events are debug, so absent at the default level.
    let mut client = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    let mut hi = [0u8; 2];
    client.read_exact(&mut hi).unwrap();
    drop(client);
    edgelb.signal(libc::SIGTERM);
    wait(&mut lines, "\"stopped\"");
    let status = edgelb.wait_exit(Duration::from_secs(20));
    assert!(status.expect("edgelb exits after \"stopped\"").success());
    lines.extend(rx.try_iter());
    let _ = std::fs::remove_file(&config);

    let events: Vec<serde_json::Value> = lines
        .iter()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect();
    for e in &events {
        let level = e["level"]
            .as_str()
            .unwrap_or_else(|| panic!("no level: {e}"));
        assert!(
            ["INFO", "WARN", "ERROR"].contains(&level),
            "below info by default: {e}"
        );
        assert!(e["fields"]["message"].is_string(), "no fields.message: {e}");
        assert!(e["timestamp"].is_string(), "no timestamp: {e}");
    }
    let message = |e: &serde_json::Value| e["fields"]["message"].as_str().unwrap_or("").to_string();
    let listening = events
        .iter()
        .find(|e| message(e) == "listening")
        .unwrap_or_else(|| panic!("no listening event: {lines:#?}"));
    assert_eq!(listening["level"], "INFO");
    assert_eq!(listening["fields"]["load_balancer_id"], "lb-logs");
    assert_eq!(listening["fields"]["listener"], port);
    assert_eq!(listening["fields"]["address"], format!("127.0.0.1:{port}"));
    for per_connection in ["proxying", "closed"] {
        assert!(
            !events.iter().any(|e| message(e) == per_connection),
            "{per_connection:?} logged at info: {lines:#?}"
        );
    }
    for lifecycle in ["stopped listening", "stopped"] {
        assert!(
            events.iter().any(|e| message(e) == lifecycle),
            "no {lifecycle:?}: {lines:#?}"
        );
    }
}
