//! The one accounting owner. A request admitted to a relayed endpoint gets an
//! [`Accounting`] guard that owns its [`RequestContext`]; the guard settles
//! exactly once, wherever the request ends: completion, failure, a policy
//! denial, client disconnect, the shutdown cut-off, a panic inside a phase, or
//! a plain drop. Before the relay it counts the prompt and reserves the
//! request's worst case against its key ([`Accounting::reserve`]); settling
//! turns the outcome into tokens of every kind, their bill, the settlement of
//! the reservation (a charge, or its release), TPM counter updates, metrics,
//! an access-log line, and (for keyed requests) a usage record that passes
//! the shaper chain on its way to the batch writer with its ledger charge.
//! Accounting is not a policy: shapers reshape the log record, never the charge.

use std::cell::Cell;
use std::sync::Arc;
use std::time::Duration;

use http::StatusCode;
use sluice_meter::Tally;

use crate::context::RequestContext;
use crate::error::ApiError;
use crate::metering::{Tokens, affordable_cap, bill, worst_case};
use crate::metrics::RequestKey;
use crate::plugins::exercise::{ChannelInput, Inputs};
use crate::settling::{Lane, Settled};
use crate::state::AppState;
use crate::store::writer::{Entry, Slot};
use crate::store::{Charge, UsageRecord};

