//! The listener file: every range, form rule, required key, unknown key and
#![allow(clippy::unwrap_used, clippy::expect_used)] // tests fail loudly
//! cross-check, with the API's codes and exact locations.

use edgelb::config::{
    line_col, AccessLogFormat, AccessLogTarget, Config, HealthCheckType, Scheduler, Status,
};
use std::time::Duration;

/// A valid file; each `{...}` slot takes extra lines for that table.
const TEMPLATE: &str = r#"[global]
{global}
[admin]
address = "127.0.0.1:0"
{admin}
[[load_balancers]]
id = "lb-1"
address = "127.0.0.1"
{lb}
  [[load_balancers.backend_servers]]
  server_id = "b1"
  ip = "127.0.0.1"
  port = 9001
{backend}
[[listeners]]
load_balancer_id = "lb-1"
listener_port = 80
{listener}
"#;

fn file(slot: &str, extra: &str) -> String {
    let mut src = TEMPLATE.to_string();
    // A backend key the template already sets is replaced rather than repeated.
    let key = extra.split('=').next().unwrap_or("").trim();
    if slot == "backend" && !key.is_empty() {
        if let Some(start) = src.find(&format!("\n  {key} = ")) {
            let end = src[start + 1..]
                .find('\n')
                .map_or(src.len(), |e| start + 1 + e);
            src.replace_range(start..end, "");
        }
    }
    for name in ["global", "admin", "lb", "backend", "listener"] {
        let fill = if name == slot { extra } else { "" };
        src = src.replace(&format!("{{{name}}}"), fill);
    }
    src
}

/// `(code, line, column)` of every error, in order.
fn errors(src: &str) -> Vec<(String, usize, usize)> {
    match Config::parse(src, None) {
        Ok(_) => Vec::new(),
        Err(errors) => errors
            .iter()
            .map(|e| {
                let (line, col) = e.span.as_ref().map_or((0, 0), |s| line_col(src, s.start));
                (e.code.to_string(), line, col)
            })
            .collect(),
    }
}

fn codes(src: &str) -> Vec<String> {
    errors(src).into_iter().map(|(code, _, _)| code).collect()
}

fn valid(src: &str) -> Config {
    match Config::parse(src, None) {
        Ok(config) => config,
        Err(errors) => panic!("expected a valid file, got {errors:?}\n{src}"),
    }
}

/// (slot, key, min, max, code) for every numeric parameter.
const RANGES: &[(&str, &str, i64, i64, &str)] = &[
    (
        "listener",
        "persistence_timeout",
        0,
        3600,
        "InvalidPersistenceTimeout",
    ),
    (
        "listener",
        "established_timeout",
        10,
        900,
        "InvalidEstablishedTimeout",
    ),
    (
        "listener",
        "healthy_threshold",
        2,
        10,
        "InvalidHealthyThreshold",
    ),
    (
        "listener",
        "unhealthy_threshold",
        2,
        10,
        "InvalidUnhealthyThreshold",
    ),
    (
        "listener",
        "health_check_connect_timeout",
        1,
        300,
        "InvalidHealthCheckConnectTimeout",
    ),
    (
        "listener",
        "health_check_interval",
        1,
        50,
        "InvalidHealthCheckInterval",
    ),
    (
        "listener",
        "backend_server_port",
        1,
        65535,
        "InvalidBackendServerPort",
    ),
    (
        "listener",
        "health_check_connect_port",
        1,
        65535,
        "InvalidHealthCheckConnectPort",
    ),
    ("backend", "port", 1, 65535, "InvalidPort"),
    ("backend", "weight", 0, 100, "InvalidWeight"),
    (
        "global",
        "backend_connect_timeout_ms",
        1,
        300_000,
        "InvalidBackendConnectTimeoutMs",
    ),
    ("global", "connect_retries", 0, 16, "InvalidConnectRetries"),
    ("global", "drain_timeout", 0, 3600, "InvalidDrainTimeout"),
    ("global", "drain_delay", 0, 300, "InvalidDrainDelay"),
    (
        "global",
        "persistence_max_entries",
        1,
        1 << 26,
        "InvalidPersistenceMaxEntries",
    ),
    (
        "global",
        "max_connections",
        0,
        10_000_000,
        "InvalidMaxConnections",
    ),
    (
        "admin",
        "request_header_timeout",
        1,
        300,
        "InvalidRequestHeaderTimeout",
    ),
    (
        "admin",
        "request_body_timeout",
        1,
        300,
        "InvalidRequestBodyTimeout",
    ),
    (
        "admin",
        "max_connections",
        1,
        65_536,
        "InvalidAdminMaxConnections",
    ),
];

