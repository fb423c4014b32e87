//! The error layer behind a real axum server on 127.0.0.1: every failure a client can meet
//! comes back as the envelope, with the request id that is also in the response header and
//! in the log line.

mod support;

use std::time::Duration;

use axum::extract::{DefaultBodyLimit, Path, Request};
use axum::http::StatusCode;
use axum::middleware::{self, Next};
use axum::response::Response;
use axum::routing::{get, post};
use axum::{Json, Router};
use periscope_context::{ExtractOptions, RequestContext, extract};
use periscope_error::{
    ErrorClass, ErrorCode, ErrorLayer, HttpError, Violation, Violations, codes, error_codes,
};
use serde_json::Value;

use support::{Reply, captured_events, send};

error_codes! {
    /// The test service's own codes.
    pub const JOB_CODES = [
        /// No job has this id.
        JOB_NOT_FOUND = ErrorCode::new("job_not_found", ErrorClass::NotFound)
            .with_help("List jobs to find the id"),
        /// Cancel on a finished job.
        JOB_ALREADY_TERMINAL = ErrorCode::new("job_already_terminal", ErrorClass::Conflict)
            .with_help("Jobs can only be canceled while queued or processing")
            .with_docs_url("https://docs.example.com/errors#job_already_terminal"),
    ];
}

/// What periscope-trace's server layer does: the context goes into the extensions, becomes
/// current while the inner service runs, and its request id is echoed.
async fn correlate(mut request: Request, next: Next) -> Response {
    let ctx = extract(request.headers(), &ExtractOptions::default()).context;
    request.extensions_mut().insert(ctx.clone());
    let id = ctx.request_id.header_value().clone();
    let mut response = ctx.scope(next.run(request)).await;
    response.headers_mut().insert("x-request-id", id);
    response
}

