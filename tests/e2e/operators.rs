//! What operators touch: the admin API, the CLI, metrics, logs — and the
//! guarantee that no secret reaches a log line or a store file.

use std::time::Duration;

use serde_json::json;
use sluice_tests::*;

#[tokio::test]
async fn admin_api_manages_keys_usage_channels_and_plugins() {
    let upstream = keyed_mock(MockConfig::default()).await;
    let gw = Gateway::serving(&upstream).await;
    let admin = |path: &str| format!("http://{}{path}", gw.admin);
    for token in ["", "Bearer wrong-token"] {
        let reply = request(
            "GET",
            &admin("/admin/keys"),
            &[("authorization", token.to_string())],
            None,
        )
        .await;
        assert_eq!(reply.status, 401);
        assert_eq!(reply.error_code(), "invalid_admin_token");
    }
    let bad = request(
        "POST",
        &admin("/admin/keys"),
        &[("authorization", format!("Bearer {ADMIN_TOKEN}"))],
        Some("{nope".into()),
    )
    .await;
    assert_eq!(
        (bad.status, bad.error_code().as_str()),
        (400, "invalid_request_error")
    );
    let (status, typo) = gw
        .admin_json(
            "POST",
            "/admin/keys",
            Some(json!({"name": "x", "qouta": 5})),
        )
        .await;
    assert_eq!(status, 400, "{typo}");
    let (status, _) = gw.admin_json("GET", "/admin/nothing", None).await;
    assert_eq!(status, 404);

    let (key, id) = gw.create_key(json!({"name": "ops", "quota": 1000})).await;
    let (_, listed) = gw.admin_json("GET", "/admin/keys", None).await;
    assert!(
        listed["data"]
            .as_array()
            .unwrap()
            .iter()
            .any(|k| k["id"] == id.as_str() && k.get("digest").is_none())
    );
    let (status, patched) = gw
        .admin_json(
            "PATCH",
            &format!("/admin/keys/{id}"),
            Some(json!({"quota": 50000, "rpm_limit": 100})),
        )
        .await;
    assert_eq!(
        (
            status,
            patched["quota_remaining"].as_i64(),
            patched["rpm_limit"].as_u64()
        ),
        (200, Some(50000), Some(100))
    );
    assert_eq!(gw.chat(&key, chat_body()).await.status, 200);

    let written = eventually(Duration::from_secs(5), async || {
        let (_, page) = gw
            .admin_json(
                "GET",
                &format!("/admin/usage?key_id={id}&model={MODEL}&status=200"),
                None,
            )
            .await;
        page["data"].as_array().is_some_and(|d| d.len() == 1)
    })
    .await;
    assert!(written);
    let (status, summary) = gw
        .admin_json("GET", "/admin/usage/summary?group=key&bucket=day", None)
        .await;
    assert_eq!(status, 200, "{summary}");
    assert_eq!(summary["data"][0]["group"], id.as_str());
    assert_eq!(summary["data"][0]["requests"], 1);
    let (status, _) = gw.admin_json("GET", "/admin/usage?limit=nope", None).await;
    assert_eq!(status, 400);

    let (_, channels) = gw.admin_json("GET", "/admin/channels", None).await;
    assert_eq!(channels["data"][0]["healthy"], true);
    gw.admin_json("POST", "/admin/channels/main/disable", None)
        .await;
    let reply = gw.chat(&key, chat_body()).await;
    assert_eq!(
        (reply.status, reply.error_code().as_str()),
        (503, "no_healthy_channel")
    );
    gw.admin_json("POST", "/admin/channels/main/enable", None)
        .await;
    assert_eq!(gw.chat(&key, chat_body()).await.status, 200);

    let (_, plugins) = gw.admin_json("GET", "/admin/plugins", None).await;
    assert_eq!(plugins["data"].as_array().unwrap().len(), 3);
    assert!(plugins["data"][0]["calls"].as_u64().unwrap() >= 2);
    let (status, report) = gw.admin_json("POST", "/admin/plugins/reload", None).await;
    assert_eq!(status, 200, "{report}");

    let (status, _) = gw
        .admin_json("POST", &format!("/admin/keys/{id}/revoke"), None)
        .await;
    assert_eq!(status, 200);
    let reply = gw.chat(&key, chat_body()).await;
    assert_eq!(
        (reply.status, reply.error_code().as_str()),
        (401, "key_revoked"),
        "revocation must hit the very next request"
    );
}

