//! edgelb: a TCP (layer 4) load balancer whose listeners behave as the ENS
//! `CreateLoadBalancerTCPListener` API defines them.
//!
//! Layout:
//! - [`config`]: the listener file, parsed and validated into a [`config::Config`]
//!   with every API code and default.
//! - [`snapshot`]: the immutable per-listener view the data path reads (backends,
//!   selector, health) behind an `ArcSwap`.
//! - [`listener`]: listening sockets (socket2), the accept loop, the connection cap.
//! - [`proxy`]: one connection: persistence, connect with timeout and retries, the
//!   PROXY header.
//! - [`copy`]: bytes both ways with half-close, the idle timeout, batched counts and
//!   `splice(2)` for bulk transfers.
//! - [`scheduler`]: picking a backend (pure, no sockets).
//! - [`server`]: the running set of listeners: start, apply (reload), drain.
//! - [`admin`]: the admin server: `/metrics`, `/healthz`, `/status` (JSON) and `/`
//!   (the status page for people), read from the runtimes' counts.
//! - [`api`]: the control API (ENS OpenAPI actions, V3 signatures) on the admin server.
//! - [`demo`]: the built-in backends of `edgelb demo`.
//! - [`memory`]: heap memory given back after many connections close.
//! - [`metrics`]: metric names and the handles registered once.
//! - [`persistence`]: the client-IP affinity table (LVS persistence templates).
//! - [`health`]: the health checks of every (listener, backend), run by one sweep task.
//! - [`health_state`]: the health-check hysteresis (pure state machine).
//! - [`proxy_protocol`]: PROXY protocol v2 headers (`eip_transmit`).
pub mod admin;
pub mod api;
pub mod config;
pub mod copy;
pub mod demo;
pub mod health;
pub mod health_state;
pub mod listener;
pub mod memory;
pub mod metrics;
pub mod persistence;
pub mod proxy;
pub mod proxy_protocol;
pub mod scheduler;
pub mod server;
pub mod snapshot;
#[cfg(target_os = "linux")]
pub mod splice;
pub mod warn_every;
pub mod workers;
