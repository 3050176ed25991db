//! How an HTTP/1.1 message body ends (RFC 9112 §6.3), and the decoder that
//! takes its data out of the bytes read: a known length, chunked transfer
//! coding, or the connection's close. Pure over a `BytesMut`, so every edge is
//! unit-tested without a socket.

use bytes::{Buf, Bytes, BytesMut};

/// Longest chunk-size or trailer line accepted.
const MAX_LINE: usize = 4096;

/// Most trailer bytes read (and dropped) after the last chunk.
const MAX_TRAILERS: usize = 16 * 1024;

/// What the decoder can do with the bytes it has.
#[derive(Debug, PartialEq, Eq)]
pub enum Step {
    /// Body data, in order.
    Data(Bytes),
    /// More bytes must be read first.
    NeedMore,
    /// The body is complete.
    Done,
}

/// A body its sender framed wrongly.
#[derive(Debug, PartialEq, Eq)]
pub struct Malformed(pub &'static str);

impl std::fmt::Display for Malformed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "malformed body: {}", self.0)
    }
}

impl std::error::Error for Malformed {}

/// A body's framing and the decoder's place in it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Framing {
    /// `content-length`: this many bytes are still to come.
    Length(u64),
    /// Chunked transfer coding.
    Chunked(Chunk),
    /// No length (responses only): the body ends when the sender closes the
    /// connection.
    UntilClose,
}

/// Where a chunked body's decoder is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Chunk {
    /// Expecting a chunk-size line.
    Size,
    /// Inside a chunk's data, this many bytes left.
    Data(u64),
    /// Expecting the CRLF after a chunk's data.
    DataEnd,
    /// After the last chunk: trailer lines (dropped), this many bytes so far.
    Trailers(usize),
}

impl Framing {
    /// Whether the connection can carry another request once this body is
    /// read to its end.
    pub fn delimited(self) -> bool {
        !matches!(self, Self::UntilClose)
    }

    /// Takes what it can from `buf`: data, a need for more bytes, or the end.
    ///
    /// # Errors
    /// When the bytes break the framing (a bad chunk size, a missing CRLF,
    /// an over-long line or trailer section).
    pub fn decode(&mut self, buf: &mut BytesMut) -> Result<Step, Malformed> {
        match self {
            Self::Length(0) => Ok(Step::Done),
            Self::Length(left) => Ok(take(buf, left)),
            Self::UntilClose if buf.is_empty() => Ok(Step::NeedMore),
            Self::UntilClose => Ok(Step::Data(buf.split().freeze())),
            Self::Chunked(chunk) => chunk.decode(buf),
        }
    }
}

impl Chunk {
    /// One chunked-coding step; loops over framing-only bytes until it has
    /// data, needs more, or is done.
    fn decode(&mut self, buf: &mut BytesMut) -> Result<Step, Malformed> {
        loop {
            match self {
                Self::Size => {
                    let Some(line) = line(buf)? else {
                        return Ok(Step::NeedMore);
                    };
                    let size = chunk_size(&line)?;
                    *self = if size == 0 {
                        Self::Trailers(0)
                    } else {
                        Self::Data(size)
                    };
                }
                Self::Data(left) => {
                    let step = take(buf, left);
                    if *left == 0 {
                        *self = Self::DataEnd;
                    }
                    return Ok(step);
                }
                Self::DataEnd => match buf.first() {
                    None => return Ok(Step::NeedMore),
                    Some(b'\n') => {
                        buf.advance(1);
                        *self = Self::Size;
                    }
                    Some(b'\r') if buf.len() < 2 => return Ok(Step::NeedMore),
                    Some(b'\r') if buf[1] == b'\n' => {
                        buf.advance(2);
                        *self = Self::Size;
                    }
                    Some(_) => return Err(Malformed("no line end after a chunk's data")),
                },
                Self::Trailers(read) => {
                    let Some(line) = line(buf)? else {
                        return Ok(Step::NeedMore);
                    };
                    if line.is_empty() {
                        return Ok(Step::Done);
                    }
                    *read += line.len();
                    if *read > MAX_TRAILERS {
                        return Err(Malformed("trailers too large"));
                    }
                }
            }
        }
    }
}

/// Up to `left` bytes of data from `buf`, counted off.
fn take(buf: &mut BytesMut, left: &mut u64) -> Step {
    if buf.is_empty() {
        return Step::NeedMore;
    }
    let n = usize::try_from(*left).map_or(buf.len(), |left| left.min(buf.len()));
    *left -= n as u64;
    Step::Data(buf.split_to(n).freeze())
}

/// The next line of `buf` without its line end, once it is all there.
fn line(buf: &mut BytesMut) -> Result<Option<Bytes>, Malformed> {
    let Some(end) = memchr::memchr(b'\n', buf) else {
        return if buf.len() > MAX_LINE {
            Err(Malformed("line too long"))
        } else {
            Ok(None)
        };
    };
    if end > MAX_LINE {
        return Err(Malformed("line too long"));
    }
    let mut line = buf.split_to(end + 1).freeze();
    line.truncate(end - usize::from(end > 0 && line[end - 1] == b'\r'));
    Ok(Some(line))
}

