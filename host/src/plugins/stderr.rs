//! A plugin's stderr, kept for its failures: the last [`KEPT_BYTES`] a guest
//! wrote (a Rust panic's message, a Python traceback) go into the log line
//! and `plugin check` report of a call that fails, and are dropped after a
//! call that succeeds. Writes never fail and never block, so a chatty guest
//! cannot turn its own output into a trap; a call that wrote nothing costs
//! one atomic load.

use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll};

use bytes::Bytes;
use tokio::io::AsyncWrite;
use wasmtime_wasi::cli::{IsTerminal, StdoutStream};
use wasmtime_wasi::p2::{OutputStream, Pollable, StreamResult};

/// Bytes of a guest's stderr kept per call: its last ones.
pub const KEPT_BYTES: usize = 2048;

#[derive(Debug, Default)]
struct Kept {
    written: AtomicBool,
    tail: Mutex<Vec<u8>>,
}

/// The stderr of one plugin instance.
#[derive(Debug, Clone, Default)]
pub struct GuestStderr(Arc<Kept>);

impl GuestStderr {
    fn append(&self, bytes: &[u8]) {
        let mut tail = self.0.tail.lock().unwrap_or_else(PoisonError::into_inner);
        tail.extend_from_slice(bytes);
        if tail.len() > KEPT_BYTES {
            let excess = tail.len() - KEPT_BYTES;
            tail.drain(..excess);
        }
        self.0.written.store(true, Ordering::Release);
    }

    /// What the guest wrote since the last call, trimmed (`None` when it
    /// wrote nothing), and forgets it.
    pub fn take(&self) -> Option<String> {
        if !self.0.written.swap(false, Ordering::AcqRel) {
            return None;
        }
        let tail = std::mem::take(&mut *self.0.tail.lock().unwrap_or_else(PoisonError::into_inner));
        // One log line per event: the guest's lines are joined.
        let text = String::from_utf8_lossy(&tail)
            .lines()
            .map(str::trim)
            .filter(|line| !line.is_empty())
            .collect::<Vec<_>>()
            .join(" | ");
        (!text.is_empty()).then_some(text)
    }

    /// Forgets what a successful call wrote.
    pub fn clear(&self) {
        if self.0.written.load(Ordering::Acquire) {
            let _ = self.take();
        }
    }
}

impl IsTerminal for GuestStderr {
    fn is_terminal(&self) -> bool {
        false
    }
}

impl StdoutStream for GuestStderr {
    fn p2_stream(&self) -> Box<dyn OutputStream> {
        Box::new(self.clone())
    }

    fn async_stream(&self) -> Box<dyn AsyncWrite + Send + Sync> {
        Box::new(self.clone())
    }
}

#[wasmtime_wasi::async_trait]
impl OutputStream for GuestStderr {
    fn write(&mut self, bytes: Bytes) -> StreamResult<()> {
        self.append(&bytes);
        Ok(())
    }

    fn flush(&mut self) -> StreamResult<()> {
        Ok(())
    }

    fn check_write(&mut self) -> StreamResult<usize> {
        Ok(64 * 1024)
    }
}

#[wasmtime_wasi::async_trait]
impl Pollable for GuestStderr {
    async fn ready(&mut self) {}
}

impl AsyncWrite for GuestStderr {
    fn poll_write(
        self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        self.append(buf);
        Poll::Ready(Ok(buf.len()))
    }

    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_the_last_bytes_until_taken() {
        let mut stderr = GuestStderr::default();
        assert_eq!(stderr.take(), None);
        let _ = OutputStream::write(&mut stderr, Bytes::from(vec![b'x'; 3 * KEPT_BYTES]));
        let _ = OutputStream::write(
            &mut stderr,
            Bytes::from_static(b"panicked at src/lib.rs:9: boom\n"),
        );
        let kept = stderr.take().unwrap_or_default();
        assert_eq!(
            kept.len(),
            KEPT_BYTES - 1,
            "the trailing newline is trimmed"
        );
        assert!(kept.ends_with("panicked at src/lib.rs:9: boom"));
        assert_eq!(stderr.take(), None, "taken once");
        let _ = OutputStream::write(&mut stderr, Bytes::from_static(b"chatter"));
        stderr.clear();
        assert_eq!(stderr.take(), None, "a successful call's output is dropped");
    }
}
