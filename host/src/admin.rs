//! The admin API on its own listener: keys, usage, channels and plugins as JSON,
//! behind a bearer token compared in constant time; and `/metrics` in the
//! Prometheus text format. Errors use the same `{"error":{…}}` shape as the API.

use std::sync::Arc;

use bytes::Bytes;
use http::{HeaderMap, Method, Request, Response, StatusCode};
use http_body::Body;
use http_body_util::{BodyExt, Full, Limited};
use serde::de::DeserializeOwned;
use subtle::ConstantTimeEq;

use crate::error::ApiError;
use crate::keys::NewKey;
use crate::server::body::{ResponseBody, boxed, json};
use crate::state::AppState;
use crate::store::{Bucket, GroupBy, KeyPatch, KeyRecord, KeyStatus, StoreError, UsageQuery};

/// Largest admin request body.
const MAX_ADMIN_BODY: usize = 64 * 1024;

/// Handles one admin request.
pub async fn handle<B>(state: &Arc<AppState>, req: Request<B>) -> Response<ResponseBody>
where
    B: Body<Data = Bytes>,
    B::Error: std::error::Error + Send + Sync + 'static,
{
    match route(state, req).await {
        Ok(response) => response,
        Err(e) => e.into_response().map(boxed),
    }
}

fn not_found(what: &str) -> ApiError {
    ApiError::Client {
        status: StatusCode::NOT_FOUND,
        code: "not_found",
        param: None,
        message: format!("{what} not found"),
    }
}

fn authorized(state: &AppState, headers: &HeaderMap) -> Result<(), ApiError> {
    let Some(token) = &state.config.admin.token else {
        return Err(ApiError::Denied {
            status: StatusCode::FORBIDDEN,
            code: "admin_disabled".into(),
            message: "The admin API is disabled: set admin.token.".into(),
            retry_after_s: None,
        });
    };
    // The scheme is case-insensitive (RFC 9110); config guarantees a token of
    // at least 16 bytes, so an absent or empty credential never matches.
    let presented = headers
        .get(http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split_once(' '))
        .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
        .map_or("", |(_, token)| token.trim());
    if bool::from(presented.as_bytes().ct_eq(token.as_bytes())) {
        Ok(())
    } else {
        Err(ApiError::Denied {
            status: StatusCode::UNAUTHORIZED,
            code: "invalid_admin_token".into(),
            message: "Missing or invalid admin token.".into(),
            retry_after_s: None,
        })
    }
}

async fn body<T, B>(req: Request<B>) -> Result<T, ApiError>
where
    T: DeserializeOwned,
    B: Body<Data = Bytes>,
    B::Error: std::error::Error + Send + Sync + 'static,
{
    let bytes = Limited::new(req.into_body(), MAX_ADMIN_BODY)
        .collect()
        .await
        .map_err(|e| ApiError::bad_request(format!("cannot read body: {e}"), None))?
        .to_bytes();
    serde_json::from_slice(&bytes)
        .map_err(|e| ApiError::bad_request(format!("invalid JSON: {e}"), None))
}

fn query<T: DeserializeOwned, B>(req: &Request<B>, skip: &[&str]) -> Result<T, ApiError> {
    let raw = req.uri().query().unwrap_or("");
    let kept: Vec<&str> = raw
        .split('&')
        .filter(|p| !p.is_empty() && !skip.iter().any(|s| p.split('=').next() == Some(*s)))
        .collect();
    serde_urlencoded::from_str(&kept.join("&"))
        .map_err(|e| ApiError::bad_request(format!("invalid query: {e}"), None))
}

fn store_error(e: StoreError) -> ApiError {
    match e {
        StoreError::NoSuchKey(id) => not_found(&format!("key {id}")),
        other => ApiError::Internal(other.to_string()),
    }
}

async fn blocking<R: Send + 'static>(
    f: impl FnOnce() -> Result<R, StoreError> + Send + 'static,
) -> Result<R, ApiError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| ApiError::Internal(e.to_string()))?
        .map_err(store_error)
}

