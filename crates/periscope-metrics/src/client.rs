//! RED metrics of outgoing calls: [`ClientMetricsLayer`] around any Tower HTTP client.

use std::borrow::Cow;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};
use std::time::Instant;

use http::{Request, Response, Uri};
use http_body::Body;
use periscope_context::grpc::{
    GrpcCode, HeadOutcome, StreamEnd, head_grpc_status, head_outcome, is_grpc_answer,
    is_grpc_request,
};
use periscope_context::{RequestContext, TraceId};
use prometheus_client::encoding::{EncodeMetric, MetricEncoder};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::exemplar::HistogramWithExemplars;

use crate::body::{AtEnd, MetricsBody};
use crate::error::MetricsError;
use crate::guard::{Caps, GuardedFamily, LabelGuard};
use crate::labels::{CANCELLED, OTHER_METHOD, StatusLabel, method_label};
use crate::layer::{DURATION_BUCKETS, checked_buckets};
use crate::names::{check_label_names, check_metric_name};
use crate::red::TraceExemplar;
use crate::registry::MetricsRegistry;

/// The `server_address` (and `server_port`) of a call whose URI names no host: give the client
/// its origin (tonic's `with_origin`, an absolute URI for hyper-util's client). Also the
/// `server_port` of a URI with neither a port nor a scheme whose default port is known (`http`
/// 80, `https` 443).
pub const UNKNOWN_SERVER: &str = "__unknown__";

/// The `status` of a call that failed without an answer (connection refused, reset, a TLS
/// failure, the client's own timeout answering an error, a panic in the client below the
/// layer).
pub const CALL_ERROR: &str = "error";

/// The labels of both client families, in order.
const LABELS: [&str; 4] = ["method", "server_address", "server_port", "status"];

/// Configures the client RED layer; [`register`](Self::register) adds its families to a
/// registry and returns the layer.
///
/// Defaults: `http_client_requests_total` and `http_client_request_duration_seconds`
/// (OpenTelemetry's buckets), both by `method`, `server_address`, `server_port` and `status`;
/// status as its class; 100 values per label and 2000 series per family. The layer's own values
/// ([`UNKNOWN_SERVER`], [`CALL_ERROR`], [`CANCELLED`], `_OTHER`) are kept outside the caps.
///
/// ```
/// use periscope_metrics::{Caps, ClientMetricsLayer, MetricsRegistry, StatusLabel};
///
/// let registry = MetricsRegistry::new();
/// let layer = ClientMetricsLayer::builder()
///     .status_label(StatusLabel::Code)
///     .caps(Caps::default().label("server_address", 20))
///     .register(&registry)
///     .unwrap();
/// # let _ = layer;
/// ```
#[derive(Clone, Debug)]
#[must_use = "call register to build the layer"]
pub struct ClientMetricsLayerBuilder {
    prefix: Option<String>,
    requests_name: String,
    duration_name: String,
    duration_buckets: Vec<f64>,
    status: StatusLabel,
    caps: Caps,
    exemplars: bool,
}

impl Default for ClientMetricsLayerBuilder {
    fn default() -> Self {
        Self {
            prefix: None,
            requests_name: "http_client_requests_total".into(),
            duration_name: "http_client_request_duration_seconds".into(),
            duration_buckets: DURATION_BUCKETS.to_vec(),
            status: StatusLabel::Class,
            caps: Caps::default(),
            exemplars: true,
        }
    }
}

impl ClientMetricsLayerBuilder {
    /// A prefix for both metric names: `api` makes `api_http_client_requests_total`.
    pub fn prefix(mut self, prefix: impl Into<String>) -> Self {
        self.prefix = Some(prefix.into());
        self
    }

    /// The counter's name (default `http_client_requests_total`).
    pub fn requests_name(mut self, name: impl Into<String>) -> Self {
        self.requests_name = name.into();
        self
    }

    /// The histogram's name (default `http_client_request_duration_seconds`).
    pub fn duration_name(mut self, name: impl Into<String>) -> Self {
        self.duration_name = name.into();
        self
    }

    /// The duration histogram's buckets, in seconds (default [`DURATION_BUCKETS`]).
    pub fn duration_buckets(mut self, buckets: impl IntoIterator<Item = f64>) -> Self {
        self.duration_buckets = buckets.into_iter().collect();
        self
    }

