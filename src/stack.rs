//! The composed middleware stack, in the documented order.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use http::{Request, Response};
use periscope_error::{ErrorLayer, ErrorService};
use periscope_log::{AccessLog, AccessLogLayer};
use periscope_metrics::{Metrics, MetricsBody, MetricsLayer};
use periscope_trace::{Correlation, CorrelationLayer};
use tower_layer::Layer;
use tower_service::Service;

/// Every periscope middleware as one layer, outermost first:
///
/// 1. correlation and trace ([`CorrelationLayer`]): ids exist before anything else runs, so
///    every later log line and the panic response carry them;
/// 2. RED metrics ([`MetricsLayer`], when metrics are on): counts every request, including
///    ones that panic or time out below;
/// 3. the access log ([`AccessLogLayer`]): one line per completed request;
/// 4. panic catching and error envelopes ([`ErrorLayer`]): innermost, so a panic becomes a 500
///    envelope that the layers above still see, count and log.
///
/// Made by [`Observability::layer`](crate::Observability::layer). With axum, add it with
/// `Router::layer` so the route template (`MatchedPath`) is known to every layer.
///
/// ```
/// use std::convert::Infallible;
/// use http::{Request, Response};
/// use tower::{Layer, ServiceExt, service_fn};
///
/// # tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(async {
/// let obs = periscope::Observability::builder()
///     .service_name("orders")
///     .log_writer(std::io::sink())
///     .build()?;
/// // With axum: `Router::new().route("/orders", ..).layer(obs.layer())`.
/// let service = obs.layer().layer(service_fn(|_: Request<String>| async {
///     Ok::<_, Infallible>(Response::new(String::from("[]")))
/// }));
/// let request = Request::get("/orders")
///     .header("x-request-id", "order-7")
///     .body(String::new())
///     .unwrap();
/// let response = service.oneshot(request).await.unwrap();
/// assert_eq!(response.headers()["x-request-id"], "order-7");
/// # Ok::<(), periscope::Error>(())
/// # }).unwrap();
/// ```
#[derive(Clone, Debug)]
pub struct ObservabilityLayer {
    pub(crate) correlation: CorrelationLayer,
    pub(crate) metrics: Option<MetricsLayer>,
    pub(crate) access_log: AccessLogLayer,
    pub(crate) errors: ErrorLayer,
}

/// The service [`ObservabilityLayer`] makes.
pub type ObservabilityService<S> = Correlation<MaybeMetrics<AccessLog<ErrorService<S>>>>;

impl<S> Layer<S> for ObservabilityLayer {
    type Service = ObservabilityService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        let inner = self.access_log.layer(self.errors.layer(inner));
        let inner = match &self.metrics {
            Some(metrics) => MaybeMetrics::On(metrics.layer(inner)),
            None => MaybeMetrics::Off(inner),
        };
        self.correlation.layer(inner)
    }
}

/// The layer for outgoing calls made by
/// [`Observability::client_layer`](crate::Observability::client_layer): `ClientTraceLayer`
/// outside, `ClientMetricsLayer` inside.
pub type ClientLayer =
    tower_layer::Stack<periscope_metrics::ClientMetricsLayer, periscope_trace::ClientTraceLayer>;

/// The service [`ClientLayer`] makes around a client `C`. For a client answering
/// `Response<B>` it answers `Response<ClientBody<MetricsBody<B>>>`
/// ([`ClientBody`](periscope_trace::ClientBody),
/// [`MetricsBody`]): the call's span, and the count of a gRPC
/// call whose code comes in its trailers, wait for that body's end, so read it to its end or
/// drop it.
pub type ClientService<C> = periscope_trace::ClientTrace<periscope_metrics::ClientMetrics<C>>;

/// The metrics layer when metrics are on, the inner service as is when they are off; unlike
/// `tower::util::Either`, it keeps the inner error type, so the stack stays usable with axum.
/// Either way the response body is a [`MetricsBody`] (holding the request in the in-flight
/// gauge only when metrics are on), so both arms have one response type.
#[derive(Clone, Debug)]
pub enum MaybeMetrics<S> {
    /// Metrics recorded.
    On(Metrics<S>),
    /// Metrics off.
    Off(S),
}

impl<S, ReqBody, ResBody> Service<Request<ReqBody>> for MaybeMetrics<S>
where
    S: Service<Request<ReqBody>, Response = Response<ResBody>>,
    Metrics<S>:
        Service<Request<ReqBody>, Response = Response<MetricsBody<ResBody>>, Error = S::Error>,
{
    type Response = Response<MetricsBody<ResBody>>;
    type Error = S::Error;
    type Future = MaybeMetricsFuture<<Metrics<S> as Service<Request<ReqBody>>>::Future, S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        match self {
            Self::On(service) => service.poll_ready(cx),
            Self::Off(service) => service.poll_ready(cx),
        }
    }

    // Inlined: the metrics layer's future (large) is then copied once less per request.
    #[inline]
    fn call(&mut self, request: Request<ReqBody>) -> Self::Future {
        match self {
            Self::On(service) => MaybeMetricsFuture::On {
                future: service.call(request),
            },
            Self::Off(service) => MaybeMetricsFuture::Off {
                future: service.call(request),
            },
        }
    }
}

/// The response future of [`MaybeMetrics`].
#[pin_project::pin_project(project = MaybeMetricsProj)]
#[must_use = "futures do nothing unless polled"]
pub enum MaybeMetricsFuture<A, B> {
    /// Metrics recorded.
    On {
        /// The metrics layer's future.
        #[pin]
        future: A,
    },
    /// Metrics off.
    Off {
        /// The inner service's future.
        #[pin]
        future: B,
    },
}

impl<A, B, ResBody, E> Future for MaybeMetricsFuture<A, B>
where
    A: Future<Output = Result<Response<MetricsBody<ResBody>>, E>>,
    B: Future<Output = Result<Response<ResBody>, E>>,
{
    type Output = A::Output;

    // Inlined, as `call`: the response (large) is copied once less.
    #[inline]
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<A::Output> {
        match self.project() {
            MaybeMetricsProj::On { future } => future.poll(cx),
            MaybeMetricsProj::Off { future } => future
                .poll(cx)
                .map(|output| output.map(|response| response.map(MetricsBody::new))),
        }
    }
}
