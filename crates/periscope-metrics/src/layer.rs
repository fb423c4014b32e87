//! The RED layer: its builder, the layer, the service and the response future.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};

use http::{Request, Response};
use http_body::Body;
use prometheus_client::metrics::MetricType;

use crate::body::{AtEnd, MetricsBody};
use crate::error::MetricsError;
use crate::guard::{Caps, GuardedFamily, LabelGuard};
use crate::labels::{CANCELLED, OTHER_METHOD, StatusLabel, UNMATCHED, method_label};
use crate::names::{check_label_names, check_metric_name};
use crate::red::{InFlight, Part, Recording, Red, RequestsView, RouteFn};
use crate::registry::MetricsRegistry;
use periscope_context::grpc::{
    HeadOutcome, StreamEnd, StreamEndWatch, answer_status, head_outcome,
};
use periscope_context::{Observed, RouteTemplates};

/// OpenTelemetry's advice for HTTP server durations, in seconds.
pub const DURATION_BUCKETS: [f64; 14] = [
    0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0,
];

/// Body-size buckets in bytes: powers of 4 from 64 B to 16 MiB.
pub const SIZE_BUCKETS: [f64; 10] = [
    64.0, 256.0, 1024.0, 4096.0, 16384.0, 65536.0, 262144.0, 1048576.0, 4194304.0, 16777216.0,
];

/// Configures the RED layer; [`register`](Self::register) adds its families to a registry and
/// returns the layer.
///
/// Defaults: `http_server_requests_total{method,route,status}`,
/// `http_server_request_duration_seconds{method,route,status}` (OpenTelemetry buckets, trace
/// exemplars), `http_server_requests_in_flight{method,route}`; status as its class; 100 values
/// per label and 2000 series per family.
///
/// ```
/// use periscope_metrics::{Caps, MetricsLayer, MetricsRegistry, StatusLabel};
///
/// let registry = MetricsRegistry::new();
/// // A team keeping its own scheme: api_requests_total{endpoint,method,status} with exact codes.
/// let layer = MetricsLayer::builder()
///     .prefix("api")
///     .requests_name("requests_total")
///     .duration_name("request_duration_seconds")
///     .in_flight_name("requests_in_flight")
///     .route_label("endpoint")
///     .status_label(StatusLabel::Code)
///     .route_templates(["/v1/jobs/{job_id}", "/v1/models/{model}/predict"])
///     .caps(Caps::default().label("endpoint", 50))
///     .register(&registry)
///     .unwrap();
/// ```
#[derive(Clone, Debug)]
#[must_use = "call register to build the layer"]
pub struct MetricsLayerBuilder {
    prefix: Option<String>,
    requests_name: String,
    duration_name: String,
    in_flight_name: String,
    request_size_name: Option<String>,
    response_size_name: Option<String>,
    method_label: String,
    route_label: String,
    status_label_name: String,
    duration_buckets: Vec<f64>,
    size_buckets: Vec<f64>,
    status: StatusLabel,
    caps: Caps,
    templates: Vec<String>,
    route_fn: Option<RouteFn>,
    exemplars: bool,
    ignored_paths: Vec<String>,
}

impl Default for MetricsLayerBuilder {
    fn default() -> Self {
        Self {
            prefix: None,
            requests_name: "http_server_requests_total".into(),
            duration_name: "http_server_request_duration_seconds".into(),
            in_flight_name: "http_server_requests_in_flight".into(),
            request_size_name: None,
            response_size_name: None,
            method_label: "method".into(),
            route_label: "route".into(),
            status_label_name: "status".into(),
            duration_buckets: DURATION_BUCKETS.to_vec(),
            size_buckets: SIZE_BUCKETS.to_vec(),
            status: StatusLabel::Class,
            caps: Caps::default(),
            templates: Vec::new(),
            route_fn: None,
            exemplars: true,
            ignored_paths: Vec::new(),
        }
    }
}

impl MetricsLayerBuilder {
    /// A prefix for every RED metric name: `api` makes `api_http_server_requests_total`.
    pub fn prefix(mut self, prefix: impl Into<String>) -> Self {
        self.prefix = Some(prefix.into());
        self
    }