    /// Status as its class (`2xx`, the default) or the exact code.
    pub fn status_label(mut self, status: StatusLabel) -> Self {
        self.status = status;
        self
    }

    /// Caps on label values and series (see [`Caps`]); `server_address` is the label to watch
    /// when the service calls URLs its users choose.
    pub fn caps(mut self, caps: Caps) -> Self {
        self.caps = caps;
        self
    }

    /// Whether the duration histogram links each observation to its trace (a `trace_id`
    /// exemplar, OpenMetrics scrapes only) when the call's trace is sampled (default: yes).
    pub fn exemplars(mut self, enabled: bool) -> Self {
        self.exemplars = enabled;
        self
    }

    /// Registers both families in `registry` and returns the layer.
    pub fn register(self, registry: &MetricsRegistry) -> Result<ClientMetricsLayer, MetricsError> {
        let full = |name: &str| match &self.prefix {
            Some(prefix) => format!("{prefix}_{name}"),
            None => name.to_owned(),
        };
        let requests_name = full(&self.requests_name);
        let duration_name = full(&self.duration_name);
        check_metric_name(&requests_name)?;
        check_metric_name(&duration_name)?;
        let buckets = checked_buckets(&duration_name, &self.duration_buckets)?;
        check_label_names(&requests_name, &LABELS)?;
        self.caps.check_labels(&requests_name, &LABELS)?;
        // All or nothing, at once: a name refused, or taken by a registration racing this
        // one, must not leave the other family behind.
        registry.claim_all(&[
            (
                requests_name.as_str(),
                prometheus_client::metrics::MetricType::Counter,
            ),
            (
                duration_name.as_str(),
                prometheus_client::metrics::MetricType::Histogram,
            ),
        ])?;
        // The families share their guards, so both keep the same hosts; the layer's own
        // fallbacks are kept outside the caps, so a call without a host or an answer stays
        // `__unknown__` or `error` (not `__overflow__`) once the hosts the service calls fill
        // the `server_address` cap.
        let [method, address, port, status] = LABELS;
        let guards = [
            LabelGuard::reserving(self.caps.label_cap(method), &[OTHER_METHOD]),
            LabelGuard::reserving(self.caps.label_cap(address), &[UNKNOWN_SERVER]),
            LabelGuard::reserving(self.caps.label_cap(port), &[UNKNOWN_SERVER]),
            LabelGuard::reserving(self.caps.label_cap(status), &[CALL_ERROR, CANCELLED]),
        ];
        // One table of series, registered twice (a view for the count, one for the duration):
        // a call's count and duration land in the same series whatever the series cap does,
        // where two tables racing for their last slots could each keep a different host.
        let calls = GuardedFamily::<CallSeries, 4>::with_guards(
            &requests_name,
            LABELS,
            guards,
            self.caps.series_cap(),
            registry.overflow(),
            Box::new(move || CallSeries {
                count: Counter::default(),
                duration: HistogramWithExemplars::new(buckets.iter().copied()),
            }),
        );
        registry.add_claimed(
            &requests_name,
            "HTTP client calls completed, by method, server and status",
            CallsView {
                calls: calls.clone(),
                duration: false,
            },
        )?;
        registry.add_claimed(
            &duration_name,
            "HTTP client call duration until the answer's head (a gRPC call answered in trailers: until its end), in seconds",
            CallsView {
                calls: calls.clone(),
                duration: true,
            },
        )?;
        Ok(ClientMetricsLayer {
            families: Some(Arc::new(Families {
                calls,
                status: self.status,
                exemplars: self.exemplars,
            })),
        })
    }
}

struct Families {
    calls: GuardedFamily<CallSeries, 4>,
    status: StatusLabel,
    exemplars: bool,
}

/// The metrics of one `(method, server.address, server.port, status)` series.
#[derive(Clone, Debug)]
struct CallSeries {
    count: Counter,
    duration: HistogramWithExemplars<TraceExemplar>,
}

/// One registered family: the calls' counts, or their durations.
#[derive(Debug)]
struct CallsView {
    calls: GuardedFamily<CallSeries, 4>,
    duration: bool,
}

impl EncodeMetric for CallsView {
    fn encode(&self, encoder: MetricEncoder) -> std::fmt::Result {
        self.calls
            .encode_each(encoder, |series, encoder| match self.duration {
                false => series.count.encode(encoder),
                true => series.duration.encode(encoder),
            })
    }

