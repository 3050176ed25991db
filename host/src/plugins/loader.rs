//! Loading plugins: the embedded defaults, the watched folder (`NAME.wasm` plus
//! optional `NAME.toml`), hot reload, and `plugin check`. Every new or changed
//! file is compiled off the request path and swapped in atomically; a file that
//! fails to compile, has the wrong world or version, or fails `init` is rejected
//! with one log line per version and the previous version keeps serving. A
//! folder that cannot be read keeps the loaded set (it never reads as empty);
//! files are compared by size and modification time before they are read, and
//! only creations, writes, renames and removals wake the watcher, so an idle
//! folder costs nothing.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use sha2::{Digest, Sha256};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::engine::PolicyEngine;
use super::host_state::PluginShared;
use super::{Plugin, PluginError, PluginInfo, Policies, PolicyKind, PolicySet};
use crate::config::PluginsConfig;
use crate::metrics::Metrics;

/// The default policies, built from `plugins/` by `build.rs`.
pub const EMBEDDED: [(&str, &[u8]); 3] = [
    (
        "builtin-key-auth",
        include_bytes!(concat!(env!("OUT_DIR"), "/sluice_key_auth.wasm")),
    ),
    (
        "builtin-router",
        include_bytes!(concat!(env!("OUT_DIR"), "/sluice_router.wasm")),
    ),
    (
        "builtin-redactor",
        include_bytes!(concat!(env!("OUT_DIR"), "/sluice_redactor.wasm")),
    ),
];

/// Quiet period after a file event before the folder is rescanned.
const DEBOUNCE: Duration = Duration::from_millis(100);
/// Rescan interval when no event arrives (a safety net for missed events).
const POLL: Duration = Duration::from_secs(5);

/// What one reload did.
#[derive(Debug, Default, Clone, serde::Serialize)]
pub struct ReloadReport {
    /// Plugins (re)loaded.
    pub loaded: Vec<String>,
    /// Plugins rejected, with the reason; their previous version (if any) keeps serving.
    pub rejected: Vec<(String, String)>,
    /// Plugins whose files disappeared.
    pub removed: Vec<String>,
    /// Why the folder could not be read (the loaded set was kept).
    pub error: Option<String>,
}

/// A plugin with its counters, for listings.
#[derive(Debug, Clone, serde::Serialize)]
pub struct PluginStatus {
    /// Facts.
    #[serde(flatten)]
    pub info: PluginInfo,
    /// Calls made.
    pub calls: u64,
    /// Calls failed.
    pub failures: u64,
    /// Whether requests use it: every auth plugin and shaper; of the
    /// routers, only the one that wins.
    pub active: bool,
}

/// A plugin file in the folder that the loader refused, and why (its
/// previous version, if any, keeps serving).
#[derive(Debug, Clone, serde::Serialize)]
pub struct RejectedFile {
    /// The plugin's name.
    pub name: String,
    /// The component's path.
    pub file: String,
    /// Why it was refused.
    pub reason: String,
}

/// The rejected version of a plugin's files.
struct Rejected {
    stamp: Stamp,
    file: PathBuf,
    reason: String,
}

/// Size and modification time of a plugin's files: a version's identity,
/// checked before anything is read.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Stamp {
    wasm: (u64, SystemTime),
    toml: Option<(u64, SystemTime)>,
}

struct Loaded {
    stamp: Stamp,
    fingerprint: String,
    plugin: Arc<Plugin>,
}

/// A plugin's files in the folder.
struct Entry {
    wasm: PathBuf,
    toml: Option<PathBuf>,
    stamp: Stamp,
}

/// What a scan of the folder found.
#[derive(Default)]
struct Scan {
    /// Plugins by name.
    plugins: BTreeMap<String, Entry>,
    /// `.wasm` entries that are not files (a directory, a dangling link), with why.
    odd: BTreeMap<PathBuf, &'static str>,
}

/// Loads, watches and composes plugins.
pub struct Loader {
    engine: Arc<PolicyEngine>,
    policies: Arc<Policies>,
    config: PluginsConfig,
    builtins: BTreeMap<&'static str, Arc<Plugin>>,
    folder: Mutex<BTreeMap<String, Loaded>>,
    /// The rejected version of each name, so it is compiled and logged once.
    rejected: Mutex<HashMap<String, Rejected>>,
    /// Odd folder entries already reported.
    reported: Mutex<BTreeSet<PathBuf>>,
    shared: Mutex<HashMap<String, Arc<PluginShared>>>,
    metrics: Arc<Metrics>,
    reloading: tokio::sync::Mutex<()>,
}

