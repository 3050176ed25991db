//! Each way a request ends — completion (stream and not), upstream failure
//! before and after the first byte, client disconnect (before the response
//! head and mid-stream), the shutdown cut-off, a policy denial and a panic
//! inside a phase — leaves exactly one usage record and one quota charge.

use std::time::Duration;

use http::StatusCode;
use http_body_util::BodyExt;

use super::*;

#[tokio::test]
async fn a_completed_response_is_accounted_once() {
    let h = Harness::new().await;
    let response = h.send(h.chat(chat_body(false), &[])).await;
    assert_eq!(response.status(), StatusCode::OK);
    let body = body_json(response).await;
    assert_eq!(body["usage"]["completion_tokens"], 16);
    let settled = h.settle().await;
    let record = settled.once();
    assert_eq!((record.status, record.partial), (200, false));
    assert_eq!(record.completion_tokens, 16);
    assert!(record.cost > 0, "a completed request costs something");
    assert_eq!(record.channel_id, "main");
}

#[tokio::test]
async fn a_completed_stream_is_accounted_once() {
    let h = Harness::new().await;
    let response = h
        .send(h.chat(chat_body(true), &[("x-mock-chunks", "5")]))
        .await;
    assert_eq!(response.status(), StatusCode::OK);
    let text = String::from_utf8(body_bytes(response).await.to_vec()).unwrap();
    assert!(text.ends_with("data: [DONE]\n\n"), "{text}");
    let settled = h.settle().await;
    let record = settled.once();
    assert_eq!(
        (record.status, record.partial, record.stream),
        (200, false, true)
    );
    assert_eq!(
        record.completion_tokens, 5,
        "from the upstream's usage chunk"
    );
    assert!(record.cost > 0);
}

#[tokio::test]
async fn an_upstream_failure_before_the_first_byte_is_accounted_once() {
    let h = Harness::new().await;
    let headers = [("x-mock-fail", "status"), ("x-mock-status", "500")];
    let response = h.send(h.chat(chat_body(true), &headers)).await;
    assert_eq!(response.status(), StatusCode::BAD_GATEWAY);
    assert_eq!(body_json(response).await["error"]["code"], "upstream_error");
    let settled = h.settle().await;
    let record = settled.once();
    assert_eq!(record.status, 502);
    assert_eq!(record.error_kind.as_deref(), Some("upstream_error"));
    assert_eq!(record.cost, 0, "nothing was delivered");
    assert_eq!(record.channel_id, "main");
}

#[tokio::test]
async fn an_upstream_failure_after_the_first_byte_is_accounted_once() {
    let h = Harness::new().await;
    let headers = [("x-mock-fail", "drop_mid_stream"), ("x-mock-chunks", "8")];
    let response = h.send(h.chat(chat_body(true), &headers)).await;
    assert_eq!(response.status(), StatusCode::OK);
    let text = String::from_utf8(body_bytes(response).await.to_vec()).unwrap();
    assert!(text.contains("upstream_stream_error"), "{text}");
    let settled = h.settle().await;
    let record = settled.once();
    assert!(record.partial);
    assert_eq!(record.error_kind.as_deref(), Some("upstream_stream_error"));
    assert!(
        record.completion_tokens > 0,
        "the chunks delivered are billed"
    );
    assert!(record.cost > 0);
}

#[tokio::test]
async fn a_client_gone_mid_stream_is_accounted_once() {
    let h = Harness::new().await;
    let headers = [("x-mock-chunks", "50"), ("x-mock-chunk-delay-ms", "20")];
    let response = h.send(h.chat(chat_body(true), &headers)).await;
    assert_eq!(response.status(), StatusCode::OK);
    let mut body = response.into_body();
    let first = body.frame().await.unwrap().unwrap();
    assert!(first.is_data());
    drop(body);
    let settled = h.settle().await;
    let record = settled.once();
    assert!(record.partial);
    assert_eq!(record.error_kind.as_deref(), Some("client_disconnected"));
    assert_eq!(record.status, 200, "the response head had been sent");
    assert!((1..50).contains(&record.completion_tokens), "{record:?}");
    assert!(record.cost > 0);
}

#[tokio::test]
async fn a_client_gone_before_the_response_head_is_accounted_once() {
    let h = Harness::new().await;
    let headers = [("x-mock-ttfb-ms", "10000")];
    let waiting = h.send(h.chat(chat_body(true), &headers));
    // The client leaves while the relay waits for the upstream's head: hyper
    // drops the request's future.
    let left = tokio::time::timeout(Duration::from_millis(200), waiting).await;
    assert!(left.is_err(), "the upstream answered before its delay");
    let settled = h.settle().await;
    let record = settled.once();
    assert_eq!(record.status, crate::accounting::CLIENT_CLOSED);
    assert!(record.partial);
    assert_eq!(record.error_kind.as_deref(), Some("client_disconnected"));
    assert_eq!(record.cost, 0);
}

