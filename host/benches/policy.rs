//! Per-request policy cost through the gateway's own policy path: the embedded
//! key-auth, router and redactor components called as a request would call them
//! (≥ 8 headers, a key allowing 20 models, 4 candidate channels), for both
//! instance models. Prints p50/p99 of single requests, then criterion's figures.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::print_stdout,
    missing_docs
)]

use std::sync::Arc;
use std::time::{Duration, Instant};

/// The gateway binary's allocator, so the bench measures the same path.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

use criterion::{Criterion, criterion_group, criterion_main};
use sluice::config::{InstanceMode, PluginsConfig};
use sluice::endpoint::Endpoint;
use sluice::facts::RequestFacts;
use sluice::keys::{Balance, LiveKey};
use sluice::plugins::engine::{InstanceSettings, PolicyEngine};
use sluice::plugins::loader::Loader;
use sluice::plugins::{ChannelFacts, Offer, Policies, PolicySet};
use sluice::store::{KeyRecord, KeyStatus, UsageRecord};

fn plugins_config(mode: InstanceMode) -> PluginsConfig {
    PluginsConfig {
        dir: None,
        cache_dir: None,
        builtin_auth: true,
        builtin_router: true,
        builtin_redactor: true,
        instance_mode: mode,
        max_idle_instances: 16,
        instance_max_uses: 10_000,
        memory_limit: 32 << 20,
        call_timeout: Duration::from_millis(10),
        overrun_lanes: 1,
        on_failure: Default::default(),
        required: Vec::new(),
        headers: sluice::facts::DEFAULT_POLICY_HEADERS.to_vec(),
    }
}

struct Inputs {
    req: Arc<RequestFacts>,
    key: Arc<LiveKey>,
    offers: Vec<Offer<'static>>,
    record: UsageRecord,
}

const CHANNEL_IDS: [&str; 4] = ["channel-0", "channel-1", "channel-2", "channel-3"];

fn inputs() -> Inputs {
    let headers = [
        "user-agent",
        "content-type",
        "openai-organization",
        "openai-project",
        "x-request-id",
        "x-client-name",
        "x-user-id",
        "x-team",
        "x-session-id",
    ];
    let models: Vec<String> = (0..20).map(|i| format!("model-{i}")).collect();
    // Offers borrow their channel's facts, which live as long as the bench.
    let facts: &'static Arc<ChannelFacts> = Box::leak(Box::new(Arc::new(ChannelFacts {
        provider: "openai".into(),
        tags: vec!["eu".into()],
        models: models.clone(),
    })));
    Inputs {
        req: Arc::new(RequestFacts {
            request_id: "01J0000000000000000000000".into(),
            endpoint: Endpoint::Chat.name(),
            protocol: Endpoint::Chat.protocol(),
            model: "model-17".into(),
            stream: true,
            client_ip: "10.1.2.3".into(),
            headers: headers
                .iter()
                .map(|h| (http::HeaderName::from_static(h), format!("value of {h}")))
                .collect(),
        }),
        key: Arc::new(LiveKey::new(
            KeyRecord {
                id: "key_0123456789abcdef".into(),
                digest: "0".repeat(64),
                prefix: "sk-sl-abcdef".into(),
                name: "bench".into(),
                owner: "team".into(),
                status: KeyStatus::Active,
                created_ms: 0,
                expires_at_ms: Some(u64::MAX / 2),
                models,
                networks: vec!["10.0.0.0/8".into(), "192.168.0.0/16".into()],
                quota_total: Some(1 << 40),
                quota_remaining: Some(1 << 40),
                rpm_limit: Some(u32::MAX),
                tpm_limit: Some(u32::MAX),
            },
            Arc::new(Balance::new(Some(1 << 40))),
        )),
        offers: (0..4)
            .map(|i| Offer {
                id: CHANNEL_IDS[i],
                facts,
                priority: i32::try_from(i % 2).unwrap(),
                weight: 1 + u32::try_from(i).unwrap(),
                upstream_model: "model-17",
                healthy: i != 3,
                in_flight: 3,
                max_in_flight: 0,
                latency_ewma_ms: 120,
                error_permille: 5,
            })
            .collect(),
        record: UsageRecord {
            request_id: "01J0000000000000000000000".into(),
            key_id: "key_0123456789abcdef".into(),
            key_prefix: "sk-sl-abcdef".into(),
            endpoint: "chat.completions".into(),
            model: "model-17".into(),
            upstream_model: "model-17".into(),
            channel_id: "channel-1".into(),
            status: 200,
            prompt_tokens: 120,
            completion_tokens: 380,
            labels: [("team".to_string(), "blue".to_string())].into(),
            ..UsageRecord::default()
        },
    }
}