/// TOML plugin config → the JSON text handed to `init`.
/// A plugin's config as the JSON its `init` gets, and whether the host's
/// own key `mode` asks for shadow mode (`mode` is the host's: the plugin
/// never sees it).
fn config_json(toml_text: Option<&str>) -> Result<(String, bool), PluginError> {
    let Some(text) = toml_text else {
        return Ok(("{}".into(), false));
    };
    let mut value: toml::Table = toml::from_str(text)
        .map_err(|e| PluginError::Init(format!("invalid plugin config: {e}")))?;
    let shadow = match value.remove("mode") {
        None => false,
        Some(toml::Value::String(mode)) if mode == "enforce" => false,
        Some(toml::Value::String(mode)) if mode == "shadow" => true,
        Some(other) => {
            return Err(PluginError::Init(format!(
                "invalid plugin config: mode = {other} (\"enforce\" or \"shadow\")"
            )));
        }
    };
    // One top-level key per line, so a JSON position in a plugin's error
    // names the key (see `in_toml`).
    let json = serde_json::to_string_pretty(&value)
        .map_err(|e| PluginError::Init(format!("plugin config: {e}")))?;
    Ok((json, shadow))
}

/// An `init` error that points into the JSON the plugin was given (`… at
/// line L column C`, as serde reports it) restated against the TOML file:
/// the top-level key whose value holds that line, and the key's line in
/// the file. Other errors are returned as they are.
fn in_toml(message: &str, json: &str, toml_text: &str, file: &str) -> String {
    let Some(line) = message
        .rsplit_once(" at line ")
        .and_then(|(_, rest)| rest.split_whitespace().next())
        .and_then(|n| n.parse::<usize>().ok())
    else {
        return message.to_string();
    };
    // The last top-level key (indented by two spaces) starting at or before the line.
    let key = json
        .lines()
        .take(line)
        .filter_map(|l| l.strip_prefix("  \""))
        .filter_map(|l| l.split_once("\":").map(|(key, _)| key))
        .last();
    let Some(key) = key else {
        return message.to_string();
    };
    let toml_line = toml_text.lines().position(|l| {
        l.trim_start()
            .strip_prefix(key)
            .is_some_and(|rest| rest.trim_start().starts_with('='))
    });
    match toml_line {
        Some(n) => format!("{file}:{}: `{key}`: {message}", n + 1),
        None => format!("{file}: `{key}`: {message}"),
    }
}

/// Compiles, inspects, links and initialises one component; `toml_text` is
/// its config's text and file, which an `init` error is restated against.
///
/// # Errors
/// Any load failure, with its reason.
pub async fn load_component(
    engine: &Arc<PolicyEngine>,
    name: &str,
    bytes: Vec<u8>,
    toml_text: Option<(&str, &Path)>,
    source: String,
    shared: Arc<PluginShared>,
) -> Result<Plugin, PluginError> {
    let (config, shadow) = config_json(toml_text.map(|(text, _)| text))?;
    let mut hasher = Sha256::new();
    hasher.update(&bytes);
    hasher.update(config.as_bytes());
    let hash = hex::encode(hasher.finalize());
    let compiling = engine.clone();
    let component = tokio::task::spawn_blocking(move || compiling.compile(&bytes))
        .await
        .map_err(|e| PluginError::Compile(e.to_string()))??;
    let (world, version) = engine.detect(&component)?;
    let info = PluginInfo {
        name: name.into(),
        kind: world.kind(),
        world,
        version,
        hash,
        loaded_at_ms: crate::keys::now_ms(),
        source,
        shadow,
    };
    Plugin::load(engine, &component, info, config.clone(), shared)
        .await
        .map_err(|e| match (e, toml_text) {
            (PluginError::Init(message), Some((text, path))) => {
                let file = path.display().to_string();
                PluginError::Init(in_toml(&message, &config, text, &file))
            }
            (other, _) => other,
        })
}

