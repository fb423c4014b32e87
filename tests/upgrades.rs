//! Connection upgrades (a WebSocket handshake) through the whole stack (`obs.layer()` with its
//! request timeout, tower-http's gzip compression outside it or inside it), served by
//! `periscope::Server` and by `axum::serve` on 127.0.0.1. The handshake is done as axum's
//! `WebSocketUpgrade` does it (`hyper::upgrade::on`, then `101 Switching Protocols` with
//! `connection: upgrade` and `upgrade: websocket`), and the upgraded connection echoes bytes.
//! What a service relies on: the client gets the 101 as the handler made it, with its request
//! id; the bytes flow both ways for as long as the connection lasts, past the request timeout;
//! the handshake is one request, answered `1xx`, whose access line, count, in-flight place and
//! span end at the 101 rather than with the connection; a refused upgrade gets the envelope;
//! and an HTTP/2 request that asks for an upgrade is refused by the protocol, never upgraded.

#![cfg(all(feature = "axum", feature = "serve"))]

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::Duration;

use axum::Router;
use axum::extract::Request;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use periscope::Observability;
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tower_http::compression::CompressionLayer;

// Shared with the other test binaries; this one installs its own subscriber.
#[allow(dead_code)]
mod capture;
#[allow(dead_code)]
mod recorded;
use recorded::{SERVERS, Serve, counted, eventually, record_counting_open};

/// The request timeout of every stack here: the upgraded connections outlive it.
const REQUEST_TIMEOUT: Duration = Duration::from_millis(200);

/// Whether `name`'s value in `headers` lists `token` (comma-separated, any case).
fn lists(headers: &http::HeaderMap, name: &str, token: &str) -> bool {
    headers.get_all(name).iter().any(|value| {
        value.to_str().is_ok_and(|value| {
            value
                .split(',')
                .any(|t| t.trim().eq_ignore_ascii_case(token))
        })
    })
}

/// A WebSocket handshake answered as axum's `WebSocketUpgrade` answers it, then an echo of
/// every byte on the upgraded connection (the frames are not decoded: bytes are enough to see
/// them flow). Refused as axum refuses: 426 without `connection: upgrade` or where the server
/// offers no upgrade (HTTP/2), 400 for a `sec-websocket-version` other than 13.
async fn websocket(mut request: Request) -> Response {
    let headers = request.headers();
    if !lists(headers, "connection", "upgrade") || !lists(headers, "upgrade", "websocket") {
        return (
            StatusCode::UPGRADE_REQUIRED,
            [("upgrade", "websocket")],
            "Connection header did not include 'upgrade'",
        )
            .into_response();
    }
    if headers.get("sec-websocket-version").map(|v| v.as_bytes()) != Some(b"13") {
        return (StatusCode::BAD_REQUEST, "WebSocket version not supported").into_response();
    }
    if request
        .extensions()
        .get::<hyper::upgrade::OnUpgrade>()
        .is_none()
    {
        return (
            StatusCode::UPGRADE_REQUIRED,
            [("upgrade", "websocket")],
            "WebSocket request couldn't be upgraded since no upgrade state was present",
        )
            .into_response();
    }
    let upgrade = hyper::upgrade::on(&mut request);
    tokio::spawn(async move {
        let Ok(upgraded) = upgrade.await else {
            return;
        };
        let mut io = hyper_util::rt::TokioIo::new(upgraded);
        let mut buffer = [0; 1024];
        loop {
            match io.read(&mut buffer).await {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    if io.write_all(&buffer[..n]).await.is_err() {
                        break;
                    }
                }
            }
        }
    });
    (
        StatusCode::SWITCHING_PROTOCOLS,
        [
            ("connection", "upgrade"),
            ("upgrade", "websocket"),
            // What RFC 6455 derives from the sample key below.
            ("sec-websocket-accept", "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="),
        ],
    )
        .into_response()
}

/// Where tower-http's `CompressionLayer` goes, relative to `obs.layer()`.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Place {
    Outside,
    Inside,
}

