//! Who is calling and how: the method a request must use, and the key its
//! credential (a bearer token or `x-api-key`) names.

use std::sync::Arc;

use http::{HeaderMap, Method, StatusCode};

use crate::error::ApiError;
use crate::facts;
use crate::keys::LiveKey;
use crate::state::AppState;

/// 405 unless the request uses `expected`.
///
/// # Errors
/// 405 `method_not_allowed`.
pub fn require(method: &Method, expected: &Method) -> Result<(), ApiError> {
    if method == expected {
        Ok(())
    } else {
        Err(ApiError::Client {
            status: StatusCode::METHOD_NOT_ALLOWED,
            code: "method_not_allowed",
            param: None,
            message: format!("Method {method} is not allowed here; use {expected}."),
        })
    }
}

/// Refuses a request without a known key when the built-in key auth is on
/// (it would refuse whatever else the request says).
///
/// # Errors
/// 401 `invalid_api_key`.
pub fn require_key(state: &AppState, key: Option<&Arc<LiveKey>>) -> Result<(), ApiError> {
    if key.is_none() && state.config.plugins.builtin_auth {
        return Err(ApiError::Denied {
            status: StatusCode::UNAUTHORIZED,
            code: "invalid_api_key".into(),
            message: "Incorrect API key provided.".into(),
            retry_after_s: None,
        });
    }
    Ok(())
}

/// The key a request's credential names, if any.
///
/// # Errors
/// When the key store cannot be read.
pub async fn lookup_key(
    state: &AppState,
    headers: &HeaderMap,
) -> Result<Option<Arc<LiveKey>>, ApiError> {
    let Some(secret) = facts::credential(headers) else {
        return Ok(None);
    };
    state
        .keys
        .lookup(secret)
        .await
        .map_err(|e| ApiError::Internal(format!("key lookup: {e}")))
}
