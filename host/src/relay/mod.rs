//! The relay: from a parsed, authorized request to the upstream and back. Plans
//! channels (router policy, else native), retries and fails over only before the
//! first byte reaches the client, rewrites the body only when it must (model
//! rename, asking the upstream for usage), and hands committed streams to
//! [`stream`]. It adds what it learns (the channel, the upstream model, phase
//! timings) to the request's context and returns how the request ended; the
//! accounting owner settles it.

pub mod channels;
pub mod coalesce;
pub mod sse;
pub mod stream;
mod top_level;
pub mod transcript;
pub mod upstream;

use std::borrow::Cow;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{HeaderMap, HeaderName, HeaderValue, Request, Response, StatusCode, header};
use http_body_util::{BodyExt, Full, Limited};

use crate::accounting::{Accounting, Outcome};
use crate::context::RequestContext;
use crate::error::ApiError;
use crate::facts::{X_API_KEY, X_REQUEST_ID};
use crate::metrics::UpstreamErrorLabels;
use crate::plugins::Offer;
use crate::protocol::Protocol;
use crate::server::body::{ResponseBody, boxed};
use crate::state::AppState;
use channels::Channel;

/// Hop-by-hop and framing headers: never passed on in either direction.
static HOP_BY_HOP: [HeaderName; 8] = [
    header::CONNECTION,
    HeaderName::from_static("keep-alive"),
    HeaderName::from_static("proxy-connection"),
    header::TE,
    header::TRAILER,
    header::TRANSFER_ENCODING,
    header::UPGRADE,
    header::CONTENT_LENGTH,
];

/// The client headers the OpenAI protocol forwards upstream. Everything else
/// a client sends stays at the gateway — its credentials, cookies, and headers
/// that choose what the operator's upstream key bills (`OpenAI-Organization`,
/// `OpenAI-Project`) — unless the channel's `forward_headers` names it. The
/// gateway sets `content-type`, `accept-encoding`, `x-request-id` and the
/// channel's credential and fixed headers itself.
static OPENAI_FORWARDED: [HeaderName; 2] = [header::ACCEPT, header::USER_AGENT];

/// Client headers never forwarded, whatever a channel's `forward_headers`
/// says (besides [`HOP_BY_HOP`]): credentials, cookies, the host, encoding
/// and h2c negotiation.
static NEVER_FORWARDED: [HeaderName; 8] = [
    header::HOST,
    header::PROXY_AUTHORIZATION,
    header::PROXY_AUTHENTICATE,
    header::AUTHORIZATION,
    X_API_KEY,
    header::COOKIE,
    header::ACCEPT_ENCODING,
    HeaderName::from_static("http2-settings"),
];

/// The fields the relay reads from a JSON request body.
#[derive(serde::Deserialize)]
struct Peek<'a> {
    #[serde(borrow, default)]
    model: Option<Cow<'a, str>>,
    #[serde(default)]
    stream: Option<bool>,
    /// Absent: `None`; `null`: `Some(None)`.
    #[serde(default, deserialize_with = "present")]
    stream_options: Option<Option<StreamOptions>>,
    #[serde(default)]
    max_tokens: Option<u64>,
    #[serde(default)]
    max_completion_tokens: Option<u64>,
}

/// Deserializes a field that is present (even as `null`) into `Some`.
fn present<'de, D, T>(deserializer: D) -> Result<Option<T>, D::Error>
where
    D: serde::Deserializer<'de>,
    T: serde::Deserialize<'de>,
{
    T::deserialize(deserializer).map(Some)
}

#[derive(serde::Deserialize)]
struct StreamOptions {
    #[serde(default)]
    include_usage: Option<bool>,
}