/// A handler that answers every request 101, whether the server can upgrade it or not.
async fn always_switching(mut request: Request) -> Response {
    let upgrade = hyper::upgrade::on(&mut request);
    tokio::spawn(async move {
        // Over HTTP/2 it never comes.
        let _ = upgrade.await;
    });
    (
        StatusCode::SWITCHING_PROTOCOLS,
        [("connection", "upgrade"), ("upgrade", "websocket")],
    )
        .into_response()
}

/// `/ws` ([`websocket`]), `/switching` ([`always_switching`]), and `/hints`, a handler that
/// answers `103 Early Hints` as its final answer.
fn app(obs: &Observability, compression: Place) -> Router {
    let routes = Router::new()
        .route("/ws", get(websocket))
        .route("/switching", get(always_switching))
        .route("/hints", get(|| async { StatusCode::EARLY_HINTS }));
    match compression {
        Place::Outside => routes.layer(obs.layer()).layer(CompressionLayer::new()),
        Place::Inside => routes.layer(CompressionLayer::new()).layer(obs.layer()),
    }
}

/// A response head as it came over the wire.
struct Head {
    status: u16,
    headers: HashMap<String, String>,
    text: String,
}

impl Head {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).map(String::as_str)
    }
}

/// Reads a response head, byte by byte so nothing after it is consumed (within 10 s).
async fn read_head(stream: &mut TcpStream) -> Head {
    let read = async {
        let mut head = Vec::new();
        while !head.ends_with(b"\r\n\r\n") {
            let mut byte = [0];
            let n = stream.read(&mut byte).await.unwrap();
            assert_eq!(n, 1, "closed after {:?}", String::from_utf8_lossy(&head));
            head.push(byte[0]);
        }
        head
    };
    let head = tokio::time::timeout(Duration::from_secs(10), read)
        .await
        .expect("a response head within 10 s");
    let text = String::from_utf8(head).unwrap();
    let mut lines = text.split("\r\n");
    let status = lines
        .next()
        .unwrap()
        .split(' ')
        .nth(1)
        .unwrap()
        .parse()
        .unwrap();
    let headers = lines
        .filter_map(|line| line.split_once(':'))
        .map(|(name, value)| (name.to_ascii_lowercase(), value.trim().to_owned()))
        .collect();
    Head {
        status,
        headers,
        text,
    }
}

/// Sends a WebSocket handshake for `/ws` with `x-request-id: id` (and `accept-encoding: gzip`,
/// as browsers send), `version` as its `sec-websocket-version`; the connection and the head of
/// the answer.
async fn handshake(addr: SocketAddr, id: &str, version: &str) -> (TcpStream, Head) {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    let request = format!(
        "GET /ws HTTP/1.1\r\nhost: t\r\nconnection: Upgrade\r\nupgrade: websocket\r\n\
         sec-websocket-version: {version}\r\nsec-websocket-key: dGhlIHNhbXBsZSBub25jZQ==\r\n\
         accept-encoding: gzip\r\nx-request-id: {id}\r\n\r\n"
    );
    stream.write_all(request.as_bytes()).await.unwrap();
    let head = read_head(&mut stream).await;
    (stream, head)
}

/// Reads the error envelope `head` announces and checks what every one carries: the status,
/// JSON, the request id in its header and its body, and `code`.
async fn read_envelope(
    stream: &mut TcpStream,
    head: &Head,
    status: u16,
    code: &str,
    request_id: &str,
) -> Value {
    assert_eq!(head.status, status, "{}", head.text);
    assert_eq!(
        head.header("content-type"),
        Some("application/json"),
        "{}",
        head.text
    );
    assert_eq!(
        head.header("x-request-id"),
        Some(request_id),
        "{}",
        head.text
    );
    let envelope = read_json(stream, head).await;
    assert_eq!(envelope["error"]["code"], code, "{envelope}");
    assert_eq!(envelope["error"]["request_id"], request_id, "{envelope}");
    envelope
}

