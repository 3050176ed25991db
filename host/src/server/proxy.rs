//! The client-facing API, in the documented phase order. The door builds the
//! request's context (id, peer, client IP, endpoint, the head's facts); a
//! relayed endpoint then reads and parses the body, resolves the key and is
//! admitted with its accounting owner; the auth chain runs; the relay routes
//! and forwards; the owner settles (at once, or when the stream ends).
//! Every response gets `x-request-id`, `x-response-time` and `server-timing`.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{HeaderMap, HeaderName, HeaderValue, Method, Request, Response, StatusCode};
use http_body::Body;

use super::body::{ResponseBody, boxed, json};
use super::caller;
use super::intake::{self, BodyLimits};
use crate::accounting::{Accounting, Outcome};
use crate::context::RequestContext;
use crate::endpoint::Endpoint;
use crate::error::ApiError;
use crate::facts::{RequestFacts, X_REQUEST_ID};
use crate::metrics::ShedLabels;
use crate::relay::{self, Parsed, Relayed};
use crate::state::AppState;

const X_RESPONSE_TIME: HeaderName = HeaderName::from_static("x-response-time");
const SERVER_TIMING: HeaderName = HeaderName::from_static("server-timing");

/// Handles one request on the client-facing listener.
pub async fn handle<B>(
    state: &Arc<AppState>,
    req: Request<B>,
    peer: SocketAddr,
) -> Response<ResponseBody>
where
    B: Body<Data = Bytes>,
    B::Error: std::error::Error + Send + Sync + 'static,
{
    let started = Instant::now();
    let endpoint = Endpoint::of_path(req.uri().path());
    let mut ctx = door(state, started, peer, endpoint, req.headers());
    let response = if endpoint.upstream_path().is_some() {
        relayed(state, ctx, req).await
    } else if endpoint == Endpoint::CountTokens {
        let answer = super::count_tokens::answer(state, &mut ctx, req).await;
        finished(&ctx, answer)
    } else {
        let answer = answered(state, &ctx, &req).await;
        finished(&ctx, answer)
    };
    state
        .metrics
        .observe_latency(endpoint.name(), started.elapsed().as_secs_f64());
    response
}

/// The context a request's head gives.
fn door(
    state: &AppState,
    started: Instant,
    peer: SocketAddr,
    endpoint: Endpoint,
    headers: &HeaderMap,
) -> RequestContext {
    let request_id = headers
        .get(X_REQUEST_ID)
        .and_then(|v| v.to_str().ok())
        .filter(|v| !v.is_empty() && v.len() <= 128 && v.bytes().all(|b| b.is_ascii_graphic()))
        .map_or_else(super::request_id::new, String::from);
    let client_ip =
        super::client_ip::resolve(peer.ip(), headers, &state.config.server.trusted_proxies);
    let facts = RequestFacts::from_head(
        request_id,
        (endpoint.name(), endpoint.protocol()),
        client_ip,
        headers,
        &state.config.plugins.headers,
    );
    RequestContext::new(
        started,
        peer,
        endpoint,
        facts,
        state.policies.snapshot(),
        state.config.metering.default,
    )
}

/// The endpoints the gateway answers itself: health, models, unknown paths.
async fn answered<B>(
    state: &AppState,
    ctx: &RequestContext,
    req: &Request<B>,
) -> Result<Response<ResponseBody>, ApiError> {
    let method = req.method();
    match ctx.endpoint {
        Endpoint::Health => Ok(json(StatusCode::OK, &serde_json::json!({"status": "ok"}))),
        Endpoint::Models => {
            caller::require(method, &Method::GET)?;
            let id = req
                .uri()
                .path()
                .strip_prefix("/v1/models/")
                .filter(|id| !id.is_empty());
            models(state, ctx, req.headers(), id).await
        }
        _ => Err(ApiError::Client {
            status: StatusCode::NOT_FOUND,
            code: "unknown_url",
            param: None,
            message: format!("Invalid URL ({method} {})", req.uri().path()),
        }),
    }
}

