//! One loaded plugin: its pre-linked component, its instances (a warm pool, or a
//! fresh instance per call), and the typed calls into it under a deadline and a
//! memory limit. An instance that failed in any way is dropped, never reused.
//! Both generations of the interface are called here: 1.0 plugins receive
//! records, 1.1 and 1.2 plugins handles to views the host lends for the call.

use std::sync::{Arc, OnceLock};

use tokio::sync::Semaphore;
use wasmtime::Store;
use wasmtime::component::{Component, InstancePre};

#[cfg(test)]
use super::ChannelFacts;
use super::bindings::planner::exports::sluice::policy::planner::{Candidate, Step};
use super::bindings::types::{Channel, Denial, RouteStep};
use super::bindings::{auth, authorizer, editor, planner, router, shaper};
use super::call_clock::DeadlineExceeded;
use super::engine::PolicyEngine;
use super::host_state::{HostState, PluginShared};
use super::idle::IdlePool;
use super::{Offer, Pick, PluginError, PolicyKind, World};
use crate::facts::RequestFacts;
use crate::keys::LiveKey;
use crate::metrics::{PluginLabels, PluginSeries};
use crate::store::UsageRecord;
use auth::exports::sluice::policy::auth::Decision;
use authorizer::exports::sluice::policy::authorizer::Verdict;

/// Descriptive facts about a loaded plugin.
#[derive(Debug, Clone, serde::Serialize)]
pub struct PluginInfo {
    /// Name (file stem, or `builtin-…`).
    pub name: String,
    /// Policy kind.
    pub kind: PolicyKind,
    /// The world it implements.
    pub world: World,
    /// WIT package version it was built against.
    pub version: String,
    /// Hex SHA-256 of the component bytes (and config).
    pub hash: String,
    /// Load time, Unix ms.
    pub loaded_at_ms: u64,
    /// Where it came from (a path, or `embedded`).
    pub source: String,
    /// Shadow mode (`mode = "shadow"` in its config): it runs on live
    /// traffic after the response, and its decisions are only logged and
    /// counted.
    pub shadow: bool,
}

enum Pre {
    Auth(auth::AuthPolicyPre<HostState>),
    Router(router::RouterPolicyPre<HostState>),
    Shaper(shaper::ShaperPolicyPre<HostState>),
    Authorizer(authorizer::AuthorizerPolicyPre<HostState>),
    Planner(planner::PlannerPolicyPre<HostState>),
    Editor(editor::EditorPolicyPre<HostState>),
}

enum Bindings {
    Auth(auth::AuthPolicy),
    Router(router::RouterPolicy),
    Shaper(shaper::ShaperPolicy),
    Authorizer(authorizer::AuthorizerPolicy),
    Planner(planner::PlannerPolicy),
    Editor(editor::EditorPolicy),
}

