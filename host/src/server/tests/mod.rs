//! In-process tests of the request path: the server's service driven without
//! sockets (the request handler is generic over the body) against a real fake
//! upstream on 127.0.0.1, a real redb store in a temp dir and the real default
//! policy components.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::disallowed_methods
)]

mod edge;
mod endings;
mod health;
mod service;
mod sockets;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::{BodyExt, Full};

use super::Role;
use super::body::ResponseBody;
use crate::config::{self, Config};
use crate::keys::NewKey;
use crate::state::AppState;
use crate::store::{KeyRecord, UsageQuery, UsageRecord};
use sluice_mock::{Mock, MockConfig};

/// The model the test channel serves.
const MODEL: &str = "gpt-4o-mini";
/// The quota of the test key, in credits.
const QUOTA: i64 = 1_000_000;
/// The admin token of the test gateway.
const ADMIN_TOKEN: &str = "in-process-admin-token";
/// Where requests come from.
const PEER: &str = "127.0.0.1:40000";

/// A plugin cache shared by the unit tests, so each gateway does not compile
/// the default components again.
fn plugin_cache() -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    exe.parent().unwrap().join("unit-plugin-cache")
}

/// Lines added to the config's tables.
#[derive(Debug, Default, Clone, Copy)]
struct Tables<'a> {
    server: &'a str,
    store: &'a str,
    upstream: &'a str,
    channel: &'a str,
}

/// A config: one channel `main` serving [`MODEL`] from `upstream`, priced at
/// 1 credit per prompt token and 2 per completion token, plus `tables`.
fn config(dir: &Path, upstream: SocketAddr, tables: Tables<'_>) -> Config {
    let Tables {
        server,
        store: store_settings,
        upstream: upstream_settings,
        channel: channel_settings,
    } = tables;
    let text = format!(
        r#"
[server]
listen = "127.0.0.1:0"
{server}

[admin]
listen = "127.0.0.1:0"
token = "env::ADMIN_TOKEN"

[store]
path = "{store}"
flush_interval = "5ms"
{store_settings}

[plugins]
cache_dir = "{cache}"

[upstream]
{upstream_settings}

[[channels]]
id = "main"
base_url = "http://{upstream}/v1"
api_key = "env::UPSTREAM_KEY"
models = ["{MODEL}"]
forward_headers = ["x-mock-*"]
headers = {{ "OpenAI-Organization" = "org-operator" }}
{channel_settings}

[pricing.models."{MODEL}"]
input = 1.0
output = 2.0
"#,
        store = dir.join("store.redb").display(),
        cache = plugin_cache().display(),
    );
    let env: std::collections::BTreeMap<String, String> = [
        ("ADMIN_TOKEN".to_string(), ADMIN_TOKEN.to_string()),
        ("UPSTREAM_KEY".to_string(), "sk-upstream-test".to_string()),
    ]
    .into();
    config::parse(&text, &dir.join("sluice.toml"), &env).unwrap()
}

/// A key with [`QUOTA`] credits, allowed `models` (empty: all).
fn new_key(models: &[&str]) -> (String, KeyRecord) {
    crate::keys::generate(&NewKey {
        name: "test".into(),
        models: models.iter().map(|m| (*m).to_string()).collect(),
        quota: Some(QUOTA),
        ..NewKey::default()
    })
    .unwrap()
}

/// A gateway state with a fake upstream and one key.
struct Harness {
    state: Arc<AppState>,
    upstream: Mock,
    key: String,
    key_id: String,
    _dir: tempfile::TempDir,
}

impl Harness {
    /// A gateway with default settings plus `tables`, and a key for
    /// `key_models` (empty: every model).
    async fn start(tables: Tables<'_>, key_models: &[&str]) -> Self {
        let upstream =
            sluice_mock::start("127.0.0.1:0".parse().unwrap(), MockConfig::default(), None)
                .await
                .unwrap();
        let dir = tempfile::tempdir().unwrap();
        let state = crate::app::build(config(dir.path(), upstream.addr, tables))
            .await
            .unwrap();
        let (key, record) = new_key(key_models);
        state.store.create_key(&record).unwrap();
        state.keys.add_known(&record);
        Self {
            state,
            upstream,
            key_id: record.id,
            key,
            _dir: dir,
        }
    }

