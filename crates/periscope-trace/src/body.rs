//! The server layer's response body: the request's span and context stay with the body, so
//! what its frames log while they are made (a stream of server-sent events, a gRPC server
//! stream) carries the request's ids, and the span ends when the body does.

use std::fmt;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use http_body::{Body, Frame, SizeHint};
use periscope_context::{RequestContext, WithContext};
use tracing::Span;

use periscope_context::grpc::GrpcCode;

use crate::fields::{SERVER_FIELDS, record_failure, record_grpc_code};

/// The response body of [`Correlation`](crate::Correlation): the inner service's body,
/// untouched, polled inside the request's span with its [`RequestContext`] current. The
/// context is current while the body is dropped too: what it logs when the client goes away
/// mid-stream carries the request's ids.
#[pin_project::pin_project(PinnedDrop)]
pub struct CorrelationBody<B> {
    // Declared before `span`, so dropped first: the access log inside names the span as its
    // line's parent by id alone (`periscope_context::SERVER_SPAN_TARGET`).
    #[pin]
    inner: WithContext<B>,
    span: Span,
    /// Whether a failure of the body is recorded on the span here: not for a gRPC call whose
    /// end the access log watches, which records the code the failure stands for, nor for an
    /// answer its head already failed, whose status stays its `error.type`.
    records_failure: bool,
    /// Set while the inner body is polled: still set when the body is dropped, it panicked
    /// making a frame (with no panic catcher inside the server layer).
    in_body: bool,
    /// A gRPC call: a body that fails is the `INTERNAL` its client is told (the server resets
    /// the stream), as a failure of the call's own future is.
    grpc: bool,
}

/// Records the failure of a body cut after its head.
fn fail(span: &Span, grpc: bool) {
    if grpc {
        record_grpc_code(span, &SERVER_FIELDS, GrpcCode::INTERNAL, 500);
    } else {
        record_failure(span, &SERVER_FIELDS, "_OTHER");
    }
}

#[pin_project::pinned_drop]
impl<B> PinnedDrop for CorrelationBody<B> {
    fn drop(self: Pin<&mut Self>) {
        let this = self.project();
        if *this.in_body && *this.records_failure {
            // The answer was cut by the panic: the request did not complete.
            fail(this.span, *this.grpc);
        }
    }
}

impl<B> CorrelationBody<B> {
    pub(crate) fn new(
        inner: B,
        context: Arc<RequestContext>,
        span: Span,
        records_failure: bool,
        grpc: bool,
    ) -> Self {
        Self {
            inner: WithContext::new(context, inner),
            span,
            records_failure,
            in_body: false,
            grpc,
        }
    }

    /// The request's context, current while the body is polled.
    pub fn context(&self) -> &Arc<RequestContext> {
        self.inner.context()
    }

    /// The inner service's body; `None` once it has ended (it is dropped then, inside the
    /// request's span and context).
    pub fn get_ref(&self) -> Option<&B> {
        self.inner.get_ref()
    }
}

impl<B> fmt::Debug for CorrelationBody<B> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CorrelationBody")
            .field("request_id", &self.context().request_id)
            .finish_non_exhaustive()
    }
}

impl<B: Body> Body for CorrelationBody<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<B::Data>, B::Error>>> {
        let this = self.project();
        let _entered = this.span.enter();
        let mut inner = this.inner;
        *this.in_body = true;
        let frame = inner.as_mut().in_scope(|body| match body {
            Some(body) => body.poll_frame(cx),
            None => Poll::Ready(None),
        });
        *this.in_body = false;
        match &frame {
            // Ended: dropped now, in the span and context, so the wrapper's drop does no work.
            Poll::Ready(None) => inner.finish(),
            // The answer was cut after its head: the request did not complete, whatever its
            // status said (as a client span records the same failure).
            Poll::Ready(Some(Err(_))) if *this.records_failure => fail(this.span, *this.grpc),
            _ => {}
        }
        frame
    }

    fn is_end_stream(&self) -> bool {
        self.get_ref().is_none_or(B::is_end_stream)
    }

    fn size_hint(&self) -> SizeHint {
        self.get_ref()
            .map_or_else(|| SizeHint::with_exact(0), B::size_hint)
    }
}
