//! The per-request context: built once at the door and carried through every
//! phase (admission, auth, route, relay, accounting). Each phase adds what it
//! learns; none hands a half-built record back up.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::config::ModelMeter;
use crate::endpoint::Endpoint;
use crate::facts::RequestFacts;
use crate::keys::LiveKey;
use crate::plugins::PolicySet;

/// One request's state, from the socket to its usage record.
pub struct RequestContext {
    /// When the request arrived.
    pub started: Instant,
    /// The socket peer.
    pub peer: SocketAddr,
    /// The endpoint the path names.
    pub endpoint: Endpoint,
    /// What policies see: id, endpoint, model, stream flag, client IP, headers.
    pub facts: Arc<RequestFacts>,
    /// The policy set in force when the request arrived; in-flight requests
    /// keep it while a reload swaps in the next.
    pub policies: Arc<PolicySet>,
    /// The key the credential resolved to (admission).
    pub key: Option<Arc<LiveKey>>,
    /// Labels the auth chain attached (auth).
    pub labels: BTreeMap<String, String>,
    /// The channel that served the request, or the last one tried (relay).
    pub channel_id: String,
    /// The model name sent upstream (relay).
    pub upstream_model: String,
    /// How the model asked for is metered (the default until the body is read).
    pub meter: ModelMeter,
    /// Prompt tokens counted at admission: reserved against, and billed
    /// when the upstream reports no usage (reserve).
    pub prompt_tokens: u32,
    /// The prompt, when content logging is on.
    pub prompt: Option<String>,
    /// Phase durations for the `server-timing` header.
    pub timing: Vec<(&'static str, Duration)>,
}

impl RequestContext {
    /// The context of a request that just arrived.
    pub fn new(
        started: Instant,
        peer: SocketAddr,
        endpoint: Endpoint,
        facts: RequestFacts,
        policies: Arc<PolicySet>,
        meter: ModelMeter,
    ) -> Self {
        Self {
            started,
            peer,
            endpoint,
            facts: Arc::new(facts),
            policies,
            key: None,
            labels: BTreeMap::new(),
            channel_id: String::new(),
            upstream_model: String::new(),
            meter,
            prompt_tokens: 0,
            prompt: None,
            timing: Vec::with_capacity(4),
        }
    }

    /// The request id.
    pub fn request_id(&self) -> &str {
        &self.facts.request_id
    }

    /// The model asked for ("" before the body is parsed).
    pub fn model(&self) -> &str {
        &self.facts.model
    }

    /// Records the body's facts (model, clipped to
    /// [`crate::facts::MAX_CLIENT_STRING`] bytes, and stream flag) for the
    /// phases after it.
    pub fn set_body_facts(&mut self, model: &str, stream: bool) {
        let facts = Arc::make_mut(&mut self.facts);
        crate::facts::clipped(model).clone_into(&mut facts.model);
        facts.stream = stream;
    }

    /// Records how long a phase took, for `server-timing`.
    pub fn time(&mut self, phase: &'static str, since: Instant) {
        self.timing.push((phase, since.elapsed()));
    }
}
