//! Per-request overhead of periscope over a no-op axum route: each layer alone, the full
//! `Observability::layer()` stack, and the full stack with an OpenTelemetry tracer provider
//! (sampled and sampled out), side by side in one run with the anchor stack teams use today
//! for the same job: tower-http `SetRequestId` + `TraceLayer` + `PropagateRequestId`,
//! `tracing-subscriber`'s `fmt().json()`, `tracing-opentelemetry` and `axum-prometheus`.
//!
//! Every contender gets its own subscriber doing the equivalent job, installed with
//! `set_default` around it (and dropped after it, so no other subscriber's interest leaks
//! into its measurement): one JSON line per request into `io::sink`, one span per request,
//! RED metrics, a request id. periscope's lines are written on the calling thread
//! (`blocking(true)`), like the anchor's `fmt` writer; `full_nonblocking` shows the default
//! background writer. Every contender's response body is read to its end, so layers that
//! finish their work when the body ends (access log, axum-prometheus) do it inside the
//! measurement. Overhead = contender - `bare`.
//!
//! Run (the table: `scripts/bench-table.py`; docs/performance.md's figures are of the default
//! features, `scripts/bench-stack.sh` with `FEATURES=otel` adds the OpenTelemetry contenders):
//! `cargo bench --bench stack -- --warm-up-time 1 --measurement-time 3`
//!
//! Instruction counts (noise-free, all threads): `scripts/callgrind-stack.sh`, which runs
//! this binary with `STACK_BENCH_RUN=<kind>/<contender>/<calls>`.

use std::convert::Infallible;
use std::future::Future;
use std::hint::black_box;
use std::io::Write;
use std::pin::pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, OnceLock};
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::{Body, HttpBody};
use axum::routing::get;
use criterion::Criterion;
use http::{HeaderMap, Request, Response};
use opentelemetry::trace::TracerProvider as _;
use opentelemetry_sdk::error::OTelSdkResult;
use opentelemetry_sdk::trace::{Sampler, SdkTracerProvider, SpanData, SpanExporter};
use periscope::Observability;
use periscope::error::ErrorLayer;
use periscope::log::{AccessLogLayer, LogGuard, LogLayer};
use periscope::metrics::{MetricsLayer, MetricsRegistry};
use periscope::trace::CorrelationLayer;
use tower::{Service, ServiceBuilder};
use tower_http::ServiceBuilderExt;
use tower_http::request_id::MakeRequestUuid;
use tower_http::trace::{DefaultOnResponse, TraceLayer};
use tracing::{Dispatch, Level};
use tracing_opentelemetry::OpenTelemetrySpanExt;
use tracing_subscriber::filter::LevelFilter;
use tracing_subscriber::layer::SubscriberExt;

const ROUTE: &str = "/v1/jobs/{id}";

/// A request from outside: no ids, so every stack generates a request id and starts a trace.
/// It carries the headers a client sends besides the context ones.
fn edge_request() -> Request<Body> {
    served_request(&EDGE_HEADERS)
}

/// A call between services: a request id and a sampled trace to continue.
fn internal_request() -> Request<Body> {
    served_request(&INTERNAL_HEADERS)
}

type Headers = Vec<(http::HeaderName, http::HeaderValue)>;

thread_local! {
    static EDGE_HEADERS: Headers = served_headers(&[
        ("host", "api.example.com"),
        ("user-agent", "bench"),
        ("accept", "application/json"),
        ("accept-encoding", "gzip, br"),
    ]);
    static INTERNAL_HEADERS: Headers = served_headers(&[
        ("x-request-id", "req_01jj3z9m2k8q4v7w5x6y0a1b2c"),
        ("traceparent", "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"),
        ("host", "jobs.internal"),
        ("user-agent", "bench"),
        ("accept", "application/json"),
        ("accept-encoding", "gzip, br"),
    ]);
}

