//! One upstream HTTP/1.1 connection: its socket, opened with `TCP_NODELAY`
//! and keep-alive probes within the connect timeout, and the bytes read
//! from it that no response has used yet.

use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::BytesMut;
use http::uri::Authority;
use tokio::net::TcpStream;

/// Spare room the read buffer keeps for each read.
const READ_ROOM: usize = 8 * 1024;

/// TCP keep-alive probes start after this much silence.
const KEEPALIVE: Duration = Duration::from_secs(60);

/// An open upstream connection and the bytes read from it but not used yet.
pub struct Conn {
    io: TcpStream,
    buf: BytesMut,
}

impl Conn {
    /// The socket.
    pub fn io(&self) -> &TcpStream {
        &self.io
    }

    /// The socket, to write to.
    pub fn io_mut(&mut self) -> &mut TcpStream {
        &mut self.io
    }

    /// Bytes read and not used yet.
    pub fn buf(&self) -> &BytesMut {
        &self.buf
    }

    /// Bytes read and not used yet, to take from.
    pub fn buf_mut(&mut self) -> &mut BytesMut {
        &mut self.buf
    }

    /// Reads what is available into the buffer; `Ok(0)` at the end of input.
    pub fn poll_read_more(&mut self, cx: &mut Context<'_>) -> Poll<std::io::Result<usize>> {
        if self.buf.capacity() - self.buf.len() < READ_ROOM / 2 {
            self.buf.reserve(READ_ROOM);
        }
        tokio_util::io::poll_read_buf(Pin::new(&mut self.io), cx, &mut self.buf)
    }

    /// Waits for bytes and reads them into the buffer; `Ok(0)` at the end
    /// of input.
    pub async fn read_more(&mut self) -> std::io::Result<usize> {
        std::future::poll_fn(|cx| self.poll_read_more(cx)).await
    }
}

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
    Ok(Conn {
        io,
        buf: BytesMut::with_capacity(READ_ROOM),
    })
}