/// `full` with every list emptied and a single candidate channel.
fn minimal(full: &Inputs) -> Inputs {
    let mut req = (*full.req).clone();
    req.headers.clear();
    let mut key = full.key.record.clone();
    key.models.clear();
    key.networks.clear();
    let mut record = full.record.clone();
    record.labels.clear();
    Inputs {
        req: Arc::new(req),
        key: Arc::new(LiveKey::new(key, Arc::new(Balance::new(None)))),
        offers: full.offers[..1].to_vec(),
        record,
    }
}

/// 20,000 timed requests, each followed by one timed calibration task; both
/// sorted.
fn sorted_samples(
    rt: &tokio::runtime::Runtime,
    policies: &Policies,
    set: &PolicySet,
    inputs: &Inputs,
) -> (Vec<Duration>, Vec<Duration>) {
    let calibration = Calibration::new();
    let (mut samples, mut calibrated) = rt.block_on(async {
        let mut samples = Vec::with_capacity(20_000);
        let mut calibrated = Vec::with_capacity(20_000);
        for _ in 0..20_000 {
            let start = Instant::now();
            one_request(policies, set, inputs).await;
            samples.push(start.elapsed());
            calibrated.push(calibration.time_one());
        }
        (samples, calibrated)
    });
    samples.sort();
    calibrated.sort();
    (samples, calibrated)
}

/// `POLICY_BENCH_INSTRUCTIONS=N`: run N requests through the pooled policy
/// path in [`counted_requests`] and nothing else. `bench/policy-instructions.sh`
/// runs the bench so under callgrind, collecting only inside that function:
/// instructions per request, a figure the machine's changing speed leaves alone.
fn counted_requests_asked() -> Option<u64> {
    let n = std::env::var("POLICY_BENCH_INSTRUCTIONS").ok()?;
    Some(
        n.parse()
            .expect("POLICY_BENCH_INSTRUCTIONS is a request count"),
    )
}

/// `n` requests on a runtime of their own; `POLICY_BENCH_PHASES` (default
/// `ars`) picks the calls made: auth, route, shape.
#[inline(never)]
fn counted_requests(n: u64, policies: &Policies, set: &PolicySet, i: &Inputs) {
    let phases = std::env::var("POLICY_BENCH_PHASES").unwrap_or_else(|_| "ars".into());
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    rt.block_on(async {
        for _ in 0..n {
            if phases.contains('a') {
                authorize(policies, set, i).await;
            }
            if phases.contains('r') {
                route(policies, set, i).await;
            }
            if phases.contains('s') {
                shape(policies, set, i).await;
            }
        }
    });
}

async fn one_request(policies: &Policies, set: &PolicySet, i: &Inputs) {
    authorize(policies, set, i).await;
    route(policies, set, i).await;
    shape(policies, set, i).await;
}

async fn authorize(policies: &Policies, set: &PolicySet, i: &Inputs) {
    policies
        .authorize(set, &i.req, Some(&i.key))
        .await
        .expect("allowed");
}

async fn route(policies: &Policies, set: &PolicySet, i: &Inputs) {
    policies
        .route(set, &i.req, &i.offers)
        .await
        .expect("routed")
        .expect("plan");
}

async fn shape(policies: &Policies, set: &PolicySet, i: &Inputs) {
    policies.shape(set, i.record.clone()).await.expect("kept");
}

/// A fixed CPU-bound task of the same grain as a policy call (parse and
/// re-serialise a chat request), timed between the requests: this machine's
/// speed changes from one second to the next, so the policy path is also
/// reported as a multiple of what this task took at the same moments.
struct Calibration(String);

