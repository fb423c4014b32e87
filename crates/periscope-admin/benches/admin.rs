//! What the admin service adds on top of answering directly: routing by path, the method
//! check and, for debug endpoints, the constant-time token check. Each pair runs side by side.

use std::convert::Infallible;
use std::future::Future;
use std::hint::black_box;
use std::pin::pin;
use std::task::{Context, Poll, Waker};

use bytes::Bytes;
use criterion::{Criterion, criterion_group, criterion_main};
use http::{Request, Response};
use http_body_util::Empty;
use periscope_admin::{Admin, DebugAccess};
use periscope_health::{Health, Probe};
use periscope_metrics::{MetricsRegistry, MetricsService};
use tower::Service;

const TOKEN: &str = "bench-admin-token-0123456789abcdef";

/// Every future but `/debug/status`'s is ready at once: poll it once.
fn now<F, B>(future: F) -> Response<B>
where
    F: Future<Output = Result<Response<B>, Infallible>>,
{
    let mut cx = Context::from_waker(Waker::noop());
    match pin!(future).poll(&mut cx) {
        Poll::Ready(Ok(response)) => response,
        _ => panic!("the answer was not ready at once"),
    }
}

fn get(path: &str) -> Request<Empty<Bytes>> {
    Request::get(path).body(Empty::new()).unwrap()
}

fn bench(c: &mut Criterion) {
    let health = Health::builder().build().unwrap();
    let registry = MetricsRegistry::new();
    registry.register_process_metrics().unwrap();
    let mut admin = Admin::builder()
        .service_info("bench", "1.0.0", "bench")
        .health(health.clone())
        .metrics(registry.clone())
        .status_section("queue", || serde_json::json!({"depth": 3}))
        .debug(DebugAccess::Token(TOKEN.into()))
        .build();

    let mut group = c.benchmark_group("liveness");
    let mut probe = health.probe_service(Probe::Liveness);
    group.bench_function("probe_service", |b| {
        b.iter(|| black_box(now(probe.call(get("/health")))))
    });
    group.bench_function("admin", |b| {
        b.iter(|| black_box(now(admin.call(get("/health")))))
    });
    group.finish();

    // A scrape is encoded on a thread of its own, and `/debug/status` with sections reads
    // them on one: waited for here.
    let runtime = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    let mut group = c.benchmark_group("metrics");
    let mut scrape = MetricsService::new(registry);
    group.bench_function("metrics_service", |b| {
        b.iter(|| black_box(runtime.block_on(scrape.call(get("/metrics")))))
    });
    group.bench_function("admin", |b| {
        b.iter(|| black_box(runtime.block_on(admin.call(get("/metrics")))))
    });
    group.finish();

    let mut group = c.benchmark_group("debug_status");
    let authorised = || {
        Request::get("/debug/status")
            .header("authorization", format!("Bearer {TOKEN}"))
            .body(Empty::<Bytes>::new())
            .unwrap()
    };
    group.bench_function("authorised", |b| {
        b.iter(|| black_box(runtime.block_on(admin.call(authorised())).unwrap()))
    });
    group.bench_function("refused", |b| {
        b.iter(|| black_box(now(admin.call(get("/debug/status")))))
    });
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
