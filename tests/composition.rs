//! `obs.layer()` composed with the Tower layers and axum features services already use, served
//! by `periscope::Server` on 127.0.0.1 (docs/ordering.md, "Where other Tower layers go"). For
//! each request a service relies on: `x-request-id` echoed; one access line with the request's
//! ids, status and route template; an error answered with the envelope carrying its
//! `request_id`; one count under the route template and status class; the server span's ids
//! those of the log lines. And where a layer answers outside periscope, what the docs say.

#![cfg(all(feature = "axum", feature = "serve"))]

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::Router;
use axum::extract::{Path, Query};
use axum::http::{HeaderMap, StatusCode};
use axum::routing::{get, post};
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use periscope::Observability;
use serde_json::Value;

// Shared with the other test binaries; this one installs its own subscriber.
#[allow(dead_code)]
mod capture;
#[allow(dead_code)]
mod recorded;
use capture::Captured;
use recorded::Spans;

/// A service served on 127.0.0.1, the lines it logs and the spans it opens on this thread
/// (the JSON log leaves span fields out).
struct Served {
    addr: SocketAddr,
    obs: Observability,
    out: Captured,
    spans: Spans,
    _log: periscope::log::LogGuard,
    _default: tracing::subscriber::DefaultGuard,
}

fn observability(timeout_ms: u64) -> Observability {
    Observability::builder()
        .request_timeout(Duration::from_millis(timeout_ms))
        .route_templates(["/assets/{*path}"])
        .build()
        .unwrap()
}

async fn serve(obs: Observability, app: Router) -> Served {
    serve_service(obs, app).await
}

async fn serve_service<S, B>(obs: Observability, service: S) -> Served
where
    S: tower::Service<http::Request<hyper::body::Incoming>, Response = http::Response<B>>
        + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
    S::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    B: http_body::Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let (out, spans, log_guard, default) = recorded::record();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(periscope::Server::new(listener).serve(service, std::future::pending()));
    Served {
        addr,
        obs,
        out,
        spans,
        _log: log_guard,
        _default: default,
    }
}

struct Reply {
    status: u16,
    headers: HeaderMap,
    body: Bytes,
    /// The error that cut the body short, if one did.
    body_error: Option<String>,
}

impl Reply {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).map(|v| v.to_str().unwrap())
    }
}

/// `method path` with `x-request-id: id`, `headers` and `body`, read to its end or its error
/// (within 30 s).
async fn send(
    addr: SocketAddr,
    method: &str,
    path: &str,
    id: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> Reply {
    let client = Client::builder(TokioExecutor::new()).build_http::<Full<Bytes>>();
    let mut request = http::Request::builder()
        .method(method)
        .uri(format!("http://{addr}{path}"))
        .header("x-request-id", id);
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    let request = request
        .body(Full::new(Bytes::copy_from_slice(body)))
        .unwrap();
    let exchange = async {
        let (parts, mut body) = client.request(request).await.unwrap().into_parts();
        let mut data = Vec::new();
        let mut body_error = None;
        while let Some(frame) = body.frame().await {
            match frame {
                Ok(frame) => data.extend_from_slice(&frame.into_data().unwrap_or_default()),
                Err(e) => {
                    body_error = Some(e.to_string());
                    break;
                }
            }
        }
        Reply {
            status: parts.status.as_u16(),
            headers: parts.headers,
            body: Bytes::from(data),
            body_error,
        }
    };
    tokio::time::timeout(Duration::from_secs(30), exchange)
        .await
        .unwrap_or_else(|_| panic!("{method} {path}: no answer within 30 s"))
}

/// `http_server_requests_total` by route and status, parsed back from the exposition.
fn counts(obs: &Observability) -> BTreeMap<(String, String), f64> {
    let text = obs.registry().encode_prometheus().unwrap();
    let exposition = openmetrics_parser::prometheus::parse_prometheus(&text).unwrap();
    let mut counts = BTreeMap::new();
    let Some(family) = exposition.families.get("http_server_requests_total") else {
        return counts;
    };
    for sample in family.iter_samples() {
        let labels = sample.get_labelset().unwrap();
        let key = (
            labels.get_label_value("route").unwrap().to_owned(),
            labels.get_label_value("status").unwrap().to_owned(),
        );
        let openmetrics_parser::PrometheusValue::Counter(value) = &sample.value else {
            panic!("{:?}", sample.value)
        };
        *counts.entry(key).or_default() += value.value.as_f64();
    }
    counts
}

/// What one request must look like in every signal.
struct Want<'a> {
    status: u16,
    /// The envelope's code (an error status always needs an envelope).
    code: Option<&'a str>,
    /// The route template; `None`: no route (`__unmatched__`, no `route` in the access line).
    route: Option<&'a str>,
}

