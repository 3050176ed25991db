//! Prometheus metrics: one registry, every family the gateway reports, and the
//! text encoder served at `/metrics` on the admin listener. The series every
//! request writes are sharded per thread ([`sharded`]) and reached through
//! per-thread handles ([`LocalSeries`]), so recording a request takes no lock,
//! allocates no label and writes no cache line another core writes too.

mod sharded;

use std::cell::RefCell;
use std::sync::OnceLock;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;
use thread_local::ThreadLocal;

pub use sharded::{ShardedCounter, ShardedHistogram};

/// Labels of a finished client request.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabels {
    /// Endpoint name.
    pub endpoint: String,
    /// Model asked for.
    pub model: String,
    /// Channel that served it ("" if none).
    pub channel: String,
    /// HTTP status.
    pub status: u16,
}

/// The labels of a finished request, borrowed.
#[derive(Clone, Copy, Debug)]
pub struct RequestKey<'a> {
    /// Endpoint name.
    pub endpoint: &'static str,
    /// Model asked for (a configured one, or `other`).
    pub model: &'a str,
    /// Channel that served it ("" if none).
    pub channel: &'a str,
    /// HTTP status.
    pub status: u16,
}

/// Labels naming an endpoint.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct EndpointLabels {
    /// Endpoint name.
    pub endpoint: &'static str,
}

/// Labels naming what was full when a request or connection was shed.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ShedLabels {
    /// `request bodies`, `connections` or `usage queue`.
    pub reason: &'static str,
}

/// Labels naming how an attempt ended.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OutcomeLabels {
    /// Such as `reloaded` or `failed`.
    pub outcome: &'static str,
}

/// Labels naming a channel and a failure kind.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct UpstreamErrorLabels {
    /// Channel id.
    pub channel: String,
    /// Failure kind (`connect`, `status_5xx`, `timeout`, ...).
    pub kind: String,
}

/// Labels naming a channel.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ChannelLabels {
    /// Channel id.
    pub channel: String,
}

/// Labels naming a plugin.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PluginLabels {
    /// Plugin name.
    pub plugin: String,
    /// Policy kind.
    pub kind: String,
}

/// Labels of a shadow plugin's decision.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ShadowLabels {
    /// Plugin name.
    pub plugin: String,
    /// `allow`, `deny`, `plan`, `keep`, `drop` or `failed`.
    pub outcome: &'static str,
}

fn latency_histogram() -> ShardedHistogram {
    ShardedHistogram::new(exponential_buckets(0.000_05, 2.0, 20))
}

/// A histogram family by endpoint.
type EndpointHistograms = Family<EndpointLabels, ShardedHistogram, fn() -> ShardedHistogram>;