#[test]
fn every_numeric_parameter_accepts_its_bounds_and_refuses_just_outside() {
    for &(slot, key, min, max, code) in RANGES {
        for ok in [min, max] {
            let src = file(slot, &format!("{key} = {ok}"));
            assert_eq!(codes(&src), Vec::<String>::new(), "{key} = {ok}");
        }
        for bad in [min - 1, max + 1] {
            let src = file(slot, &format!("{key} = {bad}"));
            assert_eq!(codes(&src), vec![code.to_string()], "{key} = {bad}");
        }
    }
}

#[test]
fn listener_port_bounds() {
    for ok in [1, 65535] {
        let src = file("", "").replace("listener_port = 80", &format!("listener_port = {ok}"));
        assert!(codes(&src).is_empty(), "{ok}");
    }
    for bad in [0, 65536, -1] {
        let src = file("", "").replace("listener_port = 80", &format!("listener_port = {bad}"));
        assert_eq!(codes(&src), ["InvalidListenerPort"], "{bad}");
    }
}

#[test]
fn wrong_types_are_invalid_with_the_parameter_code() {
    let cases = [
        (
            "listener",
            "established_timeout = \"900\"",
            "InvalidEstablishedTimeout",
        ),
        (
            "listener",
            "healthy_threshold = 3.0",
            "InvalidHealthyThreshold",
        ),
        ("listener", "scheduler = 1", "InvalidScheduler"),
        ("listener", "description = true", "InvalidDescription"),
        ("listener", "eip_transmit = true", "InvalidEipTransmit"),
        ("listener", "status = [\"running\"]", "InvalidStatus"),
        ("backend", "weight = \"100\"", "InvalidWeight"),
        ("backend", "port = 1e3", "InvalidPort"),
        ("global", "hash_seed = 7", "InvalidHashSeed"),
        ("global", "drain_timeout = \"30s\"", "InvalidDrainTimeout"),
        ("admin", "access_keys = 3", "InvalidAccessKeys"),
    ];
    for (slot, line, code) in cases {
        assert_eq!(codes(&file(slot, line)), [code], "{line}");
    }
    let src = file("", "").replace("listener_port = 80", "listener_port = \"80\"");
    assert_eq!(codes(&src), ["InvalidListenerPort"]);
    let src = file("", "").replace("[global]\n", "global = 5\n");
    assert_eq!(codes(&src), ["InvalidGlobal"]);
}

#[test]
fn enumerations_accept_only_their_values() {
    for (name, expected) in Scheduler::ALL {
        let config = valid(&file("listener", &format!("scheduler = \"{name}\"")));
        assert_eq!(config.listeners[0].spec.scheduler, expected);
    }
    let bad = [
        "scheduler = \"WRR\"",
        "scheduler = \"lc\"",
        "health_check_type = \"udp\"",
        "eip_transmit = \"yes\"",
        "status = \"paused\"",
    ];
    let expected = [
        "InvalidScheduler",
        "InvalidScheduler",
        "InvalidHealthCheckType",
        "InvalidEipTransmit",
        "InvalidStatus",
    ];
    for (line, code) in bad.iter().zip(expected) {
        assert_eq!(codes(&file("listener", line)), [code], "{line}");
    }
}

