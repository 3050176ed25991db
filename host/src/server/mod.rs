//! The server: the accept loop, HTTP/1.1 and h2c on one port (hyper-util's
//! auto builder), `TCP_NODELAY` on every connection, dispatch by listener role
//! to the client-facing API ([`proxy`]) or the admin API ([`crate::admin`]),
//! a panic inside a request turned into a 500, and graceful connection
//! shutdown that cuts whatever is still running when the grace period ends.

pub mod body;
pub mod client_ip;
pub mod intake;
pub mod proxy;
pub mod request_id;
#[cfg(test)]
mod tests;

use std::future::Future;
use std::net::SocketAddr;
use std::panic::AssertUnwindSafe;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use http::{Request, Response};
use http_body::Body;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

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

/// The connections of the listeners: their tasks, and the token that drops
/// the ones still open once shutdown has given up on them.
#[derive(Clone, Default)]
pub struct Connections {
    /// Every connection task.
    pub tracker: TaskTracker,
    /// Cancelled to drop the connections still open.
    pub abort: CancellationToken,
}

/// Accepts connections until shutdown; each connection runs on `connections`.
pub async fn serve(
    listener: TcpListener,
    state: Arc<AppState>,
    connections: Connections,
    role: Role,
) {
    loop {
        let (stream, peer) = tokio::select! {
            () = state.shutdown.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(e) => {
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(5)).await;
                    continue;
                }
            },
        };
        if let Err(e) = stream.set_nodelay(true) {
            tracing::debug!(error = %e, "cannot set TCP_NODELAY");
        }
        connections.tracker.spawn(connection(
            TokioIo::new(stream),
            peer,
            state.clone(),
            role,
            connections.abort.clone(),
        ));
    }
}

/// Serves one connection: until it closes, or — once shutdown begins — until
/// its in-flight requests finish (streams end themselves at the grace
/// period's cut-off) or shutdown drops it.
async fn connection(
    io: TokioIo<tokio::net::TcpStream>,
    peer: SocketAddr,
    state: Arc<AppState>,
    role: Role,
    abort: CancellationToken,
) {
    let handler = state.clone();
    let service = service_fn(move |req| {
        let state = handler.clone();
        async move { Ok::<_, std::convert::Infallible>(respond(state, role, peer, req).await) }
    });
    let builder = auto::Builder::new(TokioExecutor::new());
    let conn = builder.serve_connection(io, service);
    tokio::pin!(conn);
    tokio::select! {
        result = conn.as_mut() => {
            if let Err(e) = result {
                tracing::debug!(%peer, error = %e, "connection ended with an error");
            }
            return;
        }
        () = state.shutdown.cancelled() => conn.as_mut().graceful_shutdown(),
    }
    tokio::select! {
        _ = conn => {}
        () = abort.cancelled() => {
            tracing::warn!(%peer, "connection still busy after the cut-off; dropping it");
        }
    }
}
