//! Native tests for policies written against the [API](crate::api) (feature
//! `testing`): a request, a key, a usage record and candidates built in the
//! test, and an in-memory host — log, clock, key/value, counters — per test
//! thread, so `cargo test` runs a policy without a gateway or a wasm runtime.
//!
//! ```ignore
//! use sluice_policy_sdk::api::{Authorizer, Verdict};
//! use sluice_policy_sdk::testing::{TestKey, TestRequest};
//!
//! #[test]
//! fn blue_is_allowed() {
//!     TeamHeader::init(r#"{"header": "x-team", "teams": ["blue"]}"#).unwrap();
//!     let req = TestRequest::new().with_header("x-team", "blue");
//!     assert!(matches!(TeamHeader::authorize(&req, Some(&TestKey::new())), Verdict::Allow(_)));
//! }
//! ```

use std::cell::RefCell;

use crate::api::{Candidate, CounterState, Facts, Key, Label, Level, Request, Standing, Usage};

/// A request, by default the one `sluice plugin check` uses: a non-streamed
/// chat completion for `gpt-4o-mini` from `10.0.0.1`, without headers.
#[derive(Debug, Clone)]
pub struct TestRequest {
    request_id: String,
    endpoint: String,
    model: String,
    stream: bool,
    client_ip: String,
    headers: Vec<Label>,
}

impl Default for TestRequest {
    fn default() -> Self {
        Self {
            request_id: "req_test".into(),
            endpoint: "chat.completions".into(),
            model: "gpt-4o-mini".into(),
            stream: false,
            client_ip: "10.0.0.1".into(),
            headers: Vec::new(),
        }
    }
}

impl TestRequest {
    /// The default request.
    pub fn new() -> Self {
        Self::default()
    }
    /// With this request id.
    pub fn with_request_id(mut self, id: &str) -> Self {
        id.clone_into(&mut self.request_id);
        self
    }
    /// On this endpoint (`messages` makes the protocol `anthropic`).
    pub fn with_endpoint(mut self, endpoint: &str) -> Self {
        endpoint.clone_into(&mut self.endpoint);
        self
    }
    /// For this model.
    pub fn with_model(mut self, model: &str) -> Self {
        model.clone_into(&mut self.model);
        self
    }
    /// Streamed.
    pub fn with_stream(mut self) -> Self {
        self.stream = true;
        self
    }
    /// From this client IP.
    pub fn with_client_ip(mut self, ip: &str) -> Self {
        ip.clone_into(&mut self.client_ip);
        self
    }
    /// With this header (as the operator shows it to policies).
    pub fn with_header(mut self, name: &str, value: &str) -> Self {
        self.headers
            .push(Label::new(name.to_ascii_lowercase(), value));
        self
    }
}

