//! Health checks: every (listener, backend) probed on its own cadence.
//!
//! - [`hysteresis`]: the pure state machine that turns probe results into
//!   transitions (thresholds).
//! - [`probe`]: one TCP or HTTP probe, bounded by the effective timeout.
//! - [`task`]: the [`task::Sweep`] that runs every target's probes: cadence with a
//!   per-target phase, the hysteresis, and what a transition does (health in the
//!   [`BackendState`], metrics, one log line, a rebuild of the listener's view).
//! - [`Checks`] (here): the registry the server keeps in step with the config.
//!
//! The checks never run where connections are proxied. In the binary they run on
//! the main thread's current-thread runtime (connections are on the workers,
//! `crate::workers`). Embedded in a multi-thread runtime (an embedder's,
//! `examples/health_cost.rs`) they get a thread of their own, `edgelb-health`,
//! with a current-thread runtime: a probe then wakes one thread rather than waking
//! and stealing across the runtime's workers, and a burst of probes never queues
//! behind (or in front of) the data path. Under any other current-thread runtime
//! (tests, the paused clock) they run on that runtime.
//!
//! Decisions the spec leaves open:
//! - A stopped listener is not checked: it takes no connections. When it starts
//!   again its backends start *unknown* (eligible) and the first probe decides.
//! - Weight-0 backends are not probed: they take no new connections, so their
//!   health decides nothing, and a drained backend sees no probe traffic (tests
//!   that count a backend's connections stay exact). They show *unknown*; when the
//!   weight goes up they start unknown (eligible) and the first probe, at once,
//!   decides. A loop that stops leaves its backend unknown likewise.
//! - A reload keeps each remaining backend's health and streak; changed settings
//!   (thresholds, interval, timeout, probe kind, target) apply from the next probe.
//! - A binary upgrade hands each backend's health and streak to the new process
//!   (mirrored in [`BackendState`] after every probe): its checks carry on from
//!   them, with the first probe on the target's slot of the interval rather than at
//!   once (the health is known; an immediate probe would only double the rate).

pub mod hysteresis;
pub mod probe;
pub mod task;

use crate::config::{Backend, HealthCheckType, HttpCodes, Listener, ListenerKey};
use crate::state::{BackendState, ListenerState};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc;
use tokio_util::sync::DropGuard;

/// What a probe sends.
#[derive(Debug, Clone, PartialEq)]
pub enum Probe {
    /// A TCP handshake, then a reset.
    Tcp,
    Http(HttpCheck),
}

/// An HTTP probe: `HEAD {uri}` with `Host: {host}`.
#[derive(Debug, Clone, PartialEq)]
pub struct HttpCheck {
    pub uri: String,
    pub host: String,
    pub codes: HttpCodes,
    /// Send a PROXY v2 LOCAL header first (`eip_transmit = "on"`).
    pub proxy_header: bool,
}

/// Everything the checks of one target need, resolved from the listener and the backend.
#[derive(Debug, Clone, PartialEq)]
pub struct Target {
    pub addr: SocketAddr,
    pub probe: Probe,
    pub interval: Duration,
    /// The effective timeout: it bounds the whole probe (connect, request, response head).
    pub timeout: Duration,
    pub healthy_threshold: u8,
    pub unhealthy_threshold: u8,
}

impl Target {
    pub fn new(listener: &Listener, backend: &Backend) -> Target {
        let hc = &listener.health_check;
        let probe = match hc.kind {
            HealthCheckType::Tcp => Probe::Tcp,
            HealthCheckType::Http => Probe::Http(HttpCheck {
                // Validation requires a URI for http checks; "/" is only a fallback.
                uri: hc.uri.clone().unwrap_or_else(|| "/".to_string()),
                host: backend.health_check_host.clone(),
                codes: hc.http_codes,
                proxy_header: listener.spec.eip_transmit,
            }),
        };
        Target {
            addr: backend.health_check_addr,
            probe,
            interval: hc.interval,
            timeout: hc.timeout,
            healthy_threshold: hc.healthy_threshold,
            unhealthy_threshold: hc.unhealthy_threshold,
        }
    }
}

/// Descriptors the checks of `config` keep open between probes: one per
/// TCP-checked backend (weight > 0) of a running listener.
pub fn kept_sockets(config: &crate::config::Config) -> usize {
    config
        .listeners
        .iter()
        .filter(|l| l.is_running() && l.health_check.kind == HealthCheckType::Tcp)
        .map(|l| l.backends.iter().filter(|b| b.weight > 0).count())
        .sum()
}

/// A checked target: dropping it stops its checks.
struct Running {
    id: u64,
    target: Arc<Target>,
    sweep: mpsc::UnboundedSender<task::Command>,
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.sweep.send(task::Command::Remove { id: self.id });
    }
}

