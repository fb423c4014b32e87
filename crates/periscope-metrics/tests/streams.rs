//! Streamed responses over a real socket: a request stays in `http_server_requests_in_flight`
//! until its response body ends, fails or is dropped (the client went away), as read back from
//! the scraped `/metrics`; it is still counted and timed at its head.

mod common;

use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use axum::Router;
use axum::extract::State;
use axum::response::Response;
use axum::routing::get;
use bytes::Bytes;
use common::{parse_openmetrics, points, request, serve, sum_where};
use http_body::{Body, Frame};
use http_body_util::BodyExt;
use openmetrics_parser::OpenMetricsValue;
use periscope_metrics::{MetricsLayer, MetricsRegistry, MetricsService};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::mpsc::{UnboundedReceiver, UnboundedSender, unbounded_channel};
use tower::{ServiceExt, service_fn};
use tower_layer::Layer;

type FrameResult = Result<Frame<Bytes>, std::io::Error>;

/// A response body whose frames the test sends; it ends when the sender is dropped.
struct Script(UnboundedReceiver<FrameResult>);

impl Body for Script {
    type Data = Bytes;
    type Error = std::io::Error;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<FrameResult>> {
        self.0.poll_recv(cx)
    }
}

/// An endless event stream, one event every 10 ms, as a server keeping its clients alive.
struct Ticks(tokio::time::Interval);

impl Body for Ticks {
    type Data = Bytes;
    type Error = std::io::Error;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<FrameResult>> {
        self.0
            .poll_tick(cx)
            .map(|_| Some(Ok(Frame::data(Bytes::from_static(b"data: tick\n\n")))))
    }
}

/// The body `/events` answers next.
type Next = Arc<Mutex<Option<Script>>>;

fn event(text: &str) -> FrameResult {
    Ok(Frame::data(Bytes::from(format!("data: {text}\n\n"))))
}

fn event_stream(body: axum::body::Body) -> Response {
    Response::builder()
        .header("content-type", "text/event-stream")
        .body(body)
        .unwrap()
}

/// The metrics layer over `/events` (a scripted stream), `/ticks` (an endless one) and
/// `/fixed`; `/metrics` is the scrape, left out of the RED metrics.
fn app(registry: &MetricsRegistry, next: &Next) -> (MetricsLayer, Router) {
    let layer = MetricsLayer::builder()
        .route_templates(["/events", "/ticks", "/fixed"])
        .ignore_path("/metrics")
        .register(registry)
        .unwrap();
    let router = Router::new()
        .route(
            "/events",
            get(|State(next): State<Next>| async move {
                let script = next.lock().unwrap().take().unwrap();
                event_stream(axum::body::Body::new(script))
            }),
        )
        .route(
            "/ticks",
            get(|| async {
                let ticks = Ticks(tokio::time::interval(Duration::from_millis(10)));
                event_stream(axum::body::Body::new(ticks))
            }),
        )
        .route("/fixed", get(|| async { "hello" }))
        .with_state(next.clone())
        .layer(layer.clone())
        .route_service("/metrics", MetricsService::new(registry.clone()));
    (layer, router)
}

/// Scrapes `/metrics` over the socket and parses it back.
async fn scrape(addr: std::net::SocketAddr) -> common::OpenMetrics {
    let accept = [("accept", "application/openmetrics-text; version=1.0.0")];
    let response = request(addr, "GET", "/metrics", &accept).await.unwrap();
    assert_eq!(response.status, 200);
    parse_openmetrics(&response.text())
}

/// `http_server_requests_in_flight` of `route`, as scraped.
async fn in_flight(addr: std::net::SocketAddr, route: &str) -> f64 {
    let exposition = scrape(addr).await;
    let points = points(&exposition, "http_server_requests_in_flight");
    sum_where(&points, &[("route", route)])
}

/// The request count of `route` under `status`, and its duration histogram's count and sum.
async fn recorded(addr: std::net::SocketAddr, route: &str, status: &str) -> (f64, u64, f64) {
    let exposition = scrape(addr).await;
    let requests = points(&exposition, "http_server_requests");
    let count = sum_where(&requests, &[("route", route), ("status", status)]);
    let mut timed = (0, 0.0);
    for sample in exposition.families["http_server_request_duration_seconds"].iter_samples() {
        let labels = sample.get_labelset().unwrap();
        if labels.get_label_value("route") == Some(route)
            && labels.get_label_value("status") == Some(status)
            && let OpenMetricsValue::Histogram(histogram) = &sample.value
        {
            timed = (
                histogram.count.unwrap(),
                histogram.sum.as_ref().unwrap().as_f64(),
            );
        }
    }
    (count, timed.0, timed.1)
}

