//! periscope on plain hyper and Tower, without axum: the same stack, the same logs, metrics,
//! envelopes and probes as the axum templates.
//!
//! ```sh
//! cargo run --example hyper_minimal        # http://127.0.0.1:8003
//! curl -si http://127.0.0.1:8003/hello/world
//! curl -si http://127.0.0.1:8003/metrics
//! ```
//!
//! `HOST` (default `127.0.0.1`), `PORT` (default `8003`; `0` picks a free port, named in the
//! `listening` log line) and `SHUTDOWN_DRAIN_S` (default `5`), besides periscope's own
//! variables. Without axum's `MatchedPath`, the `route` label comes from the templates given
//! to `route_templates`.

use std::convert::Infallible;
use std::error::Error;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode, header};
use http_body_util::Full;
use hyper::body::Incoming;
use periscope::admin::Admin;
use periscope::error::{HttpError, Violations};
use periscope::{Observability, env};
use tokio::net::TcpListener;
use tower::{ServiceBuilder, ServiceExt};

/// Starts the service; a configuration error is printed and exits with status 1.
pub fn main() -> std::process::ExitCode {
    match run() {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("hyper_minimal: {error}");
            std::process::ExitCode::FAILURE
        }
    }
}

/// Serves until SIGTERM or Ctrl-C, then drains readiness and stops.
#[tokio::main]
pub async fn run() -> Result<(), Box<dyn Error>> {
    let host: IpAddr = env::var("HOST", IpAddr::V4(Ipv4Addr::LOCALHOST), "an IP address")?;
    let port: u16 = env::var("PORT", 8003, "a port number 0-65535")?;

    let obs = Observability::builder()
        .service_name("hyper-minimal")
        .version(env!("CARGO_PKG_VERSION"))
        // The `route` label without a router (the admin paths are known already).
        .route_templates(["/hello/{name}"])
        .env()?
        .build()?;
    let _guard = obs.init()?;

    // The app answers its routes and hands the admin paths to the admin service: probes,
    // /metrics and /debug/* (behind ADMIN_TOKEN). Any other path is a 404 envelope.
    let admin = obs.admin();
    let app = tower::service_fn(move |request| route(admin.clone(), request));
    let service = ServiceBuilder::new().layer(obs.layer()).service(app);

    let listener = TcpListener::bind(SocketAddr::from((host, port)))
        .await
        .map_err(|e| {
            let what_to_do = match e.kind() {
                std::io::ErrorKind::AddrInUse => {
                    ": set PORT to a free port (0 picks one), or stop what holds it"
                }
                std::io::ErrorKind::AddrNotAvailable => {
                    ": set HOST to an address of this machine (0.0.0.0 for all of them)"
                }
                _ => "",
            };
            format!("cannot listen on {host}:{port}: {e}{what_to_do}")
        })?;
    // Before the `listening` line: a SIGTERM sent as soon as it shows is a clean stop too.
    let shutdown = obs.shutdown_on_signal();
    tracing::info!(listener = "http", addr = %listener.local_addr()?, "listening");

    // Until the signal and the drain period after it, keep accepting: load balancers must
    // see /ready answer 503 draining before the listener goes away. Then requests in flight
    // finish and idle connections close; a client that never finishes its request head is
    // cut off after 30 s. From the signal on, answers carry `Connection: close`.
    obs.server(listener).serve(service, shutdown.wait()).await?;
    tracing::info!("stopped");
    Ok(())
}

/// The app's one route, `GET /hello/{name}` (and `HEAD`); the admin paths go to the admin
/// service, any other is a 404.
async fn route(
    admin: Admin,
    request: Request<Incoming>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let path = request.uri().path();
    let Some(name) = path.strip_prefix("/hello/") else {
        // The admin surface answers the paths it serves (`/debug/*` only while debug access
        // is on, behind the token), as `Admin::router()` routes them for axum; any other is
        // the service's 404, which the error layer words as a router's.
        if admin.handles(path) {
            return admin.oneshot(request).await;
        }
        return Ok(Response::builder()
            .status(StatusCode::NOT_FOUND)
            .body(Full::default())
            .unwrap_or_default());
    };
    // The path first: `/hello/a/b` is not `/hello/{name}`, whatever the method, nor is
    // `/hello/` (a parameter matches one segment, not an empty one), so it is
    // `route_not_found`, as the metrics count it.
    let response = if name.is_empty() || name.contains('/') {
        Response::builder()
            .status(StatusCode::NOT_FOUND)
            .body(Full::default())
            .unwrap_or_default()
    // HEAD is GET without the body (hyper leaves the body out and keeps its length).
    } else if !matches!(*request.method(), Method::GET | Method::HEAD) {
        // A bare status: the error layer answers with the `method_not_allowed` envelope.
        Response::builder()
            .status(StatusCode::METHOD_NOT_ALLOWED)
            .header(header::ALLOW, "GET, HEAD")
            .body(Full::default())
            .unwrap_or_default()
    } else {
        match hello(name) {
            Ok(text) => Response::builder()
                .header(header::CONTENT_TYPE, "text/plain; charset=utf-8")
                .body(Full::from(text))
                .unwrap_or_default(),
            Err(error) => error.into_http_response_for(&request),
        }
    };
    Ok(response)
}

/// `name` is the raw path segment: percent-decoded here (`J%C3%BCrgen` is `Jürgen`), as
/// axum's `Path` would.
fn hello(name: &str) -> Result<String, HttpError> {
    let decoded = percent_encoding::percent_decode_str(name).decode_utf8();
    let mut violations = Violations::new();
    match &decoded {
        Ok(name) => {
            let length = name.chars().count();
            violations.check(
                (1..=64).contains(&length),
                "name",
                "length",
                "name must be 1 to 64 characters",
            );
        }
        Err(_) => {
            violations.add("name", "utf8", "name must be percent-encoded UTF-8 text");
        }
    }
    violations.into_result()?;
    let name = decoded.unwrap_or_default();
    tracing::info!(name = &*name, "greeting");
    Ok(format!("hello, {name}\n"))
}
