//! The main template service (work in progress: it grows as each periscope crate lands).
//!
//! Today it serves `GET /health` and `GET /ready` on 127.0.0.1 (port 8000, `PORT` to change),
//! keeps or generates a request id for every request, echoes it in `x-request-id`, and writes
//! one JSON log line per request on stdout.
//!
//! Run: `cargo run --example inference_gateway`

use std::net::SocketAddr;
use std::time::Instant;

use axum::Router;
use axum::extract::Request;
use axum::middleware::{self, Next};
use axum::response::Response;
use axum::routing::get;
use periscope::context::{ExtractOptions, RequestContext, extract, headers};

async fn correlate(mut request: Request, next: Next) -> Response {
    let started = Instant::now();
    let extracted = extract(request.headers(), &ExtractOptions::default());
    let ctx = extracted.context;
    request.extensions_mut().insert(ctx.clone());
    let method = request.method().clone();
    let path = request.uri().path().to_owned();
    let mut response = ctx.clone().scope(next.run(request)).await;
    response
        .headers_mut()
        .insert(headers::X_REQUEST_ID, ctx.request_id.header_value().clone());
    let line = serde_json::json!({
        "timestamp": humantime_now(),
        "level": "info",
        "message": "request completed",
        "target": "inference_gateway",
        "request_id": ctx.request_id.as_str(),
        "trace_id": ctx.trace_id.to_string(),
        "span_id": ctx.span_id.to_string(),
        "data": {
            "method": method.as_str(),
            "path": path,
            "status": response.status().as_u16(),
            "duration_ms": started.elapsed().as_secs_f64() * 1000.0,
        }
    });
    println!("{line}");
    response
}

/// Seconds since the epoch; the log crate replaces this with RFC 3339 timestamps.
fn humantime_now() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or_default()
}

async fn health() -> axum::Json<serde_json::Value> {
    axum::Json(serde_json::json!({ "status": "ok" }))
}

async fn ready() -> axum::Json<serde_json::Value> {
    let request_id = RequestContext::current().map(|ctx| ctx.request_id.to_string());
    axum::Json(serde_json::json!({ "status": "ok", "request_id": request_id }))
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let port: u16 = match std::env::var("PORT") {
        Ok(value) => value
            .parse()
            .map_err(|_| format!("PORT={value:?} is not a port number (1-65535)"))?,
        Err(_) => 8000,
    };
    let app = Router::new()
        .route("/health", get(health))
        .route("/ready", get(ready))
        .layer(middleware::from_fn(correlate));
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let listener = tokio::net::TcpListener::bind(addr).await?;
    println!(
        "{}",
        serde_json::json!({"level": "info", "message": "listening", "data": {"addr": addr.to_string()}})
    );
    axum::serve(listener, app)
        .with_graceful_shutdown(async {
            let _ = tokio::signal::ctrl_c().await;
        })
        .await?;
    Ok(())
}
