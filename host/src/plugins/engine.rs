//! The wasmtime engine shared by every plugin: epoch interruption driven by a
//! 1 ms ticker thread, the pooling allocator, one linker (deny-all WASI plus the
//! `host` interface), compilation with an on-disk artifact cache, and detection
//! of a component's policy kind and WIT version.

use std::hash::{Hash, Hasher};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use sha2::{Digest, Sha256};
use tokio::sync::Semaphore;
use wasmtime::component::{Component, HasSelf, Linker};
use wasmtime::{Config, Engine, InstanceAllocationStrategy, PoolingAllocationConfig};

use super::bindings;
use super::host_state::HostState;
use super::{PluginError, World};

/// The WIT package version this host implements.
pub const WIT_VERSION: &str = "1.2.0";
/// How often the epoch advances; also the granularity of call deadlines and yields.
pub const EPOCH_TICK: Duration = Duration::from_millis(1);

/// Limits applied to every plugin instance.
#[derive(Debug, Clone, Copy)]
pub struct InstanceSettings {
    /// Linear-memory limit per instance, bytes.
    pub memory_limit: usize,
    /// Deadline of one policy call.
    pub call_timeout: Duration,
    /// Deadline of instantiation plus `init`.
    pub init_timeout: Duration,
    /// Warm instances kept per plugin (0 = fresh instance per call).
    pub max_idle: usize,
    /// Calls after which a warm instance is recycled.
    pub max_uses: u32,
    /// Calls that may run past their first epoch slice at once (the config
    /// validator keeps it at one or more).
    pub overrun_lanes: usize,
}

impl InstanceSettings {
    /// The limits a `[plugins]` configuration asks for.
    pub fn from_config(p: &crate::config::PluginsConfig) -> Self {
        let fresh = p.instance_mode == crate::config::InstanceMode::Fresh;
        Self {
            memory_limit: p.memory_limit,
            call_timeout: p.call_timeout,
            init_timeout: (p.call_timeout * 50).max(Duration::from_secs(1)),
            max_idle: if fresh { 0 } else { p.max_idle_instances },
            max_uses: if fresh { 1 } else { p.instance_max_uses },
            overrun_lanes: p.overrun_lanes,
        }
    }
}

/// Pool slots: concurrent instances across all plugins.
const POOL_INSTANCES: u32 = 1000;

/// The engine, the linker, and the epoch ticker.
pub struct PolicyEngine {
    engine: Engine,
    linker: Linker<HostState>,
    /// Limits for instances created by this engine.
    pub settings: InstanceSettings,
    cache_dir: Option<PathBuf>,
    lanes: Arc<Semaphore>,
    stop_ticker: Arc<AtomicBool>,
}

impl Drop for PolicyEngine {
    fn drop(&mut self) {
        self.stop_ticker.store(true, Ordering::Relaxed);
    }
}