/// The checked targets of every running listener, kept in step with the config
/// by [`Checks::sync`] and [`Checks::stop`]. Dropping it stops every check (and
/// the health thread, after them: fields drop in order).
pub struct Checks {
    listeners: HashMap<ListenerKey, HashMap<Arc<str>, Running>>,
    sweep: mpsc::UnboundedSender<task::Command>,
    next_id: u64,
    _thread: Option<DropGuard>,
}

impl Checks {
    /// Must be called within a tokio runtime. The health thread cannot fail to
    /// start the server: without it (no descriptors for its epoll, say) the checks
    /// run on the caller's runtime, with a warning.
    pub fn start() -> Checks {
        use tokio::runtime::{Handle, RuntimeFlavor};
        let current = Handle::current();
        let (runtime, thread) = match current.runtime_flavor() {
            RuntimeFlavor::CurrentThread => (current, None),
            _ => match crate::workers::runtime_thread("edgelb-health") {
                Ok((handle, stop)) => (handle, Some(stop)),
                Err(error) => {
                    tracing::warn!(%error, "cannot start the health-check thread; checks share the workers");
                    (current, None)
                }
            },
        };
        let (sweep, commands) = mpsc::unbounded_channel();
        runtime.spawn(task::Sweep::new(commands).run());
        Checks {
            listeners: HashMap::new(),
            sweep,
            next_id: 0,
            _thread: thread,
        }
    }

    /// Brings the checks of one listener in line with its (new) config, after
    /// `state.update(listener)`: checks start for new backends, stop for removed
    /// ones (or all, when the listener is stopped), and get the new settings.
    pub fn sync(&mut self, state: &Arc<ListenerState>, listener: &Listener) {
        let key = listener.key();
        if !listener.is_running() {
            self.stop(&key);
            return;
        }
        let states: HashMap<Arc<str>, Arc<BackendState>> = state
            .backend_states()
            .into_iter()
            .map(|b| (b.server_id.clone(), b))
            .collect();
        let loops = self.listeners.entry(key).or_default();
        loops.retain(|id, _| {
            listener
                .backends
                .iter()
                .any(|b| &b.server_id == id && b.weight > 0)
        });
        for backend in listener.backends.iter().filter(|b| b.weight > 0) {
            let target = Target::new(listener, backend);
            if let Some(running) = loops.get_mut(&backend.server_id) {
                if *running.target != target {
                    running.target = Arc::new(target);
                    let _ = self.sweep.send(task::Command::Update {
                        id: running.id,
                        target: running.target.clone(),
                    });
                }
                continue;
            }
            let Some(backend_state) = states.get(&backend.server_id) else {
                // Not in the view: only if `state` was not updated with `listener`.
                continue;
            };
            self.next_id += 1;
            let target = Arc::new(target);
            let _ = self.sweep.send(task::Command::Add {
                id: self.next_id,
                listener: state.clone(),
                backend: backend_state.clone(),
                target: target.clone(),
            });
            loops.insert(
                backend.server_id.clone(),
                Running {
                    id: self.next_id,
                    target,
                    sweep: self.sweep.clone(),
                },
            );
        }
    }

    /// Stops the checks of a removed or stopped listener.
    pub fn stop(&mut self, key: &ListenerKey) {
        self.listeners.remove(key);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kept_sockets_counts_tcp_checked_backends_of_running_listeners() {
        let backends = |lb: &str| {
            format!(
                "[[load_balancers]]\nid = \"{lb}\"\n\
                 [[load_balancers.backend_servers]]\nserver_id = \"a\"\nip = \"10.0.0.1\"\nport = 80\n\
                 [[load_balancers.backend_servers]]\nserver_id = \"b\"\nip = \"10.0.0.2\"\nport = 80\n\
                 [[load_balancers.backend_servers]]\nserver_id = \"c\"\nip = \"10.0.0.3\"\nport = 80\nweight = 0\n"
            )
        };
        let text = format!(
            "{}{}{}\
             [[listeners]]\nload_balancer_id = \"tcp\"\nlistener_port = 80\n\
             [[listeners]]\nload_balancer_id = \"http\"\nlistener_port = 81\n\
             health_check_type = \"http\"\nhealth_check_uri = \"/health\"\n\
             [[listeners]]\nload_balancer_id = \"stopped\"\nlistener_port = 82\nstatus = \"stopped\"\n",
            backends("tcp"),
            backends("http"),
            backends("stopped")
        );
        let config = crate::config::Config::parse(&text, None).unwrap();
        // Two weighted backends of the one running TCP-checked listener.
        assert_eq!(kept_sockets(&config), 2);
    }
}
