//! The actions: which exist, the parameters each takes, and the edits of the
//! listener file that the changing ones make (validated and applied by
//! [`Control::change`]).

use super::params::{toml_value, ApiFields, Params};
use super::{describe, ApiError, Control};
use crate::config::{rules, validate_listener_spec, ConfigError, Param, Reader, LISTENER_PARAMS};
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
            super::servers::run(action, p, control).await
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

pub(super) fn lb_not_found(lb: &str) -> ApiError {
    ApiError::bad(
        "LoadBalancerNotFound",
        format!("The specified load balancer {lb:?} does not exist"),
    )
}

/// The `[[key]]` array of `table`, created when absent.
pub(super) fn tables_mut<'t>(
    table: &'t mut Table,
    key: &str,
) -> Result<&'t mut ArrayOfTables, ApiError> {
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
pub(super) fn set(table: &mut Table, key: &str, mut value: toml_edit::Value) {
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
