//! Client-facing behaviour: the OpenAI SDK against the gateway, transports,
//! failover, streaming failures, disconnects, client IPs, large events.

use std::time::{Duration, Instant};

use http_body_util::BodyExt;
use serde_json::json;
use sluice_tests::*;

fn body(stream: bool) -> serde_json::Value {
    json!({"model": MODEL, "stream": stream, "messages": [{"role": "user", "content": "hello"}]})
}

#[tokio::test]
async fn openai_sdk_sees_the_openai_api() {
    let upstream = keyed_mock(MockConfig {
        chunk_delay_ms: 40,
        ..MockConfig::default()
    })
    .await;
    let gw = Gateway::builder()
        .max_body_bytes(1_048_576)
        .channel(ChannelSpec::mock("main", &upstream, &[MODEL]))
        .start()
        .await;
    let (key, key_id) = gw
        .create_key(json!({"name": "sdk", "quota": 1_000_000}))
        .await;
    let (limited, _) = gw
        .create_key(json!({"name": "limited", "models": ["other-model"]}))
        .await;
    let (broke, _) = gw.create_key(json!({"name": "broke", "quota": 0})).await;
    let base = format!("http://{}/v1", gw.proxy);
    let env = [
        ("SLUICE_KEY_LIMITED", limited.as_str()),
        ("SLUICE_KEY_BROKE", broke.as_str()),
        ("SLUICE_CHUNK_DELAY_MS", "40"),
    ];
    for scenario in [
        "models",
        "chat",
        "stream",
        "stream_usage",
        "embeddings",
        "completions",
    ] {
        let out = python(scenario, &base, &key, &env).await;
        assert!(out.contains("ok"), "{scenario}: {out}");
    }
    // The SDK sees each failure with OpenAI's status, shape and code.
    let errors = python("errors", &base, &key, &env).await;
    let seen: Vec<&str> = errors.lines().filter(|l| l.starts_with("ok ")).collect();
    assert_eq!(
        seen,
        [
            "ok AuthenticationError 401 invalid_api_key",
            "ok NotFoundError 404 model_not_found",
            "ok BadRequestError 400 invalid_request_error",
            "ok PermissionDeniedError 403 model_not_allowed",
            "ok RateLimitError 429 insufficient_quota",
            "ok APIStatusError 413 request_too_large",
            "ok NotFoundError 404 unknown_url",
            "ok APIStatusError 405 method_not_allowed",
        ]
    );
    let stats = &upstream.stats;
    assert_eq!(
        stats
            .leaked_credentials
            .load(std::sync::atomic::Ordering::Relaxed),
        0,
        "a client credential reached the upstream"
    );
    assert!(
        stats
            .usage_requested
            .load(std::sync::atomic::Ordering::Relaxed)
            >= 3,
        "streams must ask the upstream for usage"
    );
    // Every metered response left a usage record with tokens.
    let ok = eventually(Duration::from_secs(5), async || {
        let (_, page) = gw
            .admin_json(
                "GET",
                &format!("/admin/usage?key_id={key_id}&status=200"),
                None,
            )
            .await;
        page["data"].as_array().is_some_and(|d| d.len() == 6)
    })
    .await;
    assert!(ok, "usage records missing");
    let (_, page) = gw
        .admin_json(
            "GET",
            &format!("/admin/usage?key_id={key_id}&status=200"),
            None,
        )
        .await;
    assert!(
        page["data"]
            .as_array()
            .unwrap()
            .iter()
            .all(|r| r["prompt_tokens"].as_u64() > Some(0))
    );
}

#[tokio::test]
async fn upstream_failures_are_5xx_for_the_sdk() {
    let gw = Gateway::builder()
        .channel(ChannelSpec::at("down", "http://127.0.0.1:9/v1", &[MODEL]))
        .connect_timeout(Duration::from_millis(500))
        .start()
        .await;
    let (key, _) = gw.create_key(json!({"name": "k"})).await;
    let out = python(
        "upstream_down",
        &format!("http://{}/v1", gw.proxy),
        &key,
        &[],
    )
    .await;
    assert_eq!(
        out.trim(),
        "ok InternalServerError 502 upstream_unavailable"
    );
}

