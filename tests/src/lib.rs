//! Harness for the end-to-end suite: starts the real `sluice` binary on port 0
//! against the in-process fake upstream, talks HTTP/1.1 or h2c to it, drives
//! the official `openai` Python SDK, and reads logs and store files.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;

pub use sluice_mock::{FailMode, Mock, MockConfig};

/// Paths of the test-fixture components, built by `build.rs`.
pub mod fixtures {
    include!(concat!(env!("OUT_DIR"), "/fixtures.rs"));
}

/// The model every test channel serves.
pub const MODEL: &str = "gpt-4o-mini";

/// A minimal non-streamed chat request body.
pub fn chat_body() -> serde_json::Value {
    serde_json::json!({"model": MODEL, "messages": [{"role": "user", "content": "hello"}]})
}

/// Prompt tokens of a chat `body`, as OpenAI counts them (and the gateway,
/// and the fake upstream).
pub fn prompt_tokens(body: &serde_json::Value) -> i64 {
    let mut tally = sluice_meter::Tally::new(sluice_meter::Encoding::O200kBase, usize::MAX);
    sluice_meter::prompt_tokens(
        sluice_meter::PromptKind::Chat,
        body.to_string().as_bytes(),
        &mut tally,
    )
    .expect("a chat body");
    i64::try_from(tally.total()).expect("a count")
}

/// The value of the first Prometheus sample line starting with `prefix` (0 if absent).
pub fn metric(metrics: &str, prefix: &str) -> f64 {
    metrics
        .lines()
        .find(|l| l.starts_with(prefix))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0)
}

/// The admin token every test gateway uses.
pub const ADMIN_TOKEN: &str = "test-admin-token-4f1c";
/// The upstream secret every test channel uses.
pub const UPSTREAM_KEY: &str = "sk-upstream-secret-9d2e";

/// The `sluice` binary built by this `cargo test` run.
pub fn sluice_bin() -> PathBuf {
    let exe = std::env::current_exe().expect("current exe");
    let dir = exe.parent().and_then(Path::parent).expect("target dir");
    let bin = dir.join("sluice");
    assert!(
        bin.exists(),
        "{} is missing: run `cargo test` from the workspace root so the sluice binary is built",
        bin.display()
    );
    bin
}

/// A plugin cache shared by the suite, so each gateway does not recompile the defaults.
pub fn shared_plugin_cache() -> PathBuf {
    let exe = std::env::current_exe().expect("current exe");
    exe.parent()
        .and_then(Path::parent)
        .expect("target dir")
        .join("e2e-plugin-cache")
}

/// Starts a fake upstream with `config` on a free port.
pub async fn mock(config: MockConfig) -> Mock {
    sluice_mock::start("127.0.0.1:0".parse().unwrap(), config, None)
        .await
        .expect("mock upstream")
}

/// A mock requiring the standard upstream key.
pub async fn keyed_mock(config: MockConfig) -> Mock {
    mock(MockConfig {
        api_key: Some(UPSTREAM_KEY.into()),
        ..config
    })
    .await
}

/// A running gateway process.
pub struct Gateway {
    /// Its temporary directory (config, store, plugins, logs).
    pub dir: tempfile::TempDir,
    /// Client-facing address.
    pub proxy: String,
    /// Admin address.
    pub admin: String,
    /// TLS listener's address, when one is configured.
    pub tls: Option<String>,
    child: Option<Child>,
    config_path: PathBuf,
}

/// Builder for a gateway's config.
pub struct GatewayBuilder {
    channels: Vec<String>,
    backend: &'static str,
    plugins: Vec<(String, PathBuf, Option<String>)>,
    env: Vec<(String, String)>,
    tables: std::collections::BTreeMap<&'static str, String>,
    ready_within: Duration,
    open_files: Option<u64>,
}

/// A `[[channels]]` entry, typed like the config it becomes.
#[derive(Debug, Clone)]
pub struct ChannelSpec {
    id: String,
    base_url: String,
    models: Vec<String>,
    priority: i32,
    weight: u32,
    renames: Vec<(String, String)>,
    provider: &'static str,
    tags: Vec<String>,
}

