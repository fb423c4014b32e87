//! Per-request overhead of the server layer over a no-op service, side by side with the
//! tower-http stack doing the same job (`SetRequestId` + `PropagateRequestId` + `TraceLayer`).
//!
//! Both run under the same subscriber, each of three in turn: a registry with a formatting
//! layer at INFO that writes to a sink, so span creation and field recording cost what they
//! cost in a service, and nothing is printed; the bare registry; and a registry with
//! periscope's own log layer writing to a sink. Overhead = (stack time) - (no-op time).
//!
//! The calls have the shape a server hands over: the headers a client sends besides the ids,
//! header values shared as hyper's are, the peer address already in the extensions, and an
//! answer with a content type and length (docs/trace.md has what each of these changed).
//!
//! Run: `cargo bench -p periscope-trace --bench server_layer -- --warm-up-time 1 --measurement-time 3`
//!
//! Instruction counts: `TRACE_BENCH_RUN=<subscriber>/<kind>/<contender>/<calls>` makes that many
//! calls and exits, for `valgrind --tool=callgrind` (see `scripts/callgrind-trace.sh`).
//!
//! Interleaved times: `TRACE_BENCH_INTERLEAVED=[<subscriber>/]<rounds>` times every contender in
//! turn, a short batch of calls each, round after round, and prints the ratios (see
//! [`interleaved`]).
//!
//! These two modes, with one subscriber named, install it as the process's global default, as
//! a service's `init` does; Criterion's mode and the interleaved mode over all three install
//! each for the thread in turn, where every span holds a counted reference to its subscriber:
//! two atomic operations a span, which tower-http's stack, cloning its span, pays twice.

use std::convert::Infallible;
use std::future::{Future, Ready, ready};
use std::hint::black_box;
use std::pin::pin;
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

use criterion::Criterion;
use http::{HeaderMap, HeaderValue, Request, Response};
use opentelemetry::propagation::TextMapPropagator;
use opentelemetry::trace::TraceContextExt;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::{IdGenerator, RandomIdGenerator};
use periscope_trace::CorrelationLayer;
use tower::{Service, ServiceBuilder, service_fn};
use tower_http::ServiceBuilderExt;
use tower_http::request_id::MakeRequestUuid;
use tower_http::trace::{
    DefaultMakeSpan, DefaultOnRequest, DefaultOnResponse, MakeSpan, OnResponse, TraceLayer,
};
use tracing::Level;
use tracing::Span;
use tracing::field::Empty;
use tracing_opentelemetry::OpenTelemetrySpanExt;
use tracing_subscriber::layer::SubscriberExt;

type Body = http_body_util::Empty<bytes::Bytes>;

/// The service under the stacks: answers at once, with the headers a handler's answer has.
fn noop(_request: Request<Body>) -> Ready<Result<Response<Body>, Infallible>> {
    let response = Response::builder()
        .header("content-type", HeaderValue::from_static("application/json"))
        .header("content-length", HeaderValue::from_static("2"))
        .body(Body::new());
    ready(Ok(response.unwrap()))
}

/// The client's address, as `periscope::Server` puts it in every request's extensions (axum's
/// router puts its `MatchedPath` there before a `Router::layer` stack runs): the extensions'
/// map exists before the layers add to it.
const PEER: periscope_context::PeerAddr = periscope_context::PeerAddr(std::net::SocketAddr::V4(
    std::net::SocketAddrV4::new(std::net::Ipv4Addr::new(10, 0, 0, 7), 40_000),
));

/// A request from outside: no ids, so both stacks generate a request id (and periscope a trace).
fn edge_request() -> Request<Body> {
    Request::get("/v1/jobs/42")
        .header("host", "api.example.com")
        .header("user-agent", "bench")
        .header("accept", "application/json")
        .header("accept-encoding", "gzip, br")
        .extension(PEER)
        .body(Body::new())
        .unwrap()
}

/// A call between services: a request id and a sampled trace to continue.
fn internal_request() -> Request<Body> {
    let [request_id, traceparent] = INTERNAL_HEADERS.with(Clone::clone);
    Request::get("/v1/jobs/42")
        .header("x-request-id", request_id)
        .header("traceparent", traceparent)
        .header("host", "jobs.internal")
        .header("user-agent", "bench")
        .header("accept", "application/json")
        .header("accept-encoding", "gzip, br")
        .extension(PEER)
        .body(Body::new())
        .unwrap()
}

