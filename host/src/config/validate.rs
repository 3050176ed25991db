//! Validation: the raw TOML shape into the typed model, one function per
//! table, every error naming the file, line and key.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use ipnet::IpNet;

use super::ConfigError;
use super::Env;
use super::model::*;
use super::raw::*;

/// The shortest admin token accepted.
const MIN_ADMIN_TOKEN: usize = 16;

/// The most request headers `[plugins] headers` may show policies (each is
/// copied per request).
const MAX_POLICY_HEADERS: usize = 32;

/// Most tags one channel may carry.
const MAX_TAGS: usize = 32;

/// Azure OpenAI's `api-version` when a channel sets none (the latest GA
/// version of the data-plane inference API).
const AZURE_API_VERSION: &str = "2024-10-21";

/// The `anthropic-version` header when a channel sets none.
const ANTHROPIC_VERSION: &str = "2023-06-01";

/// The default number of plugin overrun lanes: half the cores, at least one.
fn default_overrun_lanes() -> usize {
    std::thread::available_parallelism().map_or(1, |n| (n.get() / 2).max(1))
}

/// Validates a parsed file: its text and path, for error positions and
/// relative paths.
pub(super) struct Validator<'a> {
    text: &'a str,
    file: String,
    base: &'a Path,
    /// Whether channel `api_key` references are resolved.
    upstream_secrets: bool,
}

impl<'a> Validator<'a> {
    /// A validator for `text`, read from `path`.
    pub(super) fn new(text: &'a str, path: &'a Path) -> Self {
        Self {
            text,
            file: path.display().to_string(),
            base: path.parent().unwrap_or(Path::new(".")),
            upstream_secrets: true,
        }
    }

    /// Leaves channel secrets unresolved (see [`super::load_for_tools`]).
    pub(super) fn without_upstream_secrets(mut self) -> Self {
        self.upstream_secrets = false;
        self
    }

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

    pub(super) fn toml_error(&self, e: &toml::de::Error) -> ConfigError {
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

    /// One of a fixed set of names, each with its value; the first is the
    /// default when the key is absent. Anything else is an error that names
    /// `what` and the choices.
    fn choice<T: Copy>(
        &self,
        key: &str,
        value: Option<&Text>,
        what: &str,
        choices: &[(&str, T)],
    ) -> Result<T, ConfigError> {
        let found = match value {
            None => choices.first(),
            Some(text) => choices.iter().find(|(name, _)| *name == text.get_ref()),
        };
        found.map(|(_, v)| *v).ok_or_else(|| {
            let names: Vec<&str> = choices.iter().map(|(name, _)| *name).collect();
            let given = value.map_or("", |t| t.get_ref().as_str());
            self.error(
                key,
                value,
                format!("unknown {what} '{given}' ({})", names.join(" or ")),
            )
        })
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
            env.var(name)
                .filter(|v| !v.trim().is_empty())
                .ok_or_else(|| {
                    self.error(
                        key,
                        Some(value),
                        format!("environment variable {name} is not set or empty"),
                    )
                })
        } else if let Some(file) = reference.strip_prefix("file::") {
            let text = std::fs::read_to_string(self.path(file)).map_err(|e| {
                self.error(
                    key,
                    Some(value),
                    format!("cannot read secret file {file}: {e}"),
                )
            })?;
            let secret = text.trim();
            if secret.is_empty() {
                return Err(self.error(key, Some(value), format!("secret file {file} is empty")));
            }
            Ok(secret.to_string())
        } else {
            Err(self.error(
                key,
                Some(value),
                "secrets must be references: \"env::NAME\" or \"file::PATH\", never inline",
            ))
        }
    }

