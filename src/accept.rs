//! Taking connections off a listening socket, for the data path's listeners and the
//! admin server alike: skip errors that concern one connection, pause on the others.

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::time::Duration;
use tokio::net::{TcpListener, TcpStream};

/// First and longest pause after an accept error such as EMFILE.
const ACCEPT_BACKOFF_MIN: Duration = Duration::from_millis(5);
const ACCEPT_BACKOFF_MAX: Duration = Duration::from_secs(1);

/// The pause after an accept error that is not the connection's own (EMFILE,
/// ENFILE, ENOBUFS, ENOMEM): the pending connection stays in the backlog, so the
/// loop waits instead of spinning on the same error, 5 ms doubling to 1 s; a
/// success starts over.
pub struct AcceptBackoff(Duration);

impl Default for AcceptBackoff {
    fn default() -> Self {
        AcceptBackoff(ACCEPT_BACKOFF_MIN)
    }
}

impl AcceptBackoff {
    pub fn reset(&mut self) {
        self.0 = ACCEPT_BACKOFF_MIN;
    }

    /// The pause to take now; the next one is twice as long.
    pub fn next_pause(&mut self) -> Duration {
        let pause = self.0;
        self.0 = (self.0 * 2).min(ACCEPT_BACKOFF_MAX);
        pause
    }
}

/// Whose accept loop it is, for the log line of a pause.
#[derive(Debug, Clone, Copy)]
pub enum Owner {
    /// A listener, by port.
    Listener(u16),
    Admin,
}

/// Errors that concern one incoming connection only (it was reset before we took it).
pub fn is_per_connection_error(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::ConnectionAborted
            | io::ErrorKind::ConnectionReset
            | io::ErrorKind::Interrupted
    )
}

/// The next connection on `listener`, or `None` once `stopped` completes (checked
/// first). A per-connection error is skipped; any other pauses as `backoff` says,
/// with a warning.
pub async fn next<S: Future<Output = ()>>(
    listener: &TcpListener,
    backoff: &mut AcceptBackoff,
    mut stopped: Pin<&mut S>,
    owner: Owner,
) -> Option<(TcpStream, SocketAddr)> {
    loop {
        let accepted = tokio::select! {
            biased;
            () = stopped.as_mut() => return None,
            accepted = listener.accept() => accepted,
        };
        let e = match accepted {
            Ok(ok) => {
                backoff.reset();
                return Some(ok);
            }
            Err(e) if is_per_connection_error(&e) => continue,
            Err(e) => e,
        };
        let pause = backoff.next_pause();
        let pause_ms = pause.as_millis() as u64;
        match owner {
            Owner::Listener(port) => {
                tracing::warn!(listener = %port, error = %e, pause_ms, "accept failed; pausing");
            }
            Owner::Admin => {
                tracing::warn!(error = %e, pause_ms, "admin accept failed; pausing");
            }
        }
        tokio::select! {
            () = stopped.as_mut() => return None,
            () = tokio::time::sleep(pause) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accept_backoff_doubles_to_a_second_and_starts_over_after_a_success() {
        let mut b = AcceptBackoff::default();
        let ms: Vec<u128> = (0..10).map(|_| b.next_pause().as_millis()).collect();
        assert_eq!(ms, [5, 10, 20, 40, 80, 160, 320, 640, 1000, 1000]);
        b.reset();
        assert_eq!(b.next_pause(), Duration::from_millis(5));
    }
}