/// Reads the body `head` announces (a `Content-Length` or chunked, gzip or not) as JSON.
async fn read_json(stream: &mut TcpStream, head: &Head) -> Value {
    async fn line(stream: &mut TcpStream) -> String {
        let mut line = Vec::new();
        while !line.ends_with(b"\r\n") {
            line.push(stream.read_u8().await.unwrap());
        }
        String::from_utf8(line).unwrap().trim_end().to_owned()
    }
    let mut body = Vec::new();
    if let Some(length) = head.header("content-length") {
        body.resize(length.parse().unwrap(), 0);
        stream.read_exact(&mut body).await.unwrap();
    } else {
        assert_eq!(
            head.header("transfer-encoding"),
            Some("chunked"),
            "{}",
            head.text
        );
        loop {
            let size = usize::from_str_radix(&line(stream).await, 16).unwrap();
            let mut chunk = vec![0; size];
            stream.read_exact(&mut chunk).await.unwrap();
            body.extend_from_slice(&chunk);
            assert_eq!(line(stream).await, "");
            if size == 0 {
                break;
            }
        }
    }
    if head.header("content-encoding") == Some("gzip") {
        use std::io::Write;
        let mut decoder = flate2::write::GzDecoder::new(Vec::new());
        decoder.write_all(&body).unwrap();
        body = decoder.finish().unwrap();
    }
    serde_json::from_slice(&body)
        .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&body)))
}

/// Writes `bytes` and reads them back (within 10 s).
async fn echo(stream: &mut TcpStream, bytes: &[u8]) {
    stream.write_all(bytes).await.unwrap();
    let mut back = vec![0; bytes.len()];
    tokio::time::timeout(Duration::from_secs(10), stream.read_exact(&mut back))
        .await
        .expect("the echo within 10 s")
        .expect("the echo");
    assert_eq!(back, bytes);
}

/// The access lines of `request_id`.
fn access_lines(lines: &[Value], request_id: &str) -> Vec<Value> {
    lines
        .iter()
        .filter(|l| l["target"] == "periscope::access" && l["request_id"] == request_id)
        .cloned()
        .collect()
}

/// The count and the summed duration of `http_server_request_duration_seconds` for `route`.
fn durations(exposition: &str, route: &str) -> (u64, f64) {
    let exposition = openmetrics_parser::prometheus::parse_prometheus(exposition).unwrap();
    let mut total = (0, 0.0);
    for sample in exposition.families["http_server_request_duration_seconds"].iter_samples() {
        if sample.get_labelset().unwrap().get_label_value("route") != Some(route) {
            continue;
        }
        match &sample.value {
            openmetrics_parser::PrometheusValue::Histogram(histogram) => {
                total.0 += histogram.count.unwrap();
                total.1 += histogram.sum.as_ref().unwrap().as_f64();
            }
            other => panic!("{other:?}"),
        }
    }
    total
}

