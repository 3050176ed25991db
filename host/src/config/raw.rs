//! The raw TOML shape of a config file, exactly as written: every table
//! `deny_unknown_fields`, so a typo is an error; values keep their spans for
//! error messages.

use std::collections::BTreeMap;

use serde::Deserialize;
use toml::Spanned;

use super::model::Price;

/// A string with its position in the file.
pub(super) type Text = Spanned<String>;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawConfig {
    #[serde(default)]
    pub(super) server: RawServer,
    #[serde(default)]
    pub(super) admin: RawAdmin,
    #[serde(default)]
    pub(super) log: RawLog,
    #[serde(default)]
    pub(super) store: RawStore,
    #[serde(default)]
    pub(super) cache: RawCache,
    #[serde(default)]
    pub(super) plugins: RawPlugins,
    #[serde(default)]
    pub(super) upstream: RawUpstream,
    #[serde(default)]
    pub(super) channels: Vec<RawChannel>,
    #[serde(default)]
    pub(super) pricing: RawPricing,
    #[serde(default)]
    pub(super) metering: RawMetering,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawServer {
    pub(super) listen: Option<Text>,
    pub(super) max_body_bytes: Option<usize>,
    pub(super) trusted_proxies: Option<Vec<Text>>,
    pub(super) shutdown_grace: Option<Text>,
    pub(super) body_timeout: Option<Text>,
    pub(super) header_timeout: Option<Text>,
    pub(super) write_timeout: Option<Text>,
    pub(super) max_connections: Option<usize>,
    pub(super) max_body_memory: Option<usize>,
    pub(super) slow_request: Option<Text>,
    pub(super) runtime: Option<Text>,
    pub(super) workers: Option<usize>,
    pub(super) direct_http: Option<bool>,
    pub(super) tls: Option<RawTls>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawTls {
    pub(super) listen: Text,
    pub(super) cert_file: Text,
    pub(super) key_file: Text,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawAdmin {
    pub(super) listen: Option<Text>,
    pub(super) token: Option<Text>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawLog {
    pub(super) format: Option<Text>,
    pub(super) level: Option<String>,
    pub(super) content: Option<bool>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawStore {
    pub(super) backend: Option<Text>,
    pub(super) path: Option<String>,
    pub(super) retention: Option<Text>,
    pub(super) batch_size: Option<usize>,
    pub(super) flush_interval: Option<Text>,
    pub(super) queue_capacity: Option<usize>,
    pub(super) backpressure_wait: Option<Text>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawCache {
    pub(super) key_ttl: Option<Text>,
    pub(super) capacity: Option<u64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawPlugins {
    pub(super) dir: Option<String>,
    pub(super) cache_dir: Option<String>,
    pub(super) builtin_auth: Option<bool>,
    pub(super) builtin_router: Option<bool>,
    pub(super) builtin_redactor: Option<bool>,
    pub(super) instance_mode: Option<Text>,
    pub(super) max_idle_instances: Option<usize>,
    pub(super) instance_max_uses: Option<u32>,
    pub(super) memory_limit_mb: Option<usize>,
    pub(super) call_timeout: Option<Text>,
    pub(super) overrun_lanes: Option<usize>,
    #[serde(default)]
    pub(super) on_failure: BTreeMap<String, Text>,
    #[serde(default)]
    pub(super) required: Vec<String>,
    pub(super) headers: Option<Vec<Text>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawUpstream {
    pub(super) connect_timeout: Option<Text>,
    pub(super) first_byte_timeout: Option<Text>,
    pub(super) idle_timeout: Option<Text>,
    pub(super) max_event_bytes: Option<usize>,
    pub(super) max_response_bytes: Option<usize>,
    pub(super) max_attempts: Option<usize>,
    pub(super) ca_file: Option<String>,
    pub(super) direct_http: Option<bool>,
    pub(super) failures_to_cooldown: Option<u32>,
    pub(super) cooldown: Option<Text>,
    pub(super) probe_interval: Option<Text>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawChannel {
    pub(super) id: Text,
    #[serde(default)]
    pub(super) provider: Option<Text>,
    pub(super) base_url: Text,
    pub(super) api_key: Option<Text>,
    pub(super) models: Vec<String>,
    #[serde(default)]
    pub(super) model_map: BTreeMap<String, String>,
    #[serde(default)]
    pub(super) priority: i32,
    #[serde(default = "one")]
    pub(super) weight: u32,
    #[serde(default)]
    pub(super) max_in_flight: u32,
    #[serde(default)]
    pub(super) headers: BTreeMap<String, Text>,
    #[serde(default)]
    pub(super) forward_headers: Vec<Text>,
    #[serde(default)]
    pub(super) tags: Vec<Text>,
    #[serde(default)]
    pub(super) endpoints: Option<Vec<Text>>,
    #[serde(default)]
    pub(super) deployments: BTreeMap<String, String>,
    #[serde(default)]
    pub(super) api_version: Option<Text>,
    #[serde(default)]
    pub(super) anthropic_version: Option<Text>,
}

fn one() -> u32 {
    1
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawPricing {
    pub(super) default: Option<Price>,
    #[serde(default)]
    pub(super) models: BTreeMap<String, Price>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawMetering {
    pub(super) enforce_cap: Option<bool>,
    pub(super) default_max_tokens: Option<u32>,
    pub(super) max_counted_kib: Option<usize>,
    pub(super) default_encoding: Option<Text>,
}
