//! The gateway's own HTTP/1.1 client for plain-http channels: the request's
//! task writes the request and reads the response on a pooled connection
//! itself (pingora's model), so a request costs no connection task, no
//! dispatch channel and no spawned task to return the connection.
//!
//! The request head and body go out in one write; the response head is
//! parsed with `httparse`; the body is framed by [`super::framing`] and hands
//! its connection back to [`super::pool`] once read to its end. A connection
//! taken from the pool that turns out closed before any byte of the answer
//! arrived is replaced by a new one and the request sent again, once.

use std::pin::Pin;
use std::task::{Context, Poll, ready};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use http::header::{self, HeaderMap, HeaderName};
use http::uri::Authority;
use http::{Method, Request, Response, StatusCode, Version};
use http_body::Frame;
use tokio::io::AsyncWriteExt;

use super::conn::{self, Conn};
use super::pool;
use crate::http1::BodyRead;
use crate::http1::framing::{Chunk, Framing, Malformed};
use crate::http1::{content_length, field_map, has_token, locate_fields};

/// Largest response head accepted.
const MAX_HEAD: usize = 64 * 1024;

/// Most response header fields accepted.
const MAX_HEADERS: usize = 128;

/// Request bodies up to this size are copied behind the head and sent in one
/// write; larger ones follow it in a second.
pub(super) const COALESCE_BODY: usize = 64 * 1024;

/// Why an upstream exchange failed.
#[derive(Debug)]
pub enum Error {
    /// The request's URI names no host.
    NoAuthority,
    /// The connection could not be opened (in time).
    Connect(std::io::Error),
    /// Reading or writing the connection failed.
    Io(std::io::Error),
    /// The upstream closed the connection before the end of the head.
    ClosedBeforeHead,
    /// The upstream closed the connection before the end of the body.
    Cut,
    /// The head could not be parsed, or broke a limit.
    BadHead(&'static str),
    /// The body broke its framing.
    BadBody(Malformed),
}

impl std::fmt::Display for Error {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::NoAuthority => f.write_str("upstream URI has no host"),
            Self::Connect(e) => write!(f, "upstream connect failed: {e}"),
            Self::Io(e) => write!(f, "upstream connection failed: {e}"),
            Self::ClosedBeforeHead => {
                f.write_str("upstream closed the connection before answering")
            }
            Self::Cut => f.write_str("upstream closed the connection mid-body"),
            Self::BadHead(why) => write!(f, "malformed upstream response head: {why}"),
            Self::BadBody(m) => write!(f, "malformed upstream body: {}", m.0),
        }
    }
}

impl std::error::Error for Error {}

/// Sends `request` over a pooled or new connection to its authority and
/// returns the response once its head has arrived.
///
/// # Errors
/// When the upstream cannot be reached or answers with a broken head.
pub async fn send(
    request: Request<Bytes>,
    connect_timeout: Duration,
) -> Result<Response<Body>, Error> {
    let (parts, body) = request.into_parts();
    let authority = parts.uri.authority().cloned().ok_or(Error::NoAuthority)?;
    let message = Message::new(&parts, &authority, body);
    if let Some(conn) = pool::checkout(&authority) {
        match exchange(conn, &message).await {
            Err(Failed { error, retry }) if !retry => return Err(error),
            Err(_) => {}
            Ok(answer) => return Ok(answer.into_response(authority)),
        }
    }
    let conn = conn::connect(&authority, connect_timeout)
        .await
        .map_err(Error::Connect)?;
    exchange(conn, &message)
        .await
        .map(|answer| answer.into_response(authority))
        .map_err(|failed| failed.error)
}

/// A request as it goes on the wire: its head, with the body behind it when
/// small enough to go in the same write, else the body apart.
struct Message {
    head: Vec<u8>,
    large_body: Option<Bytes>,
}

impl Message {
    fn new(parts: &http::request::Parts, authority: &Authority, body: Bytes) -> Self {
        let coalesce = body.len() <= COALESCE_BODY;
        let room = if coalesce { body.len() } else { 0 };
        let mut head = request_head(parts, authority, body.len(), room);
        if coalesce {
            head.extend_from_slice(&body);
        }
        Self {
            head,
            large_body: (!coalesce).then_some(body),
        }
    }
}

