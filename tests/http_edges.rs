//! Odd but legal (and some illegal) HTTP/1.x requests through the whole stack (`obs.layer()` on
//! an axum router, with a request timeout), served by `periscope::Server` and by `axum::serve`
//! on 127.0.0.1, from a raw client that writes the bytes itself: what scanners, proxies and old
//! clients send. For each, what the client gets (status, `x-request-id`, the envelope where one
//! is due), the access line (parsed back: one per request, its request id, every field
//! bounded, no raw control byte), the counts (`route` one of the templates or
//! `__unmatched__`, `method` standard or `_OTHER`) and the server span (closed, its
//! `url.path` bounded). docs/ordering.md ("Odd requests") says what a service can rely on.

#![cfg(all(feature = "axum", feature = "serve"))]

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::Duration;

use axum::Router;
use axum::extract::Path;
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use bytes::Bytes;
use http_body_util::BodyExt;
use periscope::Observability;
use periscope::error::{HttpError, codes};
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

// Shared with the other test binaries; this one installs its own subscriber.
#[allow(dead_code)]
mod capture;
use capture::{Captured, OpenSpans};
#[allow(dead_code)]
mod recorded;
use recorded::{SERVERS, Serve, Spans, counted, eventually, record_counting_open};

/// The request timeout of every stack here.
const REQUEST_TIMEOUT: Duration = Duration::from_millis(300);

/// Every route of [`app`]: the only `route` label values a request may count under, with
/// `__unmatched__`.
const TEMPLATES: [&str; 6] = [
    "/v1/items/{id}",
    "/v1/stream",
    "/v1/upload",
    "/v1/bytes",
    "/v1/guarded",
    "/v1/ignore",
];

/// The largest upload `/v1/guarded` takes.
const GUARDED_LIMIT: u64 = 1024;

/// `/v1/items/{id}`: `{"id": id}` with a `Content-Length`. `/v1/stream`: `one two three`,
/// streamed (no length). `/v1/upload`: reads the body, answers its length and trailers.
/// `/v1/bytes`: reads it with axum's `Bytes` extractor, answers its length.
/// `/v1/guarded`: refuses before reading, 401 without `authorization`, 413 over
/// [`GUARDED_LIMIT`] by its `Content-Length`, else reads. `/v1/ignore`: never reads the body
/// and takes longer than the request timeout.
fn app(obs: &Observability) -> Router {
    let stream = || async {
        let chunks = ["one ", "two ", "three"].map(|c| Ok::<_, std::io::Error>(Bytes::from(c)));
        axum::body::Body::from_stream(futures_util::stream::iter(chunks))
    };
    Router::new()
        .route(
            "/v1/items/{id}",
            get(
                |Path(id): Path<String>| async move { axum::Json(serde_json::json!({ "id": id })) },
            ),
        )
        .route("/v1/stream", get(stream))
        .route("/v1/upload", post(upload))
        .route(
            "/v1/bytes",
            post(|body: Bytes| async move { format!("got {}", body.len()) }),
        )
        .route("/v1/guarded", post(guarded))
        .route(
            "/v1/ignore",
            post(|| async {
                tokio::time::sleep(Duration::from_secs(30)).await;
                "too late"
            }),
        )
        .layer(obs.layer())
}

async fn upload(body: axum::body::Body) -> Response {
    let collected = match body.collect().await {
        Ok(collected) => collected,
        Err(error) => {
            return HttpError::new(codes::INVALID_REQUEST, error.to_string()).into_response();
        }
    };
    let trailers = collected.trailers().map_or(String::new(), |trailers| {
        let mut names: Vec<_> = trailers
            .iter()
            .map(|(name, value)| format!("{name}={}", value.to_str().unwrap_or("?")))
            .collect();
        names.sort();
        names.join(",")
    });
    let bytes = collected.to_bytes();
    format!("got {} [{trailers}]", bytes.len()).into_response()
}

async fn guarded(headers: HeaderMap, body: axum::body::Body) -> Response {
    if !headers.contains_key("authorization") {
        return HttpError::new(codes::TOKEN_MISSING, "Sign in first").into_response();
    }
    let length = periscope::context::content_length(&headers).unwrap_or(0);
    if length > GUARDED_LIMIT {
        return HttpError::new(codes::PAYLOAD_TOO_LARGE, "At most 1 KiB").into_response();
    }
    upload(body).await
}

/// The app served on 127.0.0.1, with what it logs (access lines at debug too), the spans it
/// opens and how many request spans are open, on this thread while it lives.
struct Served {
    addr: SocketAddr,
    server: Serve,
    obs: Observability,
    out: Captured,
    spans: Spans,
    open: OpenSpans,
    _log: periscope::log::LogGuard,
    _default: tracing::subscriber::DefaultGuard,
}

async fn serve(server: Serve) -> Served {
    let (out, spans, open, log, default) = record_counting_open();
    let obs = Observability::builder()
        .request_timeout(REQUEST_TIMEOUT)
        .build()
        .unwrap();
    let addr = server.spawn(app(&obs)).await;
    Served {
        addr,
        server,
        obs,
        out,
        spans,
        open,
        _log: log,
        _default: default,
    }
}

