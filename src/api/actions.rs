//! The actions: which exist, the parameters each takes, and the edits of the
//! listener file that the changing ones make (validated and applied by
//! [`Control::change`]).

use super::params::{self, toml_value, ApiFields, JsonFields, Params};
use super::{describe, ApiError, Control};
use crate::config::{
    rules, validate_backend_server, validate_listener_spec, BackendServer, Config, ConfigError,
    Param, Reader, LISTENER_PARAMS,
};
use serde_json::{json, Value as Json};
use toml_edit::{ArrayOfTables, DocumentMut, Item, Table};

macro_rules! actions {
    ($($variant:ident),* $(,)?) => {
        /// The supported actions, named as in the API.
        #[derive(Debug, Clone, Copy, PartialEq, Eq)]
        pub enum Action { $($variant),* }

        impl Action {
            pub const ALL: &'static [Action] = &[$(Action::$variant),*];

            pub fn name(self) -> &'static str {
                match self { $(Action::$variant => stringify!($variant)),* }
            }
        }
    };
}

actions!(
    CreateLoadBalancerTCPListener,
    DescribeLoadBalancerTCPListenerAttribute,
    SetLoadBalancerTCPListenerAttribute,
    DescribeLoadBalancerListeners,
    DeleteLoadBalancerListener,
    StartLoadBalancerListener,
    StopLoadBalancerListener,
    AddBackendServers,
    RemoveBackendServers,
    SetBackendServers,
    DescribeLoadBalancerAttribute,
);

impl Action {
    pub fn from_name(name: &str) -> Option<Action> {
        Action::ALL.iter().copied().find(|a| a.name() == name)
    }
}

pub const LOAD_BALANCER_ID: Param = LISTENER_PARAMS[0];
pub const LISTENER_PORT: Param = LISTENER_PARAMS[1];
const LISTENER_PROTOCOL: Param = Param {
    key: "listener_protocol",
    api: "ListenerProtocol",
};
const BACKEND_SERVERS: Param = Param {
    key: "backend_servers",
    api: "BackendServers",
};
const SERVER_ID: Param = Param {
    key: "server_id",
    api: "ServerId",
};
const IP: Param = Param {
    key: "ip",
    api: "Ip",
};
const PORT: Param = Param {
    key: "port",
    api: "Port",
};
const WEIGHT: Param = Param {
    key: "weight",
    api: "Weight",
};

/// The parameters of Create and Set: every listener parameter but `Status`, which the
/// API changes only through Start and Stop.
fn attribute_params() -> Vec<Param> {
    LISTENER_PARAMS
        .iter()
        .copied()
        .filter(|p| p.api != "Status")
        .collect()
}

pub async fn run(action: Action, p: &Params, control: &Control) -> Result<Json, ApiError> {
    use Action as A;
    let config = control.config();
    match action {
        A::DescribeLoadBalancerTCPListenerAttribute => describe::listener(p, &config),
        A::DescribeLoadBalancerListeners => describe::listeners(p, &config),
        A::DescribeLoadBalancerAttribute => describe::load_balancer(p, &config),
        A::CreateLoadBalancerTCPListener => create(p, control).await,
        A::SetLoadBalancerTCPListenerAttribute => set_attributes(p, control).await,
        A::StartLoadBalancerListener => set_status(p, control, "running").await,
        A::StopLoadBalancerListener => set_status(p, control, "stopped").await,
        A::DeleteLoadBalancerListener => delete(p, control).await,
        A::AddBackendServers | A::RemoveBackendServers | A::SetBackendServers => {
            backend_servers(action, p, control).await
        }
    }
}

/// Reads parameters with `f`; any other parameter is `InvalidParameter.<Key>`.
pub fn read<'p, T>(
    params: &'p Params,
    allowed: &'p [Param],
    f: impl FnOnce(&mut Reader<'_, '_, ApiFields<'p>>) -> Option<T>,
) -> Result<T, ApiError> {
    let fields = ApiFields { params, allowed };
    let mut errors = Vec::new();
    let mut r = Reader::new(&fields, &mut errors);
    let out = f(&mut r);
    for param in allowed {
        r.field(param);
    }
    r.finish();
    match out {
        Some(v) if errors.is_empty() => Ok(v),
        _ => Err(ApiError::from_config(&errors)),
    }
}

/// `LoadBalancerId` and `ListenerPort`, both required.
pub fn listener_key<F: crate::config::Fields>(r: &mut Reader<'_, '_, F>) -> Option<(String, u16)> {
    let id = r.required_string(&LOAD_BALANCER_ID, rules::id);
    let port = if r.has(&LISTENER_PORT) {
        r.int(&LISTENER_PORT, 1..=65535)
    } else {
        r.field(&LISTENER_PORT);
        r.error(ConfigError::missing(LISTENER_PORT.api, None));
        None
    };
    Some((id?, u16::try_from(port?).ok()?))
}