    /// A gateway with default settings.
    async fn new() -> Self {
        Self::start(Tables::default(), &[]).await
    }

    /// A gateway with these `[server]` lines.
    async fn server(lines: &str) -> Self {
        let tables = Tables {
            server: lines,
            ..Tables::default()
        };
        Self::start(tables, &[]).await
    }

    /// A gateway with these `[upstream]` lines.
    async fn upstream(lines: &str) -> Self {
        let tables = Tables {
            upstream: lines,
            ..Tables::default()
        };
        Self::start(tables, &[]).await
    }

    /// A second key, for [`MODEL`].
    fn another_key(&self) -> String {
        let (key, record) = new_key(&[]);
        self.state.store.create_key(&record).unwrap();
        self.state.keys.add_known(&record);
        key
    }

    /// Sends a request to the client-facing service.
    async fn send(&self, req: Request<Full<Bytes>>) -> Response<ResponseBody> {
        super::respond(self.state.clone(), Role::Proxy, PEER.parse().unwrap(), req).await
    }

    /// Sends a request to the admin service.
    async fn admin(&self, req: Request<Full<Bytes>>) -> Response<ResponseBody> {
        super::respond(self.state.clone(), Role::Admin, PEER.parse().unwrap(), req).await
    }

    /// A chat request with the test key, `body`, and extra headers.
    fn chat(&self, body: serde_json::Value, headers: &[(&str, &str)]) -> Request<Full<Bytes>> {
        chat_as(&self.key, body, headers)
    }

    /// Shuts the state down the way `app::run` does after its connections
    /// ended, so every record that will ever be written is in the store; then
    /// reads the records and the key.
    async fn settle(self) -> Settled {
        let state = &self.state;
        state.shutdown.cancel();
        state.tracker.close();
        state.tracker.wait().await;
        state.writer.close().await;
        let records = state.store.query_usage(&UsageQuery::default()).unwrap();
        let key = state.store.key_by_id(&self.key_id).unwrap().unwrap();
        let live = state.keys.lookup(&self.key).await.unwrap().unwrap();
        Settled {
            records,
            charged: QUOTA - key.quota_remaining.unwrap(),
            live_charged: QUOTA - live.remaining().unwrap(),
            upstream_requests: self
                .upstream
                .stats
                .requests
                .load(std::sync::atomic::Ordering::Relaxed),
        }
    }
}

/// A whole gateway (`app::run`) on 127.0.0.1 sockets, for what needs real
/// connections: timeouts, the connection cap, the shutdown sequence.
struct Running {
    proxy: SocketAddr,
    key: String,
    key_id: String,
    store_path: std::path::PathBuf,
    stop: tokio_util::sync::CancellationToken,
    task: tokio::task::JoinHandle<Result<(), crate::app::StartError>>,
    _upstream: Mock,
    _dir: tempfile::TempDir,
}

impl Running {
    /// Starts a gateway with `tables` and one key.
    async fn start(tables: Tables<'_>) -> Self {
        let upstream =
            sluice_mock::start("127.0.0.1:0".parse().unwrap(), MockConfig::default(), None)
                .await
                .unwrap();
        let dir = tempfile::tempdir().unwrap();
        let config = config(dir.path(), upstream.addr, tables);
        let (key, record) = new_key(&[]);
        let store_path = config.store.path.clone();
        crate::store::open(config.store.backend, &store_path)
            .unwrap()
            .create_key(&record)
            .unwrap();
        let stop = tokio_util::sync::CancellationToken::new();
        let (ready, bound) = tokio::sync::oneshot::channel();
        let task = tokio::spawn(crate::app::run(config, stop.clone(), move |b| {
            let _ = ready.send(b);
        }));
        let bound = bound.await.unwrap();
        Self {
            proxy: bound.proxy,
            key,
            key_id: record.id,
            store_path,
            stop,
            task,
            _upstream: upstream,
            _dir: dir,
        }
    }