    /// The request counter's name (default `http_server_requests_total`).
    pub fn requests_name(mut self, name: impl Into<String>) -> Self {
        self.requests_name = name.into();
        self
    }

    /// The duration histogram's name (default `http_server_request_duration_seconds`).
    pub fn duration_name(mut self, name: impl Into<String>) -> Self {
        self.duration_name = name.into();
        self
    }

    /// The in-flight gauge's name (default `http_server_requests_in_flight`).
    pub fn in_flight_name(mut self, name: impl Into<String>) -> Self {
        self.in_flight_name = name.into();
        self
    }

    /// Also records request body sizes, as `http_server_request_body_size_bytes`. Only bodies
    /// whose length is known up front are observed: a `Content-Length`, or no body at all (a
    /// `GET` without one counts as 0); a chunked body is not.
    pub fn request_size(self) -> Self {
        self.request_size_name("http_server_request_body_size_bytes")
    }

    /// Records request body sizes under `name`.
    pub fn request_size_name(mut self, name: impl Into<String>) -> Self {
        self.request_size_name = Some(name.into());
        self
    }

    /// Also records response body sizes, as `http_server_response_body_size_bytes`. Only
    /// bodies whose length is known when the response starts are observed (a full body, or a
    /// stream with a `Content-Length`; not other streams);
    /// responses to `HEAD` and 1xx, 204 and 304 responses count as 0, as they send no body.
    pub fn response_size(self) -> Self {
        self.response_size_name("http_server_response_body_size_bytes")
    }

    /// Records response body sizes under `name`.
    pub fn response_size_name(mut self, name: impl Into<String>) -> Self {
        self.response_size_name = Some(name.into());
        self
    }

    /// The method label's name (default `method`).
    pub fn method_label(mut self, name: impl Into<String>) -> Self {
        self.method_label = name.into();
        self
    }

    /// The route label's name (default `route`).
    pub fn route_label(mut self, name: impl Into<String>) -> Self {
        self.route_label = name.into();
        self
    }

    /// The status label's name (default `status`).
    pub fn status_label_name(mut self, name: impl Into<String>) -> Self {
        self.status_label_name = name.into();
        self
    }

    /// Status as its class (`2xx`, the default) or its exact code (`200`).
    pub fn status_label(mut self, status: StatusLabel) -> Self {
        self.status = status;
        self
    }

    /// The duration buckets in seconds (default [`DURATION_BUCKETS`]).
    pub fn duration_buckets(mut self, buckets: impl IntoIterator<Item = f64>) -> Self {
        self.duration_buckets = buckets.into_iter().collect();
        self
    }

    /// The body-size buckets in bytes (default [`SIZE_BUCKETS`]).
    pub fn size_buckets(mut self, buckets: impl IntoIterator<Item = f64>) -> Self {
        self.size_buckets = buckets.into_iter().collect();
        self
    }

    /// Caps per label (by label name) and per family.
    pub fn caps(mut self, caps: Caps) -> Self {
        self.caps = caps;
        self
    }

    /// The route templates of a service without axum's `MatchedPath` (see
    /// [`RouteTemplates`]): a request is labelled with the template it matches.
    pub fn route_templates<I, T>(mut self, templates: I) -> Self
    where
        I: IntoIterator<Item = T>,
        T: Into<String>,
    {
        self.templates.extend(templates.into_iter().map(Into::into));
        self
    }

    /// A function naming the route when neither `MatchedPath` nor a template does. It should
    /// name only the service's own routes: the route cap admits values first come, first
    /// served, and keeps them, so paths a client makes up would take the room of real routes,
    /// whose requests would then be counted under `__overflow__`.
    ///
    /// ```
    /// # use periscope_metrics::MetricsLayer;
    /// // A gRPC service: the path is the method (`/pkg.Service/Method`). A path the service
    /// // has no method for is `__unmatched__`, not a series of its own.
    /// const METHODS: [&str; 2] = ["/inference.v1.Inference/Predict", "/inference.v1.Inference/Stream"];
    /// let builder = MetricsLayer::builder()
    ///     .route_fn(|uri, _| METHODS.into_iter().find(|method| *method == uri.path()));
    /// ```
    pub fn route_fn(mut self, route_fn: RouteFn) -> Self {
        self.route_fn = Some(route_fn);
        self
    }