    fn metric_type(&self) -> MetricType {
        match self.duration {
            false => MetricType::Counter,
            true => MetricType::Histogram,
        }
    }

    fn is_empty(&self) -> bool {
        self.calls.is_empty()
    }
}

/// RED metrics of the calls a service makes: wrap an HTTP client (hyper-util's, a tonic
/// channel, reqwest through a Tower adapter) and each call is counted and timed by method,
/// server and status, under the same cardinality guard as the server's families.
///
/// - `server_address` is the URI's host (lower case; an IPv6 address without its brackets),
///   `server_port` its port or the scheme's default (`80`, `443`); both [`UNKNOWN_SERVER`]
///   for a URI without a host.
/// - `status` is the answer's status (class or code); a gRPC answer counts as the status its
///   code stands for (see below); [`CALL_ERROR`] when the client failed without an answer
///   (or panicked: in its future, or in the body of a gRPC answer waiting for its code),
///   [`CANCELLED`] when the call was dropped first (a timeout around it, the caller gone).
/// - An HTTP call, and a gRPC call answered trailers-only (the code in its head: the usual
///   failure), is recorded at the answer's head, and timed to it, as OpenTelemetry's
///   `http.client.request.duration`: a streamed HTTP answer is not timed to its end.
/// - A gRPC call whose code comes in the trailers, after its messages (HTTP 200,
///   `application/grpc`, no `grpc-status` in its head: every call tonic answers with a
///   message, and a server stream that fails after messages) is recorded when its body ends,
///   and timed to that end, as OpenTelemetry's `rpc.client.duration`: under the status its
///   code stands for (`UNKNOWN`, 500, when the body ends without one; `INTERNAL`, 500, when
///   it fails, as a stream the server resets), or [`CANCELLED`] when the body is dropped
///   first (a server stream the caller stops reading). An answer with no body at all is
///   recorded at once.
/// - Only a call sent as gRPC (a gRPC `content-type`, as every gRPC client sends) is judged by
///   gRPC's rules: a plain call whose answer says `application/grpc` (a misconfigured proxy)
///   counts by its status, as any HTTP call.
///
/// The response body is a [`MetricsBody`], which records such a call at its end and passes
/// every other body's frames on with nothing more to do. Each call is counted once. The layer
/// composes with periscope-trace's `ClientTraceLayer` in either order, and a tonic client
/// takes the stack as its channel.
///
/// ```
/// use periscope_metrics::{ClientMetricsLayer, MetricsBody, MetricsRegistry};
/// use tower::ServiceExt;
/// use tower_layer::Layer;
/// # use std::convert::Infallible;
///
/// let registry = MetricsRegistry::new();
/// let calls = ClientMetricsLayer::new(&registry).unwrap();
/// // Any Tower HTTP client: hyper_util's `Client`, a tonic `Channel`...
/// let client = tower::service_fn(|_request: http::Request<String>| async {
///     Ok::<_, Infallible>(http::Response::new(String::from("ok")))
/// });
/// let client = calls.layer(client);
/// # tokio::runtime::Builder::new_current_thread().build().unwrap().block_on(async {
/// let request = http::Request::get("http://models.internal/v1/models")
///     .body(String::new())
///     .unwrap();
/// // The answer's body is the client's, in a `MetricsBody`.
/// let answer: http::Response<MetricsBody<String>> = client.oneshot(request).await.unwrap();
/// assert_eq!(answer.body().get_ref(), "ok");
/// # });
/// let text = registry.encode_prometheus().unwrap();
/// assert!(text.contains(r#"server_address="models.internal",server_port="80",status="2xx"} 1"#));
/// ```
#[derive(Clone)]
pub struct ClientMetricsLayer {
    /// `None`: [`disabled`](Self::disabled), nothing recorded.
    families: Option<Arc<Families>>,
}

impl ClientMetricsLayer {
    /// The builder, with the defaults described on [`ClientMetricsLayerBuilder`].
    pub fn builder() -> ClientMetricsLayerBuilder {
        ClientMetricsLayerBuilder::default()
    }

    /// The layer with every default, registered in `registry`.
    pub fn new(registry: &MetricsRegistry) -> Result<Self, MetricsError> {
        Self::builder().register(registry)
    }

