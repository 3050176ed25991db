//! The edge on real sockets: the header-read and keep-alive idle timeout,
//! the write timeout for a client that stops reading, the connection cap,
//! and both runtimes and both HTTP/1 servers under concurrent connections.

use std::time::{Duration, Instant};

use http::StatusCode;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpStream;

use super::*;

/// How long `stream` stays open before the gateway closes it (reading and
/// discarding whatever arrives); `None` if it is still open after `limit`.
async fn closed_within(stream: &mut TcpStream, limit: Duration) -> Option<Duration> {
    let started = Instant::now();
    let mut buf = vec![0u8; 64 << 10];
    tokio::time::timeout(limit, async {
        loop {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => return started.elapsed(),
                Ok(_) => {}
            }
        }
    })
    .await
    .ok()
}

#[tokio::test]
async fn partial_headers_and_idle_keep_alive_connections_are_closed() {
    let timeout = Duration::from_millis(300);
    let gw = Running::start(Tables {
        server: "header_timeout = \"300ms\"",
        ..Tables::default()
    })
    .await;
    // The bound: the configured timeout plus a margin for a loaded 2-core machine.
    let bound = timeout + Duration::from_secs(2);
    let mut partial = TcpStream::connect(gw.proxy).await.unwrap();
    partial
        .write_all(b"POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\n")
        .await
        .unwrap();
    let took = closed_within(&mut partial, bound).await;
    assert!(
        took.is_some_and(|t| t >= timeout),
        "partial headers: {took:?}"
    );

    let mut idle = TcpStream::connect(gw.proxy).await.unwrap();
    idle.write_all(b"GET /healthz HTTP/1.1\r\nhost: x\r\n\r\n")
        .await
        .unwrap();
    let mut head = [0u8; 12];
    idle.read_exact(&mut head).await.unwrap();
    assert_eq!(&head, b"HTTP/1.1 200");
    let took = closed_within(&mut idle, bound).await;
    assert!(took.is_some(), "an idle keep-alive connection stayed open");
    gw.stop().await;
}

#[tokio::test]
async fn a_client_that_stops_reading_is_cut_and_its_slot_released() {
    let timeout = Duration::from_millis(300);
    let gw = Running::start(Tables {
        server: "write_timeout = \"300ms\"",
        channel: "max_in_flight = 1",
        ..Tables::default()
    })
    .await;
    // A stream of 128 MB to a client that never reads: the socket buffers fill
    // within a fraction of a second, then writes block.
    let body = chat_body(true).to_string();
    let request = format!(
        "POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\nauthorization: Bearer {}\r\ncontent-type: application/json\r\nx-mock-event-bytes: 65536\r\nx-mock-chunks: 2000\r\nx-mock-ignore-cap: 1\r\ncontent-length: {}\r\n\r\n{body}",
        gw.key,
        body.len()
    );
    let mut stuck = TcpStream::connect(gw.proxy).await.unwrap();
    stuck.write_all(request.as_bytes()).await.unwrap();
    // Its stream holds the channel once its head arrives (the connections
    // may be served by different workers: the order is not the send order).
    let mut head = [0u8; 12];
    stuck.read_exact(&mut head).await.unwrap();
    assert_eq!(&head, b"HTTP/1.1 200");
    // The channel's one slot comes back once the write timeout cuts the
    // stuck stream: a second client is served within the timeout plus a margin.
    let started = Instant::now();
    loop {
        let mut sender = gw.connect().await;
        let response = sender
            .send_request(chat_as(&gw.key, chat_body(false), &[]))
            .await
            .unwrap();
        if response.status() == StatusCode::OK {
            break;
        }
        assert!(
            started.elapsed() < timeout + Duration::from_secs(5),
            "the stuck client still holds the channel"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    drop(stuck);
    let store = gw.stop().await;
    let records = store.query_usage(&UsageQuery::default()).unwrap();
    let cut = records
        .iter()
        .find(|r| r.stream)
        .expect("the cut stream's record");
    assert!(cut.partial, "{cut:?}");
}

#[tokio::test]
async fn connections_beyond_the_cap_are_refused_clearly() {
    let gw = Running::start(Tables {
        server: "max_connections = 2",
        ..Tables::default()
    })
    .await;
    let _first = TcpStream::connect(gw.proxy).await.unwrap();
    let _second = TcpStream::connect(gw.proxy).await.unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;
    let mut third = TcpStream::connect(gw.proxy).await.unwrap();
    let mut answer = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), third.read_to_end(&mut answer))
        .await
        .expect("the refused connection is closed")
        .unwrap();
    let text = String::from_utf8_lossy(&answer);
    assert!(text.starts_with("HTTP/1.1 503"), "{text}");
    assert!(
        text.contains("retry-after: 1") && text.contains("\"code\":\"overloaded\""),
        "{text}"
    );
    gw.stop().await;
}

#[tokio::test]
async fn both_runtimes_and_both_servers_serve_many_connections_and_record_every_answer() {
    for server in [
        "runtime = \"per-core\"\nworkers = 3",
        "runtime = \"shared\"",
        "direct_http = false",
    ] {
        let gw = Running::start(Tables {
            server,
            ..Tables::default()
        })
        .await;
        let mut clients = Vec::new();
        for _ in 0..8 {
            let mut sender = gw.connect().await;
            let key = gw.key.clone();
            clients.push(tokio::spawn(async move {
                let mut statuses = Vec::new();
                for _ in 0..3 {
                    let response = sender
                        .send_request(chat_as(&key, chat_body(false), &[]))
                        .await
                        .unwrap();
                    statuses.push(response.status());
                }
                statuses
            }));
        }
        for client in clients {
            assert_eq!(client.await.unwrap(), vec![StatusCode::OK; 3], "{server}");
        }
        let store = gw.stop().await;
        let records = store.query_usage(&UsageQuery::default()).unwrap();
        assert_eq!(records.len(), 24, "{server}: one record per answer");
    }
}
