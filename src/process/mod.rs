//! The running process put together, once for the binary, the tests and the
//! benches: metrics recorder, admin server, worker threads, listeners, control API
//! and the ready flag, in the order that keeps `/healthz` honest.
//!
//! - [`handover`]: what a binary upgrade needs of a running process: its sockets,
//!   and the drain once the new process serves.

use crate::admin::{self, AdminState};
use crate::api::{Control, ReloadError};
use crate::config::Config;
use crate::listener::{self, Binder};
use crate::metrics;
use crate::server::{ApplyError, Handover, Server};
use crate::workers::Workers;
use handover::{admin_listener, socket_copy};
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use tokio_util::sync::CancellationToken;

mod handover;

/// Where the admin server listens.
#[derive(Debug, Clone, Copy)]
pub enum AdminBind {
    /// The file's `[admin] address` (none when it is `""`).
    FromConfig,
    /// This address instead (tests: `127.0.0.1:0`).
    At(SocketAddr),
    /// No admin server.
    Off,
}

/// How to start.
pub struct Options {
    /// How listeners get their socket: [`listener::default_binder`] in production.
    pub binder: Binder,
    /// Threads that serve connections; `None` serves them on the caller's runtime.
    pub workers: Option<usize>,
    pub admin: AdminBind,
    /// Install the process's Prometheus recorder (once per process; later starts
    /// reuse it) so `/metrics` answers.
    pub metrics: bool,
    /// What the process this one replaces handed over (binary upgrade): listening
    /// sockets (the admin server's among them) and listener states.
    pub handover: Handover,
}

impl Options {
    /// What `edgelb run` starts with: real binds, `workers` threads, the file's
    /// admin address, Prometheus metrics.
    pub fn production(workers: usize) -> Options {
        Options {
            binder: listener::default_binder(),
            workers: Some(workers),
            admin: AdminBind::FromConfig,
            metrics: true,
            handover: Handover::default(),
        }
    }
}

/// Why the process could not start (the binary exits 1 with it).
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("cannot install the metrics recorder: {0}")]
    Recorder(String),
    #[error("admin server cannot bind {address}: {source}")]
    AdminBind {
        address: SocketAddr,
        source: io::Error,
    },
    #[error("cannot start the worker threads: {0}")]
    Workers(io::Error),
    #[error(transparent)]
    Apply(#[from] ApplyError),
}

/// A started process: its listeners, control API and admin server.
pub struct Process {
    pub server: Arc<Server>,
    pub control: Arc<Control>,
    pub admin: Arc<AdminState>,
    /// Where the admin server listens, if it runs.
    pub admin_addr: Option<SocketAddr>,
    /// The admin server's configured address and a copy of its socket, to hand over.
    admin_socket: Option<(SocketAddr, std::net::TcpListener)>,
    path: PathBuf,
    stop_admin: CancellationToken,
}

impl Process {
    /// Starts `config`, loaded from `path` (which SIGHUP and the control API
    /// re-read and write). The admin server answers before the listeners bind
    /// (`/healthz` says 503 until then); ready once every running listener is bound.
    pub async fn start(
        path: PathBuf,
        config: Config,
        mut options: Options,
    ) -> Result<Process, StartError> {
        admin::mark_started();
        let prometheus = if options.metrics {
            Some(admin::recorder().map_err(|e| StartError::Recorder(format!("{e:#}")))?)
        } else {
            None
        };
        let address = match options.admin {
            AdminBind::FromConfig => config.admin.address,
            AdminBind::At(address) => Some(address),
            AdminBind::Off => None,
        };
        let admin = Arc::new(AdminState::new(prometheus));
        let stop_admin = CancellationToken::new();
        let mut admin_socket = None;
        // The admin server answers at once (`/healthz` 503 until the listeners are
        // bound), except on a socket inherited from the process this one replaces:
        // that one still serves it, ready, and a 503 from here would tell a router
        // watching `/healthz` that the node went down. This one joins once ready.
        let mut serve_admin_when_ready = None;
        let admin_addr = match address {
            Some(address) => {
                let inherited = options.handover.sockets.take(address);
                let upgrading = inherited.is_some();
                let socket = admin_listener(address, inherited)
                    .await
                    .map_err(|source| StartError::AdminBind { address, source })?;
                admin_socket = socket_copy(&socket).map(|copy| (address, copy));
                let bound = socket.local_addr().unwrap_or(address);
                tracing::info!(address = %bound, "admin server listening");
                let limits = admin::AdminLimits::from(&config.admin);
                let serving = admin::serve(socket, admin.clone(), limits, stop_admin.clone());
                if upgrading {
                    serve_admin_when_ready = Some(serving);
                } else {
                    tokio::spawn(serving);
                }
                Some(bound)
            }
            None => None,
        };
        let workers = match options.workers {
            Some(n) => Workers::spawn(n).map_err(StartError::Workers)?,
            None => Workers::current(),
        };
        let server = Arc::new(Server::start_with(
            &config,
            options.binder,
            workers,
            options.handover,
        )?);
        let control = Arc::new(Control::new(path.clone(), server.clone(), config));
        admin.set_server(server.clone());
        admin.set_control(control.clone());
        admin.ready.store(true, Ordering::Release);
        if let Some(serving) = serve_admin_when_ready {
            tokio::spawn(serving);
        }
        Ok(Process {
            server,
            control,
            admin,
            admin_addr,
            admin_socket,
            path,
            stop_admin,
        })
    }