/// Header values as hyper makes them: slices of one shared buffer (the connection's read
/// buffer), so a stack's clone of one is a count increment. A value copied afresh for each
/// request would be a `Vec` of its own, which its first clone turns into a shared one (an
/// allocation no served request pays).
fn served_headers(pairs: &[(&'static str, &'static str)]) -> Headers {
    let text: Vec<u8> = pairs.iter().flat_map(|(_, value)| value.bytes()).collect();
    let mut buffer = bytes::BytesMut::from(text.as_slice());
    pairs
        .iter()
        .map(|(name, value)| {
            let value = buffer.split_to(value.len()).freeze();
            let value = http::HeaderValue::from_maybe_shared(value).unwrap();
            (http::HeaderName::from_static(name), value)
        })
        .collect()
}

/// `GET /v1/jobs/42` with `headers`.
fn served_request(headers: &'static std::thread::LocalKey<Headers>) -> Request<Body> {
    let mut request = Request::get("/v1/jobs/42").body(Body::empty()).unwrap();
    headers.with(|headers| {
        for (name, value) in headers {
            request.headers_mut().append(name.clone(), value.clone());
        }
    });
    request
}

/// A request kind: its name and how to make one.
type Kind = (&'static str, fn() -> Request<Body>);

const KINDS: [Kind; 2] = [("edge", edge_request), ("internal", internal_request)];

/// The no-op route every contender serves; the layers go on with `Router::layer`, so the
/// route template (`MatchedPath`) is known to them, as in a service.
fn route() -> Router {
    Router::new().route(ROUTE, get(|| async { "ok" }))
}

/// One contender, ready to call: its router, the subscriber it runs under, and what must stay
/// alive while it runs (log writer guard, tracer provider).
struct Setup {
    router: Router,
    dispatch: Dispatch,
    /// JSON lines per request.
    lines: usize,
    /// Whether responses carry `x-request-id`.
    request_id: bool,
    _keep: Vec<Box<dyn std::any::Any>>,
}

/// Calls the router once, drives the (immediately ready) future and reads the body to its end.
fn call(router: &mut Router, request: Request<Body>) -> (http::response::Parts, usize) {
    let mut cx = Context::from_waker(Waker::noop());
    let _ = Service::<Request<Body>>::poll_ready(router, &mut cx);
    let response: Response<Body> = match pin!(router.call(request)).poll(&mut cx) {
        Poll::Ready(Ok::<_, Infallible>(response)) => response,
        Poll::Pending => unreachable!("the no-op route answers at once"),
    };
    let (parts, body) = response.into_parts();
    let mut body = pin!(body);
    let mut bytes = 0;
    while let Poll::Ready(Some(frame)) = body.as_mut().poll_frame(&mut cx) {
        bytes += frame.unwrap().data_ref().map_or(0, |data| data.len());
    }
    (parts, bytes)
}

/// `io::sink`, except while [`check`] captures the lines of one request.
struct Sink;

static CAPTURING: AtomicBool = AtomicBool::new(false);
static CAPTURED: Mutex<Vec<u8>> = Mutex::new(Vec::new());

impl Write for Sink {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        if CAPTURING.load(Ordering::Relaxed) {
            CAPTURED.lock().unwrap().extend_from_slice(buf);
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Makes one call (which also registers every callsite with the contender's subscriber before
/// it is measured) and checks the contender does its job: the route's answer, a request id in
/// the response where it should have one, and the JSON lines it should write, each carrying
/// that request id.
fn check(name: &str, setup: &mut Setup, request: Request<Body>) {
    CAPTURED.lock().unwrap().clear();
    CAPTURING.store(true, Ordering::Relaxed);
    let (parts, bytes) = call(&mut setup.router, request);
    // The non-blocking writer hands lines over on its own thread.
    let deadline = Instant::now() + Duration::from_secs(2);
    while CAPTURED.lock().unwrap().len() < setup.lines && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(5));
    }
    CAPTURING.store(false, Ordering::Relaxed);
    assert_eq!(
        (parts.status.as_u16(), bytes),
        (200, 2),
        "{name}: the route's answer"
    );
    let request_id = parts
        .headers
        .get("x-request-id")
        .map(|v| v.to_str().unwrap());
    assert_eq!(
        request_id.is_some(),
        setup.request_id,
        "{name}: x-request-id"
    );
    let captured = String::from_utf8(std::mem::take(&mut *CAPTURED.lock().unwrap())).unwrap();
    if std::env::var_os("STACK_BENCH_SHOW").is_some() {
        eprintln!("{name}: {:?}\n{captured}", parts.headers);
    }
    let lines: Vec<&str> = captured.lines().collect();
    assert_eq!(lines.len(), setup.lines, "{name}: {captured}");
    for line in lines {
        serde_json::from_str::<serde_json::Value>(line).unwrap();
        if let Some(id) = request_id {
            assert!(line.contains(id), "{name}: no {id} in {line}");
        }
    }
}

// ---- periscope ----

/// periscope's log layer as `Observability::init` builds it, into `io::sink`.
fn periscope_log(blocking: bool) -> (LogLayer, LogGuard) {
    LogLayer::builder()
        .service("bench")
        .environment("bench")
        .version("1.0.0")
        .writer(Sink)
        .blocking(blocking)
        .build()
}

/// A subscriber with periscope's log layer (and an OpenTelemetry layer when given).
fn periscope_setup(router: Router, blocking: bool, otel: Option<SdkTracerProvider>) -> Setup {
    let (log, guard) = periscope_log(blocking);
    let mut keep: Vec<Box<dyn std::any::Any>> = vec![Box::new(guard)];
    let otel_layer = otel.map(|provider| {
        let layer = periscope_otel_layer(provider.tracer("periscope"));
        keep.push(Box::new(provider));
        layer
    });
    // As `Observability::init` installs it: beside an OpenTelemetry layer the log's directives
    // are its own filter, else the whole subscriber's.
    let (global_log, own_log) = if otel_layer.is_some() {
        (None, Some(log.with_own_filter()))
    } else {
        (Some(log), None)
    };
    Setup {
        router,
        dispatch: Dispatch::new(
            tracing_subscriber::registry()
                .with(global_log)
                .with(own_log)
                .with(otel_layer),
        ),
        lines: 0,
        request_id: false,
        _keep: keep,
    }
}

/// The OpenTelemetry layer `periscope::trace::otel` exports through, so the OpenTelemetry
/// contenders run what a service runs.
#[cfg(feature = "otel")]
fn periscope_otel_layer<S>(
    tracer: opentelemetry_sdk::trace::Tracer,
) -> impl tracing_subscriber::Layer<S>
where
    S: tracing::Subscriber + for<'span> tracing_subscriber::registry::LookupSpan<'span>,
{
    periscope::trace::otel::layer_for(tracer)
}

/// Without the `otel` feature, the same layer settings under the transport crates' filter.
#[cfg(not(feature = "otel"))]
fn periscope_otel_layer<S>(
    tracer: opentelemetry_sdk::trace::Tracer,
) -> impl tracing_subscriber::Layer<S>
where
    S: tracing::Subscriber + for<'span> tracing_subscriber::registry::LookupSpan<'span>,
{
    use tracing_subscriber::Layer as _;
    let transport = [
        "h2",
        "hyper",
        "hyper_util",
        "tonic",
        "tower",
        "opentelemetry",
    ]
    .into_iter()
    .fold(
        tracing_subscriber::filter::Targets::new().with_default(LevelFilter::INFO),
        |targets, target| targets.with_target(target, LevelFilter::WARN),
    );
    tracing_opentelemetry::layer()
        .with_tracer(tracer)
        .with_tracked_inactivity(false)
        .with_threads(false)
        .with_filter(transport)
}

fn observability() -> Observability {
    Observability::builder()
        .service_name("bench")
        .environment("bench")
        .version("1.0.0")
        .log_writer(Sink)
        .build()
        .unwrap()
}

fn bare() -> Setup {
    periscope_setup(route(), true, None)
}

fn correlation() -> Setup {
    Setup {
        request_id: true,
        ..periscope_setup(route().layer(CorrelationLayer::new()), true, None)
    }
}

fn metrics() -> Setup {
    let registry = MetricsRegistry::new();
    let layer = MetricsLayer::builder().register(&registry).unwrap();
    periscope_setup(route().layer(layer), true, None)
}

fn access_log() -> Setup {
    Setup {
        lines: 1,
        ..periscope_setup(route().layer(AccessLogLayer::new()), true, None)
    }
}

/// Alone, the error layer makes the request context itself, and echoes its request id.
fn errors() -> Setup {
    Setup {
        request_id: true,
        ..periscope_setup(route().layer(ErrorLayer::new()), true, None)
    }
}

/// The full stack: one JSON line and a request id per request.
fn full_stack(blocking: bool, otel: Option<SdkTracerProvider>) -> Setup {
    Setup {
        lines: 1,
        request_id: true,
        ..periscope_setup(route().layer(observability().layer()), blocking, otel)
    }
}

fn full() -> Setup {
    full_stack(true, None)
}

fn full_nonblocking() -> Setup {
    full_stack(false, None)
}

/// A span exporter that drops every batch: the cost of export stops at the SDK's batch queue.
#[derive(Debug)]
struct NoopExporter;

impl SpanExporter for NoopExporter {
    fn export(&self, batch: Vec<SpanData>) -> impl Future<Output = OTelSdkResult> + Send {
        drop(batch);
        std::future::ready(Ok(()))
    }
}

/// A tracer provider with the SDK's batch processor in front of [`NoopExporter`].
fn tracer_provider(sampler: Sampler) -> SdkTracerProvider {
    SdkTracerProvider::builder()
        .with_sampler(sampler)
        .with_batch_exporter(NoopExporter)
        .build()
}

fn full_otel_sampled() -> Setup {
    let provider = tracer_provider(Sampler::ParentBased(Box::new(Sampler::AlwaysOn)));
    full_stack(true, Some(provider))
}

fn full_otel_sampled_out() -> Setup {
    full_stack(true, Some(tracer_provider(Sampler::AlwaysOff)))
}

// ---- the anchor stack ----

/// Reads `traceparent` from the request headers for the OpenTelemetry propagator.
struct HeaderExtractor<'a>(&'a HeaderMap);

impl opentelemetry::propagation::Extractor for HeaderExtractor<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).and_then(|value| value.to_str().ok())
    }

    fn keys(&self) -> Vec<&str> {
        self.0.keys().map(http::HeaderName::as_str).collect()
    }
}