    /// A layer that records nothing, for a stack whose metrics are off: the calls pass as
    /// they are (their answers' bodies still [`MetricsBody`]s, so the stack keeps its type),
    /// with no work per call and no cap warning about families nobody serves.
    pub fn disabled() -> Self {
        Self { families: None }
    }
}

impl std::fmt::Debug for ClientMetricsLayer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientMetricsLayer")
            .field(
                "calls",
                &self.families.as_ref().map(|families| &families.calls),
            )
            .finish_non_exhaustive()
    }
}

impl<S> tower_layer::Layer<S> for ClientMetricsLayer {
    type Service = ClientMetrics<S>;

    fn layer(&self, inner: S) -> ClientMetrics<S> {
        ClientMetrics {
            inner,
            families: self.families.clone(),
        }
    }
}

/// The service made by [`ClientMetricsLayer`].
#[derive(Clone)]
pub struct ClientMetrics<S> {
    inner: S,
    families: Option<Arc<Families>>,
}

impl<S: std::fmt::Debug> std::fmt::Debug for ClientMetrics<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientMetrics")
            .field("inner", &self.inner)
            .finish_non_exhaustive()
    }
}

impl<S, ReqBody, ResBody> tower_service::Service<Request<ReqBody>> for ClientMetrics<S>
where
    S: tower_service::Service<Request<ReqBody>, Response = Response<ResBody>>,
    ResBody: Body,
{
    type Response = Response<MetricsBody<ResBody>>;
    type Error = S::Error;
    type Future = ClientResponseFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request<ReqBody>) -> Self::Future {
        let Some(families) = &self.families else {
            return ClientResponseFuture {
                inner: self.inner.call(request),
                call: None,
            };
        };
        let mut call = Call::start(families.clone(), &request);
        if families.exemplars {
            call.exemplar = sampled_trace(&request);
        }
        let inner = self.inner.call(request);
        call.in_client = false;
        ClientResponseFuture {
            inner,
            call: Some(call),
        }
    }
}

/// The response future of [`ClientMetrics`].
#[pin_project::pin_project]
pub struct ClientResponseFuture<F> {
    #[pin]
    inner: F,
    call: Option<Call>,
}

impl<F, ResBody, E> Future for ClientResponseFuture<F>
where
    F: Future<Output = Result<Response<ResBody>, E>>,
    ResBody: Body,
{
    type Output = Result<Response<MetricsBody<ResBody>>, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let mut inner = this.inner;
        let output = match this.call {
            Some(call) => call.in_client(|| inner.as_mut().poll(cx)),
            None => inner.poll(cx),
        };
        let output = ready!(output);
        let call = this.call.take();
        Poll::Ready(match output {
            Ok(response) => {
                let (parts, body) = response.into_parts();
                let end = match call {
                    Some(call) => call.answered(&parts, &body),
                    None => AtEnd::Nothing,
                };
                Ok(Response::from_parts(
                    parts,
                    MetricsBody::with_end(body, end),
                ))
            }
            Err(error) => {
                if let Some(mut call) = call {
                    call.finish(CALL_ERROR);
                }
                Err(error)
            }
        })
    }
}

/// One call being timed, by its response future and then, for a gRPC call whose code comes
/// in the trailers, by the answer's body; dropped unfinished, it counts as [`CANCELLED`].
pub(crate) struct Call {
    families: Arc<Families>,
    method: &'static str,
    server: Server,
    start: Instant,
    exemplar: Option<TraceId>,
    /// Whether the call was sent as gRPC: only then is its answer judged by gRPC's rules.
    grpc: bool,
    done: bool,
    /// Set while the client below runs (its `call`, each poll of its future, each poll of its
    /// answer's body while the call waits for its trailers): still set when the call is
    /// dropped, the client panicked, whether or not the panic is still unwinding (a layer that
    /// catches panics around a poll drops the call afterwards).
    in_client: bool,
}

impl Call {
    fn start<B>(families: Arc<Families>, request: &Request<B>) -> Self {
        Self {
            families,
            method: method_label(request.method()),
            server: Server::of(request.uri()),
            start: Instant::now(),
            exemplar: None,
            grpc: is_grpc_request(request.headers()),
            done: false,
            in_client: true,
        }
    }

    /// Runs `poll` (a poll of the client's future or body) as the client's: a panic in it
    /// leaves the call marked, and dropping it then counts [`CALL_ERROR`].
    pub(crate) fn in_client<T>(&mut self, poll: impl FnOnce() -> T) -> T {
        self.in_client = true;
        let output = poll();
        self.in_client = false;
        output
    }

