//! gRPC calls whose `grpc-status` comes in the trailers, after streamed messages, over a real
//! socket: each is counted once, when its body ends, under the status its code stands for,
//! timed to its end and in flight until then; a body that ends without a status or fails
//! counts as `UNKNOWN` or `INTERNAL`, one dropped by a client that went away as `cancelled`,
//! as a call the client drops before its head.
//!
//! The trailers are read by the access log (`AccessLogLayer`) composed inside the metrics
//! layer, as `obs.layer()` composes them; without it, such a call is recorded at its head.

mod common;

use std::collections::HashMap;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use axum::Router;
use axum::extract::State;
use axum::http::Uri;
use axum::response::Response;
use bytes::Bytes;
use common::{parse_openmetrics, points, request, serve, sum_where};
use http_body::Frame;
use openmetrics_parser::OpenMetricsValue;
use periscope_log::AccessLogLayer;
use periscope_metrics::{MetricsLayer, MetricsRegistry, StatusLabel};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::mpsc::{UnboundedSender, unbounded_channel};

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

/// The bodies to answer, by path, each taken by the one request it is for.
type Scripts = Arc<Mutex<HashMap<String, Script>>>;

async fn answer(State(scripts): State<Scripts>, uri: Uri) -> Response {
    let script = scripts.lock().unwrap().remove(uri.path()).unwrap();
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

/// Adds the body of `path`: `frames` sent now; the sender, to send more and end it.
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

async fn call(addr: std::net::SocketAddr, path: &str) -> Option<u16> {
    let headers = [("content-type", "application/grpc"), ("te", "trailers")];
    request(addr, "POST", path, &headers)
        .await
        .map(|response| response.status)
}

/// The request count and the duration histogram's count and sum of `route` under `status`.
fn recorded(registry: &MetricsRegistry, route: &str, status: &str) -> (f64, u64, f64) {
    let exposition = parse_openmetrics(&registry.encode_openmetrics().unwrap());
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

fn total(registry: &MetricsRegistry, route: &str) -> f64 {
    let text = registry.encode_openmetrics().unwrap();
    if text.trim() == "# EOF" {
        // Nothing recorded yet (the parser refuses an empty exposition).
        return 0.0;
    }
    let exposition = parse_openmetrics(&text);
    sum_where(
        &points(&exposition, "http_server_requests"),
        &[("route", route)],
    )
}

async fn eventually(what: &str, mut done: impl FnMut() -> bool) {
    for _ in 0..200 {
        if done() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("never happened: {what}");
}

fn metrics_layer(registry: &MetricsRegistry) -> MetricsLayer {
    MetricsLayer::builder()
        .route_fn(|uri, _| Some(uri.path()))
        .status_label(StatusLabel::Code)
        .register(registry)
        .unwrap()
}

/// The metrics layer over the access log, which reads the trailers, as `obs.layer()` has them.
fn app(registry: &MetricsRegistry, scripts: &Scripts) -> (MetricsLayer, Router) {
    let layer = metrics_layer(registry);
    let router = Router::new()
        .fallback(answer)
        .with_state(scripts.clone())
        .layer(AccessLogLayer::new())
        .layer(layer.clone());
    (layer, router)
}

#[tokio::test(flavor = "current_thread")]
async fn a_call_failing_after_its_messages_counts_by_its_trailers() {
    let registry = MetricsRegistry::new();
    let scripts = Scripts::default();
    let (_layer, app) = app(&registry, &scripts);
    let addr = serve(app).await;

    for (path, frames) in [
        (
            "/pkg.Svc/Internal",
            vec![message(), message(), trailers("13")],
        ),
        ("/pkg.Svc/Missing", vec![message(), trailers("5")]),
        ("/pkg.Svc/Ok", vec![message(), trailers("0")]),
        // Trailers without a status: the client gets none.
        (
            "/pkg.Svc/Bare",
            vec![message(), Ok(Frame::trailers(http::HeaderMap::new()))],
        ),
        // No trailers at all.
        ("/pkg.Svc/Untold", vec![message()]),
    ] {
        drop(script(&scripts, path, frames));
        assert_eq!(call(addr, path).await, Some(200), "{path}");
    }
    for (path, status) in [
        ("/pkg.Svc/Internal", "500"),
        ("/pkg.Svc/Missing", "404"),
        ("/pkg.Svc/Ok", "200"),
        ("/pkg.Svc/Bare", "500"),
        ("/pkg.Svc/Untold", "500"),
    ] {
        let (count, timed, _) = recorded(&registry, path, status);
        assert_eq!((count, timed), (1.0, 1), "{path}");
        // Once, and under that status only.
        assert_eq!(total(&registry, path), 1.0, "{path}");
    }
}

/// A HEAD answered like a gRPC call sends no body, so no trailers: it is judged by its head
/// (a load balancer's probe on a gRPC port must not count as a failure).
#[tokio::test(flavor = "current_thread")]
async fn a_head_request_is_judged_by_its_head() {
    let registry = MetricsRegistry::new();
    let scripts = Scripts::default();
    let (layer, app) = app(&registry, &scripts);
    let addr = serve(app).await;

    let path = "/pkg.Svc/Probe";
    drop(script(&scripts, path, vec![message(), trailers("0")]));
    let headers = [("content-type", "application/grpc")];
    let answer = request(addr, "HEAD", path, &headers).await;
    assert_eq!(answer.map(|answer| answer.status), Some(200));
    eventually("the probe is recorded", || total(&registry, path) == 1.0).await;
    assert_eq!(recorded(&registry, path, "200").0, 1.0);
    assert_eq!(layer.in_flight(), 0);
}

#[tokio::test(flavor = "current_thread")]
async fn a_streamed_call_is_timed_and_in_flight_until_its_trailers() {
    let registry = MetricsRegistry::new();
    let scripts = Scripts::default();
    let (layer, app) = app(&registry, &scripts);
    let addr = serve(app).await;

    let path = "/pkg.Svc/Slow";
    let sender = script(&scripts, path, vec![message()]);
    let client = tokio::spawn(async move { call(addr, path).await });
    eventually("the call is in flight", || layer.in_flight() == 1).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    // The head and a message are out: not recorded yet, still in flight.
    assert_eq!(total(&registry, path), 0.0);
    assert_eq!(layer.in_flight(), 1);
    sender.send(trailers("14")).unwrap();
    drop(sender);
    assert_eq!(client.await.unwrap(), Some(200));

    eventually("the call is recorded", || total(&registry, path) == 1.0).await;
    let (count, timed, seconds) = recorded(&registry, path, "503");
    assert_eq!((count, timed), (1.0, 1));
    assert!(seconds >= 0.3, "timed to its end: {seconds}");
    assert_eq!(layer.in_flight(), 0);
}

#[tokio::test(flavor = "current_thread")]
async fn a_stream_cut_short_counts_once_as_cancelled_or_failed() {
    let registry = MetricsRegistry::new();
    let scripts = Scripts::default();
    let (layer, app) = app(&registry, &scripts);
    let addr = serve(app).await;

    // The service's stream fails after a message: the server resets the call.
    let failed = "/pkg.Svc/Failed";
    drop(script(
        &scripts,
        failed,
        vec![message(), Err(std::io::Error::other("upstream reset"))],
    ));
    let _ = call(addr, failed).await;
    eventually("the failed call is recorded", || {
        total(&registry, failed) == 1.0
    })
    .await;
    assert_eq!(recorded(&registry, failed, "500").0, 1.0);

    // The client goes away after the first message: the server drops the body.
    let dropped = "/pkg.Svc/Dropped";
    let sender = script(&scripts, dropped, vec![message()]);
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    stream
        .write_all(
            format!(
                "POST {dropped} HTTP/1.1\r\nhost: test\r\ncontent-type: application/grpc\r\n\
                 te: trailers\r\ncontent-length: 0\r\n\r\n"
            )
            .as_bytes(),
        )
        .await
        .unwrap();
    let mut received = Vec::new();
    while !received.windows(2).any(|w| w == b"hi") {
        let mut buf = [0; 1024];
        let read = stream.read(&mut buf).await.unwrap();
        assert_ne!(read, 0, "the message comes before the client leaves");
        received.extend_from_slice(&buf[..read]);
    }
    assert_eq!(layer.in_flight(), 1);
    drop(stream);
    eventually("the dropped call is recorded", || {
        total(&registry, dropped) == 1.0
    })
    .await;
    // The client cancelled: `cancelled`, as a call dropped before its head (below), not the
    // 499 of a `CANCELLED` the service answers.
    assert_eq!(recorded(&registry, dropped, "cancelled").0, 1.0);
    assert_eq!(recorded(&registry, dropped, "499").0, 0.0);
    assert_eq!(layer.in_flight(), 0);
    // Nothing more once the body is gone, whatever the service still sends.
    let _ = sender.send(trailers("0"));
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert_eq!(total(&registry, dropped), 1.0);
}

/// A call the client drops is `cancelled` wherever it drops it: before the head (a unary call
/// still running) as mid-stream (above); a `CANCELLED` the service answers itself is its 499.
#[tokio::test(flavor = "current_thread")]
async fn a_call_the_client_drops_before_its_head_is_cancelled_too() {
    let registry = MetricsRegistry::new();
    let scripts = Scripts::default();
    let layer = metrics_layer(&registry);
    let app = Router::new()
        .route(
            "/pkg.Svc/Unary",
            axum::routing::post(std::future::pending::<Response>),
        )
        .fallback(answer)
        .with_state(scripts.clone())
        .layer(AccessLogLayer::new())
        .layer(layer.clone());
    let addr = serve(app).await;

    let unary = "/pkg.Svc/Unary";
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    stream
        .write_all(
            format!(
                "POST {unary} HTTP/1.1\r\nhost: test\r\ncontent-type: application/grpc\r\n\
                 te: trailers\r\ncontent-length: 0\r\n\r\n"
            )
            .as_bytes(),
        )
        .await
        .unwrap();
    eventually("the call is in flight", || layer.in_flight() == 1).await;
    drop(stream);
    eventually("the dropped call is recorded", || {
        total(&registry, unary) == 1.0
    })
    .await;
    assert_eq!(recorded(&registry, unary, "cancelled").0, 1.0);
    assert_eq!(layer.in_flight(), 0);

    // The service's own `CANCELLED`, in the trailers: the status it stands for.
    let answered = "/pkg.Svc/Answered";
    drop(script(&scripts, answered, vec![message(), trailers("1")]));
    let _ = call(addr, answered).await;
    eventually("the answered call is recorded", || {
        total(&registry, answered) == 1.0
    })
    .await;
    assert_eq!(recorded(&registry, answered, "499").0, 1.0);
}

/// Every other answer is recorded at its head, as before: a plain HTTP stream is not waited
/// for, nor is a trailers-only gRPC answer or a gRPC-Web one (its trailers are in its body).
/// It stays in flight until its body ends, as every answer does.
#[tokio::test(flavor = "current_thread")]
async fn other_answers_are_recorded_at_their_head() {
    let registry = MetricsRegistry::new();
    let scripts = Scripts::default();
    let layer = metrics_layer(&registry);
    let plain = |content_type: &'static str| {
        move |State(scripts): State<Scripts>, uri: Uri| async move {
            let script = scripts.lock().unwrap().remove(uri.path()).unwrap();
            Response::builder()
                .header("content-type", content_type)
                .body(axum::body::Body::new(script))
                .unwrap()
        }
    };
    let app = Router::new()
        .route("/text", axum::routing::post(plain("text/plain")))
        .route(
            "/web",
            axum::routing::post(plain("application/grpc-web+proto")),
        )
        .with_state(scripts.clone())
        .layer(AccessLogLayer::new())
        .layer(layer.clone());
    let addr = serve(app).await;
    for path in ["/text", "/web"] {
        let sender = script(&scripts, path, vec![message()]);
        let client = tokio::spawn(async move { call(addr, path).await });
        eventually("recorded at the head", || total(&registry, path) == 1.0).await;
        assert_eq!(recorded(&registry, path, "200").0, 1.0, "{path}");
        assert_eq!(layer.in_flight(), 1, "{path}");
        sender.send(trailers("13")).unwrap();
        drop(sender);
        assert_eq!(client.await.unwrap(), Some(200));
        assert_eq!(total(&registry, path), 1.0, "{path}");
        assert_eq!(layer.in_flight(), 0, "{path}");
    }
}

/// Without the access log inside, nothing reads the trailers for the metrics layer: a call
/// whose code comes in them is recorded at its head, as the 200 it was then (the documented
/// fallback); it leaves the in-flight gauge when its body ends, as any answer.
#[tokio::test(flavor = "current_thread")]
async fn without_the_access_log_a_streamed_call_is_recorded_at_its_head() {
    let registry = MetricsRegistry::new();
    let scripts = Scripts::default();
    let layer = metrics_layer(&registry);
    let app = Router::new()
        .fallback(answer)
        .with_state(scripts.clone())
        .layer(layer.clone());
    let addr = serve(app).await;

    let path = "/pkg.Svc/Alone";
    let sender = script(&scripts, path, vec![message()]);
    let client = tokio::spawn(async move { call(addr, path).await });
    eventually("recorded at the head", || total(&registry, path) == 1.0).await;
    assert_eq!(recorded(&registry, path, "200").0, 1.0);
    assert_eq!(layer.in_flight(), 1);
    sender.send(trailers("13")).unwrap();
    drop(sender);
    assert_eq!(client.await.unwrap(), Some(200));
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert_eq!(total(&registry, path), 1.0);
    assert_eq!(layer.in_flight(), 0);
    assert_eq!(recorded(&registry, path, "500").0, 0.0);
}
