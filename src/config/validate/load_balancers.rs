//! `[[load_balancers]]`, the backend-server parameters and the validator of one server.

use super::cross_checks::check_unique;
use super::{p, tables, PORTS};
use crate::config::error::{ConfigError, Span};
use crate::config::fields::{Fields, Param, Reader, TomlFields};
use crate::config::{defaults, rules, BackendServer, LoadBalancer};
use std::net::IpAddr;
use toml_edit::Table;

pub const BACKEND_SERVERS: Param = p("backend_servers", "BackendServers");
pub const SERVER_ID: Param = p("server_id", "ServerId");
pub const IP: Param = p("ip", "Ip");
pub const PORT: Param = p("port", "Port");
pub const WEIGHT: Param = p("weight", "Weight");

pub(super) fn load_balancer(table: &Table, errors: &mut Vec<ConfigError>) -> Option<LoadBalancer> {
    let fields = TomlFields(table);
    let mut r = Reader::new(&fields, errors);
    let id = r.required_string(&p("id", "LoadBalancerId"), rules::id);
    let address_param = p("address", "Address");
    let address = match r.string(&address_param, ip_rule) {
        None if r.has(&address_param) => None,
        None => defaults::LB_ADDRESS.parse::<IpAddr>().ok(),
        Some(s) => s.parse::<IpAddr>().ok(),
    };
    let servers_param = BACKEND_SERVERS;
    r.field(&servers_param);
    r.finish();
    let servers: Vec<(BackendServer, Span)> =
        tables(table, servers_param.key, servers_param.api, errors)
            .iter()
            .filter_map(|t| backend_server(t, errors).map(|b| (b, t.span())))
            .collect();
    let count = servers.len();
    check_unique(&servers, |b| b.server_id.clone(), "ServerId", errors);
    let backend_servers: Vec<BackendServer> = servers.into_iter().map(|(b, _)| b).collect();
    (backend_servers.len() == count).then_some(())?;
    Some(LoadBalancer {
        id: id?,
        address: address?,
        backend_servers,
    })
}

fn ip_rule(s: &str) -> Result<(), String> {
    s.parse::<IpAddr>()
        .map(|_| ())
        .map_err(|_| format!("{s:?} is not an IPv4 or IPv6 address"))
}

/// Validates one backend server (from the file or from an API call).
pub fn validate_backend_server<F: Fields>(r: &mut Reader<'_, '_, F>) -> Option<BackendServer> {
    let server_id = r.required_string(&SERVER_ID, rules::id);
    let ip = r.required_string(&IP, ip_rule);
    let port_param = PORT;
    let port = r.int(&port_param, PORTS);
    let port_ok = port.is_some() || !r.has(&port_param);
    let weight = r.int_or(&WEIGHT, 0..=100, defaults::WEIGHT);
    port_ok.then_some(())?;
    Some(BackendServer {
        server_id: server_id?,
        ip: ip?.parse().ok()?,
        port: port.and_then(|v| u16::try_from(v).ok()),
        weight: u32::try_from(weight?).ok()?,
    })
}

fn backend_server(table: &Table, errors: &mut Vec<ConfigError>) -> Option<BackendServer> {
    let fields = TomlFields(table);
    let mut r = Reader::new(&fields, errors);
    let server = validate_backend_server(&mut r);
    r.finish();
    server
}
