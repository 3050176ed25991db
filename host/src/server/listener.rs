//! The accept loop and each connection: HTTP/1.1 and h2c on one port (plain
//! HTTP/1 on the gateway's own server, [`super::h1`]; h2c, and everything
//! when `server.direct_http` is off, on hyper-util's auto builder), or both
//! over TLS on hyper's (ALPN `h2`, `http/1.1`; the handshake bounded by the
//! header-read timeout), `TCP_NODELAY`, a cap on open connections (a
//! clear 503 beyond it), a header-read timeout that also closes idle
//! keep-alive connections, a write timeout for clients that stop reading,
//! back-off when the process runs out of file descriptors, and graceful
//! connection shutdown with a hard cut-off.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use bytes::BytesMut;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::Role;
use super::h1::{self, Speaks};
use super::write_timeout::WriteTimeout;
use crate::metrics::ShedLabels;
use crate::state::AppState;

/// Connections the admin listener keeps open at once.
const MAX_ADMIN_CONNECTIONS: usize = 64;
/// First pause after the process ran out of file descriptors; it doubles up
/// to [`MAX_ACCEPT_BACKOFF`] while accepting keeps failing.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(10);
/// Longest pause between accept attempts.
const MAX_ACCEPT_BACKOFF: Duration = Duration::from_secs(1);
/// At most one log line per this interval about failing accepts.
const ACCEPT_LOG_INTERVAL: Duration = Duration::from_secs(10);

/// The most a connection buffers of what a client sent before the gateway
/// takes it (hyper's default grows to ~400 KiB): with thousands of
/// connections, what stalled uploads can park in connection buffers stays
/// small. Request heads must fit.
const MAX_READ_BUFFER: usize = 64 << 10;

/// What a connection over the cap is told before it is closed.
const REFUSAL: &[u8] = b"HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\nretry-after: 1\r\nconnection: close\r\ncontent-length: 137\r\n\r\n{\"error\":{\"message\":\"The gateway is at its connection limit; please retry shortly.\",\"type\":\"api_error\",\"param\":null,\"code\":\"overloaded\"}}";

/// The connections of the listeners: their tasks, and the token that drops
/// the ones still open once shutdown has given up on them.
#[derive(Clone, Default)]
pub struct Connections {
    /// Every connection task.
    pub tracker: TaskTracker,
    /// Cancelled to drop the connections still open.
    pub abort: CancellationToken,
}

/// What ends one accept loop's connections: shutdown's start (finish what is
/// in flight) and its cut-off (drop what is left). Each loop holds children
/// of the gateway's tokens: a connection checks them at every wake-up, and a
/// token's check takes its lock, which every worker's connections would
/// otherwise share.
#[derive(Clone)]
struct Stops {
    shutdown: CancellationToken,
    abort: CancellationToken,
}

/// Raises the soft limit on open files to the hard limit, so the connection
/// cap, not the OS, decides when connections are refused; logs both.
pub fn raise_open_files_limit() {
    use rustix::process::{Resource, Rlimit, getrlimit, setrlimit};
    let limit = getrlimit(Resource::Nofile);
    if limit.current == limit.maximum {
        tracing::info!(open_files = ?limit.current, "open-file limit");
        return;
    }
    let raised = Rlimit {
        current: limit.maximum,
        maximum: limit.maximum,
    };
    match setrlimit(Resource::Nofile, raised) {
        Ok(()) => {
            tracing::info!(from = ?limit.current, to = ?limit.maximum, "open-file limit raised to the hard limit")
        }
        Err(e) => {
            tracing::warn!(limit = ?limit.current, error = %e, "cannot raise the open-file limit")
        }
    }
}

/// What the sockets of one listener share (the per-core workers each accept
/// on a socket of their own): the cap on open connections, and when failing
/// accepts were last logged.
pub struct ListenerShare {
    open: Arc<Semaphore>,
    logged: Mutex<FailureLog>,
}