/// A response as it came over the wire.
#[derive(Debug)]
struct Reply {
    version: String,
    status: u16,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Reply {
    fn header(&self, name: &str) -> Option<&str> {
        (self.headers.iter())
            .find(|(n, _)| n == name)
            .map(|(_, value)| value.as_str())
    }

    /// The error envelope: the status, JSON, and the request id in the header and the body.
    fn envelope(&self, status: u16, code: &str, request_id: &str) -> Value {
        assert_eq!(self.status, status, "{self:?}");
        assert_eq!(self.header("content-type"), Some("application/json"));
        assert_eq!(self.header("x-request-id"), Some(request_id), "{self:?}");
        let envelope: Value = serde_json::from_slice(&self.body).unwrap();
        assert_eq!(envelope["error"]["code"], code, "{envelope}");
        assert_eq!(envelope["error"]["request_id"], request_id, "{envelope}");
        envelope
    }

    fn text(&self) -> &str {
        std::str::from_utf8(&self.body).unwrap()
    }
}

/// A connection written and read byte for byte.
struct Conn {
    stream: TcpStream,
    /// Read and not yet taken.
    buffer: Vec<u8>,
}

/// How long any read may wait.
const READ_WAIT: Duration = Duration::from_secs(10);

impl Conn {
    async fn open(addr: SocketAddr) -> Self {
        Self {
            stream: TcpStream::connect(addr).await.unwrap(),
            buffer: Vec::new(),
        }
    }

    async fn send(&mut self, bytes: impl AsRef<[u8]>) {
        self.stream.write_all(bytes.as_ref()).await.unwrap();
    }

    /// Reads more into the buffer; `false` when the server closed the connection.
    async fn fill(&mut self) -> bool {
        let mut chunk = [0; 16 * 1024];
        match tokio::time::timeout(READ_WAIT, self.stream.read(&mut chunk)).await {
            Err(_) => panic!("nothing within {READ_WAIT:?} after {:?}", self.buffer),
            Ok(Ok(0) | Err(_)) => false,
            Ok(Ok(n)) => {
                self.buffer.extend_from_slice(&chunk[..n]);
                true
            }
        }
    }

    async fn take(&mut self, n: usize) -> Vec<u8> {
        while self.buffer.len() < n {
            assert!(self.fill().await, "closed after {:?}", self.buffer);
        }
        self.buffer.drain(..n).collect()
    }

    async fn line(&mut self) -> String {
        loop {
            if let Some(at) = self.buffer.windows(2).position(|w| w == b"\r\n") {
                let line = self.take(at + 2).await;
                return String::from_utf8(line[..at].to_vec()).unwrap();
            }
            assert!(self.fill().await, "closed after {:?}", self.buffer);
        }
    }

    /// The next response; its body as its head frames it (none for an answer to `HEAD`, a
    /// 1xx, 204 or 304; `Content-Length`, chunked, or up to the close).
    async fn response(&mut self, to_head: bool) -> Reply {
        let status_line = self.line().await;
        let mut parts = status_line.splitn(3, ' ');
        let version = parts.next().unwrap().to_owned();
        let status: u16 = parts.next().unwrap().parse().unwrap();
        let mut headers = Vec::new();
        loop {
            let line = self.line().await;
            if line.is_empty() {
                break;
            }
            let (name, value) = line.split_once(':').unwrap();
            headers.push((name.to_ascii_lowercase(), value.trim().to_owned()));
        }
        let mut reply = Reply {
            version,
            status,
            headers,
            body: Vec::new(),
        };
        if to_head || matches!(status, 100..=199 | 204 | 304) {
            return reply;
        }
        if let Some(length) = reply.header("content-length") {
            reply.body = self.take(length.parse().unwrap()).await;
        } else if reply.header("transfer-encoding") == Some("chunked") {
            loop {
                let size = usize::from_str_radix(&self.line().await, 16).unwrap();
                let chunk = self.take(size).await;
                reply.body.extend(chunk);
                assert_eq!(self.line().await, "");
                if size == 0 {
                    break;
                }
            }
        } else {
            while self.fill().await {}
            reply.body = std::mem::take(&mut self.buffer);
        }
        reply
    }

