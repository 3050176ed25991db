//! The client-facing endpoints: which one a path names, the name it goes by in
//! metrics, logs, usage records and policies, and where a relayed one goes
//! upstream. The one source of endpoint names.

use crate::protocol::Protocol;
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
    /// `POST /v1/messages` (Anthropic's Messages API).
    Messages,
    /// `POST /v1/messages/count_tokens`.
    CountTokens,
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
            "/v1/messages" => Self::Messages,
            "/v1/messages/count_tokens" => Self::CountTokens,
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
            Self::Messages => "messages",
            Self::CountTokens => "messages.count_tokens",
            Self::Models => "models",
            Self::Health => "healthz",
            Self::Unknown => "other",
        }
    }

    /// The upstream path (relative to a channel's base URL) of an endpoint
    /// the gateway relays; `None` for the ones it answers itself.
    pub fn upstream_path(self) -> Option<&'static str> {
        match self {
            Self::Chat | Self::Messages => Some(provider::CHAT_PATH),
            Self::Completions => Some(provider::COMPLETIONS_PATH),
            Self::Embeddings => Some(provider::EMBEDDINGS_PATH),
            Self::CountTokens | Self::Models | Self::Health | Self::Unknown => None,
        }
    }

    /// The endpoint [`Self::name`] calls `name`; `None` for a name no
    /// endpoint has.
    pub fn of_name(name: &str) -> Option<Self> {
        [
            Self::Chat,
            Self::Completions,
            Self::Embeddings,
            Self::Messages,
            Self::CountTokens,
            Self::Models,
        ]
        .into_iter()
        .find(|e| e.name() == name)
    }

    /// The API whose wire format the client speaks on this endpoint.
    pub fn protocol(self) -> Protocol {
        match self {
            Self::Messages | Self::CountTokens => Protocol::Anthropic,
            _ => Protocol::OpenAi,
        }
    }

    /// The channel endpoint that serves it (`/v1/messages` is served by the
    /// channels that serve chat completions).
    pub fn served_as(self) -> &'static str {
        match self {
            Self::Messages | Self::CountTokens => Self::Chat.name(),
            other => other.name(),
        }
    }
}

impl Endpoint {
    /// Which part of the body holds the prompt, for the relayed endpoints.
    pub fn prompt_kind(self) -> Option<sluice_meter::PromptKind> {
        match self {
            // A Messages body is counted as the chat request it translates to.
            Self::Chat | Self::Messages => Some(sluice_meter::PromptKind::Chat),
            Self::Completions => Some(sluice_meter::PromptKind::Completion),
            Self::Embeddings => Some(sluice_meter::PromptKind::Embedding),
            Self::CountTokens | Self::Models | Self::Health | Self::Unknown => None,
        }
    }

    /// The body field the gateway sets to cap the completion when the client
    /// set none (`None`: the endpoint generates nothing).
    pub fn cap_field(self) -> Option<&'static str> {
        match self {
            Self::Chat => Some("max_completion_tokens"),
            Self::Completions | Self::Messages => Some("max_tokens"),
            Self::Embeddings | Self::CountTokens | Self::Models | Self::Health | Self::Unknown => {
                None
            }
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
