//! Reading a request body, bounded three ways: in size (`max_body_bytes`; a
//! declared length over it is refused before a byte is read), in time
//! (`body_timeout`), and in the memory all bodies in flight hold together
//! (`max_body_memory`, charged as bytes arrive: past it, a body gets 503 with
//! `retry-after`). A quarter of that memory is kept for small bodies (up to
//! [`SMALL_BODY`]), so large uploads that stall cannot starve ordinary
//! requests.

use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use http::{HeaderMap, StatusCode};
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

impl BodyLimits {
    /// The limits `[server]` sets (`max_body_bytes`, `body_timeout`).
    pub fn of(server: &crate::config::ServerConfig) -> Self {
        Self {
            max_bytes: server.max_body_bytes,
            timeout: server.body_timeout,
        }
    }
}

/// Bodies up to this size may draw on the budget's reserve.
pub const SMALL_BODY: usize = 64 << 10;

/// The bytes of request bodies held in memory at once, shared by all
/// requests: the main pool, and a reserve only small bodies may use.
#[derive(Debug, Clone)]
pub struct BodyBudget {
    main: Arc<Semaphore>,
    reserve: Arc<Semaphore>,
}

/// A body's share of the [`BodyBudget`], returned when dropped.
#[derive(Debug, Default)]
pub struct BodyHold {
    held: usize,
    permits: Vec<OwnedSemaphorePermit>,
}

impl BodyBudget {
    /// A budget of `bytes` in all, a quarter of it reserved for small bodies.
    pub fn new(bytes: usize) -> Self {
        let bytes = bytes.min(Semaphore::MAX_PERMITS);
        let reserve = bytes / 4;
        Self {
            main: Arc::new(Semaphore::new(bytes - reserve)),
            reserve: Arc::new(Semaphore::new(reserve)),
        }
    }

    /// Takes `bytes` more for `hold` from the main pool, or — while the body
    /// stays small — from the reserve; refuses when neither has room.
    fn take(&self, hold: &mut BodyHold, bytes: usize) -> Result<(), ApiError> {
        let Ok(n) = u32::try_from(bytes) else {
            return Err(overloaded());
        };
        let small = hold.held + bytes <= SMALL_BODY;
        let permit = match self.main.clone().try_acquire_many_owned(n) {
            Ok(permit) => permit,
            Err(_) if small => self
                .reserve
                .clone()
                .try_acquire_many_owned(n)
                .map_err(|_| overloaded())?,
            Err(_) => return Err(overloaded()),
        };
        hold.held += bytes;
        hold.permits.push(permit);
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

/// Refuses a declared length over the limit before any byte is read.
///
/// # Errors
/// 413 when the request declares more than `limits.max_bytes`.
pub fn check_declared(headers: &HeaderMap, limits: &BodyLimits) -> Result<(), ApiError> {
    match crate::http1::content_length(headers).ok().flatten() {
        Some(n) if n > limits.max_bytes as u64 => Err(too_large(limits.max_bytes)),
        _ => Ok(()),
    }
}

/// Reads a body within `limits`, holding its bytes against `budget` as they
/// arrive (the hold must live as long as the bytes do).
///
/// # Errors
/// 413 over the size limit, 408 past the deadline, 503 when the budget is
/// spent, 400 when the body cannot be read.
pub async fn read_body<B>(
    body: B,
    limits: &BodyLimits,
    budget: &BodyBudget,
) -> Result<(Bytes, BodyHold), ApiError>
where
    B: Body<Data = Bytes>,
    B::Error: std::error::Error + Send + Sync + 'static,
{
    let mut hold = BodyHold::default();
    let reading = collect(body, limits.max_bytes, budget, &mut hold);
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
/// Budget is taken for each frame as it arrives.
async fn collect<B>(
    body: B,
    limit: usize,
    budget: &BodyBudget,
    hold: &mut BodyHold,
) -> Result<Bytes, ApiError>
where
    B: Body<Data = Bytes>,
    B::Error: std::error::Error + Send + Sync + 'static,
{
    let mut body = std::pin::pin!(body);
    // Frames are kept as they arrive (each the size of its data) and joined
    // once at the end, so a body that stalls holds what it sent, not a
    // doubling buffer.
    let mut frames: Vec<Bytes> = Vec::new();
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
        budget.take(hold, data.len())?;
        frames.push(data);
    }
    Ok(match frames.len() {
        0 => Bytes::new(),
        1 => frames.swap_remove(0),
        _ => {
            let mut joined = BytesMut::with_capacity(len);
            for frame in &frames {
                joined.extend_from_slice(frame);
            }
            joined.freeze()
        }
    })
}
