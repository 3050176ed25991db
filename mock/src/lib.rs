//! The fake upstream: an OpenAI-compatible server for tests, benchmarks and the
//! quick start (the `sluice-mock` binary). It lives outside the gateway, so the
//! gateway's release binary carries no test-only code (test certificates).
//! Pacing (chunks, per-chunk delay, first byte latency, event size) and
//! failure modes ([`FailMode`]) are set at start, changed at runtime with
//! `POST /_mock/config`, or per request with `x-mock-*` headers. Optional TLS
//! with a generated test CA. `GET /_mock/stats` reports what it saw, including
//! streams the client cancelled.

#![expect(
    clippy::disallowed_methods,
    reason = "the fake upstream's tasks end with its stop token or their connection; no shutdown drains them"
)]

use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use sluice_meter::{Encoding, PromptKind, Tally, prompt_tokens};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

mod anthropic;

/// The prefix of the gateway's own API keys: an upstream that sees one was
/// handed a client's credential (counted in [`MockStats::leaked_credentials`]).
pub const GATEWAY_KEY_PREFIX: &str = "sk-sl-";

/// Milliseconds since the Unix epoch.
fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// The mock's body type: unlike the gateway's, it can fail, which is how it
/// drops a connection mid-stream.
type MockBody = http_body_util::combinators::UnsyncBoxBody<Bytes, std::io::Error>;

fn full(bytes: Bytes) -> MockBody {
    Full::new(bytes)
        .map_err(|never| match never {})
        .boxed_unsync()
}

/// How the mock fails a request (its wire name is the snake-case variant name,
/// as in `x-mock-fail: drop_mid_stream`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FailMode {
    /// Answer normally.
    #[default]
    None,
    /// Answer with [`MockConfig::status`] and an error body.
    Status,
    /// Close the connection without a response.
    Drop,
    /// Stream half the chunks, then break the connection.
    DropMidStream,
    /// Never send the response head.
    Hang,
    /// Stream half the chunks, then go silent.
    Stall,
    /// Answer 200 with a body that is not JSON.
    Malformed,
}

impl FailMode {
    /// Every mode, for parsing and help.
    pub const ALL: [Self; 7] = [
        Self::None,
        Self::Status,
        Self::Drop,
        Self::DropMidStream,
        Self::Hang,
        Self::Stall,
        Self::Malformed,
    ];

    /// The wire name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::None => "none",
            Self::Status => "status",
            Self::Drop => "drop",
            Self::DropMidStream => "drop_mid_stream",
            Self::Hang => "hang",
            Self::Stall => "stall",
            Self::Malformed => "malformed",
        }
    }
}

impl std::str::FromStr for FailMode {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        Self::ALL
            .into_iter()
            .find(|m| m.as_str() == text)
            .ok_or_else(|| format!("unknown failure mode '{text}'"))
    }
}

impl std::fmt::Display for FailMode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// How the mock behaves; every field can be patched at runtime.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MockConfig {
    /// Content chunks per streamed response.
    pub chunks: u32,
    /// Delay between chunks, ms.
    pub chunk_delay_ms: u64,
    /// Delay before the response headers, ms.
    pub ttfb_ms: u64,
    /// Bytes of content per chunk (default: a short word).
    pub event_bytes: usize,
    /// How to fail, if at all.
    pub fail: FailMode,
    /// `retry-after` seconds sent with [`FailMode::Status`] answers.
    pub retry_after_s: Option<u64>,
    /// Status for [`FailMode::Status`].
    pub status: u16,
    /// Required bearer key (none = any).
    pub api_key: Option<String>,
    /// Models listed by `/v1/models`.
    pub models: Vec<String>,
    /// Generate every chunk even past the request's `max_tokens` (an
    /// upstream that overruns its cap).
    pub ignore_cap: bool,
    /// Never report usage (an upstream without `usage` support).
    pub omit_usage: bool,
    /// Answer chat with a tool call instead of text.
    pub tools: bool,
    /// Prompt tokens reported as read from the provider's cache.
    pub cached_tokens: u32,
    /// Completion tokens reported as reasoning (billed, not streamed).
    pub reasoning_tokens: u32,
    /// Prompt tokens reported as written to the provider's cache (the
    /// Anthropic mode's `cache_creation_input_tokens`).
    pub cache_write_tokens: u32,
}

