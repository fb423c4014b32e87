//! `Admin::router()` merged into an axum app, served on a real socket.

mod support;

use periscope_admin::{Admin, DebugAccess};
use support::{TOKEN, get, get_authorised, send};

async fn serve_app(app: axum::Router) -> std::net::SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    addr
}

#[tokio::test]
async fn the_router_serves_the_admin_paths_next_to_the_app() {
    let admin = Admin::builder()
        .metrics(periscope_metrics::MetricsRegistry::new())
        .debug(DebugAccess::Token(TOKEN.into()))
        .build();
    let app = axum::Router::new()
        .route("/predict", axum::routing::post(|| async { "label" }))
        .route("/debug/pprof", axum::routing::get(|| async { "app's own" }))
        .merge(admin.router())
        .fallback(|| async { (http::StatusCode::IM_A_TEAPOT, "app fallback") });
    let addr = serve_app(app).await;

    assert_eq!(
        send(addr, "POST", "/predict", &[], "").await.text(),
        "label"
    );
    assert_eq!(get(addr, "/health").await.status, 200);
    assert_eq!(get(addr, "/metrics").await.status, 200);
    get(addr, "/debug/status")
        .await
        .envelope(401, "token_missing");
    assert_eq!(get_authorised(addr, "/debug/status").await.status, 200);
    // Wrong methods reach the admin service and get its envelope, not axum's bare 405.
    send(addr, "DELETE", "/health", &[], "")
        .await
        .envelope(405, "method_not_allowed");
    // Other /debug/ paths ask for the token too, so a caller cannot tell which exist; with
    // it, those the admin does not serve are unknown.
    for path in ["/debug/logs", "/debug/nothing/here"] {
        get(addr, path).await.envelope(401, "token_missing");
        get_authorised(addr, path)
            .await
            .envelope(404, "route_not_found");
    }
    // `/debug/` itself is a debug path as well (axum's catch-all does not match it empty):
    // the token first, then the admin's 404, as when the admin is served alone.
    get(addr, "/debug/").await.envelope(401, "token_missing");
    get_authorised(addr, "/debug/")
        .await
        .envelope(404, "route_not_found");
    // `/debug` is not under `/debug/`: paths match exactly, so it is the app's, as when the
    // admin is served alone it is an unknown path like any other.
    assert_eq!(get(addr, "/debug").await.status, 418);
    // An exact route of the app wins over the admin's catch-all; other paths are the app's.
    assert_eq!(get(addr, "/debug/pprof").await.text(), "app's own");
    assert_eq!(get(addr, "/other").await.status, 418);
}

#[tokio::test]
async fn with_debug_disabled_the_debug_paths_are_left_to_the_app() {
    let admin = Admin::builder().build();
    let app = axum::Router::new()
        .merge(admin.router())
        .fallback(|| async { (http::StatusCode::IM_A_TEAPOT, "app fallback") });
    let addr = serve_app(app).await;
    assert_eq!(get(addr, "/ready").await.status, 200);
    assert_eq!(get_authorised(addr, "/debug/status").await.status, 418);
    assert_eq!(get_authorised(addr, "/debug/").await.status, 418);
    assert_eq!(get(addr, "/metrics").await.status, 418);
}
