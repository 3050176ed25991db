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
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

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
    /// The headers of the last request, lower-case names in arrival order.
    #[serde(skip)]
    pub last_headers: Mutex<Vec<(String, String)>>,
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
                h.iter()
                    .filter(|(n, _)| n == name)
                    .map(|(_, v)| v.clone())
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
    c
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
        *last = req
            .headers()
            .iter()
            .map(|(n, v)| {
                (
                    n.as_str().to_string(),
                    String::from_utf8_lossy(v.as_bytes()).into_owned(),
                )
            })
            .collect();
    }
    let cfg = effective(&req, &base);
    let auth = req
        .headers()
        .get(http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_string();
    if req.headers().contains_key("x-api-key") || auth.contains(GATEWAY_KEY_PREFIX) {
        stats.leaked_credentials.fetch_add(1, Ordering::Relaxed);
    }
    if let Some(key) = &cfg.api_key
        && auth != format!("Bearer {key}")
    {
        return Ok(respond(
            StatusCode::UNAUTHORIZED,
            serde_json::json!({"error": {"message": "bad upstream key", "type": "invalid_request_error", "code": "invalid_api_key"}}),
        ));
    }
    if cfg.ttfb_ms > 0 {
        tokio::time::sleep(Duration::from_millis(cfg.ttfb_ms)).await;
    }
    match cfg.fail {
        FailMode::Hang => {
            tokio::time::sleep(Duration::from_secs(3600)).await;
        }
        FailMode::Status => {
            let mut response = respond(
                StatusCode::from_u16(cfg.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
                serde_json::json!({"error": {"message": "mock failure", "type": "server_error", "code": null}}),
            );
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
    let prompt_tokens = u32::try_from(body.len() / 4).unwrap_or(u32::MAX).max(1);
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
            respond(
                StatusCode::OK,
                serde_json::json!({"object": "list", "data": data, "model": model, "usage": {"prompt_tokens": prompt_tokens, "total_tokens": prompt_tokens}}),
            )
        }
        "/v1/chat/completions" | "/v1/completions" => {
            let chat = path == "/v1/chat/completions";
            if json["stream"].as_bool() == Some(true) {
                let include_usage = json["stream_options"]["include_usage"].as_bool() == Some(true);
                return Ok(stream(
                    cfg,
                    model,
                    chat,
                    include_usage,
                    prompt_tokens,
                    stats,
                ));
            }
            let text: String = (0..cfg.chunks).map(|i| word(i, cfg.event_bytes)).collect();
            let usage = serde_json::json!({"prompt_tokens": prompt_tokens, "completion_tokens": cfg.chunks, "total_tokens": prompt_tokens + cfg.chunks});
            let choice = if chat {
                serde_json::json!({"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop", "logprobs": null})
            } else {
                serde_json::json!({"index": 0, "text": text, "finish_reason": "stop", "logprobs": null})
            };
            let object = if chat {
                "chat.completion"
            } else {
                "text_completion"
            };
            respond(
                StatusCode::OK,
                serde_json::json!({"id": "mock-1", "object": object, "created": 1_700_000_000, "model": model, "choices": [choice], "usage": usage}),
            )
        }
        _ => respond(
            StatusCode::NOT_FOUND,
            serde_json::json!({"error": {"message": "unknown path", "type": "invalid_request_error", "code": null}}),
        ),
    })
}

/// The whole request body (empty if it cannot be read).
async fn read_body(req: Request<Incoming>) -> Bytes {
    req.into_body()
        .collect()
        .await
        .map(|b| b.to_bytes())
        .unwrap_or_default()
}

fn word(i: u32, size: usize) -> String {
    if size == 0 {
        format!("tok{i} ")
    } else {
        "x".repeat(size)
    }
}

fn stream(
    cfg: MockConfig,
    model: String,
    chat: bool,
    include_usage: bool,
    prompt_tokens: u32,
    stats: Arc<MockStats>,
) -> Response<MockBody> {
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<Frame<Bytes>, std::io::Error>>(4);
    tokio::spawn(async move {
        let usage_null = if include_usage { ",\"usage\":null" } else { "" };
        for i in 0..cfg.chunks {
            if i > 0 && cfg.chunk_delay_ms > 0 {
                tokio::select! {
                    () = tokio::time::sleep(Duration::from_millis(cfg.chunk_delay_ms)) => {}
                    () = tx.closed() => break,
                }
            }
            if cfg.fail == FailMode::DropMidStream && i == cfg.chunks / 2 {
                let _ = tx
                    .send(Ok(Frame::data(Bytes::from_static(b"data: {\"broken"))))
                    .await;
                let _ = tx
                    .send(Err(std::io::Error::other("mock drop mid-stream")))
                    .await;
                return;
            }
            if cfg.fail == FailMode::Stall && i == cfg.chunks / 2 {
                tx.closed().await;
                break;
            }
            let content = serde_json::to_string(&word(i, cfg.event_bytes)).unwrap_or_default();
            let event = if chat {
                format!(
                    "data: {{\"id\":\"mock-1\",\"object\":\"chat.completion.chunk\",\"created\":1700000000,\"model\":\"{model}\",\"choices\":[{{\"index\":0,\"delta\":{{\"content\":{content}}},\"finish_reason\":null}}]{usage_null}}}\n\n"
                )
            } else {
                format!(
                    "data: {{\"id\":\"mock-1\",\"object\":\"text_completion\",\"created\":1700000000,\"model\":\"{model}\",\"choices\":[{{\"index\":0,\"text\":{content},\"finish_reason\":null}}]{usage_null}}}\n\n"
                )
            };
            if tx.send(Ok(Frame::data(Bytes::from(event)))).await.is_err() {
                break;
            }
        }
        if tx.is_closed() {
            stats.cancelled_streams.fetch_add(1, Ordering::Relaxed);
            stats.last_cancel_ms.store(now_ms(), Ordering::Relaxed);
            return;
        }
        let finish = if chat {
            format!(
                "data: {{\"id\":\"mock-1\",\"object\":\"chat.completion.chunk\",\"created\":1700000000,\"model\":\"{model}\",\"choices\":[{{\"index\":0,\"delta\":{{}},\"finish_reason\":\"stop\"}}]{usage_null}}}\n\n"
            )
        } else {
            format!(
                "data: {{\"id\":\"mock-1\",\"object\":\"text_completion\",\"created\":1700000000,\"model\":\"{model}\",\"choices\":[{{\"index\":0,\"text\":\"\",\"finish_reason\":\"stop\"}}]{usage_null}}}\n\n"
            )
        };
        let mut tail = finish;
        if include_usage {
            let object = if chat {
                "chat.completion.chunk"
            } else {
                "text_completion"
            };
            tail.push_str(&format!(
                "data: {{\"id\":\"mock-1\",\"object\":\"{object}\",\"created\":1700000000,\"model\":\"{model}\",\"choices\":[],\"usage\":{{\"prompt_tokens\":{prompt_tokens},\"completion_tokens\":{},\"total_tokens\":{}}}}}\n\n",
                cfg.chunks,
                prompt_tokens + cfg.chunks
            ));
        }
        tail.push_str("data: [DONE]\n\n");
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