impl Default for MockConfig {
    fn default() -> Self {
        Self {
            chunks: 16,
            chunk_delay_ms: 0,
            ttfb_ms: 0,
            event_bytes: 0,
            fail: FailMode::None,
            retry_after_s: None,
            status: 500,
            api_key: None,
            models: vec!["gpt-4o-mini".into()],
            ignore_cap: false,
            omit_usage: false,
            tools: false,
            cached_tokens: 0,
            reasoning_tokens: 0,
            cache_write_tokens: 0,
        }
    }
}

/// Counters the mock keeps.
#[derive(Debug, Default, serde::Serialize)]
pub struct MockStats {
    /// Requests received (excluding `/_mock`).
    pub requests: AtomicU64,
    /// Streams sent to the end.
    pub completed_streams: AtomicU64,
    /// Streams the client abandoned.
    pub cancelled_streams: AtomicU64,
    /// When the last cancellation was seen, Unix ms.
    pub last_cancel_ms: AtomicU64,
    /// Requests that arrived with a client credential the gateway should have stripped.
    pub leaked_credentials: AtomicU64,
    /// Requests that asked for `stream_options.include_usage`.
    pub usage_requested: AtomicU64,
    /// The headers of the last request, kept as they arrived (values
    /// shared with the request, not copied: a bench's upstream should not
    /// cost more per header a proxy sends than a real one does).
    #[serde(skip)]
    pub last_headers: Mutex<http::HeaderMap>,
    /// The body of the last completion request, as it arrived.
    #[serde(skip)]
    pub last_body: Mutex<Bytes>,
}

impl MockStats {
    /// The values of header `name` on the last request.
    pub fn last_header(&self, name: &str) -> Vec<String> {
        self.last_headers
            .lock()
            .map(|h| {
                h.get_all(name)
                    .iter()
                    .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
                    .collect()
            })
            .unwrap_or_default()
    }
}

/// A running mock.
pub struct Mock {
    /// Its address.
    pub addr: SocketAddr,
    /// Live configuration.
    pub config: Arc<Mutex<MockConfig>>,
    /// Counters.
    pub stats: Arc<MockStats>,
    stop: CancellationToken,
}

impl Drop for Mock {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

/// Generates a test CA and a server certificate for `127.0.0.1`/`localhost`;
/// writes the CA to `dir/ca.pem` and returns the server TLS config.
///
/// # Errors
/// When generation or writing fails.
pub fn test_tls(dir: &Path) -> Result<rustls::ServerConfig, String> {
    let ca_key = rcgen::KeyPair::generate().map_err(|e| e.to_string())?;
    let mut ca_params =
        rcgen::CertificateParams::new(Vec::<String>::new()).map_err(|e| e.to_string())?;
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "Sluice test CA");
    let ca = ca_params.self_signed(&ca_key).map_err(|e| e.to_string())?;
    let issuer = rcgen::Issuer::new(ca_params, ca_key);
    let leaf_key = rcgen::KeyPair::generate().map_err(|e| e.to_string())?;
    let leaf_params =
        rcgen::CertificateParams::new(vec!["localhost".to_string(), "127.0.0.1".to_string()])
            .map_err(|e| e.to_string())?;
    let leaf = leaf_params
        .signed_by(&leaf_key, &issuer)
        .map_err(|e| e.to_string())?;
    std::fs::create_dir_all(dir).map_err(|e| e.to_string())?;
    std::fs::write(dir.join("ca.pem"), ca.pem()).map_err(|e| e.to_string())?;
    let key = rustls::pki_types::PrivateKeyDer::try_from(leaf_key.serialize_der())
        .map_err(|e| e.to_string())?;
    let mut config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map_err(|e| e.to_string())?
    .with_no_client_auth()
    .with_single_cert(vec![leaf.der().clone()], key)
    .map_err(|e| e.to_string())?;
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(config)
}

