//! Validation of the listener file: the root and `[global]` here, other sections in submodules.
//!
//! Every error is collected (nothing stops at the first), then the cross-checks run.

mod admin;
mod cross_checks;
mod listener;
mod load_balancers;

pub use listener::{
    validate_listener_key, validate_listener_spec, DESCRIPTION, LISTENER_PARAMS, LISTENER_PORT,
    LOAD_BALANCER_ID,
};
pub use load_balancers::{validate_backend_server, BACKEND_SERVERS, IP, PORT, SERVER_ID, WEIGHT};

use super::error::{Code, ConfigError, Span};
use super::fields::{Param, Reader, TomlFields};
use super::{defaults, AccessLogFormat, AccessLogTarget, Config, Global, LoadBalancer};
use cross_checks::{check_unique, resolve_listeners};
use std::path::Path;
use toml_edit::{Item, Table};

/// A parameter by its file key and API name.
const fn p(key: &'static str, api: &'static str) -> Param {
    Param { key, api }
}

/// The range of every port parameter.
const PORTS: std::ops::RangeInclusive<i64> = 1..=65535;

/// Top-level sections.
const ROOT_KEYS: [&str; 4] = ["global", "admin", "load_balancers", "listeners"];

/// Parses `src` and validates every section; `base_dir` resolves secret-file paths.
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
    let global = global_table
        .as_ref()
        .and_then(|t| global(t, base_dir, &mut errors));
    let admin_table = section(root, "admin", "Admin", &mut errors);
    let admin = admin_table
        .as_ref()
        .and_then(|t| admin::admin(t, base_dir, &mut errors));
    let lb_tables = tables(root, "load_balancers", "LoadBalancers", &mut errors);
    // Ids of every declared load balancer, valid or not, so a listener of a load
    // balancer with a mistake of its own is not also reported as LoadBalancerNotFound.
    let declared: Vec<&str> = lb_tables
        .iter()
        .filter_map(|t| t.get("id").and_then(Item::as_str))
        .collect();
    let lbs: Vec<(LoadBalancer, Span)> = lb_tables
        .iter()
        .filter_map(|t| load_balancers::load_balancer(t, &mut errors).map(|lb| (lb, t.span())))
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
pub(super) fn tables(
    root: &Table,
    key: &str,
    api: &'static str,
    errors: &mut Vec<ConfigError>,
) -> Vec<Table> {
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

/// `[global]`, with its defaults.
fn global(table: &Table, base_dir: Option<&Path>, errors: &mut Vec<ConfigError>) -> Option<Global> {
    use defaults as d;
    let fields = TomlFields(table);
    let mut r = Reader::new(&fields, errors);
    let seed = match r.string(&p("hash_seed", "HashSeed"), |_| Ok(())) {
        None if r.has(&p("hash_seed", "HashSeed")) => None,
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
    let delay = r.int_or(&p("drain_delay", "DrainDelay"), 0..=300, d::DRAIN_DELAY);
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
    let access_log = access_log(&mut r, base_dir);
    let access_log_format = r.choice(
        &p("access_log_format", "AccessLogFormat"),
        &[
            ("text", AccessLogFormat::Text),
            ("json", AccessLogFormat::Json),
        ],
        AccessLogFormat::Text,
    );
    r.finish();
    Some(Global {
        hash_seed: seed?,
        backend_connect_timeout: std::time::Duration::from_millis(u64::try_from(timeout?).ok()?),
        connect_retries: u32::try_from(retries?).ok()?,
        drain_timeout: std::time::Duration::from_secs(u64::try_from(drain?).ok()?),
        drain_delay: std::time::Duration::from_secs(u64::try_from(delay?).ok()?),
        persistence_max_entries: usize::try_from(max_entries?).ok()?,
        max_connections: usize::try_from(max_conns?).ok()?,
        access_log: access_log?,
        access_log_format: access_log_format?,
    })
}

/// `access_log`: `""`, `"stderr"` or a file path whose directory exists (checked
/// here, so `check` reports it with its location; the file itself is opened at start).
fn access_log(
    r: &mut Reader<'_, '_, TomlFields<'_>>,
    base_dir: Option<&Path>,
) -> Option<AccessLogTarget> {
    let param = p("access_log", "AccessLog");
    if !r.has(&param) {
        r.field(&param);
        return Some(AccessLogTarget::Off);
    }
    let value = r.string(&param, |s| {
        if s.is_empty() || s == "stderr" {
            return Ok(());
        }
        let path = resolve(base_dir, s);
        if path.is_dir() {
            return Err(format!("{s:?} is a directory"));
        }
        match path.parent() {
            Some(dir) if dir.as_os_str().is_empty() || dir.is_dir() => Ok(()),
            Some(dir) => Err(format!("directory {} does not exist", dir.display())),
            None => Err(format!("{s:?} is not a file path")),
        }
    })?;
    Some(match value.as_str() {
        "" => AccessLogTarget::Off,
        "stderr" => AccessLogTarget::Stderr,
        path => AccessLogTarget::File(resolve(base_dir, path)),
    })
}

/// `path` as given when absolute, else under the listener file's directory.
pub(super) fn resolve(base_dir: Option<&Path>, path: &str) -> std::path::PathBuf {
    match base_dir {
        Some(dir) if !Path::new(path).is_absolute() => dir.join(path),
        _ => std::path::PathBuf::from(path),
    }
}
