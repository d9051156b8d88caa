//! edgelb: a TCP (layer 4) load balancer whose listeners behave as the ENS
//! `CreateLoadBalancerTCPListener` API defines them.
//!
//! Layout, lowest layer first; a module imports only modules above it in this list
//! (`tests/layers.rs` checks it):
//! - [`config`]: the listener file, parsed and validated into a [`config::Config`]
//!   with every API code and default; the shared words ([`config::ListenerKey`],
//!   [`config::Scheduler`]).
//! - [`warn_every`]: warnings rate-limited to one per period.
//! - [`systemd`]: the `sd_notify` messages (`READY=1`, `MAINPID=`, reloads).
//! - [`proxy_protocol`]: PROXY protocol v2 headers (`eip_transmit`).
//! - [`splice`]: `splice(2)` through a pipe, for bulk transfers (Linux).
//! - [`accept`]: taking connections off a listening socket, with the back-off on
//!   errors such as EMFILE (listeners and the admin server).
//! - [`workers`]: threads each running a current-thread runtime (thread per core).
//! - [`scheduler`]: picking a backend (pure, no sockets).
//! - [`persistence`]: the client-IP affinity table (LVS persistence templates).
//! - [`limit`]: the process-wide connection cap (`max_connections`) and its permits.
//! - [`metrics`]: metric names and the handles registered once.
//! - [`access_log`]: one line per client connection when it ends, through a bounded
//!   queue to one writer thread (text or JSON, reopened on SIGUSR1).
//! - [`memory`]: heap memory given back after many connections close.
//! - [`state`]: what the process knows of each listener and backend: health, counts,
//!   and the immutable view the data path reads behind an `ArcSwap`.
//! - [`copy`]: bytes both ways with half-close, the idle timeout, the drain's cut
//!   and batched counts; how the connection ended.
//! - [`proxy`]: one connection: persistence, connect with timeout and retries, the
//!   PROXY header, then [`copy`].
//! - [`listener`]: listening sockets (socket2) and the accept loop.
//! - [`health`]: the health checks of every (listener, backend): hysteresis, probes,
//!   and the sweep task that runs them.
//! - [`server`]: the running set of listeners: start, apply (reload), drain.
//! - [`api`]: the control API (ENS OpenAPI actions, V3 signatures).
//! - [`admin`]: the admin server: `/metrics`, `/healthz`, `/status` (JSON), `/` (the
//!   status page for people), and the control API's route.
//! - [`process`]: the process put together (recorder, admin server, workers,
//!   listeners, control API, ready flag): what the binary, tests and benches start.
//! - [`upgrade`]: the binary upgrade (SIGUSR2): the old process starts the new
//!   binary and hands it every listening socket and the listeners' state over a
//!   unix socket; the new one takes them and reports when it serves.
//! - [`demo`]: the built-in backends of `edgelb demo`.
pub mod accept;
pub mod access_log;
pub mod admin;
pub mod api;
pub mod config;
pub mod copy;
pub mod demo;
pub mod health;
pub mod limit;
pub mod listener;
pub mod memory;
pub mod metrics;
pub mod persistence;
pub mod process;
pub mod proxy;
pub mod proxy_protocol;
pub mod scheduler;
pub mod server;
#[cfg(target_os = "linux")]
pub mod splice;
pub mod state;
pub mod systemd;
#[cfg(test)]
mod testing;
pub mod upgrade;
pub mod warn_every;
pub mod workers;
