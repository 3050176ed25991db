//! Request dispatch for the client-facing API, in the documented phase order:
//! parse → key lookup → auth policy → route policy → relay → usage tap →
//! log-shaping policy → batch writer. Adds `x-request-id`, `x-response-time`
//! and `server-timing` to every response.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{HeaderMap, HeaderName, HeaderValue, Method, Request, Response, StatusCode, header};
use http_body_util::Full;
use hyper::body::Incoming;

use super::Role;
use crate::app::{AppState, ResponseBody, boxed};
use crate::error::ApiError;
use crate::keys::LiveKey;
use crate::metrics::EndpointLabels;
use crate::plugins::bindings::types;
use crate::relay;
use crate::usage::{self, Draft, Outcome};

/// Request headers policies may see.
pub static POLICY_HEADERS: [HeaderName; 12] = [
    header::USER_AGENT,
    header::CONTENT_TYPE,
    HeaderName::from_static("openai-organization"),
    HeaderName::from_static("openai-project"),
    relay::X_REQUEST_ID,
    HeaderName::from_static("x-forwarded-for"),
    HeaderName::from_static("x-real-ip"),
    HeaderName::from_static("x-client-name"),
    HeaderName::from_static("x-user-id"),
    HeaderName::from_static("x-team"),
    HeaderName::from_static("x-session-id"),
    HeaderName::from_static("x-sluice-tag"),
];

/// The OpenAI endpoints that relay a JSON body.
#[derive(Debug, Clone, Copy)]
enum Endpoint {
    Chat,
    Completions,
    Embeddings,
}

impl Endpoint {
    fn name(self) -> &'static str {
        match self {
            Self::Chat => "chat.completions",
            Self::Completions => "completions",
            Self::Embeddings => "embeddings",
        }
    }

    fn upstream_path(self) -> &'static str {
        match self {
            Self::Chat => relay::channels::CHAT_PATH,
            Self::Completions => relay::channels::COMPLETIONS_PATH,
            Self::Embeddings => relay::channels::EMBEDDINGS_PATH,
        }
    }
}

/// Per-request context shared by the phases.
struct Ctx {
    request_id: String,
    started: Instant,
    peer: SocketAddr,
    timing: Vec<(&'static str, Duration)>,
}

/// Handles one request on either listener.
pub async fn handle(
    state: Arc<AppState>,
    req: Request<Incoming>,
    peer: SocketAddr,
    role: Role,
) -> Response<ResponseBody> {
    if role == Role::Admin {
        return crate::admin::handle(state, req).await;
    }
    let started = Instant::now();
    let request_id = req
        .headers()
        .get(relay::X_REQUEST_ID)
        .and_then(|v| v.to_str().ok())
        .filter(|v| !v.is_empty() && v.len() <= 128 && v.bytes().all(|b| b.is_ascii_graphic()))
        .map_or_else(super::request_id::new, String::from);
    let mut ctx = Ctx {
        request_id,
        started,
        peer,
        timing: Vec::with_capacity(4),
    };
    let endpoint_name = endpoint_label(req.uri().path());
    let mut response = match dispatch(&state, req, &mut ctx).await {
        Ok(response) => response,
        Err(error) => {
            if matches!(
                error,
                ApiError::Internal(_) | ApiError::PolicyFailure { .. }
            ) {
                tracing::error!(request_id = %ctx.request_id, error = %error, "request failed");
            }
            error.into_response().map(boxed)
        }
    };
    let elapsed = started.elapsed();
    state
        .metrics
        .latency
        .get_or_create(&EndpointLabels {
            endpoint: endpoint_name,
        })
        .observe(elapsed.as_secs_f64());
    let headers = response.headers_mut();
    if let Ok(v) = HeaderValue::from_str(&ctx.request_id) {
        headers.insert(relay::X_REQUEST_ID, v);
    }
    let mut text = String::with_capacity(16);
    push_millis(&mut text, elapsed);
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
    response
}

const X_RESPONSE_TIME: HeaderName = HeaderName::from_static("x-response-time");
const SERVER_TIMING: HeaderName = HeaderName::from_static("server-timing");

/// Appends a duration as milliseconds with three decimals (`12.345`), without
/// going through float formatting.
fn push_millis(out: &mut String, d: Duration) {
    use std::fmt::Write;
    let us = d.as_micros();
    let _ = write!(out, "{}.{:03}", us / 1000, us % 1000);
}

fn endpoint_label(path: &str) -> &'static str {
    match path {
        "/v1/chat/completions" => "chat.completions",
        "/v1/completions" => "completions",
        "/v1/embeddings" => "embeddings",
        p if p == "/v1/models" || p.starts_with("/v1/models/") => "models",
        "/healthz" => "healthz",
        _ => "other",
    }
}

