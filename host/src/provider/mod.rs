//! The provider seam: everything that differs between the wire formats a
//! channel can speak, and nothing else. A channel's [`Wire`] knows its
//! upstream URIs, its credential headers, which endpoints it serves, and how
//! a request body, a whole response body and stream events translate between
//! OpenAI's chat completions (what clients and the rest of the gateway speak)
//! and its provider's format. The relay, accounting, failover and policies
//! see only the OpenAI shape.
//!
//! | provider | URIs | credential | translation |
//! |---|---|---|---|
//! | `openai` | `{base_url}/chat/completions`, … | `Authorization: Bearer` | none |
//! | `azure` | `{base_url}/openai/deployments/{deployment}/…?api-version=…` | `api-key` | none |
//! | `anthropic` | `{base_url}/messages` | `x-api-key`, `anthropic-version` | [`anthropic`], [`anthropic_stream`] |

pub mod anthropic;
pub mod anthropic_stream;
pub mod messages;

use bytes::Bytes;
use http::{HeaderMap, HeaderName, HeaderValue, Uri};

use crate::config::{ChannelConfig, Provider};
use crate::error::ApiError;
use crate::protocol::Protocol;
use anthropic_stream::{ChunkWriter, StreamError};
use messages::EventWriter;

/// OpenAI's path of chat completions, relative to a channel's base URL.
pub const CHAT_PATH: &str = "/chat/completions";
/// OpenAI's path of legacy completions.
pub const COMPLETIONS_PATH: &str = "/completions";
/// OpenAI's path of embeddings.
pub const EMBEDDINGS_PATH: &str = "/embeddings";
/// OpenAI's path of the model list (health probes).
pub const MODELS_PATH: &str = "/models";
/// Anthropic's token counting, relative to a channel's base URL.
pub const COUNT_TOKENS_PATH: &str = "/messages/count_tokens";

/// The endpoints (client-facing names) each provider can serve.
pub fn supported_endpoints(provider: Provider) -> &'static [&'static str] {
    match provider {
        Provider::OpenAi | Provider::Azure => &["chat.completions", "completions", "embeddings"],
        Provider::Anthropic => &["chat.completions"],
    }
}

/// How one channel is reached and spoken to.
#[derive(Debug)]
pub struct Wire {
    provider: Provider,
    /// The base URL without a trailing `/`.
    base: String,
    /// Headers that authenticate the gateway (values marked sensitive), and
    /// the provider's fixed ones.
    credentials: Vec<(HeaderName, HeaderValue)>,
    /// `(upstream path, upstream model or "" when the URI does not depend
    /// on it, URI)`, built once.
    uris: Vec<(&'static str, String, Uri)>,
    /// Azure's `api-version`.
    api_version: String,
}

impl Wire {
    /// The wire of a channel: its URIs and credential headers built once.
    pub fn new(config: &ChannelConfig) -> Self {
        let base = config
            .base_url
            .to_string()
            .trim_end_matches('/')
            .to_string();
        let mut wire = Self {
            provider: config.provider,
            base,
            credentials: Vec::new(),
            uris: Vec::new(),
            api_version: config.api_version.clone(),
        };
        let secret = |value: String| {
            let mut value = HeaderValue::from_str(&value).ok()?;
            value.set_sensitive(true);
            Some(value)
        };
        let key = config.api_key.clone();
        match config.provider {
            Provider::OpenAi => {
                if let Some(v) = key.and_then(|k| secret(format!("Bearer {k}"))) {
                    wire.credentials.push((http::header::AUTHORIZATION, v));
                }
            }
            Provider::Azure => {
                if let Some(v) = key.and_then(secret) {
                    wire.credentials
                        .push((HeaderName::from_static("api-key"), v));
                }
            }
            Provider::Anthropic => {
                if let Some(v) = key.and_then(secret) {
                    wire.credentials.push((crate::facts::X_API_KEY, v));
                }
                if let Ok(v) = HeaderValue::from_str(&config.anthropic_version) {
                    wire.credentials
                        .push((HeaderName::from_static("anthropic-version"), v));
                }
            }
        }
        let deployments: Vec<&str> = config
            .models
            .iter()
            .map(|m| config.upstream_model(m))
            .collect();
        for path in [
            CHAT_PATH,
            COMPLETIONS_PATH,
            EMBEDDINGS_PATH,
            MODELS_PATH,
            COUNT_TOKENS_PATH,
        ] {
            let models = if wire.by_deployment(path) {
                deployments.as_slice()
            } else {
                &[""]
            };
            for model in models {
                if let Some(uri) = wire.build_uri(path, model) {
                    wire.uris.push((path, (*model).to_string(), uri));
                }
            }
        }
        wire
    }

