//! Property-based fuzzing (proptest) of every parser that reads outside input: the
//! listener file, the control API's parameters and signature header, and PROXY v2
//! headers. The property is always "no panic, whatever the input"; where a result is
//! known (a valid file, an encoded header) it is checked too.
//!
//! CI runs proptest's default case count (256 per property; `PROPTEST_CASES`
//! overrides it). A long run, as the README says:
//! `PROPTEST_CASES=100000 cargo test --release --test fuzz`.
//! (cargo-fuzz needs a nightly toolchain, which the project's machines do not have.)
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use edgelb::api::actions::{self, Action};
use edgelb::api::params::{self, ApiFields, JsonFields, Params};
use edgelb::api::signature::{self, Authorization};
use edgelb::config::{line_col, LISTENER_PARAMS};
use edgelb::config::{
    validate_backend_server, validate_listener_key, validate_listener_spec, Config, Reader,
};
use edgelb::proxy_protocol::{decode_v2, encode_v2, Command, MAX_V2_LEN, SIGNATURE};
use proptest::prelude::*;
use std::net::{IpAddr, Ipv6Addr, SocketAddr};

// ---------------------------------------------------------------- listener file

/// Keys the validator knows, per table, plus a few it must refuse.
const GLOBAL_KEYS: &[&str] = &[
    "hash_seed",
    "backend_connect_timeout_ms",
    "connect_retries",
    "drain_timeout",
    "persistence_max_entries",
    "max_connections",
    "bogus",
];
const BACKEND_KEYS: &[&str] = &["server_id", "ip", "port", "weight", "type", "Weight"];
const ADMIN_KEYS: &[&str] = &["address", "bogus"];

/// A TOML value of any type, biased towards the edges of the API's ranges.
fn toml_value() -> impl Strategy<Value = String> {
    prop_oneof![
        prop_oneof![
            Just(0i64),
            Just(1),
            Just(2),
            Just(10),
            Just(80),
            Just(100),
            Just(101),
            Just(900),
            Just(3600),
            Just(65535),
            Just(65536),
            Just(-1),
            Just(i64::MAX),
            Just(i64::MIN),
            any::<i64>(),
        ]
        .prop_map(|n| n.to_string()),
        prop_oneof![
            Just("wrr"),
            Just("wlc"),
            Just("rr"),
            Just("sch"),
            Just("tch"),
            Just("tcp"),
            Just("http"),
            Just("on"),
            Just("off"),
            Just("running"),
            Just("stopped"),
            Just("lb"),
            Just("127.0.0.1"),
            Just("::1"),
            Just("127.0.0.1:0"),
            Just("/health"),
            Just("/"),
            Just("http_2xx,http_5xx"),
            Just("http://x"),
            Just(""),
            Just("é\u{0}\u{202e}"),
        ]
        .prop_map(|s| format!("{s:?}")),
        "[ -~]{0,90}".prop_map(|s| format!("{s:?}")),
        any::<bool>().prop_map(|b| b.to_string()),
        any::<f64>().prop_map(|f| format!("{f:?}")),
        Just("[1, \"a\"]".to_string()),
        Just("{ a = 1 }".to_string()),
        Just("1979-05-27T07:32:00Z".to_string()),
    ]
}

fn table_lines(keys: &'static [&'static str]) -> impl Strategy<Value = String> {
    prop::collection::vec((prop::sample::select(keys), toml_value()), 0..6).prop_map(|kvs| {
        kvs.into_iter()
            .map(|(k, v)| format!("{k} = {v}\n"))
            .collect()
    })
}

fn listener_keys() -> Vec<&'static str> {
    let mut keys: Vec<&'static str> = LISTENER_PARAMS.iter().map(|p| p.key).collect();
    keys.push("listener_protocol");
    keys.push("ListenerPort");
    keys
}

