//! Per-request overhead of the server layer over a no-op service, side by side with the
//! tower-http stack doing the same job (`SetRequestId` + `PropagateRequestId` + `TraceLayer`).
//!
//! Both run under the same subscriber: a registry with a formatting layer at INFO that writes
//! to a sink, so span creation and field recording cost what they cost in a service, and
//! nothing is printed. Overhead = (stack time) - (no-op time).
//!
//! Run: `cargo bench -p periscope-trace --bench server_layer -- --warm-up-time 1 --measurement-time 3`

use std::convert::Infallible;
use std::future::{Future, Ready, ready};
use std::hint::black_box;
use std::pin::pin;
use std::task::{Context, Poll, Waker};

use criterion::{Criterion, criterion_group, criterion_main};
use http::{Request, Response};
use periscope_trace::CorrelationLayer;
use tower::{Layer, Service, ServiceBuilder, service_fn};
use tower_http::ServiceBuilderExt;
use tower_http::request_id::MakeRequestUuid;
use tower_http::trace::{DefaultMakeSpan, DefaultOnRequest, DefaultOnResponse, TraceLayer};
use tracing::Level;
use tracing_subscriber::layer::SubscriberExt;

type Body = http_body_util::Empty<bytes::Bytes>;

fn noop(_request: Request<Body>) -> Ready<Result<Response<Body>, Infallible>> {
    ready(Ok(Response::new(Body::new())))
}

/// A request from outside: no ids, so both stacks generate a request id (and periscope a trace).
fn edge_request() -> Request<Body> {
    Request::get("/v1/jobs/42")
        .header("user-agent", "bench")
        .body(Body::new())
        .unwrap()
}

/// A call between services: a request id and a sampled trace to continue.
fn internal_request() -> Request<Body> {
    Request::get("/v1/jobs/42")
        .header("x-request-id", "req_01jj3z9m2k8q4v7w5x6y0a1b2c")
        .header(
            "traceparent",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
        )
        .header("user-agent", "bench")
        .body(Body::new())
        .unwrap()
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

/// The three contenders, run side by side under whatever subscriber is the default.
fn contenders(c: &mut Criterion, subscriber: &str) {
    for (kind, request) in [
        ("internal", internal_request as fn() -> Request<Body>),
        ("edge", edge_request),
    ] {
        side_by_side(c, &format!("{kind}_{subscriber}"), request);
    }
}

fn side_by_side(c: &mut Criterion, group: &str, request: fn() -> Request<Body>) {
    let mut group = c.benchmark_group(group);
    let mut bare = service_fn(noop);
    group.bench_function("noop", |b| b.iter(|| black_box(call(&mut bare, request))));

    let mut periscope = CorrelationLayer::new().layer(service_fn(noop));
    group.bench_function("periscope", |b| {
        b.iter(|| black_box(call(&mut periscope, request)))
    });

    let mut tower_http = ServiceBuilder::new()
        .set_x_request_id(MakeRequestUuid)
        .layer(
            TraceLayer::new_for_http()
                .make_span_with(DefaultMakeSpan::new().level(Level::INFO))
                .on_request(DefaultOnRequest::new().level(Level::DEBUG))
                .on_response(DefaultOnResponse::new().level(Level::DEBUG)),
        )
        .propagate_x_request_id()
        .service(service_fn(noop));
    group.bench_function("tower_http", |b| {
        b.iter(|| black_box(call(&mut tower_http, request)))
    });
    group.finish();
}

/// A service's usual subscriber: spans formatted by a fmt layer (writing to a sink here).
fn under_fmt_layer(c: &mut Criterion) {
    let subscriber = tracing_subscriber::registry()
        .with(tracing_subscriber::fmt::layer().with_writer(std::io::sink))
        .with(tracing_subscriber::filter::LevelFilter::INFO);
    let _default = tracing::subscriber::set_default(subscriber);
    contenders(c, "fmt_sink");
}

/// The bare span store: what the layers cost before any formatting.
fn under_registry(c: &mut Criterion) {
    let subscriber =
        tracing_subscriber::registry().with(tracing_subscriber::filter::LevelFilter::INFO);
    let _default = tracing::subscriber::set_default(subscriber);
    contenders(c, "registry");
}

criterion_group!(benches, under_fmt_layer, under_registry);
criterion_main!(benches);
