//! The edge under abuse, without sockets: admission before bodies, the
//! declared-length check, the body deadline, and the memory all bodies may
//! hold at once.

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use http::StatusCode;
use http_body::Frame;

use super::*;

/// A body that hands over `prefix` (if any) and then never ends; `polled`
/// says whether anyone asked it for a byte.
struct Stalling {
    prefix: Option<Bytes>,
    polled: Arc<AtomicBool>,
}

impl http_body::Body for Stalling {
    type Data = Bytes;
    type Error = std::convert::Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        _: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        self.polled.store(true, Ordering::Relaxed);
        match self.prefix.take() {
            Some(data) => Poll::Ready(Some(Ok(Frame::data(data)))),
            None => Poll::Pending,
        }
    }
}

/// A chat request with a stalling body declaring `length` bytes, with `key`
/// (none: no credential); the flag says whether the body was read.
fn stalled(
    key: Option<&str>,
    length: usize,
    prefix: &[u8],
) -> (Request<Stalling>, Arc<AtomicBool>) {
    let polled = Arc::new(AtomicBool::new(false));
    let body = Stalling {
        prefix: (!prefix.is_empty()).then(|| Bytes::copy_from_slice(prefix)),
        polled: polled.clone(),
    };
    let mut req = Request::new(body);
    *req.method_mut() = http::Method::POST;
    *req.uri_mut() = "/v1/chat/completions".parse().unwrap();
    let headers = req.headers_mut();
    headers.insert(http::header::CONTENT_LENGTH, length.into());
    if let Some(key) = key {
        headers.insert(
            http::header::AUTHORIZATION,
            format!("Bearer {key}").parse().unwrap(),
        );
    }
    (req, polled)
}

/// Sends a request with any body to the client-facing service, failing the
/// test if no answer comes within 5 s.
async fn answer<B>(h: &Harness, req: Request<B>) -> Response<ResponseBody>
where
    B: http_body::Body<Data = Bytes> + Send + 'static,
    B::Error: std::error::Error + Send + Sync + 'static,
{
    let peer = PEER.parse().unwrap();
    tokio::time::timeout(
        Duration::from_secs(5),
        crate::server::respond(h.state.clone(), Role::Proxy, peer, req),
    )
    .await
    .expect("an answer within 5 s")
}

#[tokio::test]
async fn a_missing_or_unknown_key_is_refused_before_the_body_is_read() {
    let h = Harness::new().await;
    for key in [None, Some("sk-sl-not-a-key")] {
        let (req, polled) = stalled(key, 4000, b"");
        let response = answer(&h, req).await;
        assert_eq!(response.status(), StatusCode::UNAUTHORIZED, "{key:?}");
        assert_eq!(
            body_json(response).await["error"]["code"],
            "invalid_api_key"
        );
        assert!(
            !polled.load(Ordering::Relaxed),
            "{key:?}: the body was read"
        );
    }
}

#[tokio::test]
async fn a_declared_length_over_the_limit_is_refused_at_once() {
    let h = Harness::server("max_body_bytes = 4096").await;
    let (req, polled) = stalled(Some(&h.key), 1 << 20, b"");
    let response = answer(&h, req).await;
    assert_eq!(response.status(), StatusCode::PAYLOAD_TOO_LARGE);
    assert!(!polled.load(Ordering::Relaxed), "the body was read");
}

#[tokio::test]
async fn a_stalled_body_gets_408_at_its_deadline() {
    let deadline = Duration::from_millis(300);
    let h = Harness::server("body_timeout = \"300ms\"").await;
    let started = Instant::now();
    let (req, _) = stalled(Some(&h.key), 1000, b"{\"model\":");
    let response = answer(&h, req).await;
    let took = started.elapsed();
    assert_eq!(response.status(), StatusCode::REQUEST_TIMEOUT);
    assert_eq!(
        body_json(response).await["error"]["code"],
        "request_timeout"
    );
    // The configured deadline, plus a margin for a loaded 2-core machine.
    assert!(
        took >= deadline && took < deadline + Duration::from_secs(2),
        "{took:?}"
    );
    let settled = h.settle().await;
    assert_eq!(settled.once().status, 408);
}

#[tokio::test]
async fn bodies_beyond_the_memory_budget_are_shed() {
    // 256 KiB in all: 192 KiB for any body, 64 KiB kept for small ones.
    let h = Harness::server("max_body_memory = 262144").await;
    let (holding, _) = stalled(Some(&h.key), 1 << 20, &[b' '; 190_000]);
    let state = h.state.clone();
    let peer = PEER.parse().unwrap();
    let first = tokio::spawn(crate::server::respond(state, Role::Proxy, peer, holding));
    tokio::time::sleep(Duration::from_millis(100)).await;
    // A 100 KB body finds 6 KB left and is no small body: shed.
    let big = serde_json::json!({"model": MODEL, "messages": [{"role": "user", "content": "x".repeat(100_000)}]});
    let response = h.send(h.chat(big.clone(), &[])).await;
    assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert!(response.headers().contains_key(http::header::RETRY_AFTER));
    assert_eq!(body_json(response).await["error"]["code"], "overloaded");
    let metrics = body_bytes(h.admin(request("GET", "/metrics", None)).await).await;
    let text = String::from_utf8_lossy(&metrics);
    assert!(
        text.contains("sluice_shed_total{reason=\"request bodies\"} 1"),
        "{text}"
    );
    // An ordinary request draws on the reserve the large upload cannot touch.
    let small = h.send(h.chat(chat_body(false), &[])).await;
    assert_eq!(
        small.status(),
        StatusCode::OK,
        "small bodies are not starved"
    );
    first.abort();
    let _ = first.await;
    let response = h.send(h.chat(big, &[])).await;
    assert_eq!(response.status(), StatusCode::OK, "the budget came back");
}

#[tokio::test]
async fn a_full_usage_queue_sheds_new_requests() {
    let tables = Tables {
        store: "queue_capacity = 1\nbackpressure_wait = \"20ms\"",
        ..Tables::default()
    };
    let h = Harness::start(tables, &[]).await;
    // A keyed upload that stalls holds the queue's only place.
    let (holding, _) = stalled(Some(&h.key), 1000, b"{");
    let peer = PEER.parse().unwrap();
    let first = tokio::spawn(crate::server::respond(
        h.state.clone(),
        Role::Proxy,
        peer,
        holding,
    ));
    tokio::time::sleep(Duration::from_millis(100)).await;
    let response = h.send(h.chat(chat_body(false), &[])).await;
    assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert!(response.headers().contains_key(http::header::RETRY_AFTER));
    assert_eq!(body_json(response).await["error"]["code"], "overloaded");
    first.abort();
    let _ = first.await;
}
