//! The guard of the programs tests start (`support::daemon`, issue 20): nothing of a
//! daemon's process tree outlives it, also when the test panics halfway or the
//! tree ignores SIGTERM. tests/eip.rs checks the same of nginx and HAProxy.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::process::Command;
use std::time::{Duration, Instant};
use support::daemon::{leftovers, Daemon, GRACE};
use support::temp_dir;

/// Starts `script` under `sh` through the guard, `$0` naming `dir`, and waits until
/// its group has `members` processes; their descriptions.
fn tree(dir: &std::path::Path, script: &str, members: usize) -> (Daemon, Vec<String>) {
    let daemon = Daemon::spawn_in(
        dir.to_path_buf(),
        Command::new("sh").arg("-c").arg(script).arg(dir),
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let group = leftovers(daemon.pid(), None);
        if group.len() == members {
            return (daemon, group);
        }
        assert!(Instant::now() < deadline, "the tree never grew: {group:#?}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Waits up to 2 s (SIGKILL is delivered, not awaited) for nothing of group `pid`,
/// and nothing naming `dir`, to be left.
fn assert_nothing_left(pid: u32, dir: &std::path::Path) {
    let marker = dir.display().to_string();
    let deadline = Instant::now() + Duration::from_secs(2);
    loop {
        let left = leftovers(pid, Some(&marker));
        if left.is_empty() {
            return;
        }
        assert!(Instant::now() < deadline, "left running: {left:#?}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn a_test_panicking_halfway_leaves_nothing_of_its_daemon() {
    let dir = temp_dir("daemon-panic");
    let (tx, rx) = std::sync::mpsc::channel();
    let test = {
        let dir = dir.clone();
        std::thread::spawn(move || {
            // A child that dies on SIGTERM, one that ignores it (as a busy worker
            // might), and the shell waiting for both.
            let script = "sleep 300 & (trap '' TERM; exec sleep 301) & wait";
            let (daemon, group) = tree(&dir, script, 3);
            tx.send((daemon.pid(), group)).unwrap();
            panic!("halfway, holding the guard");
        })
    };
    assert!(test.join().is_err(), "the test thread panicked");
    let (pid, group) = rx.recv().unwrap();
    assert_eq!(group.len(), 3, "{group:#?}");
    assert_nothing_left(pid, &dir);
    assert!(!dir.exists(), "the guard removes its directory");
}

#[test]
fn a_tree_ignoring_sigterm_is_killed_after_the_grace() {
    let dir = temp_dir("daemon-stubborn");
    let (mut daemon, _) = tree(&dir, "trap '' TERM; sleep 300 & sleep 301 & wait", 3);
    let pid = daemon.pid();
    let started = Instant::now();
    let status = daemon.stop();
    let took = started.elapsed();
    assert_eq!(
        std::os::unix::process::ExitStatusExt::signal(&status),
        Some(libc::SIGKILL)
    );
    assert!(took >= GRACE, "SIGKILL only after the grace: {took:?}");
    assert!(took < GRACE + Duration::from_secs(2), "{took:?}");
    drop(daemon);
    assert_nothing_left(pid, &dir);
}

#[test]
fn a_leader_killed_alone_has_its_orphans_stopped() {
    let dir = temp_dir("daemon-orphans");
    let (mut daemon, _) = tree(&dir, "sleep 300 & sleep 301 & wait", 3);
    let pid = daemon.pid();
    // What the old drop did to nginx's master: its children, still in the group,
    // are orphans now (issue 20), and the check sees them.
    daemon.signal(libc::SIGKILL);
    let deadline = Instant::now() + Duration::from_secs(10);
    while leftovers(pid, None).len() != 2 {
        assert!(Instant::now() < deadline, "{:#?}", leftovers(pid, None));
        std::thread::sleep(Duration::from_millis(20));
    }
    // Reparented to PID 1 (or a subreaper): their parent is gone.
    let orphans = leftovers(pid, None);
    let leader = pid.to_string();
    assert!(
        orphans.iter().all(|p| p.split(' ').nth(1) != Some(&leader)),
        "{orphans:#?}"
    );
    let status = daemon.wait_exit(Duration::from_secs(10)).expect("exited");
    assert_eq!(
        std::os::unix::process::ExitStatusExt::signal(&status),
        Some(libc::SIGKILL)
    );
    assert_nothing_left(pid, &dir);
}