/// A validated request body.
pub struct Parsed {
    /// The original bytes.
    pub body: Bytes,
    /// The model asked for.
    pub model: String,
    /// Streamed?
    pub stream: bool,
    /// Whether `stream_options` is present at all (even as `null`).
    has_stream_options: bool,
    /// Whether the client asked for the usage chunk.
    pub include_usage: bool,
    /// The client's completion cap (`max_completion_tokens`, else `max_tokens`).
    pub cap: Option<u64>,
    /// The cap the metering sends upstream instead, and the field it goes in
    /// when the client set none.
    pub send_cap: Option<(u64, &'static str)>,
}

/// Parses the fields the gateway needs without re-serialising the body. A
/// body that repeats one of those fields is rewritten once with the last
/// value of each key (as JSON parsers commonly read it), so the upstream
/// never sees a duplicate the gateway read differently.
///
/// # Errors
/// 400 for malformed JSON (invalid UTF-8 among it, even inside a field the
/// gateway does not read, since the body may be forwarded as it arrived), a
/// non-object body, or ill-typed fields.
pub fn parse(body: Bytes) -> Result<Parsed, ApiError> {
    if body.trim_ascii_start().first() != Some(&b'{') {
        return Err(ApiError::bad_request(
            "We could not parse the JSON body of your request. The body must be a JSON object.",
            None,
        ));
    }
    if let Err(e) = std::str::from_utf8(&body) {
        return Err(ApiError::bad_request(
            format!(
                "We could not parse the JSON body of your request: it is not valid UTF-8 (at byte {}).",
                e.valid_up_to()
            ),
            None,
        ));
    }
    let unparsable = |e: serde_json::Error| {
        ApiError::bad_request(
            format!("We could not parse the JSON body of your request: {e}"),
            None,
        )
    };
    let parsed = match serde_json::from_slice::<Peek<'_>>(&body) {
        Ok(peek) => fields(peek)?,
        Err(e) if e.to_string().starts_with("duplicate field") => {
            let last_wins: serde_json::Map<String, serde_json::Value> =
                serde_json::from_slice(&body).map_err(unparsable)?;
            let rewritten =
                serde_json::to_vec(&last_wins).map_err(|e| ApiError::Internal(e.to_string()))?;
            return parse(Bytes::from(rewritten));
        }
        Err(e) => return Err(unparsable(e)),
    };
    Ok(Parsed { body, ..parsed })
}

/// The owned fields of a peek (with an empty body).
fn fields(peek: Peek<'_>) -> Result<Parsed, ApiError> {
    let model = match peek.model {
        Some(m) if !m.is_empty() => m.into_owned(),
        _ => {
            return Err(ApiError::bad_request(
                "you must provide a model parameter",
                Some("model"),
            ));
        }
    };
    let include_usage = peek
        .stream_options
        .as_ref()
        .and_then(|o| o.as_ref())
        .and_then(|o| o.include_usage)
        .unwrap_or(false);
    Ok(Parsed {
        body: Bytes::new(),
        model,
        stream: peek.stream.unwrap_or(false),
        has_stream_options: peek.stream_options.is_some(),
        include_usage,
        cap: peek.max_completion_tokens.or(peek.max_tokens),
        send_cap: None,
    })
}

/// The body to send upstream: the original bytes unless the model is renamed,
/// a stream must ask for usage, or the metering caps the completion.
pub(crate) fn upstream_body(parsed: &Parsed, upstream_model: &str) -> Result<Bytes, ApiError> {
    let rename = upstream_model != parsed.model;
    let need_usage = parsed.stream && !parsed.include_usage;
    if !rename && !need_usage && parsed.send_cap.is_none() {
        return Ok(parsed.body.clone());
    }
    if !rename && !parsed.has_stream_options && parsed.send_cap.is_none() {
        // Fast path: splice the option in after the opening brace.
        let at = parsed.body.iter().position(|b| *b == b'{').unwrap_or(0) + 1;
        let mut out = Vec::with_capacity(parsed.body.len() + 48);
        out.extend_from_slice(&parsed.body[..at]);
        out.extend_from_slice(b"\"stream_options\":{\"include_usage\":true},");
        out.extend_from_slice(&parsed.body[at..]);
        return Ok(Bytes::from(out));
    }
    let mut value: serde_json::Value = serde_json::from_slice(&parsed.body)
        .map_err(|e| ApiError::bad_request(e.to_string(), None))?;
    if rename {
        value["model"] = serde_json::Value::String(upstream_model.into());
    }
    if need_usage {
        let options = &mut value["stream_options"];
        if !options.is_object() {
            *options = serde_json::Value::Object(serde_json::Map::new());
        }
        options["include_usage"] = serde_json::Value::Bool(true);
    }
    if let Some((cap, field)) = parsed.send_cap {
        let mut capped = false;
        for name in ["max_completion_tokens", "max_tokens"] {
            if !value[name].is_null() {
                value[name] = cap.into();
                capped = true;
            }
        }
        if !capped {
            value[field] = cap.into();
        }
    }
    serde_json::to_vec(&value)
        .map(Bytes::from)
        .map_err(|e| ApiError::Internal(e.to_string()))
}

