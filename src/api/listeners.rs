//! The actions that change a listener: create, set its attributes, start, stop and
//! delete, each an edit of the listener file made through [`Control::change`].

use super::edit::{find_listener, listener_mut, set, tables_mut};
use super::params::{read, toml_value, Params};
use super::{ApiError, Control};
use crate::config::{
    validate_listener_key, validate_listener_spec, ListenerKey, Param, LISTENER_PARAMS,
    LISTENER_PORT, LOAD_BALANCER_ID,
};
use serde_json::{json, Value as Json};
use toml_edit::{Item, Table};

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

/// `CreateLoadBalancerTCPListener`.
pub async fn create(p: &Params, control: &Control) -> Result<Json, ApiError> {
    let allowed = attribute_params();
    let spec = read(p, &allowed, validate_listener_spec)?;
    let key = ListenerKey::new(&spec.load_balancer_id, spec.listener_port);
    control
        .change(|doc| {
            let listeners = tables_mut(doc.as_table_mut(), "listeners")?;
            if find_listener(listeners, &key).is_some() {
                return Err(ApiError::listener_exists(&key));
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

/// `SetLoadBalancerTCPListenerAttribute`: the parameters given, the rest kept.
pub async fn set_attributes(p: &Params, control: &Control) -> Result<Json, ApiError> {
    let allowed = attribute_params();
    let key = read(p, &allowed, validate_listener_key)?;
    control
        .change(|doc| {
            let table = listener_mut(doc, &key)?;
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
fn listener_action_key(p: &Params) -> Result<ListenerKey, ApiError> {
    read(
        p,
        &[LOAD_BALANCER_ID, LISTENER_PORT, LISTENER_PROTOCOL],
        |r| {
            let key = validate_listener_key(r);
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

/// `StartLoadBalancerListener` and `StopLoadBalancerListener`.
pub async fn set_status(p: &Params, control: &Control, status: &str) -> Result<Json, ApiError> {
    let key = listener_action_key(p)?;
    control
        .change(|doc| {
            set(listener_mut(doc, &key)?, "status", status.into());
            Ok(())
        })
        .await?;
    Ok(json!({}))
}

/// `DeleteLoadBalancerListener`.
pub async fn delete(p: &Params, control: &Control) -> Result<Json, ApiError> {
    let key = listener_action_key(p)?;
    control
        .change(|doc| {
            let listeners = tables_mut(doc.as_table_mut(), "listeners")?;
            let i =
                find_listener(listeners, &key).ok_or_else(|| ApiError::listener_not_found(&key))?;
            listeners.remove(i);
            Ok(())
        })
        .await?;
    Ok(json!({}))
}
