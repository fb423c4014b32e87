//! The W3C Trace Context test service: runs the official conformance suite against
//! periscope's server and client layers.
//!
//! The suite POSTs to `/test` a JSON array of `{"url": ..., "arguments": [...]}`; for each
//! element, in order, this service POSTs `arguments` as JSON to `url` through
//! `ClientTraceLayer`, and answers once every call has finished. Every incoming request goes
//! through `CorrelationLayer`, so the suite sees exactly what a periscope service propagates.
//!
//! Run: `PORT=5000 cargo run --example trace_context_harness`, then the suite (see
//! `docs/trace.md`).

use std::net::SocketAddr;

use axum::extract::State;
use axum::routing::post;
use axum::{Json, Router};
use bytes::Bytes;
use http::{Request, StatusCode, header};
use http_body_util::Full;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use periscope_trace::{ClientTrace, ClientTraceLayer, CorrelationLayer};
use tower::{Layer, ServiceExt};

type TracedClient = ClientTrace<Client<HttpConnector, Full<Bytes>>>;

/// Runs the suite's instructions in order: each is `{"url": ..., "arguments": [...]}`.
async fn run_calls(
    State(client): State<TracedClient>,
    Json(calls): Json<serde_json::Value>,
) -> StatusCode {
    let Some(calls) = calls.as_array() else {
        return StatusCode::BAD_REQUEST;
    };
    for call in calls {
        let Some(url) = call.get("url").and_then(|url| url.as_str()) else {
            return StatusCode::BAD_REQUEST;
        };
        let arguments = call.get("arguments").cloned().unwrap_or_default();
        let Ok(body) = serde_json::to_vec(&arguments) else {
            return StatusCode::BAD_REQUEST;
        };
        let Ok(request) = Request::post(url)
            .header(header::CONTENT_TYPE, "application/json")
            .body(Full::new(Bytes::from(body)))
        else {
            return StatusCode::BAD_REQUEST;
        };
        // The suite only checks what the callee received; a failed call is its own finding.
        let _ = client.clone().oneshot(request).await;
    }
    StatusCode::OK
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    // Unset or empty: 5000; `0` takes a free port, which the line below names.
    let port: u16 = periscope::env::var("PORT", 5000, "a port number 0-65535")?;
    let client = ClientTraceLayer::new().layer(Client::builder(TokioExecutor::new()).build_http());
    let app = Router::new()
        .route("/test", post(run_calls))
        .with_state(client)
        .layer(CorrelationLayer::new());

    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let listener = tokio::net::TcpListener::bind(addr).await?;
    let addr = listener.local_addr()?;
    println!("trace context harness listening on http://{addr}/test");
    axum::serve(listener, app).await?;
    Ok(())
}
