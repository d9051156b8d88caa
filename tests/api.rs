//! The control API end to end: a real server and admin server in-process, a listener
//! file in a temporary directory, calls over HTTP (unsigned on loopback, or signed
//! here with the V3 signature), and the official Python SDK against it.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use edgelb::api::signature;
use edgelb::config::Config;
use serde_json::Value;
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use support::*;
use tokio::net::TcpStream;

/// A listener file with comments, two load balancers and one listener.
fn base_file(echo: SocketAddr, admin_extra: &str) -> String {
    format!(
        r#"# edgelb test file: comments must survive API edits
[global]
drain_timeout = 1   # short drains in tests

[admin]
address = "127.0.0.1:0"
{admin_extra}
[[load_balancers]]
id = "lb-a"          # the first one
address = "127.0.0.1"

  [[load_balancers.backend_servers]]
  server_id = "i-echo"
  ip = "{ip}"
  port = {port}

[[load_balancers]]
id = "lb-b"
address = "127.0.0.1"

# the file's own listener
[[listeners]]
load_balancer_id = "lb-a"
listener_port = 80
description = "web"   # kept
"#,
        ip = echo.ip(),
        port = echo.port()
    )
}

const KEYS: &str = r#"
  [[admin.access_keys]]
  access_key_id = "ops"
  access_key_secret = "ops-secret"
  actions = ["ens:*"]

  [[admin.access_keys]]
  access_key_id = "ro"
  access_key_secret = "ro-secret"
  actions = ["ens:Describe*"]
"#;

/// One call to the API: the status and the JSON body (`Null` when there is none).
async fn http_json(
    admin: SocketAddr,
    head: &str,
    headers: &[(String, String)],
    body: &[u8],
) -> (u16, Value) {
    let (status, _, body) = http(admin, head, headers, body).await;
    (status, serde_json::from_str(&body).unwrap_or(Value::Null))
}

fn query_string(params: &BTreeMap<String, String>) -> String {
    let pairs: Vec<String> = params
        .iter()
        .map(|(k, v)| {
            format!(
                "{}={}",
                signature::encode_value(k),
                signature::encode_value(v)
            )
        })
        .collect();
    pairs.join("&")
}

fn map(params: &[(&str, &str)]) -> BTreeMap<String, String> {
    params
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

/// An unsigned call, `aliyun`-style: `Action` in the query.
async fn call(api: &Api, action: &str, params: &[(&str, &str)]) -> (u16, Value) {
    let mut q = map(params);
    q.insert("Action".into(), action.into());
    http_json(api.admin, &format!("POST /?{}", query_string(&q)), &[], b"").await
}

struct Signing<'a> {
    id: &'a str,
    secret: &'a str,
    date: String,
    nonce: String,
}

impl<'a> Signing<'a> {
    fn new(id: &'a str, secret: &'a str) -> Self {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs();
        Signing {
            id,
            secret,
            date: iso(now),
            nonce: format!("{:032x}", rand::random::<u128>()),
        }
    }
}

