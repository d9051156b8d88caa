//! The backend-server actions: Add, Remove and Set on one load balancer's servers.
//!
//! Each edits `[[load_balancers.backend_servers]]` and answers with the load balancer's
//! backend servers after the change.

use super::describe::servers_json;
use super::edit::{self, tables_mut};
use super::params::{self, read, toml_value, JsonFields, Params};
use super::{ApiError, Control};
use crate::config::{
    rules, validate_backend_server, BackendServer, ConfigError, Param, Reader, BACKEND_SERVERS, IP,
    LOAD_BALANCER_ID, PORT, SERVER_ID, WEIGHT,
};
use serde_json::{json, Value as Json};
use toml_edit::{ArrayOfTables, Item, Table};

/// A JSON value as the file would hold it (typing text numbers of integer fields).
fn json_to_toml(api: &str, value: &Json) -> toml_edit::Value {
    match value {
        Json::Number(n) => n.as_i64().map_or_else(|| n.to_string().into(), Into::into),
        Json::String(s) => toml_value(api, s),
        Json::Bool(b) => (*b).into(),
        other => other.to_string().into(),
    }
}

/// Reads each element of `BackendServers` with `f`; unknown keys are errors.
fn each_server<T>(
    list: &[serde_json::Map<String, Json>],
    f: impl Fn(&serde_json::Map<String, Json>, &mut Reader<'_, '_, JsonFields<'_>>) -> Option<T>,
) -> Result<Vec<T>, ApiError> {
    list.iter()
        .map(|object| {
            let fields = JsonFields(object);
            let mut errors = Vec::new();
            let mut r = Reader::new(&fields, &mut errors);
            let out = f(object, &mut r);
            r.finish();
            match out {
                Some(v) if errors.is_empty() => Ok(v),
                _ => Err(ApiError::from_config(&errors)),
            }
        })
        .collect()
}

/// The parameters of every backend-server action: `LoadBalancerId` and
/// `BackendServers`, each server read with `f`.
fn read_call<T>(
    p: &Params,
    f: impl Fn(&serde_json::Map<String, Json>, &mut Reader<'_, '_, JsonFields<'_>>) -> Option<T>,
) -> Result<(String, Vec<T>), ApiError> {
    let lb = read(p, &[LOAD_BALANCER_ID, BACKEND_SERVERS], |r| {
        r.required_string(&LOAD_BALANCER_ID, rules::id)
    })?;
    let list = params::backend_servers(p)?;
    Ok((lb, each_server(&list, f)?))
}

/// `AddBackendServers`: appends the servers given.
pub async fn add(p: &Params, control: &Control) -> Result<Json, ApiError> {
    let (lb, servers) = read_call(p, |_, r| validate_backend_server(r))?;
    change(control, lb, move |aot| {
        servers.iter().for_each(|s| aot.push(server_table(s)));
        Ok(())
    })
    .await
}

/// `RemoveBackendServers`: removes the servers named by `ServerId`.
pub async fn remove(p: &Params, control: &Control) -> Result<Json, ApiError> {
    let (lb, ids) = read_call(p, |_, r| {
        let id = r.required_string(&SERVER_ID, rules::id);
        for p in [IP, PORT, WEIGHT] {
            let _ = r.field(&p);
        }
        id
    })?;
    change(control, lb, move |aot| {
        for id in &ids {
            let i = position(aot, id)?;
            aot.remove(i);
        }
        Ok(())
    })
    .await
}

/// `SetBackendServers`: sets `Weight` (required), and `Ip` and `Port` when given, of
/// the servers named by `ServerId`.
pub async fn set(p: &Params, control: &Control) -> Result<Json, ApiError> {
    let (lb, changes) = read_call(p, |object, r| {
        let id = r.required_string(&SERVER_ID, rules::id);
        if !r.has(&WEIGHT) {
            r.error(ConfigError::missing(WEIGHT.api, None));
        }
        let set: Vec<(Param, toml_edit::Value)> = [WEIGHT, IP, PORT]
            .iter()
            .filter_map(|p| r.field(p).map(|_| *p))
            .filter_map(|p| Some((p, json_to_toml(p.api, object.get(p.api)?))))
            .collect();
        Some((id?, set))
    })?;
    change(control, lb, move |aot| {
        for (id, fields) in changes {
            let i = position(aot, &id)?;
            let table = aot.get_mut(i).ok_or_else(|| unknown_server(&id))?;
            fields
                .into_iter()
                .for_each(|(p, v)| edit::set(table, p.key, v));
        }
        Ok(())
    })
    .await
}

/// Applies `edit` to the `[[backend_servers]]` of load balancer `lb`; answers with its
/// backend servers after the change.
async fn change(
    control: &Control,
    lb: String,
    edit: impl FnOnce(&mut ArrayOfTables) -> Result<(), ApiError>,
) -> Result<Json, ApiError> {
    let (_, config) = control
        .change(|doc| {
            let lbs = tables_mut(doc.as_table_mut(), "load_balancers")?;
            let table = lbs
                .iter_mut()
                .find(|t| t.get("id").and_then(Item::as_str) == Some(lb.as_str()))
                .ok_or_else(|| ApiError::load_balancer_not_found(&lb))?;
            edit(tables_mut(table, "backend_servers")?)
        })
        .await?;
    Ok(json!({ "BackendServers": { "BackendServer": servers_json(&config, &lb) } }))
}

fn unknown_server(id: &str) -> ApiError {
    ApiError::bad(
        "InvalidServerId",
        format!("The specified parameter ServerId is invalid: {id:?} is not a backend server of the load balancer"),
    )
}

fn position(aot: &ArrayOfTables, id: &str) -> Result<usize, ApiError> {
    aot.iter()
        .position(|t| t.get("server_id").and_then(Item::as_str) == Some(id))
        .ok_or_else(|| unknown_server(id))
}

fn server_table(s: &BackendServer) -> Table {
    let mut t = Table::new();
    t.insert("server_id", Item::Value(s.server_id.as_str().into()));
    t.insert("ip", Item::Value(s.ip.to_string().into()));
    if let Some(port) = s.port {
        t.insert("port", Item::Value(i64::from(port).into()));
    }
    t.insert("weight", Item::Value(i64::from(s.weight).into()));
    t
}
