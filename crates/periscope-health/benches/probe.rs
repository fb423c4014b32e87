//! What a readiness probe costs, side by side with a hand-written handler doing the same work:
//!
//! - `cached`: periscope answering from its cache vs building the same JSON with `json!`.
//! - `run`: periscope running three checks (each its own task under a timeout) vs awaiting the
//!   same three checks inline with `join_all` (no timeout, no panic isolation).
//! - `liveness`: periscope's `/health` vs a `json!({"status":"ok"})` response.
#![allow(missing_docs)]

use std::hint::black_box;
use std::time::Duration;

use bytes::Bytes;
use criterion::{Criterion, criterion_group, criterion_main};
use futures_util::future::join_all;
use http::{Request, Response};
use http_body_util::Full;
use periscope_health::{Health, Probe};

async fn dependency() -> Result<(), String> {
    tokio::task::yield_now().await;
    Ok(())
}

fn health(cache_ttl: Duration) -> Health {
    let built = Health::builder()
        .version("1.4.2")
        .check("database", dependency)
        .check("queue", dependency)
        .non_critical_check("s3", dependency)
        .cache_ttl(cache_ttl)
        .build();
    match built {
        Ok(health) => health,
        Err(error) => panic!("bench setup: {error}"),
    }
}

/// What a hand-written handler answers: the same document, built with `json!`.
fn baseline_response(durations: [u64; 3]) -> Response<Full<Bytes>> {
    let body = serde_json::json!({
        "status": "ok",
        "version": "1.4.2",
        "uptime_s": 12,
        "checks": {
            "database": {"status": "ok", "duration_ms": durations[0]},
            "queue": {"status": "ok", "duration_ms": durations[1]},
            "s3": {"status": "ok", "critical": false, "duration_ms": durations[2]},
        }
    });
    let mut response = Response::new(Full::new(Bytes::from(
        serde_json::to_vec(&body).unwrap_or_default(),
    )));
    response.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("application/json"),
    );
    response
}

fn request(path: &str) -> Request<()> {
    let mut request = Request::new(());
    *request.uri_mut() = http::Uri::try_from(path).unwrap_or_default();
    request
}

fn probes(c: &mut Criterion) {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build();
    let Ok(runtime) = runtime else {
        panic!("bench setup: no Tokio runtime");
    };
    let ready = request("/ready");
    let live = request("/health");

    let mut group = c.benchmark_group("cached");
    let cached = health(Duration::from_secs(3600));
    runtime.block_on(cached.readiness());
    group.bench_function("periscope", |b| {
        b.iter(|| runtime.block_on(cached.answer(Probe::Readiness, black_box(&ready))))
    });
    group.bench_function("hand_written_json", |b| {
        b.iter(|| runtime.block_on(async { baseline_response(black_box([3, 1, 2])) }))
    });
    group.finish();

    let mut group = c.benchmark_group("run");
    let uncached = health(Duration::ZERO);
    group.bench_function("periscope", |b| {
        b.iter(|| runtime.block_on(uncached.answer(Probe::Readiness, black_box(&ready))))
    });
    group.bench_function("hand_written_join_all", |b| {
        b.iter(|| {
            runtime.block_on(async {
                let timed = || async {
                    let started = std::time::Instant::now();
                    let passed = dependency().await.is_ok();
                    (passed, started.elapsed().as_millis() as u64)
                };
                let results = join_all([timed(), timed(), timed()]).await;
                baseline_response([results[0].1, results[1].1, results[2].1])
            })
        })
    });
    group.finish();

    let mut group = c.benchmark_group("liveness");
    group.bench_function("periscope", |b| {
        b.iter(|| runtime.block_on(cached.answer(Probe::Liveness, black_box(&live))))
    });
    group.bench_function("hand_written_json", |b| {
        b.iter(|| {
            runtime.block_on(async {
                let body = serde_json::to_vec(&serde_json::json!({"status": "ok"}));
                Response::new(Full::new(Bytes::from(body.unwrap_or_default())))
            })
        })
    });
    group.finish();
}

criterion_group!(benches, probes);
criterion_main!(benches);
