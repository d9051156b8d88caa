//! systemd's readiness protocol (`sd_notify`): one datagram per state change to the
//! socket named by `$NOTIFY_SOCKET` (a path, or `@name` in the abstract namespace).
//!
//! Written here rather than taken from a crate: it is a datagram of `KEY=VALUE`
//! lines, and the address is a value of its own so tests can point it at a socket
//! of theirs without touching the environment. The variable is left set: a process
//! started by a binary upgrade needs it to report itself as the new main process.

use std::os::linux::net::SocketAddrExt;
use std::os::unix::net::{SocketAddr, UnixDatagram};

/// Where state changes go; nowhere when not run by systemd (`Type=notify`).
#[derive(Debug, Clone, Default)]
pub struct Notifier {
    socket: Option<SocketAddr>,
}

impl Notifier {
    /// From `$NOTIFY_SOCKET`; a notifier that sends nothing when it is unset or not
    /// an address.
    pub fn from_env() -> Notifier {
        std::env::var("NOTIFY_SOCKET")
            .map(|v| Notifier::to(&v))
            .unwrap_or_default()
    }

    /// To `address`: a path, or `@name` for an abstract socket.
    pub fn to(address: &str) -> Notifier {
        let socket = match address.strip_prefix('@') {
            Some(name) => SocketAddr::from_abstract_name(name.as_bytes()).ok(),
            None if address.starts_with('/') => SocketAddr::from_pathname(address).ok(),
            None => None,
        };
        Notifier { socket }
    }

    /// Whether anything listens for the messages.
    pub fn is_enabled(&self) -> bool {
        self.socket.is_some()
    }

    /// Sends `state` (`KEY=VALUE` lines). Best effort: systemd not listening must
    /// not stop the load balancer, so a failure is logged and forgotten.
    pub fn notify(&self, state: &str) {
        let Some(address) = &self.socket else {
            return;
        };
        let sent = UnixDatagram::unbound().and_then(|s| s.send_to_addr(state.as_bytes(), address));
        if let Err(error) = sent {
            tracing::warn!(%error, "cannot notify systemd");
        }
    }

    /// Started: every listener bound, the admin server up.
    pub fn ready(&self) {
        self.notify("READY=1\nSTATUS=serving");
    }

    /// A binary upgrade's new process took over: it is the service's main process
    /// from now on (`NotifyAccess=all` lets a process other than the main one say so).
    pub fn took_over(&self) {
        self.notify(&format!(
            "MAINPID={}\nREADY=1\nSTATUS=serving (took over by binary upgrade)",
            std::process::id()
        ));
    }

    /// A reload (SIGHUP) begins; [`Notifier::reloaded`] ends it.
    pub fn reloading(&self) {
        self.notify(&format!("RELOADING=1\nMONOTONIC_USEC={}", monotonic_usec()));
    }

    pub fn reloaded(&self) {
        self.notify("READY=1\nSTATUS=serving");
    }

    /// A drain (SIGTERM) begins.
    pub fn stopping(&self) {
        self.notify("STOPPING=1\nSTATUS=draining");
    }

    /// Free text for `systemctl status`.
    pub fn status(&self, text: &str) {
        self.notify(&format!("STATUS={text}"));
    }
}

/// CLOCK_MONOTONIC in microseconds, as systemd wants with `RELOADING=1`.
fn monotonic_usec() -> u64 {
    let t = rustix::time::clock_gettime(rustix::time::ClockId::Monotonic);
    u64::try_from(t.tv_sec).unwrap_or(0) * 1_000_000 + u64::try_from(t.tv_nsec).unwrap_or(0) / 1_000
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn receive(socket: &UnixDatagram) -> String {
        socket
            .set_read_timeout(Some(Duration::from_secs(5)))
            .unwrap();
        let mut buf = [0u8; 512];
        let n = socket.recv(&mut buf).unwrap();
        String::from_utf8_lossy(&buf[..n]).into_owned()
    }

    #[test]
    fn messages_reach_a_path_socket() {
        let dir = crate::testing::temp_dir("notify");
        let path = dir.join("notify.sock");
        let _ = std::fs::remove_file(&path);
        let socket = UnixDatagram::bind(&path).unwrap();
        let notifier = Notifier::to(path.to_str().unwrap());
        assert!(notifier.is_enabled());
        notifier.ready();
        assert_eq!(receive(&socket), "READY=1\nSTATUS=serving");
        notifier.took_over();
        assert_eq!(
            receive(&socket),
            format!(
                "MAINPID={}\nREADY=1\nSTATUS=serving (took over by binary upgrade)",
                std::process::id()
            )
        );
        notifier.reloading();
        let reloading = receive(&socket);
        let usec: u64 = reloading
            .strip_prefix("RELOADING=1\nMONOTONIC_USEC=")
            .unwrap()
            .parse()
            .unwrap();
        assert!(usec > 0);
        notifier.reloaded();
        assert_eq!(receive(&socket), "READY=1\nSTATUS=serving");
        notifier.stopping();
        assert_eq!(receive(&socket), "STOPPING=1\nSTATUS=draining");
        let _ = std::fs::remove_dir_all(dir);
    }

    #[test]
    fn messages_reach_an_abstract_socket() {
        let name = format!("edgelb-notify-test-{}", std::process::id());
        let address = SocketAddr::from_abstract_name(name.as_bytes()).unwrap();
        let socket = UnixDatagram::bind_addr(&address).unwrap();
        Notifier::to(&format!("@{name}")).ready();
        assert_eq!(receive(&socket), "READY=1\nSTATUS=serving");
    }

    #[test]
    fn no_socket_sends_nothing() {
        assert!(!Notifier::to("").is_enabled());
        assert!(!Notifier::to("relative/path").is_enabled());
        Notifier::default().ready();
    }
}