impl Request for TestRequest {
    fn request_id(&self) -> String {
        self.request_id.clone()
    }
    fn seed(&self) -> u64 {
        // FNV-1a of the id, as the gateway computes it.
        self.request_id.bytes().fold(0xcbf2_9ce4_8422_2325, |h, b| {
            (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
        })
    }
    fn endpoint(&self) -> String {
        self.endpoint.clone()
    }
    fn model(&self) -> String {
        self.model.clone()
    }
    fn stream(&self) -> bool {
        self.stream
    }
    fn client_ip(&self) -> String {
        self.client_ip.clone()
    }
    fn header(&self, name: &str) -> Option<String> {
        self.headers
            .iter()
            .find(|h| h.name.eq_ignore_ascii_case(name))
            .map(|h| h.value.clone())
    }
    fn headers(&self) -> Vec<Label> {
        self.headers.clone()
    }
    fn protocol(&self) -> String {
        if self.endpoint.starts_with("messages") {
            "anthropic".into()
        } else {
            "openai".into()
        }
    }
}

/// A key, by default active and unrestricted; its counters are the test
/// host's, named `<name>:<key id>` as in the gateway.
#[derive(Debug, Clone)]
pub struct TestKey {
    id: String,
    name: String,
    owner: String,
    standing: Standing,
    models: Vec<String>,
    networks: Vec<String>,
}

impl Default for TestKey {
    fn default() -> Self {
        Self {
            id: "key_test".into(),
            name: "test".into(),
            owner: "tests".into(),
            standing: Standing::default(),
            models: Vec::new(),
            networks: Vec::new(),
        }
    }
}

impl TestKey {
    /// The default key.
    pub fn new() -> Self {
        Self::default()
    }
    /// With this id.
    pub fn with_id(mut self, id: &str) -> Self {
        id.clone_into(&mut self.id);
        self
    }
    /// Owned by `owner`.
    pub fn with_owner(mut self, owner: &str) -> Self {
        owner.clone_into(&mut self.owner);
        self
    }
    /// Standing as given (status, expiry, admission, quota, limits).
    pub fn with_standing(mut self, standing: Standing) -> Self {
        self.standing = standing;
        self
    }
    /// Limited to these models.
    pub fn with_models(mut self, models: &[&str]) -> Self {
        self.models = models.iter().map(|m| (*m).to_string()).collect();
        self
    }
}

impl Key for TestKey {
    fn id(&self) -> String {
        self.id.clone()
    }
    fn name(&self) -> String {
        self.name.clone()
    }
    fn owner(&self) -> String {
        self.owner.clone()
    }
    fn prefix(&self) -> String {
        "sk-sl-test".into()
    }
    fn standing(&self) -> Standing {
        self.standing.clone()
    }
    fn models(&self) -> Vec<String> {
        self.models.clone()
    }
    fn networks(&self) -> Vec<String> {
        self.networks.clone()
    }
    fn counter_add(&self, name: &str, delta: i64, window_ms: u32) -> CounterState {
        memory::counter_add(&format!("{name}:{}", self.id), delta, window_ms)
    }
}

/// A usage record an editor edits; read it back through [`Usage`] afterwards.
#[derive(Debug, Default)]
pub struct TestUsage {
    fields: RefCell<Fields>,
}

#[derive(Debug, Clone, Default)]
struct Fields {
    key_prefix: String,
    error_kind: Option<String>,
    client_ip: String,
    labels: Vec<Label>,
    prompt: Option<String>,
    completion: Option<String>,
}

impl TestUsage {
    /// A successful chat completion's record, with no labels or content.
    pub fn new() -> Self {
        Self::default()
    }
    /// With these labels.
    pub fn with_labels(self, labels: &[(&str, &str)]) -> Self {
        self.fields.borrow_mut().labels = labels.iter().map(|(n, v)| Label::new(*n, *v)).collect();
        self
    }
    /// With this prompt and completion text.
    pub fn with_content(self, prompt: &str, completion: &str) -> Self {
        {
            let mut f = self.fields.borrow_mut();
            f.prompt = Some(prompt.into());
            f.completion = Some(completion.into());
        }
        self
    }
    /// With this error kind.
    pub fn with_error_kind(self, kind: &str) -> Self {
        self.fields.borrow_mut().error_kind = Some(kind.into());
        self
    }
}

impl Usage for TestUsage {
    fn request_id(&self) -> String {
        "req_test".into()
    }
    fn key_id(&self) -> String {
        "key_test".into()
    }
    fn key_prefix(&self) -> String {
        self.fields.borrow().key_prefix.clone()
    }
    fn endpoint(&self) -> String {
        "chat.completions".into()
    }
    fn model(&self) -> String {
        "gpt-4o-mini".into()
    }
    fn upstream_model(&self) -> String {
        "gpt-4o-mini".into()
    }
    fn channel_id(&self) -> String {
        "primary".into()
    }
    fn status(&self) -> u16 {
        if self.fields.borrow().error_kind.is_some() {
            502
        } else {
            200
        }
    }
    fn error_kind(&self) -> Option<String> {
        self.fields.borrow().error_kind.clone()
    }
    fn prompt_tokens(&self) -> u32 {
        12
    }
    fn completion_tokens(&self) -> u32 {
        16
    }
    fn cost(&self) -> i64 {
        28
    }
    fn client_ip(&self) -> String {
        self.fields.borrow().client_ip.clone()
    }
    fn labels(&self) -> Vec<Label> {
        self.fields.borrow().labels.clone()
    }
    fn mentions(&self, needles: &[&str]) -> bool {
        let f = self.fields.borrow();
        let found = |text: &str| needles.iter().any(|n| text.contains(n));
        f.labels.iter().any(|l| found(&l.value)) || f.error_kind.as_deref().is_some_and(found)
    }
    fn prompt(&self) -> Option<String> {
        self.fields.borrow().prompt.clone()
    }
    fn completion(&self) -> Option<String> {
        self.fields.borrow().completion.clone()
    }
    fn set_key_prefix(&self, value: &str) {
        value.clone_into(&mut self.fields.borrow_mut().key_prefix);
    }
    fn set_error_kind(&self, value: Option<&str>) {
        self.fields.borrow_mut().error_kind = value.map(String::from);
    }
    fn set_client_ip(&self, value: &str) {
        value.clone_into(&mut self.fields.borrow_mut().client_ip);
    }
    fn set_labels(&self, labels: &[Label]) {
        self.fields.borrow_mut().labels = labels.to_vec();
    }
    fn set_prompt(&self, value: Option<&str>) {
        self.fields.borrow_mut().prompt = value.map(String::from);
    }
    fn set_completion(&self, value: Option<&str>) {
        self.fields.borrow_mut().completion = value.map(String::from);
    }
}

/// Candidates offered to a router in a test, in order: each healthy, idle,
/// of priority 0 and weight 1, an `openai` channel without tags serving
/// `gpt-4o-mini`, until changed with [`TestCandidate`]'s methods.
pub fn offer(candidates: impl IntoIterator<Item = TestCandidate>) -> Vec<Candidate> {
    candidates
        .into_iter()
        .zip(0..)
        .map(|(c, position)| Candidate { position, ..c.0 })
        .collect()
}

/// A candidate being described for [`offer`].
#[derive(Debug, Clone)]
pub struct TestCandidate(Candidate);

impl TestCandidate {
    /// Channel `id`, with the defaults [`offer`] lists.
    pub fn new(id: &str) -> Self {
        Self(Candidate {
            position: 0,
            id: id.into(),
            priority: 0,
            weight: 1,
            healthy: true,
            in_flight: 0,
            max_in_flight: 0,
            latency_ewma_ms: 0,
            error_permille: 0,
            facts: Facts::Given {
                provider: "openai".into(),
                tags: Vec::new(),
                models: vec!["gpt-4o-mini".into()],
            },
        })
    }
    /// Of this provider.
    pub fn with_provider(mut self, name: &str) -> Self {
        if let Facts::Given { provider, .. } = &mut self.0.facts {
            name.clone_into(provider);
        }
        self
    }
    /// With these tags.
    pub fn with_tags(mut self, given: &[&str]) -> Self {
        if let Facts::Given { tags, .. } = &mut self.0.facts {
            *tags = given.iter().map(|t| (*t).to_string()).collect();
        }
        self
    }
    /// Serving these models.
    pub fn with_models(mut self, given: &[&str]) -> Self {
        if let Facts::Given { models, .. } = &mut self.0.facts {
            *models = given.iter().map(|m| (*m).to_string()).collect();
        }
        self
    }
    /// With this priority.
    pub fn with_priority(mut self, priority: i32) -> Self {
        self.0.priority = priority;
        self
    }
    /// Unhealthy (cooling down or disabled).
    pub fn unhealthy(mut self) -> Self {
        self.0.healthy = false;
        self
    }
}

/// The lines the policy logged on this test's thread, oldest first.
pub fn logs() -> Vec<(Level, String)> {
    memory::HOST.with(|h| h.borrow().logs.clone())
}

/// Moves this thread's test clock forward (counter windows and key/value
/// expiry follow it).
pub fn advance_clock(ms: u64) {
    memory::HOST.with(|h| h.borrow_mut().offset_ms += ms);
}

/// The in-memory host behind [`crate::host`] in native tests: one per thread,
/// so tests running in parallel never share state.
pub(crate) mod memory {
    use std::cell::RefCell;
    use std::collections::HashMap;

