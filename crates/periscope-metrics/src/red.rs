//! The RED families (rate, errors, duration) and the recording of one request.

use std::sync::Arc;
use std::time::Instant;

use http::Request;
use periscope_context::order::{self, Misordering};
use periscope_context::{RequestContext, TraceId};
use prometheus_client::encoding::{EncodeLabelSet, EncodeMetric, LabelSetEncoder, MetricEncoder};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::exemplar::HistogramWithExemplars;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;

use crate::guard::{GuardedFamily, Series};
use crate::labels::{CANCELLED, OVERFLOW, StatusLabel, UNMATCHED};
use periscope_context::RouteTemplates;

/// Finds the route template of a request when neither axum's `MatchedPath` nor the declared
/// templates name it: for example the gRPC method path of a tonic service, among the methods
/// it has. Whatever it returns still goes through the route label's cap, which keeps the first
/// values it sees: return only the service's own routes, never a path as the client sent it.
pub type RouteFn = for<'a> fn(&'a http::Uri, &'a http::Extensions) -> Option<&'a str>;

/// The metrics of one `(method, route, status)` series. The families registered for the
/// RED layer are views of the same series, so recording a request costs one lookup.
#[derive(Debug)]
pub(crate) struct RequestSeries {
    count: Counter,
    duration: HistogramWithExemplars<TraceExemplar>,
    request_size: Option<Histogram>,
    response_size: Option<Histogram>,
}

/// Everything the RED layer records into, shared by every clone of the layer.
pub(crate) struct Red {
    pub(crate) requests: GuardedFamily<RequestSeries, 3>,
    pub(crate) in_flight: GuardedFamily<Gauge, 2>,
    pub(crate) status: StatusLabel,
    pub(crate) routes: RouteTemplates,
    pub(crate) route_fn: Option<RouteFn>,
    pub(crate) exemplars: bool,
    pub(crate) ignored_paths: Vec<String>,
}

impl Red {
    /// Builds the series constructor for the requests family.
    pub(crate) fn new_series(
        duration_buckets: Arc<[f64]>,
        size_buckets: Arc<[f64]>,
        request_size: bool,
        response_size: bool,
    ) -> impl Fn() -> RequestSeries + Send + Sync + 'static {
        move || RequestSeries {
            count: Counter::default(),
            duration: HistogramWithExemplars::new(duration_buckets.iter().copied()),
            request_size: request_size.then(|| Histogram::new(size_buckets.iter().copied())),
            response_size: response_size.then(|| Histogram::new(size_buckets.iter().copied())),
        }
    }

    pub(crate) fn ignores(&self, path: &str) -> bool {
        self.ignored_paths.iter().any(|ignored| ignored == path)
    }

    /// The route label of `request`: axum's matched route, the route an outer layer matched
    /// ([`MatchedRoute`](periscope_context::MatchedRoute)), a declared template, the route
    /// function's answer, or `__unmatched__`; never the raw path.
    pub(crate) fn route<'r, B>(&'r self, request: &'r Request<B>) -> &'r str {
        #[cfg(feature = "axum")]
        if let Some(matched) = request.extensions().get::<axum::extract::MatchedPath>() {
            return matched.as_str();
        }
        if let Some(template) = periscope_context::MatchedRoute::of(request.extensions()) {
            return template;
        }
        if let Some(template) = self.routes.find(request.uri().path()) {
            return template;
        }
        self.route_fn
            .and_then(|route_fn| route_fn(request.uri(), request.extensions()))
            .unwrap_or(UNMATCHED)
    }

    /// The trace to link from the duration histogram: the request's, when sampled.
    #[inline]
    pub(crate) fn exemplar<B>(&self, request: &Request<B>) -> Option<TraceId> {
        if !self.exemplars {
            return None;
        }
        let sampled = |ctx: &RequestContext| ctx.is_sampled().then_some(ctx.trace_id);
        match request.extensions().get::<RequestContext>() {
            Some(ctx) => sampled(ctx),
            None => RequestContext::current().and_then(|ctx| sampled(&ctx)),
        }
    }
}

/// One request's place in the in-flight gauge, under the method and route that family kept.
/// Dropping it takes the request out, so the gauge can neither leak nor go negative: it goes
/// with the recording until the response head, then with the response body.
pub(crate) struct InFlight(Arc<Series<Gauge, 2>>);

impl InFlight {
    fn enter(series: Arc<Series<Gauge, 2>>) -> Self {
        series.metric.inc();
        Self(series)
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.metric.dec();
    }
}

/// One request being recorded. Dropping it records the request if its response never came
/// (cancelled, or unwinding from a panic); its [`InFlight`] leaves the gauge with it unless
/// handed to the response body first.
pub(crate) struct Recording {
    red: Arc<Red>,
    /// `None` once handed to the response body, which only happens once recorded.
    in_flight: Option<InFlight>,
    method: &'static str,
    start: Instant,
    exemplar: Option<TraceId>,
    request_size: Option<u64>,
    /// The route when the in-flight family folded it (by its route cap or its series cap): the
    /// requests family then decides for itself, under its own caps, and counts its own folds.
    /// Kept only then, so the usual request copies nothing.
    unfolded_route: Option<Arc<str>>,
    done: bool,
}

