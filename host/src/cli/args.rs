//! What the commands share: the gateway a command acts on (its config), ages
//! given on the command line, lines printed on stdout, and logging set up
//! from a config.

use std::io::{IsTerminal as _, Write as _};
use std::path::{Path, PathBuf};

use anyhow::Context as _;
use clap::Args;

use crate::config::{self, Config, LogFormat};

/// Where key and usage commands act.
#[derive(Debug, Args)]
pub(super) struct Target {
    /// The gateway's config (store location, admin address and token).
    #[arg(long, short)]
    pub(super) config: PathBuf,
}

/// Sets up logging from the config: text or JSON on stderr (coloured only on a
/// terminal), written in batches by a dedicated thread ([`crate::log_sink`]) so
/// that a slow stderr never blocks request handling. Keep the guard alive for
/// the whole command: dropping it writes what is still buffered.
///
/// # Errors
/// When the log thread cannot be started.
pub(super) fn init_logging(
    format: LogFormat,
    level: &str,
) -> anyhow::Result<crate::log_sink::LogGuard> {
    let (writer, guard) = crate::log_sink::start(std::io::stderr())?;
    let _ = crate::metrics::LOG_WRITER_DROPS.set(writer.drop_counter());
    let filter = tracing_subscriber::EnvFilter::try_new(level)
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    // Colour only on a terminal: escape codes in a log file or journald are noise.
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(writer);
    let _ = match format {
        LogFormat::Json => builder.json().flatten_event(true).try_init(),
        LogFormat::Text => builder
            .event_format(crate::log_format::TextFormat::new(
                tracing_subscriber::fmt::time::SystemTime,
            ))
            .try_init(),
    };
    Ok(guard)
}

/// Prints a line on stdout.
pub(super) fn out(text: &str) -> anyhow::Result<()> {
    let mut stdout = std::io::stdout().lock();
    writeln!(stdout, "{text}")?;
    Ok(())
}

/// Loads and validates a config file.
pub(super) fn load(path: &Path) -> anyhow::Result<Config> {
    config::load(path).map_err(|e| anyhow::anyhow!("{e}"))
}

/// Loads a config for a tool that never calls an upstream: channel secrets
/// are not needed (see [`config::load_for_tools`]).
pub(super) fn load_for_tools(path: &Path) -> anyhow::Result<Config> {
    config::load_for_tools(path).map_err(|e| anyhow::anyhow!("{e}"))
}

/// An age such as `7d` or `30m`, in milliseconds.
pub(super) fn parse_age(text: &str) -> anyhow::Result<u64> {
    let d =
        humantime::parse_duration(text).with_context(|| format!("invalid duration '{text}'"))?;
    Ok(u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}