    /// An HTTP/1 connection to the client-facing listener.
    async fn connect(&self) -> hyper::client::conn::http1::SendRequest<Full<Bytes>> {
        let tcp = tokio::net::TcpStream::connect(self.proxy).await.unwrap();
        let (sender, conn) =
            hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(tcp))
                .await
                .unwrap();
        tokio::spawn(conn);
        sender
    }

    /// Stops the gateway (within 30 s) and opens its store.
    async fn stop(self) -> std::sync::Arc<dyn crate::store::Store> {
        self.stop.cancel();
        tokio::time::timeout(std::time::Duration::from_secs(30), self.task)
            .await
            .expect("shutdown within 30 s")
            .unwrap()
            .unwrap();
        crate::store::open(crate::config::Backend::Redb, &self.store_path).unwrap()
    }
}

/// What the store holds once a test's requests have settled.
struct Settled {
    records: Vec<UsageRecord>,
    /// Credits charged to the key in the store.
    charged: i64,
    /// Credits charged to the key's live (cached) quota.
    live_charged: i64,
    /// Requests the fake upstream received.
    upstream_requests: u64,
}

impl Settled {
    /// The one usage record, after checking that the key was charged its cost
    /// exactly once, in the store and live.
    fn once(&self) -> &UsageRecord {
        assert_eq!(self.records.len(), 1, "records: {:#?}", self.records);
        let record = &self.records[0];
        assert_eq!(
            self.charged, record.cost,
            "store charge vs the record's cost"
        );
        assert_eq!(
            self.live_charged, record.cost,
            "live charge vs the record's cost"
        );
        // Cap enforcement never charges past the reservation, even when an
        // upstream overran the cap it was sent.
        let billed = i64::from(record.prompt_tokens) + 2 * i64::from(record.completion_tokens);
        assert_eq!(
            record.cost,
            billed.min(record.reserved),
            "cost from the record's tokens"
        );
        record
    }
}

/// A chat request with `key`, `body`, and extra headers.
fn chat_as(key: &str, body: serde_json::Value, headers: &[(&str, &str)]) -> Request<Full<Bytes>> {
    let mut req = request("POST", "/v1/chat/completions", Some(body));
    let h = req.headers_mut();
    h.insert(
        http::header::AUTHORIZATION,
        format!("Bearer {key}").parse().unwrap(),
    );
    for (name, value) in headers {
        h.insert(
            http::HeaderName::try_from(*name).unwrap(),
            value.parse().unwrap(),
        );
    }
    req
}

/// A request with an optional JSON body.
fn request(method: &str, path: &str, body: Option<serde_json::Value>) -> Request<Full<Bytes>> {
    let bytes = body.map(|b| Bytes::from(b.to_string())).unwrap_or_default();
    let mut req = Request::new(Full::new(bytes));
    *req.method_mut() = method.parse().unwrap();
    *req.uri_mut() = path.parse().unwrap();
    req.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("application/json"),
    );
    req
}

/// A chat body for [`MODEL`].
fn chat_body(stream: bool) -> serde_json::Value {
    serde_json::json!({
        "model": MODEL,
        "stream": stream,
        "messages": [{"role": "user", "content": "Say hello to the gateway."}],
    })
}

/// The whole body as bytes.
async fn body_bytes(response: Response<ResponseBody>) -> Bytes {
    response.into_body().collect().await.unwrap().to_bytes()
}

/// The whole body as JSON.
async fn body_json(response: Response<ResponseBody>) -> serde_json::Value {
    serde_json::from_slice(&body_bytes(response).await).unwrap()
}
