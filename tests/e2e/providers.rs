//! Provider channels: the official SDKs against the fake upstream's Anthropic
//! and Azure modes (so the fixtures and the translator cannot agree while
//! both are wrong), the `openai` SDK through Anthropic and Azure channels
//! with tool calls and their results, usage and cost on every record, and
//! failover from a failing Anthropic channel.

use std::sync::atomic::Ordering;
use std::time::Duration;

use serde_json::json;
use sluice_tests::*;

fn oks(out: &str) -> Vec<&str> {
    out.lines().filter(|l| l.starts_with("ok ")).collect()
}

#[tokio::test]
async fn official_sdks_accept_the_fake_upstreams_provider_modes() {
    let upstream = keyed_mock(MockConfig::default()).await;
    let root = format!("http://{}", upstream.addr);
    for (scenario, model) in [
        ("anthropic_direct", "claude-mock"),
        ("azure_direct", "prod-deploy"),
    ] {
        let env = [("SLUICE_MODEL", model)];
        let out = python_script("providers.py", scenario, &root, UPSTREAM_KEY, &env).await;
        assert_eq!(oks(&out).len(), 4, "{scenario}: {out}");
    }
    assert_eq!(upstream.stats.leaked_credentials.load(Ordering::Relaxed), 0);
}

/// The key's records with status 200 for `model`, once all `n` are written.
async fn records(gw: &Gateway, key_id: &str, model: &str, n: usize) -> Vec<serde_json::Value> {
    let path = format!("/admin/usage?key_id={key_id}&model={model}&status=200");
    let written = eventually(Duration::from_secs(5), async || {
        let (_, page) = gw.admin_json("GET", &path, None).await;
        page["data"].as_array().is_some_and(|d| d.len() == n)
    })
    .await;
    let (_, page) = gw.admin_json("GET", &path, None).await;
    assert!(written, "{model}: expected {n} records: {page}");
    page["data"].as_array().cloned().unwrap_or_default()
}

/// An Anthropic channel `claude` serving `claude-mock` from `mock`.
fn claude_channel(mock: &Mock) -> ChannelSpec {
    ChannelSpec::provider("claude", "anthropic", mock, &["claude-mock"])
}

fn count(record: &serde_json::Value, field: &str) -> i64 {
    record[field].as_i64().unwrap_or(-1)
}

