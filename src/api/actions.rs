//! The dispatcher: which actions exist, by their API names, and which module runs each.

use super::params::Params;
use super::{describe, listeners, servers, ApiError, Control};
use serde_json::Value as Json;

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

/// Runs `action` with its parameters `p` (the protocol ones removed).
pub async fn run(action: Action, p: &Params, control: &Control) -> Result<Json, ApiError> {
    use Action as A;
    let config = control.config();
    match action {
        A::DescribeLoadBalancerTCPListenerAttribute => describe::listener(p, &config),
        A::DescribeLoadBalancerListeners => describe::listeners(p, &config),
        A::DescribeLoadBalancerAttribute => describe::load_balancer(p, &config),
        A::CreateLoadBalancerTCPListener => listeners::create(p, control).await,
        A::SetLoadBalancerTCPListenerAttribute => listeners::set_attributes(p, control).await,
        A::StartLoadBalancerListener => listeners::set_status(p, control, "running").await,
        A::StopLoadBalancerListener => listeners::set_status(p, control, "stopped").await,
        A::DeleteLoadBalancerListener => listeners::delete(p, control).await,
        A::AddBackendServers => servers::add(p, control).await,
        A::RemoveBackendServers => servers::remove(p, control).await,
        A::SetBackendServers => servers::set(p, control).await,
    }
}