#[test]
fn form_rules() {
    let cases: &[(&str, &str, Option<&str>)] = &[
        ("listener", "description = \"web\"", None),
        (
            "listener",
            &format!("description = \"{}\"", "d".repeat(80)),
            None,
        ),
        (
            "listener",
            &format!("description = \"{}\"", "d".repeat(81)),
            Some("InvalidDescription"),
        ),
        ("listener", "description = \"\"", Some("InvalidDescription")),
        (
            "listener",
            "description = \"https://web\"",
            Some("InvalidDescription"),
        ),
        ("listener", "health_check_uri = \"/ok\"", None),
        (
            "listener",
            "health_check_uri = \"/\"",
            Some("InvalidHealthCheckURI"),
        ),
        (
            "listener",
            "health_check_uri = \"ok\"",
            Some("InvalidHealthCheckURI"),
        ),
        (
            "listener",
            &format!("health_check_uri = \"/{}\"", "u".repeat(80)),
            Some("InvalidHealthCheckURI"),
        ),
        (
            "listener",
            "health_check_domain = \"www.example.com\"",
            None,
        ),
        (
            "listener",
            "health_check_domain = \"www_example.com\"",
            Some("InvalidHealthCheckDomain"),
        ),
        (
            "listener",
            &format!("health_check_domain = \"{}\"", "a".repeat(81)),
            Some("InvalidHealthCheckDomain"),
        ),
        (
            "listener",
            "health_check_http_code = \"http_2xx,http_5xx\"",
            None,
        ),
        (
            "listener",
            "health_check_http_code = \"http_2xx,http_6xx\"",
            Some("InvalidHealthCheckHttpCode"),
        ),
        (
            "listener",
            "health_check_http_code = \"\"",
            Some("InvalidHealthCheckHttpCode"),
        ),
        ("backend", "ip = \"::1\"", None),
    ];
    for (slot, line, code) in cases {
        let want: Vec<String> = code.iter().map(|c| c.to_string()).collect();
        let src = file(slot, line).replace(
            "  ip = \"127.0.0.1\"\n",
            if *slot == "backend" {
                ""
            } else {
                "  ip = \"127.0.0.1\"\n"
            },
        );
        assert_eq!(codes(&src), want, "{line}");
    }
}

#[test]
fn ids_are_1_to_64_printable_characters_without_spaces() {
    let ok = "x".repeat(64);
    // The id is both the load balancer's and the listener's reference to it.
    let src = file("", "").replace("\"lb-1\"", &format!("\"{ok}\""));
    assert!(codes(&src).is_empty());
    for id in ["", "lb 1", "lb\\u0001"] {
        let src = file("", "").replace("\"lb-1\"", &format!("\"{id}\""));
        let want = ["InvalidLoadBalancerId", "InvalidLoadBalancerId"];
        assert_eq!(codes(&src), want, "{id:?}");
    }
    let long = "x".repeat(65);
    let src = file("", "").replace("server_id = \"b1\"", &format!("server_id = \"{long}\""));
    assert_eq!(codes(&src), ["InvalidServerId"]);
    let src = file("", "").replace("ip = \"127.0.0.1\"", "ip = \"localhost\"");
    assert_eq!(codes(&src), ["InvalidIp"]);
    let src = file("", "").replace("address = \"127.0.0.1\"\n", "address = \"127.0.0.256\"\n");
    assert_eq!(codes(&src), ["InvalidAddress"]);
}

