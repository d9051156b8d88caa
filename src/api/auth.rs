//! Who is calling: the V3 signature check against the configured access keys, the
//! date and nonce rules, and the RAM-style action patterns of each key.

use super::signature::{self, Authorization};
use super::ApiError;
use crate::config::{AccessKey, Admin};
use hyper::http::request::Parts;
use std::collections::{BTreeMap, BTreeSet, HashSet};

/// How far `x-acs-date` may be from the server's clock, either way (seconds).
pub const MAX_CLOCK_SKEW: i64 = 15 * 60;
/// Nonces remembered at most; at the throttled rate (100/s) one date window holds
/// fewer, so only a flood of refused-anyway calls could push one out early.
pub const MAX_NONCES: usize = 262_144;

/// A caller whose signature checked out.
#[derive(Debug, Clone)]
pub struct Verified {
    pub access_key_id: String,
    pub actions: Vec<String>,
    pub nonce: String,
    /// When the nonce may be forgotten (the date can no longer be accepted).
    pub nonce_expires: i64,
}

/// Checks the call's signature. `Ok(None)`: an unsigned call, accepted because no key
/// is configured and the admin address is loopback.
pub fn authenticate(
    parts: &Parts,
    query: &BTreeMap<String, String>,
    body: &[u8],
    admin: &Admin,
    now: i64,
) -> Result<Option<Verified>, ApiError> {
    let Some(header) = parts.headers.get(hyper::header::AUTHORIZATION) else {
        let open =
            admin.access_keys.is_empty() && admin.address.is_some_and(|a| a.ip().is_loopback());
        return if open {
            Ok(None)
        } else {
            Err(ApiError::bad(
                "InvalidAccessKeyId.NotFound",
                "The call is not signed; sign it with one of the configured access keys (ACS3-HMAC-SHA256)",
            ))
        };
    };
    let mismatch = |why: &str| ApiError::bad("SignatureDoesNotMatch", why.to_string());
    let auth = header
        .to_str()
        .ok()
        .and_then(Authorization::parse)
        .ok_or_else(|| mismatch("The Authorization header is not ACS3-HMAC-SHA256 Credential=...,SignedHeaders=...,Signature=..."))?;
    let key: &AccessKey = admin
        .access_keys
        .iter()
        .find(|k| k.access_key_id == auth.access_key_id)
        .ok_or_else(|| {
            ApiError::bad(
                "InvalidAccessKeyId.NotFound",
                format!("The access key {:?} does not exist", auth.access_key_id),
            )
        })?;
    let header_str = |name: &str| parts.headers.get(name).and_then(|v| v.to_str().ok());
    let mut must_sign = vec![
        "host",
        "x-acs-date",
        "x-acs-signature-nonce",
        "x-acs-content-sha256",
    ];
    if parts.headers.contains_key("x-acs-action") {
        must_sign.push("x-acs-action");
    }
    for name in must_sign {
        if header_str(name).is_none() || !auth.signed_headers.iter().any(|h| h == name) {
            return Err(mismatch(&format!(
                "The header {name} must be present and signed"
            )));
        }
    }
    let payload_hash = header_str("x-acs-content-sha256").unwrap_or_default();
    if !payload_hash.eq_ignore_ascii_case(&signature::sha256_hex(body)) {
        return Err(mismatch(
            "x-acs-content-sha256 is not the SHA-256 of the body",
        ));
    }
    let headers: Vec<(&str, &str)> = parts
        .headers
        .iter()
        .filter_map(|(n, v)| Some((n.as_str(), v.to_str().ok()?)))
        .collect();
    let canonical = signature::canonical_request(
        parts.method.as_str(),
        parts.uri.path(),
        query,
        headers.iter().copied(),
        &auth.signed_headers,
        payload_hash,
    );
    let to_sign = signature::string_to_sign(&canonical);
    if !signature::verify(&key.secret, &to_sign, &auth.signature) {
        return Err(mismatch("The request signature does not match the signature computed with the access key secret"));
    }
    let date_text = header_str("x-acs-date").unwrap_or_default();
    let date = signature::parse_date(date_text).ok_or_else(|| {
        ApiError::bad(
            "InvalidTimeStamp.Format",
            format!("x-acs-date {date_text:?} is not YYYY-MM-DDThh:mm:ssZ"),
        )
    })?;
    if (now - date).abs() > MAX_CLOCK_SKEW {
        return Err(ApiError::bad(
            "InvalidTimeStamp.Expired",
            format!("x-acs-date {date_text} is more than 15 minutes from the server's clock"),
        ));
    }
    Ok(Some(Verified {
        access_key_id: key.access_key_id.clone(),
        actions: key.actions.clone(),
        nonce: header_str("x-acs-signature-nonce")
            .unwrap_or_default()
            .to_string(),
        nonce_expires: date + MAX_CLOCK_SKEW,
    }))
}

