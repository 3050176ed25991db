//! The WIT package's versions side by side: components built against frozen
//! copies of 1.0.0 and 1.1.0 keep loading beside a 1.2.0 router that reads
//! what 1.2 added (a candidate's provider, tags and models, the client's
//! protocol); and what a router's empty plan or failure does.

use serde_json::json;
use sluice_tests::*;

/// Two OpenAI-compatible channels and an Anthropic one, tagged by team; the
/// fake upstreams are returned to keep them serving.
async fn tagged_gateway(
    configure: impl FnOnce(GatewayBuilder) -> GatewayBuilder,
) -> (Gateway, [Mock; 2]) {
    let openai = keyed_mock(MockConfig::default()).await;
    let claude = keyed_mock(MockConfig::default()).await;
    let builder = Gateway::builder()
        .channel(ChannelSpec::mock("openai-blue", &openai, &[MODEL, "claude-mock"]).tags(&["blue"]))
        .channel(ChannelSpec::mock("openai-red", &openai, &[MODEL, "claude-mock"]).tags(&["red"]))
        .channel(
            ChannelSpec::provider("claude-blue", "anthropic", &claude, &["claude-mock"])
                .tags(&["blue", "eu"]),
        );
    (configure(builder).start().await, [openai, claude])
}

/// Sends `body` to `path` with `x-team: team` on a fresh key; the reply and the key's id.
async fn as_team(gw: &Gateway, path: &str, team: &str, model: &str) -> (Reply, String) {
    let (key, key_id) = gw.create_key(json!({"name": team})).await;
    let body = if path == "/v1/messages" {
        json!({"model": model, "max_tokens": 16, "messages": [{"role": "user", "content": "hi"}]})
    } else {
        json!({"model": model, "messages": [{"role": "user", "content": "hi"}]})
    };
    let reply = request(
        "POST",
        &format!("http://{}{path}", gw.proxy),
        &[
            ("authorization", format!("Bearer {key}")),
            ("x-team", team.into()),
        ],
        Some(body.to_string()),
    )
    .await;
    (reply, key_id)
}

#[tokio::test]
async fn plugins_built_for_1_0_and_1_1_load_beside_a_1_2_router() {
    // tagger: a 1.0 auth policy; stamp: a 1.1 log editor; tag-router: 1.2.
    let (gw, _upstreams) = tagged_gateway(|b| {
        b.plugin("tagger", fixtures::TAGGER, None)
            .plugin("stamp", fixtures::STAMP, None)
            .plugin("tag-router", fixtures::TAG_ROUTER, None)
    })
    .await;
    let (_, plugins) = gw.admin_json("GET", "/admin/plugins", None).await;
    let version = |name: &str| {
        plugins["data"]
            .as_array()
            .and_then(|all| all.iter().find(|p| p["name"] == name))
            .map(|p| p["version"].clone())
    };
    assert_eq!(version("tagger"), Some(json!("1.0.0")), "{plugins}");
    assert_eq!(version("stamp"), Some(json!("1.1.0")), "{plugins}");
    assert_eq!(version("tag-router"), Some(json!("1.2.0")), "{plugins}");
    // The router keeps a team to its tagged channels and sends an Anthropic
    // client to the Anthropic channel first, any other client elsewhere first.
    for (path, team, model, channel) in [
        ("/v1/chat/completions", "blue", "claude-mock", "openai-blue"),
        ("/v1/messages", "blue", "claude-mock", "claude-blue"),
        ("/v1/messages", "red", "claude-mock", "openai-red"),
        ("/v1/chat/completions", "red", MODEL, "openai-red"),
    ] {
        let (reply, key_id) = as_team(&gw, path, team, model).await;
        assert_eq!(reply.status, 200, "{path} {team}: {}", reply.text());
        let record = gw.only_usage_record(&key_id).await.expect("a usage record");
        assert_eq!(record["channel_id"], channel, "{path} {team}: {record}");
        // The 1.0 auth policy's label and the 1.1 editor's both reach it.
        assert_eq!(record["labels"]["tagged-by"], "tagger", "{record}");
        assert_eq!(record["labels"]["team"], team, "{record}");
        assert_eq!(record["labels"]["stamped-by"], "stamp", "{record}");
    }
    // A team no channel carries: the router's refusal names what it read.
    let (reply, _) = as_team(&gw, "/v1/chat/completions", "green", "claude-mock").await;
    assert_eq!(reply.status, 403, "{}", reply.text());
    assert_eq!(reply.error_code(), "no_channel_for_team");
    let message = reply.json()["error"]["message"].to_string();
    assert!(
        message.contains(&format!(
            "openai-blue (openai: {MODEL}, claude-mock; tags: blue)"
        )) && message.contains("claude-blue (anthropic: claude-mock; tags: blue, eu)"),
        "{message}"
    );
    // The router plans only healthy channels: with the blue team's channels
    // disabled its plan is empty, which is a 503 naming the router.
    for id in ["openai-blue", "claude-blue"] {
        let (status, _) = gw
            .admin_json("POST", &format!("/admin/channels/{id}/disable"), None)
            .await;
        assert_eq!(status, 200);
    }
    let (reply, _) = as_team(&gw, "/v1/chat/completions", "blue", MODEL).await;
    assert_eq!(reply.status, 503, "{}", reply.text());
    assert_eq!(reply.error_code(), "no_healthy_channel");
    assert!(
        reply
            .text()
            .contains("The routing policy `tag-router` chose no channel"),
        "{}",
        reply.text()
    );
}