/// Starts a mock on `addr` (plain HTTP, or TLS with `tls`).
///
/// # Errors
/// When the address cannot be bound.
pub async fn start(
    addr: SocketAddr,
    config: MockConfig,
    tls: Option<rustls::ServerConfig>,
) -> std::io::Result<Mock> {
    let listener = TcpListener::bind(addr).await?;
    let addr = listener.local_addr()?;
    let config = Arc::new(Mutex::new(config));
    let stats = Arc::new(MockStats::default());
    let stop = CancellationToken::new();
    let acceptor = tls.map(|t| tokio_rustls::TlsAcceptor::from(Arc::new(t)));
    let (c, s, token) = (config.clone(), stats.clone(), stop.clone());
    tokio::spawn(async move {
        loop {
            let (stream, _) = tokio::select! {
                () = token.cancelled() => break,
                accepted = listener.accept() => match accepted { Ok(a) => a, Err(_) => continue },
            };
            let _ = stream.set_nodelay(true);
            let (c, s, acceptor) = (c.clone(), s.clone(), acceptor.clone());
            tokio::spawn(async move {
                let service = service_fn(move |req| {
                    let (c, s) = (c.clone(), s.clone());
                    async move { handle(req, c, s).await }
                });
                let builder = auto::Builder::new(TokioExecutor::new());
                let _ = match acceptor {
                    Some(acceptor) => match acceptor.accept(stream).await {
                        Ok(tls) => builder.serve_connection(TokioIo::new(tls), service).await,
                        Err(_) => return,
                    },
                    None => {
                        builder
                            .serve_connection(TokioIo::new(stream), service)
                            .await
                    }
                };
            });
        }
    });
    Ok(Mock {
        addr,
        config,
        stats,
        stop,
    })
}

fn respond(status: StatusCode, body: serde_json::Value) -> Response<MockBody> {
    let mut r = Response::new(full(Bytes::from(body.to_string())));
    *r.status_mut() = status;
    r.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("application/json"),
    );
    r.headers_mut().insert(
        "x-ratelimit-remaining-requests",
        http::HeaderValue::from_static("999"),
    );
    r
}

/// Per-request overrides from `x-mock-*` headers.
fn effective(req: &Request<Incoming>, base: &MockConfig) -> MockConfig {
    let mut c = base.clone();
    let header = |name: &str| {
        req.headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(String::from)
    };
    let num = |name: &str| header(name).and_then(|v| v.parse::<u64>().ok());
    if let Some(v) = num("x-mock-chunks") {
        c.chunks = u32::try_from(v).unwrap_or(u32::MAX);
    }
    if let Some(v) = num("x-mock-chunk-delay-ms") {
        c.chunk_delay_ms = v;
    }
    if let Some(v) = num("x-mock-ttfb-ms") {
        c.ttfb_ms = v;
    }
    if let Some(v) = num("x-mock-event-bytes") {
        c.event_bytes = usize::try_from(v).unwrap_or(0);
    }
    if let Some(mode) = header("x-mock-fail").and_then(|v| v.parse().ok()) {
        c.fail = mode;
    }
    if let Some(v) = num("x-mock-retry-after") {
        c.retry_after_s = Some(v);
    }
    if let Some(v) = num("x-mock-status") {
        c.status = u16::try_from(v).unwrap_or(500);
    }
    let flag = |name: &str| header(name).map(|v| v == "1" || v == "true");
    if let Some(v) = flag("x-mock-ignore-cap") {
        c.ignore_cap = v;
    }
    if let Some(v) = flag("x-mock-omit-usage") {
        c.omit_usage = v;
    }
    if let Some(v) = flag("x-mock-tools") {
        c.tools = v;
    }
    if let Some(v) = num("x-mock-cached-tokens") {
        c.cached_tokens = u32::try_from(v).unwrap_or(u32::MAX);
    }
    if let Some(v) = num("x-mock-reasoning-tokens") {
        c.reasoning_tokens = u32::try_from(v).unwrap_or(u32::MAX);
    }
    if let Some(v) = num("x-mock-cache-write-tokens") {
        c.cache_write_tokens = u32::try_from(v).unwrap_or(u32::MAX);
    }
    c
}

/// The wire format a request path speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Wire {
    /// OpenAI's (`/v1/...`, `Authorization: Bearer`).
    OpenAi,
    /// Azure OpenAI's (`/openai/deployments/{deployment}/...?api-version=`, `api-key`).
    Azure,
    /// Anthropic's Messages (`/v1/messages`, `x-api-key` or a bearer token,
    /// `anthropic-version`).
    Anthropic,
}

