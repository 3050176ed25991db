//! The upstream transport. Plain-http channels go through the gateway's own
//! HTTP/1.1 client ([`direct`]: the request's task reads and writes a pooled
//! connection itself); https channels through pooled hyper-util clients over
//! rustls (ALPN h2 and HTTP/1.1, webpki roots plus an optional custom CA).
//! Both use `TCP_NODELAY`, a connect timeout and keep-alive. A per-core worker
//! thread gets a hyper client (and so a connection pool) of its own, as it has
//! its own direct pool, so an upstream connection is only ever driven by the
//! thread whose requests use it; elsewhere the shared client serves.

mod conn;
mod direct;
mod pool;
#[cfg(test)]
mod tests;

use std::cell::OnceCell;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::uri::Scheme;
use http::{Request, Response};
use http_body::{Body, Frame, SizeHint};
use http_body_util::Full;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;

/// The client type used for every upstream request.
pub type UpstreamClient = Client<hyper_rustls::HttpsConnector<HttpConnector>, Full<Bytes>>;

thread_local! {
    /// The calling worker thread's own client, when it has one.
    static WORKER_CLIENT: OnceCell<UpstreamClient> = const { OnceCell::new() };
}

/// Any error an upstream exchange or body can end with.
pub type UpstreamError = Box<dyn std::error::Error + Send + Sync>;

/// An upstream response body, from whichever client fetched it.
pub enum UpstreamBody {
    /// Read off its connection by the direct HTTP/1.1 client.
    Direct(direct::Body),
    /// Fed by a hyper client connection.
    Pooled(hyper::body::Incoming),
}

impl Body for UpstreamBody {
    type Data = Bytes;
    type Error = UpstreamError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, UpstreamError>>> {
        match self.get_mut() {
            Self::Direct(body) => Pin::new(body).poll_frame(cx).map_err(Into::into),
            Self::Pooled(body) => Pin::new(body).poll_frame(cx).map_err(Into::into),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            Self::Direct(body) => body.is_end_stream(),
            Self::Pooled(body) => body.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            Self::Direct(body) => body.size_hint(),
            Self::Pooled(body) => body.size_hint(),
        }
    }
}

/// The upstream clients: the shared one, and what building another takes.
pub struct Upstream {
    shared: UpstreamClient,
    connect_timeout: Duration,
    ca_file: Option<PathBuf>,
    direct_http: bool,
}

impl Upstream {
    /// Builds the shared client.
    ///
    /// # Errors
    /// When the custom CA file cannot be read or parsed.
    pub fn new(
        connect_timeout: Duration,
        ca_file: Option<&Path>,
        direct_http: bool,
    ) -> Result<Self, String> {
        Ok(Self {
            shared: client(connect_timeout, ca_file)?,
            connect_timeout,
            ca_file: ca_file.map(Path::to_path_buf),
            direct_http,
        })
    }

    /// Gives the calling thread a client and pool of its own (a per-core
    /// worker, once, when it starts).
    ///
    /// # Errors
    /// When the custom CA file cannot be read or parsed.
    pub fn own_pool_for_this_thread(&self) -> Result<(), String> {
        let client = client(self.connect_timeout, self.ca_file.as_deref())?;
        WORKER_CLIENT.with(|c| {
            let _ = c.set(client);
        });
        Ok(())
    }

    /// Sends a request: a plain-http one with the direct client (unless
    /// `upstream.direct_http` is off), others with the calling thread's hyper
    /// client, else the shared one. Resolves once the response head arrived.
    ///
    /// # Errors
    /// When the upstream cannot be reached or its answer cannot be read.
    pub async fn request(
        &self,
        request: Request<Bytes>,
    ) -> Result<Response<UpstreamBody>, UpstreamError> {
        if self.direct_http && request.uri().scheme() == Some(&Scheme::HTTP) {
            let response = direct::send(request, self.connect_timeout).await?;
            return Ok(response.map(UpstreamBody::Direct));
        }
        let request = request.map(Full::new);
        let pending = WORKER_CLIENT.with(|own| own.get().unwrap_or(&self.shared).request(request));
        Ok(pending.await?.map(UpstreamBody::Pooled))
    }
}

/// Builds an upstream client with its own connection pool.
///
/// # Errors
/// When the custom CA file cannot be read or parsed.
fn client(connect_timeout: Duration, ca_file: Option<&Path>) -> Result<UpstreamClient, String> {
    let mut roots = rustls::RootCertStore::empty();
    roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
    if let Some(path) = ca_file {
        let pem =
            std::fs::read(path).map_err(|e| format!("upstream.ca_file {}: {e}", path.display()))?;
        for cert in rustls_pemfile::certs(&mut pem.as_slice()) {
            let cert = cert.map_err(|e| format!("upstream.ca_file {}: {e}", path.display()))?;
            roots
                .add(cert)
                .map_err(|e| format!("upstream.ca_file {}: {e}", path.display()))?;
        }
    }
    let tls = rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map_err(|e| e.to_string())?
    .with_root_certificates(roots)
    .with_no_client_auth();
    let mut http = HttpConnector::new();
    http.set_nodelay(true);
    http.set_connect_timeout(Some(connect_timeout));
    http.set_keepalive(Some(Duration::from_secs(60)));
    http.enforce_http(false);
    let https = hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(tls)
        .https_or_http()
        .enable_all_versions()
        .wrap_connector(http);
    Ok(Client::builder(TokioExecutor::new())
        .pool_idle_timeout(Duration::from_secs(90))
        .pool_max_idle_per_host(1024)
        .build(https))
}
