//! Storage through the running gateway: zero loss on graceful shutdown, atomic
//! record-and-charge across a crash, and bounded store reads for key lookups.

use std::collections::HashSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use http_body_util::BodyExt;
use serde_json::json;
use sluice_tests::*;

async fn all_usage(gw: &Gateway) -> Vec<serde_json::Value> {
    let mut out = Vec::new();
    let mut cursor = String::new();
    loop {
        let (status, page) = gw
            .admin_json("GET", &format!("/admin/usage?limit=1000{cursor}"), None)
            .await;
        assert_eq!(status, 200, "{page}");
        out.extend(page["data"].as_array().unwrap().iter().cloned());
        match page["next_before_seq"].as_u64() {
            Some(seq) => cursor = format!("&before_seq={seq}"),
            None => return out,
        }
    }
}

async fn graceful_shutdown_loses_nothing(sqlite: bool) {
    let upstream = keyed_mock(MockConfig {
        chunks: 16,
        chunk_delay_ms: 50,
        ..MockConfig::default()
    })
    .await;
    let mut builder = Gateway::builder()
        .flush_interval(Duration::from_secs(2))
        .batch_size(10_000)
        .channel(ChannelSpec::mock("main", &upstream, &[MODEL]));
    if sqlite {
        builder = builder.sqlite();
    }
    let mut gw = builder.start().await;
    let (key, _) = gw
        .create_key(json!({"name": "k", "quota": 1_000_000}))
        .await;
    let mut completed = HashSet::new();
    for i in 0..30 {
        let id = format!("plain-{i}");
        let reply = request(
            "POST",
            &format!("http://{}/v1/chat/completions", gw.proxy),
            &[
                ("authorization", format!("Bearer {key}")),
                ("x-request-id", id.clone()),
            ],
            Some(json!({"model": MODEL, "messages": []}).to_string()),
        )
        .await;
        assert_eq!(reply.status, 200);
        completed.insert(id);
    }
    let url = format!("http://{}/v1/chat/completions", gw.proxy);
    let mut streams = Vec::new();
    for i in 0..10 {
        let id = format!("stream-{i}");
        let response = open_stream(
            &url,
            &key,
            json!({"model": MODEL, "stream": true, "messages": []}),
            &[("x-request-id", id.clone())],
        )
        .await;
        assert_eq!(response.status(), 200);
        streams.push((
            id,
            tokio::spawn(async move { response.into_body().collect().await.map(|c| c.to_bytes()) }),
        ));
    }
    tokio::time::sleep(Duration::from_millis(100)).await;
    let stopper = tokio::task::spawn_blocking(move || {
        let status = gw.stop();
        (gw, status)
    });
    for (id, stream) in streams {
        let bytes = stream
            .await
            .unwrap()
            .expect("streams in flight finish during the grace period");
        assert!(bytes.ends_with(b"data: [DONE]\n\n"), "{id} was cut");
        completed.insert(id);
    }
    let (mut gw, status) = stopper.await.unwrap();
    assert!(
        status.success(),
        "graceful shutdown must exit 0: {status}\n{}",
        gw.logs()
    );
    gw.restart().await;
    let records = all_usage(&gw).await;
    let ids: Vec<String> = records
        .iter()
        .map(|r| r["request_id"].as_str().unwrap().to_string())
        .collect();
    let unique: HashSet<String> = ids.iter().cloned().collect();
    assert_eq!(ids.len(), unique.len(), "duplicate records");
    assert_eq!(
        unique, completed,
        "exactly one record per completed response"
    );
    assert!(records.iter().all(|r| r["partial"] == false));
}

#[tokio::test]
async fn graceful_shutdown_loses_nothing_redb() {
    graceful_shutdown_loses_nothing(false).await;
}

#[tokio::test]
async fn graceful_shutdown_loses_nothing_sqlite() {
    graceful_shutdown_loses_nothing(true).await;
}

