//! The control API: the ENS OpenAPI load-balancer actions, served on the admin
//! address (SPEC section 7).
//!
//! A call goes: read the body (at most [`MAX_BODY`]) → decode the query and form
//! parameters → [`auth`] (V3 signature, date, key) → [`throttle`] → nonce → action
//! patterns → the action. Changes go through [`Control::change`]: one at a time, the
//! listener file is edited as a TOML document (comments and order kept), validated
//! whole by the same code as at start, applied like a reload, then written back
//! atomically ([`writeback`]). SIGHUP reloads go through the same lock
//! ([`Control::reload`]).
//!
//! Modules by layer, lowest first; a module uses only its own layer and those before:
//! - [`ApiError`] (`error`); [`params`]: form decoding, [`params::read`] and the
//!   validator's view of API parameters; `edit`: the listener file's tables as the
//!   actions edit them; [`writeback`] and [`Control`].
//! - The actions: [`describe`] (read-only), [`listeners`] (those that change a
//!   listener) and [`servers`] (the backend-server ones).
//! - [`actions`]: the dispatcher, from an action to the function that runs it.
//! - [`signature`], [`auth`], [`throttle`]: what a call passes before its action
//!   ([`handle`], here).

pub mod actions;
pub mod auth;
mod control;
pub mod describe;
mod edit;
mod error;
pub mod listeners;
pub mod params;
pub mod servers;
pub mod signature;
pub mod throttle;
pub mod writeback;

pub use control::{Control, ReloadError};
pub use error::ApiError;

use http_body_util::{BodyExt, Full, Limited};
use hyper::body::{Bytes, Incoming};
use hyper::{Request, Response, StatusCode};
use params::Params;
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// Largest request body accepted.
pub const MAX_BODY: usize = 1 << 20;

/// Parameters every call may carry that are not the action's own.
const PROTOCOL_PARAMS: [&str; 4] = ["Action", "Version", "Format", "RegionId"];

/// Whether an admin request is a control-API call (the rest are the GET pages).
pub fn is_api_request<B>(req: &Request<B>) -> bool {
    use hyper::Method;
    let page = matches!(req.uri().path(), "/metrics" | "/healthz" | "/status" | "/");
    let get = req.method() == Method::GET || req.method() == Method::HEAD;
    let has_action = req.headers().contains_key("x-acs-action")
        || req
            .uri()
            .query()
            .is_some_and(|q| q.split('&').any(|p| p.starts_with("Action=")));
    !(get && page && !has_action)
}

/// Serves one control-API call; its body must arrive within `body_timeout`.
pub async fn handle(
    req: Request<Incoming>,
    control: &Control,
    body_timeout: Duration,
) -> Response<Full<Bytes>> {
    let request_id = request_id();
    let (status, mut body) = match call(req, control, body_timeout).await {
        Ok(body) => (StatusCode::OK, body),
        Err(e) => {
            tracing::info!(code = %e.code, message = %e.message, "control API call refused");
            (
                e.status,
                serde_json::json!({ "Code": e.code, "Message": e.message }),
            )
        }
    };
    if let Some(map) = body.as_object_mut() {
        map.insert("RequestId".into(), request_id.into());
    }
    let mut response = Response::new(Full::new(Bytes::from(body.to_string())));
    *response.status_mut() = status;
    response.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static("application/json;charset=utf-8"),
    );
    if status == StatusCode::REQUEST_TIMEOUT {
        // The rest of the body may still come: the connection cannot carry another call.
        response.headers_mut().insert(
            hyper::header::CONNECTION,
            hyper::header::HeaderValue::from_static("close"),
        );
    }
    response
}

