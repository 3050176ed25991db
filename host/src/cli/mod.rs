//! The command line: `serve`, `keys`, `usage`, `export`, `purge`, `audit`,
//! `plugin` and `config check`. Key, usage and audit commands talk to the
//! admin API when the gateway is running, and to the store directly when it
//! is stopped.

mod admin_client;
mod args;
mod audit;
mod keys;
mod plugin;
mod plugin_new;
mod plugin_test;
mod usage;

use std::path::{Path, PathBuf};

use clap::{Parser, Subcommand};
use tokio_util::sync::CancellationToken;

use args::{Target, init_logging, load, out};
use audit::audit;
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
    /// Recompute every key's balance from the ledger; exits non-zero on any mismatch.
    Audit {
        #[command(flatten)]
        target: Target,
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
}

#[derive(Debug, Subcommand)]
enum ConfigCommand {
    /// Validate a config file; prints each problem as file:line:col: key: message.
    Check {
        /// The config file.
        file: PathBuf,
    },
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
        Command::Audit { target } => audit(&target).await,
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
    let _logging = init_logging(config.log.format, &config.log.level)?;
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
