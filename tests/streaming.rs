//! Long-lived streamed answers through the whole stack, served by `periscope::Server` on
//! 127.0.0.1: server-sent events with keep-alive (axum's `Sse`), a model's tokens as a chunked
//! body with long silences, a client that leaves mid-stream, and the shutdown with a stream open.
//! What a service relies on: the request timeout bounds the head only, one access line covers
//! the whole stream, the lines of the stream (and of the task feeding it) carry the request's
//! ids, and a stream that ends for any reason ends its request (span, line, producer).

#![cfg(all(feature = "axum", feature = "serve"))]

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use axum::Router;
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::routing::get;
use bytes::Bytes;
use futures_util::Stream;
use http_body_util::{BodyExt, Empty};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use periscope::Observability;
use periscope::context::RequestContext;
use serde_json::Value;

// Shared with the other test binaries; this one installs its own subscriber.
#[allow(dead_code)]
mod capture;
use capture::{Captured, OpenSpans, set_default};

/// The log lines periscope writes on this thread, and the request spans open.
fn capture() -> (
    Captured,
    OpenSpans,
    periscope::log::LogGuard,
    tracing::subscriber::DefaultGuard,
) {
    use tracing_subscriber::prelude::*;

    let out = Captured::default();
    let (log, log_guard) = periscope::log::LogLayer::builder()
        .writer(out.clone())
        .blocking(true)
        .build();
    let spans = OpenSpans::default();
    let default = set_default(tracing_subscriber::registry().with(log).with(spans.clone()));
    (out, spans, log_guard, default)
}

