//! The command line: `serve`, `keys`, `usage`, `plugin`, `config check` and
//! `mock-upstream`. Key and usage commands talk to the admin API when the
//! gateway is running, and to the store directly when it is stopped.

use std::io::Write as _;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context as _, bail};
use bytes::Bytes;
use clap::{Args, Parser, Subcommand};
use http_body_util::{BodyExt, Full};
use tokio_util::sync::CancellationToken;

use crate::config::{self, Config, LogFormat};
use crate::keys::NewKey;
use crate::plugins::engine::PolicyEngine;
use crate::plugins::host_state::PluginShared;
use crate::store::{KeyPatch, KeyStatus, UsageQuery};

/// Sluice: an OpenAI-compatible LLM gateway with WebAssembly policies.
#[derive(Debug, Parser)]
#[command(name = "sluice", version, about)]
pub struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the gateway.
    Serve {
        /// The TOML config file.
        #[arg(long, short)]
        config: PathBuf,
        /// Write the bound addresses as JSON here once listening.
        #[arg(long)]
        ready_file: Option<PathBuf>,
    },
    /// Manage API keys.
    Keys {
        #[command(subcommand)]
        command: KeysCommand,
    },
    /// Export usage records as JSON lines (newest first), with a progress indicator.
    Export {
        #[command(flatten)]
        target: Target,
        /// Output file.
        #[arg(long, short)]
        output: PathBuf,
        /// Only records newer than this (e.g. 7d); default: all.
        #[arg(long)]
        since: Option<String>,
    },
    /// Delete usage records older than an age (the gateway must be stopped), with progress.
    Purge {
        #[command(flatten)]
        target: Target,
        /// Age, e.g. 30d.
        #[arg(long)]
        older_than: String,
    },
    /// Show usage records as a table.
    Usage {
        #[command(flatten)]
        target: Target,
        /// Only records newer than this (e.g. 1h, 30m, 7d).
        #[arg(long, default_value = "1h")]
        since: String,
        /// Only this key id.
        #[arg(long)]
        key: Option<String>,
        /// Most rows.
        #[arg(long, default_value_t = 50)]
        limit: usize,
    },
    /// Work with policy plugins.
    Plugin {
        #[command(subcommand)]
        command: PluginCommand,
    },
    /// Validate configuration.
    Config {
        #[command(subcommand)]
        command: ConfigCommand,
    },
    /// Run the fake OpenAI-compatible upstream (tests, benchmarks, quick start).
    MockUpstream {
        /// Listen address.
        #[arg(long, default_value = "127.0.0.1:9100")]
        listen: SocketAddr,
        /// Chunks per streamed response.
        #[arg(long, default_value_t = 16)]
        chunks: u32,
        /// Delay between chunks, ms.
        #[arg(long, default_value_t = 0)]
        chunk_delay_ms: u64,
        /// Delay before response headers, ms.
        #[arg(long, default_value_t = 0)]
        ttfb_ms: u64,
        /// Failure mode: none, status, drop, drop_mid_stream, hang, stall, malformed.
        #[arg(long, default_value = "none")]
        fail: String,
        /// Status for --fail status.
        #[arg(long, default_value_t = 500)]
        status: u16,
        /// Serve TLS with a generated test CA written to DIR/ca.pem.
        #[arg(long)]
        tls_dir: Option<PathBuf>,
        /// Write the bound address here once listening.
        #[arg(long)]
        ready_file: Option<PathBuf>,
    },
}

/// Where key and usage commands act.
#[derive(Debug, Args)]
struct Target {
    /// The gateway's config (store location, admin address and token).
    #[arg(long, short)]
    config: PathBuf,
}