impl Recording {
    pub(crate) fn start(
        red: Arc<Red>,
        method: &'static str,
        route: &str,
        exemplar: Option<TraceId>,
        request_size: Option<u64>,
    ) -> Self {
        let start = Instant::now();
        let in_flight = InFlight::enter(red.in_flight.series([method, route]));
        let unfolded_route =
            (&*in_flight.0.values[1] == OVERFLOW && route != OVERFLOW).then(|| Arc::from(route));
        Self {
            red,
            in_flight: Some(in_flight),
            method,
            start,
            exemplar,
            request_size,
            unfolded_route,
            done: false,
        }
    }

    /// Records the request as answered with `status`.
    pub(crate) fn finish(&mut self, status: &str, response_size: Option<u64>) {
        // Handed over only once done: a recording without its place is recorded already.
        let (false, Some(in_flight)) = (self.done, &self.in_flight) else {
            return;
        };
        self.done = true;
        let elapsed = self.start.elapsed().as_secs_f64();
        // The route as the in-flight family kept it (no copy), unless that family folded it.
        let route = self
            .unfolded_route
            .as_deref()
            .unwrap_or(&in_flight.0.values[1]);
        let series = self.red.requests.series([self.method, route, status]);
        let metrics = &series.metric;
        metrics.count.inc();
        metrics
            .duration
            .observe(elapsed, self.exemplar.map(TraceExemplar), None);
        if let (Some(histogram), Some(size)) = (&metrics.request_size, self.request_size) {
            histogram.observe(size as f64);
        }
        if let (Some(histogram), Some(size)) = (&metrics.response_size, response_size) {
            histogram.observe(size as f64);
        }
    }

    /// The request's place in the in-flight gauge, for the response body to hold until its
    /// end. Taken after [`finish`](Self::finish): the recording has nothing left to do.
    pub(crate) fn into_in_flight(mut self) -> Option<InFlight> {
        self.in_flight.take()
    }

    pub(crate) fn status_label(&self) -> StatusLabel {
        self.red.status
    }

    /// The body size `response` puts on the wire, when known: none for a `HEAD` request or
    /// a 1xx, 204 or 304 status, whatever the body holds (the server drops it).
    pub(crate) fn response_size<B: http_body::Body>(
        &self,
        response: &http::Response<B>,
    ) -> Option<u64> {
        if periscope_context::is_bodiless(self.method == "HEAD", response.status()) {
            Some(0)
        } else {
            // A streamed body (a file, a proxied answer) is as long as its `Content-Length`.
            let exact = response.body().size_hint().exact();
            exact.or_else(|| periscope_context::content_length(response.headers()))
        }
    }
}

impl Drop for Recording {
    fn drop(&mut self) {
        if !self.done {
            // Never answered: the client left, a timeout above fired, or another future of the
            // task panicked. A panic of the service itself is counted where it happens
            // (`Metrics::call` and the response future's poll).
            if order::dropped_by_error_layer() {
                // An error layer outside answers it (a 504 envelope) without this layer.
                warn_misordered(Misordering::ErrorOutsideMetrics);
            }
            self.finish(CANCELLED, None);
        }
    }
}

/// Warns, once per process, that two periscope layers are composed out of order.
#[cold]
#[inline(never)]
fn warn_misordered(misordering: Misordering) {
    periscope_context::warn_misordered!(misordering);
}

/// The exemplar label set: `{trace_id="<32 hex>"}`.
#[derive(Clone, Debug)]
pub(crate) struct TraceExemplar(pub(crate) TraceId);

impl EncodeLabelSet for TraceExemplar {
    fn encode(&self, encoder: &mut LabelSetEncoder) -> std::fmt::Result {
        [("trace_id", self.0.to_hex().as_str())].encode(encoder)
    }
}

/// Which metric of [`RequestSeries`] a registered family shows.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Part {
    Count,
    Duration,
    RequestSize,
    ResponseSize,
}

/// One registered family: a view of the requests family.
#[derive(Debug)]
pub(crate) struct RequestsView {
    pub(crate) family: GuardedFamily<RequestSeries, 3>,
    pub(crate) part: Part,
}

impl EncodeMetric for RequestsView {
    fn encode(&self, encoder: MetricEncoder) -> std::fmt::Result {
        self.family
            .encode_each(encoder, |series, encoder| match self.part {
                Part::Count => series.count.encode(encoder),
                Part::Duration => series.duration.encode(encoder),
                Part::RequestSize => series
                    .request_size
                    .as_ref()
                    .map_or(Ok(()), |histogram| histogram.encode(encoder)),
                Part::ResponseSize => series
                    .response_size
                    .as_ref()
                    .map_or(Ok(()), |histogram| histogram.encode(encoder)),
            })
    }

    fn metric_type(&self) -> MetricType {
        match self.part {
            Part::Count => MetricType::Counter,
            _ => MetricType::Histogram,
        }
    }

    fn is_empty(&self) -> bool {
        self.family.is_empty()
    }
}