/// The request line and header fields, with the `host` and `content-length`
/// the exchange needs (and room for `room` more bytes); the caller's own
/// framing fields are dropped.
fn request_head(
    parts: &http::request::Parts,
    authority: &Authority,
    body: usize,
    room: usize,
) -> Vec<u8> {
    const FRAMING: [HeaderName; 4] = [
        header::HOST,
        header::CONTENT_LENGTH,
        header::TRANSFER_ENCODING,
        header::CONNECTION,
    ];
    let mut head = Vec::with_capacity(256 + room);
    head.extend_from_slice(parts.method.as_str().as_bytes());
    head.push(b' ');
    let target = parts.uri.path_and_query().map_or("/", |p| p.as_str());
    head.extend_from_slice(target.as_bytes());
    head.extend_from_slice(b" HTTP/1.1\r\nhost: ");
    head.extend_from_slice(authority.as_str().as_bytes());
    head.extend_from_slice(b"\r\n");
    for (name, value) in &parts.headers {
        if !FRAMING.contains(name) {
            head.extend_from_slice(name.as_str().as_bytes());
            head.extend_from_slice(b": ");
            head.extend_from_slice(value.as_bytes());
            head.extend_from_slice(b"\r\n");
        }
    }
    if body > 0 || !matches!(parts.method, Method::GET | Method::HEAD) {
        head.extend_from_slice(b"content-length: ");
        head.extend_from_slice(itoa::Buffer::new().format(body).as_bytes());
        head.extend_from_slice(b"\r\n");
    }
    head.extend_from_slice(b"\r\n");
    head
}

/// A failed exchange, and whether it failed before the upstream could have
/// seen or answered the request (so a fresh connection may try again).
struct Failed {
    error: Error,
    retry: bool,
}

/// A response head and the connection its body is on.
struct Answer {
    head: http::response::Parts,
    conn: Conn,
    framing: Framing,
    keep_alive: bool,
}

impl Answer {
    fn into_response(self, authority: Authority) -> Response<Body> {
        let reuse = (self.keep_alive && self.framing.delimited()).then_some(authority);
        let mut body = Body {
            conn: Some(self.conn),
            framing: self.framing,
            reuse,
        };
        if self.framing == Framing::Length(0) {
            body.release();
        }
        Response::from_parts(self.head, body)
    }
}

/// Writes the request and reads the response head.
async fn exchange(mut conn: Conn, message: &Message) -> Result<Answer, Failed> {
    let mut written = conn.io_mut().write_all(&message.head).await;
    if let (Ok(()), Some(body)) = (&written, &message.large_body) {
        written = conn.io_mut().write_all(body).await;
    }
    written.map_err(|e| Failed {
        error: Error::Io(e),
        retry: true,
    })?;
    // Whether the upstream sent any byte: after one, the request is never
    // sent again.
    let mut heard = false;
    loop {
        if let Some((head, framing, keep_alive)) =
            parse_head(conn.buf_mut()).map_err(|error| Failed {
                error,
                retry: false,
            })?
        {
            if head.status.is_informational() && head.status != StatusCode::SWITCHING_PROTOCOLS {
                continue;
            }
            return Ok(Answer {
                head,
                conn,
                framing,
                keep_alive,
            });
        }
        match conn.fill().await {
            Ok(0) => {
                return Err(Failed {
                    error: Error::ClosedBeforeHead,
                    retry: !heard,
                });
            }
            Ok(_) => heard = true,
            Err(e) => {
                return Err(Failed {
                    error: Error::Io(e),
                    retry: !heard,
                });
            }
        }
    }
}

