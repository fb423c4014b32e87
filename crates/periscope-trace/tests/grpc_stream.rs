//! gRPC calls whose `grpc-status` comes in the trailers, after streamed messages, over a real
//! socket: the server span stays open until the body ends and records the code the call ended
//! with, failing for the server-error codes only, as for a trailers-only answer.
//!
//! The trailers are read by the access log (`AccessLogLayer`) composed inside the server
//! layer, as `obs.layer()` composes them; without it, such a call is judged by its head.

mod support;

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use axum::Router;
use axum::extract::State;
use axum::http::Uri;
use axum::response::Response;
use bytes::Bytes;
use http_body::Frame;
use periscope_log::AccessLogLayer;
use periscope_trace::CorrelationLayer;
use support::{Capture, ClosedSpan, serve};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::mpsc::{UnboundedSender, unbounded_channel};
use tracing_subscriber::layer::SubscriberExt;

type FrameResult = Result<Frame<Bytes>, std::io::Error>;

/// A response body whose frames the test sends, one by one; it ends when the sender is dropped.
struct Script(tokio::sync::mpsc::UnboundedReceiver<FrameResult>);

impl http_body::Body for Script {
    type Data = Bytes;
    type Error = std::io::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, std::io::Error>>> {
        self.0.poll_recv(cx)
    }
}

type Scripts = Arc<Mutex<HashMap<String, Script>>>;

async fn answer(State(scripts): State<Scripts>, uri: Uri) -> Response {
    let Some(script) = scripts.lock().unwrap().remove(uri.path()) else {
        // No such method: a trailers-only `UNIMPLEMENTED`, as tonic's router answers.
        return Response::builder()
            .header("content-type", "application/grpc")
            .header("grpc-status", "12")
            .body(axum::body::Body::empty())
            .unwrap();
    };
    Response::builder()
        .header("content-type", "application/grpc")
        .body(axum::body::Body::new(script))
        .unwrap()
}

fn message() -> FrameResult {
    Ok(Frame::data(Bytes::from_static(b"\0\0\0\0\x02hi")))
}

fn trailers(code: &str) -> FrameResult {
    let mut trailers = http::HeaderMap::new();
    trailers.insert("grpc-status", code.parse().unwrap());
    Ok(Frame::trailers(trailers))
}

fn script(scripts: &Scripts, path: &str, frames: Vec<FrameResult>) -> UnboundedSender<FrameResult> {
    let (sender, receiver) = unbounded_channel();
    for frame in frames {
        sender.send(frame).unwrap();
    }
    scripts
        .lock()
        .unwrap()
        .insert(path.to_owned(), Script(receiver));
    sender
}

/// Sends a gRPC call for `path` on its own connection, reads until the answer holds `until`
/// (or to its end when `None`), and returns the connection.
async fn call(
    addr: SocketAddr,
    id: &str,
    path: &str,
    until: Option<&[u8]>,
) -> tokio::net::TcpStream {
    call_as(addr, id, path, "application/grpc", until).await
}

/// [`call`] with this `content-type`.
async fn call_as(
    addr: SocketAddr,
    id: &str,
    path: &str,
    content_type: &str,
    until: Option<&[u8]>,
) -> tokio::net::TcpStream {
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let head = format!(
        "POST {path} HTTP/1.1\r\nhost: test\r\nx-request-id: {id}\r\n\
         content-type: {content_type}\r\nte: trailers\r\ncontent-length: 0\r\n\
         connection: close\r\n\r\n"
    );
    stream.write_all(head.as_bytes()).await.unwrap();
    let mut received = Vec::new();
    loop {
        if until.is_some_and(|until| received.windows(until.len()).any(|w| w == until)) {
            break;
        }
        let mut buf = [0; 1024];
        match stream.read(&mut buf).await {
            Ok(0) | Err(_) => {
                assert!(until.is_none(), "the answer ended before {until:?}");
                break;
            }
            Ok(read) => received.extend_from_slice(&buf[..read]),
        }
    }
    stream
}