/// Failing accepts not logged yet, and when the last line was written.
#[derive(Default)]
struct FailureLog {
    suppressed: u64,
    at: Option<Instant>,
}

impl ListenerShare {
    /// The shared state of a new listener of `role`.
    pub fn new(state: &AppState, role: Role) -> Arc<Self> {
        Arc::new(Self {
            open: Arc::new(Semaphore::new(match role {
                Role::Proxy => state.config.server.max_connections,
                Role::Admin => MAX_ADMIN_CONNECTIONS,
            })),
            logged: Mutex::default(),
        })
    }

    /// Logs a failed accept at most once per [`ACCEPT_LOG_INTERVAL`] over
    /// all of the listener's sockets, with the count since the last line.
    fn log_failure(&self, error: &std::io::Error) {
        let mut log = self.logged.lock().unwrap_or_else(PoisonError::into_inner);
        log.suppressed += 1;
        if log.at.is_none_or(|at| at.elapsed() >= ACCEPT_LOG_INTERVAL) {
            tracing::warn!(error = %error, failures = log.suppressed, "accepting connections fails; backing off");
            log.at = Some(Instant::now());
            log.suppressed = 0;
        }
    }
}

/// Accepts connections until shutdown, under the listener's cap; each
/// connection runs on `connections`, on the runtime that polls this, over
/// TLS when `tls` is given.
pub async fn serve(
    listener: TcpListener,
    state: Arc<AppState>,
    connections: Connections,
    (role, tls): (Role, Option<TlsAcceptor>),
    share: Arc<ListenerShare>,
) {
    let mut failures = AcceptFailures::default();
    let stops = Stops {
        shutdown: state.shutdown.child_token(),
        abort: connections.abort.child_token(),
    };
    loop {
        let (stream, peer) = tokio::select! {
            () = stops.shutdown.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok(accepted) => {
                    failures.reset();
                    accepted
                }
                Err(e) => {
                    share.log_failure(&e);
                    tokio::time::sleep(failures.record(&e)).await;
                    continue;
                }
            },
        };
        let Ok(permit) = share.open.clone().try_acquire_owned() else {
            refuse(&state, stream);
            continue;
        };
        if let Err(e) = stream.set_nodelay(true) {
            tracing::debug!(error = %e, "cannot set TCP_NODELAY");
        }
        connections.tracker.spawn(connection(
            stream,
            peer,
            state.clone(),
            (role, tls.clone()),
            stops.clone(),
            permit,
        ));
    }
}

/// Tells a connection over the cap why it is closed (best effort, without
/// waiting), counts it, and closes it.
fn refuse(state: &AppState, stream: TcpStream) {
    let _ = stream.try_write(REFUSAL);
    state
        .metrics
        .shed
        .get_or_create(&ShedLabels {
            reason: "connections",
        })
        .inc();
}

/// How long this socket pauses after failed accepts since its last success.
#[derive(Default)]
struct AcceptFailures {
    backoff: Option<Duration>,
}

impl AcceptFailures {
    fn reset(&mut self) {
        self.backoff = None;
    }

    /// Records a failed accept; the pause before the next attempt. Running
    /// out of file descriptors backs off exponentially.
    fn record(&mut self, error: &std::io::Error) -> Duration {
        let exhausted = matches!(error.raw_os_error(), Some(23 | 24)); // ENFILE, EMFILE
        if !exhausted {
            return Duration::from_millis(5);
        }
        let next = self
            .backoff
            .map_or(ACCEPT_BACKOFF, |b| (b * 2).min(MAX_ACCEPT_BACKOFF));
        self.backoff = Some(next);
        next
    }
}

