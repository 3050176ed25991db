//! The server's connection loop on real sockets on 127.0.0.1, answering with
//! small handlers: keep-alive and pipelining, bodies both ways, `100
//! Continue`, refusals, a client's close, and shutdown.
#![allow(clippy::unwrap_used, clippy::panic)]

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use http::{Request, Response};
use http_body_util::{BodyExt, Full};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;

use super::{Limits, RequestBody, Speaks, serve, sniff};
use crate::server::body::{ResponseBody, boxed};

const LIMITS: Limits = Limits {
    header_timeout: Duration::from_secs(5),
    write_timeout: Duration::from_secs(5),
};

/// Answers with the method, path and body it was sent.
async fn echo(req: Request<RequestBody>) -> Response<ResponseBody> {
    let (parts, body) = req.into_parts();
    let body = match body.collect().await {
        Ok(body) => String::from_utf8_lossy(&body.to_bytes()).into_owned(),
        Err(e) => format!("error: {e}"),
    };
    let text = format!("{} {} {body}", parts.method, parts.uri.path());
    Response::new(boxed(Full::new(Bytes::from(text))))
}

/// A connected client and the task serving it with `handler`, under
/// `shutdown`.
async fn connected<H, F>(
    shutdown: CancellationToken,
    handler: H,
) -> (TcpStream, tokio::task::JoinHandle<()>)
where
    H: FnMut(Request<RequestBody>) -> F + Send + 'static,
    F: Future<Output = Response<ResponseBody>> + Send,
{
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let client = TcpStream::connect(listener.local_addr().unwrap())
        .await
        .unwrap();
    let (server, _) = listener.accept().await.unwrap();
    #[allow(clippy::disallowed_methods)]
    let task = tokio::spawn(async move {
        serve(server, BytesMut::new(), LIMITS, &shutdown, handler).await;
    });
    (client, task)
}

/// Everything the server sends until it closes the connection.
async fn until_closed(client: &mut TcpStream) -> String {
    let mut all = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), client.read_to_end(&mut all))
        .await
        .unwrap()
        .unwrap();
    String::from_utf8(all).unwrap()
}

/// Sends `request`, then reads everything until the server closes.
async fn answer_then_close(client: &mut TcpStream, request: &[u8]) -> String {
    client.write_all(request).await.unwrap();
    until_closed(client).await
}

/// Reads until `needle` has arrived; all read so far.
async fn until(client: &mut TcpStream, needle: &str) -> String {
    let mut all = Vec::new();
    let mut buf = [0u8; 4096];
    while !String::from_utf8_lossy(&all).contains(needle) {
        let n = tokio::time::timeout(Duration::from_secs(10), client.read(&mut buf))
            .await
            .unwrap()
            .unwrap();
        assert!(
            n > 0,
            "closed before {needle:?}: {}",
            String::from_utf8_lossy(&all)
        );
        all.extend_from_slice(&buf[..n]);
    }
    String::from_utf8(all).unwrap()
}

#[tokio::test]
async fn keep_alive_and_pipelined_requests_are_answered_in_order() {
    let (mut client, task) = connected(CancellationToken::new(), echo).await;
    client
        .write_all(b"POST /a HTTP/1.1\r\ncontent-length: 3\r\n\r\none")
        .await
        .unwrap();
    let first = until(&mut client, "POST /a one").await;
    assert!(first.starts_with("HTTP/1.1 200 OK\r\n"), "{first}");
    assert!(first.contains("content-length: 11\r\n"));
    client
        .write_all(b"POST /b HTTP/1.1\r\ncontent-length: 3\r\n\r\ntwoGET /c HTTP/1.1\r\n\r\nGET /d HTTP/1.1\r\nconnection: close\r\n\r\n")
        .await
        .unwrap();
    let rest = until_closed(&mut client).await;
    let b = rest.find("POST /b two").unwrap();
    let c = rest.find("GET /c ").unwrap();
    let d = rest.find("GET /d ").unwrap();
    assert!(b < c && c < d, "{rest}");
    assert_eq!(rest.matches("connection: close").count(), 1);
    task.await.unwrap();
}

#[tokio::test]
async fn a_chunked_body_arriving_in_pieces_is_read_whole() {
    let (mut client, _task) = connected(CancellationToken::new(), echo).await;
    client
        .write_all(b"POST /x HTTP/1.1\r\ntransfer-encoding: chunked\r\n\r\n5\r\nhel")
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(20)).await;
    client
        .write_all(b"lo\r\n1;ext=1\r\n!\r\n0\r\nx-trailer: y\r\n\r\n")
        .await
        .unwrap();
    let answer = until(&mut client, "POST /x hello!").await;
    assert!(answer.starts_with("HTTP/1.1 200 OK\r\n"));
}

#[tokio::test]
async fn expect_continue_is_answered_before_the_body_is_sent() {
    let (mut client, _task) = connected(CancellationToken::new(), echo).await;
    client
        .write_all(b"POST /e HTTP/1.1\r\nexpect: 100-continue\r\ncontent-length: 2\r\n\r\n")
        .await
        .unwrap();
    let interim = until(&mut client, "\r\n\r\n").await;
    assert_eq!(interim, "HTTP/1.1 100 Continue\r\n\r\n");
    client.write_all(b"ok").await.unwrap();
    until(&mut client, "POST /e ok").await;
}