fn capture() -> (Capture, tracing::subscriber::DefaultGuard) {
    let capture = Capture::default();
    let subscriber = tracing_subscriber::registry().with(capture.clone());
    (capture.clone(), support::set_default(subscriber))
}

/// The closed server span of request `id`, waited for.
async fn closed_span(capture: &Capture, id: &str) -> ClosedSpan {
    for _ in 0..200 {
        if let Some(span) = capture.spans_for("http_request", id).pop() {
            return span;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("the span of {id} never closed");
}

/// The server layer over the access log, which reads the trailers, as `obs.layer()` has them.
async fn app(scripts: &Scripts) -> SocketAddr {
    let app = Router::new()
        .fallback(answer)
        .with_state(scripts.clone())
        .layer(AccessLogLayer::new())
        .layer(CorrelationLayer::new());
    serve(app).await
}

#[tokio::test]
async fn the_server_span_is_judged_by_the_code_in_the_trailers() {
    let (capture, _guard) = capture();
    let scripts = Scripts::default();
    let addr = app(&scripts).await;

    // (id, frames, rpc.grpc.status_code, error.type when the span failed)
    let cases: [(&str, Vec<FrameResult>, &str, Option<&str>); 6] = [
        (
            "internal",
            vec![message(), message(), trailers("13")],
            "13",
            Some("INTERNAL"),
        ),
        ("not-found", vec![message(), trailers("5")], "5", None),
        ("ok", vec![message(), trailers("0")], "0", None),
        (
            "unavailable",
            vec![trailers("14")],
            "14",
            Some("UNAVAILABLE"),
        ),
        // No status: the client gets none, the call is `UNKNOWN`.
        ("untold", vec![message()], "2", Some("UNKNOWN")),
        // The service's stream fails: the server resets the call, `INTERNAL`.
        (
            "failed",
            vec![message(), Err(std::io::Error::other("upstream reset"))],
            "13",
            Some("INTERNAL"),
        ),
    ];
    for (id, frames, code, error) in cases {
        let path = format!("/pkg.Svc/{id}");
        drop(script(&scripts, &path, frames));
        drop(call(addr, id, &path, None).await);
        let span = closed_span(&capture, id).await;
        assert_eq!(span.get("http.response.status_code"), Some("200"), "{id}");
        assert_eq!(span.get("rpc.grpc.status_code"), Some(code), "{id}");
        assert_eq!(
            span.get("otel.status_code"),
            error.map(|_| "ERROR"),
            "{id}: {span:?}"
        );
        assert_eq!(span.get("error.type"), error, "{id}");
    }
}

#[tokio::test]
async fn the_server_span_stays_open_until_the_call_ends() {
    let (capture, _guard) = capture();
    let scripts = Scripts::default();
    let addr = app(&scripts).await;

    let path = "/pkg.Svc/Slow";
    let sender = script(&scripts, path, vec![message()]);
    let connection = call(addr, "slow", path, Some(b"hi")).await;
    tokio::time::sleep(Duration::from_millis(50)).await;
    // The head and a message are out; the call goes on.
    assert!(capture.spans_for("http_request", "slow").is_empty());
    sender.send(trailers("4")).unwrap();
    drop(sender);
    let span = closed_span(&capture, "slow").await;
    drop(connection);
    assert_eq!(span.get("rpc.grpc.status_code"), Some("4"));
    assert_eq!(span.get("otel.status_code"), Some("ERROR"));
    assert_eq!(span.get("error.type"), Some("DEADLINE_EXCEEDED"));

    // The client goes away in the middle: `CANCELLED`, not a failure of the server.
    let path = "/pkg.Svc/Dropped";
    let sender = script(&scripts, path, vec![message()]);
    let connection = call(addr, "dropped", path, Some(b"hi")).await;
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert!(capture.spans_for("http_request", "dropped").is_empty());
    drop(connection);
    let span = closed_span(&capture, "dropped").await;
    assert_eq!(span.get("rpc.grpc.status_code"), Some("1"));
    assert_eq!(span.get("otel.status_code"), None);
    assert_eq!(span.get("error.type"), None);
    drop(sender);
}

/// Without the access log inside, nothing reads the trailers for the server layer: the span
/// of a call whose code comes in them is judged by its head, as the 200 it was then (the
/// documented fallback); it still closes with its body.
#[tokio::test]
async fn without_the_access_log_the_server_span_is_judged_by_its_head() {
    let (capture, _guard) = capture();
    let scripts = Scripts::default();
    let app = Router::new()
        .fallback(answer)
        .with_state(scripts.clone())
        .layer(CorrelationLayer::new());
    let addr = serve(app).await;

    let path = "/pkg.Svc/Alone";
    let sender = script(&scripts, path, vec![message()]);
    let connection = call(addr, "alone", path, Some(b"hi")).await;
    // Open while the body streams: the body keeps it.
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert!(capture.spans_for("http_request", "alone").is_empty());
    sender.send(trailers("13")).unwrap();
    drop(sender);
    // Closed with the body, but judged by the head: nobody read the trailers' code.
    let span = closed_span(&capture, "alone").await;
    assert_eq!(span.get("http.response.status_code"), Some("200"));
    assert_eq!(span.get("rpc.grpc.status_code"), None);
    assert_eq!(span.get("otel.status_code"), None);
    drop(connection);
}

/// The OpenTelemetry RPC conventions: a gRPC call to `/package.Service/Method` is named
/// `package.Service/Method` and records `rpc.system`, `rpc.service` and `rpc.method`, the HTTP
/// fields kept. A plain HTTP request, and a path whose segments a proto name cannot have,
/// keep the HTTP name and record none of them: no client text goes into span names.
#[tokio::test]
async fn grpc_calls_are_named_by_service_and_method() {
    let (capture, _guard) = capture();
    let scripts = Scripts::default();
    let addr = app(&scripts).await;

    // (id, path, content-type, (service, method) when named so)
    let long = format!("/pkg.Svc/{}", "A".repeat(1024));
    let cases = [
        (
            "grpc",
            "/inventory.v1.Items/Get",
            "application/grpc",
            Some(("inventory.v1.Items", "Get")),
        ),
        (
            "grpc-web",
            "/inventory.v1.Items/List_2",
            "application/grpc-web+proto",
            Some(("inventory.v1.Items", "List_2")),
        ),
        ("plain", "/inventory.v1.Items/Get", "application/json", None),
        ("spaced", "/a%20b/c", "application/grpc", None),
        ("long", long.as_str(), "application/grpc", None),
        (
            "nested",
            "/pkg.Svc/Get/more",
            "application/grpc+proto",
            None,
        ),
    ];
    for (id, path, content_type, named) in cases {
        drop(script(&scripts, path, vec![trailers("0")]));
        drop(call_as(addr, id, path, content_type, None).await);
        let span = closed_span(&capture, id).await;
        assert_eq!(span.get("http.request.method"), Some("POST"), "{id}");
        assert_eq!(span.get("url.path"), Some(path), "{id}");
        assert_eq!(span.get("http.response.status_code"), Some("200"), "{id}");
        match named {
            Some((service, method)) => {
                let name = format!("{service}/{method}");
                assert_eq!(span.get("otel.name"), Some(name.as_str()), "{id}");
                assert_eq!(span.get("rpc.system"), Some("grpc"), "{id}");
                assert_eq!(span.get("rpc.service"), Some(service), "{id}");
                assert_eq!(span.get("rpc.method"), Some(method), "{id}");
            }
            None => {
                assert_eq!(span.get("otel.name"), Some("POST"), "{id}: {span:?}");
                for field in ["rpc.system", "rpc.service", "rpc.method"] {
                    assert_eq!(span.get(field), None, "{id}: {field}");
                }
            }
        }
    }
}

/// A call to a method the service does not have (`UNIMPLEMENTED`), named by nothing but the
/// client's path, keeps the HTTP name: otherwise any caller could add span names without end.
#[tokio::test]
async fn a_call_to_a_method_the_service_lacks_keeps_the_http_name() {
    let (capture, _guard) = capture();
    let scripts = Scripts::default();
    let addr = app(&scripts).await;

    for (id, path) in [("scan-1", "/pkg.Scan/A1"), ("scan-2", "/pkg.Scan/A2")] {
        drop(call(addr, id, path, None).await);
        let span = closed_span(&capture, id).await;
        assert_eq!(span.get("otel.name"), Some("POST"), "{id}: {span:?}");
        assert_eq!(span.get("rpc.grpc.status_code"), Some("12"), "{id}");
    }
}

/// A gRPC call dropped before its head (the client's deadline, a reset, a timeout around the
/// stack) was cancelled by the client: its server span says so as a stream cancelled mid-way
/// does, code 1 and not failed, agreeing with the metrics' `cancelled`. A plain HTTP request
/// dropped so gets no gRPC code.
#[tokio::test]
async fn a_grpc_call_dropped_before_its_head_records_cancelled() {
    use tower::{Layer, ServiceExt};

    let (capture, _guard) = capture();
    // A path not shaped `/package.Service/Method` (a prefix, a long segment) is a gRPC call
    // all the same.
    let long = format!("/pkg.Svc/{}", "m".repeat(200));
    for (id, content_type, path) in [
        ("dropped-grpc", Some("application/grpc"), "/pkg.Svc/Slow"),
        (
            "dropped-prefixed",
            Some("application/grpc"),
            "/api/pkg.Svc/Slow",
        ),
        ("dropped-long", Some("application/grpc"), long.as_str()),
        ("dropped-http", None, "/pkg.Svc/Slow"),
    ] {
        let service = CorrelationLayer::new().layer(tower::service_fn(
            |_: http::Request<axum::body::Body>| async {
                std::future::pending::<Result<http::Response<axum::body::Body>, Infallible>>().await
            },
        ));
        let mut request = http::Request::post(path).header("x-request-id", id);
        if let Some(content_type) = content_type {
            request = request.header("content-type", content_type);
        }
        let call = service.oneshot(request.body(axum::body::Body::empty()).unwrap());
        assert!(
            tokio::time::timeout(Duration::from_millis(20), call)
                .await
                .is_err()
        );
        let span = closed_span(&capture, id).await;
        let expected = content_type.map(|_| "1");
        assert_eq!(span.get("rpc.grpc.status_code"), expected, "{id}: {span:?}");
        assert_eq!(span.get("otel.status_code"), None, "{id}: {span:?}");
    }
}

/// A span failed by a panic: `ERROR`, and for a gRPC call (a `content_type` given) the
/// `INTERNAL` (13) its client is told, else `_OTHER`.
fn assert_failed_by_a_panic(span: &ClosedSpan, id: &str, content_type: Option<&str>) {
    assert_eq!(
        span.get("otel.status_code"),
        Some("ERROR"),
        "{id}: {span:?}"
    );
    let (code, error) = match content_type {
        Some(_) => (Some("13"), "INTERNAL"),
        None => (None, "_OTHER"),
    };
    assert_eq!(span.get("rpc.grpc.status_code"), code, "{id}: {span:?}");
    assert_eq!(span.get("error.type"), Some(error), "{id}: {span:?}");
}

/// A service that panics with no panic catcher inside the server layer: its span is failed
/// (as the metrics count the request), not `CANCELLED` (gRPC) nor left a success (HTTP); a
/// body that panics making a frame fails its span too.
#[tokio::test]
async fn a_service_that_panics_fails_its_span() {
    use http_body_util::BodyExt;
    use tower::{Layer, ServiceExt};

    let (capture, _guard) = capture();
    for (id, content_type) in [
        ("panic-grpc", Some("application/grpc")),
        ("panic-http", None),
    ] {
        let service = CorrelationLayer::new().layer(tower::service_fn(
            |_: http::Request<axum::body::Body>| async {
                panic!("the handler's bug");
                #[allow(unreachable_code)]
                Ok::<_, Infallible>(http::Response::new(axum::body::Body::empty()))
            },
        ));
        let mut request = http::Request::post("/pkg.Svc/Do").header("x-request-id", id);
        if let Some(content_type) = content_type {
            request = request.header("content-type", content_type);
        }
        let call = service.oneshot(request.body(axum::body::Body::empty()).unwrap());
        assert!(tokio::spawn(call).await.unwrap_err().is_panic());
        assert_failed_by_a_panic(&closed_span(&capture, id).await, id, content_type);
    }

    /// A body whose first frame panics.
    struct Panicking;
    impl http_body::Body for Panicking {
        type Data = Bytes;
        type Error = Infallible;
        fn poll_frame(
            self: Pin<&mut Self>,
            _: &mut Context<'_>,
        ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
            panic!("the stream's bug")
        }
    }
    // A body that panics after its head: a plain answer fails `_OTHER`, a gRPC stream (its
    // code due in the trailers, no access log inside to watch them) the `INTERNAL` its client
    // is told.
    for (id, content_type) in [
        ("panic-body", None),
        ("panic-grpc-body", Some("application/grpc")),
    ] {
        let service = CorrelationLayer::new().layer(tower::service_fn(
            move |_: http::Request<axum::body::Body>| async move {
                let mut answer = http::Response::builder();
                if let Some(content_type) = content_type {
                    answer = answer.header("content-type", content_type);
                }
                Ok::<_, Infallible>(answer.body(Panicking).unwrap())
            },
        ));
        let mut request = http::Request::post("/pkg.Svc/Stream").header("x-request-id", id);
        if let Some(content_type) = content_type {
            request = request.header("content-type", content_type);
        }
        let request = request.body(axum::body::Body::empty()).unwrap();
        let response = service.oneshot(request).await.unwrap();
        let read = tokio::spawn(async move { response.into_body().collect().await });
        assert!(read.await.unwrap_err().is_panic());
        assert_failed_by_a_panic(&closed_span(&capture, id).await, id, content_type);
    }
}

/// An interim status given as the final answer (`103 Early Hints`), with no error layer inside
/// to answer it: hyper sends a 500 in its place, which the span records, failed, as the metrics
/// count it.
#[tokio::test]
async fn an_interim_status_as_the_answer_is_the_500_hyper_sends() {
    use tower::{Layer, ServiceExt};

    let (capture, _guard) = capture();
    let service = CorrelationLayer::new().layer(tower::service_fn(
        |_: http::Request<axum::body::Body>| async {
            let answer = http::Response::builder()
                .status(http::StatusCode::EARLY_HINTS)
                .body(axum::body::Body::empty())
                .unwrap();
            Ok::<_, Infallible>(answer)
        },
    ));
    let request = http::Request::get("/hints")
        .header("x-request-id", "hints")
        .body(axum::body::Body::empty())
        .unwrap();
    drop(service.oneshot(request).await.unwrap());
    let span = closed_span(&capture, "hints").await;
    assert_eq!(
        span.get("http.response.status_code"),
        Some("500"),
        "{span:?}"
    );
    assert_eq!(span.get("otel.status_code"), Some("ERROR"), "{span:?}");
    assert_eq!(span.get("error.type"), Some("500"), "{span:?}");
}

/// Without an error layer to answer it as gRPC, a router's plain 404 to a made-up gRPC path is
/// no method of the service either: the span keeps the HTTP name, whatever path the client made
/// up. A method that answers keeps its name.
#[tokio::test]
async fn a_grpc_call_answered_by_a_plain_404_keeps_the_http_name() {
    let (capture, _guard) = capture();
    let answer = || async {
        Response::builder()
            .header("content-type", "application/grpc")
            .header("grpc-status", "0")
            .body(axum::body::Body::empty())
            .unwrap()
    };
    let app = Router::new()
        .route("/pkg.Real/Get", axum::routing::post(answer))
        .layer(AccessLogLayer::new())
        .layer(CorrelationLayer::new());
    let addr = serve(app).await;
    for (id, path) in [("made-up-1", "/a1.Svc/M"), ("made-up-2", "/a2.Svc/M")] {
        drop(call_as(addr, id, path, "application/grpc", None).await);
        let span = closed_span(&capture, id).await;
        assert_eq!(span.get("otel.name"), Some("POST"), "{id}: {span:?}");
        assert_eq!(span.get("http.response.status_code"), Some("404"), "{id}");
    }
    drop(call_as(addr, "real", "/pkg.Real/Get", "application/grpc", None).await);
    let span = closed_span(&capture, "real").await;
    assert_eq!(span.get("otel.name"), Some("pkg.Real/Get"), "{span:?}");
}

/// A plain answer whose body fails after its head (an upstream cut mid-stream): the request did
/// not complete, so its span fails with `error.type` `_OTHER` whatever the 200 said, as the
/// client span of the same exchange does. One that ends well stays as it was.
#[tokio::test]
async fn a_plain_answer_cut_after_its_head_fails_its_span() {
    let (capture, _guard) = capture();
    let scripts = Scripts::default();
    let plain = |State(scripts): State<Scripts>, uri: Uri| async move {
        let script = scripts.lock().unwrap().remove(uri.path()).unwrap();
        Response::builder()
            .header("content-type", "text/plain")
            .body(axum::body::Body::new(script))
            .unwrap()
    };
    let app = Router::new()
        .fallback(plain)
        .with_state(scripts.clone())
        .layer(AccessLogLayer::new())
        .layer(CorrelationLayer::new());
    let addr = serve(app).await;
    let chunk = || Ok(Frame::data(Bytes::from_static(b"part")));
    for (id, frames, error) in [
        (
            "cut",
            vec![chunk(), Err(std::io::Error::other("upstream reset"))],
            Some("_OTHER"),
        ),
        ("whole", vec![chunk(), chunk()], None),
    ] {
        let path = format!("/download/{id}");
        drop(script(&scripts, &path, frames));
        drop(call_as(addr, id, &path, "text/plain", None).await);
        let span = closed_span(&capture, id).await;
        assert_eq!(span.get("http.response.status_code"), Some("200"), "{id}");
        assert_eq!(
            span.get("otel.status_code"),
            error.map(|_| "ERROR"),
            "{id}: {span:?}"
        );
        assert_eq!(span.get("error.type"), error, "{id}: {span:?}");
    }
}

/// An answer already failed by its head (an upstream's 502 relayed) whose body is then cut
/// keeps its status as `error.type`, as a client span does: recorded again as `_OTHER`, the
/// exported span would carry the attribute twice. A 200 cut after its head is the failure.
#[tokio::test]
async fn a_failed_answer_cut_after_its_head_keeps_its_status_as_error_type() {
    use http_body_util::BodyExt;
    use tower::{Layer, ServiceExt};

    let (capture, _guard) = capture();
    for (id, status, error_type) in [("cut-502", 502, "502"), ("cut-200", 200, "_OTHER")] {
        let service = CorrelationLayer::new().layer(tower::service_fn(
            move |_: http::Request<axum::body::Body>| async move {
                let (frames, script) = unbounded_channel();
                frames
                    .send(Ok(Frame::data(Bytes::from_static(b"{\"error\""))))
                    .unwrap();
                frames
                    .send(Err(std::io::Error::other("upstream reset")))
                    .unwrap();
                let response = Response::builder()
                    .status(status)
                    .header("content-type", "application/json")
                    .body(Script(script))
                    .unwrap();
                Ok::<_, Infallible>(response)
            },
        ));
        let request = http::Request::get("/relay")
            .header("x-request-id", id)
            .body(axum::body::Body::empty())
            .unwrap();
        let response = service.oneshot(request).await.unwrap();
        assert!(response.into_body().collect().await.is_err());
        let span = closed_span(&capture, id).await;
        assert_eq!(span.get("error.type"), Some(error_type), "{id}: {span:?}");
        assert_eq!(
            span.get("otel.status_code"),
            Some("ERROR"),
            "{id}: {span:?}"
        );
    }
}
