//! The one accounting owner. A request admitted to a relayed endpoint gets an
//! [`Accounting`] guard that owns its [`RequestContext`]; the guard settles
//! exactly once, wherever the request ends: completion, failure, a policy
//! denial, client disconnect, the shutdown cut-off, a panic inside a phase, or
//! a plain drop. Settling turns the outcome into tokens, cost, a quota charge,
//! TPM counter updates, metrics, an access-log line, and (for keyed requests)
//! a usage record that passes the shaper chain on its way to the batch writer.
//! Accounting is not a policy: shapers reshape the log record, never the charge.

use std::cell::Cell;
use std::sync::Arc;
use std::time::Duration;

use crate::context::RequestContext;
use crate::error::ApiError;
use crate::metrics::{ChannelLabels, EndpointLabels, RequestLabels};
use crate::relay::sse::Usage;
use crate::state::AppState;
use crate::store::writer::{Entry, Slot};
use crate::store::{Charge, UsageRecord};

/// Status recorded for a request whose client left before its response head
/// (nginx's convention: no response was sent).
pub const CLIENT_CLOSED: u16 = 499;

thread_local! {
    /// Set while [`drop_after_panic`] drops what a caught panic left behind.
    static UNWOUND: Cell<bool> = const { Cell::new(false) };
}

