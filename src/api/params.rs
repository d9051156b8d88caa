//! Request parameters: form decoding of the query and body, and the [`Fields`] views
//! the listener-file validator reads them through (PascalCase keys, text values, no
//! text positions), so API calls get the same ranges, defaults and codes as the file.

use super::ApiError;
use crate::config::{Field, Fields, Param, Raw, Reader, Span};
use percent_encoding::percent_decode_str;
use std::collections::BTreeMap;

/// Parameters by their API (PascalCase) name.
pub type Params = BTreeMap<String, String>;

/// Listener parameters whose file value is an integer (the rest are strings).
pub const INTEGER_PARAMS: [&str; 9] = [
    "ListenerPort",
    "PersistenceTimeout",
    "EstablishedTimeout",
    "HealthyThreshold",
    "UnhealthyThreshold",
    "HealthCheckConnectTimeout",
    "HealthCheckInterval",
    "BackendServerPort",
    "HealthCheckConnectPort",
];

/// Decodes `application/x-www-form-urlencoded` text (a query string or a form body):
/// `+` is a space, `%XX` a byte, and the result must be UTF-8.
pub fn parse_form(text: &str) -> Result<Vec<(String, String)>, ApiError> {
    strict(text)?;
    Ok(form_urlencoded::parse(text.as_bytes())
        .into_owned()
        .collect())
}

/// Refuses what `form_urlencoded` would let through: it keeps a malformed `%` escape as
/// it is and turns bytes that are not UTF-8 into U+FFFD, where the API refuses the call
/// rather than guess what was meant. Names the key or value at fault.
fn strict(text: &str) -> Result<(), ApiError> {
    let parts = text.split('&').flat_map(|pair| {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        [k, v]
    });
    for part in parts {
        let escapes_ok = part.split('%').skip(1).all(|after| {
            after
                .get(..2)
                .is_some_and(|hex| hex.bytes().all(|b| b.is_ascii_hexdigit()))
        });
        if !escapes_ok || percent_decode_str(part).decode_utf8().is_err() {
            return Err(ApiError::bad(
                "InvalidParameter",
                format!("{part:?} is not valid form encoding"),
            ));
        }
    }
    Ok(())
}

/// The file value for an API text value: integer parameters become TOML integers when
/// they parse (otherwise the text stays, and the validator reports `Invalid<Param>`).
pub fn toml_value(api: &str, text: &str) -> toml_edit::Value {
    if INTEGER_PARAMS.contains(&api) || api == "Port" || api == "Weight" {
        if let Ok(v) = text.trim().parse::<i64>() {
            return v.into();
        }
    }
    text.into()
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

/// API query parameters as [`Fields`]; only `allowed` parameters are read, so any
/// other key is reported as `InvalidParameter.<Key>` by [`crate::config::Reader::finish`].
pub struct ApiFields<'a> {
    pub params: &'a Params,
    pub allowed: &'a [Param],
}

impl Fields for ApiFields<'_> {
    fn field(&self, param: &Param) -> Option<Field<'_>> {
        if !self.allowed.contains(param) {
            return None;
        }
        self.params.get(param.api).map(|v| Field {
            value: Raw::Text(v),
            span: None,
        })
    }

    fn keys(&self) -> Vec<(String, Span)> {
        self.params.keys().map(|k| (k.clone(), None)).collect()
    }

    fn span(&self) -> Span {
        None
    }

    fn name_of(&self, param: &Param) -> &'static str {
        // A parameter this action does not take never counts as read.
        if self.allowed.contains(param) {
            param.api
        } else {
            ""
        }
    }
}

/// One element of a `BackendServers` JSON array as [`Fields`]. `Type` (`ens`/`eni`)
/// is accepted and ignored: edgelb's backends are addresses.
pub struct JsonFields<'a>(pub &'a serde_json::Map<String, serde_json::Value>);

impl Fields for JsonFields<'_> {
    fn field(&self, param: &Param) -> Option<Field<'_>> {
        use serde_json::Value as J;
        let value = match self.0.get(param.api)? {
            J::Null => return None,
            J::Number(n) => n.as_i64().map_or(Raw::Other("float"), Raw::Int),
            J::String(s) => Raw::Text(s),
            J::Bool(b) => Raw::Bool(*b),
            J::Array(_) => Raw::Other("array"),
            J::Object(_) => Raw::Other("object"),
        };
        Some(Field { value, span: None })
    }

    fn keys(&self) -> Vec<(String, Span)> {
        self.0
            .keys()
            .filter(|k| *k != "Type")
            .map(|k| (k.clone(), None))
            .collect()
    }

    fn span(&self) -> Span {
        None
    }

    fn name_of(&self, param: &Param) -> &'static str {
        param.api
    }
}

