//! The gateway's own HTTP/1.1 server for plain connections: the
//! connection's task reads each request head ([`head`]), runs the request
//! (whose body the request itself reads off the socket, [`body`]) and writes
//! the response ([`write`]) — no dispatcher between socket and request, no
//! channel carrying the body, no task beside the connection's own.
//! What hyper's server did here it does too: keep-alive and pipelining,
//! `100 Continue` (when the request first reads its body), chunked bodies
//! both ways, the header-read timeout that also closes idle connections
//! (one timer per connection, moved lazily), a client's close noticed while
//! its answer is awaited (which cancels the request), and graceful shutdown
//! (the answer in flight says `connection: close`). Malformed heads get the
//! API's JSON error. A client that opens with HTTP/2's preface is told apart
//! by [`sniff`] and served by hyper ([`Rewind`]).

pub mod body;
pub mod head;
pub mod rewind;
#[cfg(test)]
mod tests;
pub mod write;

use std::future::Future;
use std::pin::Pin;
use std::task::Poll;
use std::time::Duration;

use bytes::BytesMut;
use http::{Method, Request, Response, Version};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio::time::{Instant, Sleep};
use tokio_util::sync::{CancellationToken, WaitForCancellationFuture};

use super::body::{ResponseBody, boxed};
use super::write_timeout::WriteTimeout;
use crate::error::ApiError;
pub use body::RequestBody;
use body::{Inbound, Returned};
use head::Head;
pub use rewind::Rewind;
use write::{Reply, Unsent};

/// HTTP/2's connection preface (RFC 9113 §3.4).
const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// What a client's first bytes say it speaks.
#[derive(Debug, PartialEq, Eq)]
pub enum Speaks {
    /// HTTP/2 with prior knowledge (h2c).
    Http2,
    /// Anything else: HTTP/1.
    Http1,
}

/// Reads until the first bytes tell HTTP/2's preface from anything else.
/// `None` when the client closes, or sends nothing within `timeout`.
pub async fn sniff(
    stream: &mut TcpStream,
    buf: &mut BytesMut,
    timeout: Duration,
) -> Option<Speaks> {
    let reading = async {
        loop {
            let seen = buf.len().min(PREFACE.len());
            if buf[..seen] != PREFACE[..seen] {
                return Some(Speaks::Http1);
            }
            if seen == PREFACE.len() {
                return Some(Speaks::Http2);
            }
            buf.reserve(8 << 10);
            match tokio::io::AsyncReadExt::read_buf(stream, buf).await {
                Ok(0) | Err(_) => return None,
                Ok(_) => {}
            }
        }
    };
    tokio::time::timeout(timeout, reading).await.ok().flatten()
}

/// The connection's limits.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Longest a head may take to arrive, and a connection may idle.
    pub header_timeout: Duration,
    /// Longest a write to the client may stay blocked.
    pub write_timeout: Duration,
}

/// Serves HTTP/1 on `stream` (`read` already read from it) until the client
/// closes, a limit ends it, or — once `shutdown` is cancelled — the request
/// in flight has been answered. `handle` answers each request.
pub async fn serve<H, F>(
    stream: TcpStream,
    read: BytesMut,
    limits: Limits,
    shutdown: &CancellationToken,
    mut handle: H,
) where
    H: FnMut(Request<RequestBody>) -> F,
    F: Future<Output = Response<ResponseBody>>,
{
    let (reader, writer) = stream.into_split();
    let mut io = WriteTimeout::new(writer, limits.write_timeout);
    let mut inbound = Inbound::new(reader, read);
    let back = Returned::default();
    let mut timer = HeadTimer::new(limits.header_timeout);
    let mut stopping = std::pin::pin!(shutdown.cancelled());
    let mut out = Vec::with_capacity(1024);
    loop {
        let head = match read_head(&mut inbound, &mut timer, stopping.as_mut()).await {
            Ok(Some(head)) => head,
            Ok(None) => return,
            Err(refusal) => {
                let response = refusal.into_response().map(boxed);
                let reply = Reply {
                    keep_alive: false,
                    head_only: false,
                    http10: false,
                };
                if write::send(&mut io, &mut out, response, reply, &back)
                    .await
                    .is_ok()
                {
                    let _ = io.shutdown().await;
                }
                return;
            }
        };
        let Head {
            parts,
            framing,
            keep_alive,
            expect_continue,
        } = head;
        let reply = Reply {
            keep_alive,
            head_only: parts.method == Method::HEAD,
            http10: parts.version == Version::HTTP_10,
        };
        let body = RequestBody::new(inbound, framing, &back, expect_continue);
        let request = Request::from_parts(parts, body);
        let Some(response) = back.unless_closed(handle(request)).await else {
            return;
        };
        // The connection carries another request only if this one's body was
        // read to its end and the gateway is not shutting down.
        let reply = Reply {
            keep_alive: reply.keep_alive
                && back.is_here()
                && !shutdown.is_cancelled()
                && !crate::http1::has_token(response.headers(), http::header::CONNECTION, "close"),
            ..reply
        };
        match write::send(&mut io, &mut out, response, reply, &back).await {
            Ok(true) => {}
            Ok(false) => {
                let _ = io.shutdown().await;
                return;
            }
            Err(Unsent::Io(e)) => {
                tracing::debug!(error = %e, "writing the answer failed");
                return;
            }
            Err(Unsent::Gone | Unsent::WrongLength) => return,
        }
        let Some(next) = back.take() else {
            return;
        };
        inbound = next;
    }
}

/// Reads the next request head: `Ok(None)` when the client closes, the
/// header-read timeout passes, or shutdown finds the connection idle.
///
/// # Errors
/// A head the client is answered with an error for.
async fn read_head(
    inbound: &mut Inbound,
    timer: &mut HeadTimer,
    mut stopping: Pin<&mut WaitForCancellationFuture<'_>>,
) -> Result<Option<Head>, ApiError> {
    timer.arm();
    loop {
        if let Some(head) = head::parse(inbound.buf_mut())? {
            return Ok(Some(head));
        }
        let idle = inbound.buf().is_empty();
        let read = std::future::poll_fn(|cx| {
            if let Poll::Ready(read) = inbound.poll_fill(cx) {
                return Poll::Ready(Some(read));
            }
            if timer.poll_expired(cx) || (idle && stopping.as_mut().poll(cx).is_ready()) {
                return Poll::Ready(None);
            }
            Poll::Pending
        })
        .await;
        match read {
            Some(Ok(n)) if n > 0 => {}
            _ => return Ok(None),
        }
    }
}

/// The header-read deadline of a connection: one timer for its whole life,
/// moved only when it fires before the current deadline — arming it for each
/// request is a clock read, not a timer-wheel update.
struct HeadTimer {
    sleep: Pin<Box<Sleep>>,
    deadline: Instant,
    timeout: Duration,
}

impl HeadTimer {
    fn new(timeout: Duration) -> Self {
        let deadline = Instant::now() + timeout;
        Self {
            sleep: Box::pin(tokio::time::sleep_until(deadline)),
            deadline,
            timeout,
        }
    }

    /// Starts the wait for a head.
    fn arm(&mut self) {
        self.deadline = Instant::now() + self.timeout;
    }

    /// Whether the deadline has passed; registers for a wake-up when not.
    fn poll_expired(&mut self, cx: &mut std::task::Context<'_>) -> bool {
        while self.sleep.as_mut().poll(cx).is_ready() {
            if Instant::now() >= self.deadline {
                return true;
            }
            self.sleep.as_mut().reset(self.deadline);
        }
        false
    }
}
