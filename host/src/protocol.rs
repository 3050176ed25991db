//! The client-facing APIs: OpenAI's (every `/v1/...` endpoint but one) and
//! Anthropic's Messages (`/v1/messages`). A request's protocol chooses the
//! shape of its errors and which provider translation its channel applies.

/// The API whose wire format a client speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    /// OpenAI's: `{"error":{"message","type","param","code"}}` errors.
    OpenAi,
    /// Anthropic's Messages: `{"type":"error","error":{"type","message"}}` errors.
    Anthropic,
}

impl Protocol {
    /// The name policies read (`request.protocol`).
    pub fn name(self) -> &'static str {
        match self {
            Self::OpenAi => "openai",
            Self::Anthropic => "anthropic",
        }
    }
}

/// Anthropic's error `type` for an HTTP status.
pub fn anthropic_error_type(status: u16) -> &'static str {
    match status {
        400 | 405 | 408 | 422 => "invalid_request_error",
        401 => "authentication_error",
        402 | 403 => "permission_error",
        404 => "not_found_error",
        413 => "request_too_large",
        429 => "rate_limit_error",
        503 | 529 => "overloaded_error",
        _ => "api_error",
    }
}

/// An error body in Anthropic's shape.
pub fn anthropic_error(status: u16, message: &str) -> serde_json::Value {
    serde_json::json!({"type": "error", "error": {"type": anthropic_error_type(status), "message": message}})
}
