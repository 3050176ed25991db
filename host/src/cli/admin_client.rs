//! The CLI's admin client: finds a running gateway's admin API and calls it.

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::{Context as _, bail};
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use subtle::ConstantTimeEq as _;

use crate::config::Config;
use crate::runtime;

type Client = hyper_util::client::legacy::Client<
    hyper_util::client::legacy::connect::HttpConnector,
    Full<Bytes>,
>;

/// Challenges the listener at `addr` to prove it knows `instance`.
///
/// # Errors
/// When it cannot be reached in time, or its proof is wrong: then something
/// else holds the port, and it must not see the admin token.
async fn verify(client: &Client, addr: SocketAddr, instance: &str) -> anyhow::Result<()> {
    let nonce = runtime::new_instance_secret()?;
    let request = http::Request::get(format!("http://{addr}/admin/instance?nonce={nonce}"))
        .body(Full::new(Bytes::new()))?;
    let answer = tokio::time::timeout(Duration::from_secs(2), client.request(request))
        .await
        .with_context(|| format!("the admin API at {addr} did not answer"))??;
    let bytes = answer.into_body().collect().await?.to_bytes();
    let proof = serde_json::from_slice::<serde_json::Value>(&bytes)
        .ok()
        .and_then(|v| v["proof"].as_str().map(String::from))
        .unwrap_or_default();
    let expected = runtime::proof(instance, &nonce);
    if !bool::from(proof.as_bytes().ct_eq(expected.as_bytes())) {
        bail!(
            "the process listening on {addr} is not the gateway that wrote the runtime file; \
             not sending it the admin token"
        );
    }
    Ok(())
}

/// Calls the admin API of a running gateway; `None` when none is running
/// (no runtime file, or its process is gone). The token is sent only after
/// the listener proved it is the gateway that wrote the runtime file.
pub(super) async fn admin_call(
    config: &Config,
    method: http::Method,
    path: &str,
    body: Option<serde_json::Value>,
) -> anyhow::Result<Option<serde_json::Value>> {
    let Some(running) = runtime::read_live(&runtime::path(config)) else {
        return Ok(None);
    };
    let addr = running.bound.admin;
    let client: Client =
        hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
            .build_http();
    verify(&client, addr, &running.instance).await?;
    let token = config
        .admin
        .token
        .as_deref()
        .context("the gateway is running but admin.token is not configured")?;
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