/// `BackendServers`: a JSON array of 1..=20 objects (the API's per-call limit).
pub fn backend_servers(
    params: &Params,
) -> Result<Vec<serde_json::Map<String, serde_json::Value>>, ApiError> {
    const MAX_PER_CALL: usize = 20;
    let text = params.get("BackendServers").ok_or_else(|| {
        ApiError::bad(
            "MissingBackendServers",
            "The parameter BackendServers is required",
        )
    })?;
    let invalid = |why: String| {
        ApiError::bad(
            "InvalidBackendServers",
            format!("The specified parameter BackendServers is invalid: {why}"),
        )
    };
    let list: Vec<serde_json::Map<String, serde_json::Value>> = serde_json::from_str(text)
        .map_err(|e| invalid(format!("expected a JSON array of objects ({e})")))?;
    if list.is_empty() || list.len() > MAX_PER_CALL {
        return Err(invalid(format!(
            "{} servers given; give 1..={MAX_PER_CALL}",
            list.len()
        )));
    }
    Ok(list)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{validate_listener_spec, Scheduler, LISTENER_PARAMS};

    fn params(pairs: &[(&str, &str)]) -> Params {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn form_decoding_follows_the_sdk_encoding() {
        let pairs = parse_form("BackendServers=%5B%7B%22Ip%22%3A%221%22%7D%5D&A=b+c&E=&F").unwrap();
        assert_eq!(
            pairs[0],
            ("BackendServers".into(), "[{\"Ip\":\"1\"}]".into())
        );
        assert_eq!(pairs[1], ("A".into(), "b c".into()));
        assert_eq!(pairs[2], ("E".into(), "".into()));
        assert_eq!(pairs[3], ("F".into(), "".into()));
        assert!(parse_form("A=%4").is_err());
        assert!(parse_form("A=%zz").is_err());
        assert!(parse_form("A=%+f").is_err(), "a sign is not a hex digit");
        assert!(parse_form("A=%ff").is_err(), "not UTF-8");
    }

    #[test]
    fn api_names_map_to_params_with_file_defaults() {
        let p = params(&[
            ("LoadBalancerId", "lb-1"),
            ("ListenerPort", "80"),
            ("Scheduler", "wlc"),
        ]);
        let fields = ApiFields {
            params: &p,
            allowed: &LISTENER_PARAMS,
        };
        let mut errors = Vec::new();
        let mut r = Reader::new(&fields, &mut errors);
        let spec = validate_listener_spec(&mut r).unwrap();
        r.finish();
        assert!(errors.is_empty(), "{errors:?}");
        assert_eq!(spec.listener_port, 80);
        assert_eq!(spec.scheduler, Scheduler::Wlc);
        assert_eq!(spec.established_timeout, 900, "file default applied");
        assert_eq!(spec.health_check_interval, 2);
    }

    #[test]
    fn api_errors_carry_the_file_codes() {
        let p = params(&[
            ("LoadBalancerId", "lb-1"),
            ("ListenerPort", "70000"),
            ("Bogus", "1"),
            ("Status", "running"),
        ]);
        let allowed: Vec<Param> = LISTENER_PARAMS
            .iter()
            .copied()
            .filter(|p| p.api != "Status")
            .collect();
        let fields = ApiFields {
            params: &p,
            allowed: &allowed,
        };
        let mut errors = Vec::new();
        let mut r = Reader::new(&fields, &mut errors);
        assert!(validate_listener_spec(&mut r).is_none());
        r.finish();
        let codes: Vec<String> = errors.iter().map(|e| e.code.to_string()).collect();
        assert!(
            codes.contains(&"InvalidListenerPort".to_string()),
            "{codes:?}"
        );
        assert!(
            codes.contains(&"InvalidParameter.Bogus".to_string()),
            "{codes:?}"
        );
        assert!(
            codes.contains(&"InvalidParameter.Status".to_string()),
            "not an API parameter of Create: {codes:?}"
        );
    }

    #[test]
    fn integer_params_are_the_validator_integers() {
        // Each listed parameter, given as a TOML string, is refused as a non-integer;
        // each other listener parameter is not.
        for param in LISTENER_PARAMS.iter().filter(|p| p.api != "LoadBalancerId") {
            let text = format!("[[load_balancers]]\nid = \"lb\"\n[[listeners]]\nload_balancer_id = \"lb\"\nlistener_port = 80\n{} = \"7\"\n", param.key);
            let text = text.replacen("listener_port = 80\nlistener_port", "listener_port", 1);
            let errors = crate::config::Config::parse(&text, None)
                .err()
                .unwrap_or_default();
            let wants_int = errors
                .iter()
                .any(|e| e.message.contains("expected an integer"));
            assert_eq!(
                wants_int,
                INTEGER_PARAMS.contains(&param.api),
                "{}",
                param.api
            );
        }
    }

    #[test]
    fn toml_values_are_typed_by_parameter() {
        assert_eq!(toml_value("ListenerPort", " 80").as_integer(), Some(80));
        assert_eq!(toml_value("ListenerPort", "x").as_str(), Some("x"));
        assert_eq!(toml_value("Description", "80").as_str(), Some("80"));
        assert_eq!(toml_value("Weight", "5").as_integer(), Some(5));
    }

    #[test]
    fn backend_servers_json() {
        let ok = params(&[(
            "BackendServers",
            r#"[{"ServerId":"i-1","Ip":"10.0.0.1","Port":8080,"Weight":50,"Type":"ens"}]"#,
        )]);
        assert_eq!(backend_servers(&ok).unwrap().len(), 1);
        for bad in ["[", "{}", "[]", "[1]", "\"x\""] {
            let e = backend_servers(&params(&[("BackendServers", bad)])).unwrap_err();
            assert_eq!(e.code, "InvalidBackendServers", "{bad}");
        }
        let many = format!("[{}]", vec!["{}"; 21].join(","));
        assert_eq!(
            backend_servers(&params(&[("BackendServers", &many)]))
                .unwrap_err()
                .code,
            "InvalidBackendServers"
        );
        assert_eq!(
            backend_servers(&Params::new()).unwrap_err().code,
            "MissingBackendServers"
        );
    }
}
