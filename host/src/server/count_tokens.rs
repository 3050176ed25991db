//! `POST /v1/messages/count_tokens`: passed to an Anthropic channel when a
//! healthy one serves the model (its count is exact), otherwise answered
//! from the gateway's tokenizer over the chat request the body translates
//! to — an estimate (OpenAI's counting method, not Anthropic's tokenizer).
//! Keyed and authorized like any request; nothing is billed or recorded.

use bytes::Bytes;
use http::{HeaderMap, Request, Response, StatusCode};
use http_body::Body;
use http_body_util::{BodyExt, Full, Limited};

use super::body::{ResponseBody, boxed, json};
use super::intake::{self, BodyLimits};
use crate::config::Provider;
use crate::context::RequestContext;
use crate::error::ApiError;
use crate::protocol::Protocol;
use crate::provider::{COUNT_TOKENS_PATH, messages};
use crate::state::AppState;

/// Answers a count-tokens request.
///
/// # Errors
/// A missing or refused key, a malformed body, an unknown model, or a
/// failing upstream.
pub async fn answer<B>(
    state: &AppState,
    ctx: &mut RequestContext,
    req: Request<B>,
) -> Result<Response<ResponseBody>, ApiError>
where
    B: Body<Data = Bytes>,
    B::Error: std::error::Error + Send + Sync + 'static,
{
    super::caller::require(req.method(), &http::Method::POST)?;
    let (parts, body) = req.into_parts();
    let key = super::caller::lookup_key(state, &parts.headers).await?;
    super::caller::require_key(state, key.as_ref())?;
    let limits = BodyLimits::of(&state.config.server);
    let (bytes, _hold) = intake::read_body(body, &limits, &state.body_budget).await?;
    let parsed = crate::relay::parse(bytes.clone())?;
    ctx.set_body_facts(&parsed.model, false);
    state
        .policies
        .authorize(&ctx.policies, &ctx.facts, key.as_ref())
        .await?;
    if !state.channels.serves(&parsed.model) {
        return Err(ApiError::Client {
            status: StatusCode::NOT_FOUND,
            code: "model_not_found",
            param: Some("model"),
            message: format!("The model `{}` does not exist.", parsed.model),
        });
    }
    if let Some(response) = ask_anthropic(state, &parsed.model, bytes.clone(), &parts.headers).await
    {
        return Ok(response);
    }
    let chat = messages::request(&bytes)?;
    let meter = state.config.metering.model(&parsed.model);
    let mut tally =
        sluice_meter::Tally::new(meter.encoding, state.config.metering.max_counted_bytes);
    let _ = sluice_meter::prompt_tokens(sluice_meter::PromptKind::Chat, &chat, &mut tally);
    Ok(json(
        StatusCode::OK,
        &serde_json::json!({"input_tokens": tally.total()}),
    ))
}

/// The count of a healthy Anthropic channel serving `model`, its answer as
/// it came; `None` when there is none or it fails.
async fn ask_anthropic(
    state: &AppState,
    model: &str,
    body: Bytes,
    headers: &HeaderMap,
) -> Option<Response<ResponseBody>> {
    let channel = state
        .channels
        .serving(model)
        .find(|c| c.config.provider == Provider::Anthropic && c.is_healthy())?;
    let upstream_model = channel.config.upstream_model(model);
    let body = if upstream_model == model {
        body
    } else {
        let mut value: serde_json::Value = serde_json::from_slice(&body).ok()?;
        value["model"] = upstream_model.into();
        Bytes::from(serde_json::to_vec(&value).ok()?)
    };
    let mut request = Request::post(channel.wire.uri(COUNT_TOKENS_PATH, upstream_model)?)
        .header(http::header::CONTENT_TYPE, "application/json")
        .body(body)
        .ok()?;
    channel
        .wire
        .authenticate(Protocol::Anthropic, headers, request.headers_mut());
    let timeout = state.config.upstream.first_byte_timeout;
    let response = tokio::time::timeout(timeout, state.upstream.request(request))
        .await
        .ok()?
        .ok()?;
    if response.status().is_server_error() {
        return None;
    }
    let (head, body) = response.into_parts();
    let bytes = Limited::new(body, state.config.upstream.max_response_bytes)
        .collect()
        .await
        .ok()?
        .to_bytes();
    let mut answer = Response::new(boxed(Full::new(bytes)));
    *answer.status_mut() = head.status;
    if let Some(kind) = head.headers.get(http::header::CONTENT_TYPE) {
        answer
            .headers_mut()
            .insert(http::header::CONTENT_TYPE, kind.clone());
    }
    Some(answer)
}