/// A chunk-size line's size: hex digits, then optional extensions (ignored).
fn chunk_size(line: &[u8]) -> Result<u64, Malformed> {
    let digits = line
        .iter()
        .position(|b| !b.is_ascii_hexdigit())
        .unwrap_or(line.len());
    let rest = &line[digits..];
    let rest_ok = rest
        .iter()
        .find(|b| !matches!(b, b' ' | b'\t'))
        .is_none_or(|b| *b == b';');
    if digits == 0 || digits > 16 || !rest_ok {
        return Err(Malformed("bad chunk size"));
    }
    let hex = std::str::from_utf8(&line[..digits]).map_err(|_| Malformed("bad chunk size"))?;
    u64::from_str_radix(hex, 16).map_err(|_| Malformed("bad chunk size"))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Decodes `input` fed in pieces of `piece` bytes; the data and whether
    /// the body ended, or the error.
    fn decode_in_pieces(
        mut framing: Framing,
        input: &[u8],
        piece: usize,
    ) -> Result<(Vec<u8>, bool, BytesMut), Malformed> {
        let mut buf = BytesMut::new();
        let mut data = Vec::new();
        let mut pieces = input.chunks(piece);
        loop {
            match framing.decode(&mut buf)? {
                Step::Data(bytes) => data.extend_from_slice(&bytes),
                Step::Done => return Ok((data, true, buf)),
                Step::NeedMore => match pieces.next() {
                    Some(p) => buf.extend_from_slice(p),
                    None => return Ok((data, false, buf)),
                },
            }
        }
    }

    const CHUNKED: &[u8] =
        b"5\r\nhello\r\n7;ext=\"a;b\"\r\n, world\r\n1\n!\n0\r\nx-trailer: 1\r\n\r\n";

    #[test]
    fn chunked_bodies_decode_whatever_the_read_sizes() -> Result<(), Malformed> {
        for piece in [1, 2, 3, 7, CHUNKED.len()] {
            let (data, done, rest) =
                decode_in_pieces(Framing::Chunked(Chunk::Size), CHUNKED, piece)?;
            assert_eq!(data, b"hello, world!", "pieces of {piece}");
            assert!(done, "pieces of {piece}");
            assert!(rest.is_empty());
        }
        Ok(())
    }

    #[test]
    fn a_chunked_body_stops_at_its_end_and_leaves_the_next_bytes() -> Result<(), Malformed> {
        let input = b"3\r\nabc\r\n0\r\n\r\nHTTP/1.1 200 OK";
        let (data, done, rest) =
            decode_in_pieces(Framing::Chunked(Chunk::Size), input, input.len())?;
        assert_eq!((data.as_slice(), done), (&b"abc"[..], true));
        assert_eq!(&rest[..], b"HTTP/1.1 200 OK");
        Ok(())
    }

    #[test]
    fn a_cut_chunked_body_is_not_done() -> Result<(), Malformed> {
        let (data, done, _) = decode_in_pieces(Framing::Chunked(Chunk::Size), b"5\r\nhel", 2)?;
        assert_eq!((data.as_slice(), done), (&b"hel"[..], false));
        Ok(())
    }

    #[test]
    fn bad_chunked_framing_is_an_error() {
        for input in [
            &b"zz\r\n"[..],
            b"\r\n",
            b"5 x\r\nhello\r\n",
            b"11111111111111111\r\n",
            b"3\r\nabcX\r\n",
            &[b'1'; MAX_LINE + 2],
        ] {
            let result = decode_in_pieces(Framing::Chunked(Chunk::Size), input, 3);
            assert!(result.is_err(), "{:?}", String::from_utf8_lossy(input));
        }
        let mut trailers = b"0\r\n".to_vec();
        for _ in 0..MAX_TRAILERS / 7 + 2 {
            trailers.extend_from_slice(b"x-t: 12\r\n");
        }
        let result = decode_in_pieces(Framing::Chunked(Chunk::Size), &trailers, 64);
        assert_eq!(result.err(), Some(Malformed("trailers too large")));
    }

    #[test]
    fn a_length_body_takes_exactly_its_length() -> Result<(), Malformed> {
        let (data, done, rest) = decode_in_pieces(Framing::Length(5), b"hello, next", 4)?;
        assert_eq!((data.as_slice(), done), (&b"hello"[..], true));
        assert_eq!(&rest[..], b", n");
        let (data, done, _) = decode_in_pieces(Framing::Length(0), b"", 1)?;
        assert_eq!((data.as_slice(), done), (&b""[..], true));
        let (_, done, _) = decode_in_pieces(Framing::Length(9), b"hello", 2)?;
        assert!(!done);
        Ok(())
    }

    #[test]
    fn a_close_delimited_body_takes_everything_and_is_not_reusable() -> Result<(), Malformed> {
        let (data, done, _) = decode_in_pieces(Framing::UntilClose, b"all of it", 4)?;
        assert_eq!((data.as_slice(), done), (&b"all of it"[..], false));
        assert!(!Framing::UntilClose.delimited());
        assert!(Framing::Length(3).delimited());
        Ok(())
    }
}