#[test]
fn missing_required_keys() {
    let src = file("", "").replace("load_balancer_id = \"lb-1\"\n", "");
    assert_eq!(errors(&src), [("MissingLoadBalancerId".to_string(), 15, 1)]);
    let src = file("", "").replace("listener_port = 80\n", "");
    assert_eq!(errors(&src), [("MissingListenerPort".to_string(), 15, 1)]);
    let src = file("listener", "health_check_type = \"http\"");
    assert_eq!(errors(&src), [("MissingHealthCheckURI".to_string(), 15, 1)]);
    let src = file("", "").replace("  server_id = \"b1\"\n", "");
    assert_eq!(errors(&src), [("MissingServerId".to_string(), 10, 3)]);
    let src = file("", "").replace("  ip = \"127.0.0.1\"\n", "");
    assert_eq!(errors(&src), [("MissingIp".to_string(), 10, 3)]);
    // A load balancer without an id cannot be the one its listener names.
    let src = file("", "").replace("\nid = \"lb-1\"\n", "\n");
    assert_eq!(
        codes(&src),
        ["MissingLoadBalancerId", "LoadBalancerNotFound"]
    );
}

#[test]
fn unknown_keys_at_every_level() {
    for slot in ["global", "admin", "lb", "backend", "listener"] {
        assert_eq!(
            codes(&file(slot, "colour = \"blue\"")),
            ["InvalidParameter.colour"],
            "{slot}"
        );
    }
    let src = format!("colour = 1\n{}", file("", ""));
    assert_eq!(
        errors(&src),
        [("InvalidParameter.colour".to_string(), 1, 1)]
    );
    let key = "[[admin.access_keys]]\naccess_key_id = \"k\"\naccess_key_secret = \"s\"\nactions = [\"ens:*\"]\ncolour = 1";
    assert_eq!(codes(&file("admin", key)), ["InvalidParameter.colour"]);
    // The API's parameter names are not file keys.
    assert_eq!(
        codes(&file("listener", "ListenerPort = 81")),
        ["InvalidParameter.ListenerPort"]
    );
}

#[test]
fn unknown_load_balancer_and_duplicate_listener() {
    let src = file("", "").replace("load_balancer_id = \"lb-1\"", "load_balancer_id = \"lb-2\"");
    assert_eq!(errors(&src), [("LoadBalancerNotFound".to_string(), 16, 20)]);
    let dup = format!(
        "{}\n[[listeners]]\nload_balancer_id = \"lb-1\"\nlistener_port = 80\n",
        file("", "")
    );
    assert_eq!(
        errors(&dup),
        [("ListenerAlreadyExists".to_string(), 22, 17)]
    );
    // Another port on the same load balancer is fine.
    let other = format!(
        "{}\n[[listeners]]\nload_balancer_id = \"lb-1\"\nlistener_port = 81\n",
        file("", "")
    );
    assert_eq!(valid(&other).listeners.len(), 2);
}

#[test]
fn overlapping_binds_across_load_balancers_are_refused() {
    let lb2 = |addr: &str| {
        format!(
            "{}\n[[load_balancers]]\nid = \"lb-2\"\naddress = \"{addr}\"\n[[listeners]]\nload_balancer_id = \"lb-2\"\nlistener_port = 80\n",
            file("", "")
        )
    };
    assert_eq!(codes(&lb2("127.0.0.1")), ["ListenerAlreadyExists"]);
    assert_eq!(codes(&lb2("0.0.0.0")), ["ListenerAlreadyExists"]);
    assert!(codes(&lb2("127.0.0.2")).is_empty());
    assert!(codes(&lb2("::1")).is_empty());
}

#[test]
fn duplicate_ids_are_refused() {
    let src = file("", "").replace("{backend}", "") + "";
    let two = src.replace(
        "  port = 9001\n",
        "  port = 9001\n  [[load_balancers.backend_servers]]\n  server_id = \"b1\"\n  ip = \"127.0.0.2\"\n",
    );
    assert_eq!(codes(&two), ["InvalidServerId"]);
    let lbs = format!("{}\n[[load_balancers]]\nid = \"lb-1\"\n", file("", ""));
    assert_eq!(codes(&lbs), ["InvalidLoadBalancerId"]);
}