#[derive(Debug, thiserror::Error)]
#[error("loading job failed")]
struct LoadFailed(#[source] std::io::Error);

fn load_job() -> Result<(), LoadFailed> {
    Err(LoadFailed(std::io::Error::other(
        "connect to db as admin password=hunter2 refused",
    )))
}

/// A body with a required field, for axum's 422 on JSON of the wrong shape.
#[derive(serde::Deserialize)]
struct NamedJob {
    name: String,
}

/// A streaming body with a bug: it panics when it is read.
struct PanicsWhenRead;

impl http_body::Body for PanicsWhenRead {
    type Data = bytes::Bytes;
    type Error = std::convert::Infallible;

    fn poll_frame(
        self: std::pin::Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<bytes::Bytes>, Self::Error>>> {
        panic!("secret body panic")
    }
}

/// A streaming body with a bug: its first chunk goes out, then it panics on the second, after
/// the 200 and the first chunk have left (a short wait lets the server flush them).
struct PanicsOnSecondChunk {
    sent_first: bool,
    wait: std::pin::Pin<Box<tokio::time::Sleep>>,
}

impl http_body::Body for PanicsOnSecondChunk {
    type Data = bytes::Bytes;
    type Error = std::convert::Infallible;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<bytes::Bytes>, Self::Error>>> {
        if !self.sent_first {
            self.sent_first = true;
            let chunk = bytes::Bytes::from_static(b"first chunk;");
            return std::task::Poll::Ready(Some(Ok(http_body::Frame::data(chunk))));
        }
        std::task::ready!(self.wait.as_mut().poll(cx));
        panic!("secret stream panic on chunk {}", 2)
    }
}

/// An upstream's JSON 5xx over the layer's 64 KiB read bound: its first words say what went
/// wrong, a long trace follows.
fn huge_upstream_json() -> String {
    format!(
        r#"{{"detail":"model server out of memory: CUDA OOM at layer 31","trace":"{}"}}"#,
        "frame;".repeat(12_000)
    )
}

/// About 1 MB of a 3-byte character: one straddles the 1,024-byte mark (and the 1,021 bytes
/// left before a 3-byte `…`), so a cut that splits it shows.
fn huge_input() -> String {
    "€".repeat(350_000)
}

/// `details` with a 1 MB dump between two small facts, and what of them an envelope keeps.
fn huge_details() -> (serde_json::Map<String, Value>, Value) {
    let mut details = serde_json::Map::new();
    details.insert("job_id".into(), "job_1".into());
    details.insert("dump".into(), "x".repeat(1 << 20).into());
    details.insert("status".into(), "completed".into());
    let kept = serde_json::json!({"job_id": "job_1", "status": "completed"});
    (details, kept)
}

/// A body sent in chunks, of a length it does not announce (a proxied chunked response).
struct Chunked(std::collections::VecDeque<bytes::Bytes>);

impl http_body::Body for Chunked {
    type Data = bytes::Bytes;
    type Error = std::convert::Infallible;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<bytes::Bytes>, Self::Error>>> {
        std::task::Poll::Ready(
            self.0
                .pop_front()
                .map(|chunk| Ok(http_body::Frame::data(chunk))),
        )
    }
}

/// A worker's plain-text 5xx over the layer's 4 KiB bound: its first words say what went
/// wrong, a queue dump follows. A 4-byte character straddles the 4 KiB mark, 3 of its bytes
/// inside, so a cut that splits it shows.
fn huge_worker_text() -> String {
    let mut text = "worker pool exhausted: 64 of 64 busy; queue: ".to_owned();
    while text.len() < 4093 {
        text.push_str("job;");
    }
    text.truncate(4093);
    text + &"\u{1F525}".repeat(2_000)
}

/// A plain-text 5xx between the 1 KiB a 4xx message may have and the 4 KiB bound.
fn two_kib_worker_text() -> String {
    format!("worker crashed: {}", "frame;".repeat(340))
}

/// A Latin-1 text body (not UTF-8) over the 4 KiB bound.
fn latin1_text() -> Vec<u8> {
    b"Fehler: Datei f\xfcr Auftrag nicht gefunden; ".repeat(150)
}

/// A body whose first chunk arrives, then fails (a proxied upstream that reset).
struct FailsMidway(Option<bytes::Bytes>);

impl http_body::Body for FailsMidway {
    type Data = bytes::Bytes;
    type Error = std::io::Error;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<bytes::Bytes>, Self::Error>>> {
        std::task::Poll::Ready(Some(match self.0.take() {
            Some(chunk) => Ok(http_body::Frame::data(chunk)),
            None => Err(std::io::Error::other("upstream reset")),
        }))
    }
}

/// A body with a bug: it always has a frame ready, an empty one, and never ends (a stream
/// that keeps yielding empty chunks).
struct EndlessEmptyFrames;

impl http_body::Body for EndlessEmptyFrames {
    type Data = bytes::Bytes;
    type Error = std::convert::Infallible;

    fn poll_frame(
        self: std::pin::Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<bytes::Bytes>, Self::Error>>> {
        std::task::Poll::Ready(Some(Ok(http_body::Frame::data(bytes::Bytes::new()))))
    }
}

/// The response of `/text-error`: a plain-text error body of the shape `x-shape` names, with
/// the status `x-status` (500 without one).
fn text_error(headers: &axum::http::HeaderMap) -> Response {
    let status = headers
        .get("x-status")
        .and_then(|value| value.to_str().ok()?.parse().ok())
        .unwrap_or(500);
    let (content_type, body) = match headers.get("x-shape").map(|value| value.as_bytes()) {
        Some(b"chunked") => {
            let text = bytes::Bytes::from(huge_worker_text());
            let chunks = (0..text.len())
                .step_by(1000)
                .map(|at| text.slice(at..text.len().min(at + 1000)))
                .collect();
            ("text/plain", axum::body::Body::new(Chunked(chunks)))
        }
        Some(b"2k") => ("text/plain", axum::body::Body::from(two_kib_worker_text())),
        Some(b"endless-empty") => ("text/plain", axum::body::Body::new(EndlessEmptyFrames)),
        Some(b"endless-empty-json") => (
            "application/json",
            axum::body::Body::new(EndlessEmptyFrames),
        ),
        Some(b"latin1") => (
            "text/plain; charset=iso-8859-1",
            axum::body::Body::from(latin1_text()),
        ),
        Some(b"fails") => {
            let chunk = bytes::Bytes::from_static(b"disk full on the job volume; ");
            (
                "text/plain",
                axum::body::Body::new(FailsMidway(Some(chunk))),
            )
        }
        _ => (
            "text/plain; charset=utf-8",
            axum::body::Body::from(huge_worker_text()),
        ),
    };
    Response::builder()
        .status(status)
        .header("content-type", content_type)
        .body(body)
        .unwrap()
}

/// An error body with a bug: its destructor panics, after the layer has read it or when the
/// layer discards it unread.
struct PanicsWhenDropped(Option<bytes::Bytes>);

impl http_body::Body for PanicsWhenDropped {
    type Data = bytes::Bytes;
    type Error = std::convert::Infallible;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<bytes::Bytes>, Self::Error>>> {
        std::task::Poll::Ready(self.0.take().map(|chunk| Ok(http_body::Frame::data(chunk))))
    }
}

impl Drop for PanicsWhenDropped {
    fn drop(&mut self) {
        panic!("secret drop panic")
    }
}

fn app() -> Router {
    Router::new()
        .route("/ok", get(|| async { "fine" }))
        .route(
            "/report.csv",
            get(|| async {
                (
                    StatusCode::INTERNAL_SERVER_ERROR,
                    [
                        ("content-type", "text/csv"),
                        ("content-disposition", "attachment; filename=\"report.csv\""),
                        ("etag", "\"v7\""),
                        ("last-modified", "Tue, 01 Dec 2026 10:00:00 GMT"),
                        ("cache-control", "public, max-age=86400"),
                        ("content-language", "de"),
                        ("content-digest", "sha-256=:AAAA:"),
                        ("access-control-allow-origin", "https://app.example.com"),
                    ],
                    "partial,rows\n",
                )
            }),
        )
        .route(
            "/range",
            get(|| async {
                (
                    StatusCode::RANGE_NOT_SATISFIABLE,
                    [("content-range", "Bytes */10"), ("etag", "\"v7\"")],
                )
            }),
        )
        .route(
            "/panic",
            get(|| async {
                if true {
                    panic!("secret panic payload {}", 42);
                }
                "unreachable"
            }),
        )
        .route(
            "/slow",
            get(|| async {
                tokio::time::sleep(Duration::from_secs(10)).await;
                "too late"
            }),
        )
        .route(
            "/jobs",
            post(|Json(job): Json<Value>| async move { Json(job) }),
        )
        .route(
            "/jobs/typed",
            post(|Json(job): Json<NamedJob>| async move { job.name }),
        )
        .route(
            "/jobs/{id}",
            get(|Path(id): Path<String>| async move {
                Err::<String, _>(
                    HttpError::new(JOB_NOT_FOUND, "No job has this id").with_detail("job_id", id),
                )
            }),
        )
        .route(
            "/jobs/{id}/cancel",
            post(|Path(id): Path<String>| async move {
                Err::<String, _>(
                    HttpError::new(
                        JOB_ALREADY_TERMINAL,
                        "Cannot cancel job that is already completed",
                    )
                    .with_detail("job_id", id)
                    .with_detail("current_status", "completed"),
                )
            }),
        )
        .route(
            "/rate",
            get(|| async {
                Err::<String, _>(
                    HttpError::from(codes::RATE_LIMITED).with_retry_after(Duration::from_secs(30)),
                )
            }),
        )
        .route(
            "/busy",
            get(|| async {
                Err::<String, _>(
                    HttpError::from(codes::SERVICE_UNAVAILABLE)
                        .with_retry_after(Duration::from_secs(5)),
                )
            }),
        )
        .route(
            "/fail",
            get(|| async {
                load_job()?;
                Ok::<_, HttpError>("loaded")
            }),
        )
        .route("/gone", get(|| async { StatusCode::NOT_FOUND }))
        .route(
            "/recovers",
            get(|| async {
                // A handler that guards a call with its own `catch_unwind`.
                let parsed =
                    std::panic::catch_unwind(|| -> u32 { panic!("caught by the handler") });
                format!("recovered: {}", parsed.is_err())
            }),
        )
        .route(
            "/re-raises",
            get(|| async {
                // What a handler does with a spawned task's panic (`JoinError::into_panic`).
                if true {
                    std::panic::resume_unwind(Box::new("re-raised from a task"));
                }
                "unreachable"
            }),
        )
        .route(
            "/grpc-own",
            get(|| async {
                (
                    StatusCode::SERVICE_UNAVAILABLE,
                    [("content-type", "application/grpc"), ("grpc-status", "14")],
                    "proxy says no: password=hunter2",
                )
            }),
        )
        .route(
            "/cors-404",
            get(|| async {
                (
                    StatusCode::NOT_FOUND,
                    [("access-control-allow-origin", "*")],
                    "no such thing",
                )
            }),
        )
        .route(
            "/grpc-ok",
            get(|| async {
                (
                    [
                        ("content-type", "application/grpc"),
                        ("grpc-status", "5"),
                        ("grpc-message", "not%20here"),
                    ],
                    "",
                )
            }),
        )
        .route(
            "/leaky-json",
            get(|| async {
                (
                    StatusCode::INTERNAL_SERVER_ERROR,
                    [("grpc-status", "13")],
                    axum::Json(serde_json::json!({"detail": "password=hunter2"})),
                )
            }),
        )
        .route(
            "/panic-in-body",
            get(|| async {
                Response::builder()
                    .status(StatusCode::BAD_REQUEST)
                    .header("content-type", "text/plain")
                    .body(axum::body::Body::new(PanicsWhenRead))
                    .unwrap()
            }),
        )
        .route(
            "/long-message",
            get(|| async {
                // 40,000 bytes that percent-encode to 120,000: over every proxy's header limit.
                Err::<String, _>(HttpError::new(codes::CONFLICT, "é".repeat(20_000)))
            }),
        )
        .route(
            "/echo-huge",
            get(|| async {
                // A handler that echoes a 1 MB input into its message, help and violation.
                Err::<String, _>(
                    HttpError::new(codes::VALIDATION_ERROR, huge_input())
                        .with_help("h".repeat(1 << 20))
                        .with_violation(Violation::new(huge_input(), "too_long", huge_input())),
                )
            }),
        )
        .route(
            "/huge-details",
            get(|| async {
                let (details, _) = huge_details();
                Err::<String, _>(
                    HttpError::new(JOB_ALREADY_TERMINAL, "Cannot cancel").with_details(details),
                )
            }),
        )
        .route(
            "/upstream-envelope-long",
            get(|| async {
                // An upstream's envelope, proxied: the layer renders it again.
                let envelope = serde_json::json!({"error": {
                    "code": "upstream_error",
                    "message": "€".repeat(700),
                    "help": "h".repeat(2000),
                }});
                (
                    StatusCode::BAD_GATEWAY,
                    [("content-type", "application/json")],
                    envelope.to_string(),
                )
            }),
        )
        .route(
            "/drop-panics",
            get(|headers: axum::http::HeaderMap| async move {
                // Read by the layer (a short plain-text 400, a JSON 5xx), or discarded unread.
                let (status, content_type) = match headers.get("x-kind").map(|v| v.as_bytes()) {
                    Some(b"text") => (StatusCode::BAD_REQUEST, "text/plain"),
                    Some(b"json") => (StatusCode::BAD_GATEWAY, "application/json"),
                    _ => (StatusCode::NOT_FOUND, "application/octet-stream"),
                };
                let chunk = bytes::Bytes::from_static(br#"{"detail":"secret"}"#);
                Response::builder()
                    .status(status)
                    .header("content-type", content_type)
                    .body(axum::body::Body::new(PanicsWhenDropped(Some(chunk))))
                    .unwrap()
            }),
        )
        .route(
            "/stream-panics",
            get(|| async {
                axum::body::Body::new(PanicsOnSecondChunk {
                    sent_first: false,
                    wait: Box::pin(tokio::time::sleep(Duration::from_millis(50))),
                })
            }),
        )
        .route(
            "/maintenance",
            get(|| async {
                let until = std::time::SystemTime::now() + Duration::from_secs(120);
                let retry_after = [("retry-after", httpdate::fmt_http_date(until))];
                (
                    StatusCode::SERVICE_UNAVAILABLE,
                    retry_after,
                    "down for maintenance",
                )
            }),
        )
        .route(
            "/upload",
            post(|mut form: axum::extract::Multipart| async move {
                let mut bytes = 0;
                while let Some(field) = form.next_field().await? {
                    bytes += field.bytes().await?.len();
                }
                Ok::<_, axum::extract::multipart::MultipartError>(bytes.to_string())
            }),
        )
        .route(
            "/validate",
            post(|Json(body): Json<Value>| async move {
                let mut violations = Violations::new();
                violations.check(
                    body["name"].is_string(),
                    "name",
                    "required",
                    "name is required",
                );
                violations.check(
                    body["gpus"].as_u64().is_some_and(|n| n <= 8),
                    "gpus",
                    "out_of_range",
                    "gpus must be between 0 and 8",
                );
                violations.into_result().map(|()| "valid")
            }),
        )
        .route(
            "/upstream-huge",
            get(|| async {
                (
                    StatusCode::BAD_GATEWAY,
                    [("content-type", "application/json")],
                    huge_upstream_json(),
                )
            }),
        )
        .route(
            "/upstream-huge-chunked",
            get(|| async {
                let text = bytes::Bytes::from(huge_upstream_json());
                let chunks = (0..text.len())
                    .step_by(8192)
                    .map(|at| text.slice(at..text.len().min(at + 8192)))
                    .collect();
                (
                    StatusCode::BAD_GATEWAY,
                    [("content-type", "application/json")],
                    axum::body::Body::new(Chunked(chunks)),
                )
            }),
        )
        .route(
            "/text-error",
            get(|headers: axum::http::HeaderMap| async move { text_error(&headers) }),
        )
        .layer(DefaultBodyLimit::max(1024))
        .layer(ErrorLayer::new().timeout(Duration::from_millis(300)))
        .layer(middleware::from_fn(correlate))
}

/// [`app`] served on 127.0.0.1, its lines captured.
async fn serve() -> std::net::SocketAddr {
    support::install_capture();
    serve_app(app()).await
}

/// `app` served on 127.0.0.1 from a task of its own; the address.
async fn serve_app(app: Router) -> std::net::SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    addr
}

/// The envelope of `reply`, after checking it is one: JSON content type, the header request id
/// equal to the body's, a log line of the request, and the client decoder agreeing.
fn envelope(reply: &Reply, code: &str, status: u16) -> Value {
    assert_eq!(reply.status, status, "{}", reply.text());
    assert_eq!(reply.header("content-type"), Some("application/json"));
    // It names this request's ids: never cached for another.
    assert_eq!(reply.header("cache-control"), Some("no-store"));
    let json = reply.json();
    let error = &json["error"];
    assert_eq!(error["code"], code, "{json}");
    let request_id = reply.header("x-request-id").expect("x-request-id echoed");
    assert_eq!(error["request_id"], request_id);
    assert_eq!(error["trace_id"].as_str().map(str::len), Some(32));
    assert!(
        captured_events()
            .iter()
            .any(|event| event.get("request_id").map(String::as_str) == Some(request_id)),
        "a log line carries request_id {request_id}"
    );
    let decoded = reply.api_error();
    assert_eq!(decoded.code(), code);
    assert_eq!(decoded.status().as_u16(), status);
    assert_eq!(decoded.request_id(), Some(request_id));
    assert_eq!(decoded.trace_id(), error["trace_id"].as_str());
    let known = ErrorCode::find(code, JOB_CODES).expect("a known code");
    assert_eq!(decoded.class(), known.class());
    assert_eq!(Some(decoded.is_retryable()), error["retryable"].as_bool());
    // The code's retryability, where no delay says when to retry (the tests with one check it).
    if error.get("retry_after_s").is_none() {
        assert_eq!(error["retryable"], known.is_retryable());
    }
    json
}

/// Writes `request` on a new connection and reads until the server closes it: the client
/// neither sends more nor closes (within 10 s).
async fn stall(addr: std::net::SocketAddr, request: &str) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    let mut client = tokio::net::TcpStream::connect(addr).await.unwrap();
    client.write_all(request.as_bytes()).await.unwrap();
    let mut answer = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), client.read_to_end(&mut answer))
        .await
        .unwrap_or_else(|_| panic!("no answer while the client stalls: {request}"))
        .unwrap();
    String::from_utf8(answer).unwrap()
}

