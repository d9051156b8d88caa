//! The listener file: raw TOML -> a validated [`Config`] with every default resolved.
//!
//! Validation collects every error (not only the first), each carrying the API's
//! error code and the position of the offending key or value. Later code uses the
//! resolved fields ([`Listener::backends`], [`HealthCheck::timeout`]) and never
//! re-derives defaults.

mod error;
mod fields;
pub mod rules;
mod validate;

pub use error::{line_col, Code, ConfigError, Diagnostics, Span};
pub use fields::{Field, Fields, Param, Raw, Reader, TomlFields};
pub use validate::{
    validate_backend_server, validate_listener_key, validate_listener_spec, LISTENER_PARAMS,
};
/// Parameters the control API names on their own (same key, same API name).
pub use validate::{
    BACKEND_SERVERS, DESCRIPTION, IP, LISTENER_PORT, LOAD_BALANCER_ID, PORT, SERVER_ID, WEIGHT,
};

use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

/// Defaults of `[global]` and `[admin]`, documented once.
pub mod defaults {
    pub const HASH_SEED: &str = "edgelb";
    pub const BACKEND_CONNECT_TIMEOUT_MS: i64 = 3000;
    pub const CONNECT_RETRIES: i64 = 2;
    pub const DRAIN_TIMEOUT: i64 = 30;
    pub const DRAIN_DELAY: i64 = 0;
    pub const PERSISTENCE_MAX_ENTRIES: i64 = 262_144;
    pub const MAX_CONNECTIONS: i64 = 0;
    pub const ADMIN_ADDRESS: &str = "127.0.0.1:9900";
    /// Seconds a client has for a request head, counted from the connection (or
    /// the end of the previous response, the keep-alive wait) to the head's end.
    pub const ADMIN_REQUEST_HEADER_TIMEOUT: i64 = 10;
    /// Seconds a client has to send a control-API call's body.
    pub const ADMIN_REQUEST_BODY_TIMEOUT: i64 = 10;
    /// Admin connections open at once.
    pub const ADMIN_MAX_CONNECTIONS: i64 = 256;
    pub const LB_ADDRESS: &str = "0.0.0.0";
    pub const WEIGHT: i64 = 100;
    pub const SCHEDULER: super::Scheduler = super::Scheduler::Wrr;
    pub const PERSISTENCE_TIMEOUT: i64 = 0;
    pub const ESTABLISHED_TIMEOUT: i64 = 900;
    pub const HEALTHY_THRESHOLD: i64 = 3;
    pub const UNHEALTHY_THRESHOLD: i64 = 3;
    pub const HEALTH_CHECK_CONNECT_TIMEOUT: i64 = 5;
    pub const HEALTH_CHECK_INTERVAL: i64 = 2;
}

/// A validated listener file.
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    pub global: Global,
    pub admin: Admin,
    pub load_balancers: Vec<LoadBalancer>,
    pub listeners: Vec<Listener>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Global {
    pub hash_seed: String,
    pub backend_connect_timeout: Duration,
    pub connect_retries: u32,
    pub drain_timeout: Duration,
    /// How long a SIGTERM keeps the listeners accepting, `/healthz` already 503,
    /// before they close (so a router watching `/healthz` takes the node out first).
    pub drain_delay: Duration,
    pub persistence_max_entries: usize,
    /// Per process; 0 = derived from the file-descriptor limit at start.
    pub max_connections: usize,
    /// Where the access log goes (SPEC section 5).
    pub access_log: AccessLogTarget,
    pub access_log_format: AccessLogFormat,
}

/// `access_log`: off (`""`), standard error (`"stderr"`) or a file opened for append.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum AccessLogTarget {
    #[default]
    Off,
    Stderr,
    /// Relative paths are resolved against the listener file's directory.
    File(PathBuf),
}

/// `access_log_format`: one line of space-separated fields, or one JSON object.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum AccessLogFormat {
    #[default]
    Text,
    Json,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Admin {
    /// `None` when disabled (`address = ""`).
    pub address: Option<SocketAddr>,
    pub access_keys: Vec<AccessKey>,
    /// Bounds the request head and the keep-alive wait before it.
    pub request_header_timeout: Duration,
    /// Bounds the read of a control-API call's body.
    pub request_body_timeout: Duration,
    /// Admin connections open at once; past it new ones are closed at once.
    pub max_connections: usize,
}

