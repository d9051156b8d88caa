//! Failed upgrades change nothing: an invalid listener file, a binary that exits or
//! crashes at start, one that never serves (killed after the readiness bound), a
//! second SIGUSR2 during an upgrade; and SIGHUP stays a reload.

use super::*;

/// The old process's children (a new process under way), from `/proc`.
fn children(pid: u32) -> String {
    let mut out = String::new();
    for task in std::fs::read_dir(format!("/proc/{pid}/task"))
        .unwrap()
        .flatten()
    {
        out.push_str(&std::fs::read_to_string(task.path().join("children")).unwrap_or_default());
    }
    out.trim().to_string()
}

/// Sends SIGUSR2 and waits for the failure count to reach `failures`.
async fn failed_upgrade(setup: &Setup, failures: u64, reason: &str) {
    signal(setup.lb.pid(), libc::SIGUSR2);
    let sample = "edgelb_upgrades_total{result=\"failure\"}";
    for _ in 0..1000 {
        if counter(setup.admin, sample).await == failures {
            let log = setup.lb.log_text();
            let line = log
                .lines()
                .rfind(|l| l.contains("binary upgrade failed"))
                .unwrap_or_else(|| panic!("no warning:\n{log}"));
            assert!(line.contains("WARN") && line.contains(reason), "{line}");
            assert_eq!(children(setup.lb.pid()), "", "the new process is gone");
            assert_eq!(status(setup.admin).await["pid"], setup.lb.pid());
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("upgrade {failures} did not fail:\n{}", setup.lb.log_text());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_upgrade_changes_nothing() {
    let setup = setup(vec![(
        "EDGELB_UPGRADE_READY_TIMEOUT_MS".into(),
        "1500".into(),
    )])
    .await;
    let tally = Arc::new(Tally::default());
    let (stop, tasks) = clients(&setup, &tally);
    let before = healths(&status(setup.admin).await);

    // An invalid listener file: the new process validates it first and exits 2.
    let text = std::fs::read_to_string(&setup.lb.config).unwrap();
    std::fs::write(
        &setup.lb.config,
        format!("{text}\n[[listeners]]\nlistener_port = 70000\n"),
    )
    .unwrap();
    failed_upgrade(&setup, 1, "exit status: 2").await;
    assert!(setup.lb.log_text().contains("InvalidListenerPort"));
    std::fs::write(&setup.lb.config, &text).unwrap();

    // A binary that exits at start, and one that crashes.
    let good = std::fs::read(&setup.lb.binary).unwrap();
    setup.lb.replace_binary(b"#!/bin/sh\nexit 1\n");
    failed_upgrade(&setup, 2, "exit status: 1").await;
    setup.lb.replace_binary(b"#!/bin/sh\nkill -KILL $$\n");
    failed_upgrade(&setup, 3, "signal: 9").await;

    // One that never serves: killed after the bound (1.5 s here). A second SIGUSR2
    // meanwhile is logged and ignored (the count goes up by one only).
    setup.lb.replace_binary(b"#!/bin/sh\nexec sleep 60\n");
    signal(setup.lb.pid(), libc::SIGUSR2);
    wait_until("the new process under way", || {
        !children(setup.lb.pid()).is_empty()
    })
    .await;
    failed_upgrade(&setup, 4, "not ready within 1.5s").await;
    assert!(setup
        .lb
        .log_text()
        .contains("SIGUSR2 ignored: a binary upgrade is under way"));

    // SIGHUP is a reload and starts no process.
    signal(setup.lb.pid(), libc::SIGHUP);
    let reloads = "edgelb_config_reloads_total{result=\"success\"}";
    for _ in 0..500 {
        if counter(setup.admin, reloads).await == 1 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(counter(setup.admin, reloads).await, 1);
    assert_eq!(children(setup.lb.pid()), "");

    // Nothing changed meanwhile; then the good build upgrades.
    assert_eq!(healths(&status(setup.admin).await), before);
    setup.lb.replace_binary(&good);
    let old = setup.lb.pid();
    signal(old, libc::SIGUSR2);
    let changes = last_changes(&status(setup.admin).await);
    let now = wait_switch(setup.admin, old, &setup.lb).await;
    assert_eq!(healths(&now), before);
    assert_eq!(last_changes(&now), changes);
    stop.store(true, Ordering::SeqCst);
    for task in tasks {
        task.await.unwrap();
    }
    tally.assert_clean(50);
    assert_eq!(setup.sick.accepted(), 0);
}
