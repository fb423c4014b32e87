//! Requests over a real socket: one access line per request, with the request's context.
#![cfg(feature = "axum")] // the route comes from axum's MatchedPath

mod common;

use std::net::SocketAddr;

use axum::Router;
use axum::extract::Request;
use axum::http::StatusCode;
use axum::middleware::{self, Next};
use axum::response::Response;
use axum::routing::get;
use common::{Captured, Handles};
use periscope_context::{ExtractOptions, RequestContext, extract};
use periscope_log::{AccessLogLayer, LogGuard, LogLayer};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tracing::Instrument;
use tracing_subscriber::prelude::*;

/// What periscope-trace's server layer does: the context in the extensions and current, the
/// request span with the contract's field names.
async fn correlate(mut request: Request, next: Next) -> Response {
    let ctx = extract(request.headers(), &ExtractOptions::default()).context;
    request.extensions_mut().insert(ctx.clone());
    let span = tracing::info_span!(
        target: "periscope_trace",
        "request",
        request_id = ctx.request_id.as_str(),
        trace_id = %ctx.trace_id,
        span_id = %ctx.span_id,
        org_id = tracing::field::Empty,
    );
    if let Some(org) = ctx.tenant.org_id() {
        span.record("org_id", org);
    }
    ctx.scope(next.run(request)).instrument(span).await
}

async fn job(axum::extract::Path(id): axum::extract::Path<String>) -> String {
    let ctx = RequestContext::current().expect("the context is current in handlers");
    tracing::info!(job_id = id.as_str(), "looking up job");
    format!("job {id} of {}", ctx.request_id)
}

async fn get_raw(addr: SocketAddr, path: &str, headers: &str) -> (u16, String) {
    send_raw(addr, "GET", path, headers).await
}

async fn send_raw(addr: SocketAddr, method: &str, path: &str, headers: &str) -> (u16, String) {
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let request =
        format!("{method} {path} HTTP/1.1\r\nhost: test\r\nconnection: close\r\n{headers}\r\n");
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).await.unwrap();
    let status = response[9..12].parse().unwrap();
    let body = response
        .split("\r\n\r\n")
        .nth(1)
        .unwrap_or_default()
        .to_owned();
    (status, body)
}

/// The layer writing into a buffer, as this thread's subscriber: the current-thread runtime
/// runs server and client here.
fn install() -> (
    Captured,
    Handles,
    LogGuard,
    tracing::subscriber::DefaultGuard,
) {
    let out = Captured::default();
    let (layer, guard) = LogLayer::builder()
        .writer(out.clone())
        .blocking(true)
        .build();
    let handles = Handles::of(&layer);
    let default = common::set_default(tracing_subscriber::registry().with(layer));
    (out, handles, guard, default)
}

async fn serve(app: Router) -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    addr
}