/// The answer to an upload stalled past a timeout, after checking it is the client's 408: its
/// request id in the header and the envelope, `connection: close`, and a retryable `timeout`
/// with the `received` bytes; the envelope's `error`, for what the caller checks further.
fn stalled_408(answer: &str, id: &str, received: u64) -> Value {
    assert!(answer.starts_with("HTTP/1.1 408 "), "{id}: {answer}");
    let (head, body) = answer.split_once("\r\n\r\n").unwrap();
    assert!(
        head.contains(&format!("\r\nx-request-id: {id}\r\n")),
        "{head}"
    );
    assert!(head.contains("\r\nconnection: close\r\n"), "{head}");
    let json: Value = serde_json::from_str(body).unwrap();
    let error = &json["error"];
    assert_eq!(error["code"], "timeout", "{id}: {json}");
    assert_eq!(error["request_id"], id, "{id}: {json}");
    assert_eq!(error["retryable"], true, "{id}: {json}");
    assert_eq!(error["details"]["received_bytes"], received, "{id}: {json}");
    json["error"].clone()
}

/// The log lines of one request.
fn events_of(request_id: &str) -> Vec<std::collections::BTreeMap<String, String>> {
    captured_events()
        .into_iter()
        .filter(|event| event.get("request_id").map(String::as_str) == Some(request_id))
        .collect()
}

/// A gateway relaying an upstream's answer to `HEAD` (a 503 whose envelope the upstream
/// would send to a `GET`: its length declared, no body): passed as it is, with the request's
/// id, and not logged as a service answering without an envelope.
#[tokio::test]
async fn a_relayed_head_answer_to_a_5xx_is_not_a_missing_envelope() {
    support::install_capture();
    let app = Router::new()
        .route(
            "/jobs/7",
            axum::routing::head(|| async {
                axum::response::Response::builder()
                    .status(503)
                    .header("content-type", "application/json")
                    .header("content-length", "187")
                    .body(axum::body::Body::empty())
                    .unwrap()
            }),
        )
        .layer(ErrorLayer::new())
        .layer(middleware::from_fn(correlate));
    let addr = serve_app(app).await;
    let reply = send(addr, "HEAD", "/jobs/7", &[], b"").await;
    assert_eq!(reply.status, 503);
    let id = reply
        .header("x-request-id")
        .expect("the request id")
        .to_owned();
    let errors: Vec<_> = events_of(&id)
        .into_iter()
        .filter(|event| event["level"] == "ERROR")
        .collect();
    assert!(errors.is_empty(), "{errors:#?}");
}

#[tokio::test]
async fn panicking_handler_becomes_internal_error_and_the_panic_stays_in_the_log() {
    let addr = serve().await;
    let reply = send(addr, "GET", "/panic", &[], b"").await;
    let json = envelope(&reply, "internal_error", 500);
    assert_eq!(json["error"]["message"], "An internal error occurred");
    assert!(
        !reply.text().contains("secret panic payload"),
        "{}",
        reply.text()
    );
    assert!(!reply.text().contains("socket.rs"));

    let request_id = reply.header("x-request-id").unwrap();
    let events = events_of(request_id);
    let panic = events
        .iter()
        .find(|event| event.get("message").map(String::as_str) == Some("handler panicked"))
        .expect("the panic is logged");
    assert_eq!(panic["level"], "ERROR");
    assert_eq!(panic["panic.message"], "secret panic payload 42");
    assert!(panic["panic.location"].contains("socket.rs:"), "{panic:?}");

    // The server is still serving.
    assert_eq!(send(addr, "GET", "/ok", &[], b"").await.status, 200);
}

/// The headers that described the replaced body go with it: a cache would keep the error under
/// the report's version for a day, a browser would save it as `report.csv`. The rest stays.
#[tokio::test]
async fn a_replaced_body_takes_the_headers_that_described_it_along() {
    let addr = serve().await;
    let reply = send(addr, "GET", "/report.csv", &[], b"").await;
    envelope(&reply, "internal_error", 500);
    for gone in [
        "content-disposition",
        "etag",
        "last-modified",
        "content-language",
        "content-digest",
    ] {
        assert_eq!(reply.header(gone), None, "{gone} kept");
    }
    assert_eq!(
        reply.header("access-control-allow-origin"),
        Some("https://app.example.com")
    );
}

/// A 416 keeps its `Content-Range: bytes */length`: it tells the client the resource's length
/// (RFC 9110, 15.5.17), not the range of the body replaced.
#[tokio::test]
async fn an_unsatisfiable_range_keeps_the_length_it_tells() {
    let addr = serve().await;
    let reply = send(addr, "GET", "/range", &[("range", "bytes=20-30")], b"").await;
    envelope(&reply, "invalid_request", 416);
    assert_eq!(reply.header("content-range"), Some("Bytes */10"));
    assert_eq!(reply.header("etag"), None);
}

#[tokio::test]
async fn a_body_that_panics_while_the_layer_reads_it_becomes_internal_error() {
    let addr = serve().await;
    let reply = send(addr, "GET", "/panic-in-body", &[], b"").await;
    let json = envelope(&reply, "internal_error", 500);
    assert_eq!(json["error"]["message"], "An internal error occurred");
    assert!(!reply.text().contains("secret body panic"));
    let events = events_of(reply.header("x-request-id").unwrap());
    let panic = events
        .iter()
        .find(|event| event.get("message").map(String::as_str) == Some("handler panicked"))
        .expect("the panic is logged");
    assert_eq!(panic["panic.message"], "secret body panic");
    assert_eq!(send(addr, "GET", "/ok", &[], b"").await.status, 200);
}

/// The body the layer replaces is dropped by the layer: a destructor that panics there is the
/// service's panic, answered with the envelope instead of costing the client its answer.
#[tokio::test]
async fn a_body_that_panics_when_the_layer_drops_it_becomes_internal_error() {
    let addr = serve().await;
    for kind in ["text", "json", "unread"] {
        let reply = send(addr, "GET", "/drop-panics", &[("x-kind", kind)], b"").await;
        let json = envelope(&reply, "internal_error", 500);
        assert_eq!(
            json["error"]["message"], "An internal error occurred",
            "{kind}"
        );
        assert!(!reply.text().contains("secret"), "{kind}: {}", reply.text());
        let events = events_of(reply.header("x-request-id").unwrap());
        let panics: Vec<_> = events
            .iter()
            .filter(|event| event.get("message").map(String::as_str) == Some("handler panicked"))
            .collect();
        assert_eq!(panics.len(), 1, "{kind}: {events:?}");
        assert_eq!(panics[0]["panic.message"], "secret drop panic", "{kind}");
        assert!(panics[0]["panic.location"].contains("socket.rs:"), "{kind}");
    }
    assert_eq!(send(addr, "GET", "/ok", &[], b"").await.status, 200);
}

#[tokio::test]
async fn a_streaming_body_that_panics_after_the_200_is_caught_logged_and_aborts_the_response() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    let addr = serve().await;
    let request_id = "stream-panic-1";
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let request = format!(
        "GET /stream-panics HTTP/1.1\r\nhost: {addr}\r\nconnection: close\r\nx-request-id: {request_id}\r\n\r\n"
    );
    stream.write_all(request.as_bytes()).await.unwrap();
    // Read until the server closes or resets the connection.
    let mut raw = Vec::new();
    let mut buffer = [0_u8; 4096];
    loop {
        match stream.read(&mut buffer).await {
            Ok(0) | Err(_) => break,
            Ok(read) => raw.extend_from_slice(&buffer[..read]),
        }
    }
    let raw = String::from_utf8_lossy(&raw);
    assert!(raw.starts_with("HTTP/1.1 200 OK\r\n"), "{raw}");
    assert!(raw.contains("transfer-encoding: chunked"), "{raw}");
    assert!(raw.contains("first chunk;"), "{raw}");
    // Aborted, not ended: the chunked encoding's last chunk never comes, so the client knows
    // the body is truncated.
    assert!(!raw.ends_with("0\r\n\r\n"), "{raw}");
    assert!(!raw.contains("secret stream panic"), "{raw}");

    // Logged once, like a handler's panic, with the request's ids.
    let panics: Vec<_> = events_of(request_id)
        .into_iter()
        .filter(|event| event.get("message").map(String::as_str) == Some("handler panicked"))
        .collect();
    assert_eq!(panics.len(), 1, "{panics:?}");
    let panic = &panics[0];
    assert_eq!(panic["level"], "ERROR");
    assert_eq!(panic["code"], "internal_error");
    assert_eq!(panic["panic.message"], "secret stream panic on chunk 2");
    assert!(panic["panic.location"].contains("socket.rs:"), "{panic:?}");
    assert_eq!(panic["trace_id"].len(), 32, "{panic:?}");

    // The server is still serving.
    assert_eq!(send(addr, "GET", "/ok", &[], b"").await.status, 200);
}

#[tokio::test]
async fn slow_handler_past_the_timeout_gets_504_timeout() {
    let addr = serve().await;
    let reply = send(addr, "GET", "/slow", &[], b"").await;
    let json = envelope(&reply, "timeout", 504);
    assert_eq!(json["error"]["retryable"], true);
    assert_eq!(
        json["error"]["message"],
        "The request did not complete within 300ms"
    );
    let events = events_of(reply.header("x-request-id").unwrap());
    assert!(events.iter().any(|event| event["level"] == "WARN"));
}

