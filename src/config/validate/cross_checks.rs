//! Checks between entries: unique ids, existing load balancers, no two listeners on a socket.

use super::listener::{LISTENER_PORT, LOAD_BALANCER_ID};
use crate::config::error::{Code, ConfigError, Span};
use crate::config::fields::{Fields, TomlFields};
use crate::config::{Listener, ListenerSpec, LoadBalancer};
use std::collections::HashSet;

/// Reports every later duplicate of an id, pointing at the duplicate.
pub(super) fn check_unique<T>(
    items: &[(T, Span)],
    id: impl Fn(&T) -> String,
    api: &'static str,
    errors: &mut Vec<ConfigError>,
) {
    let mut seen: HashSet<String> = HashSet::new();
    for (item, span) in items {
        let key = id(item);
        if !seen.insert(key.clone()) {
            let why = format!("{key:?} is declared twice");
            errors.push(ConfigError::invalid(api, why, span.clone()));
        }
    }
}

/// Cross-checks listeners against load balancers and each other, then resolves them.
pub(super) fn resolve_listeners(
    listeners: Vec<(ListenerSpec, TomlFields<'_>)>,
    lbs: &[(LoadBalancer, Span)],
    declared: &[&str],
    errors: &mut Vec<ConfigError>,
) -> Vec<Listener> {
    let mut out: Vec<Listener> = Vec::new();
    for (spec, fields) in listeners {
        let Some((lb, _)) = lbs.iter().find(|(lb, _)| lb.id == spec.load_balancer_id) else {
            if declared.contains(&spec.load_balancer_id.as_str()) {
                continue; // its load balancer is declared but has errors of its own
            }
            errors.push(ConfigError::load_balancer_not_found(
                &spec.load_balancer_id,
                fields.field(&LOAD_BALANCER_ID).and_then(|f| f.span),
            ));
            continue;
        };
        let listener = Listener::resolve(spec, lb);
        if let Some(other) = out.iter().find(|o| conflicts(o, &listener)) {
            let span = fields.field(&LISTENER_PORT).and_then(|f| f.span);
            let key = listener.key();
            errors.push(if other.key() == key {
                ConfigError::listener_exists(&key, span)
            } else {
                let message = format!(
                    "Port {} of {} ({}) overlaps the listener of {} ({})",
                    key.listener_port,
                    key.load_balancer_id,
                    listener.bind,
                    other.spec.load_balancer_id,
                    other.bind
                );
                ConfigError::new(Code::ListenerAlreadyExists, message, span)
            });
            continue;
        }
        out.push(listener);
    }
    out
}

/// Two listeners conflict when they are the same listener, or would bind overlapping
/// sockets (same port, same address or one of them the wildcard of that family).
fn conflicts(a: &Listener, b: &Listener) -> bool {
    if a.key() == b.key() {
        return true;
    }
    if a.bind.port() != b.bind.port() || a.bind.is_ipv4() != b.bind.is_ipv4() {
        return false;
    }
    a.bind.ip() == b.bind.ip() || a.bind.ip().is_unspecified() || b.bind.ip().is_unspecified()
}