#[derive(Debug, Subcommand)]
enum KeysCommand {
    /// Create a key and print it (alone, on its own line) — it is shown only once.
    Create {
        #[command(flatten)]
        target: Target,
        /// Human name.
        #[arg(long)]
        name: String,
        /// Owner.
        #[arg(long, default_value = "")]
        owner: String,
        /// Allowed models, comma-separated (default: all).
        #[arg(long, value_delimiter = ',')]
        models: Vec<String>,
        /// Allowed client networks (CIDR), comma-separated (default: any).
        #[arg(long, value_delimiter = ',')]
        networks: Vec<String>,
        /// Quota in credits (default: unlimited).
        #[arg(long)]
        quota: Option<i64>,
        /// Expires after this long (e.g. 30d).
        #[arg(long)]
        expires: Option<String>,
        /// Requests per minute.
        #[arg(long)]
        rpm: Option<u32>,
        /// Tokens per minute.
        #[arg(long)]
        tpm: Option<u32>,
    },
    /// List keys.
    List {
        #[command(flatten)]
        target: Target,
    },
    /// Change a key's limits, quota, models or status.
    Update {
        #[command(flatten)]
        target: Target,
        /// Key id.
        id: String,
        /// New quota (resets remaining).
        #[arg(long)]
        quota: Option<i64>,
        /// New allowed models, comma-separated.
        #[arg(long, value_delimiter = ',')]
        models: Option<Vec<String>>,
        /// New RPM limit.
        #[arg(long)]
        rpm: Option<u32>,
        /// New TPM limit.
        #[arg(long)]
        tpm: Option<u32>,
        /// New status: active or disabled.
        #[arg(long)]
        status: Option<String>,
    },
    /// Revoke a key (takes effect on the next request).
    Revoke {
        #[command(flatten)]
        target: Target,
        /// Key id.
        id: String,
    },
}

#[derive(Debug, Subcommand)]
enum PluginCommand {
    /// Load a component and report its kind, version, imports and whether it initialises.
    Check {
        /// The `.wasm` file.
        file: PathBuf,
        /// Its config (TOML), as the gateway would pass it to `init`.
        #[arg(long)]
        config: Option<PathBuf>,
    },
    /// List the plugins loaded by a running gateway.
    List {
        #[command(flatten)]
        target: Target,
    },
    /// Ask a running gateway to rescan its plugin folder.
    Reload {
        #[command(flatten)]
        target: Target,
    },
}

#[derive(Debug, Subcommand)]
enum ConfigCommand {
    /// Validate a config file; prints each problem as file:line:col: key: message.
    Check {
        /// The config file.
        file: PathBuf,
    },
}

/// Sets up logging from the config: text or JSON on stderr, written by a
/// dedicated thread so that a slow stderr (a full pipe, a stalled journald)
/// never blocks request handling; beyond 128k buffered lines, lines are
/// dropped rather than waited for. Keep the guard alive for the whole command:
/// dropping it flushes what is still buffered.
pub fn init_logging(format: LogFormat, level: &str) -> tracing_appender::non_blocking::WorkerGuard {
    let (writer, guard) = tracing_appender::non_blocking(std::io::stderr());
    let _ = crate::metrics::LOG_WRITER_DROPS.set(writer.error_counter());
    let filter = tracing_subscriber::EnvFilter::try_new(level)
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(writer);
    let _ = match format {
        LogFormat::Json => builder.json().flatten_event(true).try_init(),
        LogFormat::Text => builder.try_init(),
    };
    guard
}

fn out(text: &str) -> anyhow::Result<()> {
    let mut stdout = std::io::stdout().lock();
    writeln!(stdout, "{text}")?;
    Ok(())
}

fn load(path: &Path) -> anyhow::Result<Config> {
    config::load(path).map_err(|e| anyhow::anyhow!("{e}"))
}

/// Runs the parsed command line.
///
/// # Errors
/// Whatever the command fails with; `main` prints it and exits non-zero.
pub async fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Serve { config, ready_file } => serve(&config, ready_file).await,
        Command::Keys { command } => keys(command).await,
        Command::Usage {
            target,
            since,
            key,
            limit,
        } => usage(&target, &since, key, limit).await,
        Command::Plugin { command } => plugin(command).await,
        Command::Export {
            target,
            output,
            since,
        } => export(&target, &output, since.as_deref()).await,
        Command::Purge { target, older_than } => purge(&target, &older_than).await,
        Command::Config {
            command: ConfigCommand::Check { file },
        } => {
            load(&file)?;
            out(&format!("{}: ok", file.display()))
        }
        Command::MockUpstream {
            listen,
            chunks,
            chunk_delay_ms,
            ttfb_ms,
            fail,
            status,
            tls_dir,
            ready_file,
        } => {
            let _logging = init_logging(LogFormat::Text, "info");
            let tls = tls_dir
                .as_deref()
                .map(crate::mock::test_tls)
                .transpose()
                .map_err(anyhow::Error::msg)?;
            let cfg = crate::mock::MockConfig {
                chunks,
                chunk_delay_ms,
                ttfb_ms,
                fail,
                status,
                ..crate::mock::MockConfig::default()
            };
            let mock = crate::mock::start(listen, cfg, tls).await?;
            tracing::info!(addr = %mock.addr, "mock upstream listening");
            if let Some(path) = ready_file {
                std::fs::write(path, mock.addr.to_string())?;
            }
            shutdown_signal().await;
            Ok(())
        }
    }
}

