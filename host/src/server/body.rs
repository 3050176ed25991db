//! Response bodies: the one boxed body type every response uses, and the JSON
//! response helper.

use std::convert::Infallible;

use bytes::Bytes;
use http::{HeaderValue, Response, StatusCode, header};
use http_body_util::Full;
use http_body_util::combinators::UnsyncBoxBody;

/// The body type of every response.
pub type ResponseBody = UnsyncBoxBody<Bytes, Infallible>;

/// Boxes any infallible body.
pub fn boxed<B>(body: B) -> ResponseBody
where
    B: http_body::Body<Data = Bytes, Error = Infallible> + Send + 'static,
{
    UnsyncBoxBody::new(body)
}

/// A JSON response.
pub fn json(status: StatusCode, value: &serde_json::Value) -> Response<ResponseBody> {
    let mut response = Response::new(boxed(Full::new(Bytes::from(
        serde_json::to_vec(value).unwrap_or_default(),
    ))));
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    response
}