#[tokio::test]
async fn a_request_refused_on_its_head_gets_no_100_continue() {
    let refuse = |_req: Request<RequestBody>| async {
        let mut response = Response::new(boxed(Full::new(Bytes::from_static(b"too large"))));
        *response.status_mut() = http::StatusCode::PAYLOAD_TOO_LARGE;
        response
    };
    let (mut client, _task) = connected(CancellationToken::new(), refuse).await;
    let answer = answer_then_close(
        &mut client,
        b"POST /e HTTP/1.1\r\nexpect: 100-continue\r\ncontent-length: 99999\r\n\r\n",
    )
    .await;
    assert!(
        answer.starts_with("HTTP/1.1 413 Payload Too Large\r\n"),
        "{answer}"
    );
    assert!(!answer.contains("100 Continue"));
}

#[tokio::test]
async fn a_malformed_head_gets_the_api_error_and_the_connection_closes() {
    let (mut client, task) = connected(CancellationToken::new(), echo).await;
    let answer = answer_then_close(
        &mut client,
        b"POST /x HTTP/1.1\r\ncontent-length: 1\r\ntransfer-encoding: chunked\r\n\r\n",
    )
    .await;
    assert!(
        answer.starts_with("HTTP/1.1 400 Bad Request\r\n"),
        "{answer}"
    );
    assert!(answer.contains("connection: close\r\n"));
    let body = &answer[answer.find("\r\n\r\n").unwrap() + 4..];
    let error: serde_json::Value = serde_json::from_str(body).unwrap();
    assert_eq!(error["error"]["type"], "invalid_request_error");
    assert!(
        error["error"]["message"]
            .as_str()
            .unwrap()
            .contains("both transfer-encoding and content-length")
    );
    task.await.unwrap();
}

#[tokio::test]
async fn a_body_left_unread_closes_the_connection_after_the_answer() {
    let ignore_body = |_req: Request<RequestBody>| async {
        Response::new(boxed(Full::new(Bytes::from_static(b"no"))))
    };
    let (mut client, task) = connected(CancellationToken::new(), ignore_body).await;
    let answer = answer_then_close(
        &mut client,
        b"POST /x HTTP/1.1\r\ncontent-length: 100\r\n\r\npartial",
    )
    .await;
    assert!(
        answer.contains("connection: close\r\n") && answer.ends_with("\r\n\r\nno"),
        "{answer}"
    );
    task.await.unwrap();
}

/// Sets its flag when dropped.
struct Flag(Arc<AtomicBool>);

impl Drop for Flag {
    fn drop(&mut self) {
        self.0.store(true, Ordering::SeqCst);
    }
}

#[tokio::test]
async fn a_client_that_closes_while_waiting_cancels_its_request() {
    let dropped = Arc::new(AtomicBool::new(false));
    let flag = dropped.clone();
    let forever = move |_req: Request<RequestBody>| {
        let guard = Flag(flag.clone());
        async move {
            std::future::pending::<()>().await;
            drop(guard);
            Response::new(boxed(Full::new(Bytes::new())))
        }
    };
    let (mut client, task) = connected(CancellationToken::new(), forever).await;
    client
        .write_all(b"GET /wait HTTP/1.1\r\n\r\n")
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert!(!dropped.load(Ordering::SeqCst));
    drop(client);
    tokio::time::timeout(Duration::from_secs(10), task)
        .await
        .unwrap()
        .unwrap();
    assert!(
        dropped.load(Ordering::SeqCst),
        "the request was not dropped"
    );
}

#[tokio::test]
async fn shutdown_closes_idle_connections_and_ends_busy_ones_after_their_answer() {
    let shutdown = CancellationToken::new();
    let (mut idle, idle_task) = connected(shutdown.clone(), echo).await;
    idle.write_all(b"GET /one HTTP/1.1\r\n\r\n").await.unwrap();
    until(&mut idle, "GET /one").await;

    let stopping = shutdown.clone();
    let slow = move |req: Request<RequestBody>| {
        let stopping = stopping.clone();
        async move {
            stopping.cancelled().await;
            echo(req).await
        }
    };
    let (mut busy, busy_task) = connected(shutdown.clone(), slow).await;
    busy.write_all(b"GET /two HTTP/1.1\r\n\r\n").await.unwrap();
    tokio::time::sleep(Duration::from_millis(50)).await;
    shutdown.cancel();
    let answer = until_closed(&mut busy).await;
    assert!(
        answer.contains("connection: close\r\n") && answer.ends_with("GET /two "),
        "{answer}"
    );
    assert_eq!(until_closed(&mut idle).await, "");
    for task in [idle_task, busy_task] {
        tokio::time::timeout(Duration::from_secs(10), task)
            .await
            .unwrap()
            .unwrap();
    }
}

#[tokio::test]
async fn http2_prior_knowledge_is_told_from_http1() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    for (opening, expected) in [
        (
            &b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"[..],
            Some(Speaks::Http2),
        ),
        (b"POST /v1 HTTP/1.1\r\n", Some(Speaks::Http1)),
        (b"PRI * HTTP/1.1\r\n\r\n", Some(Speaks::Http1)),
        (b"PRI * HT", None),
    ] {
        let mut client = TcpStream::connect(addr).await.unwrap();
        let (mut server, _) = listener.accept().await.unwrap();
        // The preface in two pieces: the sniff waits for all of it.
        let (a, b) = opening.split_at(4);
        client.write_all(a).await.unwrap();
        tokio::time::sleep(Duration::from_millis(10)).await;
        client.write_all(b).await.unwrap();
        client.shutdown().await.unwrap();
        let mut read = BytesMut::new();
        let speaks = sniff(&mut server, &mut read, Duration::from_secs(5)).await;
        assert_eq!(speaks, expected, "{opening:?}");
        if expected.is_some() {
            assert!(opening.starts_with(&read), "what was read is kept");
        }
    }
}
