//! The client-facing endpoints: which one a path names, the name it goes by in
//! metrics, logs, usage records and policies, and where a relayed one goes
//! upstream. The one source of endpoint names.

use crate::provider;

/// An endpoint of the client-facing API.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Endpoint {
    /// `POST /v1/chat/completions`.
    Chat,
    /// `POST /v1/completions`.
    Completions,
    /// `POST /v1/embeddings`.
    Embeddings,
    /// `GET /v1/models` and `GET /v1/models/{id}`.
    Models,
    /// `GET /healthz`.
    Health,
    /// Any other path.
    Unknown,
}

impl Endpoint {
    /// The endpoint a request path names.
    pub fn of_path(path: &str) -> Self {
        match path {
            "/v1/chat/completions" => Self::Chat,
            "/v1/completions" => Self::Completions,
            "/v1/embeddings" => Self::Embeddings,
            "/v1/models" => Self::Models,
            p if p.starts_with("/v1/models/") => Self::Models,
            "/healthz" => Self::Health,
            _ => Self::Unknown,
        }
    }

    /// The name used in metrics, logs, usage records and policies.
    pub fn name(self) -> &'static str {
        match self {
            Self::Chat => "chat.completions",
            Self::Completions => "completions",
            Self::Embeddings => "embeddings",
            Self::Models => "models",
            Self::Health => "healthz",
            Self::Unknown => "other",
        }
    }

    /// The upstream path (relative to a channel's base URL) of an endpoint
    /// the gateway relays; `None` for the ones it answers itself.
    pub fn upstream_path(self) -> Option<&'static str> {
        match self {
            Self::Chat => Some(provider::CHAT_PATH),
            Self::Completions => Some(provider::COMPLETIONS_PATH),
            Self::Embeddings => Some(provider::EMBEDDINGS_PATH),
            Self::Models | Self::Health | Self::Unknown => None,
        }
    }
}

impl Endpoint {
    /// Which part of the body holds the prompt, for the relayed endpoints.
    pub fn prompt_kind(self) -> Option<sluice_meter::PromptKind> {
        match self {
            Self::Chat => Some(sluice_meter::PromptKind::Chat),
            Self::Completions => Some(sluice_meter::PromptKind::Completion),
            Self::Embeddings => Some(sluice_meter::PromptKind::Embedding),
            Self::Models | Self::Health | Self::Unknown => None,
        }
    }

    /// The body field the gateway sets to cap the completion when the client
    /// set none (`None`: the endpoint generates nothing).
    pub fn cap_field(self) -> Option<&'static str> {
        match self {
            Self::Chat => Some("max_completion_tokens"),
            Self::Completions => Some("max_tokens"),
            Self::Embeddings | Self::Models | Self::Health | Self::Unknown => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::Endpoint;

    #[test]
    fn paths_name_endpoints() {
        assert_eq!(Endpoint::of_path("/v1/chat/completions"), Endpoint::Chat);
        assert_eq!(Endpoint::of_path("/v1/models/gpt-4o"), Endpoint::Models);
        assert_eq!(Endpoint::of_path("/v1/models"), Endpoint::Models);
        assert_eq!(Endpoint::of_path("/v1/chat"), Endpoint::Unknown);
        assert_eq!(Endpoint::Unknown.name(), "other");
        assert!(Endpoint::Embeddings.upstream_path().is_some());
        assert!(Endpoint::Models.upstream_path().is_none());
    }
}
