//! HTTP/1.1 wire pieces both sides share: how a body ends and the decoder
//! that takes it off the bytes read ([`framing`]), reading comma-separated
//! fields, header fields taken as slices of the head they arrived in
//! ([`locate_fields`], [`field_map`]), and a socket with the bytes read from
//! it ([`Buffered`]), which also reads framed bodies. The gateway's own
//! server ([`crate::server::h1`]) and upstream client
//! ([`crate::relay::upstream`]) are built on them.

pub mod framing;

use framing::{Framing, Malformed, Step};

use std::pin::Pin;
use std::task::{Context, Poll, ready};

use bytes::{Bytes, BytesMut};
use http::{HeaderMap, HeaderName, HeaderValue};
use tokio::io::AsyncRead;

/// Spare room the read buffer keeps for each read.
const READ_ROOM: usize = 8 * 1024;

/// A socket (or its read half) and the bytes read from it that no message
/// has taken yet.
#[derive(Debug)]
pub struct Buffered<S> {
    io: S,
    buf: BytesMut,
}

impl<S: AsyncRead + Unpin> Buffered<S> {
    /// `io`, with `buf` already read from it.
    pub fn new(io: S, buf: BytesMut) -> Self {
        Self { io, buf }
    }

    /// The socket.
    pub fn io(&self) -> &S {
        &self.io
    }

    /// The socket, to write to.
    pub fn io_mut(&mut self) -> &mut S {
        &mut self.io
    }

    /// Bytes read and not taken yet.
    pub fn buf(&self) -> &BytesMut {
        &self.buf
    }

    /// Bytes read and not taken yet, to take from.
    pub fn buf_mut(&mut self) -> &mut BytesMut {
        &mut self.buf
    }

    /// Reads what is available into the buffer; `Ok(0)` at the end of input.
    pub fn poll_fill(&mut self, cx: &mut Context<'_>) -> Poll<std::io::Result<usize>> {
        if self.buf.capacity() - self.buf.len() < READ_ROOM / 2 {
            self.buf.reserve(READ_ROOM);
        }
        tokio_util::io::poll_read_buf(Pin::new(&mut self.io), cx, &mut self.buf)
    }

    /// Waits for bytes and reads them into the buffer; `Ok(0)` at the end
    /// of input.
    pub async fn fill(&mut self) -> std::io::Result<usize> {
        std::future::poll_fn(|cx| self.poll_fill(cx)).await
    }

    /// The next piece of a body framed by `framing` (which keeps the
    /// decoder's place), reading more as it needs.
    pub fn poll_body(&mut self, framing: &mut Framing, cx: &mut Context<'_>) -> Poll<BodyRead> {
        loop {
            match framing.decode(&mut self.buf) {
                Err(malformed) => return Poll::Ready(BodyRead::Malformed(malformed)),
                Ok(Step::Data(data)) => {
                    let last = *framing == Framing::Length(0);
                    return Poll::Ready(BodyRead::Data(data, last));
                }
                Ok(Step::Done) => return Poll::Ready(BodyRead::End),
                Ok(Step::NeedMore) => {}
            }
            match ready!(self.poll_fill(cx)) {
                Ok(0) if *framing == Framing::UntilClose => return Poll::Ready(BodyRead::End),
                Ok(0) => return Poll::Ready(BodyRead::Cut),
                Ok(_) => {}
                Err(e) => return Poll::Ready(BodyRead::Io(e)),
            }
        }
    }
}

/// What the next step of reading a framed body gave.
#[derive(Debug)]
pub enum BodyRead {
    /// Data, and whether it is the body's last (its length is used up).
    Data(Bytes, bool),
    /// The body ended (a close-delimited one: the sender closed).
    End,
    /// The sender broke the framing.
    Malformed(Malformed),
    /// The connection closed before the body's end.
    Cut,
    /// Reading failed.
    Io(std::io::Error),
}

/// A field's name, and where its value lies in the head.
pub type Located = (HeaderName, std::ops::Range<usize>);

/// The names of the fields httparse found in `head`, and where their values
/// lie in it (so the values can become slices of the head once it is split
/// off the read buffer, rather than copies).
///
/// # Errors
/// When a name is not a valid field name.
pub fn locate_fields(
    head: &[u8],
    fields: &[httparse::Header<'_>],
) -> Result<Vec<Located>, &'static str> {
    let base = head.as_ptr() as usize;
    fields
        .iter()
        .map(|field| {
            let name =
                HeaderName::from_bytes(field.name.as_bytes()).map_err(|_| "bad field name")?;
            let start = field.value.as_ptr() as usize - base;
            Ok((name, start..start + field.value.len()))
        })
        .collect()
}

/// The fields [`locate_fields`] found, their values slices of `head`, with
/// room for `extra` more.
///
/// # Errors
/// When a value holds bytes a field value may not.
pub fn field_map(
    head: &Bytes,
    located: Vec<Located>,
    extra: usize,
) -> Result<HeaderMap, &'static str> {
    let mut headers = HeaderMap::with_capacity(located.len() + extra);
    for (name, range) in located {
        let value =
            HeaderValue::from_maybe_shared(head.slice(range)).map_err(|_| "bad field value")?;
        headers.append(name, value);
    }
    Ok(headers)
}

/// The length `content-length` declares, if any: one or more values (a list,
/// or the field repeated) that must all be the same run of digits
/// (RFC 9110 §8.6).
///
/// # Errors
/// A value that is not a decimal number, or values that disagree.
pub fn content_length(headers: &HeaderMap) -> Result<Option<u64>, &'static str> {
    let mut length = None;
    for value in headers.get_all(http::header::CONTENT_LENGTH) {
        for part in value.as_bytes().split(|b| *b == b',') {
            let part = part.trim_ascii();
            let parsed = (!part.is_empty() && part.iter().all(u8::is_ascii_digit))
                .then(|| std::str::from_utf8(part).ok()?.parse::<u64>().ok())
                .flatten()
                .ok_or("bad content-length")?;
            if length.is_some_and(|l| l != parsed) {
                return Err("conflicting content-length");
            }
            length = Some(parsed);
        }
    }
    Ok(length)
}

/// Whether a comma-separated field holds `token` (case-insensitively).
pub fn has_token(headers: &HeaderMap, name: HeaderName, token: &str) -> bool {
    headers.get_all(name).iter().any(|value| {
        value
            .as_bytes()
            .split(|b| *b == b',')
            .any(|t| t.trim_ascii().eq_ignore_ascii_case(token.as_bytes()))
    })
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn length(values: &[&str]) -> Result<Option<u64>, &'static str> {
        let mut headers = HeaderMap::new();
        for v in values {
            headers.append(http::header::CONTENT_LENGTH, v.parse().unwrap());
        }
        content_length(&headers)
    }

    #[test]
    fn content_length_is_digits_and_one_value() {
        assert_eq!(length(&[]), Ok(None));
        assert_eq!(length(&["7"]), Ok(Some(7)));
        assert_eq!(length(&["7, 7", " 7 "]), Ok(Some(7)));
        assert_eq!(length(&["7", "8"]), Err("conflicting content-length"));
        for bad in ["+1", "-1", "", "1 2", "0x10", "99999999999999999999999"] {
            assert_eq!(length(&[bad]), Err("bad content-length"), "{bad:?}");
        }
    }
}
