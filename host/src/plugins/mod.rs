//! The policy platform: auth, routing and log-shaping as WebAssembly components.
//!
//! Composition (documented in the README): the embedded key auth runs first
//! unless disabled, then folder auth plugins in file-name order, and the first
//! deny ends the request; one router (the last folder router by file name,
//! else the embedded one); folder shapers in file-name order, then the embedded
//! redactor unless disabled. Failures are the host's business: auth fails
//! closed (503), routing falls back to the native priority/weight router,
//! shaping falls back to the host-redacted record — each overridable per
//! plugin, each counted and logged with the plugin's name.

pub mod bindings;
pub mod call_clock;
pub mod engine;
pub mod exercise;
pub mod host_state;
mod idle;
pub mod instance;
pub mod loader;
pub mod shadow;
pub mod stderr;
pub mod views;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Instant;

use arc_swap::ArcSwap;

use crate::config::FailureMode;
use crate::error::ApiError;
use crate::facts::RequestFacts;
use crate::keys::LiveKey;
use crate::metrics::{Metrics, PluginSeries};
use crate::store::UsageRecord;
use bindings::auth::exports::sluice::policy::auth::Decision;
use bindings::types;
pub use instance::{Plugin, PluginInfo};

/// The three policy kinds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum PolicyKind {
    /// Decides whether a request may proceed.
    Auth,
    /// Orders the channels to try.
    Router,
    /// Rewrites or drops the usage log record.
    Shaper,
}

impl PolicyKind {
    /// Lower-case name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Auth => "auth",
            Self::Router => "router",
            Self::Shaper => "shaper",
        }
    }
}

/// The policy worlds a component can implement: the 1.0 worlds receive records,
/// the 1.1 worlds receive handles to host-owned views.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum World {
    /// `auth-policy` (1.0).
    AuthPolicy,
    /// `router-policy` (1.0).
    RouterPolicy,
    /// `shaper-policy` (1.0).
    ShaperPolicy,
    /// `authorizer-policy` (1.1).
    AuthorizerPolicy,
    /// `planner-policy` (1.1).
    PlannerPolicy,
    /// `editor-policy` (1.1).
    EditorPolicy,
}

impl World {
    /// The world whose policy interface is `interface` (unversioned name).
    pub fn exporting(interface: &str) -> Option<Self> {
        Some(match interface {
            "auth" => Self::AuthPolicy,
            "router" => Self::RouterPolicy,
            "shaper" => Self::ShaperPolicy,
            "authorizer" => Self::AuthorizerPolicy,
            "planner" => Self::PlannerPolicy,
            "editor" => Self::EditorPolicy,
            _ => return None,
        })
    }

    /// The policy kind the world implements.
    pub fn kind(self) -> PolicyKind {
        match self {
            Self::AuthPolicy | Self::AuthorizerPolicy => PolicyKind::Auth,
            Self::RouterPolicy | Self::PlannerPolicy => PolicyKind::Router,
            Self::ShaperPolicy | Self::EditorPolicy => PolicyKind::Shaper,
        }
    }

    /// The world's WIT name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::AuthPolicy => "auth-policy",
            Self::RouterPolicy => "router-policy",
            Self::ShaperPolicy => "shaper-policy",
            Self::AuthorizerPolicy => "authorizer-policy",
            Self::PlannerPolicy => "planner-policy",
            Self::EditorPolicy => "editor-policy",
        }
    }
}

/// Why a plugin could not be loaded or called.
#[derive(Debug, thiserror::Error)]
pub enum PluginError {
    /// The engine could not be set up.
    #[error("engine: {0}")]
    Engine(String),
    /// Not a valid component (corrupt, truncated, a core module, ...).
    #[error("not a valid WebAssembly component: {0}")]
    Compile(String),
    /// A component that exports no Sluice policy.
    #[error(
        "exports no sluice:policy interface (it exports {exports}); build it against a policy world: authorizer-policy, planner-policy, editor-policy (1.1) or auth-policy, router-policy, shaper-policy (1.0)"
    )]
    WrongWorld {
        /// What it does export.
        exports: String,
    },
    /// Built against another major version of the WIT package.
    #[error("built against {found}, but this host implements {supported}")]
    IncompatibleVersion {
        /// The plugin's version.
        found: String,
        /// The host's version.
        supported: String,
    },
    /// Imports the host does not provide.
    #[error("cannot link: {0}")]
    Link(String),
    /// `init` returned an error.
    #[error("init failed: {0}")]
    Init(String),
    /// The guest trapped.
    #[error("trapped: {0}")]
    Trap(String),
    /// The call failed without a trap: an export missing or of another
    /// type than its world declares.
    #[error("call failed: {0}")]
    Call(String),
    /// The call outlived its deadline.
    #[error("exceeded its call deadline")]
    Deadline,
    /// The guest hit its memory limit.
    #[error("exceeded its memory limit: {0}")]
    Memory(String),
    /// A call of one kind reached a plugin of another (a host bug).
    #[error("policy kind mismatch")]
    WrongKind,
    /// Reading the plugin's files failed.
    #[error("{0}")]
    Io(String),
}

