//! The billing conformance suite: reservations under concurrency, every way
//! a request ends, every kind of token, a crash between a settlement and its
//! record — each checked on the usage record, in the ledger, against the
//! key's balance, and by `sluice audit`.

use std::time::Duration;

use http_body_util::BodyExt;
use serde_json::{Value, json};
use sluice_meter::Encoding;
use sluice_mock::{FailMode, MockConfig, WORDS};
use sluice_tests::*;

/// A chat body asking for at most `cap` tokens.
fn body(stream: bool, cap: u64) -> Value {
    json!({"model": MODEL, "stream": stream, "max_tokens": cap,
           "messages": [{"role": "user", "content": "Tell me about the quick brown fox."}]})
}

/// The mock's first `n` words, as text.
fn words(n: usize) -> String {
    WORDS.iter().cycle().take(n).copied().collect()
}

fn url(gw: &Gateway) -> String {
    format!("http://{}/v1/chat/completions", gw.proxy)
}

/// `sluice audit` against the gateway's config must pass.
fn audit_passes(gw: &Gateway) -> String {
    let out = gw.cli(&["audit", "--config", gw.config_path().to_str().unwrap()]);
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "audit failed: {text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(text.contains("ok: every balance matches"), "{text}");
    text
}

/// The key's one usage record and its one settlement in the ledger, after
/// checking they agree with each other and with the balance.
async fn settled(gw: &Gateway, key_id: &str, quota: i64) -> (Value, Value) {
    let record = gw.only_usage_record(key_id).await.expect("one record");
    let ledger = gw.ledger(key_id).await;
    let kinds: Vec<&str> = ledger.iter().filter_map(|e| e["kind"].as_str()).collect();
    assert_eq!(kinds.len(), 2, "grant and one settlement: {ledger:?}");
    assert_eq!(kinds[1], "grant");
    let entry = ledger[0].clone();
    let cost = record["cost"].as_i64().unwrap();
    assert_eq!(entry["delta"].as_i64(), Some(-cost), "{entry} vs {record}");
    assert_eq!(entry["request_id"], record["request_id"]);
    assert_eq!(entry["reserved"], record["reserved"]);
    assert_eq!(
        entry["kind"],
        if cost == 0 { "release" } else { "charge" },
        "{entry}"
    );
    assert_eq!(gw.remaining(key_id).await, Some(quota - cost));
    assert_eq!(entry["balance"].as_i64(), Some(quota - cost));
    audit_passes(gw);
    (record, entry)
}

fn tokens(record: &Value, field: &str) -> i64 {
    record[field].as_i64().unwrap_or(-1)
}

#[tokio::test]
async fn fifty_concurrent_requests_on_a_quota_for_ten() {
    let upstream = mock(MockConfig::default()).await;
    let gw = Gateway::serving(&upstream).await;
    let request = body(false, 16);
    // One credit a token: a reservation (prompt + cap) equals the real cost,
    // as the fake upstream generates exactly the cap.
    let cost = prompt_tokens(&request) + 16;
    let (key, id) = gw
        .create_key(json!({"name": "ten", "quota": 10 * cost}))
        .await;
    let replies = futures_join(50, || gw.chat(&key, request.clone())).await;
    let ok = replies.iter().filter(|r| r.status == 200).count();
    let refused: Vec<_> = replies.iter().filter(|r| r.status == 429).collect();
    assert_eq!((ok, refused.len()), (10, 40));
    for r in &refused {
        assert_eq!(r.error_code(), "insufficient_quota", "{}", r.text());
        assert_eq!(r.json()["error"]["type"], "insufficient_quota");
    }
    assert_eq!(
        upstream
            .stats
            .requests
            .load(std::sync::atomic::Ordering::Relaxed),
        10,
        "refused requests never reach the upstream"
    );
    let stored = eventually(Duration::from_secs(5), async || {
        gw.ledger(&id).await.len() == 51
    })
    .await;
    assert!(stored, "a grant, ten charges and forty releases");
    assert_eq!(gw.remaining(&id).await, Some(0));
    let ledger = gw.ledger(&id).await;
    let charges = ledger.iter().filter(|e| e["kind"] == "charge").count();
    assert_eq!(charges, 10);
    assert!(
        ledger
            .iter()
            .filter(|e| e["kind"] == "release")
            .all(|e| e["delta"] == 0 && e["reserved"] == 0),
        "a refused request reserved nothing"
    );
    let report = audit_passes(&gw);
    assert!(
        report.contains(&format!("{} credits charged", 10 * cost)),
        "{report}"
    );
}

