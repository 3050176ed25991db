//! The policy API: plain types and traits a policy is written against, so the
//! same code runs in the gateway (over the host's handles, see
//! [`export_policy!`](crate::export_policy)) and in a native `cargo test`
//! (over the fakes of [`testing`](crate#testing), with the `testing` feature).

/// Severity of a plugin log line.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Level {
    /// Finest detail.
    Trace,
    /// Diagnostic detail.
    Debug,
    /// Normal operation.
    Info,
    /// Something unexpected, handled.
    Warn,
    /// A failure.
    Error,
}

/// A name/value pair: a request header, or a label on the usage record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Label {
    /// Lower-case header or label name.
    pub name: String,
    /// The value.
    pub value: String,
}

impl Label {
    /// A label `name = value`.
    pub fn new(name: impl Into<String>, value: impl Into<String>) -> Self {
        Self {
            name: name.into(),
            value: value.into(),
        }
    }
}

/// A refusal, rendered by the gateway in the client's protocol's error shape.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Denial {
    /// HTTP status, such as 401, 403 or 429.
    pub status: u16,
    /// Error code, such as `rate_limit_exceeded`.
    pub code: String,
    /// Message for the client.
    pub message: String,
    /// Seconds for a `retry-after` header.
    pub retry_after_s: Option<u32>,
}

impl Denial {
    /// A refusal with `status`, `code` and `message`.
    pub fn new(status: u16, code: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            status,
            code: code.into(),
            message: message.into(),
            retry_after_s: None,
        }
    }

    /// The same refusal, telling the client to retry after `seconds`.
    pub fn retry_after(mut self, seconds: u32) -> Self {
        self.retry_after_s = Some(seconds);
        self
    }
}

/// An auth policy's decision.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Proceed; the labels are attached to the usage record.
    Allow(Vec<Label>),
    /// Refuse.
    Deny(Denial),
}

/// Lifecycle state of an API key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyStatus {
    /// Usable.
    Active,
    /// Switched off by an operator; may come back.
    Disabled,
    /// Withdrawn for good.
    Revoked,
}

/// Where a key stands for the request being decided (see the WIT's `standing`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Standing {
    /// Current status.
    pub status: KeyStatus,
    /// Expiry as Unix milliseconds; none = never.
    pub expires_at_ms: Option<u64>,
    /// The expiry has passed.
    pub expired: bool,
    /// The key may use the request's model.
    pub model_allowed: bool,
    /// The key may be used from the request's client address.
    pub client_allowed: bool,
    /// Remaining quota in credits; none = unlimited.
    pub quota_remaining: Option<i64>,
    /// Requests per minute allowed; none = unlimited.
    pub rpm_limit: Option<u32>,
    /// Tokens per minute allowed; none = unlimited.
    pub tpm_limit: Option<u32>,
}

impl Default for Standing {
    /// An active key without expiry, limits or restrictions.
    fn default() -> Self {
        Self {
            status: KeyStatus::Active,
            expires_at_ms: None,
            expired: false,
            model_allowed: true,
            client_allowed: true,
            quota_remaining: None,
            rpm_limit: None,
            tpm_limit: None,
        }
    }
}

/// A windowed counter after an update.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CounterState {
    /// The total within the current window.
    pub total: i64,
    /// Milliseconds until the window ends and the counter resets.
    pub resets_in_ms: u32,
}

/// The request being decided.
pub trait Request {
    /// The request id.
    fn request_id(&self) -> String;
    /// A stable 64-bit hash of the request id.
    fn seed(&self) -> u64;
    /// The endpoint: `chat.completions`, `completions`, `embeddings`,
    /// `messages`, `messages.count_tokens` or `models`.
    fn endpoint(&self) -> String;
    /// The model asked for (empty for `models`).
    fn model(&self) -> String;
    /// Whether a streamed response was asked for.
    fn stream(&self) -> bool;
    /// The client IP.
    fn client_ip(&self) -> String;
    /// A header the operator shows policies, by case-insensitive name.
    fn header(&self, name: &str) -> Option<String>;
    /// Every header the operator shows policies.
    fn headers(&self) -> Vec<Label>;
    /// The API the client speaks: `openai`, or `anthropic` on `/v1/messages`.
    fn protocol(&self) -> String;
}

/// The API key the request presented.
pub trait Key {
    /// Stable key id.
    fn id(&self) -> String;
    /// Human name.
    fn name(&self) -> String;
    /// Owner.
    fn owner(&self) -> String;
    /// Display prefix of the secret.
    fn prefix(&self) -> String;
    /// Status, expiry, model and network admission for the request being
    /// decided, quota and limits, in one host call.
    fn standing(&self) -> Standing;
    /// Models the key may use; empty = every model.
    fn models(&self) -> Vec<String>;
    /// Client networks the key may be used from; empty = anywhere.
    fn networks(&self) -> Vec<String>;
    /// Adds `delta` to this plugin's counter `<name>:<key id>` in a window of
    /// `window_ms` (`tpm` reads the counter the gateway charges).
    fn counter_add(&self, name: &str, delta: i64, window_ms: u32) -> CounterState;
}