#[tokio::test(flavor = "current_thread")]
async fn one_access_line_per_request_with_context_status_and_bytes() {
    let (out, handles, guard, _default) = install();
    let Handles { level, .. } = handles;

    let app = Router::new()
        .route("/jobs/{id}", get(job))
        .route(
            "/boom",
            get(|| async { (StatusCode::INTERNAL_SERVER_ERROR, "boom") }),
        )
        .route("/health", get(|| async { "ok" }))
        .layer(AccessLogLayer::new())
        .layer(middleware::from_fn(correlate));
    let addr = serve(app).await;

    let traceparent = "traceparent: 00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01\r\n";
    let headers = format!("x-request-id: req_abc\r\nx-org-id: org_9\r\n{traceparent}");
    let (status, body) = get_raw(addr, "/jobs/42?token=hunter2", &headers).await;
    assert_eq!((status, body.as_str()), (200, "job 42 of req_abc"));
    assert_eq!(get_raw(addr, "/boom", "").await.0, 500);
    assert_eq!(get_raw(addr, "/health", "").await.0, 200);
    level.set("debug".parse().unwrap());
    assert_eq!(get_raw(addr, "/health", "").await.0, 200);
    drop(guard);

    let text = out.text();
    assert!(
        !text.contains("hunter2"),
        "the query string is never logged: {text}"
    );
    let lines = out.lines();
    let access: Vec<&Value> = lines
        .iter()
        .filter(|l| l["target"] == "periscope::access")
        .collect();
    // /health is quiet: only the one made while the level was debug is there.
    assert_eq!(access.len(), 3, "{text}");

    let handler = lines
        .iter()
        .find(|l| l["message"] == "looking up job")
        .unwrap();
    let ok = access[0];
    for line in [handler, ok] {
        assert_eq!(line["request_id"], "req_abc");
        assert_eq!(line["trace_id"], "4bf92f3577b34da6a3ce929d0e0e4736");
        assert_eq!(line["org_id"], "org_9");
        assert_eq!(line["span"], "request");
    }
    // The span id is the one recorded on the request span: a new span of this service.
    assert_eq!(handler["span_id"], ok["span_id"]);
    assert_ne!(ok["span_id"], "00f067aa0ba902b7");
    assert_eq!(ok["level"], "info");
    assert_eq!(ok["message"], "request completed");
    let data = &ok["data"];
    let duration_ms = data["duration_ms"].as_f64().unwrap();
    assert!(duration_ms > 0.0 && duration_ms < 10_000.0, "{duration_ms}");
    let mut data = data.clone();
    data.as_object_mut().unwrap().remove("duration_ms");
    assert_eq!(
        data,
        json!({"method": "GET", "route": "/jobs/{id}", "path": "/jobs/42", "status": 200,
               "bytes_out": "job 42 of req_abc".len()})
    );

    assert_eq!(access[1]["level"], "error");
    assert_eq!(access[1]["data"]["status"], 500);
    assert_eq!(access[1]["data"]["bytes_out"], 4);
    assert_eq!(access[2]["level"], "debug");
    assert_eq!(access[2]["data"]["path"], "/health");
}

#[tokio::test(flavor = "current_thread")]
async fn answers_that_send_no_body_are_complete_not_aborted() {
    let (out, _handles, guard, _default) = install();
    let app = Router::new()
        .route("/jobs/{id}", get(job))
        .route(
            "/gone",
            get(|| async { (StatusCode::NO_CONTENT, "never sent") }),
        )
        .route(
            "/same",
            get(|| async { (StatusCode::NOT_MODIFIED, "never sent") }),
        )
        .layer(AccessLogLayer::new())
        .layer(middleware::from_fn(correlate));
    let addr = serve(app).await;

    // The server drops these bodies unread, as HTTP says it must.
    let (status, body) = send_raw(addr, "HEAD", "/jobs/42", "").await;
    assert_eq!((status, body.as_str()), (200, ""));
    assert_eq!(get_raw(addr, "/gone", "").await.0, 204);
    assert_eq!(get_raw(addr, "/same", "").await.0, 304);
    drop(guard);

    let lines = out.lines();
    let access: Vec<&Value> = lines
        .iter()
        .filter(|l| l["target"] == "periscope::access")
        .collect();
    assert_eq!(access.len(), 3, "{}", out.text());
    for (line, (method, status)) in access
        .iter()
        .zip([("HEAD", 200), ("GET", 204), ("GET", 304)])
    {
        let data = &line["data"];
        assert_eq!(data["method"], method, "{line}");
        assert_eq!(data["status"], status, "{line}");
        assert_eq!(data["bytes_out"], 0, "{line}");
        assert_eq!(data.get("aborted"), None, "{line}");
        assert_eq!(line["message"], "request completed", "{line}");
    }
}

#[tokio::test(flavor = "current_thread")]
async fn client_errors_are_warnings_and_quiet_paths_are_configurable() {
    let (out, _, guard, _default) = install();
    let app = Router::new()
        .route("/health", get(|| async { "ok" }))
        .layer(AccessLogLayer::new().quiet_paths(Vec::<String>::new()));
    let addr = serve(app).await;

    assert_eq!(get_raw(addr, "/health", "").await.0, 200);
    assert_eq!(get_raw(addr, "/nope", "").await.0, 404);
    drop(guard);
    let lines = out.lines();
    assert_eq!(lines.len(), 2, "{}", out.text());
    assert_eq!(
        (&lines[0]["level"], &lines[0]["data"]["path"]),
        (&json!("info"), &json!("/health"))
    );
    assert_eq!(lines[1]["level"], "warn");
    assert_eq!(lines[1]["data"]["status"], 404);
    assert!(lines[1]["data"].get("route").is_none(), "no route matched");
}

/// A gRPC answer's body: one message, then trailers with `grpc-status` (none when `code` is
/// empty).
struct GrpcBody {
    code: &'static str,
    sent: u8,
}