/// Runs `n` requests made by `make` at once.
async fn futures_join<F, Fut>(n: usize, make: F) -> Vec<Reply>
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = Reply>,
{
    futures_util::future::join_all((0..n).map(|_| make())).await
}

#[tokio::test]
async fn enforcement_caps_the_upstream_and_never_overdraws() {
    let upstream = mock(MockConfig::default()).await;
    let gw = Gateway::serving(&upstream).await;
    let request = body(false, 16);
    let prompt = prompt_tokens(&request);
    // The quota buys the prompt and 5 completion tokens, not 16.
    let quota = prompt + 5;
    let (key, id) = gw
        .create_key(json!({"name": "tight", "quota": quota}))
        .await;
    let reply = gw.chat(&key, request.clone()).await;
    assert_eq!(reply.status, 200, "{}", reply.text());
    let sent: Value = serde_json::from_slice(&upstream.stats.last_body.lock().unwrap()).unwrap();
    assert_eq!(
        sent["max_tokens"], 5,
        "the upstream is sent what the quota buys"
    );
    assert_eq!(reply.json()["usage"]["completion_tokens"], 5);
    let (record, _) = settled(&gw, &id, quota).await;
    assert_eq!(
        (tokens(&record, "cost"), tokens(&record, "reserved")),
        (quota, quota)
    );
    // Nothing left: the next request is refused before the upstream.
    let again = gw.chat(&key, request.clone()).await;
    assert_eq!(
        (again.status, again.error_code().as_str()),
        (429, "insufficient_quota")
    );

    // An upstream that overruns the cap it was sent costs the key no more
    // than its reservation.
    let (key, id) = gw
        .create_key(json!({"name": "overrun", "quota": quota}))
        .await;
    let reply = request_with(&gw, &key, &request, &[("x-mock-ignore-cap", "1")]).await;
    assert_eq!(reply.status, 200);
    let record = gw.only_usage_record(&id).await.unwrap();
    assert!(tokens(&record, "completion_tokens") > 5, "{record}");
    assert_eq!(tokens(&record, "cost"), tokens(&record, "reserved"));
    assert!(gw.remaining(&id).await.unwrap() >= 0);
    assert!(metric(&gw.metrics().await, "sluice_unbilled_credits_total") > 0.0);
    audit_passes(&gw);
}

#[tokio::test]
async fn without_enforcement_overspend_is_the_overrun_past_the_reservation() {
    let upstream = mock(MockConfig::default()).await;
    let gw = Gateway::builder()
        .channel(ChannelSpec::mock("main", &upstream, &[MODEL]))
        .enforce_cap(false)
        .start()
        .await;
    let request = body(false, 4);
    let reserved = prompt_tokens(&request) + 4;
    let (key, id) = gw.create_key(json!({"name": "k", "quota": reserved})).await;
    let reply = request_with(&gw, &key, &request, &[("x-mock-ignore-cap", "1")]).await;
    assert_eq!(reply.status, 200);
    let sent: Value = serde_json::from_slice(&upstream.stats.last_body.lock().unwrap()).unwrap();
    assert_eq!(sent["max_tokens"], 4, "the client's cap, untouched");
    let (record, _) = settled(&gw, &id, reserved).await;
    let real = prompt_tokens(&request) + 16;
    assert_eq!(tokens(&record, "cost"), real, "the real cost is charged");
    assert_eq!(tokens(&record, "reserved"), reserved);
    assert_eq!(
        gw.remaining(&id).await,
        Some(reserved - real),
        "overspent by exactly the real cost minus the reservation"
    );
}