#[tokio::test]
async fn h2c_clients_and_https_upstreams() {
    let tls_dir = tempfile::tempdir().unwrap();
    let tls = sluice_mock::test_tls(tls_dir.path()).unwrap();
    let upstream = sluice_mock::start(
        "127.0.0.1:0".parse().unwrap(),
        MockConfig {
            api_key: Some(UPSTREAM_KEY.into()),
            ..MockConfig::default()
        },
        Some(tls),
    )
    .await
    .unwrap();
    let ca = tls_dir.path().join("ca.pem");
    let gw = Gateway::builder()
        .channel(ChannelSpec::at(
            "tls",
            &format!("https://127.0.0.1:{}/v1", upstream.addr.port()),
            &[MODEL],
        ))
        .upstream_ca(&ca)
        .start()
        .await;
    let (key, _) = gw.create_key(json!({"name": "k"})).await;
    let reply = request_h2c(
        "POST",
        &format!("http://{}/v1/chat/completions", gw.proxy),
        &[("authorization", format!("Bearer {key}"))],
        Some(body(false).to_string()),
    )
    .await;
    assert_eq!(reply.status, 200, "{}", reply.text());
    assert_eq!(reply.json()["usage"]["completion_tokens"], 16);
    assert_eq!(
        upstream
            .stats
            .requests
            .load(std::sync::atomic::Ordering::Relaxed),
        1
    );
}

#[tokio::test]
async fn failover_happens_before_the_first_byte() {
    let backup = keyed_mock(MockConfig::default()).await;
    let failing_500 = failing_mock(FailMode::Status, 500, 16).await;
    let failing_429 = failing_mock(FailMode::Status, 429, 16).await;
    let hanging = failing_mock(FailMode::Hang, 500, 16).await;
    let dropping = failing_mock(FailMode::Drop, 500, 16).await;
    let models = ["refused", "fail500", "fail429", "hang", "drop"];
    let first_byte = Duration::from_millis(300);
    // A failover costs at most one first-byte timeout (the hanging channel),
    // plus a margin for a loaded 2-core machine.
    let bound = first_byte + Duration::from_secs(2);
    let gw = Gateway::builder()
        .first_byte_timeout(first_byte)
        .channel(ChannelSpec::at("refused", "http://127.0.0.1:9/v1", &["refused"]).priority(10))
        .channel(ChannelSpec::mock("fail500", &failing_500, &["fail500"]).priority(10))
        .channel(ChannelSpec::mock("fail429", &failing_429, &["fail429"]).priority(10))
        .channel(ChannelSpec::mock("hang", &hanging, &["hang"]).priority(10))
        .channel(ChannelSpec::mock("drop", &dropping, &["drop"]).priority(10))
        .channel(ChannelSpec::mock("backup", &backup, &models).priority(0))
        .start()
        .await;
    let (key, key_id) = gw.create_key(json!({"name": "k"})).await;
    for model in models {
        let started = Instant::now();
        let reply = gw.chat(&key, json!({"model": model, "messages": []})).await;
        assert_eq!(reply.status, 200, "{model}: {}", reply.text());
        assert!(
            started.elapsed() < bound,
            "{model} took {:?}, more than {bound:?}",
            started.elapsed()
        );
    }
    assert_eq!(
        backup
            .stats
            .requests
            .load(std::sync::atomic::Ordering::Relaxed),
        5
    );
    let ok = eventually(Duration::from_secs(5), async || {
        let (_, page) = gw
            .admin_json("GET", &format!("/admin/usage?key_id={key_id}"), None)
            .await;
        page["data"]
            .as_array()
            .is_some_and(|d| d.len() == 5 && d.iter().all(|r| r["channel_id"] == "backup"))
    })
    .await;
    assert!(
        ok,
        "every request should be recorded as served by the backup"
    );
    let metrics = gw.metrics().await;
    assert!(
        metrics.contains("sluice_upstream_retries_total 5"),
        "{metrics}"
    );
}

async fn read_all(response: http::Response<hyper::body::Incoming>) -> (String, Duration) {
    let started = Instant::now();
    let bytes = response
        .into_body()
        .collect()
        .await
        .map(|c| c.to_bytes())
        .unwrap_or_default();
    (
        String::from_utf8_lossy(&bytes).into_owned(),
        started.elapsed(),
    )
}

