//! Usage ingest through the batch writer into each backend, with the real
//! schema and indexes, every record's charge posted to its key's ledger, and
//! one durable commit per batch. Prints records/s.
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
use sluice::config::Backend;
use sluice::metrics::Metrics;
use sluice::store::writer::{Entry, UsageWriter, WriterSettings};
use sluice::store::{Charge, UsageRecord};

const RECORDS: u64 = 50_000;
/// Keys the records are spread over.
const KEYS: u64 = 64;

fn record(i: u64) -> Entry {
    let key = format!("key_{:04}", i % KEYS);
    Entry {
        record: Some(UsageRecord {
            request_id: format!("01J{i:023}"),
            time_ms: 1_700_000_000_000 + i,
            key_id: key.clone(),
            key_prefix: "sk-sl-abcdef".into(),
            endpoint: "chat.completions".into(),
            model: "gpt-4o-mini".into(),
            upstream_model: "gpt-4o-mini".into(),
            channel_id: "primary".into(),
            status: 200,
            prompt_tokens: 120,
            completion_tokens: 380,
            cost: 500,
            latency_ms: 900,
            ttft_ms: Some(120),
            stream: true,
            client_ip: "10.1.2.3".into(),
            ..UsageRecord::default()
        }),
        charge: Some(Charge {
            key_id: key,
            request_id: format!("req-{i}"),
            cost: 500,
            reserved: 600,
        }),
    }
}

async fn ingest(backend: Backend, n: u64) -> Duration {
    let dir = tempfile::tempdir().unwrap();
    let store = sluice::store::open(backend, &dir.path().join("ingest.db")).unwrap();
    // The keys the records charge exist, with quotas: every charge is posted
    // to the ledger and a balance, as in the gateway.
    for k in 0..KEYS {
        let (_, mut key) = sluice::keys::generate(&sluice::keys::NewKey {
            name: format!("bench {k}"),
            quota: Some(i64::MAX / 2),
            ..Default::default()
        })
        .unwrap();
        key.id = format!("key_{k:04}");
        store.create_key(&key).unwrap();
    }
    let settings = WriterSettings {
        batch_size: 1024,
        flush_interval: Duration::from_millis(50),
        capacity: 65_536,
        backpressure_wait: Duration::from_secs(10),
    };
    let writer = UsageWriter::start(
        store,
        settings,
        Arc::new(Metrics::default()),
        Arc::new(|_, _| {}),
    )
    .expect("the committing thread starts");
    let start = Instant::now();
    for i in 0..n {
        writer.submit(record(i)).await;
    }
    writer.close().await;
    start.elapsed()
}

fn bench(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    for (label, backend) in [("redb", Backend::Redb), ("sqlite", Backend::Sqlite)] {
        let took = rt.block_on(ingest(backend, RECORDS));
        println!(
            "ingest ({label}): {RECORDS} records in {:.3} s = {:.0} records/s (batches of 1024, durable commit per batch)",
            took.as_secs_f64(),
            RECORDS as f64 / took.as_secs_f64()
        );
        let mut group = c.benchmark_group("ingest");
        group
            .sample_size(10)
            .throughput(criterion::Throughput::Elements(RECORDS));
        group.bench_function(label, |b| {
            b.iter_custom(|iters| {
                (0..iters)
                    .map(|_| rt.block_on(ingest(backend, RECORDS)))
                    .sum()
            })
        });
        group.finish();
    }
}

criterion_group!(benches, bench);
criterion_main!(benches);
