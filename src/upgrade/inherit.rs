//! The new process's side of a binary upgrade: take the channel named by
//! `EDGELB_UPGRADE_FD`, receive the sockets and the state, and report ready once
//! serving.

use super::channel::{Message, NewEnd};
use super::{FD_ENV, READY_TIMEOUT, READY_TIMEOUT_ENV};
use crate::listener::Inherited;
use crate::server::Handover;
use std::io;
use std::os::fd::{FromRawFd, OwnedFd, RawFd};
use std::os::unix::net::UnixStream;
use std::time::Duration;

/// What a process started by an upgrade took over, and the channel to say it
/// serves.
pub struct Inheritance {
    end: NewEnd,
    handover: Option<Handover>,
}

/// Whether this process was started by a binary upgrade: then it takes the
/// channel, says hello, and receives every listening socket and listener state
/// (blocking; call once the listener file is known valid, before serving).
/// `Ok(None)` when not started by an upgrade.
pub fn take_over() -> io::Result<Option<Inheritance>> {
    let Ok(value) = std::env::var(FD_ENV) else {
        return Ok(None);
    };
    let fd: RawFd = value
        .trim()
        .parse()
        .map_err(|_| io::Error::other(format!("{FD_ENV}={value:?} is not a descriptor")))?;
    if fd <= 2 {
        return Err(io::Error::other(format!(
            "{FD_ENV}={fd} names a standard stream"
        )));
    }
    // SAFETY: the old process started this one with `fd` open (inherited) and named
    // it in the variable; nothing else in this process knows or uses that number,
    // and it is taken once, here.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    // Any program this process starts later must not inherit it.
    rustix::io::fcntl_setfd(&fd, rustix::io::FdFlags::CLOEXEC)?;
    let timeout = std::env::var(READY_TIMEOUT_ENV)
        .ok()
        .and_then(|v| v.trim().parse().ok())
        .map_or(READY_TIMEOUT, Duration::from_millis);
    let mut end = NewEnd::new(UnixStream::from(fd), timeout)?;
    end.send(&Message::Hello {
        pid: std::process::id(),
    })?;
    let Message::Handover { sockets, listeners } = end.receive()? else {
        return Err(io::Error::other(
            "hand-over channel: expected the hand-over",
        ));
    };
    let fds = std::mem::take(&mut end.fds);
    if fds.len() != sockets.len() {
        return Err(io::Error::other(format!(
            "hand-over channel: {} descriptors for {} sockets",
            fds.len(),
            sockets.len()
        )));
    }
    let mut inherited = Inherited::default();
    for (address, fd) in sockets.into_iter().zip(fds) {
        let socket = std::net::TcpListener::from(fd);
        socket.set_nonblocking(true)?;
        inherited.add(address, socket);
    }
    tracing::info!(
        sockets = inherited.left().iter().map(|(_, n)| n).sum::<usize>(),
        listeners = listeners.len(),
        "binary upgrade: took over sockets and state"
    );
    Ok(Some(Inheritance {
        end,
        handover: Some(Handover {
            sockets: inherited,
            listeners,
        }),
    }))
}

impl Inheritance {
    /// The sockets and state, for `process::Options::handover` (once).
    pub fn take_handover(&mut self) -> Handover {
        self.handover.take().unwrap_or_default()
    }

    /// This process serves: the old one may stop accepting. Counts the upgrade.
    pub fn ready(mut self) -> io::Result<()> {
        self.end.send(&Message::Ready {
            pid: std::process::id(),
        })?;
        crate::metrics::upgrade(true);
        tracing::info!("binary upgrade: serving; the old process drains");
        Ok(())
    }
}
