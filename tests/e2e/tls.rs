//! The TLS listener: the `openai` SDK trusting a custom CA (and refused
//! without it), ALPN offering `h2` and `http/1.1`, plain and TLS listeners
//! side by side, and a certificate swapped under load without a failed request.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use http_body_util::{BodyExt, Empty};
use hyper_util::rt::TokioIo;
use serde_json::json;
use sluice_tests::*;

/// Connects to `addr` over TLS offering `alpn`; the protocol agreed on and
/// the certificate the server presented.
async fn handshake(
    ca: &TestCa,
    addr: &str,
    alpn: &[&[u8]],
) -> (
    tokio_rustls::client::TlsStream<tokio::net::TcpStream>,
    Vec<u8>,
    Vec<u8>,
) {
    let tcp = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let name = rustls::pki_types::ServerName::try_from("localhost").expect("name");
    let tls = ca
        .connector(alpn)
        .connect(name, tcp)
        .await
        .expect("handshake");
    let (_, session) = tls.get_ref();
    let protocol = session
        .alpn_protocol()
        .map(<[u8]>::to_vec)
        .unwrap_or_default();
    let presented = session
        .peer_certificates()
        .and_then(|chain| chain.first())
        .map(|c| c.as_ref().to_vec())
        .unwrap_or_default();
    (tls, protocol, presented)
}

/// `GET /healthz` over a new TLS connection (HTTP/1.1); its status and the
/// certificate presented.
async fn healthz(ca: &TestCa, addr: &str) -> anyhow::Result<(u16, Vec<u8>)> {
    let (tls, _, presented) = handshake(ca, addr, &[b"http/1.1"]).await;
    let (mut send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls)).await?;
    tokio::spawn(conn);
    let req = http::Request::get("/healthz")
        .header("host", "localhost")
        .body(Empty::<bytes::Bytes>::new())?;
    let reply = send.send_request(req).await?;
    let status = reply.status().as_u16();
    reply.into_body().collect().await?;
    Ok((status, presented))
}

/// The certificate a gateway serves: its files and its DER.
struct Served {
    cert: std::path::PathBuf,
    key: std::path::PathBuf,
    der: Vec<u8>,
}

/// A gateway with a TLS listener serving a leaf of `ca` written to `dir`;
/// its TLS address, the certificate, and the fake upstream (kept serving).
async fn tls_gateway(ca: &TestCa, dir: &std::path::Path) -> (Gateway, String, Served, Mock) {
    let (cert, key, der) = ca.leaf(dir, "live");
    let upstream = keyed_mock(MockConfig::default()).await;
    let gw = Gateway::builder()
        .channel(ChannelSpec::mock("main", &upstream, &[MODEL]))
        .tls(&cert, &key)
        .start()
        .await;
    let tls = gw.tls.clone().expect("a TLS listener");
    (gw, tls, Served { cert, key, der }, upstream)
}

#[tokio::test]
async fn the_openai_sdk_speaks_tls_with_a_custom_ca_beside_the_plain_listener() {
    let dir = tempfile::tempdir().unwrap();
    let ca = TestCa::new();
    let ca_file = dir.path().join("ca.pem");
    std::fs::write(&ca_file, &ca.pem).unwrap();
    let (gw, tls, served, _upstream) = tls_gateway(&ca, dir.path()).await;
    let der = served.der;
    let (api_key, key_id) = gw.create_key(json!({"name": "tls"})).await;
    let base = format!("https://localhost:{}/v1", tls.rsplit(':').next().unwrap());
    let ca_path = ca_file.display().to_string();
    let env = [("SLUICE_CA", ca_path.as_str())];
    let out = python_script("tls.py", "trusted", &base, &api_key, &env).await;
    assert_eq!(
        out.lines().filter(|l| l.starts_with("ok ")).count(),
        2,
        "{out}"
    );
    let out = python_script("tls.py", "untrusted", &base, &api_key, &env).await;
    assert!(out.contains("ok untrusted refused"), "{out}");
    // Both answers were billed like any other.
    let (_, page) = gw
        .admin_json("GET", &format!("/admin/usage?key_id={key_id}"), None)
        .await;
    assert_eq!(page["data"].as_array().map(Vec::len), Some(2), "{page}");
    // ALPN: h2 when offered, HTTP/1.1 otherwise; the configured certificate.
    let (_, h2, presented) = handshake(&ca, &tls, &[b"h2", b"http/1.1"]).await;
    assert_eq!(h2, b"h2");
    assert_eq!(presented, der);
    let (_, http1, _) = handshake(&ca, &tls, &[b"http/1.1"]).await;
    assert_eq!(http1, b"http/1.1");
    // The plain listener still answers in the clear.
    assert_eq!(gw.chat(&api_key, chat_body()).await.status, 200);
    // A client that never finishes its handshake is counted, not served.
    let idle = tokio::net::TcpStream::connect(&tls).await.unwrap();
    drop(idle);
    assert!(
        eventually(Duration::from_secs(5), async || {
            metric(&gw.metrics().await, "sluice_tls_handshake_failures_total") >= 1.0
        })
        .await
    );
}

#[tokio::test]
async fn a_certificate_swapped_under_load_fails_no_request() {
    let dir = tempfile::tempdir().unwrap();
    let ca = Arc::new(TestCa::new());
    let (gw, tls, served, _upstream) = tls_gateway(&ca, dir.path()).await;
    let (cert, key, first) = (served.cert, served.key, served.der);
    let (ok, failed) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let until = Instant::now() + Duration::from_secs(4);
    let mut load = Vec::new();
    for _ in 0..4 {
        let (ca, tls, ok, failed) = (ca.clone(), tls.clone(), ok.clone(), failed.clone());
        load.push(tokio::spawn(async move {
            while Instant::now() < until {
                match healthz(&ca, &tls).await {
                    Ok((200, _)) => ok.fetch_add(1, Ordering::Relaxed),
                    _ => failed.fetch_add(1, Ordering::Relaxed),
                };
            }
        }));
    }
    // Replace the pair as a certificate manager would: new files renamed
    // over the old ones, the certificate first (for a moment the key does
    // not match it: the old pair keeps serving).
    tokio::time::sleep(Duration::from_secs(1)).await;
    let (next_cert, next_key, second) = ca.leaf(dir.path(), "next");
    std::fs::rename(&next_cert, &cert).unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    std::fs::rename(&next_key, &key).unwrap();
    for task in load {
        task.await.unwrap();
    }
    assert_eq!(failed.load(Ordering::Relaxed), 0, "no request may fail");
    assert!(ok.load(Ordering::Relaxed) > 20, "the load ran");
    // New connections get the new certificate once the poll has seen it.
    let swapped = eventually(Duration::from_secs(5), async || {
        healthz(&ca, &tls)
            .await
            .is_ok_and(|(_, presented)| presented == second)
    })
    .await;
    assert!(swapped, "the new certificate must be served");
    assert_ne!(first, second);
    let metrics = gw.metrics().await;
    assert!(
        metric(
            &metrics,
            "sluice_tls_certificate_reloads_total{outcome=\"reloaded\""
        ) >= 1.0,
        "{metrics}"
    );
}
