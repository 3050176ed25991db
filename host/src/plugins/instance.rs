//! One loaded plugin: its pre-linked component, its instances (a warm pool, or a
//! fresh instance per call), and the typed calls into it under a deadline and a
//! memory limit. An instance that failed in any way is dropped, never reused.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use wasmtime::component::{Component, InstancePre};
use wasmtime::{Store, UpdateDeadline};

use super::bindings::types::{Channel, KeyInfo, RequestInfo, RouteStep, UsageRecord};
use super::bindings::{auth, router, shaper};
use super::engine::{EPOCH_TICK, PolicyEngine};
use super::host_state::{HostState, PluginShared};
use super::{PluginError, PolicyKind};
use crate::metrics::PluginLabels;

/// Raised from the epoch callback when a call outlives its deadline.
#[derive(Debug, thiserror::Error)]
#[error("plugin call exceeded its deadline")]
struct DeadlineExceeded;

/// Descriptive facts about a loaded plugin.
#[derive(Debug, Clone, serde::Serialize)]
pub struct PluginInfo {
    /// Name (file stem, or `builtin-…`).
    pub name: String,
    /// Policy kind.
    pub kind: PolicyKind,
    /// WIT package version it was built against.
    pub version: String,
    /// Hex SHA-256 of the component bytes (and config).
    pub hash: String,
    /// Load time, Unix ms.
    pub loaded_at_ms: u64,
    /// Where it came from (a path, or `embedded`).
    pub source: String,
}

enum Pre {
    Auth(auth::AuthPolicyPre<HostState>),
    Router(router::RouterPolicyPre<HostState>),
    Shaper(shaper::ShaperPolicyPre<HostState>),
}

enum Bindings {
    Auth(auth::AuthPolicy),
    Router(router::RouterPolicy),
    Shaper(shaper::ShaperPolicy),
}

struct Warm {
    store: Store<HostState>,
    bindings: Bindings,
    uses: u32,
}

/// A loaded, initialised plugin.
pub struct Plugin {
    /// Facts for listings.
    pub info: PluginInfo,
    /// State shared with this plugin's other instances and versions.
    pub shared: Arc<PluginShared>,
    /// Its metric labels, built once instead of on every call.
    pub labels: PluginLabels,
    pre: Pre,
    config_json: String,
    engine: wasmtime::Engine,
    settings: super::engine::InstanceSettings,
    idle: Mutex<Vec<Warm>>,
    /// Calls made.
    pub calls: AtomicU64,
    /// Calls that failed.
    pub failures: AtomicU64,
}

impl Plugin {
    /// Links a compiled component of a known kind and initialises one instance
    /// (which proves `init` accepts the config and seeds the warm pool).
    ///
    /// # Errors
    /// When linking, instantiation or `init` fails.
    pub async fn load(
        engine: &PolicyEngine,
        component: &Component,
        info: PluginInfo,
        config_json: String,
        shared: Arc<PluginShared>,
    ) -> Result<Self, PluginError> {
        let instance_pre: InstancePre<HostState> = engine
            .linker()
            .instantiate_pre(component)
            .map_err(|e| PluginError::Link(format!("{e:#}")))?;
        let link = |e: wasmtime::Error| PluginError::Link(format!("{e:#}"));
        let pre = match info.kind {
            PolicyKind::Auth => Pre::Auth(auth::AuthPolicyPre::new(instance_pre).map_err(link)?),
            PolicyKind::Router => {
                Pre::Router(router::RouterPolicyPre::new(instance_pre).map_err(link)?)
            }
            PolicyKind::Shaper => {
                Pre::Shaper(shaper::ShaperPolicyPre::new(instance_pre).map_err(link)?)
            }
        };
        let labels = PluginLabels {
            plugin: info.name.clone(),
            kind: info.kind.as_str().into(),
        };
        let plugin = Self {
            labels,
            info,
            shared,
            pre,
            config_json,
            engine: engine.engine().clone(),
            settings: engine.settings,
            idle: Mutex::new(Vec::new()),
            calls: AtomicU64::new(0),
            failures: AtomicU64::new(0),
        };
        let first = plugin.instantiate().await?;
        plugin.checkin(first);
        Ok(plugin)
    }