/// One thread's handles on the per-request series, each created once per
/// label set and thread. Label values are bounded (configured channels and
/// models, endpoints, statuses), and a scan of short lists comparing the
/// cheapest field first beats hashing the labels.
#[derive(Default)]
struct LocalSeries {
    requests: Vec<(RequestLabels, ShardedCounter)>,
    latency: Vec<(&'static str, ShardedHistogram)>,
    ttft: Vec<(&'static str, ShardedHistogram)>,
    tokens: Vec<(ChannelLabels, ShardedCounter)>,
}

/// The first item of `list` that `matches`, or a new one `make` adds.
fn find_or_add<T>(
    list: &mut Vec<T>,
    matches: impl Fn(&T) -> bool,
    make: impl FnOnce() -> T,
) -> &mut T {
    let at = match list.iter().position(matches) {
        Some(at) => at,
        None => {
            list.push(make());
            list.len() - 1
        }
    };
    &mut list[at]
}

/// Every metric the gateway exports.
pub struct Metrics {
    registry: Registry,
    /// Per-thread handles on the per-request series.
    local: ThreadLocal<RefCell<LocalSeries>>,
    /// Finished client requests.
    requests: Family<RequestLabels, ShardedCounter>,
    /// Time to response headers, seconds.
    latency: EndpointHistograms,
    /// Time to first token for streams, seconds.
    ttft: EndpointHistograms,
    /// Failed upstream attempts.
    pub upstream_errors: Family<UpstreamErrorLabels, Counter>,
    /// Attempts beyond the first.
    pub upstream_retries: Counter,
    /// Requests and connections shed because a bound was reached.
    pub shed: Family<ShedLabels, Counter>,
    /// Plugin folder rescans (events, changes found by the poll, reload calls).
    pub plugin_rescans: Counter,
    /// TLS certificate reloads, by outcome (`reloaded`, `failed`).
    pub tls_reloads: Family<OutcomeLabels, Counter>,
    /// TLS handshakes that failed or timed out.
    pub tls_handshake_failures: Counter,
    /// Tokens relayed (prompt + completion).
    tokens: Family<ChannelLabels, ShardedCounter>,
    /// Policy call duration, seconds.
    pub policy_seconds: Family<PluginLabels, ShardedHistogram, fn() -> ShardedHistogram>,
    /// Policy calls.
    pub policy_calls: Family<PluginLabels, ShardedCounter>,
    /// Policy failures (trap, deadline, memory, bad output).
    pub policy_failures: Family<PluginLabels, Counter>,
    /// Decisions of plugins in shadow mode (logged and counted, never enforced).
    pub policy_shadow_decisions: Family<ShadowLabels, Counter>,
    /// Key lookups answered by the cache.
    pub key_cache_hits: ShardedCounter,
    /// Key lookups that went to the store.
    pub key_cache_misses: Counter,
    /// Entries waiting in the writer queue.
    pub writer_queue_depth: Gauge,
    /// Commit duration, seconds.
    pub writer_flush_seconds: Histogram,
    /// Records committed.
    pub records_written: Counter,
    /// Records that could not be kept (queue full, writer closed, abandoned batch).
    pub records_dropped: Counter,
    /// Submits that had to wait for queue space.
    pub writer_backpressure: Counter,
    /// Credits an upstream's overrun of its cap cost past the reservation,
    /// not charged (cap enforcement).
    pub unbilled_credits: Counter,
    /// Requests refused because the key's quota could not cover their reservation.
    pub quota_refusals: Counter,
    /// Failed commits (each retried).
    pub writer_commit_errors: Counter,
    /// 1 while a channel is healthy.
    pub channel_healthy: Family<ChannelLabels, Gauge>,
    /// Requests in flight per channel.
    pub channel_in_flight: Family<ChannelLabels, Gauge>,
    /// Log lines the non-blocking log writer dropped (its buffer was full).
    pub log_lines_dropped: Counter,
}

/// The log writer's count of dropped lines, registered by `init_logging` (the
/// log writer is process-wide, like the subscriber in front of it).
pub static LOG_WRITER_DROPS: OnceLock<crate::log_sink::DropCounter> = OnceLock::new();

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::with_prefix("sluice");
        let m = Self {
            local: ThreadLocal::new(),
            requests: Family::default(),
            latency: Family::new_with_constructor(latency_histogram),
            ttft: Family::new_with_constructor(latency_histogram),
            upstream_errors: Family::default(),
            upstream_retries: Counter::default(),
            shed: Family::default(),
            plugin_rescans: Counter::default(),
            tls_reloads: Family::default(),
            tls_handshake_failures: Counter::default(),
            tokens: Family::default(),
            policy_seconds: Family::new_with_constructor(latency_histogram),
            policy_calls: Family::default(),
            policy_failures: Family::default(),
            policy_shadow_decisions: Family::default(),
            key_cache_hits: ShardedCounter::default(),
            key_cache_misses: Counter::default(),
            writer_queue_depth: Gauge::default(),
            writer_flush_seconds: Histogram::new(exponential_buckets(0.000_1, 2.0, 16)),
            records_written: Counter::default(),
            records_dropped: Counter::default(),
            writer_backpressure: Counter::default(),
            unbilled_credits: Counter::default(),
            quota_refusals: Counter::default(),
            writer_commit_errors: Counter::default(),
            channel_healthy: Family::default(),
            channel_in_flight: Family::default(),
            log_lines_dropped: Counter::default(),
            registry: Registry::default(),
        };
        registry.register("requests", "Finished client requests", m.requests.clone());
        registry.register(
            "request_latency_seconds",
            "Time to response headers",
            m.latency.clone(),
        );
        registry.register(
            "ttft_seconds",
            "Time to first streamed token",
            m.ttft.clone(),
        );
        registry.register(
            "upstream_errors",
            "Failed upstream attempts",
            m.upstream_errors.clone(),
        );
        registry.register(
            "upstream_retries",
            "Upstream attempts beyond the first",
            m.upstream_retries.clone(),
        );
        registry.register(
            "shed",
            "Requests and connections shed because a bound was reached",
            m.shed.clone(),
        );
        registry.register(
            "plugin_rescans",
            "Plugin folder rescans",
            m.plugin_rescans.clone(),
        );
        registry.register(
            "tls_certificate_reloads",
            "TLS certificate reloads, by outcome",
            m.tls_reloads.clone(),
        );
        registry.register(
            "tls_handshake_failures",
            "TLS handshakes that failed or timed out",
            m.tls_handshake_failures.clone(),
        );
        registry.register("tokens", "Tokens relayed", m.tokens.clone());
        registry.register(
            "log_lines_dropped",
            "Log lines dropped because the log writer's buffer was full",
            m.log_lines_dropped.clone(),
        );
        registry.register(
            "policy_call_seconds",
            "Policy plugin call duration",
            m.policy_seconds.clone(),
        );
        registry.register(
            "policy_calls",
            "Policy plugin calls",
            m.policy_calls.clone(),
        );
        registry.register(
            "policy_failures",
            "Policy plugin failures",
            m.policy_failures.clone(),
        );
        registry.register(
            "policy_shadow_decisions",
            "Decisions of plugins in shadow mode, never enforced",
            m.policy_shadow_decisions.clone(),
        );
        registry.register(
            "key_cache_hits",
            "Key lookups served by the cache",
            m.key_cache_hits.clone(),
        );
        registry.register(
            "key_cache_misses",
            "Key lookups that read the store",
            m.key_cache_misses.clone(),
        );
        registry.register(
            "writer_queue_depth",
            "Usage entries waiting to be written",
            m.writer_queue_depth.clone(),
        );
        registry.register(
            "writer_flush_seconds",
            "Usage batch commit duration",
            m.writer_flush_seconds.clone(),
        );
        registry.register(
            "usage_records_written",
            "Usage records committed",
            m.records_written.clone(),
        );
        registry.register(
            "usage_records_dropped",
            "Usage records that could not be kept",
            m.records_dropped.clone(),
        );
        registry.register(
            "unbilled_credits",
            "Credits past a reservation that cap enforcement did not charge",
            m.unbilled_credits.clone(),
        );
        registry.register(
            "quota_refusals",
            "Requests refused because the key's quota could not cover their reservation",
            m.quota_refusals.clone(),
        );
        registry.register(
            "writer_backpressure",
            "Submits that waited for queue space",
            m.writer_backpressure.clone(),
        );
        registry.register(
            "writer_commit_errors",
            "Failed usage commits",
            m.writer_commit_errors.clone(),
        );
        registry.register(
            "channel_healthy",
            "1 while the channel is healthy",
            m.channel_healthy.clone(),
        );
        registry.register(
            "channel_in_flight",
            "Requests in flight per channel",
            m.channel_in_flight.clone(),
        );
        Self { registry, ..m }
    }
}

