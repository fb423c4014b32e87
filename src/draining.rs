//! `Connection: close` on the answers the server gives while the service drains.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use http::header::{CONNECTION, HeaderValue};
use http::{Request, Response, Version};
use periscope_health::DrainHandle;
use tower_service::Service;

/// The service a [`Server`](crate::Server) told about the drain runs: while the service drains
/// (after the stop signal, before the listener closes), every HTTP/1.x answer carries
/// `Connection: close`, so clients retire their pooled connections to this
/// instance instead of sending on one the server closes when the listener stops (the
/// keep-alive race behind connection resets at a rollout). Idle connections are left alone
/// until then: closing one could cut off a request already on its way.
#[derive(Clone, Debug)]
pub(crate) struct CloseWhenDraining<S> {
    inner: S,
    /// `None`: the server was not told about the drain, and answers as they are.
    drain: Option<DrainHandle>,
}

impl<S> CloseWhenDraining<S> {
    pub(crate) fn new(inner: S, drain: Option<DrainHandle>) -> Self {
        Self { inner, drain }
    }
}

impl<S, ReqBody, ResBody> Service<Request<ReqBody>> for CloseWhenDraining<S>
where
    S: Service<Request<ReqBody>, Response = Response<ResBody>>,
{
    type Response = Response<ResBody>;
    type Error = S::Error;
    type Future = CloseWhenDrainingFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request<ReqBody>) -> Self::Future {
        // Decided when the answer is ready, so a request in flight when the drain begins gets
        // it too (the clone is one reference count: hyper clones the whole service per request).
        let version = request.version();
        let drain = self
            .drain
            .as_ref()
            .filter(|_| version <= Version::HTTP_11)
            .cloned();
        CloseWhenDrainingFuture {
            inner: self.inner.call(request),
            drain,
            version,
        }
    }
}

/// The response future of [`CloseWhenDraining`].
#[pin_project::pin_project]
#[must_use = "futures do nothing unless polled"]
#[derive(Debug)]
pub(crate) struct CloseWhenDrainingFuture<F> {
    #[pin]
    inner: F,
    /// The drain, for an HTTP/1.x request.
    drain: Option<DrainHandle>,
    version: Version,
}

impl<F, ResBody, E> Future for CloseWhenDrainingFuture<F>
where
    F: Future<Output = Result<Response<ResBody>, E>>,
{
    type Output = Result<Response<ResBody>, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let mut result = ready!(this.inner.poll(cx));
        if this.drain.as_ref().is_some_and(DrainHandle::is_draining)
            && let Ok(response) = &mut result
            // A 101's `Connection: upgrade` is what switches the protocol.
            && response.status() != http::StatusCode::SWITCHING_PROTOCOLS
        {
            response
                .headers_mut()
                .insert(CONNECTION, HeaderValue::from_static("close"));
            // An HTTP/1.0 answer marked 1.1 would get hyper's `keep-alive` beside the `close`.
            if *this.version == Version::HTTP_10 {
                *response.version_mut() = Version::HTTP_10;
            }
        }
        Poll::Ready(result)
    }
}
