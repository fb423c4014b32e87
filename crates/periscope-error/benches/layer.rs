//! Overhead of the error layer and the envelope, side by side with the baselines: no layer,
//! tower-http's `CatchPanicLayer`, a hand-written `serde_json::json!` envelope, and plain
//! serde decoding.
#![allow(missing_docs)]

use std::convert::Infallible;
use std::future::Future;
use std::hint::black_box;
use std::pin::pin;
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use bytes::Bytes;
use criterion::{Criterion, criterion_group, criterion_main};
use http::{HeaderMap, Request, Response, StatusCode};
use http_body_util::Full;
use periscope_context::RequestContext;
use periscope_error::{ApiError, Envelope, ErrorLayer, HttpError, codes};
use tower::{Layer, Service, service_fn};
use tower_http::catch_panic::CatchPanicLayer;

/// Drives a future that completes without waiting on I/O.
fn run<F: Future>(future: F) -> F::Output {
    let mut future = pin!(future);
    let mut cx = Context::from_waker(Waker::noop());
    loop {
        if let Poll::Ready(output) = future.as_mut().poll(&mut cx) {
            return output;
        }
    }
}

fn call<S, B>(service: &mut S, request: Request<Full<Bytes>>) -> Response<B>
where
    S: Service<Request<Full<Bytes>>, Response = Response<B>>,
    S::Error: std::fmt::Debug,
{
    let mut cx = Context::from_waker(Waker::noop());
    assert!(service.poll_ready(&mut cx).is_ready());
    run(service.call(request)).expect("the services under test do not fail")
}

/// A request as hyper hands it over: the URI shares the connection's read buffer, so cloning
/// it is a reference-count increment.
fn plain_request() -> Request<Full<Bytes>> {
    let uri = http::Uri::from_maybe_shared(Bytes::from_static(b"/v1/jobs/42")).unwrap_or_default();
    Request::get(uri).body(Full::default()).unwrap_or_default()
}

fn request(ctx: &RequestContext) -> Request<Full<Bytes>> {
    let mut request = plain_request();
    request.extensions_mut().insert(ctx.clone());
    request
}

async fn ok(_: Request<Full<Bytes>>) -> Result<Response<Full<Bytes>>, Infallible> {
    Ok(Response::new(Full::new(Bytes::from_static(
        b"{\"ok\":true}",
    ))))
}

async fn panics(_: Request<Full<Bytes>>) -> Result<Response<Full<Bytes>>, Infallible> {
    panic!("handler bug")
}

/// A successful request through each layer, inside a request context as under periscope-trace.
fn ok_path(c: &mut Criterion) {
    let ctx = RequestContext::new_root();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .unwrap();
    let _runtime = runtime.enter();
    silence_default_panic_hook();
    let mut group = c.benchmark_group("ok_path");
    ctx.in_scope(|| {
        let mut bare = service_fn(ok);
        group.bench_function("no_layer", |b| {
            b.iter(|| black_box(call(&mut bare, request(&ctx))))
        });
        let mut catch_panic = CatchPanicLayer::new().layer(service_fn(ok));
        group.bench_function("tower_http_catch_panic", |b| {
            b.iter(|| black_box(call(&mut catch_panic, request(&ctx))))
        });
        let mut layer = ErrorLayer::new().layer(service_fn(ok));
        group.bench_function("error_layer", |b| {
            b.iter(|| black_box(call(&mut layer, request(&ctx))))
        });
        let mut with_timeout = ErrorLayer::new()
            .timeout(Duration::from_secs(30))
            .layer(service_fn(ok));
        group.bench_function("error_layer_with_timeout", |b| {
            b.iter(|| black_box(call(&mut with_timeout, request(&ctx))))
        });
    });
    // Alone, the layer reads the context from the headers itself.
    let mut standalone = ErrorLayer::new().layer(service_fn(ok));
    group.bench_function("error_layer_standalone", |b| {
        b.iter(|| black_box(call(&mut standalone, plain_request())))
    });
    let mut bare = service_fn(ok);
    group.bench_function("no_layer_no_context", |b| {
        b.iter(|| black_box(call(&mut bare, plain_request())))
    });
    group.finish();
}