    /// Whether the server closes the connection with nothing more to read.
    async fn closed(&mut self) -> bool {
        assert!(self.buffer.is_empty(), "unread: {:?}", self.buffer);
        !self.fill().await && self.buffer.is_empty()
    }
}

/// `bytes` on a new connection; the answer to it.
async fn exchange(addr: SocketAddr, bytes: impl AsRef<[u8]>) -> (Conn, Reply) {
    let mut conn = Conn::open(addr).await;
    conn.send(bytes).await;
    let reply = conn.response(false).await;
    (conn, reply)
}

/// `method target` with `x-request-id: id`, without a body.
fn request(method: &str, target: &str, id: &str) -> String {
    format!("{method} {target} HTTP/1.1\r\nhost: t\r\nx-request-id: {id}\r\n\r\n")
}

/// `test` against the app served by each server, then what every request must leave there
/// ([`Served::check_bounded`]).
async fn on_each_server(test: impl AsyncFn(&Served)) {
    for server in SERVERS {
        let s = serve(server).await;
        test(&s).await;
        s.check_bounded().await;
    }
}

/// A plain `GET` of an item on a connection that must still serve requests: its answer
/// starts right where the last one ended (no stray body bytes in between).
async fn still_serves(conn: &mut Conn, id: &str) {
    conn.send(request("GET", "/v1/items/next", id)).await;
    let reply = conn.response(false).await;
    assert_eq!(reply.status, 200, "{reply:?}");
    assert_eq!(reply.header("x-request-id"), Some(id));
    assert_eq!(reply.text(), r#"{"id":"next"}"#);
}

/// The longest string a log line holds: the log layer's value bound (16 KiB) and its
/// truncation marker.
const MAX_LOGGED: usize = 16 * 1024 + 64;

impl Served {
    fn lines(&self) -> Vec<Value> {
        self.out.lines()
    }

    /// The one access line of `id`, once it is written (within 10 s).
    async fn access(&self, id: &str) -> Value {
        let of = |l: &&Value| l["target"] == "periscope::access" && l["request_id"] == id;
        eventually(&format!("{:?} {id}: the access line", self.server), || {
            self.lines().iter().find(of).cloned()
        })
        .await;
        let lines: Vec<_> = self.lines().iter().filter(of).cloned().collect();
        assert_eq!(lines.len(), 1, "{id}: {lines:#?}");
        lines.into_iter().next().unwrap()
    }

    /// No line at all names `id`: the service never saw the request.
    fn unseen(&self, id: &str) {
        let lines = self.lines();
        assert!(
            !lines.iter().any(|l| l.to_string().contains(id)),
            "{id}: {lines:#?}"
        );
    }

    /// `http_server_requests_total` summed over the series matching `labels`.
    fn counted(&self, labels: &[(&str, &str)]) -> f64 {
        let exposition = self.obs.registry().encode_prometheus().unwrap();
        counted(&exposition, "http_server_requests_total", labels)
    }

    /// The server span of `id`, closed.
    fn span(&self, id: &str) -> HashMap<&'static str, String> {
        let spans = self.spans.of("http_request", id);
        assert_eq!(spans.len(), 1, "{id}: {spans:#?}");
        spans.into_iter().next().unwrap()
    }

    /// The server's warning about requests it turned away before the service saw them.
    fn rejection_warning(&self) -> Option<Value> {
        (self.lines().into_iter()).find(|l| {
            l["level"] == "warn"
                && (l["message"].as_str()).is_some_and(|m| m.starts_with("connections the server"))
        })
    }

    /// What every request must leave, whatever it was: each log line one JSON object of
    /// UTF-8 with no raw control byte; each access line with a valid request id and strings
    /// within the log's bound; every count under a template or `__unmatched__` and a standard
    /// method or `_OTHER`; every server span closed, its path and route bounded; nothing in
    /// flight.
    async fn check_bounded(&self) {
        eventually("every span closed, nothing in flight", || {
            (self.open.count() == 0 && self.obs.in_flight() == 0).then_some(())
        })
        .await;
        let raw = self.out.bytes();
        assert!(std::str::from_utf8(&raw).is_ok());
        assert!(
            raw.iter().all(|&b| b >= 0x20 || b == b'\n'),
            "a raw control byte in the log"
        );
        for line in self.lines() {
            if line["target"] != "periscope::access" {
                continue;
            }
            let id = line["request_id"].as_str().unwrap();
            assert!(
                (1..=128).contains(&id.len())
                    && id
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b"-_.:".contains(&b)),
                "{line}"
            );
            for (name, value) in line["data"].as_object().unwrap() {
                if let Some(text) = value.as_str() {
                    assert!(text.len() <= MAX_LOGGED, "{name}: {} bytes", text.len());
                }
            }
        }
        let exposition = self.obs.registry().encode_prometheus().unwrap();
        let parsed = openmetrics_parser::prometheus::parse_prometheus(&exposition).unwrap();
        let methods = [
            "GET", "HEAD", "POST", "PUT", "DELETE", "CONNECT", "OPTIONS", "TRACE", "PATCH",
            "_OTHER",
        ];
        for (name, family) in &parsed.families {
            if !name.starts_with("http_server_") {
                continue;
            }
            for sample in family.iter_samples() {
                let labels = sample.get_labelset().unwrap();
                if let Some(route) = labels.get_label_value("route") {
                    assert!(
                        TEMPLATES.contains(&route) || route == "__unmatched__",
                        "{name}: route {route}"
                    );
                }
                if let Some(method) = labels.get_label_value("method") {
                    assert!(methods.contains(&method), "{name}: method {method}");
                }
            }
        }
        for span in self.spans.named("http_request") {
            let path = span.get("url.path").map_or(0, String::len);
            assert!(path <= periscope::trace::MAX_URL_PATH_LEN, "{path}");
            let method = span
                .get("http.request.method_original")
                .map_or(0, String::len);
            assert!(
                method <= periscope::trace::MAX_METHOD_ORIGINAL_LEN,
                "{method}"
            );
            if let Some(route) = span.get("http.route") {
                assert!(TEMPLATES.contains(&route.as_str()), "{route}");
            }
        }
    }
}

