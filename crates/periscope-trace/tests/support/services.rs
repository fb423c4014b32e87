//! The test services: hops that record what they saw and call the next hop through the
//! client layer.
#![allow(dead_code)]

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use axum::Router;
use axum::extract::State;
use axum::routing;
use bytes::Bytes;
use http::{HeaderMap, Request, StatusCode};
use http_body_util::Full;
use periscope_context::RequestContext;
use periscope_trace::CorrelationLayer;
use tower_http::catch_panic::CatchPanicLayer;

use super::{TracedClient, send, serve, traced_client};

/// What one hop saw: its context and the headers it received.
#[derive(Clone, Debug)]
pub struct Seen {
    pub hop: &'static str,
    pub ctx: RequestContext,
    pub headers: HeaderMap,
}

#[derive(Clone)]
pub struct Hop {
    pub name: &'static str,
    pub next: Option<String>,
    pub seen: Arc<Mutex<Vec<Seen>>>,
    pub client: TracedClient,
    pub jobs: Option<tokio::sync::mpsc::UnboundedSender<String>>,
}

async fn hop(State(hop): State<Hop>, request: axum::extract::Request) -> (StatusCode, String) {
    let ctx = request
        .extensions()
        .get::<RequestContext>()
        .unwrap()
        .clone();
    tracing::info!(hop = hop.name, "handling the hop");
    hop.seen.lock().unwrap().push(Seen {
        hop: hop.name,
        ctx: ctx.clone(),
        headers: request.headers().clone(),
    });
    if let Some(jobs) = &hop.jobs {
        let carrier = periscope_trace::job::carrier().unwrap();
        jobs.send(serde_json::to_string(&carrier).unwrap()).unwrap();
    }
    match &hop.next {
        Some(next) => {
            let request = Request::get(format!("{next}/hop"))
                .body(Full::new(Bytes::new()))
                .unwrap();
            let response = send(hop.client.clone(), request).await;
            (response.status(), hop.name.to_owned())
        }
        None => (StatusCode::OK, hop.name.to_owned()),
    }
}

async fn fail() -> StatusCode {
    tracing::error!("the handler failed");
    StatusCode::INTERNAL_SERVER_ERROR
}

async fn explode() -> StatusCode {
    panic!("the handler panicked")
}

pub fn app(hop_state: Hop, layer: CorrelationLayer) -> Router {
    Router::new()
        .route("/hop", routing::get(hop))
        .route("/fail", routing::get(fail))
        .route("/panic", routing::get(explode))
        .route("/health", routing::get(|| async { "ok" }))
        .with_state(hop_state)
        // Panic catching sits inside the correlation layer, so a panic becomes a 500 that
        // still gets the request id.
        .layer(CatchPanicLayer::new())
        .layer(layer)
}

pub fn hop_state(name: &'static str, next: Option<String>, seen: &Arc<Mutex<Vec<Seen>>>) -> Hop {
    Hop {
        name,
        next,
        seen: seen.clone(),
        client: traced_client(),
        jobs: None,
    }
}

/// Three services a → b → c; returns a's address.
pub async fn chain(seen: &Arc<Mutex<Vec<Seen>>>) -> SocketAddr {
    let c = serve(app(hop_state("c", None, seen), CorrelationLayer::new())).await;
    let b = serve(app(
        hop_state("b", Some(format!("http://{c}")), seen),
        CorrelationLayer::new(),
    ))
    .await;
    serve(app(
        hop_state("a", Some(format!("http://{b}")), seen),
        CorrelationLayer::new(),
    ))
    .await
}

/// Every hop's record, in hop name order.
pub fn by_hop(seen: &Arc<Mutex<Vec<Seen>>>) -> Vec<Seen> {
    let mut seen = seen.lock().unwrap().clone();
    seen.sort_by_key(|s| s.hop);
    seen
}

/// A GET with these headers.
pub fn get_request(url: String, headers: &[(&str, &str)]) -> Request<Full<Bytes>> {
    let mut request = Request::get(url);
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    request.body(Full::new(Bytes::new())).unwrap()
}

/// A GET from an outside caller to `addr` + `path`, with these headers.
pub async fn get(addr: SocketAddr, path: &str, headers: &[(&str, &str)]) -> http::Response<Bytes> {
    send(
        super::plain_client(),
        get_request(format!("http://{addr}{path}"), headers),
    )
    .await
}