/// A key as the admin API shows it: everything but the digest.
fn key_view(k: &KeyRecord) -> serde_json::Value {
    let mut v = serde_json::to_value(k).unwrap_or_default();
    if let Some(map) = v.as_object_mut() {
        map.remove("digest");
    }
    v
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct SummaryParams {
    #[serde(default = "default_group")]
    group: GroupBy,
    #[serde(default = "default_bucket")]
    bucket: Bucket,
}

fn default_group() -> GroupBy {
    GroupBy::Model
}

fn default_bucket() -> Bucket {
    Bucket::Hour
}

async fn route<B>(
    state: &Arc<AppState>,
    req: Request<B>,
) -> Result<Response<ResponseBody>, ApiError>
where
    B: Body<Data = Bytes>,
    B::Error: std::error::Error + Send + Sync + 'static,
{
    let path = req.uri().path().trim_end_matches('/').to_string();
    let method = req.method().clone();
    if path == "/metrics" && method == Method::GET {
        state.channels.publish(&state.metrics);
        let mut response = Response::new(boxed(Full::new(Bytes::from(state.metrics.encode()))));
        response.headers_mut().insert(
            http::header::CONTENT_TYPE,
            http::HeaderValue::from_static(
                "application/openmetrics-text; version=1.0.0; charset=utf-8",
            ),
        );
        return Ok(response);
    }
    if path == "/admin/instance" && method == Method::GET {
        return instance_proof(state, &req);
    }
    authorized(state, req.headers())?;
    let segments: Vec<&str> = path.trim_start_matches('/').split('/').collect();
    let store = state.store.clone();
    match (method, segments.as_slice()) {
        (Method::GET, ["admin", "keys"]) => {
            let keys = blocking(move || store.list_keys()).await?;
            Ok(json(
                StatusCode::OK,
                &serde_json::json!({"data": keys.iter().map(key_view).collect::<Vec<_>>()}),
            ))
        }
        (Method::POST, ["admin", "keys"]) => {
            let spec: NewKey = body(req).await?;
            if spec.name.trim().is_empty() {
                return Err(ApiError::bad_request("name is required", Some("name")));
            }
            let (secret, record) =
                crate::keys::generate(&spec).map_err(|e| ApiError::Internal(e.to_string()))?;
            let stored = record.clone();
            blocking(move || store.create_key(&stored)).await?;
            state.keys.add_known(&record);
            tracing::info!(key_id = %record.id, prefix = %record.prefix, name = %record.name, "key created");
            Ok(json(
                StatusCode::CREATED,
                &serde_json::json!({"key": secret, "record": key_view(&record)}),
            ))
        }
        (Method::GET, ["admin", "keys", id]) => {
            let id = (*id).to_string();
            let key = blocking(move || store.key_by_id(&id))
                .await?
                .ok_or_else(|| not_found("key"))?;
            Ok(json(StatusCode::OK, &key_view(&key)))
        }
        (Method::GET, ["admin", "keys", id, "ledger"]) => {
            let LedgerQuery { limit } = query(&req, &[])?;
            let id = (*id).to_string();
            let entries = blocking(move || store.ledger(&id, limit.clamp(1, 1000))).await?;
            Ok(json(StatusCode::OK, &serde_json::json!({"data": entries})))
        }
        (Method::PATCH, ["admin", "keys", id]) => {
            let id = (*id).to_string();
            let patch: KeyPatch = body(req).await?;
            update_key(state, id, patch).await
        }
        (Method::POST, ["admin", "keys", id, "revoke"])
        | (Method::DELETE, ["admin", "keys", id]) => {
            let patch = KeyPatch {
                status: Some(KeyStatus::Revoked),
                ..KeyPatch::default()
            };
            update_key(state, (*id).to_string(), patch).await
        }
        (Method::GET, ["admin", "usage"]) => {
            let q: UsageQuery = query(&req, &[])?;
            let size = q.page_size();
            let page = blocking(move || store.query_usage(&q)).await?;
            let next = if page.len() == size {
                page.last().map(|r| r.seq)
            } else {
                None
            };
            Ok(json(
                StatusCode::OK,
                &serde_json::json!({"data": page, "next_before_seq": next}),
            ))
        }
        (Method::GET, ["admin", "usage", "summary"]) => {
            let params: SummaryParams = query(
                &req,
                &[
                    "since_ms",
                    "until_ms",
                    "key_id",
                    "model",
                    "channel_id",
                    "status",
                ],
            )?;
            let q: UsageQuery = query(&req, &["group", "bucket"])?;
            let rows = blocking(move || store.summarize(&q, params.group, params.bucket)).await?;
            Ok(json(StatusCode::OK, &serde_json::json!({"data": rows})))
        }
        (Method::GET, ["admin", "audit"]) => {
            let report = blocking(move || store.audit()).await?;
            Ok(json(
                StatusCode::OK,
                &serde_json::to_value(report).unwrap_or_default(),
            ))
        }
        (Method::GET, ["admin", "channels"]) => {
            let views: Vec<_> = state.channels.all().iter().map(|c| c.view()).collect();
            Ok(json(StatusCode::OK, &serde_json::json!({"data": views})))
        }
        (Method::POST, ["admin", "channels", id, action @ ("enable" | "disable")]) => {
            let channel = state.channels.get(id).ok_or_else(|| not_found("channel"))?;
            channel.set_disabled(*action == "disable");
            tracing::info!(channel = %id, action = *action, "channel switched by operator");
            Ok(json(
                StatusCode::OK,
                &serde_json::to_value(channel.view()).unwrap_or_default(),
            ))
        }
        (Method::GET, ["admin", "plugins"]) => Ok(json(
            StatusCode::OK,
            &serde_json::json!({"data": state.loader.list(), "rejected": state.loader.rejected()}),
        )),
        (Method::POST, ["admin", "plugins", "reload"]) => {
            let report = state.loader.reload().await;
            Ok(json(
                StatusCode::OK,
                &serde_json::to_value(report).unwrap_or_default(),
            ))
        }
        _ => Err(not_found("route")),
    }
}

/// `GET /admin/keys/{id}/ledger` parameters.
#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct LedgerQuery {
    #[serde(default = "default_ledger_page")]
    limit: usize,
}

fn default_ledger_page() -> usize {
    100
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct Challenge {
    nonce: String,
}

/// `GET /admin/instance?nonce=…`, without the token: proves this is the
/// gateway that wrote the runtime file, so the CLI can trust it with the token.
fn instance_proof<B>(
    state: &AppState,
    req: &Request<B>,
) -> Result<Response<ResponseBody>, ApiError> {
    let Challenge { nonce } = query(req, &[])?;
    if !(16..=128).contains(&nonce.len()) || !nonce.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(ApiError::bad_request(
            "nonce must be 16 to 128 hex digits",
            Some("nonce"),
        ));
    }
    Ok(json(
        StatusCode::OK,
        &serde_json::json!({"proof": crate::runtime::proof(&state.instance, &nonce)}),
    ))
}

async fn update_key(
    state: &Arc<AppState>,
    id: String,
    patch: KeyPatch,
) -> Result<Response<ResponseBody>, ApiError> {
    let store = state.store.clone();
    let key = blocking(move || store.update_key(&id, &patch)).await?;
    state.keys.quota_set(&key.id, key.quota_remaining);
    state.keys.invalidate(&key.digest);
    tracing::info!(key_id = %key.id, status = ?key.status, "key updated");
    Ok(json(StatusCode::OK, &key_view(&key)))
}
