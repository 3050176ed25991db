//! The server: listeners and connections ([`listener`]), dispatch by
//! listener role to the client-facing API ([`proxy`]) or the admin API
//! ([`crate::admin`]), and a panic inside a request turned into a 500.

pub mod body;
pub mod caller;
pub mod client_ip;
pub mod count_tokens;
pub mod h1;
pub mod intake;
pub mod listener;
pub mod proxy;
pub mod request_id;
#[cfg(test)]
mod tests;
pub mod tls;
pub mod workers;
pub mod write_timeout;

use std::future::Future;
use std::net::SocketAddr;
use std::panic::AssertUnwindSafe;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use http::{Request, Response};
use http_body::Body;

use crate::error::ApiError;
use crate::state::AppState;
use body::{ResponseBody, boxed};

/// Which listener a connection arrived on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// The client-facing OpenAI-compatible API.
    Proxy,
    /// The operators' admin API and metrics.
    Admin,
}

/// Answers one request that arrived on a listener of `role` from `peer`. The
/// service every connection runs, and what in-process tests drive: it is
/// generic over the request body, so a test needs no socket.
pub async fn respond<B>(
    state: Arc<AppState>,
    role: Role,
    peer: SocketAddr,
    req: Request<B>,
) -> Response<ResponseBody>
where
    B: Body<Data = Bytes> + Send + 'static,
    B::Error: std::error::Error + Send + Sync + 'static,
{
    let handling = async move {
        match role {
            Role::Proxy => proxy::handle(&state, req, peer).await,
            Role::Admin => crate::admin::handle(&state, req).await,
        }
    };
    CatchPanic(Some(Box::pin(handling))).await
}

/// A request future whose panic becomes a 500 response. What the panic left
/// behind is dropped through [`crate::accounting::drop_after_panic`], so a
/// request it ended is accounted once, as `internal_panic`.
struct CatchPanic<F>(Option<Pin<Box<F>>>);

impl<F: Future<Output = Response<ResponseBody>>> Future for CatchPanic<F> {
    type Output = Response<ResponseBody>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let Some(inner) = self.0.as_mut() else {
            return Poll::Ready(
                ApiError::Internal("polled after completion".into())
                    .into_response()
                    .map(boxed),
            );
        };
        match std::panic::catch_unwind(AssertUnwindSafe(|| inner.as_mut().poll(cx))) {
            Ok(Poll::Ready(response)) => {
                self.0 = None;
                Poll::Ready(response)
            }
            Ok(Poll::Pending) => Poll::Pending,
            Err(_) => {
                crate::accounting::drop_after_panic(self.0.take());
                tracing::error!("a request handler panicked; answered 500");
                let error = ApiError::Internal("request handler panicked".into());
                Poll::Ready(error.into_response().map(boxed))
            }
        }
    }
}
