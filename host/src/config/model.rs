//! The typed configuration model: what a validated config file means.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use ipnet::IpNet;
use serde::Deserialize;

/// Prices of one model as written, in credits per token. Cached input,
/// cache writes and audio default to the input and output prices.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Price {
    /// Credits per prompt token.
    pub input: f64,
    /// Credits per completion token (reasoning tokens included).
    pub output: f64,
    /// Credits per prompt token read from the provider's cache.
    pub cached_input: Option<f64>,
    /// Credits per prompt token written to the provider's cache.
    pub cache_write: Option<f64>,
    /// Credits per audio prompt token.
    pub audio_input: Option<f64>,
    /// Credits per audio completion token.
    pub audio_output: Option<f64>,
    /// The completion cap reserved (and, with `metering.enforce_cap`, sent)
    /// when a client sets none; default `metering.default_max_tokens`.
    pub max_tokens: Option<u32>,
    /// The tokenizer (`o200k_base` or `cl100k_base`); default: by model name,
    /// else `metering.default_encoding`.
    pub encoding: Option<String>,
}

/// The validated configuration.
#[derive(Debug, Clone)]
pub struct Config {
    /// The client-facing listener.
    pub server: ServerConfig,
    /// The admin listener.
    pub admin: AdminConfig,
    /// Logging.
    pub log: LogConfig,
    /// The usage and key store.
    pub store: StoreConfig,
    /// The key cache.
    pub cache: CacheConfig,
    /// Policy plugins.
    pub plugins: PluginsConfig,
    /// Upstream transport and health.
    pub upstream: UpstreamConfig,
    /// The channels, in file order.
    pub channels: Vec<ChannelConfig>,
    /// Metering: reservations, caps, tokenizers, and prices as exact rates.
    pub metering: MeteringConfig,
}

/// Client-facing server settings.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    /// Listen address (port 0 picks a free port).
    pub listen: SocketAddr,
    /// Largest accepted request body.
    pub max_body_bytes: usize,
    /// Peers whose `x-forwarded-for` is believed.
    pub trusted_proxies: Vec<IpNet>,
    /// How long shutdown waits for in-flight requests.
    pub shutdown_grace: Duration,
    /// Longest a client may take to send a request's headers, and the
    /// longest a keep-alive connection may sit idle.
    pub header_timeout: Duration,
    /// Longest a write to a client may stay blocked (a client that stopped
    /// reading); then the connection is dropped.
    pub write_timeout: Duration,
    /// Client connections open at once; beyond, new ones get 503 and are closed.
    pub max_connections: usize,
    /// Longest a request body may take to arrive (408 past it).
    pub body_timeout: Duration,
    /// Request-body bytes held in memory at once, over all requests (503 past it).
    pub max_body_memory: usize,
    /// Requests slower than this get a warning log line.
    pub slow_request: Duration,
    /// How request handling is spread over threads.
    pub runtime: ServerRuntime,
    /// Request-handling threads in the per-core runtime (default: the cores).
    pub workers: usize,
    /// Plain HTTP/1 connections are served by the gateway's own server, in
    /// the connection's task (off: hyper's server, as TLS and h2c are).
    pub direct_http: bool,
    /// The TLS listener beside the plain one, if configured.
    pub tls: Option<TlsConfig>,
}

/// A TLS listener: its address and its certificate's PEM files (reloaded
/// when they change).
#[derive(Debug, Clone)]
pub struct TlsConfig {
    /// Listen address (port 0 picks a free port).
    pub listen: SocketAddr,
    /// The certificate chain, leaf first.
    pub cert_file: PathBuf,
    /// The private key (PKCS#8, PKCS#1 or SEC1).
    pub key_file: PathBuf,
}

/// How the client listener's requests are spread over threads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ServerRuntime {
    /// One single-threaded runtime per worker thread, each with its own
    /// listening socket (`SO_REUSEPORT`) and upstream connection pool: a
    /// request never changes threads between accept and its usage record.
    PerCore,
    /// One multi-threaded, work-stealing runtime for every connection.
    Shared,
}

/// Admin listener settings.
#[derive(Debug, Clone)]
pub struct AdminConfig {
    /// Listen address (loopback by default).
    pub listen: SocketAddr,
    /// The bearer token; `None` disables the admin API (metrics stay public on it).
    pub token: Option<String>,
}

/// Log output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

/// Logging settings.
#[derive(Debug, Clone)]
pub struct LogConfig {
    /// Format.
    pub format: LogFormat,
    /// `tracing` filter directive, e.g. `info` or `sluice=debug`.
    pub level: String,
    /// Whether prompts and completions are put in usage records.
    pub content: bool,
}