/// Drops the state of a request future whose poll panicked (a caught panic
/// leaves it behind rather than dropping it while unwinding), so that the
/// accounting it owned settles as `internal_panic`.
pub fn drop_after_panic<T>(remains: T) {
    UNWOUND.set(true);
    drop(remains);
    UNWOUND.set(false);
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

impl Outcome {
    /// The outcome of a request answered with `error`.
    pub fn failed(error: &ApiError) -> Self {
        Self {
            status: error.status().as_u16(),
            error_kind: Some(error.log_kind()),
            ..Self::default()
        }
    }

    /// Marks a request that ended before its response did: why it was cut
    /// short (a panic, the shutdown cut-off, or the client leaving), and as
    /// partial. A request with no response head yet gets the status that
    /// says so.
    fn abandon(&mut self, state: &AppState) {
        let kind = if std::thread::panicking() || UNWOUND.get() {
            self.status = 500;
            "internal_panic"
        } else if state.cut_off.is_cancelled() {
            "shutdown"
        } else {
            "client_disconnected"
        };
        if self.status == 0 {
            self.status = CLIENT_CLOSED;
        }
        self.partial = true;
        self.error_kind.get_or_insert_with(|| kind.into());
    }
}

/// The obligation to account for one admitted request, with its context.
pub struct Accounting {
    state: Arc<AppState>,
    ctx: RequestContext,
    /// The queue place reserved for the record (keyed requests).
    slot: Option<Slot>,
    settled: bool,
}

impl Accounting {
    /// Admits a request whose key (if any) is known: a keyed request reserves
    /// its place in the usage queue before any response can be sent, so a crash
    /// loses at most the queue plus one batch.
    pub async fn admit(state: &Arc<AppState>, ctx: RequestContext) -> Self {
        let slot = match ctx.key {
            Some(_) => state.writer.reserve().await,
            None => None,
        };
        Self {
            state: state.clone(),
            ctx,
            slot,
            settled: false,
        }
    }

    /// Whether a keyed request got its place in the usage queue (the queue
    /// stayed full for the backpressure wait when it did not).
    pub fn has_queue_place(&self) -> bool {
        self.ctx.key.is_none() || self.slot.is_some()
    }

    /// The request's context.
    pub fn ctx(&self) -> &RequestContext {
        &self.ctx
    }

    /// The request's context, for the phases that add to it.
    pub fn ctx_mut(&mut self) -> &mut RequestContext {
        &mut self.ctx
    }

    /// Settles the request with its outcome. Synchronous and cheap on the
    /// caller's side: the charge is applied at once; shaping and queueing run on
    /// a tracked task.
    pub fn settle(mut self, outcome: Outcome) {
        self.record(outcome);
    }

    /// Settles a request whose response was cut short (see [`Outcome`]'s
    /// fields for what was delivered before it ended).
    pub fn abandon(mut self, mut outcome: Outcome) {
        outcome.abandon(&self.state);
        self.record(outcome);
    }

    fn record(&mut self, outcome: Outcome) {
        if std::mem::replace(&mut self.settled, true) {
            return;
        }
        let state = &self.state;
        let ctx = &mut self.ctx;
        let usage = billable_usage(&outcome, ctx.prompt_estimate);
        let latency = ctx.started.elapsed();
        let model = ctx.facts.model.as_str();
        let cost = match &ctx.key {
            Some(_) => {
                state
                    .config
                    .pricing
                    .cost(model, usage.prompt_tokens, usage.completion_tokens)
            }
            None => 0,
        };
        let tokens = total_tokens(usage);
        let charge = ctx.key.as_ref().map(|key| {
            state.keys.charge(key, cost);
            if tokens > 0 {
                state.policies.charge_tokens(&key.record.id, tokens);
            }
            Charge {
                key_id: key.record.id.clone(),
                cost,
            }
        });
        let endpoint = ctx.endpoint.name();
        let m = &state.metrics;
        // Only configured models become label values: a client's junk model
        // names would otherwise grow /metrics without bound.
        let model_label = if state.channels.serves(model) {
            model
        } else {
            "other"
        };
        m.requests
            .get_or_create(&RequestLabels {
                endpoint: endpoint.into(),
                model: model_label.into(),
                channel: ctx.channel_id.clone(),
                status: outcome.status,
            })
            .inc();
        if let Some(ttft) = outcome.ttft {
            m.ttft
                .get_or_create(&EndpointLabels { endpoint })
                .observe(ttft.as_secs_f64());
        }
        if tokens > 0 {
            m.tokens
                .get_or_create(&ChannelLabels {
                    channel: ctx.channel_id.clone(),
                })
                .inc_by(tokens);
        }
        let key_prefix = ctx
            .key
            .as_ref()
            .map(|k| k.record.prefix.clone())
            .unwrap_or_default();
        let latency_ms = u32::try_from(latency.as_millis()).unwrap_or(u32::MAX);
        let ttft_ms = outcome
            .ttft
            .map(|t| u32::try_from(t.as_millis()).unwrap_or(u32::MAX));
        let request_id = ctx.facts.request_id.as_str();
        tracing::info!(
            target: "sluice::access",
            request_id,
            key = %key_prefix,
            endpoint,
            model,
            channel = %ctx.channel_id,
            status = outcome.status,
            prompt_tokens = usage.prompt_tokens,
            completion_tokens = usage.completion_tokens,
            latency_ms,
            ttft_ms,
            stream = ctx.facts.stream,
            partial = outcome.partial,
            error = outcome.error_kind.as_deref().unwrap_or(""),
            "request"
        );
        if latency >= state.config.server.slow_request {
            tracing::warn!(request_id, latency_ms, model, channel = %ctx.channel_id, "slow request");
        }
        let Some(key) = &ctx.key else { return };
        let record = UsageRecord {
            seq: 0,
            request_id: request_id.into(),
            time_ms: crate::keys::now_ms(),
            key_id: key.record.id.clone(),
            key_prefix,
            endpoint: endpoint.into(),
            model: model.into(),
            upstream_model: std::mem::take(&mut ctx.upstream_model),
            channel_id: std::mem::take(&mut ctx.channel_id),
            status: outcome.status,
            error_kind: outcome.error_kind,
            prompt_tokens: usage.prompt_tokens,
            completion_tokens: usage.completion_tokens,
            cost,
            latency_ms,
            ttft_ms,
            stream: ctx.facts.stream,
            partial: outcome.partial,
            client_ip: ctx.facts.client_ip.clone(),
            labels: std::mem::take(&mut ctx.labels),
            prompt: ctx.prompt.take(),
            completion: outcome.completion,
        };
        let state = state.clone();
        let policies = ctx.policies.clone();
        let slot = self.slot.take();
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
}

impl Drop for Accounting {
    /// A request dropped before it settled: a client that left while a phase
    /// was waiting, the shutdown cut-off, or a panic unwinding through a phase.
    fn drop(&mut self) {
        if !self.settled {
            let mut outcome = Outcome::default();
            outcome.abandon(&self.state);
            self.record(outcome);
        }
    }
}

/// Prompt plus completion tokens, summed without overflow (two `u32`
/// counts from an upstream can exceed `u32`).
fn total_tokens(usage: Usage) -> u64 {
    u64::from(usage.prompt_tokens) + u64::from(usage.completion_tokens)
}

/// The tokens to bill: the upstream's usage, else — for a response that
/// delivered something — the estimates.
fn billable_usage(outcome: &Outcome, prompt_estimate: u32) -> Usage {
    if let Some(usage) = outcome.usage {
        return usage;
    }
    if outcome.partial || outcome.status < 400 {
        Usage {
            prompt_tokens: if outcome.completion_estimate > 0 {
                prompt_estimate
            } else {
                0
            },
            completion_tokens: outcome.completion_estimate,
        }
    } else {
        Usage::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_sums_do_not_wrap() {
        let usage = Usage {
            prompt_tokens: u32::MAX,
            completion_tokens: 2,
        };
        assert_eq!(total_tokens(usage), u64::from(u32::MAX) + 2);
    }
}