/// The usage record being stored: accounting fields read-only, the rest editable.
pub trait Usage {
    /// Request id.
    fn request_id(&self) -> String;
    /// Key id (empty when none was resolved).
    fn key_id(&self) -> String;
    /// Display prefix of the key.
    fn key_prefix(&self) -> String;
    /// Endpoint.
    fn endpoint(&self) -> String;
    /// Model the client asked for.
    fn model(&self) -> String;
    /// Model sent upstream.
    fn upstream_model(&self) -> String;
    /// Channel that served the request.
    fn channel_id(&self) -> String;
    /// HTTP status returned.
    fn status(&self) -> u16;
    /// Error kind of a failed request.
    fn error_kind(&self) -> Option<String>;
    /// Prompt tokens.
    fn prompt_tokens(&self) -> u32;
    /// Completion tokens.
    fn completion_tokens(&self) -> u32;
    /// Cost in credits.
    fn cost(&self) -> i64;
    /// Client IP.
    fn client_ip(&self) -> String;
    /// Labels.
    fn labels(&self) -> Vec<Label>;
    /// Whether a label value or the error kind contains one of `needles`.
    fn mentions(&self, needles: &[&str]) -> bool;
    /// Prompt text (content logging only).
    fn prompt(&self) -> Option<String>;
    /// Completion text (content logging only).
    fn completion(&self) -> Option<String>;
    /// Replaces the key prefix.
    fn set_key_prefix(&self, value: &str);
    /// Replaces the error kind.
    fn set_error_kind(&self, value: Option<&str>);
    /// Replaces the client IP.
    fn set_client_ip(&self, value: &str);
    /// Replaces every label.
    fn set_labels(&self, labels: &[Label]);
    /// Replaces or removes the prompt text.
    fn set_prompt(&self, value: Option<&str>);
    /// Replaces or removes the completion text.
    fn set_completion(&self, value: Option<&str>);
}

/// One channel a router may plan: its record, and its provider, tags and
/// models (read from the host on demand, or given by a test).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Candidate {
    /// Position in the offered list (what a [`Step`] names).
    pub position: u32,
    /// Channel id.
    pub id: String,
    /// Priority: higher first.
    pub priority: i32,
    /// Weight among equal priorities.
    pub weight: u32,
    /// Usable now.
    pub healthy: bool,
    /// Requests in flight.
    pub in_flight: u32,
    /// Concurrency limit; 0 = none.
    pub max_in_flight: u32,
    /// Latency to first byte, EWMA, ms.
    pub latency_ewma_ms: u32,
    /// Recent error rate, ‰.
    pub error_permille: u32,
    pub(crate) facts: Facts,
}

/// Where a candidate's provider, tags and models come from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Facts {
    /// The host's `candidates` interface, by position (made only by the
    /// planner's entry point).
    #[cfg_attr(not(feature = "planner"), allow(dead_code))]
    Host,
    /// Given by a test.
    #[cfg_attr(not(feature = "testing"), allow(dead_code))]
    Given {
        provider: String,
        tags: Vec<String>,
        models: Vec<String>,
    },
}

impl Candidate {
    /// The channel's provider: `openai`, `azure` or `anthropic`.
    pub fn provider(&self) -> String {
        match &self.facts {
            Facts::Host => crate::host::candidate::provider(self.position),
            Facts::Given { provider, .. } => provider.clone(),
        }
    }

    /// The channel's configured tags.
    pub fn tags(&self) -> Vec<String> {
        match &self.facts {
            Facts::Host => crate::host::candidate::tags(self.position),
            Facts::Given { tags, .. } => tags.clone(),
        }
    }

    /// Whether the channel carries `tag`, without copying its tags.
    pub fn has_tag(&self, tag: &str) -> bool {
        match &self.facts {
            Facts::Host => crate::host::candidate::has_tag(self.position, tag),
            Facts::Given { tags, .. } => tags.iter().any(|t| t == tag),
        }
    }

    /// The client-facing models the channel serves.
    pub fn models(&self) -> Vec<String> {
        match &self.facts {
            Facts::Host => crate::host::candidate::models(self.position),
            Facts::Given { models, .. } => models.clone(),
        }
    }

    /// A step trying this channel with its own model mapping.
    pub fn step(&self) -> Step {
        Step {
            candidate: self.position,
            model: None,
        }
    }
}

/// One step of a plan.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Step {
    /// The candidate's position.
    pub candidate: u32,
    /// The model to send; none = the channel's own mapping.
    pub model: Option<String>,
}

/// An auth policy (world `authorizer-policy`).
pub trait Authorizer {
    /// Receives the plugin's configuration as JSON (`{}` without one).
    ///
    /// # Errors
    /// A message rejecting the plugin.
    fn init(_config: &str) -> Result<(), String> {
        Ok(())
    }
    /// Decides on one request; `key` is `None` when no key matched.
    fn authorize(req: &dyn Request, key: Option<&dyn Key>) -> Verdict;
}

/// A routing policy (world `planner-policy`).
pub trait Planner {
    /// Receives the plugin's configuration as JSON (`{}` without one).
    ///
    /// # Errors
    /// A message rejecting the plugin.
    fn init(_config: &str) -> Result<(), String> {
        Ok(())
    }
    /// The channels to try, in order, or a refusal.
    ///
    /// # Errors
    /// The refusal sent to the client.
    fn plan(req: &dyn Request, candidates: &[Candidate]) -> Result<Vec<Step>, Denial>;
}

/// A log-shaping policy (world `editor-policy`).
pub trait Editor {
    /// Receives the plugin's configuration as JSON (`{}` without one).
    ///
    /// # Errors
    /// A message rejecting the plugin.
    fn init(_config: &str) -> Result<(), String> {
        Ok(())
    }
    /// Edits the record; `false` drops the log record (billing still applies).
    fn edit(rec: &dyn Usage) -> bool;
}