/// A request's wire format and the OpenAI path it maps to; `None` for an
/// Azure path without `api-version` (which Azure answers with 404).
fn route(path: &str, query: Option<&str>) -> Option<(Wire, String)> {
    if path == "/v1/messages" || path == "/v1/messages/count_tokens" {
        return Some((Wire::Anthropic, path.into()));
    }
    let Some(rest) = path.strip_prefix("/openai/") else {
        return Some((Wire::OpenAi, path.into()));
    };
    query?
        .split('&')
        .find(|pair| pair.starts_with("api-version=") && pair.len() > "api-version=".len())?;
    let operation = match rest.strip_prefix("deployments/") {
        Some(deployment_and_operation) => deployment_and_operation.split_once('/')?.1,
        None => rest,
    };
    Some((Wire::Azure, format!("/v1/{operation}")))
}

/// An error answer in the wire format's shape.
fn failure(wire: Wire, status: u16, message: &str) -> Response<MockBody> {
    let body = match wire {
        Wire::Anthropic => anthropic::error(status, message),
        Wire::OpenAi | Wire::Azure => {
            serde_json::json!({"error": {"message": message, "type": "server_error", "code": null}})
        }
    };
    respond(
        StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
        body,
    )
}

/// The credential a request carries in its wire format's header.
fn credential(req: &Request<Incoming>, wire: Wire) -> String {
    let header = |name: &str| {
        req.headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_string()
    };
    let bearer = || {
        header("authorization")
            .strip_prefix("Bearer ")
            .unwrap_or("")
            .to_string()
    };
    match wire {
        Wire::OpenAi => bearer(),
        Wire::Azure => header("api-key"),
        // `x-api-key`, or a bearer token as the newer SDKs send the key.
        Wire::Anthropic if req.headers().contains_key("x-api-key") => header("x-api-key"),
        Wire::Anthropic => bearer(),
    }
}

/// Whether a request carries a client's credential: a gateway key in any
/// credential header, or an `x-api-key` where the wire format has none.
fn leaks_credential(req: &Request<Incoming>, wire: Wire) -> bool {
    let gateway_key = ["authorization", "x-api-key", "api-key"]
        .iter()
        .any(|name| {
            req.headers()
                .get(*name)
                .and_then(|v| v.to_str().ok())
                .is_some_and(|v| v.contains(GATEWAY_KEY_PREFIX))
        });
    gateway_key || (wire != Wire::Anthropic && req.headers().contains_key("x-api-key"))
}

