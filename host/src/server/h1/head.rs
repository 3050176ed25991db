//! A request head taken off the front of what a client sent: its parts (the
//! field values slices of the bytes read, not copies), how its body ends,
//! whether the connection may carry another request, and whether the client
//! waits for `100 Continue`. Pure over a `BytesMut`, so every refusal is
//! unit-tested without a socket.

use bytes::BytesMut;
use http::header::{self, HeaderMap};
use http::{Method, StatusCode, Uri, Version};

use crate::error::ApiError;
use crate::http1::framing::{Chunk, Framing};
use crate::http1::{content_length, field_map, has_token, locate_fields};

/// Most bytes a request head may take (hyper's server allowed the same
/// through the read buffer's cap).
pub const MAX_HEAD: usize = 64 << 10;

/// Most header fields a request may carry.
const MAX_FIELDS: usize = 100;

/// A parsed request head.
#[derive(Debug)]
pub struct Head {
    /// Method, target, version and fields.
    pub parts: http::request::Parts,
    /// How the body ends: a length (0 for none) or chunked.
    pub framing: Framing,
    /// Whether the connection may carry another request after this one.
    pub keep_alive: bool,
    /// Whether the client waits for `100 Continue` before sending its body.
    pub expect_continue: bool,
}

/// Parses a complete head off the front of `buf`; `None` while it is
/// incomplete (and within [`MAX_HEAD`]).
///
/// # Errors
/// The error the client is answered with before the connection is closed:
/// 400 for a malformed head or framing, 431 for a head too large, 501 for a
/// transfer coding other than chunked, 505 for a version other than HTTP/1.
pub fn parse(buf: &mut BytesMut) -> Result<Option<Head>, ApiError> {
    let mut fields = [httparse::EMPTY_HEADER; MAX_FIELDS];
    let mut parsed = httparse::Request::new(&mut fields);
    let len = match parsed.parse(buf) {
        Ok(httparse::Status::Complete(len)) => len,
        Ok(httparse::Status::Partial) if buf.len() >= MAX_HEAD => return Err(too_large()),
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(httparse::Error::TooManyHeaders) => return Err(too_large()),
        Err(httparse::Error::Version) => return Err(unsupported_version()),
        Err(e) => return Err(malformed(&e.to_string())),
    };
    let method = parsed
        .method
        .and_then(|m| Method::from_bytes(m.as_bytes()).ok())
        .ok_or_else(|| malformed("bad method"))?;
    let uri: Uri = parsed
        .path
        .and_then(|p| p.parse().ok())
        .ok_or_else(|| malformed("bad request target"))?;
    let version = match parsed.version {
        Some(1) => Version::HTTP_11,
        _ => Version::HTTP_10,
    };
    // Names are made while the bytes are borrowed; values become slices of
    // the head once it is split off.
    let located = locate_fields(buf, parsed.headers).map_err(malformed)?;
    let head = buf.split_to(len).freeze();
    // Room for the fields the gateway adds on its way upstream.
    let headers = field_map(&head, located, 4).map_err(malformed)?;
    let framing = framing(version, &headers)?;
    let keep_alive = match version {
        Version::HTTP_11 => !has_token(&headers, header::CONNECTION, "close"),
        _ => has_token(&headers, header::CONNECTION, "keep-alive"),
    };
    let expect_continue = version == Version::HTTP_11
        && headers
            .get(header::EXPECT)
            .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"100-continue"));
    let mut parts = http::Request::new(()).into_parts().0;
    parts.method = method;
    parts.uri = uri;
    parts.version = version;
    parts.headers = headers;
    Ok(Some(Head {
        parts,
        framing,
        keep_alive,
        expect_continue,
    }))
}

