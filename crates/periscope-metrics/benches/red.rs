//! Recording one request: the bare service, periscope's RED layer, and axum-prometheus doing
//! the same job (counter, duration histogram, in-flight gauge by method, route and status),
//! side by side. Then encoding a registry of 10,000 series for a scrape.
#![allow(missing_docs, clippy::unwrap_used)]

use std::convert::Infallible;
use std::future::Future;
use std::hint::black_box;
use std::pin::pin;
use std::task::{Context, Poll, Waker};

use criterion::{Criterion, criterion_group, criterion_main};
use http::{Request, Response};
use periscope_context::RequestContext;
use periscope_metrics::{Caps, MetricsLayer, MetricsRegistry, MetricsService};
use prometheus_client::metrics::counter::Counter;
use tower::service_fn;
use tower_layer::Layer;
use tower_service::Service;

/// A request as the trace layer leaves it: a context in the extensions.
fn request(ctx: &RequestContext) -> Request<String> {
    let mut request = Request::get("/users/42").body(String::new()).unwrap();
    request.extensions_mut().insert(ctx.clone());
    request
}

/// Calls `service` once and drives the (ready) future to its response.
fn call<S, B>(service: &mut S, request: Request<String>) -> Response<B>
where
    S: Service<Request<String>, Response = Response<B>>,
    S::Error: std::fmt::Debug,
{
    let mut future = pin!(service.call(request));
    match future
        .as_mut()
        .poll(&mut Context::from_waker(Waker::noop()))
    {
        Poll::Ready(Ok(response)) => response,
        _ => unreachable!("the no-op service answers at once"),
    }
}

fn noop() -> impl Service<
    Request<String>,
    Response = Response<String>,
    Error = Infallible,
    Future = impl Future<Output = Result<Response<String>, Infallible>>,
> + Clone {
    service_fn(|_request: Request<String>| async { Ok(Response::new(String::new())) })
}

fn record_one_request(c: &mut Criterion) {
    let ctx = RequestContext::new_root();
    let mut group = c.benchmark_group("record_one_request");

    let mut bare = noop();
    group.bench_function("bare", |b| {
        b.iter(|| black_box(call(&mut bare, request(&ctx))))
    });

    let registry = MetricsRegistry::new();
    let mut periscope = MetricsLayer::builder()
        .route_templates(["/users/{id}", "/users/{id}/jobs", "/health"])
        .register(&registry)
        .unwrap()
        .layer(noop());
    group.bench_function("periscope", |b| {
        b.iter(|| black_box(call(&mut periscope, request(&ctx))))
    });

    // axum-prometheus spawns its exporter's upkeep task: give it a runtime to spawn on.
    let runtime = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    let _entered = runtime.enter();
    let (layer, _handle) = axum_prometheus::PrometheusMetricLayer::pair();
    let mut competitor = layer.layer(noop());
    group.bench_function("axum_prometheus", |b| {
        b.iter(|| black_box(call(&mut competitor, request(&ctx))))
    });
    group.finish();
}

fn encode_10k_series(c: &mut Criterion) {
    let registry = MetricsRegistry::new();
    let family = registry
        .guarded_family::<Counter, 2>(
            "jobs_total",
            "Jobs by queue and kind",
            ["queue", "kind"],
            Caps::default().every_label(1_000).series(20_000),
        )
        .unwrap();
    for queue in 0..100 {
        for kind in 0..100 {
            family
                .get_or_create([&format!("queue-{queue}"), &format!("kind-{kind}")])
                .inc_by(queue * kind);
        }
    }
    assert_eq!(family.len(), 10_000);
    let service = MetricsService::new(registry.clone());
    let mut gzip = http::HeaderMap::new();
    gzip.insert("accept-encoding", "gzip".parse().unwrap());

    let mut group = c.benchmark_group("encode_10k_series");
    group.sample_size(20);
    // The baseline: prometheus-client's own encoder on the same registry (OpenMetrics text,
    // what periscope's exposition starts from).
    group.bench_function("prometheus_client_openmetrics", |b| {
        b.iter(|| {
            registry.with_registry(|registry| {
                let mut text = String::new();
                prometheus_client::encoding::text::encode(&mut text, registry).unwrap();
                black_box(text)
            })
        })
    });
    group.bench_function("openmetrics", |b| {
        b.iter(|| black_box(registry.encode_openmetrics().unwrap()))
    });
    group.bench_function("prometheus", |b| {
        b.iter(|| black_box(registry.encode_prometheus().unwrap()))
    });
    group.bench_function("prometheus_gzip_response", |b| {
        b.iter(|| black_box(service.respond(&http::Method::GET, &gzip)))
    });
    group.finish();
}

criterion_group!(benches, record_one_request, encode_10k_series);
criterion_main!(benches);