impl Loader {
    /// Loads the enabled embedded defaults and the folder, and installs the set.
    ///
    /// # Errors
    /// When an embedded default fails to load (a build problem), or the folder
    /// cannot be created.
    pub async fn start(
        engine: Arc<PolicyEngine>,
        policies: Arc<Policies>,
        config: PluginsConfig,
        metrics: Arc<Metrics>,
    ) -> Result<Arc<Self>, PluginError> {
        let mut builtins = BTreeMap::new();
        let enabled = [
            config.builtin_auth,
            config.builtin_router,
            config.builtin_redactor,
        ];
        for ((name, bytes), on) in EMBEDDED.into_iter().zip(enabled) {
            if on {
                let plugin = load_component(
                    &engine,
                    name,
                    bytes.to_vec(),
                    None,
                    "embedded".into(),
                    PluginShared::new(name),
                )
                .await?;
                builtins.insert(name, Arc::new(plugin));
            }
        }
        if let Some(dir) = &config.dir {
            std::fs::create_dir_all(dir)
                .map_err(|e| PluginError::Io(format!("plugin folder {}: {e}", dir.display())))?;
        }
        let loader = Arc::new(Self {
            engine,
            policies,
            config,
            builtins,
            folder: Mutex::new(BTreeMap::new()),
            rejected: Mutex::new(HashMap::new()),
            reported: Mutex::new(BTreeSet::new()),
            shared: Mutex::new(HashMap::new()),
            metrics,
            reloading: tokio::sync::Mutex::new(()),
        });
        loader.reload().await;
        Ok(loader)
    }

    fn shared_state(&self, name: &str) -> Arc<PluginShared> {
        let Ok(mut states) = self.shared.lock() else {
            return PluginShared::new(name);
        };
        states
            .entry(name.to_string())
            .or_insert_with(|| PluginShared::new(name))
            .clone()
    }

    /// Rescans the folder, loads what changed, and swaps in the new set;
    /// counted in `sluice_plugin_rescans_total`.
    pub async fn reload(&self) -> ReloadReport {
        let _one_at_a_time = self.reloading.lock().await;
        self.metrics.plugin_rescans.inc();
        let mut report = ReloadReport::default();
        let scan = match self.config.dir.as_deref().map(scan_folder).transpose() {
            Ok(scan) => scan.unwrap_or_default(),
            Err(e) => {
                tracing::error!(dir = ?self.config.dir, error = %e, "cannot read the plugin folder; the loaded plugins keep serving");
                report.error = Some(e.to_string());
                return report;
            }
        };
        self.report_odd(&scan.odd);
        let mut next: BTreeMap<String, Loaded> = BTreeMap::new();
        for (name, entry) in &scan.plugins {
            if self.unchanged(name, &entry.stamp) {
                self.keep_previous(name, &mut next);
                continue;
            }
            match self.load_entry(name, entry).await {
                Ok(Some(loaded)) => {
                    report.loaded.push(name.clone());
                    next.insert(name.clone(), loaded);
                }
                Ok(None) => self.keep_previous(name, &mut next),
                Err(e) => {
                    self.keep_previous(name, &mut next);
                    if let Ok(mut rejected) = self.rejected.lock() {
                        let version = Rejected {
                            stamp: entry.stamp.clone(),
                            file: entry.wasm.clone(),
                            reason: e.to_string(),
                        };
                        rejected.insert(name.clone(), version);
                    }
                    reject(&mut report, name, &entry.wasm, &e);
                }
            }
        }
        if let Ok(mut folder) = self.folder.lock() {
            for name in folder.keys().filter(|n| !scan.plugins.contains_key(*n)) {
                tracing::warn!(plugin = %name, "plugin file removed; the plugin is unloaded");
                report.removed.push(name.clone());
            }
            *folder = next;
        }
        if let Ok(mut rejected) = self.rejected.lock() {
            rejected.retain(|name, _| scan.plugins.contains_key(name));
        }
        self.install();
        report
    }

    /// Whether `name`'s files are the version already loaded or rejected.
    fn unchanged(&self, name: &str, stamp: &Stamp) -> bool {
        let loaded = self
            .folder
            .lock()
            .is_ok_and(|f| f.get(name).is_some_and(|l| l.stamp == *stamp));
        loaded
            || self
                .rejected
                .lock()
                .is_ok_and(|r| r.get(name).is_some_and(|v| v.stamp == *stamp))
    }

