//! Accounting: turns a finished (or abandoned) request into tokens, cost, a
//! quota charge, TPM counter updates, metrics, an access-log line, and a usage
//! record that passes the shaper chain on its way to the batch writer.
//! Accounting is not a policy: shapers reshape the log record, never the charge.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::app::AppState;
use crate::keys::LiveKey;
use crate::metrics::{ChannelLabels, EndpointLabels, RequestLabels};
use crate::plugins::PolicySet;
use crate::relay::sse::Usage;
use crate::store::writer::{Entry, Slot};
use crate::store::{Charge, UsageRecord};

/// What is known about a request before its response is finished.
pub struct Draft {
    /// Request id.
    pub request_id: String,
    /// Endpoint name.
    pub endpoint: &'static str,
    /// Model asked for.
    pub model: String,
    /// Streamed?
    pub stream: bool,
    /// Client IP.
    pub client_ip: String,
    /// The resolved key.
    pub key: Option<Arc<LiveKey>>,
    /// Labels from auth plugins.
    pub labels: BTreeMap<String, String>,
    /// When the request arrived.
    pub started: Instant,
    /// The policy set the request started with.
    pub policies: Arc<PolicySet>,
    /// Channel that served it ("" if none).
    pub channel_id: String,
    /// Model sent upstream.
    pub upstream_model: String,
    /// Estimated prompt tokens (request bytes / 4), used when the upstream reports none.
    pub prompt_estimate: u32,
    /// Prompt text, when content logging is on.
    pub prompt: Option<String>,
    /// The queue place reserved for this request's record (keyed requests).
    pub slot: Option<Slot>,
}

/// How the response ended.
#[derive(Debug, Default)]
pub struct Outcome {
    /// Status sent to the client.
    pub status: u16,
    /// Error kind, if it failed.
    pub error_kind: Option<String>,
    /// Usage reported by the upstream.
    pub usage: Option<Usage>,
    /// Completion chunks streamed (the estimate when no usage arrived).
    pub completion_estimate: u32,
    /// Time to first token.
    pub ttft: Option<Duration>,
    /// Cut short?
    pub partial: bool,
    /// Completion text, when content logging is on.
    pub completion: Option<String>,
}

/// Accounts for a request. Synchronous and cheap on the caller's side: the charge
/// is applied at once; shaping and queueing run on a tracked task.
pub fn finish(state: &Arc<AppState>, draft: Draft, outcome: Outcome) {
    let usage = outcome
        .usage
        .unwrap_or(if outcome.partial || outcome.status < 400 {
            Usage {
                prompt_tokens: if outcome.completion_estimate > 0 {
                    draft.prompt_estimate
                } else {
                    0
                },
                completion_tokens: outcome.completion_estimate,
            }
        } else {
            Usage::default()
        });
    let latency = draft.started.elapsed();
    let cost = match &draft.key {
        Some(_) => {
            state
                .config
                .pricing
                .cost(&draft.model, usage.prompt_tokens, usage.completion_tokens)
        }
        None => 0,
    };
    let tokens = usage.prompt_tokens + usage.completion_tokens;
    let charge = draft.key.as_ref().map(|key| {
        state.keys.charge(key, cost);
        if tokens > 0 {
            state.policies.charge_tokens(&key.record.id, tokens);
        }
        Charge {
            key_id: key.record.id.clone(),
            cost,
        }
    });
    let m = &state.metrics;
    m.requests
        .get_or_create(&RequestLabels {
            endpoint: draft.endpoint.into(),
            model: draft.model.clone(),
            channel: draft.channel_id.clone(),
            status: outcome.status,
        })
        .inc();
    if let Some(ttft) = outcome.ttft {
        m.ttft
            .get_or_create(&EndpointLabels {
                endpoint: draft.endpoint,
            })
            .observe(ttft.as_secs_f64());
    }
    if tokens > 0 {
        m.tokens
            .get_or_create(&ChannelLabels {
                channel: draft.channel_id.clone(),
            })
            .inc_by(u64::from(tokens));
    }
    let key_prefix = draft
        .key
        .as_ref()
        .map(|k| k.record.prefix.clone())
        .unwrap_or_default();
    let latency_ms = u32::try_from(latency.as_millis()).unwrap_or(u32::MAX);
    let ttft_ms = outcome
        .ttft
        .map(|t| u32::try_from(t.as_millis()).unwrap_or(u32::MAX));
    tracing::info!(
        target: "sluice::access",
        request_id = %draft.request_id,
        key = %key_prefix,
        endpoint = draft.endpoint,
        model = %draft.model,
        channel = %draft.channel_id,
        status = outcome.status,
        prompt_tokens = usage.prompt_tokens,
        completion_tokens = usage.completion_tokens,
        latency_ms,
        ttft_ms,
        stream = draft.stream,
        partial = outcome.partial,
        error = outcome.error_kind.as_deref().unwrap_or(""),
        "request"
    );
    if latency >= state.config.server.slow_request {
        tracing::warn!(request_id = %draft.request_id, latency_ms, model = %draft.model, channel = %draft.channel_id, "slow request");
    }
    let Some(key) = &draft.key else { return };
    let record = UsageRecord {
        seq: 0,
        request_id: draft.request_id,
        time_ms: crate::keys::now_ms(),
        key_id: key.record.id.clone(),
        key_prefix,
        endpoint: draft.endpoint.into(),
        model: draft.model,
        upstream_model: draft.upstream_model,
        channel_id: draft.channel_id,
        status: outcome.status,
        error_kind: outcome.error_kind,
        prompt_tokens: usage.prompt_tokens,
        completion_tokens: usage.completion_tokens,
        cost,
        latency_ms,
        ttft_ms,
        stream: draft.stream,
        partial: outcome.partial,
        client_ip: draft.client_ip,
        labels: draft.labels,
        prompt: draft.prompt,
        completion: outcome.completion,
    };
    let state = state.clone();
    let policies = draft.policies;
    let slot = draft.slot;
    state.tracker.clone().spawn(async move {
        let entry = Entry {
            record: state.policies.shape(&policies, record).await,
            charge,
        };
        match slot {
            Some(slot) => state.writer.submit_reserved(slot, entry),
            None => state.writer.submit(entry).await,
        }
    });
}