/// Storage backend.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    /// redb (default).
    Redb,
    /// SQLite in WAL mode.
    Sqlite,
}

/// Store and batch-writer settings.
#[derive(Debug, Clone)]
pub struct StoreConfig {
    /// Backend.
    pub backend: Backend,
    /// Database file.
    pub path: PathBuf,
    /// Age after which usage records are purged.
    pub retention: Duration,
    /// Flush after this many records.
    pub batch_size: usize,
    /// Flush at least this often.
    pub flush_interval: Duration,
    /// Queue capacity (records).
    pub queue_capacity: usize,
    /// How long a request waits for queue space before the record is counted as dropped.
    pub backpressure_wait: Duration,
}

/// Key cache settings.
#[derive(Debug, Clone)]
pub struct CacheConfig {
    /// How long a found key is cached.
    pub key_ttl: Duration,
    /// Maximum cached entries.
    pub capacity: u64,
}

/// How plugin instances are provided.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InstanceMode {
    /// Warm, initialised instances reused across requests.
    Pooled,
    /// A fresh instance per call, for full isolation.
    Fresh,
}

/// What the host does when a plugin fails.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FailureMode {
    /// The kind's default: auth refuses (503), router and shaper fall back.
    Default,
    /// Auth and router refuse (503); a shaper falls back.
    Deny,
    /// Ignore the failed plugin: auth allows, router and shaper fall back.
    Skip,
}

/// Plugin platform settings.
#[derive(Debug, Clone)]
pub struct PluginsConfig {
    /// The watched folder (`None`: built-ins only).
    pub dir: Option<PathBuf>,
    /// Where compiled components are cached (`None`: no disk cache).
    pub cache_dir: Option<PathBuf>,
    /// Whether the embedded key-auth policy runs first.
    pub builtin_auth: bool,
    /// Whether the embedded router is used when the folder has none.
    pub builtin_router: bool,
    /// Whether the embedded redactor runs after folder shapers.
    pub builtin_redactor: bool,
    /// Instance model.
    pub instance_mode: InstanceMode,
    /// Warm instances kept per plugin.
    pub max_idle_instances: usize,
    /// Calls after which a warm instance is recycled.
    pub instance_max_uses: u32,
    /// Linear-memory limit per instance, in bytes.
    pub memory_limit: usize,
    /// Deadline of one plugin call.
    pub call_timeout: Duration,
    /// Plugin calls that may run past their first 1 ms slice at once.
    pub overrun_lanes: usize,
    /// Per-plugin failure overrides, by plugin name.
    pub on_failure: BTreeMap<String, FailureMode>,
    /// Folder plugins that must be loaded: without one of them, requests get
    /// 503 rather than being served without it.
    pub required: Vec<String>,
    /// The request headers policies see (never a credential).
    pub headers: Vec<http::HeaderName>,
}

/// Upstream transport and health settings.
#[derive(Debug, Clone)]
pub struct UpstreamConfig {
    /// TCP+TLS connect timeout.
    pub connect_timeout: Duration,
    /// Time to response headers.
    pub first_byte_timeout: Duration,
    /// Longest silence between two body chunks.
    pub idle_timeout: Duration,
    /// Largest single SSE event (an unterminated one included) a stream relays.
    pub max_event_bytes: usize,
    /// Largest upstream body read whole (a non-streamed answer, or a stream
    /// request answered without SSE).
    pub max_response_bytes: usize,
    /// Most channels tried per request.
    pub max_attempts: usize,
    /// Extra CA certificate (PEM) trusted for upstreams.
    pub ca_file: Option<PathBuf>,
    /// Plain-http channels use the gateway's own HTTP/1.1 client, read and
    /// written by the request's task (off: the pooled hyper client).
    pub direct_http: bool,
    /// Consecutive failures that put a channel in cooldown.
    pub failures_to_cooldown: u32,
    /// Cooldown length before the channel is probed again.
    pub cooldown: Duration,
    /// How often cooled-down channels are probed.
    pub probe_interval: Duration,
}

/// Provider kind of a channel.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Provider {
    /// Any OpenAI-compatible server.
    OpenAi,
    /// Azure OpenAI: deployment URLs, `api-version`, the `api-key` header.
    Azure,
    /// Anthropic's Messages API, translated.
    Anthropic,
}

impl Provider {
    /// The name used in config and in policy inputs.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::OpenAi => "openai",
            Self::Azure => "azure",
            Self::Anthropic => "anthropic",
        }
    }
}