/// One plugin's series, kept by the plugin so that a call costs no label lookups.
#[derive(Clone)]
pub struct PluginSeries {
    /// `sluice_policy_calls_total` for the plugin.
    pub calls: ShardedCounter,
    /// `sluice_policy_call_seconds` for the plugin.
    pub seconds: ShardedHistogram,
    /// `sluice_policy_failures_total` for the plugin.
    pub failures: Counter,
}

impl Metrics {
    /// This thread's handles on the per-request series.
    fn local<R>(&self, use_it: impl FnOnce(&mut LocalSeries) -> R) -> R {
        use_it(&mut self.local.get_or_default().borrow_mut())
    }

    /// Counts a finished request (`sluice_requests_total`).
    pub fn count_request(&self, key: RequestKey<'_>) {
        self.local(|local| {
            let (_, counter) = find_or_add(
                &mut local.requests,
                |(labels, _)| {
                    labels.status == key.status
                        && labels.endpoint == key.endpoint
                        && labels.channel == key.channel
                        && labels.model == key.model
                },
                || {
                    let labels = RequestLabels {
                        endpoint: key.endpoint.to_owned(),
                        model: key.model.to_owned(),
                        channel: key.channel.to_owned(),
                        status: key.status,
                    };
                    let counter = self.requests.get_or_create(&labels).clone();
                    (labels, counter)
                },
            );
            counter.inc();
        });
    }

    /// Records a request's time to response headers.
    pub fn observe_latency(&self, endpoint: &'static str, seconds: f64) {
        self.observe_endpoint(|local| &mut local.latency, &self.latency, endpoint, seconds);
    }

    /// Records a stream's time to its first token.
    pub fn observe_ttft(&self, endpoint: &'static str, seconds: f64) {
        self.observe_endpoint(|local| &mut local.ttft, &self.ttft, endpoint, seconds);
    }