/// Nonces seen while their date is still acceptable.
#[derive(Debug, Default)]
pub struct Nonces {
    seen: HashSet<String>,
    by_expiry: BTreeSet<(i64, String)>,
}

impl Nonces {
    /// Records `nonce`; `false` when it was already used.
    pub fn first_use(&mut self, nonce: &str, expires: i64, now: i64) -> bool {
        while let Some(first) = self.by_expiry.first().cloned() {
            if first.0 > now && self.seen.len() < MAX_NONCES {
                break;
            }
            self.by_expiry.pop_first();
            self.seen.remove(&first.1);
        }
        if !self.seen.insert(nonce.to_string()) {
            return false;
        }
        self.by_expiry.insert((expires, nonce.to_string()));
        true
    }

    pub fn len(&self) -> usize {
        self.seen.len()
    }

    pub fn is_empty(&self) -> bool {
        self.seen.is_empty()
    }
}

/// Whether `action` is allowed by one of `patterns` (`ens:Action`, `*` any text).
pub fn allowed(patterns: &[String], action: &str) -> bool {
    let full = format!("ens:{action}");
    patterns.iter().any(|p| glob(p.as_bytes(), full.as_bytes()))
}

fn glob(pattern: &[u8], text: &[u8]) -> bool {
    match pattern.split_first() {
        None => text.is_empty(),
        Some((b'*', rest)) => (0..=text.len()).any(|i| glob(rest, &text[i..])),
        Some((c, rest)) => text.first() == Some(c) && glob(rest, &text[1..]),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pats(p: &[&str]) -> Vec<String> {
        p.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn action_patterns() {
        assert!(allowed(&pats(&["ens:*"]), "DeleteLoadBalancerListener"));
        let ro = pats(&["ens:Describe*", "ens:StartLoadBalancerListener"]);
        assert!(allowed(&ro, "DescribeLoadBalancerAttribute"));
        assert!(allowed(&ro, "StartLoadBalancerListener"));
        assert!(!allowed(&ro, "StopLoadBalancerListener"));
        assert!(
            !allowed(&ro, "StartLoadBalancerListenerX"),
            "a pattern matches whole names"
        );
        assert!(allowed(&pats(&["ens:*Backend*"]), "AddBackendServers"));
        assert!(!allowed(
            &pats(&["ens:Describe*"]),
            "CreateLoadBalancerTCPListener"
        ));
        assert!(!allowed(&[], "DescribeLoadBalancerAttribute"));
    }

    #[test]
    fn nonces_are_single_use_until_they_expire() {
        let mut n = Nonces::default();
        assert!(n.first_use("a", 1000, 0));
        assert!(!n.first_use("a", 1000, 10));
        assert!(n.first_use("b", 2000, 10));
        assert!(!n.first_use("a", 1000, 999));
        assert!(
            n.first_use("a", 3000, 1000),
            "forgotten once its date expired"
        );
        assert_eq!(n.len(), 2);
    }
}
