//! The read-only actions, answered from the applied configuration as the SDK's models.
//!
//! The backend-server actions answer with [`servers_json`] too.

use super::params::{read, Params};
use super::ApiError;
use crate::config::{
    rules, validate_listener_key, Config, Listener, Param, Status, DESCRIPTION, LISTENER_PORT,
    LOAD_BALANCER_ID,
};
use serde_json::{json, Value as Json};

const PAGE_NUMBER: Param = Param {
    key: "page_number",
    api: "PageNumber",
};
const PAGE_SIZE: Param = Param {
    key: "page_size",
    api: "PageSize",
};
/// `DescribeLoadBalancerListeners` page size when none is given, and the largest.
const DEFAULT_PAGE_SIZE: i64 = 10;
const MAX_PAGE_SIZE: i64 = 100;

fn status(l: &Listener) -> &'static str {
    match l.spec.status {
        Status::Running => "Running",
        Status::Stopped => "Stopped",
    }
}

fn on_off(b: bool) -> &'static str {
    if b {
        "on"
    } else {
        "off"
    }
}

/// `DescribeLoadBalancerTCPListenerAttribute`.
pub fn listener(p: &Params, config: &Config) -> Result<Json, ApiError> {
    let key = read(p, &[LOAD_BALANCER_ID, LISTENER_PORT], validate_listener_key)?;
    let l = config
        .listener(&key.load_balancer_id, key.listener_port)
        .ok_or_else(|| ApiError::listener_not_found(&key))?;
    let s = &l.spec;
    let mut out = json!({
        "ListenerPort": s.listener_port,
        "Status": status(l),
        "Scheduler": s.scheduler.as_str(),
        "PersistenceTimeout": s.persistence_timeout,
        "EstablishedTimeout": s.established_timeout,
        "HealthCheck": "on",
        "HealthCheckType": s.health_check_type.as_str(),
        "HealthCheckConnectTimeout": s.health_check_connect_timeout,
        "HealthCheckInterval": s.health_check_interval,
        "HealthyThreshold": s.healthy_threshold,
        "UnhealthyThreshold": s.unhealthy_threshold,
        "HealthCheckHttpCode": s.health_check_http_code.to_api_string(),
        "EipTransmit": on_off(s.eip_transmit),
        // Not limited by edgelb: the API's "unlimited".
        "Bandwidth": -1,
    });
    let optional = [
        ("Description", s.description.clone().map(Json::from)),
        (
            "HealthCheckDomain",
            s.health_check_domain.clone().map(Json::from),
        ),
        ("HealthCheckURI", s.health_check_uri.clone().map(Json::from)),
        ("BackendServerPort", s.backend_server_port.map(Json::from)),
        (
            "HealthCheckConnectPort",
            s.health_check_connect_port.map(Json::from),
        ),
    ];
    for (name, value) in optional {
        if let Some(v) = value {
            out[name] = v;
        }
    }
    Ok(out)
}

/// `DescribeLoadBalancerListeners`: filtered by load balancer, port and
/// description, paged.
pub fn listeners(p: &Params, config: &Config) -> Result<Json, ApiError> {
    let allowed = [
        LOAD_BALANCER_ID,
        LISTENER_PORT,
        DESCRIPTION,
        PAGE_NUMBER,
        PAGE_SIZE,
    ];
    let (lb, port, description, page, size) = read(p, &allowed, |r| {
        let lb = r.string(&LOAD_BALANCER_ID, rules::id);
        let port = r.int(&LISTENER_PORT, 1..=65535);
        let description = r.string(&DESCRIPTION, |_| Ok(()));
        let page = r.int_or(&PAGE_NUMBER, 1..=i64::from(u32::MAX), 1);
        let size = r.int_or(&PAGE_SIZE, 1..=MAX_PAGE_SIZE, DEFAULT_PAGE_SIZE);
        Some((lb, port, description, page?, size?))
    })?;
    let matching: Vec<&Listener> = config
        .listeners
        .iter()
        .filter(|l| lb.as_ref().is_none_or(|id| *id == l.spec.load_balancer_id))
        .filter(|l| port.is_none_or(|p| p == i64::from(l.spec.listener_port)))
        .filter(|l| description.is_none() || l.spec.description == description)
        .collect();
    let skip = usize::try_from((page - 1).saturating_mul(size)).unwrap_or(usize::MAX);
    let take = usize::try_from(size).unwrap_or(usize::MAX);
    let page_items: Vec<Json> = matching
        .iter()
        .skip(skip)
        .take(take)
        .map(|l| {
            let mut item = json!({
                "LoadBalancerId": l.spec.load_balancer_id,
                "ListenerPort": l.spec.listener_port,
                "Protocol": "tcp",
                "Status": status(l),
                "ListenerForward": "off",
            });
            add_optional(&mut item, l);
            item
        })
        .collect();
    Ok(json!({
        "Listeners": { "Listener": page_items },
        "PageNumber": page,
        "PageSize": size,
        "TotalCount": matching.len(),
    }))
}

/// The listener fields that are present only when set.
fn add_optional(item: &mut Json, l: &Listener) {
    if let Some(d) = &l.spec.description {
        item["Description"] = d.clone().into();
    }
    if let Some(port) = l.spec.backend_server_port {
        item["BackendServerPort"] = port.into();
    }
}

/// `DescribeLoadBalancerAttribute`.
pub fn load_balancer(p: &Params, config: &Config) -> Result<Json, ApiError> {
    let id = read(p, &[LOAD_BALANCER_ID], |r| {
        r.required_string(&LOAD_BALANCER_ID, rules::id)
    })?;
    let lb = config
        .load_balancer(&id)
        .ok_or_else(|| ApiError::load_balancer_not_found(&id))?;
    let listeners: Vec<&Listener> = config
        .listeners
        .iter()
        .filter(|l| l.spec.load_balancer_id == id)
        .collect();
    let ports: Vec<u16> = listeners.iter().map(|l| l.spec.listener_port).collect();
    let ports_and_protocols: Vec<Json> = listeners
        .iter()
        .map(|l| {
            let mut item =
                json!({ "ListenerPort": l.spec.listener_port, "ListenerProtocol": "tcp" });
            add_optional(&mut item, l);
            item
        })
        .collect();
    Ok(json!({
        "LoadBalancerId": lb.id,
        "Address": lb.address.to_string(),
        "AddressIPVersion": if lb.address.is_ipv4() { "ipv4" } else { "ipv6" },
        "LoadBalancerStatus": "Active",
        "Bandwidth": -1,
        "PayType": "PostPaid",
        "ListenerPorts": ports,
        "ListenerPortsAndProtocols": ports_and_protocols,
        "BackendServers": servers_json(config, &id),
    }))
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