/// A near-valid file: the right tables, with keys and values drawn at random, plus
/// a valid core that random lines may override (a duplicate key is a TOML error).
fn near_valid_file() -> impl Strategy<Value = String> {
    let listener_lines =
        prop::collection::vec((prop::sample::select(listener_keys()), toml_value()), 0..8)
            .prop_map(|kvs| {
                kvs.into_iter()
                    .map(|(k, v)| format!("{k} = {v}\n"))
                    .collect::<String>()
            });
    (
        table_lines(GLOBAL_KEYS),
        table_lines(ADMIN_KEYS),
        prop::collection::vec(table_lines(BACKEND_KEYS), 0..3),
        prop::collection::vec(listener_lines, 0..3),
        any::<bool>(),
    )
        .prop_map(|(global, admin, backends, listeners, core)| {
            let mut text = format!("[global]\n{global}[admin]\n{admin}");
            text.push_str("[[load_balancers]]\nid = \"lb\"\naddress = \"127.0.0.1\"\n");
            for b in backends {
                text.push_str("[[load_balancers.backend_servers]]\n");
                if core {
                    text.push_str("server_id = \"b\"\nip = \"127.0.0.1\"\n");
                }
                text.push_str(&b);
            }
            for l in listeners {
                text.push_str("[[listeners]]\n");
                if core {
                    text.push_str("load_balancer_id = \"lb\"\nlistener_port = 80\n");
                }
                text.push_str(&l);
            }
            text
        })
}

/// Parses, and renders every error as the CLI would (positions included).
fn parse_and_render(text: &str) {
    if let Err(errors) = Config::parse(text, None) {
        assert!(!errors.is_empty(), "an error result with no error");
        for e in &errors {
            let _ = e.to_string();
            if let Some(span) = &e.span {
                let _ = line_col(text, span.start);
                let _ = line_col(text, span.end);
            }
        }
    }
}

proptest! {
    #[test]
    fn config_parse_never_panics_on_arbitrary_text(text in "\\PC{0,400}") {
        parse_and_render(&text);
    }

    #[test]
    fn config_parse_never_panics_on_toml_shaped_text(
        text in "(\\[{1,2}[a-z_.]{0,20}\\]{1,2}\n|[a-z_]{1,30} = (\"[ -~]{0,20}\"|-?[0-9]{1,20}|true|\\[\\]|\\{\\})\n){0,20}"
    ) {
        parse_and_render(&text);
    }

    #[test]
    fn config_parse_never_panics_on_near_valid_files(text in near_valid_file()) {
        parse_and_render(&text);
    }

    #[test]
    fn line_col_never_panics(text in "\\PC{0,60}", offset in 0usize..200) {
        let (line, col) = line_col(&text, offset);
        prop_assert!(line >= 1 && col >= 1);
    }
}

// ---------------------------------------------------------------- control API

const API_NAMES: &[&str] = &[
    "LoadBalancerId",
    "ListenerPort",
    "Description",
    "Scheduler",
    "PersistenceTimeout",
    "EstablishedTimeout",
    "HealthyThreshold",
    "UnhealthyThreshold",
    "HealthCheckConnectTimeout",
    "HealthCheckInterval",
    "HealthCheckType",
    "HealthCheckDomain",
    "HealthCheckURI",
    "HealthCheckHttpCode",
    "BackendServerPort",
    "HealthCheckConnectPort",
    "EipTransmit",
    "Status",
    "BackendServers",
    "ListenerProtocol",
    "Bogus",
];

fn api_value() -> impl Strategy<Value = String> {
    prop_oneof![
        toml_value().prop_map(|v| v.trim_matches('"').to_string()),
        "\\PC{0,40}",
        Just(
            "[{\"ServerId\":\"b\",\"Ip\":\"127.0.0.1\",\"Port\":1,\"Weight\":50,\"Type\":\"ens\"}]"
                .to_string()
        ),
        Just("[{\"ServerId\":1,\"Ip\":[],\"Port\":1.5,\"Weight\":null}]".to_string()),
    ]
}