impl ChannelSpec {
    /// Channel `id` at `base_url` (e.g. `http://127.0.0.1:1234/v1`), serving
    /// `models` with the standard upstream key.
    pub fn at(id: &str, base_url: &str, models: &[&str]) -> Self {
        Self {
            id: id.into(),
            base_url: base_url.into(),
            models: models.iter().map(|m| (*m).to_string()).collect(),
            priority: 0,
            weight: 1,
            renames: Vec::new(),
            provider: "openai",
            tags: Vec::new(),
        }
    }

    /// Channel `id` speaking `provider`'s wire format to a fake upstream's
    /// mode for it (`anthropic` at `/v1`, `azure` at the root).
    pub fn provider(id: &str, provider: &'static str, mock: &Mock, models: &[&str]) -> Self {
        let base_url = match provider {
            "azure" => format!("http://{}", mock.addr),
            _ => format!("http://{}/v1", mock.addr),
        };
        Self {
            provider,
            ..Self::at(id, &base_url, models)
        }
    }

    /// Channel `id` in front of a fake upstream, serving `models`.
    pub fn mock(id: &str, mock: &Mock, models: &[&str]) -> Self {
        Self::at(id, &format!("http://{}/v1", mock.addr), models)
    }

    /// Its priority (higher is tried first).
    pub fn priority(mut self, priority: i32) -> Self {
        self.priority = priority;
        self
    }

    /// Its weight within its priority group.
    pub fn weight(mut self, weight: u32) -> Self {
        self.weight = weight;
        self
    }

    /// Its tags, which 1.2 routers read.
    pub fn tags(mut self, tags: &[&str]) -> Self {
        self.tags = tags.iter().map(|t| (*t).to_string()).collect();
        self
    }

    /// Asks the upstream for `upstream` when a client asks for `model`.
    pub fn rename(mut self, model: &str, upstream: &str) -> Self {
        self.renames.push((model.into(), upstream.into()));
        self
    }

    fn toml(&self) -> String {
        let models: Vec<String> = self.models.iter().map(|m| format!("{m:?}")).collect();
        let renames: Vec<String> = self
            .renames
            .iter()
            .map(|(from, to)| format!("{from:?} = {to:?}"))
            .collect();
        format!(
            "[[channels]]\nid = {:?}\nprovider = {:?}\nbase_url = {:?}\napi_key = \"env::UPSTREAM_KEY\"\nmodels = [{}]\npriority = {}\nweight = {}\nmodel_map = {{ {} }}\nforward_headers = [\"x-mock-*\"]\ntags = {:?}\n",
            self.id,
            self.provider,
            self.base_url,
            models.join(", "),
            self.priority,
            self.weight,
            renames.join(", "),
            self.tags,
        )
    }
}

/// A keyed mock in failure mode `fail` with `status` and `chunks`.
pub async fn failing_mock(fail: FailMode, status: u16, chunks: u32) -> Mock {
    keyed_mock(MockConfig {
        fail,
        status,
        chunks,
        ..MockConfig::default()
    })
    .await
}

/// What the host does when a plugin fails (`[plugins] on_failure`).
#[derive(Debug, Clone, Copy)]
pub enum OnFailure {
    /// Refuse the request (auth, router) or fall back (shaper).
    Deny,
    /// Carry on as if the plugin were absent.
    Skip,
}

/// A duration as the config writes it.
fn millis(d: Duration) -> String {
    format!("\"{}ms\"", d.as_millis())
}

impl Gateway {
    /// A builder.
    pub fn builder() -> GatewayBuilder {
        GatewayBuilder {
            channels: Vec::new(),
            backend: "redb",
            plugins: Vec::new(),
            env: Vec::new(),
            tables: std::collections::BTreeMap::new(),
            ready_within: Duration::from_secs(60),
            open_files: None,
        }
    }

    /// A gateway with default settings and one channel, `main`, serving
    /// [`MODEL`] from `upstream`.
    pub async fn serving(upstream: &Mock) -> Gateway {
        Self::builder()
            .channel(ChannelSpec::mock("main", upstream, &[MODEL]))
            .start()
            .await
    }

