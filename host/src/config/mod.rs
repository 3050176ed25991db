//! Configuration: the raw TOML shape (`deny_unknown_fields`, so a typo is an
//! error), its validation into a typed [`Config`], secrets by reference
//! (`env::NAME`, `file::PATH`), and environment overrides through one function
//! that tests feed a map.

mod model;
mod raw;
#[cfg(test)]
mod tests;
mod validate;

use std::collections::BTreeMap;
use std::path::Path;

use toml::Spanned;

pub use model::*;
use raw::RawConfig;
use validate::Validator;

/// A configuration problem, rendered as `file:line:col: key: message`.
#[derive(Debug)]
pub struct ConfigError {
    /// The config file.
    pub file: String,
    /// 1-based line (0 when unknown).
    pub line: usize,
    /// 1-based column (0 when unknown).
    pub column: usize,
    /// Dotted key path.
    pub key: String,
    /// What is wrong.
    pub message: String,
}

impl std::fmt::Display for ConfigError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}:{}:{}: ", self.file, self.line, self.column)?;
        if !self.key.is_empty() {
            write!(f, "{}: ", self.key)?;
        }
        f.write_str(&self.message)
    }
}

impl std::error::Error for ConfigError {}

/// Where environment values come from: the process, or a map in tests.
pub trait Env {
    /// The value of `name`, if set.
    fn var(&self, name: &str) -> Option<String>;
}

/// The real process environment.
pub struct ProcessEnv;

impl Env for ProcessEnv {
    fn var(&self, name: &str) -> Option<String> {
        std::env::var(name).ok()
    }
}

impl Env for BTreeMap<String, String> {
    fn var(&self, name: &str) -> Option<String> {
        self.get(name).cloned()
    }
}

/// Reads, parses and validates a config file against the process environment.
///
/// # Errors
/// A [`ConfigError`] naming the file, line and key of the first problem.
pub fn load(path: &Path) -> Result<Config, ConfigError> {
    parse(&read(path)?, path, &ProcessEnv)
}

/// Reads a config for the operator's tools (`keys`, `usage`, `plugin list`,
/// …): as [`load`], but channel secrets are left unresolved (`api_key` is
/// `None`): the tools never call an upstream, so they work where the
/// upstream keys are not in the environment.
///
/// # Errors
/// A [`ConfigError`] naming the file, line and key of the first problem.
pub fn load_for_tools(path: &Path) -> Result<Config, ConfigError> {
    let text = read(path)?;
    let v = Validator::new(&text, path).without_upstream_secrets();
    let mut raw: RawConfig = toml::from_str(&text).map_err(|e| v.toml_error(&e))?;
    apply_overrides(&mut raw, &ProcessEnv);
    v.validate(raw, &ProcessEnv)
}

fn read(path: &Path) -> Result<String, ConfigError> {
    std::fs::read_to_string(path).map_err(|e| ConfigError {
        file: path.display().to_string(),
        line: 0,
        column: 0,
        key: String::new(),
        message: format!("cannot read: {e}"),
    })
}

/// Parses and validates config text; `path` names the file in errors and anchors
/// relative paths; `env` resolves `env::` secrets and overrides.
///
/// # Errors
/// A [`ConfigError`] naming the file, line and key of the first problem.
pub fn parse(text: &str, path: &Path, env: &dyn Env) -> Result<Config, ConfigError> {
    let v = Validator::new(text, path);
    let mut raw: RawConfig = toml::from_str(text).map_err(|e| v.toml_error(&e))?;
    apply_overrides(&mut raw, env);
    v.validate(raw, env)
}

/// Applies the environment overrides (`SLUICE_LISTEN`, `SLUICE_ADMIN_LISTEN`,
/// `SLUICE_LOG_LEVEL`, `SLUICE_ADMIN_TOKEN`). Overridden values
/// carry no span, so errors about them point at line 0.
fn apply_overrides(raw: &mut RawConfig, env: &dyn Env) {
    let spanned = |value: String| Spanned::new(0..0, value);
    if let Some(listen) = env.var("SLUICE_LISTEN") {
        raw.server.listen = Some(spanned(listen));
    }
    if let Some(listen) = env.var("SLUICE_ADMIN_LISTEN") {
        raw.admin.listen = Some(spanned(listen));
    }
    if let Some(level) = env.var("SLUICE_LOG_LEVEL") {
        raw.log.level = Some(level);
    }
    if env.var("SLUICE_ADMIN_TOKEN").is_some() {
        // The variable holds the token itself, so it becomes a reference to itself.
        raw.admin.token = Some(spanned("env::SLUICE_ADMIN_TOKEN".into()));
    }
}
