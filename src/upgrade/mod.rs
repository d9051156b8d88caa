//! Binary upgrade (SIGUSR2, SPEC section 6): the running process starts the binary
//! at the path it was started from, with the same arguments, and hands it every
//! listening socket and the listeners' state; once the new process serves, the old
//! one stops accepting, drains its own connections and exits 0.
//!
//! The mechanism, as Pingora's and HAProxy's `-x`:
//! 1. The old process makes a unix stream socket pair and starts the new binary
//!    with one end inherited (close-on-exec cleared) and named by
//!    `EDGELB_UPGRADE_FD`. Every other descriptor stays close-on-exec.
//! 2. The new process validates its listener file first (exit 2, as `run`), then
//!    says `hello` on the channel.
//! 3. The old one sends a copy of each listening socket (each worker's
//!    `SO_REUSEPORT` socket of every listener, and the admin server's) as
//!    `SCM_RIGHTS` descriptors, then the address each one serves and the state
//!    of every listener: each backend's health and streak, each persistence entry
//!    with its remaining time ([`crate::state::SavedListener`]), as JSON.
//! 4. The new process accepts on those very sockets (never a close and a new bind:
//!    the accept queues are the same kernel objects, shared by both processes, so
//!    no SYN is refused or reset), with the state restored before it accepts, and
//!    says `ready` once it serves (`/healthz` would answer 200). It also tells
//!    systemd `MAINPID=` itself.
//! 5. The old process then stops accepting (closing its copies only: the sockets
//!    stay open in the new process) and drains as SIGTERM does, without
//!    `drain_delay`; connections it accepted finish on it, then it exits 0.
//!
//! Readiness is reported on the channel rather than polled on `/healthz`: the
//! admin socket is shared too, so either process could answer there.
//!
//! Any failure before `ready` (the binary missing, exiting, crashing, the file
//! invalid, no `ready` within [`READY_TIMEOUT`] or `EDGELB_UPGRADE_READY_TIMEOUT_MS`)
//! changes nothing: the old process never stopped accepting; it kills the new one
//! if still running, logs the reason at warn and counts a failure.
//!
//! - [`channel`]: the frames and descriptors on the socket pair.
//! - [`inherit`]: the new process's side.

pub mod channel;
pub mod inherit;

pub use inherit::{take_over, Inheritance};

use crate::metrics;
use crate::process::Process;
use channel::{Message, OldEnd};
use std::ffi::OsString;
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd};
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::time::Duration;

/// Names the new process's end of the channel.
pub const FD_ENV: &str = "EDGELB_UPGRADE_FD";
/// Overrides [`READY_TIMEOUT`], in milliseconds (read at start).
pub const READY_TIMEOUT_ENV: &str = "EDGELB_UPGRADE_READY_TIMEOUT_MS";
/// How long a new process has, from its start, to serve.
pub const READY_TIMEOUT: Duration = Duration::from_secs(30);

