//! Channel health moves only on what the upstream says about itself: one
//! key's slow or refused requests do not take a shared channel out for
//! another key, while an upstream's failures and its `retry-after` do.

use http::StatusCode;

use super::*;

/// First-byte timeout 200 ms, cooldown after two failures, one attempt.
const STRICT: &str = "first_byte_timeout = \"200ms\"\nfailures_to_cooldown = 2\nmax_attempts = 1";

#[tokio::test]
async fn one_keys_slow_answers_do_not_take_the_channel_out() {
    let h = Harness::upstream(STRICT).await;
    let slow = [("x-mock-ttfb-ms", "1000")];
    for _ in 0..3 {
        let response = h.send(h.chat(chat_body(false), &slow)).await;
        assert_eq!(response.status(), StatusCode::GATEWAY_TIMEOUT);
    }
    let other = h.another_key();
    let response = h.send(chat_as(&other, chat_body(false), &[])).await;
    assert_eq!(
        response.status(),
        StatusCode::OK,
        "a non-streamed answer's late head is the request's doing, not the channel's"
    );
}

#[tokio::test]
async fn a_streams_late_head_still_counts_against_the_channel() {
    let h = Harness::upstream(STRICT).await;
    let slow = [("x-mock-ttfb-ms", "1000")];
    for _ in 0..2 {
        let response = h.send(h.chat(chat_body(true), &slow)).await;
        assert_eq!(response.status(), StatusCode::GATEWAY_TIMEOUT);
    }
    let response = h.send(h.chat(chat_body(false), &[])).await;
    assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(
        body_json(response).await["error"]["code"],
        "no_healthy_channel"
    );
}

#[tokio::test]
async fn a_429_with_retry_after_pauses_the_channel() {
    let h = Harness::new().await;
    let limited = [("x-mock-fail", "status"), ("x-mock-status", "429")];
    let response = h.send(h.chat(chat_body(false), &limited)).await;
    assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
    let response = h.send(h.chat(chat_body(false), &[])).await;
    assert_eq!(
        response.status(),
        StatusCode::OK,
        "one 429 without retry-after is one failure of three"
    );
    let paused = [
        ("x-mock-fail", "status"),
        ("x-mock-status", "429"),
        ("x-mock-retry-after", "30"),
    ];
    let response = h.send(h.chat(chat_body(false), &paused)).await;
    assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
    let response = h.send(h.chat(chat_body(false), &[])).await;
    assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(
        body_json(response).await["error"]["code"],
        "no_healthy_channel"
    );
}
