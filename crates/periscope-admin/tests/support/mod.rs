//! A real server on 127.0.0.1 and a real HTTP/1.1 client, shared by the integration tests.
#![allow(dead_code)]

use std::convert::Infallible;
use std::net::SocketAddr;

use bytes::Bytes;
use http::{HeaderMap, Request, Response};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::service::TowerToHyperService;
use serde_json::Value;
use tokio::net::TcpListener;

pub const TOKEN: &str = "test-admin-token-0123456789abcdef";

/// Serves `service` (the admin's, or an app's in a layer) with hyper on an ephemeral port of
/// 127.0.0.1.
pub async fn serve<S, B>(service: S) -> SocketAddr
where
    S: tower::Service<Request<Incoming>, Response = Response<B>, Error = Infallible>
        + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
    B: http_body::Body<Data = Bytes> + Send + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                return;
            };
            let service = TowerToHyperService::new(service.clone());
            tokio::spawn(
                hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service),
            );
        }
    });
    addr
}

/// One response, read whole.
#[derive(Debug)]
pub struct Answer {
    pub status: u16,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl Answer {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).map(|v| v.to_str().unwrap())
    }

    pub fn text(&self) -> String {
        String::from_utf8(self.body.to_vec()).unwrap()
    }

    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|error| panic!("not JSON ({error}): {:?}", self.text()))
    }

    /// Asserts an error envelope of `status` and `code`, and returns its `error` object.
    #[track_caller]
    pub fn envelope(&self, status: u16, code: &str) -> Value {
        assert_eq!(self.status, status, "{}", self.text());
        assert_eq!(self.header("content-type"), Some("application/json"));
        let json = self.json();
        let error = &json["error"];
        assert_eq!(error["code"], code, "{json}");
        assert!(error["message"].as_str().is_some_and(|m| !m.is_empty()));
        let request_id = error["request_id"].as_str().unwrap();
        assert_eq!(self.header("x-request-id"), Some(request_id));
        error.clone()
    }
}

/// Sends one request and reads the whole answer.
pub async fn send(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> Answer {
    let client = Client::builder(TokioExecutor::new()).build_http::<Full<Bytes>>();
    let mut request = Request::builder()
        .method(method)
        .uri(format!("http://{addr}{path}"));
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    let request = request
        .body(Full::new(Bytes::from(body.to_owned())))
        .unwrap();
    let response = client.request(request).await.unwrap();
    let (parts, body) = response.into_parts();
    Answer {
        status: parts.status.as_u16(),
        headers: parts.headers,
        body: body.collect().await.unwrap().to_bytes(),
    }
}

pub async fn get(addr: SocketAddr, path: &str) -> Answer {
    send(addr, "GET", path, &[], "").await
}

/// `GET` with the right bearer token.
pub async fn get_authorised(addr: SocketAddr, path: &str) -> Answer {
    let bearer = format!("Bearer {TOKEN}");
    send(addr, "GET", path, &[("authorization", &bearer)], "").await
}

/// `POST` of a JSON body with the right bearer token.
pub async fn post_json(addr: SocketAddr, path: &str, body: &str) -> Answer {
    let bearer = format!("Bearer {TOKEN}");
    let headers = [
        ("authorization", bearer.as_str()),
        ("content-type", "application/json"),
    ];
    send(addr, "POST", path, &headers, body).await
}

/// An admin behind [`TOKEN`] serving the recent lines and the level control of a log layer
/// installed as the global subscriber (once per test binary), on a real socket.
#[cfg(feature = "log")]
pub async fn serve_global_logs() -> (
    periscope_log::RecentLogs,
    SocketAddr,
    periscope_log::LogGuard,
) {
    use tracing_subscriber::prelude::*;

    let (layer, guard) = periscope_log::LogLayer::builder()
        .writer(std::io::sink())
        .build();
    let recent = layer.recent_logs();
    let admin = periscope_admin::Admin::builder()
        .logs(recent.clone())
        .level_control(layer.level_control())
        .debug(periscope_admin::DebugAccess::Token(TOKEN.into()))
        .build();
    tracing_subscriber::registry().with(layer).init();
    (recent, serve(admin).await, guard)
}

/// Installs `subscriber` as this thread's default, for a test that reads the lines it
/// captures. Two dispatchers kept for the whole run make tracing-core ask every live one whether
/// a callsite is enabled, instead of caching the answer of whichever thread met it first (see
/// docs/development.md).
pub fn set_default(subscriber: impl Into<tracing::Dispatch>) -> tracing::subscriber::DefaultGuard {
    static KEPT: std::sync::OnceLock<[tracing::Dispatch; 2]> = std::sync::OnceLock::new();
    KEPT.get_or_init(|| {
        [(); 2].map(|()| tracing::Dispatch::new(tracing::subscriber::NoSubscriber::default()))
    });
    tracing::dispatcher::set_default(&subscriber.into())
}