#[tokio::test]
async fn the_openai_sdk_reaches_anthropic_and_azure_channels_and_each_answer_is_billed() {
    let claude = keyed_mock(MockConfig {
        cached_tokens: 2,
        cache_write_tokens: 3,
        ..MockConfig::default()
    })
    .await;
    let azure = keyed_mock(MockConfig::default()).await;
    let gw = Gateway::builder()
        .channel(claude_channel(&claude))
        .channel(
            ChannelSpec::provider("azure", "azure", &azure, &["gpt-azure"])
                .rename("gpt-azure", "prod-deploy"),
        )
        .price(
            "claude-mock",
            "{ input = 3.0, cached_input = 0.5, cache_write = 4.0, output = 15.0 }",
        )
        .price("gpt-azure", "{ input = 2.0, output = 4.0 }")
        .start()
        .await;
    let (key, key_id) = gw
        .create_key(json!({"name": "providers", "quota": 10_000_000}))
        .await;
    let base = format!("http://{}/v1", gw.proxy);
    for model in ["claude-mock", "gpt-azure"] {
        let out = python_script(
            "providers.py",
            "translated",
            &base,
            &key,
            &[("SLUICE_MODEL", model)],
        )
        .await;
        let seen = oks(&out);
        assert_eq!(seen.len(), 4, "{model}: {out}");
        // What the SDK was told is what the record holds.
        let plain: Vec<i64> = seen[0]
            .split_whitespace()
            .skip(3)
            .filter_map(|n| n.parse().ok())
            .collect();
        let answered = records(&gw, &key_id, model, 5).await;
        assert!(
            answered
                .iter()
                .any(|r| !r["stream"].as_bool().unwrap_or(true)
                    && [count(r, "prompt_tokens"), count(r, "completion_tokens")] == plain[..]),
            "{model}: no record of {plain:?}: {answered:?}"
        );
        for record in &answered {
            let (prompt, completion) = (
                count(record, "prompt_tokens"),
                count(record, "completion_tokens"),
            );
            assert!(prompt > 0 && completion > 0, "{record}");
            if model == "gpt-azure" {
                assert_eq!(
                    count(record, "cost"),
                    prompt * 2 + completion * 4,
                    "{record}"
                );
            }
            assert_eq!(
                record["upstream_model"],
                if model == "gpt-azure" {
                    "prod-deploy"
                } else {
                    model
                }
            );
        }
    }
    // Anthropic's cache reads and writes are billed at their own rates.
    for record in records(&gw, &key_id, "claude-mock", 5).await {
        assert_eq!(
            (
                count(&record, "cached_tokens"),
                count(&record, "cache_write_tokens")
            ),
            (2, 3)
        );
        let (prompt, completion) = (
            count(&record, "prompt_tokens"),
            count(&record, "completion_tokens"),
        );
        let split = &record["cost_split"];
        assert_eq!(
            split["input"].as_i64(),
            Some((prompt - 5) * 3_000_000),
            "{record}"
        );
        assert_eq!(split["cached_input"].as_i64(), Some(2 * 500_000));
        assert_eq!(split["cache_write"].as_i64(), Some(3 * 4_000_000));
        assert_eq!(split["output"].as_i64(), Some(completion * 15_000_000));
        assert_eq!(
            count(&record, "cost"),
            (prompt - 5) * 3 + 1 + 12 + completion * 15
        );
    }
    // Each provider got its own credential header, and no client credential.
    assert_eq!(claude.stats.last_header("x-api-key"), [UPSTREAM_KEY]);
    assert_eq!(
        claude.stats.last_header("anthropic-version"),
        ["2023-06-01"]
    );
    assert!(claude.stats.last_header("authorization").is_empty());
    assert_eq!(azure.stats.last_header("api-key"), [UPSTREAM_KEY]);
    assert!(azure.stats.last_header("authorization").is_empty());
    for upstream in [&claude, &azure] {
        assert_eq!(upstream.stats.leaked_credentials.load(Ordering::Relaxed), 0);
    }
}

#[tokio::test]
async fn a_failing_anthropic_channel_fails_over_to_an_openai_compatible_one() {
    let overloaded = failing_mock(FailMode::Status, 529, 16).await;
    let backup = keyed_mock(MockConfig::default()).await;
    let gw = Gateway::builder()
        .channel(
            ChannelSpec::provider(
                "claude",
                "anthropic",
                &overloaded,
                &["claude-mock", "claude-only"],
            )
            .priority(10),
        )
        .channel(ChannelSpec::mock("backup", &backup, &["claude-mock"]))
        .start()
        .await;
    let (key, key_id) = gw.create_key(json!({"name": "k"})).await;
    for stream in [false, true] {
        let reply = gw
            .chat(
                &key,
                json!({"model": "claude-mock", "stream": stream, "messages": [{"role": "user", "content": "hi"}]}),
            )
            .await;
        assert_eq!(reply.status, 200, "{}", reply.text());
    }
    assert_eq!(overloaded.stats.requests.load(Ordering::Relaxed), 2);
    let served = records(&gw, &key_id, "claude-mock", 2).await;
    assert!(
        served.iter().all(|r| r["channel_id"] == "backup"),
        "{served:?}"
    );
    let metrics = gw.metrics().await;
    assert!(
        metrics
            .contains("sluice_upstream_errors_total{channel=\"claude\",kind=\"upstream_error\"} 2"),
        "{metrics}"
    );
    // An Anthropic channel serves chat completions only.
    let embeddings = request(
        "POST",
        &format!("http://{}/v1/embeddings", gw.proxy),
        &[("authorization", format!("Bearer {key}"))],
        Some(json!({"model": "claude-only", "input": "x"}).to_string()),
    )
    .await;
    assert_eq!(embeddings.status, 404, "{}", embeddings.text());
    assert_eq!(embeddings.json()["error"]["code"], "model_not_found");
    assert!(
        embeddings.text().contains("not served on embeddings"),
        "{}",
        embeddings.text()
    );
}

/// A key's one record and its ledger entries, once written.
async fn billed(gw: &Gateway, key_id: &str) -> (serde_json::Value, Vec<serde_json::Value>) {
    let record = gw
        .only_usage_record(key_id)
        .await
        .expect("one usage record");
    (record, gw.ledger(key_id).await)
}

