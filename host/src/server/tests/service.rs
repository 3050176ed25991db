//! The service without sockets: routing, method and path errors, OpenAI's
//! error shape, the order of auth and body checks, the door's headers, and
//! the admin API.

use http::StatusCode;

use super::*;

/// Asserts OpenAI's error shape and returns the error's `code`.
async fn error_code(response: Response<ResponseBody>, status: StatusCode) -> String {
    assert_eq!(response.status(), status);
    assert_eq!(
        response.headers()[http::header::CONTENT_TYPE],
        "application/json"
    );
    let body = body_json(response).await;
    let error = &body["error"];
    for field in ["message", "type", "code"] {
        assert!(error[field].is_string(), "{field} in {body}");
    }
    error["code"].as_str().unwrap().to_string()
}

fn keyed(h: &Harness, mut req: Request<Full<Bytes>>) -> Request<Full<Bytes>> {
    req.headers_mut().insert(
        http::header::AUTHORIZATION,
        format!("Bearer {}", h.key).parse().unwrap(),
    );
    req
}

#[tokio::test]
async fn paths_and_methods_are_routed_with_openai_errors() {
    let h = Harness::new().await;
    let unknown = h.send(request("GET", "/v1/nope", None)).await;
    assert!(unknown.headers().contains_key("x-request-id"));
    assert_eq!(
        error_code(unknown, StatusCode::NOT_FOUND).await,
        "unknown_url"
    );
    let get_chat = h
        .send(keyed(&h, request("GET", "/v1/chat/completions", None)))
        .await;
    assert_eq!(
        error_code(get_chat, StatusCode::METHOD_NOT_ALLOWED).await,
        "method_not_allowed"
    );
    let post_models = h.send(keyed(&h, request("POST", "/v1/models", None))).await;
    assert_eq!(
        error_code(post_models, StatusCode::METHOD_NOT_ALLOWED).await,
        "method_not_allowed"
    );
    let health = h.send(request("GET", "/healthz", None)).await;
    assert_eq!(health.status(), StatusCode::OK);
    assert_eq!(body_json(health).await["status"], "ok");
}

#[tokio::test]
async fn a_bad_key_is_refused_before_the_body_is_judged() {
    let h = Harness::new().await;
    let mut malformed = request("POST", "/v1/chat/completions", None);
    *malformed.body_mut() = Full::new(Bytes::from_static(b"{not json"));
    let no_key = h.send(malformed.clone()).await;
    assert_eq!(no_key.status(), StatusCode::UNAUTHORIZED);
    error_code(no_key, StatusCode::UNAUTHORIZED).await;
    let mut wrong = malformed.clone();
    wrong.headers_mut().insert(
        http::header::AUTHORIZATION,
        http::HeaderValue::from_static("Bearer sk-sl-not-a-key"),
    );
    error_code(h.send(wrong).await, StatusCode::UNAUTHORIZED).await;
    let with_key = h.send(keyed(&h, malformed)).await;
    assert_eq!(
        error_code(with_key, StatusCode::BAD_REQUEST).await,
        "invalid_request_error"
    );
    let unknown_model = h
        .send(h.chat(
            serde_json::json!({"model": "no-such-model", "messages": []}),
            &[],
        ))
        .await;
    assert_eq!(
        error_code(unknown_model, StatusCode::NOT_FOUND).await,
        "model_not_found"
    );
    assert_eq!(h.settle().await.upstream_requests, 0);
}

#[tokio::test]
async fn an_oversized_body_gets_413() {
    let h = Harness::server("max_body_bytes = 1024").await;
    let big = serde_json::json!({"model": MODEL, "messages": [{"role": "user", "content": "x".repeat(4096)}]});
    let response = h.send(h.chat(big, &[])).await;
    assert_eq!(
        error_code(response, StatusCode::PAYLOAD_TOO_LARGE).await,
        "request_too_large"
    );
}

#[tokio::test]
async fn the_door_stamps_request_id_and_timings() {
    let h = Harness::new().await;
    let response = h
        .send(h.chat(chat_body(false), &[("x-request-id", "client-chosen-id-1")]))
        .await;
    assert_eq!(response.status(), StatusCode::OK);
    let headers = response.headers();
    assert_eq!(headers["x-request-id"], "client-chosen-id-1");
    assert!(headers["x-response-time"].to_str().unwrap().ends_with("ms"));
    let timing = headers["server-timing"].to_str().unwrap().to_string();
    for phase in ["auth;dur=", "route;dur=", "upstream;dur="] {
        assert!(timing.contains(phase), "{timing}");
    }
    let minted = h
        .send(h.chat(chat_body(false), &[("x-request-id", "bad id with spaces")]))
        .await;
    let id = minted.headers()["x-request-id"].to_str().unwrap();
    assert_eq!(
        uuid::Uuid::parse_str(id).map(|u| u.get_version_num()),
        Ok(7)
    );
}

#[tokio::test]
async fn models_report_the_gateways_start_time() {
    let h = Harness::new().await;
    let list = body_json(h.send(keyed(&h, request("GET", "/v1/models", None))).await).await;
    assert_eq!(list["object"], "list");
    assert_eq!(list["data"][0]["id"], MODEL);
    let created = list["data"][0]["created"].as_u64().unwrap();
    assert_eq!(created, h.state.started_s);
    let now_s = crate::keys::now_ms() / 1000;
    assert!(created > 1_700_000_000 && created <= now_s, "{created}");
    let one = h
        .send(keyed(
            &h,
            request("GET", &format!("/v1/models/{MODEL}"), None),
        ))
        .await;
    assert_eq!(body_json(one).await["created"], created);
    let missing = h
        .send(keyed(&h, request("GET", "/v1/models/no-such-model", None)))
        .await;
    assert_eq!(
        error_code(missing, StatusCode::NOT_FOUND).await,
        "model_not_found"
    );
}

