//! Configuration: the raw TOML shape (`deny_unknown_fields`, so a typo is an
//! error), its validation into a typed [`Config`], secrets by reference
//! (`env::NAME`, `file::PATH`), and environment overrides through one function
//! that tests feed a map.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use ipnet::IpNet;
use serde::Deserialize;
use toml::Spanned;

/// A configuration problem, rendered as `file:line:col: key: message`.
#[derive(Debug)]
pub struct ConfigError {
    /// The config file.
    pub file: String,
    /// 1-based line (0 when unknown).
    pub line: usize,
    /// 1-based column (0 when unknown).
    pub column: usize,
    /// Dotted key path.
    pub key: String,
    /// What is wrong.
    pub message: String,
}

impl std::fmt::Display for ConfigError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}:{}:{}: ", self.file, self.line, self.column)?;
        if !self.key.is_empty() {
            write!(f, "{}: ", self.key)?;
        }
        f.write_str(&self.message)
    }
}

impl std::error::Error for ConfigError {}

/// Where environment values come from: the process, or a map in tests.
pub trait Env {
    /// The value of `name`, if set.
    fn var(&self, name: &str) -> Option<String>;
}

/// The real process environment.
pub struct ProcessEnv;

impl Env for ProcessEnv {
    fn var(&self, name: &str) -> Option<String> {
        std::env::var(name).ok()
    }
}

impl Env for BTreeMap<String, String> {
    fn var(&self, name: &str) -> Option<String> {
        self.get(name).cloned()
    }
}