/// Serves one request; an `Err` makes hyper drop the connection without a response.
async fn handle(
    req: Request<Incoming>,
    config: Arc<Mutex<MockConfig>>,
    stats: Arc<MockStats>,
) -> Result<Response<MockBody>, std::io::Error> {
    let path = req.uri().path().to_string();
    let base = config.lock().map(|c| c.clone()).unwrap_or_default();
    if path == "/_mock/stats" {
        return Ok(respond(
            StatusCode::OK,
            serde_json::to_value(&*stats).unwrap_or_default(),
        ));
    }
    if path == "/_mock/config" {
        let bytes = read_body(req).await;
        let mut current = serde_json::to_value(&base).unwrap_or_default();
        if let (Some(map), Ok(serde_json::Value::Object(patch))) = (
            current.as_object_mut(),
            serde_json::from_slice::<serde_json::Value>(&bytes),
        ) {
            map.extend(patch);
        }
        return Ok(match serde_json::from_value::<MockConfig>(current) {
            Ok(next) => {
                if let Ok(mut c) = config.lock() {
                    *c = next.clone();
                }
                respond(
                    StatusCode::OK,
                    serde_json::to_value(next).unwrap_or_default(),
                )
            }
            Err(e) => respond(
                StatusCode::BAD_REQUEST,
                serde_json::json!({"error": {"message": e.to_string()}}),
            ),
        });
    }
    stats.requests.fetch_add(1, Ordering::Relaxed);
    if let Ok(mut last) = stats.last_headers.lock() {
        last.clone_from(req.headers());
    }
    let cfg = effective(&req, &base);
    let Some((wire, path)) = route(&path, req.uri().query()) else {
        return Ok(respond(
            StatusCode::NOT_FOUND,
            serde_json::json!({"error": {"code": "404", "message": "Resource not found"}}),
        ));
    };
    if leaks_credential(&req, wire) {
        stats.leaked_credentials.fetch_add(1, Ordering::Relaxed);
    }
    if let Some(key) = &cfg.api_key
        && credential(&req, wire) != *key
    {
        return Ok(match wire {
            Wire::Anthropic => failure(wire, 401, "invalid x-api-key"),
            _ => respond(
                StatusCode::UNAUTHORIZED,
                serde_json::json!({"error": {"message": "bad upstream key", "type": "invalid_request_error", "code": "invalid_api_key"}}),
            ),
        });
    }
    if wire == Wire::Anthropic && !req.headers().contains_key("anthropic-version") {
        return Ok(failure(wire, 400, "anthropic-version: header is required"));
    }
    if cfg.ttfb_ms > 0 {
        tokio::time::sleep(Duration::from_millis(cfg.ttfb_ms)).await;
    }
    match cfg.fail {
        FailMode::Hang => {
            tokio::time::sleep(Duration::from_secs(3600)).await;
        }
        FailMode::Status => {
            let mut response = failure(wire, cfg.status, "mock failure");
            if let Some(seconds) = cfg.retry_after_s {
                response
                    .headers_mut()
                    .insert(http::header::RETRY_AFTER, http::HeaderValue::from(seconds));
            }
            return Ok(response);
        }
        FailMode::Drop => {
            return Err(std::io::Error::other(
                "mock drop: closing the connection without a response",
            ));
        }
        _ => {}
    }
    let body = read_body(req).await;
    if let Ok(mut last) = stats.last_body.lock() {
        last.clone_from(&body);
    }
    let json: serde_json::Value = serde_json::from_slice(&body).unwrap_or_default();
    let model = json["model"].as_str().unwrap_or("mock").to_string();
    let encoding = Encoding::for_model(&model).unwrap_or(Encoding::O200kBase);
    if path == "/v1/messages/count_tokens" {
        let input_tokens = anthropic::prompt_tokens(&json, encoding);
        return Ok(respond(
            StatusCode::OK,
            serde_json::json!({"input_tokens": input_tokens}),
        ));
    }
    if wire == Wire::Anthropic {
        return Ok(messages(&cfg, &json, model, encoding, stats));
    }
    let prompt_tokens = count_prompt(&path, &body, encoding);
    if json["stream_options"]["include_usage"].as_bool() == Some(true) {
        stats.usage_requested.fetch_add(1, Ordering::Relaxed);
    }
    if cfg.fail == FailMode::Malformed {
        let mut r = respond(StatusCode::OK, serde_json::Value::Null);
        *r.body_mut() = full(Bytes::from_static(b"{\"choices\": [oops"));
        return Ok(r);
    }
    Ok(match path.as_str() {
        "/v1/models" => respond(
            StatusCode::OK,
            serde_json::json!({"object": "list", "data": cfg.models.iter().map(|m| serde_json::json!({"id": m, "object": "model", "created": 0, "owned_by": "mock"})).collect::<Vec<_>>()}),
        ),
        "/v1/embeddings" => {
            let inputs = json["input"].as_array().map_or(1, Vec::len);
            let data: Vec<_> = (0..inputs).map(|i| serde_json::json!({"object": "embedding", "index": i, "embedding": [0.1, 0.2, 0.3, 0.4]})).collect();
            let mut body = serde_json::json!({"object": "list", "data": data, "model": model});
            if !cfg.omit_usage {
                body["usage"] = serde_json::json!({"prompt_tokens": prompt_tokens, "total_tokens": prompt_tokens});
            }
            respond(StatusCode::OK, body)
        }
        "/v1/chat/completions" | "/v1/completions" => {
            let chat = path == "/v1/chat/completions";
            if let Some(message) = unanswered_tool_result(&json) {
                return Ok(respond(
                    StatusCode::BAD_REQUEST,
                    serde_json::json!({"error": {"message": message, "type": "invalid_request_error", "param": "messages", "code": null}}),
                ));
            }
            let cap = json["max_completion_tokens"]
                .as_u64()
                .or_else(|| json["max_tokens"].as_u64());
            let reply = Reply::generate(&cfg, chat, cap, encoding, prompt_tokens);
            if json["stream"].as_bool() == Some(true) {
                let include_usage = json["stream_options"]["include_usage"].as_bool() == Some(true);
                return Ok(stream(cfg, reply.events(&model, include_usage), stats));
            }
            respond(StatusCode::OK, reply.whole(&model))
        }
        _ => respond(
            StatusCode::NOT_FOUND,
            serde_json::json!({"error": {"message": "unknown path", "type": "invalid_request_error", "code": null}}),
        ),
    })
}

