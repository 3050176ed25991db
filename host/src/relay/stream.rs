//! The streaming response body: forwards upstream SSE events one frame per
//! event as they arrive, taps usage without a wasm call per chunk, hides the
//! usage-only chunk and the per-chunk `"usage":null` from clients that did not
//! ask for usage, enforces the
//! between-chunk idle timeout, turns upstream failures after the first byte
//! into an SSE error event, and settles the request's accounting when the
//! stream ends — or, through `Drop`, when the client abandoned it or the
//! shutdown cut it off (which also cancels the upstream request). Events that
//! are available together are merged into one write by [`super::coalesce`].

use std::collections::VecDeque;
use std::convert::Infallible;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body::{Body, Frame};
use tokio::time::Sleep;

use super::channels::InFlight;
use super::sse::{self, SseFramer};
use super::transcript::Transcript;
use super::upstream::UpstreamBody;
use crate::accounting::{Accounting, Outcome};
use crate::protocol::Protocol;
use crate::provider::Events;
use crate::provider::anthropic_stream::UsageTap;
use tokio_util::sync::{CancellationToken, WaitForCancellationFutureOwned};

/// What a stream needs from the configuration and the request.
#[derive(Debug, Clone)]
pub struct StreamSettings {
    /// Cancelled when the shutdown grace period is over.
    pub cut_off: CancellationToken,
    /// The longest the upstream may stay silent between chunks.
    pub idle_timeout: Duration,
    /// The client asked for the usage chunk.
    pub show_usage: bool,
    /// Largest single event relayed (`upstream.max_event_bytes`).
    pub max_event_bytes: usize,
    /// Capture the completion text (content logging).
    pub capture: bool,
    /// The tokenizer that counts the completion when no usage arrives.
    pub encoding: sluice_meter::Encoding,
    /// Bytes of events kept for that count (`metering.max_counted_kib`).
    pub count_budget: usize,
    /// The client's protocol: where the usage is and how an error reads.
    pub protocol: Protocol,
}

/// What a stream that the shutdown cut off tells its client, last.
const CUT_OFF_MESSAGE: &str =
    "The gateway is shutting down: this stream was cut at the end of its grace period.";

/// The request's accounting, and its hold on the channel, until the stream ends.
struct Pending {
    accounting: Accounting,
    _in_flight: InFlight,
}

/// The upstream side of a stream: its body, the translator of its events
/// into the client's protocol, and the hold on its channel.
pub struct Upstream {
    /// The upstream response body.
    pub body: UpstreamBody,
    /// The translator of its events into the client's protocol.
    pub events: Events,
    /// The channel's in-flight count, held until the stream ends.
    pub in_flight: InFlight,
}

/// The relayed SSE stream.
pub struct RelayStream {
    upstream: UpstreamBody,
    events: Events,
    framer: SseFramer,
    ready: VecDeque<Bytes>,
    framed: Vec<Bytes>,
    scratch: Vec<Bytes>,
    idle: Pin<Box<Sleep>>,
    idle_timeout: Duration,
    cut_off: Pin<Box<WaitForCancellationFutureOwned>>,
    last_data: tokio::time::Instant,
    show_usage: bool,
    /// `Some` for an Anthropic client: its usage is read from its events.
    messages_tap: Option<UsageTap>,
    capture: Option<String>,
    transcript: Transcript,
    encoding: sluice_meter::Encoding,
    outcome: Outcome,
    started: Instant,
    ended: bool,
    pending: Option<Pending>,
}

impl RelayStream {
    /// Wraps an upstream body; the stream settles `accounting` when it ends.
    pub fn new(
        upstream: Upstream,
        accounting: Accounting,
        settings: StreamSettings,
        status: u16,
    ) -> Self {
        let Upstream {
            body: upstream,
            events,
            in_flight,
        } = upstream;
        let StreamSettings {
            cut_off,
            idle_timeout,
            show_usage,
            max_event_bytes,
            capture,
            encoding,
            count_budget,
            protocol,
        } = settings;
        Self {
            upstream,
            events,
            framer: SseFramer::new(max_event_bytes),
            ready: VecDeque::new(),
            framed: Vec::new(),
            scratch: Vec::new(),
            idle: Box::pin(tokio::time::sleep(idle_timeout)),
            idle_timeout,
            cut_off: Box::pin(cut_off.cancelled_owned()),
            last_data: tokio::time::Instant::now(),
            show_usage,
            messages_tap: (protocol == Protocol::Anthropic).then(UsageTap::default),
            capture: capture.then(String::new),
            transcript: Transcript::new(count_budget),
            encoding,
            started: accounting.ctx().started,
            outcome: Outcome {
                status,
                ..Outcome::default()
            },
            ended: false,
            pending: Some(Pending {
                accounting,
                _in_flight: in_flight,
            }),
        }
    }