/// A handler abandoned at the timeout holds a guard whose destructor panics (a transaction
/// that must be committed): the 504 goes out, and the panic is logged with the request's ids,
/// not lost inside the layer's catch.
#[tokio::test]
async fn a_panic_while_a_timed_out_handler_is_dropped_is_logged() {
    struct MustFinish;
    impl Drop for MustFinish {
        fn drop(&mut self) {
            panic!("work abandoned half done");
        }
    }
    support::install_capture();
    let app = Router::new()
        .route(
            "/guarded",
            get(|| async {
                let _guard = MustFinish;
                tokio::time::sleep(Duration::from_secs(10)).await;
                "too late"
            }),
        )
        .layer(ErrorLayer::new().timeout(Duration::from_millis(200)))
        .layer(middleware::from_fn(correlate));
    let addr = serve_app(app).await;
    let reply = send(addr, "GET", "/guarded", &[], b"").await;
    envelope(&reply, "timeout", 504);
    let events = events_of(reply.header("x-request-id").unwrap());
    let dropped: Vec<_> = events
        .iter()
        .filter(|event| event["message"] == "handler panicked while dropped")
        .collect();
    assert_eq!(dropped.len(), 1, "{events:#?}");
    assert_eq!(dropped[0]["level"], "ERROR");
    assert_eq!(dropped[0]["panic.message"], "work abandoned half done");
    assert_eq!(dropped[0]["trace_id"].len(), 32);
}

/// `ErrorLayer::timeout` alone, without a body timeout: a client that stalls its upload while
/// the handler waits for it gets a 408 `timeout` (the bytes that came, `connection: close`),
/// logged at info, not the 504 logged at warn. A gRPC call stalled so is still its deadline's
/// `DEADLINE_EXCEEDED`: a gRPC client streams at its own pace within the deadline it set.
#[tokio::test]
async fn an_upload_stalled_past_the_layers_timeout_is_a_408() {
    support::install_capture();
    let app = Router::new()
        .route(
            "/bytes",
            post(|body: axum::body::Bytes| async move { body.len().to_string() }),
        )
        .layer(ErrorLayer::new().timeout(Duration::from_millis(300)))
        .layer(middleware::from_fn(correlate));
    let addr = serve_app(app).await;
    for (id, content_type) in [
        ("stalled-json", "application/json"),
        ("stalled-grpc", "application/grpc"),
    ] {
        let answer = stall(
            addr,
            &format!(
                "POST /bytes HTTP/1.1\r\nhost: test\r\ncontent-type: {content_type}\r\n\
                 content-length: 1000\r\nx-request-id: {id}\r\n\r\n{{\"name\":\""
            ),
        )
        .await;
        let events = events_of(id);
        if content_type == "application/grpc" {
            assert!(answer.starts_with("HTTP/1.1 200 "), "{id}: {answer}");
            let (head, _) = answer.split_once("\r\n\r\n").unwrap();
            assert!(head.contains("\r\ngrpc-status: 4\r\n"), "{head}");
            assert!(
                events.iter().any(|event| event["level"] == "WARN"),
                "{events:?}"
            );
            continue;
        }
        let error = stalled_408(&answer, id, 9);
        assert_eq!(error["details"]["expected_bytes"], 1000, "{error}");
        let logged: Vec<_> = (events.iter())
            .filter(|event| event.get("code").map(String::as_str) == Some("timeout"))
            .collect();
        assert_eq!(logged.len(), 1, "{events:?}");
        assert_eq!(logged[0]["level"], "INFO", "{events:?}");
        assert_eq!(logged[0]["timeout_ms"], "300", "{events:?}");
        assert!(
            events.iter().all(|event| event["level"] == "INFO"),
            "{events:?}"
        );
    }
}

/// tower's `Timeout` and `LoadShed` inside the layer give up by design: their errors become a
/// 504 `timeout` and a 503 `service_unavailable`, logged at warn as the layer's own timeout is,
/// not at error as a service that failed (a shedder answers many requests at once, just when
/// the service is under pressure, and alerts on error lines would page for it).
#[tokio::test]
async fn a_timeout_or_load_shedding_layer_inside_is_logged_at_warn() {
    use tower::ServiceBuilder;

    support::install_capture();
    let slow = || async {
        tokio::time::sleep(Duration::from_secs(5)).await;
        "late"
    };
    let app = Router::new()
        .route("/timed", get(slow))
        .layer(
            ServiceBuilder::new()
                .layer(ErrorLayer::new())
                .layer(tower::timeout::TimeoutLayer::new(Duration::from_millis(50))),
        )
        .merge(
            // No permit is ever free: every request is shed at once.
            Router::new().route("/shed", get(slow)).layer(
                ServiceBuilder::new()
                    .layer(ErrorLayer::new())
                    .load_shed()
                    .concurrency_limit(0),
            ),
        );
    let addr = serve_app(app).await;

    for (path, code, status) in [
        ("/timed", "timeout", 504),
        ("/shed", "service_unavailable", 503),
    ] {
        let reply = send(addr, "GET", path, &[], b"").await;
        assert_eq!(reply.status, status, "{path}: {}", reply.text());
        assert_eq!(reply.json()["error"]["code"], code, "{path}");
        let request_id = reply.header("x-request-id").expect("x-request-id echoed");
        let events = events_of(request_id);
        let line = events
            .iter()
            .find(|event| event.get("code").map(String::as_str) == Some(code))
            .unwrap_or_else(|| panic!("{path}: a line with code {code}: {events:?}"));
        assert_eq!(line["level"], "WARN", "{path}: {line:?}");
        assert!(
            events.iter().all(|event| event["level"] != "ERROR"),
            "{path}: {events:?}"
        );
    }
}

#[tokio::test]
async fn unknown_route_and_wrong_method() {
    let addr = serve().await;
    let reply = send(addr, "GET", "/nope?token=1", &[], b"").await;
    let json = envelope(&reply, "route_not_found", 404);
    assert_eq!(json["error"]["message"], "No route matches GET /nope");

    let reply = send(addr, "DELETE", "/ok", &[], b"").await;
    let json = envelope(&reply, "method_not_allowed", 405);
    assert_eq!(json["error"]["message"], "DELETE is not allowed on /ok");
    assert!(reply.header("allow").unwrap().contains("GET"));

    // A method of any length is quoted short: the answer stays small.
    let long = "X".repeat(5000);
    let reply = send(addr, &long, "/ok", &[], b"").await;
    let json = envelope(&reply, "method_not_allowed", 405);
    assert_eq!(
        json["error"]["message"],
        format!("{} is not allowed on /ok", &long[..32])
    );
}

#[tokio::test]
async fn oversized_and_malformed_bodies() {
    let addr = serve().await;
    let json_type = [("content-type", "application/json")];
    let big = format!("{{\"pad\":\"{}\"}}", "x".repeat(4096));
    let reply = send(addr, "POST", "/jobs", &json_type, big.as_bytes()).await;
    envelope(&reply, "payload_too_large", 413);

    let reply = send(addr, "POST", "/jobs", &json_type, b"{\"name\": ").await;
    let json = envelope(&reply, "invalid_request", 400);
    let message = json["error"]["message"].as_str().unwrap();
    assert!(
        message.starts_with("Failed to parse the request body as JSON"),
        "{message}"
    );

    let reply = send(addr, "POST", "/jobs", &[], b"{}").await;
    envelope(&reply, "unsupported_media_type", 415);

    // JSON of the wrong shape: the framework's text names the field, and the help points to
    // it rather than to a `violations` list the framework does not give.
    let reply = send(addr, "POST", "/jobs/typed", &json_type, b"{\"nme\":\"x\"}").await;
    let json = envelope(&reply, "validation_error", 422);
    let message = json["error"]["message"].as_str().unwrap();
    assert!(message.contains("missing field `name`"), "{message}");
    assert!(json["error"].get("violations").is_none(), "{json}");
    let help = json["error"]["help"].as_str().unwrap();
    assert!(!help.contains("violations"), "{help}");

    let reply = send(addr, "POST", "/jobs", &json_type, b"{\"name\":\"train\"}").await;
    assert_eq!(reply.status, 200);
    assert_eq!(reply.json()["name"], "train");
}

#[tokio::test]
async fn handler_envelopes_pass_through_untouched() {
    let addr = serve().await;
    let reply = send(addr, "GET", "/jobs/job_456", &[], b"").await;
    let json = envelope(&reply, "job_not_found", 404);
    assert_eq!(json["error"]["details"]["job_id"], "job_456");
    assert_eq!(json["error"]["help"], "List jobs to find the id");

    let reply = send(addr, "POST", "/jobs/job_456/cancel", &[], b"").await;
    let json = envelope(&reply, "job_already_terminal", 409);
    assert_eq!(
        json["error"]["docs_url"],
        "https://docs.example.com/errors#job_already_terminal"
    );
    let members: Vec<&str> = json["error"]
        .as_object()
        .unwrap()
        .keys()
        .map(String::as_str)
        .collect();
    for member in [
        "code",
        "message",
        "request_id",
        "trace_id",
        "details",
        "help",
        "retryable",
    ] {
        assert!(members.contains(&member), "{member} in {members:?}");
    }
    assert!(!members.contains(&"violations") && !members.contains(&"retry_after_s"));

    // With axum's MatchedPath, a handler's bare 404 is `not_found`, not `route_not_found`.
    let reply = send(addr, "GET", "/gone", &[], b"").await;
    envelope(&reply, "not_found", 404);
}

#[tokio::test]
async fn the_client_request_id_is_kept_everywhere() {
    let addr = serve().await;
    let reply = send(
        addr,
        "GET",
        "/panic",
        &[("x-request-id", "client-req-17")],
        b"",
    )
    .await;
    assert_eq!(reply.header("x-request-id"), Some("client-req-17"));
    envelope(&reply, "internal_error", 500);
    assert!(!events_of("client-req-17").is_empty());
}

#[tokio::test]
async fn error_chains_never_reach_the_body() {
    let addr = serve().await;
    let reply = send(addr, "GET", "/fail", &[], b"").await;
    envelope(&reply, "internal_error", 500);
    assert!(!reply.text().contains("hunter2"));
    assert!(!reply.text().contains("loading job failed"));
    let events = events_of(reply.header("x-request-id").unwrap());
    let logged = events
        .iter()
        .find_map(|event| event.get("error"))
        .expect("the error is logged");
    assert!(logged.contains("loading job failed"), "{logged}");
    assert!(
        logged.contains("password=hunter2"),
        "the chain is logged: {logged}"
    );
}