    /// Whether the duration histogram carries the sampled trace's id as an exemplar
    /// (default on).
    pub fn exemplars(mut self, enabled: bool) -> Self {
        self.exemplars = enabled;
        self
    }

    /// A path (exact match) whose requests are not recorded, such as `/metrics` itself.
    pub fn ignore_path(mut self, path: impl Into<String>) -> Self {
        self.ignored_paths.push(path.into());
        self
    }

    /// Registers the RED families in `registry` and returns the layer recording into them.
    /// On an error, none of them is registered.
    pub fn register(self, registry: &MetricsRegistry) -> Result<MetricsLayer, MetricsError> {
        let full = |name: &str| match &self.prefix {
            Some(prefix) => format!("{prefix}_{name}"),
            None => name.to_owned(),
        };
        let requests_name = full(&self.requests_name);
        let duration_name = full(&self.duration_name);
        let in_flight_name = full(&self.in_flight_name);
        let request_size_name = self.request_size_name.as_deref().map(full);
        let response_size_name = self.response_size_name.as_deref().map(full);
        for name in [&requests_name, &duration_name, &in_flight_name]
            .into_iter()
            .chain(request_size_name.as_ref())
            .chain(response_size_name.as_ref())
        {
            check_metric_name(name)?;
        }
        let (method, route, status) = (
            self.method_label.as_str(),
            self.route_label.as_str(),
            self.status_label_name.as_str(),
        );
        check_label_names(&requests_name, &[method, route, status])?;
        self.caps
            .check_labels(&requests_name, &[method, route, status])?;
        let duration_buckets = checked_buckets(&duration_name, &self.duration_buckets)?;
        let size_buckets = match request_size_name.as_ref().or(response_size_name.as_ref()) {
            Some(name) => checked_buckets(name, &self.size_buckets)?,
            None => Arc::from(SIZE_BUCKETS),
        };
        let routes = RouteTemplates::new(&self.templates)?;
        // All or nothing, at once: a name refused, or taken by a registration racing this one,
        // must not leave the families before it behind.
        let histograms = request_size_name.iter().chain(&response_size_name);
        let metric_types: Vec<_> = [
            (requests_name.as_str(), MetricType::Counter),
            (duration_name.as_str(), MetricType::Histogram),
            (in_flight_name.as_str(), MetricType::Gauge),
        ]
        .into_iter()
        .chain(histograms.map(|name| (name.as_str(), MetricType::Histogram)))
        .collect();
        registry.claim_all(&metric_types)?;

        // The families share their method and route guards, so both keep the same values.
        // The layer's own fallbacks are kept outside the caps: requests no route matched stay
        // `__unmatched__` (not `__overflow__`) once the declared routes fill the route cap.
        let method_guard = LabelGuard::reserving(self.caps.label_cap(method), &[OTHER_METHOD]);
        let route_guard = LabelGuard::reserving(self.caps.label_cap(route), &[UNMATCHED]);
        let status_guard = LabelGuard::reserving(self.caps.label_cap(status), &[CANCELLED]);
        let series_cap = self.caps.series_cap();
        let requests = GuardedFamily::with_guards(
            &requests_name,
            [method, route, status],
            [method_guard.clone(), route_guard.clone(), status_guard],
            series_cap,
            registry.overflow(),
            Box::new(Red::new_series(
                duration_buckets,
                size_buckets,
                request_size_name.is_some(),
                response_size_name.is_some(),
            )),
        );
        let in_flight = GuardedFamily::with_guards(
            &in_flight_name,
            [method, route],
            [method_guard, route_guard],
            series_cap,
            registry.overflow(),
            Box::new(prometheus_client::metrics::gauge::Gauge::default),
        );

        let view = |part| RequestsView {
            family: requests.clone(),
            part,
        };
        registry.add_claimed(
            &requests_name,
            "HTTP requests completed, by method, route and status",
            view(Part::Count),
        )?;
        registry.add_claimed(
            &duration_name,
            "HTTP request duration until the response started (a gRPC call answered in trailers: until its end), in seconds",
            view(Part::Duration),
        )?;
        registry.add_claimed(
            &in_flight_name,
            "HTTP requests being served now (until their response body ends), by method and route",
            in_flight.clone(),
        )?;
        if let Some(name) = &request_size_name {
            registry.add_claimed(
                name,
                "HTTP request body size in bytes",
                view(Part::RequestSize),
            )?;
        }
        if let Some(name) = &response_size_name {
            registry.add_claimed(
                name,
                "HTTP response body size in bytes",
                view(Part::ResponseSize),
            )?;
        }

        Ok(MetricsLayer {
            red: Arc::new(Red {
                requests,
                in_flight,
                status: self.status,
                routes,
                route_fn: self.route_fn,
                exemplars: self.exemplars,
                ignored_paths: self.ignored_paths,
            }),
        })
    }
}