#[derive(Debug, Clone, PartialEq)]
pub struct AccessKey {
    pub access_key_id: String,
    /// The secret itself (read from `access_key_secret_file` when that was given).
    pub secret: String,
    /// Patterns such as `ens:*` or `ens:Describe*`.
    pub actions: Vec<String>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct LoadBalancer {
    pub id: String,
    pub address: IpAddr,
    pub backend_servers: Vec<BackendServer>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct BackendServer {
    pub server_id: String,
    pub ip: IpAddr,
    pub port: Option<u16>,
    pub weight: u32,
}

/// The listener's `Scheduler` parameter: how [`crate::scheduler::Selector`] picks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Scheduler {
    /// Smooth weighted round robin.
    Wrr,
    /// Weighted least connections.
    Wlc,
    /// Plain round robin (weights only exclude at 0).
    Rr,
    /// Consistent hash of the client IP.
    Sch,
    /// Consistent hash of (client IP, listener IP, client port, listener port).
    Tch,
}

impl Scheduler {
    pub const ALL: [(&'static str, Scheduler); 5] = [
        ("wrr", Scheduler::Wrr),
        ("wlc", Scheduler::Wlc),
        ("rr", Scheduler::Rr),
        ("sch", Scheduler::Sch),
        ("tch", Scheduler::Tch),
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Scheduler::Wrr => "wrr",
            Scheduler::Wlc => "wlc",
            Scheduler::Rr => "rr",
            Scheduler::Sch => "sch",
            Scheduler::Tch => "tch",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HealthCheckType {
    Tcp,
    Http,
}

impl HealthCheckType {
    pub fn as_str(self) -> &'static str {
        match self {
            HealthCheckType::Tcp => "tcp",
            HealthCheckType::Http => "http",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    Running,
    Stopped,
}

impl Status {
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Running => "running",
            Status::Stopped => "stopped",
        }
    }
}

/// The set of HTTP status classes (2xx..5xx) a health check accepts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HttpCodes(u8);

impl HttpCodes {
    pub const EMPTY: HttpCodes = HttpCodes(0);
    pub const DEFAULT: HttpCodes = HttpCodes(1 << 2);

    pub fn with_class(self, class: u8) -> HttpCodes {
        HttpCodes(self.0 | (1 << class))
    }

    pub fn bits(self) -> u8 {
        self.0
    }

    /// Whether `status` (e.g. 204) is in an accepted class.
    pub fn accepts(self, status: u16) -> bool {
        let class = status / 100;
        (2..=5).contains(&class) && self.0 & (1 << class) != 0
    }

    /// The API form, e.g. `http_2xx,http_5xx`.
    pub fn to_api_string(self) -> String {
        let names: Vec<String> = (2..=5u8)
            .filter(|c| self.0 & (1 << c) != 0)
            .map(|c| format!("http_{c}xx"))
            .collect();
        names.join(",")
    }
}

/// A listener's parameters as the API defines them, with API defaults applied.
#[derive(Debug, Clone, PartialEq)]
pub struct ListenerSpec {
    pub load_balancer_id: String,
    pub listener_port: u16,
    pub description: Option<String>,
    pub scheduler: Scheduler,
    pub persistence_timeout: u32,
    pub established_timeout: u32,
    pub healthy_threshold: u8,
    pub unhealthy_threshold: u8,
    pub health_check_connect_timeout: u32,
    pub health_check_interval: u32,
    pub health_check_type: HealthCheckType,
    pub health_check_domain: Option<String>,
    pub health_check_uri: Option<String>,
    pub health_check_http_code: HttpCodes,
    pub backend_server_port: Option<u16>,
    pub health_check_connect_port: Option<u16>,
    pub eip_transmit: bool,
    pub status: Status,
}

/// How a listener checks its backends, resolved.
#[derive(Debug, Clone, PartialEq)]
pub struct HealthCheck {
    pub kind: HealthCheckType,
    pub interval: Duration,
    /// `health_check_connect_timeout`, or the interval when that is longer (the API's rule).
    pub timeout: Duration,
    pub healthy_threshold: u8,
    pub unhealthy_threshold: u8,
    /// The request target for `http` checks.
    pub uri: Option<String>,
    pub http_codes: HttpCodes,
}

/// One backend as a listener uses it, with its ports resolved.
#[derive(Debug, Clone, PartialEq)]
pub struct Backend {
    pub server_id: Arc<str>,
    pub weight: u32,
    /// Where data connections go: the backend ip and the backend port in use
    /// (listener `backend_server_port`, else the backend's `port`, else `listener_port`).
    pub addr: SocketAddr,
    /// Where probes go: `health_check_connect_port`, else the backend port in use.
    pub health_check_addr: SocketAddr,
    /// `Host:` of HTTP probes: the domain, else the backend ip (IPv6 in brackets).
    pub health_check_host: String,
}

/// What identifies a listener: its load balancer and port. Built by
/// [`ListenerKey::new`] (and [`Listener::key`]) only.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ListenerKey {
    pub load_balancer_id: String,
    pub listener_port: u16,
}

impl ListenerKey {
    pub fn new(load_balancer_id: &str, listener_port: u16) -> ListenerKey {
        ListenerKey {
            load_balancer_id: load_balancer_id.to_string(),
            listener_port,
        }
    }
}

impl std::fmt::Display for ListenerKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}:{}", self.load_balancer_id, self.listener_port)
    }
}