/// Polls `done` until it holds; 10 s at most, for a loaded machine.
async fn eventually(what: &str, mut done: impl AsyncFnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while !done().await {
        assert!(
            tokio::time::Instant::now() < deadline,
            "never happened: {what}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Opens `path` (kept alive) and reads until `until` has come; the connection stays open.
async fn open_stream(addr: std::net::SocketAddr, path: &str, until: &[u8]) -> (TcpStream, Vec<u8>) {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    let head = format!("GET {path} HTTP/1.1\r\nhost: test\r\naccept: text/event-stream\r\n\r\n");
    stream.write_all(head.as_bytes()).await.unwrap();
    let mut received = Vec::new();
    read_until(&mut stream, &mut received, until).await;
    (stream, received)
}

async fn read_until(stream: &mut TcpStream, received: &mut Vec<u8>, until: &[u8]) {
    while !received.windows(until.len()).any(|window| window == until) {
        let mut buf = [0; 1024];
        let read = tokio::time::timeout(Duration::from_secs(10), stream.read(&mut buf))
            .await
            .expect("the stream sends within 10 s")
            .unwrap();
        assert_ne!(read, 0, "the stream closed before {until:?}");
        received.extend_from_slice(&buf[..read]);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_open_stream_is_in_flight_until_its_body_ends() {
    let registry = MetricsRegistry::new();
    let next = Next::default();
    let (layer, app) = app(&registry, &next);
    let addr = serve(app).await;

    let (sender, receiver) = unbounded_channel();
    *next.lock().unwrap() = Some(Script(receiver));
    sender.send(event("one")).unwrap();
    let opened = std::time::Instant::now();
    let (mut stream, _) = open_stream(addr, "/events", b"data: one").await;
    // The server's time to the head lies within the client's time to the first event.
    let to_head = opened.elapsed().as_secs_f64();

    assert_eq!(in_flight(addr, "/events").await, 1.0);
    assert_eq!(layer.in_flight(), 1);
    tokio::time::sleep(Duration::from_millis(300)).await;
    sender.send(event("two")).unwrap();
    assert_eq!(in_flight(addr, "/events").await, 1.0, "still open");
    // Counted and timed at its head: the time the stream stays open is not its latency.
    let (count, timed, seconds) = recorded(addr, "/events", "2xx").await;
    assert_eq!((count, timed), (1.0, 1));
    assert!(
        seconds <= to_head,
        "timed to the head: {seconds} > {to_head}"
    );

    // The service ends the stream: the client reads it to its end, and it leaves the gauge.
    drop(sender);
    let mut rest = Vec::new();
    // The last chunk of the stream; the connection is kept alive.
    read_until(&mut stream, &mut rest, b"\r\n0\r\n\r\n").await;
    assert!(String::from_utf8_lossy(&rest).contains("data: two"));
    assert_eq!(in_flight(addr, "/events").await, 0.0);
    assert_eq!(layer.in_flight(), 0);
    assert_eq!(
        recorded(addr, "/events", "2xx").await.0,
        1.0,
        "counted once"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_leaving_mid_stream_takes_it_out_of_flight() {
    let registry = MetricsRegistry::new();
    let (layer, app) = app(&registry, &Next::default());
    let addr = serve(app).await;

    let mut streams = Vec::new();
    for _ in 0..3 {
        streams.push(open_stream(addr, "/ticks", b"data: tick").await.0);
    }
    assert_eq!(in_flight(addr, "/ticks").await, 3.0);
    drop(streams.pop());
    // The server notices at its next write and drops the body.
    eventually("one client left", async || {
        in_flight(addr, "/ticks").await == 2.0
    })
    .await;
    drop(streams);
    eventually("every client left", async || {
        in_flight(addr, "/ticks").await == 0.0
    })
    .await;
    assert_eq!(layer.in_flight(), 0);
    // Answered (a 200 head) before the clients left: not cancelled.
    assert_eq!(recorded(addr, "/ticks", "2xx").await.0, 3.0);
    assert_eq!(recorded(addr, "/ticks", "cancelled").await.0, 0.0);
}

/// A body the server never polls (the answer to a `HEAD`) leaves the gauge when dropped, and
/// a full body keeps its length: hyper still sends `content-length`, not chunks.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bodies_sent_whole_or_never_leave_the_gauge() {
    let registry = MetricsRegistry::new();
    let (layer, app) = app(&registry, &Next::default());
    let addr = serve(app).await;

    let head = request(addr, "HEAD", "/ticks", &[]).await.unwrap();
    assert_eq!(head.status, 200);
    let fixed = request(addr, "GET", "/fixed", &[]).await.unwrap();
    assert_eq!(fixed.header("content-length"), Some("5"));
    assert_eq!(fixed.header("transfer-encoding"), None);
    assert_eq!(fixed.text(), "hello");
    eventually("the bodies are dropped", async || {
        in_flight(addr, "/ticks").await == 0.0
    })
    .await;
    assert_eq!(in_flight(addr, "/fixed").await, 0.0);
    assert_eq!(layer.in_flight(), 0);
}

/// The body wrapper without a server: the request leaves the gauge at the body's last frame
/// (its end, its trailers, an error), or when the body is dropped unpolled; an error result
/// never enters it; the wrapper tells the inner body's length and end exactly.
#[tokio::test(flavor = "current_thread")]
async fn the_gauge_follows_the_body_to_its_last_frame_or_its_drop() {
    let registry = MetricsRegistry::new();
    let layer = MetricsLayer::new(&registry).unwrap();
    let senders: Arc<Mutex<Vec<UnboundedSender<FrameResult>>>> = Arc::default();
    let kept = senders.clone();
    let app = layer.layer(service_fn(move |request: http::Request<String>| {
        let senders = kept.clone();
        async move {
            if request.uri().path() == "/error" {
                return Err(std::io::Error::other("refused"));
            }
            let (sender, receiver) = unbounded_channel();
            sender.send(event("one")).unwrap();
            senders.lock().unwrap().push(sender);
            Ok(http::Response::new(Script(receiver)))
        }
    }));
    let call = |path: &str| {
        let request = http::Request::get(path).body(String::new()).unwrap();
        app.clone().oneshot(request)
    };

    // Dropped unpolled.
    let response = call("/a").await.unwrap();
    assert_eq!(layer.in_flight(), 1);
    drop(response);
    assert_eq!(layer.in_flight(), 0);

    // Read to its end (the sender dropped): out at the end, while the body is still held.
    let mut body = call("/b").await.unwrap().into_body();
    assert_eq!(
        body.frame().await.unwrap().unwrap().into_data().unwrap(),
        "data: one\n\n"
    );
    assert_eq!(layer.in_flight(), 1);
    senders.lock().unwrap().clear();
    assert!(body.frame().await.is_none());
    assert_eq!(layer.in_flight(), 0);
    drop(body);
    assert_eq!(layer.in_flight(), 0, "never below 0");

    // Trailers are the last frame; so is an error.
    for last in [
        Ok(Frame::trailers(http::HeaderMap::new())),
        Err(std::io::Error::other("cut")),
    ] {
        let mut body = call("/c").await.unwrap().into_body();
        senders.lock().unwrap().pop().unwrap().send(last).unwrap();
        body.frame().await.unwrap().unwrap();
        assert_eq!(layer.in_flight(), 1);
        let _ = body.frame().await.unwrap();
        assert_eq!(layer.in_flight(), 0);
    }

    assert!(call("/error").await.is_err());
    assert_eq!(layer.in_flight(), 0);

    // Length and end pass through untouched.
    let app = layer.layer(service_fn(|request: http::Request<String>| async move {
        Ok::<_, std::convert::Infallible>(http::Response::new(http_body_util::Full::new(
            Bytes::from(request.into_body()),
        )))
    }));
    let response = app
        .clone()
        .oneshot(http::Request::new(String::from("hello")))
        .await
        .unwrap();
    assert_eq!(response.body().size_hint().exact(), Some(5));
    assert!(!response.body().is_end_stream());
    let empty = app
        .oneshot(http::Request::new(String::new()))
        .await
        .unwrap();
    assert!(empty.body().is_end_stream());
    assert_eq!(empty.body().size_hint().exact(), Some(0));
}
