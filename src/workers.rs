//! Where connections run: thread per core.
//!
//! The binary starts one thread per core (`--workers`), each with a current-thread
//! tokio runtime, and every listener binds one `SO_REUSEPORT` socket per worker: the
//! kernel spreads incoming connections over the sockets, and a connection lives on
//! the thread that accepted it, from accept to close. No connection is handed
//! between threads, stolen or woken across cores, as in HAProxy's and nginx's
//! workers. The process's own runtime keeps the rest: admin server, control API,
//! signals, health checks, persistence purges.
//!
//! [`Workers::current`] runs everything on the caller's runtime with one socket per
//! listener: what tests and embedders get by default (a paused clock works).

use std::sync::Arc;
use tokio::runtime::Handle;
use tokio_util::sync::{CancellationToken, DropGuard};

/// Starts a thread named `name` running a current-thread runtime until the
/// returned guard drops (tasks still on it are dropped then). The workers and the
/// health checks' own thread are made this way.
pub fn runtime_thread(name: &str) -> std::io::Result<(Handle, DropGuard)> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let handle = runtime.handle().clone();
    let stop = CancellationToken::new();
    let stopped = stop.clone();
    std::thread::Builder::new()
        .name(name.to_string())
        .spawn(move || runtime.block_on(stopped.cancelled()))?;
    Ok((handle, stop.drop_guard()))
}

/// The runtimes that accept and serve connections.
#[derive(Clone)]
pub struct Workers {
    handles: Vec<Handle>,
    /// Stops the worker threads when the last clone drops.
    _threads: Arc<Vec<DropGuard>>,
}

impl Workers {
    /// The current runtime alone. Panics outside a tokio runtime.
    pub fn current() -> Workers {
        Workers {
            handles: vec![Handle::current()],
            _threads: Arc::new(Vec::new()),
        }
    }

    /// `n` threads `edgelb-worker-{i}`, each running a current-thread runtime until
    /// the last clone of the result drops (their connections close then).
    pub fn spawn(n: usize) -> std::io::Result<Workers> {
        let mut handles = Vec::with_capacity(n);
        // Threads already started end (their guards drop) if a later one cannot start.
        let mut guards = Vec::with_capacity(n);
        for i in 0..n.max(1) {
            let (handle, guard) = runtime_thread(&format!("edgelb-worker-{i}"))?;
            handles.push(handle);
            guards.push(guard);
        }
        Ok(Workers {
            handles,
            _threads: Arc::new(guards),
        })
    }

    /// How many sockets each listener binds: one per worker.
    pub fn count(&self) -> usize {
        self.handles.len()
    }

    pub fn handles(&self) -> &[Handle] {
        &self.handles
    }
}

/// Workers when none are asked for: `TOKIO_WORKER_THREADS` if set (the variable
/// tokio itself reads), else one per core.
pub fn default_count() -> usize {
    std::env::var("TOKIO_WORKER_THREADS")
        .ok()
        .and_then(|v| v.trim().parse().ok())
        .filter(|&n| n > 0)
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, usize::from))
}