    /// Reads and loads a changed entry; `None` when its contents turn out to
    /// be the loaded version's (touched, not changed).
    async fn load_entry(&self, name: &str, entry: &Entry) -> Result<Option<Loaded>, PluginError> {
        let bytes = std::fs::read(&entry.wasm).map_err(|e| PluginError::Io(e.to_string()))?;
        let toml_text = entry
            .toml
            .as_ref()
            .map(std::fs::read_to_string)
            .transpose()
            .map_err(|e| PluginError::Io(e.to_string()))?;
        let fingerprint = fingerprint(&bytes, toml_text.as_deref());
        if let Ok(mut folder) = self.folder.lock()
            && let Some(old) = folder.get_mut(name)
            && old.fingerprint == fingerprint
        {
            old.stamp = entry.stamp.clone();
            return Ok(None);
        }
        let plugin = load_component(
            &self.engine,
            name,
            bytes,
            toml_text.as_deref().zip(entry.toml.as_deref()),
            entry.wasm.display().to_string(),
            self.shared_state(name),
        )
        .await?;
        tracing::info!(plugin = %name, kind = plugin.info.kind.as_str(), version = %plugin.info.version, file = %entry.wasm.display(), "plugin loaded");
        if let Ok(mut rejected) = self.rejected.lock() {
            rejected.remove(name);
        }
        Ok(Some(Loaded {
            stamp: entry.stamp.clone(),
            fingerprint,
            plugin: Arc::new(plugin),
        }))
    }

    /// Logs each odd folder entry once, while it stays.
    fn report_odd(&self, odd: &BTreeMap<PathBuf, &'static str>) {
        let Ok(mut reported) = self.reported.lock() else {
            return;
        };
        for (path, what) in odd {
            if reported.insert(path.clone()) {
                tracing::warn!(file = %path.display(), "plugin folder entry is {what}; ignored");
            }
        }
        reported.retain(|p| odd.contains_key(p));
    }

    /// Whether the folder differs from what was last loaded or rejected (a
    /// cheap check: one directory read and a stat per file, no file opened).
    fn changed_on_disk(&self) -> bool {
        let Some(Ok(scan)) = self.config.dir.as_deref().map(scan_folder) else {
            return self.config.dir.is_some();
        };
        // A loaded plugin may also have a rejected newer version: compare
        // names, never counts.
        let vanished = self
            .folder
            .lock()
            .is_ok_and(|f| f.keys().any(|name| !scan.plugins.contains_key(name)));
        let odd_known = self
            .reported
            .lock()
            .is_ok_and(|r| r.len() == scan.odd.len() && scan.odd.keys().all(|p| r.contains(p)));
        vanished
            || !odd_known
            || scan
                .plugins
                .iter()
                .any(|(name, entry)| !self.unchanged(name, &entry.stamp))
    }

    fn keep_previous(&self, name: &str, next: &mut BTreeMap<String, Loaded>) {
        if let Ok(folder) = self.folder.lock()
            && let Some(old) = folder.get(name)
        {
            next.insert(
                name.to_string(),
                Loaded {
                    stamp: old.stamp.clone(),
                    fingerprint: old.fingerprint.clone(),
                    plugin: old.plugin.clone(),
                },
            );
        }
    }

    /// Composes the set from the builtins and the folder (see the module docs).
    fn install(&self) {
        let Ok(folder) = self.folder.lock() else {
            return;
        };
        let of_kind = |kind: PolicyKind| {
            folder
                .values()
                .filter(move |l| l.plugin.info.kind == kind && !l.plugin.info.shadow)
                .map(|l| l.plugin.clone())
        };
        let mut set = PolicySet {
            missing: self
                .config
                .required
                .iter()
                .filter(|name| !folder.contains_key(*name))
                .cloned()
                .collect(),
            ..PolicySet::default()
        };
        if !set.missing.is_empty() {
            tracing::warn!(missing = ?set.missing, "required plugins are not loaded; requests get 503 until they are");
        }
        set.auth
            .extend(self.builtins.get("builtin-key-auth").cloned());
        set.auth.extend(of_kind(PolicyKind::Auth));
        let routers: Vec<_> = of_kind(PolicyKind::Router).collect();
        if routers.len() > 1 {
            let names: Vec<_> = routers.iter().map(|r| r.info.name.as_str()).collect();
            tracing::warn!(routers = ?names, using = names.last().copied().unwrap_or_default(), "several router plugins; the last by file name wins");
        }
        set.router = routers
            .last()
            .cloned()
            .or_else(|| self.builtins.get("builtin-router").cloned());
        set.shapers.extend(of_kind(PolicyKind::Shaper));
        set.shadows = folder
            .values()
            .filter(|l| l.plugin.info.shadow)
            .map(|l| l.plugin.clone())
            .collect();
        set.shapers
            .extend(self.builtins.get("builtin-redactor").cloned());
        self.policies.install(set);
    }