/// A WebSocket handshake through the whole stack, on `periscope::Server` and `axum::serve`,
/// with compression outside the stack and inside it: the client gets the 101 as the handler
/// made it (its `connection`, `upgrade` and `sec-websocket-accept`, the request id added,
/// nothing of a body: no `content-type`, `content-encoding` or `transfer-encoding`), and bytes
/// flow both ways on the upgraded connection before the request timeout and long after it.
/// While the connection is still open, the handshake is over for every signal: one access line
/// (status 101, info, nothing sent, its duration the handshake's only), counted once as `1xx`
/// with its duration, out of the in-flight gauge, its span closed without an error status.
/// Closing the connection adds nothing.
#[tokio::test(flavor = "current_thread")]
async fn a_websocket_handshake_is_one_request_and_its_connection_outlives_the_request_timeout() {
    for server in SERVERS {
        for compression in [Place::Outside, Place::Inside] {
            let case = format!("{server:?}-{compression:?}");
            let (out, spans, open, log_guard, _default) = record_counting_open();
            let obs = Observability::builder()
                .request_timeout(REQUEST_TIMEOUT)
                .build()
                .unwrap();
            let addr = server.spawn(app(&obs, compression)).await;

            let (mut stream, head) = handshake(addr, &case, "13").await;
            assert_eq!(head.status, 101, "{case}: {}", head.text);
            assert_eq!(
                head.header("connection"),
                Some("upgrade"),
                "{case}: {}",
                head.text
            );
            assert_eq!(
                head.header("upgrade"),
                Some("websocket"),
                "{case}: {}",
                head.text
            );
            assert_eq!(
                head.header("sec-websocket-accept"),
                Some("s3pPLMBiTxaQ9kYGzzhZRbK+xOo="),
                "{case}: {}",
                head.text
            );
            assert_eq!(
                head.header("x-request-id"),
                Some(&*case),
                "{case}: {}",
                head.text
            );
            for name in ["content-type", "content-encoding", "transfer-encoding"] {
                assert_eq!(head.header(name), None, "{case}: {}", head.text);
            }
            echo(&mut stream, b"before the timeout").await;
            // Silent for twice the request timeout, then more bytes both ways.
            tokio::time::sleep(REQUEST_TIMEOUT * 2).await;
            echo(&mut stream, b"after the timeout").await;
            echo(&mut stream, &[7; 600]).await;

            // The connection is open; the request is over.
            eventually(&format!("{case}: the handshake's access line"), || {
                let lines = out.lines();
                (!access_lines(&lines, &case).is_empty()).then_some(())
            })
            .await;
            assert_eq!(
                open.count(),
                0,
                "{case}: the handshake's span is still open"
            );
            assert_eq!(
                obs.in_flight(),
                0,
                "{case}: the handshake is still in flight"
            );
            let exposition = obs.registry().encode_prometheus().unwrap();
            let route = [("route", "/ws")];
            let requests = "http_server_requests_total";
            assert_eq!(
                counted(&exposition, requests, &route),
                1.0,
                "{case}: {exposition}"
            );
            let switching = [("route", "/ws"), ("status", "1xx")];
            assert_eq!(
                counted(&exposition, requests, &switching),
                1.0,
                "{case}: {exposition}"
            );
            let (count, seconds) = durations(&exposition, "/ws");
            assert_eq!(count, 1, "{case}: {exposition}");
            assert!(
                seconds < REQUEST_TIMEOUT.as_secs_f64(),
                "{case}: {exposition}"
            );

            echo(&mut stream, b"still open").await;
            drop(stream);
            tokio::time::sleep(Duration::from_millis(50)).await;
            drop(log_guard);
            let lines = out.lines();
            let access = access_lines(&lines, &case);
            assert_eq!(access.len(), 1, "{case}: {lines:#?}");
            let access = &access[0];
            let data = &access["data"];
            assert_eq!(access["level"], "info", "{case}: {access}");
            assert_eq!(data["status"], 101, "{case}: {access}");
            assert_eq!(data["route"], "/ws", "{case}: {access}");
            assert_eq!(data["bytes_out"], 0, "{case}: {access}");
            assert_eq!(data.get("aborted"), None, "{case}: {access}");
            assert_eq!(data.get("error_code"), None, "{case}: {access}");
            let duration_ms = data["duration_ms"].as_f64().unwrap();
            assert!(
                duration_ms < REQUEST_TIMEOUT.as_millis() as f64,
                "{case}: {access}"
            );
            let span = spans.of("http_request", &case);
            assert_eq!(span.len(), 1, "{case}");
            assert_eq!(
                span[0].get("http.response.status_code").map(String::as_str),
                Some("101"),
                "{case}: {:?}",
                span[0]
            );
            assert_ne!(
                span[0].get("otel.status_code").map(String::as_str),
                Some("ERROR"),
                "{case}: {:?}",
                span[0]
            );
            assert!(
                !lines
                    .iter()
                    .any(|l| l["level"] == "warn" || l["level"] == "error"),
                "{case}: {lines:#?}"
            );
        }
    }
}