impl PluginError {
    /// Names the export that failed and adds what the guest wrote to stderr
    /// during the call (a panic's message, a traceback).
    pub fn during(self, export: &str, stderr: Option<String>) -> Self {
        let detail = |cause: String| match &stderr {
            Some(output) => format!("{cause} in `{export}`; the plugin wrote: {output}"),
            None => format!("{cause} in `{export}`"),
        };
        match self {
            Self::Trap(cause) => Self::Trap(detail(cause)),
            Self::Call(cause) => Self::Call(detail(cause)),
            Self::Memory(cause) => Self::Memory(detail(cause)),
            other => other,
        }
    }
}

/// What a router may read about a channel beyond its candidate record (the
/// 1.2 `candidates` interface): built once per channel and lent, not copied,
/// to the calls of routers that read it.
#[derive(Debug, Default)]
pub struct ChannelFacts {
    /// Provider name (`openai`, `azure`, `anthropic`).
    pub provider: String,
    /// The channel's configured tags.
    pub tags: Vec<String>,
    /// The client-facing models it serves.
    pub models: Vec<String>,
}

/// A channel offered to the router for one request, borrowed from the host's
/// channel table (converted to the interface's records only for the call).
#[derive(Debug, Clone, Copy)]
pub struct Offer<'a> {
    /// Channel id.
    pub id: &'a str,
    /// Its provider, tags and models.
    pub facts: &'a Arc<ChannelFacts>,
    /// Priority: higher is tried first.
    pub priority: i32,
    /// Weight within its priority group.
    pub weight: u32,
    /// The model name this channel uses for the requested model.
    pub upstream_model: &'a str,
    /// Usable now (not disabled, not cooling down).
    pub healthy: bool,
    /// Requests in flight on the channel.
    pub in_flight: u32,
    /// Concurrency cap (0 = none).
    pub max_in_flight: u32,
    /// Latency EWMA, ms.
    pub latency_ewma_ms: u32,
    /// Recent error rate, per mille.
    pub error_permille: u32,
}

/// One step of a router's plan: which offer to try, and the model to ask it
/// for (`None`: the channel's own mapping).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pick {
    /// Position in the offered list.
    pub offer: usize,
    /// Model override.
    pub model: Option<String>,
}

/// The plugins in force for one request; in-flight requests keep the set they
/// started with while a reload swaps in the next.
#[derive(Default)]
pub struct PolicySet {
    /// Auth chain, in order.
    pub auth: Vec<Arc<Plugin>>,
    /// The router, if any (else the native fallback).
    pub router: Option<Arc<Plugin>>,
    /// Shaper chain, in order.
    pub shapers: Vec<Arc<Plugin>>,
    /// Required plugins (`[plugins] required`) that are not loaded: while
    /// any is missing, the auth chain refuses every request.
    pub missing: Vec<String>,
    /// Plugins in shadow mode, of any kind: run after the response, never
    /// enforced (see [`shadow`]).
    pub shadows: Vec<Arc<Plugin>>,
}

/// What the host does after a plugin failure, resolved per plugin.
fn failure_mode(overrides: &BTreeMap<String, FailureMode>, name: &str) -> FailureMode {
    overrides.get(name).copied().unwrap_or(FailureMode::Default)
}

/// The policy runner: the current set plus failure handling and metrics.
pub struct Policies {
    current: ArcSwap<PolicySet>,
    on_failure: BTreeMap<String, FailureMode>,
    metrics: Arc<Metrics>,
}

impl Policies {
    /// A runner with an empty set (filled by the loader).
    pub fn new(on_failure: BTreeMap<String, FailureMode>, metrics: Arc<Metrics>) -> Self {
        Self {
            current: ArcSwap::from_pointee(PolicySet::default()),
            on_failure,
            metrics,
        }
    }