    /// The listener file this process runs from.
    pub fn control_path(&self) -> &std::path::Path {
        &self.path
    }

    /// SIGHUP: applies the file if it is valid; otherwise keeps everything as it
    /// is. Logged and counted either way. Goes through the control API's lock, so a
    /// reload and an API change never interleave.
    pub async fn reload(&self) {
        match self.control.reload().await {
            Err(ReloadError::Invalid(diagnostics)) => {
                for line in diagnostics.lines() {
                    tracing::error!("{line}");
                }
                tracing::error!(
                    errors = diagnostics.errors.len(),
                    "reload refused: the running configuration is unchanged"
                );
                metrics::config_reload(false);
            }
            Err(ReloadError::Apply(e)) => {
                tracing::error!(error = %e, "reload refused: the running configuration is unchanged");
                metrics::config_reload(false);
            }
            Ok(config) => {
                tracing::info!(config = %self.path.display(), listeners = config.listeners.len(), "reloaded");
                metrics::config_reload(true);
            }
        }
    }

    /// SIGUSR1: reopens the access log file (after logrotate renamed it).
    pub fn reopen_access_log(&self) {
        self.server.reopen_access_log();
    }

    /// SIGTERM: not ready at once (`/healthz` says 503); the listeners keep
    /// accepting for `drain_delay`, or until `early` completes (SIGINT, a second
    /// SIGTERM), so a router watching `/healthz` takes the node out first; then
    /// the listening sockets close and open connections get up to
    /// `drain_timeout`; then the admin server stops. Returns how many connections
    /// were cut at the deadline.
    pub async fn drain(&self, early: impl Future<Output = ()>) -> usize {
        self.admin.ready.store(false, Ordering::Release);
        let delay = self.server.drain_delay();
        if !delay.is_zero() {
            tracing::info!(
                drain_delay_s = delay.as_secs(),
                "draining: /healthz says 503, listeners accept until the delay ends"
            );
            tokio::select! {
                () = tokio::time::sleep(delay) => {}
                () = early => tracing::info!("drain delay ended early by a signal"),
            }
        }
        tracing::info!("stopping: listening sockets closed, draining");
        let cut = self.server.drain().await;
        self.stop_admin.cancel();
        tracing::info!(closed_at_timeout = cut, "stopped");
        cut
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        self.stop_admin.cancel();
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;
    use std::time::Duration;

    async fn start(global: &str) -> (Process, std::path::PathBuf) {
        let dir = crate::testing::temp_dir("process");
        let path = dir.join("lb.toml");
        let text = format!(
            "[global]\n{global}\n[admin]\naddress = \"\"\n[[load_balancers]]\nid = \"lb\"\n\
             address = \"127.0.0.1\"\n[[load_balancers.backend_servers]]\nserver_id = \"b\"\n\
             ip = \"127.0.0.1\"\nport = 9\n[[listeners]]\nload_balancer_id = \"lb\"\n\
             listener_port = 80\nhealth_check_interval = 50\n"
        );
        std::fs::write(&path, &text).unwrap();
        let config = Config::load(&path).unwrap();
        let options = Options {
            binder: std::sync::Arc::new(|a: SocketAddr| listener::bind(SocketAddr::new(a.ip(), 0))),
            workers: None,
            admin: AdminBind::Off,
            metrics: false,
            handover: Handover::default(),
        };
        (Process::start(path, config, options).await.unwrap(), dir)
    }

    #[tokio::test(start_paused = true)]
    async fn drain_is_not_ready_at_once_accepts_through_the_delay_then_closes() {
        let (process, dir) = start("drain_delay = 5").await;
        assert!(process.admin.is_ready());
        let process = std::sync::Arc::new(process);
        let draining = tokio::spawn({
            let process = process.clone();
            async move { process.drain(std::future::pending()).await }
        });
        tokio::task::yield_now().await;
        assert!(!process.admin.is_ready(), "503 from the first moment");
        tokio::time::advance(Duration::from_millis(4_900)).await;
        assert_eq!(
            process.server.local_addrs().len(),
            1,
            "accepting in the delay"
        );
        tokio::time::advance(Duration::from_millis(200)).await;
        assert_eq!(draining.await.unwrap(), 0);
        assert!(process.server.local_addrs().is_empty(), "closed after it");
        let _ = std::fs::remove_dir_all(dir);
    }

    #[tokio::test(start_paused = true)]
    async fn a_signal_ends_the_delay_early_and_no_delay_closes_at_once() {
        let (process, dir) = start("drain_delay = 300").await;
        let (end, early) = tokio::sync::oneshot::channel::<()>();
        let process = std::sync::Arc::new(process);
        let draining = tokio::spawn({
            let process = process.clone();
            async move {
                process
                    .drain(async {
                        let _ = early.await;
                    })
                    .await
            }
        });
        tokio::time::advance(Duration::from_secs(10)).await;
        assert_eq!(process.server.local_addrs().len(), 1);
        end.send(()).unwrap();
        draining.await.unwrap();
        assert!(process.server.local_addrs().is_empty());
        let _ = std::fs::remove_dir_all(dir);

        let (process, dir) = start("").await;
        process.drain(std::future::pending()).await;
        assert!(process.server.local_addrs().is_empty(), "drain_delay = 0");
        let _ = std::fs::remove_dir_all(dir);
    }
}
