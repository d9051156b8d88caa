//! The set of listeners of a running process: start, apply a new configuration
//! (reload), and drain.
//!
//! - [`handover`]: what a binary upgrade takes from the running set and gives the
//!   next one.

use crate::access_log::{AccessLog, OpenError};
use crate::config::{Config, Global, Listener, ListenerKey};
use crate::copy::Cut;
use crate::health;
use crate::limit::{self, ConnectionLimit};
use crate::listener::{self, accept_loop, Binder, Shared};
use crate::proxy::PerWorker;
use crate::state::{ListenerState, SavedListener};
use crate::workers::Workers;
use std::collections::HashMap;
use std::io;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, PoisonError};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

mod handover;
pub use handover::Handover;

/// A listener could not bind its socket.
#[derive(Debug, thiserror::Error)]
#[error("listener {load_balancer_id}:{listener_port} cannot bind {address}: {source}")]
pub struct BindError {
    pub load_balancer_id: String,
    pub listener_port: u16,
    pub address: SocketAddr,
    pub source: io::Error,
}

/// Why a configuration could not be put in force (at start: exit 1; a reload is
/// refused and changes nothing).
#[derive(Debug, thiserror::Error)]
pub enum ApplyError {
    #[error(transparent)]
    Bind(#[from] BindError),
    #[error(transparent)]
    AccessLog(#[from] OpenError),
}

/// How long connections cut at the drain deadline get to end and log.
const CUT_GRACE: std::time::Duration = std::time::Duration::from_secs(2);
/// How long the exit waits for the access log's last lines.
const LOG_FLUSH_WAIT: std::time::Duration = std::time::Duration::from_secs(5);

struct Accepting {
    /// The configured bind address (the actual one may differ with a test binder).
    configured: SocketAddr,
    local: SocketAddr,
    stop: CancellationToken,
    /// A duplicate of each socket the accept loops own, to hand over in a binary
    /// upgrade (dropped with this when the listener stops, so a stopped listener's
    /// socket really closes).
    sockets: Vec<std::net::TcpListener>,
}

struct Entry {
    state: Arc<ListenerState>,
    accepting: Option<Accepting>,
}

/// The running listeners.
pub struct Server {
    shared: Arc<Shared>,
    binder: Binder,
    workers: Workers,
    state: Mutex<State>,
}

struct State {
    /// The global settings in force, shared with every listener's view.
    global: Arc<Global>,
    listeners: HashMap<ListenerKey, Entry>,
    /// The health checks of the running listeners.
    checks: health::Checks,
}

impl Server {
    /// Binds every running listener of `config` through `binder` (production:
    /// [`listener::default_binder`]; tests bind port 0) and serves connections on
    /// `workers` ([`Workers::current`]: the caller's runtime): each listener binds
    /// one socket per worker (the first through `binder`, the others with
    /// `SO_REUSEPORT` on the address it got). The rest (health checks, persistence
    /// purges) runs on the current runtime.
    pub fn start(config: &Config, binder: Binder, workers: Workers) -> Result<Server, ApplyError> {
        Server::start_with(config, binder, workers, Handover::default())
    }

    /// As [`Server::start`], taking over what a replaced process handed over: a
    /// listener whose configured address has inherited sockets accepts on them
    /// (binding more only if there are fewer than workers), and each listener's
    /// saved state is restored before it accepts. Sockets no listener takes close
    /// here (the old process still holds its copies until it stops).
    pub fn start_with(
        config: &Config,
        binder: Binder,
        workers: Workers,
        mut handover: Handover,
    ) -> Result<Server, ApplyError> {
        let max = max_connections(config);
        let access_log = Arc::new(AccessLog::new());
        let per_worker = (0..workers.count())
            .map(|_| {
                Arc::new(PerWorker {
                    access_log: access_log.clone(),
                    cut: Cut::default(),
                })
            })
            .collect();
        let server = Server {
            shared: Arc::new(Shared {
                limit: ConnectionLimit::new(max),
                tracker: TaskTracker::new(),
                access_log,
                workers: per_worker,
            }),
            binder,
            workers,
            state: Mutex::new(State {
                global: Arc::new(config.global.clone()),
                listeners: HashMap::new(),
                checks: health::Checks::start(),
            }),
        };
        server.apply_with(config, &mut handover)?;
        for (address, sockets) in handover.sockets.left() {
            tracing::info!(%address, sockets, "inherited socket of no running listener: closed");
        }
        crate::memory::spawn_trimmer(server.shared.limit.clone());
        tracing::info!(max_connections = max, "connection limit");
        Ok(server)
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Applies `config`: listeners that remain keep their socket and state; new ones
    /// bind; removed or stopped ones close their socket while their connections run
    /// on. If a new socket cannot be bound, or a new access log file opened,
    /// nothing changes.
    pub fn apply(&self, config: &Config) -> Result<(), ApplyError> {
        self.apply_with(config, &mut Handover::default())
    }

    fn apply_with(&self, config: &Config, handover: &mut Handover) -> Result<(), ApplyError> {
        let mut saved: HashMap<ListenerKey, SavedListener> =
            std::mem::take(&mut handover.listeners)
                .into_iter()
                .map(|l| (ListenerKey::new(&l.load_balancer_id, l.listener_port), l))
                .collect();
        let mut state = self.state();
        let state = &mut *state;
        let (log_target, log_format) = (&config.global.access_log, config.global.access_log_format);
        let log_change = self.shared.access_log.prepare(log_target, log_format)?;
        let mut bound = HashMap::new();
        for l in config.listeners.iter().filter(|l| l.is_running()) {
            let key = l.key();
            let current = state.listeners.get(&key).and_then(|e| e.accepting.as_ref());
            if current.is_some_and(|a| a.configured == l.bind) {
                continue;
            }
            let inherited = handover.sockets.take(l.bind);
            let sockets = self
                .bind_all(l.bind, inherited)
                .map_err(|source| BindError {
                    load_balancer_id: l.spec.load_balancer_id.clone(),
                    listener_port: l.spec.listener_port,
                    address: l.bind,
                    source,
                })?;
            bound.insert(key, sockets);
        }
        if let Some(change) = log_change {
            self.shared.access_log.commit(change);
            tracing::info!(target = ?log_target, format = ?log_format, "access log");
        }
        let global = Arc::new(config.global.clone());
        state.global = global.clone();
        let max = max_connections(config);
        if max != self.shared.limit.max() {
            self.shared.limit.set_max(max);
            tracing::info!(max_connections = max, "connection limit changed");
        }
        let wanted: HashMap<ListenerKey, &Listener> =
            config.listeners.iter().map(|l| (l.key(), l)).collect();
        // Removed listeners: stop accepting; their connections hold their state.
        state.listeners.retain(|key, entry| {
            let keep = wanted.contains_key(key);
            if !keep {
                stop_accepting(key, entry);
                state.checks.stop(key);
            }
            keep
        });
        for (key, l) in wanted {
            let entry = state.listeners.entry(key.clone()).or_insert_with(|| Entry {
                state: ListenerState::new(l.clone(), &global),
                accepting: None,
            });
            entry.state.update(l.clone(), &global);
            if let Some(saved) = saved.remove(&key) {
                let entries = entry.state.restore(saved);
                tracing::info!(load_balancer_id = %key.load_balancer_id, listener = key.listener_port, persistence_entries = entries, "state taken over");
            }
            state.checks.sync(&entry.state, l);
            if !l.is_running() {
                stop_accepting(&key, entry);
            } else if let Some(sockets) = bound.remove(&key) {
                stop_accepting(&key, entry);
                entry.accepting = Some(self.spawn_accept(sockets, l.bind, &entry.state));
            }
        }
        Ok(())
    }

    /// One socket per worker: the first from the binder, the others on the address
    /// it got (so port 0 works), sharing it through `SO_REUSEPORT`. Inherited
    /// sockets come first and are all kept (each has its own accept queue, which
    /// must go on being served); more are bound only up to one per worker.
    fn bind_all(
        &self,
        addr: SocketAddr,
        inherited: Option<Vec<std::net::TcpListener>>,
    ) -> io::Result<Vec<std::net::TcpListener>> {
        let mut sockets = match inherited {
            Some(sockets) => sockets,
            None => vec![(self.binder)(addr)?],
        };
        let local = match sockets.first() {
            Some(first) => first.local_addr()?,
            None => addr,
        };
        while sockets.len() < self.workers.count() {
            sockets.push(listener::bind(local)?);
        }
        Ok(sockets)
    }

    fn spawn_accept(
        &self,
        sockets: Vec<std::net::TcpListener>,
        configured: SocketAddr,
        listener: &Arc<ListenerState>,
    ) -> Accepting {
        let local = sockets
            .first()
            .and_then(|s| s.local_addr().ok())
            .unwrap_or(configured);
        let stop = CancellationToken::new();
        tracing::info!(load_balancer_id = %listener.key.load_balancer_id, listener = listener.key.listener_port, address = %local, sockets = sockets.len(), "listening");
        let kept = sockets
            .iter()
            .filter_map(|s| match s.try_clone() {
                Ok(copy) => Some(copy),
                Err(e) => {
                    tracing::warn!(load_balancer_id = %listener.key.load_balancer_id, listener = listener.key.listener_port, error = %e, "cannot keep a copy of a listening socket: a binary upgrade would not hand it over");
                    None
                }
            })
            .collect();
        // More sockets than workers (inherited from a process with more): each
        // worker takes its share, so every accept queue is served.
        let workers = self
            .workers
            .handles()
            .iter()
            .zip(&self.shared.workers)
            .cycle();
        for (socket, (worker, per_worker)) in sockets.into_iter().zip(workers) {
            let (state, shared, stop) = (listener.clone(), self.shared.clone(), stop.clone());
            let per_worker = per_worker.clone();
            // Registered with the worker's own reactor, from the worker.
            worker.spawn(async move {
                match tokio::net::TcpListener::from_std(socket) {
                    Ok(socket) => accept_loop(socket, state, shared, stop, per_worker).await,
                    Err(e) => {
                        tracing::error!(load_balancer_id = %state.key.load_balancer_id, listener = state.key.listener_port, error = %e, "cannot register the listening socket");
                    }
                }
            });
        }
        Accepting {
            configured,
            local,
            stop,
            sockets: kept,
        }
    }

    /// The address each accepting listener is bound to.
    pub fn local_addrs(&self) -> HashMap<ListenerKey, SocketAddr> {
        self.state()
            .listeners
            .iter()
            .filter_map(|(k, e)| e.accepting.as_ref().map(|a| (k.clone(), a.local)))
            .collect()
    }

    /// Every listener's state (running or not), sorted by key.
    pub fn listeners(&self) -> Vec<Arc<ListenerState>> {
        let mut all: Vec<Arc<ListenerState>> = self
            .state()
            .listeners
            .values()
            .map(|e| e.state.clone())
            .collect();
        all.sort_by(|a, b| a.key.cmp(&b.key));
        all
    }

    /// Client connections open now.
    pub fn open_connections(&self) -> usize {
        self.shared.limit.open()
    }

    /// `drain_delay` of the configuration in force.
    pub fn drain_delay(&self) -> std::time::Duration {
        self.state().global.drain_delay
    }

    /// SIGUSR1: the access log file is reopened by its path.
    pub fn reopen_access_log(&self) {
        self.shared.access_log.reopen();
    }

    /// Closes every listening socket, waits up to `drain_timeout` for open
    /// connections to finish, then cuts the rest (each logged `drain`) and waits
    /// for the access log's last lines. Returns how many were cut.
    pub async fn drain(&self) -> usize {
        let timeout = {
            let mut state = self.state();
            for (key, entry) in state.listeners.iter_mut() {
                stop_accepting(key, entry);
            }
            state.global.drain_timeout
        };
        self.shared.tracker.close();
        let open = self.open_connections();
        if open > 0 {
            tracing::info!(
                open,
                timeout_s = timeout.as_secs(),
                "draining open connections"
            );
        }
        let mut cut = 0;
        if tokio::time::timeout(timeout, self.shared.tracker.wait())
            .await
            .is_err()
        {
            cut = self.open_connections();
            tracing::warn!(
                connections = cut,
                "drain timeout reached: closing the remaining connections"
            );
            for worker in &self.shared.workers {
                worker.cut.cancel();
            }
            if tokio::time::timeout(CUT_GRACE, self.shared.tracker.wait())
                .await
                .is_err()
            {
                tracing::warn!(
                    connections = self.open_connections(),
                    "connections still open after the cut"
                );
            }
        }
        let log = self.shared.access_log.clone();
        let flushed = tokio::task::spawn_blocking(move || log.flush(LOG_FLUSH_WAIT)).await;
        if !matches!(flushed, Ok(true)) {
            tracing::warn!("access log: the last lines may be lost (the writer is stuck)");
        }
        cut
    }
}

fn stop_accepting(key: &ListenerKey, entry: &mut Entry) {
    if let Some(accepting) = entry.accepting.take() {
        accepting.stop.cancel();
        tracing::info!(load_balancer_id = %key.load_balancer_id, listener = key.listener_port, address = %accepting.local, "stopped listening");
    }
}

/// The connection cap `config` asks for: `max_connections`, or one derived from the
/// open-file limit when that is 0, after the probe sockets and the admin server's
/// own cap are set aside.
fn max_connections(config: &Config) -> usize {
    match config.global.max_connections {
        0 => limit::derived_max_connections(limit::SetAside {
            probe_sockets: health::kept_sockets(config),
            admin_connections: config
                .admin
                .address
                .map_or(0, |_| config.admin.max_connections),
        }),
        n => n,
    }
}
