//! Programs a test starts that could outlive it (nginx, HAProxy, Chromium, python3,
//! the edgelb binary): each leads its own process group, and its guard stops the
//! whole group when dropped, also when the test panics halfway.
//!
//! Stopping signals the group, not only the program: nginx's master killed alone
//! leaves its worker behind (issue 20), Chromium leaves its zygote and renderers.
//! The leader is reaped only after the last signal to its group, so the group id
//! cannot have been reused: only the test's own processes are ever signalled.

use std::io::Read;
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Child, ChildStderr, ChildStdout, Command, ExitStatus, Output, Stdio};
use std::time::{Duration, Instant};

/// Held while a test writes an executable and while one forks: a child forked
/// while the file is open for writing holds it open until its own exec, and an exec
/// of the file meanwhile fails with "Text file busy" (ETXTBSY).
pub static EXEC_WRITE: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// How long a group has after SIGTERM before the rest of it gets SIGKILL.
pub const GRACE: Duration = Duration::from_secs(5);

const POLL: Duration = Duration::from_millis(20);

/// A running program in its own process group; stopped with its group on drop,
/// then its directory (config, logs, pid file) removed.
pub struct Daemon {
    child: Child,
    /// Set once `child` is reaped: from then on its pid may name someone else's process.
    status: Option<ExitStatus>,
    dir: Option<PathBuf>,
}

impl Daemon {
    /// Starts `cmd` as the leader of a new process group.
    ///
    /// The program also gets SIGTERM if the thread that started it dies (the test
    /// binary killed or interrupted, when no drop runs): being in its own group, it
    /// would not get the terminal's Ctrl-C. So hold the guard in that thread.
    pub fn spawn(cmd: &mut Command) -> Daemon {
        let parent = std::process::id();
        cmd.process_group(0);
        // SAFETY: prctl and getppid are async-signal-safe, and the closure allocates
        // nothing: fit to run between fork and exec.
        unsafe {
            cmd.pre_exec(move || {
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                // The parent may have died before the prctl: nobody would signal then.
                if libc::getppid() as u32 != parent {
                    return Err(std::io::Error::from_raw_os_error(libc::ESRCH));
                }
                Ok(())
            });
        }
        let child = {
            let _forking = EXEC_WRITE.lock().unwrap_or_else(|e| e.into_inner());
            cmd.spawn()
                .unwrap_or_else(|e| panic!("cannot start {cmd:?}: {e}"))
        };
        Daemon {
            child,
            status: None,
            dir: None,
        }
    }

    /// Like [`Daemon::spawn`], and removes `dir` once the group is stopped.
    pub fn spawn_in(dir: PathBuf, cmd: &mut Command) -> Daemon {
        let mut daemon = Daemon::spawn(cmd);
        daemon.dir = Some(dir);
        daemon
    }

    /// The leader's pid, which is also the group id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn take_stdout(&mut self) -> ChildStdout {
        self.child
            .stdout
            .take()
            .expect("stdout piped and not taken")
    }

    pub fn take_stderr(&mut self) -> ChildStderr {
        self.child
            .stderr
            .take()
            .expect("stderr piped and not taken")
    }

    /// Sends `sig` to the leader alone; panics if it cannot be delivered. Only while
    /// it has not been reaped (by `try_wait` or `wait_exit` seeing it exit).
    pub fn signal(&self, sig: i32) {
        assert!(self.status.is_none(), "signal {sig} to a reaped process");
        let pid = self.pid() as i32;
        // SAFETY: kill only sends a signal to our own child, not yet reaped.
        let rc = unsafe { libc::kill(pid, sig) };
        assert_eq!(
            rc,
            0,
            "kill({pid}, {sig}): {}",
            std::io::Error::last_os_error()
        );
    }

    /// The leader's exit status once it has exited; the rest of its group is then
    /// stopped too.
    pub fn try_wait(&mut self) -> Option<ExitStatus> {
        if self.status.is_none() && self.leader_exited() {
            self.stop();
        }
        self.status
    }

    /// Waits up to `within` for the leader to exit; `None` if it is still running.
    pub fn wait_exit(&mut self, within: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + within;
        loop {
            if let Some(status) = self.try_wait() {
                return Some(status);
            }
            if Instant::now() >= deadline {
                return None;
            }
            std::thread::sleep(POLL);
        }
    }

    /// Stops the whole group: SIGTERM, up to [`GRACE`] for the leader to exit, then
    /// SIGKILL to whatever is left of the group; reaps the leader. The leader's exit
    /// status, which is its own if it had already exited.
    pub fn stop(&mut self) -> ExitStatus {
        if let Some(status) = self.status {
            return status;
        }
        if !self.leader_exited() {
            self.signal_group(libc::SIGTERM);
            let deadline = Instant::now() + GRACE;
            while !self.leader_exited() && Instant::now() < deadline {
                std::thread::sleep(POLL);
            }
        }
        // Helpers that outlived their leader (or ignore SIGTERM) go too.
        self.signal_group(libc::SIGKILL);
        let status = self.child.wait().expect("reap the leader");
        self.status = Some(status);
        status
    }

    /// Stops the group, then panics if anything of it is left: a process still in
    /// the group, or one naming the directory of the guard (an orphan that left it).
    pub fn stop_leaving_nothing(mut self) {
        self.stop();
        let marker = self.dir.as_ref().map(|d| d.display().to_string());
        // SIGKILL is delivered, not awaited: give the dying a moment.
        let deadline = Instant::now() + Duration::from_secs(2);
        loop {
            let left = leftovers(self.pid(), marker.as_deref());
            if left.is_empty() {
                return;
            }
            assert!(Instant::now() < deadline, "left running: {left:#?}");
            std::thread::sleep(POLL);
        }
    }

    /// The leader's exit status once it has exited, without reaping it and without
    /// stopping the rest of its group (a zombie leader keeps the group id ours).
    pub fn peek_exit(&self) -> Option<ExitStatus> {
        use std::os::unix::process::ExitStatusExt;
        if let Some(status) = self.status {
            return Some(status);
        }
        // SAFETY: a zeroed siginfo_t is valid; waitid only writes into it.
        let mut info: libc::siginfo_t = unsafe { std::mem::zeroed() };
        let flags = libc::WEXITED | libc::WNOHANG | libc::WNOWAIT;
        // SAFETY: waitid on our own child, not reaped (WNOWAIT leaves it so).
        let rc = unsafe { libc::waitid(libc::P_PID, self.pid(), &mut info, flags) };
        assert_eq!(rc, 0, "waitid: {}", std::io::Error::last_os_error());
        // SAFETY: si_pid and si_status are the fields waitid fills in.
        let (pid, status) = unsafe { (info.si_pid(), info.si_status()) };
        if pid == 0 {
            return None;
        }
        // As a wait(2) status: exit code in the second byte, or the signal.
        Some(match info.si_code {
            libc::CLD_EXITED => ExitStatus::from_raw(status << 8),
            _ => ExitStatus::from_raw(status & 0x7f),
        })
    }

    /// Whether the leader has exited, without reaping it: a zombie leader keeps the
    /// group id ours.
    fn leader_exited(&self) -> bool {
        // SAFETY: a zeroed siginfo_t is valid; waitid only writes into it.
        let mut info: libc::siginfo_t = unsafe { std::mem::zeroed() };
        let flags = libc::WEXITED | libc::WNOHANG | libc::WNOWAIT;
        // SAFETY: waitid on our own child, not reaped (WNOWAIT leaves it so).
        let rc = unsafe { libc::waitid(libc::P_PID, self.pid(), &mut info, flags) };
        assert_eq!(rc, 0, "waitid: {}", std::io::Error::last_os_error());
        // SAFETY: si_pid is the field waitid fills in; 0 when nothing has exited.
        unsafe { info.si_pid() != 0 }
    }

    fn signal_group(&self, sig: i32) {
        // SAFETY: the group's leader is our child, not reaped, so the group id is
        // ours; ESRCH (the group already empty) is fine.
        unsafe { libc::kill(-(self.pid() as i32), sig) };
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        self.stop();
        if let Some(dir) = &self.dir {
            let _ = std::fs::remove_dir_all(dir);
        }
    }
}

