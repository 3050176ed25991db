//! The one error type of the request path, and its single mapping to an
//! OpenAI-shaped HTTP response: `{"error":{"message","type","param","code"}}`.

use bytes::Bytes;
use http::{HeaderValue, Response, StatusCode};
use http_body_util::Full;

use crate::protocol::Protocol;

/// Every way a client request can fail, grouped by cause.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// The request itself is wrong (400, 404, 405, 413).
    #[error("{message}")]
    Client {
        /// HTTP status.
        status: StatusCode,
        /// OpenAI error code.
        code: &'static str,
        /// The offending parameter, if any.
        param: Option<&'static str>,
        /// Message for the client.
        message: String,
    },
    /// A policy (auth plugin or built-in check) refused the request.
    #[error("{message}")]
    Denied {
        /// HTTP status chosen by the policy.
        status: StatusCode,
        /// OpenAI error code chosen by the policy.
        code: String,
        /// Message for the client.
        message: String,
        /// Seconds for `retry-after`.
        retry_after_s: Option<u32>,
    },
    /// A policy plugin failed and its failure mode is to refuse (fail closed).
    #[error("policy {plugin} failed")]
    PolicyFailure {
        /// The plugin's name (logged; the client sees only a generic message).
        plugin: String,
    },
    /// Every upstream attempt failed before the first byte reached the client.
    #[error("{message}")]
    Upstream {
        /// 502, 503 or 504.
        status: StatusCode,
        /// OpenAI-style code such as `upstream_timeout`.
        code: &'static str,
        /// Message for the client (never contains upstream secrets).
        message: String,
    },
    /// A shared bound is reached (body memory, connections, the usage queue):
    /// the request is shed with 503 and `retry-after` rather than kept waiting.
    #[error("The gateway is overloaded ({what}); please retry shortly.")]
    Overloaded {
        /// What is full.
        what: &'static str,
    },
    /// A bug or a broken dependency (store unavailable, ...).
    #[error("{0}")]
    Internal(String),
}

impl ApiError {
    /// A 400 for malformed or ill-typed input.
    pub fn bad_request(message: impl Into<String>, param: Option<&'static str>) -> Self {
        Self::Client {
            status: StatusCode::BAD_REQUEST,
            code: "invalid_request_error",
            param,
            message: message.into(),
        }
    }

    /// The HTTP status of this error.
    pub fn status(&self) -> StatusCode {
        match self {
            Self::Client { status, .. }
            | Self::Denied { status, .. }
            | Self::Upstream { status, .. } => *status,
            Self::PolicyFailure { .. } | Self::Overloaded { .. } => StatusCode::SERVICE_UNAVAILABLE,
            Self::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// OpenAI's error `type` for this status.
    pub fn kind(&self) -> &'static str {
        match self.status().as_u16() {
            400 | 404 | 405 | 408 | 413 => "invalid_request_error",
            401 => "authentication_error",
            403 => "permission_error",
            429 => match self {
                Self::Denied { code, .. } if code == "insufficient_quota" => "insufficient_quota",
                _ => "rate_limit_error",
            },
            500 => "server_error",
            _ => "api_error",
        }
    }

    /// OpenAI's error `code` for this error.
    pub fn code(&self) -> &str {
        match self {
            Self::Client { code, .. } | Self::Upstream { code, .. } => code,
            Self::Denied { code, .. } => code,
            Self::PolicyFailure { .. } => "policy_failure",
            Self::Overloaded { .. } => "overloaded",
            Self::Internal(_) => "internal_error",
        }
    }

    /// The short error kind recorded in usage logs and metrics.
    pub fn log_kind(&self) -> String {
        self.code().to_string()
    }

    /// The message shown to the client. Internal details stay in the logs.
    fn client_message(&self) -> String {
        match self {
            Self::PolicyFailure { .. } => {
                "The request could not be authorized because a gateway policy failed. Please retry later.".into()
            }
            Self::Internal(_) => "The gateway hit an internal error. Please retry later.".into(),
            other => other.to_string(),
        }
    }

    /// The JSON body `{"error":{...}}`.
    pub fn body(&self) -> serde_json::Value {
        let param = match self {
            Self::Client { param, .. } => *param,
            _ => None,
        };
        serde_json::json!({
            "error": {
                "message": self.client_message(),
                "type": self.kind(),
                "param": param,
                "code": self.code(),
            }
        })
    }

    /// The complete HTTP response in OpenAI's shape.
    pub fn into_response(self) -> Response<Full<Bytes>> {
        self.into_response_for(Protocol::OpenAi)
    }

    /// The complete HTTP response in a protocol's shape, built here and
    /// nowhere else.
    pub fn into_response_for(self, protocol: Protocol) -> Response<Full<Bytes>> {
        let body = match protocol {
            Protocol::OpenAi => self.body(),
            Protocol::Anthropic => {
                crate::protocol::anthropic_error(self.status().as_u16(), &self.client_message())
            }
        };
        let body = serde_json::to_vec(&body).unwrap_or_default();
        let mut response = Response::new(Full::new(Bytes::from(body)));
        *response.status_mut() = self.status();
        let headers = response.headers_mut();
        headers.insert(
            http::header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        if let Self::Denied {
            retry_after_s: Some(secs),
            ..
        } = &self
        {
            headers.insert(http::header::RETRY_AFTER, HeaderValue::from(*secs));
        }
        if matches!(
            self,
            Self::PolicyFailure { .. } | Self::Upstream { .. } | Self::Overloaded { .. }
        ) {
            headers.insert(http::header::RETRY_AFTER, HeaderValue::from_static("1"));
        }
        response
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shapes_match_openai() {
        let err = ApiError::bad_request("bad json", None);
        let body = err.body();
        assert_eq!(body["error"]["type"], "invalid_request_error");
        assert_eq!(body["error"]["message"], "bad json");
        assert!(body["error"]["param"].is_null());

        let quota = ApiError::Denied {
            status: StatusCode::TOO_MANY_REQUESTS,
            code: "insufficient_quota".into(),
            message: "spent".into(),
            retry_after_s: Some(3),
        };
        assert_eq!(quota.kind(), "insufficient_quota");
        let response = quota.into_response();
        assert_eq!(response.status(), 429);
        assert_eq!(response.headers()[http::header::RETRY_AFTER], "3");
    }

    #[test]
    fn internals_are_not_leaked() {
        let err = ApiError::PolicyFailure {
            plugin: "secret-plugin".into(),
        };
        let text = err.body().to_string();
        assert!(!text.contains("secret-plugin"));
        assert_eq!(err.status(), StatusCode::SERVICE_UNAVAILABLE);
    }
}
