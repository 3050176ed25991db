//! The direct HTTP/1.1 client against a scripted upstream on 127.0.0.1: what
//! it reuses, what it drops, and when it sends a request again.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use bytes::Bytes;
use http_body::Body;
use http_body_util::BodyExt;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::task::TaskTracker;

use super::{Upstream, UpstreamError};

type TestResult = Result<(), UpstreamError>;

/// What the scripted upstream does with a request: the bytes to answer
/// with, and whether to close the connection after them; `None` closes it
/// without answering. Called with the connection's index (in accept order)
/// and the request's index on that connection.
type Script = fn(usize, usize) -> Option<(&'static [u8], bool)>;

/// A scripted upstream: its address, and how many connections it accepted.
async fn scripted(script: Script) -> std::io::Result<(String, Arc<AtomicUsize>)> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let address = listener.local_addr()?.to_string();
    let accepted = Arc::new(AtomicUsize::new(0));
    let count = accepted.clone();
    let tasks = TaskTracker::new();
    tasks.clone().spawn(async move {
        while let Ok((socket, _)) = listener.accept().await {
            let index = count.fetch_add(1, Ordering::SeqCst);
            tasks.spawn(answer(socket, index, script));
        }
    });
    Ok((address, accepted))
}

/// Serves one connection by its script.
async fn answer(mut socket: TcpStream, connection: usize, script: Script) {
    let mut request = 0;
    let mut buf = Vec::new();
    loop {
        let mut chunk = [0u8; 4096];
        match socket.read(&mut chunk).await {
            Ok(0) | Err(_) => return,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
        // One whole request: a head and a `content-length` body.
        let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") else {
            continue;
        };
        let head = String::from_utf8_lossy(&buf[..end]).to_lowercase();
        let length = head
            .lines()
            .find_map(|l| l.strip_prefix("content-length: "))
            .and_then(|v| v.trim().parse::<usize>().ok())
            .unwrap_or(0);
        if buf.len() < end + 4 + length {
            continue;
        }
        buf.drain(..end + 4 + length);
        match script(connection, request) {
            Some((bytes, close)) => {
                if socket.write_all(bytes).await.is_err() || close {
                    return;
                }
            }
            None => return,
        }
        request += 1;
    }
}

/// A POST to the scripted upstream through the direct client.
async fn post(upstream: &Upstream, address: &str) -> Result<Bytes, UpstreamError> {
    let request = http::Request::post(format!("http://{address}/v1/chat/completions"))
        .header("content-type", "application/json")
        .body(Bytes::from_static(b"{\"model\":\"m\"}"))?;
    let response = upstream.request(request).await?;
    Ok(response.into_body().collect().await?.to_bytes())
}

fn direct() -> Result<Upstream, UpstreamError> {
    Ok(Upstream::new(Duration::from_secs(2), None, true)?)
}

const HELLO: &[u8] = b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\nhello";

#[tokio::test]
async fn one_connection_carries_request_after_request() -> TestResult {
    let (address, accepted) = scripted(|_, _| Some((HELLO, false))).await?;
    let upstream = direct()?;
    for _ in 0..3 {
        assert_eq!(post(&upstream, &address).await?, "hello");
    }
    assert_eq!(accepted.load(Ordering::SeqCst), 1);
    Ok(())
}

#[tokio::test]
async fn a_body_too_large_to_share_the_head_write_follows_it_whole() -> TestResult {
    let (address, accepted) = scripted(|_, _| Some((HELLO, false))).await?;
    let upstream = direct()?;
    for size in [
        super::direct::COALESCE_BODY,
        super::direct::COALESCE_BODY + 1,
        300_000,
    ] {
        let request = http::Request::post(format!("http://{address}/v1/embeddings"))
            .body(Bytes::from(vec![b'x'; size]))?;
        let body = upstream
            .request(request)
            .await?
            .into_body()
            .collect()
            .await?;
        // The upstream answers only once it has read `content-length` bytes.
        assert_eq!(body.to_bytes(), "hello", "{size} bytes");
    }
    assert_eq!(accepted.load(Ordering::SeqCst), 1);
    Ok(())
}

#[tokio::test]
async fn chunked_answers_and_interim_heads_are_read_and_the_connection_kept() -> TestResult {
    const CHUNKED: &[u8] = b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n6\r\nhello,\r\n6\r\n world\r\n0\r\n\r\n";
    let (address, accepted) = scripted(|_, _| Some((CHUNKED, false))).await?;
    let upstream = direct()?;
    for _ in 0..2 {
        assert_eq!(post(&upstream, &address).await?, "hello, world");
    }
    assert_eq!(accepted.load(Ordering::SeqCst), 1);
    Ok(())
}

#[tokio::test]
async fn answers_that_close_the_connection_are_not_reused() -> TestResult {
    const CLOSE: &[u8] = b"HTTP/1.1 200 OK\r\nconnection: close\r\ncontent-length: 2\r\n\r\nok";
    const UNTIL_CLOSE: &[u8] = b"HTTP/1.1 200 OK\r\n\r\nread to the end";
    const BOTH_FRAMINGS: &[u8] = b"HTTP/1.1 200 OK\r\ncontent-length: 99\r\ntransfer-encoding: chunked\r\n\r\n2\r\nok\r\n0\r\n\r\n";
    let upstream = direct()?;
    for script in [(|_, _| Some((CLOSE, false))) as Script, |_, _| {
        Some((BOTH_FRAMINGS, false))
    }] {
        let (address, accepted) = scripted(script).await?;
        assert_eq!(post(&upstream, &address).await?, "ok");
        assert_eq!(post(&upstream, &address).await?, "ok");
        assert_eq!(accepted.load(Ordering::SeqCst), 2);
    }
    let (address, accepted) = scripted(|_, _| Some((UNTIL_CLOSE, true))).await?;
    assert_eq!(post(&upstream, &address).await?, "read to the end");
    assert_eq!(post(&upstream, &address).await?, "read to the end");
    assert_eq!(accepted.load(Ordering::SeqCst), 2);
    Ok(())
}