async fn call(
    req: Request<Incoming>,
    control: &Control,
    body_timeout: Duration,
) -> Result<serde_json::Value, ApiError> {
    if req.uri().path() != "/" {
        return Err(ApiError {
            status: StatusCode::NOT_FOUND,
            code: "InvalidAction.NotFound".into(),
            message: format!("No API at {}; the control API is at /", req.uri().path()),
        });
    }
    let (parts, body) = req.into_parts();
    let read = tokio::time::timeout(body_timeout, Limited::new(body, MAX_BODY).collect());
    let body = read
        .await
        .map_err(|_| ApiError {
            status: StatusCode::REQUEST_TIMEOUT,
            code: "RequestTimeout".into(),
            message: format!(
                "the body did not arrive within {} s ([admin] request_body_timeout)",
                body_timeout.as_secs()
            ),
        })?
        .map_err(|e| {
            ApiError::bad(
                "InvalidParameter",
                format!("cannot read the body (at most {MAX_BODY} bytes): {e}"),
            )
        })?;
    let body = body.to_bytes();
    let query: Params = params::parse_form(parts.uri.query().unwrap_or(""))?
        .into_iter()
        .collect();
    let mut all = query.clone();
    if !body.is_empty() {
        let form = parts
            .headers
            .get(hyper::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.starts_with("application/x-www-form-urlencoded"));
        let text = std::str::from_utf8(&body)
            .ok()
            .filter(|_| form)
            .ok_or_else(|| {
                ApiError::bad(
                    "InvalidParameter",
                    "a body must be application/x-www-form-urlencoded",
                )
            })?;
        all.extend(params::parse_form(text)?);
    }
    let action = parts
        .headers
        .get("x-acs-action")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string)
        .or_else(|| all.get("Action").cloned())
        .ok_or_else(|| {
            ApiError::bad(
                "MissingAction",
                "The parameter Action (or header x-acs-action) is required",
            )
        })?;
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64);
    let config = control.config();
    let caller = auth::authenticate(&parts, &query, &body, &config.admin, now)?;
    let key = caller.as_ref().map(|c| c.access_key_id.as_str());
    lock(&control.throttle)
        .admit(key, Instant::now())
        .map_err(|r| match r {
            throttle::Refusal::Api => ApiError::bad(
                "Throttling.Api",
                "Request was denied due to api flow control.",
            ),
            throttle::Refusal::User => ApiError::bad(
                "Throttling.User",
                "Request was denied due to user flow control.",
            ),
        })?;
    if let Some(caller) = &caller {
        if !lock(&control.nonces).first_use(&caller.nonce, caller.nonce_expires, now) {
            return Err(ApiError::bad(
                "SignatureNonceUsed",
                "The x-acs-signature-nonce was used already",
            ));
        }
    }
    let action = actions::Action::from_name(&action).ok_or_else(|| {
        ApiError::bad(
            "InvalidAction.NotFound",
            format!("The action {action:?} is not supported"),
        )
    })?;
    if let Some(caller) = &caller {
        if !auth::allowed(&caller.actions, action.name()) {
            return Err(ApiError::bad(
                "NoPermission",
                format!(
                    "The access key {} may not call ens:{}",
                    caller.access_key_id,
                    action.name()
                ),
            ));
        }
    }
    for key in PROTOCOL_PARAMS {
        all.remove(key);
    }
    actions::run(action, &all, control).await
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// A random (version 4) UUID in upper case, as the API's `RequestId`.
pub fn request_id() -> String {
    let v =
        (rand::random::<u128>() & !(0xF000 << 64) & !(0xC << 60)) | (0x4000 << 64) | (0x8 << 60);
    let h = format!("{v:032X}");
    format!(
        "{}-{}-{}-{}-{}",
        &h[0..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..32]
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_ids_are_upper_case_uuid_v4() {
        let id = request_id();
        assert_eq!(id.len(), 36);
        assert_eq!(id.as_bytes()[14], b'4');
        assert!(
            matches!(id.as_bytes()[19], b'8' | b'9' | b'A' | b'B'),
            "{id}"
        );
        assert!(id
            .chars()
            .all(|c| c == '-' || c.is_ascii_digit() || c.is_ascii_uppercase()));
        assert_ne!(request_id(), id);
    }

    #[test]
    fn pages_stay_pages() {
        let get = |uri: &str| Request::get(uri).body(()).unwrap();
        assert!(!is_api_request(&get("/metrics")));
        assert!(!is_api_request(&get("/")));
        assert!(!is_api_request(&get("/status")));
        assert!(is_api_request(&get(
            "/?Action=DescribeLoadBalancerListeners"
        )));
        assert!(is_api_request(&Request::post("/").body(()).unwrap()));
        assert!(is_api_request(&get("/nope")));
        let sdk = Request::get("/")
            .header("x-acs-action", "X")
            .body(())
            .unwrap();
        assert!(is_api_request(&sdk));
    }
}