/// Parses a complete response head off the front of `buf`: its parts, the
/// body's framing and whether the connection stays open; `None` while the
/// head is incomplete.
fn parse_head(buf: &mut BytesMut) -> Result<Option<(http::response::Parts, Framing, bool)>, Error> {
    if buf.is_empty() {
        return Ok(None);
    }
    let mut fields = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut parsed = httparse::Response::new(&mut fields);
    let len = match parsed.parse(buf) {
        Ok(httparse::Status::Complete(len)) => len,
        Ok(httparse::Status::Partial) if buf.len() > MAX_HEAD => {
            return Err(Error::BadHead("head too large"));
        }
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(httparse::Error::TooManyHeaders) => return Err(Error::BadHead("too many fields")),
        Err(_) => return Err(Error::BadHead("not an HTTP/1 response")),
    };
    let status = parsed
        .code
        .and_then(|code| StatusCode::from_u16(code).ok())
        .ok_or(Error::BadHead("bad status"))?;
    let version = if parsed.version == Some(1) {
        Version::HTTP_11
    } else {
        Version::HTTP_10
    };
    let located = locate_fields(buf, parsed.headers).map_err(Error::BadHead)?;
    let raw = buf.split_to(len).freeze();
    // Room for the fields the gateway adds to the client's answer.
    let headers = field_map(&raw, located, 8).map_err(Error::BadHead)?;
    let framing = framing(status, &headers)?;
    // A head with both framings is read by its transfer coding, and its
    // connection not trusted with another request (RFC 9112 §6.1).
    let both_framings = headers.contains_key(header::TRANSFER_ENCODING)
        && headers.contains_key(header::CONTENT_LENGTH);
    let keep_alive = version == Version::HTTP_11
        && !both_framings
        && !has_token(&headers, header::CONNECTION, "close");
    let mut head = Response::new(()).into_parts().0;
    head.status = status;
    head.version = version;
    head.headers = headers;
    Ok(Some((head, framing, keep_alive)))
}

/// How the body of a response with this status and these fields ends.
fn framing(status: StatusCode, headers: &HeaderMap) -> Result<Framing, Error> {
    if status.is_informational()
        || status == StatusCode::NO_CONTENT
        || status == StatusCode::NOT_MODIFIED
    {
        return Ok(Framing::Length(0));
    }
    if let Some(codings) = headers
        .get_all(header::TRANSFER_ENCODING)
        .iter()
        .next_back()
    {
        let last = codings
            .as_bytes()
            .rsplit(|b| *b == b',')
            .next()
            .unwrap_or_default();
        return Ok(if last.trim_ascii().eq_ignore_ascii_case(b"chunked") {
            Framing::Chunked(Chunk::Size)
        } else {
            Framing::UntilClose
        });
    }
    let length = content_length(headers).map_err(Error::BadHead)?;
    Ok(length.map_or(Framing::UntilClose, Framing::Length))
}

/// A response body read straight off its connection, which goes back to the
/// pool when the body has been read to its end (and is closed when the body
/// is dropped before that, which cancels the upstream's work).
pub struct Body {
    conn: Option<Conn>,
    framing: Framing,
    reuse: Option<Authority>,
}

impl Body {
    /// The body is complete: its connection goes back to the pool if it can
    /// carry another request.
    fn release(&mut self) {
        if let (Some(conn), Some(authority)) = (self.conn.take(), self.reuse.take())
            && conn.buf().is_empty()
        {
            pool::checkin(authority, conn);
        }
    }
}

impl http_body::Body for Body {
    type Data = Bytes;
    type Error = Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Error>>> {
        let this = self.get_mut();
        let Some(conn) = this.conn.as_mut() else {
            return Poll::Ready(None);
        };
        let read = ready!(conn.poll_body(&mut this.framing, cx));
        let error = match read {
            BodyRead::Data(data, last) => {
                if last {
                    this.release();
                }
                return Poll::Ready(Some(Ok(Frame::data(data))));
            }
            BodyRead::End => {
                this.release();
                return Poll::Ready(None);
            }
            BodyRead::Malformed(malformed) => Error::BadBody(malformed),
            BodyRead::Cut => Error::Cut,
            BodyRead::Io(e) => Error::Io(e),
        };
        this.conn = None;
        Poll::Ready(Some(Err(error)))
    }

    fn is_end_stream(&self) -> bool {
        self.conn.is_none()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        match (&self.conn, self.framing) {
            (None, _) => http_body::SizeHint::with_exact(0),
            (Some(_), Framing::Length(left)) => http_body::SizeHint::with_exact(left),
            (Some(_), _) => http_body::SizeHint::default(),
        }
    }
}