    async fn instantiate(&self) -> Result<Warm, PluginError> {
        let mut store = Store::new(
            &self.engine,
            HostState::new(self.shared.clone(), self.settings.memory_limit),
        );
        store.limiter(|s| s.limiter());
        store.epoch_deadline_callback(|mut ctx| {
            let state = ctx.data_mut();
            if state.budget_ticks == 0 {
                return Err(DeadlineExceeded.into());
            }
            state.budget_ticks -= 1;
            Ok(UpdateDeadline::Yield(1))
        });
        store.data_mut().budget_ticks = ticks(self.settings.init_timeout);
        store.set_epoch_deadline(1);
        let bindings = match &self.pre {
            Pre::Auth(pre) => {
                Bindings::Auth(pre.instantiate_async(&mut store).await.map_err(classify)?)
            }
            Pre::Router(pre) => {
                Bindings::Router(pre.instantiate_async(&mut store).await.map_err(classify)?)
            }
            Pre::Shaper(pre) => {
                Bindings::Shaper(pre.instantiate_async(&mut store).await.map_err(classify)?)
            }
        };
        let config = self.config_json.as_str();
        let init = match &bindings {
            Bindings::Auth(b) => {
                b.sluice_policy_lifecycle()
                    .call_init(&mut store, config)
                    .await
            }
            Bindings::Router(b) => {
                b.sluice_policy_lifecycle()
                    .call_init(&mut store, config)
                    .await
            }
            Bindings::Shaper(b) => {
                b.sluice_policy_lifecycle()
                    .call_init(&mut store, config)
                    .await
            }
        };
        init.map_err(classify)?.map_err(PluginError::Init)?;
        Ok(Warm {
            store,
            bindings,
            uses: 0,
        })
    }

    async fn checkout(&self) -> Result<Warm, PluginError> {
        let pooled = self.idle.lock().ok().and_then(|mut idle| idle.pop());
        let mut warm = match pooled {
            Some(warm) => warm,
            None => self.instantiate().await?,
        };
        warm.store.data_mut().budget_ticks = ticks(self.settings.call_timeout);
        warm.store.set_epoch_deadline(1);
        warm.uses += 1;
        Ok(warm)
    }

    fn checkin(&self, warm: Warm) {
        if warm.uses >= self.settings.max_uses {
            return;
        }
        if let Ok(mut idle) = self.idle.lock()
            && idle.len() < self.settings.max_idle
        {
            idle.push(warm);
        }
    }

    fn finish<R>(&self, warm: Warm, result: wasmtime::Result<R>) -> Result<R, PluginError> {
        self.calls.fetch_add(1, Ordering::Relaxed);
        match result {
            Ok(value) => {
                self.checkin(warm);
                Ok(value)
            }
            Err(e) => {
                self.failures.fetch_add(1, Ordering::Relaxed);
                Err(classify(e))
            }
        }
    }

    /// Calls `authorize`.
    ///
    /// # Errors
    /// Trap, deadline, memory limit, or a plugin of another kind.
    pub async fn authorize(
        &self,
        req: &RequestInfo,
        key: Option<&KeyInfo>,
    ) -> Result<auth::exports::sluice::policy::auth::Decision, PluginError> {
        let mut warm = self.checkout().await?;
        let Warm {
            store,
            bindings: Bindings::Auth(b),
            ..
        } = &mut warm
        else {
            return Err(PluginError::WrongKind);
        };
        let result = b
            .sluice_policy_auth()
            .call_authorize(&mut *store, req, key)
            .await;
        self.finish(warm, result)
    }

    /// Calls `route`.
    ///
    /// # Errors
    /// Trap, deadline, memory limit, or a plugin of another kind.
    pub async fn route(
        &self,
        req: &RequestInfo,
        candidates: &[Channel],
    ) -> Result<Result<Vec<RouteStep>, super::bindings::types::Denial>, PluginError> {
        let mut warm = self.checkout().await?;
        let Warm {
            store,
            bindings: Bindings::Router(b),
            ..
        } = &mut warm
        else {
            return Err(PluginError::WrongKind);
        };
        let result = b
            .sluice_policy_router()
            .call_route(&mut *store, req, candidates)
            .await;
        self.finish(warm, result)
    }

    /// Calls `shape`.
    ///
    /// # Errors
    /// Trap, deadline, memory limit, or a plugin of another kind.
    pub async fn shape(&self, rec: &UsageRecord) -> Result<Option<UsageRecord>, PluginError> {
        let mut warm = self.checkout().await?;
        let Warm {
            store,
            bindings: Bindings::Shaper(b),
            ..
        } = &mut warm
        else {
            return Err(PluginError::WrongKind);
        };
        let result = b.sluice_policy_shaper().call_shape(&mut *store, rec).await;
        self.finish(warm, result)
    }
}

/// A time budget in epoch ticks (at least one).
fn ticks(budget: std::time::Duration) -> u64 {
    u64::try_from(budget.as_nanos() / EPOCH_TICK.as_nanos())
        .unwrap_or(u64::MAX)
        .max(1)
}

/// Sorts a wasmtime error into the failure kinds operators see.
fn classify(e: wasmtime::Error) -> PluginError {
    if e.downcast_ref::<DeadlineExceeded>().is_some() {
        return PluginError::Deadline;
    }
    let full = format!("{e:#}");
    let cause = e.root_cause().to_string();
    if full.contains("memory") && (full.contains("grow") || full.contains("limit")) {
        PluginError::Memory(cause)
    } else {
        PluginError::Trap(cause)
    }
}
