//! What the RED families record for responses that do not end plainly: bodies the server
//! drops (`HEAD`, 204, 304) count as empty, and a panic caught by a layer above the metrics
//! layer (tower-http's `CatchPanicLayer` added after it with `Router::layer`) counts as the
//! server error it is, not as a cancellation.
// Test code: helpers outside #[test] functions may unwrap too.

mod common;

use std::panic::AssertUnwindSafe;
use std::pin::Pin;
use std::task::{Context, Poll};

use axum::Router;
use axum::http::{Request, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use common::{parse_openmetrics, points, request, serve, sum_where};
use openmetrics_parser::OpenMetricsValue;
use periscope_metrics::{CANCELLED, MetricsLayer, MetricsRegistry};
use tower_layer::{Layer, layer_fn};
use tower_service::Service;

/// A body that yields `text` in one frame and only then says it is over, as a stream of a
/// file or of an upstream answer does: its size is not known up front.
struct Streamed(Option<&'static str>);

impl http_body::Body for Streamed {
    type Data = bytes::Bytes;
    type Error = std::convert::Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<bytes::Bytes>, Self::Error>>> {
        let text = self.0.take();
        Poll::Ready(text.map(|text| {
            Ok(http_body::Frame::data(bytes::Bytes::from_static(
                text.as_bytes(),
            )))
        }))
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bodies_the_server_drops_are_recorded_as_empty() {
    let registry = MetricsRegistry::new();
    let layer = MetricsLayer::builder()
        .route_templates(["/big", "/no-content", "/not-modified", "/file", "/stream"])
        .response_size()
        .register(&registry)
        .unwrap();
    let app = Router::new()
        .route("/big", get(|| async { "x".repeat(5000) }))
        .route(
            "/no-content",
            get(|| async { (StatusCode::NO_CONTENT, "dropped") }),
        )
        .route(
            "/not-modified",
            get(|| async { (StatusCode::NOT_MODIFIED, "dropped") }),
        )
        // A streamed answer with a `Content-Length` is that long; one without, unknown.
        .route(
            "/file",
            get(|| async {
                let body = axum::body::Body::new(Streamed(Some("seven b")));
                ([(axum::http::header::CONTENT_LENGTH, "7")], body)
            }),
        )
        .route(
            "/stream",
            get(|| async { axum::body::Body::new(Streamed(Some("unknown"))) }),
        )
        .layer(layer);
    let addr = serve(app).await;

    for path in ["/file", "/stream"] {
        let response = request(addr, "GET", path, &[]).await.unwrap();
        assert_eq!(response.body.len(), 7, "{path}: {response:?}");
    }
    let get = request(addr, "GET", "/big", &[]).await.unwrap();
    assert_eq!(get.body.len(), 5000);
    let head = request(addr, "HEAD", "/big", &[]).await.unwrap();
    assert_eq!(head.status, 200);
    assert!(head.body.is_empty());
    for path in ["/no-content", "/not-modified"] {
        let response = request(addr, "GET", path, &[]).await.unwrap();
        assert!(response.body.is_empty(), "{path}: {response:?}");
    }

    let exposition = parse_openmetrics(&registry.encode_openmetrics().unwrap());
    let family = &exposition.families["http_server_response_body_size_bytes"];
    let mut sizes = Vec::new();
    for sample in family.iter_samples() {
        let labels = sample.get_labelset().unwrap();
        let OpenMetricsValue::Histogram(histogram) = &sample.value else {
            panic!("{:?}", sample.value)
        };
        sizes.push((
            labels.get_label_value("method").unwrap().to_owned(),
            labels.get_label_value("route").unwrap().to_owned(),
            histogram.count.unwrap(),
            histogram.sum.as_ref().unwrap().as_f64(),
        ));
    }
    sizes.sort_by(|a, b| (&a.0, &a.1).cmp(&(&b.0, &b.1)));
    let expected = [
        ("GET", "/big", 1, 5000.0),
        ("GET", "/file", 1, 7.0),
        ("GET", "/no-content", 1, 0.0),
        ("GET", "/not-modified", 1, 0.0),
        ("GET", "/stream", 0, 0.0),
        ("HEAD", "/big", 1, 0.0),
    ]
    .map(|(method, route, count, sum)| (method.to_owned(), route.to_owned(), count, sum));
    assert_eq!(sizes, expected);
}

/// What tower-http's `CatchPanicLayer` does: catch the panic of one poll and answer 500,
/// keeping the panicked future until the response future itself is dropped, after the
/// unwinding. Hand-written futures only, as in tower-http: an `async fn` in between would drop
/// the metrics future while unwinding and hide the case.
#[derive(Clone)]
struct CatchPanic<S>(S);

impl<S, B> Service<Request<B>> for CatchPanic<S>
where
    S: Service<Request<B>, Response = Response>,
{
    type Response = Response;
    type Error = S::Error;
    type Future = CatchUnwind<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.0.poll_ready(cx)
    }

    fn call(&mut self, request: Request<B>) -> Self::Future {
        CatchUnwind(Box::pin(self.0.call(request)))
    }
}

struct CatchUnwind<F>(Pin<Box<F>>);

impl<F, E> Future for CatchUnwind<F>
where
    F: Future<Output = Result<Response, E>>,
{
    type Output = Result<Response, E>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let inner = self.0.as_mut();
        match std::panic::catch_unwind(AssertUnwindSafe(|| inner.poll(cx))) {
            Ok(poll) => poll,
            Err(_) => Poll::Ready(Ok(StatusCode::INTERNAL_SERVER_ERROR.into_response())),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_panic_caught_above_the_layer_counts_as_a_server_error() {
    let registry = MetricsRegistry::new();
    let metrics = MetricsLayer::builder()
        .route_templates(["/panic", "/ok"])
        .register(&registry)
        .unwrap();
    let app = Router::new()
        .route(
            "/panic",
            get(|| async {
                if true {
                    panic!("handler panicked on purpose");
                }
                "unreachable"
            }),
        )
        .route("/ok", get(|| async { "ok" }))
        .layer(metrics.clone())
        .layer(layer_fn(CatchPanic));
    let addr = serve(app).await;

    for _ in 0..3 {
        let response = request(addr, "GET", "/panic", &[]).await.unwrap();
        assert_eq!(response.status, 500);
    }
    let response = request(addr, "GET", "/ok", &[]).await.unwrap();
    assert_eq!(response.status, 200);
    assert_eq!(metrics.in_flight(), 0);

    let exposition = parse_openmetrics(&registry.encode_openmetrics().unwrap());
    let requests = points(&exposition, "http_server_requests");
    let count =
        |route: &str, status: &str| sum_where(&requests, &[("route", route), ("status", status)]);
    assert_eq!(count("/panic", "5xx"), 3.0, "{requests:?}");
    assert_eq!(count("/panic", CANCELLED), 0.0, "{requests:?}");
    assert_eq!(count("/ok", "2xx"), 1.0, "{requests:?}");
}

/// A handler whose final answer is a 1xx other than 101 (`103 Early Hints` returned as the
/// answer) gets a 500 from hyper in its place: counted as the 5xx the client got, not `1xx`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_interim_status_other_than_101_counts_as_the_500_hyper_sends() {
    let registry = MetricsRegistry::new();
    let metrics = MetricsLayer::builder()
        .route_templates(["/hints"])
        .register(&registry)
        .unwrap();
    let app = Router::new()
        .route(
            "/hints",
            get(|| async { StatusCode::from_u16(103).unwrap() }),
        )
        .layer(metrics.clone());
    let addr = serve(app).await;
    let response = request(addr, "GET", "/hints", &[]).await.unwrap();
    assert_eq!(response.status, 500);

    let exposition = parse_openmetrics(&registry.encode_openmetrics().unwrap());
    let requests = points(&exposition, "http_server_requests");
    let count = |status: &str| sum_where(&requests, &[("route", "/hints"), ("status", status)]);
    assert_eq!(count("5xx"), 1.0, "{requests:?}");
    assert_eq!(count("1xx"), 0.0, "{requests:?}");
}

/// A gRPC server answers a failed call with HTTP 200 and `grpc-status` in its headers: the call
/// counts under the status its code stands for, so the 5xx ratio sees gRPC failures.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_grpc_call_counts_under_the_status_its_code_stands_for() {
    let registry = MetricsRegistry::new();
    let metrics = MetricsLayer::builder()
        .route_templates(["/pkg.Svc/{method}"])
        .register(&registry)
        .unwrap();
    let grpc = |code: &'static str| {
        move || async move {
            (
                [("content-type", "application/grpc"), ("grpc-status", code)],
                "",
            )
        }
    };
    let app = Router::new()
        .route("/pkg.Svc/Internal", axum::routing::post(grpc("13")))
        .route("/pkg.Svc/Missing", axum::routing::post(grpc("5")))
        .route("/pkg.Svc/Ok", axum::routing::post(grpc("0")))
        // Success with the status in trailers: nothing in the headers.
        .route("/pkg.Svc/Streamed", axum::routing::post(|| async { "" }))
        .layer(metrics);
    let addr = serve(app).await;
    for method in ["Internal", "Internal", "Missing", "Ok", "Streamed"] {
        let path = format!("/pkg.Svc/{method}");
        let response = request(addr, "POST", &path, &[("content-type", "application/grpc")])
            .await
            .unwrap();
        assert_eq!(response.status, 200);
    }

    let exposition = parse_openmetrics(&registry.encode_openmetrics().unwrap());
    let requests = points(&exposition, "http_server_requests");
    let count = |status: &str| sum_where(&requests, &[("status", status)]);
    assert_eq!(count("5xx"), 2.0, "{requests:?}");
    assert_eq!(count("4xx"), 1.0, "{requests:?}");
    assert_eq!(count("2xx"), 2.0, "{requests:?}");
}

/// A panic in the service's own `call` is a server error; a request whose future is dropped
/// while another future of the task unwinds was cancelled, not failed.
#[tokio::test]
async fn a_panic_is_a_server_error_only_where_the_service_panicked() {
    use std::future::Future;
    use std::task::Waker;

    let registry = MetricsRegistry::new();
    let metrics = MetricsLayer::builder()
        .route_templates(["/call-panics", "/pending"])
        .register(&registry)
        .unwrap();

    // The inner `call` panics.
    let mut panics_in_call = metrics.layer(tower::service_fn(
        |_: Request<String>| -> std::future::Ready<Result<Response, std::convert::Infallible>> {
            panic!("call panicked on purpose")
        },
    ));
    let request = Request::get("/call-panics").body(String::new()).unwrap();
    let caught = std::panic::catch_unwind(AssertUnwindSafe(|| {
        drop(panics_in_call.call(request));
    }));
    assert!(caught.is_err());

    // A pending request dropped while a sibling panics.
    let mut pending = metrics.layer(tower::service_fn(|_: Request<String>| {
        std::future::pending::<Result<Response, std::convert::Infallible>>()
    }));
    let mut future = Box::pin(pending.call(Request::get("/pending").body(String::new()).unwrap()));
    let mut cx = Context::from_waker(Waker::noop());
    assert!(future.as_mut().poll(&mut cx).is_pending());
    let caught = std::panic::catch_unwind(AssertUnwindSafe(move || {
        let _pending_request = future;
        panic!("a sibling panicked on purpose");
    }));
    assert!(caught.is_err());
    assert_eq!(metrics.in_flight(), 0);

    let exposition = parse_openmetrics(&registry.encode_openmetrics().unwrap());
    let requests = points(&exposition, "http_server_requests");
    let count =
        |route: &str, status: &str| sum_where(&requests, &[("route", route), ("status", status)]);
    assert_eq!(count("/call-panics", "5xx"), 1.0, "{requests:?}");
    assert_eq!(count("/pending", CANCELLED), 1.0, "{requests:?}");
    assert_eq!(count("/pending", "5xx"), 0.0, "{requests:?}");
}
