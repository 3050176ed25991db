//! The accept loop: HTTP/1.1 and h2c on one port (hyper-util's auto builder),
//! `TCP_NODELAY` on every connection, and graceful connection shutdown that
//! cuts whatever is still running when the grace period ends.

pub mod client_ip;
pub mod request_id;
pub mod routes;

use std::net::SocketAddr;
use std::sync::Arc;

use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use tokio::net::TcpListener;
use tokio_util::task::TaskTracker;

use crate::app::AppState;

/// Which listener a connection arrived on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// The client-facing OpenAI-compatible API.
    Proxy,
    /// The operators' admin API and metrics.
    Admin,
}

/// Accepts connections until shutdown; each connection runs on `connections`.
pub async fn serve(
    listener: TcpListener,
    state: Arc<AppState>,
    connections: TaskTracker,
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
        connections.spawn(connection(TokioIo::new(stream), peer, state.clone(), role));
    }
}

async fn connection(
    io: TokioIo<tokio::net::TcpStream>,
    peer: SocketAddr,
    state: Arc<AppState>,
    role: Role,
) {
    let handler = state.clone();
    let service = service_fn(move |req| {
        let state = handler.clone();
        async move { Ok::<_, std::convert::Infallible>(routes::handle(state, req, peer, role).await) }
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
    if tokio::time::timeout(state.config.server.shutdown_grace, conn)
        .await
        .is_err()
    {
        tracing::warn!(%peer, "connection still busy at the end of the grace period; closing it");
    }
}