/// The ordered plan: `(channel, upstream model)` pairs.
async fn plan(
    state: &AppState,
    ctx: &RequestContext,
) -> Result<Vec<(Arc<Channel>, String)>, ApiError> {
    let model = ctx.model();
    let endpoint = ctx.endpoint.name();
    let serving: Vec<&Arc<Channel>> = state
        .channels
        .serving(model)
        .filter(|c| c.config.serves_endpoint(ctx.endpoint.served_as()))
        .collect();
    if serving.is_empty() {
        let message = if state.channels.serves(model) {
            format!("The model `{model}` is not served on {endpoint}.")
        } else {
            format!("The model `{model}` does not exist or you do not have access to it.")
        };
        return Err(ApiError::Client {
            status: StatusCode::NOT_FOUND,
            code: "model_not_found",
            param: Some("model"),
            message,
        });
    }
    let offers: Vec<Offer<'_>> = serving.iter().map(|c| c.offer(model)).collect();
    let steps: Vec<(Arc<Channel>, String)> = match state
        .policies
        .route(&ctx.policies, &ctx.facts, &offers)
        .await?
    {
        Some(picks) if picks.is_empty() => {
            let router = ctx.policies.router.as_ref().map_or("", |r| &r.info.name);
            return Err(ApiError::Upstream {
                status: StatusCode::SERVICE_UNAVAILABLE,
                code: "no_healthy_channel",
                message: format!(
                    "The routing policy `{router}` chose no channel for model `{model}`."
                ),
            });
        }
        Some(picks) => picks
            .into_iter()
            .map(|pick| {
                let model = pick
                    .model
                    .unwrap_or_else(|| offers[pick.offer].upstream_model.to_string());
                (serving[pick.offer].clone(), model)
            })
            .collect(),
        None => channels::native_plan(serving.into_iter())
            .into_iter()
            .map(|c| {
                let upstream = c.config.upstream_model(model).to_string();
                (c, upstream)
            })
            .collect(),
    };
    Ok(steps)
}

/// Why one attempt failed, and what it says about the channel.
struct AttemptFailure {
    kind: &'static str,
    error: ApiError,
    health: HealthSignal,
}

/// What a failed attempt says about the channel's health.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum HealthSignal {
    /// The upstream failed (unreachable, 5xx, a stream's head late, a 429
    /// without `retry-after`): counts toward the cooldown.
    Failure,
    /// The upstream asked for a pause (`429` with `retry-after`): the channel
    /// cools down for that long.
    Pause(Duration),
    /// Nothing about the upstream: a non-streamed answer's head comes only
    /// after the whole generation, so its lateness is the request's doing.
    Neutral,
}

/// The longest `retry-after` pause honoured.
const MAX_PAUSE: Duration = Duration::from_secs(300);

fn attempt_failure(
    kind: &'static str,
    status: StatusCode,
    message: String,
    health: HealthSignal,
) -> AttemptFailure {
    AttemptFailure {
        kind,
        error: ApiError::Upstream {
            status,
            code: kind,
            message,
        },
        health,
    }
}