/// A delay says when to retry: an error given one is retryable whatever its code, unless the
/// handler says otherwise, as a bare answer with a `Retry-After` header is (the built one said
/// `"retryable": false` beside its `retry_after_s`).
#[tokio::test]
async fn a_retry_delay_makes_an_error_retryable_unless_told_otherwise() {
    support::install_capture();
    let minute = Duration::from_secs(60);
    let too_large = move || HttpError::from(codes::PAYLOAD_TOO_LARGE).with_retry_after(minute);
    let app = Router::new()
        .route(
            "/built",
            get(move || async move { Err::<(), _>(too_large()) }),
        )
        .route(
            "/bare",
            get(|| async { (StatusCode::PAYLOAD_TOO_LARGE, [("retry-after", "60")]) }),
        )
        .route(
            "/refused",
            get(move || async move { Err::<(), _>(too_large().with_retryable(false)) }),
        )
        .layer(ErrorLayer::new())
        .layer(middleware::from_fn(correlate));
    let addr = serve_app(app).await;
    for (path, retryable) in [("/built", true), ("/bare", true), ("/refused", false)] {
        let reply = send(addr, "GET", path, &[], b"").await;
        let json = envelope(&reply, "payload_too_large", 413);
        assert_eq!(reply.header("retry-after"), Some("60"), "{path}");
        assert_eq!(json["error"]["retry_after_s"], 60, "{path}");
        assert_eq!(json["error"]["retryable"], retryable, "{path}: {json}");
        assert_eq!(reply.api_error().is_retryable(), retryable, "{path}");
    }
}

/// A `Retry-After` header put beside a rendered error (axum's `(status, headers, error)`): the
/// body says the same delay, in the envelope and in problem details (it said none).
#[tokio::test]
async fn a_retry_after_header_beside_an_error_is_in_its_body_too() {
    support::install_capture();
    let app = Router::new()
        .route(
            "/limited",
            get(|| async {
                (
                    StatusCode::TOO_MANY_REQUESTS,
                    [("retry-after", "30")],
                    HttpError::from(codes::RATE_LIMITED),
                )
            }),
        )
        .layer(ErrorLayer::new())
        .layer(middleware::from_fn(correlate));
    let addr = serve_app(app).await;
    let reply = send(addr, "GET", "/limited", &[], b"").await;
    let json = envelope(&reply, "rate_limited", 429);
    assert_eq!(reply.header("retry-after"), Some("30"));
    assert_eq!(json["error"]["retry_after_s"], 30, "{json}");
    assert_eq!(
        reply.api_error().retry_after(),
        Some(Duration::from_secs(30))
    );

    let accept = [("accept", "application/problem+json")];
    let reply = send(addr, "GET", "/limited", &accept, b"").await;
    assert_eq!(reply.status, 429);
    assert_eq!(reply.header("retry-after"), Some("30"));
    let problem = reply.json();
    assert_eq!(problem["retry_after_s"], 30, "{problem}");
    assert_eq!(problem["request_id"], reply.header("x-request-id").unwrap());
}

/// The same for an error whose code is not retryable by default (a 413 while an upload quota
/// is full): the header says the condition is temporary, and the body says so too, where the
/// error itself did not say otherwise; `with_retryable(false)` keeps it not retryable.
#[tokio::test]
async fn a_retry_after_header_makes_an_error_not_retryable_by_default_retryable() {
    support::install_capture();
    let app = Router::new()
        .route(
            "/too-large",
            get(|| async {
                (
                    StatusCode::PAYLOAD_TOO_LARGE,
                    [("retry-after", "60")],
                    HttpError::from(codes::PAYLOAD_TOO_LARGE),
                )
            }),
        )
        .route(
            "/never",
            get(|| async {
                (
                    StatusCode::PAYLOAD_TOO_LARGE,
                    [("retry-after", "60")],
                    HttpError::from(codes::PAYLOAD_TOO_LARGE).with_retryable(false),
                )
            }),
        )
        .layer(ErrorLayer::new())
        .layer(middleware::from_fn(correlate));
    let addr = serve_app(app).await;
    for accept in [None, Some("application/problem+json")] {
        let headers: Vec<(&str, &str)> = accept.map(|a| ("accept", a)).into_iter().collect();
        let reply = send(addr, "GET", "/too-large", &headers, b"").await;
        assert_eq!(reply.status, 413);
        assert_eq!(reply.header("retry-after"), Some("60"));
        let error = reply.api_error();
        assert!(error.is_retryable(), "{accept:?}: {}", reply.text());
        assert_eq!(error.retry_after(), Some(Duration::from_secs(60)));

        let reply = send(addr, "GET", "/never", &headers, b"").await;
        let error = reply.api_error();
        assert!(!error.is_retryable(), "{accept:?}: {}", reply.text());
    }
}

#[tokio::test]
async fn retry_after_for_rate_limited_and_unavailable() {
    let addr = serve().await;
    let reply = send(addr, "GET", "/rate", &[], b"").await;
    let json = envelope(&reply, "rate_limited", 429);
    assert_eq!(reply.header("retry-after"), Some("30"));
    assert_eq!(json["error"]["retry_after_s"], 30);
    assert_eq!(
        reply.api_error().retry_after(),
        Some(Duration::from_secs(30))
    );

    let reply = send(addr, "GET", "/busy", &[], b"").await;
    envelope(&reply, "service_unavailable", 503);
    assert_eq!(reply.header("retry-after"), Some("5"));

    // A bare 503 whose Retry-After is an HTTP date: the envelope counts the seconds.
    let reply = send(addr, "GET", "/maintenance", &[], b"").await;
    let json = envelope(&reply, "service_unavailable", 503);
    let seconds = json["error"]["retry_after_s"].as_u64().unwrap();
    assert!((115..=121).contains(&seconds), "{json}");
    let decoded = reply.api_error().retry_after().unwrap().as_secs();
    assert!((115..=121).contains(&decoded), "{decoded}");

    // Without a known delay there is no header.
    let reply = send(addr, "GET", "/slow", &[], b"").await;
    assert_eq!(reply.header("retry-after"), None);
}

#[tokio::test]
async fn problem_json_is_negotiated() {
    let addr = serve().await;
    let accept = [("accept", "application/problem+json")];
    for (method, path, code, status) in [
        ("GET", "/nope", "route_not_found", 404),
        ("GET", "/panic", "internal_error", 500),
        ("POST", "/jobs/job_1/cancel", "job_already_terminal", 409),
    ] {
        let reply = send(addr, method, path, &accept, b"").await;
        assert_eq!(reply.status, status);
        assert_eq!(
            reply.header("content-type"),
            Some("application/problem+json")
        );
        let json = reply.json();
        assert_eq!(json["status"], status);
        assert_eq!(json["code"], code);
        assert_eq!(json["instance"], path);
        assert_eq!(json["request_id"], reply.header("x-request-id").unwrap());
        assert!(json["title"].is_string() && json["detail"].is_string());
        assert!(!reply.text().contains("secret panic payload"));
        // The same URL answers the envelope to other clients: shared caches must know.
        assert_eq!(reply.header("vary"), Some("accept"));
        // The decoder reads problem details too.
        assert_eq!(reply.api_error().code(), code);
    }
    // A wildcard that prefers everything else over problem details gives the envelope.
    let wildcard = [("accept", "application/problem+json;q=0.5, */*;q=0.9")];
    let reply = send(addr, "GET", "/nope", &wildcard, b"").await;
    envelope(&reply, "route_not_found", 404);
    let reply = send(addr, "POST", "/jobs/job_1/cancel", &accept, b"").await;
    assert_eq!(
        reply.json()["type"],
        "https://docs.example.com/errors#job_already_terminal"
    );
}

#[tokio::test]
async fn violations_become_one_422() {
    let addr = serve().await;
    let json_type = [("content-type", "application/json")];
    let reply = send(addr, "POST", "/validate", &json_type, b"{\"gpus\": 64}").await;
    let json = envelope(&reply, "validation_error", 422);
    assert_eq!(
        json["error"]["violations"],
        serde_json::json!([
            {"field": "name", "reason": "required", "message": "name is required"},
            {"field": "gpus", "reason": "out_of_range", "message": "gpus must be between 0 and 8"}
        ])
    );
    assert_eq!(reply.api_error().violations().len(), 2);

    let reply = send(
        addr,
        "POST",
        "/validate",
        &json_type,
        b"{\"name\":\"a\",\"gpus\":1}",
    )
    .await;
    assert_eq!(reply.status, 200);
}

#[tokio::test]
async fn handler_sees_the_context_of_the_request() {
    // Sanity check of the test middleware: the handler runs inside the request's context.
    let router: Router = Router::new()
        .route(
            "/id",
            get(|| async { RequestContext::current().unwrap().request_id.to_string() }),
        )
        .layer(ErrorLayer::new())
        .layer(middleware::from_fn(correlate));
    let addr = serve_app(router).await;
    let reply = send(addr, "GET", "/id", &[("x-request-id", "abc")], b"").await;
    assert_eq!(reply.text(), "abc");
}