async fn crash_keeps_record_and_charge_atomic(sqlite: bool) {
    let upstream = keyed_mock(MockConfig {
        chunks: 4,
        ..MockConfig::default()
    })
    .await;
    let mut builder = Gateway::builder()
        .flush_interval(Duration::from_millis(20))
        .batch_size(64)
        .queue_capacity(256)
        .channel(ChannelSpec::mock("main", &upstream, &[MODEL]));
    if sqlite {
        builder = builder.sqlite();
    }
    let mut gw = builder.start().await;
    let mut keys = Vec::new();
    for i in 0..4 {
        keys.push(
            gw.create_key(json!({"name": format!("k{i}"), "quota": 10_000_000}))
                .await,
        );
    }
    let gw_proxy = gw.proxy.clone();
    let stop = Arc::new(AtomicBool::new(false));
    let answered = Arc::new(AtomicU64::new(0));
    let mut workers = Vec::new();
    for w in 0..8 {
        let (key, stop, answered, proxy) = (
            keys[w % keys.len()].0.clone(),
            stop.clone(),
            answered.clone(),
            gw_proxy.clone(),
        );
        workers.push(tokio::spawn(async move {
            let url = format!("http://{proxy}/v1/chat/completions");
            while !stop.load(Ordering::Relaxed) {
                let client = hyper_util::client::legacy::Client::builder(
                    hyper_util::rt::TokioExecutor::new(),
                )
                .build_http::<http_body_util::Full<bytes::Bytes>>();
                let req = http::Request::post(&url)
                    .header("authorization", format!("Bearer {key}"))
                    .body(http_body_util::Full::new(bytes::Bytes::from(
                        json!({"model": MODEL, "messages": []}).to_string(),
                    )))
                    .unwrap();
                match client.request(req).await {
                    Ok(r) if r.status() == 200 => {
                        if r.into_body().collect().await.is_ok() {
                            answered.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                    _ => break,
                }
            }
        }));
    }
    tokio::time::sleep(Duration::from_millis(1500)).await;
    gw.kill();
    stop.store(true, Ordering::Relaxed);
    for w in workers {
        let _ = w.await;
    }
    gw.restart().await;
    let records = all_usage(&gw).await;
    for (_, id) in &keys {
        let (_, key) = gw
            .admin_json("GET", &format!("/admin/keys/{id}"), None)
            .await;
        let spent = 10_000_000 - key["quota_remaining"].as_i64().unwrap();
        let logged: i64 = records
            .iter()
            .filter(|r| r["key_id"] == id.as_str())
            .map(|r| r["cost"].as_i64().unwrap())
            .sum();
        assert_eq!(
            spent, logged,
            "key {id}: charge and records must commit together"
        );
    }
    let answered = answered.load(Ordering::Relaxed);
    let lost = answered.saturating_sub(records.len() as u64);
    eprintln!(
        "crash ({}): {answered} answered, {} stored, {lost} lost (bound: queue 256 + batch 64)",
        if sqlite { "sqlite" } else { "redb" },
        records.len()
    );
    assert!(answered > 50, "the load did not run");
    assert!(lost <= 256 + 64, "lost {lost} records");
}

#[tokio::test]
async fn crash_keeps_record_and_charge_atomic_redb() {
    crash_keeps_record_and_charge_atomic(false).await;
}

#[tokio::test]
async fn crash_keeps_record_and_charge_atomic_sqlite() {
    crash_keeps_record_and_charge_atomic(true).await;
}

#[tokio::test]
async fn key_lookups_stay_off_the_store() {
    let upstream = keyed_mock(MockConfig {
        chunks: 1,
        ..MockConfig::default()
    })
    .await;
    let gw = Arc::new(
        Gateway::builder()
            .key_ttl(Duration::from_secs(1))
            .channel(ChannelSpec::mock("main", &upstream, &[MODEL]))
            .start()
            .await,
    );
    let (key, _) = gw.create_key(json!({"name": "k"})).await;
    let started = std::time::Instant::now();
    let mut n = 0;
    while started.elapsed() < Duration::from_millis(2500) {
        assert_eq!(
            gw.chat(&key, json!({"model": MODEL, "messages": []}))
                .await
                .status,
            200
        );
        n += 1;
    }
    let reads = metric(&gw.metrics().await, "sluice_key_cache_misses_total");
    assert!(n > 100, "{n} requests");
    assert!(
        (1.0..=4.0).contains(&reads),
        "{reads} store reads for {n} requests over 2.5 TTLs"
    );
    let mut tasks = Vec::new();
    for t in 0..16 {
        let gw = gw.clone();
        tasks.push(tokio::spawn(async move {
            for i in 0..625 {
                let reply = gw
                    .chat(
                        &format!("sk-sl-random-{t}-{i}-{}", i * 7919),
                        json!({"model": MODEL, "messages": []}),
                    )
                    .await;
                assert_eq!(reply.status, 401);
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let after = metric(&gw.metrics().await, "sluice_key_cache_misses_total");
    assert!(
        after - reads <= 2.0,
        "10,000 invalid keys caused {} store reads",
        after - reads
    );
}

#[tokio::test]
async fn quota_is_enforced_from_the_live_view_before_the_store_catches_up() {
    let upstream = keyed_mock(MockConfig::default()).await;
    let gw = Gateway::builder()
        .flush_interval(Duration::from_secs(30))
        .batch_size(100_000)
        .fresh_instances()
        .channel(ChannelSpec::mock("main", &upstream, &[MODEL]))
        .start()
        .await;
    // Each request costs prompt (body bytes / 4) + 16 completion credits, about 32.
    let (key, id) = gw.create_key(json!({"name": "small", "quota": 50})).await;
    assert_eq!(gw.chat(&key, chat_body()).await.status, 200);
    assert_eq!(gw.chat(&key, chat_body()).await.status, 200);
    let third = gw.chat(&key, chat_body()).await;
    assert_eq!(
        (third.status, third.error_code().as_str()),
        (429, "insufficient_quota"),
        "the live quota view must refuse before any flush"
    );
    let (_, stored) = gw
        .admin_json("GET", &format!("/admin/keys/{id}"), None)
        .await;
    assert_eq!(
        stored["quota_remaining"], 50,
        "nothing was flushed yet: the refusal came from memory"
    );
    let x_api_key = request(
        "POST",
        &format!("http://{}/v1/chat/completions", gw.proxy),
        &[("x-api-key", key.clone())],
        Some(chat_body().to_string()),
    )
    .await;
    assert_eq!(x_api_key.status, 429, "x-api-key resolves the same key");
}