async fn request_with(gw: &Gateway, key: &str, body: &Value, extra: &[(&str, &str)]) -> Reply {
    let mut headers = vec![("authorization", format!("Bearer {key}"))];
    headers.extend(extra.iter().map(|(k, v)| (*k, (*v).to_string())));
    request("POST", &url(gw), &headers, Some(body.to_string())).await
}

/// Opens a stream, reads `events` events, then drops the connection.
async fn read_then_leave(gw: &Gateway, key: &str, events: usize, extra: &[(&str, String)]) {
    let response = open_stream(&url(gw), key, body(true, 16), extra).await;
    assert_eq!(response.status(), 200);
    let mut body = response.into_body();
    let mut seen = 0;
    while seen < events {
        let frame = body.frame().await.expect("a frame").expect("data");
        if let Some(data) = frame.data_ref() {
            seen += String::from_utf8_lossy(data).matches("data: ").count();
        }
    }
    drop(body);
}

#[tokio::test]
async fn every_way_a_stream_ends_is_billed_for_what_it_delivered() {
    const QUOTA: i64 = 1_000_000;
    let upstream = mock(MockConfig {
        chunk_delay_ms: 100,
        ..MockConfig::default()
    })
    .await;
    let gw = Gateway::serving(&upstream).await;
    let prompt = prompt_tokens(&body(true, 16));

    // Gone before the response head: nothing delivered, the reservation released.
    let (key, id) = gw
        .create_key(json!({"name": "early", "quota": QUOTA}))
        .await;
    let stream = tokio::spawn({
        let (url, key) = (url(&gw), key.clone());
        async move {
            open_stream(
                &url,
                &key,
                body(true, 16),
                &[("x-mock-ttfb-ms", "3000".into())],
            )
            .await
        }
    });
    tokio::time::sleep(Duration::from_millis(500)).await;
    stream.abort();
    let (record, entry) = settled(&gw, &id, QUOTA).await;
    assert_eq!(tokens(&record, "status"), 499);
    assert_eq!(
        (tokens(&record, "prompt_tokens"), tokens(&record, "cost")),
        (0, 0)
    );
    assert_eq!(entry["kind"], "release");
    assert_eq!(entry["reserved"].as_i64(), Some(prompt + 16));

    // Gone after the first event, and mid-stream: the prompt and the
    // completion counted from what was relayed.
    for (name, read) in [("first", 1), ("mid", 8)] {
        let (key, id) = gw.create_key(json!({"name": name, "quota": QUOTA})).await;
        read_then_leave(&gw, &key, read, &[]).await;
        let (record, _) = settled(&gw, &id, QUOTA).await;
        let completion = tokens(&record, "completion_tokens");
        assert!((read as i64..16).contains(&completion), "{name}: {record}");
        assert_eq!(record["partial"], true);
        assert_eq!(record["tokens_counted"], true);
        assert_eq!(record["error_kind"], "client_disconnected");
        assert_eq!(tokens(&record, "prompt_tokens"), prompt);
        assert_eq!(tokens(&record, "cost"), prompt + completion);
    }

    // The upstream breaks mid-stream, after 8 of 16 words.
    let (key, id) = gw
        .create_key(json!({"name": "abort", "quota": QUOTA}))
        .await;
    let response = open_stream(
        &url(&gw),
        &key,
        body(true, 16),
        &[("x-mock-fail", FailMode::DropMidStream.to_string())],
    )
    .await;
    let _ = response.into_body().collect().await;
    let (record, _) = settled(&gw, &id, QUOTA).await;
    assert_eq!(record["error_kind"], "upstream_stream_error");
    assert_eq!(tokens(&record, "completion_tokens"), 8);
    assert_eq!(tokens(&record, "cost"), prompt + 8);

    // An upstream that reports no usage: the whole stream counted from its text.
    let (key, id) = gw
        .create_key(json!({"name": "silent", "quota": QUOTA}))
        .await;
    let response = open_stream(
        &url(&gw),
        &key,
        body(true, 16),
        &[("x-mock-omit-usage", "1".into())],
    )
    .await;
    let _ = response.into_body().collect().await;
    let (record, _) = settled(&gw, &id, QUOTA).await;
    assert_eq!(record["tokens_counted"], true);
    assert_eq!(record["partial"], false);
    assert_eq!(tokens(&record, "completion_tokens"), 16);
    assert_eq!(tokens(&record, "cost"), prompt + 16);
}

