//! The backend-server actions: `AddBackendServers`, `RemoveBackendServers` and
//! `SetBackendServers` on one load balancer's `[[load_balancers.backend_servers]]`.
//! Each answers with the load balancer's backend servers after the change.

use super::actions::{lb_not_found, read, set, tables_mut, Action, LOAD_BALANCER_ID};
use super::params::{self, toml_value, JsonFields, Params};
use super::{ApiError, Control};
use crate::config::{
    rules, validate_backend_server, BackendServer, Config, ConfigError, Param, Reader,
    BACKEND_SERVERS, IP, PORT, SERVER_ID, WEIGHT,
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

/// An edit of one load balancer's `[[backend_servers]]`.
type ServersEdit = Box<dyn FnOnce(&mut ArrayOfTables) -> Result<(), ApiError> + Send>;

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

pub async fn run(action: Action, p: &Params, control: &Control) -> Result<Json, ApiError> {
    let lb = read(p, &[LOAD_BALANCER_ID, BACKEND_SERVERS], |r| {
        r.required_string(&LOAD_BALANCER_ID, rules::id)
    })?;
    let list = params::backend_servers(p)?;
    let edit: ServersEdit = match action {
        Action::AddBackendServers => {
            let servers = each_server(&list, |_, r| validate_backend_server(r))?;
            Box::new(move |aot| {
                servers.iter().for_each(|s| aot.push(server_table(s)));
                Ok(())
            })
        }
        Action::RemoveBackendServers => {
            let ids = each_server(&list, |_, r| {
                let id = r.required_string(&SERVER_ID, rules::id);
                for p in [IP, PORT, WEIGHT] {
                    let _ = r.field(&p);
                }
                id
            })?;
            Box::new(move |aot| {
                for id in &ids {
                    let i = position(aot, id)?;
                    aot.remove(i);
                }
                Ok(())
            })
        }
        _ => {
            let changes = each_server(&list, |object, r| {
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
            Box::new(move |aot| {
                for (id, fields) in changes {
                    let i = position(aot, &id)?;
                    let table = aot.get_mut(i).ok_or_else(|| unknown_server(&id))?;
                    fields.into_iter().for_each(|(p, v)| set(table, p.key, v));
                }
                Ok(())
            })
        }
    };
    let lb_id = lb.clone();
    let (_, config) = control
        .change(move |doc| {
            let lbs = tables_mut(doc.as_table_mut(), "load_balancers")?;
            let table = lbs
                .iter_mut()
                .find(|t| t.get("id").and_then(Item::as_str) == Some(lb_id.as_str()))
                .ok_or_else(|| lb_not_found(&lb_id))?;
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

/// The backend servers of `lb` as the SDK's `BackendServer` models.
pub fn servers_json(config: &Config, lb: &str) -> Vec<Json> {
    config
        .load_balancer(lb)
        .map(|lb| {
            lb.backend_servers
                .iter()
                .map(|b| {
                    let mut s = json!({ "ServerId": b.server_id, "Ip": b.ip.to_string(), "Weight": b.weight, "Type": "ens" });
                    if let Some(port) = b.port {
                        s["Port"] = port.into();
                    }
                    s
                })
                .collect()
        })
        .unwrap_or_default()
}