impl http_body::Body for GrpcBody {
    type Data = bytes::Bytes;
    type Error = std::convert::Infallible;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        _cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<Self::Data>, Self::Error>>> {
        self.sent += 1;
        let frame = match self.sent {
            1 => http_body::Frame::data(bytes::Bytes::from_static(b"\0\0\0\0\x02hi")),
            2 if !self.code.is_empty() => {
                let mut trailers = http::HeaderMap::new();
                trailers.insert("grpc-status", self.code.parse().unwrap());
                http_body::Frame::trailers(trailers)
            }
            _ => return std::task::Poll::Ready(None),
        };
        std::task::Poll::Ready(Some(Ok(frame)))
    }
}

/// A gRPC answer is HTTP 200 whatever its outcome: its line carries `grpc_status`, from the
/// head of a trailers-only answer or from the trailers, at the level of the HTTP status the
/// code stands for; a stream that ends without a status is `UNKNOWN`, as the metrics and the
/// span count it.
#[tokio::test(flavor = "current_thread")]
async fn grpc_answers_are_logged_with_their_code_at_its_level() {
    let (out, _handles, guard, _default) = install();
    let trailers_only = |code: &'static str| {
        axum::routing::post(move || async move {
            (
                [("content-type", "application/grpc"), ("grpc-status", code)],
                "",
            )
        })
    };
    let streamed = |code: &'static str| {
        axum::routing::post(move || async move {
            (
                [("content-type", "application/grpc")],
                axum::body::Body::new(GrpcBody { code, sent: 0 }),
            )
        })
    };
    let app = Router::new()
        .route("/pkg.Svc/Internal", trailers_only("13"))
        .route("/pkg.Svc/Missing", trailers_only("5"))
        .route("/pkg.Svc/StreamFailed", streamed("14"))
        .route("/pkg.Svc/StreamOk", streamed("0"))
        .route("/pkg.Svc/StreamUntold", streamed(""))
        .layer(AccessLogLayer::new())
        .layer(middleware::from_fn(correlate));
    let addr = serve(app).await;
    for path in [
        "/pkg.Svc/Internal",
        "/pkg.Svc/Missing",
        "/pkg.Svc/StreamFailed",
        "/pkg.Svc/StreamOk",
        "/pkg.Svc/StreamUntold",
    ] {
        let headers = "content-type: application/grpc\r\nte: trailers\r\n";
        assert_eq!(send_raw(addr, "POST", path, headers).await.0, 200);
    }
    drop(guard);

    let lines = out.lines();
    let access: Vec<&Value> = lines
        .iter()
        .filter(|l| l["target"] == "periscope::access")
        .collect();
    assert_eq!(access.len(), 5, "{}", out.text());
    for (line, (code, level)) in access.iter().zip([
        (13, "error"),
        (5, "warn"),
        (14, "error"),
        (0, "info"),
        (2, "error"),
    ]) {
        assert_eq!(line["data"]["status"], 200, "{line}");
        assert_eq!(line["data"]["grpc_status"], code, "{line}");
        assert_eq!(line["level"], level, "{line}");
        assert_eq!(line["data"].get("aborted"), None, "{line}");
    }
}

/// Two rows of an export, then the stream it copies from fails.
struct FailingBody(u8);

impl http_body::Body for FailingBody {
    type Data = bytes::Bytes;
    type Error = std::io::Error;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        _cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<Self::Data>, Self::Error>>> {
        self.0 += 1;
        std::task::Poll::Ready(Some(match self.0 {
            1 => Ok(http_body::Frame::data(bytes::Bytes::from_static(
                b"id,total\n",
            ))),
            2 => Ok(http_body::Frame::data(bytes::Bytes::from_static(b"1,20\n"))),
            _ => Err(std::io::Error::other("upstream reset")),
        }))
    }
}