#[tokio::test]
async fn responses_without_usage_and_tool_calls_are_counted_from_their_text() {
    const QUOTA: i64 = 1_000_000;
    let upstream = mock(MockConfig::default()).await;
    let gw = Gateway::serving(&upstream).await;
    let request = body(false, 64);
    let prompt = prompt_tokens(&request);
    let call = format!("get_weather{{\"q\":\"{}\"}}", words(16));
    let call_tokens = i64::try_from(Encoding::O200kBase.count(&call)).unwrap();

    let (key, id) = gw
        .create_key(json!({"name": "plain", "quota": QUOTA}))
        .await;
    let reply = request_with(&gw, &key, &request, &[("x-mock-omit-usage", "1")]).await;
    assert!(reply.json()["usage"].is_null());
    let (record, _) = settled(&gw, &id, QUOTA).await;
    assert_eq!(tokens(&record, "completion_tokens"), 16);
    assert_eq!(tokens(&record, "cost"), prompt + 16);

    // A tool-call stream with usage is billed by its usage; without, by
    // its name and arguments.
    for omit in ["0", "1"] {
        let (key, id) = gw.create_key(json!({"name": omit, "quota": QUOTA})).await;
        let mut streamed = body(true, 64);
        streamed["stream_options"] = json!({"include_usage": true});
        let headers = [
            ("x-mock-tools", "1".to_string()),
            ("x-mock-omit-usage", omit.to_string()),
        ];
        let response = open_stream(&url(&gw), &key, streamed, &headers).await;
        let text = String::from_utf8(
            response
                .into_body()
                .collect()
                .await
                .unwrap()
                .to_bytes()
                .to_vec(),
        )
        .unwrap();
        assert!(text.contains("\"tool_calls\""), "{text}");
        let (record, _) = settled(&gw, &id, QUOTA).await;
        assert_eq!(
            tokens(&record, "completion_tokens"),
            call_tokens,
            "omit={omit}: {record}"
        );
        assert_eq!(record["tokens_counted"], omit == "1");
        assert_eq!(tokens(&record, "cost"), prompt + call_tokens);
    }
}

#[tokio::test]
async fn cached_and_reasoning_tokens_are_billed_at_their_own_rates() {
    const QUOTA: i64 = 1_000_000;
    let upstream = mock(MockConfig::default()).await;
    let gw = Gateway::builder()
        .channel(ChannelSpec::mock("main", &upstream, &[MODEL]))
        .price(MODEL, "{ input = 2.0, cached_input = 0.5, output = 4.0 }")
        .start()
        .await;
    let (key, id) = gw.create_key(json!({"name": "k", "quota": QUOTA})).await;
    let request = body(false, 64);
    let prompt = prompt_tokens(&request);
    let reply = request_with(
        &gw,
        &key,
        &request,
        &[
            ("x-mock-cached-tokens", "6"),
            ("x-mock-reasoning-tokens", "7"),
        ],
    )
    .await;
    assert_eq!(reply.status, 200);
    let (record, _) = settled(&gw, &id, QUOTA).await;
    assert_eq!(tokens(&record, "cached_tokens"), 6);
    assert_eq!(tokens(&record, "reasoning_tokens"), 7);
    assert_eq!(tokens(&record, "completion_tokens"), 16 + 7);
    let split = &record["cost_split"];
    assert_eq!(split["input"].as_i64(), Some((prompt - 6) * 2_000_000));
    assert_eq!(split["cached_input"].as_i64(), Some(6 * 500_000));
    assert_eq!(split["output"].as_i64(), Some(23 * 4_000_000));
    // 3 credits of cached input: (prompt - 6) * 2 + 3 + 23 * 4.
    assert_eq!(tokens(&record, "cost"), (prompt - 6) * 2 + 3 + 92);
}