pub(crate) fn checked_buckets(metric: &str, buckets: &[f64]) -> Result<Arc<[f64]>, MetricsError> {
    let valid = !buckets.is_empty()
        && buckets.iter().all(|bound| bound.is_finite())
        && buckets.windows(2).all(|pair| pair[0] < pair[1]);
    if valid {
        Ok(Arc::from(buckets))
    } else {
        Err(MetricsError::InvalidBuckets {
            metric: metric.to_owned(),
        })
    }
}

/// The RED layer: counts every request, times it, and tracks it in flight, under bounded
/// labels. Build it with [`MetricsLayer::builder`].
///
/// Recording happens when the inner service's response is ready (duration is time to the
/// response head, so a long stream does not swamp latency objectives). The request stays in
/// the in-flight gauge until its response body ends, fails or is dropped (the client went
/// away): the response body is a [`MetricsBody`] holding it, so a server-sent-event stream
/// or a streamed answer counts as being served for as long as it runs, as OpenTelemetry's
/// `http.server.active_requests` does. A request whose future is dropped first is recorded
/// with status `cancelled`; one that panics, as a server error; either way it leaves the
/// in-flight gauge.
///
/// A gRPC answer whose `grpc-status` comes in its trailers, after streamed messages (HTTP 200,
/// `application/grpc`, no `grpc-status` in its head), is recorded when its body ends instead:
/// under the status its code stands for (`UNKNOWN`, 500, when none comes; `INTERNAL`, 500,
/// when the body fails), or `cancelled` when the body is dropped first (the client cancelled
/// the call or went away, as for a call dropped before its head), with the duration of the
/// whole call (OpenTelemetry's `rpc.server.duration`), and it stays in the in-flight gauge
/// until then. The trailers are read by periscope-log's `AccessLogLayer`, which tells this
/// layer through a [`StreamEndWatch`] in the response's extensions: compose it inside this
/// layer, as `periscope`'s `obs.layer()` does. Without it such a call is recorded at its head,
/// as the 200 it was then (and still in flight until its body ends). The response body is the
/// inner service's, untouched, inside the [`MetricsBody`].
///
/// ```
/// use periscope_metrics::{MetricsLayer, MetricsRegistry};
/// use tower_layer::Layer;
/// # use std::convert::Infallible;
///
/// let registry = MetricsRegistry::new();
/// let layer = MetricsLayer::builder()
///     .route_templates(["/users/{id}"])
///     .register(&registry)
///     .unwrap();
///
/// // Any Tower service over http::Request / http::Response.
/// let app = tower::service_fn(|_request: http::Request<String>| async {
///     Ok::<_, Infallible>(http::Response::new(String::from("hello")))
/// });
/// let app = layer.layer(app);
/// ```
///
/// With axum, add it with `Router::layer` so it runs after routing and sees `MatchedPath`
/// (feature `axum`).
#[derive(Clone)]
pub struct MetricsLayer {
    red: Arc<Red>,
}

impl MetricsLayer {
    /// The builder, with the defaults described on [`MetricsLayerBuilder`].
    pub fn builder() -> MetricsLayerBuilder {
        MetricsLayerBuilder::default()
    }

    /// The layer with every default, registered in `registry`.
    pub fn new(registry: &MetricsRegistry) -> Result<Self, MetricsError> {
        Self::builder().register(registry)
    }

