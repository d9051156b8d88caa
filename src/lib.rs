//! edgelb: a TCP (layer 4) load balancer whose listeners behave as the ENS
//! `CreateLoadBalancerTCPListener` API defines them.
//!
//! Layout:
//! - [`config`]: the listener file, parsed and validated into a [`config::Config`]
//!   with every API code and default.
pub mod config;
