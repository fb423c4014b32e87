//! The RED layer's response body: it holds the request in the in-flight gauge until the body
//! ends, fails or is dropped, so a long stream (server-sent events, streamed tokens) counts as
//! being served for as long as it runs.

use std::fmt;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use http_body::{Body, Frame, SizeHint};

use crate::red::InFlight;

/// The response body of [`Metrics`](crate::Metrics): the inner service's body, untouched
/// (its frames, [`size_hint`](Body::size_hint) and [`is_end_stream`](Body::is_end_stream)
/// pass through), holding the request in `http_server_requests_in_flight` until its last frame
/// (its end, trailers or an error) or until it is dropped, whichever comes first.
///
/// [`MetricsBody::new`] wraps a body counted in no gauge, for a stack that turns metrics off
/// but keeps the same response type.
#[pin_project::pin_project]
pub struct MetricsBody<B> {
    #[pin]
    inner: B,
    in_flight: Option<InFlight>,
}

impl<B> MetricsBody<B> {
    /// `inner`, counted in no in-flight gauge.
    pub fn new(inner: B) -> Self {
        Self {
            inner,
            in_flight: None,
        }
    }

    pub(crate) fn holding(inner: B, in_flight: Option<InFlight>) -> Self {
        Self { inner, in_flight }
    }

    /// The inner service's body.
    pub fn get_ref(&self) -> &B {
        &self.inner
    }

    /// The inner service's body, dropping the wrapper: a request it held leaves the in-flight
    /// gauge now.
    pub fn into_inner(self) -> B {
        self.inner
    }
}

impl<B> fmt::Debug for MetricsBody<B> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MetricsBody")
            .field("in_flight", &self.in_flight.is_some())
            .finish_non_exhaustive()
    }
}

impl<B: Body> Body for MetricsBody<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<B::Data>, B::Error>>> {
        let this = self.project();
        let frame = ready!(this.inner.poll_frame(cx));
        // The last frame: out of flight before it is handed on, as a server may drop the body
        // only later (or, after trailers, never poll it again).
        let last = match &frame {
            Some(Ok(frame)) => frame.is_trailers(),
            Some(Err(_)) | None => true,
        };
        if last {
            *this.in_flight = None;
        }
        Poll::Ready(frame)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}
