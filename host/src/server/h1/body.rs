//! The read side of a client connection, and a request body read straight
//! off it by whoever polls the body (the request's own task). A body read to
//! its end hands the read side back for the connection's next request; one
//! dropped before its end takes it along, and the connection closes.

use std::io;
use std::pin::Pin;
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll, ready};

use bytes::Bytes;
use http_body::{Frame, SizeHint};
use tokio::net::tcp::OwnedReadHalf;

use super::head::MAX_HEAD;
use crate::http1::framing::Framing;
use crate::http1::{BodyRead, Buffered};

/// A client connection's read side: the socket's read half and what was
/// read but not taken.
pub type Inbound = Buffered<OwnedReadHalf>;

/// Where a body read to its end leaves the connection's read side.
#[derive(Debug, Clone, Default)]
pub struct Returned(Arc<Mutex<Option<Inbound>>>);

impl Returned {
    /// Leaves the read side here.
    pub fn put(&self, inbound: Inbound) {
        *self.0.lock().unwrap_or_else(PoisonError::into_inner) = Some(inbound);
    }

    /// Takes the read side, if a body left it.
    pub fn take(&self) -> Option<Inbound> {
        self.0.lock().unwrap_or_else(PoisonError::into_inner).take()
    }

    /// Whether the read side is here (the request's body was read to its
    /// end).
    pub fn is_here(&self) -> bool {
        self.0
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .is_some()
    }

    /// Runs `work` to its end, or until the client closes its side of the
    /// connection (`None`: the work is dropped, which cancels it). While the
    /// read side is here, what the client sends meanwhile (a pipelined
    /// request) is read ahead, up to a head's worth.
    pub async fn unless_closed<F: Future>(&self, work: F) -> Option<F::Output> {
        let mut work = std::pin::pin!(work);
        std::future::poll_fn(|cx| {
            if let Poll::Ready(done) = work.as_mut().poll(cx) {
                return Poll::Ready(Some(done));
            }
            let mut here = self.0.lock().unwrap_or_else(PoisonError::into_inner);
            let Some(inbound) = here.as_mut() else {
                return Poll::Pending;
            };
            while inbound.buf().len() < MAX_HEAD {
                match inbound.poll_fill(cx) {
                    Poll::Ready(Ok(0) | Err(_)) => return Poll::Ready(None),
                    Poll::Ready(Ok(_)) => {}
                    Poll::Pending => break,
                }
            }
            Poll::Pending
        })
        .await
    }
}

/// A request body, read off the connection as it is polled.
#[derive(Debug)]
pub struct RequestBody {
    reading: Option<Reading>,
}

/// A body not yet read to its end.
#[derive(Debug)]
struct Reading {
    inbound: Inbound,
    framing: Framing,
    back: Returned,
    /// The client waits for `100 Continue`, sent when the body is first
    /// read (so a request refused on its head never gets it).
    continue_owed: bool,
}

/// The interim answer to `expect: 100-continue`.
const CONTINUE: &[u8] = b"HTTP/1.1 100 Continue\r\n\r\n";

impl RequestBody {
    /// The body framed by `framing` at the front of `inbound`; an empty one
    /// hands the read side back at once. `expect_continue`: the client
    /// waits for `100 Continue` before sending it.
    pub fn new(inbound: Inbound, framing: Framing, back: &Returned, expect_continue: bool) -> Self {
        if framing == Framing::Length(0) {
            back.put(inbound);
            return Self { reading: None };
        }
        Self {
            reading: Some(Reading {
                inbound,
                framing,
                back: back.clone(),
                continue_owed: expect_continue,
            }),
        }
    }

    /// The body is complete: the read side goes back to the connection.
    fn finish(&mut self) {
        if let Some(reading) = self.reading.take() {
            reading.back.put(reading.inbound);
        }
    }
}

/// A request body that could not be read to its end.
fn broken(
    kind: io::ErrorKind,
    why: impl Into<Box<dyn std::error::Error + Send + Sync>>,
) -> io::Error {
    io::Error::new(kind, why)
}

impl http_body::Body for RequestBody {
    type Data = Bytes;
    type Error = io::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, io::Error>>> {
        let this = self.get_mut();
        let Some(reading) = this.reading.as_mut() else {
            return Poll::Ready(None);
        };
        if std::mem::take(&mut reading.continue_owed) {
            // Nothing of this request's answer is written yet, so the
            // socket's buffer has room; a short write is a broken body.
            let sent = reading.inbound.io().as_ref().try_write(CONTINUE);
            if !matches!(sent, Ok(n) if n == CONTINUE.len()) {
                this.reading = None;
                return Poll::Ready(Some(Err(broken(
                    io::ErrorKind::WriteZero,
                    "could not send 100 Continue",
                ))));
            }
        }
        let read = ready!(reading.inbound.poll_body(&mut reading.framing, cx));
        let error = match read {
            BodyRead::Data(data, last) => {
                if last {
                    this.finish();
                }
                return Poll::Ready(Some(Ok(Frame::data(data))));
            }
            BodyRead::End => {
                this.finish();
                return Poll::Ready(None);
            }
            BodyRead::Malformed(malformed) => broken(io::ErrorKind::InvalidData, malformed),
            BodyRead::Cut => broken(
                io::ErrorKind::UnexpectedEof,
                "the client closed the connection mid-body",
            ),
            BodyRead::Io(e) => e,
        };
        this.reading = None;
        Poll::Ready(Some(Err(error)))
    }

    fn is_end_stream(&self) -> bool {
        self.reading.is_none()
    }

    fn size_hint(&self) -> SizeHint {
        match &self.reading {
            None => SizeHint::with_exact(0),
            Some(Reading {
                framing: Framing::Length(left),
                ..
            }) => SizeHint::with_exact(*left),
            Some(_) => SizeHint::default(),
        }
    }
}