#[test]
fn several_mistakes_are_all_reported_in_file_order() {
    let src = r#"[global]
connect_retries = -1
[[load_balancers]]
id = "lb-1"
  [[load_balancers.backend_servers]]
  server_id = "b1"
  ip = "10.0.0.1"
  weight = 101
[[listeners]]
load_balancer_id = "lb-1"
listener_port = 70000
scheduler = "fastest"
[[listeners]]
load_balancer_id = "lb-9"
listener_port = 81
typo = 1
"#;
    let got = errors(src);
    let want = [
        ("InvalidConnectRetries", 2, 19),
        ("InvalidWeight", 8, 12),
        ("InvalidListenerPort", 11, 17),
        ("InvalidScheduler", 12, 13),
        ("LoadBalancerNotFound", 14, 20),
        ("InvalidParameter.typo", 16, 1),
    ];
    let want: Vec<(String, usize, usize)> = want
        .iter()
        .map(|(c, l, k)| (c.to_string(), *l, *k))
        .collect();
    assert_eq!(got, want);
}

#[test]
fn not_toml_gets_a_located_error() {
    for (src, line) in [
        ("listener_port = \n", 1),
        ("[global]\nx = [1,\n", 2),
        ("\u{0}\u{1}garbage", 1),
        ("[[listeners]\n", 1),
    ] {
        let got = errors(src);
        assert_eq!(got.len(), 1, "{src:?}");
        assert_eq!(got[0].0, "InvalidParameter");
        assert_eq!(got[0].1, line, "{src:?}");
    }
}

#[test]
fn defaults_are_resolved() {
    let config = valid(&file("", ""));
    let g = &config.global;
    assert_eq!(g.hash_seed, "edgelb");
    assert_eq!(g.backend_connect_timeout, Duration::from_millis(3000));
    assert_eq!(
        (g.connect_retries, g.drain_timeout),
        (2, Duration::from_secs(30))
    );
    assert_eq!(g.drain_delay, Duration::ZERO);
    assert_eq!((g.persistence_max_entries, g.max_connections), (262_144, 0));
    assert_eq!(g.access_log, AccessLogTarget::Off);
    assert_eq!(g.access_log_format, AccessLogFormat::Text);
    let l = &config.listeners[0];
    assert_eq!(l.spec.scheduler, Scheduler::Wrr);
    assert_eq!(l.persistence_timeout, None);
    assert_eq!(l.established_timeout, Duration::from_secs(900));
    assert_eq!(
        (l.spec.healthy_threshold, l.spec.unhealthy_threshold),
        (3, 3)
    );
    assert_eq!(l.health_check.kind, HealthCheckType::Tcp);
    assert_eq!(l.health_check.interval, Duration::from_secs(2));
    assert_eq!(l.health_check.timeout, Duration::from_secs(5));
    assert_eq!(l.health_check.http_codes.to_api_string(), "http_2xx");
    assert!(!l.spec.eip_transmit);
    assert_eq!(l.spec.status, Status::Running);
    assert_eq!(l.bind.to_string(), "127.0.0.1:80");
    assert_eq!(l.backends[0].weight, 100);
    let lb_default = valid(&file("", "").replace("address = \"127.0.0.1\"\n", ""));
    assert_eq!(lb_default.listeners[0].bind.to_string(), "0.0.0.0:80");
}

#[test]
fn backend_port_precedence_and_health_port_default() {
    // The backend's port when the listener sets none.
    let l = &valid(&file("", "")).listeners[0];
    assert_eq!(l.backends[0].addr.to_string(), "127.0.0.1:9001");
    assert_eq!(
        l.backends[0].health_check_addr.to_string(),
        "127.0.0.1:9001"
    );
    // The listener's backend_server_port first.
    let l = &valid(&file("listener", "backend_server_port = 7000")).listeners[0];
    assert_eq!(l.backends[0].addr.port(), 7000);
    assert_eq!(l.backends[0].health_check_addr.port(), 7000);
    // The listener port when neither is set.
    let src = file("listener", "health_check_connect_port = 7001").replace("  port = 9001\n", "");
    let l = &valid(&src).listeners[0];
    assert_eq!(l.backends[0].addr.port(), 80);
    assert_eq!(l.backends[0].health_check_addr.port(), 7001);
}