/// The `data:` payloads of an SSE body, each checked to be JSON or `[DONE]`.
fn stream_events(text: &str) -> Vec<serde_json::Value> {
    let mut events = Vec::new();
    for event in text.split("\n\n").filter(|e| !e.trim().is_empty()) {
        let data = event.strip_prefix("data: ").unwrap_or_default();
        if data == "[DONE]" {
            events.push(json!("[DONE]"));
        } else {
            let parsed = serde_json::from_str(data);
            assert!(parsed.is_ok(), "not a JSON event: {event:?}");
            events.push(parsed.unwrap_or_default());
        }
    }
    events
}

#[tokio::test]
async fn streams_carry_usage_only_for_clients_that_ask() {
    let upstream = keyed_mock(MockConfig::default()).await;
    let gw = Gateway::serving(&upstream).await;
    let (key, _) = gw.create_key(json!({"name": "k"})).await;
    let url = format!("http://{}/v1/chat/completions", gw.proxy);

    // The relay asks upstream for usage either way; a client that did not ask
    // sees OpenAI's plain stream: no usage chunk, no `"usage": null` members.
    let (text, _) = read_all(open_stream(&url, &key, body(true), &[]).await).await;
    let events = stream_events(&text);
    assert_eq!(events.last(), Some(&json!("[DONE]")), "{text}");
    assert!(events.len() > 2, "{text}");
    assert!(!text.contains("usage"), "{text}");

    let mut asked = body(true);
    asked["stream_options"] = json!({"include_usage": true});
    let (text, _) = read_all(open_stream(&url, &key, asked, &[]).await).await;
    let events = stream_events(&text);
    let (done, chunks) = events.split_last().unwrap_or((&json!(null), &[]));
    assert_eq!(done, &json!("[DONE]"), "{text}");
    let (usage_chunk, content_chunks) = chunks.split_last().unwrap_or((&json!(null), &[]));
    assert!(!content_chunks.is_empty(), "{text}");
    for chunk in content_chunks {
        assert_eq!(chunk.get("usage"), Some(&json!(null)), "{chunk}");
    }
    assert_eq!(usage_chunk["choices"], json!([]), "{text}");
    assert_eq!(usage_chunk["usage"]["completion_tokens"], 16, "{text}");
}

/// Events that reach the gateway together leave it together: a burst of
/// eighteen events arrives at the client in a few HTTP chunks (each one write
/// of the gateway), where it took one chunk per event before coalescing.
#[tokio::test]
async fn a_burst_of_events_leaves_in_a_few_writes() {
    const STREAMS: usize = 20;
    let upstream = keyed_mock(MockConfig::default()).await;
    let gw = Gateway::serving(&upstream).await;
    let (key, _) = gw.create_key(json!({"name": "k"})).await;
    let url = format!("http://{}/v1/chat/completions", gw.proxy);
    let (mut chunks, mut events) = (0, 0);
    for _ in 0..STREAMS {
        let mut response = open_stream(&url, &key, body(true), &[]).await.into_body();
        let mut text = String::new();
        while let Some(frame) = response.frame().await {
            let data = frame.expect("a frame").into_data().unwrap_or_default();
            text.push_str(&String::from_utf8_lossy(&data));
            chunks += 1;
        }
        let parsed = stream_events(&text);
        assert_eq!(parsed.last(), Some(&json!("[DONE]")), "{text}");
        events += parsed.len();
    }
    eprintln!("{events} events in {chunks} HTTP chunks over {STREAMS} streams");
    assert!(events >= 16 * STREAMS, "{events} events");
    assert!(chunks <= 6 * STREAMS, "{chunks} chunks for {events} events");
}