/// Waits (polling, up to 30 s) until `done` holds.
async fn eventually(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while !done() {
        assert!(tokio::time::Instant::now() < deadline, "never: {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

async fn listen() -> (tokio::net::TcpListener, SocketAddr) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    (listener, addr)
}

/// `GET path` with `x-request-id: request_id`: the status and the whole body, or the error
/// that cut it (within 30 s).
async fn get_text(addr: SocketAddr, path: &str, request_id: &str) -> Result<(u16, String), String> {
    let client = Client::builder(TokioExecutor::new()).build_http::<Empty<Bytes>>();
    let request = http::Request::get(format!("http://{addr}{path}"))
        .header("x-request-id", request_id)
        .body(Empty::new())
        .unwrap();
    let exchange = async {
        let response = client.request(request).await.map_err(|e| e.to_string())?;
        let status = response.status().as_u16();
        let body = response.into_body().collect().await;
        let body = body.map_err(|e| e.to_string())?.to_bytes();
        Ok((status, String::from_utf8(body.to_vec()).unwrap()))
    };
    tokio::time::timeout(Duration::from_secs(30), exchange)
        .await
        .unwrap_or_else(|_| panic!("GET {path}: no end within 30 s"))
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

/// A producer task fed by the handler, as a service streams what a worker makes: spawned with
/// the request's context (`ctx.scope(..)`), so its lines carry the request's ids. It sends
/// `count` events (`None`: until the stream is gone), `pause` apart, and sets `stopped` when it
/// ends.
fn spawn_producer(
    count: Option<u32>,
    pause: Duration,
    stopped: Arc<AtomicBool>,
) -> tokio::sync::mpsc::Receiver<u32> {
    let (tx, rx) = tokio::sync::mpsc::channel(1);
    let ctx = RequestContext::current().expect("the request's context in the handler");
    let producer = async move {
        for i in 0..count.unwrap_or(u32::MAX) {
            tokio::time::sleep(pause).await;
            tracing::info!(event = i, "event produced");
            if tx.send(i).await.is_err() {
                tracing::info!("stream gone: producer stopped");
                break;
            }
        }
        stopped.store(true, Ordering::SeqCst);
    };
    tokio::spawn(RequestContext::clone(&ctx).scope(producer));
    rx
}

/// Server-sent events from `rx`, each logged as the body sends it, with keep-alive comments in
/// the pauses.
fn events_from(
    rx: tokio::sync::mpsc::Receiver<u32>,
    keep_alive: Duration,
) -> Sse<impl Stream<Item = Result<Event, Infallible>>> {
    let stream = futures_util::stream::unfold(rx, |mut rx| async move {
        let i = rx.recv().await?;
        tracing::info!(event = i, "event sent");
        Some((Ok(Event::default().data(format!("event {i}"))), rx))
    });
    Sse::new(stream).keep_alive(KeepAlive::new().interval(keep_alive))
}

const PAUSE: Duration = Duration::from_millis(250);
const SILENCE: Duration = Duration::from_millis(500);

/// A stream answered at once and sent for longer than the request timeout, and a chunked body
/// silent for longer than the server's idle and head timeouts (a model thinking): both come
/// whole. The timeouts bound the head and the wait between requests, not an answer under way;
/// the one access line covers the stream (`duration_ms`, `bytes_out` as the client got them),
/// and the lines of the stream and of its producer task carry the request's ids.
#[tokio::test(flavor = "current_thread")]
async fn a_stream_outlives_the_request_timeout_and_its_access_line_covers_it_whole() {
    let (out, spans, log_guard, _default) = capture();
    let obs = Observability::builder()
        .request_timeout(Duration::from_millis(200))
        .build()
        .unwrap();
    let stopped = Arc::new(AtomicBool::new(false));
    let app =
        Router::new()
            .route(
                "/events",
                get({
                    let stopped = stopped.clone();
                    move || async move {
                        events_from(spawn_producer(Some(3), PAUSE, stopped), PAUSE / 2)
                    }
                }),
            )
            .route(
                "/tokens",
                get(|| async {
                    let tokens = futures_util::stream::unfold(0u8, |i| async move {
                        if i == 3 {
                            return None;
                        }
                        if i > 0 {
                            tokio::time::sleep(SILENCE).await;
                        }
                        Some((
                            Ok::<_, Infallible>(Bytes::from(format!("token {i}\n"))),
                            i + 1,
                        ))
                    });
                    axum::body::Body::from_stream(tokens)
                }),
            )
            .layer(obs.layer());
    let (listener, addr) = listen().await;
    tokio::spawn(
        periscope::Server::new(listener)
            .idle_timeout(Duration::from_millis(100))
            .header_read_timeout(Duration::from_millis(100))
            .serve(app, std::future::pending()),
    );

    let (status, events) = get_text(addr, "/events", "events-1")
        .await
        .expect("the whole stream of events");
    assert_eq!(status, 200);
    let sent: Vec<&str> = events
        .lines()
        .filter(|line| line.starts_with("data:"))
        .collect();
    assert_eq!(sent, ["data: event 0", "data: event 1", "data: event 2"]);
    let (status, tokens) = get_text(addr, "/tokens", "tokens-1")
        .await
        .expect("the whole chunked body");
    assert_eq!(status, 200);
    assert_eq!(tokens, "token 0\ntoken 1\ntoken 2\n");
    eventually("both requests end", || spans.count() == 0).await;
    assert!(stopped.load(Ordering::SeqCst));

    drop(log_guard);
    let lines = out.lines();
    for (id, body, lasted) in [
        ("events-1", &events, PAUSE * 3),
        ("tokens-1", &tokens, SILENCE * 2),
    ] {
        let access = access_line(&lines, id);
        let data = &access["data"];
        assert_eq!(data["status"], 200, "{access}");
        assert_eq!(data.get("aborted"), None, "{access}");
        assert_eq!(data.get("error_code"), None, "{access}");
        assert_eq!(data["bytes_out"], body.len(), "{access}");
        let duration_ms = data["duration_ms"].as_f64().unwrap();
        assert!(duration_ms >= lasted.as_millis() as f64, "{access}");
        assert_eq!(access["level"], "info", "{access}");
    }
    let access = access_line(&lines, "events-1");
    for message in ["event produced", "event sent"] {
        let of_stream: Vec<&Value> = lines.iter().filter(|l| l["message"] == message).collect();
        assert_eq!(of_stream.len(), 3, "{message}: {lines:#?}");
        for line in of_stream {
            assert_eq!(line["request_id"], "events-1", "{line}");
            assert_eq!(line["trace_id"], access["trace_id"], "{line}");
            assert_eq!(line["span_id"], access["span_id"], "{line}");
        }
    }
    assert!(
        !lines
            .iter()
            .any(|l| l["level"] == "warn" || l["level"] == "error"),
        "{lines:#?}"
    );
}

/// The client leaves an endless stream of events: the request ends (its access line
/// `aborted`, its span closed, out of the in-flight gauge it stayed in while open) and the
/// task feeding the stream stops, as nothing reads it.
#[tokio::test(flavor = "current_thread")]
async fn a_client_leaving_an_event_stream_ends_its_request_and_stops_its_producer() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    let (out, spans, log_guard, _default) = capture();
    let obs = Observability::builder().build().unwrap();
    let stopped = Arc::new(AtomicBool::new(false));
    let app = Router::new()
        .route(
            "/events",
            get({
                let stopped = stopped.clone();
                move || async move {
                    let pause = Duration::from_millis(20);
                    events_from(
                        spawn_producer(None, pause, stopped),
                        Duration::from_secs(15),
                    )
                }
            }),
        )
        .layer(obs.layer());
    let (listener, addr) = listen().await;
    tokio::spawn(periscope::Server::new(listener).serve(app, std::future::pending()));

    let mut client = tokio::net::TcpStream::connect(addr).await.unwrap();
    client
        .write_all(b"GET /events HTTP/1.1\r\nhost: t\r\nx-request-id: leaves-1\r\n\r\n")
        .await
        .unwrap();
    let mut answer = Vec::new();
    while answer.windows(7).filter(|w| w == b"data: e").count() < 3 {
        let mut buf = [0; 1024];
        let n = tokio::time::timeout(Duration::from_secs(30), client.read(&mut buf))
            .await
            .expect("events within 30 s")
            .unwrap();
        assert!(n > 0, "the stream ended early");
        answer.extend_from_slice(&buf[..n]);
    }
    assert_eq!(obs.in_flight(), 1, "an open stream is being served");
    drop(client);

    eventually("the producer stops", || stopped.load(Ordering::SeqCst)).await;
    eventually("the stream leaves the gauge", || obs.in_flight() == 0).await;
    eventually("the request's span closes", || spans.count() == 0).await;
    drop(log_guard);
    let lines = out.lines();
    let access = access_line(&lines, "leaves-1");
    assert_eq!(access["data"]["status"], 200, "{access}");
    assert_eq!(access["data"]["aborted"], true, "{access}");
    assert!(
        access["data"]["bytes_out"].as_u64().unwrap() > 0,
        "{access}"
    );
    let stop = lines
        .iter()
        .find(|l| l["message"] == "stream gone: producer stopped")
        .expect("the producer's last line");
    assert_eq!(stop["request_id"], "leaves-1", "{stop}");
}

/// Waits for `signal`, then for the shutdown as `Server::serve` takes it.
fn shutdown_on(
    signal: tokio::sync::oneshot::Receiver<()>,
    obs: &Observability,
) -> periscope::health::Shutdown {
    periscope::health::Shutdown::on(
        async move {
            let _ = signal.await;
            "test"
        },
        obs.health().drain_handle(),
        Duration::from_millis(100),
    )
}

/// A stream that ends itself on the shutdown (`stream.take_until(shutdown.wait())`) ends
/// cleanly: the client gets the whole stream, the server stops without waiting for its
/// shutdown timeout, and the access line is a complete one.
#[tokio::test(flavor = "current_thread")]
async fn a_stream_that_ends_on_the_shutdown_signal_ends_cleanly() {
    use futures_util::StreamExt;

    let (out, spans, log_guard, _default) = capture();
    let obs = Observability::builder().build().unwrap();
    let (signal, signalled) = tokio::sync::oneshot::channel();
    let shutdown = shutdown_on(signalled, &obs);
    let stopped = Arc::new(AtomicBool::new(false));
    let app = Router::new()
        .route(
            "/events",
            get({
                let stopped = stopped.clone();
                let shutdown = shutdown.clone();
                move || async move {
                    let pause = Duration::from_millis(20);
                    let rx = spawn_producer(None, pause, stopped);
                    let stream = futures_util::stream::unfold(rx, |mut rx| async move {
                        let i = rx.recv().await?;
                        Some((
                            Ok::<_, Infallible>(Event::default().data(format!("event {i}"))),
                            rx,
                        ))
                    });
                    Sse::new(stream.take_until(shutdown.wait()))
                        .keep_alive(KeepAlive::new().interval(Duration::from_secs(15)))
                }
            }),
        )
        .layer(obs.layer());
    let (listener, addr) = listen().await;
    let server = tokio::spawn(
        obs.server(listener)
            .shutdown_timeout(Duration::from_secs(60))
            .serve(app, shutdown.clone().wait()),
    );

    let client = tokio::spawn(async move { get_text(addr, "/events", "ends-1").await });
    eventually("the stream is under way", || {
        out.lines().iter().any(|l| l["message"] == "event produced")
    })
    .await;
    signal.send(()).unwrap();
    tokio::time::timeout(Duration::from_secs(30), server)
        .await
        .expect("the server stops before its shutdown timeout")
        .unwrap()
        .unwrap();
    let (status, body) = client.await.unwrap().expect("the whole stream");
    assert_eq!(status, 200);
    assert!(body.contains("data: event 0"), "{body}");
    eventually("the producer stops", || stopped.load(Ordering::SeqCst)).await;
    eventually("the request's span closes", || spans.count() == 0).await;
    drop(log_guard);
    let lines = out.lines();
    let access = access_line(&lines, "ends-1");
    assert_eq!(access["data"].get("aborted"), None, "{access}");
    assert_eq!(access["data"]["bytes_out"], body.len(), "{access}");
    assert!(!lines.iter().any(|l| l["level"] == "warn"), "{lines:#?}");
}
