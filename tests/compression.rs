//! The stack with tower-http's `CompressionLayer` and `RequestDecompressionLayer`, as most
//! axum services stack them, served by `periscope::Server` on 127.0.0.1 to a client that sends
//! `accept-encoding: gzip`. What a service relies on: the client decodes every answer (JSON,
//! envelopes, large and streamed bodies, HEAD, 204, 304), the ids survive, streamed frames are
//! not held back, a gzip request body is read and a corrupt one is answered with an envelope,
//! and the access line and the counts say what the client got (`bytes_out`: the bytes that
//! left periscope's stack, compressed only when compression is inside it).

#![cfg(all(feature = "axum", feature = "serve"))]

use std::convert::Infallible;
use std::io::Write;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::http::{HeaderMap, StatusCode};
use axum::response::IntoResponse;
use axum::response::sse::{Event, Sse};
use axum::routing::{get, post};
use bytes::Bytes;
use futures_util::StreamExt;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use periscope::Observability;
use periscope::error::{HttpError, codes};
use serde_json::{Value, json};
use tokio::sync::Semaphore;
use tower_http::compression::CompressionLayer;
use tower_http::decompression::RequestDecompressionLayer;

// Shared with the other test binaries; this one installs its own subscriber.
#[allow(dead_code)]
mod capture;
use capture::capture_lines;

/// The largest request body `/echo` takes, decompressed.
const BODY_LIMIT: usize = 64 * 1024;

/// A JSON document of about 4 KB, easily compressed.
fn items() -> Value {
    let items: Vec<Value> = (0..100)
        .map(|i| json!({"id": i, "name": format!("item number {i}"), "status": "ready"}))
        .collect();
    json!({ "items": items })
}

/// One megabyte of text.
fn big() -> String {
    (0..1 << 20)
        .map(|i| (b'a' + (i % 26) as u8) as char)
        .collect()
}

/// Two tokens, the second held at `gate`, each logged as it is sent. A stream of
/// `futures_util::stream::unfold` panics if polled again after its end.
fn token_stream(
    gate: Arc<Semaphore>,
) -> impl futures_util::Stream<Item = Result<Bytes, Infallible>> {
    futures_util::stream::unfold(0u8, move |i| {
        let gate = gate.clone();
        async move {
            if i == 2 {
                return None;
            }
            if i == 1 {
                gate.acquire().await.unwrap().forget();
            }
            tracing::info!(index = i, "token sent");
            Some((Ok(Bytes::from(format!("token {i}\n"))), i + 1))
        }
    })
}

/// The routes: a JSON answer, errors of each kind, a large body, bodiless answers, a token
/// stream and server-sent events held at `gate` after their first frame, and `/echo` that reads
/// a JSON request body.
fn routes(gate: Arc<Semaphore>) -> Router {
    let tokens = |fused: bool, gate: Arc<Semaphore>| {
        move || async move {
            let stream = token_stream(gate);
            let body = if fused {
                axum::body::Body::from_stream(stream.fuse())
            } else {
                axum::body::Body::from_stream(stream)
            };
            ([("content-type", "text/plain")], body)
        }
    };
    let events = {
        let gate = gate.clone();
        move || async move {
            let stream = futures_util::stream::unfold(0u8, move |i| {
                let gate = gate.clone();
                async move {
                    if i == 2 {
                        return None;
                    }
                    if i == 1 {
                        gate.acquire().await.unwrap().forget();
                    }
                    Some((
                        Ok::<_, Infallible>(Event::default().data(format!("event {i}"))),
                        i + 1,
                    ))
                }
            });
            Sse::new(stream)
        }
    };
    Router::new()
        .route("/json", get(|| async { axum::Json(items()) }))
        .route(
            "/conflict",
            get(|| async {
                Err::<(), _>(
                    HttpError::new(codes::CONFLICT, "the job is already completed")
                        .with_detail("job_id", "job_1"),
                )
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
        // A handler's own JSON 502 envelope, as a proxy passes an upstream's on.
        .route(
            "/upstream",
            get(|| async {
                let envelope = json!({"error": {"code": "model_unavailable",
                    "message": "The model server failed", "request_id": "upstream-id"}});
                (StatusCode::BAD_GATEWAY, axum::Json(envelope))
            }),
        )
        .route("/big", get(|| async { big() }))
        .route("/empty", get(|| async { StatusCode::NO_CONTENT }))
        .route(
            "/cached",
            get(|| async { (StatusCode::NOT_MODIFIED, [("etag", "\"v1\"")]).into_response() }),
        )
        .route("/tokens", get(tokens(false, gate.clone())))
        .route("/tokens-fused", get(tokens(true, gate.clone())))
        .route("/events", get(events))
        .route(
            "/echo",
            post(|axum::Json(body): axum::Json<Value>| async move {
                axum::Json(json!({ "received": body }))
            }),
        )
        .layer(DefaultBodyLimit::max(BODY_LIMIT))
}

/// Serves `app` with `periscope::Server` on 127.0.0.1.
async fn serve(app: Router) -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(periscope::Server::new(listener).serve(app, std::future::pending()));
    addr
}

struct Reply {
    status: u16,
    headers: HeaderMap,
    /// The body as it came over the wire.
    raw: Bytes,
}

impl Reply {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).map(|value| value.to_str().unwrap())
    }

    fn gzipped(&self) -> bool {
        self.header("content-encoding") == Some("gzip")
    }

    /// The body the client reads: decoded when gzip.
    fn body(&self) -> Vec<u8> {
        if self.gzipped() {
            gunzip(&self.raw)
        } else {
            self.raw.to_vec()
        }
    }

    fn json(&self) -> Value {
        let body = self.body();
        serde_json::from_slice(&body)
            .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&body)))
    }
}

