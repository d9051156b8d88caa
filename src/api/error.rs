//! The API's failures: [`ApiError`] and the constructors of the errors several actions share.

use crate::config::{ConfigError, ListenerKey};
use hyper::StatusCode;

/// An API failure: HTTP status, code and message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiError {
    pub status: StatusCode,
    pub code: String,
    pub message: String,
}

impl ApiError {
    /// A 400 with `code`.
    pub fn bad(code: impl Into<String>, message: impl Into<String>) -> ApiError {
        ApiError {
            status: StatusCode::BAD_REQUEST,
            code: code.into(),
            message: message.into(),
        }
    }

    pub(crate) fn internal(message: impl Into<String>) -> ApiError {
        ApiError {
            status: StatusCode::INTERNAL_SERVER_ERROR,
            code: "InternalError".into(),
            message: message.into(),
        }
    }

    /// The first of validation `errors` (they come sorted by position), counting the rest.
    pub fn from_config(errors: &[ConfigError]) -> ApiError {
        let Some(first) = errors.first() else {
            return ApiError::bad("InvalidParameter", "invalid parameters");
        };
        let mut message = first.message.clone();
        if errors.len() > 1 {
            message.push_str(&format!(" (and {} more errors)", errors.len() - 1));
        }
        ApiError::bad(first.code.to_string(), message)
    }

    /// `ListenerNotFound`: no listener has `key`.
    pub fn listener_not_found(key: &ListenerKey) -> ApiError {
        ApiError::bad(
            "ListenerNotFound",
            format!(
                "The listener on port {} of {} does not exist",
                key.listener_port, key.load_balancer_id
            ),
        )
    }

    /// `LoadBalancerNotFound`, worded as the listener file's check words it.
    pub fn load_balancer_not_found(load_balancer_id: &str) -> ApiError {
        ApiError::from(ConfigError::load_balancer_not_found(load_balancer_id, None))
    }

    /// `ListenerAlreadyExists`, worded as the listener file's check words it.
    pub fn listener_exists(key: &ListenerKey) -> ApiError {
        ApiError::from(ConfigError::listener_exists(key, None))
    }
}

impl From<ConfigError> for ApiError {
    fn from(error: ConfigError) -> ApiError {
        ApiError::bad(error.code.to_string(), error.message)
    }
}