fn api_params() -> impl Strategy<Value = Params> {
    prop::collection::btree_map(
        prop_oneof![
            prop::sample::select(API_NAMES).prop_map(String::from),
            "[A-Za-z]{1,12}"
        ],
        api_value(),
        0..8,
    )
}

fn json_value() -> impl Strategy<Value = serde_json::Value> {
    use serde_json::Value as J;
    let leaf = prop_oneof![
        Just(J::Null),
        any::<bool>().prop_map(J::Bool),
        any::<i64>().prop_map(J::from),
        any::<f64>().prop_map(J::from),
        "\\PC{0,20}".prop_map(J::String),
        Just(J::String("127.0.0.1".into())),
    ];
    leaf.prop_recursive(2, 8, 4, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..3).prop_map(J::Array),
            prop::collection::btree_map("[A-Za-z]{1,8}", inner, 0..3)
                .prop_map(|m| J::Object(m.into_iter().collect())),
        ]
    })
}

proptest! {
    #[test]
    fn form_decoding_never_panics(text in "\\PC{0,200}") {
        let _ = params::parse_form(&text);
    }

    #[test]
    fn form_decoding_never_panics_on_percent_soup(text in "([%+=&]|%[0-9a-fA-F]{0,2}|[a-zé]){0,60}") {
        if let Ok(pairs) = params::parse_form(&text) {
            // Every pair came from a non-empty `&`-separated piece.
            prop_assert!(pairs.len() <= text.split('&').count());
        }
    }

    #[test]
    fn listener_parameters_never_panic(p in api_params()) {
        let fields = ApiFields { params: &p, allowed: &LISTENER_PARAMS };
        let mut errors = Vec::new();
        let mut r = Reader::new(&fields, &mut errors);
        let spec = validate_listener_spec(&mut r);
        r.finish();
        if let Some(spec) = spec {
            prop_assert!(spec.listener_port >= 1);
        }
        let _ = params::read(&p, &LISTENER_PARAMS, validate_listener_key);
        for (k, v) in &p {
            let _ = params::toml_value(k, v);
        }
    }

    #[test]
    fn backend_servers_never_panic(text in prop_oneof![
        "\\PC{0,80}",
        prop::collection::vec(json_value(), 0..25).prop_map(|v| serde_json::Value::Array(v).to_string()),
    ]) {
        let mut p = Params::new();
        p.insert("BackendServers".into(), text);
        if let Ok(list) = params::backend_servers(&p) {
            for object in &list {
                let fields = JsonFields(object);
                let mut errors = Vec::new();
                let mut r = Reader::new(&fields, &mut errors);
                let _ = validate_backend_server(&mut r);
                r.finish();
            }
        }
    }

    #[test]
    fn authorization_header_and_date_never_panic(
        header in prop_oneof![
            "\\PC{0,120}",
            "ACS3-HMAC-SHA256 ((Credential|SignedHeaders|Signature|X)=[ -+\\--~]{0,20},?){0,4}",
        ],
        date in prop_oneof!["\\PC{0,24}", "[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}Z"],
    ) {
        let _ = Authorization::parse(&header);
        let _ = signature::parse_date(&date);
        let _ = signature::verify("secret", &header, &date);
    }
}

/// The whole API path past authentication: random actions with random parameters
/// against a running edgelb (listeners bind port 0). Fewer cases: each one may edit
/// and write back the listener file.
#[test]
fn api_actions_never_panic() {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let backend: SocketAddr = "127.0.0.1:9".parse().unwrap();
    let text = support::config_text(&[("b1", backend, 100)], "", "health_check_interval = 50");
    let api = runtime.block_on(support::start_api(&text));
    let cases = std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|s| s.parse::<u32>().ok())
        .map_or(64, |n| (n / 4).max(16));
    let mut runner = proptest::test_runner::TestRunner::new(ProptestConfig::with_cases(cases));
    let actions = prop::sample::select(Action::ALL.to_vec());
    let result = runner.run(&(actions, api_params()), |(action, p)| {
        runtime.block_on(async {
            let _ = actions::run(action, &p, &api.control).await;
        });
        Ok(())
    });
    drop(api);
    result.unwrap();
}

