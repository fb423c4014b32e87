//! Each crate's layers composed by hand in an order other than the documented one
//! (docs/ordering.md) over a real socket: what a user sees, and the one warning per
//! misordering that names it. Each misordering is made by one test only: the warnings are
//! written once per process.

#![cfg(feature = "axum")]

use std::net::SocketAddr;
use std::time::Duration;

use axum::Router;
use axum::routing::get;
use periscope::error::ErrorLayer;
use periscope::log::AccessLogLayer;
use periscope::metrics::{Format, MetricsLayer, MetricsRegistry};
use periscope::trace::CorrelationLayer;
use serde_json::Value;

mod capture;
use capture::{Captured, capture_lines};

impl Captured {
    /// The layer-order warnings.
    fn order_warnings(&self) -> Vec<Value> {
        self.lines()
            .into_iter()
            .filter(|line| line["target"] == "periscope::order")
            .collect()
    }

    fn access_lines(&self, path: &str) -> Vec<Value> {
        self.lines()
            .into_iter()
            .filter(|line| line["target"] == "periscope::access" && line["data"]["path"] == path)
            .collect()
    }
}

async fn boom() -> &'static str {
    panic!("boom")
}

async fn slow() -> &'static str {
    tokio::time::sleep(Duration::from_secs(30)).await;
    "too late"
}

fn routes() -> Router {
    Router::new()
        .route("/ok", get(|| async { "ok" }))
        .route("/boom", get(boom))
        .route("/slow", get(slow))
}

/// Serves `app` on this thread's runtime with a JSON log capturing every line; the guard
/// flushes on drop.
async fn serve(app: Router) -> (SocketAddr, Captured, impl Drop) {
    let (out, log_guard, default) = capture_lines(None);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    struct Guards<A, B>(A, B);
    impl<A, B> Drop for Guards<A, B> {
        fn drop(&mut self) {}
    }
    (addr, out, Guards(log_guard, default))
}

/// One HTTP/1.1 request; `request_id` sent when given. The head and the body.
async fn get_raw(addr: SocketAddr, path: &str, request_id: Option<&str>) -> (String, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let id = request_id
        .map(|id| format!("x-request-id: {id}\r\n"))
        .unwrap_or_default();
    let request = format!("GET {path} HTTP/1.1\r\nhost: a\r\n{id}connection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut answer = String::new();
    tokio::time::timeout(Duration::from_secs(10), stream.read_to_string(&mut answer))
        .await
        .expect("an answer within 10 s")
        .unwrap();
    let (head, body) = answer.split_once("\r\n\r\n").expect("a response head");
    (head.to_owned(), body.to_owned())
}

fn header<'a>(head: &'a str, name: &str) -> Option<&'a str> {
    head.lines().find_map(|line| {
        let (n, v) = line.split_once(": ")?;
        n.eq_ignore_ascii_case(name).then_some(v)
    })
}

fn count(registry: &MetricsRegistry, route: &str, status: &str) -> f64 {
    let text = registry.encode(Format::Prometheus).unwrap();
    text.lines()
        .filter(|l| {
            l.starts_with("http_server_requests_total")
                && l.contains(&format!("route=\"{route}\""))
                && l.contains(&format!("status=\"{status}\""))
        })
        .map(|l| l.rsplit(' ').next().unwrap().parse::<f64>().unwrap())
        .sum()
}

fn metrics(registry: &MetricsRegistry) -> MetricsLayer {
    MetricsLayer::new(registry).unwrap()
}

fn assert_one_warning(warnings: &[Value], outer: &str, inner: &str) {
    let of_pair: Vec<&Value> = warnings
        .iter()
        .filter(|w| w["data"]["outer"] == outer && w["data"]["inner"] == inner)
        .collect();
    assert_eq!(of_pair.len(), 1, "{warnings:#?}");
    let warning = of_pair[0];
    assert_eq!(warning["level"], "warn", "{warning}");
    let message = warning["message"].as_str().unwrap();
    assert!(message.contains("docs/ordering.md"), "{message}");
    assert!(
        message.contains(outer) && message.contains(inner),
        "{message}"
    );
}

/// The error layer outside the access log: a panic or a timeout is answered with an envelope
/// the access log never sees; it logs the request `aborted`, without a status.
#[tokio::test(flavor = "current_thread")]
async fn error_layer_outside_the_access_log_is_warned_once() {
    let registry = MetricsRegistry::new();
    let app = routes()
        .layer(AccessLogLayer::new())
        .layer(ErrorLayer::new().timeout(Duration::from_millis(200)))
        .layer(metrics(&registry))
        .layer(CorrelationLayer::new());
    let (addr, out, guards) = serve(app).await;
    let (head, body) = get_raw(addr, "/slow", Some("slow-1")).await;
    assert!(head.starts_with("HTTP/1.1 504"), "{head}");
    let envelope: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(envelope["error"]["code"], "timeout", "{body}");
    let (head, _) = get_raw(addr, "/boom", Some("boom-1")).await;
    assert!(head.starts_with("HTTP/1.1 500"), "{head}");
    get_raw(addr, "/slow", Some("slow-2")).await;
    drop(guards);

    let slow = out.access_lines("/slow");
    assert_eq!(slow[0]["data"]["aborted"], true, "{slow:#?}");
    assert!(slow[0]["data"].get("status").is_none(), "{slow:#?}");
    assert_one_warning(&out.order_warnings(), "ErrorLayer", "AccessLogLayer");
    assert_eq!(out.order_warnings().len(), 1, "{:#?}", out.order_warnings());
}

