//! Write coalescing for relayed streams: data frames that are already available
//! leave in one frame, so one upstream read becomes one write to the client.
//!
//! hyper's HTTP/1 client decodes a read of many SSE events into body chunks
//! handed over one at a time (its body channel holds one chunk, and the
//! connection task that refills it may run on the other worker), and hyper's
//! server flushes whenever the response body is not ready — so sixteen events
//! that arrived in one read left in sixteen `writev`s. When the inner body is
//! not ready but data has been gathered, [`Coalesce`] yields to the runtime (a
//! wake-up, never a timer) up to `IDLE_YIELDS` times in a row so the upstream
//! connection can hand over what it already holds, and emits everything
//! gathered when those polls bring nothing new. Data that has not arrived is
//! never waited for: a paced stream's event goes out two scheduler rounds after
//! it arrives. The first data of a response goes out at once, in the same write
//! as the response head, since nothing can be gathered before it anyway.

use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::{Bytes, BytesMut};
use http_body::{Body, Frame};

/// Gathered data is emitted at once when it reaches this size.
const MAX_GATHERED: usize = 64 * 1024;

/// Fruitless yields in a row after which gathered data is emitted. One is not
/// enough when the upstream connection runs on the other worker; two brought
/// a 16-event burst down from 19 to 3 writes per request, idle or loaded, and
/// more gained nothing (bench/RESULTS.md).
const IDLE_YIELDS: u32 = 2;

/// A body whose available data frames are merged into one.
pub struct Coalesce<B: Body> {
    inner: B,
    gathered: Vec<Bytes>,
    gathered_len: usize,
    /// Yields since the inner body last produced data.
    idle_yields: u32,
    /// Data has been emitted (the first data is not held back).
    started: bool,
    /// A frame, error or end that follows the gathered data.
    next: Option<Option<Result<Frame<Bytes>, B::Error>>>,
}

impl<B: Body<Data = Bytes>> Coalesce<B> {
    /// Wraps `inner`.
    pub fn new(inner: B) -> Self {
        Self {
            inner,
            gathered: Vec::new(),
            gathered_len: 0,
            idle_yields: 0,
            started: false,
            next: None,
        }
    }

    /// The gathered data as one frame (no copy when it is one piece).
    fn emit(&mut self) -> Poll<Option<Result<Frame<Bytes>, B::Error>>> {
        self.started = true;
        self.gathered_len = 0;
        self.idle_yields = 0;
        let data = if self.gathered.len() == 1 {
            self.gathered.pop().unwrap_or_default()
        } else {
            let mut out = BytesMut::with_capacity(self.gathered.iter().map(Bytes::len).sum());
            for piece in self.gathered.drain(..) {
                out.extend_from_slice(&piece);
            }
            out.freeze()
        };
        Poll::Ready(Some(Ok(Frame::data(data))))
    }
}

/// Nothing is pinned but the inner body, which is `Unpin` itself.
impl<B: Body + Unpin> Unpin for Coalesce<B> {}

impl<B: Body<Data = Bytes> + Unpin> Body for Coalesce<B> {
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, B::Error>>> {
        let this = &mut *self;
        if this.gathered.is_empty()
            && let Some(next) = this.next.take()
        {
            return Poll::Ready(next);
        }
        loop {
            let first = !this.started && !this.gathered.is_empty();
            if first || this.gathered_len >= MAX_GATHERED || this.next.is_some() {
                return this.emit();
            }
            let after_data = match Pin::new(&mut this.inner).poll_frame(cx) {
                Poll::Ready(Some(Ok(frame))) => match frame.into_data() {
                    Ok(data) => {
                        this.gathered_len += data.len();
                        this.gathered.push(data);
                        this.idle_yields = 0;
                        continue;
                    }
                    Err(trailers) => Some(Ok(trailers)),
                },
                Poll::Ready(end_or_error) => end_or_error,
                Poll::Pending if this.gathered.is_empty() => return Poll::Pending,
                Poll::Pending if this.idle_yields < IDLE_YIELDS => {
                    this.idle_yields += 1;
                    cx.waker().wake_by_ref();
                    return Poll::Pending;
                }
                Poll::Pending => return this.emit(),
            };
            if this.gathered.is_empty() {
                return Poll::Ready(after_data);
            }
            this.next = Some(after_data);
        }
    }

