//! Writing a response to the client: the head (with the framing the body
//! needs, a cached `date`, and `connection: close` when the connection ends
//! after it), then the body's frames as they come — every frame already
//! produced goes out in the same write, none waits for a later one, so a
//! stream's events reach the client as soon as the relay has them.

use std::cell::Cell;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::{SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use http::header::{self, HeaderName};
use http::{Response, StatusCode};
use http_body::{Body as _, SizeHint};
use tokio::io::{AsyncWrite, AsyncWriteExt};

use super::body::Returned;
use crate::server::body::ResponseBody;

/// Frames up to this size are copied into the pending write; larger ones are
/// written as they are, after it.
const COALESCE: usize = 16 << 10;

/// Fields the server owns: whatever a handler set for them is replaced.
const FRAMING_FIELDS: [HeaderName; 4] = [
    header::CONNECTION,
    header::CONTENT_LENGTH,
    header::TRANSFER_ENCODING,
    HeaderName::from_static("keep-alive"),
];

/// How the response is to be sent.
#[derive(Debug, Clone, Copy)]
pub struct Reply {
    /// The connection may carry another request after this one.
    pub keep_alive: bool,
    /// The request was `HEAD`: the head only.
    pub head_only: bool,
    /// The request was HTTP/1.0: no chunked coding.
    pub http10: bool,
}

/// How the response's body ends on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Delimit {
    /// No body, by its status.
    Empty,
    /// `content-length`.
    Length(u64),
    /// Chunked transfer coding.
    Chunked,
    /// The connection's close (HTTP/1.0 with no length known).
    Close,
}

impl Delimit {
    fn of(status: StatusCode, hint: &SizeHint, http10: bool) -> Self {
        if status.is_informational()
            || status == StatusCode::NO_CONTENT
            || status == StatusCode::NOT_MODIFIED
        {
            Self::Empty
        } else if let Some(n) = hint.exact() {
            Self::Length(n)
        } else if http10 {
            Self::Close
        } else {
            Self::Chunked
        }
    }
}

/// Why a response could not be sent whole.
#[derive(Debug)]
pub enum Unsent {
    /// Writing to the client failed (or stalled past the write timeout).
    Io(io::Error),
    /// The client closed its side while the body was awaited.
    Gone,
    /// The body's length differed from the one it declared.
    WrongLength,
}

/// Sends `response` with `out` as the write buffer (left empty); whether the
/// connection may carry another request.
///
/// # Errors
/// When the response could not be sent whole; the connection must close.
pub async fn send<W: AsyncWrite + Unpin>(
    io: &mut W,
    out: &mut Vec<u8>,
    response: Response<ResponseBody>,
    reply: Reply,
    watch: &Returned,
) -> Result<bool, Unsent> {
    let (parts, mut body) = response.into_parts();
    let delimit = Delimit::of(parts.status, &body.size_hint(), reply.http10);
    let keep_alive = reply.keep_alive && delimit != Delimit::Close;
    encode_head(out, &parts, delimit, keep_alive, reply.http10);
    if reply.head_only || delimit == Delimit::Empty {
        return flush(io, out).await.map(|()| keep_alive);
    }
    let mut sent = 0u64;
    loop {
        let gathered = watch
            .unless_closed(std::future::poll_fn(|cx| {
                gather(&mut body, out, delimit, &mut sent, cx)
            }))
            .await
            .ok_or(Unsent::Gone)?;
        match gathered {
            Gathered::Some => flush(io, out).await?,
            Gathered::Large(data) => {
                flush(io, out).await?;
                io.write_all(&data).await.map_err(Unsent::Io)?;
                if delimit == Delimit::Chunked {
                    out.extend_from_slice(b"\r\n");
                }
            }
            Gathered::End => {
                flush(io, out).await?;
                return match delimit {
                    Delimit::Length(n) if n != sent => Err(Unsent::WrongLength),
                    _ => Ok(keep_alive),
                };
            }
        }
    }
}

/// Writes and empties `out`.
async fn flush<W: AsyncWrite + Unpin>(io: &mut W, out: &mut Vec<u8>) -> Result<(), Unsent> {
    let written = io.write_all(out).await;
    out.clear();
    written.map_err(Unsent::Io)
}

/// What [`gather`] has for the next write.
enum Gathered {
    /// Frames (or the head) in the buffer.
    Some,
    /// A frame too large to copy; the buffer goes first.
    Large(Bytes),
    /// The body ended; its end is in the buffer.
    End,
}