#[tokio::test]
async fn a_pooled_connection_closed_under_a_request_is_replaced_once() -> TestResult {
    // The first connection answers once, then hangs up on the next request
    // without a byte; the request goes again on a new connection.
    let (address, accepted) =
        scripted(|connection, request| (connection > 0 || request == 0).then_some((HELLO, false)))
            .await?;
    let upstream = direct()?;
    assert_eq!(post(&upstream, &address).await?, "hello");
    assert_eq!(post(&upstream, &address).await?, "hello");
    assert_eq!(accepted.load(Ordering::SeqCst), 2);
    // The upstream closed the idle connection itself: it is not used again.
    let (address, accepted) = scripted(|_, _| Some((HELLO, true))).await?;
    assert_eq!(post(&upstream, &address).await?, "hello");
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert_eq!(post(&upstream, &address).await?, "hello");
    assert_eq!(accepted.load(Ordering::SeqCst), 2);
    Ok(())
}

#[tokio::test]
async fn idle_connections_expire_whatever_their_authority() -> TestResult {
    let (first, first_accepted) = scripted(|_, _| Some((HELLO, false))).await?;
    let (second, _) = scripted(|_, _| Some((HELLO, false))).await?;
    let upstream = direct()?;
    assert_eq!(post(&upstream, &first).await?, "hello");
    assert_eq!(super::pool::idle_here(), 1);
    tokio::time::sleep(super::pool::IDLE_TIMEOUT + Duration::from_millis(20)).await;
    // A check-in for another authority drops the first one's expired connection.
    assert_eq!(post(&upstream, &second).await?, "hello");
    assert_eq!(super::pool::idle_here(), 1);
    assert_eq!(post(&upstream, &first).await?, "hello");
    assert_eq!(first_accepted.load(Ordering::SeqCst), 2);
    assert_eq!(super::pool::idle_here(), 2);
    Ok(())
}

#[tokio::test]
async fn a_new_connection_that_closes_unanswered_is_an_error_not_a_retry() -> TestResult {
    let (address, accepted) = scripted(|_, _| None).await?;
    let upstream = direct()?;
    let error = post(&upstream, &address).await.err().map(|e| e.to_string());
    assert_eq!(
        error.as_deref(),
        Some("upstream closed the connection before answering")
    );
    assert_eq!(accepted.load(Ordering::SeqCst), 1);
    Ok(())
}

#[tokio::test]
async fn a_body_cut_or_dropped_before_its_end_loses_its_connection() -> TestResult {
    const SHORT: &[u8] = b"HTTP/1.1 200 OK\r\ncontent-length: 10\r\n\r\nhello";
    let (address, accepted) = scripted(|_, _| Some((SHORT, true))).await?;
    let upstream = direct()?;
    let error = post(&upstream, &address).await.err().map(|e| e.to_string());
    assert_eq!(
        error.as_deref(),
        Some("upstream closed the connection mid-body")
    );
    // Kept open by the upstream, but abandoned half-read by the gateway.
    let (address, accepted_open) = scripted(|_, _| Some((SHORT, false))).await?;
    let request =
        http::Request::post(format!("http://{address}/")).body(Bytes::from_static(b"{}"))?;
    let mut body = upstream.request(request).await?.into_body();
    let first = body
        .frame()
        .await
        .transpose()?
        .and_then(|f| f.into_data().ok());
    assert_eq!(first.as_deref(), Some(&b"hello"[..]));
    assert!(!body.is_end_stream());
    drop(body);
    let request =
        http::Request::post(format!("http://{address}/")).body(Bytes::from_static(b"{}"))?;
    drop(upstream.request(request).await?);
    assert_eq!(accepted_open.load(Ordering::SeqCst), 2);
    assert_eq!(accepted.load(Ordering::SeqCst), 1);
    Ok(())
}

#[tokio::test]
async fn broken_heads_and_bodies_are_errors() -> TestResult {
    const SSH: &[u8] = b"SSH-2.0-OpenSSH\r\n\r\n";
    const TWO_LENGTHS: &[u8] =
        b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\ncontent-length: 6\r\n\r\nhello";
    const BAD_CHUNK: &[u8] = b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\nzz\r\n";
    let cases: [(Script, &str); 3] = [
        (
            |_, _| Some((SSH, true)),
            "malformed upstream response head: not an HTTP/1 response",
        ),
        (
            |_, _| Some((TWO_LENGTHS, true)),
            "malformed upstream response head: conflicting content-length",
        ),
        (
            |_, _| Some((BAD_CHUNK, true)),
            "malformed upstream body: bad chunk size",
        ),
    ];
    for (script, expected) in cases {
        let (address, _) = scripted(script).await?;
        let error = post(&direct()?, &address)
            .await
            .err()
            .map(|e| e.to_string());
        assert_eq!(error.as_deref(), Some(expected));
    }
    Ok(())
}