/// Serves one connection (after its TLS handshake, when `tls` is given):
/// until it closes, or — once shutdown begins — until its in-flight requests
/// finish (streams end themselves at the grace period's cut-off) or shutdown
/// drops it. `_open` is its place under the cap.
async fn connection(
    stream: TcpStream,
    peer: SocketAddr,
    state: Arc<AppState>,
    (role, tls): (Role, Option<TlsAcceptor>),
    stops: Stops,
    _open: OwnedSemaphorePermit,
) {
    let Some(acceptor) = tls else {
        return plain(stream, peer, &state, role, stops).await;
    };
    let handshake =
        tokio::time::timeout(state.config.server.header_timeout, acceptor.accept(stream));
    match handshake.await {
        Ok(Ok(stream)) => http(stream, peer, &state, role, stops).await,
        Ok(Err(e)) => {
            state.metrics.tls_handshake_failures.inc();
            tracing::debug!(%peer, error = %e, "TLS handshake failed");
        }
        Err(_) => {
            state.metrics.tls_handshake_failures.inc();
            tracing::debug!(%peer, "TLS handshake timed out");
        }
    }
}

/// Serves a plain connection: HTTP/1 on the gateway's own server, HTTP/2
/// (or everything, with `server.direct_http` off) on hyper's.
async fn plain(
    mut stream: TcpStream,
    peer: SocketAddr,
    state: &Arc<AppState>,
    role: Role,
    stops: Stops,
) {
    let server = &state.config.server;
    if !server.direct_http {
        return http(stream, peer, state, role, stops).await;
    }
    let mut read = BytesMut::with_capacity(8 << 10);
    let speaks = tokio::select! {
        speaks = h1::sniff(&mut stream, &mut read, server.header_timeout) => speaks,
        () = stops.shutdown.cancelled() => None,
    };
    match speaks {
        None => {}
        Some(Speaks::Http2) => {
            let rewound = h1::Rewind::new(read.freeze(), stream);
            http(rewound, peer, state, role, stops).await;
        }
        Some(Speaks::Http1) => {
            let limits = h1::Limits {
                header_timeout: server.header_timeout,
                write_timeout: server.write_timeout,
            };
            let serving = h1::serve(stream, read, limits, &stops.shutdown, |req| {
                super::respond(state.clone(), role, peer, req)
            });
            until_cut_off(serving, peer, &stops.abort).await;
        }
    }
}

/// Serves HTTP/1.1 or HTTP/2 on an established connection.
async fn http<S>(stream: S, peer: SocketAddr, state: &Arc<AppState>, role: Role, stops: Stops)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let server = &state.config.server;
    let io = TokioIo::new(WriteTimeout::new(stream, server.write_timeout));
    let handler = state.clone();
    let service = service_fn(move |req| {
        let state = handler.clone();
        async move { Ok::<_, std::convert::Infallible>(super::respond(state, role, peer, req).await) }
    });
    let mut builder = auto::Builder::new(TokioExecutor::new());
    // The header-read timeout also bounds how long a keep-alive connection
    // may wait, idle, for its next request.
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(server.header_timeout)
        .max_buf_size(MAX_READ_BUFFER);
    builder
        .http2()
        .timer(TokioTimer::new())
        .keep_alive_interval(server.header_timeout)
        .keep_alive_timeout(server.header_timeout);
    let conn = builder.serve_connection(io, service);
    tokio::pin!(conn);
    tokio::select! {
        result = conn.as_mut() => {
            if let Err(e) = result {
                tracing::debug!(%peer, error = %e, "connection ended with an error");
            }
            return;
        }
        () = stops.shutdown.cancelled() => conn.as_mut().graceful_shutdown(),
    }
    until_cut_off(conn, peer, &stops.abort).await;
}

/// Runs a connection's `serving` until it ends, or drops it (with a warning)
/// when shutdown's cut-off comes first.
async fn until_cut_off<F: std::future::Future>(
    serving: F,
    peer: SocketAddr,
    abort: &CancellationToken,
) {
    tokio::select! {
        _ = serving => {}
        () = abort.cancelled() => {
            tracing::warn!(%peer, "connection still busy after the cut-off; dropping it");
        }
    }
}