/// What OpenAI answers with 400 when a `tool` message does not respond to a
/// tool call of an earlier assistant message.
fn unanswered_tool_result(request: &serde_json::Value) -> Option<String> {
    let mut calls: Vec<&str> = Vec::new();
    for message in request["messages"].as_array().into_iter().flatten() {
        for call in message["tool_calls"].as_array().into_iter().flatten() {
            calls.extend(call["id"].as_str());
        }
        if message["role"] == "tool"
            && !calls.contains(&message["tool_call_id"].as_str().unwrap_or(""))
        {
            return Some("Invalid parameter: messages with role 'tool' must be a response to a preceeding message with 'tool_calls'.".into());
        }
    }
    None
}

/// Answers a Messages request: refused as the real API refuses it, else a
/// whole message or its event stream.
fn messages(
    cfg: &MockConfig,
    json: &serde_json::Value,
    model: String,
    encoding: Encoding,
    stats: Arc<MockStats>,
) -> Response<MockBody> {
    if let Some(message) = anthropic::invalid(json) {
        return failure(Wire::Anthropic, 400, &message);
    }
    let prompt = anthropic::prompt_tokens(json, encoding);
    let reply = Reply::generate(cfg, true, json["max_tokens"].as_u64(), encoding, prompt);
    if json["stream"].as_bool() == Some(true) {
        let (head, pieces, tail) = anthropic::stream(&reply, &model, cfg.cache_write_tokens);
        return stream(cfg.clone(), Events { head, pieces, tail }, stats);
    }
    respond(
        StatusCode::OK,
        anthropic::whole(&reply, &model, cfg.cache_write_tokens),
    )
}

/// The whole request body (empty if it cannot be read).
async fn read_body(req: Request<Incoming>) -> Bytes {
    req.into_body()
        .collect()
        .await
        .map(|b| b.to_bytes())
        .unwrap_or_default()
}

/// The words the mock generates: each one token in both `o200k_base` and
/// `cl100k_base`, alone and in sequence, so `n` chunks are `n` tokens.
pub const WORDS: [&str; 16] = [
    "The", " quick", " brown", " fox", " jumps", " over", " the", " lazy", " dog", " and", " runs",
    " far", " away", " from", " home", " again",
];

/// The content of chunk `i`: the next word, or `size` bytes of filler.
fn word(i: u32, size: usize) -> String {
    if size == 0 {
        WORDS[i as usize % WORDS.len()].to_string()
    } else {
        "x".repeat(size)
    }
}

/// The prompt tokens of a request, counted as the gateway's meter counts
/// them (OpenAI's method).
fn count_prompt(path: &str, body: &[u8], encoding: Encoding) -> u32 {
    let kind = match path {
        "/v1/chat/completions" => PromptKind::Chat,
        "/v1/completions" => PromptKind::Completion,
        _ => PromptKind::Embedding,
    };
    let mut tally = Tally::new(encoding, usize::MAX);
    let _ = prompt_tokens(kind, body, &mut tally);
    u32::try_from(tally.total()).unwrap_or(u32::MAX)
}

/// The tool a tool-call reply calls.
const TOOL_NAME: &str = "get_weather";

/// What the mock generates for one completion request: the streamed pieces
/// (text, or a tool call's argument fragments), cut at the request's cap as
/// a model stops at `max_tokens`, and the usage it reports.
struct Reply {
    chat: bool,
    tools: bool,
    pieces: Vec<String>,
    finish_reason: &'static str,
    usage: Option<serde_json::Value>,
}

/// A stream's text: what precedes the first piece, one event per piece, and
/// what follows the last.
struct Events {
    head: String,
    pieces: Vec<String>,
    tail: String,
}