    /// Requests being served now, over all methods and routes: what `/debug/status` shows.
    pub fn in_flight(&self) -> i64 {
        let mut total = 0;
        self.red
            .in_flight
            .for_each_metric(|gauge| total += gauge.get());
        total
    }
}

impl std::fmt::Debug for MetricsLayer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MetricsLayer")
            .field("requests", &self.red.requests)
            .field("in_flight", &self.red.in_flight)
            .field("status", &self.red.status)
            .field("routes", &self.red.routes)
            .finish_non_exhaustive()
    }
}

impl<S> tower_layer::Layer<S> for MetricsLayer {
    type Service = Metrics<S>;

    fn layer(&self, inner: S) -> Metrics<S> {
        Metrics {
            inner,
            red: self.red.clone(),
        }
    }
}

/// The service made by [`MetricsLayer`].
#[derive(Clone)]
pub struct Metrics<S> {
    inner: S,
    red: Arc<Red>,
}

impl<S: std::fmt::Debug> std::fmt::Debug for Metrics<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics")
            .field("inner", &self.inner)
            .finish_non_exhaustive()
    }
}

impl<S, ReqBody, ResBody> tower_service::Service<Request<ReqBody>> for Metrics<S>
where
    S: tower_service::Service<Request<ReqBody>, Response = Response<ResBody>>,
    ReqBody: Body,
    ResBody: Body,
{
    type Response = Response<MetricsBody<ResBody>>;
    type Error = S::Error;
    type Future = ResponseFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: Request<ReqBody>) -> Self::Future {
        let red = &self.red;
        // The same layer applied twice (the stack on a nested router and on the outer one)
        // records the request once, outside. Another metrics layer (other names, another
        // registry) still records it. The mark is shared with the access log inside.
        let recorded = match request.extensions_mut().get_mut::<Observed>() {
            Some(observed) => !observed.record(Arc::as_ptr(red) as usize),
            None => {
                let mut observed = Observed::default();
                observed.record(Arc::as_ptr(red) as usize);
                request.extensions_mut().insert(observed);
                false
            }
        };
        if recorded || red.ignores(request.uri().path()) {
            return ResponseFuture {
                inner: self.inner.call(request),
                recording: None,
            };
        }
        let request_size = request.body().size_hint().exact();
        let mut recording = Some(Recording::start(
            red.clone(),
            method_label(request.method()),
            red.route(&request),
            red.exemplar(&request),
            request_size,
        ));
        // A panic in the inner `call` is the service's failure: counted as such here, so a
        // recording dropped later while the thread unwinds is another future's panic.
        let guard = PanicGuard {
            was_panicking: std::thread::panicking(),
            recording: &mut recording,
        };
        let inner = self.inner.call(request);
        drop(guard);
        ResponseFuture { inner, recording }
    }
}

/// The response future of [`Metrics`].
#[pin_project::pin_project]
pub struct ResponseFuture<F> {
    #[pin]
    inner: F,
    recording: Option<Recording>,
}

impl<F, ResBody, E> Future for ResponseFuture<F>
where
    F: Future<Output = Result<Response<ResBody>, E>>,
    ResBody: Body,
{
    type Output = Result<Response<MetricsBody<ResBody>>, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let guard = PanicGuard {
            recording: this.recording,
            was_panicking: std::thread::panicking(),
        };
        let output = ready!(this.inner.poll(cx));
        // Taken, so an error leaves the in-flight gauge now rather than when the future is
        // dropped; a response hands its place in the gauge to its body.
        let in_flight = guard
            .recording
            .take()
            .and_then(|recording| record(recording, &output));
        // One way out for every answer, as parts and body rather than through `map`s: the
        // response is large, and this way it is copied once less per request.
        Poll::Ready(match output {
            Ok(response) => {
                let (parts, body) = response.into_parts();
                let end = in_flight.map_or(AtEnd::Nothing, AtEnd::InFlight);
                Ok(Response::from_parts(
                    parts,
                    MetricsBody::with_end(body, end),
                ))
            }
            Err(error) => Err(error),
        })
    }
}