#[tokio::test]
async fn a_policy_denial_is_accounted_once() {
    let h = Harness::start(Tables::default(), &["another-model"]).await;
    let response = h.send(h.chat(chat_body(false), &[])).await;
    assert_eq!(response.status(), StatusCode::FORBIDDEN);
    let body = body_json(response).await;
    assert_eq!(body["error"]["type"], "permission_error");
    let settled = h.settle().await;
    assert_eq!(
        settled.upstream_requests, 0,
        "a denied request never leaves"
    );
    let record = settled.once();
    assert_eq!(record.status, 403);
    assert_eq!(record.cost, 0);
    assert_eq!(record.channel_id, "");
}

#[tokio::test]
async fn a_panic_inside_a_phase_is_accounted_once() {
    let h = Harness::new().await;
    let response = h
        .send(h.chat(chat_body(false), &[("x-sluice-test-panic", "relay")]))
        .await;
    assert_eq!(response.status(), StatusCode::INTERNAL_SERVER_ERROR);
    assert_eq!(body_json(response).await["error"]["code"], "internal_error");
    let settled = h.settle().await;
    assert_eq!(settled.upstream_requests, 0);
    let record = settled.once();
    assert_eq!(record.status, 500);
    assert_eq!(record.error_kind.as_deref(), Some("internal_panic"));
    assert_eq!(record.cost, 0);
}

#[tokio::test]
async fn a_stream_cut_off_at_shutdown_is_accounted_once() {
    let gw = Running::start(Tables {
        server: "shutdown_grace = \"300ms\"",
        ..Tables::default()
    })
    .await;
    let mut sender = gw.connect().await;
    let headers = [("x-mock-chunks", "1000"), ("x-mock-chunk-delay-ms", "20")];
    let response = sender
        .send_request(chat_as(&gw.key, chat_body(true), &headers))
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let mut body = response.into_body();
    assert!(body.frame().await.unwrap().unwrap().is_data());

    // The client keeps reading; the gateway cuts the stream at the end of the
    // grace period, with a closing error event, and then finishes its shutdown.
    let reading = tokio::spawn(async move {
        let mut text = String::new();
        while let Some(Ok(frame)) = body.frame().await {
            if let Ok(data) = frame.into_data() {
                text.push_str(&String::from_utf8_lossy(&data));
            }
        }
        text
    });
    let key_id = gw.key_id.clone();
    let store = gw.stop().await;
    let text = reading.await.unwrap();
    let last = text.trim_end().rsplit("\n\n").next().unwrap_or_default();
    assert!(
        last.starts_with("data: {\"error\"") && last.contains("\"code\":\"shutdown\""),
        "the stream ends with a shutdown error event: {last}"
    );
    let records = store.query_usage(&UsageQuery::default()).unwrap();
    assert_eq!(records.len(), 1, "{records:#?}");
    let r = &records[0];
    assert!(r.partial);
    assert_eq!(r.error_kind.as_deref(), Some("shutdown"));
    assert!(r.completion_tokens > 0 && r.cost > 0, "{r:?}");
    let charged = QUOTA
        - store
            .key_by_id(&key_id)
            .unwrap()
            .unwrap()
            .quota_remaining
            .unwrap();
    assert_eq!(charged, r.cost);
}

#[tokio::test]
async fn an_event_over_the_limit_ends_the_stream_and_is_accounted_once() {
    let h = Harness::upstream("max_event_bytes = 65536").await;
    let headers = [
        ("x-mock-event-bytes", "100000"),
        ("x-mock-chunks", "4"),
        ("x-mock-ignore-cap", "1"),
    ];
    let response = h.send(h.chat(chat_body(true), &headers)).await;
    assert_eq!(response.status(), StatusCode::OK);
    let text = String::from_utf8(body_bytes(response).await.to_vec()).unwrap();
    assert!(
        text.contains("upstream_event_too_large"),
        "{}",
        &text[..200.min(text.len())]
    );
    let settled = h.settle().await;
    let record = settled.once();
    assert!(record.partial);
    assert_eq!(
        record.error_kind.as_deref(),
        Some("upstream_event_too_large")
    );
}

#[tokio::test]
async fn a_response_over_the_limit_is_a_502_accounted_once() {
    let h = Harness::upstream("max_response_bytes = 65536").await;
    let headers = [
        ("x-mock-event-bytes", "40000"),
        ("x-mock-chunks", "4"),
        ("x-mock-ignore-cap", "1"),
    ];
    let response = h.send(h.chat(chat_body(false), &headers)).await;
    assert_eq!(response.status(), StatusCode::BAD_GATEWAY);
    let body = body_json(response).await;
    assert_eq!(body["error"]["code"], "upstream_response_too_large");
    let settled = h.settle().await;
    let record = settled.once();
    assert_eq!(record.status, 502);
    assert_eq!(
        record.error_kind.as_deref(),
        Some("upstream_response_too_large")
    );
}