    fn build_uri(&self, path: &'static str, model: &str) -> Option<Uri> {
        let base = &self.base;
        let text = match self.provider {
            Provider::OpenAi if path == COUNT_TOKENS_PATH => return None,
            Provider::OpenAi => format!("{base}{path}"),
            Provider::Anthropic => match path {
                CHAT_PATH => format!("{base}/messages"),
                COUNT_TOKENS_PATH => format!("{base}{COUNT_TOKENS_PATH}"),
                MODELS_PATH => format!("{base}/models"),
                _ => return None,
            },
            Provider::Azure => {
                let version = &self.api_version;
                match path {
                    MODELS_PATH => format!("{base}/openai/models?api-version={version}"),
                    COUNT_TOKENS_PATH => return None,
                    _ if model.is_empty()
                        || !model
                            .bytes()
                            .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b)) =>
                    {
                        return None;
                    }
                    _ => format!("{base}/openai/deployments/{model}{path}?api-version={version}"),
                }
            }
        };
        text.parse().ok()
    }

    /// The URI of an upstream path for an upstream model (an Azure
    /// deployment is part of the path); `None` when the provider has none.
    pub fn uri(&self, path: &str, upstream_model: &str) -> Option<Uri> {
        let model = if self.by_deployment(path) {
            upstream_model
        } else {
            ""
        };
        if let Some((_, _, uri)) = self.uris.iter().find(|(p, m, _)| *p == path && m == model) {
            return Some(uri.clone());
        }
        // A deployment a router chose that the config does not list.
        let path = [CHAT_PATH, COMPLETIONS_PATH, EMBEDDINGS_PATH]
            .into_iter()
            .find(|p| *p == path)
            .filter(|p| self.by_deployment(p))?;
        self.build_uri(path, model)
    }

    /// Whether the URI of `path` names the upstream model (an Azure
    /// deployment) rather than being the channel's one.
    fn by_deployment(&self, path: &str) -> bool {
        self.provider == Provider::Azure && ![MODELS_PATH, COUNT_TOKENS_PATH].contains(&path)
    }

    /// The URI health probes call (the provider's model list).
    pub fn probe_uri(&self) -> Option<Uri> {
        self.uri(MODELS_PATH, "")
    }

    /// The headers that authenticate the gateway to the provider.
    pub fn credentials(&self) -> &[(HeaderName, HeaderValue)] {
        &self.credentials
    }

    /// Whether the channel speaks the client's protocol as it is.
    fn speaks(&self, protocol: Protocol) -> bool {
        match protocol {
            Protocol::OpenAi => self.provider != Provider::Anthropic,
            Protocol::Anthropic => self.provider == Provider::Anthropic,
        }
    }

    /// The upstream body for a client's body in `protocol` (already renamed
    /// and capped by the relay); `default_cap` is the completion cap of a
    /// provider that requires one when the client set none (the model's
    /// metered default, so the reservation holds what can be spent).
    ///
    /// # Errors
    /// 400 when the request cannot be expressed in the provider's format.
    pub fn request_body(
        &self,
        protocol: Protocol,
        body: Bytes,
        default_cap: u32,
    ) -> Result<Bytes, ApiError> {
        if self.speaks(protocol) {
            return Ok(body);
        }
        match protocol {
            Protocol::OpenAi => anthropic::request(&body, default_cap),
            Protocol::Anthropic => messages::request(&body),
        }
        .map(Bytes::from)
    }

    /// A whole upstream response body in the client's protocol (a
    /// completion or a message, or an error); a body that does not parse is
    /// passed on as it came.
    pub fn response_body(&self, protocol: Protocol, status: u16, body: Bytes) -> Bytes {
        if self.speaks(protocol) {
            return body;
        }
        match protocol {
            Protocol::OpenAi => anthropic::response((200..300).contains(&status), &body),
            Protocol::Anthropic => messages::response(status, &body),
        }
        .map_or(body, Bytes::from)
    }

    /// The translator of a stream's events into the client's protocol.
    pub fn events(&self, protocol: Protocol) -> Events {
        if self.speaks(protocol) {
            return Events::Pass;
        }
        match protocol {
            Protocol::OpenAi => Events::Anthropic(Box::default()),
            Protocol::Anthropic => Events::Messages(Box::default()),
        }
    }

    /// Sets the headers that authenticate the gateway to the provider, and
    /// the client headers of `protocol` the channel takes as they are:
    /// Anthropic's version and beta flags, from an Anthropic client to an
    /// Anthropic channel (they replace the channel's default version).
    pub fn authenticate(&self, protocol: Protocol, client: &HeaderMap, out: &mut HeaderMap) {
        for (name, value) in &self.credentials {
            out.insert(name, value.clone());
        }
        if protocol == Protocol::Anthropic && self.provider == Provider::Anthropic {
            for name in ["anthropic-version", "anthropic-beta"] {
                for value in client.get_all(name) {
                    out.insert(name, value.clone());
                }
            }
        }
    }
}

/// A stream's event translator.
#[derive(Debug)]
pub enum Events {
    /// The upstream speaks OpenAI's chunks.
    Pass,
    /// Anthropic's events, as OpenAI chunks.
    Anthropic(Box<ChunkWriter>),
    /// OpenAI's chunks, as Anthropic events.
    Messages(Box<EventWriter>),
}

impl Events {
    /// Adds the client's events for one upstream event to `out`.
    pub fn push(&mut self, event: Bytes, out: &mut Vec<Bytes>) {
        match self {
            Self::Pass => out.push(event),
            Self::Anthropic(writer) => writer.translate(&event, out),
            Self::Messages(writer) => writer.translate(&event, out),
        }
    }

    /// An error the upstream reported inside the stream.
    pub fn take_error(&mut self) -> Option<StreamError> {
        match self {
            Self::Pass | Self::Messages(_) => None,
            Self::Anthropic(writer) => writer.take_error(),
        }
    }
}

#[cfg(test)]
mod tests;