/// How the body of a request with these fields ends (RFC 9112 §6.3). A
/// request with both a transfer coding and a length is refused rather than
/// guessed at: that is how requests are smuggled past proxies.
fn framing(version: Version, headers: &HeaderMap) -> Result<Framing, ApiError> {
    let codings = headers.get_all(header::TRANSFER_ENCODING);
    if codings.iter().next().is_some() {
        if headers.contains_key(header::CONTENT_LENGTH) {
            return Err(malformed("both transfer-encoding and content-length"));
        }
        if version != Version::HTTP_11 {
            return Err(malformed("transfer-encoding in an HTTP/1.0 request"));
        }
        let mut all = codings
            .iter()
            .flat_map(|v| v.as_bytes().split(|b| *b == b','))
            .map(<[u8]>::trim_ascii);
        return match (all.next(), all.next()) {
            (Some(only), None) if only.eq_ignore_ascii_case(b"chunked") => {
                Ok(Framing::Chunked(Chunk::Size))
            }
            _ => Err(ApiError::Client {
                status: StatusCode::NOT_IMPLEMENTED,
                code: "unsupported_transfer_encoding",
                param: None,
                message: "The gateway accepts request bodies sent as they are or chunked, \
                          with no other transfer coding."
                    .into(),
            }),
        };
    }
    let length = content_length(headers).map_err(malformed)?;
    Ok(Framing::Length(length.unwrap_or(0)))
}

fn malformed(why: &str) -> ApiError {
    ApiError::bad_request(format!("Malformed HTTP request: {why}."), None)
}

fn too_large() -> ApiError {
    ApiError::Client {
        status: StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
        code: "request_header_fields_too_large",
        param: None,
        message: format!(
            "The request head exceeds the gateway's limit of {MAX_HEAD} bytes or {MAX_FIELDS} fields."
        ),
    }
}

fn unsupported_version() -> ApiError {
    ApiError::Client {
        status: StatusCode::HTTP_VERSION_NOT_SUPPORTED,
        code: "http_version_not_supported",
        param: None,
        message: "The gateway speaks HTTP/1.0, HTTP/1.1 and HTTP/2.".into(),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::panic)]
mod tests {
    use super::*;

    fn parsed(text: &str) -> Result<Option<Head>, ApiError> {
        parse(&mut BytesMut::from(text))
    }

    fn status(text: &str) -> StatusCode {
        match parsed(text) {
            Err(e) => e.status(),
            Ok(head) => panic!("accepted: {head:?}"),
        }
    }

    #[test]
    fn a_complete_head_is_taken_off_and_what_follows_stays() {
        let mut buf = BytesMut::from(
            "POST /v1/chat/completions?x=1 HTTP/1.1\r\nHost: gw\r\nContent-Length: 2\r\nX-A: b\r\nx-a: c\r\n\r\n{}GET",
        );
        let head = parse(&mut buf).unwrap().unwrap();
        assert_eq!(head.parts.method, Method::POST);
        assert_eq!(head.parts.uri.path(), "/v1/chat/completions");
        assert_eq!(head.parts.uri.query(), Some("x=1"));
        assert_eq!(head.parts.version, Version::HTTP_11);
        assert_eq!(head.parts.headers["host"], "gw");
        let both: Vec<_> = head.parts.headers.get_all("x-a").iter().collect();
        assert_eq!(both, ["b", "c"]);
        assert_eq!(head.framing, Framing::Length(2));
        assert!(head.keep_alive);
        assert!(!head.expect_continue);
        assert_eq!(&buf[..], b"{}GET");
    }

    #[test]
    fn an_incomplete_head_waits_and_an_endless_one_is_refused() {
        let mut buf = BytesMut::from("GET / HTTP/1.1\r\nhost: x\r\n");
        assert!(parse(&mut buf).unwrap().is_none());
        assert_eq!(buf.len(), 25, "nothing consumed while incomplete");
        let endless = format!("GET / HTTP/1.1\r\nx: {}", "a".repeat(MAX_HEAD));
        assert_eq!(
            status(&endless),
            StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE
        );
        let many: String = (0..=MAX_FIELDS).map(|i| format!("x{i}: y\r\n")).collect();
        assert_eq!(
            status(&format!("GET / HTTP/1.1\r\n{many}\r\n")),
            StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE
        );
    }