/// The error layer outside the metrics: a timeout the client got as a 504 envelope counts as
/// `cancelled`.
#[tokio::test(flavor = "current_thread")]
async fn error_layer_outside_the_metrics_is_warned_once() {
    let registry = MetricsRegistry::new();
    let app = routes()
        .layer(metrics(&registry))
        .layer(ErrorLayer::new().timeout(Duration::from_millis(200)))
        .layer(AccessLogLayer::new())
        .layer(CorrelationLayer::new());
    let (addr, out, guards) = serve(app).await;
    let (head, _) = get_raw(addr, "/slow", Some("slow-1")).await;
    assert!(head.starts_with("HTTP/1.1 504"), "{head}");
    get_raw(addr, "/slow", Some("slow-2")).await;
    drop(guards);

    assert_eq!(count(&registry, "/slow", "cancelled"), 2.0);
    assert_eq!(count(&registry, "/slow", "5xx"), 0.0);
    assert_one_warning(&out.order_warnings(), "ErrorLayer", "MetricsLayer");
    assert_eq!(out.order_warnings().len(), 1, "{:#?}", out.order_warnings());
}

/// The error layer outside the correlation layer: both make a request id for a request that
/// came without one. The correlation layer takes the error layer's, so the envelope, the
/// response header and the log lines agree.
#[tokio::test(flavor = "current_thread")]
async fn error_layer_outside_the_correlation_layer_shares_its_ids_and_is_warned_once() {
    let registry = MetricsRegistry::new();
    let app = routes()
        .layer(AccessLogLayer::new())
        .layer(metrics(&registry))
        .layer(CorrelationLayer::new())
        .layer(ErrorLayer::new());
    let (addr, out, guards) = serve(app).await;
    let (head, body) = get_raw(addr, "/missing", None).await;
    assert!(head.starts_with("HTTP/1.1 404"), "{head}");
    get_raw(addr, "/ok", None).await;
    drop(guards);

    let envelope: Value = serde_json::from_str(&body).unwrap();
    let envelope_id = envelope["error"]["request_id"].as_str().unwrap();
    let line = &out.access_lines("/missing")[0];
    assert_eq!(header(&head, "x-request-id"), Some(envelope_id), "{head}");
    assert_eq!(line["request_id"], envelope_id, "{line}");
    assert_eq!(line["trace_id"], envelope["error"]["trace_id"], "{line}");
    assert_one_warning(&out.order_warnings(), "ErrorLayer", "CorrelationLayer");
    assert_eq!(out.order_warnings().len(), 1, "{:#?}", out.order_warnings());
}

/// The access log outside the correlation layer: its line is written outside the request
/// span, without the request's ids.
#[tokio::test(flavor = "current_thread")]
async fn access_log_outside_the_correlation_layer_is_warned_once() {
    let registry = MetricsRegistry::new();
    let app = routes()
        .layer(ErrorLayer::new())
        .layer(metrics(&registry))
        .layer(CorrelationLayer::new())
        .layer(AccessLogLayer::new());
    let (addr, out, guards) = serve(app).await;
    let (head, _) = get_raw(addr, "/ok", Some("ok-1")).await;
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    get_raw(addr, "/ok", Some("ok-2")).await;
    drop(guards);

    // What the user sees: a line without the request's ids.
    let line = &out.access_lines("/ok")[0];
    assert!(line.get("request_id").is_none(), "{line}");
    assert!(line.get("trace_id").is_none(), "{line}");
    assert_one_warning(&out.order_warnings(), "AccessLogLayer", "CorrelationLayer");
    assert_eq!(out.order_warnings().len(), 1, "{:#?}", out.order_warnings());
}

/// The documented order, by hand and as `obs.layer()`, applied once and twice: no warning,
/// whatever the outcome.
#[tokio::test(flavor = "current_thread")]
async fn the_documented_order_is_not_warned() {
    let registry = MetricsRegistry::new();
    let by_hand = routes()
        .layer(ErrorLayer::new().timeout(Duration::from_millis(200)))
        .layer(AccessLogLayer::new())
        .layer(metrics(&registry))
        .layer(CorrelationLayer::new());
    let obs = periscope::Observability::builder()
        .request_timeout(Duration::from_millis(200))
        .build()
        .unwrap();
    let twice = Router::new()
        .nest("/api", routes().layer(obs.layer()))
        .layer(obs.layer());
    let (a, out, guards) = serve(by_hand).await;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let b = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, twice).await.unwrap() });
    for (addr, prefix) in [(a, ""), (b, "/api")] {
        for path in ["/ok", "/boom", "/slow", "/missing", "/health"] {
            for id in [None, Some("given")] {
                get_raw(addr, &format!("{prefix}{path}"), id).await;
            }
        }
    }
    drop(guards);
    assert!(out.access_lines("/ok").len() == 2, "{:#?}", out.lines());
    assert_eq!(out.order_warnings(), Vec::<Value>::new());
}