/// A body that fails while it is sent (an upstream stream reset, say) is a failure of the
/// service: its line is at error, marked aborted, with the bytes sent and the cause.
#[tokio::test(flavor = "current_thread")]
async fn a_body_that_fails_midway_is_logged_at_error_with_its_cause() {
    let (out, _handles, guard, _default) = install();
    let export = || async { axum::body::Body::new(FailingBody(0)) };
    let app = Router::new()
        .route("/export", get(export))
        .layer(AccessLogLayer::new())
        .layer(middleware::from_fn(correlate));
    let addr = serve(app).await;

    // The server cuts the connection (hyper may not even flush the head): read until then.
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let request = "GET /export HTTP/1.1\r\nhost: test\r\nx-request-id: export-1\r\n\r\n";
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut received = Vec::new();
    let _ = stream.read_to_end(&mut received).await;
    drop(guard);

    let lines = out.lines();
    let access: Vec<&Value> = lines
        .iter()
        .filter(|l| l["target"] == "periscope::access")
        .collect();
    assert_eq!(access.len(), 1, "{}", out.text());
    let line = access[0];
    assert_eq!(line["level"], "error", "{line}");
    assert_eq!(line["request_id"], "export-1", "{line}");
    assert_eq!(line["data"]["status"], 200, "{line}");
    assert_eq!(line["data"]["aborted"], true, "{line}");
    assert_eq!(line["data"]["bytes_out"], 14, "{line}");
    let error = &line["data"]["error"];
    assert!(
        error["message"]
            .as_str()
            .unwrap()
            .contains("upstream reset"),
        "{line}"
    );
    assert!(error["chain"].is_array(), "{line}");
}

/// Without a request span (a path the correlation layer keeps quiet, which still gets its
/// access line; or a level that turns the span off), the line takes the request's context
/// fields from the `RequestContext` in its extensions: the tenant fields with the ids.
#[tokio::test(flavor = "current_thread")]
async fn a_line_without_a_request_span_carries_the_tenant_of_its_context() {
    fn keys() -> Vec<periscope_context::TenantKey> {
        ["org_id", "project_id", "region_id"]
            .into_iter()
            .map(|key| periscope_context::TenantKey::new(key).unwrap())
            .collect()
    }
    async fn context_only(mut request: Request, next: Next) -> Response {
        let options = ExtractOptions {
            tenant_keys: keys(),
            ..ExtractOptions::default()
        };
        let ctx = extract(request.headers(), &options).context;
        request.extensions_mut().insert(ctx);
        next.run(request).await
    }
    // A declared tenant key beside the standard ones: lifted from the line's tenant list.
    let out = Captured::default();
    let (layer, guard) = LogLayer::builder()
        .writer(out.clone())
        .blocking(true)
        .tenant_keys(&keys())
        .build();
    let _default = common::set_default(tracing_subscriber::registry().with(layer));
    let app = Router::new()
        .route("/v1/items", get(|| async { "ok" }))
        .layer(AccessLogLayer::new())
        .layer(middleware::from_fn(context_only));
    let addr = serve(app).await;

    let headers = "x-request-id: spanless-1\r\nx-org-id: org_7\r\nx-project-id: prj_8\r\n\
                   x-region-id: eu_1\r\n";
    assert_eq!(get_raw(addr, "/v1/items", headers).await.0, 200);
    drop(guard);
    let lines = out.lines();
    assert_eq!(lines.len(), 1, "{}", out.text());
    let line = &lines[0];
    assert_eq!(line["request_id"], "spanless-1", "{line}");
    assert_eq!(line["org_id"], "org_7", "{line}");
    assert_eq!(line["project_id"], "prj_8", "{line}");
    assert_eq!(line["region_id"], "eu_1", "{line}");
    assert_eq!(line["data"]["status"], 200, "{line}");
}

