//! Channels and their live health: in-flight count, latency EWMA, error rate,
//! cooldown after consecutive failures, re-enable after a successful probe, and
//! operator enable/disable. Also the native priority/weight router used when
//! the router plugin is absent or fails.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::time::Duration;

use crate::config::ChannelConfig;
use crate::metrics::{ChannelLabels, Metrics};
use crate::plugins::ChannelFacts;
use crate::provider::Wire;

/// Live state of one channel.
#[derive(Debug, Default)]
pub struct Health {
    in_flight: AtomicU32,
    latency_ewma_us: AtomicU64,
    error_permille: AtomicU32,
    consecutive_failures: AtomicU32,
    cooling: AtomicBool,
    cooldown_until_ms: AtomicU64,
    disabled: AtomicBool,
}

/// A channel: its configuration, health, and what every request to it reuses.
#[derive(Debug)]
pub struct Channel {
    /// Configuration.
    pub config: ChannelConfig,
    /// Live health.
    pub health: Health,
    /// How the channel's provider is reached and spoken to.
    pub wire: Wire,
    /// Its provider, tags and models, as routers read them.
    pub facts: Arc<ChannelFacts>,
}

/// A snapshot of a channel's health, for policies and the admin API.
#[derive(Debug, Clone, serde::Serialize)]
pub struct HealthView {
    /// Channel id.
    pub id: String,
    /// Usable now.
    pub healthy: bool,
    /// Disabled by an operator.
    pub disabled: bool,
    /// In cooldown after failures.
    pub cooling_down: bool,
    /// Requests in flight.
    pub in_flight: u32,
    /// Latency EWMA, ms.
    pub latency_ewma_ms: u32,
    /// Error rate, ‰.
    pub error_permille: u32,
    /// Consecutive failures.
    pub consecutive_failures: u32,
}

/// Decrements a channel's in-flight count when dropped.
pub struct InFlight {
    channel: Arc<Channel>,
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.channel
            .health
            .in_flight
            .fetch_sub(1, Ordering::Relaxed);
    }
}

fn ewma(old: u64, sample: u64) -> u64 {
    if old == 0 {
        sample
    } else {
        (old * 7 + sample) / 8
    }
}

impl Channel {
    /// A channel with fresh health, its URIs and credential headers built once.
    pub fn new(config: ChannelConfig) -> Self {
        let wire = Wire::new(&config);
        let facts = Arc::new(ChannelFacts {
            provider: config.provider.as_str().to_string(),
            tags: config.tags.clone(),
            models: config.models.clone(),
        });
        Self {
            config,
            health: Health::default(),
            wire,
            facts,
        }
    }

    /// Healthy: not disabled, not cooling down, and below its concurrency limit.
    pub fn is_healthy(&self) -> bool {
        !self.health.disabled.load(Ordering::Relaxed)
            && !self.health.cooling.load(Ordering::Relaxed)
    }

    /// Whether another request fits under the concurrency limit.
    pub fn has_capacity(&self) -> bool {
        self.config.max_in_flight == 0
            || self.health.in_flight.load(Ordering::Relaxed) < self.config.max_in_flight
    }

    /// Counts a request in flight until the guard drops.
    pub fn enter(self: &Arc<Self>) -> InFlight {
        self.health.in_flight.fetch_add(1, Ordering::Relaxed);
        InFlight {
            channel: self.clone(),
        }
    }

    /// Records a successful attempt with its time to first byte.
    pub fn succeeded(&self, ttfb: Duration) {
        let h = &self.health;
        let us = u64::try_from(ttfb.as_micros()).unwrap_or(u64::MAX);
        h.latency_ewma_us.store(
            ewma(h.latency_ewma_us.load(Ordering::Relaxed), us),
            Ordering::Relaxed,
        );
        h.error_permille.store(
            (h.error_permille.load(Ordering::Relaxed) * 7) / 8,
            Ordering::Relaxed,
        );
        h.consecutive_failures.store(0, Ordering::Relaxed);
    }

    /// Records a failed attempt; returns true when this failure started a cooldown.
    pub fn failed(&self, failures_to_cooldown: u32, cooldown: Duration) -> bool {
        let h = &self.health;
        h.error_permille.store(
            (h.error_permille.load(Ordering::Relaxed) * 7 + 1000) / 8,
            Ordering::Relaxed,
        );
        let n = h.consecutive_failures.fetch_add(1, Ordering::Relaxed) + 1;
        if n >= failures_to_cooldown && !h.cooling.swap(true, Ordering::Relaxed) {
            let until =
                crate::keys::now_ms() + u64::try_from(cooldown.as_millis()).unwrap_or(u64::MAX);
            h.cooldown_until_ms.store(until, Ordering::Relaxed);
            tracing::warn!(channel = %self.config.id, failures = n, cooldown_ms = cooldown.as_millis() as u64, "channel cooling down");
            return true;
        }
        false
    }