thread_local! {
    /// The internal request's id values as hyper makes header values: slices of the
    /// connection's read buffer, shared by reference count, so a layer's clone of one is a
    /// count increment. A value copied afresh for each request would be a `Vec` of its own,
    /// which its first clone turns into a shared one (an allocation), as no served request does.
    static INTERNAL_HEADERS: [HeaderValue; 2] = {
        const REQUEST_ID: &[u8] = b"req_01jj3z9m2k8q4v7w5x6y0a1b2c";
        const TRACEPARENT: &[u8] = b"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        let mut buffer = bytes::BytesMut::from([REQUEST_ID, TRACEPARENT].concat().as_slice());
        let mut value =
            |len| HeaderValue::from_maybe_shared(buffer.split_to(len).freeze()).unwrap();
        [value(REQUEST_ID.len()), value(TRACEPARENT.len())]
    };
}

/// Calls the service once and drives the (immediately ready) response future.
fn call<S>(service: &mut S, request: fn() -> Request<Body>) -> S::Response
where
    S: Service<Request<Body>, Error = Infallible>,
{
    let mut cx = Context::from_waker(Waker::noop());
    let _ = service.poll_ready(&mut cx);
    match pin!(service.call(request())).poll(&mut cx) {
        Poll::Ready(Ok(response)) => response,
        _ => unreachable!("the no-op service answers at once"),
    }
}

/// The contenders: the bare no-op service, periscope's layer, tower-http's layers as they come,
/// tower-http's layers set up to continue W3C traces as teams do it by hand, and set up to do
/// the whole job of periscope's layer (the same span fields, ids and status).
const CONTENDERS: [&str; 5] = [
    "noop",
    "periscope",
    "tower_http",
    "tower_http_w3c",
    "tower_http_same_job",
];

type BoxedService = tower::util::BoxService<Request<Body>, Response<Body>, Infallible>;

fn contender(name: &str) -> BoxedService {
    match name {
        "noop" => BoxedService::new(service_fn(noop)),
        "periscope" => BoxedService::new(
            ServiceBuilder::new()
                // As for tower-http's stack: the response's body (with the span) dropped.
                .map_response(|response: Response<_>| response.map(|_| Body::new()))
                .layer(CorrelationLayer::new())
                .service(service_fn(noop)),
        ),
        "tower_http" => tower_http(
            DefaultMakeSpan::new().level(Level::INFO),
            debug_on_response(),
        ),
        "tower_http_w3c" => tower_http(w3c_span as fn(&Request<Body>) -> Span, debug_on_response()),
        "tower_http_same_job" => tower_http(
            same_job_span as fn(&Request<Body>) -> Span,
            record_status as fn(&Response<Body>, Duration, &Span),
        ),
        _ => panic!("unknown contender {name:?}: one of {CONTENDERS:?}"),
    }
}

/// tower-http's default response hook, at DEBUG (below the subscribers' INFO, as in services).
fn debug_on_response() -> DefaultOnResponse {
    DefaultOnResponse::new().level(Level::DEBUG)
}

/// `SetRequestId` + `TraceLayer` (spans from `make_span`, `on_response` on the response) +
/// `PropagateRequestId`.
fn tower_http<M, R>(make_span: M, on_response: R) -> BoxedService
where
    M: MakeSpan<Body> + Clone + Send + 'static,
    R: OnResponse<Body> + Clone + Send + 'static,
{
    BoxedService::new(
        ServiceBuilder::new()
            // One response type for every contender; the body is dropped as a caller would.
            .map_response(|response: Response<_>| response.map(|_| Body::new()))
            .set_x_request_id(MakeRequestUuid)
            .layer(
                TraceLayer::new_for_http()
                    .make_span_with(make_span)
                    .on_request(DefaultOnRequest::new().level(Level::DEBUG))
                    .on_response(on_response),
            )
            .propagate_x_request_id()
            .service(service_fn(noop)),
    )
}

/// Reads headers for OpenTelemetry's propagator.
struct HeaderExtractor<'a>(&'a HeaderMap);

impl opentelemetry::propagation::Extractor for HeaderExtractor<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).and_then(|value| value.to_str().ok())
    }

    fn keys(&self) -> Vec<&str> {
        self.0.keys().map(http::HeaderName::as_str).collect()
    }
}

/// The request span of a hand-glued stack that continues W3C traces (the anchor's span in the
/// workspace's `benches/stack.rs`): tower-http's request id as a field, and the incoming trace
/// context, read by OpenTelemetry's propagator, as the span's OpenTelemetry parent.
fn w3c_span(request: &Request<Body>) -> Span {
    let request_id = request
        .headers()
        .get("x-request-id")
        .and_then(|value| value.to_str().ok())
        .unwrap_or_default();
    let span = tracing::info_span!(
        "request",
        method = %request.method(),
        uri = %request.uri(),
        version = ?request.version(),
        request_id,
        otel.kind = "server",
    );
    let parent = TraceContextPropagator::new().extract(&HeaderExtractor(request.headers()));
    let _ = span.set_parent(parent);
    span
}