async fn shutdown_signal() {
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        () = term => {}
    }
}

async fn serve(path: &Path, ready_file: Option<PathBuf>) -> anyhow::Result<()> {
    let config = load(path)?;
    let _logging = init_logging(config.log.format, &config.log.level);
    let stop = CancellationToken::new();
    let trigger = stop.clone();
    tokio::spawn(async move {
        shutdown_signal().await;
        trigger.cancel();
    });
    crate::app::run(config, stop, |bound| {
        if let Some(file) = ready_file {
            let tmp = file.with_extension("tmp");
            let written = serde_json::to_vec(&bound)
                .map_err(std::io::Error::other)
                .and_then(|json| std::fs::write(&tmp, json))
                .and_then(|()| std::fs::rename(&tmp, &file));
            if let Err(e) = written {
                tracing::error!(file = %file.display(), error = %e, "cannot write ready file");
            }
        }
    })
    .await?;
    Ok(())
}

/// Calls the admin API of a running gateway; `None` when nothing listens there.
async fn admin_call(
    config: &Config,
    method: http::Method,
    path: &str,
    body: Option<serde_json::Value>,
) -> anyhow::Result<Option<serde_json::Value>> {
    let recorded = std::fs::read(crate::app::runtime_file(config))
        .ok()
        .and_then(|json| serde_json::from_slice::<serde_json::Value>(&json).ok())
        .and_then(|v| {
            v["admin"]
                .as_str()
                .and_then(|a| a.parse::<SocketAddr>().ok())
        });
    let mut addr = None;
    for candidate in [Some(config.admin.listen), recorded]
        .into_iter()
        .flatten()
        .filter(|a| a.port() != 0)
    {
        let reachable = tokio::time::timeout(
            Duration::from_millis(500),
            tokio::net::TcpStream::connect(candidate),
        )
        .await;
        if matches!(reachable, Ok(Ok(_))) {
            addr = Some(candidate);
            break;
        }
    }
    let Some(addr) = addr else { return Ok(None) };
    let token = config
        .admin
        .token
        .as_deref()
        .context("the gateway is running but admin.token is not configured")?;
    let client: hyper_util::client::legacy::Client<_, Full<Bytes>> =
        hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
            .build_http();
    let request = http::Request::builder()
        .method(method)
        .uri(format!("http://{addr}{path}"))
        .header(http::header::AUTHORIZATION, format!("Bearer {token}"))
        .header(http::header::CONTENT_TYPE, "application/json")
        .body(Full::new(Bytes::from(
            body.map(|b| b.to_string()).unwrap_or_default(),
        )))?;
    let response = client.request(request).await?;
    let status = response.status();
    let bytes = response.into_body().collect().await?.to_bytes();
    let value: serde_json::Value = serde_json::from_slice(&bytes).unwrap_or_default();
    if !status.is_success() {
        bail!(
            "admin API {status}: {}",
            value["error"]["message"]
                .as_str()
                .unwrap_or("request failed")
        );
    }
    Ok(Some(value))
}

