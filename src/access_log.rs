//! The access log (SPEC section 5): one line per client connection when it ends,
//! handed over without waiting and written by one thread.
//!
//! The data path builds a fixed-size [`Record`] (ids are `Arc` clones, no text is
//! formatted) and offers it to a bounded queue; when the queue is full the line is
//! dropped and counted in `edgelb_access_log_dropped_total`, so a slow disk never
//! slows a connection. One writer thread formats lines into a reused buffer and
//! writes each batch with one call. With the log off, a connection pays one
//! relaxed load and a branch ([`AccessLog::is_on`]).
//!
//! - [`format`]: the text and JSON lines, and RFC 3339 time from the Unix time.
//! - [`writer`]: the output (stderr or a file), the writer thread, reopen and flush.

mod format;
mod writer;

pub use format::{format_line, rfc3339_millis};
pub use writer::Output;

use crate::config::{AccessLogFormat, AccessLogTarget, ListenerKey};
use crate::metrics::{self, Total};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock, PoisonError};
use std::time::Duration;

/// Lines the queue holds; past it lines are dropped (about 2.5 MiB of records,
/// allocated once, when the log is first turned on).
pub const QUEUE_LINES: usize = 16_384;

/// How a client connection ended: the `end` field.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum End {
    /// The client's FIN came first, then the backend's.
    ClientClosed,
    /// The backend's FIN came first, then the client's.
    BackendClosed,
    /// Nothing moved either way for `established_timeout`.
    IdleTimeout,
    /// A read from or write to the client failed (a reset, usually).
    ClientError,
    /// A read from or write to the backend failed.
    BackendError,
    /// No backend with weight > 0.
    NoBackend,
    /// Every connect attempt failed.
    ConnectFailed,
    /// Refused at accept: `max_connections` were open.
    MaxConnections,
    /// Still open at the drain deadline (`drain_timeout`), so cut.
    Drain,
}

impl End {
    pub const ALL: [End; 9] = [
        End::ClientClosed,
        End::BackendClosed,
        End::IdleTimeout,
        End::ClientError,
        End::BackendError,
        End::NoBackend,
        End::ConnectFailed,
        End::MaxConnections,
        End::Drain,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            End::ClientClosed => "client_closed",
            End::BackendClosed => "backend_closed",
            End::IdleTimeout => "idle_timeout",
            End::ClientError => "client_error",
            End::BackendError => "backend_error",
            End::NoBackend => "no_backend",
            End::ConnectFailed => "connect_failed",
            End::MaxConnections => "max_connections",
            End::Drain => "drain",
        }
    }
}

/// One line as the data path hands it over: fixed size, formatted by the writer.
#[derive(Debug, Clone)]
pub struct Record {
    /// When the connection ended, in milliseconds since the Unix epoch.
    pub ended_unix_ms: u64,
    pub client: SocketAddr,
    pub listener: Arc<ListenerKey>,
    /// The backend reached, or the last one tried (`connect_failed`).
    pub server_id: Option<Arc<str>>,
    pub backend: Option<SocketAddr>,
    /// From the first connect attempt to the connection (or the last failure).
    pub connect_ms: Option<u64>,
    /// From accept to the end.
    pub duration_ms: u64,
    /// Client to backend, as `edgelb_bytes_total{direction="in"}` counts them.
    pub bytes_in: u64,
    pub bytes_out: u64,
    pub end: End,
}

/// The access log file could not be opened (a start fails with it, a reload is
/// refused).
#[derive(Debug, thiserror::Error)]
#[error("cannot open the access log {}: {source}", path.display())]
pub struct OpenError {
    pub path: PathBuf,
    pub source: std::io::Error,
}

/// A target opened by [`AccessLog::prepare`], not yet in force.
pub struct Change {
    target: AccessLogTarget,
    format: AccessLogFormat,
    output: Option<Output>,
}

/// The process's access log: off until a configuration turns it on.
pub struct AccessLog {
    on: AtomicBool,
    /// Started the first time the log is turned on; lives as long as this.
    queue: OnceLock<writer::Queue>,
    /// The target and format in force (control plane only).
    settings: Mutex<(AccessLogTarget, AccessLogFormat)>,
    dropped: Arc<Total>,
}