/// Applies `$body` to the value inside any `$from` variant, wrapping the result
/// in the same variant of `$to`: the six worlds' generated types differ, the
/// code that uses them does not.
macro_rules! per_world {
    ($value:expr, $from:ident => $to:ident, |$x:ident| $body:expr) => {
        match $value {
            $from::Auth($x) => $to::Auth($body),
            $from::Router($x) => $to::Router($body),
            $from::Shaper($x) => $to::Shaper($body),
            $from::Authorizer($x) => $to::Authorizer($body),
            $from::Planner($x) => $to::Planner($body),
            $from::Editor($x) => $to::Editor($body),
        }
    };
    ($value:expr, $from:ident, |$x:ident| $body:expr) => {
        match $value {
            $from::Auth($x) => $body,
            $from::Router($x) => $body,
            $from::Shaper($x) => $body,
            $from::Authorizer($x) => $body,
            $from::Planner($x) => $body,
            $from::Editor($x) => $body,
        }
    };
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
    /// Its metric series, looked up on the first call and kept.
    pub series: OnceLock<PluginSeries>,
    pre: Pre,
    /// Whether it imports `candidates` (1.2): only then are a plan's
    /// candidates lent to the call.
    reads_candidates: bool,
    config_json: String,
    engine: wasmtime::Engine,
    settings: super::engine::InstanceSettings,
    lanes: Arc<Semaphore>,
    idle: IdlePool<Warm>,
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
        let reads_candidates = engine
            .imports(component)
            .iter()
            .any(|name| name.starts_with("sluice:policy/candidates@"));
        let pre = match info.world {
            World::AuthPolicy => Pre::Auth(auth::AuthPolicyPre::new(instance_pre).map_err(link)?),
            World::RouterPolicy => {
                Pre::Router(router::RouterPolicyPre::new(instance_pre).map_err(link)?)
            }
            World::ShaperPolicy => {
                Pre::Shaper(shaper::ShaperPolicyPre::new(instance_pre).map_err(link)?)
            }
            World::AuthorizerPolicy => {
                Pre::Authorizer(authorizer::AuthorizerPolicyPre::new(instance_pre).map_err(link)?)
            }
            World::PlannerPolicy => {
                Pre::Planner(planner::PlannerPolicyPre::new(instance_pre).map_err(link)?)
            }
            World::EditorPolicy => {
                Pre::Editor(editor::EditorPolicyPre::new(instance_pre).map_err(link)?)
            }
        };
        let labels = PluginLabels {
            plugin: info.name.clone(),
            kind: info.kind.as_str().into(),
        };
        let plugin = Self {
            labels,
            series: OnceLock::new(),
            info,
            shared,
            pre,
            reads_candidates,
            config_json,
            engine: engine.engine().clone(),
            settings: engine.settings,
            lanes: engine.lanes().clone(),
            idle: IdlePool::new(engine.settings.max_idle),
        };
        let first = plugin.instantiate().await?;
        plugin.checkin(first);
        Ok(plugin)
    }

    async fn instantiate(&self) -> Result<Warm, PluginError> {
        let mut store = Store::new(
            &self.engine,
            HostState::new(
                self.shared.clone(),
                self.settings.memory_limit,
                self.lanes.clone(),
            ),
        );
        store.limiter(|s| s.limiter());
        store.epoch_deadline_callback(|mut ctx| ctx.data_mut().clock.tick());
        store.data_mut().clock.start(self.settings.init_timeout);
        store.set_epoch_deadline(1);
        let bindings = per_world!(&self.pre, Pre => Bindings, |pre| pre
            .instantiate_async(&mut store)
            .await
            .map_err(|e| classify(e).during("instantiate", store.data().stderr.take()))?);
        let config = self.config_json.as_str();
        let init = per_world!(&bindings, Bindings, |b| b
            .sluice_policy_lifecycle()
            .call_init(&mut store, config)
            .await);
        init.map_err(|e| classify(e).during("init", store.data().stderr.take()))?
            .map_err(PluginError::Init)?;
        store.data_mut().clock.finish();
        Ok(Warm {
            store,
            bindings,
            uses: 0,
        })
    }

    async fn checkout(&self) -> Result<Warm, PluginError> {
        let mut warm = match self.idle.take() {
            Some(warm) => warm,
            None => self.instantiate().await?,
        };
        warm.store
            .data_mut()
            .clock
            .start(self.settings.call_timeout);
        warm.store.set_epoch_deadline(1);
        warm.uses += 1;
        Ok(warm)
    }

    fn checkin(&self, mut warm: Warm) {
        warm.store.data_mut().clock.finish();
        if warm.uses >= self.settings.max_uses {
            return;
        }
        self.idle.give(warm);
    }

    /// Returns a called instance to the pool, or reports how its call of
    /// `export` failed (with what it wrote to stderr) and drops it.
    fn finish<R>(
        &self,
        warm: Warm,
        export: &str,
        result: wasmtime::Result<R>,
    ) -> Result<R, PluginError> {
        let stderr = &warm.store.data().stderr;
        match result {
            Ok(value) => {
                stderr.clear();
                self.checkin(warm);
                Ok(value)
            }
            Err(e) => Err(classify(e).during(export, stderr.take())),
        }
    }

    /// Asks an auth plugin about a request: `authorize` with records (1.0) or
    /// with handles to the host's views (1.1).
    ///
    /// # Errors
    /// Trap, deadline, memory limit, or a plugin of another kind.
    pub async fn authorize(
        &self,
        req: &Arc<RequestFacts>,
        key: Option<&Arc<LiveKey>>,
    ) -> Result<Decision, PluginError> {
        let mut warm = self.checkout().await?;
        let Warm {
            store, bindings, ..
        } = &mut warm;
        let result = match bindings {
            Bindings::Auth(b) => {
                let key = key.map(|k| super::key_info(k));
                b.sluice_policy_auth()
                    .call_authorize(&mut *store, &super::request_info(req), key.as_ref())
                    .await
            }
            Bindings::Authorizer(b) => {
                let lent = &mut store.data_mut().lent;
                let (req, key) = (lent.request(req), key.map(|k| lent.key(k)));
                let verdict = b
                    .sluice_policy_authorizer()
                    .call_authorize(&mut *store, req, key)
                    .await;
                store.data_mut().lent.take_back();
                verdict.map(|verdict| match verdict {
                    Verdict::Allow(labels) => Decision::Allow(labels),
                    Verdict::Deny(denial) => Decision::Deny(denial),
                })
            }
            _ => return Err(PluginError::WrongKind),
        };
        self.finish(warm, "authorize", result)
    }

    /// Asks a router plugin for a plan over `offers`: `route` with channel
    /// records (1.0) or `plan` over candidate positions with a handle to the
    /// request (1.1).
    ///
    /// # Errors
    /// Trap, deadline, memory limit, or a plugin of another kind.
    pub async fn route(
        &self,
        req: &Arc<RequestFacts>,
        offers: &[Offer<'_>],
    ) -> Result<Result<Vec<Pick>, Denial>, PluginError> {
        let mut warm = self.checkout().await?;
        let Warm {
            store, bindings, ..
        } = &mut warm;
        let export = if matches!(bindings, Bindings::Planner(_)) {
            "plan"
        } else {
            "route"
        };
        let result = match bindings {
            Bindings::Router(b) => {
                let channels: Vec<Channel> = offers.iter().map(channel).collect();
                b.sluice_policy_router()
                    .call_route(&mut *store, &super::request_info(req), &channels)
                    .await
                    .map(|plan| plan.map(|steps| picks_by_id(offers, steps)))
            }
            Bindings::Planner(b) => {
                let candidates: Vec<Candidate> = offers.iter().map(candidate).collect();
                let lent = &mut store.data_mut().lent;
                if self.reads_candidates {
                    lent.candidates(offers);
                }
                let req = lent.request(req);
                let plan = b
                    .sluice_policy_planner()
                    .call_plan(&mut *store, req, &candidates)
                    .await;
                store.data_mut().lent.take_back();
                plan.map(|plan| plan.map(|steps| picks_by_position(offers.len(), steps)))
            }
            _ => return Err(PluginError::WrongKind),
        };
        self.finish(warm, export, result)
    }

    /// Lets a shaper plugin rewrite the usage record in place; `false` drops the
    /// log record. 1.0 shapers get the record and return a new one, whose
    /// accounting fields the host restores; 1.1 editors edit a lent view that has
    /// no setters for accounting fields.
    ///
    /// # Errors
    /// Trap, deadline, memory limit, or a plugin of another kind. The record then
    /// holds the host's accounting fields but may hold part of a 1.1 editor's
    /// changes: the caller redacts it.
    pub async fn shape(&self, record: &mut UsageRecord) -> Result<bool, PluginError> {
        let mut warm = self.checkout().await?;
        let Warm {
            store, bindings, ..
        } = &mut warm;
        let export = if matches!(bindings, Bindings::Editor(_)) {
            "edit"
        } else {
            "shape"
        };
        let result = match bindings {
            Bindings::Shaper(b) => {
                let shaped = b
                    .sluice_policy_shaper()
                    .call_shape(&mut *store, &super::to_wit_record(record))
                    .await;
                shaped.map(|shaped| match shaped {
                    Some(shaped) => {
                        *record = super::from_wit_record(shaped, record);
                        true
                    }
                    None => false,
                })
            }
            Bindings::Editor(b) => {
                let lent = store.data_mut().lent.usage(std::mem::take(record));
                let keep = b.sluice_policy_editor().call_edit(&mut *store, lent).await;
                if let Some(edited) = store.data_mut().lent.take_back() {
                    *record = edited;
                }
                keep
            }
            _ => return Err(PluginError::WrongKind),
        };
        self.finish(warm, export, result)
    }
}

