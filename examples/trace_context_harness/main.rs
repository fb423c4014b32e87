//! The W3C Trace Context test service: runs the official conformance suite against
//! periscope's server and client layers.
//!
//! The suite POSTs to `/test` a JSON array of `{"url": ..., "arguments": [...]}`; for each
//! element, in order, this service POSTs `arguments` as JSON to `url` through
//! `ClientTraceLayer`, and answers once every call has finished. Every incoming request goes
//! through `CorrelationLayer`, so the suite sees exactly what a periscope service propagates.
//! An array with an element that is not such an instruction (no `url`, not an absolute
//! `http://` URL) is refused with 400 before any call is made. A call that fails, or takes
//! longer than 10 s, is logged at `warn` and the next one made: the suite judges what the
//! callees received.
//!
//! Run: `PORT=5000 cargo run --example trace_context_harness`, then the suite (see
//! `docs/trace.md`). It logs JSON lines on stdout like the other examples (the `listening` line
//! names the port `PORT=0` picked) and stops cleanly, with status 0, on SIGTERM or Ctrl-C.
//! periscope's variables are read and checked as in any service (`LOG_LEVEL`, `LOG_FORMAT`,
//! `SHUTDOWN_DRAIN_S`, which overrides the harness's zero drain); both layers propagate W3C
//! Trace Context and Baggage whatever `OTEL_PROPAGATORS` says, as the suite tests them, and
//! `REQUEST_TIMEOUT_S` does not apply (each call has its own limit).

use std::error::Error;
use std::net::SocketAddr;
use std::time::Duration;

use axum::extract::State;
use axum::routing::post;
use axum::{Json, Router};
use bytes::Bytes;
use http::{Request, StatusCode, Uri, header};
use http_body_util::Full;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use periscope_trace::{ClientTrace, ClientTraceLayer, CorrelationLayer, Propagators};
use tower::{Layer, ServiceExt};

type TracedClient = ClientTrace<Client<HttpConnector, Full<Bytes>>>;

/// How long one call of the suite's instructions may take: a callee that never answers does
/// not hold the suite's request, nor the harness's shutdown.
const CALL_TIMEOUT: Duration = Duration::from_secs(10);

/// Runs the suite's instructions in order: each is `{"url": ..., "arguments": [...]}`. All are
/// checked before the first call is made.
async fn run_calls(
    State(client): State<TracedClient>,
    Json(calls): Json<serde_json::Value>,
) -> StatusCode {
    let Some(calls) = calls.as_array() else {
        return StatusCode::BAD_REQUEST;
    };
    let Some(calls) = calls.iter().map(instruction).collect::<Option<Vec<_>>>() else {
        return StatusCode::BAD_REQUEST;
    };
    for (url, body) in calls {
        let request = Request::post(url.clone())
            .header(header::CONTENT_TYPE, "application/json")
            .body(Full::new(body));
        let Ok(request) = request else {
            return StatusCode::BAD_REQUEST;
        };
        // The suite judges what the callee received; a failed call is only logged.
        match tokio::time::timeout(CALL_TIMEOUT, client.clone().oneshot(request)).await {
            Ok(Ok(_)) => {}
            Ok(Err(error)) => tracing::warn!(%url, %error, "call failed"),
            Err(_) => tracing::warn!(%url, timeout_s = CALL_TIMEOUT.as_secs(), "call timed out"),
        }
    }
    StatusCode::OK
}

/// One instruction: an absolute `http://` URL (the client speaks no TLS) and the JSON body of
/// its `arguments`; `None` when it is not one.
fn instruction(call: &serde_json::Value) -> Option<(Uri, Bytes)> {
    let url: Uri = call.get("url")?.as_str()?.parse().ok()?;
    if url.scheme() != Some(&http::uri::Scheme::HTTP) || url.host().is_none() {
        return None;
    }
    let arguments = call.get("arguments").cloned().unwrap_or_default();
    let body = serde_json::to_vec(&arguments).ok()?;
    Some((url, Bytes::from(body)))
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

    // The formats the suite tests, whatever the process's are.
    let w3c = Propagators::default();
    let mut connector = HttpConnector::new();
    connector.set_connect_timeout(Some(CALL_TIMEOUT));
    let client = ClientTraceLayer::new()
        .propagators(w3c)
        .layer(Client::builder(TokioExecutor::new()).build(connector));
    let app = Router::new()
        .route("/test", post(run_calls))
        .with_state(client)
        .layer(CorrelationLayer::new().propagators(w3c));

    // Before the `listening` line: a SIGTERM sent as soon as it shows is a clean stop too.
    let shutdown = obs.shutdown_on_signal();
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let listener = tokio::net::TcpListener::bind(addr).await.map_err(|e| {
        format!("cannot listen on {addr}: {e}: set PORT to a free port (0 picks one)")
    })?;
    tracing::info!(listener = "http", addr = %listener.local_addr()?, "listening");
    // periscope's server: a client that never finishes its request, or a call under way,
    // holds the shutdown for its timeout at most.
    // `REQUEST_TIMEOUT_S` does not apply here, so it does not lengthen the shutdown either.
    obs.server(listener)
        .shutdown_timeout(periscope::DEFAULT_SHUTDOWN_TIMEOUT)
        .serve(app, shutdown.wait())
        .await?;
    tracing::info!("stopped");
    Ok(())
}