    /// Records `seconds` in the endpoint's histogram of `family`, through
    /// this thread's handles on it.
    fn observe_endpoint(
        &self,
        handles: impl FnOnce(&mut LocalSeries) -> &mut Vec<(&'static str, ShardedHistogram)>,
        family: &EndpointHistograms,
        endpoint: &'static str,
        seconds: f64,
    ) {
        self.local(|local| {
            let (_, histogram) = find_or_add(
                handles(local),
                |(e, _)| *e == endpoint,
                || {
                    let labels = EndpointLabels { endpoint };
                    (endpoint, family.get_or_create(&labels).clone())
                },
            );
            histogram.observe(seconds);
        });
    }

    /// Adds tokens a channel relayed.
    pub fn add_tokens(&self, channel: &str, tokens: u64) {
        self.local(|local| {
            let (_, counter) = find_or_add(
                &mut local.tokens,
                |(labels, _)| labels.channel == channel,
                || {
                    let labels = ChannelLabels {
                        channel: channel.to_owned(),
                    };
                    let counter = self.tokens.get_or_create(&labels).clone();
                    (labels, counter)
                },
            );
            counter.inc_by(tokens);
        });
    }

    /// The series of the plugin with these labels (created when missing).
    pub fn plugin_series(&self, labels: &PluginLabels) -> PluginSeries {
        PluginSeries {
            calls: self.policy_calls.get_or_create(labels).clone(),
            seconds: self.policy_seconds.get_or_create(labels).clone(),
            failures: self.policy_failures.get_or_create(labels).clone(),
        }
    }

    /// Brings `log_lines_dropped` up to the log writer's running total.
    fn sync_log_drops(&self, total: u64) {
        let seen = self.log_lines_dropped.get();
        if total > seen {
            self.log_lines_dropped.inc_by(total - seen);
        }
    }

    /// The Prometheus text exposition of every metric.
    pub fn encode(&self) -> String {
        if let Some(drops) = LOG_WRITER_DROPS.get() {
            self.sync_log_drops(drops.dropped_lines());
        }
        let mut out = String::with_capacity(8192);
        if let Err(e) = prometheus_client::encoding::text::encode(&mut out, &self.registry) {
            tracing::error!(error = %e, "encoding metrics failed");
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::{Metrics, RequestKey};

    #[test]
    fn per_thread_handles_count_each_label_set_once_across_threads() {
        let metrics = Metrics::default();
        let key = |model, channel, status| RequestKey {
            endpoint: "chat",
            model,
            channel,
            status,
        };
        std::thread::scope(|scope| {
            for _ in 0..3 {
                scope.spawn(|| {
                    for _ in 0..10 {
                        metrics.count_request(key("m1", "a", 200));
                        metrics.count_request(key("m1", "a", 502));
                        metrics.count_request(key("m2", "a", 200));
                        metrics.count_request(key("m1", "b", 200));
                        metrics.add_tokens("a", 7);
                        metrics.observe_latency("chat", 0.001);
                    }
                });
            }
        });
        let text = metrics.encode();
        for line in [
            r#"sluice_requests_total{endpoint="chat",model="m1",channel="a",status="200"} 30"#,
            r#"sluice_requests_total{endpoint="chat",model="m1",channel="a",status="502"} 30"#,
            r#"sluice_requests_total{endpoint="chat",model="m2",channel="a",status="200"} 30"#,
            r#"sluice_requests_total{endpoint="chat",model="m1",channel="b",status="200"} 30"#,
            r#"sluice_tokens_total{channel="a"} 210"#,
            r#"sluice_request_latency_seconds_count{endpoint="chat"} 30"#,
        ] {
            assert!(text.contains(line), "{line} missing from\n{text}");
        }
        assert_eq!(text.matches("sluice_requests_total{").count(), 4);
    }

    #[test]
    fn dropped_log_lines_follow_the_writer_total() {
        let metrics = Metrics::default();
        assert!(
            metrics
                .encode()
                .contains("sluice_log_lines_dropped_total 0")
        );
        metrics.sync_log_drops(5);
        metrics.sync_log_drops(3); // a stale read never moves the counter back
        assert!(
            metrics
                .encode()
                .contains("sluice_log_lines_dropped_total 5")
        );
        metrics.sync_log_drops(7);
        assert!(
            metrics
                .encode()
                .contains("sluice_log_lines_dropped_total 7")
        );
    }
}