    /// Translates the framed upstream events into OpenAI chunks and queues
    /// them; an error event from the upstream fails the stream.
    fn take_events(&mut self) {
        for event in self.framed.drain(..) {
            self.events.push(event, &mut self.scratch);
        }
        if let Some(tap) = &mut self.messages_tap {
            for event in self.scratch.drain(..) {
                let seen = tap.inspect(&event);
                if seen.usage.is_some() {
                    self.outcome.usage = seen.usage;
                }
                if seen.content && self.outcome.ttft.is_none() {
                    self.outcome.ttft = Some(self.started.elapsed());
                }
                self.ready.push_back(event);
            }
        }
        for event in self.scratch.drain(..) {
            let info = sse::inspect(&event);
            if let Some(u) = info.usage {
                self.outcome.usage = Some(u);
            }
            if !info.done && !info.usage_only {
                self.transcript.push(&event);
                if self.outcome.ttft.is_none() {
                    self.outcome.ttft = Some(self.started.elapsed());
                }
                if let Some(text) = self.capture.as_mut() {
                    append_delta_content(text, &event);
                }
            }
            if self.show_usage {
                self.ready.push_back(event);
            } else if let Some(span) = info.null_usage {
                self.ready.push_back(sse::without(&event, span));
            } else if !info.usage_only {
                self.ready.push_back(event);
            }
        }
        if let Some(error) = self.events.take_error() {
            tracing::warn!(kind = %error.kind, message = %error.message, "upstream error event mid-stream");
            self.fail("upstream_stream_error", &error.message);
        }
    }

    fn fail(&mut self, kind: &str, message: &str) {
        self.outcome.partial = true;
        self.outcome.error_kind = Some(kind.into());
        let event = if self.messages_tap.is_some() {
            let body = crate::protocol::anthropic_error(500, message);
            format!("event: error\ndata: {body}\n\n")
        } else {
            let body = serde_json::json!({"error": {"message": message, "type": "api_error", "param": null, "code": kind}});
            format!("data: {body}\n\n")
        };
        self.ready.push_back(Bytes::from(event));
        self.ended = true;
    }

    /// Whether the upstream has been silent for the idle timeout. The timer is
    /// re-armed lazily from the last data's time, not reset on every chunk.
    fn idle_expired(&mut self, cx: &mut Context<'_>) -> bool {
        while self.idle.as_mut().poll(cx).is_ready() {
            let due = self.last_data + self.idle_timeout;
            if tokio::time::Instant::now() >= due {
                return true;
            }
            self.idle.as_mut().reset(due);
        }
        false
    }

    /// The outcome so far, with the captured completion text, and the
    /// completion counted from the events when no usage arrived.
    fn take_outcome(&mut self) -> Outcome {
        let mut outcome = std::mem::take(&mut self.outcome);
        outcome.completion = self.capture.take();
        if outcome.usage.is_none() {
            outcome.counted_completion = self.transcript.count(self.encoding);
        }
        outcome
    }
}

/// Appends `choices[].delta.content` (or `text`) of a chunk, for content logging.
fn append_delta_content(out: &mut String, event: &[u8]) {
    let Some(data) = event.strip_prefix(b"data: ") else {
        return;
    };
    let Ok(chunk) = serde_json::from_slice::<serde_json::Value>(data.trim_ascii()) else {
        return;
    };
    for choice in chunk["choices"].as_array().into_iter().flatten() {
        if let Some(text) = choice["delta"]["content"]
            .as_str()
            .or_else(|| choice["text"].as_str())
        {
            out.push_str(text);
        }
    }
}

impl Body for RelayStream {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        let this = &mut *self;
        loop {
            if let Some(event) = this.ready.pop_front() {
                return Poll::Ready(Some(Ok(Frame::data(event))));
            }
            if this.ended {
                if let Some(p) = this.pending.take() {
                    p.accounting.settle(this.take_outcome());
                }
                return Poll::Ready(None);
            }
            match Pin::new(&mut this.upstream).poll_frame(cx) {
                Poll::Ready(Some(Ok(frame))) => {
                    this.last_data = tokio::time::Instant::now();
                    let Ok(data) = frame.into_data() else {
                        continue;
                    };
                    if this.framer.push(data, &mut this.framed).is_err() {
                        this.fail(
                            "upstream_event_too_large",
                            "The upstream sent an event larger than the gateway accepts.",
                        );
                        continue;
                    }
                    this.take_events();
                }
                Poll::Ready(Some(Err(e))) => {
                    tracing::warn!(error = %e, "upstream stream failed after the first byte");
                    this.fail(
                        "upstream_stream_error",
                        "The upstream connection failed mid-stream.",
                    );
                }
                Poll::Ready(None) => {
                    this.framed.extend(this.framer.finish());
                    this.take_events();
                    this.ended = true;
                }
                Poll::Pending => {
                    if this.cut_off.as_mut().poll(cx).is_ready() {
                        this.fail("shutdown", CUT_OFF_MESSAGE);
                        continue;
                    }
                    if this.idle_expired(cx) {
                        this.fail(
                            "upstream_idle_timeout",
                            "The upstream stalled between chunks for longer than the idle timeout.",
                        );
                        continue;
                    }
                    return Poll::Pending;
                }
            }
        }
    }
}

impl Drop for RelayStream {
    /// A stream dropped before its end: the client left, or the shutdown cut
    /// it off. What was delivered is accounted as partial.
    fn drop(&mut self) {
        if let Some(p) = self.pending.take() {
            p.accounting.abandon(self.take_outcome());
        }
    }
}