/// A handshake the handler refuses, as axum's `WebSocketUpgrade` refuses it (400 for a
/// version it does not speak, 426 without `connection: upgrade`), gets the error envelope
/// with the request id; the 426 keeps the `upgrade` header that tells the client what to ask
/// for, and the connection is not upgraded (it answers the next request).
#[tokio::test(flavor = "current_thread")]
async fn a_refused_handshake_gets_the_envelope() {
    let (out, _spans, _open, log_guard, _default) = record_counting_open();
    let obs = Observability::builder()
        .request_timeout(REQUEST_TIMEOUT)
        .build()
        .unwrap();
    let addr = Serve::Periscope.spawn(app(&obs, Place::Outside)).await;

    let (mut stream, head) = handshake(addr, "refused-version", "8").await;
    let envelope = read_envelope(
        &mut stream,
        &head,
        400,
        "invalid_request",
        "refused-version",
    )
    .await;
    assert_eq!(
        envelope["error"]["message"], "WebSocket version not supported",
        "{envelope}"
    );

    // The same connection, a plain GET: 426 with `upgrade: websocket`.
    stream
        .write_all(b"GET /ws HTTP/1.1\r\nhost: t\r\nx-request-id: refused-plain\r\n\r\n")
        .await
        .unwrap();
    let head = read_head(&mut stream).await;
    assert_eq!(head.header("upgrade"), Some("websocket"), "{}", head.text);
    read_envelope(&mut stream, &head, 426, "invalid_request", "refused-plain").await;

    drop(stream);
    tokio::time::sleep(Duration::from_millis(50)).await;
    let exposition = obs.registry().encode_prometheus().unwrap();
    let refused = [("route", "/ws"), ("status", "4xx")];
    assert_eq!(
        counted(&exposition, "http_server_requests_total", &refused),
        2.0,
        "{exposition}"
    );
    drop(log_guard);
    let lines = out.lines();
    for (id, status) in [("refused-version", 400), ("refused-plain", 426)] {
        let access = access_lines(&lines, id);
        assert_eq!(access.len(), 1, "{id}: {lines:#?}");
        assert_eq!(access[0]["data"]["status"], status, "{}", access[0]);
        assert_eq!(
            access[0]["data"]["error_code"], "invalid_request",
            "{}",
            access[0]
        );
        assert_eq!(access[0]["level"], "warn", "{}", access[0]);
    }
}

/// A handler that answers an interim status (here `103 Early Hints`) as its final answer, which
/// no server can send as one (hyper sends a bare 500 instead, without a request id, and closes
/// the connection): the client gets the 500 envelope with its request id, and the access line,
/// the count and the log say the request failed, not that it was answered `1xx`.
#[tokio::test(flavor = "current_thread")]
async fn an_interim_status_as_the_final_answer_is_a_500_envelope() {
    for server in SERVERS {
        let id = format!("hints-{server:?}");
        let (out, spans, _open, log_guard, _default) = record_counting_open();
        let obs = Observability::builder().build().unwrap();
        let addr = server.spawn(app(&obs, Place::Outside)).await;

        let mut stream = TcpStream::connect(addr).await.unwrap();
        let request = format!("GET /hints HTTP/1.1\r\nhost: t\r\nx-request-id: {id}\r\n\r\n");
        stream.write_all(request.as_bytes()).await.unwrap();
        let head = read_head(&mut stream).await;
        read_envelope(&mut stream, &head, 500, "internal_error", &id).await;

        tokio::time::sleep(Duration::from_millis(50)).await;
        let exposition = obs.registry().encode_prometheus().unwrap();
        let requests = "http_server_requests_total";
        let failed = [("route", "/hints"), ("status", "5xx")];
        assert_eq!(
            counted(&exposition, requests, &failed),
            1.0,
            "{id}: {exposition}"
        );
        assert_eq!(
            counted(&exposition, requests, &[("route", "/hints")]),
            1.0,
            "{exposition}"
        );
        drop(log_guard);
        let lines = out.lines();
        let access = access_lines(&lines, &id);
        assert_eq!(access.len(), 1, "{id}: {lines:#?}");
        assert_eq!(access[0]["level"], "error", "{}", access[0]);
        assert_eq!(access[0]["data"]["status"], 500, "{}", access[0]);
        assert_eq!(
            access[0]["data"]["error_code"], "internal_error",
            "{}",
            access[0]
        );
        let span = spans.of("http_request", &id);
        assert_eq!(span[0]["otel.status_code"], "ERROR", "{id}: {:?}", span[0]);
        let logged = lines
            .iter()
            .find(|l| l["message"] == "the service failed" && l["request_id"] == *id)
            .unwrap_or_else(|| panic!("{id}: {lines:#?}"));
        let error = logged["data"]["error"]["message"].as_str().unwrap();
        assert!(error.contains("103 Early Hints"), "{logged}");
    }
}