type Text = Spanned<String>;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    #[serde(default)]
    server: RawServer,
    #[serde(default)]
    admin: RawAdmin,
    #[serde(default)]
    log: RawLog,
    #[serde(default)]
    store: RawStore,
    #[serde(default)]
    cache: RawCache,
    #[serde(default)]
    plugins: RawPlugins,
    #[serde(default)]
    upstream: RawUpstream,
    #[serde(default)]
    channels: Vec<RawChannel>,
    #[serde(default)]
    pricing: RawPricing,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawServer {
    listen: Option<Text>,
    max_body_bytes: Option<usize>,
    trusted_proxies: Option<Vec<Text>>,
    shutdown_grace: Option<Text>,
    slow_request: Option<Text>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawAdmin {
    listen: Option<Text>,
    token: Option<Text>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawLog {
    format: Option<Text>,
    level: Option<String>,
    content: Option<bool>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawStore {
    backend: Option<Text>,
    path: Option<String>,
    retention: Option<Text>,
    batch_size: Option<usize>,
    flush_interval: Option<Text>,
    queue_capacity: Option<usize>,
    backpressure_wait: Option<Text>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawCache {
    key_ttl: Option<Text>,
    capacity: Option<u64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPlugins {
    dir: Option<String>,
    cache_dir: Option<String>,
    builtin_auth: Option<bool>,
    builtin_router: Option<bool>,
    builtin_redactor: Option<bool>,
    instance_mode: Option<Text>,
    max_idle_instances: Option<usize>,
    instance_max_uses: Option<u32>,
    memory_limit_mb: Option<usize>,
    call_timeout: Option<Text>,
    overrun_lanes: Option<usize>,
    #[serde(default)]
    on_failure: BTreeMap<String, Text>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawUpstream {
    connect_timeout: Option<Text>,
    first_byte_timeout: Option<Text>,
    idle_timeout: Option<Text>,
    max_attempts: Option<usize>,
    ca_file: Option<String>,
    failures_to_cooldown: Option<u32>,
    cooldown: Option<Text>,
    probe_interval: Option<Text>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawChannel {
    id: Text,
    #[serde(default)]
    provider: Option<Text>,
    base_url: Text,
    api_key: Option<Text>,
    models: Vec<String>,
    #[serde(default)]
    model_map: BTreeMap<String, String>,
    #[serde(default)]
    priority: i32,
    #[serde(default = "one")]
    weight: u32,
    #[serde(default)]
    max_in_flight: u32,
}

fn one() -> u32 {
    1
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPricing {
    default: Option<Price>,
    #[serde(default)]
    models: BTreeMap<String, Price>,
}

/// Credits charged per token: `cost = prompt × input + completion × output`, rounded up.
#[derive(Debug, Clone, Copy, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Price {
    /// Credits per prompt token.
    pub input: f64,
    /// Credits per completion token.
    pub output: f64,
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
    /// Pricing per model.
    pub pricing: Pricing,
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
    /// Requests slower than this get a warning log line.
    pub slow_request: Duration,
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
    /// Auth refuses; router and shaper fall back.
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
    /// Most channels tried per request.
    pub max_attempts: usize,
    /// Extra CA certificate (PEM) trusted for upstreams.
    pub ca_file: Option<PathBuf>,
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
}

impl Provider {
    /// The name used in config and in policy inputs.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::OpenAi => "openai",
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
    /// The upstream name of a client-facing model.
    pub fn upstream_model<'a>(&'a self, model: &'a str) -> &'a str {
        self.model_map.get(model).map_or(model, String::as_str)
    }
}

/// Prices per model.
#[derive(Debug, Clone)]
pub struct Pricing {
    /// Price of models not listed.
    pub default: Price,
    /// Per-model prices.
    pub models: BTreeMap<String, Price>,
}

impl Pricing {
    /// Credits for a request on `model`.
    pub fn cost(&self, model: &str, prompt_tokens: u32, completion_tokens: u32) -> i64 {
        let price = self.models.get(model).unwrap_or(&self.default);
        let credits =
            f64::from(prompt_tokens) * price.input + f64::from(completion_tokens) * price.output;
        // Saturating float→int conversion; credits are never negative.
        credits.max(0.0).ceil() as i64
    }
}

/// The default number of plugin overrun lanes: half the cores, at least one.
fn default_overrun_lanes() -> usize {
    std::thread::available_parallelism().map_or(1, |n| (n.get() / 2).max(1))
}

/// Reads, parses and validates a config file against the process environment.
///
/// # Errors
/// A [`ConfigError`] naming the file, line and key of the first problem.
pub fn load(path: &Path) -> Result<Config, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|e| ConfigError {
        file: path.display().to_string(),
        line: 0,
        column: 0,
        key: String::new(),
        message: format!("cannot read: {e}"),
    })?;
    parse(&text, path, &ProcessEnv)
}

/// Parses and validates config text; `path` names the file in errors and anchors
/// relative paths; `env` resolves `env::` secrets and overrides.
///
/// # Errors
/// A [`ConfigError`] naming the file, line and key of the first problem.
pub fn parse(text: &str, path: &Path, env: &dyn Env) -> Result<Config, ConfigError> {
    let v = Validator {
        text,
        file: path.display().to_string(),
        base: path.parent().unwrap_or(Path::new(".")),
    };
    let mut raw: RawConfig = toml::from_str(text).map_err(|e| v.toml_error(&e))?;
    apply_overrides(&mut raw, env);
    v.validate(raw, env)
}

/// Applies the environment overrides (`SLUICE_LISTEN`, `SLUICE_ADMIN_LISTEN`,
/// `SLUICE_LOG_LEVEL`, `SLUICE_ADMIN_TOKEN`). Overridden values
/// carry no span, so errors about them point at line 0.
fn apply_overrides(raw: &mut RawConfig, env: &dyn Env) {
    let spanned = |value: String| Spanned::new(0..0, value);
    if let Some(listen) = env.var("SLUICE_LISTEN") {
        raw.server.listen = Some(spanned(listen));
    }
    if let Some(listen) = env.var("SLUICE_ADMIN_LISTEN") {
        raw.admin.listen = Some(spanned(listen));
    }
    if let Some(level) = env.var("SLUICE_LOG_LEVEL") {
        raw.log.level = Some(level);
    }
    if env.var("SLUICE_ADMIN_TOKEN").is_some() {
        // The variable holds the token itself, so it becomes a reference to itself.
        raw.admin.token = Some(spanned("env::SLUICE_ADMIN_TOKEN".into()));
    }
}

struct Validator<'a> {
    text: &'a str,
    file: String,
    base: &'a Path,
}

impl Validator<'_> {
    fn position(&self, offset: usize) -> (usize, usize) {
        if offset == 0 && self.text.is_empty() {
            return (0, 0);
        }
        let before = &self.text[..offset.min(self.text.len())];
        let line = before.matches('\n').count() + 1;
        let column = before
            .rfind('\n')
            .map_or(before.len(), |nl| before.len() - nl - 1)
            + 1;
        (line, column)
    }

    /// The `[table]` or `[[table]]` header above `offset`, if any.
    fn enclosing_table(&self, offset: usize) -> Option<String> {
        let before = &self.text[..offset.min(self.text.len())];
        before
            .lines()
            .rev()
            .map(str::trim)
            .find(|l| l.starts_with('['))
            .map(|l| l.trim_matches(|c| c == '[' || c == ']').trim().to_string())
    }

    fn toml_error(&self, e: &toml::de::Error) -> ConfigError {
        let (line, column) = e.span().map_or((0, 0), |s| self.position(s.start));
        let message = e.message().to_string();
        let field = message
            .split('`')
            .nth(1)
            .filter(|_| {
                message.starts_with("unknown field") || message.starts_with("missing field")
            })
            .unwrap_or("");
        let key = match e.span().and_then(|s| self.enclosing_table(s.start)) {
            Some(table) if !field.is_empty() => format!("{table}.{field}"),
            _ => field.to_string(),
        };
        ConfigError {
            file: self.file.clone(),
            line,
            column,
            key,
            message,
        }
    }

    fn error(&self, key: &str, value: Option<&Text>, message: impl Into<String>) -> ConfigError {
        let (line, column) = match value {
            Some(v) if v.span().end > 0 => self.position(v.span().start),
            _ => (0, 0),
        };
        ConfigError {
            file: self.file.clone(),
            line,
            column,
            key: key.into(),
            message: message.into(),
        }
    }

    fn duration(
        &self,
        key: &str,
        value: Option<&Text>,
        default: Duration,
    ) -> Result<Duration, ConfigError> {
        let Some(v) = value else { return Ok(default) };
        humantime::parse_duration(v.get_ref()).map_err(|e| {
            self.error(
                key,
                value,
                format!(
                    "invalid duration '{}': {e} (try \"250ms\", \"30s\", \"30d\")",
                    v.get_ref()
                ),
            )
        })
    }

    fn addr(
        &self,
        key: &str,
        value: Option<&Text>,
        default: &str,
    ) -> Result<SocketAddr, ConfigError> {
        let text = value.map_or(default, |v| v.get_ref().as_str());
        text.parse()
            .map_err(|e| self.error(key, value, format!("invalid socket address '{text}': {e}")))
    }

    fn path(&self, value: &str) -> PathBuf {
        let p = Path::new(value);
        if p.is_absolute() {
            p.to_path_buf()
        } else {
            self.base.join(p)
        }
    }

    fn secret(&self, key: &str, value: &Text, env: &dyn Env) -> Result<String, ConfigError> {
        let reference = value.get_ref();
        if let Some(name) = reference.strip_prefix("env::") {
            env.var(name).filter(|v| !v.is_empty()).ok_or_else(|| {
                self.error(
                    key,
                    Some(value),
                    format!("environment variable {name} is not set"),
                )
            })
        } else if let Some(file) = reference.strip_prefix("file::") {
            std::fs::read_to_string(self.path(file))
                .map(|s| s.trim().to_string())
                .map_err(|e| {
                    self.error(
                        key,
                        Some(value),
                        format!("cannot read secret file {file}: {e}"),
                    )
                })
        } else {
            Err(self.error(
                key,
                Some(value),
                "secrets must be references: \"env::NAME\" or \"file::PATH\", never inline",
            ))
        }
    }

    fn validate(&self, raw: RawConfig, env: &dyn Env) -> Result<Config, ConfigError> {
        let server = ServerConfig {
            listen: self.addr(
                "server.listen",
                raw.server.listen.as_ref(),
                "127.0.0.1:8080",
            )?,
            max_body_bytes: raw.server.max_body_bytes.unwrap_or(4 << 20),
            trusted_proxies: raw
                .server
                .trusted_proxies
                .unwrap_or_default()
                .iter()
                .map(|p| {
                    let text = p.get_ref();
                    text.parse::<IpNet>()
                        .or_else(|_| text.parse::<std::net::IpAddr>().map(IpNet::from))
                        .map_err(|e| {
                            self.error(
                                "server.trusted_proxies",
                                Some(p),
                                format!("invalid network '{text}': {e}"),
                            )
                        })
                })
                .collect::<Result<_, _>>()?,
            shutdown_grace: self.duration(
                "server.shutdown_grace",
                raw.server.shutdown_grace.as_ref(),
                Duration::from_secs(30),
            )?,
            slow_request: self.duration(
                "server.slow_request",
                raw.server.slow_request.as_ref(),
                Duration::from_secs(30),
            )?,
        };
        let admin = AdminConfig {
            listen: self.addr("admin.listen", raw.admin.listen.as_ref(), "127.0.0.1:8081")?,
            token: raw
                .admin
                .token
                .as_ref()
                .map(|t| self.secret("admin.token", t, env))
                .transpose()?,
        };
        let log = LogConfig {
            format: match raw.log.format.as_ref().map(|f| f.get_ref().as_str()) {
                None | Some("text") => LogFormat::Text,
                Some("json") => LogFormat::Json,
                Some(other) => {
                    return Err(self.error(
                        "log.format",
                        raw.log.format.as_ref(),
                        format!("unknown format '{other}' (text or json)"),
                    ));
                }
            },
            level: raw.log.level.unwrap_or_else(|| "info".into()),
            content: raw.log.content.unwrap_or(false),
        };
        let store = StoreConfig {
            backend: match raw.store.backend.as_ref().map(|b| b.get_ref().as_str()) {
                None | Some("redb") => Backend::Redb,
                Some("sqlite") => Backend::Sqlite,
                Some(other) => {
                    return Err(self.error(
                        "store.backend",
                        raw.store.backend.as_ref(),
                        format!("unknown backend '{other}' (redb or sqlite)"),
                    ));
                }
            },
            path: self.path(raw.store.path.as_deref().unwrap_or("sluice.db")),
            retention: self.duration(
                "store.retention",
                raw.store.retention.as_ref(),
                Duration::from_secs(30 * 86_400),
            )?,
            batch_size: raw.store.batch_size.unwrap_or(1024).max(1),
            flush_interval: self.duration(
                "store.flush_interval",
                raw.store.flush_interval.as_ref(),
                Duration::from_millis(50),
            )?,
            queue_capacity: raw.store.queue_capacity.unwrap_or(65_536).max(1),
            backpressure_wait: self.duration(
                "store.backpressure_wait",
                raw.store.backpressure_wait.as_ref(),
                Duration::from_millis(100),
            )?,
        };
        let cache = CacheConfig {
            key_ttl: self.duration(
                "cache.key_ttl",
                raw.cache.key_ttl.as_ref(),
                Duration::from_secs(30),
            )?,
            capacity: raw.cache.capacity.unwrap_or(100_000),
        };
        let p = raw.plugins;
        let plugins = PluginsConfig {
            dir: p.dir.as_deref().map(|d| self.path(d)),
            cache_dir: p.cache_dir.as_deref().map(|d| self.path(d)),
            builtin_auth: p.builtin_auth.unwrap_or(true),
            builtin_router: p.builtin_router.unwrap_or(true),
            builtin_redactor: p.builtin_redactor.unwrap_or(true),
            instance_mode: match p.instance_mode.as_ref().map(|m| m.get_ref().as_str()) {
                None | Some("pooled") => InstanceMode::Pooled,
                Some("fresh") => InstanceMode::Fresh,
                Some(other) => {
                    return Err(self.error(
                        "plugins.instance_mode",
                        p.instance_mode.as_ref(),
                        format!("unknown mode '{other}' (pooled or fresh)"),
                    ));
                }
            },
            max_idle_instances: p.max_idle_instances.unwrap_or(16),
            instance_max_uses: p.instance_max_uses.unwrap_or(10_000).max(1),
            memory_limit: p.memory_limit_mb.unwrap_or(32).clamp(1, 4096) << 20,
            call_timeout: self.duration(
                "plugins.call_timeout",
                p.call_timeout.as_ref(),
                Duration::from_millis(10),
            )?,
            overrun_lanes: p.overrun_lanes.unwrap_or_else(default_overrun_lanes).max(1),
            on_failure: p
                .on_failure
                .iter()
                .map(|(name, mode)| {
                    let parsed = match mode.get_ref().as_str() {
                        "deny" => FailureMode::Deny,
                        "skip" => FailureMode::Skip,
                        other => {
                            return Err(self.error(
                                &format!("plugins.on_failure.{name}"),
                                Some(mode),
                                format!("unknown failure mode '{other}' (deny or skip)"),
                            ));
                        }
                    };
                    Ok((name.clone(), parsed))
                })
                .collect::<Result<_, _>>()?,
        };
        let u = raw.upstream;
        let upstream = UpstreamConfig {
            connect_timeout: self.duration(
                "upstream.connect_timeout",
                u.connect_timeout.as_ref(),
                Duration::from_secs(5),
            )?,
            first_byte_timeout: self.duration(
                "upstream.first_byte_timeout",
                u.first_byte_timeout.as_ref(),
                Duration::from_secs(120),
            )?,
            idle_timeout: self.duration(
                "upstream.idle_timeout",
                u.idle_timeout.as_ref(),
                Duration::from_secs(120),
            )?,
            max_attempts: u.max_attempts.unwrap_or(3).max(1),
            ca_file: u.ca_file.as_deref().map(|f| self.path(f)),
            failures_to_cooldown: u.failures_to_cooldown.unwrap_or(3).max(1),
            cooldown: self.duration(
                "upstream.cooldown",
                u.cooldown.as_ref(),
                Duration::from_secs(10),
            )?,
            probe_interval: self.duration(
                "upstream.probe_interval",
                u.probe_interval.as_ref(),
                Duration::from_secs(2),
            )?,
        };
        let mut channels: Vec<ChannelConfig> = Vec::with_capacity(raw.channels.len());
        for (i, c) in raw.channels.iter().enumerate() {
            let key = |field: &str| format!("channels[{i}].{field}");
            if channels
                .iter()
                .any(|existing| existing.id == *c.id.get_ref())
            {
                return Err(self.error(
                    &key("id"),
                    Some(&c.id),
                    format!("duplicate channel id '{}'", c.id.get_ref()),
                ));
            }
            let provider = match c.provider.as_ref().map(|p| p.get_ref().as_str()) {
                None | Some("openai") => Provider::OpenAi,
                Some(other) => {
                    return Err(self.error(
                        &key("provider"),
                        c.provider.as_ref(),
                        format!("unsupported provider '{other}' (openai)"),
                    ));
                }
            };
            let base_url: http::Uri =
                c.base_url
                    .get_ref()
                    .trim_end_matches('/')
                    .parse()
                    .map_err(|e| {
                        self.error(
                            &key("base_url"),
                            Some(&c.base_url),
                            format!("invalid URL: {e}"),
                        )
                    })?;
            if !matches!(base_url.scheme_str(), Some("http" | "https")) || base_url.host().is_none()
            {
                return Err(self.error(
                    &key("base_url"),
                    Some(&c.base_url),
                    "base_url must be an absolute http:// or https:// URL",
                ));
            }
            if c.models.is_empty() {
                return Err(self.error(
                    &key("models"),
                    Some(&c.id),
                    "a channel must serve at least one model",
                ));
            }
            channels.push(ChannelConfig {
                id: c.id.get_ref().clone(),
                provider,
                base_url,
                api_key: c
                    .api_key
                    .as_ref()
                    .map(|k| {
                        let secret = self.secret(&key("api_key"), k, env)?;
                        if http::HeaderValue::from_str(&secret).is_err() {
                            return Err(self.error(
                                &key("api_key"),
                                Some(k),
                                "the secret contains characters not allowed in an HTTP header",
                            ));
                        }
                        Ok(secret)
                    })
                    .transpose()?,
                models: c.models.clone(),
                model_map: c.model_map.clone(),
                priority: c.priority,
                weight: c.weight,
                max_in_flight: c.max_in_flight,
            });
        }
        let pricing = Pricing {
            default: raw.pricing.default.unwrap_or(Price {
                input: 1.0,
                output: 1.0,
            }),
            models: raw.pricing.models,
        };
        Ok(Config {
            server,
            admin,
            log,
            store,
            cache,
            plugins,
            upstream,
            channels,
            pricing,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env() -> BTreeMap<String, String> {
        BTreeMap::from([("UP_KEY".to_string(), "sk-up".to_string())])
    }

    fn check(text: &str) -> Result<Config, ConfigError> {
        parse(text, Path::new("test.toml"), &env())
    }

    #[test]
    fn minimal_config_gets_defaults() -> Result<(), ConfigError> {
        let config = check(
            "[[channels]]\nid = \"a\"\nbase_url = \"http://127.0.0.1:9/v1\"\napi_key = \"env::UP_KEY\"\nmodels = [\"m\"]\n",
        )?;
        assert_eq!(config.store.backend, Backend::Redb);
        assert_eq!(config.channels[0].api_key.as_deref(), Some("sk-up"));
        assert_eq!(config.plugins.memory_limit, 32 << 20);
        assert!(!format!("{:?}", config.channels[0]).contains("sk-up"));
        Ok(())
    }

    #[test]
    fn overrides_come_from_the_env_map() -> Result<(), ConfigError> {
        let mut env = env();
        env.insert("SLUICE_LISTEN".into(), "127.0.0.1:0".into());
        let config = parse("", Path::new("x.toml"), &env)?;
        assert_eq!(config.server.listen.port(), 0);
        Ok(())
    }

    #[test]
    fn pricing_rounds_up() {
        let pricing = Pricing {
            default: Price {
                input: 1.0,
                output: 2.0,
            },
            models: BTreeMap::from([(
                "cheap".to_string(),
                Price {
                    input: 0.1,
                    output: 0.1,
                },
            )]),
        };
        assert_eq!(pricing.cost("x", 3, 4), 11);
        assert_eq!(pricing.cost("cheap", 3, 4), 1);
    }

    /// Each `tests/config-errors/NAME.toml` must fail with exactly `NAME.err`.
    /// A missing `.err` is written from the current output, and the test fails so it gets reviewed.
    #[test]
    fn config_errors_match_their_golden_files() -> Result<(), Box<dyn std::error::Error>> {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/config-errors");
        let mut checked = 0;
        for entry in std::fs::read_dir(&dir)? {
            let path = entry?.path();
            if path.extension().is_none_or(|e| e != "toml") {
                continue;
            }
            let name = path
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default();
            let text = std::fs::read_to_string(&path)?;
            let got = match parse(&text, Path::new(&name), &env()) {
                Ok(_) => format!("{name}: unexpectedly valid"),
                Err(e) => e.to_string(),
            };
            let golden = path.with_extension("err");
            match std::fs::read_to_string(&golden) {
                Ok(want) => assert_eq!(got, want.trim_end(), "{name}"),
                Err(_) => {
                    std::fs::write(&golden, format!("{got}\n"))?;
                    return Err(format!("wrote {}; review and commit it", golden.display()).into());
                }
            }
            checked += 1;
        }
        assert!(checked >= 8, "only {checked} golden files");
        Ok(())
    }

    #[test]
    fn shipped_examples_are_valid() -> Result<(), ConfigError> {
        let env = BTreeMap::from([
            ("OPENAI_API_KEY".to_string(), "sk-x".to_string()),
            ("SLUICE_ADMIN_TOKEN".to_string(), "t".to_string()),
            ("MOCK_UPSTREAM_KEY".to_string(), "m".to_string()),
        ]);
        let examples = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples");
        for name in ["sluice.toml", "quickstart.toml"] {
            let path = examples.join(name);
            let text = std::fs::read_to_string(&path).unwrap_or_default();
            let config = parse(&text, &path, &env)?;
            assert!(!config.channels.is_empty(), "{name}");
        }
        Ok(())
    }
}