/// A streamed body that yields `text` and only then tells it is over, as a stream of a file
/// or of an upstream answer does.
struct Streamed(Option<&'static str>);

impl http_body::Body for Streamed {
    type Data = bytes::Bytes;
    type Error = std::convert::Infallible;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        _cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<Self::Data>, Self::Error>>> {
        let frame = self.0.take().filter(|text| !text.is_empty()).map(|text| {
            Ok(http_body::Frame::data(bytes::Bytes::from_static(
                text.as_bytes(),
            )))
        });
        std::task::Poll::Ready(frame)
    }
}

/// Over HTTP/2 the server polls a body on after its `Content-Length` is sent (HTTP/1.1 drops
/// it): an error then resets the stream, so the line waits for the body's end and logs the
/// failure, where over HTTP/1.1 the last byte completes the answer.
#[tokio::test(flavor = "current_thread")]
async fn over_http2_an_error_after_the_content_length_is_sent_fails_the_line() {
    use tower::{Layer, ServiceExt};

    let (out, _, guard, _default) = install();
    for version in [http::Version::HTTP_2, http::Version::HTTP_11] {
        let service =
            AccessLogLayer::new().layer(tower::service_fn(|_: http::Request<()>| async {
                let response = http::Response::builder()
                    // Its two rows, 14 bytes, then the failure.
                    .header(http::header::CONTENT_LENGTH, "14")
                    .body(FailingBody(0))
                    .unwrap();
                Ok::<_, std::convert::Infallible>(response)
            }));
        let request = http::Request::get("/download")
            .version(version)
            .body(())
            .unwrap();
        let mut body = std::pin::pin!(service.oneshot(request).await.unwrap().into_body());
        let mut frame = async || {
            std::future::poll_fn(|cx| http_body::Body::poll_frame(body.as_mut(), cx)).await
        };
        for _ in 0..2 {
            assert!(frame().await.unwrap().is_ok());
        }
        let logged_at_the_length = out.lines().len();
        if version == http::Version::HTTP_2 {
            assert_eq!(logged_at_the_length, 0, "{:?}", out.lines());
            assert!(frame().await.unwrap().is_err());
            let line = out.lines().remove(0);
            assert_eq!(line["level"], "error", "{line}");
            assert_eq!(line["data"]["aborted"], true, "{line}");
            assert!(line.to_string().contains("upstream reset"), "{line}");
        } else {
            let line = out.lines().remove(1);
            assert_eq!(line["level"], "info", "{line}");
            assert_eq!(line["data"]["bytes_out"], 14, "{line}");
        }
    }
    drop(guard);
}

/// A streamed answer with a `Content-Length` (a file download, a proxied answer) is over for
/// hyper once that many bytes are sent: it drops the body without asking it for its end.
/// That is a complete answer, not an `aborted` one.
#[tokio::test(flavor = "current_thread")]
async fn a_streamed_answer_with_a_content_length_is_complete_when_it_is_all_sent() {
    let (out, _, guard, _default) = install();
    let streamed = |text: &'static str| {
        (
            [(http::header::CONTENT_LENGTH, text.len().to_string())],
            axum::body::Body::new(Streamed(Some(text))),
        )
    };
    let app = Router::new()
        .route("/file", get(move || async move { streamed("hello") }))
        .route("/empty", get(move || async move { streamed("") }))
        .layer(AccessLogLayer::new());
    let addr = serve(app).await;

    assert_eq!(get_raw(addr, "/file", "").await, (200, "hello".to_owned()));
    assert_eq!(get_raw(addr, "/empty", "").await, (200, String::new()));
    drop(guard);
    let lines = out.lines();
    assert_eq!(lines.len(), 2, "{}", out.text());
    for (line, bytes) in lines.iter().zip([5, 0]) {
        let data = &line["data"];
        assert_eq!(data["status"], 200, "{line}");
        assert_eq!(data["bytes_out"], bytes, "{line}");
        assert_eq!(data.get("aborted"), None, "{line}");
    }
}

/// A streamed body that ends before the `Content-Length` its head announced (a file that shrank
/// while it was served): the server closes the connection on a cut answer, so the line says
/// the answer failed, with the cause, not a complete 200.
#[tokio::test(flavor = "current_thread")]
async fn a_body_that_ends_short_of_its_content_length_is_not_logged_complete() {
    let (out, _, guard, _default) = install();
    let app = Router::new()
        .route(
            "/shrunk",
            get(|| async {
                (
                    [(http::header::CONTENT_LENGTH, "10")],
                    axum::body::Body::new(Streamed(Some("hello"))),
                )
            }),
        )
        .layer(AccessLogLayer::new());
    let addr = serve(app).await;

    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    stream
        .write_all(b"GET /shrunk HTTP/1.1\r\nhost: test\r\nconnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut response = Vec::new();
    let _ = stream.read_to_end(&mut response).await;
    drop(guard);
    let line = out.lines().remove(0);
    assert_eq!(line["level"], "error", "{line}");
    let data = &line["data"];
    assert_eq!(data["status"], 200, "{line}");
    assert_eq!(data["bytes_out"], 5, "{line}");
    assert_eq!(data["aborted"], true, "{line}");
    assert!(line.to_string().contains("5 bytes short"), "{line}");
}
