//! Reading a request body, bounded three ways: in size (`max_body_bytes`; a
//! declared length over it is refused before a byte is read), in time
//! (`body_timeout`), and in the memory all bodies in flight hold together
//! (`max_body_memory`: past it, new bodies get 503 with `retry-after`).

use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use http::{HeaderMap, StatusCode, header};
use http_body::Body;
use http_body_util::BodyExt as _;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::error::ApiError;

/// The limits a body is read under.
#[derive(Debug, Clone, Copy)]
pub struct BodyLimits {
    /// Largest body.
    pub max_bytes: usize,
    /// Longest a body may take to arrive.
    pub timeout: Duration,
}

/// The bytes of request bodies held in memory at once, shared by all requests.
#[derive(Debug, Clone)]
pub struct BodyBudget(Arc<Semaphore>);

/// A body's share of the [`BodyBudget`], returned when dropped.
#[derive(Debug, Default)]
pub struct BodyHold(Option<OwnedSemaphorePermit>);

impl BodyBudget {
    /// A budget of `bytes`.
    pub fn new(bytes: usize) -> Self {
        Self(Arc::new(Semaphore::new(bytes.min(Semaphore::MAX_PERMITS))))
    }

    /// Takes `bytes` more for `hold`, or refuses when the budget is spent.
    fn take(&self, hold: &mut BodyHold, bytes: usize) -> Result<(), ApiError> {
        let Ok(n) = u32::try_from(bytes) else {
            return Err(overloaded());
        };
        let permit = self
            .0
            .clone()
            .try_acquire_many_owned(n)
            .map_err(|_| overloaded())?;
        match &mut hold.0 {
            Some(held) => held.merge(permit),
            None => hold.0 = Some(permit),
        }
        Ok(())
    }
}

/// The error a request gets when the body budget is spent.
fn overloaded() -> ApiError {
    ApiError::Overloaded {
        what: "request bodies",
    }
}

/// The error a body over `limit` bytes gets.
fn too_large(limit: usize) -> ApiError {
    ApiError::Client {
        status: StatusCode::PAYLOAD_TOO_LARGE,
        code: "request_too_large",
        param: None,
        message: format!("The request body exceeds the gateway's limit of {limit} bytes."),
    }
}

/// The `content-length` a request declares, if any.
pub fn declared_length(headers: &HeaderMap) -> Option<u64> {
    headers
        .get(header::CONTENT_LENGTH)?
        .to_str()
        .ok()?
        .trim()
        .parse()
        .ok()
}

/// Refuses a declared length over the limit before any byte is read.
///
/// # Errors
/// 413 when the request declares more than `limits.max_bytes`.
pub fn check_declared(headers: &HeaderMap, limits: &BodyLimits) -> Result<(), ApiError> {
    match declared_length(headers) {
        Some(n) if n > limits.max_bytes as u64 => Err(too_large(limits.max_bytes)),
        _ => Ok(()),
    }
}

/// Reads a body within `limits`, holding its bytes against `budget` (the hold
/// must live as long as the bytes do).
///
/// # Errors
/// 413 over the size limit, 408 past the deadline, 503 when the budget is
/// spent, 400 when the body cannot be read.
pub async fn read_body<B>(
    body: B,
    declared: Option<u64>,
    limits: &BodyLimits,
    budget: &BodyBudget,
) -> Result<(Bytes, BodyHold), ApiError>
where
    B: Body<Data = Bytes>,
    B::Error: std::error::Error + Send + Sync + 'static,
{
    let mut hold = BodyHold::default();
    if let Some(n) = declared {
        budget.take(&mut hold, usize::try_from(n).unwrap_or(usize::MAX))?;
    }
    let reading = collect(
        body,
        declared.is_none(),
        limits.max_bytes,
        budget,
        &mut hold,
    );
    let bytes = tokio::time::timeout(limits.timeout, reading)
        .await
        .map_err(|_| ApiError::Client {
            status: StatusCode::REQUEST_TIMEOUT,
            code: "request_timeout",
            param: None,
            message: format!(
                "The request body did not arrive within {} ms.",
                limits.timeout.as_millis()
            ),
        })??;
    Ok((bytes, hold))
}

/// Gathers the body's data frames; a single frame is kept without a copy.
/// `metered`: take budget for each frame as it arrives (no declared length).
async fn collect<B>(
    body: B,
    metered: bool,
    limit: usize,
    budget: &BodyBudget,
    hold: &mut BodyHold,
) -> Result<Bytes, ApiError>
where
    B: Body<Data = Bytes>,
    B::Error: std::error::Error + Send + Sync + 'static,
{
    let mut body = std::pin::pin!(body);
    let mut first: Option<Bytes> = None;
    let mut rest: Option<BytesMut> = None;
    let mut len = 0usize;
    while let Some(frame) = body.as_mut().frame().await {
        let frame = frame.map_err(|e| {
            ApiError::bad_request(format!("The request body could not be read: {e}"), None)
        })?;
        let Ok(data) = frame.into_data() else {
            continue;
        };
        len += data.len();
        if len > limit {
            return Err(too_large(limit));
        }
        if metered {
            budget.take(hold, data.len())?;
        }
        match (&mut first, &mut rest) {
            (None, _) => first = Some(data),
            (Some(head), None) => {
                let mut joined = BytesMut::with_capacity(len);
                joined.extend_from_slice(head);
                joined.extend_from_slice(&data);
                rest = Some(joined);
            }
            (Some(_), Some(joined)) => joined.extend_from_slice(&data),
        }
    }
    Ok(match (first, rest) {
        (_, Some(joined)) => joined.freeze(),
        (Some(only), None) => only,
        (None, None) => Bytes::new(),
    })
}