/// A relayed endpoint: body, key, admission, auth, relay, settlement.
async fn relayed<B>(
    state: &Arc<AppState>,
    mut ctx: RequestContext,
    req: Request<B>,
) -> Response<ResponseBody>
where
    B: Body<Data = Bytes>,
    B::Error: std::error::Error + Send + Sync + 'static,
{
    let limits = BodyLimits::of(&state.config.server);
    let admitted = caller::require(req.method(), &Method::POST)
        .and_then(|()| intake::check_declared(req.headers(), &limits));
    if let Err(error) = admitted {
        return finished(&ctx, Err(error));
    }
    let (parts, body) = req.into_parts();
    let auth_started = Instant::now();
    ctx.key = match caller::lookup_key(state, &parts.headers).await {
        Ok(key) => key,
        Err(error) => return finished(&ctx, Err(error)),
    };
    let mut accounting = Accounting::admit(state, ctx).await;
    match phases(
        state,
        &mut accounting,
        body,
        &parts.headers,
        &limits,
        auth_started,
    )
    .await
    {
        Ok(Relayed::Complete { response, outcome }) => {
            let response = finished(accounting.ctx(), Ok(response));
            accounting.settle(outcome);
            response
        }
        Ok(Relayed::Stream(mut committed)) => {
            stamp(committed.headers_mut(), accounting.ctx());
            committed.into_response(accounting)
        }
        Err(error) => {
            if let ApiError::Overloaded { what } = &error {
                state
                    .metrics
                    .shed
                    .get_or_create(&ShedLabels { reason: what })
                    .inc();
            }
            let outcome = Outcome::failed(&error);
            let response = finished(accounting.ctx(), Err(error));
            accounting.settle(outcome);
            response
        }
    }
}

/// Refuses, from the head alone, what the built-in key auth would refuse
/// whatever the body says (a missing or unknown key), and a keyed request
/// that found the usage queue full: it is shed rather than served unrecorded.
fn admission(state: &AppState, accounting: &Accounting) -> Result<(), ApiError> {
    if !accounting.has_queue_place() {
        return Err(ApiError::Overloaded {
            what: "usage queue",
        });
    }
    caller::require_key(state, accounting.ctx().key.as_ref())
}

/// Records the body in the context (content when logged, model and stream
/// flag) and parses it. A malformed body is reported only
/// after auth, as OpenAI does; auth then sees an empty model.
fn body_facts(
    state: &AppState,
    ctx: &mut RequestContext,
    bytes: Bytes,
) -> Result<Parsed, ApiError> {
    ctx.prompt = state
        .config
        .log
        .content
        .then(|| String::from_utf8_lossy(&bytes).into_owned());
    let mut parsed = relay::parse(bytes);
    if let Ok(p) = &mut parsed {
        // Anthropic's streams always carry their usage: nothing to ask for.
        p.include_usage |= ctx.endpoint.protocol() == crate::protocol::Protocol::Anthropic;
        ctx.set_body_facts(&p.model, p.stream);
        ctx.meter = state.config.metering.model(&p.model);
    }
    parsed
}

/// The phases after admission: the head's checks (a missing or unknown key
/// is refused before any byte of the body is read), the body, the auth
/// chain, the reservation, then the relay.
async fn phases<B>(
    state: &AppState,
    accounting: &mut Accounting,
    body: B,
    headers: &HeaderMap,
    limits: &BodyLimits,
    auth_started: Instant,
) -> Result<Relayed, ApiError>
where
    B: Body<Data = Bytes>,
    B::Error: std::error::Error + Send + Sync + 'static,
{
    admission(state, accounting)?;
    // The hold keeps the body's share of the memory budget until the relay
    // has sent it.
    let (bytes, _hold) = intake::read_body(body, limits, &state.body_budget).await?;
    let ctx = accounting.ctx_mut();
    let parsed = body_facts(state, ctx, bytes);
    ctx.labels = state
        .policies
        .authorize(&ctx.policies, &ctx.facts, ctx.key.as_ref())
        .await?;
    ctx.time("auth", auth_started);
    let mut parsed = parsed?;
    let metered = Instant::now();
    accounting.count_prompt(&parsed.body).await;
    parsed.send_cap = accounting.reserve(parsed.cap).inspect_err(|_| {
        state.metrics.quota_refusals.inc();
    })?;
    let ctx = accounting.ctx_mut();
    ctx.time("meter", metered);
    #[cfg(test)]
    failpoint(headers, "relay");
    relay::relay(state, ctx, &parsed, headers).await
}