/// Encodes every frame the body has ready into `out`; waits only while
/// `out` is empty.
fn gather(
    body: &mut ResponseBody,
    out: &mut Vec<u8>,
    delimit: Delimit,
    sent: &mut u64,
    cx: &mut Context<'_>,
) -> Poll<Gathered> {
    loop {
        match Pin::new(&mut *body).poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => {
                let Ok(data) = frame.into_data() else {
                    continue;
                };
                if data.is_empty() {
                    continue;
                }
                *sent += data.len() as u64;
                if delimit == Delimit::Chunked {
                    let mut hex = [0u8; 16];
                    out.extend_from_slice(hex_len(data.len(), &mut hex));
                    out.extend_from_slice(b"\r\n");
                }
                if data.len() > COALESCE {
                    return Poll::Ready(Gathered::Large(data));
                }
                out.extend_from_slice(&data);
                if delimit == Delimit::Chunked {
                    out.extend_from_slice(b"\r\n");
                }
                if out.len() >= COALESCE {
                    return Poll::Ready(Gathered::Some);
                }
            }
            Poll::Ready(Some(Err(never))) => match never {},
            Poll::Ready(None) => {
                if delimit == Delimit::Chunked {
                    out.extend_from_slice(b"0\r\n\r\n");
                }
                return Poll::Ready(Gathered::End);
            }
            Poll::Pending if out.is_empty() => return Poll::Pending,
            Poll::Pending => return Poll::Ready(Gathered::Some),
        }
    }
}

/// `n` in lower-case hexadecimal, as a chunk size.
fn hex_len(mut n: usize, buf: &mut [u8; 16]) -> &[u8] {
    let mut at = buf.len();
    loop {
        at -= 1;
        buf[at] = b"0123456789abcdef"[n & 0xf];
        n >>= 4;
        if n == 0 {
            return &buf[at..];
        }
    }
}

/// The status line and fields, with the framing, `date` and `connection`
/// the server owns.
fn encode_head(
    out: &mut Vec<u8>,
    parts: &http::response::Parts,
    delimit: Delimit,
    keep_alive: bool,
    http10: bool,
) {
    out.extend_from_slice(b"HTTP/1.1 ");
    out.extend_from_slice(parts.status.as_str().as_bytes());
    out.push(b' ');
    out.extend_from_slice(
        parts
            .status
            .canonical_reason()
            .unwrap_or_default()
            .as_bytes(),
    );
    out.extend_from_slice(b"\r\n");
    for (name, value) in &parts.headers {
        if !FRAMING_FIELDS.contains(name) {
            field(out, name.as_str().as_bytes(), value.as_bytes());
        }
    }
    if !parts.headers.contains_key(header::DATE) {
        field(out, b"date", &http_date());
    }
    match delimit {
        Delimit::Length(n) => {
            field(
                out,
                b"content-length",
                itoa::Buffer::new().format(n).as_bytes(),
            );
        }
        Delimit::Chunked => field(out, b"transfer-encoding", b"chunked"),
        Delimit::Empty | Delimit::Close => {}
    }
    if !keep_alive {
        field(out, b"connection", b"close");
    } else if http10 {
        field(out, b"connection", b"keep-alive");
    }
    out.extend_from_slice(b"\r\n");
}

fn field(out: &mut Vec<u8>, name: &[u8], value: &[u8]) {
    out.extend_from_slice(name);
    out.extend_from_slice(b": ");
    out.extend_from_slice(value);
    out.extend_from_slice(b"\r\n");
}

thread_local! {
    /// The `date` field, formatted once per second per thread.
    static DATE: Cell<(u64, [u8; 29])> = const { Cell::new((0, [0; 29])) };
}

/// The current time as an HTTP date (`Sun, 06 Nov 1994 08:49:37 GMT`).
fn http_date() -> [u8; 29] {
    let now = SystemTime::now();
    let second = now
        .duration_since(UNIX_EPOCH)
        .map_or(0, |since| since.as_secs());
    DATE.with(|cached| {
        let (at, text) = cached.get();
        if at == second {
            return text;
        }
        let mut fresh = [0u8; 29];
        let formatted = httpdate::fmt_http_date(now);
        if formatted.len() == fresh.len() {
            fresh.copy_from_slice(formatted.as_bytes());
        }
        cached.set((second, fresh));
        fresh
    })
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::panic)]
mod tests {
    use super::*;
    use crate::server::body::boxed;
    use http_body_util::{Full, StreamBody};

    fn text(out: &[u8]) -> &str {
        std::str::from_utf8(out).unwrap()
    }

    async fn sent(
        response: Response<ResponseBody>,
        reply: Reply,
    ) -> (String, Result<bool, Unsent>) {
        let mut wire = Vec::new();
        let mut out = Vec::new();
        let result = send(&mut wire, &mut out, response, reply, &Returned::default()).await;
        assert!(out.is_empty());
        (String::from_utf8(wire).unwrap(), result)
    }

