//! One upstream HTTP/1.1 connection: its socket, opened with `TCP_NODELAY`
//! and keep-alive probes within the connect timeout, and the bytes read
//! from it that no response has used yet.

use std::time::Duration;

use bytes::BytesMut;
use http::uri::Authority;
use tokio::net::TcpStream;

use crate::http1::Buffered;

/// TCP keep-alive probes start after this much silence.
const KEEPALIVE: Duration = Duration::from_secs(60);

/// An open upstream connection and the bytes read from it but not used yet.
pub type Conn = Buffered<TcpStream>;

/// Opens a connection to `authority` within `timeout`.
///
/// # Errors
/// When it cannot be opened, or not in time (`TimedOut`).
pub async fn connect(authority: &Authority, timeout: Duration) -> std::io::Result<Conn> {
    let host = authority
        .host()
        .trim_start_matches('[')
        .trim_end_matches(']');
    let port = authority.port_u16().unwrap_or(80);
    let io = tokio::time::timeout(timeout, TcpStream::connect((host, port)))
        .await
        .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, "connect timed out"))??;
    io.set_nodelay(true)?;
    let keepalive = socket2::TcpKeepalive::new().with_time(KEEPALIVE);
    socket2::SockRef::from(&io).set_tcp_keepalive(&keepalive)?;
    Ok(Conn::new(io, BytesMut::with_capacity(8 * 1024)))
}