#[tokio::test]
async fn a_failing_router_falls_back_to_the_native_one_unless_it_fails_closed() {
    let (open, _upstreams) =
        tagged_gateway(|b| b.plugin("bad-router", fixtures::BAD_ROUTER, None)).await;
    let (reply, _) = as_team(&open, "/v1/chat/completions", "blue", MODEL).await;
    assert_eq!(reply.status, 200, "native fallback: {}", reply.text());
    let (closed, _more) = tagged_gateway(|b| {
        b.plugin("bad-router", fixtures::BAD_ROUTER, None)
            .on_failure("bad-router", OnFailure::Deny)
    })
    .await;
    let (reply, key_id) = as_team(&closed, "/v1/chat/completions", "blue", MODEL).await;
    assert_eq!(reply.status, 503, "fail closed: {}", reply.text());
    assert_eq!(reply.error_code(), "policy_failure");
    let record = closed.only_usage_record(&key_id).await.expect("a record");
    assert_eq!(record["status"], 503, "{record}");
    assert_eq!(record["cost"], 0, "{record}");
}

#[test]
fn plugin_check_and_plugin_test_read_each_version() {
    for (wasm, world, version) in [
        (fixtures::TAGGER, "auth-policy", "1.0.0"),
        (fixtures::STAMP, "editor-policy", "1.1.0"),
        (fixtures::TAG_ROUTER, "planner-policy", "1.2.0"),
    ] {
        let out = std::process::Command::new(sluice_bin())
            .args(["plugin", "check", wasm])
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(out.status.success(), "{text}");
        assert!(
            text.contains(&format!("world:    {world}\n"))
                && text.contains(&format!("sluice:policy@{version}"))
                && text.contains("call:     ok: "),
            "{text}"
        );
    }
    // `plugin test` offers a router channels with providers, tags and models,
    // and a request on either protocol.
    let dir = tempfile::tempdir().unwrap();
    let cases = dir.path().join("cases.toml");
    std::fs::write(
        &cases,
        r#"
[[case]]
name = "an OpenAI client of the blue team"
headers = { x-team = "blue" }
channels = [
    { id = "claude", provider = "anthropic", tags = ["blue"] },
    { id = "gpt", tags = ["blue"] },
    { id = "other", tags = ["red"] },
]
expect = { outcome = "plan", plan = ["gpt", "claude"] }

[[case]]
name = "an Anthropic client of the blue team"
endpoint = "messages"
headers = { x-team = "blue" }
channels = [
    { id = "gpt", tags = ["blue"] },
    { id = "claude", provider = "anthropic", tags = ["blue"] },
]
expect = { outcome = "plan", plan = ["claude", "gpt"] }

[[case]]
name = "a team without a channel"
headers = { x-team = "green" }
channels = [{ id = "gpt", tags = ["blue"], models = ["gpt-4o", "gpt-4o-mini"] }]
expect = { outcome = "deny", status = 403, message = "gpt (openai: gpt-4o, gpt-4o-mini; tags: blue)" }
"#,
    )
    .unwrap();
    let run = |cases: &std::path::Path| {
        std::process::Command::new(sluice_bin())
            .args(["plugin", "test", fixtures::TAG_ROUTER, "--cases"])
            .arg(cases)
            .output()
            .unwrap()
    };
    let out = run(&cases);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}");
    assert!(text.contains("3 of 3 cases passed"), "{text}");
    // A message the refusal does not contain is a failed case.
    let wrong = dir.path().join("wrong.toml");
    std::fs::write(
        &wrong,
        "[[case]]\nname = \"wrong message\"\nheaders = { x-team = \"green\" }\nexpect = { outcome = \"deny\", message = \"nothing like it\" }\n",
    )
    .unwrap();
    let out = run(&wrong);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(!out.status.success(), "{text}");
    assert!(text.contains("expected a message containing"), "{text}");
}