/// A gRPC client reads no envelope: for a gRPC request a panic, a timeout and any HTTP error
/// are answered as gRPC answers (HTTP 200, `grpc-status`, `grpc-message`), still scrubbed,
/// whatever the error carries; only the service's own gRPC answers (HTTP 200) pass as they are.
#[tokio::test]
async fn grpc_calls_get_grpc_answers() {
    let addr = serve().await;
    let grpc = [
        ("content-type", "application/grpc+proto"),
        ("te", "trailers"),
    ];

    for (path, code, message) in [
        ("/panic", "13", "An internal error occurred"),
        ("/slow", "4", "The request did not complete within 300ms"),
    ] {
        let reply = send(addr, "GET", path, &grpc, b"").await;
        assert_eq!(reply.status, 200, "{path}");
        assert_eq!(reply.header("content-type"), Some("application/grpc"));
        assert_eq!(reply.header("grpc-status"), Some(code), "{path}");
        let sent = reply.header("grpc-message").unwrap();
        let decoded = percent_encoding::percent_decode_str(sent)
            .decode_utf8()
            .unwrap();
        assert_eq!(decoded, message, "{path}");
        assert!(reply.body.is_empty(), "{path}");
        assert!(reply.header("x-request-id").is_some(), "{path}");
        assert_eq!(reply.header("vary"), None, "{path}");
    }

    // HTTP errors to a gRPC request: gRPC answers, their internals still kept out. The
    // client chose the `content-type`: it does not turn the scrubbing off.
    for (method, path, code, message) in [
        // No such method: `UNIMPLEMENTED`, as gRPC servers answer (tonic's router among them).
        (
            "POST",
            "/pkg.Svc/Nope",
            "12",
            "No route matches POST /pkg.Svc/Nope",
        ),
        ("POST", "/ok", "12", "POST is not allowed on /ok"),
        (
            "GET",
            "/maintenance",
            "14",
            "The service is temporarily unavailable",
        ),
        ("GET", "/fail", "13", "An internal error occurred"),
        ("GET", "/jobs/7", "5", "No job has this id"),
        // Claiming to be gRPC lets no internals through, `grpc-status` or JSON alike.
        (
            "GET",
            "/grpc-own",
            "14",
            "The service is temporarily unavailable",
        ),
        ("GET", "/leaky-json", "13", "An internal error occurred"),
    ] {
        let reply = send(addr, method, path, &grpc, b"").await;
        assert_eq!(reply.status, 200, "{path}");
        assert_eq!(reply.header("grpc-status"), Some(code), "{path}");
        let sent = reply.header("grpc-message").unwrap();
        let decoded = percent_encoding::percent_decode_str(sent)
            .decode_utf8()
            .unwrap();
        assert_eq!(decoded, message, "{path}");
        assert!(reply.body.is_empty(), "{path}: {}", reply.text());
    }

    // gRPC-Web is answered in its own media type, keeping what a layer below set for the
    // browser (CORS).
    let web = [("content-type", "application/grpc-web-text")];
    let reply = send(addr, "GET", "/panic", &web, b"").await;
    assert_eq!(reply.status, 200);
    assert_eq!(
        reply.header("content-type"),
        Some("application/grpc-web+proto")
    );
    assert_eq!(reply.header("grpc-status"), Some("13"));
    let reply = send(addr, "GET", "/cors-404", &web, b"").await;
    assert_eq!(reply.header("grpc-status"), Some("5"));
    assert_eq!(reply.header("access-control-allow-origin"), Some("*"));
    assert!(reply.body.is_empty(), "{}", reply.text());

    // A gRPC service's own answer passes untouched.
    let reply = send(addr, "GET", "/grpc-ok", &grpc, b"").await;
    assert_eq!(reply.status, 200);
    assert_eq!(reply.header("grpc-status"), Some("5"));
    assert_eq!(reply.header("grpc-message"), Some("not%20here"));
}

/// `grpc-message` is a header: a long message is cut (at a character's end, before a
/// percent-encoded byte), so the answer still fits a proxy's or client's header limit and the
/// call keeps its code. The envelope of an HTTP client keeps the whole message.
#[tokio::test]
async fn a_long_message_is_cut_to_fit_in_grpc_message() {
    let addr = serve().await;
    let grpc = [("content-type", "application/grpc"), ("te", "trailers")];
    let reply = send(addr, "GET", "/long-message", &grpc, b"").await;
    assert_eq!(reply.status, 200);
    assert_eq!(reply.header("grpc-status"), Some("10"));
    let sent = reply.header("grpc-message").unwrap();
    assert!(sent.len() <= 1024, "{} bytes", sent.len());
    assert!(sent.len() > 1000, "{} bytes", sent.len());
    let decoded = percent_encoding::percent_decode_str(sent)
        .decode_utf8()
        .expect("cut at a character's end");
    assert!(
        !decoded.is_empty() && decoded.chars().all(|c| c == 'é'),
        "{decoded}"
    );

    // The envelope's message is bounded (`MAX_MESSAGE_LEN`), the ellipsis included.
    let reply = send(addr, "GET", "/long-message", &[], b"").await;
    let json = envelope(&reply, "conflict", 409);
    assert_eq!(json["error"]["message"], format!("{}…", "é".repeat(510)));
}

/// A handler that echoes a 1 MB input into its error sends a bounded envelope: the message,
/// help and violation message are cut to at most 1,024 bytes on a character boundary, ending
/// with `…`, as JSON and as problem details; the log line is bounded too.
#[tokio::test]
async fn a_huge_message_is_cut_on_a_character_boundary() {
    let addr = serve().await;
    // 340 whole characters (1,020 bytes) and the ellipsis: 1,023 bytes.
    let cut = format!("{}…", "€".repeat(340));
    let help = format!("{}…", "h".repeat(1021));
    let reply = send(addr, "GET", "/echo-huge", &[], b"").await;
    assert!(reply.body.len() < 8 * 1024, "{} bytes", reply.body.len());
    let json = envelope(&reply, "validation_error", 422);
    let error = &json["error"];
    assert_eq!(error["message"], cut.as_str());
    assert_eq!(error["help"], help.as_str());
    assert_eq!(error["violations"][0]["message"], cut.as_str());
    assert_eq!(error["violations"][0]["field"], cut.as_str());
    assert_eq!(help.len(), 1024);
    assert_eq!(reply.api_error().message(), cut);
    let request_id = reply.header("x-request-id").unwrap();
    let logged = events_of(request_id)
        .into_iter()
        .find_map(|event| event.get("message").cloned())
        .expect("a log line of the request");
    assert_eq!(logged, format!("request rejected: {cut}"));

    let accept = [("accept", "application/problem+json")];
    let reply = send(addr, "GET", "/echo-huge", &accept, b"").await;
    assert_eq!(reply.status, 422);
    assert_eq!(
        reply.header("content-type"),
        Some("application/problem+json")
    );
    let json = reply.json();
    assert_eq!(json["detail"], cut.as_str());
    assert_eq!(json["help"], help.as_str());
    assert_eq!(json["violations"][0]["message"], cut.as_str());

    // An upstream's envelope the layer renders again is bounded alike.
    let reply = send(addr, "GET", "/upstream-envelope-long", &[], b"").await;
    assert_eq!(reply.status, 502);
    let json = reply.json();
    assert_eq!(json["error"]["code"], "upstream_error");
    assert_eq!(json["error"]["message"], cut.as_str());
    assert_eq!(json["error"]["help"], help.as_str());
}

/// An `ErrorBody` a handler builds by hand (its constructor, then its public fields) and sends
/// as a 409 with a JSON body, which the layer passes through untouched: rendered, its message,
/// help and violations are cut, and its `details` kept within `MAX_DETAILS_LEN`, as an
/// `HttpError`'s are, whether it came through a socket or was serialised in place.
#[tokio::test]
async fn a_hand_built_error_body_is_cut_when_it_is_rendered() {
    use periscope_error::{Envelope, ErrorBody};

    support::install_capture();
    let huge = huge_input();
    let hand_built = {
        let huge = huge.clone();
        move || {
            let mut body = ErrorBody::new("job_already_terminal", huge.clone(), "req_hand");
            body.help = Some(huge.clone().into());
            body.violations = vec![Violation::new(huge.clone(), "too_long", huge.clone())];
            body.details = Some(huge_details().0);
            body
        }
    };
    let app = Router::new()
        .route(
            "/hand-built",
            get({
                let hand_built = hand_built.clone();
                move || async move {
                    (
                        StatusCode::CONFLICT,
                        Json(Envelope {
                            error: hand_built(),
                        }),
                    )
                }
            }),
        )
        .layer(ErrorLayer::new())
        .layer(middleware::from_fn(correlate));
    let addr = serve_app(app).await;

    // What the server side renders of the same text.
    let server = HttpError::new(JOB_ALREADY_TERMINAL, huge.clone());
    let cut = server.message();
    assert!(cut.len() <= periscope_error::MAX_MESSAGE_LEN && cut.ends_with('…'));
    let reply = send(addr, "GET", "/hand-built", &[], b"").await;
    assert_eq!(reply.status, 409, "{}", reply.text());
    assert!(reply.body.len() < 8 * 1024, "{} bytes", reply.body.len());
    let sent = reply.json();
    let in_place: Value = serde_json::to_value(Envelope {
        error: hand_built(),
    })
    .unwrap();
    for json in [&sent, &in_place] {
        let error = &json["error"];
        assert_eq!(error["code"], "job_already_terminal");
        assert_eq!(error["message"], cut);
        assert_eq!(error["help"], cut);
        assert_eq!(error["violations"][0]["field"], cut);
        assert_eq!(error["violations"][0]["reason"], "too_long");
        assert_eq!(error["violations"][0]["message"], cut);
        assert_eq!(error["details"], huge_details().1);
    }
}

/// A handler that puts 1 MB into an `HttpError`'s `details`, answered as the envelope and, when
/// asked, as problem details: rendered, `details` keeps its members in order while their JSON
/// stays within `MAX_DETAILS_LEN` (the dump, which would pass it, is left out, the small facts
/// beside it kept), as the client decoder keeps them.
#[tokio::test]
async fn a_megabyte_of_details_is_rendered_within_max_details_len() {
    let addr = serve().await;
    let (_, kept) = huge_details();
    let problem = [("accept", "application/problem+json")];
    for (headers, content_type) in [
        (&[][..], "application/json"),
        (&problem[..], "application/problem+json"),
    ] {
        let reply = send(addr, "GET", "/huge-details", headers, b"").await;
        assert_eq!(reply.status, 409, "{content_type}");
        assert_eq!(reply.header("content-type"), Some(content_type));
        let size = reply.body.len();
        assert!(size < 8 * 1024, "{content_type}: {size} bytes");
        let json = reply.json();
        let members = match content_type {
            "application/json" => &json["error"],
            _ => &json,
        };
        assert_eq!(members["code"], "job_already_terminal", "{json}");
        assert_eq!(members["details"], kept, "{content_type}");
        let written = serde_json::to_string(&members["details"]).unwrap();
        assert!(written.len() <= periscope_error::MAX_DETAILS_LEN);
        // The decoder keeps what was rendered.
        assert_eq!(
            reply.api_error().details(),
            kept.as_object(),
            "{content_type}"
        );
    }
}