    /// Every loaded plugin (builtins first) with its counters.
    pub fn list(&self) -> Vec<PluginStatus> {
        let installed = self.policies.snapshot();
        let status = |p: &Arc<Plugin>| {
            let (calls, failures) = self.policies.counts(p);
            PluginStatus {
                info: p.info.clone(),
                calls,
                failures,
                active: p.info.kind != PolicyKind::Router
                    || installed.router.as_ref().is_some_and(|r| Arc::ptr_eq(r, p)),
            }
        };
        let mut all: Vec<_> = self.builtins.values().map(status).collect();
        if let Ok(folder) = self.folder.lock() {
            all.extend(folder.values().map(|l| status(&l.plugin)));
        }
        all
    }

    /// The folder's plugin files the last scan refused, by name.
    pub fn rejected(&self) -> Vec<RejectedFile> {
        let Ok(rejected) = self.rejected.lock() else {
            return Vec::new();
        };
        let mut files: Vec<RejectedFile> = rejected
            .iter()
            .map(|(name, v)| RejectedFile {
                name: name.clone(),
                file: v.file.display().to_string(),
                reason: v.reason.clone(),
            })
            .collect();
        files.sort_by(|a, b| a.name.cmp(&b.name));
        files
    }

    /// Watches the folder and reloads on change until `shutdown`.
    ///
    /// # Errors
    /// When the OS watcher cannot be created.
    pub fn watch(
        self: &Arc<Self>,
        tracker: &TaskTracker,
        shutdown: CancellationToken,
    ) -> Result<(), PluginError> {
        let Some(dir) = self.config.dir.clone() else {
            return Ok(());
        };
        let changed = Arc::new(tokio::sync::Notify::new());
        let signal = changed.clone();
        let mut watcher =
            notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
                if event.is_ok_and(|e| is_change(e.kind)) {
                    signal.notify_one();
                }
            })
            .map_err(|e| PluginError::Io(format!("cannot watch {}: {e}", dir.display())))?;
        notify::Watcher::watch(&mut watcher, &dir, notify::RecursiveMode::NonRecursive)
            .map_err(|e| PluginError::Io(format!("cannot watch {}: {e}", dir.display())))?;
        let loader = self.clone();
        tracker.spawn(async move {
            let _watcher = watcher;
            loop {
                tokio::select! {
                    () = shutdown.cancelled() => break,
                    () = changed.notified() => tokio::time::sleep(DEBOUNCE).await,
                    () = tokio::time::sleep(POLL) => {
                        if !loader.changed_on_disk() {
                            continue;
                        }
                    }
                }
                loader.reload().await;
            }
        });
        Ok(())
    }
}

fn reject(report: &mut ReloadReport, name: &str, file: &Path, e: &PluginError) {
    tracing::error!(plugin = %name, file = %file.display(), reason = %e, "plugin rejected; the previous version (if any) keeps serving");
    report.rejected.push((name.to_string(), e.to_string()));
}

fn fingerprint(bytes: &[u8], toml_text: Option<&str>) -> String {
    let mut hasher = Sha256::new();
    hasher.update(bytes);
    hasher.update(toml_text.unwrap_or_default().as_bytes());
    hex::encode(hasher.finalize())
}

/// Whether a watcher event says the folder's contents changed: a creation,
/// a write (or a file closed after writing), a rename or a removal. Reads —
/// the loader's own among them — are not changes.
fn is_change(kind: notify::EventKind) -> bool {
    use notify::event::{AccessKind, AccessMode, EventKind, ModifyKind};
    matches!(
        kind,
        EventKind::Create(_)
            | EventKind::Remove(_)
            | EventKind::Modify(ModifyKind::Data(_) | ModifyKind::Name(_) | ModifyKind::Any)
            | EventKind::Access(AccessKind::Close(AccessMode::Write))
    )
}

/// Size and modification time of a file.
fn stamp_of(path: &Path) -> std::io::Result<(u64, SystemTime)> {
    let meta = std::fs::metadata(path)?;
    Ok((meta.len(), meta.modified()?))
}