fn parse_age(text: &str) -> anyhow::Result<u64> {
    let d =
        humantime::parse_duration(text).with_context(|| format!("invalid duration '{text}'"))?;
    Ok(u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

async fn keys(command: KeysCommand) -> anyhow::Result<()> {
    match command {
        KeysCommand::Create {
            target,
            name,
            owner,
            models,
            networks,
            quota,
            expires,
            rpm,
            tpm,
        } => {
            let config = load(&target.config)?;
            let expires_at_ms = expires
                .as_deref()
                .map(parse_age)
                .transpose()?
                .map(|ms| crate::keys::now_ms() + ms);
            let spec = NewKey {
                name,
                owner,
                models,
                networks,
                quota,
                expires_at_ms,
                rpm_limit: rpm,
                tpm_limit: tpm,
            };
            let body = serde_json::json!({"name": spec.name, "owner": spec.owner, "models": spec.models, "networks": spec.networks, "quota": spec.quota, "expires_at_ms": spec.expires_at_ms, "rpm_limit": spec.rpm_limit, "tpm_limit": spec.tpm_limit});
            if let Some(created) =
                admin_call(&config, http::Method::POST, "/admin/keys", Some(body)).await?
            {
                return out(created["key"].as_str().unwrap_or_default());
            }
            let store = crate::store::open(config.store.backend, &config.store.path)?;
            let (secret, record) = crate::keys::generate(&spec)?;
            store.create_key(&record)?;
            out(&secret)
        }
        KeysCommand::List { target } => {
            let config = load(&target.config)?;
            let keys = match admin_call(&config, http::Method::GET, "/admin/keys", None).await? {
                Some(v) => serde_json::from_value(v["data"].clone())?,
                None => {
                    let store = crate::store::open(config.store.backend, &config.store.path)?;
                    store
                        .list_keys()?
                        .iter()
                        .map(|k| serde_json::to_value(k).unwrap_or_default())
                        .collect::<Vec<serde_json::Value>>()
                }
            };
            out(&format!(
                "{:<22} {:<14} {:<20} {:<9} {:>12}  MODELS",
                "ID", "PREFIX", "NAME", "STATUS", "QUOTA LEFT"
            ))?;
            for k in keys {
                out(&format!(
                    "{:<22} {:<14} {:<20} {:<9} {:>12}  {}",
                    k["id"].as_str().unwrap_or(""),
                    k["prefix"].as_str().unwrap_or(""),
                    k["name"].as_str().unwrap_or(""),
                    k["status"].as_str().unwrap_or(""),
                    k["quota_remaining"]
                        .as_i64()
                        .map_or_else(|| "unlimited".into(), |q| q.to_string()),
                    k["models"]
                        .as_array()
                        .filter(|m| !m.is_empty())
                        .map_or_else(
                            || "*".into(),
                            |m| m
                                .iter()
                                .filter_map(|x| x.as_str())
                                .collect::<Vec<_>>()
                                .join(",")
                        ),
                ))?;
            }
            Ok(())
        }
        KeysCommand::Update {
            target,
            id,
            quota,
            models,
            rpm,
            tpm,
            status,
        } => {
            let status = match status.as_deref() {
                None => None,
                Some("active") => Some(KeyStatus::Active),
                Some("disabled") => Some(KeyStatus::Disabled),
                Some(other) => bail!(
                    "unknown status '{other}' (active or disabled; use `keys revoke` to revoke)"
                ),
            };
            let patch = KeyPatch {
                status,
                models,
                quota: quota.map(Some),
                rpm_limit: rpm.map(Some),
                tpm_limit: tpm.map(Some),
                ..KeyPatch::default()
            };
            change_key(&target, &id, patch).await
        }
        KeysCommand::Revoke { target, id } => {
            change_key(
                &target,
                &id,
                KeyPatch {
                    status: Some(KeyStatus::Revoked),
                    ..KeyPatch::default()
                },
            )
            .await
        }
    }
}

async fn change_key(target: &Target, id: &str, patch: KeyPatch) -> anyhow::Result<()> {
    let config = load(&target.config)?;
    let mut body = serde_json::Map::new();
    if let Some(s) = patch.status {
        body.insert("status".into(), serde_json::to_value(s)?);
    }
    if let Some(m) = &patch.models {
        body.insert("models".into(), serde_json::to_value(m)?);
    }
    if let Some(q) = patch.quota {
        body.insert("quota".into(), serde_json::to_value(q)?);
    }
    if let Some(r) = patch.rpm_limit {
        body.insert("rpm_limit".into(), serde_json::to_value(r)?);
    }
    if let Some(t) = patch.tpm_limit {
        body.insert("tpm_limit".into(), serde_json::to_value(t)?);
    }
    let updated = match admin_call(
        &config,
        http::Method::PATCH,
        &format!("/admin/keys/{id}"),
        Some(serde_json::Value::Object(body)),
    )
    .await?
    {
        Some(v) => v,
        None => {
            let store = crate::store::open(config.store.backend, &config.store.path)?;
            serde_json::to_value(store.update_key(id, &patch)?)?
        }
    };
    out(&format!(
        "{} {}",
        updated["id"].as_str().unwrap_or(id),
        updated["status"].as_str().unwrap_or("")
    ))
}

async fn usage(
    target: &Target,
    since: &str,
    key: Option<String>,
    limit: usize,
) -> anyhow::Result<()> {
    let config = load(&target.config)?;
    let since_ms = crate::keys::now_ms().saturating_sub(parse_age(since)?);
    let mut path = format!("/admin/usage?since_ms={since_ms}&limit={limit}");
    if let Some(k) = &key {
        path.push_str(&format!("&key_id={k}"));
    }
    let records: Vec<crate::store::UsageRecord> =
        match admin_call(&config, http::Method::GET, &path, None).await? {
            Some(v) => serde_json::from_value(v["data"].clone())?,
            None => {
                let store = crate::store::open(config.store.backend, &config.store.path)?;
                store.query_usage(&UsageQuery {
                    since_ms: Some(since_ms),
                    key_id: key,
                    limit: Some(limit),
                    ..UsageQuery::default()
                })?
            }
        };
    out(&format!(
        "{:<38} {:<14} {:<18} {:<12} {:>6} {:>8} {:>8} {:>8} {:>8}",
        "REQUEST", "KEY", "MODEL", "CHANNEL", "STATUS", "PROMPT", "COMPL", "COST", "MS"
    ))?;
    for r in &records {
        out(&format!(
            "{:<38} {:<14} {:<18} {:<12} {:>6} {:>8} {:>8} {:>8} {:>8}{}",
            r.request_id,
            r.key_prefix,
            r.model,
            r.channel_id,
            r.status,
            r.prompt_tokens,
            r.completion_tokens,
            r.cost,
            r.latency_ms,
            if r.partial { " partial" } else { "" }
        ))?;
    }
    out(&format!("{} records", records.len()))
}

/// A progress line on stderr, rewritten in place.
struct Progress {
    what: &'static str,
    done: u64,
    last: std::time::Instant,
}

impl Progress {
    fn new(what: &'static str) -> Self {
        Self {
            what,
            done: 0,
            last: std::time::Instant::now(),
        }
    }

    fn add(&mut self, n: u64) {
        self.done += n;
        if self.last.elapsed() >= Duration::from_millis(200) {
            self.last = std::time::Instant::now();
            eprint!("\r{} {} records…", self.what, self.done);
        }
    }

    fn finish(self) -> u64 {
        eprintln!("\r{} {} records, done.", self.what, self.done);
        self.done
    }
}

async fn export(target: &Target, output: &Path, since: Option<&str>) -> anyhow::Result<()> {
    let config = load(&target.config)?;
    let since_ms = since
        .map(parse_age)
        .transpose()?
        .map(|age| crate::keys::now_ms().saturating_sub(age));
    let mut file = std::io::BufWriter::new(
        std::fs::File::create(output)
            .with_context(|| format!("cannot create {}", output.display()))?,
    );
    let mut progress = Progress::new("exported");
    let mut before: Option<u64> = None;
    let store = match admin_call(&config, http::Method::GET, "/admin/usage?limit=1", None).await? {
        Some(_) => None,
        None => Some(crate::store::open(
            config.store.backend,
            &config.store.path,
        )?),
    };
    loop {
        let q = UsageQuery {
            since_ms,
            before_seq: before,
            limit: Some(1000),
            ..UsageQuery::default()
        };
        let page: Vec<crate::store::UsageRecord> = match &store {
            Some(store) => store.query_usage(&q)?,
            None => {
                let mut path = String::from("/admin/usage?limit=1000");
                if let Some(s) = since_ms {
                    path.push_str(&format!("&since_ms={s}"));
                }
                if let Some(b) = before {
                    path.push_str(&format!("&before_seq={b}"));
                }
                let v = admin_call(&config, http::Method::GET, &path, None)
                    .await?
                    .context("the gateway stopped during the export")?;
                serde_json::from_value(v["data"].clone())?
            }
        };
        for record in &page {
            serde_json::to_writer(&mut file, record)?;
            file.write_all(b"\n")?;
        }
        progress.add(page.len() as u64);
        match page.last() {
            Some(last) if page.len() == 1000 => before = Some(last.seq),
            _ => break,
        }
    }
    file.flush()?;
    let n = progress.finish();
    out(&format!("{n} records written to {}", output.display()))
}

async fn purge(target: &Target, older_than: &str) -> anyhow::Result<()> {
    let config = load(&target.config)?;
    if admin_call(&config, http::Method::GET, "/admin/usage?limit=1", None)
        .await?
        .is_some()
    {
        bail!(
            "the gateway is running: it purges by itself after store.retention; stop it to purge by hand"
        );
    }
    let cutoff = crate::keys::now_ms().saturating_sub(parse_age(older_than)?);
    let store = crate::store::open(config.store.backend, &config.store.path)?;
    let mut progress = Progress::new("purged");
    loop {
        let n = store.purge_before(cutoff, 1000)?;
        if n == 0 {
            break;
        }
        progress.add(n as u64);
    }
    let n = progress.finish();
    out(&format!("{n} records older than {older_than} deleted"))
}

async fn plugin(command: PluginCommand) -> anyhow::Result<()> {
    match command {
        PluginCommand::Check { file, config } => {
            let _logging = init_logging(LogFormat::Text, "warn");
            let bytes =
                std::fs::read(&file).with_context(|| format!("cannot read {}", file.display()))?;
            let toml_text = config.as_deref().map(std::fs::read_to_string).transpose()?;
            let defaults = crate::config::parse(
                "",
                Path::new("defaults.toml"),
                &std::collections::BTreeMap::new(),
            )
            .map_err(|e| anyhow::anyhow!("{e}"))?;
            let engine = Arc::new(PolicyEngine::new(
                crate::plugins::engine::InstanceSettings::from_config(&defaults.plugins),
                None,
            )?);
            let name = file
                .file_stem()
                .and_then(|s| s.to_str())
                .unwrap_or("plugin")
                .to_string();
            let compiling = engine.clone();
            let component = compiling.compile(&bytes)?;
            let imports = engine.imports(&component);
            let plugin = crate::plugins::loader::load_component(
                &engine,
                &name,
                bytes,
                toml_text.as_deref(),
                file.display().to_string(),
                PluginShared::new(&name),
            )
            .await
            .with_context(|| format!("{} is not a usable Sluice plugin", file.display()))?;
            out(&format!("file:     {}", file.display()))?;
            out(&format!("kind:     {}", plugin.info.kind.as_str()))?;
            out(&format!("world:    {}", plugin.info.world.as_str()))?;
            out(&format!("package:  sluice:policy@{}", plugin.info.version))?;
            out(&format!("sha256:   {}", plugin.info.hash))?;
            out(&format!("imports:  {}", imports.join(", ")))?;
            out("init:     ok (instantiated and initialised)")
        }
        PluginCommand::List { target } => {
            let config = load(&target.config)?;
            let list = admin_call(&config, http::Method::GET, "/admin/plugins", None)
                .await?
                .context("the gateway is not running (nothing listens on admin.listen)")?;
            out(&format!(
                "{:<24} {:<7} {:<8} {:>10} {:>9}  HASH",
                "NAME", "KIND", "VERSION", "CALLS", "FAILURES"
            ))?;
            for p in list["data"].as_array().into_iter().flatten() {
                out(&format!(
                    "{:<24} {:<7} {:<8} {:>10} {:>9}  {}",
                    p["name"].as_str().unwrap_or(""),
                    p["kind"].as_str().unwrap_or(""),
                    p["version"].as_str().unwrap_or(""),
                    p["calls"].as_u64().unwrap_or(0),
                    p["failures"].as_u64().unwrap_or(0),
                    p["hash"].as_str().unwrap_or("").get(..12).unwrap_or(""),
                ))?;
            }
            Ok(())
        }
        PluginCommand::Reload { target } => {
            let config = load(&target.config)?;
            let report = admin_call(&config, http::Method::POST, "/admin/plugins/reload", None)
                .await?
                .context("the gateway is not running (nothing listens on admin.listen)")?;
            out(&serde_json::to_string_pretty(&report)?)
        }
    }
}