fn gzip(data: &[u8]) -> Vec<u8> {
    let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    encoder.write_all(data).unwrap();
    encoder.finish().unwrap()
}

fn gunzip(data: &[u8]) -> Vec<u8> {
    let mut decoder = flate2::write::GzDecoder::new(Vec::new());
    decoder.write_all(data).unwrap();
    decoder.finish().expect("a whole gzip body")
}

/// `method path` with `x-request-id: id`, `accept-encoding: gzip`, `headers` and `body`: the
/// whole answer (within 30 s).
async fn send(
    addr: SocketAddr,
    method: &str,
    path: &str,
    id: &str,
    headers: &[(&str, &str)],
    body: Vec<u8>,
) -> Reply {
    let client = Client::builder(TokioExecutor::new()).build_http::<Full<Bytes>>();
    let mut request = http::Request::builder()
        .method(method)
        .uri(format!("http://{addr}{path}"))
        .header("x-request-id", id)
        .header("accept-encoding", "gzip");
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    let exchange = async {
        let response = client
            .request(request.body(Full::new(Bytes::from(body))).unwrap())
            .await
            .unwrap();
        let (parts, body) = response.into_parts();
        Reply {
            status: parts.status.as_u16(),
            headers: parts.headers,
            raw: body.collect().await.unwrap().to_bytes(),
        }
    };
    tokio::time::timeout(Duration::from_secs(30), exchange)
        .await
        .unwrap_or_else(|_| panic!("{method} {path}: no answer within 30 s"))
}

async fn get_gzip(addr: SocketAddr, path: &str, id: &str) -> Reply {
    send(addr, "GET", path, id, &[], Vec::new()).await
}

/// The one access line of `request_id`.
fn access_line(lines: &[Value], request_id: &str) -> Value {
    let access: Vec<&Value> = lines
        .iter()
        .filter(|l| l["target"] == "periscope::access" && l["request_id"] == request_id)
        .collect();
    assert_eq!(access.len(), 1, "{request_id}: {lines:#?}");
    access[0].clone()
}

/// `http_server_requests_total` for `route` and `status`.
fn counted(obs: &Observability, route: &str, status: &str) -> f64 {
    let text = obs.registry().encode_prometheus().unwrap();
    let exposition = openmetrics_parser::prometheus::parse_prometheus(&text).unwrap();
    exposition.families["http_server_requests_total"]
        .iter_samples()
        .filter(|sample| {
            let labels = sample.get_labelset().unwrap();
            labels.get_label_value("status") == Some(status)
                && labels.get_label_value("route") == Some(route)
        })
        .map(|sample| match &sample.value {
            openmetrics_parser::PrometheusValue::Counter(c) => c.value.as_f64(),
            other => panic!("{other:?}"),
        })
        .sum()
}

/// Where the test puts `CompressionLayer`, relative to `obs.layer()`.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Place {
    Outside,
    Inside,
}

fn compressed_app(obs: &Observability, place: Place, gate: Arc<Semaphore>) -> Router {
    match place {
        Place::Outside => routes(gate)
            .layer(obs.layer())
            .layer(CompressionLayer::new()),
        Place::Inside => routes(gate)
            .layer(CompressionLayer::new())
            .layer(obs.layer()),
    }
}

