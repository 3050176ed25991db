//! The CLI's admin client: finds a running gateway's admin API and calls it.

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::{Context as _, bail};
use bytes::Bytes;
use http_body_util::{BodyExt, Full};

use crate::config::Config;

/// Calls the admin API of a running gateway; `None` when nothing listens there.
pub(super) async fn admin_call(
    config: &Config,
    method: http::Method,
    path: &str,
    body: Option<serde_json::Value>,
) -> anyhow::Result<Option<serde_json::Value>> {
    let recorded = std::fs::read(crate::app::runtime_file(config))
        .ok()
        .and_then(|json| serde_json::from_slice::<serde_json::Value>(&json).ok())
        .and_then(|v| {
            v["admin"]
                .as_str()
                .and_then(|a| a.parse::<SocketAddr>().ok())
        });
    let mut addr = None;
    for candidate in [Some(config.admin.listen), recorded]
        .into_iter()
        .flatten()
        .filter(|a| a.port() != 0)
    {
        let reachable = tokio::time::timeout(
            Duration::from_millis(500),
            tokio::net::TcpStream::connect(candidate),
        )
        .await;
        if matches!(reachable, Ok(Ok(_))) {
            addr = Some(candidate);
            break;
        }
    }
    let Some(addr) = addr else { return Ok(None) };
    let token = config
        .admin
        .token
        .as_deref()
        .context("the gateway is running but admin.token is not configured")?;
    let client: hyper_util::client::legacy::Client<_, Full<Bytes>> =
        hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
            .build_http();
    let request = http::Request::builder()
        .method(method)
        .uri(format!("http://{addr}{path}"))
        .header(http::header::AUTHORIZATION, format!("Bearer {token}"))
        .header(http::header::CONTENT_TYPE, "application/json")
        .body(Full::new(Bytes::from(
            body.map(|b| b.to_string()).unwrap_or_default(),
        )))?;
    let response = client.request(request).await?;
    let status = response.status();
    let bytes = response.into_body().collect().await?.to_bytes();
    let value: serde_json::Value = serde_json::from_slice(&bytes).unwrap_or_default();
    if !status.is_success() {
        bail!(
            "admin API {status}: {}",
            value["error"]["message"]
                .as_str()
                .unwrap_or("request failed")
        );
    }
    Ok(Some(value))
}