    /// The config file.
    pub fn config_path(&self) -> &Path {
        &self.config_path
    }

    /// Everything the process wrote to stderr so far.
    pub fn logs(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("sluice.log")).unwrap_or_default()
    }

    /// The plugin folder.
    pub fn plugin_dir(&self) -> PathBuf {
        self.dir.path().join("plugins")
    }

    /// Runs a CLI subcommand against this gateway's config as an operator's
    /// tool would: with the admin token, without the upstream secrets.
    pub fn cli(&self, args: &[&str]) -> std::process::Output {
        let mut cmd = Command::new(sluice_bin());
        cmd.args(args)
            .env_remove("UPSTREAM_KEY")
            .env("SLUICE_ADMIN_TOKEN", ADMIN_TOKEN);
        cmd.output().expect("run sluice cli")
    }

    /// Runs a CLI subcommand with the upstream secrets too (`config check`
    /// resolves them).
    pub fn cli_with_upstream_secrets(&self, args: &[&str]) -> std::process::Output {
        let mut cmd = Command::new(sluice_bin());
        cmd.args(args)
            .env("UPSTREAM_KEY", UPSTREAM_KEY)
            .env("SLUICE_ADMIN_TOKEN", ADMIN_TOKEN);
        cmd.output().expect("run sluice cli")
    }

    /// CPU time (user + system, all threads) the gateway process has used, from
    /// `/proc/PID/stat` in USER_HZ ticks (100 a second in the Linux ABI).
    pub fn cpu_time(&self) -> Duration {
        let pid = self.child.as_ref().expect("running").id();
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).expect("read stat");
        // Fields after the parenthesised command name; utime and stime are the
        // 14th and 15th fields of the line.
        let after_name = stat.rsplit_once(')').map_or("", |(_, rest)| rest);
        let ticks: u64 = after_name
            .split_whitespace()
            .skip(11)
            .take(2)
            .map(|t| t.parse::<u64>().expect("a tick count"))
            .sum();
        Duration::from_millis(ticks * 10)
    }

    /// Sends SIGTERM and waits for exit.
    pub fn stop(&mut self) -> std::process::ExitStatus {
        let mut child = self.child.take().expect("running");
        rustix::process::kill_process(
            rustix::process::Pid::from_child(&child),
            rustix::process::Signal::TERM,
        )
        .expect("send SIGTERM");
        wait_exit(&mut child, Duration::from_secs(30))
    }

    /// Sends SIGKILL and waits for exit.
    pub fn kill(&mut self) {
        let mut child = self.child.take().expect("running");
        let _ = child.kill();
        let _ = child.wait();
    }

    /// Waits up to `limit` for the process to exit by itself.
    pub fn exited(&mut self, limit: Duration) -> std::process::ExitStatus {
        let mut child = self.child.take().expect("running");
        wait_exit(&mut child, limit)
    }

    /// Key `id`'s ledger entries, newest first.
    pub async fn ledger(&self, id: &str) -> Vec<serde_json::Value> {
        let (status, body) = self
            .admin_json("GET", &format!("/admin/keys/{id}/ledger"), None)
            .await;
        assert_eq!(status, 200, "ledger: {body}");
        body["data"].as_array().cloned().unwrap_or_default()
    }

    /// Key `id`'s remaining quota, as stored.
    pub async fn remaining(&self, id: &str) -> Option<i64> {
        let (status, body) = self
            .admin_json("GET", &format!("/admin/keys/{id}"), None)
            .await;
        assert_eq!(status, 200, "key: {body}");
        body["quota_remaining"].as_i64()
    }

    /// Starts the process again on the same directory and config.
    pub async fn restart(&mut self) {
        assert!(self.child.is_none(), "stop or kill first");
        let (child, listening) = spawn(
            self.dir.path(),
            &self.config_path,
            &[],
            Duration::from_secs(60),
            None,
        )
        .await;
        self.child = Some(child);
        self.proxy = listening.proxy;
        self.admin = listening.admin;
        self.tls = listening.tls;
    }

    /// Creates a key through the admin API; returns `(secret, id)`.
    pub async fn create_key(&self, spec: serde_json::Value) -> (String, String) {
        let (status, body) = self.admin_json("POST", "/admin/keys", Some(spec)).await;
        assert_eq!(status, 201, "create key: {body}");
        (
            body["key"].as_str().unwrap().to_string(),
            body["record"]["id"].as_str().unwrap().to_string(),
        )
    }

    /// Calls the admin API with the right token.
    pub async fn admin_json(
        &self,
        method: &str,
        path: &str,
        body: Option<serde_json::Value>,
    ) -> (u16, serde_json::Value) {
        let headers = [("authorization", format!("Bearer {ADMIN_TOKEN}"))];
        let r = request(
            method,
            &format!("http://{}{path}", self.admin),
            &headers,
            body.map(|b| b.to_string()),
        )
        .await;
        (r.status, r.json())
    }

    /// `POST /v1/chat/completions` with `key` and a JSON body.
    pub async fn chat(&self, key: &str, body: serde_json::Value) -> Reply {
        request(
            "POST",
            &format!("http://{}/v1/chat/completions", self.proxy),
            &[("authorization", format!("Bearer {key}"))],
            Some(body.to_string()),
        )
        .await
    }

    /// `POST /v1/chat/completions` with `key`, extra headers, and the standard chat body.
    pub async fn chat_with_headers(&self, key: &str, extra: &[(&str, &str)]) -> Reply {
        let mut headers = vec![("authorization", format!("Bearer {key}"))];
        headers.extend(extra.iter().map(|(k, v)| (*k, (*v).to_string())));
        request(
            "POST",
            &format!("http://{}/v1/chat/completions", self.proxy),
            &headers,
            Some(chat_body().to_string()),
        )
        .await
    }

    /// The usage record of `key_id`'s only request, once it is stored (within
    /// 5 s); `None` when no single record appears.
    pub async fn only_usage_record(&self, key_id: &str) -> Option<serde_json::Value> {
        let path = format!("/admin/usage?key_id={key_id}");
        let stored = eventually(Duration::from_secs(5), async || {
            let (_, page) = self.admin_json("GET", &path, None).await;
            page["data"].as_array().is_some_and(|d| d.len() == 1)
        })
        .await;
        let (_, page) = self.admin_json("GET", &path, None).await;
        stored.then(|| page["data"][0].clone())
    }

    /// A Prometheus scrape.
    pub async fn metrics(&self) -> String {
        request("GET", &format!("http://{}/metrics", self.admin), &[], None)
            .await
            .text()
    }
}