/// A validated listener with everything the data path needs resolved.
#[derive(Debug, Clone, PartialEq)]
pub struct Listener {
    pub spec: ListenerSpec,
    /// The load balancer's address and `listener_port`.
    pub bind: SocketAddr,
    /// `None` when persistence is off.
    pub persistence_timeout: Option<Duration>,
    pub established_timeout: Duration,
    pub health_check: HealthCheck,
    /// The load balancer's backends in configuration order.
    pub backends: Vec<Backend>,
}

impl Listener {
    /// Resolves `spec` against its load balancer.
    pub fn resolve(spec: ListenerSpec, lb: &LoadBalancer) -> Listener {
        let backends = lb
            .backend_servers
            .iter()
            .map(|b| {
                let port = spec
                    .backend_server_port
                    .or(b.port)
                    .unwrap_or(spec.listener_port);
                let health_port = spec.health_check_connect_port.unwrap_or(port);
                let health_check_host = match (&spec.health_check_domain, b.ip) {
                    (Some(domain), _) => domain.clone(),
                    (None, IpAddr::V4(ip)) => ip.to_string(),
                    (None, IpAddr::V6(ip)) => format!("[{ip}]"),
                };
                Backend {
                    server_id: Arc::from(b.server_id.as_str()),
                    weight: b.weight,
                    addr: SocketAddr::new(b.ip, port),
                    health_check_addr: SocketAddr::new(b.ip, health_port),
                    health_check_host,
                }
            })
            .collect();
        let interval = Duration::from_secs(spec.health_check_interval.into());
        let connect_timeout = Duration::from_secs(spec.health_check_connect_timeout.into());
        let health_check = HealthCheck {
            kind: spec.health_check_type,
            interval,
            timeout: connect_timeout.max(interval),
            healthy_threshold: spec.healthy_threshold,
            unhealthy_threshold: spec.unhealthy_threshold,
            uri: spec.health_check_uri.clone(),
            http_codes: spec.health_check_http_code,
        };
        Listener {
            bind: SocketAddr::new(lb.address, spec.listener_port),
            persistence_timeout: (spec.persistence_timeout > 0)
                .then(|| Duration::from_secs(spec.persistence_timeout.into())),
            established_timeout: Duration::from_secs(spec.established_timeout.into()),
            health_check,
            backends,
            spec,
        }
    }

    /// What identifies this listener.
    pub fn key(&self) -> ListenerKey {
        ListenerKey::new(&self.spec.load_balancer_id, self.spec.listener_port)
    }

    /// Whether this is the listener `key` names (no allocation).
    pub fn is(&self, key: &ListenerKey) -> bool {
        self.spec.listener_port == key.listener_port
            && self.spec.load_balancer_id == key.load_balancer_id
    }

    pub fn is_running(&self) -> bool {
        self.spec.status == Status::Running
    }
}

impl Config {
    /// Parses and validates `src`. `base_dir` resolves relative secret-file paths.
    pub fn parse(src: &str, base_dir: Option<&Path>) -> Result<Config, Vec<ConfigError>> {
        validate::config(src, base_dir)
    }

    /// Reads, parses and validates the file at `path`.
    pub fn load(path: &Path) -> Result<Config, Diagnostics> {
        let file = path.display().to_string();
        let source = std::fs::read_to_string(path).map_err(|e| Diagnostics {
            file: file.clone(),
            source: String::new(),
            errors: vec![ConfigError::new(
                Code::Syntax,
                format!("cannot read the file: {e}"),
                None,
            )],
        })?;
        let base_dir: Option<PathBuf> = path.parent().map(Path::to_path_buf);
        Config::parse(&source, base_dir.as_deref()).map_err(|errors| Diagnostics {
            file,
            source,
            errors,
        })
    }

    pub fn load_balancer(&self, id: &str) -> Option<&LoadBalancer> {
        self.load_balancers.iter().find(|lb| lb.id == id)
    }

    pub fn listener(&self, load_balancer_id: &str, port: u16) -> Option<&Listener> {
        self.listeners
            .iter()
            .find(|l| l.spec.listener_port == port && l.spec.load_balancer_id == load_balancer_id)
    }
}
