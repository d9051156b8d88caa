//! The validation passes: each section of the file, then the cross-checks between
//! them. Every error is collected; nothing stops at the first.

use super::error::{Code, ConfigError, Span};
use super::fields::{Fields, Param, Reader, TomlFields};
use super::{
    defaults, rules, AccessKey, Admin, BackendServer, Config, Global, HealthCheckType, HttpCodes,
    Listener, ListenerSpec, LoadBalancer, Scheduler, Status,
};
use std::collections::HashSet;
use std::net::{IpAddr, SocketAddr};
use std::path::Path;
use toml_edit::{Item, Table};

const fn p(key: &'static str, api: &'static str) -> Param {
    Param { key, api }
}

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
pub const BACKEND_SERVERS: Param = p("backend_servers", "BackendServers");
pub const SERVER_ID: Param = p("server_id", "ServerId");
pub const IP: Param = p("ip", "Ip");
pub const PORT: Param = p("port", "Port");
pub const WEIGHT: Param = p("weight", "Weight");

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

const PORTS: std::ops::RangeInclusive<i64> = 1..=65535;

/// Validates one listener's parameters (from the file or from an API call).
/// `None` when any is wrong; the errors are in `r`.
pub fn validate_listener_spec<F: Fields>(r: &mut Reader<'_, '_, F>) -> Option<ListenerSpec> {
    use defaults as d;
    let load_balancer_id = r.required_string(&LOAD_BALANCER_ID, rules::id);
    let listener_port = if has(r, &LISTENER_PORT) {
        r.int(&LISTENER_PORT, PORTS)
    } else {
        r.field(&LISTENER_PORT);
        r.error(ConfigError::missing(LISTENER_PORT.api, r.span()));
        None
    };
    let description = r.string(&DESCRIPTION, rules::description);
    let description_ok = description.is_some() || !has(r, &DESCRIPTION);
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
    let domain_ok = domain.is_some() || !has(r, &HC_DOMAIN);
    let uri = r.string(&HC_URI, rules::health_check_uri);
    let uri_ok = uri.is_some() || !has(r, &HC_URI);
    if hc_type == Some(HealthCheckType::Http) && !has(r, &HC_URI) {
        r.error(ConfigError::missing(HC_URI.api, r.span()));
    }
    let http_code = match r.field(&HC_HTTP_CODE) {
        None => Some(HttpCodes::DEFAULT),
        Some(_) => r
            .string(&HC_HTTP_CODE, |s| rules::http_codes(s).map(|_| ()))
            .and_then(|s| rules::http_codes(&s).ok()),
    };
    let backend_port = r.int(&BACKEND_SERVER_PORT, PORTS);
    let backend_port_ok = backend_port.is_some() || !has(r, &BACKEND_SERVER_PORT);
    let hc_port = r.int(&HC_CONNECT_PORT, PORTS);
    let hc_port_ok = hc_port.is_some() || !has(r, &HC_CONNECT_PORT);
    let eip = r.choice(&EIP_TRANSMIT, &[("on", true), ("off", false)], false);
    let status_choices = [("running", Status::Running), ("stopped", Status::Stopped)];
    let status = r.choice(&STATUS, &status_choices, Status::Running);
    if !(description_ok && domain_ok && uri_ok && backend_port_ok && hc_port_ok) {
        return None;
    }
    let narrow = |v: i64| u32::try_from(v).ok();
    Some(ListenerSpec {
        load_balancer_id: load_balancer_id?,
        listener_port: u16::try_from(listener_port?).ok()?,
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

/// Whether the parameter is present at all (absent optional parameters are fine).
fn has<F: Fields>(r: &Reader<'_, '_, F>, param: &Param) -> bool {
    r.has(param)
}

/// Top-level sections.
const ROOT_KEYS: [&str; 4] = ["global", "admin", "load_balancers", "listeners"];

pub(super) fn config(src: &str, base_dir: Option<&Path>) -> Result<Config, Vec<ConfigError>> {
    let doc = match toml_edit::Document::parse(src) {
        Ok(doc) => doc,
        Err(e) => {
            let message = format!("not a valid TOML file: {}", e.message().trim());
            return Err(vec![ConfigError::new(Code::Syntax, message, e.span())]);
        }
    };
    let root = doc.as_table();
    let mut errors = Vec::new();
    for (key, _) in root.iter() {
        if !ROOT_KEYS.contains(&key) {
            let span = root.key(key).and_then(|k| k.span());
            let message = format!("The parameter {key} is not recognized");
            errors.push(ConfigError::new(
                Code::UnknownParameter(key.into()),
                message,
                span,
            ));
        }
    }
    let global_table = section(root, "global", "Global", &mut errors);
    let global = global_table.as_ref().and_then(|t| global(t, &mut errors));
    let admin_table = section(root, "admin", "Admin", &mut errors);
    let admin = admin_table
        .as_ref()
        .and_then(|t| admin(t, base_dir, &mut errors));
    let lb_tables = tables(root, "load_balancers", "LoadBalancers", &mut errors);
    // Ids of every declared load balancer, valid or not, so a listener of a load
    // balancer with a mistake of its own is not also reported as LoadBalancerNotFound.
    let declared: Vec<&str> = lb_tables
        .iter()
        .filter_map(|t| t.get("id").and_then(Item::as_str))
        .collect();
    let lbs: Vec<(LoadBalancer, Span)> = lb_tables
        .iter()
        .filter_map(|t| load_balancer(t, &mut errors).map(|lb| (lb, t.span())))
        .collect();
    check_unique(&lbs, |lb| lb.id.clone(), "LoadBalancerId", &mut errors);
    let listener_tables = tables(root, "listeners", "Listeners", &mut errors);
    let mut listeners = Vec::new();
    for table in &listener_tables {
        let fields = TomlFields(table);
        let mut r = Reader::new(&fields, &mut errors);
        let spec = validate_listener_spec(&mut r);
        r.finish();
        if let Some(spec) = spec {
            listeners.push((spec, fields));
        }
    }
    let listeners = resolve_listeners(listeners, &lbs, &declared, &mut errors);
    match (global, admin, errors.is_empty()) {
        (Some(global), Some(admin), true) => Ok(Config {
            global,
            admin,
            load_balancers: lbs.into_iter().map(|(lb, _)| lb).collect(),
            listeners,
        }),
        _ => {
            errors.sort_by_key(|e| e.span.as_ref().map_or(0, |s| s.start));
            Err(errors)
        }
    }
}

/// An optional `[section]` (absent = empty table).
fn section(
    root: &Table,
    key: &str,
    api: &'static str,
    errors: &mut Vec<ConfigError>,
) -> Option<Table> {
    match root.get(key) {
        None => Some(Table::new()),
        Some(item) => match item.clone().into_table() {
            Ok(table) => Some(table),
            Err(item) => {
                let why = format!("expected a table, found {}", item.type_name());
                errors.push(ConfigError::invalid(api, why, item.span()));
                None
            }
        },
    }
}

/// An optional `[[array]]` of tables (absent = none).
fn tables(root: &Table, key: &str, api: &'static str, errors: &mut Vec<ConfigError>) -> Vec<Table> {
    match root.get(key) {
        None => Vec::new(),
        Some(item) => {
            let span = item.span();
            match item.clone().into_array_of_tables() {
                Ok(array) => array.into_iter().collect(),
                Err(item) => {
                    let why = format!("expected an array of tables, found {}", item.type_name());
                    errors.push(ConfigError::invalid(api, why, span.or(item.span())));
                    Vec::new()
                }
            }
        }
    }
}

fn global(table: &Table, errors: &mut Vec<ConfigError>) -> Option<Global> {
    use defaults as d;
    let fields = TomlFields(table);
    let mut r = Reader::new(&fields, errors);
    let seed = match r.string(&p("hash_seed", "HashSeed"), |_| Ok(())) {
        None if has(&r, &p("hash_seed", "HashSeed")) => None,
        seed => Some(seed.unwrap_or_else(|| d::HASH_SEED.to_string())),
    };
    let timeout = r.int_or(
        &p("backend_connect_timeout_ms", "BackendConnectTimeoutMs"),
        1..=300_000,
        d::BACKEND_CONNECT_TIMEOUT_MS,
    );
    let retries = r.int_or(
        &p("connect_retries", "ConnectRetries"),
        0..=16,
        d::CONNECT_RETRIES,
    );
    let drain = r.int_or(
        &p("drain_timeout", "DrainTimeout"),
        0..=3600,
        d::DRAIN_TIMEOUT,
    );
    let max_entries = r.int_or(
        &p("persistence_max_entries", "PersistenceMaxEntries"),
        1..=1 << 26,
        d::PERSISTENCE_MAX_ENTRIES,
    );
    let max_conns = r.int_or(
        &p("max_connections", "MaxConnections"),
        0..=10_000_000,
        d::MAX_CONNECTIONS,
    );
    r.finish();
    Some(Global {
        hash_seed: seed?,
        backend_connect_timeout: std::time::Duration::from_millis(u64::try_from(timeout?).ok()?),
        connect_retries: u32::try_from(retries?).ok()?,
        drain_timeout: std::time::Duration::from_secs(u64::try_from(drain?).ok()?),
        persistence_max_entries: usize::try_from(max_entries?).ok()?,
        max_connections: usize::try_from(max_conns?).ok()?,
    })
}

const ADMIN_ADDRESS: Param = p("address", "Address");
const ACCESS_KEYS: Param = p("access_keys", "AccessKeys");

fn admin(table: &Table, base_dir: Option<&Path>, errors: &mut Vec<ConfigError>) -> Option<Admin> {
    let fields = TomlFields(table);
    let mut r = Reader::new(&fields, errors);
    let address = match r.string(&ADMIN_ADDRESS, parse_admin_address) {
        None if has(&r, &ADMIN_ADDRESS) => None,
        None => Some(parse_admin_address_value(defaults::ADMIN_ADDRESS)),
        Some(s) => Some(parse_admin_address_value(&s)),
    };
    r.field(&ACCESS_KEYS);
    r.finish();
    let key_tables = tables(table, "access_keys", ACCESS_KEYS.api, errors);
    let keys: Vec<(AccessKey, Span)> = key_tables
        .iter()
        .filter_map(|t| access_key(t, base_dir, errors).map(|k| (k, t.span())))
        .collect();
    check_unique(&keys, |k| k.access_key_id.clone(), "AccessKeyId", errors);
    let address = address?;
    if let Some(addr) = address {
        if keys.is_empty() && key_tables.is_empty() && !addr.ip().is_loopback() {
            let why = format!("{addr} is not a loopback address, and no [[admin.access_keys]] are configured: the control API would be open to the network");
            errors.push(ConfigError::invalid(
                ADMIN_ADDRESS.api,
                why,
                fields.field(&ADMIN_ADDRESS).and_then(|f| f.span),
            ));
        }
    }
    Some(Admin {
        address,
        access_keys: keys.into_iter().map(|(k, _)| k).collect(),
    })
}

fn parse_admin_address(s: &str) -> Result<(), String> {
    if s.is_empty() {
        return Ok(());
    }
    s.parse::<SocketAddr>()
        .map(|_| ())
        .map_err(|_| format!("{s:?} is not an IP:port address (or \"\" to disable)"))
}

fn parse_admin_address_value(s: &str) -> Option<SocketAddr> {
    s.parse().ok()
}

fn access_key(
    table: &Table,
    base_dir: Option<&Path>,
    errors: &mut Vec<ConfigError>,
) -> Option<AccessKey> {
    let fields = TomlFields(table);
    let mut r = Reader::new(&fields, errors);
    let id = r.required_string(&p("access_key_id", "AccessKeyId"), rules::id);
    let secret_param = p("access_key_secret", "AccessKeySecret");
    let file_param = p("access_key_secret_file", "AccessKeySecretFile");
    let inline = r.string(&secret_param, |s| {
        if s.is_empty() {
            Err("must not be empty".into())
        } else {
            Ok(())
        }
    });
    let file = r.string(&file_param, |_| Ok(()));
    let actions_param = p("actions", "Actions");
    let actions_field = r.field(&actions_param);
    let span = r.span();
    r.finish();
    let secret = match (
        inline,
        file,
        has_key(table, secret_param.key),
        has_key(table, file_param.key),
    ) {
        (_, _, true, true) => {
            let why = "give access_key_secret or access_key_secret_file, not both";
            errors.push(ConfigError::invalid(
                secret_param.api,
                why,
                table.get(file_param.key).and_then(Item::span),
            ));
            None
        }
        (Some(s), None, _, _) => Some(s),
        (None, Some(path), _, _) => read_secret(&path, base_dir, table, errors),
        (None, None, false, false) => {
            errors.push(ConfigError::missing(secret_param.api, span.clone()));
            None
        }
        _ => None,
    };
    let actions = match actions_field {
        None => {
            errors.push(ConfigError::missing(actions_param.api, span));
            None
        }
        Some(field) => actions(table.get(actions_param.key), field.span, errors),
    };
    Some(AccessKey {
        access_key_id: id?,
        secret: secret?,
        actions: actions?,
    })
}

fn has_key(table: &Table, key: &str) -> bool {
    table.get(key).is_some()
}

fn read_secret(
    path: &str,
    base_dir: Option<&Path>,
    table: &Table,
    errors: &mut Vec<ConfigError>,
) -> Option<String> {
    let full = match base_dir {
        Some(dir) if Path::new(path).is_relative() => dir.join(path),
        _ => Path::new(path).to_path_buf(),
    };
    match std::fs::read_to_string(&full) {
        Ok(s) if !s.trim().is_empty() => Some(s.trim().to_string()),
        Ok(_) => {
            let why = format!("{} is empty", full.display());
            errors.push(ConfigError::invalid(
                "AccessKeySecretFile",
                why,
                table.get("access_key_secret_file").and_then(Item::span),
            ));
            None
        }
        Err(e) => {
            let why = format!("cannot read {}: {e}", full.display());
            errors.push(ConfigError::invalid(
                "AccessKeySecretFile",
                why,
                table.get("access_key_secret_file").and_then(Item::span),
            ));
            None
        }
    }
}

/// `actions = ["ens:*", "ens:Describe*"]`.
fn actions(item: Option<&Item>, span: Span, errors: &mut Vec<ConfigError>) -> Option<Vec<String>> {
    let Some(array) = item.and_then(Item::as_array) else {
        errors.push(ConfigError::invalid(
            "Actions",
            "expected an array of strings such as [\"ens:*\"]",
            span,
        ));
        return None;
    };
    let mut out = Vec::new();
    let mut ok = true;
    for value in array.iter() {
        let valid = value.as_str().filter(|s| {
            s.strip_prefix("ens:").is_some_and(|a| {
                !a.is_empty() && a.chars().all(|c| c.is_ascii_alphanumeric() || c == '*')
            })
        });
        match valid {
            Some(s) => out.push(s.to_string()),
            None => {
                ok = false;
                let why = format!(
                    "{value} is not an action pattern such as \"ens:*\" or \"ens:Describe*\"",
                    value = value.to_string().trim()
                );
                errors.push(ConfigError::invalid("Actions", why, value.span()));
            }
        }
    }
    ok.then_some(out)
}

fn load_balancer(table: &Table, errors: &mut Vec<ConfigError>) -> Option<LoadBalancer> {
    let fields = TomlFields(table);
    let mut r = Reader::new(&fields, errors);
    let id = r.required_string(&p("id", "LoadBalancerId"), rules::id);
    let address_param = p("address", "Address");
    let address = match r.string(&address_param, ip_rule) {
        None if has(&r, &address_param) => None,
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
    let port_ok = port.is_some() || !has(r, &port_param);
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

/// Reports every later duplicate of an id, pointing at the duplicate.
fn check_unique<T>(
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
fn resolve_listeners(
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
            let message = format!(
                "The specified load balancer {:?} does not exist",
                spec.load_balancer_id
            );
            errors.push(ConfigError::new(
                Code::LoadBalancerNotFound,
                message,
                fields.field(&LOAD_BALANCER_ID).and_then(|f| f.span),
            ));
            continue;
        };
        let listener = Listener::resolve(spec, lb);
        if let Some(other) = out.iter().find(|o| conflicts(o, &listener)) {
            let message = if other.key() == listener.key() {
                format!(
                    "A listener on port {} of {} already exists",
                    listener.spec.listener_port, listener.spec.load_balancer_id
                )
            } else {
                format!(
                    "Port {} of {} ({}) overlaps the listener of {} ({})",
                    listener.spec.listener_port,
                    listener.spec.load_balancer_id,
                    listener.bind,
                    other.spec.load_balancer_id,
                    other.bind
                )
            };
            errors.push(ConfigError::new(
                Code::ListenerAlreadyExists,
                message,
                fields.field(&LISTENER_PORT).and_then(|f| f.span),
            ));
            continue;
        }
        out.push(listener);
    }
    out
}

/// Two listeners conflict when they are the same listener, or would bind overlapping
/// sockets (same port, same address or one of them the wildcard of that family).
pub fn conflicts(a: &Listener, b: &Listener) -> bool {
    if a.key() == b.key() {
        return true;
    }
    if a.bind.port() != b.bind.port() || a.bind.is_ipv4() != b.bind.is_ipv4() {
        return false;
    }
    a.bind.ip() == b.bind.ip() || a.bind.ip().is_unspecified() || b.bind.ip().is_unspecified()
}