#[tokio::test]
async fn failures_after_the_first_byte_end_the_stream_with_an_error_event() {
    let dropping = failing_mock(FailMode::DropMidStream, 500, 8).await;
    let stalling = failing_mock(FailMode::Stall, 500, 8).await;
    let backup = keyed_mock(MockConfig::default()).await;
    let idle = Duration::from_millis(300);
    // A stalled stream ends one idle timeout after its last chunk, plus a
    // margin for a loaded 2-core machine.
    let bound = idle + Duration::from_secs(2);
    let gw = Gateway::builder()
        .idle_timeout(idle)
        .channel(ChannelSpec::mock("drop", &dropping, &["drop"]).priority(5))
        .channel(ChannelSpec::mock("stall", &stalling, &["stall"]).priority(5))
        .channel(ChannelSpec::mock("backup", &backup, &["drop", "stall"]))
        .start()
        .await;
    let (key, _) = gw.create_key(json!({"name": "k"})).await;
    let url = format!("http://{}/v1/chat/completions", gw.proxy);
    for (model, code) in [
        ("drop", "upstream_stream_error"),
        ("stall", "upstream_idle_timeout"),
    ] {
        let response = open_stream(
            &url,
            &key,
            json!({"model": model, "stream": true, "messages": []}),
            &[],
        )
        .await;
        assert_eq!(response.status(), 200);
        let (text, took) = read_all(response).await;
        assert!(
            text.contains("\"The\""),
            "{model}: first chunks must have been relayed: {text}"
        );
        let last = text.trim_end().rsplit("\n\n").next().unwrap_or_default();
        assert!(
            last.starts_with("data: {\"error\"") && last.contains(code),
            "{model}: {last}"
        );
        assert!(took < bound, "{model} took {took:?}, more than {bound:?}");
    }
    assert_eq!(
        backup
            .stats
            .requests
            .load(std::sync::atomic::Ordering::Relaxed),
        0,
        "no failover after the first byte"
    );
}

#[tokio::test]
async fn client_disconnect_cancels_upstream_and_still_charges() {
    let upstream = keyed_mock(MockConfig {
        chunks: 200,
        chunk_delay_ms: 50,
        ..MockConfig::default()
    })
    .await;
    let gw = Gateway::serving(&upstream).await;
    let (key, key_id) = gw.create_key(json!({"name": "k", "quota": 100000})).await;
    let url = format!("http://{}/v1/chat/completions", gw.proxy);
    let response = open_stream(&url, &key, body(true), &[]).await;
    let mut body = response.into_body();
    let mut seen = 0;
    while seen < 3 {
        let frame = body.frame().await.unwrap().unwrap();
        if frame.is_data() {
            seen += 1;
        }
    }
    drop(body);
    let dropped_at = sluice::keys::now_ms();
    let stats = upstream.stats.clone();
    let cancelled = eventually(Duration::from_millis(500), async || {
        stats
            .cancelled_streams
            .load(std::sync::atomic::Ordering::Relaxed)
            == 1
    })
    .await;
    assert!(cancelled, "the upstream never saw the cancel");
    let lag = stats
        .last_cancel_ms
        .load(std::sync::atomic::Ordering::Relaxed)
        .saturating_sub(dropped_at);
    assert!(
        lag <= 100,
        "upstream saw the cancel {lag} ms after the client left"
    );
    let recorded = eventually(Duration::from_secs(5), async || {
        let (_, page) = gw
            .admin_json("GET", &format!("/admin/usage?key_id={key_id}"), None)
            .await;
        page["data"][0]["partial"] == true
    })
    .await;
    assert!(recorded, "no partial usage record");
    let (_, page) = gw
        .admin_json("GET", &format!("/admin/usage?key_id={key_id}"), None)
        .await;
    let record = &page["data"][0];
    assert!(
        record["completion_tokens"].as_u64().unwrap() >= 3,
        "{record}"
    );
    assert_eq!(record["error_kind"], "client_disconnected");
    let cost = record["cost"].as_i64().unwrap();
    assert!(cost > 0);
    let (_, k) = gw
        .admin_json("GET", &format!("/admin/keys/{key_id}"), None)
        .await;
    assert_eq!(
        k["quota_remaining"].as_i64().unwrap(),
        100_000 - cost,
        "the key must be charged what was consumed"
    );
}