/// Records the inner service's answer; returns the request's place in the in-flight gauge for
/// the response body to hold, or `None` when it leaves the gauge otherwise (an error, now; a
/// gRPC call answered in its trailers, with its recording at its end).
fn record<B: Body, E>(
    mut recording: Recording,
    output: &Result<Response<B>, E>,
) -> Option<InFlight> {
    let Ok(response) = output else {
        recording.finish(recording.status_label().server_error(), None);
        return None;
    };
    let size = recording.response_size(response);
    // A gRPC call whose code comes in its trailers, after its messages: the access log inside
    // watches its body (the watch, in the response's extensions, comes with no other answer).
    // Recorded, and in flight, until the body ends.
    if let Some(watch) = response.extensions().get::<StreamEndWatch>()
        && head_outcome(response.status(), response.headers()) == HeadOutcome::Trailers
    {
        // The recording, and with it the call's place in the gauge, goes with the hook: the
        // access log ends the watch when the body ends.
        watch.on_end(move |end| match end {
            // The client cancelled (or went away) mid-stream: `cancelled`, as a call it drops
            // before the head, not the 499 of a `CANCELLED` the service answered. The body
            // was not sent in full.
            StreamEnd::Dropped => recording.finish(CANCELLED, None),
            end => {
                let status = recording.status_label().value(end.code().http_status());
                recording.finish(status, size);
            }
        });
        return None;
    }
    // A gRPC answer counts by the status its code stands for: a failed call is not a success.
    // Without a watch, a call whose code comes in its trailers counts as the 200 of its head.
    let status = answer_status(response.status(), response.headers());
    // A final answer of 1xx (but 101, an upgrade) never reaches the client as such: hyper
    // sends a 500 in its place over HTTP/1.1 (and resets the stream over HTTP/2).
    let status = if status.is_informational() && status != http::StatusCode::SWITCHING_PROTOCOLS {
        http::StatusCode::INTERNAL_SERVER_ERROR
    } else {
        status
    };
    recording.finish(recording.status_label().value(status), size);
    // Recorded and timed at the head; in flight until the body ends or is dropped.
    recording.into_in_flight()
}

/// Records the request as a server error when the inner service's `call`, or a poll of its
/// future, panics. A layer above that catches the panic (tower-http's `CatchPanicLayer`) drops
/// this future only after the unwinding, and a future dropped while another one unwinds was
/// cancelled, not failed: the drop cannot tell these apart, so the panic is seen where it
/// happens.
struct PanicGuard<'a> {
    recording: &'a mut Option<Recording>,
    was_panicking: bool,
}

impl Drop for PanicGuard<'_> {
    fn drop(&mut self) {
        if !self.was_panicking
            && std::thread::panicking()
            && let Some(mut recording) = self.recording.take()
        {
            recording.finish(recording.status_label().server_error(), None);
        }
    }
}

