//! [`ProbeLayer`]: answers the probe paths in front of any Tower HTTP service.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use http::{Method, Request, Response};
use http_body_util::Either;
use pin_project::pin_project;
use tower_layer::Layer;
use tower_service::Service;

use crate::health::Health;
use crate::service::{ProbeBody, ProbePaths};

/// Answers `GET`/`HEAD` on the probe paths before the request reaches the inner service; every
/// other request passes through untouched. Works with any Tower HTTP stack (hyper, axum, ...).
///
/// Probes never wait on the inner service's readiness, so an app at its concurrency limit still
/// answers `/health`; the inner service must be `Clone` for that.
///
/// ```
/// use std::convert::Infallible;
/// use http::{Request, Response};
/// use periscope_health::{Health, ProbeLayer};
/// use tower::{ServiceBuilder, ServiceExt, service_fn};
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let health = Health::builder().build()?;
/// let app = ServiceBuilder::new()
///     .layer(ProbeLayer::new(health))
///     .service(service_fn(|_: Request<()>| async {
///         Ok::<_, Infallible>(Response::new(String::from("app")))
///     }));
/// let response = app.oneshot(Request::get("/health").body(())?).await?;
/// assert_eq!(response.status(), 200);
/// # Ok(())
/// # }
/// ```
#[derive(Clone, Debug)]
pub struct ProbeLayer {
    health: Health,
    paths: ProbePaths,
}

impl ProbeLayer {
    /// Answers the default paths `/health`, `/ready` and `/startup`.
    pub fn new(health: Health) -> Self {
        Self {
            health,
            paths: ProbePaths::default(),
        }
    }

    /// Answers on these paths instead.
    pub fn paths(mut self, paths: ProbePaths) -> Self {
        self.paths = paths;
        self
    }
}

impl<S> Layer<S> for ProbeLayer {
    type Service = ProbeRouter<S>;

    fn layer(&self, inner: S) -> Self::Service {
        ProbeRouter {
            inner,
            health: self.health.clone(),
            paths: self.paths.clone(),
        }
    }
}

/// The service [`ProbeLayer`] builds.
#[derive(Clone, Debug)]
pub struct ProbeRouter<S> {
    inner: S,
    health: Health,
    paths: ProbePaths,
}

/// Always ready: a probe must not wait on the inner service's backpressure (a concurrency limit
/// reached under load would otherwise hold `/health` until the kubelet restarts a busy pod).
/// Other requests wait for the inner service's readiness in their future, on a clone of it, as
/// axum's `Router` does.
impl<S, ReqBody, ResBody> Service<Request<ReqBody>> for ProbeRouter<S>
where
    S: Service<Request<ReqBody>, Response = Response<ResBody>> + Clone,
{
    type Response = Response<Either<ProbeBody, ResBody>>;
    type Error = S::Error;
    type Future = RouterFuture<InnerFuture<S, Request<ReqBody>>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: Request<ReqBody>) -> Self::Future {
        let is_read = request.method() == Method::GET || request.method() == Method::HEAD;
        match self.paths.probe_for(request.uri().path()) {
            Some(probe) if is_read => RouterFuture::Probe {
                future: self.health.answer(probe, &request),
            },
            _ => RouterFuture::Inner {
                future: InnerFuture {
                    state: InnerState::Waiting {
                        service: self.inner.clone(),
                        request: Some(request),
                    },
                },
            },
        }
    }
}

/// A request passed through by [`ProbeRouter`]: waits until the inner service is ready, then
/// calls it.
#[pin_project]
pub struct InnerFuture<S: Service<R>, R> {
    #[pin]
    state: InnerState<S, R>,
}

#[pin_project(project = InnerStateProj)]
enum InnerState<S: Service<R>, R> {
    Waiting {
        service: S,
        request: Option<R>,
    },
    Called {
        #[pin]
        future: S::Future,
    },
}

impl<S: Service<R>, R> Future for InnerFuture<S, R> {
    type Output = Result<S::Response, S::Error>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut state = self.project().state;
        loop {
            match state.as_mut().project() {
                InnerStateProj::Waiting { service, request } => {
                    if let Err(error) = ready!(service.poll_ready(cx)) {
                        return Poll::Ready(Err(error));
                    }
                    // The request is taken once, on the way to `Called`.
                    let Some(request) = request.take() else {
                        return Poll::Pending;
                    };
                    let future = service.call(request);
                    state.set(InnerState::Called { future });
                }
                InnerStateProj::Called { future } => return future.poll(cx),
            }
        }
    }
}

impl<S: Service<R>, R> std::fmt::Debug for InnerFuture<S, R> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("InnerFuture").finish_non_exhaustive()
    }
}

/// The future of [`ProbeRouter`].
#[pin_project(project = RouterFutureProj)]
#[derive(Debug)]
pub enum RouterFuture<F> {
    /// A probe answer.
    Probe {
        /// The probe's answer.
        #[pin]
        future: crate::service::ResponseFuture,
    },
    /// The inner service's answer.
    Inner {
        /// The inner service's future.
        #[pin]
        future: F,
    },
}

impl<F, ResBody, E> Future for RouterFuture<F>
where
    F: Future<Output = Result<Response<ResBody>, E>>,
{
    type Output = Result<Response<Either<ProbeBody, ResBody>>, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.project() {
            RouterFutureProj::Probe { future } => future.poll(cx).map(|result| match result {
                Ok(response) => Ok(response.map(Either::Left)),
                Err(never) => match never {},
            }),
            RouterFutureProj::Inner { future } => future
                .poll(cx)
                .map(|result| result.map(|response| response.map(Either::Right))),
        }
    }
}