/// A `retry-after` in seconds (the HTTP-date form is not honoured), capped.
fn retry_after(headers: &HeaderMap) -> Option<Duration> {
    let seconds: u64 = headers
        .get(header::RETRY_AFTER)?
        .to_str()
        .ok()?
        .trim()
        .parse()
        .ok()?;
    Some(Duration::from_secs(seconds).min(MAX_PAUSE))
}

/// The upstream request: the provider's URI and body, the forwarded client
/// headers, the gateway's own, the channel's credentials and fixed headers.
fn build_request(
    channel: &Channel,
    ctx: &RequestContext,
    upstream_model: &str,
    body: Bytes,
    headers: &HeaderMap,
) -> Result<Request<Bytes>, ApiError> {
    let endpoint_path = ctx
        .endpoint
        .upstream_path()
        .ok_or_else(|| ApiError::Internal(format!("{} is not relayed", ctx.endpoint.name())))?;
    let protocol = ctx.endpoint.protocol();
    let uri = channel
        .wire
        .uri(endpoint_path, upstream_model)
        .ok_or_else(|| {
            ApiError::Internal(format!(
                "channel {} has no URI for {endpoint_path} and model {upstream_model}",
                channel.config.id
            ))
        })?;
    let mut request = Request::new(body);
    *request.method_mut() = http::Method::POST;
    *request.uri_mut() = uri;
    let out = request.headers_mut();
    out.reserve(OPENAI_FORWARDED.len() + channel.config.headers.len() + 4);
    for (name, value) in headers {
        let allowed = OPENAI_FORWARDED.contains(name)
            || (channel.config.forwards(name.as_str())
                && !NEVER_FORWARDED.contains(name)
                && !HOP_BY_HOP.contains(name));
        if allowed {
            out.append(name, value.clone());
        }
    }
    out.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    out.insert(
        header::ACCEPT_ENCODING,
        HeaderValue::from_static("identity"),
    );
    if let Ok(id) = HeaderValue::from_str(ctx.request_id()) {
        out.insert(X_REQUEST_ID, id);
    }
    channel.wire.authenticate(protocol, headers, out);
    for (name, value) in &channel.config.headers {
        out.insert(name, value.clone());
    }
    Ok(request)
}

/// How a relayed request ended, for its accounting owner to settle.
pub enum Relayed {
    /// A complete response (an upstream answer, or the error a cut-short
    /// upstream body earned), and its outcome.
    Complete {
        /// The response for the client.
        response: Response<ResponseBody>,
        /// How it ended.
        outcome: Outcome,
    },
    /// A committed upstream stream, relayed event by event once the accounting
    /// owner hands itself to it.
    Stream(Committed),
}

/// An upstream stream whose head arrived: the client's response head, and the
/// body still to relay.
pub struct Committed {
    head: http::response::Parts,
    body: upstream::UpstreamBody,
    in_flight: channels::InFlight,
    events: crate::provider::Events,
    settings: stream::StreamSettings,
}

impl Committed {
    /// The response headers, for the door's own (request id, timings).
    pub fn headers_mut(&mut self) -> &mut HeaderMap {
        &mut self.head.headers
    }

    /// The client's response: the stream, owning the request's accounting.
    pub fn into_response(self, accounting: Accounting) -> Response<ResponseBody> {
        let status = self.head.status.as_u16();
        let upstream = stream::Upstream {
            body: self.body,
            events: self.events,
            in_flight: self.in_flight,
        };
        let body = stream::RelayStream::new(upstream, accounting, self.settings, status);
        Response::from_parts(self.head, boxed(coalesce::Coalesce::new(body)))
    }
}