#[tokio::test]
async fn anthropic_clients_use_v1_messages_on_any_channel_and_are_billed_alike() {
    let claude = keyed_mock(MockConfig::default()).await;
    let openai = keyed_mock(MockConfig::default()).await;
    let gw = Gateway::builder()
        .channel(claude_channel(&claude))
        .channel(ChannelSpec::mock("openai", &openai, &["gpt-mock"]))
        .price("claude-mock", "{ input = 3.0, output = 15.0 }")
        .price("gpt-mock", "{ input = 2.0, output = 4.0 }")
        .start()
        .await;
    let (key, _) = gw
        .create_key(json!({"name": "messages", "quota": 10_000_000}))
        .await;
    let (broke, _) = gw.create_key(json!({"name": "broke", "quota": 0})).await;
    let (limited, _) = gw
        .create_key(json!({"name": "limited", "models": ["other-model"]}))
        .await;
    let base = format!("http://{}/v1", gw.proxy);
    for model in ["claude-mock", "gpt-mock"] {
        let env = [
            ("SLUICE_MODEL", model),
            ("SLUICE_KEY_BROKE", broke.as_str()),
            ("SLUICE_KEY_LIMITED", limited.as_str()),
        ];
        let out = python_script("providers.py", "messages", &base, &key, &env).await;
        assert_eq!(oks(&out).len(), 5, "{model}: {out}");
    }
    assert_eq!(claude.stats.leaked_credentials.load(Ordering::Relaxed), 0);
    assert_eq!(openai.stats.leaked_credentials.load(Ordering::Relaxed), 0);
    // An Anthropic channel gets the client's version and beta flags.
    let reply = request(
        "POST",
        &format!("http://{}/v1/messages", gw.proxy),
        &[
            ("x-api-key", key.clone()),
            ("anthropic-version", "2023-01-01".into()),
            ("anthropic-beta", "tools-2024-04-04".into()),
        ],
        Some(json!({"model": "claude-mock", "max_tokens": 8, "messages": [{"role": "user", "content": "hi"}]}).to_string()),
    )
    .await;
    assert_eq!(reply.status, 200, "{}", reply.text());
    assert_eq!(
        claude.stats.last_header("anthropic-version"),
        ["2023-01-01"]
    );
    assert_eq!(
        claude.stats.last_header("anthropic-beta"),
        ["tools-2024-04-04"]
    );
    // A Messages request and the equivalent chat completion, each on a key
    // of its own, leave the same record and the same ledger entries.
    for model in ["claude-mock", "gpt-mock"] {
        let messages = json!({"model": model, "max_tokens": 64, "system": "Be brief.",
            "messages": [{"role": "user", "content": "Say something."}]});
        let chat = json!({"model": model, "max_tokens": 64, "messages": [
            {"role": "system", "content": "Be brief."}, {"role": "user", "content": "Say something."}]});
        let mut seen = Vec::new();
        for (path, body) in [("/v1/messages", messages), ("/v1/chat/completions", chat)] {
            let (key, key_id) = gw
                .create_key(json!({"name": path, "quota": 1_000_000}))
                .await;
            let reply = request(
                "POST",
                &format!("http://{}{path}", gw.proxy),
                &[
                    ("x-api-key", key),
                    ("content-type", "application/json".into()),
                ],
                Some(body.to_string()),
            )
            .await;
            assert_eq!(reply.status, 200, "{model} {path}: {}", reply.text());
            seen.push(billed(&gw, &key_id).await);
        }
        let (messages, chat) = (&seen[0], &seen[1]);
        assert_eq!(messages.0["endpoint"], "messages");
        for field in [
            "prompt_tokens",
            "completion_tokens",
            "cost",
            "reserved",
            "cost_split",
            "channel_id",
            "status",
        ] {
            assert_eq!(messages.0[field], chat.0[field], "{model}: {field}");
        }
        let deltas = |entries: &[serde_json::Value]| -> Vec<serde_json::Value> {
            entries
                .iter()
                .map(|e| json!([e["kind"], e["delta"]]))
                .collect()
        };
        assert_eq!(deltas(&messages.1), deltas(&chat.1), "{model}: ledger");
    }
}