impl PolicyEngine {
    /// Builds the engine and linker and starts the epoch ticker.
    ///
    /// # Errors
    /// When wasmtime rejects the configuration or the ticker cannot start.
    pub fn new(
        settings: InstanceSettings,
        cache_dir: Option<PathBuf>,
    ) -> Result<Self, PluginError> {
        let mut pool = PoolingAllocationConfig::default();
        pool.total_component_instances(POOL_INSTANCES)
            .total_core_instances(POOL_INSTANCES * 4)
            .total_memories(POOL_INSTANCES)
            .total_tables(POOL_INSTANCES * 4)
            .total_stacks(POOL_INSTANCES)
            .max_memory_size(settings.memory_limit)
            .linear_memory_keep_resident(64 * 1024)
            .table_keep_resident(16 * 1024);
        let mut config = Config::new();
        config
            .epoch_interruption(true)
            .concurrency_support(false)
            .allocation_strategy(InstanceAllocationStrategy::Pooling(pool))
            .memory_reservation(
                u64::try_from(settings.memory_limit)
                    .unwrap_or(u64::MAX)
                    .max(1 << 26),
            )
            .memory_guard_size(1 << 16)
            .max_wasm_stack(512 * 1024);
        let engine = Engine::new(&config).map_err(|e| PluginError::Engine(format!("{e:#}")))?;
        let mut linker = Linker::new(&engine);
        wasmtime_wasi::p2::add_to_linker_async(&mut linker)
            .map_err(|e| PluginError::Engine(format!("{e:#}")))?;
        bindings::host::add_to_linker::<HostState, HasSelf<HostState>>(&mut linker, |s| s)
            .map_err(|e| PluginError::Engine(format!("{e:#}")))?;
        bindings::context::add_to_linker::<HostState, HasSelf<HostState>>(&mut linker, |s| s)
            .map_err(|e| PluginError::Engine(format!("{e:#}")))?;
        bindings::candidates::add_to_linker::<HostState, HasSelf<HostState>>(&mut linker, |s| s)
            .map_err(|e| PluginError::Engine(format!("{e:#}")))?;
        let stop_ticker = Arc::new(AtomicBool::new(false));
        let (ticking, stop) = (engine.clone(), stop_ticker.clone());
        std::thread::Builder::new()
            .name("sluice-epoch".into())
            .spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    std::thread::sleep(EPOCH_TICK);
                    ticking.increment_epoch();
                }
            })
            .map_err(|e| PluginError::Engine(format!("epoch ticker: {e}")))?;
        if let Some(dir) = &cache_dir {
            std::fs::create_dir_all(dir)
                .map_err(|e| PluginError::Engine(format!("plugin cache {}: {e}", dir.display())))?;
        }
        Ok(Self {
            engine,
            linker,
            settings,
            cache_dir,
            lanes: Arc::new(Semaphore::new(settings.overrun_lanes)),
            stop_ticker,
        })
    }

    /// The wasmtime engine.
    pub fn engine(&self) -> &Engine {
        &self.engine
    }

    /// The shared linker.
    pub fn linker(&self) -> &Linker<HostState> {
        &self.linker
    }

    /// The overrun lanes every plugin's calls share.
    pub fn lanes(&self) -> &Arc<Semaphore> {
        &self.lanes
    }

    /// Compiles a component, reusing a cached artifact keyed by the bytes' hash
    /// and the engine's compatibility hash. Blocking: call off the request path.
    ///
    /// # Errors
    /// When the bytes are not a valid component.
    pub fn compile(&self, bytes: &[u8]) -> Result<Component, PluginError> {
        let Some(dir) = &self.cache_dir else {
            return Component::new(&self.engine, bytes)
                .map_err(|e| PluginError::Compile(format!("{e:#}")));
        };
        let mut compat = std::collections::hash_map::DefaultHasher::new();
        self.engine
            .precompile_compatibility_hash()
            .hash(&mut compat);
        let path = dir.join(format!(
            "{}-{:016x}.cwasm",
            hex::encode(Sha256::digest(bytes)),
            compat.finish()
        ));
        if path.exists() {
            // SAFETY: the artifact was written by `Component::serialize` of this
            // engine configuration into Sluice's own cache directory, under a name
            // that binds it to the source bytes' hash and the engine's
            // compatibility hash; wasmtime additionally checks its header. The
            // directory must be writable only by the gateway's user (README).
            #[allow(unsafe_code)]
            let cached = unsafe { Component::deserialize_file(&self.engine, &path) };
            match cached {
                Ok(component) => return Ok(component),
                Err(e) => {
                    tracing::warn!(path = %path.display(), error = %e, "discarding unusable cached plugin artifact");
                    let _ = std::fs::remove_file(&path);
                }
            }
        }
        let component = Component::new(&self.engine, bytes)
            .map_err(|e| PluginError::Compile(format!("{e:#}")))?;
        match component.serialize() {
            Ok(artifact) => {
                let tmp = path.with_extension("tmp");
                if let Err(e) =
                    std::fs::write(&tmp, artifact).and_then(|()| std::fs::rename(&tmp, &path))
                {
                    tracing::warn!(path = %path.display(), error = %e, "cannot cache compiled plugin");
                }
            }
            Err(e) => tracing::warn!(error = %e, "cannot serialize compiled plugin"),
        }
        Ok(component)
    }

    /// Reads the policy world and WIT version from a component's exports.
    ///
    /// # Errors
    /// [`PluginError::IncompatibleVersion`] for another major version of
    /// `sluice:policy`, [`PluginError::WrongWorld`] when no policy is exported.
    pub fn detect(&self, component: &Component) -> Result<(World, String), PluginError> {
        let ty = component.component_type();
        let mut exports = Vec::new();
        let mut other_major = None;
        for (name, _) in ty.exports(&self.engine) {
            exports.push(name.to_string());
            let Some(rest) = name.strip_prefix("sluice:policy/") else {
                continue;
            };
            let (interface, version) = rest.split_once('@').unwrap_or((rest, ""));
            let Some(world) = World::exporting(interface) else {
                continue;
            };
            if version.split('.').next() == WIT_VERSION.split('.').next() {
                return Ok((world, version.to_string()));
            }
            other_major = Some(version.to_string());
        }
        match other_major {
            Some(found) => Err(PluginError::IncompatibleVersion {
                found: format!("sluice:policy@{found}"),
                supported: format!("sluice:policy@{WIT_VERSION}"),
            }),
            None => Err(PluginError::WrongWorld {
                exports: if exports.is_empty() {
                    "nothing".into()
                } else {
                    exports.join(", ")
                },
            }),
        }
    }

    /// The component's imports, for `plugin check`.
    pub fn imports(&self, component: &Component) -> Vec<String> {
        component
            .component_type()
            .imports(&self.engine)
            .map(|(name, _)| name.to_string())
            .collect()
    }
}