    /// Takes the channel out for `pause` (an upstream's `retry-after`); it is
    /// probed and re-enabled after that, like after a cooldown.
    pub fn pause(&self, pause: Duration) {
        let h = &self.health;
        let until = crate::keys::now_ms() + u64::try_from(pause.as_millis()).unwrap_or(u64::MAX);
        h.cooldown_until_ms.fetch_max(until, Ordering::Relaxed);
        if !h.cooling.swap(true, Ordering::Relaxed) {
            tracing::warn!(channel = %self.config.id, pause_ms = pause.as_millis() as u64, "upstream asked for a pause (retry-after); channel paused");
        }
    }

    /// Whether the cooldown has run out and the channel should be probed.
    pub fn due_for_probe(&self) -> bool {
        self.health.cooling.load(Ordering::Relaxed)
            && crate::keys::now_ms() >= self.health.cooldown_until_ms.load(Ordering::Relaxed)
    }

    /// Ends the cooldown after a successful probe, or extends it after a failed one.
    pub fn probed(&self, ok: bool, cooldown: Duration) {
        if ok {
            self.health.consecutive_failures.store(0, Ordering::Relaxed);
            self.health.cooling.store(false, Ordering::Relaxed);
            tracing::info!(channel = %self.config.id, "channel probe succeeded; re-enabled");
        } else {
            let until =
                crate::keys::now_ms() + u64::try_from(cooldown.as_millis()).unwrap_or(u64::MAX);
            self.health
                .cooldown_until_ms
                .store(until, Ordering::Relaxed);
        }
    }

    /// Operator switch.
    pub fn set_disabled(&self, disabled: bool) {
        self.health.disabled.store(disabled, Ordering::Relaxed);
    }

    /// The channel as a router sees it for a request for `model`: its
    /// settings and a snapshot of its health, borrowed rather than copied.
    pub fn offer<'a>(&'a self, model: &'a str) -> crate::plugins::Offer<'a> {
        let h = &self.health;
        crate::plugins::Offer {
            id: &self.config.id,
            facts: &self.facts,
            priority: self.config.priority,
            weight: self.config.weight,
            upstream_model: self.config.upstream_model(model),
            healthy: self.is_healthy(),
            in_flight: h.in_flight.load(Ordering::Relaxed),
            max_in_flight: self.config.max_in_flight,
            latency_ewma_ms: self.latency_ewma_ms(),
            error_permille: h.error_permille.load(Ordering::Relaxed),
        }
    }

    /// The latency EWMA in whole milliseconds.
    fn latency_ewma_ms(&self) -> u32 {
        let us = self.health.latency_ewma_us.load(Ordering::Relaxed);
        u32::try_from(us / 1000).unwrap_or(u32::MAX)
    }

    /// A snapshot of the health.
    pub fn view(&self) -> HealthView {
        let h = &self.health;
        HealthView {
            id: self.config.id.clone(),
            healthy: self.is_healthy(),
            disabled: h.disabled.load(Ordering::Relaxed),
            cooling_down: h.cooling.load(Ordering::Relaxed),
            in_flight: h.in_flight.load(Ordering::Relaxed),
            latency_ewma_ms: self.latency_ewma_ms(),
            error_permille: h.error_permille.load(Ordering::Relaxed),
            consecutive_failures: h.consecutive_failures.load(Ordering::Relaxed),
        }
    }
}

/// All channels.
pub struct Channels {
    all: Vec<Arc<Channel>>,
}

impl Channels {
    /// Channels from the config, in file order.
    pub fn new(configs: &[ChannelConfig]) -> Self {
        Self {
            all: configs
                .iter()
                .map(|c| Arc::new(Channel::new(c.clone())))
                .collect(),
        }
    }

    /// Every channel.
    pub fn all(&self) -> &[Arc<Channel>] {
        &self.all
    }

    /// A channel by id.
    pub fn get(&self, id: &str) -> Option<&Arc<Channel>> {
        self.all.iter().find(|c| c.config.id == id)
    }

    /// Whether any channel serves `model` (a configured model name).
    pub fn serves(&self, model: &str) -> bool {
        self.serving(model).next().is_some()
    }

    /// Channels serving `model`, in file order.
    pub fn serving<'a>(&'a self, model: &'a str) -> impl Iterator<Item = &'a Arc<Channel>> + 'a {
        self.all
            .iter()
            .filter(move |c| c.config.models.iter().any(|m| m == model))
    }

    /// Publishes health gauges.
    pub fn publish(&self, metrics: &Metrics) {
        for c in &self.all {
            let labels = ChannelLabels {
                channel: c.config.id.clone(),
            };
            metrics
                .channel_healthy
                .get_or_create(&labels)
                .set(i64::from(c.is_healthy()));
            metrics
                .channel_in_flight
                .get_or_create(&labels)
                .set(i64::from(c.health.in_flight.load(Ordering::Relaxed)));
        }
    }
}

/// The native fallback router: healthy channels with capacity, highest priority
/// first, heavier weight first within a priority.
pub fn native_plan<'a>(candidates: impl Iterator<Item = &'a Arc<Channel>>) -> Vec<Arc<Channel>> {
    let mut plan: Vec<Arc<Channel>> = candidates
        .filter(|c| c.is_healthy() && c.has_capacity())
        .cloned()
        .collect();
    plan.sort_by(|a, b| {
        (b.config.priority, b.config.weight).cmp(&(a.config.priority, a.config.weight))
    });
    plan
}