/// The request span as the anchor stack's users write it: the request id (set by
/// `SetRequestId`) as a field, and the incoming trace context as the OpenTelemetry parent.
fn anchor_span(request: &Request<Body>) -> tracing::Span {
    let request_id = request
        .headers()
        .get("x-request-id")
        .and_then(|value| value.to_str().ok())
        .unwrap_or_default();
    let span = tracing::info_span!(
        "http_request",
        method = %request.method(),
        uri = %request.uri(),
        version = ?request.version(),
        request_id,
        otel.kind = "server",
    );
    let parent = opentelemetry::global::get_text_map_propagator(|propagator| {
        propagator.extract(&HeaderExtractor(request.headers()))
    });
    let _ = span.set_parent(parent);
    span
}

/// axum-prometheus installs a global recorder: one layer per process.
fn prometheus_layer() -> axum_prometheus::PrometheusMetricLayer<'static> {
    static LAYER: OnceLock<axum_prometheus::PrometheusMetricLayer<'static>> = OnceLock::new();
    LAYER
        .get_or_init(|| {
            // Its recorder spawns an upkeep task: give it a runtime to spawn on (never run).
            let runtime = tokio::runtime::Builder::new_current_thread()
                .build()
                .unwrap();
            let _entered = runtime.enter();
            opentelemetry::global::set_text_map_propagator(
                opentelemetry_sdk::propagation::TraceContextPropagator::new(),
            );
            let (layer, handle) = axum_prometheus::PrometheusMetricLayer::pair();
            std::mem::forget((handle, runtime));
            layer
        })
        .clone()
}

