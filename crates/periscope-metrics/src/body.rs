//! The response body of both RED layers: it does what the layer still has to do when the body
//! ends. For the server's layer, it holds the request in the in-flight gauge until then, so a
//! long stream (server-sent events, streamed tokens) counts as being served for as long as it
//! runs; for the client's, it records a gRPC call whose code comes in the trailers.

use std::fmt;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use http_body::{Body, Frame, SizeHint};
use periscope_context::grpc::StreamEnd;

use crate::client::Call;
use crate::red::InFlight;

/// The response body of [`Metrics`](crate::Metrics) and of
/// [`ClientMetrics`](crate::ClientMetrics): the inner service's body, untouched (its frames,
/// [`size_hint`](Body::size_hint) and [`is_end_stream`](Body::is_end_stream) pass through),
/// until its last frame (its end, trailers or an error) or until it is dropped, whichever
/// comes first:
///
/// - behind [`MetricsLayer`](crate::MetricsLayer), it holds the request in
///   `http_server_requests_in_flight`;
/// - behind [`ClientMetricsLayer`](crate::ClientMetricsLayer), for a gRPC call whose code comes
///   in the trailers, it records the call when they come (under the status its code stands
///   for: `UNKNOWN` when the body ends without one, `INTERNAL` when it fails), or as
///   [`CANCELLED`](crate::CANCELLED) when it is dropped first ([`CALL_ERROR`](crate::CALL_ERROR)
///   when dropped after a panic of the client's body). Any other answer was recorded at its
///   head, and its body only passes its frames on.
///
/// [`MetricsBody::new`] wraps a body with nothing to do at its end, for a stack that turns
/// metrics off but keeps the same response type.
#[pin_project::pin_project]
pub struct MetricsBody<B> {
    #[pin]
    inner: B,
    end: AtEnd,
}

/// What a [`MetricsBody`] does at its end.
pub(crate) enum AtEnd {
    /// Nothing: the frames pass through.
    Nothing,
    /// Takes a server's request out of the in-flight gauge (by dropping it).
    InFlight(InFlight),
    /// Records an outgoing gRPC call by the code its trailers bring. Boxed: only such calls
    /// pay for it, and every other body stays small.
    Call(Box<Call>),
}

impl<B> MetricsBody<B> {
    /// `inner`, with nothing to do at its end: counted in no in-flight gauge, recording no
    /// call.
    pub fn new(inner: B) -> Self {
        Self {
            inner,
            end: AtEnd::Nothing,
        }
    }

    pub(crate) fn with_end(inner: B, end: AtEnd) -> Self {
        Self { inner, end }
    }

    /// The inner service's body.
    pub fn get_ref(&self) -> &B {
        &self.inner
    }

    /// The inner service's body, dropping the wrapper, as if the body were dropped: a request
    /// it held leaves the in-flight gauge now, and a call it was to record at its end counts
    /// as [`CANCELLED`](crate::CANCELLED).
    pub fn into_inner(self) -> B {
        self.inner
    }
}

impl<B> fmt::Debug for MetricsBody<B> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MetricsBody")
            .field("in_flight", &matches!(self.end, AtEnd::InFlight(_)))
            .field("call", &matches!(self.end, AtEnd::Call(_)))
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
        // Most bodies have nothing left to do: one branch per frame.
        if let AtEnd::Nothing = this.end {
            return this.inner.poll_frame(cx);
        }
        let mut inner = this.inner;
        let frame = match this.end {
            // A panic in the client's body leaves the call marked: it counts as `error`.
            AtEnd::Call(call) => call.in_client(|| inner.as_mut().poll_frame(cx)),
            _ => inner.as_mut().poll_frame(cx),
        };
        let frame = ready!(frame);
        let end = match &frame {
            Some(Ok(data)) => match data.trailers_ref() {
                // Trailers are a body's last frame.
                Some(trailers) => StreamEnd::trailers(trailers),
                // A caller may stop polling once the body says it is at its end.
                None if matches!(this.end, AtEnd::Call(_)) && inner.is_end_stream() => {
                    StreamEnd::NoTrailers
                }
                None => return Poll::Ready(frame),
            },
            Some(Err(_)) => StreamEnd::Failed,
            None => StreamEnd::NoTrailers,
        };
        // Done before the frame is handed on: a server may drop the body only later (or,
        // after trailers, never poll it again), and the caller reads the call's end now.
        match std::mem::replace(this.end, AtEnd::Nothing) {
            AtEnd::Call(mut call) => call.stream_end(end),
            // The request leaves the in-flight gauge.
            AtEnd::InFlight(place) => drop(place),
            AtEnd::Nothing => {}
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