impl Default for AccessLog {
    fn default() -> Self {
        AccessLog::new()
    }
}

impl AccessLog {
    /// Off; registers the dropped-lines counter once.
    pub fn new() -> AccessLog {
        AccessLog {
            on: AtomicBool::new(false),
            queue: OnceLock::new(),
            settings: Mutex::new((AccessLogTarget::Off, AccessLogFormat::Text)),
            dropped: Arc::new(Total::new(metrics::access_log_dropped())),
        }
    }

    /// Whether connections should build a [`Record`] at all.
    #[inline]
    pub fn is_on(&self) -> bool {
        self.on.load(Ordering::Relaxed)
    }

    /// Offers `record` to the writer; never waits. Dropped and counted when the
    /// queue is full.
    pub fn log(&self, record: Record) {
        if let Some(queue) = self.queue.get() {
            if !queue.try_send(record) {
                self.dropped.increment(1);
            }
        }
    }

    /// Lines dropped so far (queue full, or a failed write).
    pub fn dropped(&self) -> u64 {
        self.dropped.get()
    }

    fn settings(&self) -> std::sync::MutexGuard<'_, (AccessLogTarget, AccessLogFormat)> {
        self.settings.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Opens what `target` names when it differs from the target in force (a
    /// start, a reload); `None` when nothing changes. Nothing is in force until
    /// [`AccessLog::commit`], so a reload refused for another reason changes
    /// nothing here either.
    pub fn prepare(
        &self,
        target: &AccessLogTarget,
        format: AccessLogFormat,
    ) -> Result<Option<Change>, OpenError> {
        if *self.settings() == (target.clone(), format) {
            return Ok(None);
        }
        let output = if self.settings().0 == *target {
            None // same target, new format: the writer keeps its output
        } else {
            Some(Output::open(target).map_err(|source| OpenError {
                path: match target {
                    AccessLogTarget::File(path) => path.clone(),
                    _ => PathBuf::from("stderr"),
                },
                source,
            })?)
        };
        Ok(Some(Change {
            target: target.clone(),
            format,
            output: output.flatten(),
        }))
    }

    /// Puts a prepared change in force: lines of connections that end from now on
    /// go to the new target in the new format.
    pub fn commit(&self, change: Change) {
        let mut settings = self.settings();
        let retarget = settings.0 != change.target;
        let on = change.target != AccessLogTarget::Off;
        if on || self.queue.get().is_some() {
            match self.queue() {
                Some(queue) => queue.set(retarget.then_some(change.output), change.format),
                None => return,
            }
        }
        self.on.store(on, Ordering::Relaxed);
        *settings = (change.target, change.format);
    }

    fn queue(&self) -> Option<&writer::Queue> {
        if let Some(queue) = self.queue.get() {
            return Some(queue);
        }
        match writer::Queue::start(QUEUE_LINES, self.dropped.clone()) {
            Ok(queue) => Some(self.queue.get_or_init(|| queue)),
            Err(e) => {
                tracing::error!(error = %e, "cannot start the access log writer thread");
                None
            }
        }
    }

    /// Starts with `output` (tests: a writer of their own) in `format`.
    pub fn start_with(&self, output: Output, format: AccessLogFormat) {
        if let Some(queue) = self.queue() {
            queue.set(Some(Some(output)), format);
            self.on.store(true, Ordering::Relaxed);
        }
    }

    /// SIGUSR1: the writer reopens the file by its path (after logrotate renamed
    /// it), in queue order: lines already queued go to the old file.
    pub fn reopen(&self) {
        if let Some(queue) = self.queue.get() {
            queue.reopen();
        }
    }

    /// Waits, at most `within`, until every line queued before this call is
    /// written (before the process exits). False when it took longer.
    pub fn flush(&self, within: Duration) -> bool {
        self.queue.get().is_none_or(|queue| queue.flush(within))
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests;
