//! The command line: `serve`, `keys`, `usage`, `plugin`, `config check` and
//! `mock-upstream`. Key and usage commands talk to the admin API when the
//! gateway is running, and to the store directly when it is stopped.

mod admin_client;
mod keys;
mod plugin;
mod usage;

use std::io::Write as _;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use anyhow::Context as _;
use clap::{Args, Parser, Subcommand};
use tokio_util::sync::CancellationToken;

use crate::config::{self, Config, LogFormat};
use keys::{KeysCommand, keys};
use plugin::{PluginCommand, plugin};
use usage::{export, purge, usage};

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
    let running = crate::app::run(config, stop.clone(), |bound| {
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
    });
    tokio::pin!(running);
    // The first signal starts the graceful shutdown; run() then finishes it.
    tokio::select! {
        result = &mut running => return Ok(result?),
        () = shutdown_signal() => stop.cancel(),
    }
    running.await?;
    Ok(())
}

fn parse_age(text: &str) -> anyhow::Result<u64> {
    let d =
        humantime::parse_duration(text).with_context(|| format!("invalid duration '{text}'"))?;
    Ok(u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}