/// Bodies up to this size are counted on the runtime worker (about 200 µs
/// at most); larger ones on a blocking thread.
const INLINE_COUNT_BYTES: usize = 16 * 1024;

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
    pub usage: Option<Tokens>,
    /// Completion tokens the gateway counted (when no usage arrived).
    pub counted_completion: u32,
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
    /// The quota reserved against the key, in credits.
    reserved: i64,
    /// Whether the charge is capped at the reservation (cap enforcement on a
    /// key with a quota).
    capped: bool,
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
            reserved: 0,
            capped: false,
            settled: false,
        }
    }

    /// Counts the prompt: for the reservation, the record, and the bill when
    /// the upstream reports no usage. A large body is counted on a blocking
    /// thread, so no runtime worker stalls on it.
    pub async fn count_prompt(&mut self, body: &bytes::Bytes) {
        let metering = &self.state.config.metering;
        let Some(kind) = self.ctx.endpoint.prompt_kind() else {
            return;
        };
        // A Messages body is counted as the chat request it translates to,
        // so its estimate is the equivalent OpenAI request's.
        let translated;
        let body = if self.ctx.endpoint.protocol() == crate::protocol::Protocol::Anthropic {
            translated = crate::provider::messages::request(body)
                .map(bytes::Bytes::from)
                .unwrap_or_default();
            &translated
        } else {
            body
        };
        let tally = Tally::new(self.ctx.meter.encoding, metering.max_counted_bytes);
        let count = move |body: &[u8]| {
            let mut tally = tally;
            // An ill-typed prompt is the upstream's to refuse; what parsed counts.
            let _ = sluice_meter::prompt_tokens(kind, body, &mut tally);
            u32::try_from(tally.total()).unwrap_or(u32::MAX)
        };
        self.ctx.prompt_tokens = if body.len() <= INLINE_COUNT_BYTES {
            count(body)
        } else {
            let body = body.clone();
            tokio::task::spawn_blocking(move || count(&body))
                .await
                .unwrap_or(0)
        };
    }

    /// Reserves the request's worst case against its key: the counted
    /// prompt plus the completion cap (the client's `client_cap`, else the
    /// model's default) at the model's dearest rates. With cap enforcement
    /// the cap shrinks to what the quota left buys; returns the cap the
    /// upstream must be sent instead of the client's, with the field it goes
    /// in when the client set none.
    ///
    /// # Errors
    /// 429 `insufficient_quota` when the quota left cannot cover it.
    pub fn reserve(
        &mut self,
        client_cap: Option<u64>,
    ) -> Result<Option<(u64, &'static str)>, ApiError> {
        let metering = &self.state.config.metering;
        let ctx = &mut self.ctx;
        let meter = ctx.meter;
        let Some(key) = &ctx.key else {
            return Ok(None);
        };
        let prompt = u64::from(ctx.prompt_tokens);
        let field = ctx.endpoint.cap_field();
        let asked = match field {
            Some(_) => client_cap.unwrap_or(u64::from(meter.max_tokens)),
            None => 0,
        };
        let enforce = metering.enforce_cap && field.is_some();
        let rates = &meter.rates;
        let mut send_cap = None;
        let mut limited = false;
        let reserved = key.balance.reserve(|available| {
            let Some(available) = available else {
                return Some(worst_case(rates, prompt, asked));
            };
            limited = true;
            let cap = if enforce {
                let cap = asked.min(affordable_cap(rates, prompt, available));
                if cap == 0 && asked > 0 {
                    return None;
                }
                if client_cap != Some(cap) {
                    send_cap = Some(cap);
                }
                cap
            } else {
                asked
            };
            let cost = worst_case(rates, prompt, cap);
            (cost <= available).then_some(cost)
        });
        let Some(reserved) = reserved else {
            return Err(insufficient_quota());
        };
        self.reserved = reserved;
        self.capped = enforce && limited;
        Ok(send_cap.zip(field))
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
    /// the thread's settling queue ([`crate::settling`]).
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
        let tokens = billable(&outcome, ctx.prompt_tokens);
        let latency = ctx.started.elapsed();
        let model = ctx.facts.model.as_str();
        let split = bill(&ctx.meter.rates, &tokens);
        let cost = split.credits();
        let total = tokens.total();
        let charge = ctx.key.as_ref().map(|key| {
            let charged = if self.capped {
                cost.min(self.reserved)
            } else {
                cost
            };
            if charged < cost {
                state
                    .metrics
                    .unbilled_credits
                    .inc_by(u64::try_from(cost - charged).unwrap_or(0));
                tracing::warn!(
                    request_id = %ctx.facts.request_id,
                    cost,
                    reserved = self.reserved,
                    "upstream generated past the cap it was sent; charge capped at the reservation"
                );
            }
            key.balance.settle(self.reserved, charged);
            if total > 0 {
                state.policies.charge_tokens(&key.record.id, total);
            }
            Charge {
                key_id: key.record.id.clone(),
                request_id: ctx.facts.request_id.clone(),
                cost: charged,
                reserved: self.reserved,
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
        m.count_request(RequestKey {
            endpoint,
            model: model_label,
            channel: &ctx.channel_id,
            status: outcome.status,
        });
        if let Some(ttft) = outcome.ttft {
            m.observe_ttft(endpoint, ttft.as_secs_f64());
        }
        if total > 0 {
            m.add_tokens(&ctx.channel_id, total);
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
            target: crate::log_format::ACCESS_TARGET,
            request_id,
            key = %key_prefix,
            endpoint,
            model,
            channel = %ctx.channel_id,
            status = outcome.status,
            prompt_tokens = tokens.prompt,
            completion_tokens = tokens.completion,
            cost = charge.as_ref().map_or(0, |c| c.cost),
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
            prompt_tokens: tokens.prompt,
            completion_tokens: tokens.completion,
            cached_tokens: tokens.cached,
            cache_write_tokens: tokens.cache_write,
            reasoning_tokens: tokens.reasoning,
            audio_prompt_tokens: tokens.audio_prompt,
            audio_completion_tokens: tokens.audio_completion,
            tokens_counted: outcome.usage.is_none() && total > 0,
            cost: charge.as_ref().map_or(0, |c| c.cost),
            reserved: self.reserved,
            cost_split: split,
            latency_ms,
            ttft_ms,
            stream: ctx.facts.stream,
            partial: outcome.partial,
            client_ip: ctx.facts.client_ip.clone(),
            labels: std::mem::take(&mut ctx.labels),
            prompt: ctx.prompt.take(),
            completion: outcome.completion,
        };
        // Plugins in shadow mode see what the live policies saw.
        let shadowed = (!ctx.policies.shadows.is_empty()).then(|| Inputs {
            request: ctx.facts.clone(),
            key: ctx.key.clone(),
            channels: state
                .channels
                .serving(&record.model)
                .map(|c| ChannelInput::from(&c.offer(&record.model)))
                .collect(),
            record: record.clone(),
        });
        let settled = Settled {
            policies: ctx.policies.clone(),
            shadowed,
            record,
            charge,
            slot: self.slot.take(),
        };
        if let Some(lane) = state.settling.push(settled) {
            state.tracker.spawn(drain(state.clone(), lane));
        }
    }
}

/// Shapes and submits a lane's records, oldest first, until it is empty.
async fn drain(state: Arc<AppState>, lane: Arc<Lane>) {
    while let Some(settled) = lane.next() {
        let Settled {
            policies,
            shadowed,
            record,
            charge,
            slot,
        } = settled;
        if let Some(inputs) = shadowed {
            crate::plugins::shadow::run(&policies.shadows, &inputs, &state.metrics).await;
        }
        let entry = Entry {
            record: state.policies.shape(&policies, record).await,
            charge,
        };
        match slot {
            Some(slot) => state.writer.submit_reserved(slot, entry),
            None => state.writer.submit(entry).await,
        }
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

/// OpenAI's answer to a request its key's quota cannot cover.
fn insufficient_quota() -> ApiError {
    ApiError::Denied {
        status: StatusCode::TOO_MANY_REQUESTS,
        code: "insufficient_quota".into(),
        message: "You exceeded your current quota, please check your plan and billing details."
            .into(),
        retry_after_s: None,
    }
}

/// The tokens to bill: the upstream's usage, else — for a response that
/// delivered something — the gateway's counts: the prompt, when the
/// upstream answered or generated anything, and the completion it streamed.
fn billable(outcome: &Outcome, prompt_tokens: u32) -> Tokens {
    if let Some(usage) = outcome.usage {
        return usage;
    }
    let answered = outcome.status < 400 && !outcome.partial;
    let generated = outcome.counted_completion > 0;
    Tokens {
        prompt: if answered || generated {
            prompt_tokens
        } else {
            0
        },
        completion: outcome.counted_completion,
        ..Tokens::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_bill_only_what_was_delivered() {
        let answered = Outcome {
            status: 200,
            counted_completion: 5,
            ..Outcome::default()
        };
        assert_eq!(billable(&answered, 10).total(), 15);
        let cut_before_anything = Outcome {
            status: CLIENT_CLOSED,
            partial: true,
            ..Outcome::default()
        };
        assert_eq!(billable(&cut_before_anything, 10).total(), 0);
        let cut_mid_stream = Outcome {
            status: 200,
            partial: true,
            counted_completion: 3,
            ..Outcome::default()
        };
        assert_eq!(billable(&cut_mid_stream, 10).total(), 13);
        let failed = Outcome {
            status: 502,
            ..Outcome::default()
        };
        assert_eq!(billable(&failed, 10).total(), 0);
        let reported = Outcome {
            status: 200,
            usage: Some(Tokens {
                prompt: 1,
                completion: 2,
                ..Tokens::default()
            }),
            counted_completion: 99,
            ..Outcome::default()
        };
        assert_eq!(billable(&reported, 10).total(), 3);
    }
}