impl Reply {
    fn generate(
        cfg: &MockConfig,
        chat: bool,
        cap: Option<u64>,
        encoding: Encoding,
        prompt_tokens: u32,
    ) -> Self {
        let tools = chat && cfg.tools;
        let mut pieces: Vec<String> = (0..cfg.chunks).map(|i| word(i, cfg.event_bytes)).collect();
        if tools {
            pieces.insert(0, "{\"q\":\"".into());
            pieces.push("\"}".into());
        }
        let mut finish_reason = if tools { "tool_calls" } else { "stop" };
        let cap = cap
            .filter(|_| !cfg.ignore_cap)
            .and_then(|c| usize::try_from(c).ok());
        let prefix = if tools { TOOL_NAME } else { "" };
        let generated_tokens = if cfg.event_bytes > 0 {
            // Filler: every piece alike, counted once (the size tests send
            // megabytes; tokenizing them all would only slow the mock).
            let per_piece = encoding.count(&word(0, cfg.event_bytes)).max(1);
            if let Some(cap) = cap
                && per_piece * pieces.len() > cap
            {
                pieces.truncate(cap / per_piece);
                finish_reason = "length";
            }
            per_piece * pieces.len() + encoding.count(prefix)
        } else {
            let full: String = std::iter::once(prefix)
                .chain(pieces.iter().map(String::as_str))
                .collect();
            let ids = encoding.tokenizer().encode(full.as_str());
            match cap.filter(|&cap| ids.len() > cap) {
                None => ids.len(),
                Some(cap) => {
                    // A decoded token prefix is a byte prefix of the text.
                    let kept = encoding
                        .tokenizer()
                        .decode(&ids[..cap])
                        .map_or(0, |t| t.len())
                        .saturating_sub(prefix.len());
                    let mut at = 0;
                    pieces.retain_mut(|piece| {
                        let room = kept.saturating_sub(at);
                        at += piece.len();
                        piece.truncate(room.min(piece.len()));
                        !piece.is_empty()
                    });
                    finish_reason = "length";
                    let generated: String = std::iter::once(prefix)
                        .chain(pieces.iter().map(String::as_str))
                        .collect();
                    encoding.count(&generated)
                }
            }
        };
        let completion = u32::try_from(generated_tokens).unwrap_or(u32::MAX) + cfg.reasoning_tokens;
        let usage = (!cfg.omit_usage).then(|| {
            serde_json::json!({
                "prompt_tokens": prompt_tokens,
                "completion_tokens": completion,
                "total_tokens": prompt_tokens + completion,
                "prompt_tokens_details": {"cached_tokens": cfg.cached_tokens.min(prompt_tokens), "audio_tokens": 0},
                "completion_tokens_details": {"reasoning_tokens": cfg.reasoning_tokens, "audio_tokens": 0},
            })
        });
        Self {
            chat,
            tools,
            pieces,
            finish_reason,
            usage,
        }
    }

    fn object(&self, chunk: bool) -> &'static str {
        match (self.chat, chunk) {
            (true, true) => "chat.completion.chunk",
            (true, false) => "chat.completion",
            (false, _) => "text_completion",
        }
    }

    /// The non-streamed answer.
    fn whole(&self, model: &str) -> serde_json::Value {
        let text: String = self.pieces.concat();
        let choice = match (self.chat, self.tools) {
            (true, true) => {
                serde_json::json!({"index": 0, "message": {"role": "assistant", "content": null, "tool_calls": [
                {"id": "call_mock", "type": "function", "function": {"name": TOOL_NAME, "arguments": text}}]}, "finish_reason": self.finish_reason, "logprobs": null})
            }
            (true, false) => {
                serde_json::json!({"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": self.finish_reason, "logprobs": null})
            }
            (false, _) => {
                serde_json::json!({"index": 0, "text": text, "finish_reason": self.finish_reason, "logprobs": null})
            }
        };
        let mut body = serde_json::json!({"id": "mock-1", "object": self.object(false), "created": 1_700_000_000, "model": model, "choices": [choice]});
        if let Some(usage) = &self.usage {
            body["usage"] = usage.clone();
        }
        body
    }

    /// The delta (or text) of streamed piece `i`.
    fn delta(&self, i: usize) -> serde_json::Value {
        let piece = &self.pieces[i];
        match (self.chat, self.tools, i) {
            (true, true, 0) => {
                serde_json::json!({"delta": {"role": "assistant", "content": null, "tool_calls": [
                {"index": 0, "id": "call_mock", "type": "function", "function": {"name": TOOL_NAME, "arguments": piece}}]}})
            }
            (true, true, _) => {
                serde_json::json!({"delta": {"tool_calls": [{"index": 0, "function": {"arguments": piece}}]}})
            }
            (true, false, _) => serde_json::json!({"delta": {"content": piece}}),
            (false, _, _) => serde_json::json!({"text": piece}),
        }
    }

    /// The OpenAI stream: a chunk per piece, the finish, the usage chunk
    /// when asked for, `[DONE]`.
    fn events(&self, model: &str, include_usage: bool) -> Events {
        let usage = self.usage.as_ref().filter(|_| include_usage);
        let pieces = (0..self.pieces.len())
            .map(|i| self.event(model, self.delta(i), None, usage.is_some()))
            .collect();
        let mut tail = self.event(
            model,
            serde_json::json!({}),
            Some(self.finish_reason),
            usage.is_some(),
        );
        if let Some(usage) = usage {
            let chunk = serde_json::json!({"id": "mock-1", "object": self.object(true), "created": 1_700_000_000, "model": model, "choices": [], "usage": usage});
            tail.push_str(&format!("data: {chunk}\n\n"));
        }
        tail.push_str("data: [DONE]\n\n");
        Events {
            head: String::new(),
            pieces,
            tail,
        }
    }

    /// One stream event: `choice` (index and finish reason added), with
    /// `"usage":null` when the client asked for usage.
    fn event(
        &self,
        model: &str,
        mut choice: serde_json::Value,
        finish: Option<&str>,
        usage_null: bool,
    ) -> String {
        choice["index"] = 0.into();
        choice["finish_reason"] = finish.into();
        if !self.chat && choice.get("text").is_none() {
            choice["text"] = "".into();
        }
        if self.chat && choice.get("delta").is_none() {
            choice["delta"] = serde_json::json!({});
        }
        let mut chunk = serde_json::json!({"id": "mock-1", "object": self.object(true), "created": 1_700_000_000, "model": model, "choices": [choice]});
        if usage_null {
            chunk["usage"] = serde_json::Value::Null;
        }
        format!("data: {chunk}\n\n")
    }
}