#[test]
fn health_check_timeout_is_at_least_the_interval() {
    let l = &valid(&file(
        "listener",
        "health_check_connect_timeout = 3\nhealth_check_interval = 10",
    ))
    .listeners[0];
    assert_eq!(l.health_check.timeout, Duration::from_secs(10));
    let l = &valid(&file(
        "listener",
        "health_check_connect_timeout = 30\nhealth_check_interval = 10",
    ))
    .listeners[0];
    assert_eq!(l.health_check.timeout, Duration::from_secs(30));
}

#[test]
fn health_check_host_defaults_to_the_backend_ip() {
    let l = &valid(&file(
        "listener",
        "health_check_type = \"http\"\nhealth_check_uri = \"/ok\"",
    ))
    .listeners[0];
    assert_eq!(l.backends[0].health_check_host, "127.0.0.1");
    let v6 = file("", "").replace("ip = \"127.0.0.1\"", "ip = \"::1\"");
    assert_eq!(
        valid(&v6).listeners[0].backends[0].health_check_host,
        "[::1]"
    );
    let l = &valid(&file(
        "listener",
        "health_check_domain = \"health.example\"",
    ))
    .listeners[0];
    assert_eq!(l.backends[0].health_check_host, "health.example");
}

#[test]
fn admin_rules() {
    let no_admin = file("", "").replace("address = \"127.0.0.1:0\"\n", "");
    assert_eq!(
        valid(&no_admin).admin.address.map(|a| a.to_string()),
        Some("127.0.0.1:9900".into())
    );
    let disabled = file("", "").replace("address = \"127.0.0.1:0\"", "address = \"\"");
    assert_eq!(valid(&disabled).admin.address, None);
    let admin = valid(&no_admin).admin;
    assert_eq!(admin.request_header_timeout, Duration::from_secs(10));
    assert_eq!(admin.request_body_timeout, Duration::from_secs(10));
    assert_eq!(admin.max_connections, 256);
    let set = valid(&file(
        "admin",
        "request_header_timeout = 2\nrequest_body_timeout = 3\nmax_connections = 8",
    ))
    .admin;
    assert_eq!(set.request_header_timeout, Duration::from_secs(2));
    assert_eq!(set.request_body_timeout, Duration::from_secs(3));
    assert_eq!(set.max_connections, 8);
    let open = file("", "").replace("address = \"127.0.0.1:0\"", "address = \"0.0.0.0:9900\"");
    assert_eq!(errors(&open), [("InvalidAddress".to_string(), 4, 11)]);
    let key = "[[admin.access_keys]]\naccess_key_id = \"k\"\naccess_key_secret = \"s\"\nactions = [\"ens:Describe*\"]";
    let keyed =
        file("admin", key).replace("address = \"127.0.0.1:0\"", "address = \"0.0.0.0:9900\"");
    let config = valid(&keyed);
    assert_eq!(config.admin.access_keys[0].actions, ["ens:Describe*"]);
    assert_eq!(
        codes(&file(
            "admin",
            "[[admin.access_keys]]\naccess_key_id = \"k\"\nactions = [\"ens:*\"]"
        )),
        ["MissingAccessKeySecret"]
    );
    assert_eq!(
        codes(&file(
            "admin",
            "[[admin.access_keys]]\naccess_key_id = \"k\"\naccess_key_secret = \"s\""
        )),
        ["MissingActions"]
    );
    assert_eq!(codes(&file("admin", "[[admin.access_keys]]\naccess_key_id = \"k\"\naccess_key_secret = \"s\"\nactions = [\"slb:*\"]")), ["InvalidActions"]);
    assert_eq!(
        codes(&file(
            "admin",
            "[[admin.access_keys]]\naccess_key_secret = \"s\"\nactions = [\"ens:*\"]"
        )),
        ["MissingAccessKeyId"]
    );
    let missing_file = "[[admin.access_keys]]\naccess_key_id = \"k\"\naccess_key_secret_file = \"/nonexistent/secret\"\nactions = [\"ens:*\"]";
    assert_eq!(
        codes(&file("admin", missing_file)),
        ["InvalidAccessKeySecretFile"]
    );
}