    const KEEP: Reply = Reply {
        keep_alive: true,
        head_only: false,
        http10: false,
    };

    #[tokio::test]
    async fn a_known_length_goes_with_its_head_in_one_write() {
        let mut response = Response::new(boxed(Full::new(Bytes::from_static(b"{}"))));
        response
            .headers_mut()
            .insert(header::CONTENT_LENGTH, 99.into());
        response
            .headers_mut()
            .insert(header::CONNECTION, "upgrade".parse().unwrap());
        response
            .headers_mut()
            .insert("x-request-id", "abc".parse().unwrap());
        let (wire, result) = sent(response, KEEP).await;
        assert!(result.unwrap());
        assert!(wire.starts_with("HTTP/1.1 200 OK\r\nx-request-id: abc\r\ndate: "));
        assert!(
            wire.ends_with(" GMT\r\ncontent-length: 2\r\n\r\n{}"),
            "{wire}"
        );
        assert!(!wire.contains("upgrade") && !wire.contains("99"));
    }

    #[tokio::test]
    async fn an_unknown_length_is_chunked_or_closed_for_http_1_0() {
        let frames = || {
            let chunks = ["data: 1\n\n", "", "data: [DONE]\n\n"]
                .map(|c| Ok(http_body::Frame::data(Bytes::from_static(c.as_bytes()))));
            boxed(StreamBody::new(futures_util::stream::iter(chunks)))
        };
        let (wire, result) = sent(Response::new(frames()), KEEP).await;
        assert!(result.unwrap());
        assert!(wire.contains("transfer-encoding: chunked\r\n\r\n9\r\ndata: 1\n\n\r\ne\r\ndata: [DONE]\n\n\r\n0\r\n\r\n"), "{wire}");

        let http10 = Reply {
            http10: true,
            ..KEEP
        };
        let (wire, result) = sent(Response::new(frames()), http10).await;
        assert!(
            !result.unwrap(),
            "a close-delimited body ends the connection"
        );
        assert!(
            wire.contains("connection: close\r\n\r\ndata: 1\n\ndata: [DONE]\n\n"),
            "{wire}"
        );
    }

    #[tokio::test]
    async fn head_requests_and_bodiless_statuses_get_no_body() {
        let body = || boxed(Full::new(Bytes::from_static(b"hello")));
        let head_only = Reply {
            head_only: true,
            ..KEEP
        };
        let (wire, _) = sent(Response::new(body()), head_only).await;
        assert!(wire.ends_with("content-length: 5\r\n\r\n"), "{wire}");
        let mut no_content = Response::new(body());
        *no_content.status_mut() = StatusCode::NO_CONTENT;
        let (wire, _) = sent(no_content, KEEP).await;
        assert!(wire.starts_with("HTTP/1.1 204 No Content\r\n"));
        assert!(!wire.contains("content-length") && wire.ends_with("\r\n\r\n"));
    }

    #[tokio::test]
    async fn closing_and_http_1_0_keep_alive_are_said() {
        let body = || boxed(Full::new(Bytes::new()));
        let close = Reply {
            keep_alive: false,
            ..KEEP
        };
        let (wire, result) = sent(Response::new(body()), close).await;
        assert!(!result.unwrap());
        assert!(wire.contains("connection: close\r\n"));
        let http10 = Reply {
            http10: true,
            ..KEEP
        };
        let (wire, result) = sent(Response::new(body()), http10).await;
        assert!(result.unwrap());
        assert!(wire.contains("content-length: 0\r\nconnection: keep-alive\r\n\r\n"));
    }

    #[tokio::test]
    async fn a_large_frame_is_written_whole_after_its_chunk_size() {
        let big = Bytes::from(vec![b'x'; COALESCE + 1]);
        let chunks = [Ok(http_body::Frame::data(big))];
        let response = Response::new(boxed(StreamBody::new(futures_util::stream::iter(chunks))));
        let (wire, result) = sent(response, KEEP).await;
        assert!(result.unwrap());
        let expected = format!("4001\r\n{}\r\n0\r\n\r\n", "x".repeat(COALESCE + 1));
        assert!(wire.ends_with(&expected));
    }

    #[test]
    fn chunk_sizes_are_hexadecimal() {
        let mut buf = [0u8; 16];
        assert_eq!(hex_len(0, &mut buf), b"0");
        assert_eq!(hex_len(255, &mut buf), b"ff");
        assert_eq!(hex_len(usize::MAX, &mut buf), b"ffffffffffffffff");
    }

    #[test]
    fn the_date_is_an_http_date() {
        let date = http_date();
        let parsed = httpdate::parse_http_date(text(&date)).unwrap();
        let off = SystemTime::now().duration_since(parsed).unwrap_or_default();
        assert!(off.as_secs() < 5);
    }
}