    use crate::api::{CounterState, Level};

    /// One thread's host state.
    #[derive(Default)]
    pub(crate) struct Host {
        pub(crate) logs: Vec<(Level, String)>,
        pub(crate) offset_ms: u64,
        kv: HashMap<String, (Vec<u8>, Option<u64>)>,
        counters: HashMap<String, (u64, u64, i64)>,
    }

    thread_local! {
        pub(crate) static HOST: RefCell<Host> = RefCell::default();
    }

    pub fn log(level: Level, message: &str) {
        HOST.with(|h| h.borrow_mut().logs.push((level, message.into())));
    }

    pub fn now_ms() -> u64 {
        let real = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX));
        real + HOST.with(|h| h.borrow().offset_ms)
    }

    pub fn kv_get(key: &str) -> Option<Vec<u8>> {
        let now = now_ms();
        HOST.with(|h| {
            h.borrow()
                .kv
                .get(key)
                .filter(|(_, expires)| expires.is_none_or(|at| now < at))
                .map(|(value, _)| value.clone())
        })
    }

    pub fn kv_set(key: &str, value: &[u8], ttl_ms: Option<u32>) {
        let expires = ttl_ms.map(|ttl| now_ms() + u64::from(ttl));
        HOST.with(|h| {
            h.borrow_mut()
                .kv
                .insert(key.into(), (value.to_vec(), expires));
        });
    }

    pub fn counter_add(key: &str, delta: i64, window_ms: u32) -> CounterState {
        let now = now_ms();
        let length = u64::from(window_ms.max(1));
        HOST.with(|h| {
            let mut host = h.borrow_mut();
            let (started, len, total) = host.counters.entry(key.into()).or_insert((now, length, 0));
            if now - *started >= *len {
                (*started, *len, *total) = (now, length, 0);
            }
            *total = total.saturating_add(delta);
            CounterState {
                total: *total,
                resets_in_ms: u32::try_from(*len - (now - *started)).unwrap_or(u32::MAX),
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::host;

    #[test]
    fn the_test_host_counts_in_windows_and_expires_values() {
        assert_eq!(host::counter_add("rpm", 1, 60_000).total, 1);
        assert_eq!(host::counter_add("rpm", 1, 60_000).total, 2);
        advance_clock(60_000);
        assert_eq!(host::counter_add("rpm", 1, 60_000).total, 1);
        host::kv_set("k", b"v", Some(1000));
        assert_eq!(host::kv_get("k").as_deref(), Some(&b"v"[..]));
        advance_clock(1000);
        assert_eq!(host::kv_get("k"), None);
        host::log(Level::Info, "hello");
        assert_eq!(logs(), [(Level::Info, "hello".to_string())]);
    }

    #[test]
    fn test_fakes_answer_like_the_gateway() {
        let req = TestRequest::new()
            .with_endpoint("messages")
            .with_header("X-Team", "blue");
        assert_eq!(req.protocol(), "anthropic");
        assert_eq!(req.header("x-team").as_deref(), Some("blue"));
        let key = TestKey::new();
        assert_eq!(key.counter_add("tpm", 5, 60_000).total, 5);
        assert_eq!(host::counter_add("tpm:key_test", 0, 60_000).total, 5);
        let offered = offer([
            TestCandidate::new("a"),
            TestCandidate::new("b")
                .with_provider("anthropic")
                .with_tags(&["eu"]),
        ]);
        assert_eq!(offered[1].position, 1);
        assert!(offered[1].has_tag("eu") && offered[1].provider() == "anthropic");
        let usage = TestUsage::new().with_labels(&[("team", "sk-secret")]);
        assert!(usage.mentions(&["sk-"]));
        usage.set_labels(&[]);
        assert!(usage.labels().is_empty());
    }
}