/// Runs `cmd` to its end with stdout and stderr captured, like `Command::output`,
/// in its own group: panics if it runs longer than `within`, and stops its group
/// (helpers left behind included) either way.
pub async fn output(cmd: &mut Command, within: Duration) -> Output {
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut daemon = Daemon::spawn(cmd);
    let stdout = read_all(daemon.take_stdout());
    let stderr = read_all(daemon.take_stderr());
    let deadline = Instant::now() + within;
    while !daemon.leader_exited() {
        assert!(
            Instant::now() < deadline,
            "{cmd:?} still running after {within:?}"
        );
        tokio::time::sleep(POLL).await;
    }
    let status = daemon.stop();
    Output {
        status,
        stdout: stdout.await.expect("read stdout"),
        stderr: stderr.await.expect("read stderr"),
    }
}

fn read_all(mut pipe: impl Read + Send + 'static) -> tokio::task::JoinHandle<Vec<u8>> {
    tokio::task::spawn_blocking(move || {
        let mut bytes = Vec::new();
        let _ = pipe.read_to_end(&mut bytes);
        bytes
    })
}

/// Processes left alive (zombies are dead and hold nothing): those still in process
/// group `group`, and those whose command line or open files name `marker` (a
/// test's temporary directory), orphans (parent pid 1) or not: once the guard has
/// stopped, nothing may use that directory. Each as "pid ppid state: command line".
pub fn leftovers(group: u32, marker: Option<&str>) -> Vec<String> {
    let mut left = Vec::new();
    for entry in std::fs::read_dir("/proc").expect("read /proc").flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|s| s.parse::<u32>().ok())
        else {
            continue;
        };
        // Gone meanwhile: nothing to report.
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
            continue;
        };
        // After the command name, in parentheses and possibly with spaces: state,
        // ppid, pgrp.
        let Some((_, rest)) = stat.rsplit_once(") ") else {
            continue;
        };
        let fields: Vec<&str> = rest.split_whitespace().collect();
        let (state, ppid, pgrp) = (fields[0], fields[1], fields[2]);
        if state == "Z" || state == "X" {
            continue;
        }
        let cmdline = std::fs::read(format!("/proc/{pid}/cmdline"))
            .map(|b| String::from_utf8_lossy(&b).replace('\0', " "))
            .unwrap_or_default();
        let in_group = pgrp == group.to_string();
        if in_group || marker.is_some_and(|m| names(pid, &cmdline, m)) {
            left.push(format!("{pid} {ppid} {state}: {cmdline}"));
        }
    }
    left
}

/// Whether `marker` is in process `pid`'s command line or the path of a file it
/// holds open (nginx's worker renames itself, but keeps its error log open).
fn names(pid: u32, cmdline: &str, marker: &str) -> bool {
    if cmdline.contains(marker) {
        return true;
    }
    let Ok(fds) = std::fs::read_dir(format!("/proc/{pid}/fd")) else {
        return false;
    };
    fds.flatten()
        .any(|fd| std::fs::read_link(fd.path()).is_ok_and(|p| p.to_string_lossy().contains(marker)))
}