    /// The set in force now.
    pub fn snapshot(&self) -> Arc<PolicySet> {
        self.current.load_full()
    }

    /// Swaps in a new set atomically.
    pub fn install(&self, set: PolicySet) {
        self.current.store(Arc::new(set));
    }

    /// The plugin's metric series: the one record of its calls and failures.
    fn series<'a>(&self, plugin: &'a Plugin) -> &'a PluginSeries {
        plugin
            .series
            .get_or_init(|| self.metrics.plugin_series(&plugin.labels))
    }

    /// A plugin's calls and failures so far, as `/metrics` counts them (across
    /// the versions loaded under its name).
    pub fn counts(&self, plugin: &Plugin) -> (u64, u64) {
        let series = self.series(plugin);
        (series.calls.get(), series.failures.get())
    }

    fn observe(&self, plugin: &Plugin, started: Instant, failed: Option<&PluginError>) {
        let series = self.series(plugin);
        series.calls.inc();
        series.seconds.observe(started.elapsed().as_secs_f64());
        if let Some(e) = failed {
            series.failures.inc();
            tracing::error!(plugin = %plugin.info.name, kind = plugin.info.kind.as_str(), error = %e, "policy plugin failed");
        }
    }

    /// Runs the auth chain; returns the labels the plugins attached (a later
    /// plugin's label replaces an earlier one of the same name).
    ///
    /// # Errors
    /// The first denial, or a policy failure when a failing plugin fails closed.
    pub async fn authorize(
        &self,
        set: &PolicySet,
        req: &Arc<RequestFacts>,
        key: Option<&Arc<LiveKey>>,
    ) -> Result<BTreeMap<String, String>, ApiError> {
        if let Some(plugin) = set.missing.first() {
            return Err(ApiError::PolicyFailure {
                plugin: format!("{plugin} (required, not loaded)"),
            });
        }
        let mut labels = BTreeMap::new();
        for plugin in &set.auth {
            let started = Instant::now();
            let outcome = plugin.authorize(req, key).await;
            self.observe(plugin, started, outcome.as_ref().err());
            match outcome {
                Ok(Decision::Allow(more)) => {
                    labels.extend(more.into_iter().map(|l| (l.name, l.value)));
                }
                Ok(Decision::Deny(d)) => return Err(denial(d)),
                Err(_)
                    if failure_mode(&self.on_failure, &plugin.info.name) == FailureMode::Skip => {}
                Err(_) => {
                    return Err(ApiError::PolicyFailure {
                        plugin: plugin.info.name.clone(),
                    });
                }
            }
        }
        Ok(labels)
    }

    /// Asks the router for a plan over `offers`; `None` means "use the native
    /// router" (no router plugin, or it failed and its failure mode is not
    /// `deny`).
    ///
    /// # Errors
    /// The router's own refusal, or a policy failure when a failing router
    /// fails closed (`on_failure = "deny"`).
    pub async fn route(
        &self,
        set: &PolicySet,
        req: &Arc<RequestFacts>,
        offers: &[Offer<'_>],
    ) -> Result<Option<Vec<Pick>>, ApiError> {
        let Some(plugin) = &set.router else {
            return Ok(None);
        };
        let started = Instant::now();
        let outcome = plugin.route(req, offers).await;
        self.observe(plugin, started, outcome.as_ref().err());
        match outcome {
            Ok(Ok(plan)) => Ok(Some(plan)),
            Ok(Err(d)) => Err(denial(d)),
            Err(_) if failure_mode(&self.on_failure, &plugin.info.name) == FailureMode::Deny => {
                Err(ApiError::PolicyFailure {
                    plugin: plugin.info.name.clone(),
                })
            }
            Err(_) => Ok(None),
        }
    }

    /// Runs the shaper chain. `None`: a shaper dropped the log record. On a
    /// failure the host-redacted record is used from that point on.
    pub async fn shape(&self, set: &PolicySet, mut record: UsageRecord) -> Option<UsageRecord> {
        for plugin in &set.shapers {
            let started = Instant::now();
            let outcome = plugin.shape(&mut record).await;
            self.observe(plugin, started, outcome.as_ref().err());
            match outcome {
                Ok(true) => {}
                Ok(false) => return None,
                Err(_) => return Some(host_redacted(record)),
            }
        }
        Some(record)
    }

    /// Adds a response's tokens to every auth plugin's `tpm:<key id>` counter.
    pub fn charge_tokens(&self, key_id: &str, tokens: u64) {
        let mut key = String::with_capacity(4 + key_id.len());
        key.push_str("tpm:");
        key.push_str(key_id);
        let delta = i64::try_from(tokens).unwrap_or(i64::MAX);
        for plugin in &self.current.load().auth {
            plugin.shared.counter_add(&key, delta, 60_000);
        }
    }
}

