//! The `[admin]` section: the control API's address, the admin server's time limits
//! and connection cap, and its `[[admin.access_keys]]`.

use super::cross_checks::check_unique;
use super::{p, tables};
use crate::config::error::{ConfigError, Span};
use crate::config::fields::{Fields, Param, Reader, TomlFields};
use crate::config::{defaults, rules, AccessKey, Admin};
use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;
use toml_edit::{Item, Table};

const ADMIN_ADDRESS: Param = p("address", "Address");
const ACCESS_KEYS: Param = p("access_keys", "AccessKeys");
const REQUEST_HEADER_TIMEOUT: Param = p("request_header_timeout", "RequestHeaderTimeout");
const REQUEST_BODY_TIMEOUT: Param = p("request_body_timeout", "RequestBodyTimeout");
/// Its own API name: the same key in `[global]` is the data path's `MaxConnections`.
const MAX_CONNECTIONS: Param = p("max_connections", "AdminMaxConnections");
/// Seconds, for both time limits.
const TIMEOUTS: std::ops::RangeInclusive<i64> = 1..=300;

pub(super) fn admin(
    table: &Table,
    base_dir: Option<&Path>,
    errors: &mut Vec<ConfigError>,
) -> Option<Admin> {
    let fields = TomlFields(table);
    let mut r = Reader::new(&fields, errors);
    let address = match r.string(&ADMIN_ADDRESS, parse_admin_address) {
        None if r.has(&ADMIN_ADDRESS) => None,
        None => Some(parse_admin_address_value(defaults::ADMIN_ADDRESS)),
        Some(s) => Some(parse_admin_address_value(&s)),
    };
    let header_timeout = r.int_or(
        &REQUEST_HEADER_TIMEOUT,
        TIMEOUTS,
        defaults::ADMIN_REQUEST_HEADER_TIMEOUT,
    );
    let body_timeout = r.int_or(
        &REQUEST_BODY_TIMEOUT,
        TIMEOUTS,
        defaults::ADMIN_REQUEST_BODY_TIMEOUT,
    );
    let max_connections = r.int_or(
        &MAX_CONNECTIONS,
        1..=65_536,
        defaults::ADMIN_MAX_CONNECTIONS,
    );
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
        request_header_timeout: Duration::from_secs(u64::try_from(header_timeout?).ok()?),
        request_body_timeout: Duration::from_secs(u64::try_from(body_timeout?).ok()?),
        max_connections: usize::try_from(max_connections?).ok()?,
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
    let why = match std::fs::read_to_string(&full) {
        Ok(s) if !s.trim().is_empty() => return Some(s.trim().to_string()),
        Ok(_) => format!("{} is empty", full.display()),
        Err(e) => format!("cannot read {}: {e}", full.display()),
    };
    errors.push(ConfigError::invalid(
        "AccessKeySecretFile",
        why,
        table.get("access_key_secret_file").and_then(Item::span),
    ));
    None
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