impl Calibration {
    fn new() -> Self {
        Self(
            serde_json::json!({
                "model": "model-17",
                "stream": true,
                "stream_options": {"include_usage": true},
                "messages": [
                    {"role": "system", "content": "You are a helpful assistant."},
                    {"role": "user", "content": "Write one sentence about rivers and sluices."},
                ],
                "temperature": 0.2,
                "user": "team-blue",
            })
            .to_string(),
        )
    }

    fn time_one(&self) -> Duration {
        let start = Instant::now();
        let value: serde_json::Value = serde_json::from_str(std::hint::black_box(&self.0)).unwrap();
        std::hint::black_box(serde_json::to_vec(&value).unwrap());
        start.elapsed()
    }
}

fn bench(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let i = inputs();
    for (label, mode) in [
        ("pooled", InstanceMode::Pooled),
        ("fresh", InstanceMode::Fresh),
    ] {
        let config = plugins_config(mode);
        let settings = InstanceSettings::from_config(&config);
        let engine = Arc::new(PolicyEngine::new(settings, None).unwrap());
        let metrics = Arc::new(sluice::metrics::Metrics::default());
        let policies = Arc::new(Policies::new(Default::default(), metrics.clone()));
        let _loader = rt
            .block_on(Loader::start(engine, policies.clone(), config, metrics))
            .unwrap();
        let set = policies.snapshot();
        rt.block_on(async {
            for _ in 0..2_000 {
                one_request(&policies, &set, &i).await;
            }
        });
        if let Some(n) = counted_requests_asked() {
            counted_requests(n, &policies, &set, &i);
            return;
        }
        let (samples, calibrated) = sorted_samples(&rt, &policies, &set, &i);
        let pct = |p: f64| samples[((samples.len() as f64 - 1.0) * p) as usize];
        let phase = |name: &str, samples: &mut Vec<Duration>| {
            samples.sort();
            println!(
                "  {label} {name}: p50 = {:.2} µs",
                samples[samples.len() / 2].as_secs_f64() * 1e6
            );
        };
        let (mut auth_times, mut route_times, mut shape_times) =
            (Vec::new(), Vec::new(), Vec::new());
        rt.block_on(async {
            for _ in 0..5_000 {
                let t = Instant::now();
                authorize(&policies, &set, &i).await;
                auth_times.push(t.elapsed());
                let t = Instant::now();
                route(&policies, &set, &i).await;
                route_times.push(t.elapsed());
                let t = Instant::now();
                shape(&policies, &set, &i).await;
                shape_times.push(t.elapsed());
            }
        });
        phase("auth", &mut auth_times);
        phase("route", &mut route_times);
        phase("shape", &mut shape_times);
        let calibration = calibrated[calibrated.len() / 2];
        println!(
            "policy path ({label}): auth+route+shape p50 = {:.2} µs, p99 = {:.2} µs (20,000 requests); calibration between them (parse + serialise a chat request) p50 = {:.2} µs: the path is {:.1}× the calibration",
            pct(0.5).as_secs_f64() * 1e6,
            pct(0.99).as_secs_f64() * 1e6,
            calibration.as_secs_f64() * 1e6,
            pct(0.5).as_secs_f64() / calibration.as_secs_f64()
        );
        if mode == InstanceMode::Pooled {
            // The same calls with almost nothing to lower: how much of the cost is
            // per-string canonical-ABI work rather than the calls themselves.
            let (lean_samples, _) = sorted_samples(&rt, &policies, &set, &minimal(&i));
            println!(
                "policy path ({label}, minimal inputs: no headers, no allowed models or networks, 1 channel, no labels): auth+route+shape p50 = {:.2} µs",
                lean_samples[lean_samples.len() / 2].as_secs_f64() * 1e6
            );
        }
        c.bench_function(&format!("policy_path/{label}"), |b| {
            b.iter_custom(|iters| {
                rt.block_on(async {
                    let start = Instant::now();
                    for _ in 0..iters {
                        one_request(&policies, &set, &i).await;
                    }
                    start.elapsed()
                })
            });
        });
    }
}

criterion_group!(benches, bench);
criterion_main!(benches);