/// Relays one parsed request through its plan, adding the channel, upstream
/// model and phase timings to `ctx`.
///
/// # Errors
/// Routing refusals, or the last upstream failure when every attempt failed.
pub async fn relay(
    state: &AppState,
    ctx: &mut RequestContext,
    parsed: &Parsed,
    headers: &HeaderMap,
) -> Result<Relayed, ApiError> {
    let routed = Instant::now();
    let steps = plan(state, ctx).await?;
    ctx.time("route", routed);
    let protocol = ctx.endpoint.protocol();
    let cfg = &state.config.upstream;
    // The error of the last attempt; with nothing to try, no channel could serve.
    let mut last = ApiError::Upstream {
        status: StatusCode::SERVICE_UNAVAILABLE,
        code: "no_healthy_channel",
        message: format!(
            "No healthy upstream channel can serve model `{}` right now.",
            ctx.model()
        ),
    };
    for (attempt, (channel, upstream_model)) in steps.into_iter().take(cfg.max_attempts).enumerate()
    {
        if attempt > 0 {
            state.metrics.upstream_retries.inc();
        }
        if !channel.has_capacity() {
            last = attempt_failure(
                "channel_busy",
                StatusCode::SERVICE_UNAVAILABLE,
                format!("Channel {} is at its concurrency limit.", channel.config.id),
                HealthSignal::Neutral,
            )
            .error;
            continue;
        }
        let body = match upstream_body(parsed, &upstream_model).and_then(|body| {
            channel
                .wire
                .request_body(protocol, body, ctx.meter.max_tokens)
        }) {
            Ok(body) => body,
            // What one provider cannot express, another channel may serve.
            Err(error) => {
                last = error;
                continue;
            }
        };
        let request = build_request(&channel, ctx, &upstream_model, body, headers)?;
        let in_flight = channel.enter();
        let sent = Instant::now();
        let failure = match tokio::time::timeout(
            cfg.first_byte_timeout,
            state.upstream.request(request),
        )
        .await
        {
            Err(_) => attempt_failure(
                "upstream_timeout",
                StatusCode::GATEWAY_TIMEOUT,
                "The upstream did not answer in time.".into(),
                if parsed.stream {
                    HealthSignal::Failure
                } else {
                    HealthSignal::Neutral
                },
            ),
            Ok(Err(e)) => {
                tracing::warn!(channel = %channel.config.id, error = %e, "upstream request failed");
                attempt_failure(
                    "upstream_unavailable",
                    StatusCode::BAD_GATEWAY,
                    "The upstream could not be reached.".into(),
                    HealthSignal::Failure,
                )
            }
            Ok(Ok(response)) if response.status() == StatusCode::TOO_MANY_REQUESTS => {
                attempt_failure(
                    "upstream_overloaded",
                    StatusCode::SERVICE_UNAVAILABLE,
                    "The upstream is rate limiting the gateway.".into(),
                    retry_after(response.headers())
                        .map_or(HealthSignal::Failure, HealthSignal::Pause),
                )
            }
            Ok(Ok(response)) if response.status().is_server_error() => attempt_failure(
                "upstream_error",
                StatusCode::BAD_GATEWAY,
                format!(
                    "The upstream failed with status {}.",
                    response.status().as_u16()
                ),
                HealthSignal::Failure,
            ),
            Ok(Ok(response)) => {
                channel.succeeded(sent.elapsed());
                ctx.time("upstream", sent);
                ctx.channel_id.clone_from(&channel.config.id);
                ctx.upstream_model = upstream_model;
                return Ok(respond(
                    state,
                    parsed,
                    ctx,
                    response,
                    Answer {
                        channel: &channel,
                        in_flight,
                    },
                )
                .await);
            }
        };
        drop(in_flight);
        state
            .metrics
            .upstream_errors
            .get_or_create(&UpstreamErrorLabels {
                channel: channel.config.id.clone(),
                kind: failure.kind.into(),
            })
            .inc();
        match failure.health {
            HealthSignal::Failure => {
                channel.failed(cfg.failures_to_cooldown, cfg.cooldown);
            }
            HealthSignal::Pause(pause) => channel.pause(pause),
            HealthSignal::Neutral => {}
        }
        ctx.channel_id.clone_from(&channel.config.id);
        last = failure.error;
    }
    Err(last)
}

/// The channel that answered, and its hold on it.
struct Answer<'a> {
    channel: &'a Channel,
    in_flight: channels::InFlight,
}