    #[test]
    fn keep_alive_follows_the_version_and_connection_field() {
        let alive = |text: &str| parsed(text).unwrap().unwrap().keep_alive;
        assert!(alive("GET / HTTP/1.1\r\n\r\n"));
        assert!(!alive(
            "GET / HTTP/1.1\r\nconnection: Upgrade, Close\r\n\r\n"
        ));
        assert!(!alive("GET / HTTP/1.0\r\n\r\n"));
        assert!(alive("GET / HTTP/1.0\r\nconnection: keep-alive\r\n\r\n"));
    }

    #[test]
    fn expect_continue_is_seen_in_http_1_1_only() {
        let expects = |text: &str| parsed(text).unwrap().unwrap().expect_continue;
        assert!(expects(
            "POST / HTTP/1.1\r\nexpect: 100-Continue\r\ncontent-length: 5\r\n\r\n"
        ));
        assert!(!expects(
            "POST / HTTP/1.0\r\nexpect: 100-continue\r\ncontent-length: 5\r\n\r\n"
        ));
    }

    #[test]
    fn bodies_are_framed_by_length_or_chunks() {
        let framing = |text: &str| parsed(text).unwrap().unwrap().framing;
        assert_eq!(framing("GET / HTTP/1.1\r\n\r\n"), Framing::Length(0));
        assert_eq!(
            framing("POST / HTTP/1.1\r\ncontent-length: 7, 7\r\n\r\n"),
            Framing::Length(7)
        );
        assert_eq!(
            framing("POST / HTTP/1.1\r\ntransfer-encoding: Chunked\r\n\r\n"),
            Framing::Chunked(Chunk::Size)
        );
    }

    #[test]
    fn ambiguous_or_unsupported_framing_is_refused() {
        for bad in [
            "POST / HTTP/1.1\r\ncontent-length: 1\r\ntransfer-encoding: chunked\r\n\r\n",
            "POST / HTTP/1.1\r\ncontent-length: 1\r\ncontent-length: 2\r\n\r\n",
            "POST / HTTP/1.1\r\ncontent-length: -1\r\n\r\n",
            "POST / HTTP/1.1\r\ncontent-length: +1\r\n\r\n",
            "POST / HTTP/1.1\r\ncontent-length: 99999999999999999999999\r\n\r\n",
            "POST / HTTP/1.0\r\ntransfer-encoding: chunked\r\n\r\n",
        ] {
            assert_eq!(status(bad), StatusCode::BAD_REQUEST, "{bad}");
        }
        for unsupported in [
            "POST / HTTP/1.1\r\ntransfer-encoding: gzip, chunked\r\n\r\n",
            "POST / HTTP/1.1\r\ntransfer-encoding: chunked\r\ntransfer-encoding: chunked\r\n\r\n",
            "POST / HTTP/1.1\r\ntransfer-encoding: identity\r\n\r\n",
        ] {
            assert_eq!(
                status(unsupported),
                StatusCode::NOT_IMPLEMENTED,
                "{unsupported}"
            );
        }
    }

    #[test]
    fn malformed_heads_get_400_and_other_versions_505() {
        for bad in [
            "GET / HTTP/1.1\r\nbad name: x\r\n\r\n",
            "GET\r\n\r\n",
            "GET / HTTP/1.1\r\nx: a\x01b\r\n\r\n",
            "G@T / HTTP/1.1\r\n\r\n",
        ] {
            assert_eq!(status(bad), StatusCode::BAD_REQUEST, "{bad:?}");
        }
        assert_eq!(
            status("GET / HTTP/2.0\r\n\r\n"),
            StatusCode::HTTP_VERSION_NOT_SUPPORTED
        );
    }

    #[test]
    fn blank_lines_between_requests_are_skipped() {
        // RFC 9112 §2.2: httparse skips them before the request line.
        let mut buf = BytesMut::from("\r\n\r\nGET / HTTP/1.1\r\n\r\nGET");
        let head = parse(&mut buf).unwrap().unwrap();
        assert_eq!(head.parts.uri.path(), "/");
        assert_eq!(&buf[..], b"GET");
    }
}
