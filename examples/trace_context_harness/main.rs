//! The W3C Trace Context test service: runs the official conformance suite against
//! periscope's server and client layers.
//!
//! The suite POSTs to `/test` a JSON array of `{"url": ..., "arguments": [...]}`; for each
//! element, in order, this service POSTs `arguments` as JSON to `url` through
//! `ClientTraceLayer`, and answers once every call has finished. Every incoming request goes
//! through `CorrelationLayer`, so the suite sees exactly what a periscope service propagates.
//!
//! Run: `PORT=5000 cargo run --example trace_context_harness`, then the suite (see
//! `docs/trace.md`). It logs JSON lines on stdout like the other examples (the `listening` line
//! names the port `PORT=0` picked; periscope's `LOG_*` variables apply) and stops cleanly, with
//! status 0, on SIGTERM or Ctrl-C.

use std::error::Error;
use std::net::SocketAddr;
use std::time::Duration;

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

/// Starts the harness; a configuration error is printed and exits with status 1.
pub fn main() -> std::process::ExitCode {
    match run() {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("trace_context_harness: {error}");
            std::process::ExitCode::FAILURE
        }
    }
}

/// Serves until SIGTERM or Ctrl-C.
#[tokio::main]
pub async fn run() -> Result<(), Box<dyn Error>> {
    // Unset or empty: 5000; `0` takes a free port, which the `listening` line names.
    let port: u16 = periscope::env::var("PORT", 5000, "a port number 0-65535")?;
    // Only the logs (and the signal handling) of the examples' setup: requests go through
    // `CorrelationLayer` and calls through `ClientTraceLayer` alone, the two layers under test.
    let obs = periscope::Observability::builder()
        .service_name("trace-context-harness")
        .version(env!("CARGO_PKG_VERSION"))
        // No readiness probe to drain: stop at once (`SHUTDOWN_DRAIN_S` still overrides it).
        .shutdown_drain(Duration::ZERO)
        .env()?
        .build()?;
    let _guard = obs.init()?; // JSON logs from here on; flushed when `run` returns

    let client = ClientTraceLayer::new().layer(Client::builder(TokioExecutor::new()).build_http());
    let app = Router::new()
        .route("/test", post(run_calls))
        .with_state(client)
        .layer(CorrelationLayer::new());

    // Before the `listening` line: a SIGTERM sent as soon as it shows is a clean stop too.
    let shutdown = obs.shutdown_on_signal();
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let listener = tokio::net::TcpListener::bind(addr).await.map_err(|e| {
        format!("cannot listen on {addr}: {e}: set PORT to a free port (0 picks one)")
    })?;
    tracing::info!(listener = "http", addr = %listener.local_addr()?, "listening");
    axum::serve(listener, app)
        .with_graceful_shutdown(shutdown.wait())
        .await?;
    tracing::info!("stopped");
    Ok(())
}
