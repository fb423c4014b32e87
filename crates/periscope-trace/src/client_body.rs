//! The client layer's response body: the call's span stays with the answer's body and ends
//! with it, so a streamed answer is timed to its end and a gRPC call records the code its
//! trailers bring.

use std::fmt;
use std::pin::Pin;
use std::task::{Context, Poll};

use http_body::{Body, Frame, SizeHint};
use periscope_context::grpc::{GrpcCode, StreamEnd};
use tracing::Span;

use crate::fields::{CLIENT_FIELDS, record_failure, record_grpc_code};

/// The status from which a client span fails, as the HTTP and gRPC conventions want for
/// client spans: every 4xx and 5xx, every gRPC code but `OK`.
pub(crate) const CLIENT_ERROR_FROM: u16 = 400;

/// The response body of [`ClientTrace`](crate::ClientTrace): the client's body, its frames,
/// size hint and end of stream untouched, polled inside the call's client span, which it keeps
/// until the body ends.
///
/// - The span closes when the body ends: its last frame (once the inner body says
///   [`is_end_stream`](Body::is_end_stream)), the end of its frames, or a failure. An answer
///   with no body (`HEAD`, 204, 304: hyper hands an empty body) closes it at once.
/// - A gRPC call whose code comes in the trailers (HTTP 200, `application/grpc`, no
///   `grpc-status` in its head) records `rpc.grpc.status_code` from them and fails for every
///   code but `OK` (`error.type` the code's name); it is `UNKNOWN` when the body ends without
///   a code, `INTERNAL` when the body fails (what the server's span records, and what a gRPC
///   client reads from a stream the server resets), and `CANCELLED` when the body is dropped
///   first.
/// - Any other body that fails marks the span `ERROR`, `error.type` `_OTHER` (unless its head
///   had already failed it: its status stays the error).
/// - A body dropped before its end (the caller stopped reading) closes the span; a plain
///   HTTP call keeps what its head said (not reading on is the caller's choice, not a
///   failure).
/// - A body dropped while the client's body was polled (it panicked, and the panic was caught
///   above) marks the span `ERROR`, `error.type` `_OTHER`, as a panic of the client before
///   the answer does (unless the head had already failed it): the client failed, the caller
///   did not cancel.
///
/// A body kept but never polled to its end keeps its span open as long as it is kept: read it
/// or drop it.
#[pin_project::pin_project]
pub struct ClientBody<B> {
    #[pin]
    inner: B,
    call: CallEnd,
}

/// What the call's end still has to record, and its span until then.
struct CallEnd {
    /// `Span::none()` once the call has ended: its span is closed.
    span: Span,
    pending: Pending,
    /// Set while the client's body is polled: still set when the body is dropped, it
    /// panicked, whether or not the panic is still unwinding (a layer that catches panics
    /// around a poll drops the body afterwards).
    in_client: bool,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Pending {
    /// Nothing: the span is closed.
    Closed,
    /// The end of a call judged by its head (`failed`: the head made the span an error).
    End { failed: bool },
    /// The end of a gRPC call whose code comes in its trailers.
    GrpcCode,
}

impl CallEnd {
    /// Records how the call ended, and closes its span.
    fn end(&mut self, end: StreamEnd) {
        match (self.pending, end) {
            (Pending::GrpcCode, end) => {
                record_grpc_code(&self.span, &CLIENT_FIELDS, end.code(), CLIENT_ERROR_FROM)
            }
            (Pending::End { failed: false }, StreamEnd::Failed) => {
                record_failure(&self.span, &CLIENT_FIELDS, "_OTHER");
            }
            _ => {}
        }
        self.pending = Pending::Closed;
        self.span = Span::none();
    }
}

impl Drop for CallEnd {
    fn drop(&mut self) {
        match self.pending {
            Pending::Closed | Pending::End { failed: true } => {}
            // The client's body panicked: a failure of the client, as for its future.
            _ if self.in_client => record_failure(&self.span, &CLIENT_FIELDS, "_OTHER"),
            // The caller stopped reading before the code came: the call is cancelled (its
            // stream is reset), as the server's span records it.
            Pending::GrpcCode => {
                record_grpc_code(
                    &self.span,
                    &CLIENT_FIELDS,
                    GrpcCode::CANCELLED,
                    CLIENT_ERROR_FROM,
                );
            }
            Pending::End { failed: false } => {}
        }
    }
}

impl<B: Body> ClientBody<B> {
    pub(crate) fn new(inner: B, span: Span, pending: Pending) -> Self {
        let mut call = CallEnd {
            span,
            pending,
            in_client: false,
        };
        if inner.is_end_stream() {
            // No body at all (`HEAD`, 204, 304): the call ended with its head.
            call.end(StreamEnd::NoTrailers);
        }
        Self { inner, call }
    }
}

impl<B> ClientBody<B> {
    /// The client's body.
    pub fn get_ref(&self) -> &B {
        &self.inner
    }

    /// The client's body, mutably. Frames read through it bypass the span: it neither sees
    /// them nor closes at their end.
    pub fn get_mut(&mut self) -> &mut B {
        &mut self.inner
    }
}

impl<B> fmt::Debug for ClientBody<B> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClientBody")
            .field("pending", &self.call.pending)
            .finish_non_exhaustive()
    }
}

impl<B: Body> Body for ClientBody<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<B::Data>, B::Error>>> {
        let this = self.project();
        let call = this.call;
        if call.pending == Pending::Closed {
            return this.inner.poll_frame(cx);
        }
        let entered = call.span.enter();
        let mut inner = this.inner;
        call.in_client = true;
        let frame = inner.as_mut().poll_frame(cx);
        call.in_client = false;
        let end = match &frame {
            Poll::Pending => return frame,
            Poll::Ready(Some(Ok(data))) => match data.trailers_ref() {
                // Trailers are a body's last frame.
                Some(trailers) => StreamEnd::trailers(trailers),
                None if inner.is_end_stream() => StreamEnd::NoTrailers,
                None => return frame,
            },
            Poll::Ready(Some(Err(_))) => StreamEnd::Failed,
            Poll::Ready(None) => StreamEnd::NoTrailers,
        };
        drop(entered);
        call.end(end);
        frame
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}
