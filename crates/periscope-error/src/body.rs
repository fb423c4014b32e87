//! The response body of [`ErrorService`](crate::ErrorService): the inner body, or a rendered
//! envelope.

use std::fmt;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use pin_project::pin_project;

use periscope_context::{AnsweredError, AnsweredLater};

use crate::code::codes;
use crate::error::BoxError;
use crate::panic::{self, LogPanic};
use crate::render::{self, Ids};

/// The inner service's body, or the error envelope that replaced it.
///
/// The inner body's frames pass through untouched. A panic while the inner body produces a
/// frame is caught: it is logged like a handler's panic (`handler panicked`, with the
/// request's ids) and the body ends with an error, so the server aborts the response (the
/// status and the frames already sent cannot be taken back). Hence the error type is
/// [`BoxError`]: the inner body's error, or that panic. A gRPC answer whose code comes in its
/// trailers (a stream's) ends instead with the trailers of a panicking handler's answer,
/// `grpc-status: 13` and the standard message: a gRPC client reads a reset stream as a
/// transport failure ("h2 protocol error"), not as the call's `INTERNAL`.
#[pin_project]
#[derive(Debug)]
pub struct ResponseBody<B> {
    #[pin]
    kind: Kind<B>,
    /// A gRPC stream's: a panic ends the body with `INTERNAL` trailers rather than an error,
    /// told to the layers above here.
    grpc_trailers: Option<(AnsweredLater, GrpcEnding)>,
}

/// How a gRPC stream's body carries its trailers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum GrpcEnding {
    /// HTTP/2 trailers (gRPC).
    Trailers,
    /// A last message flagged `0x80` in the body (gRPC-Web), base64-encoded for
    /// `application/grpc-web-text`.
    WebFrame { text: bool },
}

#[pin_project(project = KindProj)]
#[derive(Debug)]
enum Kind<B> {
    /// The inner body, with the ids its panic is logged with.
    Inner(#[pin] B, Ids),
    Full(Option<Bytes>),
}

impl<B> ResponseBody<B> {
    pub(crate) fn inner(body: B, ids: Ids) -> Self {
        Self {
            kind: Kind::Inner(body, ids),
            grpc_trailers: None,
        }
    }

    /// The body of a gRPC answer whose code comes in its trailers: a panic ends it with
    /// `INTERNAL` trailers, told to the layers above through `answered`.
    pub(crate) fn grpc_stream(
        body: B,
        ids: Ids,
        answered: AnsweredLater,
        ending: GrpcEnding,
    ) -> Self {
        Self {
            kind: Kind::Inner(body, ids),
            grpc_trailers: Some((answered, ending)),
        }
    }

    pub(crate) fn full(bytes: Bytes) -> Self {
        Self {
            kind: Kind::Full((!bytes.is_empty()).then_some(bytes)),
            grpc_trailers: None,
        }
    }
}

impl<B> From<Bytes> for ResponseBody<B> {
    fn from(bytes: Bytes) -> Self {
        Self::full(bytes)
    }
}

/// The error that ends a body whose inner body panicked; the panic itself is in the log.
#[derive(Debug)]
struct BodyPanicked;

impl fmt::Display for BodyPanicked {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("the response body panicked (logged as `handler panicked`)")
    }
}

impl std::error::Error for BodyPanicked {}

impl<B> Body for ResponseBody<B>
where
    B: Body<Data = Bytes>,
    B::Error: Into<BoxError>,
{
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.project();
        let mut kind = this.kind;
        let ids = match kind.as_mut().project() {
            KindProj::Inner(body, ids) => match panic::catch(|| body.poll_frame(cx)) {
                Ok(polled) => return polled.map(|frame| frame.map(|r| r.map_err(Into::into))),
                Err(caught) => {
                    let ids = ids.clone();
                    caught.log(&ids);
                    ids
                }
            },
            KindProj::Full(bytes) => {
                return Poll::Ready(bytes.take().map(|bytes| Ok(Frame::data(bytes))));
            }
        };
        // Drop the body that panicked now, in case its destructor panics too, and end there.
        panic::drop_caught(&ids, || kind.set(Kind::Full(None)));
        if let Some((answered, ending)) = this.grpc_trailers {
            answered.set(AnsweredError::new(codes::INTERNAL_ERROR.name()));
            let trailers = render::grpc_panic_trailers(&ids);
            return Poll::Ready(Some(Ok(match *ending {
                GrpcEnding::Trailers => Frame::trailers(trailers),
                GrpcEnding::WebFrame { text } => {
                    Frame::data(render::grpc_web_trailer_frame(&trailers, text))
                }
            })));
        }
        // A zero-sized error: boxing it does not allocate.
        Poll::Ready(Some(Err(Box::new(BodyPanicked))))
    }

    fn is_end_stream(&self) -> bool {
        match &self.kind {
            Kind::Inner(body, _) => body.is_end_stream(),
            Kind::Full(bytes) => bytes.is_none(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.kind {
            Kind::Inner(body, _) => body.size_hint(),
            Kind::Full(bytes) => SizeHint::with_exact(bytes.as_ref().map_or(0, |b| b.len() as u64)),
        }
    }
}
