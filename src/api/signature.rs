//! Alibaba Cloud's V3 request signature (`ACS3-HMAC-SHA256`), as the official SDKs
//! compute it (`alibabacloud_tea_openapi.utils.Utils.get_authorization`):
//!
//! ```text
//! canonical = METHOD \n PATH \n QUERY \n HEADERS \n SIGNED_HEADERS \n HASHED_PAYLOAD
//! QUERY     = sorted key=pct(value) joined by & (keys as they are, values encoded
//!             except A-Z a-z 0-9 - _ . ~)
//! HEADERS   = for each signed header: name:trimmed values sorted and joined by "," \n
//! to_sign   = "ACS3-HMAC-SHA256\n" + hex(sha256(canonical))
//! signature = hex(hmac_sha256(secret, to_sign))
//! ```
//! (HEADERS ends with a newline of its own, so an empty line follows it.)

use hmac::{Hmac, Mac};
use percent_encoding::{utf8_percent_encode, AsciiSet, NON_ALPHANUMERIC};
use sha2::{Digest, Sha256};
use std::collections::BTreeMap;

pub const ALGORITHM: &str = "ACS3-HMAC-SHA256";

type HmacSha256 = Hmac<Sha256>;

/// The parts of an `Authorization: ACS3-HMAC-SHA256 ...` header.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Authorization {
    pub access_key_id: String,
    /// Lower-case header names, in the order given.
    pub signed_headers: Vec<String>,
    pub signature: String,
}

impl Authorization {
    /// `None` when the header is not a V3 HMAC-SHA256 authorization.
    pub fn parse(header: &str) -> Option<Authorization> {
        let rest = header.trim().strip_prefix(ALGORITHM)?.trim_start();
        let (mut id, mut signed, mut signature) = (None, None, None);
        for part in rest.split(',') {
            let (k, v) = part.trim().split_once('=')?;
            match k {
                "Credential" => id = Some(v.to_string()),
                "SignedHeaders" => {
                    signed = Some(v.split(';').map(str::to_ascii_lowercase).collect())
                }
                "Signature" => signature = Some(v.to_string()),
                _ => return None,
            }
        }
        Some(Authorization {
            access_key_id: id.filter(|s| !s.is_empty())?,
            signed_headers: signed?,
            signature: signature?,
        })
    }
}

/// What the canonical query encodes: every byte but RFC 3986's unreserved
/// characters (A-Z a-z 0-9 - _ . ~).
const QUERY_VALUE: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'_')
    .remove(b'.')
    .remove(b'~');

/// Percent-encoding of a query value as Python's `quote(v, safe='~')` (upper-case hex).
pub fn encode_value(value: &str) -> String {
    utf8_percent_encode(value, QUERY_VALUE).to_string()
}

/// The canonical query string of the decoded query parameters.
pub fn canonical_query(query: &BTreeMap<String, String>) -> String {
    let pairs: Vec<String> = query
        .iter()
        .map(|(k, v)| format!("{k}={}", encode_value(v)))
        .collect();
    pairs.join("&")
}

/// The canonical request. `headers` yields (lower-case name, value) pairs, repeated
/// names included; only `signed` names are used, in that order.
pub fn canonical_request<'h>(
    method: &str,
    path: &str,
    query: &BTreeMap<String, String>,
    headers: impl Iterator<Item = (&'h str, &'h str)> + Clone,
    signed: &[String],
    hashed_payload: &str,
) -> String {
    let mut canonical_headers = String::new();
    for name in signed {
        let mut values: Vec<&str> = headers
            .clone()
            .filter(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.trim())
            .collect();
        values.sort_unstable();
        canonical_headers.push_str(&format!("{name}:{}\n", values.join(",")));
    }
    format!(
        "{method}\n{path}\n{}\n{canonical_headers}\n{}\n{hashed_payload}",
        canonical_query(query),
        signed.join(";")
    )
}

pub fn sha256_hex(data: &[u8]) -> String {
    hex::encode(Sha256::digest(data))
}

/// The string to sign for a canonical request.
pub fn string_to_sign(canonical_request: &str) -> String {
    format!("{ALGORITHM}\n{}", sha256_hex(canonical_request.as_bytes()))
}

/// The hex signature of `string_to_sign` with `secret` (what a client sends).
pub fn sign(secret: &str, string_to_sign: &str) -> String {
    hex::encode(mac(secret, string_to_sign).finalize().into_bytes())
}

/// Whether `signature_hex` is the signature of `string_to_sign`, compared in
/// constant time.
pub fn verify(secret: &str, string_to_sign: &str, signature_hex: &str) -> bool {
    match hex::decode(signature_hex) {
        Ok(given) => mac(secret, string_to_sign).verify_slice(&given).is_ok(),
        Err(_) => false,
    }
}