// ---------------------------------------------------------------- PROXY v2

fn socket_addr() -> impl Strategy<Value = SocketAddr> {
    prop_oneof![
        (any::<[u8; 4]>(), any::<u16>())
            .prop_map(|(ip, port)| SocketAddr::new(IpAddr::from(ip), port)),
        (any::<[u8; 16]>(), any::<u16>())
            .prop_map(|(ip, port)| SocketAddr::new(IpAddr::from(ip), port)),
        (any::<[u8; 4]>(), any::<u16>()).prop_map(|(ip, port)| {
            let mapped = std::net::Ipv4Addr::from(ip).to_ipv6_mapped();
            SocketAddr::new(IpAddr::V6(mapped), port)
        }),
    ]
}

/// What the decoder must give back: mapped IPv4 comes back as IPv4 only when both
/// sides are IPv4 (or mapped); otherwise as IPv6, an IPv4 side mapped.
fn expected(src: SocketAddr, dst: SocketAddr) -> (SocketAddr, SocketAddr) {
    let v4 = |ip: IpAddr| match ip {
        IpAddr::V4(a) => Some(a),
        IpAddr::V6(a) => a.to_ipv4_mapped(),
    };
    let v6 = |ip: IpAddr| -> Ipv6Addr {
        match ip {
            IpAddr::V4(a) => a.to_ipv6_mapped(),
            IpAddr::V6(a) => a,
        }
    };
    match (v4(src.ip()), v4(dst.ip())) {
        (Some(s), Some(d)) => (
            SocketAddr::new(s.into(), src.port()),
            SocketAddr::new(d.into(), dst.port()),
        ),
        _ => (
            SocketAddr::new(v6(src.ip()).into(), src.port()),
            SocketAddr::new(v6(dst.ip()).into(), dst.port()),
        ),
    }
}

proptest! {
    #[test]
    fn proxy_v2_round_trips(src in socket_addr(), dst in socket_addr(), tail in prop::collection::vec(any::<u8>(), 0..32)) {
        let mut buf = [0u8; MAX_V2_LEN];
        let n = encode_v2(src, dst, &mut buf);
        let mut bytes = buf[..n].to_vec();
        bytes.extend_from_slice(&tail);
        let decoded = decode_v2(&bytes).unwrap();
        prop_assert_eq!(decoded, Some((Command::Proxy, Some(expected(src, dst)), n)));
        for cut in 0..n {
            prop_assert_eq!(decode_v2(&bytes[..cut]), Ok(None));
        }
    }

    #[test]
    fn proxy_v2_decode_never_panics(bytes in prop::collection::vec(any::<u8>(), 0..300)) {
        if let Ok(Some((_, _, used))) = decode_v2(&bytes) {
            prop_assert!(used <= bytes.len());
        }
    }

    #[test]
    fn proxy_v2_decode_never_panics_past_the_signature(
        vc in any::<u8>(),
        family in prop_oneof![Just(0x00u8), Just(0x11), Just(0x12), Just(0x21), Just(0x22), Just(0x31), Just(0x32), any::<u8>()],
        len in prop_oneof![0u16..300, any::<u16>()],
        rest in prop::collection::vec(any::<u8>(), 0..300),
    ) {
        let mut bytes = SIGNATURE.to_vec();
        bytes.push(vc);
        bytes.push(family);
        bytes.extend_from_slice(&len.to_be_bytes());
        bytes.extend_from_slice(&rest);
        if let Ok(Some((_, _, used))) = decode_v2(&bytes) {
            prop_assert!(used <= bytes.len());
        }
    }
}