fn denial(d: types::Denial) -> ApiError {
    ApiError::Denied {
        status: http::StatusCode::from_u16(d.status)
            .ok()
            .filter(|s| s.is_client_error() || s.is_server_error())
            .unwrap_or(http::StatusCode::FORBIDDEN),
        code: d.code,
        message: d.message,
        retry_after_s: d.retry_after_s,
    }
}

/// The record a failed shaper leaves: no content, no plugin labels.
pub fn host_redacted(mut record: UsageRecord) -> UsageRecord {
    record.prompt = None;
    record.completion = None;
    record.labels.clear();
    record
}

/// The record a 1.0 plugin receives for a request (1.1 plugins read the
/// request through a handle instead).
fn request_info(facts: &RequestFacts) -> types::RequestInfo {
    types::RequestInfo {
        request_id: facts.request_id.clone(),
        endpoint: facts.endpoint.into(),
        model: facts.model.clone(),
        stream: facts.stream,
        client_ip: facts.client_ip.clone(),
        headers: facts
            .headers
            .iter()
            .map(|(name, value)| types::Label {
                name: name.as_str().into(),
                value: value.clone(),
            })
            .collect(),
    }
}

/// The record a 1.0 auth plugin receives for a key, with its live remaining
/// quota (1.1 plugins read the key through a handle instead).
fn key_info(key: &LiveKey) -> types::KeyInfo {
    let r = &key.record;
    types::KeyInfo {
        id: r.id.clone(),
        name: r.name.clone(),
        owner: r.owner.clone(),
        prefix: r.prefix.clone(),
        status: views::key_status(r.status),
        expires_at_ms: r.expires_at_ms,
        models: r.models.clone(),
        networks: r.networks.clone(),
        quota_remaining: key.remaining(),
        rpm_limit: r.rpm_limit,
        tpm_limit: r.tpm_limit,
    }
}

fn to_wit_record(r: &UsageRecord) -> types::UsageRecord {
    types::UsageRecord {
        request_id: r.request_id.clone(),
        time_ms: r.time_ms,
        key_id: r.key_id.clone(),
        key_prefix: r.key_prefix.clone(),
        endpoint: r.endpoint.clone(),
        model: r.model.clone(),
        upstream_model: r.upstream_model.clone(),
        channel_id: r.channel_id.clone(),
        status: r.status,
        error_kind: r.error_kind.clone(),
        prompt_tokens: r.prompt_tokens,
        completion_tokens: r.completion_tokens,
        cost: r.cost,
        latency_ms: r.latency_ms,
        ttft_ms: r.ttft_ms,
        stream: r.stream,
        partial: r.partial,
        client_ip: r.client_ip.clone(),
        labels: r
            .labels
            .iter()
            .map(|(name, value)| types::Label {
                name: name.clone(),
                value: value.clone(),
            })
            .collect(),
        prompt: r.prompt.clone(),
        completion: r.completion.clone(),
    }
}

/// Takes a 1.0 shaper's record back; accounting fields (ids, tokens, cost,
/// status) always come from the host's own record.
fn from_wit_record(s: types::UsageRecord, accounting: &UsageRecord) -> UsageRecord {
    UsageRecord {
        seq: 0,
        request_id: accounting.request_id.clone(),
        time_ms: accounting.time_ms,
        key_id: accounting.key_id.clone(),
        key_prefix: s.key_prefix,
        endpoint: accounting.endpoint.clone(),
        model: accounting.model.clone(),
        upstream_model: s.upstream_model,
        channel_id: accounting.channel_id.clone(),
        status: accounting.status,
        error_kind: s.error_kind,
        latency_ms: s.latency_ms,
        ttft_ms: s.ttft_ms,
        stream: accounting.stream,
        partial: accounting.partial,
        client_ip: s.client_ip,
        labels: s.labels.into_iter().map(|l| (l.name, l.value)).collect(),
        prompt: s.prompt,
        completion: s.completion,
        ..accounting.metered()
    }
}