    /// Validates the `[server]` table.
    fn server(&self, raw: &RawServer) -> Result<ServerConfig, ConfigError> {
        let server = ServerConfig {
            listen: self.addr("server.listen", raw.listen.as_ref(), "127.0.0.1:8080")?,
            max_body_bytes: raw.max_body_bytes.unwrap_or(4 << 20),
            trusted_proxies: raw
                .trusted_proxies
                .iter()
                .flatten()
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
                raw.shutdown_grace.as_ref(),
                Duration::from_secs(30),
            )?,
            header_timeout: self.duration(
                "server.header_timeout",
                raw.header_timeout.as_ref(),
                Duration::from_secs(30),
            )?,
            write_timeout: self.duration(
                "server.write_timeout",
                raw.write_timeout.as_ref(),
                Duration::from_secs(30),
            )?,
            max_connections: raw.max_connections.unwrap_or(8192).max(1),
            body_timeout: self.duration(
                "server.body_timeout",
                raw.body_timeout.as_ref(),
                Duration::from_secs(30),
            )?,
            max_body_memory: raw.max_body_memory.unwrap_or(32 << 20).max(1024),
            slow_request: self.duration(
                "server.slow_request",
                raw.slow_request.as_ref(),
                Duration::from_secs(30),
            )?,
            runtime: self.choice(
                "server.runtime",
                raw.runtime.as_ref(),
                "runtime",
                &[
                    ("per-core", ServerRuntime::PerCore),
                    ("shared", ServerRuntime::Shared),
                ],
            )?,
            workers: raw.workers.unwrap_or_else(|| {
                std::thread::available_parallelism().map_or(1, std::num::NonZeroUsize::get)
            }),
            direct_http: raw.direct_http.unwrap_or(true),
            tls: raw.tls.as_ref().map(|t| self.tls(t)).transpose()?,
        };
        if server.workers == 0 {
            return Err(self.error("server.workers", None, "must be at least 1"));
        }
        Ok(server)
    }

    /// Validates `[server.tls]`: its address, and certificate and key files
    /// (relative to the config file) that exist; they are parsed at start.
    fn tls(&self, raw: &RawTls) -> Result<TlsConfig, ConfigError> {
        let file = |key: &str, value: &Text| {
            let path = self.path(value.get_ref());
            if path.is_file() {
                Ok(path)
            } else {
                Err(self.error(
                    key,
                    Some(value),
                    format!("no such file: {}", path.display()),
                ))
            }
        };
        Ok(TlsConfig {
            listen: self.addr("server.tls.listen", Some(&raw.listen), "")?,
            cert_file: file("server.tls.cert_file", &raw.cert_file)?,
            key_file: file("server.tls.key_file", &raw.key_file)?,
        })
    }

    /// Validates the `[admin]` table: its own listener (never the client
    /// API's) and a token of at least [`MIN_ADMIN_TOKEN`] bytes.
    fn admin(
        &self,
        raw: &RawAdmin,
        env: &dyn Env,
        server: &ServerConfig,
    ) -> Result<AdminConfig, ConfigError> {
        let listen = self.addr("admin.listen", raw.listen.as_ref(), "127.0.0.1:8081")?;
        if listen == server.listen && listen.port() != 0 {
            return Err(self.error(
                "admin.listen",
                raw.listen.as_ref(),
                format!("admin.listen must differ from server.listen ({listen})"),
            ));
        }
        let token = match &raw.token {
            Some(t) => {
                let token = self.secret("admin.token", t, env)?;
                if token.len() < MIN_ADMIN_TOKEN {
                    return Err(self.error(
                        "admin.token",
                        Some(t),
                        format!("the admin token must be at least {MIN_ADMIN_TOKEN} bytes"),
                    ));
                }
                Some(token)
            }
            None => None,
        };
        Ok(AdminConfig { listen, token })
    }

    /// Validates the `[log]` table.
    fn log(&self, raw: RawLog) -> Result<LogConfig, ConfigError> {
        let log = LogConfig {
            format: self.choice(
                "log.format",
                raw.format.as_ref(),
                "format",
                &[("text", LogFormat::Text), ("json", LogFormat::Json)],
            )?,
            level: raw.level.unwrap_or_else(|| "info".into()),
            content: raw.content.unwrap_or(false),
        };
        Ok(log)
    }

    /// Validates the `[store]` table.
    fn store(&self, raw: &RawStore) -> Result<StoreConfig, ConfigError> {
        let store = StoreConfig {
            backend: self.choice(
                "store.backend",
                raw.backend.as_ref(),
                "backend",
                &[("redb", Backend::Redb), ("sqlite", Backend::Sqlite)],
            )?,
            path: self.path(raw.path.as_deref().unwrap_or("sluice.db")),
            retention: self.duration(
                "store.retention",
                raw.retention.as_ref(),
                Duration::from_secs(30 * 86_400),
            )?,
            batch_size: raw.batch_size.unwrap_or(1024).max(1),
            flush_interval: self.duration(
                "store.flush_interval",
                raw.flush_interval.as_ref(),
                Duration::from_millis(50),
            )?,
            queue_capacity: raw.queue_capacity.unwrap_or(65_536).max(1),
            backpressure_wait: self.duration(
                "store.backpressure_wait",
                raw.backpressure_wait.as_ref(),
                Duration::from_millis(100),
            )?,
        };
        Ok(store)
    }

    /// Validates the `[cache]` table.
    fn cache(&self, raw: &RawCache) -> Result<CacheConfig, ConfigError> {
        let cache = CacheConfig {
            key_ttl: self.duration(
                "cache.key_ttl",
                raw.key_ttl.as_ref(),
                Duration::from_secs(30),
            )?,
            capacity: raw.capacity.unwrap_or(100_000),
        };
        Ok(cache)
    }

    /// Validates the `[plugins]` table.
    fn plugins(&self, p: &RawPlugins) -> Result<PluginsConfig, ConfigError> {
        let plugins = PluginsConfig {
            dir: p.dir.as_deref().map(|d| self.path(d)),
            cache_dir: p.cache_dir.as_deref().map(|d| self.path(d)),
            builtin_auth: p.builtin_auth.unwrap_or(true),
            builtin_router: p.builtin_router.unwrap_or(true),
            builtin_redactor: p.builtin_redactor.unwrap_or(true),
            instance_mode: self.choice(
                "plugins.instance_mode",
                p.instance_mode.as_ref(),
                "mode",
                &[
                    ("pooled", InstanceMode::Pooled),
                    ("fresh", InstanceMode::Fresh),
                ],
            )?,
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
                    let parsed = self.choice(
                        &format!("plugins.on_failure.{name}"),
                        Some(mode),
                        "failure mode",
                        &[("deny", FailureMode::Deny), ("skip", FailureMode::Skip)],
                    )?;
                    Ok((name.clone(), parsed))
                })
                .collect::<Result<_, _>>()?,
            required: p.required.clone(),
            headers: self.policy_headers(p.headers.as_deref())?,
        };
        Ok(plugins)
    }

    /// `[plugins] headers`: valid names, at most [`MAX_POLICY_HEADERS`],
    /// never a credential; the default list when unset.
    fn policy_headers(&self, raw: Option<&[Text]>) -> Result<Vec<http::HeaderName>, ConfigError> {
        let Some(raw) = raw else {
            return Ok(crate::facts::DEFAULT_POLICY_HEADERS.to_vec());
        };
        if raw.len() > MAX_POLICY_HEADERS {
            return Err(self.error(
                "plugins.headers",
                raw.get(MAX_POLICY_HEADERS),
                format!("at most {MAX_POLICY_HEADERS} headers"),
            ));
        }
        raw.iter()
            .map(|name| {
                let bad = |why: &str| self.error("plugins.headers", Some(name), why);
                let parsed = http::HeaderName::try_from(name.get_ref().as_str())
                    .map_err(|_| bad("not a valid header name"))?;
                if crate::facts::CREDENTIAL_HEADERS.contains(&parsed.as_str()) {
                    return Err(bad("a credential header: policies never see credentials"));
                }
                Ok(parsed)
            })
            .collect()
    }

    /// Validates the `[upstream]` table.
    fn upstream(&self, u: &RawUpstream) -> Result<UpstreamConfig, ConfigError> {
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
            max_event_bytes: u.max_event_bytes.unwrap_or(4 << 20).max(1024),
            max_response_bytes: u.max_response_bytes.unwrap_or(16 << 20).max(1024),
            max_attempts: u.max_attempts.unwrap_or(3).max(1),
            ca_file: u.ca_file.as_deref().map(|f| self.path(f)),
            direct_http: u.direct_http.unwrap_or(true),
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
        Ok(upstream)
    }

    /// A channel's fixed headers: valid names and values, none that the
    /// gateway sets itself (credentials, framing, routing).
    fn fixed_headers(
        &self,
        key: &str,
        raw: &BTreeMap<String, Text>,
    ) -> Result<Vec<(http::HeaderName, http::HeaderValue)>, ConfigError> {
        const RESERVED: [&str; 9] = [
            "authorization",
            "host",
            "content-length",
            "content-type",
            "transfer-encoding",
            "connection",
            "te",
            "upgrade",
            "x-request-id",
        ];
        raw.iter()
            .map(|(name, value)| {
                let bad = |why: &str| self.error(&format!("{key}.{name}"), Some(value), why);
                let name = http::HeaderName::try_from(name.as_str())
                    .map_err(|_| bad("not a valid header name"))?;
                if RESERVED.contains(&name.as_str()) {
                    return Err(bad("the gateway sets this header itself"));
                }
                let value = http::HeaderValue::try_from(value.get_ref().as_str())
                    .map_err(|_| bad("not a valid header value"))?;
                Ok((name, value))
            })
            .collect()
    }

    /// Validates the `[[channels]]` entries.
    fn channels(
        &self,
        raw: &[RawChannel],
        env: &dyn Env,
    ) -> Result<Vec<ChannelConfig>, ConfigError> {
        let mut channels: Vec<ChannelConfig> = Vec::with_capacity(raw.len());
        for (i, c) in raw.iter().enumerate() {
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
                Some("azure") => Provider::Azure,
                Some("anthropic") => Provider::Anthropic,
                Some(other) => {
                    return Err(self.error(
                        &key("provider"),
                        c.provider.as_ref(),
                        format!("unsupported provider '{other}' (openai, azure, anthropic)"),
                    ));
                }
            };
            let endpoints = self.channel_endpoints(&key("endpoints"), provider, c)?;
            let model_map = self.channel_models(&key("deployments"), provider, c)?;
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
                    .filter(|_| self.upstream_secrets)
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
                model_map,
                priority: c.priority,
                weight: c.weight,
                max_in_flight: c.max_in_flight,
                headers: self.fixed_headers(&key("headers"), &c.headers)?,
                forward_headers: c
                    .forward_headers
                    .iter()
                    .map(|h| h.get_ref().to_ascii_lowercase())
                    .collect(),
                endpoints,
                tags: self.channel_tags(&key("tags"), &c.tags)?,
                api_version: c
                    .api_version
                    .as_ref()
                    .map_or(AZURE_API_VERSION, |v| v.get_ref().as_str())
                    .to_string(),
                anthropic_version: c
                    .anthropic_version
                    .as_ref()
                    .map_or(ANTHROPIC_VERSION, |v| v.get_ref().as_str())
                    .to_string(),
            });
        }
        Ok(channels)
    }

    /// A channel's `tags`: at most [`MAX_TAGS`] distinct words of printable
    /// ASCII, each at most 64 bytes.
    fn channel_tags(&self, key: &str, tags: &[Text]) -> Result<Vec<String>, ConfigError> {
        if tags.len() > MAX_TAGS {
            return Err(self.error(
                key,
                tags.get(MAX_TAGS),
                format!("a channel may carry at most {MAX_TAGS} tags"),
            ));
        }
        let mut valid: Vec<String> = Vec::with_capacity(tags.len());
        for tag in tags {
            let text = tag.get_ref();
            let problem = if text.is_empty() || text.len() > 64 {
                "a tag must be 1 to 64 bytes long"
            } else if !text.bytes().all(|b| b.is_ascii_graphic()) {
                "a tag must be printable ASCII without spaces"
            } else if valid.contains(text) {
                "duplicate tag"
            } else {
                valid.push(text.clone());
                continue;
            };
            return Err(self.error(key, Some(tag), format!("{problem}: '{text}'")));
        }
        Ok(valid)
    }

    /// A channel's `endpoints`: those its provider can serve, all by default.
    fn channel_endpoints(
        &self,
        key: &str,
        provider: Provider,
        c: &RawChannel,
    ) -> Result<Vec<String>, ConfigError> {
        let supported = crate::provider::supported_endpoints(provider);
        let Some(listed) = &c.endpoints else {
            return Ok(supported.iter().map(|e| (*e).to_string()).collect());
        };
        listed
            .iter()
            .map(|e| {
                if supported.contains(&e.get_ref().as_str()) {
                    Ok(e.get_ref().clone())
                } else {
                    Err(self.error(
                        key,
                        Some(e),
                        format!(
                            "'{}' is not served by {} channels (they serve {})",
                            e.get_ref(),
                            provider.as_str(),
                            supported.join(", ")
                        ),
                    ))
                }
            })
            .collect()
    }

    /// A channel's model map: `model_map`, or for Azure `deployments` (the
    /// deployment that serves each model), never both.
    fn channel_models(
        &self,
        key: &str,
        provider: Provider,
        c: &RawChannel,
    ) -> Result<BTreeMap<String, String>, ConfigError> {
        if c.deployments.is_empty() {
            return Ok(c.model_map.clone());
        }
        if provider != Provider::Azure || !c.model_map.is_empty() {
            return Err(self.error(
                key,
                Some(&c.id),
                "`deployments` belongs to azure channels, in place of `model_map`",
            ));
        }
        Ok(c.deployments.clone())
    }

    /// Validates the whole file, one table at a time.
    pub(super) fn validate(&self, raw: RawConfig, env: &dyn Env) -> Result<Config, ConfigError> {
        let server = self.server(&raw.server)?;
        Ok(Config {
            admin: self.admin(&raw.admin, env, &server)?,
            server,
            log: self.log(raw.log)?,
            store: self.store(&raw.store)?,
            cache: self.cache(&raw.cache)?,
            plugins: self.plugins(&raw.plugins)?,
            upstream: self.upstream(&raw.upstream)?,
            channels: self.channels(&raw.channels, env)?,
            metering: self.metering(&raw.metering, &raw.pricing)?,
        })
    }

    /// `[metering]` and each model's `[pricing]` entry, resolved into exact
    /// rates, caps and tokenizers.
    fn metering(&self, m: &RawMetering, p: &RawPricing) -> Result<MeteringConfig, ConfigError> {
        let default_encoding = match &m.default_encoding {
            Some(name) => name
                .get_ref()
                .parse()
                .map_err(|e: String| self.error("metering.default_encoding", Some(name), e))?,
            None => sluice_meter::Encoding::O200kBase,
        };
        let default_max_tokens = m.default_max_tokens.unwrap_or(4096).max(1);
        let default_price = p.default.clone().unwrap_or_else(default_price);
        let default = self.model_meter(
            "pricing.default",
            &default_price,
            default_max_tokens,
            default_encoding,
        )?;
        let models = p
            .models
            .iter()
            .map(|(name, price)| {
                let encoding = sluice_meter::Encoding::for_model(name).unwrap_or(default_encoding);
                let key = format!("pricing.models.\"{name}\"");
                let meter = self.model_meter(&key, price, default_max_tokens, encoding)?;
                Ok((name.clone(), meter))
            })
            .collect::<Result<_, ConfigError>>()?;
        Ok(MeteringConfig {
            enforce_cap: m.enforce_cap.unwrap_or(true),
            max_counted_bytes: m.max_counted_kib.unwrap_or(64).saturating_mul(1024),
            default,
            models,
            default_encoding,
        })
    }

    /// One model's metering: prices as millionths of a credit (finite, not
    /// negative), its cap, and its tokenizer.
    fn model_meter(
        &self,
        key: &str,
        price: &Price,
        default_max_tokens: u32,
        encoding: sluice_meter::Encoding,
    ) -> Result<ModelMeter, ConfigError> {
        let rate = |field: &str, value: f64| -> Result<u64, ConfigError> {
            if !value.is_finite() || !(0.0..=1e9).contains(&value) {
                return Err(self.error(
                    &format!("{key}.{field}"),
                    None,
                    format!("price {value} must be a number of credits from 0 to 1e9"),
                ));
            }
            // In range, so the conversion neither saturates nor wraps.
            Ok((value * 1e6).round() as u64)
        };
        let input = rate("input", price.input)?;
        let output = rate("output", price.output)?;
        let or = |field: &str, value: Option<f64>, fallback: u64| {
            value.map_or(Ok(fallback), |v| rate(field, v))
        };
        let encoding = match &price.encoding {
            Some(name) => name
                .parse()
                .map_err(|e: String| self.error(&format!("{key}.encoding"), None, e))?,
            None => encoding,
        };
        Ok(ModelMeter {
            rates: Rates {
                input,
                output,
                cached_input: or("cached_input", price.cached_input, input)?,
                cache_write: or("cache_write", price.cache_write, input)?,
                audio_input: or("audio_input", price.audio_input, input)?,
                audio_output: or("audio_output", price.audio_output, output)?,
            },
            max_tokens: price.max_tokens.unwrap_or(default_max_tokens).max(1),
            encoding,
        })
    }
}

/// One credit per token, in and out.
fn default_price() -> Price {
    Price {
        input: 1.0,
        output: 1.0,
        cached_input: None,
        cache_write: None,
        audio_input: None,
        audio_output: None,
        max_tokens: None,
        encoding: None,
    }
}