fn anchor_router() -> Router {
    route().layer(
        ServiceBuilder::new()
            .set_x_request_id(MakeRequestUuid)
            .layer(
                TraceLayer::new_for_http()
                    .make_span_with(anchor_span)
                    .on_response(DefaultOnResponse::new().level(Level::INFO)),
            )
            .propagate_x_request_id()
            .layer(prometheus_layer()),
    )
}

/// The anchor's subscriber: `fmt().json()` into `io::sink` at INFO, plus tracing-opentelemetry.
fn anchor_setup(otel: Option<SdkTracerProvider>) -> Setup {
    let mut keep: Vec<Box<dyn std::any::Any>> = Vec::new();
    let otel_layer = otel.map(|provider| {
        let layer = tracing_opentelemetry::layer().with_tracer(provider.tracer("anchor"));
        keep.push(Box::new(provider));
        layer
    });
    let subscriber = tracing_subscriber::registry()
        .with(tracing_subscriber::fmt::layer().json().with_writer(|| Sink))
        .with(otel_layer)
        .with(LevelFilter::INFO);
    Setup {
        router: anchor_router(),
        dispatch: Dispatch::new(subscriber),
        lines: 1,
        request_id: true,
        _keep: keep,
    }
}

fn anchor() -> Setup {
    let sampler = Sampler::ParentBased(Box::new(Sampler::AlwaysOn));
    anchor_setup(Some(tracer_provider(sampler)))
}