async fn dispatch(
    state: &Arc<AppState>,
    req: Request<Incoming>,
    ctx: &mut Ctx,
) -> Result<Response<ResponseBody>, ApiError> {
    let path = req.uri().path().to_string();
    let method = req.method().clone();
    let endpoint = match path.as_str() {
        "/healthz" => return Ok(json(StatusCode::OK, &serde_json::json!({"status": "ok"}))),
        "/v1/chat/completions" => Endpoint::Chat,
        "/v1/completions" => Endpoint::Completions,
        "/v1/embeddings" => Endpoint::Embeddings,
        "/v1/models" | "/v1/models/" => {
            require(&method, &Method::GET)?;
            return models(state, &req, ctx, None).await;
        }
        p if p.starts_with("/v1/models/") => {
            require(&method, &Method::GET)?;
            let id = p.trim_start_matches("/v1/models/").to_string();
            return models(state, &req, ctx, Some(id)).await;
        }
        _ => {
            return Err(ApiError::Client {
                status: StatusCode::NOT_FOUND,
                code: "unknown_url",
                param: None,
                message: format!("Invalid URL ({method} {path})"),
            });
        }
    };
    require(&method, &Method::POST)?;
    let (parts, body) = req.into_parts();
    let bytes = relay::read_body(body, state.config.server.max_body_bytes).await?;
    let prompt_estimate = u32::try_from(bytes.len() / 4).unwrap_or(u32::MAX);
    let prompt = state
        .config
        .log
        .content
        .then(|| String::from_utf8_lossy(&bytes).into_owned());
    // A malformed body is reported only after auth, as OpenAI does: a bad key
    // gets its 401 whatever the body says. Auth then sees an empty model.
    let parsed = relay::parse(bytes);
    let (model, stream) = match &parsed {
        Ok(p) => (p.model.clone(), p.stream),
        Err(_) => (String::new(), false),
    };
    let policy_started = Instant::now();
    let key = lookup_key(state, &parts.headers).await?;
    // Keyed requests leave a usage record: reserve its queue place before any
    // response can be sent, so a crash loses at most the queue plus one batch.
    let slot = match key {
        Some(_) => state.writer.reserve().await,
        None => None,
    };
    let info = request_info(state, ctx, endpoint.name(), &model, stream, &parts.headers);
    let policies = state.policies.snapshot();
    let mut draft = Draft {
        request_id: ctx.request_id.clone(),
        endpoint: endpoint.name(),
        model,
        stream,
        client_ip: info.client_ip.clone(),
        key: key.clone(),
        labels: BTreeMap::new(),
        started: ctx.started,
        policies: policies.clone(),
        channel_id: String::new(),
        upstream_model: String::new(),
        prompt_estimate,
        slot,
        prompt,
    };
    let labels = match state
        .policies
        .authorize(&policies, &info, key.as_ref())
        .await
    {
        Ok(labels) => labels,
        Err(error) => return Err(account_failure(state, draft, error)),
    };
    ctx.timing.push(("auth", policy_started.elapsed()));
    draft.labels = labels.into_iter().map(|l| (l.name, l.value)).collect();
    let parsed = match parsed {
        Ok(parsed) => parsed,
        Err(error) => return Err(account_failure(state, draft, error)),
    };
    match relay::relay(
        state,
        draft,
        parsed,
        &info,
        endpoint.upstream_path(),
        &parts.headers,
        &mut ctx.timing,
    )
    .await
    {
        Ok(response) => Ok(response),
        Err((error, draft)) => Err(account_failure(state, draft, error)),
    }
}