/// A 1.1 plan as picks: positions outside the offered list are dropped, as
/// unknown channel ids are for 1.0 routers.
fn picks_by_position(offered: usize, steps: Vec<Step>) -> Vec<Pick> {
    steps
        .into_iter()
        .filter_map(|step| {
            let offer = usize::try_from(step.candidate).ok()?;
            (offer < offered).then_some(Pick {
                offer,
                model: step.model,
            })
        })
        .collect()
}

/// A 1.0 plan as picks: steps name channels by id and always name a model.
fn picks_by_id(offers: &[Offer<'_>], steps: Vec<RouteStep>) -> Vec<Pick> {
    steps
        .into_iter()
        .filter_map(|step| {
            let offer = offers.iter().position(|o| o.id == step.channel_id)?;
            Some(Pick {
                offer,
                model: Some(step.upstream_model),
            })
        })
        .collect()
}

/// The 1.0 record of an offered channel.
fn channel(o: &Offer<'_>) -> Channel {
    Channel {
        id: o.id.into(),
        provider: o.facts.provider.clone(),
        priority: o.priority,
        weight: o.weight,
        upstream_model: o.upstream_model.into(),
        healthy: o.healthy,
        in_flight: o.in_flight,
        max_in_flight: o.max_in_flight,
        latency_ewma_ms: o.latency_ewma_ms,
        error_permille: o.error_permille,
    }
}

/// The 1.1 view of an offered channel.
fn candidate(o: &Offer<'_>) -> Candidate {
    Candidate {
        id: o.id.into(),
        priority: o.priority,
        weight: o.weight,
        healthy: o.healthy,
        in_flight: o.in_flight,
        max_in_flight: o.max_in_flight,
        latency_ewma_ms: o.latency_ewma_ms,
        error_permille: o.error_permille,
    }
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
    } else if e.downcast_ref::<wasmtime::Trap>().is_some() {
        PluginError::Trap(cause)
    } else {
        PluginError::Call(cause)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn offer(id: &'static str) -> Offer<'static> {
        Offer {
            id,
            facts: Box::leak(Box::new(Arc::new(ChannelFacts::default()))),
            priority: 0,
            weight: 1,
            upstream_model: "model",
            healthy: true,
            in_flight: 0,
            max_in_flight: 0,
            latency_ewma_ms: 0,
            error_permille: 0,
        }
    }

    #[test]
    fn only_a_trap_is_reported_as_one() {
        let trap = wasmtime::Error::new(wasmtime::Trap::UnreachableCodeReached)
            .context("error while executing at wasm backtrace");
        assert!(matches!(classify(trap), PluginError::Trap(_)));
        let mismatch = wasmtime::Error::msg("type mismatch with parameters");
        let failed = classify(mismatch);
        assert!(matches!(failed, PluginError::Call(_)), "{failed:?}");
        assert_eq!(
            failed.to_string(),
            "call failed: type mismatch with parameters"
        );
    }

    #[test]
    fn plan_steps_become_picks_and_positions_out_of_range_are_dropped() {
        let steps = vec![
            Step {
                candidate: 1,
                model: None,
            },
            Step {
                candidate: 7,
                model: None,
            },
            Step {
                candidate: 0,
                model: Some("override".into()),
            },
        ];
        assert_eq!(
            picks_by_position(2, steps),
            [
                Pick {
                    offer: 1,
                    model: None
                },
                Pick {
                    offer: 0,
                    model: Some("override".into())
                },
            ]
        );
    }

    #[test]
    fn route_steps_become_picks_and_unknown_channels_are_dropped() {
        let offers = [offer("a"), offer("b")];
        let step = |id: &str, model: &str| RouteStep {
            channel_id: id.into(),
            upstream_model: model.into(),
        };
        let steps = vec![step("b", "m-b"), step("zz", "m"), step("a", "m-a")];
        assert_eq!(
            picks_by_id(&offers, steps),
            [
                Pick {
                    offer: 1,
                    model: Some("m-b".into())
                },
                Pick {
                    offer: 0,
                    model: Some("m-a".into())
                },
            ]
        );
    }
}