/// Replaces the default panic hook (which prints every panic) with a silent one, before the
/// first `ErrorLayer::new()`: periscope's recording hook, installed then, goes in front of it
/// and chains to it, so the panic path is timed with the work every service pays. Set after
/// it, the silent hook would replace periscope's instead.
fn silence_default_panic_hook() {
    static SILENCED: std::sync::Once = std::sync::Once::new();
    SILENCED.call_once(|| std::panic::set_hook(Box::new(|_| {})));
}

/// A panicking handler: tower-http's plain-text 500 against the envelope.
fn panic_path(c: &mut Criterion) {
    silence_default_panic_hook();
    let ctx = RequestContext::new_root();
    let mut group = c.benchmark_group("panic_path");
    let mut catch_panic = CatchPanicLayer::new().layer(service_fn(panics));
    group.bench_function("tower_http_catch_panic", |b| {
        b.iter(|| black_box(call(&mut catch_panic, request(&ctx))))
    });
    let mut layer = ErrorLayer::new().layer(service_fn(panics));
    // The layer logs every panic; without a subscriber the event is skipped cheaply.
    group.bench_function("error_layer", |b| {
        b.iter(|| black_box(call(&mut layer, request(&ctx))))
    });
    group.finish();
}

/// Rendering a handler's error: `HttpError` against a hand-written `json!` envelope.
fn render(c: &mut Criterion) {
    let ctx = RequestContext::new_root();
    let mut group = c.benchmark_group("render");
    ctx.in_scope(|| {
        group.bench_function("hand_written_json", |b| {
            b.iter(|| {
                let ctx = RequestContext::current();
                let request_id = ctx.as_ref().map(|ctx| ctx.request_id.to_string());
                let body = serde_json::json!({"error": {
                    "code": "conflict",
                    "message": "Cannot cancel job that is already completed",
                    "request_id": request_id,
                    "trace_id": ctx.as_ref().map(|ctx| ctx.trace_id.to_string()),
                    "details": {"job_id": "job_456"},
                    "retryable": false,
                }});
                let bytes = serde_json::to_vec(&body).unwrap_or_default();
                let response = Response::builder()
                    .status(StatusCode::CONFLICT)
                    .header("content-type", "application/json")
                    .body(Full::new(Bytes::from(bytes)));
                black_box(response)
            })
        });
        group.bench_function("http_error", |b| {
            b.iter(|| {
                let error = HttpError::new(
                    codes::CONFLICT,
                    "Cannot cancel job that is already completed",
                )
                .with_detail("job_id", "job_456");
                black_box(error.into_http_response::<Full<Bytes>>())
            })
        });
    });
    group.finish();
}

/// Decoding an envelope: `ApiError` against typed serde decoding of the same body.
fn decode(c: &mut Criterion) {
    let body = br#"{"error":{"code":"job_already_terminal","message":"Cannot cancel job that is already completed","request_id":"req_01jj5","trace_id":"4bf92f3577b34da6a3ce929d0e0e4736","details":{"job_id":"job_456","current_status":"completed"},"help":"Jobs can only be canceled while queued or processing","retryable":false}}"#;
    let headers = HeaderMap::new();
    let mut group = c.benchmark_group("decode");
    group.bench_function("serde_typed_envelope", |b| {
        b.iter(|| black_box(serde_json::from_slice::<Envelope>(black_box(body)).ok()))
    });
    group.bench_function("api_error", |b| {
        b.iter(|| {
            black_box(ApiError::from_parts(
                StatusCode::CONFLICT,
                &headers,
                black_box(body),
            ))
        })
    });
    let html = "<html><body><h1>502 Bad Gateway</h1></body></html>".repeat(20);
    group.bench_function("api_error_html", |b| {
        b.iter(|| {
            black_box(ApiError::from_parts(
                StatusCode::BAD_GATEWAY,
                &headers,
                black_box(html.as_bytes()),
            ))
        })
    });
    group.finish();
}

criterion_group!(benches, ok_path, panic_path, render, decode);
criterion_main!(benches);