fn mac(secret: &str, data: &str) -> HmacSha256 {
    // HMAC takes keys of any length, so this cannot fail.
    let mut mac = <HmacSha256 as Mac>::new_from_slice(secret.as_bytes())
        .unwrap_or_else(|_| unreachable!("HMAC accepts any key length"));
    mac.update(data.as_bytes());
    mac
}

/// Seconds since the Unix epoch of an `x-acs-date` (`2024-01-02T03:04:05Z`, UTC).
pub fn parse_date(s: &str) -> Option<i64> {
    let time = humantime::parse_rfc3339(s).ok()?;
    let since = time.duration_since(std::time::UNIX_EPOCH).ok()?;
    i64::try_from(since.as_secs()).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A request as the Python SDK (alibabacloud-ens20171110 12.1.0) builds it, and
    /// the values its `Utils.get_authorization` computed for it (generated once).
    #[test]
    fn matches_the_python_sdk() {
        let query: BTreeMap<String, String> = [
            ("LoadBalancerId", "lb-1"),
            (
                "BackendServers",
                r#"[{"Ip":"10.0.0.1","Port":8080,"ServerId":"i-1","Type":"ens","Weight":50}]"#,
            ),
            ("Description", "a b+c/é~"),
        ]
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
        let headers = [
            ("host", "127.0.0.1:9900"),
            ("x-acs-version", "2017-11-10"),
            ("x-acs-action", "AddBackendServers"),
            (
                "user-agent",
                "AlibabaCloud (Linux; x86_64) Python/3.11.7 Core/0.4.3 TeaDSL/2",
            ),
            ("x-acs-date", "2024-05-06T07:08:09Z"),
            ("x-acs-signature-nonce", "3f1a0f1ad1a44b2b9d0e0d8b5c3b1a77"),
            ("accept", "application/json"),
            (
                "x-acs-content-sha256",
                "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855",
            ),
            ("x-acs-credentials-provider", "static_ak"),
        ];
        let signed: Vec<String> = "accept;host;user-agent;x-acs-action;x-acs-content-sha256;x-acs-credentials-provider;x-acs-date;x-acs-signature-nonce;x-acs-version"
            .split(';').map(String::from).collect();
        let canonical = canonical_request(
            "POST",
            "/",
            &query,
            headers.iter().copied(),
            &signed,
            headers[7].1,
        );
        assert_eq!(sha256_hex(canonical.as_bytes()), PY_CANONICAL_SHA256);
        let to_sign = string_to_sign(&canonical);
        assert_eq!(sign("secret-1", &to_sign), PY_SIGNATURE);
        assert!(verify("secret-1", &to_sign, PY_SIGNATURE));
        assert!(!verify("secret-2", &to_sign, PY_SIGNATURE));
        assert!(!verify("secret-1", &to_sign, "zz"));
    }

    const PY_CANONICAL_SHA256: &str =
        "5be04297bbcc2942aba01a28998af5ff5af79f77bd6b6abd4ea2e82724faf70c";
    const PY_SIGNATURE: &str = "6dfdc841c35698bb37e421e45b24450a3d565c747ad756e4f446d876de31b3aa";

    #[test]
    fn values_keep_only_the_unreserved_characters() {
        assert_eq!(encode_value("aZ09-_.~"), "aZ09-_.~");
        assert_eq!(encode_value("a b+c/é*"), "a%20b%2Bc%2F%C3%A9%2A");
    }

    #[test]
    fn parses_the_authorization_header() {
        let a = Authorization::parse(
            "ACS3-HMAC-SHA256 Credential=LTAI-ops,SignedHeaders=host;X-Acs-Date,Signature=ab12",
        )
        .unwrap();
        assert_eq!(a.access_key_id, "LTAI-ops");
        assert_eq!(a.signed_headers, ["host", "x-acs-date"]);
        assert_eq!(a.signature, "ab12");
        assert!(
            Authorization::parse("ACS3-HMAC-SM3 Credential=a,SignedHeaders=h,Signature=s")
                .is_none()
        );
        assert!(
            Authorization::parse("ACS3-HMAC-SHA256 Credential=,SignedHeaders=h,Signature=s")
                .is_none()
        );
        assert!(Authorization::parse("ACS3-HMAC-SHA256 Credential=a,Signature=s").is_none());
    }

    #[test]
    fn dates() {
        assert_eq!(parse_date("1970-01-01T00:00:00Z"), Some(0));
        assert_eq!(parse_date("2024-05-06T07:08:09Z"), Some(1_714_979_289));
        assert_eq!(parse_date("2000-02-29T23:59:59Z"), Some(951_868_799));
        assert_eq!(parse_date("2024-05-06 07:08:09Z"), None);
        assert_eq!(parse_date("2024-13-06T07:08:09Z"), None);
        assert_eq!(parse_date("2024-05-06T07:08:09"), None);
    }
}
