//! What the gateway reads from a request's head and body before any policy
//! runs: the request facts that policies see, and the names of the headers it
//! reads them from. Host types only; `plugins/` converts them at its edge.

use std::net::IpAddr;

use http::{HeaderMap, HeaderName, header};

use crate::protocol::Protocol;

/// The request id header, sent upstream and returned to clients.
pub const X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// The alternative credential header (Anthropic style); never forwarded.
pub const X_API_KEY: HeaderName = HeaderName::from_static("x-api-key");

/// Request headers policies see unless `[plugins] headers` names others.
pub static DEFAULT_POLICY_HEADERS: [HeaderName; 12] = [
    header::USER_AGENT,
    header::CONTENT_TYPE,
    HeaderName::from_static("openai-organization"),
    HeaderName::from_static("openai-project"),
    X_REQUEST_ID,
    HeaderName::from_static("x-forwarded-for"),
    HeaderName::from_static("x-real-ip"),
    HeaderName::from_static("x-client-name"),
    HeaderName::from_static("x-user-id"),
    HeaderName::from_static("x-team"),
    HeaderName::from_static("x-session-id"),
    HeaderName::from_static("x-sluice-tag"),
];

/// Credential headers: never shown to a policy, whatever the config says.
pub const CREDENTIAL_HEADERS: [&str; 5] = [
    "authorization",
    "proxy-authorization",
    "x-api-key",
    "api-key",
    "cookie",
];

/// The most bytes of a client-chosen string (a model name) that go on to
/// policies, logs and usage records.
pub const MAX_CLIENT_STRING: usize = 256;

/// `text` cut to [`MAX_CLIENT_STRING`] bytes at a character boundary.
pub fn clipped(text: &str) -> &str {
    let mut end = text.len().min(MAX_CLIENT_STRING);
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    &text[..end]
}

/// What policies may know about a request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestFacts {
    /// The request id (the client's `x-request-id` when acceptable, else minted).
    pub request_id: String,
    /// The endpoint's name (see [`crate::endpoint::Endpoint::name`]).
    pub endpoint: &'static str,
    /// The API the client speaks on that endpoint.
    pub protocol: Protocol,
    /// The model asked for (empty until the body is parsed, or when it is malformed).
    pub model: String,
    /// Whether a streamed response was asked for.
    pub stream: bool,
    /// The client IP (see [`crate::server::client_ip`]).
    pub client_ip: String,
    /// The policy-visible headers (`[plugins] headers`) the request
    /// carried, in the configured order.
    pub headers: Vec<(HeaderName, String)>,
}

/// An address as text; an IPv4 one without the formatting machinery.
fn ip_text(ip: IpAddr) -> String {
    let IpAddr::V4(v4) = ip else {
        return ip.to_string();
    };
    let mut text = String::with_capacity(15);
    for (i, octet) in v4.octets().into_iter().enumerate() {
        if i > 0 {
            text.push('.');
        }
        text.push_str(itoa::Buffer::new().format(octet));
    }
    text
}

impl RequestFacts {
    /// The facts a request's head gives (among them its endpoint's name and
    /// protocol); the body's come later.
    pub fn from_head(
        request_id: String,
        (endpoint, protocol): (&'static str, Protocol),
        client_ip: IpAddr,
        headers: &HeaderMap,
        visible: &[HeaderName],
    ) -> Self {
        Self {
            request_id,
            endpoint,
            protocol,
            model: String::new(),
            stream: false,
            client_ip: ip_text(client_ip),
            headers: visible
                .iter()
                .filter_map(|name| {
                    let value = headers.get(name)?.to_str().ok()?;
                    Some((name.clone(), value.to_string()))
                })
                .collect(),
        }
    }

    /// The value of a policy-visible header, by case-insensitive name.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.as_str().eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// The presented credential: a bearer token in `Authorization`, else
/// `x-api-key` (an `Authorization` with another scheme, such as `Basic` added
/// by a proxy, does not hide the key).
pub fn credential(headers: &HeaderMap) -> Option<&str> {
    let bearer = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split_once(' '))
        .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
        .map(|(_, token)| token.trim());
    let api_key = || {
        headers
            .get(X_API_KEY)
            .and_then(|v| v.to_str().ok())
            .map(str::trim)
    };
    bearer.or_else(api_key).filter(|t| !t.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    #[test]
    fn addresses_read_as_the_standard_library_writes_them() {
        for ip in [
            IpAddr::from([0, 0, 0, 0]),
            IpAddr::from([10, 200, 3, 255]),
            IpAddr::from([255, 255, 255, 255]),
            IpAddr::from([0x2001, 0xdb8, 0, 0, 0, 0, 0, 1]),
        ] {
            assert_eq!(ip_text(ip), ip.to_string());
        }
    }

    #[test]
    fn keeps_only_policy_headers() {
        let mut headers = HeaderMap::new();
        headers.insert("x-team", HeaderValue::from_static("blue"));
        headers.insert("x-tenant", HeaderValue::from_static("acme"));
        headers.insert(header::AUTHORIZATION, HeaderValue::from_static("Bearer sk"));
        let facts = RequestFacts::from_head(
            "id".into(),
            ("chat.completions", Protocol::OpenAi),
            IpAddr::from([127, 0, 0, 1]),
            &headers,
            &DEFAULT_POLICY_HEADERS,
        );
        assert_eq!(
            facts.headers,
            vec![(HeaderName::from_static("x-team"), "blue".to_string())]
        );
        let tenant = [HeaderName::from_static("x-tenant")];
        let configured = RequestFacts::from_head(
            "id".into(),
            ("chat.completions", Protocol::OpenAi),
            IpAddr::from([127, 0, 0, 1]),
            &headers,
            &tenant,
        );
        assert_eq!(configured.header("x-tenant"), Some("acme"));
        assert_eq!(configured.header("x-team"), None);
        assert_eq!(facts.header("X-Team"), Some("blue"));
        assert_eq!(facts.header("authorization"), None);
        assert_eq!(facts.client_ip, "127.0.0.1");
    }

    #[test]
    fn client_strings_are_clipped_at_a_character_boundary() {
        assert_eq!(clipped("gpt-4o"), "gpt-4o");
        let long = "é".repeat(200);
        let cut = clipped(&long);
        assert!(cut.len() <= MAX_CLIENT_STRING && cut.len() >= MAX_CLIENT_STRING - 1);
        assert!(long.starts_with(cut));
    }

    #[test]
    fn credentials_come_from_bearer_or_x_api_key() {
        let mut headers = HeaderMap::new();
        assert_eq!(credential(&headers), None);
        headers.insert(X_API_KEY, HeaderValue::from_static(" sk-1 "));
        assert_eq!(credential(&headers), Some("sk-1"));
        headers.insert(
            header::AUTHORIZATION,
            HeaderValue::from_static("bearer sk-2"),
        );
        assert_eq!(credential(&headers), Some("sk-2"));
        headers.insert(header::AUTHORIZATION, HeaderValue::from_static("Basic abc"));
        assert_eq!(
            credential(&headers),
            Some("sk-1"),
            "Basic does not hide x-api-key"
        );
        headers.remove(X_API_KEY);
        assert_eq!(credential(&headers), None);
    }
}