#[tokio::test]
async fn failover_bills_once_to_the_channel_that_served() {
    const QUOTA: i64 = 1_000_000;
    let broken = failing_mock(FailMode::Status, 500, 16).await;
    let healthy = mock(MockConfig::default()).await;
    let gw = Gateway::builder()
        .channel(ChannelSpec::mock("first", &broken, &[MODEL]).priority(10))
        .channel(ChannelSpec::mock("second", &healthy, &[MODEL]).priority(1))
        .start()
        .await;
    let (key, id) = gw.create_key(json!({"name": "k", "quota": QUOTA})).await;
    let request = body(true, 16);
    let response = open_stream(&url(&gw), &key, request.clone(), &[]).await;
    assert_eq!(response.status(), 200);
    let _ = response.into_body().collect().await;
    let (record, _) = settled(&gw, &id, QUOTA).await;
    assert_eq!(record["channel_id"], "second");
    assert_eq!(tokens(&record, "cost"), prompt_tokens(&request) + 16);
    assert_eq!(
        broken
            .stats
            .requests
            .load(std::sync::atomic::Ordering::Relaxed),
        1
    );
}

#[tokio::test]
async fn a_crash_between_settlement_and_record_leaves_the_ledger_balanced() {
    for sqlite in [false, true] {
        let upstream = mock(MockConfig::default()).await;
        let mut builder = Gateway::builder()
            .channel(ChannelSpec::mock("main", &upstream, &[MODEL]))
            .batch_size(1)
            .env("SLUICE_FAILPOINT", "append:3");
        if sqlite {
            builder = builder.sqlite();
        }
        let mut gw = builder.start().await;
        let request = body(false, 16);
        let cost = prompt_tokens(&request) + 16;
        let (key, id) = gw
            .create_key(json!({"name": "k", "quota": 100 * cost}))
            .await;
        for n in 1..=2 {
            assert_eq!(gw.chat(&key, request.clone()).await.status, 200);
            let stored = eventually(Duration::from_secs(5), async || {
                gw.ledger(&id).await.len() == n + 1
            })
            .await;
            assert!(stored, "settlement {n} committed");
        }
        // The third settlement's commit aborts the process between posting
        // the charge and appending the record (its reply may not make it).
        let third = tokio::spawn({
            let (url, body, key) = (url(&gw), request.to_string(), key.clone());
            async move {
                sluice_tests::request(
                    "POST",
                    &url,
                    &[("authorization", format!("Bearer {key}"))],
                    Some(body),
                )
                .await
            }
        });
        let _ = third.await;
        let status = gw.exited(Duration::from_secs(10));
        assert!(!status.success(), "{status}");
        assert!(
            gw.logs().contains("failpoint append fired (hit 3)"),
            "{}",
            gw.logs()
        );
        // Stopped: the audit reads the store itself.
        audit_passes(&gw);
        gw.restart().await;
        assert_eq!(
            gw.remaining(&id).await,
            Some(98 * cost),
            "the lost settlement left no trace"
        );
        assert_eq!(gw.ledger(&id).await.len(), 3);
        let report = audit_passes(&gw);
        assert!(
            report.contains(&format!("{} credits charged", 2 * cost)),
            "sqlite={sqlite}: {report}"
        );
    }
}