fn anchor_without_otel() -> Setup {
    anchor_setup(None)
}

// ---- the run ----

type Contender = (&'static str, fn() -> Setup);

const CONTENDERS: &[Contender] = &[
    ("bare", bare),
    ("correlation", correlation),
    ("metrics", metrics),
    ("access_log", access_log),
    ("errors", errors),
    ("full", full),
    ("full_nonblocking", full_nonblocking),
    ("full_otel_sampled", full_otel_sampled),
    ("full_otel_sampled_out", full_otel_sampled_out),
    ("anchor", anchor),
    ("anchor_without_otel", anchor_without_otel),
];

fn stack(c: &mut Criterion) {
    for (kind, request) in KINDS {
        let mut group = c.benchmark_group(kind);
        for (name, build) in CONTENDERS {
            let mut setup = build();
            let _default = tracing::dispatcher::set_default(&setup.dispatch);
            check(name, &mut setup, request());
            group.bench_function(*name, |b| {
                b.iter(|| black_box(call(&mut setup.router, request())))
            });
        }
        group.finish();
    }
}

/// `STACK_BENCH_RUN=<kind>/<contender>/<calls>`: makes that many calls and exits, for
/// instruction counts under callgrind.
fn run_calls(spec: &str) {
    let parts: Vec<&str> = spec.split('/').collect();
    let [kind, name, calls] = parts[..] else {
        panic!("STACK_BENCH_RUN={spec:?}: expected <kind>/<contender>/<calls>")
    };
    let (_, request) = KINDS
        .into_iter()
        .find(|(k, _)| *k == kind)
        .unwrap_or_else(|| panic!("unknown kind {kind:?}: edge or internal"));
    let (_, build) = CONTENDERS
        .iter()
        .find(|(n, _)| *n == name)
        .unwrap_or_else(|| panic!("unknown contender {name:?}"));
    let calls: u64 = calls.parse().unwrap();
    let mut setup = build();
    let _default = tracing::dispatcher::set_default(&setup.dispatch);
    for _ in 0..calls {
        black_box(call(&mut setup.router, request()));
    }
    // Lets background threads (non-blocking writer, span batches) catch up before exit.
    std::thread::sleep(Duration::from_millis(50));
}

fn main() {
    if let Ok(spec) = std::env::var("STACK_BENCH_RUN") {
        run_calls(&spec);
        return;
    }
    let mut criterion = Criterion::default().configure_from_args();
    stack(&mut criterion);
    criterion.final_summary();
}
