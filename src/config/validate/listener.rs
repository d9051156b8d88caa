//! The listener parameters (file keys, API names) and the validator of one listener.

use super::{p, PORTS};
use crate::config::error::ConfigError;
use crate::config::fields::{Fields, Param, Reader};
use crate::config::{
    defaults, rules, HealthCheckType, HttpCodes, ListenerKey, ListenerSpec, Scheduler, Status,
};

pub const LOAD_BALANCER_ID: Param = p("load_balancer_id", "LoadBalancerId");
pub const LISTENER_PORT: Param = p("listener_port", "ListenerPort");
pub const DESCRIPTION: Param = p("description", "Description");
pub const SCHEDULER: Param = p("scheduler", "Scheduler");
pub const PERSISTENCE_TIMEOUT: Param = p("persistence_timeout", "PersistenceTimeout");
pub const ESTABLISHED_TIMEOUT: Param = p("established_timeout", "EstablishedTimeout");
pub const HEALTHY_THRESHOLD: Param = p("healthy_threshold", "HealthyThreshold");
pub const UNHEALTHY_THRESHOLD: Param = p("unhealthy_threshold", "UnhealthyThreshold");
pub const HC_CONNECT_TIMEOUT: Param =
    p("health_check_connect_timeout", "HealthCheckConnectTimeout");
pub const HC_INTERVAL: Param = p("health_check_interval", "HealthCheckInterval");
pub const HC_TYPE: Param = p("health_check_type", "HealthCheckType");
pub const HC_DOMAIN: Param = p("health_check_domain", "HealthCheckDomain");
pub const HC_URI: Param = p("health_check_uri", "HealthCheckURI");
pub const HC_HTTP_CODE: Param = p("health_check_http_code", "HealthCheckHttpCode");
pub const BACKEND_SERVER_PORT: Param = p("backend_server_port", "BackendServerPort");
pub const HC_CONNECT_PORT: Param = p("health_check_connect_port", "HealthCheckConnectPort");
pub const EIP_TRANSMIT: Param = p("eip_transmit", "EipTransmit");
pub const STATUS: Param = p("status", "Status");

/// Every listener parameter, in API order (the control API maps names with it).
pub const LISTENER_PARAMS: [Param; 18] = [
    LOAD_BALANCER_ID,
    LISTENER_PORT,
    DESCRIPTION,
    SCHEDULER,
    PERSISTENCE_TIMEOUT,
    ESTABLISHED_TIMEOUT,
    HEALTHY_THRESHOLD,
    UNHEALTHY_THRESHOLD,
    HC_CONNECT_TIMEOUT,
    HC_INTERVAL,
    HC_TYPE,
    HC_DOMAIN,
    HC_URI,
    HC_HTTP_CODE,
    BACKEND_SERVER_PORT,
    HC_CONNECT_PORT,
    EIP_TRANSMIT,
    STATUS,
];

/// Validates what names a listener: `LoadBalancerId` and `ListenerPort`, both required
/// (the first two parameters of every listener, in the file and in API calls).
pub fn validate_listener_key<F: Fields>(r: &mut Reader<'_, '_, F>) -> Option<ListenerKey> {
    let load_balancer_id = r.required_string(&LOAD_BALANCER_ID, rules::id);
    let listener_port = r.required_int(&LISTENER_PORT, PORTS);
    Some(ListenerKey::new(
        &load_balancer_id?,
        u16::try_from(listener_port?).ok()?,
    ))
}

/// Validates one listener's parameters (from the file or from an API call).
/// `None` when any is wrong; the errors are in `r`.
pub fn validate_listener_spec<F: Fields>(r: &mut Reader<'_, '_, F>) -> Option<ListenerSpec> {
    use defaults as d;
    let key = validate_listener_key(r);
    let description = r.string(&DESCRIPTION, rules::description);
    let description_ok = description.is_some() || !r.has(&DESCRIPTION);
    let scheduler = r.choice(&SCHEDULER, &Scheduler::ALL, d::SCHEDULER);
    let persistence_timeout = r.int_or(&PERSISTENCE_TIMEOUT, 0..=3600, d::PERSISTENCE_TIMEOUT);
    let established_timeout = r.int_or(&ESTABLISHED_TIMEOUT, 10..=900, d::ESTABLISHED_TIMEOUT);
    let healthy = r.int_or(&HEALTHY_THRESHOLD, 2..=10, d::HEALTHY_THRESHOLD);
    let unhealthy = r.int_or(&UNHEALTHY_THRESHOLD, 2..=10, d::UNHEALTHY_THRESHOLD);
    let hc_timeout = r.int_or(
        &HC_CONNECT_TIMEOUT,
        1..=300,
        d::HEALTH_CHECK_CONNECT_TIMEOUT,
    );
    let hc_interval = r.int_or(&HC_INTERVAL, 1..=50, d::HEALTH_CHECK_INTERVAL);
    let hc_types = [
        ("tcp", HealthCheckType::Tcp),
        ("http", HealthCheckType::Http),
    ];
    let hc_type = r.choice(&HC_TYPE, &hc_types, HealthCheckType::Tcp);
    let domain = r.string(&HC_DOMAIN, rules::health_check_domain);
    let domain_ok = domain.is_some() || !r.has(&HC_DOMAIN);
    let uri = r.string(&HC_URI, rules::health_check_uri);
    let uri_ok = uri.is_some() || !r.has(&HC_URI);
    if hc_type == Some(HealthCheckType::Http) && !r.has(&HC_URI) {
        r.error(ConfigError::missing(HC_URI.api, r.span()));
    }
    let http_code = match r.field(&HC_HTTP_CODE) {
        None => Some(HttpCodes::DEFAULT),
        Some(_) => r
            .string(&HC_HTTP_CODE, |s| rules::http_codes(s).map(|_| ()))
            .and_then(|s| rules::http_codes(&s).ok()),
    };
    let backend_port = r.int(&BACKEND_SERVER_PORT, PORTS);
    let backend_port_ok = backend_port.is_some() || !r.has(&BACKEND_SERVER_PORT);
    let hc_port = r.int(&HC_CONNECT_PORT, PORTS);
    let hc_port_ok = hc_port.is_some() || !r.has(&HC_CONNECT_PORT);
    let eip = r.choice(&EIP_TRANSMIT, &[("on", true), ("off", false)], false);
    let status_choices = [("running", Status::Running), ("stopped", Status::Stopped)];
    let status = r.choice(&STATUS, &status_choices, Status::Running);
    if !(description_ok && domain_ok && uri_ok && backend_port_ok && hc_port_ok) {
        return None;
    }
    let narrow = |v: i64| u32::try_from(v).ok();
    let key = key?;
    Some(ListenerSpec {
        load_balancer_id: key.load_balancer_id,
        listener_port: key.listener_port,
        description,
        scheduler: scheduler?,
        persistence_timeout: narrow(persistence_timeout?)?,
        established_timeout: narrow(established_timeout?)?,
        healthy_threshold: u8::try_from(healthy?).ok()?,
        unhealthy_threshold: u8::try_from(unhealthy?).ok()?,
        health_check_connect_timeout: narrow(hc_timeout?)?,
        health_check_interval: narrow(hc_interval?)?,
        health_check_type: hc_type?,
        health_check_domain: domain,
        health_check_uri: uri,
        health_check_http_code: http_code?,
        backend_server_port: backend_port.and_then(|v| u16::try_from(v).ok()),
        health_check_connect_port: hc_port.and_then(|v| u16::try_from(v).ok()),
        eip_transmit: eip?,
        status: status?,
    })
}
