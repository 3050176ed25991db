//! `sluice plugin`: check a component offline; list and reload a running
//! gateway's plugins.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::Context as _;
use clap::Subcommand;

use super::admin_client::admin_call;
use super::args::{Target, init_logging, load_for_tools, out};
use crate::config::LogFormat;
use crate::plugins::engine::PolicyEngine;
use crate::plugins::exercise::{Inputs, exercise};
use crate::plugins::host_state::PluginShared;

/// The log filter of `check` and `test`: the plugin's own lines, and the
/// gateway's warnings.
const PLUGIN_LOGS: &str = "warn,sluice::plugins::host_state=trace";

/// `sluice plugin …`.
#[derive(Debug, Subcommand)]
pub(super) enum PluginCommand {
    /// Load a component, report its kind, version and imports, initialise
    /// it (printing its log lines) and call its policy export once with
    /// sample inputs; non-zero when any step fails.
    Check {
        /// The `.wasm` file.
        file: PathBuf,
        /// Its config (TOML), as the gateway would pass it to `init`.
        #[arg(long)]
        config: Option<PathBuf>,
        /// Where compiled components are cached between checks.
        #[arg(long, env = "SLUICE_PLUGIN_CACHE", default_value_os_t = std::env::temp_dir().join("sluice-plugin-cache"))]
        cache_dir: PathBuf,
    },
    /// Run a plugin against the cases of a TOML file, without a gateway;
    /// non-zero when a call fails or a case's expectation is not met.
    Test {
        /// The `.wasm` file.
        file: PathBuf,
        /// Its config (TOML), as the gateway would pass it to `init`.
        #[arg(long)]
        config: Option<PathBuf>,
        /// The cases (`[[case]]` tables; see `sluice plugin test --help`).
        #[arg(long)]
        cases: PathBuf,
        /// Where compiled components are cached between runs.
        #[arg(long, env = "SLUICE_PLUGIN_CACHE", default_value_os_t = std::env::temp_dir().join("sluice-plugin-cache"))]
        cache_dir: PathBuf,
    },
    /// Time a plugin's calls on the cases of a TOML file: each case's call
    /// repeated, its mean, median and 99th percentile printed.
    Bench {
        /// The `.wasm` file.
        file: PathBuf,
        /// Its config (TOML), as the gateway would pass it to `init`.
        #[arg(long)]
        config: Option<PathBuf>,
        /// The cases (as for `plugin test`; expectations are not checked).
        #[arg(long)]
        cases: PathBuf,
        /// Calls per case.
        #[arg(long, default_value_t = 2000)]
        calls: u32,
        /// Where compiled components are cached between runs.
        #[arg(long, env = "SLUICE_PLUGIN_CACHE", default_value_os_t = std::env::temp_dir().join("sluice-plugin-cache"))]
        cache_dir: PathBuf,
    },
    /// Write a new plugin project that builds with one command: the policy,
    /// its config and cases, the WIT (and, for Rust, the SDK) it builds on.
    New {
        /// The plugin's name (lower case, dashes allowed).
        name: String,
        /// Its policy kind.
        #[arg(long, value_enum)]
        kind: super::plugin_new::Kind,
        /// Its language.
        #[arg(long, value_enum, default_value = "rust")]
        lang: super::plugin_new::Lang,
        /// The folder to create the project in.
        #[arg(long, default_value = ".")]
        dir: PathBuf,
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

/// Runs a `plugin` command.
pub(super) async fn plugin(command: PluginCommand) -> anyhow::Result<()> {
    match command {
        PluginCommand::Check {
            file,
            config,
            cache_dir,
        } => {
            // The plugin's own log lines (`init`'s among them) are shown.
            let _logging = init_logging(LogFormat::Text, PLUGIN_LOGS)?;
            let plugin = load_and_describe(&file, config.as_deref(), cache_dir).await?;
            let answer = exercise(&plugin, &Inputs::sample())
                .await
                .with_context(|| format!("{} failed its sample call", file.display()))?;
            out(&format!("call:     ok: {answer}"))
        }
        PluginCommand::Test {
            file,
            config,
            cases,
            cache_dir,
        } => {
            let _logging = init_logging(LogFormat::Text, PLUGIN_LOGS)?;
            let cases = super::plugin_test::Cases::read(&cases)?;
            let plugin = load_and_describe(&file, config.as_deref(), cache_dir).await?;
            if super::plugin_test::run(&plugin, &cases, out).await? {
                Ok(())
            } else {
                anyhow::bail!("some cases failed")
            }
        }
        PluginCommand::Bench {
            file,
            config,
            cases,
            calls,
            cache_dir,
        } => {
            let _logging = init_logging(LogFormat::Text, PLUGIN_LOGS)?;
            let cases = super::plugin_test::Cases::read(&cases)?;
            let plugin = load_and_describe(&file, config.as_deref(), cache_dir).await?;
            super::plugin_test::bench(&plugin, &cases, calls.max(1), out).await
        }
        PluginCommand::New {
            name,
            kind,
            lang,
            dir,
        } => {
            let root = super::plugin_new::create(&dir, &name, kind, lang)?;
            let (build, wasm) = super::plugin_new::build_command(&name, kind, lang);
            out(&format!(
                "created {}; build it with `{build}` there, then `sluice plugin test {wasm} --config {name}.toml --cases cases.toml` (see its README.md)",
                root.display()
            ))
        }
        PluginCommand::List { target } => {
            let config = load_for_tools(&target.config)?;
            let list = admin_call(&config, http::Method::GET, "/admin/plugins", None)
                .await?
                .context("the gateway is not running (nothing listens on admin.listen)")?;
            out(&format!(
                "{:<24} {:<7} {:<8} {:<7} {:>10} {:>9}  HASH",
                "NAME", "KIND", "VERSION", "ACTIVE", "CALLS", "FAILURES"
            ))?;
            for p in list["data"].as_array().into_iter().flatten() {
                out(&format!(
                    "{:<24} {:<7} {:<8} {:<7} {:>10} {:>9}  {}",
                    p["name"].as_str().unwrap_or(""),
                    p["kind"].as_str().unwrap_or(""),
                    p["version"].as_str().unwrap_or(""),
                    if p["active"] == true { "yes" } else { "no" },
                    p["calls"].as_u64().unwrap_or(0),
                    p["failures"].as_u64().unwrap_or(0),
                    p["hash"].as_str().unwrap_or("").get(..12).unwrap_or(""),
                ))?;
            }
            for r in list["rejected"].as_array().into_iter().flatten() {
                out(&format!(
                    "rejected: {} ({}): {}",
                    r["name"].as_str().unwrap_or(""),
                    r["file"].as_str().unwrap_or(""),
                    r["reason"].as_str().unwrap_or("")
                ))?;
            }
            Ok(())
        }
        PluginCommand::Reload { target } => {
            let config = load_for_tools(&target.config)?;
            let report = admin_call(&config, http::Method::POST, "/admin/plugins/reload", None)
                .await?
                .context("the gateway is not running (nothing listens on admin.listen)")?;
            out(&serde_json::to_string_pretty(&report)?)
        }
    }
}

/// Loads a component with the gateway's default limits, prints its kind,
/// world, version and imports, and initialises it.
async fn load_and_describe(
    file: &Path,
    config: Option<&Path>,
    cache_dir: PathBuf,
) -> anyhow::Result<crate::plugins::instance::Plugin> {
    let bytes = std::fs::read(file).with_context(|| format!("cannot read {}", file.display()))?;
    let toml_text = config.map(std::fs::read_to_string).transpose()?;
    let defaults = crate::config::parse(
        "",
        Path::new("defaults.toml"),
        &std::collections::BTreeMap::new(),
    )
    .map_err(|e| anyhow::anyhow!("{e}"))?;
    let engine = Arc::new(PolicyEngine::new(
        crate::plugins::engine::InstanceSettings::from_config(&defaults.plugins),
        Some(cache_dir),
    )?);
    let name = file
        .file_stem()
        .and_then(|s| s.to_str())
        .unwrap_or("plugin")
        .to_string();
    let component = engine.compile(&bytes)?;
    let imports = engine.imports(&component);
    let plugin = crate::plugins::loader::load_component(
        &engine,
        &name,
        bytes,
        toml_text.as_deref().zip(config),
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
    out("init:     ok (instantiated and initialised)")?;
    Ok(plugin)
}