/// An HTTP/2 frame as it came over the wire.
#[cfg(feature = "http2")]
#[derive(Debug)]
struct Frame {
    kind: u8,
    stream: u32,
    payload: Vec<u8>,
}

#[cfg(feature = "http2")]
impl Frame {
    const HEADERS: u8 = 1;
    const RST_STREAM: u8 = 3;
    const SETTINGS: u8 = 4;

    fn encode(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
        let mut frame = (payload.len() as u32).to_be_bytes()[1..].to_vec();
        frame.extend([kind, flags]);
        frame.extend(stream.to_be_bytes());
        frame.extend(payload);
        frame
    }

    async fn read(stream: &mut TcpStream) -> (Frame, u8) {
        let mut head = [0; 9];
        stream.read_exact(&mut head).await.unwrap();
        let length = u32::from_be_bytes([0, head[0], head[1], head[2]]) as usize;
        let mut payload = vec![0; length];
        stream.read_exact(&mut payload).await.unwrap();
        let stream = u32::from_be_bytes([head[5], head[6], head[7], head[8]]) & 0x7fff_ffff;
        let frame = Frame {
            kind: head[3],
            stream,
            payload,
        };
        (frame, head[4])
    }
}

/// Sends one HTTP/2 request of `headers` (HPACK literals, as a client that does not strip
/// HTTP/1.1's connection headers would send them) on stream 1 with prior knowledge; the first
/// frame the server sends on that stream (within 10 s).
#[cfg(feature = "http2")]
async fn h2_raw(addr: SocketAddr, headers: &[(&str, &str)]) -> Frame {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    let mut block = Vec::new();
    for (name, value) in headers {
        // A literal without indexing, a new name, no Huffman coding; lengths under 127.
        block.push(0);
        block.push(name.len() as u8);
        block.extend(name.as_bytes());
        block.push(value.len() as u8);
        block.extend(value.as_bytes());
    }
    let mut out = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
    out.extend(Frame::encode(Frame::SETTINGS, 0, 0, &[]));
    // END_STREAM | END_HEADERS.
    out.extend(Frame::encode(Frame::HEADERS, 0x5, 1, &block));
    stream.write_all(&out).await.unwrap();
    let read = async {
        loop {
            let (frame, flags) = Frame::read(&mut stream).await;
            if frame.kind == Frame::SETTINGS && flags & 1 == 0 {
                let ack = Frame::encode(Frame::SETTINGS, 1, 0, &[]);
                stream.write_all(&ack).await.unwrap();
            }
            if frame.stream == 1 {
                return frame;
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(10), read)
        .await
        .expect("an answer on stream 1 within 10 s")
}

/// HTTP/2 (h2c on `periscope::Server`) has no connection upgrade. A request that carries
/// HTTP/1.1's `connection: upgrade` and `upgrade: websocket` is malformed there: the client
/// gets a stream reset (`PROTOCOL_ERROR`), and the service never sees it (no access line, no
/// count). So is WebSocket over HTTP/2's extended CONNECT (RFC 8441), which the server does not
/// offer. hyper's client strips the headers instead (with a warning): the handler sees a plain
/// `GET` and refuses it with a 426 envelope. A handler that answers 101 anyway gets a 500
/// envelope, not the reset hyper would send for a 101 over HTTP/2, and the request is counted
/// and logged as failed.
#[cfg(feature = "http2")]
#[tokio::test(flavor = "current_thread")]
async fn an_http2_request_asking_for_an_upgrade_is_refused() {
    use http_body_util::{BodyExt, Empty};

    let (out, _spans, _open, log_guard, _default) = record_counting_open();
    let obs = Observability::builder()
        .request_timeout(REQUEST_TIMEOUT)
        .build()
        .unwrap();
    let addr = Serve::Periscope.spawn(app(&obs, Place::Outside)).await;

    let get = [
        (":method", "GET"),
        (":scheme", "http"),
        (":path", "/ws"),
        (":authority", "t"),
        ("connection", "upgrade"),
        ("upgrade", "websocket"),
        ("sec-websocket-version", "13"),
        ("x-request-id", "h2-connection-headers"),
    ];
    let connect = [
        (":method", "CONNECT"),
        (":protocol", "websocket"),
        (":scheme", "http"),
        (":path", "/ws"),
        (":authority", "t"),
        ("sec-websocket-version", "13"),
        ("x-request-id", "h2-extended-connect"),
    ];
    for headers in [&get[..], &connect[..]] {
        let frame = h2_raw(addr, headers).await;
        assert_eq!(frame.kind, Frame::RST_STREAM, "{headers:?}: {frame:?}");
        assert_eq!(frame.payload, [0, 0, 0, 1], "PROTOCOL_ERROR: {frame:?}");
    }

    let tcp = TcpStream::connect(addr).await.unwrap();
    let (mut sender, connection) =
        hyper::client::conn::http2::Builder::new(hyper_util::rt::TokioExecutor::new())
            .handshake::<_, Empty<bytes::Bytes>>(hyper_util::rt::TokioIo::new(tcp))
            .await
            .unwrap();
    tokio::spawn(connection);
    for (path, id, status, code) in [
        ("/ws", "h2-stripped", 426, "invalid_request"),
        ("/switching", "h2-switching", 500, "internal_error"),
    ] {
        let request = http::Request::get(format!("http://{addr}{path}"))
            .header("connection", "upgrade")
            .header("upgrade", "websocket")
            .header("sec-websocket-version", "13")
            .header("x-request-id", id)
            .body(Empty::new())
            .unwrap();
        let response = sender.send_request(request).await.expect(id);
        assert_eq!(response.status(), status, "{id}");
        assert_eq!(response.headers()["x-request-id"], id);
        let body = response.into_body().collect().await.unwrap().to_bytes();
        let envelope: Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(envelope["error"]["code"], code, "{envelope}");
        assert_eq!(envelope["error"]["request_id"], id, "{envelope}");
    }

    tokio::time::sleep(Duration::from_millis(50)).await;
    let exposition = obs.registry().encode_prometheus().unwrap();
    let requests = "http_server_requests_total";
    assert_eq!(
        counted(&exposition, requests, &[("route", "/ws")]),
        1.0,
        "{exposition}"
    );
    let failed = [("route", "/switching"), ("status", "5xx")];
    assert_eq!(counted(&exposition, requests, &failed), 1.0, "{exposition}");
    drop(log_guard);
    let lines = out.lines();
    for id in ["h2-connection-headers", "h2-extended-connect"] {
        assert!(access_lines(&lines, id).is_empty(), "{id}: {lines:#?}");
    }
    for (id, status) in [("h2-stripped", 426), ("h2-switching", 500)] {
        let access = access_lines(&lines, id);
        assert_eq!(access.len(), 1, "{id}: {lines:#?}");
        assert_eq!(access[0]["data"]["status"], status, "{}", access[0]);
    }
}
