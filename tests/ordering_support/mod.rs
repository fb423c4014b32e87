//! What `ordering` and `ordering_documented` share: the routes, a server logging every line
//! into a capture, a raw request, the RED layer.

#![allow(dead_code)] // each test binary uses a part

use std::net::SocketAddr;
use std::time::Duration;

use axum::Router;
use axum::routing::get;
use periscope::metrics::{MetricsLayer, MetricsRegistry};
use serde_json::Value;

use crate::capture::{Captured, capture_lines};

impl Captured {
    /// The layer-order warnings.
    pub fn order_warnings(&self) -> Vec<Value> {
        self.lines()
            .into_iter()
            .filter(|line| line["target"] == "periscope::order")
            .collect()
    }

    pub fn access_lines(&self, path: &str) -> Vec<Value> {
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

pub fn routes() -> Router {
    Router::new()
        .route("/ok", get(|| async { "ok" }))
        .route("/boom", get(boom))
        .route("/slow", get(slow))
}

/// Serves `app` on this thread's runtime with a JSON log capturing every line; the guard
/// flushes on drop.
pub async fn serve(app: Router) -> (SocketAddr, Captured, impl Drop) {
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
pub async fn get_raw(addr: SocketAddr, path: &str, request_id: Option<&str>) -> (String, String) {
    let id: Vec<(&str, &str)> = request_id
        .map(|id| ("x-request-id", id))
        .into_iter()
        .collect();
    get_with(addr, path, &id).await
}

/// One HTTP/1.1 request with `headers`. The head and the body.
pub async fn get_with(addr: SocketAddr, path: &str, headers: &[(&str, &str)]) -> (String, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let headers: String = headers
        .iter()
        .map(|(name, value)| format!("{name}: {value}\r\n"))
        .collect();
    let request = format!("GET {path} HTTP/1.1\r\nhost: a\r\n{headers}connection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut answer = String::new();
    tokio::time::timeout(Duration::from_secs(10), stream.read_to_string(&mut answer))
        .await
        .expect("an answer within 10 s")
        .unwrap();
    let (head, body) = answer.split_once("\r\n\r\n").expect("a response head");
    (head.to_owned(), body.to_owned())
}

pub fn metrics(registry: &MetricsRegistry) -> MetricsLayer {
    MetricsLayer::new(registry).unwrap()
}