/// One upstream channel.
#[derive(Clone)]
pub struct ChannelConfig {
    /// Unique id.
    pub id: String,
    /// Provider kind.
    pub provider: Provider,
    /// Base URL including `/v1`, e.g. `https://api.openai.com/v1`.
    pub base_url: http::Uri,
    /// The resolved upstream secret (never logged: `Debug` masks it).
    pub api_key: Option<String>,
    /// Models served (client-facing names).
    pub models: Vec<String>,
    /// Client-facing name → upstream name.
    pub model_map: BTreeMap<String, String>,
    /// Higher is tried first.
    pub priority: i32,
    /// Weight within a priority.
    pub weight: u32,
    /// Concurrency limit; 0 = none.
    pub max_in_flight: u32,
    /// Headers the operator sets on every request to this channel (an
    /// organisation, a project); they replace anything a client sent.
    pub headers: Vec<(http::HeaderName, http::HeaderValue)>,
    /// Client headers forwarded to this channel beyond the protocol's
    /// allow-list, lower-case; a trailing `*` matches a prefix.
    pub forward_headers: Vec<String>,
    /// The endpoints served (`chat.completions`, `completions`,
    /// `embeddings`): by default every one the provider can serve.
    pub endpoints: Vec<String>,
    /// Labels a 1.2 router reads (`candidates.tags`), such as a region or a
    /// tenant; the gateway itself gives them no meaning.
    pub tags: Vec<String>,
    /// Azure's `api-version` query parameter.
    pub api_version: String,
    /// Anthropic's `anthropic-version` header.
    pub anthropic_version: String,
}

impl std::fmt::Debug for ChannelConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ChannelConfig")
            .field("id", &self.id)
            .field("base_url", &self.base_url)
            .field("api_key", &self.api_key.as_ref().map(|_| "<redacted>"))
            .field("models", &self.models)
            .finish_non_exhaustive()
    }
}

impl ChannelConfig {
    /// Whether the operator forwards the client header `name` to this channel.
    pub fn forwards(&self, name: &str) -> bool {
        self.forward_headers
            .iter()
            .any(|pattern| match pattern.strip_suffix('*') {
                Some(prefix) => name.starts_with(prefix),
                None => name == pattern,
            })
    }

    /// Whether the channel serves an endpoint (by its client-facing name).
    pub fn serves_endpoint(&self, endpoint: &str) -> bool {
        self.endpoints.iter().any(|e| e == endpoint)
    }

    /// The upstream name of a client-facing model.
    pub fn upstream_model<'a>(&'a self, model: &'a str) -> &'a str {
        self.model_map.get(model).map_or(model, String::as_str)
    }
}

/// Millionths of a credit per token, for each kind of token: prices are
/// exact integers, so a bill never depends on float rounding.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Rates {
    /// Uncached text prompt tokens.
    pub input: u64,
    /// Prompt tokens read from the provider's cache.
    pub cached_input: u64,
    /// Prompt tokens written to the provider's cache.
    pub cache_write: u64,
    /// Text completion tokens (reasoning tokens included).
    pub output: u64,
    /// Audio prompt tokens.
    pub audio_input: u64,
    /// Audio completion tokens.
    pub audio_output: u64,
}

/// How one model is metered.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ModelMeter {
    /// Its prices.
    pub rates: Rates,
    /// The completion cap when a client sets none.
    pub max_tokens: u32,
    /// The tokenizer.
    pub encoding: sluice_meter::Encoding,
}

/// Metering settings, and each model's prices resolved against them.
#[derive(Debug, Clone)]
pub struct MeteringConfig {
    /// Send the upstream the smaller of the client's cap and what the key's
    /// remaining quota buys, and never charge past a reservation.
    pub enforce_cap: bool,
    /// Text tokenized exactly per request (prompt, and a completion with no
    /// usage); the rest is extrapolated.
    pub max_counted_bytes: usize,
    /// Metering of models not listed under `[pricing.models]`.
    pub default: ModelMeter,
    /// Metering of listed models.
    pub models: BTreeMap<String, ModelMeter>,
    /// The default tokenizer, for listed models whose name says nothing.
    pub default_encoding: sluice_meter::Encoding,
}

impl MeteringConfig {
    /// How `model` is metered: its own table, else the default prices with
    /// the tokenizer its name implies.
    pub fn model(&self, model: &str) -> ModelMeter {
        if let Some(listed) = self.models.get(model) {
            return *listed;
        }
        ModelMeter {
            encoding: sluice_meter::Encoding::for_model(model).unwrap_or(self.default.encoding),
            ..self.default
        }
    }
}