/// Sends a stream's events, paced and failed as configured.
fn stream(cfg: MockConfig, events: Events, stats: Arc<MockStats>) -> Response<MockBody> {
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<Frame<Bytes>, std::io::Error>>(4);
    tokio::spawn(async move {
        let Events {
            mut head,
            pieces,
            mut tail,
        } = events;
        let count = pieces.len();
        for (i, piece) in pieces.into_iter().enumerate() {
            if i > 0 && cfg.chunk_delay_ms > 0 {
                tokio::select! {
                    () = tokio::time::sleep(Duration::from_millis(cfg.chunk_delay_ms)) => {}
                    () = tx.closed() => break,
                }
            }
            if cfg.fail == FailMode::DropMidStream && i == count / 2 {
                let _ = tx
                    .send(Ok(Frame::data(Bytes::from_static(b"data: {\"broken"))))
                    .await;
                let _ = tx
                    .send(Err(std::io::Error::other("mock drop mid-stream")))
                    .await;
                return;
            }
            if cfg.fail == FailMode::Stall && i == count / 2 {
                tx.closed().await;
                break;
            }
            let event = std::mem::take(&mut head) + &piece;
            if tx.send(Ok(Frame::data(Bytes::from(event)))).await.is_err() {
                break;
            }
        }
        if tx.is_closed() {
            stats.cancelled_streams.fetch_add(1, Ordering::Relaxed);
            stats.last_cancel_ms.store(now_ms(), Ordering::Relaxed);
            return;
        }
        tail.insert_str(0, &head);
        if tx.send(Ok(Frame::data(Bytes::from(tail)))).await.is_ok() {
            stats.completed_streams.fetch_add(1, Ordering::Relaxed);
        } else {
            stats.cancelled_streams.fetch_add(1, Ordering::Relaxed);
            stats.last_cancel_ms.store(now_ms(), Ordering::Relaxed);
        }
    });
    let body = StreamBody::new(tokio_stream_from(rx));
    let mut r = Response::new(body.boxed_unsync());
    r.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("text/event-stream"),
    );
    r.headers_mut().insert(
        http::header::CACHE_CONTROL,
        http::HeaderValue::from_static("no-cache"),
    );
    r
}

fn tokio_stream_from<T: Send + 'static>(
    mut rx: tokio::sync::mpsc::Receiver<T>,
) -> impl futures_util::Stream<Item = T> + Send {
    futures_util::stream::poll_fn(move |cx| rx.poll_recv(cx))
}