impl Drop for Gateway {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

fn wait_exit(child: &mut Child, limit: Duration) -> std::process::ExitStatus {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(status) = child.try_wait().expect("wait") {
            return status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("gateway did not exit within {limit:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

async fn spawn(
    dir: &Path,
    config: &Path,
    env: &[(String, String)],
    ready_within: Duration,
    open_files: Option<u64>,
) -> (Child, Listening) {
    let ready = dir.join("ready.json");
    let _ = std::fs::remove_file(&ready);
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(dir.join("sluice.log"))
        .expect("log file");
    // With an open-file limit, util-linux's prlimit sets it (soft and hard)
    // and then becomes the gateway (it execs, keeping the process id).
    let mut cmd = match open_files {
        Some(n) => {
            let mut cmd = Command::new("prlimit");
            cmd.arg(format!("--nofile={n}:{n}"))
                .arg("--")
                .arg(sluice_bin());
            cmd
        }
        None => Command::new(sluice_bin()),
    };
    cmd.arg("serve")
        .arg("--config")
        .arg(config)
        .arg("--ready-file")
        .arg(&ready);
    cmd.env("UPSTREAM_KEY", UPSTREAM_KEY)
        .env("SLUICE_ADMIN_TOKEN", ADMIN_TOKEN)
        .env_remove("NO_COLOR");
    for (k, v) in env {
        cmd.env(k, v);
    }
    let mut child = cmd
        .stdout(Stdio::null())
        .stderr(Stdio::from(log))
        .spawn()
        .expect("spawn sluice");
    let deadline = Instant::now() + ready_within;
    loop {
        if let Ok(text) = std::fs::read_to_string(&ready) {
            let v: serde_json::Value = serde_json::from_str(&text).expect("ready json");
            let address = |name: &str| v[name].as_str().map(String::from);
            return (
                child,
                Listening {
                    proxy: address("proxy").expect("proxy address"),
                    admin: address("admin").expect("admin address"),
                    tls: address("tls"),
                },
            );
        }
        if let Some(status) = child.try_wait().expect("wait") {
            panic!(
                "sluice exited early ({status}): {}",
                std::fs::read_to_string(dir.join("sluice.log")).unwrap_or_default()
            );
        }
        assert!(Instant::now() < deadline, "sluice did not become ready");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

impl GatewayBuilder {
    /// Adds a channel.
    pub fn channel(mut self, spec: ChannelSpec) -> Self {
        self.channels.push(spec.toml());
        self
    }

    fn set(mut self, table: &'static str, key: &str, value: String) -> Self {
        let entry = self.tables.entry(table).or_default();
        entry.push_str(&format!("{key} = {value}\n"));
        self
    }

    /// `[server] max_body_bytes`.
    pub fn max_body_bytes(self, bytes: usize) -> Self {
        self.set("server", "max_body_bytes", bytes.to_string())
    }

    /// `[server] slow_request`.
    pub fn slow_request(self, after: Duration) -> Self {
        self.set("server", "slow_request", millis(after))
    }

    /// `[server] trusted_proxies`.
    pub fn trusted_proxies(self, networks: &[&str]) -> Self {
        let list: Vec<String> = networks.iter().map(|n| format!("{n:?}")).collect();
        self.set(
            "server",
            "trusted_proxies",
            format!("[{}]", list.join(", ")),
        )
    }

    /// `[log] level`.
    pub fn log_level(self, level: &str) -> Self {
        self.set("log", "level", format!("{level:?}"))
    }

    /// `[log] format = "json"`.
    pub fn json_logs(self) -> Self {
        self.set("log", "format", "\"json\"".into())
    }

    /// `[log] content = true`: prompts and completions in usage records.
    pub fn content_logging(self) -> Self {
        self.set("log", "content", "true".into())
    }

    /// `[upstream] connect_timeout`.
    pub fn connect_timeout(self, limit: Duration) -> Self {
        self.set("upstream", "connect_timeout", millis(limit))
    }

    /// `[upstream] first_byte_timeout`.
    pub fn first_byte_timeout(self, limit: Duration) -> Self {
        self.set("upstream", "first_byte_timeout", millis(limit))
    }

    /// `[upstream] idle_timeout`.
    pub fn idle_timeout(self, limit: Duration) -> Self {
        self.set("upstream", "idle_timeout", millis(limit))
    }

    /// `[upstream] ca_file`.
    pub fn upstream_ca(self, file: &Path) -> Self {
        self.set(
            "upstream",
            "ca_file",
            format!("{:?}", file.display().to_string()),
        )
    }

    /// `[store] flush_interval`.
    pub fn flush_interval(self, every: Duration) -> Self {
        self.set("store", "flush_interval", millis(every))
    }

    /// `[store] batch_size`.
    pub fn batch_size(self, records: usize) -> Self {
        self.set("store", "batch_size", records.to_string())
    }

    /// `[store] queue_capacity`.
    pub fn queue_capacity(self, records: usize) -> Self {
        self.set("store", "queue_capacity", records.to_string())
    }

    /// `[cache] key_ttl`.
    pub fn key_ttl(self, ttl: Duration) -> Self {
        self.set("cache", "key_ttl", millis(ttl))
    }

    /// `[plugins] instance_mode = "fresh"`: a new instance per call.
    pub fn fresh_instances(self) -> Self {
        self.set("plugins", "instance_mode", "\"fresh\"".into())
    }

    /// `[plugins] call_timeout`.
    pub fn call_timeout(self, budget: Duration) -> Self {
        self.set("plugins", "call_timeout", millis(budget))
    }

    /// `[plugins] memory_limit_mb`.
    pub fn plugin_memory_mb(self, mb: usize) -> Self {
        self.set("plugins", "memory_limit_mb", mb.to_string())
    }

    /// `[plugins] required`: folder plugins the gateway must not serve without.
    pub fn required_plugins(self, names: &[&str]) -> Self {
        let list: Vec<String> = names.iter().map(|n| format!("{n:?}")).collect();
        self.set("plugins", "required", format!("[{}]", list.join(", ")))
    }

    /// `[plugins] on_failure.<plugin>`.
    pub fn on_failure(self, plugin: &str, mode: OnFailure) -> Self {
        let mode = match mode {
            OnFailure::Deny => "deny",
            OnFailure::Skip => "skip",
        };
        self.set(
            "plugins",
            &format!("on_failure.{plugin}"),
            format!("{mode:?}"),
        )
    }

    /// Uses the SQLite backend.
    pub fn sqlite(mut self) -> Self {
        self.backend = "sqlite";
        self
    }

    /// Drops a plugin into the folder before start.
    pub fn plugin(mut self, name: &str, wasm: &str, config: Option<&str>) -> Self {
        self.plugins
            .push((name.into(), PathBuf::from(wasm), config.map(String::from)));
        self
    }

    /// Allows a slower start (the default is 60 s), e.g. for a large plugin
    /// compiled on first load.
    pub fn ready_within(mut self, limit: Duration) -> Self {
        self.ready_within = limit;
        self
    }

    /// Runs the gateway with this open-file limit (soft and hard).
    pub fn open_files(mut self, limit: u64) -> Self {
        self.open_files = Some(limit);
        self
    }

    /// `[plugins] headers`: the request headers policies see.
    pub fn policy_headers(self, names: &[&str]) -> Self {
        let list: Vec<String> = names.iter().map(|n| format!("{n:?}")).collect();
        self.set("plugins", "headers", format!("[{}]", list.join(", ")))
    }

    /// `[metering] enforce_cap`.
    pub fn enforce_cap(self, on: bool) -> Self {
        self.set("metering", "enforce_cap", on.to_string())
    }

    /// `[pricing] models."MODEL"`, as an inline table (`{ input = 2.0, output = 4.0 }`).
    pub fn price(self, model: &str, table: &str) -> Self {
        self.set("pricing", &format!("models.{model:?}"), table.into())
    }

    /// A TLS listener on a free port beside the plain one, serving this
    /// certificate and key.
    pub fn tls(self, cert_file: &Path, key_file: &Path) -> Self {
        self.set(
            "server",
            "tls",
            format!(
                "{{ listen = \"127.0.0.1:0\", cert_file = {:?}, key_file = {:?} }}",
                cert_file.display().to_string(),
                key_file.display().to_string()
            ),
        )
    }

    /// Sets an environment variable for the process.
    pub fn env(mut self, key: &str, value: &str) -> Self {
        self.env.push((key.into(), value.into()));
        self
    }

    /// Writes the config and starts the process.
    pub async fn start(self) -> Gateway {
        let dir = tempfile::tempdir().expect("tempdir");
        let plugins = dir.path().join("plugins");
        std::fs::create_dir_all(&plugins).unwrap();
        for (name, wasm, config) in &self.plugins {
            std::fs::copy(wasm, plugins.join(format!("{name}.wasm"))).unwrap();
            if let Some(c) = config {
                std::fs::write(plugins.join(format!("{name}.toml")), c).unwrap();
            }
        }
        let cache = shared_plugin_cache();
        let t = |name: &str| self.tables.get(name).cloned().unwrap_or_default();
        let config = format!(
            "[server]\nlisten = \"127.0.0.1:0\"\n{}\n[admin]\nlisten = \"127.0.0.1:0\"\ntoken = \"env::SLUICE_ADMIN_TOKEN\"\n\n[log]\n{}\n[store]\nbackend = \"{}\"\npath = \"store.db\"\n{}\n[plugins]\ndir = \"plugins\"\ncache_dir = {:?}\n{}\n[upstream]\n{}\n[cache]\n{}\n[metering]\n{}\n[pricing]\n{}\n{}",
            t("server"),
            t("log"),
            self.backend,
            t("store"),
            cache.display().to_string(),
            t("plugins"),
            t("upstream"),
            t("cache"),
            t("metering"),
            t("pricing"),
            self.channels.join("\n"),
        );
        let config_path = dir.path().join("sluice.toml");
        std::fs::write(&config_path, config).unwrap();
        let (child, listening) = spawn(
            dir.path(),
            &config_path,
            &self.env,
            self.ready_within,
            self.open_files,
        )
        .await;
        Gateway {
            dir,
            proxy: listening.proxy,
            admin: listening.admin,
            tls: listening.tls,
            child: Some(child),
            config_path,
        }
    }
}

/// The addresses a started gateway listens on.
struct Listening {
    proxy: String,
    admin: String,
    tls: Option<String>,
}

/// A buffered HTTP reply.
#[derive(Debug)]
pub struct Reply {
    /// Status code.
    pub status: u16,
    /// Headers.
    pub headers: http::HeaderMap,
    /// Body.
    pub body: Bytes,
}

impl Reply {
    /// Body as text.
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    /// Body as JSON (Null if not JSON).
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap_or_default()
    }

    /// The OpenAI error code, if the body is an error.
    pub fn error_code(&self) -> String {
        self.json()["error"]["code"]
            .as_str()
            .unwrap_or_default()
            .to_string()
    }
}

fn client(h2c: bool) -> Client<HttpConnector, Full<Bytes>> {
    let mut b = Client::builder(TokioExecutor::new());
    b.http2_only(h2c);
    b.build_http()
}

/// One HTTP/1.1 request, fully buffered.
pub async fn request(
    method: &str,
    url: &str,
    headers: &[(&str, String)],
    body: Option<String>,
) -> Reply {
    send(client(false), method, url, headers, body).await
}

/// One h2c (prior knowledge) request, fully buffered.
pub async fn request_h2c(
    method: &str,
    url: &str,
    headers: &[(&str, String)],
    body: Option<String>,
) -> Reply {
    send(client(true), method, url, headers, body).await
}

async fn send(
    client: Client<HttpConnector, Full<Bytes>>,
    method: &str,
    url: &str,
    headers: &[(&str, String)],
    body: Option<String>,
) -> Reply {
    let mut req = http::Request::builder().method(method).uri(url);
    for (k, v) in headers {
        req = req.header(*k, v);
    }
    if body.is_some() {
        req = req.header("content-type", "application/json");
    }
    let req = req
        .body(Full::new(Bytes::from(body.unwrap_or_default())))
        .unwrap();
    let resp = client.request(req).await.expect("request");
    let (parts, body) = resp.into_parts();
    Reply {
        status: parts.status.as_u16(),
        headers: parts.headers,
        body: body
            .collect()
            .await
            .map(|c| c.to_bytes())
            .unwrap_or_default(),
    }
}

/// Opens a streaming request and returns the response with its body unread.
pub async fn open_stream(
    url: &str,
    key: &str,
    body: serde_json::Value,
    headers: &[(&str, String)],
) -> http::Response<hyper::body::Incoming> {
    let mut req = http::Request::post(url)
        .header("authorization", format!("Bearer {key}"))
        .header("content-type", "application/json");
    for (k, v) in headers {
        req = req.header(*k, v);
    }
    client(false)
        .request(req.body(Full::new(Bytes::from(body.to_string()))).unwrap())
        .await
        .expect("stream request")
}

/// Runs `tests/python/sdk_client.py SCENARIO` with the given base URL and key;
/// returns its stdout (the script prints `ok` lines and exits non-zero on failure).
/// It runs on a blocking thread so the in-process mock upstream keeps serving.
pub async fn python(
    scenario: &str,
    base_url: &str,
    key: &str,
    extra_env: &[(&str, &str)],
) -> String {
    python_script("sdk_client.py", scenario, base_url, key, extra_env).await
}

/// Runs `tests/python/SCRIPT SCENARIO` like [`python`].
pub async fn python_script(
    script: &str,
    scenario: &str,
    base_url: &str,
    key: &str,
    extra_env: &[(&str, &str)],
) -> String {
    let script = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("python")
        .join(script);
    let mut cmd = Command::new("python3");
    cmd.arg(&script)
        .arg(scenario)
        .env("SLUICE_BASE_URL", base_url)
        .env("SLUICE_KEY", key)
        .envs(extra_env.iter().copied());
    let out = tokio::task::spawn_blocking(move || cmd.output())
        .await
        .expect("join")
        .expect("python3");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "python scenario {scenario} failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

/// Builds the Python plugin in `examples/plugins/NAME` (module `app`) against
/// `world` with componentize-py (installed by `scripts/setup.sh --python`) and
/// returns the component's path inside `out`.
pub async fn build_python_plugin(name: &str, world: &str, out: &Path) -> PathBuf {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let wasm = out.join(format!("{name}.wasm"));
    let mut cmd = Command::new("python3");
    cmd.arg("-c")
        .arg("import sys; from componentize_py import script; sys.argv[0] = 'componentize-py'; sys.exit(script())")
        .arg("-d")
        .arg(root.join("wit"))
        .arg("-w")
        .arg(world)
        .arg("componentize")
        .arg("-p")
        .arg(root.join("examples").join("plugins").join(name))
        .arg("app")
        .arg("-o")
        .arg(&wasm);
    let output = tokio::task::spawn_blocking(move || cmd.output())
        .await
        .expect("join")
        .expect("python3");
    assert!(
        output.status.success(),
        "componentize-py failed (run scripts/setup.sh --python to install it):\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    wasm
}

/// Polls `check` every 10 ms until it returns true or `limit` passes.
pub async fn eventually(limit: Duration, mut check: impl AsyncFnMut() -> bool) -> bool {
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline {
        if check().await {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    false
}

/// A certificate authority for TLS tests, and leaf certificates it signs
/// for `localhost` and `127.0.0.1`.
pub struct TestCa {
    issuer: rcgen::Issuer<'static, rcgen::KeyPair>,
    /// The CA certificate, PEM.
    pub pem: String,
}

impl TestCa {
    /// A new CA.
    pub fn new() -> Self {
        let key = rcgen::KeyPair::generate().expect("CA key");
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).expect("CA params");
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "Sluice client-TLS test CA");
        let cert = params.self_signed(&key).expect("CA certificate");
        Self {
            pem: cert.pem(),
            issuer: rcgen::Issuer::new(params, key),
        }
    }

    /// Writes a new leaf's certificate and key as `NAME.pem` and `NAME.key`
    /// in `dir`; their paths and the certificate's DER.
    pub fn leaf(&self, dir: &Path, name: &str) -> (PathBuf, PathBuf, Vec<u8>) {
        let key = rcgen::KeyPair::generate().expect("leaf key");
        let params =
            rcgen::CertificateParams::new(vec!["localhost".to_string(), "127.0.0.1".to_string()])
                .expect("leaf params");
        let cert = params
            .signed_by(&key, &self.issuer)
            .expect("leaf certificate");
        let (cert_file, key_file) = (
            dir.join(format!("{name}.pem")),
            dir.join(format!("{name}.key")),
        );
        std::fs::write(&cert_file, cert.pem()).unwrap();
        std::fs::write(&key_file, key.serialize_pem()).unwrap();
        (cert_file, key_file, cert.der().to_vec())
    }

    /// A TLS client trusting this CA only, offering `alpn`.
    pub fn connector(&self, alpn: &[&[u8]]) -> tokio_rustls::TlsConnector {
        let mut roots = rustls::RootCertStore::empty();
        let der = <rustls::pki_types::CertificateDer as rustls::pki_types::pem::PemObject>::from_pem_slice(
            self.pem.as_bytes(),
        )
        .expect("CA PEM");
        roots.add(der).expect("CA root");
        let mut config = rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .expect("TLS versions")
        .with_root_certificates(roots)
        .with_no_client_auth();
        config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
        tokio_rustls::TlsConnector::from(std::sync::Arc::new(config))
    }
}

impl Default for TestCa {
    fn default() -> Self {
        Self::new()
    }
}
