//! `Connection: close` on the answers the server gives while the service drains.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use http::header::{CONNECTION, HeaderValue};
use http::{Request, Response, Version};
use periscope_health::DrainHandle;
use tower_service::Service;

/// The service a [`Server`](crate::Server) told about the drain runs: while the service drains
/// (after the stop signal, before the listener closes), the answer to every request that
/// arrives carries `Connection: close`, so clients retire their pooled connections to this
/// instance instead of sending on one the server closes when the listener stops (the
/// keep-alive race behind connection resets at a rollout). Idle connections are left alone
/// until then: closing one could cut off a request already on its way.
#[derive(Clone, Debug)]
pub(crate) struct CloseWhenDraining<S> {
    inner: S,
    drain: DrainHandle,
}

impl<S> CloseWhenDraining<S> {
    pub(crate) fn new(inner: S, drain: DrainHandle) -> Self {
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
        // Decided when the request arrives: one atomic load, nothing kept in the future.
        let close = request.version() <= Version::HTTP_11 && self.drain.is_draining();
        CloseWhenDrainingFuture {
            inner: self.inner.call(request),
            close,
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
    close: bool,
}

impl<F, ResBody, E> Future for CloseWhenDrainingFuture<F>
where
    F: Future<Output = Result<Response<ResBody>, E>>,
{
    type Output = Result<Response<ResBody>, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let mut result = ready!(this.inner.poll(cx));
        if *this.close
            && let Ok(response) = &mut result
        {
            response
                .headers_mut()
                .insert(CONNECTION, HeaderValue::from_static("close"));
        }
        Poll::Ready(result)
    }
}
