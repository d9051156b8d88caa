//! A running process's side of a binary upgrade (`crate::upgrade` drives it): a
//! copy of every listening socket to hand over, the admin socket taken over, and
//! the drain once the new process serves.

use super::Process;
use std::io;
use std::net::SocketAddr;
use std::sync::atomic::Ordering;

/// How long a process that handed over waits, its own connections drained, for
/// the admin connections it still holds: one accepted just before the switch
/// gets its answer; an idle kept-alive one is closed at the exit after this.
const ADMIN_LINGER: std::time::Duration = std::time::Duration::from_secs(2);

impl Process {
    /// Copies of every listening socket (the admin server's too), by configured
    /// address, for the process that replaces this one (binary upgrade).
    pub fn listening_sockets(&self) -> io::Result<Vec<(SocketAddr, std::net::TcpListener)>> {
        let mut sockets = self.server.listening_sockets()?;
        if let Some((address, socket)) = &self.admin_socket {
            sockets.push((*address, socket.try_clone()?));
        }
        Ok(sockets)
    }

    /// A binary upgrade succeeded: the new process serves every socket. This one
    /// stops accepting at once (admin server included, so new admin connections
    /// reach the new process; a kept-alive one gets its next answer here, with
    /// `Connection: close`) and drains as SIGTERM does, without `drain_delay`;
    /// `/healthz` never says 503 meanwhile: the node serves.
    /// Returns how many connections were cut at `drain_timeout`.
    pub async fn drain_handed_over(&self) -> usize {
        self.admin.handed_over.store(true, Ordering::Release);
        self.stop_admin.cancel();
        tracing::info!("handed over: listening sockets closed here, draining");
        let cut = self.server.drain().await;
        // An admin request accepted just before the switch (a router's /healthz)
        // gets its answer before the process exits.
        let linger = tokio::time::Instant::now() + ADMIN_LINGER;
        while self.admin.open_connections() > 0 && tokio::time::Instant::now() < linger {
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
        tracing::info!(closed_at_timeout = cut, "stopped");
        cut
    }
}

/// The admin server's socket: the inherited one (made non-blocking again), or a
/// new bind.
pub(super) async fn admin_listener(
    address: SocketAddr,
    inherited: Option<Vec<std::net::TcpListener>>,
) -> io::Result<tokio::net::TcpListener> {
    match inherited.and_then(|s| s.into_iter().next()) {
        Some(socket) => {
            socket.set_nonblocking(true)?;
            tokio::net::TcpListener::from_std(socket)
        }
        None => tokio::net::TcpListener::bind(address).await,
    }
}

/// A duplicate of `socket` kept for a hand-over; without one (no descriptor left)
/// an upgrade could not hand the admin socket over, which it then reports.
pub(super) fn socket_copy(socket: &tokio::net::TcpListener) -> Option<std::net::TcpListener> {
    use std::os::fd::AsFd;
    match socket.as_fd().try_clone_to_owned() {
        Ok(fd) => Some(std::net::TcpListener::from(fd)),
        Err(e) => {
            tracing::warn!(error = %e, "cannot keep a copy of the admin socket: a binary upgrade would not hand it over");
            None
        }
    }
}