fn stdout(out: &std::process::Output) -> String {
    assert!(
        out.status.success(),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[tokio::test]
async fn cli_works_against_a_running_and_a_stopped_gateway() {
    let upstream = keyed_mock(MockConfig::default()).await;
    let mut gw = Gateway::serving(&upstream).await;
    let config = gw.config_path().to_str().unwrap().to_string();
    let created = stdout(&gw.cli(&[
        "keys", "create", "--config", &config, "--name", "cli", "--models", MODEL, "--quota",
        "9000", "--rpm", "50",
    ]));
    let key = created.trim();
    assert!(
        key.starts_with("sk-sl-") && !key.contains(char::is_whitespace),
        "the key alone on its line: {created:?}"
    );
    assert_eq!(gw.chat(key, chat_body()).await.status, 200);
    let list = stdout(&gw.cli(&["keys", "list", "--config", &config]));
    let id = list
        .lines()
        .find(|l| l.contains(" cli "))
        .and_then(|l| l.split_whitespace().next())
        .unwrap()
        .to_string();
    assert!(list.contains("9000") || list.contains("89"), "{list}");
    assert!(
        stdout(&gw.cli(&["keys", "update", "--config", &config, &id, "--rpm", "10"])).contains(&id)
    );
    let seen = eventually(Duration::from_secs(5), async || {
        stdout(&gw.cli(&["usage", "--config", &config, "--since", "1h"])).contains("1 records")
    })
    .await;
    assert!(seen, "usage table");
    let usage = stdout(&gw.cli(&["usage", "--config", &config, "--since", "1h", "--key", &id]));
    assert!(
        usage.contains("REQUEST") && usage.contains(MODEL),
        "{usage}"
    );
    assert!(stdout(&gw.cli(&["plugin", "list", "--config", &config])).contains("builtin-key-auth"));
    assert!(stdout(&gw.cli(&["plugin", "reload", "--config", &config])).contains("loaded"));
    assert!(stdout(&gw.cli(&["keys", "revoke", "--config", &config, &id])).contains("revoked"));
    assert_eq!(gw.chat(key, chat_body()).await.status, 401);

    let exported = gw.dir.path().join("export.jsonl");
    assert!(
        stdout(&gw.cli(&[
            "export",
            "--config",
            &config,
            "--output",
            exported.to_str().unwrap()
        ]))
        .contains("records written")
    );
    let lines = std::fs::read_to_string(&exported).unwrap();
    let exported: Vec<serde_json::Value> = lines
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(
        exported.iter().filter(|r| r["status"] == 200).count(),
        1,
        "{lines}"
    );
    assert!(
        !gw.cli(&["purge", "--config", &config, "--older-than", "0s"])
            .status
            .success(),
        "purge refuses while running"
    );
    assert!(gw.stop().success());
    let offline = stdout(&gw.cli(&["keys", "create", "--config", &config, "--name", "offline"]));
    let offline_key = offline.trim().to_string();
    assert!(stdout(&gw.cli(&["keys", "list", "--config", &config])).contains("offline"));
    assert!(stdout(&gw.cli(&["usage", "--config", &config, "--since", "1h"])).contains("records"));
    let purged = gw.cli(&["purge", "--config", &config, "--older-than", "0s"]);
    assert!(stdout(&purged).contains("records older than 0s deleted"));
    assert!(
        String::from_utf8_lossy(&purged.stderr).contains("records, done."),
        "progress on stderr"
    );
    assert!(
        stdout(&gw.cli(&["usage", "--config", &config, "--since", "1h"])).contains("0 records")
    );
    gw.restart().await;
    assert_eq!(
        gw.chat(&offline_key, chat_body()).await.status,
        200,
        "a key created while stopped works after restart"
    );

    assert!(stdout(&gw.cli_with_upstream_secrets(&["config", "check", &config])).contains("ok"));
    let broken = gw.dir.path().join("broken.toml");
    std::fs::write(&broken, "[store]\nbackend = \"mongo\"\n").unwrap();
    let out = gw.cli_with_upstream_secrets(&["config", "check", broken.to_str().unwrap()]);
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr)
            .contains("broken.toml:2:11: store.backend: unknown backend 'mongo'"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[tokio::test]
async fn metrics_move_by_the_right_amounts() {
    let upstream = keyed_mock(MockConfig::default()).await;
    let gw = Gateway::serving(&upstream).await;
    let (key, _) = gw.create_key(json!({"name": "m"})).await;
    let ok = "sluice_requests_total{endpoint=\"chat.completions\",model=\"gpt-4o-mini\",channel=\"main\",status=\"200\"}";
    // An unknown key is refused before its body (and model) is read.
    let denied = "sluice_requests_total{endpoint=\"chat.completions\",model=\"other\",channel=\"\",status=\"401\"}";
    let before = gw.metrics().await;
    for _ in 0..3 {
        assert_eq!(gw.chat(&key, chat_body()).await.status, 200);
    }
    assert_eq!(gw.chat("sk-sl-nope", chat_body()).await.status, 401);
    let flushed = eventually(Duration::from_secs(5), async || {
        metric(&gw.metrics().await, "sluice_usage_records_written_total") >= 3.0
    })
    .await;
    assert!(flushed);
    let after = gw.metrics().await;
    assert_eq!(metric(&after, ok) - metric(&before, ok), 3.0, "{after}");
    assert_eq!(
        metric(&after, denied) - metric(&before, denied),
        1.0,
        "{after}"
    );
    assert_eq!(metric(&after, "sluice_usage_records_written_total"), 3.0);
    assert_eq!(metric(&after, "sluice_usage_records_dropped_total"), 0.0);
    assert_eq!(
        metric(&after, "sluice_tokens_total{channel=\"main\"}")
            - metric(&before, "sluice_tokens_total{channel=\"main\"}"),
        3.0 * (16.0 + prompt_tokens(&chat_body()) as f64)
    );
    assert_eq!(
        metric(
            &after,
            "sluice_policy_calls_total{plugin=\"builtin-key-auth\""
        ),
        3.0,
        "the unknown key is refused at admission, without a policy call"
    );
    assert!(metric(&after, "sluice_key_cache_hits_total") >= 2.0);
    assert_eq!(
        metric(&after, "sluice_channel_healthy{channel=\"main\"}"),
        1.0
    );
    assert!(after.contains("sluice_request_latency_seconds_bucket"));
}

#[tokio::test]
async fn no_secret_reaches_logs_or_store_files() {
    let upstream = keyed_mock(MockConfig::default()).await;
    let mut gw = Gateway::builder()
        .log_level("debug")
        .channel(ChannelSpec::mock("main", &upstream, &[MODEL]))
        .channel(ChannelSpec::at("dead", "http://127.0.0.1:9/v1", &[MODEL]).priority(5))
        .start()
        .await;
    let (key, _) = gw.create_key(json!({"name": "secretive"})).await;
    let (revoked, revoked_id) = gw.create_key(json!({"name": "revoked"})).await;
    gw.admin_json("POST", &format!("/admin/keys/{revoked_id}/revoke"), None)
        .await;
    for _ in 0..3 {
        assert_eq!(gw.chat(&key, chat_body()).await.status, 200);
    }
    gw.chat(&revoked, chat_body()).await;
    let url = format!("http://{}/v1/chat/completions", gw.proxy);
    request(
        "POST",
        &url,
        &[("x-api-key", key.clone())],
        Some("{broken".into()),
    )
    .await;
    let reply = request(
        "POST",
        &url,
        &[("authorization", format!("Bearer {key}"))],
        Some(json!({"model": MODEL, "stream": true, "messages": []}).to_string()),
    )
    .await;
    assert_eq!(reply.status, 200);
    assert!(gw.stop().success());
    let logs = gw.logs();
    assert!(
        logs.contains("sluice::access") && !logs.contains('\u{1b}'),
        "logs written to a file carry no colour codes"
    );
    let mut haystack = logs.into_bytes();
    for entry in walk(gw.dir.path()) {
        haystack.extend(std::fs::read(entry).unwrap_or_default());
    }
    assert!(haystack.len() > 10_000, "nothing was logged or stored");
    for secret in [key.as_str(), revoked.as_str(), UPSTREAM_KEY, ADMIN_TOKEN] {
        assert!(
            !contains(&haystack, secret.as_bytes()),
            "a secret leaked into logs or store files"
        );
    }
}

fn walk(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap().flatten() {
        let path = entry.path();
        if path.is_dir() {
            files.extend(walk(&path));
        } else if path.extension().is_none_or(|e| e != "toml") {
            files.push(path);
        }
    }
    files
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

/// A chat request with `key`, plus `header: value` when a value is given.
async fn chat_with_header(
    gw: &Gateway,
    key: &str,
    header: &'static str,
    value: Option<&'static str>,
) -> Reply {
    gw.chat_with_headers(key, value.map(|v| (header, v)).as_slice())
        .await
}

/// Whether, within 5 s, key `id` has exactly `n` successful usage records and
/// every one carries the label `label`.
async fn records_labelled(gw: &Gateway, id: &str, n: usize, label: &str) -> bool {
    eventually(Duration::from_secs(5), async || {
        let (_, page) = gw
            .admin_json("GET", &format!("/admin/usage?key_id={id}&status=200"), None)
            .await;
        page["data"]
            .as_array()
            .is_some_and(|d| d.len() == n && d.iter().all(|r| r["labels"][label].is_string()))
    })
    .await
}

#[tokio::test]
async fn the_plugin_template_enforces_team_headers() {
    let upstream = keyed_mock(MockConfig::default()).await;
    let gw = Gateway::builder()
        .plugin(
            "team-header",
            fixtures::TEAM_HEADER,
            Some("header = \"x-team\"\nteams = [\"blue\", \"red\"]\nrpm_per_team = 2\n"),
        )
        .channel(ChannelSpec::mock("main", &upstream, &[MODEL]))
        .start()
        .await;
    let (key, id) = gw.create_key(json!({"name": "t"})).await;
    let send = |team: Option<&'static str>| chat_with_header(&gw, &key, "x-team", team);
    assert_eq!(send(None).await.error_code(), "team_not_allowed");
    assert_eq!(send(Some("green")).await.status, 403);
    assert_eq!(send(Some("blue")).await.status, 200);
    assert_eq!(send(Some("blue")).await.status, 200);
    let limited = send(Some("blue")).await;
    assert_eq!(
        (limited.status, limited.error_code().as_str()),
        (429, "rate_limit_exceeded")
    );
    assert!(limited.headers.contains_key("retry-after"));
    assert_eq!(send(Some("red")).await.status, 200, "budgets are per team");
    assert!(records_labelled(&gw, &id, 3, "team").await);
    assert!(
        gw.logs()
            .contains("team-header: 2 teams allowed via x-team"),
        "plugin log lines reach the gateway log"
    );
}

#[tokio::test]
async fn a_python_plugin_decides_through_the_same_interface() {
    let build = tempfile::tempdir().unwrap();
    let wasm = build_python_plugin("python-user-quota", "auth-policy", build.path()).await;
    let upstream = keyed_mock(MockConfig::default()).await;
    let gw = Gateway::builder()
        .plugin(
            "user-quota",
            wasm.to_str().unwrap(),
            Some("header = \"x-user-id\"\nrpm_per_user = 2\n"),
        )
        .channel(ChannelSpec::mock("main", &upstream, &[MODEL]))
        // An 18 MB component (CPython inside) is compiled once, then cached.
        .ready_within(Duration::from_secs(300))
        .start()
        .await;
    let (key, id) = gw.create_key(json!({"name": "py"})).await;
    let send = |user: Option<&'static str>| chat_with_header(&gw, &key, "x-user-id", user);
    let anonymous = send(None).await;
    assert_eq!(
        (anonymous.status, anonymous.error_code().as_str()),
        (403, "user_required"),
        "{}",
        gw.logs()
    );
    assert_eq!(send(Some("ada")).await.status, 200);
    assert_eq!(send(Some("ada")).await.status, 200);
    let limited = send(Some("ada")).await;
    assert_eq!(
        (limited.status, limited.error_code().as_str()),
        (429, "rate_limit_exceeded")
    );
    assert!(limited.headers.contains_key("retry-after"));
    assert_eq!(
        send(Some("grace")).await.status,
        200,
        "budgets are per user"
    );
    assert!(
        records_labelled(&gw, &id, 3, "user").await,
        "the plugin's label reaches the usage record"
    );
    assert!(
        gw.logs().contains("user-quota: 2 rpm per x-user-id"),
        "the Python plugin's log line reaches the gateway log"
    );
}

#[tokio::test]
async fn json_logs_have_one_access_line_per_request_and_slow_warnings() {
    let upstream = keyed_mock(MockConfig::default()).await;
    let gw = Gateway::builder()
        .json_logs()
        .slow_request(Duration::ZERO)
        .channel(ChannelSpec::mock("main", &upstream, &[MODEL]))
        .start()
        .await;
    let (key, _) = gw.create_key(json!({"name": "logs"})).await;
    let reply = request(
        "POST",
        &format!("http://{}/v1/chat/completions", gw.proxy),
        &[
            ("authorization", format!("Bearer {key}")),
            ("x-request-id", "log-me".into()),
        ],
        Some(chat_body().to_string()),
    )
    .await;
    assert_eq!(reply.status, 200);
    let found = eventually(Duration::from_secs(3), async || {
        gw.logs().contains("slow request")
    })
    .await;
    assert!(found);
    let lines: Vec<serde_json::Value> = gw
        .logs()
        .lines()
        .map(|l| serde_json::from_str(l).expect("every log line is JSON"))
        .collect();
    let access: Vec<_> = lines
        .iter()
        .filter(|l| l["target"] == "sluice::access" && l["request_id"] == "log-me")
        .collect();
    assert_eq!(access.len(), 1, "one access line per request");
    let a = access[0];
    assert_eq!(
        (
            a["status"].as_u64(),
            a["channel"].as_str(),
            a["model"].as_str()
        ),
        (Some(200), Some("main"), Some(MODEL))
    );
    assert_eq!(a["completion_tokens"], 16);
    assert!(
        a["key"].as_str().unwrap().starts_with("sk-sl-") && a["key"].as_str().unwrap().len() == 12,
        "only the key prefix is logged"
    );
    assert!(lines.iter().any(|l| l["level"] == "WARN"
        && l["message"] == "slow request"
        && l["request_id"] == "log-me"));
}

/// A listener that answers every HTTP request with `{"proof":"forged"}` and
/// keeps every byte it received.
async fn impostor(addr: &str) -> std::sync::Arc<std::sync::Mutex<Vec<u8>>> {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let listener = tokio::net::TcpListener::bind(addr).await.unwrap();
    let seen = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let record = seen.clone();
    tokio::spawn(async move {
        while let Ok((mut socket, _)) = listener.accept().await {
            let record = record.clone();
            tokio::spawn(async move {
                let mut buf = [0u8; 4096];
                while let Ok(n) = socket.read(&mut buf).await {
                    if n == 0 {
                        break;
                    }
                    record.lock().unwrap().extend_from_slice(&buf[..n]);
                    let body = "{\"proof\":\"forged\"}";
                    let reply = format!(
                        "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{body}",
                        body.len()
                    );
                    let _ = socket.write_all(reply.as_bytes()).await;
                }
            });
        }
    });
    seen
}

// Multi-threaded: the impostor answers while the test thread waits on the CLI.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cli_sends_the_admin_token_only_to_its_gateway() {
    let upstream = keyed_mock(MockConfig::default()).await;
    let mut gw = Gateway::serving(&upstream).await;
    let config = gw.config_path().to_str().unwrap().to_string();
    let runtime = gw.dir.path().join("store.runtime.json");
    // Another process takes over the address the runtime file names.
    let mut record: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&runtime).unwrap()).unwrap();
    let fake = "127.0.0.1:0";
    let probe = tokio::net::TcpListener::bind(fake).await.unwrap();
    let fake = probe.local_addr().unwrap().to_string();
    drop(probe);
    let seen = impostor(&fake).await;
    record["admin"] = json!(fake);
    std::fs::write(&runtime, record.to_string()).unwrap();
    let out = gw.cli(&["keys", "list", "--config", &config]);
    assert!(!out.status.success(), "the CLI trusted an impostor");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("not the gateway"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let received = String::from_utf8_lossy(&seen.lock().unwrap()).into_owned();
    assert!(received.contains("/admin/instance?nonce="), "{received}");
    assert!(
        !received.contains(ADMIN_TOKEN),
        "the admin token reached an impostor"
    );

    // After SIGKILL the runtime file stays behind; its process is gone, so the
    // CLI ignores it and works on the store, even with a listener on the port.
    let admin = gw.admin.clone();
    gw.kill();
    let seen = impostor(&admin).await;
    record["admin"] = json!(admin);
    std::fs::write(&runtime, record.to_string()).unwrap();
    let listed = gw.cli(&["keys", "list", "--config", &config]);
    assert!(
        listed.status.success(),
        "{}",
        String::from_utf8_lossy(&listed.stderr)
    );
    assert!(
        seen.lock().unwrap().is_empty(),
        "the CLI called a dead gateway's port"
    );
}