/// Why an upgrade failed (the old process goes on serving).
#[derive(Debug, thiserror::Error)]
pub enum UpgradeError {
    #[error("cannot start {program}: {source}")]
    Spawn { program: String, source: io::Error },
    #[error("the new process exited before it served ({0})")]
    Exited(std::process::ExitStatus),
    #[error("the new process was not ready within {0:?}; killed")]
    NotReady(Duration),
    #[error("hand-over channel: {0}")]
    Channel(#[from] io::Error),
    #[error("hand-over channel: {0}")]
    Protocol(&'static str),
}

/// How this process was started, taken at start: the binary's path (a new build
/// put there is what an upgrade runs) and the arguments after it.
#[derive(Debug, Clone)]
pub struct Upgrader {
    program: PathBuf,
    args: Vec<OsString>,
    ready_timeout: Duration,
}

impl Upgrader {
    /// From `argv` and the environment, at start. The path is `argv[0]` made
    /// absolute (not resolved through symlinks, so a symlink switched to a new
    /// build is followed), or, when the binary was found on `PATH`, the
    /// executable's path as the kernel knew it at start (later, once the file is
    /// replaced, `/proc/self/exe` names a deleted file).
    pub fn from_startup() -> io::Result<Upgrader> {
        let mut argv = std::env::args_os();
        let argv0 = argv.next().map(PathBuf::from).unwrap_or_default();
        let program = if argv0.components().count() > 1 {
            // `components` drops the `.` of `./edgelb`.
            std::env::current_dir()?.join(argv0).components().collect()
        } else {
            std::env::current_exe()?
        };
        let ready_timeout = std::env::var(READY_TIMEOUT_ENV)
            .ok()
            .and_then(|v| v.trim().parse().ok())
            .map_or(READY_TIMEOUT, Duration::from_millis);
        Ok(Upgrader {
            program,
            args: argv.collect(),
            ready_timeout,
        })
    }

    /// Runs one upgrade of `process`. `Some(pid)` once the new process serves (the
    /// caller then drains with [`Process::drain_handed_over`]); `None` when it
    /// failed, which is logged at warn and counted, with nothing changed here.
    pub async fn run(&self, process: &Process) -> Option<u32> {
        tracing::info!(program = %self.program.display(), "binary upgrade: starting the new process");
        match self.try_run(process).await {
            Ok(pid) => {
                // From now on an admin request still reaching this process is
                // answered as the node's (ready) and closes its connection.
                process.admin.handed_over.store(true, Ordering::Release);
                tracing::info!(
                    new_pid = pid,
                    "binary upgrade: the new process serves; draining this one"
                );
                Some(pid)
            }
            Err(error) => {
                tracing::warn!(%error, "binary upgrade failed: this process goes on serving");
                metrics::upgrade(false);
                None
            }
        }
    }

    async fn try_run(&self, process: &Process) -> Result<u32, UpgradeError> {
        let (ours, theirs) = UnixStream::pair()?;
        // The one descriptor the new process inherits. edgelb starts no other
        // program and runs one upgrade at a time, so no other child can inherit it
        // in the moment it is not close-on-exec.
        rustix::io::fcntl_setfd(&theirs, rustix::io::FdFlags::empty()).map_err(io::Error::from)?;
        let mut child = tokio::process::Command::new(&self.program)
            .args(&self.args)
            .env(FD_ENV, theirs.as_raw_fd().to_string())
            .kill_on_drop(true)
            .spawn()
            .map_err(|source| UpgradeError::Spawn {
                program: self.program.display().to_string(),
                source,
            })?;
        drop(theirs);
        let mut end = OldEnd::new(ours)?;
        let deadline = tokio::time::Instant::now() + self.ready_timeout;
        let exchanged = tokio::select! {
            result = tokio::time::timeout_at(deadline, exchange(&mut end, process)) => result,
            status = child.wait() => return Err(UpgradeError::Exited(status?)),
        };
        match exchanged {
            Ok(Ok(pid)) => {
                // The new process outlives this one (it is reparented when we
                // exit): no kill on drop, no wait.
                std::mem::forget(child);
                Ok(pid)
            }
            Ok(Err(UpgradeError::Channel(e))) if e.kind() == io::ErrorKind::UnexpectedEof => {
                // It closed the channel: it exited, or is about to.
                match tokio::time::timeout(Duration::from_secs(5), child.wait()).await {
                    Ok(status) => Err(UpgradeError::Exited(status?)),
                    Err(_) => {
                        let _ = child.kill().await;
                        Err(UpgradeError::Channel(e))
                    }
                }
            }
            Ok(Err(e)) => {
                let _ = child.kill().await;
                Err(e)
            }
            Err(_) => {
                let _ = child.kill().await;
                Err(UpgradeError::NotReady(self.ready_timeout))
            }
        }
    }
}

/// The old side of the conversation: hello, sockets and state, ready.
async fn exchange(end: &mut OldEnd, process: &Process) -> Result<u32, UpgradeError> {
    match end.receive().await? {
        Message::Hello { .. } => {}
        _ => return Err(UpgradeError::Protocol("expected hello")),
    }
    let sockets = process.listening_sockets()?;
    let fds: Vec<BorrowedFd<'_>> = sockets.iter().map(|(_, s)| s.as_fd()).collect();
    end.send_fds(&fds).await?;
    let handover = Message::Handover {
        sockets: sockets.iter().map(|(address, _)| *address).collect(),
        listeners: process.server.save(),
    };
    end.send(&handover).await?;
    tracing::info!(
        sockets = sockets.len(),
        "binary upgrade: sockets and state handed over"
    );
    match end.receive().await? {
        Message::Ready { pid } => Ok(pid),
        _ => Err(UpgradeError::Protocol("expected ready")),
    }
}