fn not_found(lb: &str, port: u16) -> ApiError {
    ApiError::bad(
        "ListenerNotFound",
        format!("The listener on port {port} of {lb} does not exist"),
    )
}

fn lb_not_found(lb: &str) -> ApiError {
    ApiError::bad(
        "LoadBalancerNotFound",
        format!("The specified load balancer {lb:?} does not exist"),
    )
}

/// The `[[key]]` array of `table`, created when absent.
fn tables_mut<'t>(table: &'t mut Table, key: &str) -> Result<&'t mut ArrayOfTables, ApiError> {
    table
        .entry(key)
        .or_insert(Item::ArrayOfTables(ArrayOfTables::new()))
        .as_array_of_tables_mut()
        .ok_or_else(|| {
            ApiError::bad(
                "InvalidParameter",
                format!("the listener file writes {key} in a form the API cannot edit; use [[{key}]] tables"),
            )
        })
}

fn find_listener(listeners: &ArrayOfTables, lb: &str, port: u16) -> Option<usize> {
    listeners.iter().position(|t| {
        t.get("load_balancer_id").and_then(Item::as_str) == Some(lb)
            && t.get("listener_port").and_then(Item::as_integer) == Some(i64::from(port))
    })
}

/// The listener table of `(lb, port)`.
fn listener_mut<'d>(
    doc: &'d mut DocumentMut,
    lb: &str,
    port: u16,
) -> Result<&'d mut Table, ApiError> {
    let listeners = tables_mut(doc.as_table_mut(), "listeners")?;
    let i = find_listener(listeners, lb, port).ok_or_else(|| not_found(lb, port))?;
    listeners.get_mut(i).ok_or_else(|| not_found(lb, port))
}

/// Sets `key`, keeping the comment after an old value.
fn set(table: &mut Table, key: &str, mut value: toml_edit::Value) {
    if let Some(old) = table.get(key).and_then(Item::as_value) {
        *value.decor_mut() = old.decor().clone();
    }
    table.insert(key, Item::Value(value));
}

async fn create(p: &Params, control: &Control) -> Result<Json, ApiError> {
    let allowed = attribute_params();
    let spec = read(p, &allowed, validate_listener_spec)?;
    control
        .change(|doc| {
            let listeners = tables_mut(doc.as_table_mut(), "listeners")?;
            if find_listener(listeners, &spec.load_balancer_id, spec.listener_port).is_some() {
                return Err(ApiError::bad(
                    "ListenerAlreadyExists",
                    format!(
                        "A listener on port {} of {} already exists",
                        spec.listener_port, spec.load_balancer_id
                    ),
                ));
            }
            let mut table = Table::new();
            for param in &allowed {
                if let Some(text) = p.get(param.api) {
                    table.insert(param.key, Item::Value(toml_value(param.api, text)));
                }
            }
            // As in ENS: a new listener is Stopped until StartLoadBalancerListener.
            table.insert("status", Item::Value("stopped".into()));
            listeners.push(table);
            Ok(())
        })
        .await?;
    Ok(json!({}))
}

async fn set_attributes(p: &Params, control: &Control) -> Result<Json, ApiError> {
    let allowed = attribute_params();
    let (lb, port) = read(p, &allowed, listener_key)?;
    control
        .change(|doc| {
            let table = listener_mut(doc, &lb, port)?;
            for param in &allowed[2..] {
                if let Some(text) = p.get(param.api) {
                    set(table, param.key, toml_value(param.api, text));
                }
            }
            Ok(())
        })
        .await?;
    Ok(json!({}))
}

/// `LoadBalancerId`, `ListenerPort` and the optional `ListenerProtocol` (`tcp`).
fn listener_action_key(p: &Params) -> Result<(String, u16), ApiError> {
    read(
        p,
        &[LOAD_BALANCER_ID, LISTENER_PORT, LISTENER_PROTOCOL],
        |r| {
            let key = listener_key(r);
            r.string(&LISTENER_PROTOCOL, |s| {
                if s.eq_ignore_ascii_case("tcp") {
                    Ok(())
                } else {
                    Err(format!("{s:?}: edgelb has TCP listeners only"))
                }
            });
            key
        },
    )
}

async fn set_status(p: &Params, control: &Control, status: &str) -> Result<Json, ApiError> {
    let (lb, port) = listener_action_key(p)?;
    control
        .change(|doc| {
            set(listener_mut(doc, &lb, port)?, "status", status.into());
            Ok(())
        })
        .await?;
    Ok(json!({}))
}

async fn delete(p: &Params, control: &Control) -> Result<Json, ApiError> {
    let (lb, port) = listener_action_key(p)?;
    control
        .change(|doc| {
            let listeners = tables_mut(doc.as_table_mut(), "listeners")?;
            let i = find_listener(listeners, &lb, port).ok_or_else(|| not_found(&lb, port))?;
            listeners.remove(i);
            Ok(())
        })
        .await?;
    Ok(json!({}))
}

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

async fn backend_servers(action: Action, p: &Params, control: &Control) -> Result<Json, ApiError> {
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