/// Every kind of answer, with compression outside the stack and inside it: the client decodes
/// each, the envelopes parse with the request's id, and the access line's `bytes_out` counts
/// the bytes that left periscope's stack (before compression outside, compressed inside).
#[tokio::test(flavor = "current_thread")]
async fn every_answer_decodes_and_keeps_its_ids_with_compression_outside_or_inside() {
    for place in [Place::Outside, Place::Inside] {
        let (out, log_guard, _default) = capture_lines(None);
        let obs = Observability::builder().build().unwrap();
        let addr = serve(compressed_app(&obs, place, Arc::new(Semaphore::new(0)))).await;
        let id = |name: &str| format!("{place:?}-{name}");

        let json = get_gzip(addr, "/json", &id("json")).await;
        assert_eq!(json.status, 200);
        assert!(json.gzipped(), "{place:?}");
        assert_eq!(json.header("x-request-id"), Some(id("json").as_str()));
        assert_eq!(json.header("content-length"), None, "{place:?}");
        assert_eq!(json.json(), items());

        // The caller's trace continues: the envelope (compressed or not) carries its trace id.
        let trace_id = "4bf92f3577b34da6a3ce929d0e0e4736";
        let traceparent = format!("00-{trace_id}-00f067aa0ba902b7-01");
        let conflict = send(
            addr,
            "GET",
            "/conflict",
            &id("conflict"),
            &[("traceparent", &traceparent)],
            Vec::new(),
        )
        .await;
        assert_eq!(conflict.status, 409);
        assert_eq!(
            conflict.header("x-request-id"),
            Some(id("conflict").as_str())
        );
        let envelope = conflict.json();
        assert_eq!(envelope["error"]["code"], "conflict", "{place:?}");
        assert_eq!(envelope["error"]["request_id"], id("conflict"));
        assert_eq!(envelope["error"]["details"]["job_id"], "job_1");
        assert_eq!(envelope["error"]["trace_id"], trace_id);

        // A panic unwinds through a compression layer inside: periscope's envelope is then
        // not compressed; outside, it is.
        let panic = get_gzip(addr, "/panic", &id("panic")).await;
        assert_eq!(panic.status, 500);
        assert_eq!(panic.gzipped(), place == Place::Outside);
        let envelope = panic.json();
        assert_eq!(envelope["error"]["code"], "internal_error");
        assert_eq!(envelope["error"]["request_id"], id("panic"));
        assert!(!String::from_utf8_lossy(&panic.body()).contains("secret"));

        let missing = get_gzip(addr, "/no/such/route", &id("missing")).await;
        assert_eq!(missing.status, 404);
        assert_eq!(missing.json()["error"]["code"], "route_not_found");
        assert_eq!(missing.header("x-request-id"), Some(id("missing").as_str()));

        // Over the body limit: the 413 envelope.
        let too_big = send(
            addr,
            "POST",
            "/echo",
            &id("too-big"),
            &[("content-type", "application/json")],
            vec![b' '; BODY_LIMIT + 1],
        )
        .await;
        assert_eq!(too_big.status, 413);
        assert_eq!(too_big.json()["error"]["code"], "payload_too_large");

        // A handler's own JSON envelope on a 5xx is read to be kept: compressed inside the
        // stack, it cannot be, and is replaced by its status's envelope.
        let upstream = get_gzip(addr, "/upstream", &id("upstream")).await;
        assert_eq!(upstream.status, 502);
        let error = &upstream.json()["error"];
        assert_eq!(error["request_id"], id("upstream"));
        let expected = match place {
            Place::Outside => "model_unavailable",
            Place::Inside => "upstream_error",
        };
        assert_eq!(error["code"], expected, "{place:?}: {error}");

        let large = get_gzip(addr, "/big", &id("big")).await;
        assert_eq!(large.status, 200);
        assert!(large.gzipped());
        assert!(large.raw.len() * 10 < big().len(), "{}", large.raw.len());
        assert_eq!(large.body(), big().as_bytes());

        // Answers without a body: nothing to decode, nothing held.
        let head = send(addr, "HEAD", "/json", &id("head"), &[], Vec::new()).await;
        assert_eq!((head.status, head.raw.len()), (200, 0));
        let empty = get_gzip(addr, "/empty", &id("empty")).await;
        assert_eq!((empty.status, empty.raw.len()), (204, 0));
        assert!(!empty.gzipped());
        let cached = get_gzip(addr, "/cached", &id("cached")).await;
        assert_eq!((cached.status, cached.raw.len()), (304, 0));
        assert_eq!(cached.header("etag"), Some("\"v1\""));

        drop(log_guard);
        let lines = out.lines();
        // `bytes_out`: what left periscope's stack.
        for (name, reply) in [
            ("json", &json),
            ("conflict", &conflict),
            ("panic", &panic),
            ("missing", &missing),
            ("too-big", &too_big),
            ("upstream", &upstream),
            ("big", &large),
        ] {
            let access = access_line(&lines, &id(name));
            assert_eq!(access["data"]["status"], reply.status, "{access}");
            let sent = match place {
                Place::Outside => reply.body().len(),
                Place::Inside => reply.raw.len(),
            };
            assert_eq!(
                access["data"]["bytes_out"], sent,
                "{place:?} {name}: {access}"
            );
            assert_eq!(access["data"].get("aborted"), None, "{access}");
        }
        for name in ["head", "empty", "cached"] {
            let access = access_line(&lines, &id(name));
            assert_eq!(access["data"]["bytes_out"], 0, "{access}");
            assert_eq!(access["data"].get("aborted"), None, "{access}");
        }
        let access = access_line(&lines, &id("conflict"));
        assert_eq!(access["data"]["error_code"], "conflict");
        assert_eq!(access["trace_id"], trace_id);
        assert_eq!(
            counted(&obs, "/json", "2xx"),
            2.0,
            "{place:?}: GET and HEAD"
        );
        assert_eq!(counted(&obs, "/panic", "5xx"), 1.0);
        assert_eq!(counted(&obs, "/echo", "4xx"), 1.0);
    }
}

