//! Loading plugins: the embedded defaults, the watched folder (`NAME.wasm` plus
//! optional `NAME.toml`), hot reload, and `plugin check`. Every new or changed
//! file is compiled off the request path and swapped in atomically; a file that
//! fails to compile, has the wrong world or version, or fails `init` is rejected
//! with one log line and the previous version keeps serving.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use sha2::{Digest, Sha256};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::engine::PolicyEngine;
use super::host_state::PluginShared;
use super::{Plugin, PluginError, PluginInfo, Policies, PolicyKind, PolicySet};
use crate::config::PluginsConfig;

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
}

struct Loaded {
    fingerprint: String,
    plugin: Arc<Plugin>,
}

/// Loads, watches and composes plugins.
pub struct Loader {
    engine: Arc<PolicyEngine>,
    policies: Arc<Policies>,
    config: PluginsConfig,
    builtins: BTreeMap<&'static str, Arc<Plugin>>,
    folder: Mutex<BTreeMap<String, Loaded>>,
    shared: Mutex<HashMap<String, Arc<PluginShared>>>,
    reloading: tokio::sync::Mutex<()>,
}

/// TOML plugin config → the JSON text handed to `init`.
fn config_json(toml_text: Option<&str>) -> Result<String, PluginError> {
    let Some(text) = toml_text else {
        return Ok("{}".into());
    };
    let value: toml::Table = toml::from_str(text)
        .map_err(|e| PluginError::Init(format!("invalid plugin config: {e}")))?;
    serde_json::to_string(&value).map_err(|e| PluginError::Init(format!("plugin config: {e}")))
}

/// Compiles, inspects, links and initialises one component.
///
/// # Errors
/// Any load failure, with its reason.
pub async fn load_component(
    engine: &Arc<PolicyEngine>,
    name: &str,
    bytes: Vec<u8>,
    toml_text: Option<&str>,
    source: String,
    shared: Arc<PluginShared>,
) -> Result<Plugin, PluginError> {
    let config = config_json(toml_text)?;
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
    };
    Plugin::load(engine, &component, info, config, shared).await
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
            shared: Mutex::new(HashMap::new()),
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

    /// Rescans the folder, loads what changed, and swaps in the new set.
    pub async fn reload(&self) -> ReloadReport {
        let _one_at_a_time = self.reloading.lock().await;
        let mut report = ReloadReport::default();
        let files = self
            .config
            .dir
            .as_deref()
            .map(scan_folder)
            .unwrap_or_default();
        let previous: BTreeMap<String, String> = self
            .folder
            .lock()
            .map(|f| {
                f.iter()
                    .map(|(name, l)| (name.clone(), l.fingerprint.clone()))
                    .collect()
            })
            .unwrap_or_default();
        let mut next: BTreeMap<String, Loaded> = BTreeMap::new();
        for (name, (wasm, toml_path)) in &files {
            let read = std::fs::read(wasm).and_then(|bytes| {
                let toml_text = toml_path
                    .as_ref()
                    .map(std::fs::read_to_string)
                    .transpose()?;
                Ok((bytes, toml_text))
            });
            let (bytes, toml_text) = match read {
                Ok(contents) => contents,
                Err(e) => {
                    self.keep_previous(name, &mut next);
                    reject(&mut report, name, wasm, &PluginError::Io(e.to_string()));
                    continue;
                }
            };
            let fingerprint = fingerprint(&bytes, toml_text.as_deref());
            if previous.get(name) == Some(&fingerprint) {
                self.keep_previous(name, &mut next);
                continue;
            }
            let loaded = load_component(
                &self.engine,
                name,
                bytes,
                toml_text.as_deref(),
                wasm.display().to_string(),
                self.shared_state(name),
            )
            .await;
            match loaded {
                Ok(plugin) => {
                    tracing::info!(plugin = %name, kind = plugin.info.kind.as_str(), version = %plugin.info.version, file = %wasm.display(), "plugin loaded");
                    report.loaded.push(name.clone());
                    next.insert(
                        name.clone(),
                        Loaded {
                            fingerprint,
                            plugin: Arc::new(plugin),
                        },
                    );
                }
                Err(e) => {
                    self.keep_previous(name, &mut next);
                    reject(&mut report, name, wasm, &e);
                }
            }
        }
        for name in previous.keys().filter(|n| !files.contains_key(*n)) {
            tracing::info!(plugin = %name, "plugin file removed; unloaded");
            report.removed.push(name.clone());
        }
        if let Ok(mut folder) = self.folder.lock() {
            *folder = next;
        }
        self.install();
        report
    }

    fn keep_previous(&self, name: &str, next: &mut BTreeMap<String, Loaded>) {
        if let Ok(folder) = self.folder.lock()
            && let Some(old) = folder.get(name)
        {
            next.insert(
                name.to_string(),
                Loaded {
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
                .filter(move |l| l.plugin.info.kind == kind)
                .map(|l| l.plugin.clone())
        };
        let mut set = PolicySet::default();
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
        set.shapers
            .extend(self.builtins.get("builtin-redactor").cloned());
        self.policies.install(set);
    }

    /// Every loaded plugin (builtins first) with its counters.
    pub fn list(&self) -> Vec<PluginStatus> {
        let status = |p: &Arc<Plugin>| {
            let (calls, failures) = self.policies.counts(p);
            PluginStatus {
                info: p.info.clone(),
                calls,
                failures,
            }
        };
        let mut all: Vec<_> = self.builtins.values().map(status).collect();
        if let Ok(folder) = self.folder.lock() {
            all.extend(folder.values().map(|l| status(&l.plugin)));
        }
        all
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
                if event.is_ok() {
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
                    () = tokio::time::sleep(POLL) => {}
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

/// `NAME.wasm` files of the folder with their optional `NAME.toml`, by name.
fn scan_folder(dir: &Path) -> BTreeMap<String, (PathBuf, Option<PathBuf>)> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return BTreeMap::new();
    };
    entries
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "wasm") && p.is_file())
        .filter_map(|p| {
            let name = p.file_stem()?.to_str()?.to_string();
            let toml = p.with_extension("toml");
            Some((name, (p.clone(), toml.is_file().then_some(toml))))
        })
        .collect()
}