/// The request span of a hand-glued stack doing all that periscope's layer does: the same
/// fields (HTTP semantic conventions, request id, tenant headers, trace and span ids), the
/// incoming trace read by OpenTelemetry's propagator and set as the span's parent, and the ids
/// generated by OpenTelemetry's id generator where no OpenTelemetry layer makes them.
fn same_job_span(request: &Request<Body>) -> Span {
    let headers = request.headers();
    let text = |name: &str| headers.get(name).and_then(|value| value.to_str().ok());
    let parent = TraceContextPropagator::new().extract(&HeaderExtractor(headers));
    let remote = parent.span().span_context().clone();
    let ids = RandomIdGenerator::default();
    let trace_id = if remote.is_valid() {
        remote.trace_id()
    } else {
        ids.new_trace_id()
    };
    let method = request.method().as_str();
    let span = tracing::info_span!(
        "http_request",
        otel.name = method,
        otel.kind = "server",
        otel.status_code = Empty,
        http.request.method = method,
        http.route = Empty,
        http.response.status_code = Empty,
        url.path = request.uri().path(),
        url.scheme = request.uri().scheme_str().unwrap_or("http"),
        request_id = text("x-request-id"),
        trace_id = %trace_id,
        span_id = %ids.new_span_id(),
        org_id = text("x-org-id"),
        project_id = text("x-project-id"),
    );
    let _ = span.set_parent(parent);
    span
}

/// The response status on the span, `otel.status_code` ERROR for 5xx.
fn record_status(response: &Response<Body>, _latency: Duration, span: &Span) {
    span.record("http.response.status_code", response.status().as_u16());
    if response.status().is_server_error() {
        span.record("otel.status_code", "ERROR");
    }
}

fn side_by_side(c: &mut Criterion, group: &str, request: fn() -> Request<Body>) {
    let mut group = c.benchmark_group(group);
    for name in CONTENDERS {
        let mut service = contender(name);
        group.bench_function(name, |b| b.iter(|| black_box(call(&mut service, request))));
    }
    group.finish();
}

/// A service's usual subscriber: spans formatted by a fmt layer (writing to a sink here).
fn fmt_sink() -> tracing::Dispatch {
    tracing_subscriber::registry()
        .with(tracing_subscriber::fmt::layer().with_writer(std::io::sink))
        .with(tracing_subscriber::filter::LevelFilter::INFO)
        .into()
}

/// The bare span store: what the layers cost before any formatting.
fn registry() -> tracing::Dispatch {
    tracing_subscriber::registry()
        .with(tracing_subscriber::filter::LevelFilter::INFO)
        .into()
}

/// The subscriber periscope's services run: periscope's JSON log layer (writing to a sink on
/// the calling thread), which keeps the span fields its lines carry (the ids and tenant).
fn periscope_log_sink() -> tracing::Dispatch {
    let (layer, guard) = periscope_log::LogLayer::builder()
        .writer(std::io::sink())
        .blocking(true)
        .build();
    // The guard flushes the output when dropped; the bench's subscribers live until it exits.
    std::mem::forget(guard);
    tracing_subscriber::registry()
        .with(layer)
        .with(tracing_subscriber::filter::LevelFilter::INFO)
        .into()
}