/// Builds the client response from a committed upstream response: a stream
/// to relay, or the whole body read, put in OpenAI's shape and its usage taken.
async fn respond(
    state: &AppState,
    parsed: &Parsed,
    ctx: &RequestContext,
    response: Response<upstream::UpstreamBody>,
    answer: Answer<'_>,
) -> Relayed {
    let Answer { channel, in_flight } = answer;
    let encoding = ctx.meter.encoding;
    let protocol = ctx.endpoint.protocol();
    let (mut head, body) = response.into_parts();
    let status = head.status;
    // Upstream cookies are not the client's business either.
    for name in HOP_BY_HOP.iter().chain([&header::SET_COOKIE]) {
        head.headers.remove(name);
    }
    let is_sse = head
        .headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("text/event-stream"));
    if parsed.stream && status.is_success() && is_sse {
        return Relayed::Stream(Committed {
            head,
            body,
            in_flight,
            events: channel.wire.events(protocol),
            settings: stream::StreamSettings {
                cut_off: state.cut_off.clone(),
                idle_timeout: state.config.upstream.idle_timeout,
                show_usage: parsed.include_usage,
                max_event_bytes: state.config.upstream.max_event_bytes,
                capture: state.config.log.content,
                protocol,
                encoding,
                count_budget: state.config.metering.max_counted_bytes,
            },
        });
    }
    let limit = state.config.upstream.max_response_bytes;
    let collected = Limited::new(body, limit).collect().await;
    drop(in_flight);
    let mut outcome = Outcome {
        status: status.as_u16(),
        ..Outcome::default()
    };
    let bytes = match collected {
        Ok(c) => channel
            .wire
            .response_body(protocol, status.as_u16(), c.to_bytes()),
        Err(e) => {
            let error = if e.is::<http_body_util::LengthLimitError>() {
                tracing::warn!(limit, "upstream body over upstream.max_response_bytes");
                ApiError::Upstream {
                    status: StatusCode::BAD_GATEWAY,
                    code: "upstream_response_too_large",
                    message: format!(
                        "The upstream response exceeds the gateway's limit of {limit} bytes."
                    ),
                }
            } else {
                tracing::warn!(error = %e, "upstream body failed");
                ApiError::Upstream {
                    status: StatusCode::BAD_GATEWAY,
                    code: "upstream_stream_error",
                    message: "The upstream response was cut short.".into(),
                }
            };
            // The client gets the error's status, and so does the record.
            let outcome = Outcome {
                partial: true,
                ..Outcome::failed(&error)
            };
            let response = error.into_response().map(boxed);
            return Relayed::Complete { response, outcome };
        }
    };
    outcome.usage = usage_of(protocol, &bytes);
    if outcome.usage.is_none() && status.is_success() {
        outcome.counted_completion =
            transcript::count_body(&bytes, encoding, state.config.metering.max_counted_bytes);
    }
    if !status.is_success() {
        outcome.error_kind = Some(format!("upstream_status_{}", status.as_u16()));
    }
    if state.config.log.content && protocol == Protocol::OpenAi {
        outcome.completion = serde_json::from_slice::<serde_json::Value>(&bytes)
            .ok()
            .and_then(|v| {
                v["choices"][0]["message"]["content"]
                    .as_str()
                    .or_else(|| v["choices"][0]["text"].as_str())
                    .map(String::from)
            });
    }
    let response = Response::from_parts(head, boxed(Full::new(bytes)));
    Relayed::Complete { response, outcome }
}