    fn is_end_stream(&self) -> bool {
        self.gathered.is_empty() && self.next.is_none() && self.inner.is_end_stream()
    }
}

#[cfg(test)]
mod tests {
    use std::collections::VecDeque;

    use super::*;

    /// What the scripted inner body does on one poll.
    enum Step {
        Data(&'static str),
        /// Not ready (and wakes itself, as hyper's body channel does once the
        /// connection task hands over the next chunk).
        NotReady,
        Fail,
    }

    /// A body that plays a script, then ends.
    struct Scripted(VecDeque<Step>);

    impl Body for Scripted {
        type Data = Bytes;
        type Error = &'static str;

        fn poll_frame(
            mut self: Pin<&mut Self>,
            cx: &mut Context<'_>,
        ) -> Poll<Option<Result<Frame<Bytes>, &'static str>>> {
            match self.0.pop_front() {
                Some(Step::Data(text)) => Poll::Ready(Some(Ok(Frame::data(Bytes::from(text))))),
                Some(Step::NotReady) => {
                    cx.waker().wake_by_ref();
                    Poll::Pending
                }
                Some(Step::Fail) => Poll::Ready(Some(Err("upstream failed"))),
                None => Poll::Ready(None),
            }
        }
    }

    /// What each poll of the coalesced body returned: `Some(text)` for data,
    /// `None` for not ready; the list ends at the body's end or error.
    fn polls(script: Vec<Step>) -> (Vec<Option<String>>, Option<&'static str>) {
        let mut body = Coalesce::new(Scripted(script.into()));
        let mut cx = Context::from_waker(std::task::Waker::noop());
        let mut seen = Vec::new();
        loop {
            match Pin::new(&mut body).poll_frame(&mut cx) {
                Poll::Pending => seen.push(None),
                Poll::Ready(Some(Ok(frame))) => {
                    let data = frame.into_data().unwrap_or_default();
                    seen.push(Some(String::from_utf8_lossy(&data).into_owned()));
                }
                Poll::Ready(Some(Err(e))) => return (seen, Some(e)),
                Poll::Ready(None) => return (seen, None),
            }
        }
    }

    fn data(text: &str) -> Option<String> {
        Some(text.into())
    }

    #[test]
    fn the_first_event_leaves_at_once_and_a_burst_after_it_in_one_frame() {
        use Step::{Data, NotReady};
        // Each later chunk arrives within the yields the previous one allowed.
        let burst = vec![
            Data("a"),
            NotReady,
            Data("b"),
            NotReady,
            Data("c"),
            NotReady,
            NotReady,
            Data("d"),
        ];
        let (seen, error) = polls(burst);
        assert_eq!(seen, [data("a"), None, None, None, None, data("bcd")]);
        assert_eq!(error, None);
    }

    #[test]
    fn a_paced_event_goes_out_after_the_fruitless_yields() {
        use Step::{Data, NotReady};
        let paced = vec![
            Data("a"),
            NotReady,
            Data("b"),
            NotReady,
            NotReady,
            NotReady,
            NotReady,
            Data("c"),
            NotReady,
            NotReady,
            NotReady,
        ];
        let (seen, _) = polls(paced);
        let yields = vec![None; usize::try_from(IDLE_YIELDS).unwrap_or_default()];
        let mut expected = vec![data("a"), None];
        expected.extend(yields.clone());
        expected.push(data("b"));
        expected.push(None);
        expected.extend(yields);
        expected.push(data("c"));
        assert_eq!(seen, expected);
    }

    #[test]
    fn gathered_data_leaves_before_the_end_or_an_error() {
        use Step::{Data, Fail};
        let ended = polls(vec![Data("first"), Data("a"), Data("b")]);
        assert_eq!(ended, (vec![data("first"), data("ab")], None));
        let (seen, error) = polls(vec![Data("first"), Data("a"), Fail]);
        assert_eq!(seen, [data("first"), data("a")]);
        assert_eq!(error, Some("upstream failed"));
    }

    #[test]
    fn a_large_gathering_is_emitted_without_waiting_for_the_inner_body() {
        let big: &'static str = "x".repeat(MAX_GATHERED).leak();
        let (seen, _) = polls(vec![
            Step::Data("first"),
            Step::Data(big),
            Step::Data("tail"),
        ]);
        assert_eq!(seen, [data("first"), data(big), data("tail")]);
    }
}