#[tokio::test]
async fn spoofed_forwarded_for_from_untrusted_peer_changes_nothing() {
    let upstream = keyed_mock(MockConfig::default()).await;
    let gw = Gateway::serving(&upstream).await;
    let (local_only, _) = gw
        .create_key(json!({"name": "local", "networks": ["127.0.0.1/32"]}))
        .await;
    let (office_only, _) = gw
        .create_key(json!({"name": "office", "networks": ["10.0.0.0/8"]}))
        .await;
    let url = format!("http://{}/v1/chat/completions", gw.proxy);
    let spoof = |key: &str| {
        vec![
            ("authorization", format!("Bearer {key}")),
            ("x-forwarded-for", "10.1.2.3".to_string()),
        ]
    };
    let allowed = request(
        "POST",
        &url,
        &spoof(&local_only),
        Some(body(false).to_string()),
    )
    .await;
    assert_eq!(allowed.status, 200, "{}", allowed.text());
    let denied = request(
        "POST",
        &url,
        &spoof(&office_only),
        Some(body(false).to_string()),
    )
    .await;
    assert_eq!(denied.status, 403);
    assert_eq!(denied.error_code(), "ip_not_allowed");
}

#[tokio::test]
async fn trusted_proxies_supply_the_client_ip() {
    let upstream = keyed_mock(MockConfig::default()).await;
    let gw = Gateway::builder()
        .trusted_proxies(&["127.0.0.1"])
        .channel(ChannelSpec::mock("main", &upstream, &[MODEL]))
        .start()
        .await;
    let (office_only, _) = gw
        .create_key(json!({"name": "office", "networks": ["10.0.0.0/8"]}))
        .await;
    let url = format!("http://{}/v1/chat/completions", gw.proxy);
    let headers = [
        ("authorization", format!("Bearer {office_only}")),
        ("x-forwarded-for", "10.1.2.3".to_string()),
    ];
    assert_eq!(
        request("POST", &url, &headers, Some(body(false).to_string()))
            .await
            .status,
        200
    );
}

#[tokio::test]
async fn a_one_mebibyte_event_relays_intact() {
    let upstream = keyed_mock(MockConfig {
        chunks: 2,
        ..MockConfig::default()
    })
    .await;
    let gw = Gateway::serving(&upstream).await;
    let (key, _) = gw.create_key(json!({"name": "k"})).await;
    let response = open_stream(
        &format!("http://{}/v1/chat/completions", gw.proxy),
        &key,
        body(true),
        &[("x-mock-event-bytes", "1048576".into())],
    )
    .await;
    let (text, _) = read_all(response).await;
    let events: Vec<&str> = text
        .split("\n\n")
        .filter(|e| e.starts_with("data: {"))
        .collect();
    assert_eq!(events.len(), 3, "two content chunks and the finish chunk");
    for event in &events[..2] {
        let chunk: serde_json::Value =
            serde_json::from_str(event.trim_start_matches("data: ")).unwrap();
        assert_eq!(
            chunk["choices"][0]["delta"]["content"]
                .as_str()
                .unwrap()
                .len(),
            1 << 20
        );
    }
    assert!(text.ends_with("data: [DONE]\n\n"));
}

#[tokio::test]
async fn every_response_carries_ids_timings_and_openai_errors() {
    let upstream = keyed_mock(MockConfig::default()).await;
    let gw = Gateway::serving(&upstream).await;
    let (key, _) = gw.create_key(json!({"name": "k"})).await;
    let url = format!("http://{}/v1/chat/completions", gw.proxy);
    let reply = request(
        "POST",
        &url,
        &[
            ("authorization", format!("Bearer {key}")),
            ("x-request-id", "req-abc".into()),
        ],
        Some(body(false).to_string()),
    )
    .await;
    assert_eq!(reply.status, 200);
    assert_eq!(reply.headers["x-request-id"], "req-abc");
    assert!(
        reply.headers["x-response-time"]
            .to_str()
            .unwrap()
            .ends_with("ms")
    );
    let timing = reply.headers["server-timing"].to_str().unwrap();
    assert!(
        timing.contains("auth;dur=") && timing.contains("upstream;dur="),
        "{timing}"
    );
    assert_eq!(
        reply.headers["x-ratelimit-remaining-requests"], "999",
        "upstream rate-limit headers pass through"
    );
    let cases = [
        (
            "POST",
            "/v1/chat/completions",
            Some("{not json"),
            400,
            "invalid_request_error",
        ),
        (
            "POST",
            "/v1/chat/completions",
            Some("{\"messages\":[]}"),
            400,
            "invalid_request_error",
        ),
        (
            "GET",
            "/v1/chat/completions",
            None,
            405,
            "method_not_allowed",
        ),
        ("POST", "/v1/nothing", Some("{}"), 404, "unknown_url"),
        ("GET", "/v1/models/unknown", None, 404, "model_not_found"),
    ];
    for (method, path, payload, status, code) in cases {
        let reply = request(
            method,
            &format!("http://{}{path}", gw.proxy),
            &[("authorization", format!("Bearer {key}"))],
            payload.map(String::from),
        )
        .await;
        assert_eq!(reply.status, status, "{method} {path}: {}", reply.text());
        assert_eq!(reply.error_code(), code, "{method} {path}");
        let error = &reply.json()["error"];
        assert!(
            error["message"].is_string()
                && error["type"].is_string()
                && error.get("param").is_some(),
            "{error}"
        );
        assert!(reply.headers.contains_key("x-request-id"));
    }
    let unauthenticated = request(
        "POST",
        &url,
        &[("authorization", "Bearer sk-sl-not-a-key".into())],
        Some("{not json".into()),
    )
    .await;
    assert_eq!(
        (
            unauthenticated.status,
            unauthenticated.error_code().as_str()
        ),
        (401, "invalid_api_key"),
        "a bad key is refused before the body is judged, as OpenAI does"
    );
}