impl<F> std::fmt::Debug for ResponseFuture<F> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ResponseFuture").finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use periscope_context::{RequestContext, RequestId};

    fn request_with(ctx: Option<RequestContext>) -> Request<()> {
        let mut request = Request::get("/users/7").body(()).unwrap();
        if let Some(ctx) = ctx {
            request.extensions_mut().insert(ctx);
        }
        request
    }

    #[test]
    fn exemplars_link_sampled_traces_only() {
        let layer = MetricsLayer::new(&MetricsRegistry::new()).unwrap();
        let sampled = RequestContext::start(RequestId::generate(), true);
        let unsampled = RequestContext::start(RequestId::generate(), false);
        let trace_id = sampled.trace_id;
        assert_eq!(
            layer.red.exemplar(&request_with(Some(sampled.clone()))),
            Some(trace_id)
        );
        assert_eq!(layer.red.exemplar(&request_with(Some(unsampled))), None);
        assert_eq!(layer.red.exemplar(&request_with(None)), None);
        // Without the context in the extensions, the task's current context is used.
        let from_scope = sampled.in_scope(|| layer.red.exemplar(&request_with(None)));
        assert_eq!(from_scope, Some(trace_id));

        let off = MetricsLayer::builder()
            .exemplars(false)
            .register(&MetricsRegistry::new())
            .unwrap();
        assert_eq!(off.red.exemplar(&request_with(Some(sampled))), None);
    }

    #[test]
    fn route_comes_from_templates_then_the_route_fn_never_the_path() {
        let layer = MetricsLayer::builder()
            .route_templates(["/users/{id}"])
            .register(&MetricsRegistry::new())
            .unwrap();
        assert_eq!(layer.red.route(&request_with(None)), "/users/{id}");
        let other = Request::get("/admin/secret?x=1").body(()).unwrap();
        assert_eq!(layer.red.route(&other), crate::UNMATCHED);

        let grpc = MetricsLayer::builder()
            .route_fn(|uri, _| uri.path().strip_prefix("/grpc"))
            .register(&MetricsRegistry::new())
            .unwrap();
        let call = Request::post("/grpc/pkg.Svc/Run").body(()).unwrap();
        assert_eq!(grpc.red.route(&call), "/pkg.Svc/Run");
        assert_eq!(grpc.red.route(&other), crate::UNMATCHED);

        // The route an outer layer matched comes before the layer's own templates.
        let mut matched = request_with(None);
        matched
            .extensions_mut()
            .insert(periscope_context::MatchedRoute::new("/users/{user}"));
        assert_eq!(layer.red.route(&matched), "/users/{user}");
    }

    #[test]
    fn ignored_paths_are_passed_through_unrecorded() {
        use tower::ServiceExt;
        use tower_layer::Layer;

        let registry = MetricsRegistry::new();
        let layer = MetricsLayer::builder()
            .ignore_path("/metrics")
            .register(&registry)
            .unwrap();
        let app = layer.layer(tower::service_fn(|_request: Request<String>| async {
            Ok::<_, std::convert::Infallible>(Response::new(String::from("ok")))
        }));
        let runtime = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        for path in ["/metrics", "/metrics", "/work"] {
            let request = Request::get(path).body(String::new()).unwrap();
            let response = runtime.block_on(app.clone().oneshot(request)).unwrap();
            assert_eq!(response.body().get_ref(), "ok");
        }
        let text = registry.encode_prometheus().unwrap();
        assert!(
            text.contains(
                r#"http_server_requests_total{method="GET",route="__unmatched__",status="2xx"} 1"#
            ),
            "{text}"
        );
    }

    #[test]
    fn bad_configuration_is_refused_with_a_reason() {
        let registry = MetricsRegistry::new();
        let err = MetricsLayer::builder()
            .duration_buckets([0.1, 0.05])
            .register(&registry)
            .unwrap_err();
        assert!(matches!(err, MetricsError::InvalidBuckets { .. }), "{err}");
        let err = MetricsLayer::builder()
            .route_label("method")
            .register(&registry)
            .unwrap_err();
        assert!(matches!(err, MetricsError::DuplicateLabel { .. }), "{err}");
        let err = MetricsLayer::builder()
            .prefix("9lives")
            .register(&registry)
            .unwrap_err();
        assert!(
            matches!(err, MetricsError::InvalidMetricName { .. }),
            "{err}"
        );
        MetricsLayer::new(&registry).unwrap();
        let err = MetricsLayer::new(&registry).unwrap_err();
        assert!(
            matches!(err, MetricsError::AlreadyRegistered { .. }),
            "{err}"
        );
    }

    #[test]
    fn a_refused_name_registers_none_of_the_families() {
        use prometheus_client::metrics::gauge::Gauge;

        let registry = MetricsRegistry::new();
        registry
            .register("requests_active", "taken", Gauge::<i64>::default())
            .unwrap();
        let err = MetricsLayer::builder()
            .in_flight_name("requests_active")
            .register(&registry)
            .unwrap_err();
        assert!(
            matches!(err, MetricsError::AlreadyRegistered { .. }),
            "{err}"
        );
        let err = MetricsLayer::builder()
            .response_size_name("http_server_requests")
            .register(&registry)
            .unwrap_err();
        assert!(
            matches!(err, MetricsError::AlreadyRegistered { .. }),
            "{err}"
        );
        let text = registry.encode_openmetrics().unwrap();
        assert!(!text.contains("http_server_request"), "{text}");
        // With the clash fixed, the same registry takes the layer.
        MetricsLayer::builder()
            .in_flight_name("http_server_requests_in_flight")
            .register(&registry)
            .unwrap();
    }
}