const fn want<'a>(status: u16, code: Option<&'a str>, route: Option<&'a str>) -> Want<'a> {
    Want {
        status,
        code,
        route,
    }
}

impl Served {
    /// Sends one request with `x-request-id: id` and asserts every signal of it: the echoed
    /// id, the envelope, one access line, one server span with the line's ids, one count
    /// (and the in-flight gauge back where it was). Returns the reply and the access line.
    async fn check(
        &self,
        id: &str,
        (method, path): (&str, &str),
        headers: &[(&str, &str)],
        body: &[u8],
        want: Want<'_>,
    ) -> (Reply, Value) {
        let before = counts(&self.obs);
        let in_flight = self.obs.in_flight();
        let reply = send(self.addr, method, path, id, headers, body).await;
        assert_eq!(reply.status, want.status, "{id}: {:?}", reply.body);
        assert_eq!(reply.header("x-request-id"), Some(id), "{id}");
        let envelope = (reply.status >= 400).then(|| {
            let envelope: Value = serde_json::from_slice(&reply.body)
                .unwrap_or_else(|e| panic!("{id}: {e}: {:?}", reply.body));
            assert_eq!(envelope["error"]["request_id"], id, "{id}: {envelope}");
            assert_eq!(envelope["error"]["code"], want.code.unwrap(), "{id}");
            envelope
        });

        // The line is written, the span closed and the request counted once the body has
        // ended on the server, which may be after the client read it.
        let of_request = |line: &Value| {
            line["target"] == "periscope::access" && line["request_id"].as_str() == Some(id)
        };
        let started = Instant::now();
        while !self.out.lines().iter().any(of_request)
            || self.spans.of("http_request", id).is_empty()
        {
            assert!(
                started.elapsed() < Duration::from_secs(5),
                "{id}: no line or span"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        // Anything logged or counted twice would come now.
        tokio::time::sleep(Duration::from_millis(20)).await;
        let lines: Vec<Value> = self.out.lines().into_iter().filter(of_request).collect();
        assert_eq!(lines.len(), 1, "{id}: {lines:#?}");
        let line = lines[0].clone();
        assert_eq!(line["data"]["status"], want.status, "{id}: {line}");
        assert_eq!(line["data"]["route"].as_str(), want.route, "{id}: {line}");
        if let Some(envelope) = &envelope {
            assert_eq!(envelope["error"]["trace_id"], line["trace_id"], "{id}");
        }
        let spans = self.spans.of("http_request", id);
        assert_eq!(spans.len(), 1, "{id}: {spans:#?}");
        for field in ["trace_id", "span_id"] {
            assert_eq!(spans[0][field], line[field].as_str().unwrap(), "{id}");
        }

        let class = format!("{}xx", want.status / 100);
        let route = want.route.unwrap_or("__unmatched__").to_owned();
        let after = counts(&self.obs);
        let changed: Vec<_> = (after.iter())
            .filter(|(key, value)| before.get(*key) != Some(*value))
            .map(|(key, value)| (key.clone(), value - before.get(key).unwrap_or(&0.0)))
            .collect();
        assert_eq!(changed, [((route, class), 1.0)], "{id}");
        assert_eq!(self.obs.in_flight(), in_flight, "{id}");
        (reply, line)
    }

    /// The access line of `id`, once it is written (within 5 s).
    async fn access_line(&self, id: &str) -> Value {
        let line = async {
            loop {
                let found = (self.out.lines().into_iter())
                    .find(|line| line["target"] == "periscope::access" && line["request_id"] == id);
                if let Some(line) = found {
                    return line;
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        };
        tokio::time::timeout(Duration::from_secs(5), line)
            .await
            .unwrap_or_else(|_| panic!("{id}: no access line"))
    }

    /// The access lines of `id` (none when periscope never saw the request).
    fn access_lines(&self, id: &str) -> usize {
        (self.out.lines().iter())
            .filter(|l| l["target"] == "periscope::access" && l["request_id"] == id)
            .count()
    }
}

#[derive(serde::Deserialize)]
struct Search {
    #[allow(dead_code)]
    limit: u32,
}

#[derive(serde::Deserialize)]
struct Item {
    #[allow(dead_code)]
    name: String,
}

/// A service's routes: extractors of each kind, a slow handler, a panicking one, a body that
/// fails midway, and one held at `gate`.
fn api(gate: Arc<tokio::sync::Semaphore>) -> Router {
    let failing_stream = || async {
        let stream = futures_util::stream::unfold(0, |i| async move {
            match i {
                0 => Some((Ok(Bytes::from_static(b"first token\n")), 1)),
                // After the head and the first frame went out.
                1 => {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    Some((Err(std::io::Error::other("the model server went away")), 2))
                }
                _ => None,
            }
        });
        axum::body::Body::from_stream(stream)
    };
    Router::new()
        .route("/ok", get(|| async { "ok" }))
        .route(
            "/items/{id}",
            get(|Path(id): Path<u32>| async move { format!("item {id}") }),
        )
        .route("/search", get(|_: Query<Search>| async { "found" }))
        .route("/json", post(|_: axum::Json<Item>| async { "parsed" }))
        .route(
            "/upload",
            post(|body: Bytes| async move { body.len().to_string() }),
        )
        .route(
            "/slow",
            get(|| async {
                tokio::time::sleep(Duration::from_secs(30)).await;
                "too late"
            }),
        )
        .route(
            "/panic",
            get(|| async {
                if true {
                    panic!("secret panic text");
                }
            }),
        )
        .route("/stream", get(failing_stream))
        .route(
            "/held",
            get(move || {
                let gate = gate.clone();
                async move {
                    gate.acquire().await.unwrap().forget();
                    "released"
                }
            }),
        )
}

fn routes() -> Router {
    api(Arc::new(tokio::sync::Semaphore::new(0)))
}

/// A `ServeDir`-like service: `app.js`, and a bare 404 for any other file.
fn files() -> tower::util::BoxCloneSyncService<
    http::Request<axum::body::Body>,
    axum::response::Response,
    std::convert::Infallible,
> {
    use axum::response::IntoResponse;
    tower::util::BoxCloneSyncService::new(tower::service_fn(
        |request: http::Request<axum::body::Body>| async move {
            Ok(if request.uri().path().ends_with("/app.js") {
                "console.log(1)".into_response()
            } else {
                StatusCode::NOT_FOUND.into_response()
            })
        },
    ))
}

/// Nested routes, a mounted file service, a fallback: the router's and the extractors'
/// answers are envelopes with the request's id, each counted under its route template.
#[tokio::test(flavor = "current_thread")]
async fn router_and_extractor_answers_are_observed_under_their_route() {
    let obs = observability(300);
    let app = Router::new()
        .nest("/api", routes())
        .nest_service("/assets", files())
        .fallback(|| async { (StatusCode::NOT_FOUND, "nothing here") })
        .layer(obs.layer());
    let s = serve(obs, app).await;
    // id, request, JSON body (sent as `application/json`), status, code, route; `-`: none.
    let cases = "
        ok               GET    /api/items/5        -     200 -                  /api/items/{id}
        bad-json         POST   /api/json           {not  400 invalid_request    /api/json
        json-shape       POST   /api/json           {}    422 validation_error   /api/json
        bad-path         GET    /api/items/abc      -     400 invalid_request    /api/items/{id}
        bad-query        GET    /api/search?limit=x -     400 invalid_request    /api/search
        no-query         GET    /api/search         -     400 invalid_request    /api/search
        405              DELETE /api/ok             -     405 method_not_allowed /api/ok
        panic            GET    /api/panic          -     500 internal_error     /api/panic
        timeout          GET    /api/slow           -     504 timeout            /api/slow
        fallback         GET    /nope               -     404 route_not_found    -
        nested-unmatched GET    /api/nope           -     404 route_not_found    -
        asset            GET    /assets/app.js      -     200 -                  /assets/{*path}";
    // (The last three: the fallback's bare 404 outside and inside the nested prefix, and a
    // mounted service, which has no `MatchedPath`, counted under its declared template.)
    for case in cases.trim().lines() {
        let [id, method, path, body, status, code, route] = (case.split_whitespace())
            .collect::<Vec<_>>()
            .try_into()
            .unwrap();
        let (json, body): (&[_], _) = match body {
            "-" => (&[], ""),
            body => (&[("content-type", "application/json")], body),
        };
        let some = |word| (word != "-").then_some(word);
        let want = want(status.parse().unwrap(), some(code), some(route));
        s.check(id, (method, path), json, body.as_bytes(), want)
            .await;
    }
    let untyped = want(415, Some("unsupported_media_type"), Some("/api/json"));
    let body = br#"{"name":"a"}"#;
    s.check("untyped", ("POST", "/api/json"), &[], body, untyped)
        .await;
    // The fallback's text is the envelope's message; a missing file is `route_not_found`,
    // its template declared or not (a template names a route, not a handler serving it).
    let (reply, _) = s
        .check(
            "fallback-text",
            ("GET", "/x"),
            &[],
            b"",
            want(404, Some("route_not_found"), None),
        )
        .await;
    let envelope: Value = serde_json::from_slice(&reply.body).unwrap();
    assert_eq!(envelope["error"]["message"], "nothing here");
    s.check(
        "missing-asset",
        ("GET", "/assets/missing.js"),
        &[],
        b"",
        want(404, Some("route_not_found"), Some("/assets/{*path}")),
    )
    .await;
}

/// One HTTP/1.1 exchange over a fresh connection, the answer as text.
async fn raw(addr: SocketAddr, request: &str) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut answer = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut answer))
        .await
        .expect("an answer within 10 s")
        .unwrap();
    String::from_utf8(answer).unwrap()
}

/// tower-http's and tower's layers inside `obs.layer()` (a `Router::layer` written before
/// it): what they answer themselves becomes an envelope with the request's id, logged and
/// counted under the route.
#[tokio::test(flavor = "current_thread")]
async fn layers_inside_the_stack_answer_with_envelopes() {
    use axum::error_handling::HandleErrorLayer;
    use axum::middleware::{self, Next};
    use tower::ServiceBuilder;
    use tower_http::catch_panic::CatchPanicLayer;
    use tower_http::limit::RequestBodyLimitLayer;
    use tower_http::timeout::TimeoutLayer;

    // tower-http's timeout answers a bare 408 (or the status it is given): `timeout`.
    for status in [StatusCode::REQUEST_TIMEOUT, StatusCode::GATEWAY_TIMEOUT] {
        let obs = Observability::builder().build().unwrap();
        let timeout = TimeoutLayer::with_status_code(status, Duration::from_millis(100));
        let app = routes().layer(timeout).layer(obs.layer());
        let s = serve(obs, app).await;
        let id = format!("tower-http-timeout-{}", status.as_u16());
        let want = want(status.as_u16(), Some("timeout"), Some("/slow"));
        s.check(&id, ("GET", "/slow"), &[], b"", want).await;
    }

    // tower's timeout needs a `HandleErrorLayer` in axum; its 408 becomes the envelope too.
    let obs = Observability::builder().build().unwrap();
    let timeout = ServiceBuilder::new()
        .layer(HandleErrorLayer::new(|_: tower::BoxError| async {
            StatusCode::REQUEST_TIMEOUT
        }))
        .timeout(Duration::from_millis(100));
    let app = routes().layer(timeout).layer(obs.layer());
    let s = serve(obs, app).await;
    let want_timeout = want(408, Some("timeout"), Some("/slow"));
    s.check("tower-timeout", ("GET", "/slow"), &[], b"", want_timeout)
        .await;
    drop(s);

    // A body over the limit, declared or chunked: the 413 envelope.
    let obs = observability(1000);
    let limited = routes().layer(RequestBodyLimitLayer::new(16));
    let app = limited.layer(obs.layer());
    let s = serve(obs, app).await;
    let too_large = want(413, Some("payload_too_large"), Some("/upload"));
    s.check(
        "declared-413",
        ("POST", "/upload"),
        &[],
        &[b'x'; 100],
        too_large,
    )
    .await;
    let chunk = "x".repeat(40);
    let answer = raw(
        s.addr,
        &format!(
            "POST /upload HTTP/1.1\r\nhost: a\r\nx-request-id: chunked-413\r\n\
             transfer-encoding: chunked\r\nconnection: close\r\n\r\n28\r\n{chunk}\r\n0\r\n\r\n"
        ),
    )
    .await;
    assert!(answer.starts_with("HTTP/1.1 413"), "{answer}");
    assert!(answer.contains("x-request-id: chunked-413\r\n"), "{answer}");
    assert!(answer.contains(r#""request_id":"chunked-413""#), "{answer}");
    assert!(answer.contains(r#""code":"payload_too_large""#), "{answer}");
    drop(s);

    // tower-http's panic catcher inside answers first: its 500 becomes the envelope, and
    // periscope still logs where the panic was.
    let obs = observability(1000);
    let app = routes().layer(CatchPanicLayer::new()).layer(obs.layer());
    let s = serve(obs, app).await;
    let caught = want(500, Some("internal_error"), Some("/panic"));
    let (reply, _) = s.check("caught", ("GET", "/panic"), &[], b"", caught).await;
    assert!(!String::from_utf8_lossy(&reply.body).contains("secret"));
    let located = s.out.lines().into_iter().any(|line| {
        line["request_id"] == "caught"
            && line["message"] == "a panic was caught inside the service"
            && line["data"]["panic.location"]
                .as_str()
                .is_some_and(|location| location.starts_with("tests/composition.rs:"))
    });
    assert!(located, "{:#?}", s.out.lines());
    drop(s);

    // An auth middleware that answers 401 itself: `route_layer` leaves unmatched paths the
    // router's 404; `Router::layer` runs it for the fallback too.
    async fn auth(request: axum::extract::Request, next: Next) -> axum::response::Response {
        if request.headers().contains_key("authorization") {
            next.run(request).await
        } else {
            axum::response::IntoResponse::into_response(StatusCode::UNAUTHORIZED)
        }
    }
    for (how, unmatched) in [("route-layer", 404), ("layer", 401)] {
        let obs = observability(1000);
        let app = if how == "route-layer" {
            routes().route_layer(middleware::from_fn(auth))
        } else {
            routes().layer(middleware::from_fn(auth))
        };
        let app = app.layer(obs.layer());
        let s = serve(obs, app).await;
        let token = [("authorization", "Bearer t")];
        let ok = want(200, None, Some("/ok"));
        s.check(&format!("{how}-ok"), ("GET", "/ok"), &token, b"", ok)
            .await;
        let refused = want(401, Some("token_missing"), Some("/ok"));
        s.check(&format!("{how}-401"), ("GET", "/ok"), &[], b"", refused)
            .await;
        let code = if unmatched == 404 {
            "route_not_found"
        } else {
            "token_missing"
        };
        let unmatched = want(unmatched, Some(code), None);
        s.check(
            &format!("{how}-unmatched"),
            ("GET", "/nope"),
            &[],
            b"",
            unmatched,
        )
        .await;
    }
}

/// A `POST` of JSON to `path` (with `extra` header lines) that sends half of its declared 100
/// bytes: the client then neither sends more nor closes.
fn stalled_upload(path: &str, id: &str, extra: &str) -> String {
    format!(
        "POST {path} HTTP/1.1\r\nhost: a\r\nx-request-id: {id}\r\n{extra}\
         content-type: application/json\r\ncontent-length: 100\r\n\r\n{{\"name\":\"{}",
        "x".repeat(41)
    )
}

/// Stalls an upload to `path` and checks it is the client's 408: the request id in the header
/// and the envelope, `connection: close`, a retryable `timeout` with the 50 bytes that came,
/// and its access line (408 `timeout` under the route, the envelope's trace). The envelope's
/// `error` and the access line, for what the caller checks further.
async fn stalled_408(s: &Served, path: &str, id: &str) -> (Value, Value) {
    let answer = raw(s.addr, &stalled_upload(path, id, "")).await;
    assert!(answer.starts_with("HTTP/1.1 408 "), "{id}: {answer}");
    let (head, body) = answer.split_once("\r\n\r\n").unwrap();
    assert!(
        head.contains(&format!("\r\nx-request-id: {id}\r\n")),
        "{head}"
    );
    assert!(head.contains("\r\nconnection: close\r\n"), "{head}");
    let envelope: Value = serde_json::from_str(body).unwrap();
    let error = envelope["error"].clone();
    assert_eq!(error["code"], "timeout", "{id}: {envelope}");
    assert_eq!(error["request_id"], id, "{id}");
    assert_eq!(error["retryable"], true, "{id}");
    assert_eq!(error["details"]["received_bytes"], 50, "{id}: {envelope}");

    let line = s.access_line(id).await;
    assert_eq!(line["data"]["status"], 408, "{id}: {line}");
    assert_eq!(line["data"]["error_code"], "timeout", "{id}: {line}");
    assert_eq!(line["data"]["route"], path, "{id}: {line}");
    assert_eq!(line["trace_id"], error["trace_id"], "{id}");
    (error, line)
}

/// tower-http's `RequestBodyTimeoutLayer`, inside `obs.layer()` or outside it: a client that
/// sends half its body and stalls gets a 408 `timeout` envelope (retryable) with its request
/// id, the connection closed, logged and counted as a `4xx` of its route, not the extractor's
/// 400 `invalid_request` ("fix the request").
#[tokio::test(flavor = "current_thread")]
async fn a_stalled_upload_is_a_408_timeout_in_either_place() {
    use tower_http::timeout::RequestBodyTimeoutLayer;

    let body_timeout = RequestBodyTimeoutLayer::new(Duration::from_millis(100));
    for place in ["inside", "outside"] {
        let obs = observability(5000);
        let app = match place {
            "inside" => routes().layer(body_timeout.clone()).layer(obs.layer()),
            _ => routes().layer(obs.layer()).layer(body_timeout.clone()),
        };
        let s = serve(obs, app).await;
        for path in ["/upload", "/json"] {
            let id = format!("stalled-{place}{}", path.replace('/', "-"));
            let before = counts(&s.obs);
            stalled_408(&s, path, &id).await;
            // The error layer's own line says what happened, with the bytes that came.
            let said = s.out.lines().into_iter().any(|l| {
                l["request_id"] == id.as_str()
                    && l["message"] == "the client did not send the request body in time"
                    && l["data"]["received_bytes"] == 50
            });
            assert!(said, "{id}: {:#?}", s.out.lines());
            tokio::time::sleep(Duration::from_millis(20)).await;
            assert_eq!(s.access_lines(&id), 1, "{id}");
            let after = counts(&s.obs);
            let key = (path.to_owned(), "4xx".to_owned());
            let added = after.get(&key).unwrap_or(&0.0) - before.get(&key).unwrap_or(&0.0);
            assert_eq!(added, 1.0, "{id}: {after:?}");
        }
    }
}

/// Without a body timeout, the request timeout (`REQUEST_TIMEOUT_S`) is what stops waiting for
/// a client that stalls its upload. The handler was waiting for the client's bytes: answered
/// as a body timeout would (408 `timeout`, retryable, `connection: close`, the bytes in
/// `details`), logged at info as the client's doing and counted a `4xx`, not a 504 at
/// `error` that pages on-call. A handler that had its whole body, or had given up reading
/// it, and was still computing when the timeout fired gets the 504 at `error`.
#[tokio::test(flavor = "current_thread")]
async fn a_stalled_upload_under_the_request_timeout_is_the_clients_408() {
    let obs = observability(300);
    let app = routes()
        .route(
            "/digest",
            post(|body: Bytes| async move {
                tokio::time::sleep(Duration::from_secs(30)).await;
                body.len().to_string()
            }),
        )
        .route(
            "/peek",
            post(|body: axum::body::Body| async move {
                // Gives up on the body (dropping it), then computes.
                let _ = tokio::time::timeout(Duration::from_millis(50), body.collect()).await;
                tokio::time::sleep(Duration::from_secs(30)).await;
                "done"
            }),
        )
        .layer(obs.layer());
    let s = serve(obs, app).await;
    let of = |id: &str| -> Vec<Value> {
        (s.out.lines().into_iter())
            .filter(|line| line["request_id"] == id)
            .collect()
    };
    for path in ["/upload", "/json"] {
        let id = format!("stalled-request-timeout{}", path.replace('/', "-"));
        let before = counts(&s.obs);
        let (error, line) = stalled_408(&s, path, &id).await;
        assert_eq!(error["details"]["expected_bytes"], 100, "{id}: {error}");
        // Every 4xx's access line is at warn: nothing at error pages anyone.
        assert_eq!(line["level"], "warn", "{id}: {line}");
        tokio::time::sleep(Duration::from_millis(20)).await;
        let lines = of(&id);
        // The error layer's own line, at info, with the bytes that came.
        let said: Vec<_> = (lines.iter())
            .filter(|l| l["message"] == "the client did not send the request body in time")
            .collect();
        assert_eq!(said.len(), 1, "{id}: {lines:#?}");
        assert_eq!(said[0]["level"], "info", "{id}: {lines:#?}");
        assert_eq!(said[0]["data"]["received_bytes"], 50, "{id}: {lines:#?}");
        assert!(
            lines.iter().all(|l| l["level"] != "error"),
            "{id}: {lines:#?}"
        );
        assert_eq!(s.access_lines(&id), 1, "{id}");
        let after = counts(&s.obs);
        let key = (path.to_owned(), "4xx".to_owned());
        let added = after.get(&key).unwrap_or(&0.0) - before.get(&key).unwrap_or(&0.0);
        assert_eq!(added, 1.0, "{id}: {after:?}");
        let key = (path.to_owned(), "5xx".to_owned());
        assert_eq!(after.get(&key), before.get(&key), "{id}: {after:?}");
    }

    // The whole body came, or the handler stopped reading it: the service was computing.
    let whole = format!(
        "POST /digest HTTP/1.1\r\nhost: a\r\nx-request-id: computing-digest\r\n\
         connection: close\r\ncontent-length: 100\r\n\r\n{}",
        "x".repeat(100)
    );
    for (id, request) in [
        ("computing-digest", whole),
        (
            "computing-peek",
            stalled_upload("/peek", "computing-peek", "connection: close\r\n"),
        ),
    ] {
        let before = counts(&s.obs);
        let answer = raw(s.addr, &request).await;
        assert!(answer.starts_with("HTTP/1.1 504 "), "{id}: {answer}");
        let (_, body) = answer.split_once("\r\n\r\n").unwrap();
        let envelope: Value = serde_json::from_str(body).unwrap();
        assert_eq!(envelope["error"]["code"], "timeout", "{id}: {envelope}");
        assert!(
            envelope["error"].get("details").is_none(),
            "{id}: {envelope}"
        );
        let line = s.access_line(id).await;
        assert_eq!(line["data"]["status"], 504, "{id}: {line}");
        assert_eq!(line["level"], "error", "{id}: {line}");
        tokio::time::sleep(Duration::from_millis(20)).await;
        let lines = of(id);
        let timed_out = (lines.iter()).any(|l| {
            l["level"] == "warn"
                && l["message"]
                    .as_str()
                    .unwrap()
                    .starts_with("request timed out")
        });
        assert!(timed_out, "{id}: {lines:#?}");
        let route = id.replace("computing-", "/");
        let after = counts(&s.obs);
        let key = (route, "5xx".to_owned());
        let added = after.get(&key).unwrap_or(&0.0) - before.get(&key).unwrap_or(&0.0);
        assert_eq!(added, 1.0, "{id}: {after:?}");
    }
}

/// tower-http's `CorsLayer` outside `obs.layer()` (docs/ordering.md): every answer has its
/// headers, the envelopes of a panic and a timeout included, and exposes `x-request-id` to the
/// browser; preflights are answered by CORS alone, never reaching periscope.
#[tokio::test(flavor = "current_thread")]
async fn cors_outside_gives_every_answer_its_headers() {
    use tower_http::cors::{Any, CorsLayer};

    let cors = CorsLayer::new()
        .allow_origin(Any)
        .allow_methods([http::Method::GET, http::Method::POST])
        .expose_headers([http::HeaderName::from_static("x-request-id")]);
    let obs = observability(200);
    let app = routes().layer(obs.layer()).layer(cors);
    let s = serve(obs, app).await;
    let origin = [("origin", "https://app.example.com")];
    for (id, path, want) in [
        ("cors-ok", "/ok", want(200, None, Some("/ok"))),
        (
            "cors-panic",
            "/panic",
            want(500, Some("internal_error"), Some("/panic")),
        ),
        (
            "cors-timeout",
            "/slow",
            want(504, Some("timeout"), Some("/slow")),
        ),
        (
            "cors-404",
            "/nope",
            want(404, Some("route_not_found"), None),
        ),
    ] {
        let (reply, _) = s.check(id, ("GET", path), &origin, b"", want).await;
        assert_eq!(
            reply.header("access-control-allow-origin"),
            Some("*"),
            "{id}"
        );
        assert_eq!(
            reply.header("access-control-expose-headers"),
            Some("x-request-id"),
            "{id}"
        );
    }
    let preflight = [
        ("origin", "https://app.example.com"),
        ("access-control-request-method", "POST"),
    ];
    let reply = send(s.addr, "OPTIONS", "/json", "preflight", &preflight, b"").await;
    assert_eq!(reply.status, 200);
    assert_eq!(reply.header("access-control-allow-origin"), Some("*"));
    assert_eq!(reply.header("x-request-id"), None);
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert_eq!(s.access_lines("preflight"), 0);
}

/// A concurrency limit inside the stack. Shedding (the documented recipe, in one
/// `Router::layer` with `obs.layer()`): the shed request is a 503 envelope counted under its
/// route. Queueing, in a `Router::layer` of its own before `obs.layer()`: the wait for a
/// permit happens inside periscope's stack, so the request timeout bounds it (a 504 envelope)
/// and its duration covers it.
#[tokio::test(flavor = "current_thread")]
async fn a_shed_request_is_an_envelope_and_a_queued_one_is_timed() {
    use tower::ServiceBuilder;
    use tower::limit::GlobalConcurrencyLimitLayer;

    let gate = Arc::new(tokio::sync::Semaphore::new(0));
    let obs = Observability::builder().build().unwrap();
    let shedding = ServiceBuilder::new()
        .layer(obs.layer())
        .load_shed()
        .layer(GlobalConcurrencyLimitLayer::new(1));
    let s = serve(obs, api(gate.clone()).layer(shedding)).await;
    let addr = s.addr;
    let held = tokio::spawn(async move { send(addr, "GET", "/held", "held", &[], b"").await });
    while s.obs.in_flight() == 0 {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let shed = want(503, Some("service_unavailable"), Some("/ok"));
    s.check("shed", ("GET", "/ok"), &[], b"", shed).await;
    gate.add_permits(1);
    assert_eq!(held.await.unwrap().status, 200);
    drop(s);

    let obs = observability(300);
    let queueing = api(gate.clone()).layer(GlobalConcurrencyLimitLayer::new(1));
    let app = queueing.layer(obs.layer());
    let s = serve(obs, app).await;
    let addr = s.addr;
    let held = tokio::spawn(async move { send(addr, "GET", "/held", "held", &[], b"").await });
    // The held request has the permit (it waits at the gate) before the next one comes.
    while s.obs.in_flight() == 0 {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    // Waits for the held request's permit (until its 504), then at the gate: its own 504 comes
    // 300 ms after it reached periscope, the wait included (not 300 ms after the permit).
    let started = Instant::now();
    let queued = send(addr, "GET", "/held", "queued", &[], b"").await;
    let waited = started.elapsed();
    assert_eq!(held.await.unwrap().status, 504);
    assert_eq!(queued.status, 504);
    assert_eq!(queued.header("x-request-id"), Some("queued"));
    let deadline = Instant::now() + Duration::from_secs(5);
    let line = loop {
        let found = (s.out.lines().into_iter())
            .find(|l| l["target"] == "periscope::access" && l["request_id"] == "queued");
        if let Some(line) = found {
            break line;
        }
        assert!(
            Instant::now() < deadline,
            "no access line for the queued request"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    let timed = Duration::from_secs_f64(line["data"]["duration_ms"].as_f64().unwrap() / 1e3);
    assert!(timed >= Duration::from_millis(300), "{line}");
    // Timed apart from the wait, its answer would come some 300 ms later than its duration.
    assert!(
        waited < timed + Duration::from_millis(250),
        "{waited:?}: {line}"
    );
}

/// A streamed body that fails after its head: the client gets the status and the frames sent,
/// the access line says `aborted` at `error` with the body's error, counted under its status.
#[tokio::test(flavor = "current_thread")]
async fn a_stream_that_fails_midway_is_logged_with_its_error() {
    let obs = observability(1000);
    let app = routes().layer(obs.layer());
    let s = serve(obs, app).await;
    let (reply, line) = s
        .check(
            "stream",
            ("GET", "/stream"),
            &[],
            b"",
            want(200, None, Some("/stream")),
        )
        .await;
    assert_eq!(reply.body, "first token\n");
    assert!(reply.body_error.is_some());
    assert_eq!(line["level"], "error", "{line}");
    assert_eq!(line["data"]["aborted"], true, "{line}");
    assert_eq!(line["data"]["bytes_out"], 12, "{line}");
    assert_eq!(
        line["data"]["error"]["message"],
        "the model server went away"
    );
}

/// A layer that must run before routing (tower-http's `NormalizePathLayer`) wraps the router
/// that has `obs.layer()`: the route stays known. `obs.layer()` itself wrapping the router runs
/// before routing: every request counts under `__unmatched__`, without a route.
#[tokio::test(flavor = "current_thread")]
async fn a_layer_wrapping_the_router_leaves_the_route_to_the_stack_inside() {
    use tower::Layer;
    use tower_http::normalize_path::NormalizePathLayer;

    let obs = observability(1000);
    let normalized = NormalizePathLayer::trim_trailing_slash().layer(routes().layer(obs.layer()));
    let s = serve_service(obs, normalized).await;
    let item = want(200, None, Some("/items/{id}"));
    s.check("normalized", ("GET", "/items/5/"), &[], b"", item)
        .await;
    drop(s);

    let obs = observability(1000);
    let wrapped = obs.layer().layer(routes());
    let s = serve_service(obs, wrapped).await;
    let unmatched = want(200, None, None);
    s.check("wrapped", ("GET", "/items/5"), &[], b"", unmatched)
        .await;
}