type Named<T> = (&'static str, T);

const SUBSCRIBERS: [Named<fn() -> tracing::Dispatch>; 3] = [
    ("fmt_sink", fmt_sink),
    ("registry", registry),
    ("periscope_log_sink", periscope_log_sink),
];

type MakeRequest = fn() -> Request<Body>;

const KINDS: [Named<MakeRequest>; 2] = [("internal", internal_request), ("edge", edge_request)];

/// `TRACE_BENCH_RUN=<subscriber>/<kind>/<contender>/<calls>`: makes that many calls and exits.
fn run_calls(spec: &str) {
    let parts: Vec<&str> = spec.split('/').collect();
    let [subscriber, kind, name, calls] = parts[..] else {
        panic!("TRACE_BENCH_RUN={spec:?}: expected <subscriber>/<kind>/<contender>/<calls>")
    };
    let subscriber = named(&SUBSCRIBERS, subscriber);
    let request = named(&KINDS, kind);
    let calls: u64 = calls.parse().expect("<calls> is a number");
    tracing::dispatcher::set_global_default(subscriber()).expect("the first subscriber set");
    let mut service = contender(name);
    for _ in 0..calls {
        black_box(call(&mut service, request));
    }
}

/// Calls per timed batch of [`interleaved`]: about a millisecond of work for each contender.
const BATCH: u32 = 1_000;

/// `TRACE_BENCH_INTERLEAVED=[<subscriber>/]<rounds>`: for each subscriber (or the one named)
/// and request kind, every contender timed for one batch of calls in turn (starting with a
/// different one each round), for that many rounds; printed: the median time per call of each
/// contender and periscope's overhead as a fraction of `tower_http_same_job`'s, from those
/// medians and as the median (and quartiles) of each round's own ratio.
///
/// Criterion gives each contender seconds of the machine, one after another: where the
/// machine is shared, a slow spell lands on one contender and moves a run's ratio by up to a
/// factor of two. Batches a millisecond long, taken in turn, share such spells out among all
/// of them.
fn interleaved(only: Option<&str>, rounds: usize) {
    let position = |name| {
        CONTENDERS
            .iter()
            .position(|c| *c == name)
            .expect("a contender")
    };
    let (noop, periscope, same_job) = (
        position("noop"),
        position("periscope"),
        position("tower_http_same_job"),
    );
    println!(
        "| group | {} | overhead ratio (of medians) | median of rounds' ratios (quartiles) |",
        CONTENDERS.map(|name| format!("{name} ns")).join(" | ")
    );
    println!("|{}", " --- |".repeat(CONTENDERS.len() + 3));
    for (subscriber, dispatch) in SUBSCRIBERS {
        if only.is_some_and(|only| only != subscriber) {
            continue;
        }
        // One subscriber: the process's, as in a service. All three: each in turn for the
        // thread.
        let _default = match only {
            Some(_) => {
                tracing::dispatcher::set_global_default(dispatch()).expect("the first subscriber");
                None
            }
            None => Some(tracing::dispatcher::set_default(&dispatch())),
        };
        for (kind, request) in KINDS {
            let mut services = CONTENDERS.map(contender);
            let mut times = vec![[0.0; CONTENDERS.len()]; rounds];
            // A first round warms caches and the subscriber's span slab, and is not kept.
            for round in std::iter::once(None).chain((0..rounds).map(Some)) {
                for turn in 0..CONTENDERS.len() {
                    let index = (turn + round.unwrap_or(0)) % CONTENDERS.len();
                    let service = &mut services[index];
                    let start = Instant::now();
                    for _ in 0..BATCH {
                        black_box(call(service, request));
                    }
                    if let Some(round) = round {
                        times[round][index] = start.elapsed().as_nanos() as f64 / f64::from(BATCH);
                    }
                }
            }
            let medians: Vec<f64> = (0..CONTENDERS.len())
                .map(|index| median(times.iter().map(|round| round[index]).collect()))
                .collect();
            let overhead_ratio = |t: &[f64]| (t[periscope] - t[noop]) / (t[same_job] - t[noop]);
            let mut ratios: Vec<f64> = times.iter().map(|round| overhead_ratio(round)).collect();
            ratios.sort_by(f64::total_cmp);
            let quartile = |q: usize| ratios[(ratios.len() - 1) * q / 4];
            println!(
                "| {kind}_{subscriber} | {} | **{:.2}** | {:.2} ({:.2}–{:.2}) |",
                medians
                    .iter()
                    .map(|ns| format!("{ns:.0}"))
                    .collect::<Vec<_>>()
                    .join(" | "),
                overhead_ratio(&medians),
                quartile(2),
                quartile(1),
                quartile(3),
            );
        }
    }
}

fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}

fn named<T: Copy>(list: &[(&str, T)], name: &str) -> T {
    let names: Vec<&str> = list.iter().map(|(n, _)| *n).collect();
    list.iter()
        .find(|(n, _)| *n == name)
        .unwrap_or_else(|| panic!("unknown name {name:?}: one of {names:?}"))
        .1
}

fn main() {
    if let Ok(spec) = std::env::var("TRACE_BENCH_RUN") {
        run_calls(&spec);
        return;
    }
    if let Ok(spec) = std::env::var("TRACE_BENCH_INTERLEAVED") {
        let (only, rounds) = match spec.split_once('/') {
            Some((subscriber, rounds)) => {
                // An unknown name stops here, the known ones listed.
                let _ = named(&SUBSCRIBERS, subscriber);
                (Some(subscriber), rounds)
            }
            None => (None, spec.as_str()),
        };
        let rounds = rounds.parse().ok().filter(|&rounds| rounds > 0);
        let usage = "TRACE_BENCH_INTERLEAVED=[<subscriber>/]<rounds>: rounds a number from 1 up";
        interleaved(only, rounds.expect(usage));
        return;
    }
    let mut criterion = Criterion::default().configure_from_args();
    for (subscriber, dispatch) in SUBSCRIBERS {
        let _default = tracing::dispatcher::set_default(&dispatch());
        for (kind, request) in KINDS {
            side_by_side(&mut criterion, &format!("{kind}_{subscriber}"), request);
        }
    }
    criterion.final_summary();
}