#[test]
fn secret_files_are_read_relative_to_the_config() {
    let dir = std::env::temp_dir().join(format!("edgelb-secret-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("ops.secret"), "s3cret\n").unwrap();
    let key = "[[admin.access_keys]]\naccess_key_id = \"k\"\naccess_key_secret_file = \"ops.secret\"\nactions = [\"ens:*\"]";
    let config = Config::parse(&file("admin", key), Some(&dir)).unwrap();
    assert_eq!(config.admin.access_keys[0].secret, "s3cret");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn the_example_file_uses_every_key_and_is_valid() {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/config/listener.toml");
    let src = std::fs::read_to_string(path).unwrap();
    let config = Config::load(std::path::Path::new(path)).unwrap();
    assert_eq!(config.listeners.len(), 1);
    for param in edgelb::config::LISTENER_PARAMS {
        assert!(
            src.contains(&format!("\n{} = ", param.key)),
            "example lacks {}",
            param.key
        );
    }
    for key in [
        "hash_seed",
        "backend_connect_timeout_ms",
        "connect_retries",
        "drain_timeout",
        "drain_delay",
        "persistence_max_entries",
        "max_connections",
        "access_log",
        "access_log_format",
        "access_key_id",
        "access_key_secret_file",
        "actions",
        "server_id",
        "weight",
    ] {
        assert!(src.contains(key), "example lacks {key}");
    }
}

#[test]
fn access_log_is_off_stderr_or_a_file_in_a_directory_that_exists() {
    let dir = std::env::temp_dir().join(format!("edgelb-access-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let parse = |global: &str| Config::parse(&file("global", global), Some(&dir));
    let g = parse("access_log = \"\"").unwrap().global;
    assert_eq!(g.access_log, AccessLogTarget::Off);
    let g = parse("access_log = \"stderr\"\naccess_log_format = \"json\"")
        .unwrap()
        .global;
    assert_eq!(
        (g.access_log, g.access_log_format),
        (AccessLogTarget::Stderr, AccessLogFormat::Json)
    );
    // Relative to the listener file's directory, like secret files.
    let g = parse("access_log = \"access.log\"").unwrap().global;
    assert_eq!(g.access_log, AccessLogTarget::File(dir.join("access.log")));
    let g = parse("access_log = \"/var/log/../tmp/a.log\"")
        .unwrap()
        .global;
    assert_eq!(
        g.access_log,
        AccessLogTarget::File("/var/log/../tmp/a.log".into())
    );
    std::fs::remove_dir_all(&dir).unwrap();

    // Errors with the value's location ([global] is line 1, the key line 2).
    let src = file("global", "access_log = \"/nonexistent-edgelb/access.log\"");
    assert_eq!(errors(&src), [("InvalidAccessLog".to_string(), 2, 14)]);
    let err = Config::parse(&src, None).unwrap_err();
    assert!(
        err[0]
            .message
            .contains("directory /nonexistent-edgelb does not exist"),
        "{}",
        err[0].message
    );
    assert_eq!(
        errors(&file("global", "access_log = \"/tmp\"")),
        [("InvalidAccessLog".to_string(), 2, 14)]
    );
    assert_eq!(
        codes(&file("global", "access_log = 1")),
        ["InvalidAccessLog"]
    );
    assert_eq!(
        errors(&file("global", "access_log_format = \"xml\"")),
        [("InvalidAccessLogFormat".to_string(), 2, 21)]
    );
    assert_eq!(
        codes(&file("global", "access_log_format = \"JSON\"")),
        ["InvalidAccessLogFormat"]
    );
}
