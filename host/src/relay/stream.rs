//! The streaming response body: forwards upstream SSE events one frame per
//! event as they arrive, taps usage without a wasm call per chunk, hides the
//! usage-only chunk and the per-chunk `"usage":null` from clients that did not
//! ask for usage, enforces the
//! between-chunk idle timeout, turns upstream failures after the first byte
//! into an SSE error event, and — through `Drop` — accounts for streams the
//! client abandoned (which also cancels the upstream request). Events that are
//! available together are merged into one write by [`super::coalesce`].

use std::collections::VecDeque;
use std::convert::Infallible;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body::{Body, Frame};
use hyper::body::Incoming;
use tokio::time::Sleep;

use super::channels::InFlight;
use super::sse::{self, SseFramer};
use crate::app::AppState;
use crate::usage::{self, Draft, Outcome};

/// Accounting that must happen exactly once, however the stream ends.
struct Pending {
    state: Arc<AppState>,
    draft: Draft,
    _in_flight: InFlight,
}

/// The relayed SSE stream.
pub struct RelayStream {
    upstream: Incoming,
    framer: SseFramer,
    ready: VecDeque<Bytes>,
    scratch: Vec<Bytes>,
    idle: Pin<Box<Sleep>>,
    idle_timeout: Duration,
    last_data: tokio::time::Instant,
    show_usage: bool,
    capture: Option<String>,
    outcome: Outcome,
    started: Instant,
    ended: bool,
    pending: Option<Pending>,
}

impl RelayStream {
    /// Wraps an upstream body. `show_usage`: the client asked for the usage chunk.
    pub fn new(
        upstream: Incoming,
        state: Arc<AppState>,
        draft: Draft,
        in_flight: InFlight,
        show_usage: bool,
        status: u16,
    ) -> Self {
        let idle_timeout = state.config.upstream.idle_timeout;
        let capture = state.config.log.content.then(String::new);
        Self {
            upstream,
            framer: SseFramer::default(),
            ready: VecDeque::new(),
            scratch: Vec::new(),
            idle: Box::pin(tokio::time::sleep(idle_timeout)),
            idle_timeout,
            last_data: tokio::time::Instant::now(),
            show_usage,
            capture,
            started: draft.started,
            outcome: Outcome {
                status,
                ..Outcome::default()
            },
            ended: false,
            pending: Some(Pending {
                state,
                draft,
                _in_flight: in_flight,
            }),
        }
    }

    fn take_events(&mut self) {
        for event in self.scratch.drain(..) {
            let info = sse::inspect(&event);
            if let Some(u) = info.usage {
                self.outcome.usage = Some(u);
            }
            if !info.done && !info.usage_only {
                self.outcome.completion_estimate += 1;
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
    }

    fn fail(&mut self, kind: &str, message: &str) {
        self.outcome.partial = true;
        self.outcome.error_kind = Some(kind.into());
        let body = serde_json::json!({"error": {"message": message, "type": "api_error", "param": null, "code": kind}});
        self.ready
            .push_back(Bytes::from(format!("data: {body}\n\n")));
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

    fn account(&mut self) {
        if let Some(p) = self.pending.take() {
            let mut outcome = std::mem::take(&mut self.outcome);
            outcome.completion = self.capture.take();
            usage::finish(&p.state, p.draft, outcome);
        }
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
                this.account();
                return Poll::Ready(None);
            }
            match Pin::new(&mut this.upstream).poll_frame(cx) {
                Poll::Ready(Some(Ok(frame))) => {
                    this.last_data = tokio::time::Instant::now();
                    let Ok(data) = frame.into_data() else {
                        continue;
                    };
                    if this.framer.push(data, &mut this.scratch).is_err() {
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
                    this.scratch.extend(this.framer.finish());
                    this.take_events();
                    this.ended = true;
                }
                Poll::Pending => {
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
    fn drop(&mut self) {
        if self.pending.is_some() {
            self.outcome.partial = true;
            self.outcome
                .error_kind
                .get_or_insert_with(|| "client_disconnected".into());
            self.account();
        }
    }
}