    /// Records the call at its answer's head, or hands it to the body when its gRPC code
    /// comes in the trailers (decided here, so that no other body does anything per frame).
    fn answered<B: Body>(mut self, head: &http::response::Parts, body: &B) -> AtEnd {
        // A plain call's answer that calls itself gRPC (a misconfigured proxy) counts by its
        // status, as any HTTP answer: it is no gRPC call waiting for its code.
        let outcome = if self.grpc {
            head_outcome(head.status, &head.headers)
        } else {
            HeadOutcome::Status
        };
        let status = match outcome {
            HeadOutcome::Code(code) => code.http_status(),
            // A gRPC call answered by no gRPC server (a proxy's page, an ingress's 503): the
            // code its caller reads, the head's `grpc-status` (NGINX's gRPC error pages) or
            // else gRPC's mapping of the HTTP status. A gRPC-Web answer, whose code comes at
            // the end of its body, counts as the 200 it is.
            HeadOutcome::Status if self.grpc && !is_grpc_answer(head.status, &head.headers) => {
                head_grpc_status(&head.headers)
                    .unwrap_or_else(|| GrpcCode::of_plain_answer(head.status))
                    .http_status()
            }
            HeadOutcome::Status => head.status,
            // No body at all: no trailers will come.
            HeadOutcome::Trailers if body.is_end_stream() => {
                self.stream_end(StreamEnd::NoTrailers);
                return AtEnd::Nothing;
            }
            HeadOutcome::Trailers => return AtEnd::Call(Box::new(self)),
        };
        self.finish(self.families.status.value(status));
        AtEnd::Nothing
    }

    /// Records a gRPC call whose code comes in the trailers, by how its body ended: the
    /// status its code stands for, or `cancelled` (not the 499 of a `CANCELLED` the server
    /// answered) when the caller dropped the body first.
    pub(crate) fn stream_end(&mut self, end: StreamEnd) {
        let status = match end {
            StreamEnd::Dropped => CANCELLED,
            end => self.families.status.value(end.code().http_status()),
        };
        self.finish(status);
    }

    fn finish(&mut self, status: &str) {
        self.done = true;
        let elapsed = self.start.elapsed().as_secs_f64();
        let labels = [self.method, &self.server.address, &self.server.port, status];
        let series = self.families.calls.get_or_create(labels);
        series.count.inc();
        series
            .duration
            .observe(elapsed, self.exemplar.map(TraceExemplar), None);
    }
}

impl Drop for Call {
    fn drop(&mut self) {
        if !self.done {
            // Dropped after a panic of the client below (its future, or its answer's body):
            // the client failed; dropped otherwise (its future, or its answer's body before
            // its code), the caller gave up on it.
            let status = if self.in_client {
                CALL_ERROR
            } else {
                CANCELLED
            };
            self.finish(status);
        }
    }
}

/// The trace of the call, when sampled: the request's context in its extensions (a caller
/// that passes it on), else the one in scope (the client span of `ClientTraceLayer` outside,
/// the request being handled).
fn sampled_trace<B>(request: &Request<B>) -> Option<TraceId> {
    let sampled = |ctx: &RequestContext| ctx.is_sampled().then_some(ctx.trace_id);
    match request.extensions().get::<RequestContext>() {
        Some(ctx) => sampled(ctx),
        None => RequestContext::current().and_then(|ctx| sampled(&ctx)),
    }
}

/// The server a call goes to, as its `server_address` and `server_port` labels.
struct Server {
    address: Cow<'static, str>,
    port: Cow<'static, str>,
}

impl Server {
    fn of(uri: &Uri) -> Self {
        let Some(host) = periscope_context::server_address(uri) else {
            return Server {
                address: Cow::Borrowed(UNKNOWN_SERVER),
                port: Cow::Borrowed(UNKNOWN_SERVER),
            };
        };
        let port = match (uri.port_u16(), uri.scheme_str()) {
            (Some(port), _) => Cow::Owned(port.to_string()),
            (None, Some("https")) => Cow::Borrowed("443"),
            (None, Some("http")) => Cow::Borrowed("80"),
            (None, _) => Cow::Borrowed(UNKNOWN_SERVER),
        };
        Server {
            address: Cow::Owned(host.into_owned()),
            port,
        }
    }
}