#[tokio::test]
async fn running_out_of_file_descriptors_backs_off_logs_once_and_recovers() {
    let upstream = keyed_mock(MockConfig::default()).await;
    let gw = Gateway::builder()
        .open_files(64)
        .channel(ChannelSpec::mock("main", &upstream, &[MODEL]))
        .start()
        .await;
    let (key, _) = gw.create_key(json!({"name": "k"})).await;
    // More silent connections than the process has descriptors left.
    let mut silent = Vec::new();
    for _ in 0..120 {
        if let Ok(s) = tokio::net::TcpStream::connect(&gw.proxy).await {
            silent.push(s);
        }
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    let logs = gw.logs();
    let failing = logs
        .lines()
        .filter(|l| l.contains("accepting connections fails"))
        .count();
    assert_eq!(
        failing, 1,
        "accept failures are logged once per interval:\n{logs}"
    );
    assert!(logs.contains("open-file limit"), "{logs}");
    drop(silent);
    let served = eventually(Duration::from_secs(5), async || {
        gw.chat(&key, chat_body()).await.status == 200
    })
    .await;
    assert!(served, "the gateway serves again once descriptors are free");
}

/// The abuse benchmark (`bench/abuse.sh`) at a tenth of its scale: stalled
/// keyless and keyed uploads, idle connections and junk model names at once,
/// while a keyed client is served and `/metrics` stays small.
#[tokio::test]
async fn abuse_at_reduced_scale_leaves_metrics_small_and_clients_served() {
    use tokio::io::AsyncWriteExt as _;
    let upstream = keyed_mock(MockConfig::default()).await;
    let gw = Gateway::serving(&upstream).await;
    let (key, _) = gw.create_key(json!({"name": "k"})).await;
    let mut held = Vec::new();
    for keyed in [false, true] {
        for _ in 0..30 {
            let mut s = tokio::net::TcpStream::connect(&gw.proxy).await.unwrap();
            let auth = if keyed {
                format!("authorization: Bearer {key}\r\n")
            } else {
                String::new()
            };
            let head = format!(
                "POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\n{auth}content-length: 4194303\r\n\r\n{{"
            );
            s.write_all(head.as_bytes()).await.unwrap();
            held.push(s);
        }
    }
    for _ in 0..200 {
        held.push(tokio::net::TcpStream::connect(&gw.proxy).await.unwrap());
    }
    let url = format!("http://{}/v1/chat/completions", gw.proxy);
    for i in 0..150 {
        let model = format!("{i}-{}", "j".repeat(64 << 10));
        let body = json!({"model": model, "messages": []}).to_string();
        let reply = request("POST", &url, &[], Some(body)).await;
        assert_eq!(reply.status, 401);
    }
    for _ in 0..20 {
        assert_eq!(gw.chat(&key, chat_body()).await.status, 200);
    }
    let metrics = gw.metrics().await;
    let series = metrics
        .lines()
        .filter(|l| l.starts_with("sluice_requests_total{"))
        .count();
    assert!(series <= 4, "{series} request series");
    assert!(
        metrics.len() < 256 << 10,
        "/metrics is {} bytes",
        metrics.len()
    );
    drop(held);
}