/// `YYYY-MM-DDThh:mm:ssZ` of Unix seconds (civil-from-days, H. Hinnant).
fn iso(secs: u64) -> String {
    let days = (secs / 86_400) as i64;
    let rem = secs % 86_400;
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

/// A call signed as the SDK signs it (every header it sends, V3).
async fn signed(api: &Api, s: &Signing<'_>, action: &str, params: &[(&str, &str)]) -> (u16, Value) {
    signed_but_sent(api, s, action, params, params).await
}

/// Signs `params` but sends `sent` (a request changed on its way).
async fn signed_but_sent(
    api: &Api,
    s: &Signing<'_>,
    action: &str,
    params: &[(&str, &str)],
    sent: &[(&str, &str)],
) -> (u16, Value) {
    let q = map(params);
    let payload = signature::sha256_hex(b"");
    let headers: Vec<(String, String)> = [
        ("host", api.admin.to_string()),
        ("x-acs-action", action.to_string()),
        ("x-acs-content-sha256", payload.clone()),
        ("x-acs-date", s.date.clone()),
        ("x-acs-signature-nonce", s.nonce.clone()),
        ("x-acs-version", "2017-11-10".to_string()),
    ]
    .into_iter()
    .map(|(n, v)| (n.to_string(), v))
    .collect();
    let names: Vec<String> = headers.iter().map(|(n, _)| n.clone()).collect();
    let canonical = signature::canonical_request(
        "POST",
        "/",
        &q,
        headers.iter().map(|(n, v)| (n.as_str(), v.as_str())),
        &names,
        &payload,
    );
    let sig = signature::sign(s.secret, &signature::string_to_sign(&canonical));
    let mut all = headers;
    all.push((
        "authorization".into(),
        format!(
            "ACS3-HMAC-SHA256 Credential={},SignedHeaders={},Signature={sig}",
            s.id,
            names.join(";")
        ),
    ));
    http_json(
        api.admin,
        &format!("POST /?{}", query_string(&map(sent))),
        &all,
        b"",
    )
    .await
}

fn code(reply: &(u16, Value)) -> (u16, &str) {
    (reply.0, reply.1["Code"].as_str().unwrap_or("<none>"))
}

fn ok(reply: (u16, Value)) -> Value {
    assert_eq!(reply.0, 200, "{}", reply.1);
    let id = reply.1["RequestId"].as_str().unwrap();
    assert_eq!(id.len(), 36);
    assert_eq!(id, id.to_ascii_uppercase());
    reply.1
}

/// A ping echoed on `stream`, connected to `addr` first if it is not yet.
async fn ping(addr: SocketAddr, stream: &mut Option<TcpStream>) {
    if stream.is_none() {
        *stream = Some(TcpStream::connect(addr).await.unwrap());
    }
    round_trip(stream.as_mut().unwrap(), b"ping").await;
}

fn accepting(api: &Api, port: u16) -> Option<SocketAddr> {
    api.lb
        .server
        .local_addrs()
        .get(&edgelb::config::ListenerKey::new("lb-a", port))
        .copied()
}

#[tokio::test]
async fn a_listener_made_through_the_api_starts_stopped_serves_and_survives_a_restart() {
    let echo = echo_backend().await;
    let api = start_api(&base_file(echo.addr, "")).await;
    let created = call(
        &api,
        "CreateLoadBalancerTCPListener",
        &[
            ("LoadBalancerId", "lb-a"),
            ("ListenerPort", "81"),
            ("Scheduler", "rr"),
            ("Description", "made by the API"),
        ],
    )
    .await;
    ok(created);
    assert_eq!(accepting(&api, 81), None, "a new listener is Stopped");
    let d = ok(call(
        &api,
        "DescribeLoadBalancerTCPListenerAttribute",
        &[("LoadBalancerId", "lb-a"), ("ListenerPort", "81")],
    )
    .await);
    assert_eq!(d["Status"], "Stopped");
    assert_eq!(d["Scheduler"], "rr");
    assert_eq!(d["EstablishedTimeout"], 900, "file default");
    assert_eq!(d["Description"], "made by the API");

    ok(call(
        &api,
        "StartLoadBalancerListener",
        &[
            ("LoadBalancerId", "lb-a"),
            ("ListenerPort", "81"),
            ("ListenerProtocol", "tcp"),
        ],
    )
    .await);
    let addr = accepting(&api, 81).expect("started");
    let mut open = None;
    ping(addr, &mut open).await;

    ok(call(
        &api,
        "SetLoadBalancerTCPListenerAttribute",
        &[
            ("LoadBalancerId", "lb-a"),
            ("ListenerPort", "81"),
            ("Scheduler", "wlc"),
            ("PersistenceTimeout", "60"),
        ],
    )
    .await);
    let d = ok(call(
        &api,
        "DescribeLoadBalancerTCPListenerAttribute",
        &[("LoadBalancerId", "lb-a"), ("ListenerPort", "81")],
    )
    .await);
    assert_eq!(
        (
            d["Scheduler"].as_str(),
            d["PersistenceTimeout"].as_i64(),
            d["Status"].as_str()
        ),
        (Some("wlc"), Some(60), Some("Running"))
    );
    assert_eq!(accepting(&api, 81), Some(addr), "Set keeps the socket");

    let listed = ok(call(
        &api,
        "DescribeLoadBalancerListeners",
        &[("LoadBalancerId", "lb-a")],
    )
    .await);
    assert_eq!(listed["TotalCount"], 2);
    assert_eq!(listed["Listeners"]["Listener"][1]["ListenerPort"], 81);
    let attr = ok(call(
        &api,
        "DescribeLoadBalancerAttribute",
        &[("LoadBalancerId", "lb-a")],
    )
    .await);
    assert_eq!(attr["ListenerPorts"], serde_json::json!([80, 81]));
    assert_eq!(attr["BackendServers"][0]["ServerId"], "i-echo");

    // The file: comments and order kept, the new listener written after the old.
    let text = std::fs::read_to_string(&api.path).unwrap();
    for kept in [
        "# edgelb test file",
        "# short drains in tests",
        "# the first one",
        "# the file's own listener",
        "# kept",
    ] {
        assert!(text.contains(kept), "{kept:?} lost:\n{text}");
    }
    let at = |s: &str| {
        text.find(s)
            .unwrap_or_else(|| panic!("{s:?} missing:\n{text}"))
    };
    assert!(
        at("[global]") < at("[admin]")
            && at("[admin]") < at("id = \"lb-a\"")
            && at("listener_port = 80") < at("listener_port = 81"),
        "{text}"
    );
    assert!(
        text.contains("scheduler = \"wlc\"")
            && text.contains("persistence_timeout = 60")
            && text.contains("status = \"running\""),
        "{text}"
    );

    // A restart from the file serves the same listeners.
    let restarted = Lb {
        server: Arc::new(
            edgelb::server::Server::start(
                &Config::load(&api.path).unwrap(),
                ephemeral_binder(),
                edgelb::workers::Workers::current(),
            )
            .unwrap(),
        ),
    };
    let mut fresh = None;
    ping(restarted.addr("lb-a", 81), &mut fresh).await;
    ping(restarted.addr("lb-a", 80), &mut None).await;
    restarted.server.drain().await;

    // Stop closes the socket; the open connection runs on.
    ok(call(
        &api,
        "StopLoadBalancerListener",
        &[("LoadBalancerId", "lb-a"), ("ListenerPort", "81")],
    )
    .await);
    assert_eq!(accepting(&api, 81), None);
    ping(addr, &mut open).await;
    assert!(TcpStream::connect(addr).await.is_err(), "stopped: refused");

    ok(call(
        &api,
        "DeleteLoadBalancerListener",
        &[("LoadBalancerId", "lb-a"), ("ListenerPort", "81")],
    )
    .await);
    let config = Config::load(&api.path).unwrap();
    assert!(config.listener("lb-a", 81).is_none());
    assert!(config.listener("lb-a", 80).is_some());
    let gone = call(
        &api,
        "DescribeLoadBalancerTCPListenerAttribute",
        &[("LoadBalancerId", "lb-a"), ("ListenerPort", "81")],
    )
    .await;
    assert_eq!(code(&gone), (400, "ListenerNotFound"));
}

#[tokio::test]
async fn backend_servers_are_added_set_and_removed_under_their_load_balancer() {
    let echo = echo_backend().await;
    let api = start_api(&base_file(echo.addr, "")).await;
    let added = ok(call(
        &api,
        "AddBackendServers",
        &[
            ("LoadBalancerId", "lb-a"),
            (
                "BackendServers",
                r#"[{"ServerId":"i-new","Ip":"127.0.0.1","Port":9,"Weight":5,"Type":"ens"}]"#,
            ),
        ],
    )
    .await);
    let ids: Vec<&str> = added["BackendServers"]["BackendServer"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["ServerId"].as_str().unwrap())
        .collect();
    assert_eq!(ids, ["i-echo", "i-new"]);
    let text = std::fs::read_to_string(&api.path).unwrap();
    assert!(
        text.find("i-new").unwrap() < text.find("id = \"lb-b\"").unwrap(),
        "written under lb-a:\n{text}"
    );
    let config = Config::load(&api.path).unwrap();
    assert_eq!(
        config.load_balancer("lb-a").unwrap().backend_servers.len(),
        2
    );
    assert!(config
        .load_balancer("lb-b")
        .unwrap()
        .backend_servers
        .is_empty());
    let view = api.lb.server.listeners()[0].view.load();
    assert_eq!(
        view.listener.backends.len(),
        2,
        "applied to the running listener"
    );
    drop(view);

    ok(call(
        &api,
        "SetBackendServers",
        &[
            ("LoadBalancerId", "lb-a"),
            ("BackendServers", r#"[{"ServerId":"i-new","Weight":"0"}]"#),
        ],
    )
    .await);
    let config = Config::load(&api.path).unwrap();
    assert_eq!(
        config.load_balancer("lb-a").unwrap().backend_servers[1].weight,
        0
    );

    let removed = ok(call(
        &api,
        "RemoveBackendServers",
        &[
            ("LoadBalancerId", "lb-a"),
            ("BackendServers", r#"[{"ServerId":"i-new"}]"#),
        ],
    )
    .await);
    assert_eq!(
        removed["BackendServers"]["BackendServer"]
            .as_array()
            .unwrap()
            .len(),
        1
    );
    let missing = call(
        &api,
        "RemoveBackendServers",
        &[
            ("LoadBalancerId", "lb-a"),
            ("BackendServers", r#"[{"ServerId":"i-new"}]"#),
        ],
    )
    .await;
    assert_eq!(code(&missing), (400, "InvalidServerId"));
    let dup = call(
        &api,
        "AddBackendServers",
        &[
            ("LoadBalancerId", "lb-a"),
            (
                "BackendServers",
                r#"[{"ServerId":"i-echo","Ip":"127.0.0.1"}]"#,
            ),
        ],
    )
    .await;
    assert_eq!(code(&dup), (400, "InvalidServerId"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_calls_lose_nothing() {
    let echo = echo_backend().await;
    let api = Arc::new(start_api(&base_file(echo.addr, "")).await);
    let calls: Vec<_> = (0..20)
        .map(|i| {
            let api = api.clone();
            tokio::spawn(async move {
                let servers = format!(r#"[{{"ServerId":"i-{i}","Ip":"10.0.0.{i}","Weight":{i}}}]"#);
                call(
                    &api,
                    "AddBackendServers",
                    &[("LoadBalancerId", "lb-b"), ("BackendServers", &servers)],
                )
                .await
            })
        })
        .collect();
    for c in calls {
        ok(c.await.unwrap());
    }
    let config = Config::load(&api.path).unwrap();
    let mut ids: Vec<String> = config
        .load_balancer("lb-b")
        .unwrap()
        .backend_servers
        .iter()
        .map(|b| b.server_id.clone())
        .collect();
    ids.sort();
    let mut want: Vec<String> = (0..20).map(|i| format!("i-{i}")).collect();
    want.sort();
    assert_eq!(ids, want);
}

/// An action, its parameters and the code it must fail with.
type Case<'a> = (&'a str, Vec<(&'a str, &'a str)>, &'a str);

#[tokio::test]
async fn bad_input_gives_400_with_its_code_and_changes_nothing() {
    let echo = echo_backend().await;
    let api = start_api(&base_file(echo.addr, "")).await;
    let before = std::fs::read(&api.path).unwrap();
    let lb = ("LoadBalancerId", "lb-a");
    let cases: Vec<Case> = vec![
        (
            "CreateLoadBalancerTCPListener",
            vec![lb, ("ListenerPort", "70000")],
            "InvalidListenerPort",
        ),
        (
            "CreateLoadBalancerTCPListener",
            vec![lb, ("ListenerPort", "eighty")],
            "InvalidListenerPort",
        ),
        (
            "CreateLoadBalancerTCPListener",
            vec![("ListenerPort", "82")],
            "MissingLoadBalancerId",
        ),
        (
            "CreateLoadBalancerTCPListener",
            vec![lb],
            "MissingListenerPort",
        ),
        (
            "CreateLoadBalancerTCPListener",
            vec![lb, ("ListenerPort", "82"), ("Scheduler", "fastest")],
            "InvalidScheduler",
        ),
        (
            "CreateLoadBalancerTCPListener",
            vec![lb, ("ListenerPort", "82"), ("HealthCheckType", "http")],
            "MissingHealthCheckURI",
        ),
        (
            "CreateLoadBalancerTCPListener",
            vec![lb, ("ListenerPort", "82"), ("Description", "http://x")],
            "InvalidDescription",
        ),
        (
            "CreateLoadBalancerTCPListener",
            vec![lb, ("ListenerPort", "82"), ("Colour", "red")],
            "InvalidParameter.Colour",
        ),
        (
            "CreateLoadBalancerTCPListener",
            vec![lb, ("ListenerPort", "82"), ("Status", "running")],
            "InvalidParameter.Status",
        ),
        (
            "CreateLoadBalancerTCPListener",
            vec![("LoadBalancerId", "lb-zz"), ("ListenerPort", "82")],
            "LoadBalancerNotFound",
        ),
        (
            "CreateLoadBalancerTCPListener",
            vec![lb, ("ListenerPort", "80")],
            "ListenerAlreadyExists",
        ),
        (
            "SetLoadBalancerTCPListenerAttribute",
            vec![lb, ("ListenerPort", "80"), ("EstablishedTimeout", "5")],
            "InvalidEstablishedTimeout",
        ),
        (
            "SetLoadBalancerTCPListenerAttribute",
            vec![lb, ("ListenerPort", "80"), ("HealthCheckType", "http")],
            "MissingHealthCheckURI",
        ),
        (
            "SetLoadBalancerTCPListenerAttribute",
            vec![lb, ("ListenerPort", "99")],
            "ListenerNotFound",
        ),
        (
            "StartLoadBalancerListener",
            vec![lb, ("ListenerPort", "80"), ("ListenerProtocol", "udp")],
            "InvalidListenerProtocol",
        ),
        (
            "DeleteLoadBalancerListener",
            vec![lb, ("ListenerPort", "99")],
            "ListenerNotFound",
        ),
        (
            "AddBackendServers",
            vec![lb, ("BackendServers", "[{\"ServerId\":")],
            "InvalidBackendServers",
        ),
        ("AddBackendServers", vec![lb], "MissingBackendServers"),
        (
            "AddBackendServers",
            vec![lb, ("BackendServers", r#"[{"ServerId":"i-2"}]"#)],
            "MissingIp",
        ),
        (
            "AddBackendServers",
            vec![
                lb,
                (
                    "BackendServers",
                    r#"[{"ServerId":"i-2","Ip":"10.0.0.300"}]"#,
                ),
            ],
            "InvalidIp",
        ),
        (
            "AddBackendServers",
            vec![
                lb,
                (
                    "BackendServers",
                    r#"[{"ServerId":"i-2","Ip":"10.0.0.3","Weight":101}]"#,
                ),
            ],
            "InvalidWeight",
        ),
        (
            "AddBackendServers",
            vec![
                lb,
                (
                    "BackendServers",
                    r#"[{"ServerId":"i-2","Ip":"10.0.0.3","Shape":1}]"#,
                ),
            ],
            "InvalidParameter.Shape",
        ),
        (
            "AddBackendServers",
            vec![
                ("LoadBalancerId", "lb-zz"),
                ("BackendServers", r#"[{"ServerId":"i-2","Ip":"10.0.0.3"}]"#),
            ],
            "LoadBalancerNotFound",
        ),
        (
            "SetBackendServers",
            vec![lb, ("BackendServers", r#"[{"ServerId":"i-echo"}]"#)],
            "MissingWeight",
        ),
        (
            "SetBackendServers",
            vec![
                lb,
                ("BackendServers", r#"[{"ServerId":"i-echo","Weight":-1}]"#),
            ],
            "InvalidWeight",
        ),
        (
            "DescribeLoadBalancerListeners",
            vec![("PageSize", "1000")],
            "InvalidPageSize",
        ),
        (
            "DescribeLoadBalancerAttribute",
            vec![],
            "MissingLoadBalancerId",
        ),
        ("LaunchRockets", vec![], "InvalidAction.NotFound"),
    ];
    for (action, params, want) in cases {
        let reply = call(&api, action, &params).await;
        assert_eq!(
            code(&reply),
            (400, want),
            "{action} {params:?}: {}",
            reply.1
        );
        assert!(reply.1["Message"].as_str().is_some_and(|m| !m.is_empty()));
        assert!(reply.1["RequestId"].is_string());
    }
    let no_action = http_json(api.admin, "POST /?LoadBalancerId=lb-a", &[], b"").await;
    assert_eq!(code(&no_action), (400, "MissingAction"));
    let big = vec![b'a'; 2 << 20];
    let form = [(
        "content-type".to_string(),
        "application/x-www-form-urlencoded".to_string(),
    )];
    let too_big = http_json(
        api.admin,
        "POST /?Action=DescribeLoadBalancerListeners",
        &form,
        &big,
    )
    .await;
    assert_eq!(code(&too_big), (400, "InvalidParameter"));
    let bad_encoding = http_json(
        api.admin,
        "POST /?Action=DescribeLoadBalancerListeners&Description=%zz",
        &[],
        b"",
    )
    .await;
    assert_eq!(code(&bad_encoding), (400, "InvalidParameter"));
    let elsewhere = http_json(
        api.admin,
        "POST /v2/?Action=DescribeLoadBalancerListeners",
        &[],
        b"",
    )
    .await;
    assert_eq!(code(&elsewhere), (404, "InvalidAction.NotFound"));
    assert_eq!(
        std::fs::read(&api.path).unwrap(),
        before,
        "the file is unchanged"
    );
    assert_eq!(Config::load(&api.path).unwrap().listeners.len(), 1);

    // Form-body parameters work as query ones do.
    let body = b"LoadBalancerId=lb-a&ListenerPort=80";
    let described = http_json(
        api.admin,
        "POST /?Action=DescribeLoadBalancerTCPListenerAttribute",
        &form,
        body,
    )
    .await;
    assert_eq!(ok(described)["Description"], "web");
}

#[tokio::test]
async fn a_listener_that_cannot_bind_is_refused_and_nothing_is_written() {
    let echo = echo_backend().await;
    let binder: edgelb::listener::Binder = Arc::new(|addr: SocketAddr| {
        if addr.port() == 99 {
            return Err(std::io::Error::new(std::io::ErrorKind::AddrInUse, "in use"));
        }
        edgelb::listener::bind(SocketAddr::new(addr.ip(), 0))
    });
    let api = start_api_with(&base_file(echo.addr, ""), binder).await;
    ok(call(
        &api,
        "CreateLoadBalancerTCPListener",
        &[("LoadBalancerId", "lb-a"), ("ListenerPort", "99")],
    )
    .await);
    let before = std::fs::read(&api.path).unwrap();
    let refused = call(
        &api,
        "StartLoadBalancerListener",
        &[("LoadBalancerId", "lb-a"), ("ListenerPort", "99")],
    )
    .await;
    assert_eq!(code(&refused), (400, "InvalidListenerPort"));
    assert!(refused.1["Message"].as_str().unwrap().contains("in use"));
    assert_eq!(std::fs::read(&api.path).unwrap(), before);
    let d = ok(call(
        &api,
        "DescribeLoadBalancerTCPListenerAttribute",
        &[("LoadBalancerId", "lb-a"), ("ListenerPort", "99")],
    )
    .await);
    assert_eq!(d["Status"], "Stopped");
}

#[tokio::test]
async fn a_reload_of_the_file_is_what_the_api_then_sees() {
    let echo = echo_backend().await;
    let api = start_api(&base_file(echo.addr, "")).await;
    let text = std::fs::read_to_string(&api.path)
        .unwrap()
        .replace("description = \"web\"", "description = \"edited\"");
    std::fs::write(&api.path, text).unwrap();
    api.control.reload().await.unwrap();
    let d = ok(call(
        &api,
        "DescribeLoadBalancerTCPListenerAttribute",
        &[("LoadBalancerId", "lb-a"), ("ListenerPort", "80")],
    )
    .await);
    assert_eq!(d["Description"], "edited");
}

#[tokio::test]
async fn signatures_keys_and_permissions() {
    let echo = echo_backend().await;
    let api = start_api(&base_file(echo.addr, KEYS)).await;
    let describe = [("LoadBalancerId", "lb-a")];
    let ops = Signing::new("ops", "ops-secret");
    ok(signed(&api, &ops, "DescribeLoadBalancerAttribute", &describe).await);
    let replay = signed(&api, &ops, "DescribeLoadBalancerAttribute", &describe).await;
    assert_eq!(code(&replay), (400, "SignatureNonceUsed"));

    let wrong = signed(
        &api,
        &Signing::new("ops", "not-the-secret"),
        "DescribeLoadBalancerAttribute",
        &describe,
    )
    .await;
    assert_eq!(code(&wrong), (400, "SignatureDoesNotMatch"));
    let unknown = signed(
        &api,
        &Signing::new("nobody", "x"),
        "DescribeLoadBalancerAttribute",
        &describe,
    )
    .await;
    assert_eq!(code(&unknown), (400, "InvalidAccessKeyId.NotFound"));
    let unsigned = call(&api, "DescribeLoadBalancerAttribute", &describe).await;
    assert_eq!(
        code(&unsigned),
        (400, "InvalidAccessKeyId.NotFound"),
        "keys configured: every call is signed"
    );

    let ro = Signing::new("ro", "ro-secret");
    ok(signed(&api, &ro, "DescribeLoadBalancerListeners", &[]).await);
    let forbidden = signed(
        &api,
        &Signing::new("ro", "ro-secret"),
        "StopLoadBalancerListener",
        &[("LoadBalancerId", "lb-a"), ("ListenerPort", "80")],
    )
    .await;
    assert_eq!(code(&forbidden), (400, "NoPermission"));
    assert!(accepting(&api, 80).is_some(), "nothing stopped");

    let mut old = Signing::new("ops", "ops-secret");
    old.date = iso(std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
        - 16 * 60);
    let expired = signed(&api, &old, "DescribeLoadBalancerAttribute", &describe).await;
    assert_eq!(code(&expired), (400, "InvalidTimeStamp.Expired"));

    // A parameter changed after signing.
    let tampered = signed_but_sent(
        &api,
        &Signing::new("ops", "ops-secret"),
        "DescribeLoadBalancerAttribute",
        &describe,
        &[("LoadBalancerId", "lb-b")],
    )
    .await;
    assert_eq!(code(&tampered), (400, "SignatureDoesNotMatch"));
}

#[tokio::test]
async fn ten_calls_per_second_per_key() {
    let echo = echo_backend().await;
    let api = start_api(&base_file(echo.addr, KEYS)).await;
    let started = std::time::Instant::now();
    for _ in 0..10 {
        ok(signed(
            &api,
            &Signing::new("ro", "ro-secret"),
            "DescribeLoadBalancerListeners",
            &[],
        )
        .await);
    }
    let throttled = signed(
        &api,
        &Signing::new("ro", "ro-secret"),
        "DescribeLoadBalancerListeners",
        &[],
    )
    .await;
    if started.elapsed() < std::time::Duration::from_millis(900) {
        assert_eq!(code(&throttled), (400, "Throttling.User"));
        ok(signed(
            &api,
            &Signing::new("ops", "ops-secret"),
            "DescribeLoadBalancerListeners",
            &[],
        )
        .await);
    }
}

/// The SDK version `sdk_interop` runs, as scripts/test.sh installs it.
const SDK: (&str, &str) = ("alibabacloud-ens20171110", "12.1.0");

/// The python3 of the project's own virtual environment holding the SDK, which
/// scripts/test.sh creates: `EDGELB_SDK_PYTHON`, else `sdk-venv/bin/python3` in the
/// target directory. Panics, saying how to get it, when it is missing or lacks the
/// SDK.
async fn sdk_python() -> std::path::PathBuf {
    let python = match std::env::var_os("EDGELB_SDK_PYTHON") {
        Some(python) => python.into(),
        None => {
            let manifest = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
            // A relative CARGO_TARGET_DIR is taken from the package root, where
            // scripts/test.sh runs cargo.
            let target = std::env::var_os("CARGO_TARGET_DIR")
                .map_or_else(|| manifest.join("target"), |dir| manifest.join(dir));
            target.join("sdk-venv/bin/python3")
        }
    };
    let how = format!(
        "run `bash scripts/test.sh`: it creates the virtual environment target/sdk-venv with {}=={} (or set EDGELB_SDK_PYTHON to a python3 that has it)",
        SDK.0, SDK.1
    );
    assert!(python.exists(), "{} is missing; {how}", python.display());
    let version = daemon::output(
        std::process::Command::new(&python).args([
            "-c",
            &format!(
                "import importlib.metadata as m; print(m.version({:?}))",
                SDK.0
            ),
        ]),
        std::time::Duration::from_secs(60),
    )
    .await;
    assert_eq!(
        String::from_utf8_lossy(&version.stdout).trim(),
        SDK.1,
        "{} lacks {}=={} ({}); {how}",
        python.display(),
        SDK.0,
        SDK.1,
        String::from_utf8_lossy(&version.stderr)
            .lines()
            .last()
            .unwrap_or("")
    );
    python
}

/// The official Python SDK drives edgelb unchanged (tests/sdk_interop.py). Needs
/// the SDK's virtual environment ([`sdk_python`]; scripts/test.sh creates it);
/// fails, never skips, when it is missing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sdk_interop() {
    let python = sdk_python().await;
    let echo = echo_backend().await;
    let port = free_port();
    let file = base_file(echo.addr, KEYS).replace(
        "# the file's own listener\n[[listeners]]\nload_balancer_id = \"lb-a\"\nlistener_port = 80\ndescription = \"web\"   # kept\n",
        "",
    );
    // The SDK connects to the listener's real port: bind what is configured.
    let api = start_api_with(&file, edgelb::listener::default_binder()).await;
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/sdk_interop.py");
    let output = daemon::output(
        std::process::Command::new(python)
            .arg(script)
            .env("EDGELB_ENDPOINT", api.admin.to_string())
            .env("EDGELB_LB", "lb-b")
            .env("EDGELB_PORT", port.to_string())
            .env("EDGELB_BACKEND", echo.addr.to_string())
            .env("EDGELB_OPS_ID", "ops")
            .env("EDGELB_OPS_SECRET", "ops-secret")
            .env("EDGELB_RO_ID", "ro")
            .env("EDGELB_RO_SECRET", "ro-secret")
            .env("NO_PROXY", "*")
            .env_remove("HTTP_PROXY")
            .env_remove("http_proxy")
            .env_remove("HTTPS_PROXY")
            .env_remove("https_proxy"),
        std::time::Duration::from_secs(300),
    )
    .await;
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "SDK interop failed ({})\n--- stdout\n{stdout}\n--- stderr\n{stderr}",
        output.status
    );
    println!("{stdout}");
    assert!(stdout.contains("SDK interop: all passed"), "{stdout}");
    let config = Config::load(&api.path).unwrap();
    assert!(
        config.listener("lb-b", port).is_none(),
        "deleted in the file too"
    );
    assert_eq!(
        config.load_balancer("lb-b").unwrap().backend_servers.len(),
        1
    );
}