#[tokio::test]
async fn the_admin_api_needs_its_token() {
    let h = Harness::new().await;
    let anonymous = h.admin(request("GET", "/admin/keys", None)).await;
    assert_eq!(
        error_code(anonymous, StatusCode::UNAUTHORIZED).await,
        "invalid_admin_token"
    );
    for presented in ["Bearer", "Bearer ", "Basic in-process-admin-token"] {
        let mut wrong = request("GET", "/admin/keys", None);
        wrong.headers_mut().insert(
            http::header::AUTHORIZATION,
            http::HeaderValue::from_static(presented),
        );
        let refused = h.admin(wrong).await;
        assert_eq!(refused.status(), StatusCode::UNAUTHORIZED, "{presented:?}");
    }
    let mut listing = request("GET", "/admin/keys", None);
    listing.headers_mut().insert(
        http::header::AUTHORIZATION,
        format!("bearer {ADMIN_TOKEN}").parse().unwrap(),
    );
    let keys = h.admin(listing).await;
    assert_eq!(keys.status(), StatusCode::OK);
    let keys = body_json(keys).await;
    assert_eq!(keys["data"][0]["id"], h.key_id.as_str());
    assert!(
        keys["data"][0].get("digest").is_none(),
        "the digest stays inside"
    );
    let metrics = h.admin(request("GET", "/metrics", None)).await;
    assert_eq!(metrics.status(), StatusCode::OK);
    let text = String::from_utf8(body_bytes(metrics).await.to_vec()).unwrap();
    assert!(text.contains("sluice_"), "{text}");
}

#[tokio::test]
async fn client_headers_stay_at_the_gateway() {
    let h = Harness::new().await;
    let sent = [
        ("openai-organization", "org-client"),
        ("openai-project", "proj-client"),
        ("api-key", "azure-style-key"),
        ("x-forwarded-for", "203.0.113.9"),
        ("cookie", "session=1"),
        ("x-custom", "anything"),
        ("user-agent", "sdk-test/1.0"),
        ("accept", "application/json"),
    ];
    let response = h.send(h.chat(chat_body(false), &sent)).await;
    assert_eq!(response.status(), StatusCode::OK);
    let stats = &h.upstream.stats;
    // The operator's fixed header replaces the client's choice of organisation.
    assert_eq!(stats.last_header("openai-organization"), ["org-operator"]);
    for dropped in [
        "openai-project",
        "api-key",
        "x-forwarded-for",
        "cookie",
        "x-custom",
    ] {
        assert!(
            stats.last_header(dropped).is_empty(),
            "{dropped} reached the upstream"
        );
    }
    assert_eq!(stats.last_header("user-agent"), ["sdk-test/1.0"]);
    assert_eq!(stats.last_header("accept"), ["application/json"]);
    assert_eq!(
        stats.last_header("authorization"),
        ["Bearer sk-upstream-test"]
    );
    assert_eq!(stats.last_header("x-request-id").len(), 1);
}

#[tokio::test]
async fn the_upstream_is_asked_for_stream_usage_exactly_once() {
    let h = Harness::new().await;
    let variants = [
        r#""stream_options":null"#,
        r#""stream_options":{}"#,
        r#""stream_options":{"include_usage":false}"#,
        r#""stream_options":{"include_usage":true},"stream_options":null"#,
    ];
    for (i, options) in variants.iter().enumerate() {
        let text = format!(r#"{{"model":"{MODEL}","stream":true,{options},"messages":[]}}"#);
        let mut req = h.chat(serde_json::Value::Null, &[]);
        *req.body_mut() = Full::new(Bytes::from(text));
        let response = h.send(req).await;
        assert_eq!(response.status(), StatusCode::OK, "{options}");
        body_bytes(response).await;
        let stats = &h.upstream.stats;
        let seen = String::from_utf8_lossy(&stats.last_body.lock().unwrap()).into_owned();
        assert_eq!(
            seen.matches("\"stream_options\"").count(),
            1,
            "{options}: {seen}"
        );
        let usage_requests = stats
            .usage_requested
            .load(std::sync::atomic::Ordering::Relaxed);
        assert_eq!(usage_requests, i as u64 + 1, "{options}: {seen}");
    }
}

#[tokio::test]
async fn client_chosen_model_names_do_not_grow_metrics_or_records() {
    let h = Harness::new().await;
    for i in 0..200 {
        let model = format!("{i}-{}", "m".repeat(16 << 10));
        let body = serde_json::json!({"model": model, "messages": []});
        let response = h
            .send(request("POST", "/v1/chat/completions", Some(body)))
            .await;
        assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
    }
    for i in 0..20 {
        let model = format!("{i}-{}", "k".repeat(64 << 10));
        let response = h
            .send(h.chat(serde_json::json!({"model": model, "messages": []}), &[]))
            .await;
        assert_eq!(response.status(), StatusCode::NOT_FOUND);
    }
    let metrics = body_bytes(h.admin(request("GET", "/metrics", None)).await).await;
    let text = String::from_utf8_lossy(&metrics).into_owned();
    let series = text
        .lines()
        .filter(|l| l.starts_with("sluice_requests_total{"))
        .count();
    assert!(series <= 4, "{series} request series");
    assert!(
        metrics.len() < 64 << 10,
        "/metrics is {} bytes",
        metrics.len()
    );
    let settled = h.settle().await;
    assert_eq!(settled.records.len(), 20);
    assert!(
        settled
            .records
            .iter()
            .all(|r| r.model.len() <= crate::facts::MAX_CLIENT_STRING)
    );
}