/// A panic the handler catches itself is not the layer's to answer, but the hook still saw it:
/// it is reported, not silently dropped; and a panic re-raised later (which skips the hook)
/// never takes its location.
#[tokio::test(flavor = "current_thread")]
async fn a_panic_the_handler_catches_itself_is_reported_and_never_lends_its_location() {
    let addr = serve().await;
    let reply = send(addr, "GET", "/recovers", &[], b"").await;
    assert_eq!(reply.status, 200);
    assert_eq!(reply.text(), "recovered: true");
    assert!(
        captured_events().iter().any(|event| {
            event.get("panic.message").map(String::as_str) == Some("caught by the handler")
                && event["level"] == "WARN"
        }),
        "the panic the handler caught is reported"
    );

    // Same runtime thread: the re-raised panic must not get the location of the one above.
    let reply = send(addr, "GET", "/re-raises", &[], b"").await;
    envelope(&reply, "internal_error", 500);
    let events = events_of(reply.header("x-request-id").unwrap());
    let panic = events
        .iter()
        .find(|event| event.get("message").map(String::as_str) == Some("handler panicked"))
        .expect("the panic is logged");
    assert_eq!(panic["panic.message"], "re-raised from a task");
    assert_eq!(panic.get("panic.location"), None, "{panic:?}");
}

/// A body the client stops sending (1,000 bytes of a declared 100,000) is answered 400
/// `request_body_incomplete` with what came, and logged at info: the client went away, the
/// request was not malformed. Closed with its write side shut (the client still reads the
/// answer), closed whole, or reset, the server tells the same; a complete malformed body is
/// still `invalid_request`.
#[tokio::test]
async fn a_body_the_client_stops_sending_is_not_a_malformed_request() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    let addr = serve().await;
    for how in ["half-close", "close", "reset"] {
        let id = format!("cut-body-{how}");
        let mut client = tokio::net::TcpStream::connect(addr).await.unwrap();
        let head = format!(
            "POST /jobs HTTP/1.1\r\nhost: test\r\ncontent-type: application/json\r\n\
             content-length: 100000\r\nx-request-id: {id}\r\n\r\n{{\"name\":\""
        );
        client.write_all(head.as_bytes()).await.unwrap();
        client.write_all(&[b'x'; 991]).await.unwrap();
        match how {
            "half-close" => {
                client.shutdown().await.unwrap();
                let mut answer = Vec::new();
                client.read_to_end(&mut answer).await.unwrap();
                let answer = String::from_utf8(answer).unwrap();
                assert!(answer.starts_with("HTTP/1.1 400 "), "{answer}");
                let (_, body) = answer.split_once("\r\n\r\n").unwrap();
                let json: Value = serde_json::from_str(body).unwrap();
                let error = &json["error"];
                assert_eq!(error["code"], "request_body_incomplete", "{json}");
                assert_eq!(error["request_id"], id.as_str());
                assert_eq!(error["retryable"], true);
                assert_eq!(error["details"]["received_bytes"], 1000, "{json}");
                assert_eq!(error["details"]["expected_bytes"], 100000, "{json}");
                let help = error["help"].as_str().unwrap();
                assert!(help.contains("stopped sending"), "{help}");
            }
            "close" => drop(client),
            _ => {
                // A zero linger: the close sends RST, as a crashed client's kernel does.
                client.set_zero_linger().unwrap();
                drop(client);
            }
        }
        // Logged once, at info, with the bytes that came.
        let logged = async {
            loop {
                let found = captured_events().into_iter().find(|event| {
                    event.get("request_id") == Some(&id) && event.get("code").is_some()
                });
                if let Some(event) = found {
                    return event;
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        };
        let event = tokio::time::timeout(Duration::from_secs(10), logged)
            .await
            .expect("the cut body is logged");
        assert_eq!(event["code"], "request_body_incomplete", "{how}: {event:?}");
        assert_eq!(event["level"], "INFO", "{how}: {event:?}");
        assert_eq!(event["received_bytes"], "1000", "{how}: {event:?}");
        // Once: a second line (the handler's error logged again) would have come by now.
        tokio::time::sleep(Duration::from_millis(100)).await;
        let coded = captured_events()
            .into_iter()
            .filter(|event| event.get("request_id") == Some(&id) && event.get("code").is_some())
            .count();
        assert_eq!(coded, 1, "{how}");
    }

    // For contrast: a complete body that is not JSON, and a valid one.
    let json_type = [("content-type", "application/json")];
    let reply = send(addr, "POST", "/jobs", &json_type, b"{\"name\":").await;
    envelope(&reply, "invalid_request", 400);
    let reply = send(addr, "POST", "/jobs", &json_type, b"{\"name\":\"train\"}").await;
    assert_eq!(reply.status, 200);
}

/// A multipart upload the client stops sending: axum's `Multipart` answers the cut with a bare
/// 500 ("failed to read stream"), which is no more the service's fault than the 400 of `Json`.
#[tokio::test]
async fn a_multipart_upload_the_client_stops_sending_is_not_an_internal_error() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    let addr = serve().await;
    let id = "cut-multipart";
    let part = "--XX\r\ncontent-disposition: form-data; name=\"file\"\r\n\r\n";
    let head = format!(
        "POST /upload HTTP/1.1\r\nhost: test\r\ncontent-type: multipart/form-data; boundary=XX\r\n\
         content-length: 100000\r\nx-request-id: {id}\r\n\r\n{part}"
    );
    let mut client = tokio::net::TcpStream::connect(addr).await.unwrap();
    client.write_all(head.as_bytes()).await.unwrap();
    client.write_all(&[b'x'; 500]).await.unwrap();
    client.shutdown().await.unwrap();
    let mut answer = Vec::new();
    client.read_to_end(&mut answer).await.unwrap();
    let answer = String::from_utf8(answer).unwrap();
    assert!(answer.starts_with("HTTP/1.1 400 "), "{answer}");
    let (_, body) = answer.split_once("\r\n\r\n").unwrap();
    let json: Value = serde_json::from_str(body).unwrap();
    assert_eq!(json["error"]["code"], "request_body_incomplete", "{json}");
    let sent = part.len() as u64 + 500;
    assert_eq!(json["error"]["details"]["received_bytes"], sent, "{json}");
    // Logged at info, and nothing at error: no one is paged for a dropped upload.
    let events = events_of(id);
    assert!(
        events
            .iter()
            .any(|event| event["code"] == "request_body_incomplete" && event["level"] == "INFO"),
        "{events:?}"
    );
    assert!(
        events.iter().all(|event| event["level"] != "ERROR"),
        "{events:?}"
    );
}

/// A client that sends part of its body and then stalls, behind tower-http's
/// `RequestBodyTimeoutLayer` inside the error layer or outside it: the extractor's rejection
/// (`Bytes` and `Json`'s 400, `Multipart`'s 500) becomes a 408 `timeout`, retryable, not
/// "fix the request"; answered with `connection: close` while the client still holds its
/// connection, and logged once at info with the bytes that came.
#[tokio::test]
async fn a_body_the_client_stalls_is_a_408_timeout_not_a_malformed_request() {
    use tower_http::timeout::RequestBodyTimeoutLayer;

    support::install_capture();
    let routes = || {
        Router::new()
            .route(
                "/bytes",
                post(|body: axum::body::Bytes| async move { body.len().to_string() }),
            )
            .route("/json", post(|_: Json<Value>| async { "parsed" }))
            .route(
                "/multipart",
                post(|mut form: axum::extract::Multipart| async move {
                    while let Some(field) = form.next_field().await? {
                        field.bytes().await?;
                    }
                    Ok::<_, axum::extract::multipart::MultipartError>("stored")
                }),
            )
    };
    let body_timeout = RequestBodyTimeoutLayer::new(Duration::from_millis(100));
    let inside = routes()
        .layer(body_timeout.clone())
        .layer(ErrorLayer::new())
        .layer(middleware::from_fn(correlate));
    let outside = routes()
        .layer(ErrorLayer::new())
        .layer(body_timeout)
        .layer(middleware::from_fn(correlate));
    let part = "--XX\r\ncontent-disposition: form-data; name=\"file\"\r\n\r\n";
    for (place, app) in [("inside", inside), ("outside", outside)] {
        let addr = serve_app(app).await;
        for (path, content_type, start) in [
            ("/bytes", "application/octet-stream", String::new()),
            ("/json", "application/json", "{\"name\":\"".to_owned()),
            (
                "/multipart",
                "multipart/form-data; boundary=XX",
                part.to_owned(),
            ),
        ] {
            let id = format!("stalled-{place}{}", path.replace('/', "-"));
            // The client neither sends more nor closes: the server answers and closes.
            let answer = stall(
                addr,
                &format!(
                    "POST {path} HTTP/1.1\r\nhost: test\r\ncontent-type: {content_type}\r\n\
                     content-length: 1000\r\nx-request-id: {id}\r\n\r\n{start}{}",
                    "x".repeat(40)
                ),
            )
            .await;
            let received = (start.len() + 40) as u64;
            let error = stalled_408(&answer, &id, received);
            assert_eq!(error["details"]["expected_bytes"], 1000, "{id}: {error}");
            let message = error["message"].as_str().unwrap();
            assert!(message.contains("in time"), "{id}: {message}");
            // Logged once at info with the bytes that came, and nothing at error.
            let events = events_of(&id);
            let logged: Vec<_> = (events.iter())
                .filter(|event| event.get("code").map(String::as_str) == Some("timeout"))
                .collect();
            assert_eq!(logged.len(), 1, "{id}: {events:?}");
            assert_eq!(logged[0]["level"], "INFO", "{id}: {events:?}");
            assert_eq!(logged[0]["received_bytes"], received.to_string(), "{id}");
            assert!(
                events.iter().all(|event| event["level"] != "ERROR"),
                "{id}: {events:?}"
            );
        }
        // For contrast: a whole body that is not JSON is still the client's mistake.
        let json_type = [("content-type", "application/json")];
        let reply = send(addr, "POST", "/json", &json_type, b"{\"name\":").await;
        assert_eq!(reply.status, 400, "{place}: {}", reply.text());
        assert_eq!(reply.json()["error"]["code"], "invalid_request", "{place}");
    }
}