/// Test-only: panics inside a phase when the request names it, so tests show
/// the accounting owner settles a request a panic ended.
#[cfg(test)]
#[allow(clippy::panic)]
fn failpoint(headers: &HeaderMap, phase: &str) {
    if headers
        .get("x-sluice-test-panic")
        .is_some_and(|v| v.as_bytes() == phase.as_bytes())
    {
        panic!("test failpoint in phase {phase}");
    }
}

/// The response for a result, with the door's headers; failures the operator
/// must see are logged.
fn finished(
    ctx: &RequestContext,
    result: Result<Response<ResponseBody>, ApiError>,
) -> Response<ResponseBody> {
    let mut response = result.unwrap_or_else(|error| {
        if matches!(
            error,
            ApiError::Internal(_) | ApiError::PolicyFailure { .. }
        ) {
            tracing::error!(request_id = %ctx.request_id(), error = %error, "request failed");
        }
        error.into_response_for(ctx.endpoint.protocol()).map(boxed)
    });
    stamp(response.headers_mut(), ctx);
    response
}

/// Adds `x-request-id`, `x-response-time` and `server-timing`.
fn stamp(headers: &mut HeaderMap, ctx: &RequestContext) {
    if let Ok(v) = HeaderValue::from_str(ctx.request_id()) {
        headers.insert(X_REQUEST_ID, v);
    }
    let mut text = String::with_capacity(16);
    push_millis(&mut text, ctx.started.elapsed());
    text.push_str("ms");
    if let Ok(v) = HeaderValue::from_str(&text) {
        headers.insert(X_RESPONSE_TIME, v);
    }
    if !ctx.timing.is_empty() {
        text.clear();
        for (i, (name, d)) in ctx.timing.iter().enumerate() {
            if i > 0 {
                text.push_str(", ");
            }
            text.push_str(name);
            text.push_str(";dur=");
            push_millis(&mut text, *d);
        }
        if let Ok(v) = HeaderValue::from_str(&text) {
            headers.insert(SERVER_TIMING, v);
        }
    }
}

/// Appends a duration as milliseconds with three decimals (`12.345`), without
/// going through float formatting.
fn push_millis(out: &mut String, d: Duration) {
    let us = d.as_micros();
    out.push_str(itoa::Buffer::new().format(us / 1000));
    out.push('.');
    let fraction = us % 1000;
    for digit in [fraction / 100, fraction / 10 % 10, fraction % 10] {
        let digit = u32::try_from(digit).unwrap_or(0);
        out.push(char::from_digit(digit, 10).unwrap_or('0'));
    }
}

/// `GET /v1/models[/{id}]`: the models this key may use on healthy channels.
async fn models(
    state: &AppState,
    ctx: &RequestContext,
    headers: &HeaderMap,
    id: Option<&str>,
) -> Result<Response<ResponseBody>, ApiError> {
    let key = caller::lookup_key(state, headers).await?;
    state
        .policies
        .authorize(&ctx.policies, &ctx.facts, key.as_ref())
        .await?;
    let allowed = |m: &String| {
        key.as_ref()
            .is_none_or(|k| k.record.models.is_empty() || k.record.models.contains(m))
    };
    let mut names: Vec<&String> = state
        .channels
        .all()
        .iter()
        .filter(|c| c.is_healthy())
        .flat_map(|c| c.config.models.iter())
        .filter(|m| allowed(m))
        .collect();
    names.sort();
    names.dedup();
    let created = state.started_s;
    let model = |name: &str| serde_json::json!({"id": name, "object": "model", "created": created, "owned_by": "sluice"});
    match id {
        None => Ok(json(
            StatusCode::OK,
            &serde_json::json!({"object": "list", "data": names.iter().map(|n| model(n)).collect::<Vec<_>>()}),
        )),
        Some(id) if names.iter().any(|n| *n == id) => Ok(json(StatusCode::OK, &model(id))),
        Some(id) => Err(ApiError::Client {
            status: StatusCode::NOT_FOUND,
            code: "model_not_found",
            param: Some("model"),
            message: format!("The model `{id}` does not exist or you do not have access to it."),
        }),
    }
}