/// Reads `response`'s raw frames until the decoded text holds `wanted` (within 10 s, with
/// the stream's producer held at its gate): the frames reached the client before the body's
/// end. Returns the decoder to finish the body with.
async fn read_until(
    body: &mut hyper::body::Incoming,
    decoder: &mut Option<flate2::write::GzDecoder<Vec<u8>>>,
    text: &mut Vec<u8>,
    wanted: &str,
) {
    let read = async {
        while !String::from_utf8_lossy(text).contains(wanted) {
            let frame = body.frame().await.expect("a frame").unwrap();
            let Ok(data) = frame.into_data() else {
                continue;
            };
            match decoder {
                Some(decoder) => {
                    decoder.write_all(&data).unwrap();
                    decoder.flush().unwrap();
                    *text = decoder.get_ref().clone();
                }
                None => text.extend_from_slice(&data),
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(10), read)
        .await
        .unwrap_or_else(|_| panic!("{wanted:?} held back: {}", String::from_utf8_lossy(text)));
}

fn stream_id(place: Place, path: &str) -> String {
    format!("{place:?}-{}", &path[1..])
}

/// A chunked token stream and server-sent events with compression outside the stack and
/// inside it: each frame reaches the client while the stream is still being made (the token
/// stream is gzip, flushed when its producer waits; the events are not compressed at all), the
/// lines logged while the body is made carry the request's ids, and the access line covers
/// the whole stream, without a panic at its end.
#[tokio::test(flavor = "current_thread")]
async fn streamed_frames_are_not_held_back_by_compression() {
    for place in [Place::Outside, Place::Inside] {
        let (out, log_guard, _default) = capture_lines(None);
        let obs = Observability::builder().build().unwrap();
        let gate = Arc::new(Semaphore::new(0));
        let addr = serve(compressed_app(&obs, place, gate.clone())).await;
        let client = Client::builder(TokioExecutor::new()).build_http::<Full<Bytes>>();
        let mut sizes = Vec::new();
        // tower-http's compression polls the body it compresses once more after its end
        // (tower-rs/tower-http#732): periscope's bodies, outside, end cleanly; inside, the
        // handler's stream must be fused (`StreamExt::fuse`) or it panics at its end.
        let tokens = match place {
            Place::Outside => "/tokens",
            Place::Inside => "/tokens-fused",
        };
        for (path, first, last, gzipped) in [
            (tokens, "token 0\n", "token 0\ntoken 1\n", true),
            ("/events", "data: event 0", "data: event 1", false),
        ] {
            let request = http::Request::get(format!("http://{addr}{path}"))
                .header("x-request-id", stream_id(place, path))
                .header("accept-encoding", "gzip")
                .body(Full::new(Bytes::new()))
                .unwrap();
            let response = client.request(request).await.unwrap();
            assert_eq!(response.status(), 200);
            let is_gzip = response.headers().get("content-encoding").is_some();
            assert_eq!(is_gzip, gzipped, "{place:?} {path}");
            let mut decoder = is_gzip.then(|| flate2::write::GzDecoder::new(Vec::new()));
            let mut body = response.into_body();
            let mut text = Vec::new();
            read_until(&mut body, &mut decoder, &mut text, first).await;
            gate.add_permits(1);
            read_until(&mut body, &mut decoder, &mut text, last).await;
            while let Some(frame) = body.frame().await {
                let data = frame.unwrap().into_data().unwrap_or_default();
                if let Some(decoder) = &mut decoder {
                    decoder.write_all(&data).unwrap();
                }
            }
            if let Some(decoder) = decoder {
                text = decoder.finish().unwrap();
            }
            sizes.push((stream_id(place, path), text.len()));
        }

        tokio::time::sleep(Duration::from_millis(50)).await;
        drop(log_guard);
        let lines = out.lines();
        assert!(!lines.iter().any(|l| l["level"] == "error"), "{lines:#?}");
        let access = access_line(&lines, &stream_id(place, tokens));
        let sent: Vec<&Value> = lines
            .iter()
            .filter(|l| l["message"] == "token sent")
            .collect();
        assert_eq!(sent.len(), 2, "{lines:#?}");
        for line in sent {
            assert_eq!(line["request_id"], access["request_id"], "{line}");
            assert_eq!(line["trace_id"], access["trace_id"], "{line}");
        }
        for (id, decoded) in sizes {
            let access = access_line(&lines, &id);
            assert_eq!(access["data"]["status"], 200, "{access}");
            assert_eq!(access["data"].get("aborted"), None, "{access}");
            if place == Place::Outside || id.ends_with("events") {
                assert_eq!(access["data"]["bytes_out"], decoded, "{access}");
            }
        }
    }
}

/// Where the test puts `RequestDecompressionLayer`, relative to `obs.layer()`.
fn decompressing_app(obs: &Observability, place: Place) -> Router {
    let gate = Arc::new(Semaphore::new(0));
    match place {
        Place::Outside => routes(gate)
            .layer(obs.layer())
            .layer(RequestDecompressionLayer::new()),
        Place::Inside => routes(gate)
            .layer(RequestDecompressionLayer::new())
            .layer(obs.layer()),
    }
}

/// A gzip request body is read by the handler; a corrupt, a truncated and an oversized one
/// are each answered with the standard envelope and a 4xx (never a bare text or a 500, and a
/// truncated one is not taken for a body the client stopped sending), and the access line
/// and the counts agree with what the client got.
#[tokio::test(flavor = "current_thread")]
async fn gzip_request_bodies_are_read_and_corrupt_ones_get_an_envelope() {
    for place in [Place::Outside, Place::Inside] {
        let (out, log_guard, _default) = capture_lines(None);
        let obs = Observability::builder().build().unwrap();
        let addr = serve(decompressing_app(&obs, place)).await;
        let document = serde_json::to_vec(&items()).unwrap();
        let whole = gzip(&document);
        let mut truncated = whole.clone();
        truncated.truncate(whole.len() / 2);
        let mut corrupt = whole.clone();
        for byte in &mut corrupt[20..40] {
            *byte ^= 0x55;
        }
        let bomb = gzip(&serde_json::to_vec(&json!({"pad": " ".repeat(BODY_LIMIT * 4)})).unwrap());
        let headers = [
            ("content-type", "application/json"),
            ("content-encoding", "gzip"),
        ];
        let id = |name: &str| format!("{place:?}-{name}");

        let read = send(addr, "POST", "/echo", &id("read"), &headers, whole).await;
        assert_eq!(read.status, 200);
        assert_eq!(read.json()["received"], items());

        let mut expected = Vec::new();
        for (name, body, status, code) in [
            ("corrupt", corrupt, 400, "invalid_request"),
            ("truncated", truncated, 400, "invalid_request"),
            (
                "garbage",
                b"not gzip at all".to_vec(),
                400,
                "invalid_request",
            ),
            ("bomb", bomb, 413, "payload_too_large"),
        ] {
            let reply = send(addr, "POST", "/echo", &id(name), &headers, body).await;
            assert_eq!(reply.status, status, "{place:?} {name}");
            assert_eq!(reply.header("content-type"), Some("application/json"));
            assert_eq!(reply.header("x-request-id"), Some(id(name).as_str()));
            let envelope = reply.json();
            assert_eq!(
                envelope["error"]["code"], code,
                "{place:?} {name}: {envelope}"
            );
            assert_eq!(envelope["error"]["request_id"], id(name));
            assert_eq!(envelope["error"]["retryable"], false, "{envelope}");
            expected.push((name, reply));
        }

        drop(log_guard);
        let lines = out.lines();
        assert_eq!(access_line(&lines, &id("read"))["data"]["status"], 200);
        for (name, reply) in &expected {
            let access = access_line(&lines, &id(name));
            let code = reply.json()["error"]["code"].clone();
            assert_eq!(access["data"]["status"], reply.status, "{access}");
            assert_eq!(access["data"]["error_code"], code, "{access}");
            assert_eq!(access["data"]["bytes_out"], reply.raw.len(), "{access}");
            assert_eq!(access["level"], "warn", "{access}");
        }
        assert_eq!(counted(&obs, "/echo", "2xx"), 1.0, "{place:?}");
        assert_eq!(counted(&obs, "/echo", "4xx"), 4.0, "{place:?}");
    }
}

/// A request body in an encoding the service does not decode: with the decompression layer
/// inside the stack, tower-http's bare 415 becomes the `unsupported_media_type` envelope.
#[tokio::test(flavor = "current_thread")]
async fn an_unsupported_request_encoding_gets_an_envelope_with_decompression_inside() {
    let obs = Observability::builder().build().unwrap();
    let addr = serve(decompressing_app(&obs, Place::Inside)).await;
    let headers = [
        ("content-type", "application/json"),
        ("content-encoding", "br"),
    ];
    let reply = send(addr, "POST", "/echo", "br-1", &headers, b"{}".to_vec()).await;
    assert_eq!(reply.status, 415);
    assert_eq!(reply.header("x-request-id"), Some("br-1"));
    let envelope = reply.json();
    assert_eq!(
        envelope["error"]["code"], "unsupported_media_type",
        "{envelope}"
    );
    // The body was JSON: the help is about its encoding, not its type.
    let help = envelope["error"]["help"].as_str().unwrap();
    assert!(help.contains("Accept-Encoding"), "{help}");
    assert!(!help.contains("application/json"), "{help}");
    assert_eq!(counted(&obs, "/echo", "4xx"), 1.0);
}

/// A gzip upload the client stops sending part way (its write side closed before the
/// announced length) is `request_body_incomplete` in either place: the connection's
/// end-of-file reaches the error layer through the decoder, as hyper's error, and is not
/// taken for a truncated gzip stream.
#[tokio::test(flavor = "current_thread")]
async fn a_gzip_upload_cut_by_the_client_is_request_body_incomplete() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    for place in [Place::Outside, Place::Inside] {
        let obs = Observability::builder().build().unwrap();
        let addr = serve(decompressing_app(&obs, place)).await;
        let whole = gzip(&serde_json::to_vec(&items()).unwrap());
        let id = format!("{place:?}-cut");
        let head = format!(
            "POST /echo HTTP/1.1\r\nhost: test\r\nx-request-id: {id}\r\n\
             content-type: application/json\r\ncontent-encoding: gzip\r\n\
             content-length: {}\r\n\r\n",
            whole.len() * 10
        );
        let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
        stream.write_all(head.as_bytes()).await.unwrap();
        stream.write_all(&whole[..whole.len() / 2]).await.unwrap();
        stream.shutdown().await.unwrap();
        let mut raw = Vec::new();
        tokio::time::timeout(Duration::from_secs(30), stream.read_to_end(&mut raw))
            .await
            .expect("an answer within 30 s")
            .unwrap();
        let raw = String::from_utf8_lossy(&raw);
        assert!(raw.starts_with("HTTP/1.1 400"), "{place:?}: {raw}");
        let body = &raw[raw.find("\r\n\r\n").unwrap() + 4..];
        let envelope: Value = serde_json::from_str(body).unwrap_or_else(|e| panic!("{e}: {raw}"));
        assert_eq!(
            envelope["error"]["code"], "request_body_incomplete",
            "{place:?}: {envelope}"
        );
        assert_eq!(envelope["error"]["request_id"], id.as_str());
    }
}