/// A JSON 5xx too long to check for an envelope is still replaced, but its log line shows how
/// it starts (what the upstream said), that it was cut, and its length when it was announced.
#[tokio::test]
async fn a_json_5xx_over_the_read_bound_is_logged_by_its_start() {
    let addr = serve().await;
    let whole = huge_upstream_json();
    for (path, length) in [
        ("/upstream-huge", Some(whole.len().to_string())),
        ("/upstream-huge-chunked", None),
    ] {
        let reply = send(addr, "GET", path, &[], b"").await;
        let json = envelope(&reply, "upstream_error", 502);
        // The client's answer is what it was: the code's default message, nothing of the body.
        assert_eq!(
            json["error"]["message"],
            codes::UPSTREAM_ERROR.default_message(),
            "{path}"
        );
        assert!(!reply.text().contains("CUDA"), "{path}");
        let events = events_of(reply.header("x-request-id").unwrap());
        let logged = events
            .iter()
            .find(|event| {
                event
                    .get("message")
                    .is_some_and(|m| m.contains("without an error envelope"))
            })
            .unwrap_or_else(|| panic!("{path}: no line for the body: {events:?}"));
        assert_eq!(logged["level"], "ERROR");
        let body = logged
            .get("body")
            .unwrap_or_else(|| panic!("{path}: {logged:?}"));
        assert!(
            body.starts_with(r#"{"detail":"model server out of memory: CUDA OOM at layer 31""#),
            "{path}: {body}"
        );
        assert!(body.len() <= 4096, "{path}: {} bytes logged", body.len());
        assert!(whole.starts_with(body.as_str()), "{path}");
        assert_eq!(
            logged.get("body_truncated").map(String::as_str),
            Some("true"),
            "{path}"
        );
        assert_eq!(logged.get("body_bytes"), length.as_ref(), "{path}");
    }
}

/// The line that logs what the service answered without an envelope, of `reply`'s request.
fn body_line(reply: &Reply, what: &str) -> support::Captured {
    let events = events_of(reply.header("x-request-id").unwrap());
    events
        .into_iter()
        .find(|event| {
            event
                .get("message")
                .is_some_and(|m| m.contains("without an error envelope"))
        })
        .unwrap_or_else(|| panic!("{what}: no line for the body"))
}

/// A plain-text 5xx over what the layer reads (a worker's crash dump, a proxy's text page) is
/// logged like a JSON one: its first 4 KiB, cut on a character boundary, `body_truncated`, and
/// its length when it announced one. The client's answer shows none of it, and a 4xx message
/// never comes from a cut body.
#[tokio::test]
async fn a_plain_text_5xx_over_the_read_bound_is_logged_by_its_start() {
    let addr = serve().await;
    let whole = huge_worker_text();
    for (shape, length) in [("long", Some(whole.len().to_string())), ("chunked", None)] {
        let reply = send(addr, "GET", "/text-error", &[("x-shape", shape)], b"").await;
        let json = envelope(&reply, "internal_error", 500);
        assert_eq!(
            json["error"]["message"],
            codes::INTERNAL_ERROR.default_message(),
            "{shape}"
        );
        assert!(!reply.text().contains("worker"), "{shape}");
        let logged = body_line(&reply, shape);
        assert_eq!(logged["level"], "ERROR");
        let body = logged
            .get("body")
            .unwrap_or_else(|| panic!("{shape}: {logged:?}"));
        assert!(
            body.starts_with("worker pool exhausted: 64 of 64 busy; queue: job;"),
            "{shape}: {body}"
        );
        // The character the 4 KiB bound splits is left out whole, not replaced.
        assert_eq!(body.len(), 4093, "{shape}");
        assert!(whole.starts_with(body.as_str()), "{shape}");
        assert_eq!(
            logged.get("body_truncated").map(String::as_str),
            Some("true"),
            "{shape}"
        );
        assert_eq!(logged.get("body_bytes"), length.as_ref(), "{shape}");
    }

    // Within the bound: logged whole, not marked cut.
    let reply = send(addr, "GET", "/text-error", &[("x-shape", "2k")], b"").await;
    let json = envelope(&reply, "internal_error", 500);
    assert_eq!(
        json["error"]["message"],
        codes::INTERNAL_ERROR.default_message()
    );
    let logged = body_line(&reply, "2k");
    assert_eq!(logged.get("body"), Some(&two_kib_worker_text()));
    assert_eq!(logged.get("body_truncated"), None);
    assert_eq!(logged.get("body_bytes"), None);

    // A 4xx over the 1 KiB a message may have: the code's default message, none of the text.
    let reply = send(
        addr,
        "GET",
        "/text-error",
        &[("x-shape", "long"), ("x-status", "400")],
        b"",
    )
    .await;
    let json = envelope(&reply, "invalid_request", 400);
    assert_eq!(
        json["error"]["message"],
        codes::INVALID_REQUEST.default_message()
    );
    assert!(!reply.text().contains("worker"));
}

/// A text 5xx that is not UTF-8, one that fails midway, and one answering a HEAD request: the
/// layer answers each as it always has and logs what it read, without a panic.
#[tokio::test]
async fn odd_plain_text_5xx_bodies_are_logged_and_answered_as_before() {
    let addr = serve().await;

    let reply = send(addr, "GET", "/text-error", &[("x-shape", "latin1")], b"").await;
    let json = envelope(&reply, "internal_error", 500);
    assert_eq!(
        json["error"]["message"],
        codes::INTERNAL_ERROR.default_message()
    );
    let logged = body_line(&reply, "latin1");
    let body = logged
        .get("body")
        .unwrap_or_else(|| panic!("latin1: {logged:?}"));
    assert!(
        body.starts_with("Fehler: Datei f\u{FFFD}r Auftrag nicht gefunden; "),
        "{body}"
    );
    assert!(body.len() <= 4096, "{} bytes logged", body.len());
    assert_eq!(
        logged.get("body_truncated").map(String::as_str),
        Some("true")
    );
    assert_eq!(
        logged.get("body_bytes"),
        Some(&latin1_text().len().to_string())
    );

    // A body that fails after its first chunk: what arrived is logged, marked cut.
    let reply = send(
        addr,
        "GET",
        "/text-error",
        &[("x-shape", "fails"), ("x-status", "503")],
        b"",
    )
    .await;
    let json = envelope(&reply, "service_unavailable", 503);
    assert_eq!(
        json["error"]["message"],
        codes::SERVICE_UNAVAILABLE.default_message()
    );
    let logged = body_line(&reply, "fails");
    assert_eq!(
        logged.get("body").map(String::as_str),
        Some("disk full on the job volume; ")
    );
    assert_eq!(
        logged.get("body_truncated").map(String::as_str),
        Some("true")
    );
    assert_eq!(logged.get("body_bytes"), None);
    // The same cut under a 4xx never becomes its message.
    let reply = send(
        addr,
        "GET",
        "/text-error",
        &[("x-shape", "fails"), ("x-status", "400")],
        b"",
    )
    .await;
    let json = envelope(&reply, "invalid_request", 400);
    assert_eq!(
        json["error"]["message"],
        codes::INVALID_REQUEST.default_message()
    );

    // HEAD: the head of the envelope, no body, and the log line of a GET.
    let reply = send(addr, "HEAD", "/text-error", &[], b"").await;
    assert_eq!(reply.status, 500);
    assert_eq!(reply.header("content-type"), Some("application/json"));
    assert_eq!(reply.header("cache-control"), Some("no-store"));
    assert!(reply.body.is_empty(), "{}", reply.text());
    let logged = body_line(&reply, "HEAD");
    assert_eq!(logged["level"], "ERROR");
    assert_eq!(
        logged.get("body").map(String::len),
        Some(4093),
        "{logged:?}"
    );
    assert_eq!(
        logged.get("body_truncated").map(String::as_str),
        Some("true")
    );
}

/// An error body that always has an empty frame ready and never ends: the layer reads it as
/// far as its deadline, then answers, instead of spinning on the frames and holding the
/// server's thread (and every request on it) forever.
#[test]
fn an_error_body_of_endless_empty_frames_is_given_up_at_the_deadline() {
    support::install_capture();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let listener = runtime
        .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
        .unwrap();
    let addr = listener.local_addr().unwrap();
    runtime.spawn(async move { axum::serve(listener, app()).await.unwrap() });
    let cases = [
        ("endless-empty", "500", "internal_error", 500),
        ("endless-empty", "400", "invalid_request", 400),
        ("endless-empty-json", "502", "upstream_error", 502),
    ];
    // A client on its own thread, with a read timeout: a spinning server thread cannot hold
    // up the test's clock.
    let replies: Vec<_> = cases
        .iter()
        .map(|(shape, status, _, _)| {
            support::send_blocking(
                addr,
                "/text-error",
                &[("x-shape", shape), ("x-status", status)],
                Duration::from_secs(5),
            )
        })
        .collect();
    // A worker that spins forever would block the runtime's drop.
    runtime.shutdown_background();
    for ((shape, _, code, status), reply) in cases.iter().zip(replies) {
        let reply = reply.unwrap_or_else(|| panic!("{shape} {status}: no answer within 5 s"));
        let json = envelope(&reply, code, *status);
        let default = ErrorCode::find(code, JOB_CODES).unwrap().default_message();
        assert_eq!(json["error"]["message"], default, "{shape} {status}");
    }
}