/// Records a failed request (metrics, access log, usage record when a key is
/// known) and passes the error on.
fn account_failure(state: &Arc<AppState>, draft: Draft, error: ApiError) -> ApiError {
    let outcome = Outcome {
        status: error.status().as_u16(),
        error_kind: Some(error.log_kind()),
        ..Outcome::default()
    };
    usage::finish(state, draft, outcome);
    error
}

fn require(method: &Method, expected: &Method) -> Result<(), ApiError> {
    if method == expected {
        Ok(())
    } else {
        Err(ApiError::Client {
            status: StatusCode::METHOD_NOT_ALLOWED,
            code: "method_not_allowed",
            param: None,
            message: format!("Method {method} is not allowed here; use {expected}."),
        })
    }
}

/// The presented credential: `Authorization: Bearer …` or `x-api-key`.
fn credential(headers: &HeaderMap) -> Option<&str> {
    if let Some(v) = headers
        .get(http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
    {
        let (scheme, token) = v.split_once(' ')?;
        return scheme
            .eq_ignore_ascii_case("bearer")
            .then(|| token.trim())
            .filter(|t| !t.is_empty());
    }
    headers
        .get(relay::X_API_KEY)
        .and_then(|v| v.to_str().ok())
        .map(str::trim)
        .filter(|t| !t.is_empty())
}

async fn lookup_key(
    state: &AppState,
    headers: &HeaderMap,
) -> Result<Option<Arc<LiveKey>>, ApiError> {
    let Some(secret) = credential(headers) else {
        return Ok(None);
    };
    state
        .keys
        .lookup(secret)
        .await
        .map_err(|e| ApiError::Internal(format!("key lookup: {e}")))
}

fn request_info(
    state: &AppState,
    ctx: &Ctx,
    endpoint: &str,
    model: &str,
    stream: bool,
    headers: &HeaderMap,
) -> Arc<types::RequestInfo> {
    let client_ip =
        super::client_ip::resolve(ctx.peer.ip(), headers, &state.config.server.trusted_proxies);
    Arc::new(types::RequestInfo {
        request_id: ctx.request_id.clone(),
        endpoint: endpoint.into(),
        model: model.into(),
        stream,
        client_ip: client_ip.to_string(),
        headers: POLICY_HEADERS
            .iter()
            .filter_map(|name| {
                headers
                    .get(name)
                    .and_then(|v| v.to_str().ok())
                    .map(|v| types::Label {
                        name: name.as_str().into(),
                        value: v.into(),
                    })
            })
            .collect(),
    })
}

/// `GET /v1/models[/{id}]`: the models this key may use on healthy channels.
async fn models(
    state: &Arc<AppState>,
    req: &Request<Incoming>,
    ctx: &mut Ctx,
    id: Option<String>,
) -> Result<Response<ResponseBody>, ApiError> {
    let key = lookup_key(state, req.headers()).await?;
    let info = request_info(state, ctx, "models", "", false, req.headers());
    let policies = state.policies.snapshot();
    state
        .policies
        .authorize(&policies, &info, key.as_ref())
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
    let model = |name: &str| serde_json::json!({"id": name, "object": "model", "created": 0, "owned_by": "sluice"});
    match id {
        None => Ok(json(
            StatusCode::OK,
            &serde_json::json!({"object": "list", "data": names.iter().map(|n| model(n)).collect::<Vec<_>>()}),
        )),
        Some(id) if names.iter().any(|n| **n == id) => Ok(json(StatusCode::OK, &model(&id))),
        Some(id) => Err(ApiError::Client {
            status: StatusCode::NOT_FOUND,
            code: "model_not_found",
            param: Some("model"),
            message: format!("The model `{id}` does not exist or you do not have access to it."),
        }),
    }
}

/// A JSON response.
pub fn json(status: StatusCode, value: &serde_json::Value) -> Response<ResponseBody> {
    let mut response = Response::new(boxed(Full::new(Bytes::from(
        serde_json::to_vec(value).unwrap_or_default(),
    ))));
    *response.status_mut() = status;
    response.headers_mut().insert(
        http::header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    response
}