/// The usage a whole response body reports, in its protocol's shape.
fn usage_of(protocol: Protocol, body: &[u8]) -> Option<crate::metering::Tokens> {
    match protocol {
        Protocol::OpenAi => top_level::field::<Option<_>>(body, "usage").flatten(),
        Protocol::Anthropic => {
            let body: serde_json::Value = serde_json::from_slice(body).ok()?;
            crate::provider::anthropic::tokens(&body["usage"])
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parsed(body: &'static str) -> Result<Parsed, ApiError> {
        parse(Bytes::from_static(body.as_bytes()))
    }

    #[test]
    fn rejects_bad_bodies() {
        assert!(
            matches!(parsed("[1]"), Err(ApiError::Client { status, .. }) if status == StatusCode::BAD_REQUEST)
        );
        assert!(matches!(
            parsed("{\"model\": 3}"),
            Err(ApiError::Client { .. })
        ));
        assert!(matches!(
            parsed("{\"model\": \"m\", \"stream\": \"yes\"}"),
            Err(ApiError::Client { .. })
        ));
        assert!(matches!(
            parsed("{\"messages\": []}"),
            Err(ApiError::Client {
                param: Some("model"),
                ..
            })
        ));
        assert!(matches!(
            parsed("{\"model\": \"m\""),
            Err(ApiError::Client { .. })
        ));
        // Found by the body_rewrite fuzz target: invalid UTF-8 in a field the
        // gateway skips used to pass, and be forwarded as it arrived.
        let latin1 = parse(Bytes::from_static(
            b"{\"model\": \"m\", \"t\": \"\xd1hi\", \"stream\": true}",
        ));
        assert!(
            matches!(&latin1, Err(ApiError::Client { message, .. }) if message.contains("not valid UTF-8")),
            "{:?}",
            latin1.err()
        );
    }

    #[test]
    fn rewrites_only_when_needed() -> Result<(), ApiError> {
        let plain = parsed("{\"model\":\"m\",\"stream\":false}")?;
        assert_eq!(upstream_body(&plain, "m")?, plain.body);
        let stream = parsed(" {\"model\":\"m\",\"stream\":true}")?;
        let spliced: serde_json::Value = serde_json::from_slice(&upstream_body(&stream, "m")?)
            .map_err(|e| ApiError::Internal(e.to_string()))?;
        assert_eq!(spliced["stream_options"]["include_usage"], true);
        assert_eq!(spliced["model"], "m");
        let renamed: serde_json::Value = serde_json::from_slice(&upstream_body(&stream, "up")?)
            .map_err(|e| ApiError::Internal(e.to_string()))?;
        assert_eq!(renamed["model"], "up");
        assert_eq!(renamed["stream_options"]["include_usage"], true);
        let asked = parsed(
            "{\"model\":\"m\",\"stream\":true,\"stream_options\":{\"include_usage\":true}}",
        )?;
        assert_eq!(upstream_body(&asked, "m")?, asked.body);
        Ok(())
    }

    /// However a client writes `stream_options`, a stream's upstream body
    /// holds exactly one, asking for usage, and keeps the client's other options.
    #[test]
    fn streams_ask_for_usage_exactly_once() -> Result<(), ApiError> {
        let bodies = [
            r#"{"model":"m","stream":true,"stream_options":null}"#,
            r#"{"model":"m","stream":true,"stream_options":{}}"#,
            r#"{"model":"m","stream":true,"stream_options":{"include_usage":false}}"#,
            r#"{"model":"m","stream":true,"stream_options":{"include_usage":null,"x":1}}"#,
            r#"{"model":"m","stream":true,"stream_options":{"include_usage":true},"stream_options":null}"#,
            r#"{"model":"m","stream_options":null,"stream":true,"stream_options":{"include_usage":false}}"#,
            r#"{"model":"m","stream":false,"stream":true}"#,
        ];
        for text in bodies {
            let parsed = parse(Bytes::from_static(text.as_bytes()))?;
            assert!(parsed.stream, "{text}");
            let sent = upstream_body(&parsed, "m")?;
            let raw = String::from_utf8_lossy(&sent);
            assert_eq!(
                raw.matches("\"stream_options\"").count(),
                1,
                "{text} -> {raw}"
            );
            let value: serde_json::Value =
                serde_json::from_slice(&sent).map_err(|e| ApiError::Internal(e.to_string()))?;
            assert_eq!(
                value["stream_options"]["include_usage"], true,
                "{text} -> {raw}"
            );
            if text.contains("\"x\":1") {
                assert_eq!(value["stream_options"]["x"], 1, "{raw}");
            }
        }
        Ok(())
    }
}