/// A plugin's config file beside its component: `NAME.toml`, else the same
/// name with `_` and `-` swapped (Cargo writes `team_header.wasm` for the
/// package `team-header`, whose config an author names `team-header.toml`).
fn config_path(wasm: &Path, name: &str) -> Option<PathBuf> {
    [
        name.to_string(),
        name.replace('_', "-"),
        name.replace('-', "_"),
    ]
    .into_iter()
    .map(|stem| wasm.with_file_name(format!("{stem}.toml")))
    .find(|candidate| candidate.is_file())
}

/// The folder's `NAME.wasm` files with their optional `NAME.toml`, by name,
/// and the `.wasm` entries that are not files.
///
/// # Errors
/// When the folder cannot be read: the caller keeps what it has loaded.
fn scan_folder(dir: &Path) -> std::io::Result<Scan> {
    let mut scan = Scan::default();
    for entry in std::fs::read_dir(dir)? {
        let path = entry?.path();
        if path.extension().is_none_or(|x| x != "wasm") {
            continue;
        }
        let Some(name) = path.file_stem().and_then(|s| s.to_str()).map(String::from) else {
            continue;
        };
        let wasm = match std::fs::metadata(&path) {
            Ok(meta) if meta.is_file() => (meta.len(), meta.modified()?),
            Ok(_) => {
                scan.odd.insert(path, "not a file (a directory?)");
                continue;
            }
            Err(_) => {
                scan.odd.insert(path, "a dangling link");
                continue;
            }
        };
        let toml_path = config_path(&path, &name);
        let toml = toml_path.as_deref().and_then(|p| stamp_of(p).ok());
        scan.plugins.insert(
            name,
            Entry {
                wasm: path,
                toml: toml_path.filter(|_| toml.is_some()),
                stamp: Stamp { wasm, toml },
            },
        );
    }
    Ok(scan)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, serde::Deserialize)]
    #[allow(dead_code, reason = "only its deserialization errors are used")]
    struct TeamConfig {
        header: String,
        teams: Vec<String>,
        rpm_per_team: Option<u32>,
    }

    #[test]
    fn an_init_error_in_the_json_is_restated_against_the_toml() -> Result<(), PluginError> {
        let bad_teams = "header = \"x-team\"\nteams = [\"blue\", 7]\nrpm_per_team = 10\n";
        let bad_rpm = "header = \"x-team\"\nteams = [\"blue\"]\nrpm_per_team = \"ten\"\n";
        let (json, shadow) = config_json(Some(bad_rpm))?;
        assert!(!shadow);
        for (text, key, line) in [(bad_teams, "teams", 2), (bad_rpm, "rpm_per_team", 3)] {
            let (json, _) = config_json(Some(text))?;
            let error = serde_json::from_str::<TeamConfig>(&json)
                .err()
                .map(|e| format!("team-header config: {e}"))
                .unwrap_or_default();
            let restated = in_toml(&error, &json, text, "team-header.toml");
            assert!(
                restated.starts_with(&format!(
                    "team-header.toml:{line}: `{key}`: team-header config: "
                )),
                "{restated}"
            );
        }
        assert_eq!(
            in_toml("no position here", &json, bad_rpm, "f"),
            "no position here"
        );
        Ok(())
    }

    #[test]
    fn a_config_is_found_whether_its_name_uses_dashes_or_underscores() -> Result<(), std::io::Error>
    {
        let dir = tempfile::tempdir()?;
        let wasm = dir.path().join("team_header.wasm");
        std::fs::write(&wasm, b"")?;
        assert_eq!(config_path(&wasm, "team_header"), None);
        std::fs::write(dir.path().join("team-header.toml"), b"")?;
        assert_eq!(
            config_path(&wasm, "team_header"),
            Some(dir.path().join("team-header.toml"))
        );
        // The exact name wins when both exist.
        std::fs::write(dir.path().join("team_header.toml"), b"")?;
        assert_eq!(
            config_path(&wasm, "team_header"),
            Some(dir.path().join("team_header.toml"))
        );
        let dashed = dir.path().join("rate-cap.wasm");
        std::fs::write(dir.path().join("rate_cap.toml"), b"")?;
        assert_eq!(
            config_path(&dashed, "rate-cap"),
            Some(dir.path().join("rate_cap.toml"))
        );
        Ok(())
    }
}