/// `HEAD` of a route whose `GET` has a body gets the `GET`'s head, its `Content-Length`
/// included, and no body byte: the connection's next answer starts right after the head. A
/// streamed body's `HEAD` has neither a length nor chunking; a `HEAD` that no route matches
/// gets the envelope's head. Each is one access line (`bytes_out: 0`), counted once under
/// `HEAD`, its span closed.
#[tokio::test(flavor = "current_thread")]
async fn head_gets_the_heads_of_get_without_their_bodies() {
    on_each_server(async |s| {
        let (mut conn, get) = exchange(s.addr, request("GET", "/v1/items/7", "get-7")).await;
        assert_eq!(get.text(), r#"{"id":"7"}"#);
        conn.send(request("HEAD", "/v1/items/7", "head-7")).await;
        let head = conn.response(true).await;
        assert_eq!(head.status, 200);
        assert_eq!(head.header("x-request-id"), Some("head-7"));
        assert_eq!(head.header("content-length"), get.header("content-length"));
        assert_eq!(head.header("content-type"), Some("application/json"));
        still_serves(&mut conn, "after-head-7").await;

        conn.send(request("HEAD", "/v1/stream", "head-stream"))
            .await;
        let head = conn.response(true).await;
        assert_eq!(head.status, 200);
        assert_eq!(head.header("x-request-id"), Some("head-stream"));
        assert_eq!(head.header("content-length"), None, "{head:?}");
        assert_eq!(head.header("transfer-encoding"), None, "{head:?}");
        still_serves(&mut conn, "after-head-stream").await;

        conn.send(request("HEAD", "/nowhere", "head-404")).await;
        let head = conn.response(true).await;
        assert_eq!(head.status, 404);
        assert_eq!(head.header("x-request-id"), Some("head-404"));
        assert_eq!(head.header("content-type"), Some("application/json"));
        assert!(
            head.header("content-length")
                .unwrap()
                .parse::<u32>()
                .unwrap()
                > 0
        );
        still_serves(&mut conn, "after-head-404").await;

        for (id, status, route) in [
            ("head-7", 200, Some("/v1/items/{id}")),
            ("head-stream", 200, Some("/v1/stream")),
            ("head-404", 404, None),
        ] {
            let line = s.access(id).await;
            assert_eq!(line["data"]["method"], "HEAD", "{line}");
            assert_eq!(line["data"]["status"], status, "{line}");
            assert_eq!(line["data"]["bytes_out"], 0, "{line}");
            assert_eq!(line["data"]["route"].as_str(), route, "{line}");
            assert_eq!(line["data"].get("aborted"), None, "{line}");
            let span = s.span(id);
            assert_eq!(span["http.request.method"], "HEAD");
        }
        assert_eq!(s.counted(&[("method", "HEAD")]), 3.0, "{:?}", s.server);
        let unmatched = [("method", "HEAD"), ("route", "__unmatched__")];
        assert_eq!(s.counted(&unmatched), 1.0);
    })
    .await;
}

/// `Expect: 100-continue` uploads, with a client that waits for `100 Continue` before its
/// body. A handler that reads gets the body once hyper has asked for it. One that refuses
/// first (401, 413 by the declared length) answers at once with the envelope: no `100` is
/// sent, so the client never sends the body, and the server then closes the connection
/// (hyper does, the body being unread). One that never reads: the request timeout's 504
/// `timeout`, the service's time (the client rightly held its body back), not the client's
/// 408: that one is for a handler left waiting on a client that stalls after the `100`.
#[tokio::test(flavor = "current_thread")]
async fn expect_continue_uploads_are_asked_for_only_when_read() {
    let head = |path: &str, id: &str, extra: &str, length: u64| {
        format!(
            "POST {path} HTTP/1.1\r\nhost: t\r\nexpect: 100-continue\r\n{extra}\
             content-length: {length}\r\nx-request-id: {id}\r\n\r\n"
        )
    };
    on_each_server(async |s| {
        let mut conn = Conn::open(s.addr).await;
        conn.send(head("/v1/upload", "continue-read", "", 5)).await;
        let interim = conn.response(false).await;
        assert_eq!(interim.status, 100, "{interim:?}");
        conn.send("hello").await;
        let done = conn.response(false).await;
        assert_eq!(done.status, 200);
        assert_eq!(done.header("x-request-id"), Some("continue-read"));
        assert_eq!(done.text(), "got 5 []");
        still_serves(&mut conn, "after-continue-read").await;

        let auth = "authorization: Bearer t\r\n";
        for (id, extra, length, status, code) in [
            ("continue-401", "", 5, 401, "token_missing"),
            ("continue-413", auth, 5000, 413, "payload_too_large"),
        ] {
            let (mut conn, reply) = exchange(s.addr, head("/v1/guarded", id, extra, length)).await;
            // The final answer first: the client was not asked for the body.
            reply.envelope(status, code, id);
            assert!(conn.closed().await, "{id}");
            let line = s.access(id).await;
            assert_eq!(line["data"]["status"], status, "{line}");
            assert_eq!(line["data"]["error_code"], code, "{line}");
        }

        let (mut conn, reply) =
            exchange(s.addr, head("/v1/ignore", "continue-ignored", "", 5)).await;
        let envelope = reply.envelope(504, "timeout", "continue-ignored");
        assert_eq!(envelope["error"].get("details"), None, "{envelope}");
        assert_eq!(reply.header("connection"), Some("close"));
        assert!(conn.closed().await);
        let line = s.access("continue-ignored").await;
        assert_eq!(line["data"]["status"], 504, "{line}");
        assert_eq!(line["level"], "error", "{line}");

        // The handler reads, the `100` comes, and the client sends nothing.
        let mut conn = Conn::open(s.addr).await;
        conn.send(head("/v1/upload", "continue-stalled", "", 5))
            .await;
        assert_eq!(conn.response(false).await.status, 100);
        let reply = conn.response(false).await;
        let envelope = reply.envelope(408, "timeout", "continue-stalled");
        assert_eq!(envelope["error"]["details"]["received_bytes"], 0);
        assert_eq!(envelope["error"]["details"]["expected_bytes"], 5);
        assert!(conn.closed().await);

        let posts = [("method", "POST")];
        assert_eq!(s.counted(&posts), 5.0, "{:?}", s.server);
        let failed = [("route", "/v1/ignore"), ("status", "5xx")];
        assert_eq!(s.counted(&failed), 1.0);
        let refused = [("method", "POST"), ("status", "4xx")];
        assert_eq!(s.counted(&refused), 3.0);
    })
    .await;
}

/// HTTP/1.0, without `Host`: answered in HTTP/1.0 and closed after the answer, unless the
/// client asked for `Connection: keep-alive` (then the answer says so and the next request
/// is served). A streamed body, which HTTP/1.0 cannot chunk, is sent up to the close. Each
/// request has its own id and access line.
#[tokio::test(flavor = "current_thread")]
async fn http_1_0_requests_are_answered_in_kind() {
    on_each_server(async |s| {
        let (mut conn, reply) = exchange(
            s.addr,
            "GET /v1/items/7 HTTP/1.0\r\nx-request-id: old-plain\r\n\r\n",
        )
        .await;
        assert_eq!((reply.version.as_str(), reply.status), ("HTTP/1.0", 200));
        assert_eq!(reply.header("x-request-id"), Some("old-plain"));
        assert_eq!(reply.text(), r#"{"id":"7"}"#);
        assert!(conn.closed().await);

        let (mut conn, reply) = exchange(
            s.addr,
            "GET /v1/items/1 HTTP/1.0\r\nconnection: keep-alive\r\nx-request-id: old-kept\r\n\r\n",
        )
        .await;
        assert_eq!(reply.header("connection"), Some("keep-alive"));
        conn.send("GET /v1/items/2 HTTP/1.0\r\nx-request-id: old-second\r\n\r\n")
            .await;
        let second = conn.response(false).await;
        assert_eq!(second.header("x-request-id"), Some("old-second"));
        assert_eq!(second.text(), r#"{"id":"2"}"#);
        assert!(conn.closed().await);

        let (_, reply) = exchange(
            s.addr,
            "GET /v1/stream HTTP/1.0\r\nx-request-id: old-stream\r\n\r\n",
        )
        .await;
        assert_eq!(reply.header("transfer-encoding"), None);
        assert_eq!(reply.header("content-length"), None);
        assert_eq!(reply.text(), "one two three");

        for (id, path, bytes) in [
            ("old-plain", "/v1/items/7", 10),
            ("old-kept", "/v1/items/1", 10),
            ("old-second", "/v1/items/2", 10),
            ("old-stream", "/v1/stream", 13),
        ] {
            let line = s.access(id).await;
            assert_eq!(line["data"]["path"], path, "{line}");
            assert_eq!(line["data"]["status"], 200, "{line}");
            assert_eq!(line["data"]["bytes_out"], bytes, "{line}");
            s.span(id);
        }
        assert_eq!(s.counted(&[("status", "2xx")]), 4.0);
    })
    .await;
}

/// Requests pipelined in one write (the first with a body its handler leaves unread, which
/// hyper reads off to find the next head) are answered in order, each with its own
/// `x-request-id`, access line and span, generated ids included; `Connection: close` on the
/// last ends the connection after its answer.
#[tokio::test(flavor = "current_thread")]
async fn pipelined_requests_keep_their_own_ids() {
    on_each_server(async |s| {
        let (mut conn, first) = exchange(
            s.addr,
            "POST /v1/guarded HTTP/1.1\r\nhost: t\r\ncontent-length: 5\r\nx-request-id: pipe-1\r\n\r\nhello\
             GET /v1/items/2 HTTP/1.1\r\nhost: t\r\nx-request-id: pipe-2\r\n\r\n\
             GET /v1/items/3 HTTP/1.1\r\nhost: t\r\n\r\n\
             GET /v1/items/4 HTTP/1.1\r\nhost: t\r\nconnection: close\r\n\r\n",
        )
        .await;
        first.envelope(401, "token_missing", "pipe-1");
        let second = conn.response(false).await;
        assert_eq!(second.header("x-request-id"), Some("pipe-2"));
        assert_eq!(second.text(), r#"{"id":"2"}"#);
        let mut generated = Vec::new();
        for n in 3..=4 {
            let reply = conn.response(false).await;
            assert_eq!(reply.text(), format!(r#"{{"id":"{n}"}}"#));
            let id = reply.header("x-request-id").unwrap().to_owned();
            assert!(id.starts_with("req_"), "{id}");
            let close = (n == 4).then_some("close");
            assert_eq!(reply.header("connection"), close, "{reply:?}");
            generated.push((id, format!("/v1/items/{n}")));
        }
        assert_ne!(generated[0].0, generated[1].0);
        assert!(conn.closed().await);

        let mut expected = vec![
            ("pipe-1".to_owned(), "/v1/guarded".to_owned()),
            ("pipe-2".to_owned(), "/v1/items/2".to_owned()),
        ];
        expected.extend(generated);
        for (id, path) in &expected {
            let line = s.access(id).await;
            assert_eq!(line["data"]["path"], *path, "{line}");
            assert_eq!(s.span(id)["url.path"], *path);
        }
        assert_eq!(s.counted(&[]), 4.0);
    })
    .await;
}

/// Request targets in the forms other than a path: absolute (`GET http://example.com/..`,
/// what a client talking to a proxy sends) is routed by its path, its scheme the span's
/// `url.scheme` (`http` or `https` only); asterisk (`OPTIONS *`) and authority
/// (`CONNECT example.com:443`) match no route: the 404 envelope, counted under
/// `__unmatched__`, the access line's `path` `*` and empty; the `CONNECT`, refused, is not a
/// tunnel: the connection serves the next request.
#[tokio::test(flavor = "current_thread")]
async fn request_targets_in_every_form() {
    on_each_server(async |s| {
        for (id, target, scheme) in [
            ("absolute", "http://example.com/v1/items/x", "http"),
            ("absolute-https", "https://example.com/v1/items/x", "https"),
        ] {
            let (_, reply) = exchange(
                s.addr,
                format!("GET {target} HTTP/1.1\r\nhost: example.com\r\nx-request-id: {id}\r\n\r\n"),
            )
            .await;
            assert_eq!(reply.status, 200, "{id}");
            assert_eq!(reply.text(), r#"{"id":"x"}"#);
            let line = s.access(id).await;
            assert_eq!(line["data"]["path"], "/v1/items/x", "{line}");
            assert_eq!(line["data"]["route"], "/v1/items/{id}", "{line}");
            let span = s.span(id);
            assert_eq!(span["url.scheme"], scheme);
            assert_eq!(span["url.path"], "/v1/items/x");
        }

        let (_, reply) = exchange(s.addr, request("OPTIONS", "*", "asterisk")).await;
        let envelope = reply.envelope(404, "route_not_found", "asterisk");
        assert_eq!(envelope["error"]["message"], "No route matches OPTIONS *");

        let (mut conn, reply) = exchange(
            s.addr,
            "CONNECT example.com:443 HTTP/1.1\r\nhost: example.com:443\r\nx-request-id: connect\r\n\r\n",
        )
        .await;
        let envelope = reply.envelope(404, "route_not_found", "connect");
        assert_eq!(
            envelope["error"]["message"],
            "No route matches CONNECT example.com:443"
        );
        still_serves(&mut conn, "after-connect").await;

        for (id, method, path) in [("asterisk", "OPTIONS", "*"), ("connect", "CONNECT", "")] {
            let line = s.access(id).await;
            assert_eq!(line["data"]["method"], method, "{line}");
            assert_eq!(line["data"]["path"], path, "{line}");
            assert_eq!(line["data"].get("route"), None, "{line}");
            assert_eq!(s.span(id)["url.path"], path);
            let unmatched = [("method", method), ("route", "__unmatched__")];
            assert_eq!(s.counted(&unmatched), 1.0, "{id}");
        }
    })
    .await;
}

/// Paths as scanners write them, each answered by what the route makes of it and logged as
/// sent (percent-encoding kept, never the query): `%00` and `%2F` decode in the path
/// parameter only (`%2F` stays within its segment); invalid percent-encoding reaches the
/// handler as is, one that decodes to bytes that are not UTF-8 is the extractor's 400; `..`
/// segments are not resolved (no route: 404, `__unmatched__`); an 8 KiB path is served,
/// whole in the access line, cut in the span; a 16 KiB query is never logged.
#[tokio::test(flavor = "current_thread")]
async fn odd_paths_are_served_and_logged_as_sent() {
    let long = format!("/v1/items/{}", "a".repeat(8 * 1024));
    let query = format!("/v1/items/q?{}", "a=b&".repeat(4 * 1024));
    let cases = [
        ("nul", "/v1/items/a%00b", 200, Some("a\u{0}b")),
        ("slash", "/v1/items/a%2Fb", 200, Some("a/b")),
        ("bad-percent", "/v1/items/a%zzb", 200, Some("a%zzb")),
        ("not-utf8", "/v1/items/a%FFb", 400, None),
        ("dots", "/v1/items/../../etc/passwd", 404, None),
        ("long", long.as_str(), 200, None),
        ("query", query.as_str(), 200, Some("q")),
    ];
    on_each_server(async |s| {
        for (id, target, status, echoed) in cases {
            let (_, reply) = exchange(s.addr, request("GET", target, id)).await;
            assert_eq!(reply.status, status, "{id}: {reply:?}");
            assert_eq!(reply.header("x-request-id"), Some(id));
            if let Some(echoed) = echoed {
                let body: Value = serde_json::from_slice(&reply.body).unwrap();
                assert_eq!(body["id"], echoed, "{id}");
            }
            let line = s.access(id).await;
            let path = target.split('?').next().unwrap();
            assert_eq!(line["data"]["path"], path, "{id}");
            let span = s.span(id);
            let recorded = &span["url.path"];
            if path.len() <= periscope::trace::MAX_URL_PATH_LEN {
                assert_eq!(recorded, path, "{id}");
            } else {
                let kept = recorded.strip_suffix('…').unwrap();
                assert!(path.starts_with(kept), "{id}");
            }
        }
        let (_, reply) =
            exchange(s.addr, request("GET", "/v1/items/a%FFb", "not-utf8-again")).await;
        let envelope = reply.envelope(400, "invalid_request", "not-utf8-again");
        assert_eq!(
            envelope["error"]["message"],
            "Invalid URL: Invalid UTF-8 in `id`"
        );
        let unmatched = [("route", "__unmatched__"), ("status", "4xx")];
        assert_eq!(s.counted(&unmatched), 1.0);
    })
    .await;
}

/// What hyper turns away before the service sees it: no `x-request-id`, no envelope, no
/// access line, no count; `periscope::Server` warns about it (`axum::serve` says nothing).
/// A path of 64 KiB (`periscope::Server`: a head over its 64 KiB limit, 431; `axum::serve`:
/// over the URI's limit, 414), raw bytes that are not UTF-8 or are control bytes in the path,
/// an HTTP/0.9 request line, `Transfer-Encoding` that does not end in `chunked`, two
/// different `Content-Length`s.
#[tokio::test(flavor = "current_thread")]
async fn requests_hyper_refuses_never_reach_the_service() {
    let long = format!("/v1/items/{}", "a".repeat(64 * 1024));
    let with_id = |target: &str, id: &str| request("GET", target, id).into_bytes();
    let mut not_utf8 = b"GET /v1/items/a\xff\xfeb HTTP/1.1\r\nhost: t\r\n".to_vec();
    not_utf8.extend_from_slice(b"x-request-id: refused-not-utf8\r\n\r\n");
    // The id, the request, and the status from `periscope::Server` and from `axum::serve`.
    let cases: Vec<(&str, Vec<u8>, [u16; 2])> =
        vec![
        ("refused-long", with_id(&long, "refused-long"), [431, 414]),
        ("refused-not-utf8", not_utf8, [400, 400]),
        (
            "refused-control",
            with_id("/v1/items/a\x1bb", "refused-control"),
            [400, 400],
        ),
        ("refused-http09", b"GET /v1/items/7\r\n\r\n".to_vec(), [400, 400]),
        (
            "refused-te",
            b"POST /v1/upload HTTP/1.1\r\nhost: t\r\ntransfer-encoding: gzip\r\n\
              x-request-id: refused-te\r\n\r\nhello"
                .to_vec(),
            [400, 400],
        ),
        (
            "refused-lengths",
            b"POST /v1/upload HTTP/1.1\r\nhost: t\r\ncontent-length: 3\r\ncontent-length: 5\r\n\
              x-request-id: refused-lengths\r\n\r\nhello"
                .to_vec(),
            [400, 400],
        ),
    ];
    for server in SERVERS {
        for (id, bytes, statuses) in &cases {
            // A server each: its first rejection is warned about at once.
            let s = serve(server).await;
            let (mut conn, reply) = exchange(s.addr, bytes).await;
            let status = statuses[usize::from(server == Serve::Axum)];
            assert_eq!(reply.status, status, "{server:?} {id}: {reply:?}");
            assert_eq!(reply.header("x-request-id"), None, "{id}");
            assert!(reply.body.is_empty(), "{id}");
            assert!(conn.closed().await, "{id}");
            s.unseen(id);
            assert_eq!(s.counted(&[]), 0.0, "{id}");
            let warning = s.rejection_warning();
            match server {
                Serve::Periscope => {
                    let data = &warning.unwrap_or_else(|| panic!("{id}: no warning"))["data"];
                    let kind = if status == 431 {
                        "too_large"
                    } else {
                        "malformed"
                    };
                    assert_eq!(data[kind], 1, "{id}: {data}");
                }
                Serve::Axum => assert_eq!(warning, None, "{id}"),
            }
            s.check_bounded().await;
        }
    }
}

/// Methods of 1 and 100 characters, and a lower-case `get` (methods are case-sensitive):
/// the route's 405 envelope (its message quoting at most 32 bytes of the method), counted
/// under `_OTHER`; the access line logs the method as sent; the span records `_OTHER` and
/// the original, cut at `MAX_METHOD_ORIGINAL_LEN`.
#[tokio::test(flavor = "current_thread")]
async fn made_up_methods_count_as_other() {
    let long = "M".repeat(100);
    on_each_server(async |s| {
        for (id, method) in [
            ("method-short", "M"),
            ("method-long", long.as_str()),
            ("method-lower", "get"),
        ] {
            let (_, reply) = exchange(s.addr, request(method, "/v1/items/7", id)).await;
            let envelope = reply.envelope(405, "method_not_allowed", id);
            let message = envelope["error"]["message"].as_str().unwrap();
            let quoted = &method[..method.len().min(32)];
            assert_eq!(message, format!("{quoted} is not allowed on /v1/items/7"));
            assert_eq!(reply.header("allow"), Some("GET,HEAD"));
            let line = s.access(id).await;
            assert_eq!(line["data"]["method"], method, "{line}");
            let span = s.span(id);
            assert_eq!(span["http.request.method"], "_OTHER");
            assert_eq!(span["otel.name"], "HTTP /v1/items/{id}");
            let original = &span["http.request.method_original"];
            if method.len() <= periscope::trace::MAX_METHOD_ORIGINAL_LEN {
                assert_eq!(original, method);
            } else {
                assert!(method.starts_with(original.strip_suffix('…').unwrap()));
            }
        }
        let other = [("method", "_OTHER"), ("route", "/v1/items/{id}")];
        assert_eq!(s.counted(&other), 3.0);
    })
    .await;
}

/// Header values with obs-text (bytes 0x80 to 0xFF, legal in HTTP/1.1, not UTF-8): passed
/// to the service in a header it does not read; in `x-request-id`, replaced by a generated
/// id (the warning names the byte, never the raw value); in a tenant header, ignored with a
/// warning; in `tracestate` and `baggage`, nothing breaks (the trace is continued). The log
/// stays UTF-8 with no raw byte of them.
#[tokio::test(flavor = "current_thread")]
async fn obs_text_in_header_values_never_reaches_the_log_raw() {
    on_each_server(async |s| {
        let (_, reply) = exchange(
            s.addr,
            &b"GET /v1/items/7 HTTP/1.1\r\nhost: t\r\nx-note: caf\xe9 \x80\xff\r\n\
               x-request-id: obs-text\r\nx-org-id: org\xe9\r\n\
               traceparent: 00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01\r\n\
               tracestate: a=b\xff\r\nbaggage: k=v\xe9\r\n\r\n"[..],
        )
        .await;
        assert_eq!(reply.status, 200);
        assert_eq!(reply.header("x-request-id"), Some("obs-text"));
        let line = s.access("obs-text").await;
        assert_eq!(line["trace_id"], "4bf92f3577b34da6a3ce929d0e0e4736");
        assert_eq!(line.get("org_id"), None, "{line}");
        let warned = s
            .lines()
            .into_iter()
            .find(|l| l["message"] == "ignored an invalid tenant header");
        let warned = warned.expect("the tenant header's warning");
        assert_eq!(warned["request_id"], "obs-text");
        assert!(warned["data"]["reason"].as_str().unwrap().contains("0xe9"));

        let (_, reply) = exchange(
            s.addr,
            &b"GET /v1/items/7 HTTP/1.1\r\nhost: t\r\nx-request-id: id\xe9\xff\r\n\r\n"[..],
        )
        .await;
        assert_eq!(reply.status, 200);
        let id = reply.header("x-request-id").unwrap().to_owned();
        assert!(id.starts_with("req_"), "{id}");
        s.access(&id).await;
        let replaced = (s.lines().into_iter())
            .find(|l| {
                l["message"] == "replaced the invalid incoming request id with a generated one"
            })
            .expect("the replacement's warning");
        assert_eq!(replaced["request_id"], *id);
        assert!(
            replaced["data"]["reason"]
                .as_str()
                .unwrap()
                .contains("0xe9")
        );
    })
    .await;
}

/// Request bodies framed in the less common ways: chunked with extensions and trailers (the
/// handler reads the bytes and the trailers); a chunk size that does not parse (axum's
/// `Bytes` extractor fails: its 400 as the envelope, with the request id, and the connection
/// closed); `Content-Length` and `Transfer-Encoding`
/// together (read as chunked, answered with `Connection: close` and closed, RFC 9112 6.1:
/// bytes after the chunked body are not read as a request, so nothing can be smuggled
/// through).
#[tokio::test(flavor = "current_thread")]
async fn chunked_bodies_and_ambiguous_framing() {
    on_each_server(async |s| {
        let (mut conn, reply) = exchange(
            s.addr,
            "POST /v1/upload HTTP/1.1\r\nhost: t\r\ntransfer-encoding: chunked\r\n\
             trailer: x-sum\r\nx-request-id: chunked\r\n\r\n\
             5;note=first\r\nhello\r\n6\r\n world\r\n0\r\nx-sum: 11\r\n\r\n",
        )
        .await;
        assert_eq!(reply.status, 200);
        assert_eq!(reply.header("x-request-id"), Some("chunked"));
        assert_eq!(reply.text(), "got 11 [x-sum=11]");
        still_serves(&mut conn, "after-chunked").await;

        let (mut conn, reply) = exchange(
            s.addr,
            "POST /v1/bytes HTTP/1.1\r\nhost: t\r\ntransfer-encoding: chunked\r\n\
             x-request-id: chunked-bad\r\n\r\nzz\r\nhello\r\n0\r\n\r\n",
        )
        .await;
        let envelope = reply.envelope(400, "invalid_request", "chunked-bad");
        let message = envelope["error"]["message"].as_str().unwrap();
        assert!(
            message.starts_with("Failed to buffer the request body"),
            "{message}"
        );
        assert!(conn.closed().await);

        let (mut conn, reply) = exchange(
            s.addr,
            "POST /v1/upload HTTP/1.1\r\nhost: t\r\ncontent-length: 60\r\n\
             transfer-encoding: chunked\r\nx-request-id: both-lengths\r\n\r\n\
             0\r\n\r\nGET /v1/items/smuggled HTTP/1.1\r\nhost: t\r\nx-request-id: smuggled\r\n\r\n",
        )
        .await;
        assert_eq!(reply.status, 200);
        assert_eq!(reply.text(), "got 0 []");
        assert_eq!(reply.header("connection"), Some("close"));
        assert!(conn.closed().await);

        for (id, status) in [
            ("chunked", 200),
            ("chunked-bad", 400),
            ("both-lengths", 200),
        ] {
            let line = s.access(id).await;
            assert_eq!(line["data"]["status"], status, "{line}");
            s.span(id);
        }
        s.unseen("smuggled");
        assert_eq!(s.counted(&[("route", "/v1/upload")]), 2.0);
        let refused = [("route", "/v1/bytes"), ("status", "4xx")];
        assert_eq!(s.counted(&refused), 1.0);
    })
    .await;
}
